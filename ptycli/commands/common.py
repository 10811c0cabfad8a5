"""Option conventions shared by the commands (config loading, ``--set``, ``--json`` output)."""

import json
import os

import click

from .. import parallel

#: formats a data file can be written in, and their usual extensions
DATA_FORMATS = {"h5": (".h5", ".hdf5"), "cxi": (".cxi",), "ptyd": (".ptyd",)}


def set_option(func):
    """``--set key.path=value`` (repeatable), read with YAML typing."""
    return click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                        help="Override a parameter, e.g. --set engines.dm.numiter=50 "
                             "(YAML typing; repeatable).")(func)


def load_tree(config, overrides, require_scans=False, require_engines=False):
    """Load CONFIG (path or '-'), apply ``--set`` overrides and validate.

    Returns the validated :class:`~ptycli.utils.parameters.Param` with
    ``run`` resolved from the file name when unset.
    """
    from ..params.tree import apply_overrides, resolve_run_label, validate
    from ..params.yamlio import load_config

    tree = load_config(config)
    tree = apply_overrides(tree, list(overrides or ()))
    p = validate(tree, require_scans=require_scans, require_engines=require_engines)
    resolve_run_label(p, config)
    from ..io.reading import expand_user_paths

    expand_user_paths(p)  # '~/data.h5' in data, mask, dark, flat, probe and object files
    return p


def guess_format(path, given=None):
    """The data format: ``given``, else from the extension of ``path`` (default h5)."""
    if given:
        return given
    ext = os.path.splitext(str(path))[1].lower()
    for fmt, exts in DATA_FORMATS.items():
        if ext in exts:
            return fmt
    return "h5"


def emit_result(summary, as_json, text):
    """Print the result on stdout (rank 0 only): one JSON document, or ``text``."""
    if not parallel.master:
        return
    if as_json:
        click.echo(json.dumps(summary, sort_keys=True, default=_plain))
    else:
        click.echo(text)


def _plain(value):
    try:
        import numpy as np

        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, np.ndarray):
            return value.tolist()
    except ImportError:  # pragma: no cover
        pass
    return str(value)
