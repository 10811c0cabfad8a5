"""Which loader reads a file: the format told from the file itself when a config names no loader.

A config may leave out ``scans.<label>.data.name`` (or write ``auto``); the
loader is then chosen from ``dfile``:

=====================================  =================
what ``dfile`` is                      loader
=====================================  =================
a folder                               ``NpyFolderScan``
HDF5 with a top-level ``entry_1``      ``CxiScan``
HDF5 with a top-level ``chunks``       ``PtydScan``
HDF5 with a top-level ``ptychogram``   ``PtyLabScan``
any other HDF5                         ``Hdf5Scan``
``.npz``/``.npy`` (also .bz2, .gz)     ``NpzScan``
=====================================  =================

The HDF5 contents decide over the extension (a CXI file named ``.h5`` is read
as CXI). Each loader declares what marks its format (``HDF5_SIGNATURE``,
``EXTENSIONS``, ``READS_FOLDER`` on the class); this module only asks them.

>>> from ptycli.scans.detect import detect_loader
>>> detect_loader("scan.cxi")          # doctest: +SKIP
('CxiScan', 'an HDF5 file with /entry_1')
"""

import os

from ..io.h5guard import check_structure
from ..io.hdf5 import open_hdf5
from ..params.registry import LOADERS

__all__ = ["detect_loader", "GENERIC_HDF5_LOADER"]

#: the loader of an HDF5 file no other loader claims (its dataset paths are configurable)
GENERIC_HDF5_LOADER = "Hdf5Scan"


def _loaders():
    return [cls for _, cls in LOADERS.items() if cls is not None]


def _hdf5_top_level(path):
    """The names at the root of ``path`` when it is a readable HDF5 file, else None."""
    import h5py

    try:
        if not h5py.is_hdf5(path):
            return None
    except OSError:
        return None
    check_structure(path, validation=True)  # a damaged input is a usage error, as in the loaders
    with open_hdf5(path) as f:
        return set(f.keys())


def detect_loader(dfile):
    """The name of the loader that reads ``dfile``, and why (for the log).

    Parameters
    ----------
    dfile : str or os.PathLike
        The input file or folder of a scan.

    Returns
    -------
    (str, str) or (None, str)
        The loader's registered name and a short reason; ``(None, reason)``
        when the format is not recognised (or ``dfile`` does not exist).
    """
    path = os.fspath(dfile)
    if os.path.isdir(path):
        for cls in _loaders():
            if getattr(cls, "READS_FOLDER", False):
                return cls.NAME, "a folder"
        return None, "a folder, and no loader reads folders"
    if not os.path.exists(path):
        return None, "it does not exist"
    top = _hdf5_top_level(path)
    if top is not None:
        for cls in _loaders():
            marks = sorted(top.intersection(getattr(cls, "HDF5_SIGNATURE", ())))
            if marks:
                return cls.NAME, "an HDF5 file with %s" % " and ".join("/" + m for m in marks)
        return GENERIC_HDF5_LOADER, "an HDF5 file of no known layout"
    name = os.path.basename(path).lower()
    for cls in _loaders():
        for ending in getattr(cls, "EXTENSIONS", ()):
            if name.endswith(ending):
                return cls.NAME, "a %s file" % ending
    return None, "neither HDF5 nor a known file type"


LOADERS.detector = detect_loader
