"""Arrays from NumPy ``.npz`` / ``.npy`` files, also bzip2/gzip-compressed, read within a memory limit.

:func:`open_arrays` opens a file and gives its arrays by key, reading each
only when asked for and without pickle. A compressed file is decompressed in
memory, at most :func:`default_limit` bytes (half of this machine's memory):
a file that would expand further is refused (a decompression bomb, or a file
to decompress beforehand). :class:`~ptycli.scans.npz.NpzScan` reads through it.
"""

import io
import os

import numpy as np

from ..errors import DataError

__all__ = ["open_arrays", "default_limit"]

_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = b"PK\x03\x04"
_EMPTY_ZIP_MAGIC = b"PK\x05\x06"
_BZ2_MAGIC = b"BZh"
_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 20


def _machine_memory():
    """Physical memory in bytes (1 TB when unknown)."""
    try:
        return float(os.sysconf("SC_PAGE_SIZE")) * float(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return 1e12


def default_limit():
    """Most bytes a compressed input may expand to: half of this machine's memory."""
    return int(_machine_memory() // 2)


def _gb(n):
    """A byte count in words: '1.05 MB'."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return "%.3g %s" % (n / scale, unit)
    return "%d bytes" % n


def _limit_words(limit, default):
    return "half of this machine's memory, %s" % _gb(limit) if default else "the limit, %s" % _gb(limit)


def _decompress(path, opener, limit, default=True):
    """The decompressed bytes of ``path``, refusing more than ``limit`` bytes."""
    out = io.BytesIO()
    try:
        with opener(path, "rb") as fh:
            while True:
                chunk = fh.read(_CHUNK)
                if not chunk:
                    break
                out.write(chunk)
                if out.tell() > limit:
                    raise DataError(
                        "%s expands to more than %s when decompressed (the most ptycli decompresses "
                        "in memory: %s)" % (path, _gb(limit), _limit_words(limit, default)),
                        hint="decompress it yourself (bunzip2/gunzip) and give the .npz/.npy file, "
                             "which is then read without holding a second copy", validation=True)
    except DataError:
        raise
    except (OSError, EOFError, ValueError) as exc:
        raise DataError("%s is not a readable compressed file (%s)" % (path, exc),
                        hint="check the file (bunzip2 -t / gunzip -t), or copy it again",
                        validation=True) from exc
    return out.getvalue()


def _npy_header(fp):
    """``(shape, dtype)`` from the header of a ``.npy`` stream (positioned at its start)."""
    version = np.lib.format.read_magic(fp)
    if version == (1, 0):
        shape, _fortran, dtype = np.lib.format.read_array_header_1_0(fp)
    else:
        shape, _fortran, dtype = np.lib.format.read_array_header_2_0(fp)
    return tuple(int(s) for s in shape), dtype


class _Arrays:
    """The arrays of one ``.npz``/``.npy`` input (also bz2/gzip-compressed), read by key.

    A ``.npy`` input has one array, under the key ``''``. Arrays are read on
    first use and kept; an uncompressed ``.npy`` is memory-mapped.
    """

    def __init__(self, path, limit=None):
        self.path = str(path)
        self.default_limit = limit is None
        self.limit = default_limit() if limit is None else int(limit)
        self._cache = {}
        import bz2  # here, not at the top: ``ptycli params`` imports every loader
        import gzip
        import zipfile

        with open(self.path, "rb") as fh:
            head = fh.read(8)
        self.compression = None
        buffer = None
        if head.startswith(_BZ2_MAGIC):
            self.compression = "bz2"
            buffer = _decompress(self.path, bz2.open, self.limit, self.default_limit)
        elif head.startswith(_GZIP_MAGIC):
            self.compression = "gzip"
            buffer = _decompress(self.path, gzip.open, self.limit, self.default_limit)
        if buffer is not None:
            head = buffer[:8]
        self._buffer = buffer
        if head.startswith(_NPY_MAGIC):
            self.kind = "npy"
            self._zip = None
        elif head.startswith((_ZIP_MAGIC, _EMPTY_ZIP_MAGIC)):
            self.kind = "npz"
            try:
                self._zip = zipfile.ZipFile(io.BytesIO(buffer) if buffer is not None else self.path)
            except (zipfile.BadZipFile, OSError) as exc:
                raise DataError("%s is not a readable .npz file (%s)" % (self.path, exc),
                                hint="check the file, or write it again with numpy.savez",
                                validation=True) from exc
        else:
            raise DataError("%s is neither a NumPy .npy/.npz file nor one compressed with bzip2 or "
                            "gzip" % self.path,
                            hint="write the arrays with numpy.savez (or numpy.save), or use "
                                 "Hdf5Scan for HDF5 files", validation=True)

    # -- listing ----------------------------------------------------------------
    def keys(self):
        """The array names (``['']`` for a ``.npy`` file)."""
        if self.kind == "npy":
            return [""]
        return [n[:-4] for n in self._zip.namelist() if n.endswith(".npy")]

    def __contains__(self, key):
        return key in self.keys()

    def _member(self, key):
        return key + ".npy"

    def header(self, key):
        """``(shape, dtype)`` of array ``key`` without reading its data."""
        if self.kind == "npy":
            if self._buffer is not None:
                return _npy_header(io.BytesIO(self._buffer))
            with open(self.path, "rb") as fh:
                return _npy_header(fh)
        with self._zip.open(self._member(key)) as fh:
            return _npy_header(fh)

    def describe(self):
        """``'name (shape), ...'`` of every array, for messages."""
        parts = []
        for key in self.keys():
            try:
                shape, _ = self.header(key)
                parts.append("%s %s" % (key or "(array)", shape))
            except Exception:
                parts.append("%s (unreadable)" % key)
        return ", ".join(parts) or "no arrays"

    # -- reading ------------------------------------------------------------------
    def _check_size(self, key, shape, dtype):
        nbytes = float(np.prod(shape, dtype=np.float64)) * dtype.itemsize
        if nbytes > self.limit:
            raise DataError("%s: array %s of shape %s needs %s, more than ptycli reads into memory "
                            "(%s)" % (self.path, key or "(the .npy array)", shape, _gb(nbytes),
                                      _limit_words(self.limit, self.default_limit)),
                            hint="use fewer frames per file, or store them uncompressed as .npy "
                                 "(memory-mapped) or HDF5 (Hdf5Scan)", validation=True)

    def array(self, key):
        """Array ``key`` (read once, then kept)."""
        if key in self._cache:
            return self._cache[key]
        try:
            if self.kind == "npy":
                if self._buffer is None:
                    a = np.load(self.path, mmap_mode="r", allow_pickle=False)
                else:
                    shape, dtype = self.header(key)
                    self._check_size(key, shape, dtype)
                    a = np.lib.format.read_array(io.BytesIO(self._buffer), allow_pickle=False)
            else:
                info = self._zip.getinfo(self._member(key))
                shape, dtype = self.header(key)
                self._check_size(key, shape, dtype)
                if info.file_size > self.limit:
                    self._check_size(key, (info.file_size,), np.dtype(np.uint8))
                with self._zip.open(info) as fh:
                    a = np.lib.format.read_array(fh, allow_pickle=False)
        except DataError:
            raise
        except KeyError:
            raise DataError("%s holds no array %r" % (self.path, key)) from None
        except Exception as exc:
            raise DataError("cannot read array %s of %s (%s: %s)" % (
                key or "(the .npy array)", self.path, type(exc).__name__, " ".join(str(exc).split())),
                hint="arrays must be numeric and saved without pickle (numpy.savez)",
                validation=True) from exc
        self._cache[key] = a
        return a

    def close(self):
        """Release the file (arrays already read stay valid)."""
        if self._zip is not None:
            self._zip.close()


def open_arrays(path, limit=None):
    """Open a ``.npz``/``.npy`` file (plain or bzip2/gzip-compressed) for reading by key.

    Parameters
    ----------
    path : str
        The file; its type is recognised from its first bytes, not its name.
    limit : int, optional
        Most bytes a compressed file may expand to and an array may occupy
        (default: half of this machine's memory).

    Returns
    -------
    object
        With ``keys()``, ``header(key)`` -> ``(shape, dtype)`` and
        ``array(key)``; a ``.npy`` file's array has the key ``''``.

    Raises
    ------
    DataError
        Unreadable or unknown files, and files or arrays beyond ``limit``.
    """
    return _Arrays(path, limit)
