"""The engine chain of a run: engines in order, checkpoints, stop on signal, one progress bar.

:class:`ChainRunner` runs the engines of ``engine_sequence(p)`` on a built
model (level 2), resuming where a checkpoint left off; it writes a checkpoint
every ``io.checkpoint.interval`` iterations of the chain and when an engine
ends, stops at the next iteration boundary after a signal (raising
:class:`Stopped` once its checkpoint is written), and keeps the last good
state of an engine that fails (diverges) for :meth:`ChainRunner.write_failure`.
Its progress bar is :func:`ptycli.log.progress_bar`.
"""

import os
import signal
import time

import numpy as np

from .. import parallel
from ..engines import make_engine
from ..errors import DataError, EngineError, RuntimeFailure
from ..io.atomic import abandon_temporaries
from ..io.checkpoint import engine_state_for_rank, write_snapshot
from ..io.h5guard import kill_children
from ..io.history import ERROR_COLUMNS
from ..log import get_logger, progress_bar, progress_fields
from .signals import exit_code, say_now

__all__ = ["ChainRunner", "Stopped", "final_errors", "ERROR_KEYS"]

logger = get_logger(__name__)

#: errors reported per engine (``final_<key>``): the error columns of the history; DM and RAAR also record
#: ``model_*`` (the errors of probe x object; their ``fourier_error`` is that of the projection input) at
#: some iterations and at their last
ERROR_KEYS = ERROR_COLUMNS


class Stopped(Exception):
    """The chain stopped on a signal; a checkpoint was written to ``checkpoint``."""

    def __init__(self, signum, checkpoint, where):
        super().__init__("stopped by signal %d" % signum)
        self.signum = signum
        self.checkpoint = checkpoint
        self.where = where


def final_errors(rec):
    """The errors of the history record ``rec`` that are set: ``{key: value}`` for :data:`ERROR_KEYS`."""
    return {k: rec.get(k) for k in ERROR_KEYS if rec is not None and rec.get(k) is not None}


