"""Parameter declarations: every option is declared once, here is how.

A :class:`Parameter` states a name, default, type, limits and a one-line
doc; a :class:`ParamSet` is an ordered group of them (and of nested sets).
Validation, default filling, ``ptycli params`` listings, the commented
default YAML and error messages are all derived from these declarations.

Types
-----
``int``, ``float``, ``bool``, ``str``, ``pair`` (a number or two numbers
``(rows, cols)``/``(y, x)``, returned as a tuple of two floats), ``intpair``
(same with ints), ``range`` (exactly two numbers ``[min, max]`` with
``min <= max``, returned as a list of two floats), ``list``, ``dict``,
``path`` (a string naming a file or folder), ``any``.

Numbers
-------
Every number is checked from its declaration: NaN and infinity are refused
(``.nan``, ``.inf``, ``'nan'`` from ``--set``), integers must be whole and
lie within ``[low, high]``; an integer declared without ``high`` (``low``)
is still held to :data:`INT_LIMIT` (``-INT_LIMIT``), so that no size,
count or iteration number can ask for more than any machine holds.
A declaration may add a ``check`` callable for what the type cannot say
(e.g. a centre that is a word or a pixel pair).
"""

import difflib
import numbers

from ..errors import ConfigError
from ..utils.param_tree import Param

__all__ = ["Parameter", "ParamSet", "closest", "describe_value", "INT_LIMIT"]

#: Largest magnitude of an integer parameter declared without its own limit.
INT_LIMIT = 2 ** 31 - 1

_TYPE_WORDS = {
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "str": "a string",
    "pair": "a number or a pair of numbers [y, x]",
    "intpair": "an integer or a pair of integers [rows, cols]",
    "range": "a pair of numbers [min, max] with min <= max",
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


def _limit_text(x):
    """A limit as text: plain for ordinary numbers, ``1e+15`` for very large or small floats."""
    if isinstance(x, float) and x != 0 and not 1e-3 <= abs(x) < 1e6:
        return "%g" % x
    return str(x)


def describe_value(value, limit=60):
    """Short one-line words for ``value`` in messages (no dump of nested trees).

    Strings and numbers are shown as their ``repr`` (cut to ``limit``
    characters); a mapping as ``a mapping {key, ...}``, a list as its ``repr``
    when short, else ``a list of N items``.
    """
    if isinstance(value, dict):
        keys = [str(k) for k in list(dict.keys(value))[:4]]
        more = ", ..." if len(value) > 4 else ""
        return "a mapping {%s%s}" % (", ".join(keys), more) if keys else "an empty mapping {}"
    if isinstance(value, (list, tuple)):
        try:
            text = repr([v for v in value]) if not any(isinstance(v, (dict, list, tuple)) for v in value) else ""
        except Exception:  # pragma: no cover - a repr that fails
            text = ""
        if text and len(text) <= limit:
            return text
        return "a list of %d items" % len(value)
    try:
        text = repr(value)
    except Exception:  # pragma: no cover
        text = "<%s>" % type(value).__name__
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


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
    check : callable, optional
        ``check(value, path)``: further validation of the converted value;
        returns the value to keep, raises ConfigError naming ``path``.
    """

    def __init__(self, name, default, type, doc, low=None, high=None, choices=None,
                 nullable=None, unit=None, check=None):
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
        self.extra_check = check

    # -- description --------------------------------------------------------
    def expected(self):
        """Words for what a valid value looks like."""
        if self.choices:
            text = "one of " + ", ".join(str(c) for c in self.choices)
        elif self.type == "range":
            text = "a pair of numbers [min, max] with %smin <= max%s" % (
                "" if self.low is None else "%s <= " % _limit_text(self.low),
                "" if self.high is None else " <= %s" % _limit_text(self.high))
        else:
            text = _TYPE_WORDS[self.type]
            if self.low is not None and self.high is not None:
                text += " in [%s, %s]" % (_limit_text(self.low), _limit_text(self.high))
            elif self.low is not None:
                text += " >= %s" % _limit_text(self.low)
            elif self.high is not None:
                text += " <= %s" % _limit_text(self.high)
        if self.nullable:
            text += " (or null)"
        return text

    # -- validation ---------------------------------------------------------
    def _fail(self, path, value, why=None):
        got = describe_value(value)
        if why:
            msg = "%s: %s (got %s); expected %s" % (path, why, got, self.expected())
        else:
            msg = "%s: expected %s, got %s" % (path, self.expected(), got)
        raise ConfigError(msg)

    def _limits(self, integer):
        """Effective (low, high): the declared limits, integers held to +-INT_LIMIT."""
        low, high = self.low, self.high
        if integer:
            low = -INT_LIMIT if low is None else low
            high = INT_LIMIT if high is None else high
        return low, high

    def _number(self, value, path, integer):
        if isinstance(value, str):
            text = value.strip()
            try:
                value = int(text) if integer and text.lstrip("+-").isdigit() else float(text)
            except ValueError:
                self._fail(path, value)
        if not _is_number(value):
            self._fail(path, value)
        whole = isinstance(value, numbers.Integral)
        if whole:
            value = int(value)
        if not whole or not integer:
            try:
                value = float(value)
            except OverflowError:  # an int beyond the float range
                value = float("inf") if value > 0 else float("-inf")
            if value != value:
                self._fail(path, value, "not a number (NaN)")
            if value in (float("inf"), float("-inf")):
                self._fail(path, value, "not a finite number")
        low, high = self._limits(integer)
        if low is not None and value < low:
            if integer and self.low is None:
                self._fail(path, value, "exceeds the limit -%d of integer parameters" % INT_LIMIT)
            self._fail(path, value, "below the lower limit %s" % _limit_text(low))
        if high is not None and value > high:
            if integer and self.high is None:
                self._fail(path, value, "exceeds the limit %d of integer parameters" % INT_LIMIT)
            self._fail(path, value, "above the upper limit %s" % _limit_text(high))
        if integer:
            if not whole and not value.is_integer():
                self._fail(path, value, "not a whole number")
            return int(value)
        return float(value)

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
        value = self._convert(value, path)
        if value is not None and self.extra_check is not None:
            value = self.extra_check(value, path)
        return value

    def _convert(self, value, path):
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
        if t == "range":
            if not isinstance(value, (list, tuple)) or len(value) != 2:
                self._fail(path, value, "needs exactly two values [min, max]")
            lo, hi = (self._number(v, path, False) for v in value)  # each within [low, high]
            if lo > hi:
                self._fail(path, value, "min is larger than max")
            return [lo, hi]
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
    check : callable, optional
        ``check(values, path)``: a rule between the group's values (e.g. stop
        after start), run on the validated group; raises ConfigError.
    """

    def __init__(self, name, entries, doc="", check=None):
        self.name = name
        self.doc = doc
        self.check = check
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
        return ParamSet(name, list(merged.values()), self.doc if doc is None else doc, check=self.check)

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
            raise ConfigError("%s: expected a mapping of parameters, got %s" % (
                path or "top level", describe_value(tree)))
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
        if self.check is not None:
            self.check(out, path)
        return out


def _copy_default(value):
    if isinstance(value, dict):
        return Param(value).copy()
    if isinstance(value, list):
        return list(value)
    return value
