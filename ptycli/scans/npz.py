"""``NpzScan``: frames and positions from NumPy ``.npz`` / ``.npy`` files.

For data that already sit in NumPy arrays::

    scans:
      star:
        data:
          name: NpzScan
          dfile: siemens-star-small.npz.bz2   # .npz, .npy, and either one as .bz2 / .gz
          positions_unit: pixel               # positions in object pixels: no geometry needed

Arrays are found by key. Left null, the frames are the first of
``intensities``, ``diffraction``, ``data``, ``frames``, ``patterns``, ``diff``
that the file holds (else its only array of three or more dimensions) and the
positions the first of ``positions``, ``scan_positions``, ``pos``,
``translations``, ``coords``; ``mask``, ``dark``, ``flat``, ``energy`` (keV),
``distance`` (m) and ``psize`` (m) are used when present. A ``.npy`` file holds
only the frames: its positions come from ``positions_file``.

Shapes: frames (N, H, W), a scan grid (ny, nx, H, W), or either with leading
length-1 axes; positions (N, 2) as (y, x), also (1, N, 2), (ny, nx, 2) or
(2, N); a mask (H, W) or one per frame (nonzero = valid).

Positions in pixels (``positions_unit: pixel``) need no geometry: when the
configuration and the file give none of ``energy``, ``distance`` and ``psize``,
a far-field scan gets a nominal geometry in which the object pixel measures
exactly 1 (wavelength 1, distance 1e9, detector pixel 1e9 / frame size;
lengths in the result then read as object pixels). Any geometry with that
object pixel gives the same reconstruction; the nominal one keeps the Fresnel
curvature across a frame below 0.02 rad. Near-field scans need their real
geometry.

Frames stored FFT-shifted (zero frequency at pixel [0, 0]: the intensity
maximum at the corners) are detected when ``fftshifted`` is null, shifted back
and centred geometrically (an info line says so); ``fftshifted: false`` keeps
them as they are.

Compressed files are decompressed in memory, at most half of this machine's
memory (a file that would expand further is refused: a decompression bomb or a
file to decompress beforehand). Arrays are read without pickle.
"""

import os

import numpy as np

from ..errors import ConfigError, DataError
from ..log import get_logger
from ..params.declare import Parameter
from ..utils.nominal_geometry import NOMINAL_DISTANCE_M, NOMINAL_ENERGY_KEV
from .base import ScanLoader, register
from .frame_steps import announce, detect_fftshift  # noqa: F401 (detect_fftshift: part of this module's API)
from .npz_arrays import open_arrays
from .settings import loader_params

__all__ = ["NpzScan", "open_arrays", "detect_fftshift", "nominal_pixel_geometry",
           "FRAME_KEYS", "POSITION_KEYS"]

logger = get_logger("ptycli.scans.npz")

#: keys tried, in this order, for the frames and the positions
FRAME_KEYS = ("intensities", "diffraction", "data", "frames", "patterns", "diff")
POSITION_KEYS = ("positions", "scan_positions", "pos", "translations", "coords")


def squeeze_leading(shape, keep):
    """``shape`` without leading length-1 axes beyond the last ``keep`` axes."""
    shape = tuple(shape)
    while len(shape) > keep and shape[0] == 1:
        shape = shape[1:]
    return shape


def as_positions(a, where):
    """(N, 2) float64 (y, x) positions from (N, 2), (1, N, 2), (ny, nx, 2) or (2, N) arrays.

    Raises
    ------
    DataError
        For any other shape or non-numeric values.
    """
    a = np.asarray(a)
    if a.dtype.kind not in "biuf":
        raise DataError("%s holds %s values, expected numbers" % (where, a.dtype),
                        hint="store the positions as a numeric (N, 2) array", validation=True)
    shape = tuple(s for s in a.shape if s != 1) if a.ndim > 2 else a.shape
    if len(shape) == 2 and shape[-1] == 2:
        return np.asarray(a, dtype=np.float64).reshape(-1, 2)
    if len(shape) == 3 and shape[-1] == 2:  # a scan grid (ny, nx, 2)
        return np.asarray(a, dtype=np.float64).reshape(-1, 2)
    if len(shape) == 2 and shape[0] == 2:  # rows y and x
        return np.asarray(a, dtype=np.float64).reshape(2, -1).T.copy()
    if a.shape == (2,):
        return np.asarray(a, dtype=np.float64).reshape(1, 2)
    raise DataError("%s has shape %s, expected (N, 2) (y, x) positions" % (where, a.shape),
                    hint="store the positions as an (N, 2) array of (y, x)", validation=True)


