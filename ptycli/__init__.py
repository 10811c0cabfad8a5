"""ptycli: command-line ptychography reconstruction.

The Python API mirrors the classic ptychography data model: ``ptycli.utils``
(``Param`` and array helpers), ``ptycli.core`` (``Container``, ``Storage``,
``View``, ``POD``, ``Geo``, scan patterns) and ``ptycli.resources`` (procedural
test images).
"""

__version__ = "0.1.0"

# The subpackages load on first use (``ptycli.core`` imports numpy and scipy),
# so that ``ptycli --help`` and ``import ptycli.cli`` stay fast.
_SUBPACKAGES = ("utils", "core", "resources")


def __getattr__(name):
    if name in _SUBPACKAGES:
        import importlib

        return importlib.import_module("%s.%s" % (__name__, name))
    raise AttributeError("module %r has no attribute %r" % (__name__, name))


def __dir__():
    return sorted(set(globals()) | set(_SUBPACKAGES))
