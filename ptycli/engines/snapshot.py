"""Good-state snapshots, the collective divergence check and the state for checkpoints and resume.

:class:`SnapshotMixin` gives :class:`~ptycli.engines.base.Engine`:
``_snapshot`` (the probe and object after every good iteration),
``_check_divergence`` (NaN/Inf in the errors or the state, decided together
by all MPI ranks; restores the last good state and raises
:class:`~ptycli.errors.DivergenceError`), and ``state_dict`` /
``load_state`` (probe, object, exit waves, counters, RNG state and the
engine's own arrays, ``engine_state`` / ``engine_load_state``). See the
"Divergence and resume" section of :mod:`ptycli.engines.base`.
"""

import numpy as np

from .. import parallel
from ..errors import DivergenceError, EngineError

__all__ = ["SnapshotMixin"]


class SnapshotMixin:
    """Snapshots, divergence and resume state of :class:`~ptycli.engines.base.Engine`."""

    # -- divergence ---------------------------------------------------------------------
    _DIVERGED_ERRORS = 1  # bits of the collective divergence flag
    _DIVERGED_STATE = 2

    def _check_divergence(self, full):
        """Raise :class:`DivergenceError` on every rank when any rank sees NaN/Inf (collective).

        The errors of ``full`` are sums over all ranks already; the probe and
        object are replicas that should agree, but a rank-local NaN must not
        leave the ranks in different branches (one stopping, the others
        waiting for it in the next reduction): the ranks OR their findings
        with one 8-byte ``Allreduce`` (:func:`ptycli.parallel.reduce_flags`)
        and all restore their last good state and raise together.
        """
        bad = [k for k in ("fourier_error", "photon_error", "exit_change", "likelihood")
               if full[k] is not None and not np.isfinite(full[k])]
        flags = (self._DIVERGED_ERRORS if bad else 0) | (0 if self._state_finite() else self._DIVERGED_STATE)
        flags = parallel.reduce_flags(flags)
        if not flags:
            return
        self._restore_good()
        if bad:
            what = "errors %s" % ", ".join("%s=%s" % (k, full[k]) for k in bad)
        elif flags & self._DIVERGED_ERRORS:
            what = "errors"
        else:
            what = "probe or object"
        raise DivergenceError("engine %s (%s) diverged at iteration %d: NaN/Inf in %s; the probe and object "
                              "of iteration %d were restored" % (self.label, self.NAME, full["iteration"], what,
                                                                 self._good_iteration),
                              hint="lower the step or relaxation parameters, check the data and mask, or "
                                   "start from a better probe guess")

    def _state_finite(self):
        """True when the probe and object hold no NaN/Inf (object-sized sums in row bands)."""
        for S in self.book.probe_storages.values():
            if not np.isfinite(np.vdot(S.data, S.data).real):
                return False
        for S in self.book.obj_storages.values():
            parts = self._row_work(lambda k, rows, S=S: np.vdot(S.data[..., rows, :], S.data[..., rows, :]).real,
                                   [S.data])
            if not np.isfinite(sum(parts)):
                return False
        return True

    def _snapshot(self):
        """Remember the current probe and object as the last good state (object copies in row bands)."""
        if self._good is None:
            self._good = dict(probe={}, obj={})
        for key, storages in (("probe", self.book.probe_storages), ("obj", self.book.obj_storages)):
            for sid, S in storages.items():
                buf = self._good[key].get(sid)
                if buf is None or buf.shape != S.data.shape:
                    self._good[key][sid] = S.data.copy()
                elif key == "obj":
                    self._row_work(lambda k, rows, buf=buf, S=S: np.copyto(buf[..., rows, :], S.data[..., rows, :]),
                                   [buf])
                else:
                    buf[...] = S.data
        self._good_iteration = int(self.ptycho.runtime.get("iterations", 0))

    def _restore_good(self):
        self.sync()
        if self._good is None:
            return
        for key, storages in (("probe", self.book.probe_storages), ("obj", self.book.obj_storages)):
            for sid, S in storages.items():
                if sid in self._good[key]:
                    S.data[...] = self._good[key][sid]
        self.reset_exit()

    # -- state for checkpoints / resume ----------------------------------------------------
    def engine_state(self):
        """Engine-specific arrays to checkpoint: a dict name -> ndarray. Override."""
        return {}

    def engine_load_state(self, state):
        """Restore what :meth:`engine_state` returned. Override."""

    def state_dict(self, arrays=True):
        """Everything needed to resume: a dict of plain values and ndarray copies.

        Keys: ``engine`` (label), ``name``, ``iteration`` (this engine),
        ``global_iteration``, ``probe``/``obj``/``exit`` (storage ID ->
        array copy) and ``background`` (scan label -> the fitted incoherent
        background, :mod:`ptycli.core.background`), all left out with
        ``arrays=False``, for a checkpoint file that stores them itself,
        ``rng`` (bit-generator state), ``extra``
        (:meth:`engine_state`), ``phase_ramp`` (object storage ID -> the ramp
        that :meth:`fix_phase_ramp` moved when the engine ended; empty before)
        and, once it moved one, ``unmoved`` (``probe``/``obj`` -> storage ID ->
        array before the move: the state to go on from; on MPI rank 0 only,
        the replicas being equal).
        """
        P = self.ptycho
        if self.initialized:
            self.sync()
        out = dict(engine=self.label, name=self.NAME, iteration=int(self.iteration),
                   global_iteration=int(P.runtime.get("iterations", 0)),
                   rng=self.rng.bit_generator.state,
                   extra={k: np.array(v, copy=True) for k, v in self.engine_state().items()},
                   phase_ramp={sid: np.asarray(f, dtype=np.float64) for sid, f in self.phase_ramp_moved.items()})
        if self.phase_ramp_unmoved and parallel.master:
            out["unmoved"] = {key: {sid: a.copy() for sid, a in arrays.items()}
                              for key, arrays in self.phase_ramp_unmoved.items()}
        if arrays:
            for key, C in (("probe", P.probe), ("obj", P.obj), ("exit", P.exit)):
                out[key] = {sid: S.data.copy() for sid, S in C.S.items() if not S.released}
            out["background"] = {label: model.background.copy() for label, model in P.scans.items()
                                 if getattr(model, "background", None) is not None}
        return out

    def load_state(self, state):
        """Restore a :meth:`state_dict` in place (storage shapes must match).

        The probe and object as they were before the phase ramp was moved
        (``unmoved``, :meth:`fix_phase_ramp`) replace the moved ones, so that
        more iterations go on from the state an uninterrupted run had; the
        loaded state is consistent, so no exit wave waits for a ramp.
        """
        P = self.ptycho
        unmoved = state.get("unmoved") or {}
        for key, C in (("probe", P.probe), ("obj", P.obj), ("exit", P.exit)):
            # (the probe and object before the phase ramp moved, where kept, are the state to go on from)
            for sid, arr in dict(state.get(key) or {}, **(unmoved.get(key) or {})).items():
                if sid not in C.S:
                    raise EngineError("checkpoint has %s storage %s that the model lacks" % (key, sid))
                S = C.S[sid]
                S.allocate()  # a released exit storage: a buffer again
                if tuple(S.data.shape) != tuple(np.shape(arr)):
                    raise EngineError("checkpoint %s storage %s has shape %s, the model %s"
                                      % (key, sid, np.shape(arr), S.data.shape))
                S.data[...] = arr
        for label, arr in (state.get("background") or {}).items():
            model = P.scans.get(label)
            if model is None or getattr(model, "background", None) is None:
                raise EngineError("checkpoint has a background of scan %s, which fits none here" % label)
            model.background[...] = arr
        for S in P.exit.S.values():
            S.phase_ramp_pending = None
        self.iteration = int(state.get("iteration", 0))
        if "global_iteration" in state:
            P.runtime.iterations = int(state["global_iteration"])
        if state.get("rng") is not None:
            self.rng.bit_generator.state = state["rng"]
        if not self.initialized:
            self.initialize()
        self.engine_load_state(state.get("extra") or {})
        self._snapshot()
        return self
