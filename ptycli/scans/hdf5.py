"""``Hdf5Scan``: frames, positions and geometry from any HDF5 file.

Every dataset path is a parameter; the defaults are the layout of ptycli's own
data file (:mod:`ptycli.io.datafile`, written by ``ptycli simulate``), so such
a file needs no mapping::

    scan:
      data:
        name: Hdf5Scan
        dfile: beamtime/scan_0042.h5
        intensities: /entry/data/eiger          # (N, H, W) or (ny, nx, H, W)
        positions_slow: /entry/motors/sy        # (N,) each, with multipliers
        positions_fast: /entry/motors/sx
        positions_slow_multiplier: 1.0e-6       # um -> m
        positions_fast_multiplier: 1.0e-6
        energy_dataset: /entry/mono/energy
        energy_multiplier: 1.0e-3               # eV -> keV
        distance: 5.0                           # or distance_dataset
        psize: 75.0e-6

Optional dataset parameters (``mask_dataset``, ``energy_dataset``, ...) left
null use the default path when the file has it and nothing otherwise; a path
that is given must exist. Set one to ``''`` to ignore the file's dataset.

A dataset in another file is named ``FILE::PATH`` (``motors.h5::/entry/sy``;
a relative ``FILE`` is taken from the current directory, as ``dfile``): a
beamline that writes the motor positions or the ion chamber apart from the
detector frames needs no merged copy.

Positions come as one ``(N, 2)`` dataset or as two per-axis datasets
(``positions_slow``, ``positions_fast``), each with one value per frame in any
shape (``(N,)``, or ``(ny, nx)`` for a raster laid out like ``(ny, nx, H, W)``
frames), or as a raster's axes: ``ny`` slow and ``nx`` fast values for
``ny * nx`` frames, the fast axis running fastest (C order, as the frames).

``normalisation_dataset`` names a per-frame monitor (ion chamber, beam
current; one value per frame, in any shape, extra trailing axes averaged):
every frame is multiplied by ``mean(monitor) / monitor`` after the dark and
flat corrections, so the frames keep their photon scale. A frame whose
monitor is not positive is masked (with one warning).
A ``units`` attribute on a geometry or position dataset is honoured (``eV``,
``keV``, ``J``; ``m``, ``mm``, ``um``, ``nm``; positions also ``pixel``); the
multiplier is applied on top of that conversion.

Far-field frames stored FFT-shifted (the zero frequency at pixel [0, 0], as
a plain ``numpy.fft.fft2`` writes them) are detected when ``fftshifted`` is
null and neither the configuration nor the file states a centre, shifted
back and centred geometrically (an INFO line says so).

Each rank reads only its block of frames, with h5py slicing; the file is
always opened read-only.
"""

import contextlib
import os

import numpy as np

from ..core.counting_noise import looks_like_counts
from ..core.geometry import HC_KEV_M
from ..errors import ConfigError, DataError
from ..io.datafile import read_ground_truth
from ..io.h5guard import check_structure
from .. import parallel
from ..log import get_logger
from ..params.declare import Parameter
from .base import ScanLoader, register

__all__ = ["Hdf5Scan", "DEFAULT_PATHS"]

logger = get_logger("ptycli.scans.hdf5")

#: separates a file from the dataset path inside it in a dataset parameter (``FILE::PATH``)
FILE_SEPARATOR = "::"

#: where ptycli's data file keeps things (the defaults of the dataset parameters)
DEFAULT_PATHS = {
    "intensities": "/data/intensities",
    "positions": "/data/positions",
    "mask": "/data/mask",
    "indices": "/data/indices",
    "energy": "/geometry/energy",
    "distance": "/geometry/distance",
    "psize": "/geometry/psize",
    "center": "/geometry/center",
    "ground_truth": "/ground_truth",
    "label": "/meta/label",
    "wavelength": None,
}

_ENERGY_UNITS = {"kev": 1.0, "ev": 1e-3, "mev": 1e3, "j": 1.0 / 1.602176634e-16}
_LENGTH_UNITS = {"m": 1.0, "meter": 1.0, "metre": 1.0, "mm": 1e-3, "um": 1e-6, "µm": 1e-6,
                 "micron": 1e-6, "nm": 1e-9}
