"""Opening HDF5 inputs safely: the helpers the ``.ptyd``, CXI and reconstruction readers share.

:func:`open_hdf5` opens a file read-only after checking it exists, is HDF5
and does not hang or crash libhdf5 (:mod:`ptycli.io.h5guard`); errors while
it is read become :class:`~ptycli.errors.DataError`. :func:`require` gets a
node that must be there.
"""

import contextlib
import os

from ..errors import DataError
from .h5guard import check_structure
from .reading import DAMAGED_HINT, reading

__all__ = ["open_hdf5", "require"]


@contextlib.contextmanager
def open_hdf5(path, what="data file"):
    """Open ``path`` read-only; a missing, non-HDF5 or damaged file is a DataError.

    Errors raised while the file is read inside the ``with`` block (h5py's
    OSError, KeyError, ... on a damaged file) become DataErrors too
    (:func:`ptycli.io.reading.reading`).
    """
    import h5py

    path = os.fspath(path)
    if not os.path.exists(path):
        raise DataError("%s %s does not exist" % (what, path),
                        hint="check the file name (dfile)")
    if os.path.isdir(path):
        raise DataError("%s %s is a folder, not an HDF5 file" % (what, path))
    try:
        ok = h5py.is_hdf5(path)
    except OSError as exc:
        raise DataError("%s %s cannot be read: %s" % (what, path, exc)) from exc
    if not ok:
        raise DataError("%s %s is not an HDF5 file" % (what, path),
                        hint="expected an HDF5 file (.ptyd, .cxi, .h5)")
    check_structure(path)  # a hang or crash of libhdf5 on a damaged file becomes a DataError
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise DataError("%s %s cannot be opened as HDF5: %s" % (what, path, " ".join(str(exc).split())),
                        hint=DAMAGED_HINT) from exc
    try:
        # errors of a damaged file inside the block become DataErrors naming it
        with reading(path, "the %s" % what):
            yield f
    finally:
        f.close()


def require(f, name, kind="dataset"):
    """Return ``f[name]``; raise DataError naming the file and ``name`` if absent."""
    import h5py

    try:
        node = f[name]
    except KeyError:
        node = None
    if node is None:
        raise DataError("%s: %s /%s is missing" % (f.filename, kind, name.lstrip("/")))
    if kind == "dataset" and not isinstance(node, h5py.Dataset):
        raise DataError("%s: /%s is not a dataset" % (f.filename, name.lstrip("/")))
    if kind == "group" and not isinstance(node, h5py.Group):
        raise DataError("%s: /%s is not a group" % (f.filename, name.lstrip("/")))
    return node
