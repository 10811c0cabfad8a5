"""Command-line overrides of a configuration: ``key.path=value`` (the value read as YAML).

:func:`parse_override` splits one; :func:`apply_overrides` applies a list of
them to a tree (validation follows, in :func:`ptycli.params.tree.validate`).
"""

import yaml

from ..errors import ConfigError
from ..utils.param_tree import Param
from .declare import describe_value
from .yamlio import StrictLoader, _LimitError

__all__ = ["parse_override", "apply_overrides"]


def parse_override(text):
    """Split ``'a.b.c=value'`` into ``('a.b.c', typed value)``; the value is read as YAML.

    ``3`` gives an int, ``0.5`` a float, ``true`` a bool, ``[1, 2]`` a list,
    ``null`` None; text that is not valid YAML is kept as a string.
    """
    if not isinstance(text, str):
        raise ConfigError("override %r: expected a string KEY=VALUE" % (text,))
    if "=" not in text:
        raise ConfigError("override %r: missing '='; write KEY=VALUE, e.g. engines.dm.numiter=50" % text)
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError("override %r: empty key; write KEY=VALUE, e.g. engines.dm.numiter=50" % text)
    parts = key.split(".")
    if any(not part.strip() or part != part.strip() for part in parts):
        raise ConfigError("override %r: malformed key %r (empty part or spaces); write dotted names "
                          "such as scans.MF.data.shape" % (text, key))
    raw = raw.strip()
    if not raw:
        raise ConfigError("override %r: no value after '='; write %s=null to clear it or %s='' for an "
                          "empty string" % (text, key, key))

    try:
        value = yaml.load(raw, Loader=StrictLoader)
    except _LimitError as exc:
        raise ConfigError("override %s=...: %s" % (key, exc.args[0].split(": ", 1)[-1])) from None
    except yaml.YAMLError:
        value = raw
    except RecursionError:
        raise ConfigError("override %s=...: the value is nested too deeply; give a plain value" % key) from None
    return key, value


def apply_overrides(tree, overrides):
    """Return a copy of ``tree`` with ``KEY=VALUE`` overrides applied, in order.

    Parameters
    ----------
    tree : dict or Param
        The configuration (not modified).
    overrides : str or sequence of str
        Items such as ``'engines.dm.numiter=50'``; the value is read as YAML
        (see :func:`parse_override`). Missing intermediate levels are created
        (a null level becomes a mapping); a new engine label is appended after
        the existing ones. Keys are checked later by :func:`validate`.
    """
    out = Param(tree or {}).copy()
    if isinstance(overrides, str):
        overrides = [overrides]
    for text in overrides or ():
        key, value = parse_override(text)
        parts = key.split(".")
        node = out
        for i, part in enumerate(parts[:-1]):
            child = dict.get(node, part)
            if child is None:
                child = Param()
                dict.__setitem__(node, part, child)
            elif not isinstance(child, dict):
                raise ConfigError("override %r: %s holds %s, not a mapping, so it has no key %r" % (
                    text, ".".join(parts[:i + 1]), describe_value(child), parts[i + 1]))
            node = child
        node[parts[-1]] = value
    return out
