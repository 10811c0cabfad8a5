"""Parameter declarations: every option is declared once, here is how.

A :class:`Parameter` states a name, default, type, limits and a one-line
doc; a :class:`ParamSet` is an ordered group of them (and of nested sets).
Validation, default filling, ``ptycli params`` listings, the commented
default YAML and error messages are all derived from these declarations.

Types
-----
``int``, ``float``, ``bool``, ``str``, ``pair`` (a number or two numbers
``(rows, cols)``/``(y, x)``, returned as a tuple of two floats), ``intpair``
(same with ints), ``list``, ``dict``, ``path`` (a string naming a file or
folder), ``any``.
"""

import difflib
import numbers

from ..errors import ConfigError
from ..utils.parameters import Param

__all__ = ["Parameter", "ParamSet", "closest"]

_TYPE_WORDS = {
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "str": "a string",
    "pair": "a number or a pair of numbers [y, x]",
    "intpair": "an integer or a pair of integers [rows, cols]",
    "list": "a list",
    "dict": "a mapping",
    "path": "a file path",
    "any": "any value",
}


def closest(name, candidates, n=3):
    """Up to ``n`` names in ``candidates`` closest to ``name`` (for did-you-mean)."""
    return difflib.get_close_matches(str(name), [str(c) for c in candidates], n=n, cutoff=0.5)


def _is_number(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


class Parameter:
    """One declared option.

    Parameters
    ----------
    name : str
        Key in its group.
    default : object
        Value used when the key is absent.
    type : str
        One of the module's types (see module docstring).
    doc : str
        One line: what it does, with units.
    low, high : number, optional
        Inclusive limits for numbers (each element of a pair).
    choices : sequence of str, optional
        Allowed values (strings compared case-insensitively, returned as declared).
    nullable : bool, optional
        Whether ``None`` (YAML ``null``) is allowed; default: when the default is None.
    unit : str, optional
        Physical unit, shown in listings.
    """

    def __init__(self, name, default, type, doc, low=None, high=None, choices=None,
                 nullable=None, unit=None):
        if type not in _TYPE_WORDS:
            raise ValueError("unknown parameter type %r for %s" % (type, name))
        self.name = name
        self.default = default
        self.type = type
        self.doc = doc
        self.low = low
        self.high = high
        self.choices = None if choices is None else list(choices)
        self.nullable = (default is None) if nullable is None else nullable
        self.unit = unit

    # -- description --------------------------------------------------------
    def expected(self):
        """Words for what a valid value looks like."""
        if self.choices:
            text = "one of " + ", ".join(str(c) for c in self.choices)
        else:
            text = _TYPE_WORDS[self.type]
            if self.low is not None and self.high is not None:
                text += " in [%s, %s]" % (self.low, self.high)
            elif self.low is not None:
                text += " >= %s" % self.low
            elif self.high is not None:
                text += " <= %s" % self.high
        if self.nullable:
            text += " (or null)"
        return text

    # -- validation ---------------------------------------------------------
    def _fail(self, path, value, why=None):
        got = "%r" % (value,)
        if why:
            msg = "%s: %s (got %s); expected %s" % (path, why, got, self.expected())
        else:
            msg = "%s: expected %s, got %s" % (path, self.expected(), got)
        raise ConfigError(msg)

    def _number(self, value, path, integer):
        if isinstance(value, str):
            try:
                value = float(value.strip())
            except ValueError:
                self._fail(path, value)
        if not _is_number(value):
            self._fail(path, value)
        if integer:
            if float(value) != int(value):
                self._fail(path, value, "not a whole number")
            value = int(value)
        else:
            value = float(value)
        if value != value:  # NaN
            self._fail(path, value, "not a number")
        if self.low is not None and value < self.low:
            self._fail(path, value, "below the lower limit %s" % self.low)
        if self.high is not None and value > self.high:
            self._fail(path, value, "above the upper limit %s" % self.high)
        return value

    def check(self, value, path=None):
        """Return ``value`` converted to the declared type, or raise ConfigError.

        Parameters
        ----------
        value : object
            The value from the tree.
        path : str, optional
            Dotted path named in error messages; default the name.
        """
        path = path or self.name
        if value is None:
            if self.nullable:
                return None
            self._fail(path, value, "a value is required")
        t = self.type
        if self.choices is not None:
            if isinstance(value, str):
                for c in self.choices:
                    if isinstance(c, str) and c.lower() == value.lower():
                        return c
                hint = closest(value, self.choices)
                raise ConfigError("%s: unknown value %r; valid: %s%s" % (
                    path, value, ", ".join(str(c) for c in self.choices),
                    " (did you mean %s?)" % " or ".join(hint) if hint else ""))
            if value in self.choices:
                return value
            self._fail(path, value)
        if t == "any":
            return value
        if t == "int":
            return self._number(value, path, integer=True)
        if t == "float":
            return self._number(value, path, integer=False)
        if t == "bool":
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "on", "off"):
                return value.lower() in ("true", "yes", "on")
            self._fail(path, value)
        if t in ("str", "path"):
            if isinstance(value, str):
                return value
            if t == "path" and hasattr(value, "__fspath__"):
                return str(value)
            self._fail(path, value)
        if t in ("pair", "intpair"):
            integer = t == "intpair"
            if isinstance(value, (list, tuple)) or hasattr(value, "shape"):
                items = list(value)
                if len(items) != 2:
                    self._fail(path, value, "needs exactly two values")
                return tuple(self._number(v, path, integer) for v in items)
            v = self._number(value, path, integer)
            return (v, v)
        if t == "list":
            if isinstance(value, (list, tuple)):
                return list(value)
            self._fail(path, value)
        if t == "dict":
            if isinstance(value, dict):
                return Param(value)
            self._fail(path, value)
        raise AssertionError(t)

    def __repr__(self):
        return "Parameter(%r, default=%r, type=%r)" % (self.name, self.default, self.type)


