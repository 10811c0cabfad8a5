"""CXI files (cxidb.org format): ptychography data in, reconstructions out.

CXI uses SI units everywhere: metres, and joules for the photon energy
(``E_J = E_keV * 1e3 * e`` with ``e = 1.602176634e-19``).

Data file layout (read and written here)::

    /cxi_version                                   int, e.g. 150
    /entry_1/instrument_1/detector_1/data          (N, ny, nx) frames
    /entry_1/instrument_1/detector_1/distance      m
    /entry_1/instrument_1/detector_1/x_pixel_size  m
    /entry_1/instrument_1/detector_1/y_pixel_size  m
    /entry_1/instrument_1/detector_1/mask          (ny, nx) or (N, ny, nx) uint32 bit field
    /entry_1/instrument_1/source_1/energy          J
    /entry_1/sample_1/geometry_1/translation       (N, 3) metres, columns x, y, z
    /entry_1/data_1/data         -> soft link to detector_1/data
    /entry_1/data_1/translation  -> soft link to sample_1/geometry_1/translation

Mask bits: bit 0x1 marks an invalid pixel (further bits — saturated, hot,
dead, ... — can be treated as invalid with ``mask_bits``).

Positions: ptycli works in (y, x); the CXI translation is (x, y, z), so
column 1 is y and column 0 is x. The values are passed through unchanged
(no sign flip): any flip/transpose belongs to the scan's ``orientation``.

Result file layout (:func:`write_cxi_result`)::

    /cxi_version
    /entry_1/image_1/{data (object), data_type='object', data_space='real',
                      x_pixel_size, y_pixel_size, process_1/...}
    /entry_1/image_2/{data (probe), data_type='probe', data_space='real',
                      x_pixel_size, y_pixel_size, process_1/...}
    process_1/{program, version, command, configuration, date}

Problems with a file raise :class:`ptycli.errors.DataError` naming the file
and the dataset.
"""

import datetime
import os

import numpy as np

from ..errors import DataError
from .atomic import atomic_write
from .hdf5 import open_hdf5, require

__all__ = [
    "ELECTRON_VOLT_J",
    "kev_to_joule",
    "joule_to_kev",
    "CXI_VERSION",
    "MASK_INVALID",
    "read_cxi_meta",
    "read_cxi_frames",
    "write_cxi_data",
    "write_cxi_result",
    "read_cxi_result",
]

#: one electronvolt in joules (exact, SI 2019)
ELECTRON_VOLT_J = 1.602176634e-19
#: CXI format version written
CXI_VERSION = 150
#: mask bit of an invalid pixel
MASK_INVALID = 0x1

DETECTOR = "instrument_1/detector_1"
SOURCE = "instrument_1/source_1"
GEOMETRY = "sample_1/geometry_1"


def kev_to_joule(energy_kev):
    """Photon energy keV → J."""
    return float(energy_kev) * 1e3 * ELECTRON_VOLT_J


def joule_to_kev(energy_j):
    """Photon energy J → keV, to 12 significant digits.

    The rounding (far below any beamline's precision) makes ``kev_to_joule``
    round trips exact, so a scan read from CXI builds the same model as from
    ptycli's HDF5 or a .ptyd (the last bit of the wavelength changed the
    probe guess, and single-precision runs drifted apart from there).
    """
    return float("%.12g" % (float(energy_j) / (1e3 * ELECTRON_VOLT_J)))


# --------------------------------------------------------------------------
# reading data files
# --------------------------------------------------------------------------
def _entry(f, entry=None):
    """The entry group: ``entry`` if given, else ``entry_1`` or the first ``entry_N``."""
    import h5py

    if entry is not None:
        return require(f, entry, "group")
    if "entry_1" in f:
        return f["entry_1"]
    entries = sorted(k for k in f.keys() if k.startswith("entry_") and isinstance(f[k], h5py.Group))
    if not entries:
        raise DataError("%s: no /entry_1 group; this is not a CXI file" % f.filename)
    return f[entries[0]]


def _first(f, entry, names, what):
    """The first existing dataset of ``entry/<name>`` in ``names``; DataError if none."""
    import h5py

    for name in names:
        node = entry.get(name)
        if isinstance(node, h5py.Dataset):
            return node
    raise DataError("%s: dataset %s is missing (looked for %s)" % (
        f.filename, what, ", ".join("%s/%s" % (entry.name, n) for n in names)))


def _scalar(f, entry, name, required=True):
    node = entry.get(name)
    if node is None:
        if required:
            raise DataError("%s: dataset %s/%s is missing" % (f.filename, entry.name, name))
        return None
    value = np.asarray(node[()], dtype=float).ravel()
    if value.size < 1:
        raise DataError("%s: dataset %s/%s is empty" % (f.filename, entry.name, name))
    return float(value[0])


