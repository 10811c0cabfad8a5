"""ptycli's own self-describing HDF5 data file.

Written by ``ptycli simulate`` (:func:`write_datafile`), read by
:class:`~ptycli.scans.hdf5.Hdf5Scan` with its default dataset paths (no
mapping needed) or directly by :func:`read_datafile`.

Layout (version 1)
------------------
::

    /                         attrs: format='ptycli-data', format_version=1,
                                     creator='ptycli <version>', created=<ISO 8601 time>
    /data/intensities         (N, H, W) float32 photon counts, attr units='counts';
                              centred (zero frequency at pixel (H//2, W//2)),
                              invalid pixels hold 0
    /data/positions           (N, 2) float64 (y, x), attrs units='m' (or 'pixel'), axes='y,x'
    /data/mask                (N, H, W) uint8, 1 = valid pixel
    /data/indices             (N,) int64 global frame indices
    /geometry/energy          float64, attr units='keV'
    /geometry/distance        float64, attr units='m'  (sample-detector)
    /geometry/psize           (2,) float64, attr units='m' (detector pixel)
    /geometry/shape           (2,) int64 frame shape (H, W)
    /geometry/center          (2,) float64 (H//2, W//2): the frames are centred
    /geometry                 attr propagation='farfield' | 'nearfield'
    /ground_truth/<name>      optional arrays (object, probe: complex), each
                              with attr psize (m) when known; scalar entries of
                              the ground truth dict are attributes of the group
    /meta/label               string (fixed-length UTF-8; older files: variable-length)
    /meta/config_yaml         string (the configuration that made the file), optional
    /meta                     attrs: scalar entries of ScanData.meta (strings, numbers)

In Python the ground truth is the dict ``ScanData.ground_truth``:
``{'object': array, 'object_psize_m': (2,), 'probe': array, 'probe_psize_m': (2,), ...}``;
``<name>_psize_m`` entries become the ``psize`` attribute of ``<name>``.
"""

import datetime
import os

import numpy as np

from .. import __version__
from ..errors import DataError
from .atomic import atomic_write
from .h5guard import check_structure
from .h5text import fixed_text
from .reading import check_format, reading
from .reading import h5_text as _str

__all__ = ["FORMAT", "FORMAT_VERSION", "write_datafile", "read_datafile", "is_datafile",
           "read_ground_truth"]

FORMAT = "ptycli-data"
FORMAT_VERSION = 1

_STR_TYPES = (str, bytes)


def _creator():
    return "ptycli %s" % __version__


def write_ground_truth(group, ground_truth):
    """Store a ground-truth dict in an HDF5 group (see the module docstring)."""
    gt = dict(ground_truth)
    psizes = {k[:-len("_psize_m")]: gt.pop(k) for k in list(gt) if k.endswith("_psize_m")
              and isinstance(gt[k], (np.ndarray, list, tuple, float, int))}
    for key, value in gt.items():
        if value is None:
            continue
        if isinstance(value, np.ndarray) and value.ndim >= 1:
            ds = group.create_dataset(key, data=value, compression="gzip", shuffle=True)
            if key in psizes:
                ds.attrs["psize"] = np.broadcast_to(
                    np.asarray(psizes.pop(key), dtype=np.float64), (2,))
        elif isinstance(value, (bool, int, float, np.number, *_STR_TYPES)):
            group.attrs[key] = value
        elif isinstance(value, (list, tuple)) and all(
                isinstance(v, (int, float, np.number)) for v in value):
            group.attrs[key] = np.asarray(value)
    for key, value in psizes.items():  # psize without an array of that name
        group.attrs[key + "_psize_m"] = np.asarray(value, dtype=np.float64)