_PIXEL_UNITS = ("pixel", "pixels", "px")


def _dataset_param(name, what, default_path):
    return Parameter(name, None, "str",
                     "dataset holding %s (null = %s if present; '' = none)" % (what, default_path)
                     if default_path else "dataset holding %s (null = none)" % what,
                     nullable=True)


def _multiplier(name, what):
    return Parameter(name, 1.0, "float", "multiplier converting the file's %s" % what)


def _has_link(f, path):
    """Whether ``path`` names a link in ``f`` (whatever it points to)."""
    try:
        return f.get(path, getlink=True) is not None
    except Exception:  # a damaged parent group: let the caller's message stand
        return False


def _dtype_words(dtype):
    """A short description of a dataset's type for messages."""
    if dtype.names:
        return "compound (%s)" % ", ".join(dtype.names)
    return {"S": "string", "U": "string", "O": "string/object", "c": "complex", "b": "boolean",
            "V": "opaque", "M": "date", "m": "time"}.get(dtype.kind, str(dtype))


def _units(ds):
    u = ds.attrs.get("units", ds.attrs.get("unit"))
    if u is None:
        return None
    if isinstance(u, bytes):
        u = u.decode("utf-8", "replace")
    if isinstance(u, np.ndarray):
        u = u.reshape(-1)[0] if u.size else ""
        if isinstance(u, bytes):
            u = u.decode("utf-8", "replace")
    return str(u).strip().lower()


