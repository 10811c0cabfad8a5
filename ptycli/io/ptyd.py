"""PtyPy prepared-data files (``.ptyd``): read and write.

A ``.ptyd`` file is HDF5 with three top-level groups::

    /chunks/<k>/data       (N, h, w)  float32   frames, already cropped and centred
    /chunks/<k>/weights    (N, h, w)  float64   per-pixel weight (0 = masked)
    /chunks/<k>/positions  (N, 2)     float64   scan positions in metres, columns (y, x)
    /chunks/<k>/indices    (N,)       int64     frame numbers in the original scan
    /meta/{version, num_frames, label, shape, psize, energy, center, distance}
    /info/...                                   the scan parameters PtyPy used

Chunks are named ``0``, ``1``, ... and hold consecutive frames; a *global*
frame index counts through the chunks in that order. Units: ``psize`` is the
detector pixel (m; a pair (y, x) or a single number), ``energy`` is in keV,
``distance`` in m, ``center`` in pixels (row, column) of the zero frequency.

Node encoding (learnt from a file written by PtyPy, mirrored by the writer so
that PtyPy can read our files): every group and dataset has a string
attribute ``type``:

============  ==========================================================
``dict``      a group; its members are the keys
``array``     a dataset (gzip, level 4, h5py's automatic chunking)
``arraylist`` a 1-d dataset that is a Python list in PtyPy (chunk indices)
``scalar``    a scalar (0-d) dataset: float64, int64 or bool
``string``    a scalar variable-length UTF-8 string dataset
``None``      Python ``None``: a placeholder dataset ``[0.0]`` (float64, (1,))
============  ==========================================================

The root group carries string attributes ``h5rw_version`` (``'0.1'``),
``ctime`` and ``mtime`` (``time.asctime()`` format). All attribute strings are
variable-length UTF-8.

Functions here are independent of the scan loaders: :func:`read_ptyd_meta`,
:func:`read_ptyd_frames`, :func:`write_ptyd` (plus :func:`read_node` /
:func:`write_node` for the typed-node encoding). Problems with a file raise
:class:`ptycli.errors.DataError` naming the file and the dataset.
"""

import os
import time

import numpy as np

from ..errors import DataError
from .atomic import atomic_write
from .hdf5 import open_hdf5, require

__all__ = [
    "read_ptyd_meta",
    "read_ptyd_frames",
    "write_ptyd",
    "read_node",
    "write_node",
]

#: value of the root attribute ``h5rw_version`` PtyPy writes
H5RW_VERSION = "0.1"
#: value of ``/meta/version`` PtyPy writes
PTYD_VERSION = 0.1

# --------------------------------------------------------------------------
# typed nodes
# --------------------------------------------------------------------------
def _attr_str(value):
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _decode_scalar(value):
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.generic):
        return value.item()
    return value


def read_node(node):
    """Decode a PtyPy-typed HDF5 node into Python values.

    Groups become dicts (``list``/``tuple`` groups become lists/tuples of their
    members in name order), ``string`` becomes ``str``, ``scalar`` a Python
    number or bool, ``array`` a numpy array, ``arraylist`` a list and ``None``
    ``None``. Nodes with an unknown or missing ``type`` are returned as their
    raw value (no unpickling is ever done).
    """
    import h5py

    kind = _attr_str(node.attrs.get("type", ""))
    if isinstance(node, h5py.Group):
        items = {k: read_node(node[k]) for k in node.keys()}
        if kind in ("list", "tuple"):
            seq = [items[k] for k in sorted(items, key=_natural_key)]
            return tuple(seq) if kind == "tuple" else seq
        return items
    if kind == "None":
        return None
    if kind == "string":
        return _decode_scalar(node[()])
    if kind == "scalar":
        return _decode_scalar(node[()])
    if kind == "arraylist":
        return node[()].tolist()
    value = node[()]
    if isinstance(value, np.ndarray) or kind == "array":
        return value
    return _decode_scalar(value)


def _natural_key(name):
    return (0, int(name)) if str(name).isdigit() else (1, str(name))


#: the scalars of PtyPy's ``scalar`` nodes: (Python and numpy types, stored as); bool before int
_PTYPY_SCALARS = (((bool, np.bool_), np.bool_), ((int, np.integer), np.int64), ((float, np.floating), np.float64))