def _data_node(f, entry):
    data = _first(f, entry, ("data_1/data", DETECTOR + "/data"), "data (frames)")
    if data.ndim != 3:
        raise DataError("%s: %s has shape %s; expected (frames, ny, nx)" % (f.filename, data.name, data.shape))
    return data


def _translation_node(f, entry):
    return _first(f, entry, ("data_1/translation", GEOMETRY + "/translation", DETECTOR + "/translation"),
                  "translation (scan positions)")


def read_cxi_meta(path, entry=None):
    """Geometry and layout of a CXI data file (no frames read).

    Returns
    -------
    dict
        ``num_frames``, ``frame_shape`` (ny, nx), ``energy_kev`` (converted
        from J), ``energy_j``, ``distance_m``, ``psize_m`` (ndarray (2,):
        y_pixel_size, x_pixel_size), ``positions_unit`` ('m'), ``has_mask``,
        ``cxi_version`` (or None), ``data_path``, ``translation_path``,
        ``dtype``. Geometry entries missing from the file are None.
    """
    with open_hdf5(path, "CXI file") as f:
        ent = _entry(f, entry)
        data = _data_node(f, ent)
        trans = _translation_node(f, ent)
        if trans.ndim != 2 or trans.shape[1] < 2:
            raise DataError("%s: %s has shape %s; expected (frames, 3) with columns x, y, z" % (
                path, trans.name, trans.shape))
        if trans.shape[0] < data.shape[0]:
            raise DataError("%s: %d translations for %d frames in %s" % (
                path, trans.shape[0], data.shape[0], data.name))
        energy_j = _scalar(f, ent, SOURCE + "/energy", required=False)
        px = _scalar(f, ent, DETECTOR + "/x_pixel_size", required=False)
        py = _scalar(f, ent, DETECTOR + "/y_pixel_size", required=False)
        if px is None and py is None:
            psize = None
        else:
            psize = np.array([py if py is not None else px, px if px is not None else py], float)
        version = f.get("cxi_version")
        return {
            "num_frames": int(data.shape[0]),
            "frame_shape": tuple(int(s) for s in data.shape[1:]),
            "energy_kev": None if energy_j is None else joule_to_kev(energy_j),
            "energy_j": energy_j,
            "distance_m": _scalar(f, ent, DETECTOR + "/distance", required=False),
            "psize_m": psize,
            "positions_unit": "m",
            "has_mask": (ent.get(DETECTOR + "/mask") is not None),
            "cxi_version": None if version is None else int(np.asarray(version[()]).ravel()[0]),
            "data_path": data.name,
            "translation_path": trans.name,
            "dtype": str(data.dtype),
        }


def read_cxi_frames(path, start=0, stop=None, entry=None, mask_bits=MASK_INVALID):
    """Frames ``start:stop`` of a CXI data file.

    Returns
    -------
    dict
        ``data`` (n, ny, nx) float32, ``positions`` (n, 2) float64 metres in
        (y, x) order (translation columns 1 and 0), ``mask`` (ny, nx) or
        (n, ny, nx) bool, True = valid (no bit of ``mask_bits`` set), or None
        when the file has no mask, ``indices`` (n,) int64.
    """
    with open_hdf5(path, "CXI file") as f:
        ent = _entry(f, entry)
        data = _data_node(f, ent)
        total = data.shape[0]
        start = int(start)
        stop = total if stop is None else int(stop)
        if not 0 <= start <= stop <= total:
            raise DataError("%s: frames %d:%d requested, the file holds %d frames" % (path, start, stop, total))
        trans = _translation_node(f, ent)
        if trans.ndim != 2 or trans.shape[1] < 2 or trans.shape[0] < total:
            raise DataError("%s: %s has shape %s; expected (%d, 3) with columns x, y, z" % (
                path, trans.name, trans.shape, total))
        t = np.asarray(trans[start:stop], dtype=np.float64)
        positions = np.stack([t[:, 1], t[:, 0]], axis=1)
        frames = np.asarray(data[start:stop], dtype=np.float32)
        mask = None
        mnode = ent.get(DETECTOR + "/mask")
        if mnode is not None:
            if mnode.shape == tuple(data.shape[1:]):
                bits = mnode[()]
            elif mnode.ndim == 3 and mnode.shape[0] == total and mnode.shape[1:] == data.shape[1:]:
                bits = mnode[start:stop]
            else:
                raise DataError("%s: %s has shape %s; expected %s or %s" % (
                    path, mnode.name, mnode.shape, tuple(data.shape[1:]), tuple(data.shape)))
            mask = (np.asarray(bits).astype(np.int64) & int(mask_bits)) == 0
        return {
            "data": frames,
            "positions": positions,
            "mask": mask,
            "indices": np.arange(start, stop, dtype=np.int64),
        }


