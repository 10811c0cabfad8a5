"""Parameter trees: :class:`Param`, a ``dict`` with attribute access.

(The declarations of ptycli's parameters live in :mod:`ptycli.params`; this
module holds only the tree type they fill. ``ptycli.utils.parameters.Param``,
the classic import path, names the same class.)

A :class:`Param` is an ordinary ``dict`` whose keys can also be read and
written as attributes, whose nested ``dict`` values are themselves
:class:`Param` instances, and whose string keys may be *dotted paths* into
the tree::

    >>> p = Param()
    >>> p.scans = Param()
    >>> p['scans.MF.data.shape'] = 128      # intermediate levels are created
    >>> p.scans.MF.data.shape
    128
    >>> 'scans.MF.data' in p
    True

Rules worth knowing
-------------------
* A dot in a string key always means a path: keys that contain dots cannot
  be stored as such.
* Plain ``dict`` values (also ``dict`` items of ``list`` values) are
  converted to :class:`Param` on assignment, so ``p.a = {'b': 1}`` gives
  ``p.a.b == 1``.  A :class:`Param` value is stored as given (no copy).
* Keys that coincide with ``dict`` method names (``items``, ``copy``,
  ``update`` ...) are stored normally but can only be *read* with ``[]``.
* Reading a missing attribute raises ``AttributeError`` (so ``hasattr`` and
  ``getattr(p, name, default)`` work); reading a missing item raises
  ``KeyError``.
* :meth:`Param.update` merges recursively by default (sub-trees are updated,
  not replaced); ``update(other, in_place_depth=0)`` is a flat update.
"""

import copy as _copy
import os as _os
import pathlib as _pathlib

import numpy as _np

__all__ = ["Param", "to_plain"]

#: The import path a Param shows in its printed layout: the classic one of the
#: ptychography data model (``ptycli.utils.parameters`` re-exports the class).
PUBLIC_PATH = "ptycli.utils.parameters.Param"

# Column at which the ' : ' separator of the printed layout starts.
_KEY_WIDTH = 24
# Multiplier used to scramble id(obj) into the printed id token; coprime to
# 36**10 so that distinct live objects get distinct tokens.
_ID_MIX = 0x5DEECE66D
_ID_MOD = 36 ** 10
_ALNUM = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_MISSING = object()
# Sequences longer than this print abbreviated.
_MAX_SEQ_ITEMS = 10
# Reprs of arbitrary objects are cut to this many characters.
_MAX_REPR = 120


def _id_token(obj):
    """Return ``'id'`` + 10 uppercase alphanumerics derived from ``id(obj)``."""
    n = (id(obj) * _ID_MIX) % _ID_MOD
    chars = []
    for _ in range(10):
        n, r = divmod(n, 36)
        chars.append(_ALNUM[r])
    return "id" + "".join(reversed(chars))


def _split_key(key):
    """Split a dotted string key into its parts; other keys give ``None``."""
    if isinstance(key, str) and "." in key:
        parts = key.split(".")
        if any(part == "" for part in parts):
            raise KeyError("malformed dotted key %r" % key)
        return parts
    return None


def _convert(value):
    """Turn plain dicts (also inside lists) into Params; leave the rest."""
    if isinstance(value, Param):
        return value
    if isinstance(value, dict):
        return Param(value)
    if isinstance(value, list) and any(isinstance(v, dict) for v in value):
        return [_convert(v) for v in value]
    return value