def write_node(group, key, value, compression="gzip"):
    """Write ``value`` as ``group[key]`` in PtyPy's typed-node encoding.

    dict → ``dict`` group; str → ``string``; None → ``None``; bool/int/float
    (Python or numpy) → ``scalar``; numpy array → ``array``; list/tuple of
    numbers → ``arraylist``; other lists/tuples → ``list``/``tuple`` groups
    with members ``0``, ``1``, ...
    """
    import h5py

    if isinstance(value, dict):
        sub = group.create_group(key)
        sub.attrs["type"] = "dict"
        for k, v in value.items():
            write_node(sub, str(k), v, compression)
        return sub
    if value is None:
        dset = group.create_dataset(key, data=np.zeros(1))
        dset.attrs["type"] = "None"
        return dset
    if isinstance(value, str):
        dset = group.create_dataset(key, data=value, dtype=h5py.string_dtype("utf-8"))
        dset.attrs["type"] = "string"
        return dset
    for types, stored in _PTYPY_SCALARS:
        if isinstance(value, types):
            dset = group.create_dataset(key, data=stored(value))
            dset.attrs["type"] = "scalar"
            return dset
    if isinstance(value, np.ndarray):
        if value.ndim == 0:
            return write_node(group, key, value.item(), compression)
        comp = compression if value.size > 0 else None
        dset = group.create_dataset(key, data=value, compression=comp)
        dset.attrs["type"] = "array"
        return dset
    if isinstance(value, (list, tuple)):
        numeric = len(value) > 0 and all(
            isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))
            for v in value)
        if numeric:
            dset = group.create_dataset(key, data=np.asarray(value), compression=compression)
            dset.attrs["type"] = "arraylist"
            return dset
        sub = group.create_group(key)
        sub.attrs["type"] = "tuple" if isinstance(value, tuple) else "list"
        for i, v in enumerate(value):
            write_node(sub, "%d" % i, v, compression)
        return sub
    raise TypeError("cannot store %r (type %s) in a .ptyd node" % (value, type(value).__name__))


# --------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------
def _chunk_table(f):
    """[(name, group, global_start, global_stop), ...] in chunk order."""
    chunks = require(f, "chunks", "group")
    names = sorted(chunks.keys(), key=_natural_key)
    if not names:
        raise DataError("%s: group /chunks holds no chunks (no frames were saved)" % f.filename)
    table = []
    start = 0
    for name in names:
        grp = chunks[name]
        data = require(f, "chunks/%s/data" % name)
        if data.ndim != 3:
            raise DataError("%s: /chunks/%s/data has shape %s; expected (frames, rows, columns)"
                            % (f.filename, name, data.shape))
        n = data.shape[0]
        table.append((name, grp, start, start + n))
        start += n
    shape0 = f["chunks/%s/data" % names[0]].shape[1:]
    for name, _, _, _ in table:
        if f["chunks/%s/data" % name].shape[1:] != shape0:
            raise DataError("%s: /chunks/%s/data has frames of %s, chunk %s has %s" % (
                f.filename, name, f["chunks/%s/data" % name].shape[1:], names[0], shape0))
    return table


def _meta_value(f, key):
    """The decoded /meta/<key>, or None when absent."""
    node = f.get("meta/%s" % key)
    if node is None:
        return None
    return read_node(node)


def _as_pair(value, name, filename):
    if value is None:
        return None
    arr = np.asarray(value, dtype=float).ravel()
    if arr.size == 1:
        arr = np.repeat(arr, 2)
    if arr.size != 2:
        raise DataError("%s: /meta/%s should be one or two numbers, got %r" % (filename, name, value))
    return arr


def _as_float(value, name, filename):
    if value is None:
        return None
    try:
        arr = np.asarray(value, dtype=float).ravel()
    except (TypeError, ValueError):
        arr = np.empty(0)
    if arr.size != 1:
        raise DataError("%s: /meta/%s should be a number, got %r" % (filename, name, value))
    return float(arr[0])


