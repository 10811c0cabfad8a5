"""Scan loaders: the common frame-preparation pipeline and its parameters.

A loader turns an input (a file, a folder, a simulation) into a
:class:`ScanData`: this MPI rank's diffraction frames, ready for the model
builder (centred, cropped, oriented, binned, with a validity mask), plus the
scan positions and the experimental geometry.

Writing a loader
----------------
Subclass :class:`ScanLoader`, set ``NAME`` and ``PARAMS`` (the common
parameters extended with your own through ``ScanLoader.PARAMS.extended``),
decorate with :func:`register` and implement two methods::

    @register
    class MyScan(ScanLoader):
        NAME = "MyScan"
        PARAMS = ScanLoader.PARAMS.extended("MyScan", [Parameter(...)])

        def read_meta(self):
            # cheap: no frames. Required keys: num_frames, frame_shape.
            # Optional: energy_kev, distance_m, psize_m (scalar or (2,)),
            # positions_unit ('m'/'pixel'), center ((2,) raw-frame pixels),
            # num_positions, label, propagation, ground_truth (dict), meta (dict)
            return {"num_frames": n, "frame_shape": (h, w), ...}

        def read_frames(self, start, stop):
            # frames start..stop-1 (global indices, stop <= num_frames)
            # required: data (n,h,w), positions (n,2) (y, x)
            # optional: mask ((n,h,w) or (h,w), nonzero = valid), dark, flat
            #           ((n,h,w) or (h,w)), indices (n,)
            return {"data": ..., "positions": ...}

        def read_static(self):          # optional
            # frame-independent arrays held by the file: mask, dark, flat
            # ((h,w); dark/flat may also be a (k,h,w) stack that is averaged)
            return {}

Then ``MyScan.from_pars({...}).load()`` returns a :class:`ScanData`.

Pipeline (applied by :meth:`ScanLoader.load`, in this order)
------------------------------------------------------------
0. frame selection: the first ``num_frames`` frames (all when null), split
   into contiguous per-rank blocks with :func:`ptycli.parallel.block_range`;
   each rank reads only its own block, ``chunk_size`` frames per call.
   Positions are checked as they are read: one (y, x) pair per frame, all
   finite (:class:`~ptycli.errors.DataError` naming the file otherwise); an
   input with fewer positions than frames is refused by :meth:`ScanLoader.check`
   (before any frame is read), one with more gets a warning.
1. mask: the file's mask (per frame or static) AND the ``mask`` file
   (zero = ignore). Shapes are those of the raw frames.
2. invalid values: NaN, +-Inf and negative raw counts (detector gap/flag
   values; raw counts are never negative), and pixels where the dark is not
   finite, are set to 0 and masked; ONE warning on the ``ptycli`` logger gives
   the number of pixels and frames (summed over all ranks). Saturation and
   dead-pixel markers (the largest value of the raw integer type, e.g. 65535
   or 4294967295; :func:`marker_pixels`) are masked the same way with their
   own warning; a frame whose usable pixels all hold the marker is a DataError.
3. dark subtraction (``dark`` file, else the loader's dark): negative results
   are noise around zero and are clipped to 0 (kept valid).
4. flat-field division (``flat`` file, else the loader's flat), the flat
   normalised to a mean of 1 over its usable pixels; pixels where the flat is
   not positive and finite are masked. Every masked pixel holds 0 from here on.
5. ``fftshifted``: frames with the zero frequency at pixel [0, 0] are shifted
   so that it is at ``frame_shape // 2``.
6. ``orientation``: transpose, then flip up-down, then flip left-right (see
   :func:`orientation_flags` for the integer encoding). A transpose also swaps
   the (y, x) detector pixel size (``psize``, from the file or the
   configuration, is that of the detector as stored).
7. centre: ``center`` null uses the file's centre when it states one, else
   'auto' (far field) or 'geometric' (near field: the frames are images, with
   no diffraction centre to find); 'auto' is the mass centre of the valid
   intensities summed over all frames of all ranks; 'geometric' is
   ``frame_shape // 2``; a pair is a pixel position in the raw frame as stored
   in the file (mapped through steps 5-6).
8. crop/pad to ``shape * rebin`` about the (rounded) centre, so that it lands
   on pixel ``(shape * rebin) // 2``; padded pixels are masked, and one warning
   says how many when the window leaves the frame (a ``shape`` larger than the
   detector, or a centre near its edge). With ``shape`` null the frame keeps
   its size (rounded down to a multiple of ``rebin``).
9. ``rebin``: sum r x r blocks; a binned pixel is valid only if all its
   sub-pixels are; the detector pixel size is multiplied by r.
10. final checks: frames whose valid pixels hold no counts are reported in one
    warning (a DataError when no frame holds any); positions get ``positions_swap`` (y <-> x), ``positions_flip``
    (negate y and/or x) and ``positions_scale``.

Reading errors: whatever a damaged or unexpected input makes h5py or numpy
raise while a loader reads it becomes a DataError naming the file
(:func:`ptycli.io.reading.reading`).

Geometry: ``energy`` (keV), ``distance`` (m) and ``psize`` (detector pixel, m)
from the configuration override the file's values; a quantity missing from both
is a :class:`~ptycli.errors.ConfigError` naming the parameter.

Propagation: the scan's ``propagation`` (``scans.<label>.propagation``, set on
the loader as :attr:`ScanLoader.propagation` by whoever builds it) and the one
the input records (``read_meta()['propagation']``: ptycli's data file, a
``.ptyd`` written by ptycli) are resolved by
:meth:`ScanLoader.resolve_propagation`: the configured value, else the
recorded one, else 'farfield'; a configured value that contradicts the
recorded one is a :class:`~ptycli.errors.ConfigError`. The result is
``ScanData.meta['propagation']``. Simulators (MoonFlowerScan) record nothing
and simulate what the scan asks for.
"""

import dataclasses
import os
from typing import Optional

import numpy as np

from .. import parallel
from ..errors import ConfigError, DataError
from ..io.reading import READ_ERRORS, reading  # noqa: F401  (re-exported)
from ..log import get_logger
from ..params.declare import Parameter, ParamSet
from ..utils.param_tree import Param

__all__ = [
    "available_memory",
    "check_memory",
    "marker_pixels",
    "ScanData",
    "ScanLoader",
    "LOADERS",
    "register",
    "get_loader",
    "orientation_flags",
    "normalise_propagation",
    "PROPAGATIONS",
    "COMMON_PARAMS",
    "READ_ERRORS",
    "reading",
]

logger = get_logger("ptycli.scans")

#: registered loaders, by NAME
LOADERS = {}