class Param(dict):
    """A ``dict`` tree with attribute access and dotted keys.

    Parameters
    ----------
    *args, **kwargs
        Anything ``dict`` accepts: a mapping or an iterable of ``(key,
        value)`` pairs, and keyword items.  Nested dicts become
        :class:`Param` (structural copies, see :meth:`update`).

    Examples
    --------
    >>> p = Param(a=1, b={'c': 2.0})
    >>> p.b.c
    2.0
    >>> p['b.c'] = 3.0
    >>> p.get('b.d', 'default')
    'default'
    """

    __slots__ = ()

    def __init__(self, *args, **kwargs):
        super().__init__()
        if len(args) > 1:
            raise TypeError("Param expected at most 1 positional argument, got %d" % len(args))
        if args and args[0] is not None:
            self.update(args[0])
        if kwargs:
            self.update(kwargs)

    # -- attribute access ---------------------------------------------------
    def __getattr__(self, name):
        # Dunder lookups (pickle, copy, numpy, IPython probing) never read items.
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        try:
            return self[name]
        except KeyError:
            raise AttributeError(
                "%s has no key or attribute %r" % (type(self).__name__, name)
            ) from None

    def __setattr__(self, name, value):
        if name.startswith("__") and name.endswith("__"):
            object.__setattr__(self, name, value)
        else:
            self[name] = value

    def __delattr__(self, name):
        try:
            del self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __dir__(self):
        keys = [k for k in dict.keys(self) if isinstance(k, str) and k.isidentifier()]
        return sorted(set(super().__dir__()) | set(keys))

    # -- item access with dotted keys ---------------------------------------
    def _parent_of(self, parts, create):
        """Return the Param holding the last of ``parts`` (or None)."""
        node = self
        for i, part in enumerate(parts[:-1]):
            if not dict.__contains__(node, part):
                if not create:
                    return None
                dict.__setitem__(node, part, Param())
            child = dict.__getitem__(node, part)
            if not isinstance(child, Param):
                if create:
                    raise TypeError(
                        "cannot create %r: %r holds a %s, not a Param"
                        % (".".join(parts), ".".join(parts[: i + 1]), type(child).__name__)
                    )
                return None
            node = child
        return node

    def __getitem__(self, key):
        parts = _split_key(key)
        if parts is None:
            return dict.__getitem__(self, key)
        node = self._parent_of(parts, create=False)
        if node is None or not dict.__contains__(node, parts[-1]):
            raise KeyError(key)
        return dict.__getitem__(node, parts[-1])

    def __setitem__(self, key, value):
        value = _convert(value)
        parts = _split_key(key)
        if parts is None:
            dict.__setitem__(self, key, value)
        else:
            dict.__setitem__(self._parent_of(parts, create=True), parts[-1], value)

    def __delitem__(self, key):
        parts = _split_key(key)
        if parts is None:
            dict.__delitem__(self, key)
            return
        node = self._parent_of(parts, create=False)
        if node is None or not dict.__contains__(node, parts[-1]):
            raise KeyError(key)
        dict.__delitem__(node, parts[-1])

    def __contains__(self, key):
        parts = _split_key(key)
        if parts is None:
            return dict.__contains__(self, key)
        node = self._parent_of(parts, create=False)
        return node is not None and dict.__contains__(node, parts[-1])

    def get(self, key, default=None):
        """Return ``self[key]`` (dotted keys allowed), or ``default``."""
        try:
            return self[key]
        except KeyError:
            return default

    def pop(self, key, default=_MISSING):
        """Remove ``key`` (dotted allowed) and return its value."""
        try:
            value = self[key]
        except KeyError:
            if default is _MISSING:
                raise
            return default
        del self[key]
        return value

    def setdefault(self, key, default=None):
        """Return ``self[key]``, first setting it to ``default`` if missing."""
        if key not in self:
            self[key] = default
        return self[key]

    # -- copy and merge -----------------------------------------------------
    def copy(self, depth=-1):
        """Return a copy of this tree (always a :class:`Param`).

        Parameters
        ----------
        depth : int
            ``-1`` (default): a full deep copy, leaves included
            (``copy.deepcopy``).  ``0``: a shallow copy (children shared).
            ``n > 0``: the Param structure is copied ``n`` levels below this
            one; deeper sub-trees and all leaf values are shared.
        """
        if depth < 0:
            return _copy.deepcopy(self)
        new = Param()
        for key, value in dict.items(self):
            if depth > 0 and isinstance(value, Param):
                value = value.copy(depth - 1)
            dict.__setitem__(new, key, value)
        return new

    def update(self, other=None, /, in_place_depth=-1, **kwargs):
        """Merge ``other`` (and keyword items) into this tree.

        Parameters
        ----------
        other : mapping or iterable of pairs, optional
            Items to merge.  Dotted keys address nested entries.
        in_place_depth : int
            How many levels deep sub-trees are merged rather than replaced.
            ``-1`` (default): merge at every depth, so ``p.update(q)`` keeps
            the entries of ``p.a`` that ``q.a`` does not mention.  ``0``: a
            flat update, like ``dict.update`` (each value of ``other``
            replaces the old one).

        Notes
        -----
        Dict values are stored as new :class:`Param` structures (leaf values
        are shared, not copied), so later merges into this tree never change
        ``other``.
        """
        if other is not None:
            items = other.items() if hasattr(other, "keys") else other
            for key, value in items:
                self._merge(key, value, in_place_depth)
        for key, value in kwargs.items():
            self._merge(key, value, in_place_depth)
        return None

    def _merge(self, key, value, depth):
        if isinstance(value, dict):
            if depth != 0 and key in self:
                current = self[key]
                if isinstance(current, Param):
                    current.update(value, in_place_depth=depth - 1 if depth > 0 else -1)
                    return
            new = Param()
            new.update(value, in_place_depth=-1)
            self[key] = new
        else:
            self[key] = value

    def __ior__(self, other):
        self.update(other)
        return self

    def __or__(self, other):
        new = self.copy(0)
        new.update(other)
        return new

    def __copy__(self):
        return self.copy(0)

    # -- conversion ---------------------------------------------------------
    def to_dict(self):
        """Return the tree as plain nested ``dict`` objects (leaves shared)."""
        return _plain(self)

    @classmethod
    def from_yaml(cls, source):
        """Build a tree from YAML (``yaml.safe_load``, with alias expansion and nesting bounded).

        Parameters
        ----------
        source : str, path-like or stream
            YAML text, the path of a YAML file (a ``str`` without newline that
            names an existing file, or any ``os.PathLike``), or an object with
            ``read()``.

        Returns
        -------
        Param
            Empty when the document is empty.

        Raises
        ------
        TypeError
            When the document's top level is not a mapping.
        yaml.YAMLError
            For invalid YAML, and for aliases that expand beyond
            ``ptycli.params.yamlio.MAX_NODES`` values or nesting deeper than
            ``MAX_DEPTH`` levels.
        """
        import yaml

        if hasattr(source, "read"):
            text = source.read()
        elif isinstance(source, _os.PathLike) or (
            isinstance(source, str) and "\n" not in source and _os.path.isfile(source)
        ):
            with open(source, "r", encoding="utf-8") as fh:
                text = fh.read()
        else:
            text = source
        from ..params.yamlio import BoundedLoader

        data = yaml.load(text, Loader=BoundedLoader)
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise TypeError(
                "YAML parameter document must be a mapping, got %s" % type(data).__name__
            )
        new = cls()
        new.update(data)
        return new

    def to_yaml(self, stream_or_path=None):
        """Dump the tree as YAML with ``yaml.safe_dump``.

        numpy scalars become plain numbers, arrays and tuples become lists,
        complex numbers become strings such as ``'(1+2j)'``, path objects and
        any other unknown objects become their ``str``.

        Parameters
        ----------
        stream_or_path : None, str, path-like or stream
            Where to write.  ``None`` only returns the text.

        Returns
        -------
        str
            The YAML text (also when it was written somewhere).
        """
        import yaml

        text = yaml.safe_dump(
            to_plain(self), default_flow_style=None, sort_keys=False, allow_unicode=True
        )
        if stream_or_path is None:
            return text
        if hasattr(stream_or_path, "write"):
            stream_or_path.write(text)
        else:
            with open(stream_or_path, "w", encoding="utf-8") as fh:
                fh.write(text)
        return text

    # -- printing -----------------------------------------------------------
    def _header(self):
        cls = type(self)
        name = PUBLIC_PATH if cls is Param else "%s.%s" % (cls.__module__, cls.__qualname__)
        return "%s(%d)" % (name, len(self))

    def _lines(self, depth, out, seen):
        seen = seen | {id(self)}
        indent = "  " * depth
        for key, value in dict.items(self):
            left = ("%s* %s" % (indent, key)).ljust(_KEY_WIDTH)
            if isinstance(value, Param):
                if id(value) in seen:
                    out.append("%s : <recursive %s>" % (left, value._header()))
                    continue
                out.append("%s : %s" % (left, value._header()))
                value._lines(depth + 1, out, seen)
            else:
                out.append("%s : %s" % (left, _format_value(value)))

    def __str__(self):
        out = [("* %s" % _id_token(self)).ljust(_KEY_WIDTH) + " : " + self._header()]
        self._lines(1, out, frozenset())
        return "\n".join(out)

    __repr__ = __str__


