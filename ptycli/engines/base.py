"""Engine base class: the life cycle (initialise, iterate, record, finalise) and the registry.

The rest of the base lives in modules of its own, mixed into :class:`Engine`:
:mod:`.error_sums` (:class:`ErrorSums`, the error fields of a record),
:mod:`.constraints` (probe support, mode orthogonality, recentring, object
clipping: :func:`~ptycli.engines.constraints.clip_object_amplitude` for
engines with their own update order) and :mod:`.snapshot` (good-state
snapshots, the collective divergence check, checkpoint state). (A little over
600 lines, a quarter of them this docstring: the life cycle and the guide to
writing an engine read in one place.)

Writing an engine
-----------------
::

    from ptycli.engines.base import Engine, register
    from ptycli.params.declare import Parameter

    @register
    class MyEngine(Engine):
        NAME = "MyEngine"                      # registry name (engines.<label>.name)
        PARAMS = Engine.PARAMS.extended("MyEngine", [
            Parameter("step", 1.0, "float", "update step", low=0.0),
        ], doc="my engine")

        def engine_initialize(self):           # after the base's initialize()
            self.buf = ...

        def engine_iterate(self, n):           # n iterations; one dict per iteration
            out = []
            for _ in range(n):
                acc = self.new_error_sums()    # ErrorSums: add Fourier/photon/exit terms
                for g in self.book.groups:     # PodGroups, see addressing.py
                    ...
                    acc.add_fourier(af, g.fmag(f0, f1), g.mask_frames(f0, f1))
                    acc.add_exit_change(np.vdot(d, d).real)
                if self.probe_update_due():
                    ...  # update probe, then
                    self.apply_probe_constraints()
                self.apply_object_constraints()
                out.append(acc.reduce())       # allreduce over MPI ranks, normalise
            return out

        def engine_finalize(self):
            del self.buf

Life cycle (driven by :meth:`Engine.run`)
-----------------------------------------
``__init__(ptycho, pars, label)``
    Validates ``pars`` against :attr:`Engine.PARAMS` into ``self.p`` (a Param).
``initialize()``
    Builds ``self.book`` (:class:`~ptycli.engines.addressing.AddressBook`),
    the normalisation constants (``self.mean_power``, ``self.total_counts``,
    ``self.total_valid``, ``self.n_frames_total``; summed over MPI ranks),
    the probe support, a first good-state snapshot, the position refiner
    ``self.posref`` (None unless the engine declares and enables
    ``position_refinement``, see :mod:`ptycli.engines.posref`), then calls
    ``engine_initialize()``.
``iterate(n)``
    Calls ``engine_iterate(1)`` ``n`` times; after an iteration that is due
    for position refinement runs a refinement round (its statistics
    ``posref_*`` join the record, and ``positions_changed(moved)`` tells the
    engine when frames moved). For every returned dict it completes a
    history record (see below), appends it to ``ptycho.runtime.history``,
    advances ``ptycho.runtime.iterations`` and ``self.iteration``, checks
    for divergence and calls the callbacks.
``finalize()``
    Calls ``engine_release()`` (iteration buffers), runs the health check,
    calls ``engine_finalize()`` and frees the address book caches.
``run()``
    ``initialize(); iterate(1)`` ``numiter`` times (with a progress bar on
    stderr when it is a terminal, on MPI rank 0 only); ``finalize()``.

History records
---------------
One dict per iteration, appended to ``ptycho.runtime.history`` (every
``record_interval``-th iteration and the last one)::

    {engine: label, name: NAME, iteration: <global count, 1 for the first of the chain>,
     fourier_error, photon_error, exit_change, likelihood (None unless ML), time_s}

plus, for engines whose errors are not those of the model itself (DM, RAAR:
the projection input), ``model_fourier_error`` and ``model_photon_error``
(the same metrics for ``probe * object``) at the iterations
:meth:`Engine.model_error_due` names (about ``MODEL_ERROR_POINTS`` per run,
and the last), and, in the engine's last record, ``health`` (see below).

Error metrics (all summed over MPI ranks; ``|F|`` is the model amplitude
``sqrt(sum_modes |F_k|^2)``, ``I`` the measured counts, sums over valid
pixels of all frames):

``fourier_error``
    ``sum mask (|F| - sqrt(I))^2 / sum mask`` - mean squared amplitude
    deviation per valid pixel (counts).
``photon_error``
    ``sum mask (|F|^2 - I)^2 / (I + 1) / sum mask`` - a chi-square-like
    intensity misfit per pixel (about 1 for a Poisson-limited fit).
``exit_change``
    ``sum |psi_new - psi_old|^2 / sum mask I`` - relative change of the exit
    waves in this iteration (dimensionless; ``sum |psi|^2 ~ sum I`` by the
    propagator's unitarity).

Helpers for subclasses
----------------------
``self.book`` (address book: ``book.groups``, ``book.probe_storages``,
``book.obj_storages``), ``self.new_error_sums()`` (:class:`ErrorSums`:
``add_fourier(af, fmag, mask)``, ``add_exit_change(x)``, ``add(...,
likelihood=)``, ``reduce()`` -> the record's error fields, summed over MPI
ranks), ``self.probe_update_due()``, ``self.apply_probe_constraints(
orthogonalize=True)`` (support, mode orthogonalisation, recentring),
``self.orthogonalize_probe(rotate_exit=True)``,
``self.apply_object_constraints()`` (``clip_object``), ``self.reset_exit()``
(exit = probe * object), ``self.supports`` (probe storage ID -> support
array), ``self.mean_power``, ``self.total_counts``, ``self.total_valid``,
``self.n_frames_total``, ``self.ctype`` / ``self.ftype``, ``self.rng``.
Hooks: ``engine_initialize()``, ``engine_iterate(n)`` (required),
``engine_release()``, ``engine_finalize()``, ``engine_state()`` / ``engine_load_state(d)``,
``sync()``, ``positions_changed(moved)`` (position refinement moved frames:
refresh whatever the engine derived from the object windows).

Divergence and resume
---------------------
After each iteration the probe, the object and the errors are checked for
NaN/Inf. On failure the probe and object are restored from the last good
snapshot (taken after every good iteration), the exit waves are reset to
``probe * object`` and :class:`~ptycli.errors.DivergenceError` (an
:class:`~ptycli.errors.EngineError`) is raised. Under MPI the check is
collective: when any rank finds NaN/Inf, every rank restores its last good
state and raises DivergenceError in the same iteration (one 8-byte
``Allreduce`` per iteration, :func:`ptycli.parallel.reduce_flags`), so the
ranks can still write that state together.
:meth:`Engine.state_dict` / :meth:`Engine.load_state` save and restore
probe, object, exit waves, iteration counters, the RNG state (``self.rng``)
and engine-specific arrays (``engine_state()`` / ``engine_load_state()``).

Health check
------------
:meth:`Engine.finalize` runs :meth:`Engine.check_health`
(:mod:`ptycli.engines.health`): probe collapsed, off centre, at the frame
edge or cut by its support (``self.support_cut``: the energy fraction the
support removed at the last probe update), object amplitude outliers over
the lit area, and the model error ending far above its minimum. Each finding
is one warning line on the ``ptycli.engines`` logger, ``self.health`` and the
``health`` entry ``{iteration, findings}`` of the engine's last record
(stored under ``/health/<label>`` in the result file).

Callbacks
---------
``engine.callbacks`` is a list of ``fn(engine, record)`` called after every
iteration (record as above, also when it is not kept in the history);
checkpoint writers and extra divergence checks go here. An exception in a
callback stops the run.

Registry
--------
:func:`register` (class decorator) records the class in :data:`ENGINES`
and in :mod:`ptycli.params.registry` (so ``engines.<label>.name`` validates
and ``ptycli params`` lists the parameters); :func:`make_engine` builds one
from a validated ``engines.<label>`` tree.
"""

