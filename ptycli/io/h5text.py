"""Strings for ptycli's own HDF5 files: fixed-length UTF-8 instead of variable-length.

h5py stores a Python ``str`` as a variable-length string, kept in the file's
global heap; a damaged global heap can hang libhdf5 (see
:mod:`ptycli.io.h5guard`). The writers store string *datasets* as fixed-length
UTF-8 instead (fewer heaps to damage). Readers get ``bytes`` back for both
kinds and decode them with :func:`ptycli.io.reading.h5_text`. Attributes stay
``str`` (variable-length): h5py reads fixed-length attributes as bytes, and
callers compare attribute values with ``str``.
"""

import numpy as np

__all__ = ["fixed_text", "fixed_texts"]


def fixed_text(text):
    """``text`` as a scalar fixed-length UTF-8 string (at least one byte long)."""
    import h5py

    raw = str(text).encode("utf-8")
    return np.array(raw, dtype=h5py.string_dtype("utf-8", max(1, len(raw))))


def fixed_texts(values):
    """A 1-D array of fixed-length UTF-8 strings (the length of the longest one)."""
    import h5py

    raw = [str(v).encode("utf-8") for v in values]
    width = max([1] + [len(r) for r in raw])
    return np.array(raw, dtype=h5py.string_dtype("utf-8", width)).reshape(len(raw))