def _plain(value):
    """Recursively turn Params into dicts (inside lists and tuples too)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in dict.items(value)}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    return value


def to_plain(value):
    """``value`` as plain Python types that ``yaml.safe_dump`` writes.

    Params and dicts become dicts, tuples/sets/arrays lists, numpy scalars
    Python numbers (single precision through their short decimal form, also
    for complex numbers), complex numbers strings like ``'(1+2j)'``, bytes
    text, paths and other objects their ``str``.
    """
    if value is None or type(value) in (bool, int, float, str):
        return value
    if isinstance(value, (bool, int, float, str)) and not isinstance(value, _np.generic):
        # subclasses such as IntEnum: dump as the plain base type
        for base in (bool, int, float, str):
            if isinstance(value, base):
                return base(value)
    if isinstance(value, dict):
        out = {}
        for key, item in dict.items(value):
            if isinstance(key, _np.generic):
                key = key.item()
            if not (key is None or isinstance(key, (bool, int, float, str))):
                key = str(key)
            out[key] = to_plain(item)
        return out
    if isinstance(value, _np.ndarray):
        if value.dtype.kind in "fc" and value.dtype.itemsize < (8 if value.dtype.kind == "f" else 16):
            # single/half precision: go element-wise so numbers keep their
            # short decimal form (0.1, not 0.10000000149011612)
            return [to_plain(v) for v in value] if value.ndim else to_plain(value[()])
        return to_plain(value.tolist())
    if isinstance(value, _np.floating) and value.dtype.itemsize < 8:
        return float(str(value))
    if isinstance(value, _np.complexfloating) and value.dtype.itemsize < 16:
        return str(value)
    if isinstance(value, _np.generic):
        return to_plain(value.item())
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=repr) if isinstance(value, (set, frozenset)) else value
        return [to_plain(v) for v in items]
    if isinstance(value, complex):
        return str(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, (_os.PathLike, _pathlib.PurePath)):
        return _os.fspath(value)
    return str(value)


def _format_value(value):
    """One-line text for a leaf value in the printed tree."""
    if value is None or isinstance(value, (bool, int, float, complex, str)) and not isinstance(
        value, _np.generic
    ):
        return repr(value)
    if isinstance(value, _np.ndarray):
        if value.size <= _MAX_SEQ_ITEMS:
            text = _np.array2string(value, max_line_width=10 ** 6)
            return " ".join(text.split())
        return "array(shape=%s, dtype=%s)" % (value.shape, value.dtype)
    if isinstance(value, (_np.str_, _np.bytes_)):
        return repr(value.item())
    if isinstance(value, _np.generic):
        return str(value)
    if isinstance(value, (list, tuple)):
        items = [_format_value(v) for v in value[:_MAX_SEQ_ITEMS]]
        if len(value) > _MAX_SEQ_ITEMS:
            items.append("... (%d items)" % len(value))
        if isinstance(value, tuple):
            inner = ", ".join(items) + ("," if len(value) == 1 else "")
            return "(%s)" % inner
        return "[%s]" % ", ".join(items)
    if isinstance(value, dict):
        items = ["%r: %s" % (k, _format_value(v)) for k, v in list(dict.items(value))[:_MAX_SEQ_ITEMS]]
        if len(value) > _MAX_SEQ_ITEMS:
            items.append("... (%d items)" % len(value))
        return "{%s}" % ", ".join(items)
    text = " ".join(repr(value).split())
    if len(text) > _MAX_REPR:
        text = text[: _MAX_REPR - 3] + "..."
    return text