import logging
import time

import numpy as np

from .. import parallel
from ..errors import ConfigError, EngineError
from ..log import progress_bar, progress_fields, stderr_is_tty
from ..params import registry
from ..params.declare import Parameter, ParamSet
from ..params.capabilities import CAPABILITIES, refusal
from ..params.tree import ENGINE, WARMUP_SUFFIX, engine_sequence, validate_engine
from ..params.registry import ENGINES  # the one engine registry (filled by register below)
from ..utils.parameters import Param
from .addressing import AddressBook
from .constraints import ConstraintsMixin, circular_support, clip_object_amplitude, support_fraction  # noqa: F401
from .error_sums import ErrorSums
from .multislice_step import write_exit_waves
from .phase_ramp import RULES
from . import health
from .posref import make_refiner
from .snapshot import SnapshotMixin

__all__ = ["Engine", "ErrorSums", "ENGINES", "register", "make_engine", "COMMON_PARAMS",
           "circular_support", "clip_object_amplitude"]

log = logging.getLogger("ptycli.engines")


def _common_params():
    return ENGINE.extended("Engine", [
        Parameter("numiter", 20, "int", "number of iterations", low=0),
        Parameter("probe_update_start", 2, "int",
                  "engine iteration (0-based) from which the probe is updated", low=0),
        Parameter("probe_support", "auto", "any",
                  "radius of a circular (elliptical on rectangular frames) probe support as a fraction of half "
                  "the frame's sides, applied after each probe update (null: none; auto: 1.0 for DM, RAAR, ML and "
                  "LSQML and for every engine on a near-field scan, 0.8 for the PIE family in the far field and "
                  "while an engine of the run refines positions or a variable probe is fitted)",
                  nullable=True, check=support_fraction),
        Parameter("clip_object", None, "range",
                  "[min, max] allowed object amplitude, applied after each object update (null: no clip)",
                  low=0.0, nullable=True),
        Parameter("probe_center_tol", None, "float",
                  "recentre probe, object and exit waves when the probe's centre of mass is more than "
                  "this many pixels off the frame centre (null: never); far field only, ignored in the near "
                  "field (the probe fills the frame)", low=0.0, nullable=True, unit="pixel"),
        Parameter("phase_ramp", "auto", "str",
                  "where the linear phase ramp that probe and object can trade (it changes no intensity) goes "
                  "when the run's last engine ends: probe (the probe's far-field intensity made symmetric about "
                  "the detector centre, the undiffracted beam), object (the plane wave that fits the illuminated "
                  "object best made flat), auto (probe in the far field for a compact beam: focused, zone plate, "
                  "aperture; object in the near field; left for a far-field diffuser's speckle), none",
                  choices=RULES),
        Parameter("record_interval", 1, "int",
                  "keep every n-th iteration's record in the history (the last is always kept)", low=1),
        Parameter("kernels", "auto", "str",
                  "the engine's hot loops: compiled (numba, fused passes; compiled once per installation), "
                  "numpy, or auto (compiled when numba is installed and the job has at least 2**22 exit-wave "
                  "pixels per process); both compute the same numbers", choices=("auto", "compiled", "numpy")),
    ], doc="common engine parameters")


