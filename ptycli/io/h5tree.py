"""Nested dicts and attributes in ptycli's own HDF5 files (reconstruction results and checkpoints).

:func:`write_tree` stores a nested dict (an engine's state) as groups and
typed datasets (attr ``type``: ``array``, ``none``, ``bool``, ``int``,
``float``, ``complex``, ``str``, or ``json`` text for anything else);
:func:`read_tree` gives it back. :func:`set_attrs` / :func:`get_attrs`
store and read flat dicts as HDF5 attributes.
"""

import json

import numpy as np

from .h5text import fixed_text
from .reading import h5_text as _str

__all__ = ["attr_value", "set_attrs", "get_attrs", "json_default", "write_tree", "read_tree"]


def attr_value(value):
    """An attribute value h5py stores (None -> '' is avoided by the callers)."""
    if isinstance(value, (np.ndarray, np.generic, bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        arr = np.asarray(value)
        if arr.dtype.kind in "biuf":
            return arr
        return np.asarray([str(v) for v in value], dtype=object)
    return str(value)


def set_attrs(node, attrs):
    """Store ``attrs`` on ``node`` (None values skipped; lists of text as UTF-8 string arrays)."""
    import h5py

    for key, value in (attrs or {}).items():
        if value is None:
            continue
        value = attr_value(value)
        if isinstance(value, np.ndarray) and value.dtype == object:
            node.attrs.create(key, value, dtype=h5py.string_dtype("utf-8"))
        else:
            node.attrs[key] = value


def get_attrs(node):
    """The attributes of ``node`` as Python values (text decoded, numpy scalars as Python numbers)."""
    out = {}
    for key, value in node.attrs.items():
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        elif isinstance(value, np.ndarray):
            if value.dtype.kind in "OS":
                value = [_str(v) for v in value]
        elif isinstance(value, np.generic):
            value = value.item()
        out[key] = value
    return out


def json_default(value):
    """``json.dumps`` ``default``: numpy scalars and arrays as Python numbers and lists."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError("cannot store %r" % type(value).__name__)


#: typed scalar leaves of :func:`write_tree`: (Python and numpy types, stored as, attr ``type``); bool
#: before int (a bool is an int)
_SCALARS = (((bool, np.bool_), np.bool_, "bool"), ((int, np.integer), np.int64, "int"),
            ((float, np.floating), np.float64, "float"), ((complex, np.complexfloating), np.complex128, "complex"))
#: how :func:`read_tree` turns each typed scalar back into a Python value
_READ_SCALAR = {"bool": bool, "int": int, "float": float, "complex": complex}


def _typed_leaf(value):
    """``(data, attr type)`` of a leaf stored as a typed dataset, or None for one stored as JSON text."""
    import h5py

    if isinstance(value, np.ndarray) and value.dtype.kind in "biufc":
        return value, "array"
    if value is None:
        return h5py.Empty("f8"), "none"
    for types, stored, kind in _SCALARS:
        if isinstance(value, types):
            if kind == "int" and not -2 ** 63 <= int(value) < 2 ** 63:
                return None  # beyond int64: JSON keeps it exact
            return stored(value), kind
    if isinstance(value, str):
        return fixed_text(value), "str"
    return None


def write_tree(group, tree):
    """Store a nested dict in ``group``: arrays as datasets, other leaves as typed scalars.

    Dicts with string keys become groups; numpy arrays datasets (attr
    ``type='array'``); bool/int/float/str/None typed scalars; anything else
    (lists, big integers, nested lists of dicts) JSON text (attr
    ``type='json'``). :func:`read_tree` gives the tree back.
    """
    for key, value in tree.items():
        key = str(key)
        if isinstance(value, dict) and all(isinstance(k, str) for k in value):
            sub = group.create_group(key)
            sub.attrs["type"] = "dict"
            write_tree(sub, value)
            continue
        leaf = _typed_leaf(value)
        if leaf is None:
            try:
                text = json.dumps(value, default=json_default)
            except TypeError as exc:
                raise TypeError("engine state entry %r: %s" % (key, exc)) from None
            leaf = (fixed_text(text), "json")
        ds = group.create_dataset(key, data=leaf[0])
        ds.attrs["type"] = leaf[1]


def read_tree(group):
    """The nested dict stored by :func:`write_tree`."""
    import h5py

    out = {}
    for key, node in group.items():
        kind = _str(node.attrs.get("type", ""))
        if isinstance(node, h5py.Group):
            out[key] = read_tree(node)
        elif kind == "none":
            out[key] = None
        elif kind in _READ_SCALAR:
            out[key] = _READ_SCALAR[kind](node[()])
        elif kind == "str":
            out[key] = _str(node[()])
        elif kind == "json":
            out[key] = json.loads(_str(node[()]))
        else:
            out[key] = node[()]
    return out
