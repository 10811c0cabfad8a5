"""File input/output: ptycli data files, safe writes, and (in sibling modules)
PtyPy ``.ptyd`` and CXI files.

Submodules are imported on demand (``from ptycli.io.datafile import
write_datafile``) so that importing :mod:`ptycli.io` stays cheap.
"""

from .atomic import atomic_write, check_writable  # noqa: F401

__all__ = ["atomic_write", "check_writable"]
from .reconstruction import load_reconstruction  # noqa: E402,F401