@register
class Hdf5Scan(ScanLoader):
    """Any HDF5 file, with configurable dataset paths (default: ptycli's layout)."""

    NAME = "Hdf5Scan"
    #: where the file keeps what a dataset parameter left null reads (subclasses: other layouts)
    PATHS = DEFAULT_PATHS
    PARAMS = ScanLoader.PARAMS.extended("Hdf5Scan", [
        Parameter("intensities", DEFAULT_PATHS["intensities"], "str",
                  "dataset of the frames, (N, H, W) or (ny, nx, H, W)"),
        Parameter("positions", None, "str",
                  "(N, 2) dataset of (y, x) positions (null = %s unless positions_slow/"
                  "positions_fast are given)" % DEFAULT_PATHS["positions"], nullable=True),
        Parameter("positions_slow", None, "str", "(N,) dataset of the slow-axis (y) positions",
                  nullable=True),
        Parameter("positions_fast", None, "str", "(N,) dataset of the fast-axis (x) positions",
                  nullable=True),
        Parameter("positions_slow_multiplier", 1.0, "float",
                  "multiplier of the slow (y) positions (e.g. 1e-6 for um)"),
        Parameter("positions_fast_multiplier", 1.0, "float",
                  "multiplier of the fast (x) positions (e.g. 1e-6 for um)"),
        _dataset_param("mask_dataset", "the mask, (N, H, W) or (H, W), nonzero = valid",
                       DEFAULT_PATHS["mask"]),
        _dataset_param("dark_dataset", "the dark frame, (H, W) or a (k, H, W) stack", None),
        _dataset_param("flat_dataset", "the flat field, (H, W) or a (k, H, W) stack", None),
        _dataset_param("energy_dataset", "the photon energy (keV after the multiplier)",
                       DEFAULT_PATHS["energy"]),
        _multiplier("energy_multiplier", "energy to keV (e.g. 1e-3 for eV)"),
        _dataset_param("wavelength_dataset", "the wavelength (m after the multiplier), read when there is "
                       "no energy", DEFAULT_PATHS["wavelength"]),
        _multiplier("wavelength_multiplier", "wavelength to m (e.g. 1e-9 for nm)"),
        _dataset_param("distance_dataset", "the sample-detector distance (m after the "
                       "multiplier)", DEFAULT_PATHS["distance"]),
        _multiplier("distance_multiplier", "distance to m (e.g. 1e-3 for mm)"),
        _dataset_param("psize_dataset", "the detector pixel size, scalar or (2,) (m after the "
                       "multiplier)", DEFAULT_PATHS["psize"]),
        _multiplier("psize_multiplier", "pixel size to m (e.g. 1e-6 for um)"),
        _dataset_param("center_dataset", "the diffraction centre (row, col) in raw pixels",
                       DEFAULT_PATHS["center"]),
        _dataset_param("normalisation_dataset", "a per-frame monitor (ion chamber): each frame is multiplied "
                       "by mean / its value", None),
        Parameter("fftshifted", None, "bool",
                  "frames have the zero frequency at pixel [0, 0]; null = detect it (far field: the summed "
                  "intensity peaks near a corner), shift them back and centre geometrically", nullable=True),
    ], doc="frames from an HDF5 file with configurable dataset paths")

    # -- file access ------------------------------------------------------------
    @contextlib.contextmanager
    def _open(self):
        """The ``dfile`` (read-only) while the block runs; other files named by ``FILE::PATH`` open with it."""
        f = self._open_file()
        self._other_files = {}
        try:
            yield f
        finally:
            for other in self._other_files.values():
                other.close()
            self._other_files = {}
            f.close()

    def _open_other(self, name, param):
        """The file ``name`` of a ``FILE::PATH`` dataset parameter, opened once per :meth:`_open` block."""
        import h5py
        files = getattr(self, "_other_files", None)
        if files is None:
            raise RuntimeError("Hdf5Scan._open_other outside an _open block")
        key = os.path.abspath(name)
        if key not in files:
            if not os.path.isfile(name):
                raise DataError("%s: file %s does not exist" % (self._where(param), name),
                                hint="check the file part of %s (FILE::PATH; a relative FILE is taken from "
                                     "the current directory)" % self._where(param), validation=True)
            check_structure(name, validation=True)
            try:
                files[key] = h5py.File(name, "r")
            except OSError as exc:
                raise DataError("%s: %s is not a readable HDF5 file (%s)" % (self._where(param), name, exc),
                                hint="check the file part of %s" % self._where(param), validation=True) from exc
        return files[key]

    def _open_file(self):
        import h5py
        path = self.require_dfile()
        if os.path.isdir(path):
            raise DataError("%s: %s is a folder, not an HDF5 file" % (self._where("dfile"), path),
                            hint="give the HDF5 file, or use NpyFolderScan for a folder of "
                            ".npy frames", validation=True)
        check_structure(path, validation=True)  # a hang or crash of libhdf5 becomes a DataError
        try:
            return h5py.File(path, "r")
        except OSError as exc:
            raise DataError("%s is not a readable HDF5 file (%s)" % (path, exc),
                            hint="check %s" % self._where("dfile"), validation=True) from exc

    def _dataset(self, f, path, param, required=True):
        import h5py
        if path and FILE_SEPARATOR in path:
            name, path = path.split(FILE_SEPARATOR, 1)
            f = self._open_other(name, param)
        obj = f.get(path) if path else None
        if obj is None and path and _has_link(f, path):
            # the name is there but the object cannot be opened: do not call that "missing"
            raise DataError("%s: %s cannot be opened (a damaged object header, or a link to nothing)" % (
                f.filename, path), hint="the file may be damaged: check it (h5ls -r) or copy it again; or set "
                                        "%s to another dataset" % self._where(param), validation=True)
        if obj is None or not isinstance(obj, h5py.Dataset):
            if not required:
                return None
            what = "is a group, not a dataset" if obj is not None else "does not exist"
            raise DataError("%s: dataset %s %s" % (f.filename, path, what),
                            hint="set %s to the dataset path in this file" % self._where(param),
                            validation=True)
        # checked before reading: HDF5 can crash converting a damaged compound type
        if obj.dtype.kind not in "biuf":
            raise DataError("%s: dataset %s holds %s values, expected numbers" % (
                f.filename, obj.name, _dtype_words(obj.dtype)),
                hint="set %s to a numeric dataset (the file may be damaged)" % self._where(param),
                validation=True)
        return obj

    def _optional(self, f, key, default):
        """Dataset named by parameter ``key`` (None = default path if present, '' = none)."""
        path = self.pars.get(key)
        if path is None:
            return self._dataset(f, default, key, required=False) if default else None
        if path == "":
            return None
        return self._dataset(f, path, key)

    def _frames_ds(self, f):
        ds = self._dataset(f, self.pars.intensities, "intensities")
        if ds.ndim not in (3, 4):
            raise DataError("%s: dataset %s has %d dimensions %s, expected (N, H, W) or "
                            "(ny, nx, H, W)" % (f.filename, ds.name, ds.ndim, ds.shape),
                            hint="set %s to the frame stack" % self._where("intensities"),
                            validation=True)
        return ds

    def _position_sets(self, f):
        p = self.pars
        if p.get("positions_slow") or p.get("positions_fast"):
            if not (p.get("positions_slow") and p.get("positions_fast")):
                missing = "positions_fast" if p.get("positions_slow") else "positions_slow"
                raise ConfigError("%s: needed together with %s" % (
                    self._where(missing), "positions_slow" if missing == "positions_fast"
                    else "positions_fast"), hint="give both datasets, or an (N, 2) positions")
            return [self._dataset(f, p[key], key) for key in ("positions_slow", "positions_fast")]
        path = p.get("positions") or self.PATHS["positions"]
        ds = self._dataset(f, path, "positions")
        if ds.ndim != 2 or ds.shape[1] != 2:
            raise DataError("%s: dataset %s has shape %s, expected (N, 2) (y, x)" % (
                f.filename, ds.name, ds.shape),
                hint="set %s, or give positions_slow and positions_fast" % self._where("positions"),
                validation=True)
        return [ds]

    @staticmethod
    def _raster_axes(sets, n_frames):
        """``(ny, nx)`` when two per-axis position datasets are a raster's axes for ``n_frames`` frames, else None.

        One value per frame (any shape) is the usual layout; a raster's axes
        are two 1-D datasets of ``ny`` and ``nx`` values with ``ny * nx``
        frames, fewer values than frames on each.
        """
        if len(sets) != 2:
            return None
        sizes = [int(s.size) for s in sets]
        one_d = all(max(s.shape, default=1) == s.size for s in sets)
        if one_d and sizes[0] * sizes[1] == n_frames and min(sizes) < n_frames:
            return sizes[0], sizes[1]
        return None

    def _monitor(self, f, n_frames):
        """``mean / value`` of the per-frame monitor (``normalisation_dataset``; 0 where not positive), or None."""
        ds = self._optional(f, "normalisation_dataset", None)
        if ds is None:
            return None
        values = np.asarray(ds[()], dtype=np.float64)
        if values.size == n_frames:
            values = values.reshape(-1)
        elif values.ndim >= 2 and values.shape[0] == n_frames:
            values = values.reshape(n_frames, -1).mean(axis=1)
        elif values.ndim >= 3 and values.shape[0] * values.shape[1] == n_frames:
            values = values.reshape(n_frames, -1).mean(axis=1)
        else:
            raise DataError("%s: monitor dataset %s has shape %s; expected one value per frame (%d)" % (
                ds.file.filename, ds.name, ds.shape, n_frames),
                hint="check %s" % self._where("normalisation_dataset"), validation=True)
        usable = np.isfinite(values) & (values > 0)
        if not usable.any():
            raise DataError("%s: monitor dataset %s holds no positive value" % (ds.file.filename, ds.name),
                            hint="check %s" % self._where("normalisation_dataset"), validation=True)
        scale = np.zeros(n_frames)
        scale[usable] = values[usable].mean() / values[usable]
        return scale

    def _length_factor(self, ds):
        u = _units(ds)
        if u is None or u in _PIXEL_UNITS:
            return 1.0
        if u in _LENGTH_UNITS:
            return _LENGTH_UNITS[u]
        logger.debug("%s: unknown units %r of %s ignored", self.source, u, ds.name)
        return 1.0

    def _energy_kev(self, f):
        """The photon energy: the energy dataset, else ``hc / wavelength`` from the wavelength dataset."""
        p = self.pars
        energy = self._scalar(f, "energy_dataset", self.PATHS["energy"], p.energy_multiplier, "energy")
        if energy is not None:
            return energy
        wavelength = self._scalar(f, "wavelength_dataset", self.PATHS["wavelength"], p.wavelength_multiplier,
                                  "length")
        if wavelength is None:
            return None
        if not wavelength > 0:
            raise DataError("%s: the wavelength is %g m; expected a positive length" % (f.filename, wavelength),
                            hint="check %s and wavelength_multiplier" % self._where("wavelength_dataset"),
                            validation=True)
        return HC_KEV_M / wavelength

    def _scalar(self, f, key, default, multiplier, kind, size=1):
        ds = self._optional(f, key, default)
        if ds is None:
            return None
        try:
            v = np.asarray(ds[()], dtype=np.float64).reshape(-1)
        except (TypeError, ValueError) as exc:
            raise DataError("%s: dataset %s is not numeric" % (ds.file.filename, ds.name),
                            hint="check %s" % self._where(key)) from exc
        if v.size == 0:
            raise DataError("%s: dataset %s is empty" % (ds.file.filename, ds.name))
        u = _units(ds)
        if kind == "energy":
            factor = _ENERGY_UNITS.get(u, 1.0) if u else 1.0
        else:
            factor = self._length_factor(ds)
        v = v * factor * float(multiplier)
        if size == 2 and v.size == 2:
            return v
        if v.size > 1:
            if np.ptp(v) > 1e-6 * abs(v).max():
                logger.warning("%s: %s varies between %g and %g; using the mean",
                               ds.file.filename, ds.name, v.min(), v.max())
            v = np.array([v.mean()])
        return float(v[0]) if size == 1 else np.repeat(v, 2)

    # -- ScanLoader interface -------------------------------------------------
    def read_meta(self):
        p = self.pars
        with self._open() as f:
            ds = self._frames_ds(f)
            n = int(np.prod(ds.shape[:-2]))
            sets = self._position_sets(f)
            npos = n if self._raster_axes(sets, n) else min(
                int(s.size) if len(sets) > 1 else int(s.shape[0]) for s in sets)
            scale = self._monitor(f, n)
            if scale is not None and not np.all(scale > 0) and parallel.rank == 0:
                logger.warning("%s: the monitor (%s) is not positive for %d frames; they are masked", self.source,
                               self.pars.normalisation_dataset, int(np.count_nonzero(scale <= 0)))
            # monitor-scaled photon counts are no longer whole numbers, yet their noise is still counting
            # noise (scaled): say so, for the noise models (ptycli.core.manager.ScanModel.measure_noise)
            scaled_counts = scale is not None and n > 0 and looks_like_counts(ds[(0,) * (ds.ndim - 2)])
            meta = {
                "num_frames": n,
                "frame_shape": tuple(ds.shape[-2:]),
                "num_positions": npos,
                "energy_kev": self._energy_kev(f),
                "distance_m": self._scalar(f, "distance_dataset", self.PATHS["distance"],
                                           p.distance_multiplier, "length"),
                "psize_m": self._scalar(f, "psize_dataset", self.PATHS["psize"],
                                        p.psize_multiplier, "length", size=2),
            }
            mds = self._optional(f, "mask_dataset", self.PATHS["mask"])
            if mds is not None and not (
                    mds.shape == tuple(ds.shape[-2:])
                    or (mds.ndim == 3 and mds.shape[0] >= n and mds.shape[1:] == ds.shape[-2:])):
                raise DataError("%s: mask dataset %s has shape %s, expected %s or %s" % (
                    f.filename, mds.name, mds.shape, tuple(ds.shape[-2:]),
                    (n,) + tuple(ds.shape[-2:])),
                    hint="give one mask for all frames or one per frame in %s"
                    % self._where("mask_dataset"), validation=True)
            cds = self._optional(f, "center_dataset", self.PATHS["center"])
            if cds is not None:
                c = np.asarray(cds[()], dtype=np.float64).reshape(-1)
                if c.size == 2 and np.all(np.isfinite(c)):
                    meta["center"] = c
            if p.get("fftshifted") is None:
                if self.center is None and "center" not in meta:  # a stated centre: the frames are as stored
                    sample_mask = None if mds is None else (mds[()] if mds.ndim == 2 else mds[:min(n, 32)])
                    self.settle_fftshift(self._read_block(ds, 0, min(n, 32)), sample_mask)
                else:
                    p["fftshifted"] = False
            elif p.get("fftshifted") and self.center is None:
                self.center = "geometric"
            units = {_units(s) for s in sets}
            if units & set(_PIXEL_UNITS):
                meta["positions_unit"] = "pixel"
            elif units - {None}:
                meta["positions_unit"] = "m"
            geo = f.get("/geometry")
            if geo is not None and "propagation" in geo.attrs:
                prop = geo.attrs["propagation"]
                meta["propagation"] = prop.decode() if isinstance(prop, bytes) else str(prop)
            lab = f.get(self.PATHS["label"]) if self.PATHS.get("label") else None
            if lab is not None and not p.get("label"):
                v = lab[()]
                meta["label"] = v.decode() if isinstance(v, bytes) else str(v)
            gt = f.get(self.PATHS["ground_truth"]) if self.PATHS.get("ground_truth") else None
            if gt is not None:
                meta["ground_truth"] = read_ground_truth(gt)
            meta["meta"] = {"hdf5_intensities": ds.name}
            if scaled_counts:
                meta["meta"]["monitor_scaled_counts"] = True
        return meta

    def read_static(self):
        out = {}
        with self._open() as f:
            mds = self._optional(f, "mask_dataset", self.PATHS["mask"])
            if mds is not None and mds.ndim == 2:
                out["mask"] = mds[()]
            for key in ("dark", "flat"):
                ds = self._optional(f, key + "_dataset", None)
                if ds is not None:
                    if ds.ndim not in (2, 3):
                        raise DataError("%s: %s dataset %s has shape %s, expected (H, W) or "
                                        "(k, H, W)" % (f.filename, key, ds.name, ds.shape),
                                        hint="check %s" % self._where(key + "_dataset"))
                    out[key] = ds[()]
        return out

    def _read_block(self, ds, start, stop):
        """Frames start..stop-1 of a 3-D or 4-D (scan-grid) dataset."""
        if ds.ndim == 3:
            return ds[start:stop]
        nx = ds.shape[1]
        r0, r1 = start // nx, (stop - 1) // nx + 1
        block = ds[r0:r1].reshape((-1,) + ds.shape[-2:])
        off = start - r0 * nx
        return block[off:off + stop - start]

    def read_frames(self, start, stop):
        p = self.pars
        with self._open() as f:
            ds = self._frames_ds(f)
            out = {"data": self._read_block(ds, start, stop)}
            sets = self._position_sets(f)
            n = int(np.prod(ds.shape[:-2]))
            if len(sets) == 1:
                pos = np.asarray(sets[0][start:stop], dtype=np.float64)
                pos = pos * self._length_factor(sets[0])
            else:
                frames = np.arange(start, stop)
                raster = self._raster_axes(sets, n)
                # per axis: the value of each frame (one per frame in C order, or the raster's row / column)
                rows = (frames, frames) if raster is None else (frames // raster[1], frames % raster[1])
                cols = []
                for s, mult, row in zip(sets, (p.positions_slow_multiplier, p.positions_fast_multiplier), rows):
                    v = np.asarray(s[()], dtype=np.float64).reshape(-1)
                    cols.append(v[row[row < v.size]] * self._length_factor(s) * float(mult))
                if cols[0].size != cols[1].size:
                    raise DataError("%s: %s and %s have different lengths" % (
                        f.filename, sets[0].name, sets[1].name))
                pos = np.stack(cols, axis=1)
            out["positions"] = pos
            scale = self._monitor(f, n)
            if scale is not None:
                out["frame_scale"] = scale[start:stop]
            mds = self._optional(f, "mask_dataset", self.PATHS["mask"])
            if mds is not None and mds.ndim == 3:
                out["mask"] = mds[start:stop]
        return out