def nominal_pixel_geometry(target_shape, transpose=False):
    """A far-field geometry whose object pixel is exactly 1, for positions in pixels.

    Parameters
    ----------
    target_shape : (int, int)
        Frame shape before rebinning, as oriented (crop/pad size times ``rebin``).
    transpose : bool
        The frames are transposed (the detector pixel is given as stored).

    Returns
    -------
    (float, float, ndarray)
        ``energy_kev``, ``distance_m`` and the (2,) detector pixel ``psize_m``
        as stored: with them ``wavelength * distance / (shape * psize) = 1``.
    """
    lam = 1.23984193e-9 / NOMINAL_ENERGY_KEV
    psize = lam * NOMINAL_DISTANCE_M / np.asarray(target_shape, dtype=np.float64)
    if transpose:
        psize = psize[::-1].copy()
    return NOMINAL_ENERGY_KEV, NOMINAL_DISTANCE_M, psize


def _key_param(name, what, default_keys, required=False):
    if required:
        doc = "key of %s (null = the first of %s present)" % (what, ", ".join(default_keys))
    else:
        doc = "key of %s (null = '%s' if present; '' = none)" % (what, default_keys[0])
    return Parameter(name, None, "str", doc, nullable=True)


@register
class NpzScan(ScanLoader):
    """Frames and positions from a NumPy ``.npz``/``.npy`` file (also ``.bz2``/``.gz``)."""

    NAME = "NpzScan"
    EXTENSIONS = (".npz", ".npy", ".npz.bz2", ".npz.gz", ".npy.bz2", ".npy.gz")
    PARAMS = loader_params("NpzScan", "the .npz or .npy file (also compressed: .npz.bz2, "
                           ".npz.gz, .npy.bz2, .npy.gz)", [
        _key_param("intensities", "the frames, (N, H, W) or (ny, nx, H, W)", FRAME_KEYS,
                   required=True),
        _key_param("positions", "the (N, 2) (y, x) positions", POSITION_KEYS, required=True),
        Parameter("positions_file", None, "path",
                  "(N, 2) (y, x) positions in a separate .npy, .npz or text file (needed with a "
                  ".npy dfile; overrides the positions key)", nullable=True),
        _key_param("mask_key", "the mask, (H, W) or (N, H, W), nonzero = valid", ("mask",)),
        _key_param("dark_key", "the dark frame, (H, W) or a (k, H, W) stack", ("dark",)),
        _key_param("flat_key", "the flat field, (H, W) or a (k, H, W) stack", ("flat",)),
        _key_param("energy_key", "the photon energy in keV", ("energy",)),
        _key_param("distance_key", "the sample-detector distance in m", ("distance",)),
        _key_param("psize_key", "the detector pixel size in m, scalar or (2,)", ("psize",)),
        Parameter("fftshifted", None, "bool",
                  "frames have the zero frequency at pixel [0, 0]; null = detect it (maximum at "
                  "the corners), shift them back and centre geometrically", nullable=True),
    ], doc="frames and positions from a NumPy .npz/.npy file (also .bz2/.gz compressed)")

    def __init__(self, pars=None, path=None):
        super().__init__(pars, path)
        self._arrays = None
        self._pos = None
        self._mask_shape = None

    # -- arrays ----------------------------------------------------------------------
    def _file(self):
        if self._arrays is None:
            path = self.require_dfile()
            if os.path.isdir(path):
                raise DataError("%s: %s is a folder, not a .npz/.npy file" % (
                    self._where("dfile"), path),
                    hint="give the file, or use NpyFolderScan for a folder of .npy frames",
                    validation=True)
            self._arrays = open_arrays(path)
        return self._arrays

    def _pick(self, param, candidates, what, required):
        """The key named by ``param`` (checked), else the first of ``candidates`` present."""
        f = self._file()
        key = self.pars.get(param)
        if key == "" and not required:
            return None
        if key:
            if f.kind == "npy":
                raise ConfigError("%s: %s is a .npy file with a single array, not a .npz" % (
                    self._where(param), f.path),
                    hint="set %s to null (the .npy array is the frames)%s" % (
                        self._where(param), "; give the positions as positions_file"
                        if param == "positions" else ""))
            if key not in f:
                raise DataError("%s: %s has no array %r; it holds %s" % (
                    self._where(param), f.path, key, f.describe()),
                    hint="set %s to one of these keys" % self._where(param), validation=True)
            return key
        if f.kind == "npy":
            return "" if param == "intensities" else None
        keys = f.keys()
        for cand in candidates:
            if cand in keys:
                return cand
        if param == "intensities":
            big = [k for k in keys if len(f.header(k)[0]) >= 3]
            if len(big) == 1:
                return big[0]
        if required:
            raise DataError("%s: found no %s in %s (it holds %s)" % (
                self._where(param), what, f.path, f.describe()),
                hint="set %s to the key of %s" % (self._where(param), what), validation=True)
        return None

    def _frames_key(self):
        return self._pick("intensities", FRAME_KEYS, "frames", True)

    def _frames(self):
        """The frames as an (N, H, W) array (a view or memory map where possible)."""
        f = self._file()
        key = self._frames_key()
        a = f.array(key)
        shape = squeeze_leading(a.shape, 3)
        if len(shape) == 2:
            shape = (1,) + shape
        if len(shape) == 4:
            shape = (shape[0] * shape[1],) + shape[2:]
        if len(shape) != 3:
            raise DataError("%s: array %s has shape %s, expected frames (N, H, W) or (ny, nx, H, W)" % (
                f.path, key or "(the .npy array)", a.shape),
                hint="set %s to the key of the frames" % self._where("intensities"), validation=True)
        if a.dtype.kind not in "biuf":
            raise DataError("%s: array %s holds %s values, expected numbers (counts)" % (
                f.path, key or "(the .npy array)", a.dtype), validation=True)
        return a.reshape(shape)

    def _positions(self):
        if self._pos is not None:
            return self._pos
        pfile = self.pars.get("positions_file")
        if pfile:
            where = "%s (%s)" % (self._where("positions_file"), pfile)
            if not os.path.isfile(str(pfile)):
                raise DataError("%s: positions file %s does not exist" % (
                    self._where("positions_file"), pfile), hint="check the path", validation=True)
            try:
                arrays = open_arrays(pfile)
            except DataError:
                try:  # a text file: one 'y x' line per frame
                    raw = np.loadtxt(str(pfile), dtype=np.float64, ndmin=2)
                except Exception as exc:
                    raise DataError("%s: cannot read positions (%s)" % (where, exc),
                                    hint="give an (N, 2) .npy/.npz array, or a text file with "
                                         "one 'y x' line per frame", validation=True) from exc
            else:
                keys = arrays.keys()
                key = next((k for k in POSITION_KEYS if k in keys), keys[0] if len(keys) == 1
                           else None)
                if key is None:
                    raise DataError("%s holds %s; none is called %s" % (
                        where, arrays.describe(), " or ".join(POSITION_KEYS)), validation=True)
                raw = arrays.array(key)
        else:
            key = self._pick("positions", POSITION_KEYS, "positions", True)
            if key is None:
                raise ConfigError("%s: %s is a .npy file, which holds only the frames" % (
                    self._where("dfile"), self._file().path),
                    hint="give the positions as %s (an (N, 2) .npy or text file), or save "
                         "frames and positions together with numpy.savez" % self._where(
                             "positions_file"))
            where = "%s: array %s" % (self._file().path, key)
            raw = self._file().array(key)
        self._pos = as_positions(raw, where)
        return self._pos

    def _optional_array(self, param, default):
        key = self._pick(param, (default,), default, False)
        return None if key is None else self._file().array(key)

    def _scalar(self, param, default, size=1):
        a = self._optional_array(param, default)
        if a is None:
            return None
        v = np.asarray(a, dtype=np.float64).reshape(-1)
        if v.size == 0 or v.size > 2 or (size == 1 and v.size != 1):
            raise DataError("%s: array %s has %d values, expected %s" % (
                self._file().path, self.pars.get(param) or default, v.size,
                "one" if size == 1 else "one or two"), validation=True)
        return float(v[0]) if size == 1 else v

    # -- ScanLoader interface ---------------------------------------------------
    def read_meta(self):
        frames = self._frames()
        positions = self._positions()
        n = int(frames.shape[0])
        meta = {
            "num_frames": n,
            "frame_shape": tuple(frames.shape[-2:]),
            "num_positions": int(positions.shape[0]),
            "energy_kev": self._scalar("energy_key", "energy"),
            "distance_m": self._scalar("distance_key", "distance"),
            "psize_m": self._scalar("psize_key", "psize", size=2),
            "label": os.path.basename(str(self.pars.dfile)).split(".")[0],
            "meta": {"npz_intensities": self._frames_key() or "(npy)"},
        }
        mask = self._optional_array("mask_key", "mask")
        if mask is not None:
            mshape = squeeze_leading(mask.shape, 2)
            if len(mshape) == 4:
                mshape = (mshape[0] * mshape[1],) + mshape[2:]
            ok = mshape == meta["frame_shape"] or (
                len(mshape) == 3 and mshape[0] >= n and mshape[1:] == meta["frame_shape"])
            if not ok:
                raise DataError("%s: mask %s has shape %s, expected %s or %s" % (
                    self._file().path, self.pars.get("mask_key") or "mask", mask.shape,
                    meta["frame_shape"], (n,) + meta["frame_shape"]),
                    hint="give one mask for all frames or one per frame", validation=True)
        self._mask_shape = None if mask is None else mshape
        if self.pars.get("fftshifted") is None:
            self._detect_fftshift(frames, mask)
        elif self.pars.get("fftshifted") and self.center is None:
            self.center = "geometric"
        return meta

    def _detect_fftshift(self, frames, mask):
        sample = np.asarray(frames[:min(int(frames.shape[0]), 32)])
        m2 = None
        if mask is not None:
            m2 = np.asarray(mask).reshape(self._mask_shape)
            if m2.ndim == 3:
                m2 = m2[:sample.shape[0]]
        self.settle_fftshift(sample, m2)

    def read_static(self):
        out = {}
        mask = self._optional_array("mask_key", "mask")
        if mask is not None and len(self._mask_shape) == 2:
            out["mask"] = np.asarray(mask).reshape(self._mask_shape)
        for key in ("dark", "flat"):
            a = self._optional_array(key + "_key", key)
            if a is not None:
                a = np.asarray(a)
                shape = squeeze_leading(a.shape, 2)
                if len(shape) not in (2, 3):
                    raise DataError("%s: %s array has shape %s, expected (H, W) or (k, H, W)" % (
                        self._file().path, key, a.shape), validation=True)
                out[key] = a.reshape(shape)
        return out

    def read_frames(self, start, stop):
        out = {"data": np.asarray(self._frames()[start:stop]),
               "positions": self._positions()[start:stop]}
        mask = self._optional_array("mask_key", "mask")
        if mask is not None and len(self._mask_shape) == 3:
            out["mask"] = np.asarray(mask).reshape(self._mask_shape)[start:stop]
        return out

    # -- geometry -----------------------------------------------------------------
    def _positions_in_pixels(self):
        unit = self.pars.get("positions_unit") or self.meta().get("positions_unit") or "m"
        return unit in ("pixel", "pixels", "px")

    def geometry(self):
        """The raw detector's ``(energy_kev, distance_m, psize_m)``; nominal for pixel positions.

        With positions in pixels and no energy, distance or pixel size in the
        configuration or the file, a far-field scan gets
        :func:`nominal_pixel_geometry` (object pixel 1).
        """
        m = self.meta()
        given = [k for k, mk in (("energy", "energy_kev"), ("distance", "distance_m"),
                                 ("psize", "psize_m"))
                 if self.pars.get(k) is not None or m.get(mk) is not None]
        if not given and self._positions_in_pixels() and self.resolve_propagation() == "farfield":
            rebin = int(self.pars.get("rebin") or 1)
            if self.pars.get("shape") is not None:
                target = [int(s) * rebin for s in np.broadcast_to(self.pars.shape, (2,))]
            else:
                shape = m["frame_shape"][::-1] if self.orientation[0] else m["frame_shape"]
                target = [(s // rebin) * rebin for s in shape]
            announce("nominal", self.source, "%s: positions in pixels and no geometry given: using "
                      "a nominal one whose object pixel is 1 (lengths in the result read as object "
                      "pixels)", self.source)
            return nominal_pixel_geometry(target, transpose=self.orientation[0])
        try:
            return super().geometry()
        except ConfigError as exc:
            if self._positions_in_pixels() or given:
                raise
            raise ConfigError("%s; or, if the positions are in pixels, set %s: pixel and leave "
                              "energy, distance and psize out" % (exc, self._where("positions_unit"))
                              ) from None