#: valid values of a scan's propagation
PROPAGATIONS = ("farfield", "nearfield")


def normalise_propagation(value, where="propagation"):
    """'farfield' / 'nearfield' (or None) from a configured or recorded value.

    Accepts any case and the spellings 'far-field', 'far field', 'far_field'
    (same for near); anything else is a ConfigError naming ``where``.
    """
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    text = "".join(ch for ch in str(value).strip().lower() if ch not in " -_")
    if text in PROPAGATIONS:
        return text
    raise ConfigError("%s: unknown propagation %r; expected farfield or nearfield" % (where, value))


def register(cls):
    """Class decorator: record a loader in :data:`LOADERS` (and the params registry)."""
    if not getattr(cls, "NAME", None):
        raise TypeError("%s needs a NAME to be registered" % cls.__name__)
    cls.PARAMS = cls.PARAMS.extended(cls.NAME, [
        Parameter("name", cls.NAME, "str", "loader name (%s)" % cls.NAME)])
    LOADERS[cls.NAME] = cls
    try:
        from ..params.registry import register_loader
    except ImportError:
        pass
    else:
        register_loader(cls.NAME, cls.PARAMS, cls)
    return cls


def get_loader(name):
    """The loader class registered under ``name`` (case-insensitive)."""
    if name in LOADERS:
        return LOADERS[name]
    for key, cls in LOADERS.items():
        if key.lower() == str(name).lower():
            return cls
    from ..params.declare import closest
    hint = closest(name, LOADERS)
    raise ConfigError("unknown scan loader %r%s; available: %s" % (
        name, " (did you mean %s?)" % " or ".join(hint) if hint else "",
        ", ".join(sorted(LOADERS))))


@dataclasses.dataclass
class ScanData:
    """Prepared frames of one MPI rank plus scan and geometry information.

    Frames are centred: the zero frequency is at pixel ``shape // 2``.
    Invalid pixels (``mask`` False) hold 0.
    """

    #: (n, H, W) float32 photon counts of this rank's frames
    intensities: np.ndarray
    #: (n, H, W) bool, True = valid
    mask: np.ndarray
    #: (n, 2) float64 (y, x) scan positions
    positions: np.ndarray
    #: 'm' or 'pixel' (pixels of the sample plane of the final geometry)
    positions_unit: str
    #: (n,) int global frame indices (0 .. num_frames_total-1)
    indices: np.ndarray
    #: frames over all ranks
    num_frames_total: int
    energy_kev: float
    distance_m: float
    #: (2,) detector pixel size (after rebinning), m
    psize_m: np.ndarray
    #: (H, W) frame shape
    shape: tuple
    label: str = ""
    #: the file or folder the frames came from
    source: str = ""
    meta: dict = dataclasses.field(default_factory=dict)
    #: e.g. {'object': array, 'probe': array, 'object_psize_m': ..., 'probe_psize_m': ...}
    ground_truth: Optional[dict] = None

    @property
    def num_frames(self):
        """Frames held by this rank."""
        return int(self.intensities.shape[0])

    @property
    def wavelength_m(self):
        """Wavelength in metres."""
        return 1.23984193e-9 / float(self.energy_kev)

    def positions_in_metres(self, resolution):
        """Positions in metres, converting pixel units with ``resolution`` (y, x) m."""
        if self.positions_unit == "m":
            return self.positions.copy()
        return self.positions * np.broadcast_to(np.asarray(resolution, float), (2,))


# ---------------------------------------------------------------------------
# common parameters

#: Largest frame side (pixels) a ``shape`` may ask for; detectors have at most a few thousand.
MAX_FRAME_SIDE = 16384


def _checked_by(name):
    """A ``check`` for a declaration: run the module function ``name(value, path)``, keep the value.

    The functions that interpret a setting when loading (``orientation_flags``,
    ``_normalise_center``, ``_normalise_flip``) also validate it, so that a bad
    value is refused with the configuration, before any data is read.
    """
    def check(value, path):
        globals()[name](value, path)
        return value
    return check

COMMON_PARAMS = ParamSet("scan_data", [
    Parameter("name", None, "str", "loader name", nullable=True),
    Parameter("dfile", None, "path", "input file (or folder) to read", nullable=True),
    Parameter("label", None, "str", "scan label (default: from the file or the file name)",
              nullable=True),
    Parameter("num_frames", None, "int", "use only the first N frames (null = all)", low=1,
              nullable=True),
    Parameter("chunk_size", 100, "int", "frames read per call", low=1, high=100000),
    Parameter("shape", None, "intpair",
              "frame shape after crop/pad about the centre and rebinning (null = keep)",
              low=1, high=MAX_FRAME_SIDE, nullable=True, unit="pixel"),
    Parameter("center", None, "any",
              "diffraction centre: null (the file's, else auto), 'auto' (mass centre), "
              "'geometric' (frame centre) or [row, col] in raw-frame pixels", nullable=True,
              check=_checked_by("_normalise_center")),
    Parameter("fftshifted", False, "bool",
              "frames have the zero frequency at pixel [0, 0] (shift to centred first)"),
    Parameter("orientation", None, "any",
              "frame orientation: integer 0..7 (4 transpose + 2 flipud + 1 fliplr, applied "
              "in that order) or [transpose, flipud, fliplr]", nullable=True,
              check=_checked_by("orientation_flags")),
    Parameter("rebin", 1, "int", "sum r x r detector pixels (the pixel size grows r times)",
              low=1, high=64),
    Parameter("energy", None, "float", "photon energy (overrides the file)", low=0.0,
              nullable=True, unit="keV"),
    Parameter("distance", None, "float", "sample-detector distance (overrides the file)",
              low=0.0, nullable=True, unit="m"),
    Parameter("psize", None, "pair", "detector pixel size (overrides the file)", low=0.0,
              nullable=True, unit="m"),
    Parameter("positions_unit", None, "str",
              "unit of the positions: 'm' or 'pixel' (null = from the file, else 'm')",
              choices=["m", "pixel"], nullable=True),
    Parameter("positions_scale", 1.0, "float", "multiplier applied to the positions"),
    Parameter("positions_swap", False, "bool", "swap the y and x columns of the positions"),
    Parameter("positions_flip", None, "any",
              "negate positions: [flip_y, flip_x] booleans, or one boolean for both",
              nullable=True, check=_checked_by("_normalise_flip")),
    Parameter("dark", None, "path", "dark frame .npy/.h5 file, subtracted (null = the file's)",
              nullable=True),
    Parameter("flat", None, "path", "flat-field .npy/.h5 file, divided (null = the file's)",
              nullable=True),
    Parameter("mask", None, "path",
              "mask .npy/.h5 file (0 = ignore pixel), combined with the file's mask; "
              "'file.h5:/dataset' picks a dataset", nullable=True),
], doc="scan data: input file, frame preparation and geometry")


