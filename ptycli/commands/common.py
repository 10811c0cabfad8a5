"""Option conventions shared by the commands (config loading, ``--set``, ``--json`` output, log level)."""

import json
import os

import click
import numpy as np

from .. import parallel
from ..io.reading import expand_user_paths
from ..log import setup_logging
from ..params.tree import apply_overrides, resolve_run_label, validate
from ..params.yamlio import load_config

__all__ = ["DATA_FORMATS", "set_option", "load_tree", "guess_format", "emit_result", "apply_verbose_level"]

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
    tree = load_config(config)
    tree = apply_overrides(tree, list(overrides or ()))
    p = validate(tree, require_scans=require_scans, require_engines=require_engines)
    resolve_run_label(p, config)
    expand_user_paths(p)  # '~/data.h5' in data, mask, dark, flat, probe and object files
    return p


def apply_verbose_level(verbose_level):
    """Set the log level from a configuration's ``verbose_level``.

    Call it from a command once the configuration is loaded. ``-q``/``-v`` on
    the command line (``ptycli -q CMD`` or ``CMD -q``, kept in the root
    context's ``obj``) take precedence; without them ``verbose_level``
    (PtyPy's 0..5 or a level name) decides. Returns the level in force.
    """
    ctx = click.get_current_context(silent=True)
    obj = (ctx.find_root().obj if ctx is not None else None) or {}
    return setup_logging(
        quiet=obj.get("quiet", False),
        verbose=obj.get("verbose", 0),
        verbose_level=verbose_level,
    )


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
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)
