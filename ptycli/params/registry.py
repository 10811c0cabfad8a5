"""Name registries of loaders, engines and scan models.

A loader (``scans.<label>.data.name``), an engine (``engines.<label>.name``)
and a scan model (``scans.<label>.name``) are chosen by name in the
configuration. Each registers itself once, at import, with the
:class:`~ptycli.params.declare.ParamSet` of its own parameters and a factory
(usually its class)::

    from ptycli.params.registry import register_loader, register_engine

    @register_loader("MoonFlowerScan", MOONFLOWER_PARAMS)
    class MoonFlowerScan(LoaderBase):
        ...

    register_engine("DM", DM_PARAMS, DM)          # plain call works too

Names are looked up case-insensitively (``dm`` finds ``DM``) and the entry
carries the canonical spelling. An unknown name raises
:class:`~ptycli.errors.ConfigError` listing the registered names, with a
did-you-mean suggestion.

Loader and engine modules live in the packages ``ptycli.scans`` and
``ptycli.engines``; :func:`load_plugins` imports those packages and all
their public submodules so that every registry is filled before a
configuration is validated (``ptycli.params.tree.validate`` calls it).

The scan models ``Full`` and ``Vanilla`` are known from the start (with no
factory and no extra parameters); ``ptycli.core`` may register them again
with their factories.
"""

import collections
import difflib
import importlib
import pkgutil

from ..errors import ConfigError
from ..log import get_logger
from .declare import ParamSet, describe_value

__all__ = [
    "Registered",
    "Registry",
    "LOADERS",
    "ENGINES",
    "SCAN_MODELS",
    "register_loader",
    "register_engine",
    "register_scan_model",
    "get_loader",
    "get_engine",
    "get_scan_model",
    "loaders",
    "engines",
    "scan_models",
    "load_plugins",
    "plugin_errors",
    "suggest",
]

#: One registry entry: canonical ``name``, its ``paramset`` (a ParamSet, possibly
#: empty), the ``factory`` (class or callable; None for a placeholder) and the
#: registry ``kind`` ('loader', 'engine', 'scan model').
Registered = collections.namedtuple("Registered", "name paramset factory kind")


def suggest(name, candidates, n=3):
    """Up to ``n`` of ``candidates`` closest to ``name``, compared case-insensitively.

    Only names nearly as close as the best match are kept (a clear winner is
    suggested alone).
    """
    by_lower = {}
    for c in candidates:
        by_lower.setdefault(str(c).lower(), str(c))
    hits = difflib.get_close_matches(str(name).lower(), list(by_lower), n=n, cutoff=0.5)
    if not hits:
        return []
    # keep only suggestions about as close as the best one
    ratio = lambda c: difflib.SequenceMatcher(None, str(name).lower(), c).ratio()  # noqa: E731
    best = ratio(hits[0])
    return [by_lower[h] for h in hits if ratio(h) >= 0.9 * best]


def _factory_id(factory):
    if factory is None:
        return None
    return (getattr(factory, "__module__", None), getattr(factory, "__qualname__", repr(factory)))


