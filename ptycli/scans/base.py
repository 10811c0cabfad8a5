"""Scan loaders: the common frame-preparation pipeline and its parameters.

A loader turns an input (a file, a folder, a simulation) into a
:class:`ScanData`: this MPI rank's diffraction frames, ready for the model
builder (centred, cropped, oriented, binned, with a validity mask), plus the
scan positions and the experimental geometry.

Writing a loader
----------------
Subclass :class:`ScanLoader`, set ``NAME`` and ``PARAMS`` (the common
parameters extended with your own, e.g. through
:func:`~ptycli.scans.settings.loader_params`), decorate with :func:`register`
and implement two methods::

    @register
    class MyScan(ScanLoader):
        NAME = "MyScan"
        PARAMS = loader_params("MyScan", "the file to read", [Parameter(...)])

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
            #           ((n,h,w) or (h,w)), indices (n,), frame_scale (n,)
            return {"data": ..., "positions": ...}

        def read_static(self):          # optional
            # frame-independent arrays held by the file: mask, dark, flat
            # ((h,w); dark/flat may also be a (k,h,w) stack that is averaged)
            return {}

Then ``MyScan.from_pars({...}).load()`` returns a :class:`ScanData`.

Modules
-------
(This module is over 600 lines: about 120 are this docstring, which documents
the pipeline; the rest is one class, the loader contract, whose stages read in
the order they run.)
This module holds the loader contract (:class:`ScanLoader`, :class:`ScanData`)
and the registry (:func:`register`, :data:`LOADERS`, :func:`get_loader`).
The common parameters and their normalisers are in :mod:`.settings`, the
array steps of the pipeline in :mod:`.frame_steps`, mask/dark/flat files in
:mod:`.array_files`, memory estimates in :mod:`.memory`.

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
2. invalid values: NaN, +-Inf and negative raw values that are flags (all
   negatives in frames of counts, which are never negative: integers, or
   floats holding whole numbers only; in other float frames those at pixels
   negative in >= 90 % of a chunk's frames, gaps and dead pixels;
   ``negative_values``), and pixels where the dark is not
   finite, are set to 0 and masked; ONE warning on the ``ptycli`` logger gives
   the number of pixels and frames (summed over all ranks). Saturation and
   dead-pixel markers (the largest value of the raw integer type, e.g. 65535
   or 4294967295; :func:`~.frame_steps.marker_pixels`) are masked the same way with their
   own warning; a frame whose usable pixels all hold the marker is a DataError.
   The other negative values of float frames are read noise around a dim
   intensity (dark-subtracted CCD, sCMOS or electron-detector frames): set to
   0 and kept valid, as step 3 does with a dark (one INFO line counts them;
   :func:`~.frame_steps.negative_noise`).
3. dark subtraction (``dark`` file, else the loader's dark): negative results
   are noise around zero and are clipped to 0 (kept valid).
4. flat-field division (``flat`` file, else the loader's flat), the flat
   normalised to a mean of 1 over its usable pixels; pixels where the flat is
   not positive and finite are masked; then the reader's per-frame
   ``frame_scale`` (a monitor's ``mean / value``), a frame whose factor is not
   positive masked. Every masked pixel holds 0 from here on.
5. ``fftshifted``: frames with the zero frequency at pixel [0, 0] are shifted
   so that it is at ``frame_shape // 2``.
6. ``orientation``: transpose, then flip up-down, then flip left-right (see
   :func:`~.settings.orientation_flags` for the integer encoding). A transpose also swaps
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

from .. import errors, parallel
from ..core.geometry import electron_wavelength_m, m2keV
from ..errors import ConfigError, DataError, PtycliError
from ..io.reading import READ_ERRORS, reading  # noqa: F401  (re-exported)
from ..log import get_logger
from ..params.declare import Parameter
from ..params.registry import LOADERS, register_loader
from ..params.scan import validate_named
from ..utils.param_tree import Param
from .detect import detect_loader
from .array_files import load_array_file  # noqa: F401  (re-exported)
from .frame_steps import (FLOAT_MARKER, announce, checked_frames, checked_indices, checked_positions,  # noqa: F401
                          correct_frames, crop_pad, detect_fftshift, empty_frames, fftshift_frames, marker_pixels,
                          mass_center, normalise_flat, orient, orient_point, oriented_shape,
                          padding_warning, static_frame, transform_positions)
from .frame_steps import rebin as rebin_frames
from .memory import available_memory, check_memory, frames_memory  # noqa: F401  (re-exported)
from .settings import (COMMON_PARAMS, MAX_FRAME_SIDE, PROPAGATIONS, normalise_center,  # noqa: F401
                       normalise_flip, normalise_propagation, orientation_flags)

__all__ = [
    "available_memory",
    "check_memory",
    "marker_pixels",
    "ScanData",
    "ScanLoader",
    "LOADERS",
    "register",
    "get_loader",
    "file_meta",
    "orientation_flags",
    "normalise_propagation",
    "PROPAGATIONS",
    "COMMON_PARAMS",
    "READ_ERRORS",
    "reading",
]

logger = get_logger("ptycli.scans")


def register(cls):
    """Class decorator: record a loader in :data:`LOADERS`, the parameter registry of loaders.

    Adds the ``name`` parameter (default ``NAME``) to the class's ``PARAMS``;
    ``scans.<label>.data`` of a configuration is then validated with them.
    """
    if not getattr(cls, "NAME", None):
        raise TypeError("%s needs a NAME to be registered" % cls.__name__)
    cls.PARAMS = cls.PARAMS.extended(cls.NAME, [
        Parameter("name", cls.NAME, "str", "loader name (%s)" % cls.NAME)])
    register_loader(cls.NAME, cls.PARAMS, cls)
    return cls


def get_loader(name):
    """The loader class registered under ``name`` (case-insensitive); ConfigError listing the loaders otherwise."""
    return LOADERS.get(name).factory


def file_meta(m, **more):
    """A :meth:`ScanLoader.read_meta` result from the metadata ``m`` of a file reader (:mod:`ptycli.io`).

    Takes the frame count and shape, energy, distance and pixel size from
    ``m`` (positions in metres) and adds the keys ``more``.
    """
    out = {key: m[key] for key in ("num_frames", "frame_shape", "energy_kev", "distance_m", "psize_m")}
    out["positions_unit"] = "m"
    out.update(more)
    return out


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


def _raise_first_error(error, src):
    """Collective: raise the exception of the lowest MPI rank that has one (no-op when none has).

    The failing rank re-raises its own exception; the others raise the same
    :class:`~ptycli.errors.PtycliError` class with its message, hint and exit
    code (any other exception becomes a :class:`DataError` naming its type and rank).
    """
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
    #: what marks this loader's format for :mod:`ptycli.scans.detect`: names at the root of an HDF5
    #: file, file name endings (lower case), whether ``dfile`` is a folder
    HDF5_SIGNATURE = ()
    EXTENSIONS = ()
    READS_FOLDER = False

    def __init__(self, pars=None, path=None):
        if pars is None:
            pars = self.PARAMS.defaults()
        self.pars = pars if isinstance(pars, Param) else Param(pars)
        self.path = path or "scan.data"
        p = self.pars
        self.orientation = orientation_flags(p.get("orientation"), self._where("orientation"))
        self.center = normalise_center(p.get("center"), self._where("center"))
        self.positions_flip = normalise_flip(p.get("positions_flip"),
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

        The validation is that of ``scans.<label>.data`` in a configuration
        (:func:`ptycli.params.scan.validate_named`); ``name`` becomes ``NAME``.

        ``propagation`` sets :attr:`propagation` (the scan's configured value).
        """
        path = path or "scan.data"
        loader = cls(validate_named(cls.NAME, cls.PARAMS, dict(pars or {}), path), path=path)
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
                try:
                    m = dict(self.read_meta())
                except DataError as exc:
                    self._hint_other_loader(exc)
                    raise
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

    def _hint_other_loader(self, exc):
        """Point ``exc`` to the loader that reads this file when it is not this one (a wrong ``name``)."""
        dfile = self.pars.get("dfile")
        if not dfile:
            return
        try:
            other, reason = detect_loader(dfile)
        except (DataError, OSError):
            return  # the file itself is the problem: ``exc`` says so
        if other is not None and other != self.NAME:
            hint = "the file is %s, which %s reads: set %s to %s (or leave it out)" % (
                reason, other, self._where("name"), other)
            exc.hint = "%s; %s" % (exc.hint, hint) if exc.hint else hint

    def settle_fftshift(self, sample, mask=None):
        """Set ``fftshifted`` (left null in the configuration) from a sample of the frames.

        Far-field frames whose summed intensity peaks within a quarter frame of
        a corner are stored FFT-shifted (:func:`~.frame_steps.detect_fftshift`):
        they are shifted back and, without a configured centre, centred
        geometrically; an INFO line says so. Near-field frames are images and
        are never shifted.

        Parameters
        ----------
        sample : ndarray (n, H, W)
            A few raw frames (32 are plenty).
        mask : ndarray (H, W) or (n, H, W), optional
            Nonzero = valid.
        """
        if self.propagation == "nearfield":
            self.pars["fftshifted"] = False
            return
        shifted, peak = detect_fftshift(sample, mask)
        self.pars["fftshifted"] = shifted
        if shifted:
            note = ""
            if self.center is None:
                self.center = "geometric"
                note = " and centred geometrically"
            announce("fftshift", self.source, "%s: the frames are stored FFT-shifted (intensity maximum at pixel %d, "
                     "%d, near a corner); they are shifted back%s (set %s: false to keep them as they are)",
                     self.source, peak[0], peak[1], note, self._where("fftshifted"))

    # -- geometry ---------------------------------------------------------------
    def geometry(self):
        """``(energy_kev, distance_m, psize_m (2,))`` of the raw detector, config first.

        With ``radiation: electron`` the energy given (the electrons' kinetic
        energy) is replaced by the photon energy of the same wavelength
        (:func:`ptycli.core.geometry.electron_wavelength_m`), so that the
        geometry, which works with photon energies, propagates with the
        electrons' wavelength.
        """
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
        if p.get("radiation") == "electron":
            lam = electron_wavelength_m(energy)
            announce("electron", self.source, "%s: electrons of %.6g keV, wavelength %.6g pm (the geometry "
                     "records %.6g keV, the photon energy of that wavelength)", self.source, energy, lam * 1e12,
                     m2keV(lam))
            energy = m2keV(lam)
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
        oshape = oriented_shape(raw_shape, self.orientation)
        rebin = int(p.get("rebin") or 1)
        if p.get("shape") is not None:
            target = tuple(int(s) * rebin for s in p.shape)
        else:
            target = tuple((s // rebin) * rebin for s in oshape)
            if min(target) < 1:
                raise ConfigError("%s: rebin %d is larger than the frame %s" % (
                    self._where("rebin"), rebin, raw_shape))
        chunk = min(int(p.get("chunk_size") or 100), ntot)
        need = frames_memory(ntot, parallel.size, raw_shape, target, rebin, chunk)
        check_memory(need, "%s: %d frames of %s pixels%s (per process)" % (
            src, ntot, "x".join(str(s) for s in raw_shape),
            ", prepared as %s" % "x".join(str(t // rebin) for t in target) if tuple(target) != tuple(raw_shape)
            else ""),
            hint="read fewer frames (%s), crop them (%s), or use more machines (MPI)%s" % (
                self._where("num_frames"), self._where("shape"), "; if the frame shape is wrong, the file may be "
                "damaged" if p.get("dfile") and p.get("shape") is None else ""), error=DataError,
            memory=available_memory())  # looked up here: tests set the machine's memory on this module
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
        m = self.meta()
        plan = self.check()
        npos, nmax = plan["npos"], plan["nmax"]
        if npos is not None and int(npos) > nmax and parallel.rank == 0:
            logger.warning("%s: %d positions for %d frames; the first %d positions are used (check that "
                           "they belong to these frames)", self.source, int(npos), nmax, nmax)
        start, stop = parallel.block_range(plan["ntot"], rank, size)
        frames = self._read_frames(start, stop, plan, collective)
        self._check_empty(frames["intensities"], plan["ntot"], collective)
        return self._scan_data(m, plan, frames)

    def _read_frames(self, start, stop, plan, collective):
        """Steps 1-9 on frames ``start .. stop-1``: a dict of the prepared arrays and the centre."""
        src = self.source
        raw_shape, oshape, rebin, target = plan["raw_shape"], plan["oshape"], plan["rebin"], plan["target"]
        flags = self.orientation
        static = self._static_arrays(raw_shape)
        center = self._fixed_center(self.meta(), raw_shape, oshape, flags, plan["propagation"])
        chunk = int(self.pars.get("chunk_size") or 100)
        n_local = stop - start
        out_shape = tuple(t // rebin for t in target)
        out = dict(intensities=np.zeros((n_local,) + out_shape, dtype=np.float32),
                   mask=np.zeros((n_local,) + out_shape, dtype=bool),
                   positions=np.zeros((n_local, 2), dtype=np.float64),
                   indices=np.arange(start, stop, dtype=np.int64))
        held = []  # oriented chunks kept until the centre is known
        total = np.zeros(oshape, dtype=np.float64)
        counts = [0] * 6  # invalid-value pixels, frames; marker pixels, frames; negative noise pixels, frames
        error = None
        try:
            for c0 in range(start, stop, chunk):
                c1 = min(c0 + chunk, stop)
                d, mk, pos, idx, got_counts = self._read_chunk(c0, c1, raw_shape, static)
                counts = [a + b for a, b in zip(counts, got_counts)]
                out["positions"][c0 - start:c1 - start] = pos
                if idx is not None:
                    out["indices"][c0 - start:c1 - start] = idx
                if self.pars.get("fftshifted"):
                    d, mk = fftshift_frames(d, mk)
                d = np.ascontiguousarray(orient(d, flags))
                mk = np.ascontiguousarray(orient(mk, flags))
                if center is None:
                    total += d.sum(axis=0, dtype=np.float64)
                    held.append((c0 - start, d, mk))
                else:
                    self._finish(d, mk, center, target, rebin, out, c0 - start)
        except Exception as exc:  # keep the ranks in step before collectives
            error = exc
        if collective:
            # every rank raises the error of the first failing rank, so its message (not a
            # generic one) is what the command line reports, whichever rank prints it
            _raise_first_error(error, src)
        if error is not None:
            raise error
        self._report_counts(counts, collective)

        if center is None:
            if collective:
                parallel.allreduce(total)
            center = mass_center(total, oshape, src)
            for off, d, mk in held:
                self._finish(d, mk, center, target, rebin, out, off)
            held.clear()
        if parallel.rank == 0:
            padding_warning(center, oshape, target, max(1, int(self.pars.get("rebin") or 1)), src, self._where)
        out["center"] = center
        return out

    def _check_empty(self, intens, ntot, collective):
        """Step 10: a DataError when no frame holds counts, one warning when some do not."""
        empty = empty_frames(intens)
        if collective:
            empty = int(parallel.allreduce_scalar(empty))
        if empty and empty >= ntot:
            raise DataError("%s: all %d frames hold no counts in their valid pixels (all zero or all "
                            "masked); nothing to reconstruct from" % (self.source, ntot),
                            hint="check the dataset of the frames (%s), the mask and the dark/flat settings"
                                 % self._where("intensities" if "intensities" in self.pars else "dfile"))
        if empty and parallel.rank == 0:
            logger.warning("%s: %d frames hold no counts in their valid pixels (of %d); they pull the "
                           "model towards zero at their positions: if they are detector drop-outs, mask them "
                           "or leave them out (num_frames)", self.source, empty, ntot)

    def _scan_data(self, m, plan, frames):
        """The :class:`ScanData` of the prepared ``frames``: positions (step 10), geometry, label, meta."""
        p = self.pars
        src = self.source
        energy, distance, psize = plan["geometry"]
        flags = self.orientation
        if flags[0]:  # transposed frames: the detector pixel's (y, x) sides swap too
            psize = psize[::-1].copy()
        positions = transform_positions(frames["positions"], p.get("positions_swap"), self.positions_flip,
                                        p.get("positions_scale"))
        unit = p.get("positions_unit") or m.get("positions_unit") or "m"
        if unit in ("pixel", "pixels", "px"):
            unit = "pixel"
        if unit not in ("m", "pixel"):
            raise DataError("%s: positions unit %r is not supported; use 'm' or 'pixel'"
                            % (src, unit), hint="set %s" % self._where("positions_unit"))
        label = p.get("label") or m.get("label") or \
            (os.path.splitext(os.path.basename(str(p.get("dfile")).rstrip("/")))[0]
             if p.get("dfile") else (self.NAME or "scan"))
        rebin = plan["rebin"]
        meta = dict(m.get("meta") or {})
        meta.update({
            "loader": self.NAME,
            "center_raw": [float(c) for c in frames["center"]],
            "frame_shape_raw": list(plan["raw_shape"]),
            "orientation": list(flags),
            "rebin": rebin,
            "fftshifted": bool(p.get("fftshifted")),
        })
        meta["propagation"] = plan["propagation"]
        return ScanData(
            intensities=frames["intensities"],
            mask=frames["mask"],
            positions=positions,
            positions_unit=unit,
            indices=frames["indices"],
            num_frames_total=int(plan["ntot"]),
            energy_kev=energy,
            distance_m=distance,
            psize_m=psize * rebin,
            shape=tuple(t // rebin for t in plan["target"]),
            label=str(label),
            source=src,
            meta=meta,
            ground_truth=m.get("ground_truth"),
        )

    # -- pipeline pieces ------------------------------------------------------
    def _static_arrays(self, raw_shape):
        """Frame-independent mask, dark, flat (+ ``flat_ok``): configuration files first, then the loader's own."""
        with reading(self.source, "the mask, dark or flat"):
            static = dict(self.read_static() or {})
        ext_mask = self._external("mask", raw_shape)
        dark = self._external("dark", raw_shape)
        flat = self._external("flat", raw_shape)
        if dark is None and static.get("dark") is not None:
            dark = static_frame(static["dark"], raw_shape, "dark", self.source)
        if flat is None and static.get("flat") is not None:
            flat = static_frame(static["flat"], raw_shape, "flat", self.source)
        mask = None
        if static.get("mask") is not None:
            mask = static_frame(static["mask"], raw_shape, "mask", self.source) != 0
        if ext_mask is not None:
            ext_mask = ext_mask != 0
            mask = ext_mask if mask is None else mask & ext_mask
        flat_ok = None
        if flat is not None:
            flat, flat_ok = normalise_flat(flat, self.source, self._where("flat"))
        return dict(mask=mask, dark=dark, flat=flat, flat_ok=flat_ok)

    def _external(self, key, raw_shape):
        path = self.pars.get(key)
        if path is None:
            return None
        arr = np.asarray(load_array_file(path, key, self._where(key)))
        return static_frame(arr, raw_shape, key, self.source, param=self._where(key), path=path)

    def _read_chunk(self, c0, c1, raw_shape, static):
        """Frames ``c0 .. c1-1`` read, checked and corrected (steps 1-4)."""
        src = self.source
        with reading(src, "frames %d..%d" % (c0, c1 - 1)):
            got = self.read_frames(c0, c1)
            d = checked_frames(got, c0, c1, raw_shape, src, self.NAME)
            pos = np.asarray(got["positions"], dtype=np.float64)
        pos = checked_positions(pos, c0, c1, src)
        idx = checked_indices(got.get("indices"), c1 - c0, src)
        d, valid, counts = correct_frames(d, got, static, raw_shape, c0, src, self._where,
                                          self.pars.get("negative_values", "auto"))
        return d, valid, pos, idx, counts

    def _report_counts(self, counts, collective):
        """The warnings of steps 2 (invalid values) and 3 (markers), counted over all ranks."""
        if collective:
            counts = [int(parallel.allreduce_scalar(int(c))) for c in counts]
        bad_pix, bad_frames, sat_pix, sat_frames, noise_pix, noise_frames = counts
        if bad_pix and parallel.rank == 0:
            logger.warning("%s: %d invalid pixels (NaN, Inf or negative values) in %d frames "
                           "were set to 0 and masked", self.source, bad_pix, bad_frames)
        if noise_pix and parallel.rank == 0:
            logger.info("%s: %d negative values (read noise of float frames) in %d frames were set to 0 and "
                        "kept (%s: mask to ignore them instead)", self.source, noise_pix, noise_frames,
                        self._where("negative_values"))
        if sat_pix and parallel.rank == 0:
            logger.warning("%s: %d saturated or dead pixels (holding the largest value of the data type, the "
                           "detector's marker) in %d frames were masked", self.source, sat_pix, sat_frames)

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
                c = normalise_center(fc, "center of %s" % self.source)
        if isinstance(c, str):
            if c == "auto":
                return None
            return np.array([s // 2 for s in oshape], dtype=float)
        c = np.asarray(c, dtype=float)
        if self.pars.get("fftshifted"):
            c = np.mod(c + np.array([s // 2 for s in raw_shape]), np.array(raw_shape))
        return orient_point(c, raw_shape, flags)


    @staticmethod
    def _finish(d, mk, center, target, rebin, out, off):
        """Steps 8-9 on oriented frames: crop/pad about ``center``, rebin, store at ``off``."""
        d, mk = crop_pad(d, mk, center, target)
        d, mk = rebin_frames(d, mk, rebin)
        n = d.shape[0]
        out["intensities"][off:off + n] = d
        out["mask"][off:off + n] = mk