#: The parameters every engine has (``name``, ``numiter`` and the constraints).
COMMON_PARAMS = _common_params()


class Engine(ConstraintsMixin, SnapshotMixin):
    """Base of the reconstruction engines (see the module docstring).

    Parameters
    ----------
    ptycho : Ptycho
        The model, built to level 2 (containers, pods, initial guesses).
    pars : dict or Param, optional
        ``engines.<label>`` parameters (validated; missing ones take defaults).
    label : str, optional
        The engine's label in the chain (default ``NAME.lower()``).

    Attributes
    ----------
    p : Param
        Validated parameters.
    book : AddressBook
        Compiled pods (after :meth:`initialize`).
    iteration : int
        Iterations done by this engine.
    callbacks : list
        ``fn(engine, record)`` called after every iteration.
    rng : numpy.random.Generator
        Random generator of the engine (saved in :meth:`state_dict`).
    mean_power : float
        Mean measured counts per valid pixel and frame (all ranks).
    total_counts, total_valid : float
        ``sum mask I`` and ``sum mask`` over all frames of all ranks.
    n_frames_total : int
        Frames over all ranks.
    history : list of dict
        This engine's records (also appended to ``ptycho.runtime.history``).
    """

    NAME = "Engine"
    PARAMS = COMMON_PARAMS
    #: whether the engine fits the incoherent background of scans that have one (:mod:`ptycli.core.background`)
    FITS_BACKGROUND = False
    #: whether the exit waves carry state from one iteration to the next (DM, RAAR); the others
    #: derive them from probe x object when they finish, so their checkpoints leave them out
    KEEPS_EXIT_WAVES = False
    #: whether the engine reads or writes the exit storage (DM, RAAR: their exit waves; ML: its detector
    #: waves); the others (ePIE, rPIE, mPIE, LSQML) give its memory back while they run
    #: (:meth:`~ptycli.core.classes.Storage.release`) and leave it so; an engine that needs it after them
    #: rebuilds it from probe x object (:meth:`need_exit_storage`)
    USES_EXIT_STORAGE = True
    #: whether the engine reconstructs multislice objects (``sample.slices > 1``); the others refuse them
    MULTISLICE = False
    #: whether the engine reconstructs a variable probe (``illumination.variable_modes > 0``,
    #: :mod:`ptycli.engines.variable_probe`); the others refuse it
    VARIABLE_PROBE = False
    #: whether the engine moves the probe by local steps, frame by frame or batch by batch (ePIE, rPIE,
    #: mPIE, LSQML), rather than from all frames at once (DM, RAAR, ML); as the first engine of a chain it
    #: has the ``auto`` probe guess check its pick on frames left out of the trial
    #: (:func:`ptycli.core.probe_guess.probe_from_data`)
    LOCAL_PROBE_UPDATES = False
    #: the engine whose ``engines.<label>.warmup`` iterations run before this one when it is the first engine
    #: of a chain and a scan's probe starts from a model (:func:`ptycli.params.tree.engine_sequence`); None:
    #: the engine has no warm-up
    WARMUP_ENGINE = None
    #: what ``warmup: auto`` means in near field (in far field ``auto`` is 0), for engines that accept ``auto``
    AUTO_WARMUP_NEAR_FIELD = 0

    def __init__(self, ptycho, pars=None, label=None):
        self.ptycho = ptycho
        self.label = label or self.NAME.lower()
        self.p = self._validate(pars)
        if self.p.get("clip_object") is not None:
            c = self.p.clip_object
            if len(c) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in c) \
                    or c[0] < 0 or c[1] < c[0]:
                raise ConfigError("engines.%s.clip_object: expected [min, max] with 0 <= min <= max, got %r"
                                  % (self.label, c))
        self.book = None
        self.iteration = 0
        self.callbacks = []
        self.history = []
        self.rng = np.random.default_rng(0)
        self.initialized = False
        self._good = None
        self.posref = None
        #: findings of the last health check (:meth:`check_health`), None before it ran
        self.health = None
        #: probe storage ID -> fraction of the probe energy the support removed at the last probe update
        self.support_cut = {}
        #: object storage ID -> the phase ramp :meth:`fix_phase_ramp` moved when this engine ended (cycles per pixel)
        self.phase_ramp_moved = {}
        #: ``{'probe': {storage ID: array}, 'obj': {...}}``: the probe and object as they were before
        #: :meth:`fix_phase_ramp` moved the ramp (the state a resumed run goes on from: :meth:`state_dict`)
        self.phase_ramp_unmoved = {}
        if not hasattr(ptycho, "runtime") or ptycho.runtime is None:
            ptycho.runtime = Param(iterations=0, history=[])
        ptycho.runtime.setdefault("iterations", 0)
        ptycho.runtime.setdefault("history", [])

    # -- parameters ------------------------------------------------------------
    def _validate(self, pars):
        tree = dict(pars or {})
        tree.setdefault("name", self.NAME)
        path = "engines.%s" % self.label
        entry = ENGINES.find(str(tree.get("name")))
        if entry is not None and entry.factory is type(self):
            return validate_engine(tree, path)
        rest = {k: v for k, v in tree.items() if k != "name"}
        ps = ParamSet(self.NAME, [e for e in self.PARAMS if e.name != "name"], self.PARAMS.doc)
        out = Param(name=self.NAME)
        out.update(ps.validate(rest, path))
        return out

    # -- life cycle --------------------------------------------------------------
    def initialize(self):
        """Compile the pods, compute normalisations, snapshot, then ``engine_initialize()``."""
        P = self.ptycho
        self._check_capabilities()
        if self.label.endswith(WARMUP_SUFFIX) and parallel.master:
            first = self.label[:-len(WARMUP_SUFFIX)]
            log.info("%s: %d %s iterations before %s, whose probe starts from a model (engines.%s.warmup: 0 "
                     "runs %s alone)", self.label, int(self.p.numiter), self.NAME, first, first, first)
        self.book = AddressBook(P)
        self._enable_subpixel()
        if not self.book.groups and parallel.size == 1:
            raise EngineError("engine %s: the model has no active pods (no data loaded?)" % self.label)
        self.ctype = np.dtype(P.CType)
        self.ftype = np.dtype(P.FType)
        sums = np.zeros(3)
        for g in self.book.groups:
            d = g.diff_frames()
            m = g.mask_frames()
            if m is None:
                sums[0] += float(np.sum(d, dtype=np.float64))
                sums[1] += float(d.size)
            else:
                sums[0] += float(np.vdot(m.ravel().astype(np.float64), d.ravel().astype(np.float64)))
                sums[1] += float(np.sum(m, dtype=np.float64))
            sums[2] += g.n_frames
        parallel.allreduce(sums)
        self.total_counts = float(sums[0])
        self.total_valid = float(sums[1])
        self.n_frames_total = int(round(sums[2]))
        # mean counts per valid pixel of one frame
        self.mean_power = self.total_counts / max(self.total_valid, 1.0)
        self.supports = self.probe_supports()
        if not self.FITS_BACKGROUND and parallel.master:
            for g in self.book.groups:
                if g.background is not None:
                    log.warning("%s (%s): scan %s fits a background, which this engine neither uses nor updates "
                                "(ptycli's own engines all do)", self.label, self.NAME, g.label)
        self.catch_up_exit_phase_ramp()
        if self.USES_EXIT_STORAGE:
            self.need_exit_storage()
        else:
            for S in self.ptycho.exit.S.values():
                S.release()
        self._snapshot()
        self.posref = make_refiner(self)
        self.engine_initialize()
        self.initialized = True
        return self

    def _check_capabilities(self):
        """Refuse a scan option the engine does not model (multislice objects, variable probes).

        :data:`ptycli.params.capabilities.CAPABILITIES`: an engine models one
        when its class sets the attribute (:attr:`MULTISLICE`, :attr:`VARIABLE_PROBE`).
        """
        for attribute, cap in CAPABILITIES.items():
            if getattr(self, attribute, False):
                continue
            for label, model in sorted((getattr(self.ptycho, "scans", None) or {}).items()):
                value = cap.requested(model.p) if getattr(model, "p", None) is not None else 0
                if value:
                    raise refusal(attribute, self.label, self.NAME, label, value)

    #: whether the engine runs the sub-pixel position model (:mod:`ptycli.core.subpixel`) of scans that chose it
    SUBPIXEL = False

    def _enable_subpixel(self):
        """Shift each frame's probe by its sub-pixel remainder in the groups of scans that chose the model."""
        wanted = [g for g in self.book.groups if (getattr(g.pods[0].model, "subpixel", None) or {}).get("on")]
        if not wanted:
            return
        if not self.SUBPIXEL:
            if parallel.master:
                log.warning("%s (%s): sub-pixel positions are not modelled by this engine; whole pixels used",
                            self.label, self.NAME)
            return
        for g in self.book.enable_subpixel():
            log.debug("%s: group %s sub-pixel model: %d shift classes at 1/%d px", self.label, g.label,
                      len(g.sub.used), g.sub.resolution)

    def engine_initialize(self):
        """Engine-specific preparation (buffers, constants). Override."""

    def engine_iterate(self, n):
        """Run ``n`` iterations; return a list of ``n`` dicts with error fields. Override."""
        raise NotImplementedError

    def engine_finalize(self):
        """Engine-specific clean-up. Override."""

    def sync(self):
        """Make the model storages hold the true current state. Override.

        An engine that keeps part of its state in another form between
        iterations (e.g. exit waves multiplied by a phase factor) converts
        back here.
        Called by :meth:`finalize`, :meth:`state_dict`, before a divergence
        restore and when :meth:`run` stops on an exception. Must be cheap to
        call when there is nothing to do.
        """

    def positions_changed(self, moved):
        """Position refinement moved frames (the address book and views already follow). Override.

        ``moved``: ``{index into self.book.groups: array of the moved frames}``
        (this rank's; called on every MPI rank when any rank moved a frame).
        Engines that cache anything derived from the object windows
        (overlap denominators, transforms, window indices) refresh it here.
        """

    def engine_release(self):
        """Free the iteration buffers that neither the health check nor ``engine_finalize()`` needs. Override.

        Called by :meth:`finalize` before the health check, so that the
        check's temporaries do not come on top of them (peak memory).
        """

    def finalize(self):
        """``sync()``, ``engine_release()``, the health check (:meth:`check_health`), ``engine_finalize()``,
        the probe/object phase ramp (:meth:`fix_phase_ramp`), free caches."""
        self.sync()
        self.engine_release()
        if self.book is not None and self.iteration > 0:
            self.check_health()
        self.engine_finalize()
        if self.iteration > int(self.p.get("probe_update_start") or 0) and self.ends_the_chain():
            self.fix_phase_ramp()  # (not where the probe was held: it stays as given)
        if self.book is not None:
            for g in self.book.groups:
                g.drop_caches()
        self._good = None
        return self

    def ends_the_chain(self):
        """Whether no engine of the run's chain (``engines``) follows this one (an engine outside the chain: True)."""
        labels = [label for label, _ in engine_sequence(getattr(self.ptycho, "p", None))]
        return self.label not in labels or labels[-1] == self.label

    def iterate(self, n=1):
        """Run ``n`` iterations with records, divergence checks and callbacks.

        Returns
        -------
        list of dict
            The records of these iterations (also the ones not kept in the history).
        """
        if not self.initialized:
            self.initialize()
        out = []
        for _ in range(int(n)):
            t0 = time.perf_counter()
            recs = self.engine_iterate(1)
            if not recs:
                recs = [{}]
            if self.posref is not None and self.posref.due(self.iteration):
                stats, moved = self.posref.refine(self.iteration)
                if stats["posref_moved"]:  # summed over MPI ranks: every rank calls the hook
                    self.positions_changed(moved)
                recs[-1] = dict(recs[-1], **stats)
            if self.MODEL_ERRORS and self.model_error_due(self.iteration + len(recs)):
                recs[-1] = dict(recs[-1], **self.model_errors())
            dt = time.perf_counter() - t0
            for rec in recs:
                out.append(self._record(rec, dt / len(recs)))
        return out

    def _record(self, rec, dt):
        P = self.ptycho
        self.iteration += 1
        P.runtime.iterations = int(P.runtime.get("iterations", 0)) + 1
        full = dict(engine=self.label, name=self.NAME, iteration=int(P.runtime.iterations),
                    fourier_error=_num(rec.get("fourier_error")), photon_error=_num(rec.get("photon_error")),
                    exit_change=_num(rec.get("exit_change")), likelihood=_num(rec.get("likelihood")),
                    time_s=float(dt))
        for k, v in rec.items():  # engine extras
            if k not in full:
                full[k] = v
        self._check_divergence(full)
        self._snapshot()
        last = self.iteration >= int(self.p.numiter)
        if self.iteration % int(self.p.get("record_interval", 1) or 1) == 0 or last:
            P.runtime.history.append(full)
            self.history.append(full)
        log.debug("%s %d: ferr %.4g perr %s change %s", self.label, full["iteration"],
                  full["fourier_error"] if full["fourier_error"] is not None else float("nan"),
                  full["photon_error"], full["exit_change"])
        for cb in list(self.callbacks):
            cb(self, full)
        return full

    def run(self):
        """Initialise, iterate ``numiter`` times with a progress bar, finalise; return this engine's history."""
        if not self.initialized:
            self.initialize()
        numiter = int(self.p.numiter)
        bar = None
        if numiter > 0 and parallel.master and stderr_is_tty():
            bar = progress_bar("%s %s" % (self.label, self.NAME), numiter)
        t0 = time.perf_counter()
        rec = None
        ok = False
        try:
            for _ in range(numiter):
                rec = self.iterate(1)[-1]
                if bar is not None:
                    post = progress_fields(rec)
                    post["iter"] = rec["iteration"]
                    bar.set_postfix(post, refresh=False)
                    bar.update(1)
            ok = True
        finally:
            if bar is not None:
                bar.close()
            if not ok:
                self.sync()
        self.finalize()
        if rec is not None:
            log.info("%s (%s): %d iterations in %.1f s, fourier error %.4g%s", self.label, self.NAME, numiter,
                     time.perf_counter() - t0, rec["fourier_error"] if rec["fourier_error"] is not None
                     else float("nan"), " (of probe x object: %.4g)" % rec["model_fourier_error"]
                     if rec.get("model_fourier_error") is not None else "")
        return self.history

    # -- the model's own errors and the health check ------------------------------------
    #: True for engines whose recorded errors are not those of ``probe * object`` (DM, RAAR): they
    #: implement :meth:`model_errors`, which the base calls at the iterations :meth:`model_error_due` names
    MODEL_ERRORS = False
    #: model errors are computed at about this many iterations of an engine run, and at its last one
    MODEL_ERROR_POINTS = 8
    #: ... but at most every this many iterations (each costs about 0.4 of a DM iteration: a forward FFT)
    MODEL_ERROR_MIN_SPACING = 10

    def model_errors(self):
        """Errors of the model ``probe * object`` itself: a dict of extra record fields. Override.

        Engines whose ``fourier_error`` already is the model's (ML, ePIE)
        need not; DM and RAAR return ``model_fourier_error`` and
        ``model_photon_error`` (see :meth:`ptycli.engines.projectional.ProjectionEngine.model_errors`).
        """
        return {}

    def model_error_due(self, i):
        """Whether the model errors are computed after engine iteration ``i`` (1-based).

        At the last iteration (``numiter``) and every ``k``-th, ``k`` about
        ``numiter / MODEL_ERROR_POINTS`` (at least ``MODEL_ERROR_MIN_SPACING``)
        and a multiple of ``record_interval``, so the values land in kept
        records. Depends only on ``i`` and the parameters: a resumed run
        computes them at the same iterations.
        """
        n = int(self.p.numiter)
        if i >= n:
            return True
        every = int(self.p.get("record_interval", 1) or 1)
        k = max(int(self.MODEL_ERROR_MIN_SPACING), -(-n // max(1, int(self.MODEL_ERROR_POINTS))))
        k = -(-k // every) * every
        return i % k == 0

    def noise_floor(self):
        """The largest counting-noise floor of the scans (mean ``Var(sqrt N)`` per valid pixel; 0: not counted)."""
        return max((float(getattr(m, "noise_floor", 0.0)) for m in self.ptycho.scans.values()), default=0.0)

    def check_health(self):
        """Run the health checks of :mod:`ptycli.engines.health` on the current state; return the findings.

        Logs each finding as one warning line (MPI rank 0), keeps them in
        ``self.health`` (list of dicts ``code``, ``message``, ``values``) and
        in the engine's last history record (key ``health``: ``{'iteration',
        'findings'}``), which the result file stores under ``/health/<label>``.
        Called by :meth:`finalize`. Collective under MPI (same findings on
        every rank).
        """
        try:
            findings = [f.as_dict() for f in health.check_engine(self)]
        except Exception as exc:  # a diagnostic must not cost a finished reconstruction
            if parallel.master:
                log.warning("%s (%s): the health check failed (%s: %s); the result is kept", self.label, self.NAME,
                            type(exc).__name__, exc)
                log.debug("health check failure", exc_info=True)
            return None
        self.health = findings
        P = self.ptycho
        report = dict(iteration=int(P.runtime.get("iterations", 0)), findings=findings)
        hist = P.runtime.get("history") or []
        if hist and hist[-1].get("engine") == self.label:
            hist[-1]["health"] = report
        if parallel.master:
            for f in findings:
                log.warning("%s (%s): %s [%s]", self.label, self.NAME, f["message"], f["code"])
            if not findings:
                log.debug("%s (%s): health check found nothing to report", self.label, self.NAME)
        return findings

    # -- helpers for subclasses ----------------------------------------------------
    def new_error_sums(self):
        """A fresh :class:`ErrorSums` for one iteration."""
        return ErrorSums(self.total_counts)

    def starts_from_probe_guess(self):
        """Whether this engine is the run's first and a scan's probe is the automatic guess (``illumination.model: auto``)."""
        P = self.ptycho
        return int(P.runtime.get("iterations", 0)) == 0 and any(
            bool(getattr(m, "probe_guess", None)) for m in P.scans.values())

    def data_are_counts(self):
        """Whether every scan's frames hold photon counts (non-negative whole numbers, on every process)."""
        scans = list(self.ptycho.scans.values())
        return bool(scans) and all(bool(getattr(m, "counted", False)) for m in scans)

    def choose_noise_model(self, choice, counted_name, other_name, parameter):
        """The noise model an ``auto`` choice stands for: ``counted_name`` on photon counts, else ``other_name``.

        Any other ``choice`` is returned as given. The choice is logged once
        (rank 0), naming ``parameter`` so that a user can pin it.
        """
        choice = str(choice).lower()
        if choice != "auto":
            return choice
        counted = self.data_are_counts()
        name = counted_name if counted else other_name
        if parallel.master:
            log.info("%s: %s auto -> %s (%s)", self.label, parameter, name,
                     "the frames hold photon counts" if counted else "the frames are not photon counts")
        return name

    def probe_update_due(self):
        """Whether the probe is updated in the current iteration (``iteration >= probe_update_start``)."""
        return self.iteration >= int(self.p.probe_update_start)

    def exit_storage_released(self):
        """Whether an exit storage of the model is released (an engine that does not use it ran last)."""
        return any(S.released for S in self.ptycho.exit.S.values())

    def need_exit_storage(self):
        """Make released exit storages again, holding ``probe * object`` (:meth:`reset_exit`); else nothing."""
        if self.exit_storage_released():
            self.reset_exit()

    def reset_exit(self):
        """Set every exit wave to ``probe * object`` (in place; a multislice object: the wave leaving its last slice).

        Released exit storages (:meth:`~ptycli.core.classes.Storage.release`) get a buffer first.
        """
        for S in self.ptycho.exit.S.values():
            S.allocate()
            S.phase_ramp_pending = None  # (made from probe * object as they are now)
        for g in self.book.groups:
            if g.obj.slices > 1:
                write_exit_waves(g)
                continue
            pr = g.model_probe()
            for f0, f1, p0, p1 in g.blocks(32):
                ob = g.gather_object(g.obj.data, p0, p1)
                if g.regular and g.modes > 1:
                    g.as4d(ob, f0, f1)[...] *= g.probe_for(pr, p0, p1)
                else:
                    ob *= g.probe_for(pr, p0, p1)
                g.write_exit(ob, p0, p1)

    def _row_work(self, fn, arrays):
        """``fn(k, rows)`` over row bands (axis -2) of ``arrays`` on the engine's block threads, if it has them.

        Engines with compiled kernels keep a :class:`~ptycli.engines.threads.BlockPool`
        in ``self._pool``; without one, ``fn(0, slice(None))`` runs once here.
        """
        pool = getattr(self, "_pool", None)
        if pool is not None:
            return pool.rows(fn, arrays)
        return [fn(0, slice(None))]


def _num(v):
    if v is None:
        return None
    return float(v)


def register(cls):
    """Class decorator: add an engine class to :data:`ENGINES` and to the parameter registry."""
    if not cls.NAME or cls.NAME == "Engine":
        raise ValueError("an engine class needs its own NAME")
    own = ParamSet(cls.NAME, [e for e in cls.PARAMS if e.name != "name"], cls.PARAMS.doc)
    registry.register_engine(cls.NAME, own, cls)
    return cls


#: Build the engine named by ``pars['name']`` (any case) for ``ptycho``: ``make_engine(ptycho, pars, label)``
#: (:func:`ptycli.params.registry.build_engine`; a ConfigError for an unknown name).
make_engine = registry.build_engine
