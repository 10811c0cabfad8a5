"""Scan models: how one scan's data become storages, views and pods.

A scan model loads this process's frames through the scan's loader, makes
the scan's geometry, fills the diffraction and mask storages, creates one pod
per frame, probe mode and object mode, and initialises probe, object and exit
waves.

``Full``
    Mixed states: ``coherence.num_probe_modes`` probe modes and
    ``coherence.num_object_modes`` object modes, so each frame has
    ``modes = probe modes x object modes`` pods whose intensities add
    incoherently.
``Vanilla``
    One probe mode and one object mode; the probe starts as a simple
    circular aperture unless ``illumination.model`` names another model.

Storage IDs are ``'S' + label`` in every container (probe and object use the
label of the scan they share with, when ``probe_share``/``object_share`` is
set). Diffraction and mask layers are global frame indices; exit layers are
``frame * modes + probe_mode * object_modes + object_mode``; probe layers are
probe modes, object layers object modes, or, for a multislice sample
(``sample.slices > 1``, one object mode), the slices in beam order: the pods
view layer 0 (the entrance slice) and the multislice engines address the
others through the storage's ``slices`` and ``slice_distance``. A variable
probe (``illumination.variable_modes: K > 0``, one probe mode) holds the K
eigen-probes as probe layers (the pods view layer 0, the strongest; the
storage's ``variable_modes`` is K) and the scan model the weights of its
frames, ``probe_weights`` (frames, K) complex128, rows in the order of
``data.indices`` (:mod:`ptycli.engines.variable_probe`).
"""

import logging
import os

import numpy as np

from .. import parallel
from ..errors import ConfigError, DataError
from ..params.registry import ENGINES, LOADERS, load_plugins
from ..params.tree import engine_sequence
from .background import (AUTO_FLOOR_FRACTION, AUTO_MIN_FRAMES, AUTO_STEADINESS, FLOOR_TILE, detector_floor,
                         initial_background)
from .classes import POD, View
from .counting_noise import amplitude_noise_floor, frame_photon_scales, looks_like_counts, photon_scale
from .geometry import Geo
from .illumination import init_probe
from .position_check import RATIO as POSITION_RATIO, convention_errors
from .variable_probe import frame_probe, initial_eigenprobes
from .probe_guess import mean_measured_pattern
from .sample import init_object
from .subpixel import choose as choose_subpixel
from .symmetry import symmetry_centre

__all__ = ["ScanModel", "Full", "Vanilla", "SCAN_MODELS", "get_scan_model"]

log = logging.getLogger("ptycli")


#: mean intensity per valid pixel that frames which are not photon counts are scaled to when their own mean lies
#: outside :data:`PHOTON_LIKE_MEAN` (:meth:`ScanModel.unitless_scale`)
UNITLESS_MEAN = 1000.0
#: means per valid pixel that frames of photons have (1e2 photons over 256 x 256 pixels to 1e10 over 128 x 128):
#: frames that are not counts and lie in this range are taken to be in about photons, and left alone
PHOTON_LIKE_MEAN = (1e-3, 1e6)


