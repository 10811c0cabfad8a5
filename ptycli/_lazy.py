"""Modules imported on first attribute access.

``scipy.fft`` and numba take a noticeable part of a second to import; modules
that only need them inside functions name them through :func:`lazy_module`,
so that importing ptycli (``ptycli params`` imports every engine and loader
to list their parameters) does not pay for them::

    from .._lazy import lazy_module
    sp_fft = lazy_module("scipy.fft")        # imported at the first sp_fft.fft2(...)
"""

import importlib

__all__ = ["lazy_module"]


class _LazyModule:
    """Stands in for a module until an attribute is first read."""

    __slots__ = ("_name", "_module")

    def __init__(self, name):
        self._name = name
        self._module = None

    def __getattr__(self, attribute):
        module = self._module
        if module is None:
            module = self._module = importlib.import_module(self._name)
        return getattr(module, attribute)

    def __repr__(self):
        state = "loaded" if self._module is not None else "not loaded yet"
        return "<lazy module %r (%s)>" % (self._name, state)


def lazy_module(name):
    """A stand-in for module ``name`` that imports it when an attribute is first read.

    Parameters
    ----------
    name : str
        Absolute module name, e.g. ``'scipy.fft'`` or ``'ptycli.engines.fused'``.

    Returns
    -------
    object
        An object whose attributes are those of the module.
    """
    return _LazyModule(name)