# ---------------------------------------------------------------------------
# read errors

# READ_ERRORS and reading() live in ptycli.io.reading (shared with the other readers)


# ---------------------------------------------------------------------------
# small helpers


def orientation_flags(orientation, where="orientation"):
    """``(transpose, flipud, fliplr)`` for an orientation setting.

    Integers 0..7 encode ``4 * transpose + 2 * flipud + 1 * fliplr`` (so 1 is
    a left-right flip, 2 an up-down flip, 4 a transpose; PtyPy's meaning).
    The operations are applied in the order transpose, flipud, fliplr.
    A sequence of three booleans is taken as is; None means 0.
    """
    if orientation is None:
        return (False, False, False)
    if isinstance(orientation, (bool, np.bool_)):
        raise ConfigError("%s: expected an integer 0..7 or [transpose, flipud, fliplr], got %r"
                          % (where, orientation))
    if isinstance(orientation, (int, np.integer)):
        o = int(orientation)
        if not 0 <= o <= 7:
            raise ConfigError("%s: integer must be in 0..7 (4 transpose + 2 flipud + 1 "
                              "fliplr), got %d" % (where, o))
        return (bool(o & 4), bool(o & 2), bool(o & 1))
    if isinstance(orientation, (list, tuple)) and len(orientation) == 3:
        out = []
        for v in orientation:
            if isinstance(v, (bool, np.bool_)) or v in (0, 1):
                out.append(bool(v))
            else:
                break
        else:
            return tuple(out)
    raise ConfigError("%s: expected an integer 0..7 or [transpose, flipud, fliplr] booleans, "
                      "got %r" % (where, orientation))


def _orient(a, flags):
    """Apply (transpose, flipud, fliplr) to the last two axes of ``a``."""
    transpose, flipud, fliplr = flags
    if transpose:
        a = np.swapaxes(a, -1, -2)
    if flipud:
        a = a[..., ::-1, :]
    if fliplr:
        a = a[..., :, ::-1]
    return a


def _orient_point(point, shape, flags):
    """Map a (row, col) point of a frame of ``shape`` through :func:`_orient`."""
    y, x = float(point[0]), float(point[1])
    h, w = shape
    transpose, flipud, fliplr = flags
    if transpose:
        y, x, h, w = x, y, w, h
    if flipud:
        y = h - 1 - y
    if fliplr:
        x = w - 1 - x
    return np.array([y, x])


def _oriented_shape(shape, flags):
    return (shape[1], shape[0]) if flags[0] else tuple(shape)