def read_ground_truth(group):
    """The ground-truth dict stored by :func:`write_ground_truth`."""
    import h5py
    out = {}
    for key, obj in group.items():
        if isinstance(obj, h5py.Dataset):
            # checked before reading: HDF5 can crash converting a damaged compound type
            if not (obj.dtype.kind in "biuf" or obj.dtype == np.complex64 or obj.dtype == np.complex128):
                raise DataError("%s: ground-truth dataset %s has an unexpected type (%s)" % (
                    obj.file.filename, obj.name, "compound" if obj.dtype.names else obj.dtype),
                    hint="the file may be damaged; write it again (ptycli simulate)")
            out[key] = obj[()]
            if "psize" in obj.attrs:
                out[key + "_psize_m"] = np.asarray(obj.attrs["psize"], dtype=np.float64)
    for key, value in group.attrs.items():
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        elif isinstance(value, np.generic):
            value = value.item()
        out[key] = value
    return out


def write_datafile(path, scan_data, config_yaml=None):
    """Write ``scan_data`` (all frames, one process) to ``path``, atomically.

    Parameters
    ----------
    path : str
        Output file (``.h5``); replaced when it exists (check first with
        :func:`ptycli.io.atomic.check_writable`).
    scan_data : ScanData
        Frames of the whole scan (gather them on one rank first under MPI).
    config_yaml : str, optional
        The configuration text, stored as ``/meta/config_yaml``.
    """
    import h5py
    sd = scan_data
    inten = np.asarray(sd.intensities, dtype=np.float32)
    if inten.ndim != 3:
        raise ValueError("intensities must be (N, H, W), got shape %s" % (inten.shape,))
    n, h, w = inten.shape
    mask = np.ones(inten.shape, np.uint8) if sd.mask is None else \
        np.broadcast_to(np.asarray(sd.mask) != 0, inten.shape).astype(np.uint8)
    pos = np.asarray(sd.positions, dtype=np.float64).reshape(n, 2)
    indices = np.arange(n) if sd.indices is None else np.asarray(sd.indices, np.int64)
    with atomic_write(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs["format"] = FORMAT
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["creator"] = _creator()
            f.attrs["created"] = datetime.datetime.now(datetime.timezone.utc).astimezone() \
                .isoformat(timespec="seconds")
            g = f.create_group("data")
            chunks = (1, h, w)
            ds = g.create_dataset("intensities", data=inten, chunks=chunks,
                                  compression="gzip", shuffle=True)
            ds.attrs["units"] = "counts"
            ds = g.create_dataset("positions", data=pos)
            ds.attrs["units"] = sd.positions_unit or "m"
            ds.attrs["axes"] = "y,x"
            g.create_dataset("mask", data=mask, chunks=chunks, compression="gzip", shuffle=True)
            g.create_dataset("indices", data=indices)
            geo = f.create_group("geometry")
            geo.create_dataset("energy", data=float(sd.energy_kev)).attrs["units"] = "keV"
            geo.create_dataset("distance", data=float(sd.distance_m)).attrs["units"] = "m"
            geo.create_dataset("psize", data=np.broadcast_to(
                np.asarray(sd.psize_m, dtype=np.float64), (2,))).attrs["units"] = "m"
            geo.create_dataset("shape", data=np.array([h, w], dtype=np.int64))
            geo.create_dataset("center", data=np.array([h // 2, w // 2], dtype=np.float64))
            geo.attrs["propagation"] = str((sd.meta or {}).get("propagation", "farfield"))
            if sd.ground_truth:
                write_ground_truth(f.create_group("ground_truth"), sd.ground_truth)
            meta = f.create_group("meta")
            meta.create_dataset("label", data=fixed_text(sd.label or ""))
            if config_yaml is not None:
                meta.create_dataset("config_yaml", data=fixed_text(config_yaml))
            if sd.source:
                meta.attrs["source"] = str(sd.source)
            for key, value in (sd.meta or {}).items():
                if key == "propagation":
                    continue
                if isinstance(value, (bool, int, float, str, np.number)):
                    meta.attrs[key] = value
                elif isinstance(value, (list, tuple)) and value and all(
                        isinstance(v, (bool, int, float, np.number)) for v in value):
                    meta.attrs[key] = np.asarray(value)
    return path


def is_datafile(path):
    """True when ``path`` is an HDF5 file with ``format='ptycli-data'``."""
    import h5py

    try:
        check_structure(path)
        with h5py.File(path, "r") as f:
            return _str(f.attrs.get("format", "")) == FORMAT
    except (OSError, TypeError, DataError):
        return False


def read_datafile(path):
    """Read a whole ptycli data file into a :class:`~ptycli.scans.base.ScanData`.

    Frames come back exactly as stored (no pipeline); use
    :class:`~ptycli.scans.hdf5.Hdf5Scan` to read a block per MPI rank.

    Raises
    ------
    DataError
        When the file is missing, not HDF5, not a ptycli data file, of a newer
        format version, or lacks a required dataset.
    """
    import h5py

    from ..scans.base import ScanData  # the scan loaders only once a data file is read

    path = os.fspath(path)
    if not os.path.exists(path):
        raise DataError("data file %s does not exist" % path, hint="check the path")
    check_structure(path)  # a hang or crash of libhdf5 on a damaged file becomes a DataError
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise DataError("%s is not a readable HDF5 file (%s)" % (path, exc)) from exc
    with f, reading(path):
        check_format(f, path, FORMAT, FORMAT_VERSION, "data file", "data file",
                     hint="read it with the Hdf5Scan loader and map its datasets")

        def need(name):
            obj = f.get(name)
            if not isinstance(obj, h5py.Dataset):
                raise DataError("%s: dataset %s is missing" % (path, name),
                                hint="the file is incomplete; write it again")
            return obj

        inten = np.asarray(need("/data/intensities")[()], dtype=np.float32)
        if inten.ndim != 3:
            raise DataError("%s: /data/intensities has shape %s, expected (N, H, W)" % (
                path, inten.shape))
        n = inten.shape[0]
        pds = need("/data/positions")
        pos = np.asarray(pds[()], dtype=np.float64)
        if pos.shape != (n, 2):
            raise DataError("%s: /data/positions has shape %s, expected (%d, 2)" % (
                path, pos.shape, n))
        unit = _str(pds.attrs.get("units", "m"))
        mask = np.asarray(f["/data/mask"][()]) != 0 if "/data/mask" in f else \
            np.ones(inten.shape, bool)
        mask = np.broadcast_to(mask, inten.shape).copy()
        indices = np.asarray(f["/data/indices"][()], np.int64) if "/data/indices" in f \
            else np.arange(n)
        psize = np.broadcast_to(np.asarray(need("/geometry/psize")[()], np.float64)
                                .reshape(-1), (2,)).copy()
        meta = {}
        if "meta" in f:
            for key, value in f["meta"].attrs.items():
                if isinstance(value, bytes):
                    value = value.decode("utf-8", "replace")
                elif isinstance(value, np.ndarray):
                    value = value.tolist()
                elif isinstance(value, np.generic):
                    value = value.item()
                meta[key] = value
        geo = f["geometry"]
        meta["propagation"] = _str(geo.attrs.get("propagation", "farfield"))
        if "/meta/config_yaml" in f:
            meta["config_yaml"] = _str(f["/meta/config_yaml"][()])
        meta["file"] = path
        label = _str(f["/meta/label"][()]) if "/meta/label" in f else \
            os.path.splitext(os.path.basename(path))[0]
        gt = read_ground_truth(f["ground_truth"]) if "ground_truth" in f else None
        return ScanData(
            intensities=inten,
            mask=mask,
            positions=pos,
            positions_unit="pixel" if unit.lower() in ("pixel", "pixels", "px") else "m",
            indices=indices,
            num_frames_total=n,
            energy_kev=float(need("/geometry/energy")[()]),
            distance_m=float(need("/geometry/distance")[()]),
            psize_m=psize,
            shape=tuple(int(s) for s in inten.shape[1:]),
            label=label,
            source=path,
            meta=meta,
            ground_truth=gt,
        )