def read_ptyd_meta(path, with_info=True):
    """Geometry and layout of a ``.ptyd`` file (no frames are read).

    Parameters
    ----------
    path : str
        The ``.ptyd`` file.
    with_info : bool
        Also decode the ``/info`` group (scan parameters PtyPy used).

    Returns
    -------
    dict
        ``num_frames`` (frames stored in the chunks), ``num_frames_meta`` (the
        /meta value, None if absent), ``frame_shape`` (h, w), ``shape`` (the
        /meta value or ``frame_shape``), ``energy_kev``, ``distance_m``,
        ``psize_m`` (ndarray (2,), detector pixel (y, x)), ``center`` (ndarray
        (2,) or None), ``label``, ``propagation`` ('farfield'/'nearfield' as
        recorded by ptycli in ``/meta/propagation``, else None), ``version``,
        ``positions_unit`` ('m'),
        ``dtype`` of the frames, ``chunks`` (list of (name, start, stop) global
        frame ranges), ``has_weights`` and ``info`` (dict, or None). Missing
        geometry entries are None.
    """
    with open_hdf5(path, "ptyd file") as f:
        if "meta" not in f and "chunks" not in f:
            raise DataError("%s is HDF5 but not a PtyPy .ptyd file (no /meta and no /chunks)" % path)
        table = _chunk_table(f)
        first = f["chunks/%s/data" % table[0][0]]
        frame_shape = tuple(int(s) for s in first.shape[1:])
        shape = _meta_value(f, "shape")
        shape = tuple(int(s) for s in _as_pair(shape, "shape", path)) if shape is not None else frame_shape
        num_meta = _meta_value(f, "num_frames")
        label = _meta_value(f, "label")
        version = _meta_value(f, "version")
        propagation = _meta_value(f, "propagation")  # written by ptycli (PtyPy writes none)
        if isinstance(propagation, bytes):
            propagation = propagation.decode("utf-8", "replace")
        info = None
        if with_info and "info" in f:
            info = read_node(f["info"])
        return {
            "num_frames": table[-1][3],
            "num_frames_meta": None if num_meta is None else int(num_meta),
            "frame_shape": frame_shape,
            "shape": shape,
            "energy_kev": _as_float(_meta_value(f, "energy"), "energy", path),
            "distance_m": _as_float(_meta_value(f, "distance"), "distance", path),
            "psize_m": _as_pair(_meta_value(f, "psize"), "psize", path),
            "center": _as_pair(_meta_value(f, "center"), "center", path),
            "label": None if label is None else str(label),
            "propagation": None if propagation is None else str(propagation),
            "version": version,
            "positions_unit": "m",
            "dtype": str(first.dtype),
            "chunks": [(name, a, b) for name, _, a, b in table],
            "has_weights": all("weights" in grp for _, grp, _, _ in table),
            "info": info,
        }


def read_ptyd_frames(path, start=0, stop=None):
    """Frames ``start:stop`` (global indices across chunks) of a ``.ptyd`` file.

    Only the slices needed are read from each chunk.

    Returns
    -------
    dict
        ``data`` (n, h, w) float32, ``weights`` (n, h, w) float32 (ones when
        the file has none), ``mask`` (n, h, w) bool (weight > 0 is valid),
        ``positions`` (n, 2) float64 metres (y, x), ``indices`` (n,) int64
        (frame numbers stored in the file, or the global indices when absent).
    """
    with open_hdf5(path, "ptyd file") as f:
        table = _chunk_table(f)
        total = table[-1][3]
        start = int(start)
        stop = total if stop is None else int(stop)
        if not 0 <= start <= stop <= total:
            raise DataError("%s: frames %d:%d requested, the file holds %d frames" % (path, start, stop, total))
        h, w = f["chunks/%s/data" % table[0][0]].shape[1:]
        n = stop - start
        data = np.empty((n, h, w), np.float32)
        weights = np.ones((n, h, w), np.float32)
        positions = np.empty((n, 2), np.float64)
        indices = np.arange(start, stop, dtype=np.int64)
        for name, grp, a, b in table:
            lo, hi = max(a, start), min(b, stop)
            if lo >= hi:
                continue
            src = slice(lo - a, hi - a)
            dst = slice(lo - start, hi - start)
            base = "chunks/%s/" % name
            data[dst] = f[base + "data"][src]
            if "weights" in grp:
                wds = f[base + "weights"]
                if wds.ndim == 3 and wds.shape[0] == b - a:
                    weights[dst] = wds[src]
                elif wds.shape[-2:] == (h, w) and (wds.ndim == 2 or wds.shape[0] == 1):
                    weights[dst] = wds[()].reshape(h, w)
                else:
                    raise DataError("%s: /%sweights has shape %s, expected %s" % (
                        path, base, wds.shape, (b - a, h, w)))
            pds = require(f, base + "positions")
            if pds.ndim != 2 or pds.shape != (b - a, 2):
                raise DataError("%s: /%spositions has shape %s, expected %s (y, x in metres)" % (
                    path, base, pds.shape, (b - a, 2)),
                    hint="this .ptyd was saved without positions; give them in the configuration")
            positions[dst] = pds[src]
            if "indices" in grp:
                ids = f[base + "indices"]
                if ids.shape == (b - a,):
                    indices[dst] = ids[src]
        return {
            "data": data,
            "weights": weights,
            "mask": weights > 0,
            "positions": positions,
            "indices": indices,
        }