class Registry:
    """Names of one kind of plugin, looked up case-insensitively.

    The one registry of its kind: the loader and engine class decorators
    (:func:`ptycli.scans.base.register`, :func:`ptycli.engines.base.register`)
    fill it, configurations are validated through its ParamSets, and it reads
    as a mapping of canonical names to factories (``LOADERS["Hdf5Scan"]`` is
    the class; :meth:`get` returns the whole :class:`Registered` entry).

    Parameters
    ----------
    kind : str
        Word used in messages ('loader', 'engine', 'scan model').
    parameter : str
        The configuration key that names an entry (for messages), e.g.
        ``'scans.<label>.data.name'``.
    """

    def __init__(self, kind, parameter):
        self.kind = kind
        self.parameter = parameter
        self._entries = {}  # lower-case name -> Registered
        #: optional ``detector(source) -> (name or None, reason)``: picks an entry for an input when the
        #: config names none (the scan loaders install :func:`ptycli.scans.detect.detect_loader`)
        self.detector = None

    def register(self, name, paramset=None, factory=None, replace=False):
        """Add ``name``; return the :class:`Registered` entry.

        Registering a name again is allowed when the old entry is a
        placeholder (no factory), when the factory is the same class (a module
        reload), or with ``replace=True``; otherwise ValueError (two plugins
        claiming one name is a programming error).
        """
        if not isinstance(name, str) or not name.strip() or "." in name:
            raise ValueError("%s name must be a non-empty string without dots, got %r" % (self.kind, name))
        if paramset is None:
            paramset = ParamSet(name, [], "")
        if not isinstance(paramset, ParamSet):
            raise TypeError("%s %s: paramset must be a ParamSet, got %r" % (self.kind, name, paramset))
        key = name.lower()
        old = self._entries.get(key)
        if old is not None and not replace:
            same = _factory_id(old.factory) == _factory_id(factory)
            if old.factory is not None and not same:
                raise ValueError("%s name %r is already registered by %r" % (self.kind, name, old.factory))
        entry = Registered(name, paramset, factory, self.kind)
        self._entries[key] = entry
        return entry

    def unregister(self, name):
        """Remove ``name`` (any case); missing names are ignored."""
        self._entries.pop(str(name).lower(), None)

    def names(self):
        """The registered canonical names, sorted case-insensitively."""
        return sorted((e.name for e in self._entries.values()), key=str.lower)

    def entries(self):
        """The :class:`Registered` entries, sorted by name."""
        return [self._entries[n.lower()] for n in self.names()]

    def __contains__(self, name):
        return isinstance(name, str) and name.lower() in self._entries

    def __len__(self):
        return len(self._entries)

    # -- read as a mapping of canonical names to factories (``ENGINES["DM"]`` is the class) --
    def __getitem__(self, name):
        """The factory registered as ``name`` (any case); KeyError when there is none."""
        entry = self.find(name)
        if entry is None:
            raise KeyError(name)
        return entry.factory

    def __iter__(self):
        return iter(self.names())

    def items(self):
        """``(name, factory)`` pairs, sorted by name."""
        return [(e.name, e.factory) for e in self.entries()]

    def pop(self, name, default=None):
        """Remove ``name`` (any case) and return its factory (``default`` when it is not registered)."""
        entry = self.find(name)
        if entry is None:
            return default
        self.unregister(name)
        return entry.factory

    def find(self, name):
        """The entry called ``name`` (any case), or None."""
        if not isinstance(name, str):
            return None
        return self._entries.get(name.strip().lower())

    def get(self, name, path=None):
        """The entry called ``name`` (any case).

        Raises
        ------
        ConfigError
            For a missing or unknown name; the message names ``path`` (default
            the registry's parameter), lists the registered names and suggests
            the closest ones.
        """
        path = path or self.parameter
        valid = self.names()
        listing = ", ".join(valid) if valid else "none (no %s is installed)" % self.kind
        if name is None or (isinstance(name, str) and not name.strip()):
            raise ConfigError("%s: no %s given; expected one of %s%s" % (
                path, self.kind, listing, _import_note(self.kind)))
        if not isinstance(name, str):
            raise ConfigError("%s: expected the name of a %s (one of %s), got %s" % (
                path, self.kind, listing, describe_value(name)))
        entry = self.find(name)
        if entry is None:
            hint = suggest(name, valid)
            raise ConfigError("%s: unknown %s %r%s; expected one of %s%s" % (
                path, self.kind, name,
                " (did you mean %s?)" % " or ".join(hint) if hint else "",
                listing, _import_note(self.kind)))
        return entry


LOADERS = Registry("loader", "scans.<label>.data.name")
ENGINES = Registry("engine", "engines.<label>.name")
SCAN_MODELS = Registry("scan model", "scans.<label>.name")

# Built-in scan models: known by name from the start; ptycli.core may attach factories.
SCAN_MODELS.register("Full", ParamSet("Full", [], "mixed states: probe modes x object modes pods per frame"))
SCAN_MODELS.register("Vanilla", ParamSet("Vanilla", [], "one probe mode and one object mode"))


def _register(registry, name, paramset, factory, replace):
    if factory is None:
        def decorator(obj):
            registry.register(name, paramset, obj, replace=replace)
            return obj
        return decorator
    return registry.register(name, paramset, factory, replace=replace)


def register_loader(name, paramset=None, factory=None, replace=False):
    """Register a scan loader called ``name`` with its ParamSet and factory.

    Without ``factory`` this returns a class decorator. ``paramset`` declares
    the parameters of ``scans.<label>.data`` for this loader (``name`` is
    added by the scan declarations; declaring it too is harmless).
    """
    return _register(LOADERS, name, paramset, factory, replace)