class ScanModel:
    """Base of the scan models (see the module docstring).

    Parameters
    ----------
    ptycho : Ptycho
        The managing object with containers ``probe, obj, exit, diff, mask``.
    label : str
        Scan label (the key under ``scans``).
    pars : Param
        Validated ``scans.<label>`` parameters.
    """

    NAME = None
    default_probe_model = "auto"

    def __init__(self, ptycho, label, pars):
        self.ptycho = ptycho
        self.label = label
        self.p = pars
        self.data = None
        self.geometry = None
        #: how the ``auto`` probe guess was chosen (see ``illumination.probe_from_data``); empty otherwise
        self.probe_guess = {}
        #: trial errors of the position conventions (:mod:`.position_check`); empty when not checked
        self.position_check = {}
        #: the sub-pixel position model chosen by :meth:`choose_subpixel` (``ptycli.core.subpixel.choose``)
        self.subpixel = {}
        #: mean squared counting noise of an amplitude per valid pixel (:meth:`measure_noise`), set by load
        self.noise_floor = 0.0
        #: where the mean measured pattern (all processes' frames) is point-symmetric, (row, column) detector
        #: pixels (:func:`~ptycli.core.symmetry.symmetry_centre`): the undiffracted beam's place; where it lies
        #: off the detector centre (measured data), the phase_ramp probe rule centres the beam there; set by load
        self.beam_centre_px = None
        #: whether every frame of the scan (on every process) holds photon counts (:meth:`measure_noise`)
        self.counted = False
        #: what the frames were divided by as they were loaded, detector units per unit of the model's
        #: intensities: photons (:meth:`to_photon_counts`) or, for frames that are not counts and far from
        #: photons' means, the unit that puts their mean at :data:`UNITLESS_MEAN` (:meth:`unitless_scale`); 1: none
        self.intensity_scale = 1.0
        #: the fitted incoherent background (H, W) with ``background: true``, else None (set by :meth:`build`)
        self.background = None
        #: per-frame weights of the eigen-probes (this process's frames, K) with a variable probe, else None
        self.probe_weights = None
        self.pods = []
        self.sid = "S" + label
        self.probe_sid = "S" + (pars.get("probe_share") or label)
        self.object_sid = "S" + (pars.get("object_share") or label)

    # -- modes ----------------------------------------------------------
    @property
    def num_probe_modes(self):
        return int(self.p.coherence.num_probe_modes)

    @property
    def num_object_modes(self):
        return int(self.p.coherence.num_object_modes)

    @property
    def background_sigma(self):
        """The smoothing of the fitted background (pixels, ``background_smoothing``)."""
        return float(self.p.get("background_smoothing") or 0.0)

    @property
    def slices(self):
        """Object slices along the beam (``sample.slices``; 1: a thin object)."""
        return int(self.p.sample.get("slices", 1) or 1)

    @property
    def variable_modes(self):
        """Eigen-probes of a variable probe (``illumination.variable_modes``; 0: one probe for all frames)."""
        return int(self.p.illumination.get("variable_modes", 0) or 0)

    @property
    def modes(self):
        """Pods per frame."""
        return self.num_probe_modes * self.num_object_modes

    # -- building -------------------------------------------------------
    def load(self):
        """Load this process's frames through the scan's loader."""
        load_plugins()  # the loaders register themselves when ptycli.scans is imported
        loader_cls = LOADERS.get(self.p.data.name).factory
        loader = loader_cls(self.p.data, path="scans.%s.data" % self.label)
        # the configured propagation (null: the data file's, else farfield); a simulator
        # simulates it, a file that records another one is a ConfigError
        loader.propagation = self.p.get("propagation")
        # collective under MPI (no rank/size given): the diffraction centre ('auto'), the
        # invalid-pixel counts and read errors are agreed between the ranks
        self.data = loader.load()
        d = self.data
        propagation = (d.meta or {}).get("propagation") or "farfield"
        if self.p.get("propagation") is None:
            log.info("scan %s: %s propagation (%s)", self.label, propagation,
                     "recorded in %s" % d.source if loader.recorded_propagation() else "the default")
        self.p["propagation"] = propagation  # resolved: the geometry, checkpoints and results use it
        if parallel.size > 1 and d.num_frames_total < parallel.size:
            # every rank must hold frames of every scan: the engines reduce per storage
            raise ConfigError(
                "scans.%s: %d frames cannot be shared by %d MPI processes (each needs at least one "
                "frame of every scan)" % (self.label, d.num_frames_total, parallel.size),
                hint="run with mpirun -n %d or fewer, or give the scan more frames"
                % d.num_frames_total)
        if self.p.data.get("label") in (None, "") and not d.label:
            d.label = self.label
        log.info("scan %s: %d frames of %d x %d on this process (%d in all), loader %s",
                 self.label, len(d.indices), d.shape[0], d.shape[1], d.num_frames_total,
                 loader_cls.NAME)
        setting = self.p.get("photon_scale", "auto")
        self.intensity_scale = self.to_photon_counts() if setting == "auto" else self.divide_by_gain(setting)
        mean_pattern, counts = mean_measured_pattern(d.intensities, d.mask)
        self.noise_floor = self.measure_noise(mean_pattern, counts)
        if not self.counted and setting == "auto":
            unit = self.unitless_scale(mean_pattern, counts)
            mean_pattern /= unit
            self.intensity_scale *= unit
        self.beam_centre_px = symmetry_centre(mean_pattern)
        if self.beam_centre_px is not None:
            log.debug("scan %s: the mean pattern is symmetric about pixel (%.3f, %.3f)", self.label,
                      *self.beam_centre_px)
        return d

    def to_photon_counts(self):
        """Put frames of photon counts times a constant (or a constant per frame) in photons (collective).

        Returns the detector units per photon divided out (1: none).
        :func:`~ptycli.core.counting_noise.photon_scale` on every process's
        frames: when every process finds the same step ``G`` (to 1e-6), the
        frames are divided by it and rounded to whole counts. Otherwise, when
        every tested frame has a lattice of its own
        (:func:`~ptycli.core.counting_noise.frame_photon_scales`: counts
        normalised by a monitor before they were stored), the frames are
        divided by the mean step and marked ``monitor_scaled_counts``, as the
        HDF5 loader marks the frames it normalises itself. Counts per second,
        counts in other units or doubled by a detector's gain then get the
        noise models of counted data (:meth:`measure_noise`, ML's and LSQML's
        Poisson likelihood, the engines' counting-noise bounds); the probe
        comes out in the scale of photons (its power the mean number of
        photons per frame).
        """
        d = self.data
        meta = d.meta if d.meta is not None else {}
        counted = np.array([1.0 if meta.get("monitor_scaled_counts") or looks_like_counts(d.intensities) else 0.0])
        parallel.allreduce(counted, op="min")  # every process takes the same branch (collective below)
        if counted[0] > 0:
            return 1.0
        step = photon_scale(d.intensities, d.mask) if len(d.indices) else None
        steps = np.array([step or 0.0, -(step or 0.0)])
        parallel.allreduce(steps, op="min")
        low, high = steps[0], -steps[1]
        per_frame = False
        if not low > 0 or abs(high - low) > 1e-6 * high:
            own = frame_photon_scales(d.intensities, d.mask) if len(d.indices) else None
            sums = np.array([0.0 if own is None else 1.0, 0.0 if own is None else own.sum(),
                             0.0 if own is None else own.size])
            found = np.array([sums[0]])
            parallel.allreduce(found, op="min")
            parallel.allreduce(sums)
            if not found[0] > 0 or not sums[2] > 0:
                return 1.0
            low, per_frame = sums[1] / sums[2], True
        step = float(low)
        np.divide(d.intensities, step, out=d.intensities, casting="unsafe")
        if per_frame:
            meta["monitor_scaled_counts"] = True
            d.meta = meta
        else:
            np.rint(d.intensities, out=d.intensities)
        if parallel.master:
            log.info("scan %s: the frames are photon counts times %s%.6g: divided by it, so the noise models "
                     "treat them as counts", self.label, "a factor per frame (a monitor), on average " if per_frame
                     else "", step)
        return step

    def divide_by_gain(self, gain):
        """``photon_scale`` given: divide the frames by ``gain`` (detector units per photon) and mark them as counts
        (``monitor_scaled_counts``: counts that need not be whole numbers); None: leave them; return the factor."""
        if gain is None:
            return 1.0
        d = self.data
        np.divide(d.intensities, gain, out=d.intensities, casting="unsafe")
        d.meta = dict(d.meta or {}, monitor_scaled_counts=True)
        if parallel.master:
            log.info("scan %s: the frames divided by photon_scale %g; the noise models treat them as photon counts",
                     self.label, gain)
        return float(gain)

    def unitless_scale(self, mean_pattern, counts):
        """Scale frames that are not photon counts and whose mean lies outside :data:`PHOTON_LIKE_MEAN` to a
        mean of :data:`UNITLESS_MEAN` per valid pixel; return the factor they were divided by (1: left alone).

        Frames without a photon scale (noise-free simulations, flat-fielded or
        dark-subtracted data) come in any unit, from 1e-12 to 1e12 per pixel.
        Single-precision sums of squared intensities overflow above about
        1e17 per pixel and lose their small terms below about 1e-10: ML's line
        search then stalled or crept (noise-free zoo scans, DM 200 + ML 100,
        raster / near field: stored times 1e9 0.987 / 0.929, times 1e-12
        0.927 / 0.961, in photons 1.000 / 0.989; scaled to the common mean
        1.000 / 0.990 from any unit). Inside the photon-like range the unit is
        kept: the Gaussian likelihood's weights ``1 / (I + 1)`` read ``I`` in
        about photons there, which suits noisy frames of a few counts (counts
        plus a uniform 0-1 dither, 10 per pixel: 0.866 as they are, 0.833
        scaled to the common mean).

        Parameters
        ----------
        mean_pattern, counts : ndarray (rows, cols)
            The mean measured pattern of all processes' frames and the frames
            per pixel that measured it (:func:`~ptycli.core.probe_guess.mean_measured_pattern`).
        """
        weight = float(np.sum(counts))
        mean = float(np.sum(mean_pattern * counts) / weight) if weight > 0 else 0.0
        if not (np.isfinite(mean) and mean > 0) or PHOTON_LIKE_MEAN[0] <= mean <= PHOTON_LIKE_MEAN[1]:
            return 1.0
        unit = mean / UNITLESS_MEAN
        d = self.data
        np.divide(d.intensities, unit, out=d.intensities, casting="unsafe")
        if parallel.master:
            log.info("scan %s: the frames are not photon counts and their mean per valid pixel, %.6g, is not "
                     "that of photons; divided by %.6g (mean %g: a unit for the noise models and single-precision "
                     "sums)", self.label, mean, unit, UNITLESS_MEAN)
        return unit

    def measure_noise(self, mean_pattern, counts):
        """The counting-noise floor of the scan's amplitudes (collective).

        :func:`~ptycli.core.counting_noise.amplitude_noise_floor` of the mean
        pattern over all processes' frames when every process's frames hold
        counts (:func:`~ptycli.core.counting_noise.looks_like_counts`, or
        ``monitor_scaled_counts`` in the data's meta: counts that need not be
        whole numbers, set by the HDF5 loader's monitor normalisation,
        :meth:`to_photon_counts` for a lattice per frame and
        :meth:`divide_by_gain`), else 0. Sets :attr:`counted`.

        Parameters
        ----------
        mean_pattern, counts : ndarray (rows, cols)
            :func:`~ptycli.core.probe_guess.mean_measured_pattern` of the scan's frames.
        """
        d = self.data
        # (frames scaled by a monitor hold counts that are no longer whole numbers: the loader says so)
        counts_like = looks_like_counts(d.intensities) or bool(d.meta.get("monitor_scaled_counts"))
        counted = np.array([1.0 if counts_like else 0.0])
        parallel.allreduce(counted, op="min")
        self.counted = bool(counted[0])
        if not self.counted:
            return 0.0
        return amplitude_noise_floor(mean_pattern, counts / max(float(d.num_frames_total), 1.0))

    def make_geometry(self):
        """The scan's :class:`Geo` from the loaded geometry."""
        d = self.data
        g = dict(energy=float(d.energy_kev), distance=float(d.distance_m),
                 psize=tuple(float(v) for v in np.broadcast_to(d.psize_m, (2,))),
                 shape=tuple(int(s) for s in d.shape), propagation=self.p.propagation)
        self.geometry = Geo(owner=self.ptycho, ID="G" + self.label, pars=g)
        return self.geometry

    def positions_m(self):
        """This process's scan positions in metres, (n, 2) as (y, x)."""
        d = self.data
        pos = np.asarray(d.positions, dtype=float)
        if d.positions_unit == "pixel":
            pos = pos * self.geometry.resolution
        return pos

    def build(self):
        """Create storages, views and pods for this process's frames."""
        P = self.ptycho
        d = self.data
        G = self.geometry
        shape = tuple(int(s) for s in d.shape)
        n = len(d.indices)
        npr, nob = self.num_probe_modes, self.num_object_modes
        res = G.resolution
        # storages made up front, so views find them with the right layers
        diff = P.diff.new_storage(ID=self.sid, data=np.asarray(d.intensities, dtype=P.FType).reshape((n,) + shape),
                                  psize=G.psize, layermap=[int(i) for i in d.indices])
        mask = P.mask.new_storage(ID=self.sid, data=np.asarray(d.mask, dtype=np.uint8).reshape((n,) + shape),
                                  psize=G.psize, layermap=[int(i) for i in d.indices])
        # the loader's frames and mask live on in the storages: later steps (probe guess) read them there
        # and the loader's copies are freed (the mask storage's bytes are 0 or 1: a valid bool view)
        d.intensities = diff.data
        d.mask = mask.data.view(bool)
        if self.probe_sid not in P.probe.S:
            P.probe.new_storage(ID=self.probe_sid, shape=(npr,) + shape, psize=res)
        else:
            self._check_shared("probe", P.probe.S[self.probe_sid], npr, shape, res)
        if self.object_sid not in P.obj.S:
            S = P.obj.new_storage(ID=self.object_sid, shape=(nob * self.slices,) + shape, psize=res, fill=1.0)
            if self.slices > 1:  # one object mode (checked by the parameters); layer s = slice s
                S.slices, S.slice_distance = self.slices, float(self.p.sample.slice_distance_m)
        else:
            self._check_shared("object", P.obj.S[self.object_sid], nob * self.slices, None, res)
        #: the incoherent background (counts per detector pixel, every frame; :mod:`ptycli.core.background`)
        self.background = initial_background(d.intensities, d.mask, self.background_sigma, P.FType) \
            if self.fits_background(d) else None
        exit_layers = [int(g) * self.modes + k for g in d.indices for k in range(self.modes)]
        P.exit.new_storage(ID=self.sid, shape=(len(exit_layers),) + shape, psize=res, layermap=exit_layers)
        positions = self.positions_m()
        self._check_extent(positions, shape, res, nob, np.dtype(P.CType).itemsize)
        self.pods = []
        rule = dict(shape=shape, active=True)
        for i in range(n):
            g = int(d.indices[i])
            dv = View(P.diff, None, dict(rule, storageID=self.sid, psize=G.psize, layer=g))
            mv = View(P.mask, None, dict(rule, storageID=self.sid, psize=G.psize, layer=g))
            for pm in range(npr):
                for om in range(nob):
                    pv = View(P.probe, None, dict(rule, storageID=self.probe_sid, psize=res, layer=pm))
                    ov = View(P.obj, None, dict(rule, storageID=self.object_sid, psize=res, layer=om,
                                                coord=positions[i]))
                    ev = View(P.exit, None, dict(rule, storageID=self.sid, psize=res,
                                                 layer=g * self.modes + pm * nob + om))
                    pod = POD(P, model=self, views=dict(probe=pv, obj=ov, exit=ev, diff=dv, mask=mv),
                              geometry=G)
                    self.pods.append(pod)
        self.choose_subpixel()
        return self.pods

    def choose_subpixel(self):
        """Decide ``scans.<label>.subpixel`` from the positions' sub-pixel remainders (collective); log it.

        Sets :attr:`subpixel` (see :func:`ptycli.core.subpixel.choose`); the
        engines shift each frame's probe by its remainder when ``on``.
        """
        step = max(1, self.modes)
        rem = np.array([pod.ob_view.sp for pod in self.pods[::step]], dtype=float).reshape(-1, 2)
        res = int(self.p.get("subpixel_resolution") or 4)
        q = np.rint(np.clip(rem, -0.5, 0.5) * res)
        sums = np.array([float(np.sum(rem * rem)), float(len(rem)), float(np.count_nonzero(np.any(q != 0, axis=1)))])
        parallel.allreduce(sums)
        rms = float(np.sqrt(sums[0] / max(sums[1], 1.0)))
        far = getattr(self.geometry.propagator, "kind", None) == "farfield"
        self.subpixel = choose_subpixel(self.p.get("subpixel") or "auto", rms, sums[2] > 0, res, far)
        log.info("scan %s: sub-pixel positions %s%s", self.label, self.subpixel["reason"],
                 ", resolution 1/%d px" % res if self.subpixel["on"] else "")
        return self.subpixel

    def fits_background(self, data):
        """Decide ``scans.<label>.background`` (collective under ``auto``); log what ``auto`` found.

        ``auto`` fits a background where every frame holds a floor of counts
        (:func:`~ptycli.core.background.detector_floor`): at least
        :data:`~ptycli.core.background.AUTO_FLOOR_FRACTION` of the mean count
        per pixel, and at least :data:`~ptycli.core.background.AUTO_STEADINESS`
        of each tile's mean over the frames (the same in every frame, unlike
        coherent signal), in far-field scans of at least
        :data:`~ptycli.core.background.AUTO_MIN_FRAMES` frames. In near field
        the holograms fill the detector in every frame (steadiness 0.6-0.8
        without a background), and the fit cost a diffuser scan of 64 frames
        0.998 -> 0.907 (DM 60 + ML 20 after the ePIE warm-up).
        """
        mode = self.p.get("background") or "off"
        if mode != "auto":
            return mode == "on"
        if getattr(self.geometry.propagator, "kind", None) != "farfield":
            log.info("scan %s: no background fitted (background: auto looks for one in far-field scans: a "
                     "near-field hologram fills the detector in every frame)", self.label)
            return False
        frames = parallel.allreduce(np.array([float(len(data.indices))]))[0]
        if frames < AUTO_MIN_FRAMES:
            log.info("scan %s: no background fitted (background: auto looks for one in scans of %d frames or "
                     "more)", self.label, AUTO_MIN_FRAMES)
            return False
        fraction, steadiness = detector_floor(data.intensities, data.mask)
        fit = fraction >= AUTO_FLOOR_FRACTION and steadiness >= AUTO_STEADINESS
        log.info("scan %s: every frame holds %.2g %% of the mean count per pixel, %.2f of each tile's mean "
                 "(medians over %d x %d tiles): %s", self.label, 100.0 * fraction, steadiness, FLOOR_TILE,
                 FLOOR_TILE, "fitting an incoherent background" if fit else "no background fitted")
        return fit

    def _check_extent(self, positions, shape, res, modes, itemsize):
        """Refuse positions that would need an object larger than this machine's memory.

        Damaged position datasets and unit mistakes (micrometres read as
        metres) give absurd scan extents; building views for them would
        overflow the pixel coordinates or try to allocate terabytes. Collective
        under MPI (every rank calls it, so every rank raises together). Also
        warns when all positions fall within one sample pixel (positions given
        in a unit much smaller than stated).
        """
        pos = np.asarray(positions, dtype=np.float64).reshape(-1, 2)
        ext = np.full(4, -np.inf)
        if len(pos):
            with np.errstate(over="ignore", invalid="ignore"):
                ext[:2] = -pos.min(axis=0)
                ext[2:] = pos.max(axis=0)
        parallel.allreduce(ext, op="max")
        with np.errstate(over="ignore", invalid="ignore"):
            span_m = ext[2:] + ext[:2]
            span_px = span_m / np.asarray(res, float)
            far_px = np.max(np.abs(ext)) / float(np.min(res))
            nbytes = float(modes) * float(itemsize) * np.prod(span_px + np.asarray(shape, float))
        src = self.data.source if self.data is not None and self.data.source else "the data"
        limit = _memory_bytes()
        if not (np.all(np.isfinite(span_px)) and far_px < 2.0 ** 40 and nbytes <= limit):
            raise DataError(
                "scans.%s: the scan positions of %s span %s m, which is %s sample pixels of %s m; the object "
                "would need %.3g GB (this machine has %.3g GB)" % (
                    self.label, src, _fmt_pair(span_m), _fmt_pair(span_px), _fmt_pair(res), nbytes / 1e9,
                    limit / 1e9),
                hint="check the positions and their unit (scans.%s.data.positions_unit, positions_scale, the "
                     "units of the positions dataset) and the geometry (energy, distance, psize)" % self.label,
                validation=True)
        if self.data is not None and self.data.num_frames_total > 1 and np.all(span_px < 1.0) and parallel.master:
            log.warning("scans.%s: all %d scan positions lie within one sample pixel (span %s m, pixel %s m): the "
                        "frames overlap completely; check the unit of the positions (scans.%s.data.positions_unit, "
                        "positions_scale)", self.label, self.data.num_frames_total, _fmt_pair(span_m),
                        _fmt_pair(res), self.label)

    def _check_shared(self, what, S, modes, shape, res):
        """A shared probe/object storage must fit this scan: modes, frame shape (probe), pixel size.

        Views take the pixel size of their storage, so a scan whose sample
        pixel (``resolution``) differs from the owner's would be placed and
        sized wrongly without any error: refuse it (relative tolerance 1e-3).
        """
        key = "%s_share" % what
        owner = S.ID[1:]
        where = "scans.%s.%s" % (self.label, key)
        if S.nlayers != modes:
            raise ConfigError("%s: the shared %s (scan %s) has %d modes, this scan asks for %d" % (
                where, what, owner, S.nlayers, modes),
                hint="give both scans the same coherence.num_%s_modes" % what)
        if shape is not None and tuple(S.shape[-2:]) != tuple(shape):
            raise ConfigError("%s: scan %s has frames of %s pixels, the shared %s (scan %s) %s" % (
                where, self.label, tuple(shape), what, owner, tuple(S.shape[-2:])),
                hint="give both scans the same data.shape")
        mine, theirs = np.asarray(res, float), np.asarray(S.psize, float)
        if not np.allclose(mine, theirs, rtol=1e-3, atol=0.0):
            raise ConfigError("%s: the sample pixel of scan %s is %s m, that of the shared %s (scan %s) "
                              "%s m" % (where, self.label, _fmt_pair(mine), what, owner, _fmt_pair(theirs)),
                              hint="scans that share the %s need the same energy, distance, detector pixel and frame "
                                   "shape (data.shape, data.rebin), or share nothing" % what)

    def fit_object(self):
        """Resize the object storage to the views of all processes' frames."""
        S = self.ptycho.obj.S[self.object_sid]
        S.update_views()
        bounds = S.view_bounds()
        if bounds is None:
            low, high = np.array([2**30, 2**30]), -np.array([2**30, 2**30])
        else:
            low, high = bounds[0], bounds[1]
        ext = np.concatenate([-low, high]).astype(np.int64)
        parallel.allreduce(ext, op="max")
        S.resize(-ext[:2], ext[2:], layers=range(self.num_object_modes * self.slices))

    def init_probe(self):
        """Fill the probe storage from the ``illumination`` parameters."""
        P = self.ptycho
        S = P.probe.S[self.probe_sid]
        if self.probe_sid != self.sid:
            return  # the scan that owns the shared probe initialises it
        d = self.data
        self.probe_guess = {}
        modes = init_probe(self.p.illumination, d.shape, self.geometry.resolution, self.geometry.propagator,
                           num_modes=self.num_probe_modes, intensities=d.intensities, mask=d.mask,
                           lam_m=self.geometry.lam, default_model=self.default_probe_model,
                           positions_m=self.positions_m(), info=self.probe_guess, noise_floor=self.noise_floor,
                           local_engine=self.first_engine_local())
        S.fill(modes.astype(S.dtype))
        if self.variable_modes > 0:
            self._init_variable_probe(S)
        if self.p.get("position_check", True):
            self.check_position_convention(modes[0])

    def first_engine_local(self):
        """Whether the chain's first engine moves the probe by local steps (its class's ``LOCAL_PROBE_UPDATES``).

        The chain is :func:`~ptycli.params.tree.engine_sequence`'s (a DM warm-up before ML counts as first).
        """
        for _, sub in engine_sequence(self.ptycho.p):
            entry = ENGINES.find(str((sub or {}).get("name")))
            return bool(entry is not None and getattr(entry.factory, "LOCAL_PROBE_UPDATES", False))
        return False

    def check_position_convention(self, probe):
        """Warn when the frames fit the positions flipped or swapped clearly better (:mod:`.position_check`)."""
        d = self.data
        positions = self.positions_m()
        if positions is None:
            return
        errors = convention_errors(probe, d.intensities, d.mask, self.geometry.propagator,
                                   np.asarray(positions, dtype=float).reshape(-1, 2) / self.geometry.resolution,
                                   noise_floor=self.noise_floor)
        self.position_check = errors or {}
        if not errors:
            return
        given = errors["as given"]
        name, best = min(((k, v) for k, v in errors.items() if k != "as given"), key=lambda kv: kv[1])
        if best < POSITION_RATIO * given and parallel.master:
            log.warning("scan %s: the frames fit the positions %s far better than as given (trial Fourier error "
                        "%.3g against %.3g): check the positions' convention (data.positions_flip, "
                        "data.positions_swap); position_check: false silences this", self.label,
                        {"flipped": "flipped in x (or y)", "swapped": "with y and x swapped",
                         "swapped and flipped": "with y and x swapped and one flipped"}[name], best, given)

    def _init_variable_probe(self, S):
        """Eigen-probes as probe layers (the configured probe first, its first-order variations after) and
        weights ``(1, 0, ...)`` for every frame: the run starts from exactly the configured probe."""
        K = self.variable_modes
        first = S.data[0].copy()
        S.resize(np.zeros(2, int), np.asarray(S.shape[-2:], int), layers=range(K))
        S.data[...] = initial_eigenprobes(first, K).astype(S.dtype)
        S.variable_modes = K
        self.probe_weights = np.zeros((len(self.data.indices), K), dtype=np.complex128)
        self.probe_weights[:, 0] = 1.0

    def init_object(self):
        """Fill the object storage from the ``sample`` parameters."""
        S = self.ptycho.obj.S[self.object_sid]
        if self.object_sid != self.sid:
            return
        modes = init_object(self.p.sample, S.shape[-2:], num_modes=self.num_object_modes, slices=self.slices)
        S.fill(modes.astype(S.dtype))

    def init_exit(self):
        """Exit waves ``probe * object`` for every pod (a variable probe: the frame's own probe)."""
        W = self.probe_weights
        for pod in self.pods:
            if W is None:
                pod.exit = pod.probe * pod.object
            else:
                U = pod.pr_view.storage.data
                pod.exit = frame_probe(U, W[int(pod.di_view.dlayer)], np.empty(U.shape[1:], U.dtype)) * pod.object


def _memory_bytes():
    """Physical memory of this machine in bytes (1 TB when unknown)."""
    try:
        return float(os.sysconf("SC_PAGE_SIZE")) * float(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return 1e12


def _fmt_pair(v):
    return "(%.4g, %.4g)" % (float(v[0]), float(v[1]))


class Full(ScanModel):
    """Mixed-state scan model: probe modes x object modes pods per frame."""

    NAME = "Full"


class Vanilla(ScanModel):
    """Single-mode scan model with a circular-aperture probe guess."""

    NAME = "Vanilla"
    default_probe_model = "aperture"

    @property
    def num_probe_modes(self):
        return 1

    @property
    def num_object_modes(self):
        return 1


SCAN_MODELS = {"Full": Full, "Vanilla": Vanilla}


def get_scan_model(name):
    """The scan model class called ``name`` (case-insensitive)."""
    for key, cls in SCAN_MODELS.items():
        if key.lower() == str(name).lower():
            return cls
    raise ConfigError("unknown scan model %r; valid: %s" % (name, ", ".join(SCAN_MODELS)))