def _crop_pad(a, mask, center, target):
    """Crop/pad the last two axes so that pixel ``center`` lands at ``target // 2``.

    Returns new (data, mask); padded pixels hold 0 and are masked.
    """
    n = a.shape[0]
    h, w = a.shape[-2:]
    th, tw = target
    cy, cx = (int(np.floor(c + 0.5)) for c in center)
    y0, x0 = cy - th // 2, cx - tw // 2
    out = np.zeros((n, th, tw), dtype=a.dtype)
    outm = np.zeros((n, th, tw), dtype=bool)
    sy0, sy1 = max(y0, 0), min(y0 + th, h)
    sx0, sx1 = max(x0, 0), min(x0 + tw, w)
    if sy1 > sy0 and sx1 > sx0:
        out[:, sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = a[:, sy0:sy1, sx0:sx1]
        outm[:, sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = mask[:, sy0:sy1, sx0:sx1]
    return out, outm


def _rebin(a, mask, r):
    """Sum r x r blocks; a block is valid only when all its pixels are."""
    if r == 1:
        return a, mask
    n, h, w = a.shape
    a = a.reshape(n, h // r, r, w // r, r).sum(axis=(2, 4), dtype=np.float64)
    m = mask.reshape(n, h // r, r, w // r, r).all(axis=(2, 4))
    a = np.where(m, a, 0.0).astype(np.float32)
    return a, m


def _as_stack(arr, n, frame_shape, what, source):
    """Broadcast a (h,w) or (n,h,w) array to (n,h,w); DataError on a shape mismatch."""
    arr = np.asarray(arr)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[-2:] != tuple(frame_shape) or arr.shape[0] not in (1, n):
        raise DataError("%s: %s has shape %s, expected %s or %s" % (
            source, what, arr.shape, tuple(frame_shape), (n,) + tuple(frame_shape)),
            hint="give a %s with the shape of the raw detector frames" % what)
    return arr


def load_array_file(path, what, param):
    """Read a 2-D or 3-D array from ``.npy``/``.npz`` or HDF5 (``file.h5:/dataset``)."""
    spec = str(path)
    dataset = None
    if not os.path.exists(spec) and ":" in spec:
        spec, dataset = spec.rsplit(":", 1)
    if not os.path.exists(spec):
        raise ConfigError("%s: %s file %s does not exist" % (param, what, spec),
                          hint="fix the path or set %s to null" % param)
    low = spec.lower()
    try:
        if low.endswith(".npy"):
            return np.load(spec, allow_pickle=False)
        if low.endswith(".npz"):
            with np.load(spec, allow_pickle=False) as z:
                keys = list(z.keys())
                key = dataset or (what if what in keys else keys[0] if len(keys) == 1 else None)
                if key is None or key not in keys:
                    raise ConfigError("%s: %s file %s holds arrays %s; name one as %s:NAME"
                                      % (param, what, spec, ", ".join(keys), spec))
                return z[key]
    except ConfigError:
        raise
    except Exception as exc:
        raise DataError("%s: cannot read %s file %s (%s)" % (param, what, spec, exc)) from exc
    import h5py

    from ..io.h5guard import check_structure

    check_structure(spec)
    try:
        f = h5py.File(spec, "r")
    except OSError as exc:
        raise DataError("%s: %s file %s is neither .npy nor a readable HDF5 file (%s)" % (
            param, what, spec, exc)) from exc
    with f, reading(spec, "the %s" % what):
        if dataset is None:
            found = []
            f.visititems(lambda n, o: found.append(n) if isinstance(o, h5py.Dataset)
                         and o.ndim in (2, 3) else None)
            for cand in (what, "mask", "data"):
                if cand in found:
                    dataset = cand
                    break
            else:
                if len(found) == 1:
                    dataset = found[0]
                else:
                    raise ConfigError("%s: %s file %s holds %d 2-D/3-D datasets; name one as "
                                      "%s:/path" % (param, what, spec, len(found), spec))
        if dataset not in f or not isinstance(f[dataset], h5py.Dataset):
            raise DataError("%s: %s file %s has no dataset %s" % (param, what, spec, dataset))
        return f[dataset][()]


#: The marker of float frames: the uint32 maximum, as Eiger detectors flag dead and gap pixels
#: (kept when their frames are converted to floating point).
FLOAT_MARKER = 4294967295


def marker_pixels(frames):
    """Pixels holding a saturation or dead-pixel marker: the largest value of the frames' type.

    Integer frames: ``np.iinfo(dtype).max`` (65535 for uint16, 4294967295 for
    uint32: what detectors such as the Eiger write for saturated, dead and gap
    pixels). Float frames of at least single precision: :data:`FLOAT_MARKER`
    (as stored in that precision). Other types (bool) have no marker.

    Returns
    -------
    ndarray of bool or None
        Same shape as ``frames``; None when the type has no marker.
    """
    kind, size = frames.dtype.kind, frames.dtype.itemsize
    if kind in "ui":
        return frames == np.iinfo(frames.dtype).max
    if kind == "f" and size >= 4:
        return frames == frames.dtype.type(FLOAT_MARKER)
    return None


def available_memory():
    """Memory this process may use: ``(available, total)`` in bytes.

    ``MemAvailable`` and ``MemTotal`` of ``/proc/meminfo`` (the physical
    memory from ``os.sysconf`` elsewhere, available = total), each capped by a
    cgroup v2 limit (``/sys/fs/cgroup/memory.max``) when one is set. Unknown
    values give 1 TB, so that nothing is refused for want of information.
    """
    total = available = None
    try:
        with open("/proc/meminfo", "r", encoding="ascii", errors="replace") as fh:
            for line in fh:
                key, _, rest = line.partition(":")
                if key in ("MemTotal", "MemAvailable"):
                    value = float(rest.split()[0]) * 1024.0
                    if key == "MemTotal":
                        total = value
                    else:
                        available = value
    except (OSError, ValueError, IndexError):
        pass
    if total is None:
        try:
            total = float(os.sysconf("SC_PAGE_SIZE")) * float(os.sysconf("SC_PHYS_PAGES"))
        except (AttributeError, ValueError, OSError):
            total = 1e12
    if available is None:
        available = total
    try:
        with open("/sys/fs/cgroup/memory.max", "r", encoding="ascii") as fh:
            limit = fh.read().strip()
        if limit.isdigit():
            total = min(total, float(limit))
            available = min(available, total)
    except OSError:
        pass
    return available, total


def check_memory(need, what, hint, error=ConfigError):
    """Refuse, before allocating, a job that needs more memory than this machine has available.

    Parameters
    ----------
    need : float
        Bytes the job would allocate (an estimate).
    what : str
        What needs it, starting the message (e.g. ``'scans.MF.data: 1e9 frames of 128x128'``).
    hint : str
        The fix.
    error : type
        Exception class raised (ConfigError: the parameters ask for it; DataError: the input does).

    Raises
    ------
    PtycliError
        One line with what it would need and what there is (exit code 2).
    """
    available, total = available_memory()
    if not need <= available:  # also NaN/inf estimates
        kwargs = {"validation": True} if error is DataError else {}
        raise error("%s would need %.3g GB of memory; this machine has %.3g GB available (%.3g GB in all)"
                    % (what, need / 1e9, available / 1e9, total / 1e9), hint=hint, **kwargs)


def _normalise_center(value, where):
    if value is None:
        return None
    if isinstance(value, str):
        v = value.strip().lower()
        if v in ("auto", "geometric"):
            return v
        raise ConfigError("%s: expected null, 'auto', 'geometric' or [row, col], got %r"
                          % (where, value))
    try:
        arr = np.asarray(value, dtype=float).reshape(-1)
    except (TypeError, ValueError):
        arr = np.zeros(0)
    if arr.size == 1:
        arr = np.repeat(arr, 2)
    if arr.size != 2 or not np.all(np.isfinite(arr)):
        raise ConfigError("%s: expected null, 'auto', 'geometric' or [row, col], got %r"
                          % (where, value))
    return arr


def _normalise_flip(value, where):
    if value is None:
        return (False, False)
    if isinstance(value, (bool, np.bool_)):
        return (bool(value), bool(value))
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(
            isinstance(v, (bool, np.bool_)) or v in (0, 1) for v in value):
        return (bool(value[0]), bool(value[1]))
    raise ConfigError("%s: expected [flip_y, flip_x] booleans or one boolean, got %r"
                      % (where, value))


def _raise_first_error(error, src):
    """Collective: raise the exception of the lowest MPI rank that has one (no-op when none has).

    The failing rank re-raises its own exception; the others raise the same
    :class:`~ptycli.errors.PtycliError` class with its message, hint and exit
    code (any other exception becomes a :class:`DataError` naming its type and rank).
    """
    from ..errors import PtycliError

    desc = None
    if error is not None:
        if isinstance(error, PtycliError):
            desc = (type(error).__name__, error.message, error.hint, int(error.exit_code))
        else:
            desc = ("", "%s: reading failed on MPI rank %d (%s: %s)" % (
                src, parallel.rank, type(error).__name__, " ".join(str(error).split())), None, None)
    everyone = parallel.allgather(desc)  # once per load, not in an iteration loop
    first = next((r for r, d in enumerate(everyone) if d is not None), None)
    if first is None:
        return
    if first == parallel.rank:
        raise error
    from .. import errors

    name, message, hint, code = everyone[first]
    cls = getattr(errors, name, None) if name else None
    if not (isinstance(cls, type) and issubclass(cls, PtycliError)):
        cls = DataError
    raise cls(message, hint=hint, exit_code=code)


class ScanLoader:
    """Base class of the scan loaders (see the module docstring).

    Parameters
    ----------
    pars : dict or Param
        Parameters already validated against ``PARAMS`` (use :meth:`from_pars`
        to validate a plain dict).
    path : str, optional
        Dotted configuration path of these parameters, used in error messages.
    """

    NAME = None
    PARAMS = COMMON_PARAMS

    def __init__(self, pars=None, path=None):
        if pars is None:
            pars = self.PARAMS.defaults()
        self.pars = pars if isinstance(pars, Param) else Param(pars)
        self.path = path or "scan.data"
        p = self.pars
        self.orientation = orientation_flags(p.get("orientation"), self._where("orientation"))
        self.center = _normalise_center(p.get("center"), self._where("center"))
        self.positions_flip = _normalise_flip(p.get("positions_flip"),
                                              self._where("positions_flip"))
        for key in ("energy", "distance"):
            v = p.get(key)
            if v is not None and not v > 0:
                raise ConfigError("%s: must be positive, got %r" % (self._where(key), v))
        if p.get("psize") is not None and not min(p.psize) > 0:
            raise ConfigError("%s: must be positive, got %r" % (self._where("psize"), p.psize))
        self._meta = None

    @classmethod
    def from_pars(cls, pars=None, path=None, propagation=None):
        """Validate ``pars`` against ``PARAMS`` (filling defaults) and build the loader.

        ``propagation`` sets :attr:`propagation` (the scan's configured value).
        """
        path = path or "scan.data"
        loader = cls(cls.PARAMS.validate(dict(pars or {}), path), path=path)
        loader.propagation = propagation
        return loader

    # -- propagation ------------------------------------------------------------
    @property
    def propagation(self):
        """The scan's configured propagation ('farfield', 'nearfield'), or None when not set.

        Set it before loading (the scan model sets ``scans.<label>.propagation``).
        A simulator simulates this propagation; a file loader checks it against
        what the file records (:meth:`resolve_propagation`).
        """
        return getattr(self, "_propagation", None)

    @propagation.setter
    def propagation(self, value):
        value = normalise_propagation(value, self._propagation_where())
        if value != getattr(self, "_propagation", None):
            self._propagation = value
            self._propagation_changed()

    def _propagation_changed(self):
        """Hook: the configured propagation changed (simulators drop their cached model)."""

    def _propagation_where(self):
        """Configuration path of the scan's propagation (``scans.<label>.propagation``)."""
        path = self.path or ""
        if path.endswith(".data"):
            return path[:-len(".data")] + ".propagation"
        return "propagation"

    def recorded_propagation(self):
        """The propagation the input records ('farfield'/'nearfield'), or None when it records none."""
        return normalise_propagation(self.meta().get("propagation"),
                                     "the propagation recorded in %s" % self.source)

    def resolve_propagation(self):
        """The scan's propagation: the configured one, else the input's, else 'farfield'.

        Raises
        ------
        ConfigError
            When the configuration sets a propagation that contradicts the one
            the input records.
        """
        configured = self.propagation
        recorded = self.recorded_propagation()
        if configured is not None and recorded is not None and configured != recorded:
            where = self._propagation_where()
            raise ConfigError(
                "%s is %s, but %s holds %s data" % (where, configured, self.source, recorded),
                hint="set it to %s or remove it (the file's propagation is then used)" % recorded)
        return configured or recorded or "farfield"

    # -- to implement -------------------------------------------------------
    def read_meta(self):
        """Frame count, frame shape and what the input says about the geometry."""
        raise NotImplementedError

    def read_frames(self, start, stop):
        """Frames ``start .. stop-1``: dict with data, positions (+ optional keys)."""
        raise NotImplementedError

    def read_static(self):
        """Frame-independent arrays of the input: optional mask, dark, flat."""
        return {}

    # -- helpers for subclasses ---------------------------------------------
    def _where(self, key):
        return "%s.%s" % (self.path, key) if self.path else key

    @property
    def source(self):
        """The input's name for messages."""
        return str(self.pars.get("dfile") or self.NAME or type(self).__name__)

    def require_dfile(self):
        """The ``dfile`` path; ConfigError if unset, DataError if it does not exist."""
        dfile = self.pars.get("dfile")
        if not dfile:
            raise ConfigError("%s: no input given" % self._where("dfile"),
                              hint="set dfile to the path of the %s input" % (self.NAME or "scan"))
        if not os.path.exists(dfile):
            raise DataError("%s: input %s does not exist" % (self._where("dfile"), dfile),
                            hint="check the path", validation=True)
        return str(dfile)

    def meta(self):
        """:meth:`read_meta`, cached and checked."""
        if self._meta is None:
            with reading(self.source, "the metadata"):
                m = dict(self.read_meta())
                for key in ("num_frames", "frame_shape"):
                    if key not in m:
                        raise DataError("%s: loader %s did not report %s" % (self.source, self.NAME, key))
                m["num_frames"] = int(m["num_frames"])
                m["frame_shape"] = tuple(int(s) for s in m["frame_shape"])
            if len(m["frame_shape"]) != 2:
                raise DataError("%s: frames must be 2-D, got frame shape %s" % (
                    self.source, m["frame_shape"]))
            self._meta = m
        return self._meta

    # -- geometry ---------------------------------------------------------------
    def geometry(self):
        """``(energy_kev, distance_m, psize_m (2,))`` of the raw detector, config first."""
        m = self.meta()
        p = self.pars
        values = {}
        for key, mkey in (("energy", "energy_kev"), ("distance", "distance_m"),
                          ("psize", "psize_m")):
            v = p.get(key)
            if v is None:
                v = m.get(mkey)
            if v is None:
                unit = {"energy": "keV", "distance": "m", "psize": "m"}[key]
                raise ConfigError(
                    "%s: not given and %s does not state it" % (self._where(key), self.source),
                    hint="set %s (in %s)" % (self._where(key), unit))
            values[key] = v
        psize = np.asarray(values["psize"], dtype=np.float64).reshape(-1)
        if psize.size not in (1, 2):
            raise DataError("%s: psize %s must be one or two values" % (self.source, psize))
        psize = np.broadcast_to(psize, (2,)).copy()
        energy, distance = float(values["energy"]), float(values["distance"])
        for key, v in (("energy", energy), ("distance", distance), ("psize", psize)):
            if not np.all(np.isfinite(v)) or not np.all(np.asarray(v) > 0):
                raise DataError("%s: %s is %s; it must be positive" % (self.source, key, v),
                                hint="set %s in the configuration" % self._where(key))
        return energy, distance, psize

    # -- checks before reading frames ------------------------------------------
    def check(self):
        """Check what can be checked without reading frames; return the plan of :meth:`load`.

        Reads the metadata and geometry and checks the frame count, the number
        of positions and the frame shape. ``ptycli reconstruct`` calls it for
        every scan before computing (its DataErrors then exit with code 2);
        :meth:`load` calls it first too.

        Returns
        -------
        dict
            ``ntot`` (frames used), ``nmax`` (frames in the input), ``raw_shape``,
            ``oshape`` (oriented), ``rebin``, ``target`` (crop/pad shape before
            rebinning), ``geometry`` ``(energy_kev, distance_m, psize_m)``,
            ``propagation`` (:meth:`resolve_propagation`; its ConfigError is
            raised here when the configuration contradicts the input).
        """
        p = self.pars
        src = self.source
        m = self.meta()
        geometry = self.geometry()
        nmax = m["num_frames"]
        if nmax < 1:
            raise DataError("%s: contains no frames" % src,
                            hint="check %s and the dataset of the frames" % self._where("dfile"))
        ntot = nmax if p.get("num_frames") is None else min(int(p.num_frames), nmax)
        npos = m.get("num_positions")
        if npos is not None and int(npos) < ntot:
            raise DataError("%s: %d positions for %d frames" % (src, int(npos), ntot),
                            hint="give one position per frame, or set %s to %d"
                            % (self._where("num_frames"), int(npos)))
        raw_shape = m["frame_shape"]
        if min(raw_shape) < 1:
            raise DataError("%s: frames of shape %s hold no pixels" % (src, tuple(raw_shape)))
        oshape = _oriented_shape(raw_shape, self.orientation)
        rebin = int(p.get("rebin") or 1)
        if p.get("shape") is not None:
            target = tuple(int(s) * rebin for s in p.shape)
        else:
            target = tuple((s // rebin) * rebin for s in oshape)
            if min(target) < 1:
                raise ConfigError("%s: rebin %d is larger than the frame %s" % (
                    self._where("rebin"), rebin, raw_shape))
        # this process's frames as read (float32 + mask, all held while an 'auto' centre is measured) and as
        # prepared, plus one chunk being read, converted and cropped
        raw_px = float(np.prod(np.asarray(raw_shape, dtype=np.float64)))
        out_px = float(np.prod(np.asarray(target, dtype=np.float64))) / rebin ** 2
        chunk = min(int(p.get("chunk_size") or 100), ntot)
        need = 5.0 * np.ceil(ntot / max(parallel.size, 1)) * (raw_px + out_px) \
            + chunk * (16.0 * raw_px + 5.0 * out_px * rebin ** 2)
        check_memory(need, "%s: %d frames of %s pixels%s (per process)" % (
            src, ntot, "x".join(str(s) for s in raw_shape),
            ", prepared as %s" % "x".join(str(t // rebin) for t in target) if tuple(target) != tuple(raw_shape)
            else ""),
            hint="read fewer frames (%s), crop them (%s), or use more machines (MPI)%s" % (
                self._where("num_frames"), self._where("shape"), "; if the frame shape is wrong, the file may be "
                "damaged" if p.get("dfile") and p.get("shape") is None else ""), error=DataError)
        return dict(ntot=ntot, nmax=nmax, npos=npos, raw_shape=raw_shape, oshape=oshape,
                    rebin=rebin, target=target, geometry=geometry, propagation=self.resolve_propagation())

    # -- the pipeline -------------------------------------------------------
    def load(self, rank=None, size=None):
        """Read this rank's frames and prepare them (see the module docstring).

        ``rank``/``size`` default to :mod:`ptycli.parallel`'s; passing others
        reads that block without any MPI communication (for tests and tools).
        """
        collective = rank is None and size is None and parallel.size > 1
        rank = parallel.rank if rank is None else int(rank)
        size = parallel.size if size is None else int(size)
        p = self.pars
        src = self.source

        m = self.meta()
        plan = self.check()
        energy, distance, psize = plan["geometry"]
        ntot, nmax, npos = plan["ntot"], plan["nmax"], plan["npos"]
        raw_shape, oshape, rebin, target = plan["raw_shape"], plan["oshape"], plan["rebin"], plan["target"]
        flags = self.orientation
        if flags[0]:  # transposed frames: the detector pixel's (y, x) sides swap too
            psize = psize[::-1].copy()
        if npos is not None and int(npos) > nmax and parallel.rank == 0:
            logger.warning("%s: %d positions for %d frames; the first %d positions are used (check that "
                           "they belong to these frames)", src, int(npos), nmax, nmax)
        start, stop = parallel.block_range(ntot, rank, size)

        # static arrays: configuration files first, then the loader's own
        with reading(src, "the mask, dark or flat"):
            static = dict(self.read_static() or {})
        ext_mask = self._external("mask", raw_shape)
        dark = self._external("dark", raw_shape)
        flat = self._external("flat", raw_shape)
        if dark is None and static.get("dark") is not None:
            dark = self._static_frame(static["dark"], raw_shape, "dark")
        if flat is None and static.get("flat") is not None:
            flat = self._static_frame(static["flat"], raw_shape, "flat")
        static_mask = None
        if static.get("mask") is not None:
            static_mask = self._static_frame(static["mask"], raw_shape, "mask") != 0
        if ext_mask is not None:
            ext_mask = ext_mask != 0
            static_mask = ext_mask if static_mask is None else static_mask & ext_mask
        flat_ok = None
        if flat is not None:
            flat, flat_ok = self._normalise_flat(flat)

        propagation = plan["propagation"]
        center = self._fixed_center(m, raw_shape, oshape, flags, propagation)
        chunk = int(p.get("chunk_size") or 100)
        n_local = stop - start
        out_shape = tuple(t // rebin for t in target)
        intens = np.zeros((n_local,) + out_shape, dtype=np.float32)
        mask = np.zeros((n_local,) + out_shape, dtype=bool)
        positions = np.zeros((n_local, 2), dtype=np.float64)
        indices = np.arange(start, stop, dtype=np.int64)
        held = []  # oriented chunks kept until the centre is known
        total = np.zeros(oshape, dtype=np.float64)
        bad_pix = bad_frames = sat_pix = sat_frames = 0
        error = None
        try:
            for c0 in range(start, stop, chunk):
                c1 = min(c0 + chunk, stop)
                d, mk, pos, idx, nbad, nbf, nsat = self._read_chunk(
                    c0, c1, raw_shape, static_mask, dark, flat, flat_ok)
                bad_pix += nbad
                bad_frames += nbf
                sat_pix += nsat[0]
                sat_frames += nsat[1]
                positions[c0 - start:c1 - start] = pos
                if idx is not None:
                    indices[c0 - start:c1 - start] = idx
                if p.get("fftshifted"):
                    d = np.fft.fftshift(d, axes=(-2, -1))
                    mk = np.fft.fftshift(mk, axes=(-2, -1))
                d = np.ascontiguousarray(_orient(d, flags))
                mk = np.ascontiguousarray(_orient(mk, flags))
                if center is None:
                    total += d.sum(axis=0, dtype=np.float64)
                    held.append((c0 - start, d, mk))
                else:
                    self._finish(d, mk, center, target, rebin, intens, mask, c0 - start)
        except Exception as exc:  # keep the ranks in step before collectives
            error = exc
        if collective:
            # every rank raises the error of the first failing rank, so its message (not a
            # generic one) is what the command line reports, whichever rank prints it
            _raise_first_error(error, src)
        if error is not None:
            raise error

        if collective:
            bad_pix = int(parallel.allreduce_scalar(int(bad_pix)))
            bad_frames = int(parallel.allreduce_scalar(int(bad_frames)))
            sat_pix = int(parallel.allreduce_scalar(int(sat_pix)))
            sat_frames = int(parallel.allreduce_scalar(int(sat_frames)))
        if bad_pix and parallel.rank == 0:
            logger.warning("%s: %d invalid pixels (NaN, Inf or negative counts) in %d frames "
                           "were set to 0 and masked", src, bad_pix, bad_frames)
        if sat_pix and parallel.rank == 0:
            logger.warning("%s: %d saturated or dead pixels (holding the largest value of the data type, the "
                           "detector's marker) in %d frames were masked", src, sat_pix, sat_frames)

        if center is None:
            if collective:
                parallel.allreduce(total)
            center = self._mass_center(total, oshape)
            for off, d, mk in held:
                self._finish(d, mk, center, target, rebin, intens, mask, off)
            held.clear()
        if parallel.rank == 0:
            self._warn_padding(center, oshape, target)

        # final checks and positions
        empty = int(np.count_nonzero(~(intens.reshape(n_local, -1).sum(axis=1) > 0))) \
            if n_local else 0
        if collective:
            empty = int(parallel.allreduce_scalar(empty))
        if empty and empty >= ntot:
            raise DataError("%s: all %d frames hold no counts in their valid pixels (all zero or all "
                            "masked); nothing to reconstruct from" % (src, ntot),
                            hint="check the dataset of the frames (%s), the mask and the dark/flat "
                                 "settings" % self._where("intensities" if "intensities" in p else "dfile"))
        if empty and parallel.rank == 0:
            logger.warning("%s: %d frames hold no counts in their valid pixels (of %d); they pull the "
                           "model towards zero at their positions: if they are detector drop-outs, mask them "
                           "or leave them out (num_frames)", src, empty, ntot)
        if p.get("positions_swap"):
            positions = positions[:, ::-1].copy()
        fy, fx = self.positions_flip
        if fy:
            positions[:, 0] *= -1
        if fx:
            positions[:, 1] *= -1
        scale = p.get("positions_scale")
        if scale is not None and scale != 1:
            positions *= float(scale)
        unit = p.get("positions_unit") or m.get("positions_unit") or "m"
        if unit in ("pixel", "pixels", "px"):
            unit = "pixel"
        if unit not in ("m", "pixel"):
            raise DataError("%s: positions unit %r is not supported; use 'm' or 'pixel'"
                            % (src, unit), hint="set %s" % self._where("positions_unit"))

        label = p.get("label") or m.get("label") or \
            (os.path.splitext(os.path.basename(str(p.get("dfile")).rstrip("/")))[0]
             if p.get("dfile") else (self.NAME or "scan"))
        meta = dict(m.get("meta") or {})
        meta.update({
            "loader": self.NAME,
            "center_raw": [float(c) for c in center],
            "frame_shape_raw": list(raw_shape),
            "orientation": list(flags),
            "rebin": rebin,
            "fftshifted": bool(p.get("fftshifted")),
        })
        meta["propagation"] = propagation
        return ScanData(
            intensities=intens,
            mask=mask,
            positions=positions,
            positions_unit=unit,
            indices=indices,
            num_frames_total=int(ntot),
            energy_kev=energy,
            distance_m=distance,
            psize_m=psize * rebin,
            shape=out_shape,
            label=str(label),
            source=src,
            meta=meta,
            ground_truth=m.get("ground_truth"),
        )

    # -- pipeline pieces ------------------------------------------------------
    def _external(self, key, raw_shape):
        path = self.pars.get(key)
        if path is None:
            return None
        arr = np.asarray(load_array_file(path, key, self._where(key)))
        return self._static_frame(arr, raw_shape, key, param=self._where(key), path=path)

    def _static_frame(self, arr, raw_shape, what, param=None, path=None):
        arr = np.asarray(arr)
        if arr.ndim == 3 and what in ("dark", "flat"):
            arr = arr.mean(axis=0)
        elif arr.ndim == 3 and arr.shape[0] == 1:
            arr = arr[0]
        if arr.shape != tuple(raw_shape):
            where = "%s (%s)" % (param, path) if param else "%s of %s" % (what, self.source)
            cls = ConfigError if param else DataError
            raise cls("%s: %s shape %s does not match the frame shape %s" % (
                where, what, arr.shape, tuple(raw_shape)),
                hint="give a %s of the raw detector frame's shape" % what)
        return arr

    def _normalise_flat(self, flat):
        flat = np.asarray(flat, dtype=np.float64)
        ok = np.isfinite(flat) & (flat > 0)
        if not ok.any():
            raise DataError("%s: the flat field has no positive values" % self.source,
                            hint="check %s" % self._where("flat"))
        return np.where(ok, flat / flat[ok].mean(), 1.0), ok

    def _read_chunk(self, c0, c1, raw_shape, static_mask, dark, flat, flat_ok):
        n = c1 - c0
        src = self.source
        with reading(src, "frames %d..%d" % (c0, c1 - 1)):
            got = self.read_frames(c0, c1)
            if "data" not in got or "positions" not in got:
                raise DataError("%s: loader %s returned no data/positions" % (src, self.NAME))
            d = np.asarray(got["data"])
            if d.ndim == 2 and n == 1:
                d = d[None]
            if d.ndim != 3 or d.shape != (n,) + tuple(raw_shape):
                raise DataError("%s: frames %d..%d have shape %s, expected %s" % (
                    src, c0, c1 - 1, d.shape, (n,) + tuple(raw_shape)))
            if d.dtype.kind not in "biuf":
                raise DataError("%s: frames %d..%d hold %s values, expected numbers (counts)" % (
                    src, c0, c1 - 1, d.dtype))
            pos = np.asarray(got["positions"], dtype=np.float64)
        if pos.ndim != 2 or pos.shape[1] != 2 or pos.shape[0] != n:
            raise DataError("%s: %s positions for frames %d..%d (%d frames); expected (%d, 2)" % (
                src, pos.shape, c0, c1 - 1, n, n),
                hint="give one (y, x) position per frame")
        nonfinite = int(np.count_nonzero(~np.isfinite(pos).all(axis=1)))
        if nonfinite:
            raise DataError("%s: %d positions of frames %d..%d are not finite (NaN or Inf)"
                            % (src, nonfinite, c0, c1 - 1),
                            hint="fix the positions or limit num_frames")
        idx = got.get("indices")
        if idx is not None:
            idx = np.asarray(idx, dtype=np.int64).reshape(-1)
            if idx.shape != (n,):
                raise DataError("%s: %d indices for %d frames" % (src, idx.size, n))
        sat = marker_pixels(d)  # on the raw type: float32 cannot tell 4294967295 from its neighbours
        d = d.astype(np.float32, copy=True)
        valid = np.ones(d.shape, dtype=bool)
        if got.get("mask") is not None:
            valid &= _as_stack(got["mask"], n, raw_shape, "mask", src) != 0
        if static_mask is not None:
            valid &= static_mask
        # invalid values in the raw data (NaN, Inf, negative flags)
        with np.errstate(invalid="ignore"):
            bad = ~np.isfinite(d) | (d < 0)
        cdark = dark
        if cdark is None and got.get("dark") is not None:
            cdark = _as_stack(got["dark"], n, raw_shape, "dark", src)
        if cdark is not None:
            bad |= ~np.isfinite(np.broadcast_to(cdark, d.shape))
        nbad_pix = int(np.count_nonzero(bad))
        nbad_frames = int(np.count_nonzero(bad.reshape(n, -1).any(axis=1)))
        nsat = self._mask_markers(sat, valid & ~bad, c0) if sat is not None else (0, 0)
        if nsat[0]:
            bad |= sat
        d[bad] = 0.0
        valid &= ~bad
        if cdark is not None:
            with np.errstate(invalid="ignore"):
                d -= np.asarray(cdark, dtype=np.float32)
            d[bad] = 0.0
            np.maximum(d, 0.0, out=d)
        cflat, cok = flat, flat_ok
        if cflat is None and got.get("flat") is not None:
            cflat, cok = self._normalise_flat(_as_stack(got["flat"], n, raw_shape, "flat", src))
        if cflat is not None:
            d /= cflat.astype(np.float32)
            valid &= cok
        d[~valid] = 0.0
        return d, valid, pos, idx, nbad_pix, nbad_frames, nsat

    def _mask_markers(self, sat, usable, c0):
        """Count the marker pixels among the usable ones (``sat`` is narrowed to those, in place).

        Returns ``(pixels, frames)``; a frame whose usable pixels all hold the
        marker (a saturated or blank frame) is a DataError naming it.
        """
        sat &= usable
        n = sat.shape[0]
        per_frame = sat.reshape(n, -1).sum(axis=1)
        usable_per_frame = usable.reshape(n, -1).sum(axis=1)
        full = np.flatnonzero((per_frame > 0) & (per_frame == usable_per_frame))
        if full.size:
            raise DataError("%s: frame %d (and %d more in frames %d..%d) holds the saturation/dead-pixel marker "
                            "(the largest value of its data type) in every pixel; such a frame holds no counts"
                            % (self.source, c0 + int(full[0]), full.size - 1, c0, c0 + n - 1),
                            hint="leave the frame out (%s) or check the dataset of the frames"
                            % self._where("num_frames"), validation=True)
        return int(per_frame.sum()), int(np.count_nonzero(per_frame))

    def _fixed_center(self, m, raw_shape, oshape, flags, propagation="farfield"):
        """The centre in oriented-frame pixels, or None when it must be measured.

        Without a configured or recorded centre, far-field frames are centred on
        their mass centre ('auto'); near-field frames are images of the sample
        plane with no diffraction centre, so they stay as they are ('geometric').
        """
        c = self.center
        if c is None:
            fc = m.get("center")
            if fc is None:
                c = "geometric" if propagation == "nearfield" else "auto"
            else:
                c = _normalise_center(fc, "center of %s" % self.source)
        if isinstance(c, str):
            if c == "auto":
                return None
            return np.array([s // 2 for s in oshape], dtype=float)
        c = np.asarray(c, dtype=float)
        if self.pars.get("fftshifted"):
            c = np.mod(c + np.array([s // 2 for s in raw_shape]), np.array(raw_shape))
        return _orient_point(c, raw_shape, flags)

    def _warn_padding(self, center, oshape, target):
        """One warning when the crop window (``shape * rebin`` about the centre) leaves the frame.

        A ``shape`` larger than the detector frame (or a centre near its edge)
        pads the frames; the padded pixels are masked, so they are not fitted,
        but the user should know that part of every frame holds no data.
        """
        cy, cx = (int(np.floor(c + 0.5)) for c in center)
        inside = 1
        for c, t, n in ((cy, target[0], oshape[0]), (cx, target[1], oshape[1])):
            lo = c - t // 2
            inside *= max(0, min(lo + t, n) - max(lo, 0))
        padded = target[0] * target[1] - inside
        if padded <= 0:
            return
        total = target[0] * target[1]
        rebin = max(1, int(self.pars.get("rebin") or 1))
        if target[0] > oshape[0] or target[1] > oshape[1]:
            why = "the crop shape %s is larger than the detector frame %s" % (
                tuple(t // rebin for t in target), tuple(oshape))
            fix = "; set %s to at most %s to avoid it" % (
                self._where("shape"), tuple(s // rebin for s in oshape))
        else:
            why = "the crop window %s about the centre (%.1f, %.1f) reaches outside the detector frame %s" % (
                tuple(target), center[0], center[1], tuple(oshape))
            fix = "; check %s" % self._where("center")
        logger.warning("%s: %s: %d of %d pixels (%.0f%%) of every frame are padding, masked (not fitted)%s",
                       self.source, why, padded, total, 100.0 * padded / total, fix)

    def _mass_center(self, total, oshape):
        s = total.sum()
        if not s > 0:
            logger.warning("%s: no counts to find the diffraction centre; using the frame "
                           "centre", self.source)
            return np.array([sh // 2 for sh in oshape], dtype=float)
        yy = np.arange(oshape[0], dtype=np.float64)
        xx = np.arange(oshape[1], dtype=np.float64)
        cy = float((total.sum(axis=1) * yy).sum() / s)
        cx = float((total.sum(axis=0) * xx).sum() / s)
        logger.debug("%s: diffraction centre (mass centre) at %.2f, %.2f", self.source, cy, cx)
        return np.array([cy, cx])

    @staticmethod
    def _finish(d, mk, center, target, rebin, intens, mask, off):
        d, mk = _crop_pad(d, mk, center, target)
        d, mk = _rebin(d, mk, rebin)
        n = d.shape[0]
        intens[off:off + n] = d
        mask[off:off + n] = mk