# --------------------------------------------------------------------------
# writing data files
# --------------------------------------------------------------------------
def _pair(value, name):
    arr = np.asarray(value, dtype=np.float64).ravel()
    if arr.size == 1:
        arr = np.repeat(arr, 2)
    if arr.size != 2:
        raise ValueError("%s must be one or two numbers (y, x), got %r" % (name, value))
    return arr


def write_cxi_data(path, intensities, positions, *, energy_kev, distance_m, psize_m, mask=None,
                   compression="gzip", cxi_version=CXI_VERSION):
    """Write a CXI ptychography data file (atomically).

    Parameters
    ----------
    path : str
        The CXI file to write; an existing one is replaced.
    intensities : array (N, ny, nx)
        Frames, stored as float32.
    positions : array (N, 2)
        Scan positions (y, x) in metres, stored as CXI translations (x, y, 0).
    energy_kev, distance_m : float
        Photon energy in keV (stored in J) and sample-detector distance (m).
    psize_m : float or pair
        Detector pixel size (y, x) in m.
    mask : bool array (ny, nx) or (N, ny, nx), optional
        True = valid; invalid pixels are stored with bit 0x1 set.
    """
    import h5py

    data = np.asarray(intensities)
    if data.ndim != 3:
        raise ValueError("intensities must be (frames, ny, nx), got shape %s" % (data.shape,))
    n = data.shape[0]
    pos = np.asarray(positions, dtype=np.float64)
    if pos.shape != (n, 2):
        raise ValueError("positions must be (%d, 2) (y, x) in metres, got shape %s" % (n, pos.shape))
    psize = _pair(psize_m, "psize_m")
    translation = np.zeros((n, 3), np.float64)
    translation[:, 0] = pos[:, 1]
    translation[:, 1] = pos[:, 0]
    bits = None
    if mask is not None:
        m = np.asarray(mask, dtype=bool)
        if m.shape not in (data.shape[1:], data.shape):
            raise ValueError("mask must be %s or %s, got %s" % (data.shape[1:], data.shape, m.shape))
        bits = np.where(m, 0, MASK_INVALID).astype(np.uint32)

    with atomic_write(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("cxi_version", data=np.int64(cxi_version))
            ent = f.create_group("entry_1")
            det = ent.create_group(DETECTOR)
            dset = det.create_dataset("data", data=np.ascontiguousarray(data, dtype=np.float32),
                                      compression=compression if n else None)
            dset.attrs["axes"] = "translation:y:x"
            det.create_dataset("distance", data=np.float64(distance_m))
            det.create_dataset("x_pixel_size", data=np.float64(psize[1]))
            det.create_dataset("y_pixel_size", data=np.float64(psize[0]))
            if bits is not None:
                det.create_dataset("mask", data=bits, compression=compression)
            src = ent.create_group(SOURCE)
            src.create_dataset("energy", data=np.float64(kev_to_joule(energy_kev)))
            geo = ent.create_group(GEOMETRY)
            geo.create_dataset("translation", data=translation)
            det["translation"] = h5py.SoftLink("/entry_1/%s/translation" % GEOMETRY)
            d1 = ent.create_group("data_1")
            d1["data"] = h5py.SoftLink("/entry_1/%s/data" % DETECTOR)
            d1["translation"] = h5py.SoftLink("/entry_1/%s/translation" % GEOMETRY)
    return os.fspath(path)


# --------------------------------------------------------------------------
# results
# --------------------------------------------------------------------------
def _write_image(ent, index, array, psize, data_type, process):
    import h5py

    img = ent.create_group("image_%d" % index)
    img.create_dataset("data", data=np.asarray(array))
    img.create_dataset("data_type", data=data_type, dtype=h5py.string_dtype("utf-8"))
    img.create_dataset("data_space", data="real", dtype=h5py.string_dtype("utf-8"))
    if psize is not None:
        img.create_dataset("x_pixel_size", data=np.float64(psize[1]))
        img.create_dataset("y_pixel_size", data=np.float64(psize[0]))
    proc = img.create_group("process_1")
    for key, value in process.items():
        if value is None:
            continue
        proc.create_dataset(key, data=str(value), dtype=h5py.string_dtype("utf-8"))
    return img


def write_cxi_result(path, object, probe, object_psize_m, probe_psize_m, *, program="ptycli",
                     version="", command="", configuration_yaml="", energy_kev=None, distance_m=None,
                     positions=None, extra_images=None):
    """Write a reconstruction as a CXI file (atomically).

    Parameters
    ----------
    path : str
        Output file.
    object, probe : complex arrays
        Reconstructed object and probe (2-d, or with leading mode/layer axes).
    object_psize_m, probe_psize_m : float or pair
        Pixel sizes (y, x) in metres of the object and probe grids.
    program, version, command, configuration_yaml : str
        Provenance stored in each image's ``process_1``.
    energy_kev, distance_m : float, optional
        Stored in ``instrument_1`` (energy in J) when given.
    positions : array (N, 2), optional
        Scan positions (y, x) in metres, stored as ``sample_1/geometry_1/translation``.
    extra_images : list of (array, data_type, psize), optional
        Further ``image_N`` groups (image_3, ...).
    """
    import h5py

    process = {
        "program": program,
        "version": version,
        "command": command,
        "configuration": configuration_yaml,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
    }
    translation = None
    if positions is not None:
        pos = np.asarray(positions, dtype=np.float64)
        if pos.ndim != 2 or pos.shape[1] != 2:
            raise ValueError("positions must be (N, 2) (y, x), got shape %s" % (pos.shape,))
        translation = np.zeros((pos.shape[0], 3))
        translation[:, 0], translation[:, 1] = pos[:, 1], pos[:, 0]
    images = [(object, "object", object_psize_m), (probe, "probe", probe_psize_m)]
    images += list(extra_images or [])
    with atomic_write(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("cxi_version", data=np.int64(CXI_VERSION))
            ent = f.create_group("entry_1")
            ent.create_dataset("program_name", data="%s %s" % (program, version),
                               dtype=h5py.string_dtype("utf-8"))
            for i, (arr, kind, ps) in enumerate(images, start=1):
                _write_image(ent, i, arr, None if ps is None else _pair(ps, "pixel size"), kind, process)
            if energy_kev is not None:
                ent.create_dataset(SOURCE + "/energy", data=np.float64(kev_to_joule(energy_kev)))
            if distance_m is not None:
                ent.create_dataset(DETECTOR + "/distance", data=np.float64(distance_m))
            if translation is not None:
                ent.create_dataset(GEOMETRY + "/translation", data=translation)
    return os.fspath(path)


def _text(node):
    value = node[()]
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray) and value.dtype.kind in "OS":
        value = value.ravel()[0]
        return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return str(value)


def read_cxi_result(path):
    """Read a CXI reconstruction file (as written by :func:`write_cxi_result`).

    Returns
    -------
    dict
        ``object``, ``probe`` (arrays), ``object_psize_m``, ``probe_psize_m``
        (ndarray (2,) or None), ``program``, ``version``, ``command``,
        ``configuration`` (from the object's ``process_1``), ``images`` (list
        of dicts with ``name``, ``data_type``, ``data``, ``psize_m``),
        ``energy_kev``, ``distance_m`` and ``positions`` (y, x) when stored.
    """
    import h5py

    with open_hdf5(path, "CXI file") as f:
        ent = _entry(f)
        names = sorted((k for k in ent.keys() if k.startswith("image_") and k[6:].isdigit()),
                       key=lambda k: int(k[6:]))
        if not names:
            raise DataError("%s: no %s/image_N groups; this is not a CXI result file" % (path, ent.name))
        images = []
        for name in names:
            img = ent[name]
            data = require(f, "%s/%s/data" % (ent.name, name))
            py = img.get("y_pixel_size")
            px = img.get("x_pixel_size")
            ps = None
            if px is not None and py is not None:
                ps = np.array([float(py[()]), float(px[()])])
            proc = {}
            if isinstance(img.get("process_1"), h5py.Group):
                proc = {k: _text(v) for k, v in img["process_1"].items() if isinstance(v, h5py.Dataset)}
            images.append({
                "name": name,
                "data_type": _text(img["data_type"]) if "data_type" in img else None,
                "data_space": _text(img["data_space"]) if "data_space" in img else None,
                "data": data[()],
                "psize_m": ps,
                "process": proc,
            })
        by_type = {}
        for im in images:
            by_type.setdefault(im["data_type"], im)
        obj = by_type.get("object", images[0])
        prb = by_type.get("probe", images[1] if len(images) > 1 else None)
        out = {
            "object": obj["data"],
            "probe": None if prb is None else prb["data"],
            "object_psize_m": obj["psize_m"],
            "probe_psize_m": None if prb is None else prb["psize_m"],
            "images": images,
        }
        for key in ("program", "version", "command", "configuration"):
            out[key] = obj["process"].get(key)
        energy = _scalar(f, ent, SOURCE + "/energy", required=False)
        out["energy_kev"] = None if energy is None else joule_to_kev(energy)
        out["distance_m"] = _scalar(f, ent, DETECTOR + "/distance", required=False)
        t = ent.get(GEOMETRY + "/translation")
        out["positions"] = None if t is None else np.stack([t[:, 1], t[:, 0]], axis=1)
        return out