class ChainRunner:
    """Runs the engine chain with progress, periodic checkpoints, resume and stop on signal.

    Parameters
    ----------
    P : Ptycho
        The model (level 2, restored from the checkpoint when resuming).
    chain : list of (label, Param)
        Engines in run order.
    plan : list of int or None
        Per engine: iterations already done (None: skip); see
        :func:`ptycli.io.checkpoint.plan_resume`.
    checkpoint_path : callable
        ``f(engine_label, total_iterations) -> path``.
    interval : int
        Checkpoint every this many iterations of the chain (0: only at engine ends).
    info : callable
        ``f() -> dict`` with parameters_yaml, config, overrides, run, provenance.
    resume : Reconstruction, optional
        The checkpoint resumed from.
    progress : bool
        Show a tqdm progress bar on stderr (rank 0 of a terminal).
    keep_exit : bool
        Store the exit waves in a result written after a failure
        (``io.keep_exit_waves``); checkpoints hold them while an engine that
        carries them between iterations runs (DM, RAAR: ``KEEPS_EXIT_WAVES``).
    """

    def __init__(self, P, chain, plan, checkpoint_path, interval, info, resume=None, progress=False,
                 keep_exit=True):
        self.P = P
        self.chain = list(chain)
        self.plan = list(plan)
        self.checkpoint_path = checkpoint_path
        self.interval = int(interval or 0)
        self.info = info
        self.progress = progress
        self.resume = resume
        self.stop_signal = None
        self.keep_exit = bool(keep_exit)
        #: 'running' the engines, then 'writing' the result (what the first signal stops)
        self.phase = "running"
        self.checkpoints = []
        saved = {e["label"]: dict(e) for e in (resume.engines if resume is not None else [])}
        self.summaries = []
        for label, epars in self.chain:
            s = saved.get(label) or {}
            self.summaries.append(dict(label=label, name=str(epars.name), numiter=int(epars.numiter),
                                       iterations=int(s.get("iterations", 0) or 0),
                                       finished=bool(s.get("finished", False)),
                                       time_s=float(s.get("time_s", 0.0) or 0.0),
                                       **{k: v for k, v in s.items() if k.startswith("final_")}))
        self.resume_state = None
        self.last_state = None
        #: set when an engine fails: {'index', 'engine', 'error'} (see :meth:`run`)
        self.failed = None
        if resume is not None:
            attrs = resume.state["attrs"]
            self.resume_state = engine_state_for_rank(resume.state.get("engine"))
            self.last_state = (dict(attrs), self.resume_state)

    # -- signals --------------------------------------------------------------------
    def request_stop(self, signum, frame=None):
        """Signal handler: stop at the next iteration boundary; a second signal stops at once.

        The first signal only sets a flag (the chain stops after the current
        iteration and writes a checkpoint; while the result is being written,
        that finishes). A second one ends the process at once
        (:meth:`abandon`), without raising into whatever code runs now, so
        that no "Exception ignored" traceback or later message follows.
        """
        if self.stop_signal is not None:
            self.abandon(signum)
        self.stop_signal = signum
        if parallel.master:
            name = signal.Signals(signum).name
            if self.phase == "writing":
                say_now("%s received: finishing writing the result (send it again to stop at once, "
                         "without a result)." % name)
            else:
                say_now("%s received: stopping after this iteration and writing a checkpoint "
                         "(send it again to stop at once)." % name)

    def abandon(self, signum):
        """End the process now (second signal): remove temporary files and locks, say where to resume."""
        if parallel.master:
            where = ("the last checkpoint, %s, is the resume point" % self.checkpoints[-1] if self.checkpoints
                     else "no checkpoint was written")
            say_now("Second %s: stopped at once, without a final checkpoint; %s." % (
                signal.Signals(signum).name, where))
        abandon_temporaries()
        kill_children()
        os._exit(exit_code(signum))

    def _stop_due(self):
        flag = 0 if self.stop_signal is None else int(self.stop_signal)
        if parallel.size > 1:
            # every iteration: a numpy buffer (Allreduce), not a pickled object
            buf = np.array([flag], dtype=np.int64)
            flag = int(parallel.allreduce(buf, op="max")[0])
            if flag and self.stop_signal is None:
                self.stop_signal = flag
        return bool(flag)

    # -- checkpoints ------------------------------------------------------------------
    def _state_attrs(self, index, engine, finished_engine, chain_finished=False):
        P = self.P
        label, epars = self.chain[index]
        return dict(engine_index=int(index), engine_label=label, engine_name=str(epars.name),
                    engine_iteration=int(engine.iteration) if engine is not None else
                    int(self.summaries[index]["iterations"]),
                    engine_finished=bool(finished_engine), total_iterations=int(P.runtime.get("iterations", 0)),
                    finished=bool(chain_finished), data_type=str(P.p.data_type))

    def write_failure(self, path):
        """After an engine failed: write the model (its last good state) to ``path``.

        Collective under MPI (call it on every rank, only for an error every
        rank raised, such as :class:`~ptycli.errors.DivergenceError`): the
        ranks agree whether the state is finite, rank 0 writes, and a failed
        write (disk full) raises the same RuntimeFailure on every rank.
        Returns the chain iteration of that state, or None when nothing was
        written because the probe or object are not finite on some rank (the
        engine did not restore a good state).
        """
        f = self.failed
        engine, index, error = f["engine"], f["index"], f["error"]
        finite = all(np.isfinite(S.data).all() for C in (self.P.probe, self.P.obj) for S in C.S.values())
        if parallel.reduce_flags(0 if finite else 1):
            return None
        attrs = self._state_attrs(index, engine, finished_engine=False)
        attrs.update(status="failed", error=str(error))
        problem = None
        try:
            write_snapshot(path, self.P, "result", [dict(s) for s in self.summaries], attrs,
                           engine.state_dict(arrays=False), self.info(),
                           with_exit=self.keep_exit and bool(getattr(engine, "KEEPS_EXIT_WAVES", True)))
        except RuntimeFailure as exc:
            if parallel.size == 1:
                raise
            problem = (exc.message, exc.hint)  # rank 0's write failed: tell every rank
        if parallel.size > 1:
            problem = parallel.bcast(problem)
            if problem is not None:
                raise RuntimeFailure(problem[0], hint=problem[1], all_ranks=True)
        return int(attrs["total_iterations"])

    def write_checkpoint(self, index, engine, finished_engine):
        """Write a checkpoint now (collective); return its path."""

        label = self.chain[index][0]
        total = int(self.P.runtime.get("iterations", 0))
        path = self.checkpoint_path(label, total)
        attrs = self._state_attrs(index, engine, finished_engine)
        state = engine.state_dict(arrays=False) if engine is not None else self.resume_state
        self.last_state = (attrs, state)
        t0 = time.perf_counter()
        # exit waves only where they carry state (DM, RAAR): other engines rebuild them from probe x object
        with_exit = engine is None or bool(getattr(engine, "KEEPS_EXIT_WAVES", True))
        write_snapshot(path, self.P, "checkpoint", [dict(s) for s in self.summaries], attrs, state, self.info(),
                       with_exit=with_exit)
        parallel.barrier()
        self.checkpoints.append(path)
        logger.debug("checkpoint %s (%d iterations) in %.2f s", path, total, time.perf_counter() - t0)
        return path

    # -- running ---------------------------------------------------------------------
    def _bar(self, label, name, numiter, initial):
        """The progress bar of one engine (None without ``progress``)."""
        if not self.progress:
            return None
        return progress_bar("%s %s" % (label, name), numiter, initial=initial)

    def run(self):
        """Run every engine of the plan; raises :class:`Stopped` after a stop request."""
        P = self.P
        resume_index = int(self.resume.state["attrs"].get("engine_index", 0)) if self.resume is not None else -1
        engine = None
        for index, (label, epars) in enumerate(self.chain):
            done = self.plan[index]
            numiter = int(epars.numiter)
            summary = self.summaries[index]
            if done is None or done >= numiter:
                if done is not None and index == resume_index:
                    logger.info("%s (%s): finished before the checkpoint (%d iterations)", label, epars.name, done)
                continue
            engine = make_engine(P, epars, label=label)
            if index == resume_index and self.resume_state is not None:
                try:
                    engine.load_state(self.resume_state)
                except (TypeError, ValueError, KeyError, IndexError, AttributeError) as exc:
                    raise DataError("--resume %s: the checkpoint is damaged: its engine state (/state/engine) "
                                    "does not fit engine %s (%s: %s)" % (
                                        self.resume.path, label, type(exc).__name__, " ".join(str(exc).split())),
                                    hint="resume from another checkpoint or the result file, or start afresh "
                                    "without --resume", validation=True) from exc
                engine.iteration = done
                logger.info("%s (%s): resuming at iteration %d of %d", label, engine.NAME, done, numiter)
            else:
                engine.initialize()
            summary["name"] = engine.NAME
            bar = self._bar(label, engine.NAME, numiter, engine.iteration)
            post = {}
            t0 = time.perf_counter()
            rec = None
            try:
                while engine.iteration < numiter:
                    before = (int(engine.iteration), int(P.runtime.get("iterations", 0)), len(P.runtime.history))
                    try:
                        rec = engine.iterate(1)[-1]
                    except EngineError as exc:
                        # the engine restored the probe and object of its last good iteration (the one
                        # before this call); put the counters back to match them
                        engine.iteration, P.runtime.iterations = before[0], before[1]
                        del P.runtime.history[before[2]:]
                        summary["iterations"] = before[0]
                        summary["time_s"] += time.perf_counter() - t0
                        self.failed = dict(index=index, engine=engine, error=exc)
                        raise
                    rec["engine_iteration"] = int(engine.iteration)
                    summary["iterations"] = int(engine.iteration)
                    summary.update({"final_" + k: v for k, v in final_errors(rec).items()})
                    if bar is not None:
                        # the model error (DM/RAAR) is computed at some iterations only: its last value stays
                        progress_fields(rec, post)
                        bar.set_postfix(post, refresh=False)
                        bar.update(1)
                    last = engine.iteration >= numiter
                    if last:
                        break
                    if self._stop_due():
                        summary["time_s"] += time.perf_counter() - t0
                        path = self.write_checkpoint(index, engine, finished_engine=False)
                        raise Stopped(self.stop_signal, path, dict(engine=label, iteration=int(engine.iteration),
                                                                   numiter=numiter,
                                                                   total=int(P.runtime.iterations)))
                    if self.interval and int(P.runtime.iterations) % self.interval == 0:
                        summary["time_s"] += time.perf_counter() - t0
                        t0 = time.perf_counter()
                        path = self.write_checkpoint(index, engine, finished_engine=False)
                        # with a progress bar on screen, a log line would break it
                        (logger.debug if bar is not None else logger.info)(
                            "checkpoint after iteration %d: %s", int(P.runtime.iterations), path)
            finally:
                if bar is not None:
                    bar.close()
            engine.finalize()
            summary["time_s"] += time.perf_counter() - t0
            summary["finished"] = True
            if rec is not None:
                ferr = rec.get("fourier_error")
                model = rec.get("model_fourier_error")
                logger.info("%s (%s): %d iterations in %.1f s, fourier error %s%s", label, engine.NAME, numiter,
                            summary["time_s"], "%.4g" % ferr if ferr is not None else "n/a",
                            " (of probe x object: %.4g)" % model if model is not None else "")
            path = self.write_checkpoint(index, engine, finished_engine=True)
            if index < len(self.chain) - 1 and self._stop_due():
                raise Stopped(self.stop_signal, path, dict(engine=label, iteration=int(engine.iteration),
                                                           numiter=numiter, total=int(P.runtime.iterations)))
        if self.keep_exit and engine is not None:
            engine.need_exit_storage()  # the result keeps exit waves: probe x object after an engine that holds none
        if self.last_state is None:  # nothing ran and nothing was resumed (all numiter 0)
            self.last_state = (self._state_attrs(len(self.chain) - 1, None, True), {})
        attrs, state = self.last_state
        attrs = dict(attrs, finished=True, total_iterations=int(P.runtime.get("iterations", 0)))
        self.last_state = (attrs, state)
        return self.summaries