# --------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------
def write_ptyd(path, intensities, positions, weights=None, *, energy_kev, distance_m, psize_m,
               center=None, label="ptycli", chunk_size=200, indices=None, info=None,
               compression="gzip", propagation=None):
    """Write a PtyPy-compatible ``.ptyd`` file (atomically).

    Parameters
    ----------
    path : str
        Output file (replaced if it exists).
    intensities : array (N, h, w)
        Frames, centred (zero frequency at ``center``); stored as float32.
    positions : array (N, 2)
        Scan positions in metres, columns (y, x).
    weights : array (N, h, w) or (h, w) or bool mask, optional
        Per-pixel weights (0 = masked); default all ones. Stored as float64.
    energy_kev, distance_m : float
        Photon energy (keV) and sample-detector distance (m).
    psize_m : float or pair
        Detector pixel size (m), (y, x).
    center : pair, optional
        Zero-frequency pixel (row, column); default (h // 2, w // 2).
    label : str
        Scan label.
    chunk_size : int
        Frames per ``/chunks/<k>`` group.
    indices : array (N,), optional
        Frame numbers to store; default 0..N-1.
    info : dict, optional
        Entries merged into ``/info`` (scan parameters).
    compression : str or None
        HDF5 filter for arrays ('gzip' as PtyPy does, or None).
    propagation : 'farfield', 'nearfield' or None
        Recorded as ``/meta/propagation`` (a ptycli addition that PtyPy
        ignores; PtydScan checks the configuration against it). None writes
        nothing.
    """
    import h5py

    data = np.asarray(intensities)
    if data.ndim != 3:
        raise ValueError("intensities must be (frames, rows, columns), got shape %s" % (data.shape,))
    n, h, w = data.shape
    pos = np.asarray(positions, dtype=np.float64)
    if pos.shape != (n, 2):
        raise ValueError("positions must be (%d, 2) (y, x) in metres, got shape %s" % (n, pos.shape))
    if weights is None:
        wts = None
    else:
        wts = np.asarray(weights)
        if wts.shape == (h, w):
            wts = np.broadcast_to(wts, (n, h, w))
        if wts.shape != (n, h, w):
            raise ValueError("weights must be (%d, %d, %d) or (%d, %d), got %s" % (n, h, w, h, w, wts.shape))
    idx = np.arange(n, dtype=np.int64) if indices is None else np.asarray(indices, dtype=np.int64)
    if idx.shape != (n,):
        raise ValueError("indices must have %d entries, got shape %s" % (n, idx.shape))
    chunk_size = int(chunk_size)
    if chunk_size < 1:
        raise ValueError("chunk_size must be >= 1, got %d" % chunk_size)
    psize = np.asarray(psize_m, dtype=np.float64).ravel()
    psize = np.repeat(psize, 2) if psize.size == 1 else psize
    if psize.size != 2:
        raise ValueError("psize_m must be one or two numbers, got %r" % (psize_m,))
    ctr = np.array([h // 2, w // 2], np.float64) if center is None else \
        np.asarray(center, dtype=np.float64).ravel()
    if ctr.size == 1:
        ctr = np.repeat(ctr, 2)
    shape = np.array([h, w], np.int64)

    meta = {
        "version": float(PTYD_VERSION),
        "num_frames": int(n),
        "label": str(label),
        "shape": shape,
        "psize": psize,
        "energy": float(energy_kev),
        "center": ctr,
        "distance": float(distance_m),
    }
    if propagation is not None:
        if propagation not in ("farfield", "nearfield"):
            raise ValueError("propagation must be 'farfield', 'nearfield' or None, got %r" % (propagation,))
        meta["propagation"] = str(propagation)
    scan_info = {
        "name": "PtyScan",
        "dfile": os.path.basename(os.fspath(path)),
        "chunk_format": ".chunk%02d",
        "save": "append",
        "auto_center": False,
        "load_parallel": "data",
        "rebin": 1,
        "orientation": None,
        "min_frames": 1,
        "positions_theory": None,
        "num_frames": int(n),
        "label": str(label),
        "experimentID": None,
        "version": float(PTYD_VERSION),
        "shape": shape,
        "center": ctr,
        "psize": float(psize[0]) if psize[0] == psize[1] else psize,
        "distance": float(distance_m),
        "energy": float(energy_kev),
        "add_poisson_noise": False,
        "weight2d": True,
        "positions_scan": pos,
    }
    if info:
        scan_info.update(info)

    with atomic_write(path) as tmp:
        with h5py.File(tmp, "w") as f:
            stamp = time.asctime()
            f.attrs["h5rw_version"] = H5RW_VERSION
            f.attrs["ctime"] = stamp
            f.attrs["mtime"] = stamp
            chunks = f.create_group("chunks")
            chunks.attrs["type"] = "dict"
            for k, a in enumerate(range(0, n, chunk_size)):
                b = min(a + chunk_size, n)
                grp = chunks.create_group("%d" % k)
                grp.attrs["type"] = "dict"
                write_node(grp, "data", np.ascontiguousarray(data[a:b], dtype=np.float32), compression)
                cw = np.ones((b - a, h, w)) if wts is None else np.asarray(wts[a:b], dtype=np.float64)
                write_node(grp, "weights", cw, compression)
                write_node(grp, "positions", np.ascontiguousarray(pos[a:b]), compression)
                write_node(grp, "indices", [int(i) for i in idx[a:b]], compression)
            write_node(f, "info", scan_info, compression)
            write_node(f, "meta", meta, compression)
    return os.fspath(path)