def register_engine(name, paramset=None, factory=None, replace=False):
    """Register a reconstruction engine called ``name`` with its ParamSet and factory.

    Without ``factory`` this returns a class decorator. ``paramset`` declares
    the engine's own parameters; ``name`` and ``numiter`` are common to all
    engines (an engine may redeclare ``numiter`` to change its default).
    """
    return _register(ENGINES, name, paramset, factory, replace)


def register_scan_model(name, paramset=None, factory=None, replace=False):
    """Register a scan model called ``name`` (optional ParamSet of extra scan parameters).

    Without ``factory`` this returns a class decorator. The entries of
    ``paramset`` are added to the ``scans.<label>`` declarations of scans
    using this model.
    """
    return _register(SCAN_MODELS, name, paramset, factory, replace)


def get_loader(name, path=None):
    """The :class:`Registered` loader called ``name`` (any case); ConfigError otherwise."""
    return LOADERS.get(name, path)


def get_engine(name, path=None):
    """The :class:`Registered` engine called ``name`` (any case); ConfigError otherwise."""
    return ENGINES.get(name, path)


def get_scan_model(name, path=None):
    """The :class:`Registered` scan model called ``name`` (any case); ConfigError otherwise."""
    return SCAN_MODELS.get(name, path)


def build_engine(ptycho, pars, label=None):
    """Build the engine named by ``pars['name']`` (any case) for ``ptycho`` (the engines are plugins).

    Raises
    ------
    ConfigError
        For an unknown name (listing the registered engines).
    """
    load_plugins()  # the engines register themselves when ptycli.engines is imported
    pars = dict(pars or {})
    path = "engines.%s.name" % (label or "<label>")
    entry = get_engine(pars.get("name"), path)
    if entry.factory is None:
        raise ConfigError("%s: engine %r is declared but has no implementation" % (path, entry.name))
    pars["name"] = entry.name
    return entry.factory(ptycho, pars, label or entry.name.lower())


def loaders():
    """Names of the registered loaders (sorted)."""
    return LOADERS.names()


def engines():
    """Names of the registered engines (sorted)."""
    return ENGINES.names()


def scan_models():
    """Names of the registered scan models (sorted)."""
    return SCAN_MODELS.names()


# -- plugins -------------------------------------------------------------------

_PLUGIN_PACKAGES = {"loader": "ptycli.scans", "engine": "ptycli.engines"}
_loaded = False
_errors = {}  # module name -> "ExcType: message"


def load_plugins(force=False):
    """Import ``ptycli.scans`` and ``ptycli.engines`` and their public submodules.

    Loader and engine modules register themselves at import, so after this
    call the registries hold everything installed. Runs once (``force=True``
    runs again). A package that is missing or empty is fine; a submodule that
    fails to import is skipped, logged as a warning and remembered (see
    :func:`plugin_errors`; unknown-name errors mention it).

    Returns
    -------
    dict
        ``plugin_errors()``.
    """
    global _loaded
    if _loaded and not force:
        return dict(_errors)
    _loaded = True
    for package in _PLUGIN_PACKAGES.values():
        try:
            pkg = importlib.import_module(package)
        except ModuleNotFoundError as exc:
            if exc.name == package:
                continue
            _note_error(package, exc)
            continue
        except Exception as exc:  # a broken package __init__
            _note_error(package, exc)
            continue
        # a package may name submodules that register nothing (compiled kernels: importing
        # them would load numba just to list the parameters) in NOT_PLUGINS
        skip = set(getattr(pkg, "NOT_PLUGINS", ()))
        for info in pkgutil.iter_modules(getattr(pkg, "__path__", [])):
            if info.name.startswith("_") or info.name in skip:
                continue
            name = "%s.%s" % (package, info.name)
            try:
                importlib.import_module(name)
            except Exception as exc:
                _note_error(name, exc)
    return dict(_errors)


def plugin_errors():
    """Modules that :func:`load_plugins` could not import: ``{module: 'Error: message'}``."""
    return dict(_errors)


def _note_error(module, exc):
    text = "%s: %s" % (type(exc).__name__, " ".join(str(exc).split()))
    _errors[module] = text
    get_logger(__name__).warning("could not import %s (%s); its loaders/engines are unavailable", module, text)


def _import_note(kind):
    """' (not loaded: ...)' naming plugin modules of this kind that failed to import."""
    package = _PLUGIN_PACKAGES.get(kind)
    if package is None:
        return ""
    bad = ["%s (%s)" % (m, e) for m, e in _errors.items() if m == package or m.startswith(package + ".")]
    return " (modules that failed to import: %s)" % "; ".join(bad) if bad else ""
