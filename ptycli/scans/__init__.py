"""Scan loaders: read diffraction frames, positions and geometry into :class:`ScanData`.

Importing this package registers every loader (``LOADERS`` maps names to
classes): ``Hdf5Scan`` (any HDF5 file, default layout: ptycli's own data file),
``PtyLabScan`` (PtyLab's HDF5 files), ``NpyFolderScan`` (a folder of ``.npy`` frames with ``geometry.txt`` and
``positions.txt``), ``NpzScan`` (NumPy ``.npz``/``.npy``, also bzip2/gzip-compressed),
and, when present, ``PtydScan`` (PtyPy ``.ptyd``),
``CxiScan`` (CXI) and ``MoonFlowerScan`` (simulation).

>>> from ptycli.scans import get_loader
>>> data = get_loader("Hdf5Scan").from_pars({"dfile": "scan.h5"}).load()
"""

import importlib

from .base import LOADERS, ScanData, ScanLoader, get_loader, register  # noqa: F401
from . import hdf5  # noqa: F401
from . import npyfolder  # noqa: F401
from . import npz  # noqa: F401
from . import ptylab  # noqa: F401

for _mod in ("ptyd", "cxi", "moonflower"):
    try:
        importlib.import_module("%s.%s" % (__name__, _mod))
    except ImportError as _exc:  # module not written yet
        if getattr(_exc, "name", None) != "%s.%s" % (__name__, _mod):
            raise
del _mod
from . import detect  # noqa: E402,F401  (installs LOADERS.detector: the loader told from the file)

__all__ = ["ScanData", "ScanLoader", "LOADERS", "get_loader", "register"]