class ParamSet:
    """An ordered group of declared parameters and nested groups.

    Parameters
    ----------
    name : str
        Group name (the key in the parent group).
    entries : sequence of Parameter or ParamSet
        The declarations, in documentation order.
    doc : str
        One line on what the group configures.
    """

    def __init__(self, name, entries, doc=""):
        self.name = name
        self.doc = doc
        self.entries = {}
        for e in entries:
            if e.name in self.entries:
                raise ValueError("parameter %s declared twice in %s" % (e.name, name))
            self.entries[e.name] = e

    def __getitem__(self, name):
        return self.entries[name]

    def __contains__(self, name):
        return name in self.entries

    def __iter__(self):
        return iter(self.entries.values())

    def extended(self, name, entries, doc=None):
        """A new set with these entries added (or replacing same-named ones)."""
        merged = dict(self.entries)
        for e in entries:
            merged[e.name] = e
        return ParamSet(name, list(merged.values()), self.doc if doc is None else doc)

    def defaults(self):
        """A Param tree of the declared defaults."""
        out = Param()
        for e in self.entries.values():
            if isinstance(e, ParamSet):
                out[e.name] = e.defaults()
            else:
                out[e.name] = _copy_default(e.default)
        return out

    def validate(self, tree=None, path=None):
        """Check ``tree`` against the declarations; return it filled with defaults.

        Raises
        ------
        ConfigError
            For an unknown key (with the closest valid names), a value of the
            wrong type or out of its limits; the message names the dotted path.
        """
        path = path if path is not None else self.name
        if tree is None:
            tree = {}
        if not isinstance(tree, dict):
            raise ConfigError("%s: expected a mapping of parameters, got %r" % (path or "top level", tree))
        for key in tree:
            if key not in self.entries:
                hint = closest(key, self.entries)
                where = "%s.%s" % (path, key) if path else str(key)
                raise ConfigError("%s: unknown parameter%s; valid names here: %s" % (
                    where, " (did you mean %s?)" % " or ".join(hint) if hint else "",
                    ", ".join(self.entries)))
        out = Param()
        for name, e in self.entries.items():
            sub = "%s.%s" % (path, name) if path else name
            if isinstance(e, ParamSet):
                out[name] = e.validate(tree.get(name), sub)
            elif name in tree:
                out[name] = e.check(tree[name], sub)
            elif e.default is None:
                out[name] = None
            else:
                # defaults go through the same conversion as given values, so that
                # validating a validated tree changes nothing
                out[name] = e.check(_copy_default(e.default), sub)
        return out


def _copy_default(value):
    if isinstance(value, dict):
        return Param(value).copy()
    if isinstance(value, list):
        return list(value)
    return value
