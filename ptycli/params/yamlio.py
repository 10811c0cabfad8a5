"""Reading and writing configuration YAML.

:func:`load_config` reads a configuration from a file, standard input
(``'-'``) or text with a strict loader: duplicate keys, tabs in the
indentation, an empty document and a top level that is not a mapping are
errors. Every problem is a :class:`~ptycli.errors.ConfigError` (exit code 2)
on one line, located as ``config.yaml:LINE:COL: <problem>``.

:func:`dump_yaml` writes a tree as plain, safe YAML (numpy values become
plain Python numbers and lists).
"""

import os
import pathlib
import sys

import numpy as np
import yaml

from ..errors import ConfigError
from ..utils.parameters import Param

__all__ = ["StrictLoader", "load_config", "load_config_text", "dump_yaml", "to_plain"]

_MERGE_TAG = "tag:yaml.org,2002:merge"


class _DuplicateKeyError(yaml.constructor.ConstructorError):
    pass


class StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that rejects duplicate mapping keys.

    Merge keys (``<<: *anchor``) still work: keys brought in by a merge may be
    overridden by keys written in the mapping itself, as YAML intends.
    """

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = {}
            for key_node, _ in node.value:
                if key_node.tag == _MERGE_TAG:
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:  # unhashable key: the base class reports it
                    continue
                if first is not None:
                    raise _DuplicateKeyError(
                        None, None,
                        "duplicate key %r (first given on line %d); each key may appear once per mapping"
                        % (key, first.line + 1),
                        key_node.start_mark)
                seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


def _tab_line(lines, upto=None):
    """(line, column) of the first line (1-based) up to ``upto`` with a tab in its indentation."""
    for n, line in enumerate(lines, 1):
        if upto is not None and n > upto:
            break
        stripped = line.lstrip(" \t")
        indent = line[: len(line) - len(stripped)]
        if "\t" in indent and stripped.strip() and not stripped.startswith("#"):
            return n, indent.index("\t") + 1
    return None


def _yaml_error(exc, name, text):
    lines = text.splitlines()
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    line = mark.line + 1 if mark is not None else None
    tab = _tab_line(lines, line)
    if tab is not None:
        return ConfigError("%s:%d:%d: tab character in the indentation; YAML indents with spaces only "
                           "(replace the tab with spaces)" % (name, tab[0], tab[1]))
    if mark is not None and "'\\t'" in (getattr(exc, "problem", None) or ""):
        return ConfigError("%s:%d:%d: tab character; use spaces to indent and to separate a key from "
                           "its value (replace the tab with spaces)" % (name, mark.line + 1, mark.column + 1))
    if isinstance(exc, yaml.reader.ReaderError):
        pos = exc.position
        before = text[:pos]
        ln = before.count("\n") + 1
        col = pos - (before.rfind("\n") + 1) + 1
        char = exc.character if isinstance(exc.character, int) else ord(exc.character[:1] or "\0")
        return ConfigError("%s:%d:%d: %s (character U+%04X); remove it or quote the text" % (
            name, ln, col, exc.reason, char))
    if mark is None:
        return ConfigError("%s: %s" % (name, " ".join(str(exc).split())))
    problem = getattr(exc, "problem", None) or "invalid YAML"
    context = getattr(exc, "context", None)
    cmark = getattr(exc, "context_mark", None)
    extra = ""
    if context and not isinstance(exc, _DuplicateKeyError):
        extra = " (%s%s)" % (context, " at line %d" % (cmark.line + 1) if cmark is not None
                             and cmark.line != mark.line else "")
    return ConfigError("%s:%d:%d: %s%s" % (name, mark.line + 1, mark.column + 1, problem, extra))


def load_config_text(text, name="<string>"):
    """Parse configuration ``text``; ``name`` is used in messages. Returns a Param."""
    if text.startswith("\ufeff"):
        text = text[1:]
    try:
        data = yaml.load(text, Loader=StrictLoader)
    except yaml.YAMLError as exc:
        raise _yaml_error(exc, name, text) from None
    if data is None:
        raise ConfigError("%s: config file is empty; write the parameters as a YAML mapping "
                          "(key: value), e.g. 'scans: {MF: {data: {name: MoonFlowerScan}}}'; "
                          "`ptycli params` lists them all" % name)
    if not isinstance(data, dict):
        kind = "a list" if isinstance(data, list) else "a single value (%r)" % (data,)
        raise ConfigError("%s: the top level must be a mapping of parameters (key: value), got %s"
                          % (name, kind))
    return Param(data)


def _looks_like_text(source):
    if "\n" in source:
        return True
    stripped = source.strip()
    if os.path.exists(source):
        return False
    return stripped.startswith("{") or ": " in stripped or stripped.endswith(":")


def load_config(source):
    """Read a configuration; return it as a :class:`~ptycli.utils.parameters.Param`.

    Parameters
    ----------
    source : str, path-like or stream
        A file path, ``'-'`` for standard input, YAML text (a string holding a
        newline, or that is no existing file and looks like YAML, e.g.
        ``'verbose_level: 3'``), or an object with ``read()``.

    Raises
    ------
    ConfigError
        Missing, unreadable or non-text file, a directory, YAML syntax errors
        (``name:LINE:COL: problem``), tabs in the indentation, duplicate keys,
        an empty document, a top level that is not a mapping.
    """
    if hasattr(source, "read"):
        name = getattr(source, "name", "<stream>")
        data = source.read()
        if isinstance(data, bytes):
            data = _decode(data, name)
        return load_config_text(data, str(name))
    if isinstance(source, str) and source == "-":
        return load_config_text(sys.stdin.read(), "<stdin>")
    if isinstance(source, str) and _looks_like_text(source):
        return load_config_text(source, "<string>")
    if not isinstance(source, (str, os.PathLike)):
        raise ConfigError("config: expected a file path, '-' or YAML text, got %r" % (source,))
    path = os.fspath(source)
    if os.path.isdir(path):
        raise ConfigError("%s is a directory, not a config file; give the path of a .yaml file" % path)
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except FileNotFoundError:
        raise ConfigError("config file not found: %s" % path,
                          hint="check the path (relative paths start at %s)" % os.getcwd()) from None
    except PermissionError:
        raise ConfigError("cannot read config file %s: permission denied" % path) from None
    except OSError as exc:
        raise ConfigError("cannot read config file %s: %s" % (path, exc.strerror or exc)) from None
    return load_config_text(_decode(raw, path), path)


def _decode(raw, name):
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError("%s: not a UTF-8 text file (byte %d cannot be decoded); give a YAML text file"
                          % (name, exc.start)) from None


# -- writing ---------------------------------------------------------------------

def to_plain(value):
    """``value`` as plain Python types that ``yaml.safe_dump`` writes.

    Params and dicts become dicts, tuples/sets/arrays lists, numpy scalars
    Python numbers (single precision through their short decimal form),
    complex numbers strings like ``'(1+2j)'``, paths and other objects their
    ``str``.
    """
    if value is None or type(value) in (bool, int, float, str):
        return value
    if isinstance(value, dict):
        out = {}
        for k, v in dict.items(value):
            if isinstance(k, np.generic):
                k = k.item()
            if not (k is None or isinstance(k, (bool, int, float, str))):
                k = str(k)
            out[k] = to_plain(v)
        return out
    if isinstance(value, np.ndarray):
        if value.ndim == 0:
            return to_plain(value[()])
        return [to_plain(v) for v in value]
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(str(value)) if value.dtype.itemsize < 8 else float(value)
    if isinstance(value, (complex, np.complexfloating)):
        return str(complex(value))
    if isinstance(value, (np.str_, np.bytes_)):
        return to_plain(value.item())
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return [to_plain(v) for v in sorted(value, key=repr)]
    if isinstance(value, (os.PathLike, pathlib.PurePath)):
        return os.fspath(value)
    return str(value)


class _Dumper(yaml.SafeDumper):
    """Safe dumper: mappings in block style, lists of scalars in flow style ``[1, 2]``."""

    def represent_list(self, data):
        flow = all(v is None or isinstance(v, (bool, int, float, str)) for v in data)
        return self.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_Dumper.add_representer(list, _Dumper.represent_list)


def dump_yaml(param, stream=None):
    """The tree ``param`` as block-style YAML text (lists of scalars in flow style, ``[0.5, 1.0]``).

    Keys keep their order. Written to ``stream`` (an object with ``write``)
    when given; the text is returned either way.
    """
    text = yaml.dump(to_plain(param), Dumper=_Dumper, default_flow_style=False, sort_keys=False,
                     allow_unicode=True, width=100)
    if stream is not None:
        stream.write(text)
    return text

