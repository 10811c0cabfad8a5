"""``ptycli reconstruct``: run the engine chain of a configuration and write the result.

Order of work (nothing is computed before the checks pass):

1. load CONFIG (file or ``-``), apply ``--set``, validate (scans and engines
   required); open the ``--resume`` checkpoint and match it to the engine
   chain; list every file the run may write (result, CXI, the checkpoint at
   every name its template can take) and check them against every input
   file, each other and the disk, then lock them (:func:`check_outputs`);
   read the scans' metadata (input files exist and are readable);
2. build the model (``Ptycho(p, level=2)``), restore the checkpoint;
3. run the engines in order (:class:`ChainRunner`): a progress bar on a
   terminal (rank 0), a checkpoint every ``io.checkpoint.interval``
   iterations and at the end of each engine, SIGINT/SIGTERM stop at the next
   iteration boundary with a final checkpoint (exit 130/143); an engine that
   fails (diverges) leaves its last good state, which goes to the output file
   (``/state`` attrs ``status='failed'``, ``error``) before the error (exit 1);
4. rank 0 writes the result (:mod:`ptycli.io.reconstruction`; exit waves only
   with ``io.keep_exit_waves``) and, with ``--format cxi`` /
   ``io.format: [h5, cxi]``, a CXI file next to it, then removes the
   checkpoints it wrote (unless ``io.checkpoint.keep``).
"""

import os
import re
import shlex
import signal
import socket
import sys
import time
import traceback

import click
import numpy as np

from .. import __version__, parallel
from ..cli import apply_verbose_level
from ..errors import EXIT_INTERRUPTED, ConfigError, DataError, DivergenceError, EngineError
from ..log import get_logger
from .common import emit_result, load_tree, set_option

logger = get_logger(__name__)

__all__ = ["reconstruct", "check_inputs", "input_files", "checkpoint_ranges", "CheckpointNames", "check_outputs",
           "ChainRunner", "Stopped", "provenance"]

EXIT_TERMINATED = 143
_SIGNAL_EXIT = {signal.SIGINT: EXIT_INTERRUPTED, signal.SIGTERM: EXIT_TERMINATED}
#: errors reported per engine (``final_<key>``); DM and RAAR also record ``model_*`` (the errors of probe x
#: object; their ``fourier_error`` is that of the projection input) at some iterations and at their last
_ERROR_KEYS = ("fourier_error", "photon_error", "exit_change", "likelihood", "model_fourier_error",
               "model_photon_error")
#: progress-bar fields
_BAR_KEYS = (("fourier_error", "ferr"), ("photon_error", "perr"), ("exit_change", "dpsi"), ("likelihood", "LL"),
             ("model_fourier_error", "model"))


class Stopped(Exception):
    """The chain stopped on a signal; a checkpoint was written to ``checkpoint``."""

    def __init__(self, signum, checkpoint, where):
        super().__init__("stopped by signal %d" % signum)
        self.signum = signum
        self.checkpoint = checkpoint
        self.where = where


# -- checks before computing ------------------------------------------------------------------

def check_inputs(p):
    """Open every scan's input (metadata only) so that a wrong path fails before any computing.

    Problems become usage errors (exit code 2).
    """
    from ..scans import get_loader

    for label, scan in (p.get("scans") or {}).items():
        where = "scans.%s.data" % label
        try:
            loader = get_loader(scan.data.name)(scan.data, path=where)
            # as the scan model sets it (ScanModel.load): a configured propagation that contradicts the
            # one the input records is a ConfigError here, before anything is computed
            loader.propagation = scan.get("propagation")
            loader.check()  # metadata, geometry, frame and position counts: no frames read
        except DataError as exc:
            raise DataError("%s: %s" % (where, exc.message) if not exc.message.startswith(where) else exc.message,
                            hint=exc.hint, validation=True) from None


def _escape(path):
    return str(path).replace("{", "{{").replace("}", "}}")


def input_files(p, config=None, resume_path=None):
    """Every file the run reads: ``[(words naming it, path)]``.

    The strings under ``scans`` that name an existing file or folder (data,
    mask, dark, flat, probe and object files; ``file.h5:/dataset`` counts as
    ``file.h5``), the config file and the ``--resume`` file. A FIFO, device
    node, socket or symlink loop among them is a usage error at once (reading
    it could block for ever).
    """
    from ..io.reading import refuse_special_file

    found = []

    def walk(node, where):
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for key, value in items:
            here = "%s.%s" % (where, key)
            if isinstance(value, (dict, list)):
                walk(value, here)
            elif isinstance(value, str) and value.strip():
                for path in (value, value.rsplit(":", 1)[0] if ":" in value else None):
                    if path and os.path.lexists(path):
                        refuse_special_file(path, here, validation=True)
                        found.append((here, path))
                        break

    walk(p.get("scans") or {}, "scans")
    if config not in (None, "-") and os.path.lexists(str(config)):
        found.append(("the config file", str(config)))
    if resume_path:
        found.append(("the --resume file", os.fspath(resume_path)))
    return found


#: at most this many checkpoint names are listed one by one; beyond, paths are matched (CheckpointNames)
MAX_LISTED_CHECKPOINTS = 20000
#: checkpoint names locked one by one when a run may write at most this many
MAX_LOCKED_CHECKPOINTS = 8


def checkpoint_ranges(chain, plan, start_total=0):
    """``[(engine label, first, last)]``: the chain iterations after which each engine may write a checkpoint.

    An engine that runs writes one every ``interval``, when it ends and when
    a signal stops it (after any of its iterations), so every iteration it
    runs counts; skipped engines write none.
    """
    ranges, total = [], int(start_total)
    for (label, epars), done in zip(chain, plan):
        numiter = int(epars.numiter)
        if done is None or done >= numiter:
            continue
        ranges.append((label, total + 1, total + numiter - done))
        total += numiter - done
    return ranges


class CheckpointNames:
    """Every checkpoint file name a run may write, known before it starts.

    Parameters
    ----------
    name_of : callable
        ``f(engine label, chain iteration) -> path`` (``io.checkpoint.path`` filled).
    ranges : list of (label, first, last)
        See :func:`checkpoint_ranges`.

    Up to :data:`MAX_LISTED_CHECKPOINTS` names are listed; a template that
    can give more (``{iterations}`` over a very long run) is matched instead:
    a path is one of its names when filling the template with an engine
    label and one of the numbers in the path gives the same file.
    """

    def __init__(self, name_of, ranges):
        from ..io.atomic import file_key

        self.name_of = name_of
        self.ranges = [(label, a, b) for label, a, b in ranges if b >= a]
        self._key = file_key
        # a template without {iterations} gives one name per engine, however long the run
        self._fixed = {label for label, a, b in self.ranges
                       if name_of(label, a) == name_of(label, b) == name_of(label, (a + b) // 2)}
        count = sum(1 if label in self._fixed else b - a + 1 for label, a, b in self.ranges)
        self.names = None  # {path: (label, iteration)} when listed
        if count <= MAX_LISTED_CHECKPOINTS:
            self.names = {}
            for label, a, b in self.ranges:
                for n in ([b] if label in self._fixed else range(a, b + 1)):
                    self.names.setdefault(name_of(label, n), (label, n))
            self._keys = {self._key(path): where for path, where in self.names.items()}

    def __len__(self):
        return len(self.names) if self.names is not None else MAX_LISTED_CHECKPOINTS + 1

    def samples(self):
        """Names standing for all of them in folder and length checks (the longest per folder)."""
        if self.names is not None:
            longest = {}
            for path in self.names:
                folder = os.path.dirname(path)
                if len(path) > len(longest.get(folder, "")):
                    longest[folder] = path
            return sorted(longest.values())
        return sorted({self.name_of(label, n) for label, a, b in self.ranges for n in (a, b)})

    def produces(self, path):
        """``(label, iteration)`` when the run may write a checkpoint to ``path`` (the same file), else None."""
        key = self._key(path)
        if self.names is not None:
            return self._keys.get(key)
        numbers = {int(x) for x in re.findall(r"\d+", os.fspath(path))}
        for label, a, b in self.ranges:
            for n in sorted(numbers) + [a]:
                if a <= n <= b and self._key(self.name_of(label, n)) == key:
                    return (label, n)
        return None

    def existing(self):
        """The names that exist now (files or anything else)."""
        if self.names is not None:
            return [path for path in self.names if os.path.lexists(path)]
        found = []
        for label, a, b in self.ranges:
            folder = os.path.dirname(self.name_of(label, a)) or os.curdir
            if folder != (os.path.dirname(self.name_of(label, b)) or os.curdir):
                raise ConfigError("io.checkpoint.path puts {iterations} into a folder name, and engine %s may "
                                  "write %d checkpoints there: too many folders to check" % (label, b - a + 1),
                                  hint="put {iterations} into the file name only")
            try:
                entries = os.listdir(folder)
            except OSError:
                continue
            for name in entries:
                path = os.path.join(folder, name)
                if self.produces(path) is not None:
                    found.append(path)
        return sorted(set(found))


def check_outputs(output, cxi_path, checkpoints, inputs, force, resume=None):
    """Check every file the run may write against the inputs, each other and the disk; lock them.

    Runs before anything is loaded or computed (MPI rank 0).

    Parameters
    ----------
    output, cxi_path : str
        The result file and the CXI file (or None).
    checkpoints : CheckpointNames
        Every checkpoint name the run may write.
    inputs : list of (words, path)
        See :func:`input_files`.
    force : bool
        ``--force``: replace existing regular files that are not inputs.
    resume : Reconstruction, optional
        The ``--resume`` file read: a checkpoint (not a result) may be
        replaced by this run's checkpoints, since it continues that run.

    Returns
    -------
    list of str
        The lock files taken (:func:`ptycli.io.atomic.release_locks`).

    Raises
    ------
    ConfigError
        (exit code 2) When a target is an input (same file, also through
        links; ``--force`` does not help), two targets are the same file, a
        target is a folder, device node, FIFO or socket, an existing target
        lacks ``--force``, a name is too long for the file system, a folder
        cannot be written, or another run holds the lock of a target.
    """
    from ..io.atomic import check_writable, file_key, lock_outputs

    resume_key = file_key(resume.path) if resume is not None else None
    resumable = resume is not None and str(resume.kind) == "checkpoint"
    inputs_by_key = {}
    for words, path in inputs:
        inputs_by_key.setdefault(file_key(path), (words, path))
    fixed = [(output, "output file")] + ([(cxi_path, "CXI output file")] if cxi_path else [])
    for path, words in fixed:
        hit = inputs_by_key.get(file_key(path))
        if hit is not None:
            raise ConfigError("%s %s is %s (%s): ptycli never replaces an input, even with --force" % (
                words, path, hit[1], hit[0]), hint="choose another output name")
        where = checkpoints.produces(path)
        if where is not None:
            raise ConfigError("the checkpoint file and the %s are both %s (engine %s, iteration %d)" % (
                words, path, where[0], where[1]), hint="set io.checkpoint.path to another name")
    for key, (words, path) in inputs_by_key.items():
        if resumable and key == resume_key:
            continue  # continuing a checkpoint replaces it with newer ones
        where = checkpoints.produces(path)
        if where is not None:
            raise ConfigError("io.checkpoint.path would replace %s %s (engine %s, iteration %d): ptycli never "
                              "replaces an input, even with --force" % (words, path, where[0], where[1]),
                              hint="choose another io.checkpoint.path")
    for path, words in fixed:
        check_writable(path, force=force, what=words)
    samples = checkpoints.samples()
    for path in samples:
        check_writable(path, force=True, what="checkpoint file")
    locked = fixed + ([(path, "checkpoint file") for path in sorted(checkpoints.names)]
                      if checkpoints.names is not None and len(checkpoints) <= MAX_LOCKED_CHECKPOINTS else [])
    taken = lock_outputs(locked)
    try:
        # again under the lock: a run that just finished may have written them
        for path, words in fixed:
            check_writable(path, force=force, what=words)
        for path in checkpoints.existing():
            if resumable and file_key(path) == resume_key:
                continue
            check_writable(path, force=True, what="checkpoint file")
            if not force:
                raise ConfigError("checkpoint file %s exists from an earlier run" % path,
                                  hint="continue it with --resume %s, or use --force to start afresh" % path)
    except Exception:
        from ..io.atomic import release_locks

        release_locks(taken)
        raise
    return taken


def _dist_version(name):
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def provenance(start, end=None, command_line=None):
    """Versions, host, MPI size, command line and times of this run (a flat dict)."""
    import datetime
    import platform

    def iso(t):
        return datetime.datetime.fromtimestamp(t).astimezone().isoformat(timespec="seconds")

    end = time.time() if end is None else end
    return {
        "ptycli": __version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": _dist_version("scipy") or "",
        "h5py": _dist_version("h5py") or "",
        "mpi4py": _dist_version("mpi4py") or "not installed",
        "platform": platform.platform(),
        "command_line": command_line or " ".join(shlex.quote(a) for a in sys.argv),
        "cwd": os.getcwd(),
        "host": socket.gethostname(),
        "mpi_size": int(parallel.size),
        "start_time": iso(start),
        "end_time": iso(end),
        "duration_s": round(float(end - start), 3),
    }


# -- the chain ---------------------------------------------------------------------------------

def _final_errors(rec):
    return {k: rec.get(k) for k in _ERROR_KEYS if rec is not None and rec.get(k) is not None}


def _strip_arrays(state):
    """An engine's ``state_dict()`` without the probe/object/exit copies (the file has those)."""
    return {k: v for k, v in (state or {}).items() if k not in ("probe", "obj", "exit")}


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
        (``io.keep_exit_waves``); checkpoints always hold them.
    """

    def __init__(self, P, chain, plan, checkpoint_path, interval, info, resume=None, progress=False,
                 keep_exit=True):
        from ..io.checkpoint import engine_state_for_rank

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
                _say_now("%s received: finishing writing the result (send it again to stop at once, "
                         "without a result)." % name)
            else:
                _say_now("%s received: stopping after this iteration and writing a checkpoint "
                         "(send it again to stop at once)." % name)

    def abandon(self, signum):
        """End the process now (second signal): remove temporary files and locks, say where to resume."""
        from ..io.atomic import abandon_temporaries
        from ..io.h5guard import kill_children

        if parallel.master:
            where = ("the last checkpoint, %s, is the resume point" % self.checkpoints[-1] if self.checkpoints
                     else "no checkpoint was written")
            _say_now("Second %s: stopped at once, without a final checkpoint; %s." % (
                signal.Signals(signum).name, where))
        abandon_temporaries()
        kill_children()
        os._exit(_SIGNAL_EXIT.get(signum, 128 + int(signum)))

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
        from ..errors import RuntimeFailure
        from ..io.checkpoint import write_snapshot

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
                           _strip_arrays(engine.state_dict()), self.info(), with_exit=self.keep_exit)
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
        from ..io.checkpoint import write_snapshot

        label = self.chain[index][0]
        total = int(self.P.runtime.get("iterations", 0))
        path = self.checkpoint_path(label, total)
        attrs = self._state_attrs(index, engine, finished_engine)
        state = _strip_arrays(engine.state_dict()) if engine is not None else self.resume_state
        self.last_state = (attrs, state)
        t0 = time.perf_counter()
        write_snapshot(path, self.P, "checkpoint", [dict(s) for s in self.summaries], attrs, state, self.info())
        parallel.barrier()
        self.checkpoints.append(path)
        logger.debug("checkpoint %s (%d iterations) in %.2f s", path, total, time.perf_counter() - t0)
        return path

    # -- running ---------------------------------------------------------------------
    def _bar(self, label, name, numiter, initial):
        if not self.progress:
            return None
        from tqdm import tqdm

        try:
            size = os.get_terminal_size(sys.stderr.fileno())
        except (OSError, ValueError, AttributeError):
            size = os.terminal_size((0, 0))
        known = size.columns > 0 and size.lines > 0
        # a terminal of unknown size (0 x 0) would make tqdm draw nothing
        return tqdm(total=numiter, initial=initial, desc="%s %s" % (label, name), file=sys.stderr, unit="it",
                    leave=True, dynamic_ncols=known, ncols=None if known else 100, nrows=None if known else 24)

    def run(self):
        """Run every engine of the plan; raises :class:`Stopped` after a stop request."""
        from ..engines import make_engine

        P = self.P
        resume_index = int(self.resume.state["attrs"].get("engine_index", 0)) if self.resume is not None else -1
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
                    summary.update({"final_" + k: v for k, v in _final_errors(rec).items()})
                    if bar is not None:
                        # the model error (DM/RAAR) is computed at some iterations only: its last value stays
                        post.update({short: "%.3g" % rec[k] for k, short in _BAR_KEYS if rec.get(k) is not None})
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
        if self.last_state is None:  # nothing ran and nothing was resumed (all numiter 0)
            self.last_state = (self._state_attrs(len(self.chain) - 1, None, True), {})
        attrs, state = self.last_state
        attrs = dict(attrs, finished=True, total_iterations=int(P.runtime.get("iterations", 0)))
        self.last_state = (attrs, state)
        return self.summaries


# -- result --------------------------------------------------------------------------------

def _write_cxi(path, P, p, command_line):
    from ..io.cxi import write_cxi_result
    from ..params.yamlio import dump_yaml

    objects = list(P.obj.S.values())
    probes = list(P.probe.S.values())
    extra = [(S.data, "object", S.psize) for S in objects[1:]] + [(S.data, "probe", S.psize) for S in probes[1:]]
    first = next(iter(P.scans.values()))
    positions = None
    energy = distance = None
    if first.data is not None:
        energy, distance = float(first.data.energy_kev), float(first.data.distance_m)
    from ..io.checkpoint import collect_model

    snap = collect_model(P, with_exit=False)
    if parallel.master and snap["scans"]:
        positions = next(iter(snap["scans"].values()))["positions"]
    if not parallel.master:
        return None
    return write_cxi_result(path, objects[0].data, probes[0].data, objects[0].psize, probes[0].psize,
                            program="ptycli", version=__version__, command=command_line,
                            configuration_yaml=dump_yaml(p), energy_kev=energy, distance_m=distance,
                            positions=positions, extra_images=extra)


def _resume_command(config, overrides, output, checkpoint, fmt=None):
    words = ["ptycli", "reconstruct", "CONFIG.yaml" if config == "-" else config]
    for o in overrides or ():
        words += ["--set", o]
    if fmt:
        words += ["--format", fmt]
    words += ["-o", output, "--resume", checkpoint]
    return " ".join(shlex.quote(w) if w != "CONFIG.yaml" else w for w in words)


@click.command()
@click.argument("config", metavar="CONFIG")
@click.option("-o", "--output", default=None, metavar="OUT.h5",
              help="Result file (default: io.rfile of CONFIG, '{home}/{run}.h5').")
@set_option
@click.option("--resume", "resume_path", default=None, metavar="CHECKPOINT.h5",
              help="Continue the engine chain from a checkpoint (or an earlier result) of this CONFIG.")
@click.option("--format", "fmt", type=click.Choice(["h5", "cxi"]), default=None,
              help="h5: ptycli's HDF5 result only; cxi: also a CXI file OUT.cxi (default: io.format).")
@click.option("--force", is_flag=True, help="Overwrite existing result, CXI and checkpoint files "
              "(never an input file, a folder, device or FIFO).")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON document (output, iterations, final errors per engine, timing).")
@click.option("-q", "--quiet", is_flag=True, help="Only print warnings and errors (no progress bar).")
@click.option("-v", "--verbose", count=True, help="Print debug messages and tracebacks.")
@click.pass_context
def reconstruct(ctx, config, output, overrides, resume_path, fmt, force, as_json, quiet, verbose):
    """Reconstruct probe and object from the scans and engines in CONFIG.

    CONFIG is a YAML parameter file ('-' reads standard input). Everything is
    checked before any computing: parameters, input files, the output
    location (an existing file needs --force). The engines run in the order
    written; a progress bar shows on a terminal. The result (object, probe,
    positions, error history, parameters, provenance and the state to resume
    from) goes to one HDF5 file; its path is printed on stdout.

    Checkpoints are written every io.checkpoint.interval iterations and when
    an engine ends (default OUT.checkpoint.h5), and removed when the run
    finishes well (io.checkpoint.keep: true keeps them). Ctrl-C or SIGTERM stops at
    the end of the current iteration, writes a checkpoint and exits with 130
    or 143; continue with --resume. If an engine diverges (NaN/Inf), the
    probe and object of its last good iteration are written to the result
    file (marked as failed, a resume point) and the exit code is 1.

    \b
    Examples:
      ptycli reconstruct configs/reconstruct_moonflower.yaml -o out/mf.h5
      ptycli reconstruct run.yaml --set engines.dm.numiter=50 --set engines.dm.alpha=0.9 -o a.h5
      cat run.yaml | ptycli reconstruct - -o out/recon.h5 --json | jq .final_errors
      ptycli reconstruct run.yaml -o out/mf.h5 --resume out/mf.checkpoint.h5
      mpirun -n 4 ptycli reconstruct run.yaml -o out/mf.h5 --format cxi

    \b
    Exit codes: 0 done, 1 failure while running, 2 bad configuration or
    usage, or another run writing the same output (nothing computed),
    130/143 stopped by SIGINT/SIGTERM (checkpoint written).
    """
    if quiet and verbose:
        raise click.UsageError("-q/--quiet and -v/--verbose exclude each other; give only one")
    root = ctx.find_root()
    root.ensure_object(dict)
    if quiet:
        root.obj["quiet"] = True
    if verbose:
        root.obj["verbose"] = verbose
    # 'ptycli -v reconstruct' gets its traceback from the error boundary; 'reconstruct -v' from here
    own_traceback = bool(verbose) and not root.params.get("verbose")
    from ..io.atomic import release_locks

    try:
        _reconstruct(config, output, overrides, resume_path, fmt, force, as_json)
    except (click.ClickException, click.exceptions.Exit, click.Abort):
        raise
    except Exception as exc:
        # the error boundary prints the one-line message after this; an error of all ranks once
        if own_traceback and (parallel.master or not getattr(exc, "all_ranks", False)):
            traceback.print_exc(file=sys.stderr)
        raise
    finally:
        release_locks()  # the locks on the outputs taken by check_outputs


def _reconstruct(config, output, overrides, resume_path, fmt, force, as_json):
    from ..core.ptycho import Ptycho
    from ..io.checkpoint import load_checkpoint, plan_resume, restore_model, write_snapshot
    from ..params.tree import checkpoint_path, engine_sequence, result_path
    from ..params.yamlio import dump_yaml

    t_start = time.time()
    command_line = " ".join(shlex.quote(a) for a in sys.argv)
    # 1. configuration ------------------------------------------------------------------
    p = load_tree(config, overrides, require_scans=True, require_engines=True)
    apply_verbose_level(p.verbose_level)
    chain = engine_sequence(p)
    total_numiter = sum(int(e.numiter) for _, e in chain)
    if output is None:
        output = result_path(p, iterations=total_numiter)
    output = os.fspath(output)
    if output.lower().endswith(".cxi"):
        raise ConfigError("-o %s: the main result is ptycli's HDF5 file" % output,
                          hint="give an .h5 name and add --format cxi for a CXI file next to it")
    p.io.rfile = _escape(output)
    if fmt is not None:
        p.io.format = ["h5", "cxi"] if fmt == "cxi" else ["h5"]
    formats = list(p.io.format)
    cxi_path = os.path.splitext(output)[0] + ".cxi" if "cxi" in formats else None
    interval = int(p.io.checkpoint.interval)

    def ckpt(label=None, iterations=0):
        return checkpoint_path(p, engine=label, iterations=iterations)

    rec = load_checkpoint(resume_path) if resume_path else None
    plan = plan_resume(chain, rec) if rec is not None else [0] * len(chain)
    if rec is not None:  # scans that do not fit the checkpoint: refused before any data is read
        from ..params.tree import check_resume

        check_resume(p, rec.params, "--resume %s" % resume_path, probes=rec.probes)

    keep_exit = bool(p.io.get("keep_exit_waves", False))
    keep_checkpoints = bool(p.io.checkpoint.get("keep", False))

    if parallel.master:
        # every file this run may write, against the inputs, each other and the disk; locked until the end
        start_total = int(rec.state["attrs"].get("total_iterations", 0)) if rec is not None else 0
        checkpoints = CheckpointNames(ckpt, checkpoint_ranges(chain, plan, start_total))
        check_outputs(output, cxi_path, checkpoints, input_files(p, config, resume_path), force, resume=rec)
        check_inputs(p)
    parallel.barrier()

    # 2. model ------------------------------------------------------------------------------
    if parallel.size > 1:
        # FFT (and ML block) threads: the node's cores shared between its ranks, not all
        # cores in every rank (mpirun --oversubscribe / --bind-to none do not pin ranks)
        from ..core.geometry import set_workers

        set_workers(parallel.fft_workers())
    P = Ptycho(p, level=2)
    apply_verbose_level(p.verbose_level)  # Ptycho sets the level from verbose_level; -q/-v win
    if rec is not None:
        had_exit = restore_model(P, rec)
        P.runtime.iterations = int(rec.state["attrs"].get("total_iterations", len(rec.history)))
        logger.info("resuming from %s at iteration %d (engine %s)", resume_path, P.runtime.iterations,
                    rec.state["attrs"].get("engine_label"))
        if not had_exit:
            logger.info("%s holds no exit waves (results keep them only with io.keep_exit_waves: true): "
                        "they restart from probe x object", resume_path)

    parameters_yaml = dump_yaml(p)

    def info(end=None):
        return dict(parameters_yaml=parameters_yaml, config=config, overrides=list(overrides or ()), run=p.run,
                    provenance=provenance(t_start, end, command_line) if parallel.master else {})

    quiet = _is_quiet()
    progress = parallel.master and not quiet and _stderr_tty()
    runner = ChainRunner(P, chain, plan, ckpt, interval, info, resume=rec, progress=progress, keep_exit=keep_exit)

    # 3. engines -------------------------------------------------------------------------------
    handlers = _install_handlers(runner.request_stop)
    try:
        _run_and_write(runner, P, p, config, overrides, output, cxi_path, fmt, as_json, info, command_line)
    except click.exceptions.Exit:
        # stopped by a signal, checkpoint written, the process ends: a further signal must not turn into a
        # KeyboardInterrupt, nor (once Python has dropped its handlers while shutting down) kill the process
        # with another status. Ignored (SIG_IGN outlives the shutdown); SIGKILL still ends a hung exit.
        if _running_as_ptycli():
            _install_handlers(signal.SIG_IGN)
        else:
            _restore_handlers(handlers)
        raise
    except BaseException:
        _restore_handlers(handlers)
        raise
    _restore_handlers(handlers)
    t_end = time.time()
    if not parallel.master:
        return
    logger.info("wrote %s%s", output, " and %s" % cxi_path if cxi_path else "")
    if not keep_checkpoints:
        _remove_checkpoints(runner.checkpoints, resume_path if rec is not None and rec.kind != "checkpoint" else None)
    if runner.stop_signal is not None:  # the signal came after the last iteration had begun
        click.echo("%s: the run had already finished its iterations; the result is written." % (
            signal.Signals(runner.stop_signal).name), err=True)
    last = P.runtime.history[-1] if P.runtime.history else None
    summary = dict(
        status="ok", output=output, cxi=cxi_path, run=p.run, config=config, overrides=list(overrides or ()),
        iterations=int(P.runtime.get("iterations", 0)),
        final_errors=_final_errors(last),
        engines=[dict(label=s["label"], name=s["name"], numiter=s["numiter"], iterations=s["iterations"],
                      time_s=round(float(s["time_s"]), 4),
                      final_errors={k[len("final_"):]: v for k, v in s.items() if k.startswith("final_")})
                 for s in runner.summaries],
        checkpoints=sorted(set(runner.checkpoints)), checkpoints_kept=keep_checkpoints, resumed_from=resume_path,
        mpi_size=parallel.size, time_s=round(t_end - t_start, 3))
    emit_result(summary, as_json, output)


def _run_and_write(runner, P, p, config, overrides, output, cxi_path, fmt, as_json, info, command_line):
    """Run the chain (with the signal handlers of ``runner`` installed) and write the result and CXI file."""
    from ..io.checkpoint import write_snapshot

    try:
        runner.run()
    except EngineError as exc:
        # Under MPI an EngineError may come from one rank only while the others wait in a collective
        # call: writing the model (collective) could then hang. Leave it to the error boundary
        # (MPI_Abort); the last checkpoint is the resume point. A divergence is found by every rank
        # together (the check is collective): they write the last good state together.
        if runner.failed is None or (parallel.size > 1 and not exc.all_ranks):
            raise
        _report_failure(runner, exc, output, as_json)
    except Stopped as stop:
        name = signal.Signals(stop.signum).name
        w = stop.where
        cmd = _resume_command(config, overrides, output, stop.checkpoint, fmt)
        if parallel.master:
            click.echo("Stopped by %s after iteration %d (engine %s, %d of %d); checkpoint written to %s. "
                       "Continue with: %s" % (name, w["total"], w["engine"], w["iteration"], w["numiter"],
                                              stop.checkpoint, cmd), err=True)
        if as_json:
            emit_result(dict(status="interrupted", signal=name, checkpoint=stop.checkpoint, resume_command=cmd,
                             iterations=w["total"], engines=runner.summaries), True, "")
        raise click.exceptions.Exit(_SIGNAL_EXIT.get(stop.signum, 128 + int(stop.signum)))

    # 4. result (a first signal now lets it finish) ----------------------------------------------------
    runner.phase = "writing"
    attrs, state = runner.last_state
    write_snapshot(output, P, "result", [dict(s) for s in runner.summaries], attrs, state, info(time.time()),
                   with_exit=runner.keep_exit)
    if cxi_path:
        _write_cxi(cxi_path, P, p, command_line)
    parallel.barrier()


def _remove_checkpoints(paths, keep=None):
    """Remove the checkpoint files a run wrote, once its result is written (``io.checkpoint.keep: false``).

    ``keep``: a path never to remove (an input). Files that are already gone
    or cannot be removed are left (logged at debug level).
    """
    from ..io.atomic import file_key

    spared = file_key(keep) if keep else None
    removed = []
    for path in sorted(set(paths)):
        if spared is not None and file_key(path) == spared:
            continue
        try:
            os.remove(path)
            removed.append(path)
        except OSError as exc:
            logger.debug("cannot remove the checkpoint %s: %s", path, exc)
    if removed:
        logger.info("removed the checkpoint%s %s: the run finished (io.checkpoint.keep: true keeps them)",
                    "" if len(removed) == 1 else "s", ", ".join(removed))
    return removed


def _report_failure(runner, exc, output, as_json):
    """An engine failed (diverged): keep its last good state in ``output``, then raise EngineError (exit 1).

    Under MPI only for an error of every rank (``exc.all_ranks``, a
    DivergenceError): all ranks write together and raise the same error.
    """
    from ..errors import RuntimeFailure

    label = runner.chain[runner.failed["index"]][0]
    cls = DivergenceError if isinstance(exc, DivergenceError) else EngineError
    try:
        good = runner.write_failure(output)
    except RuntimeFailure as failed:  # e.g. the disk is full: say both
        raise cls("%s; writing its last good state failed too: %s" % (exc.message, failed.message),
                  hint=failed.hint, all_ranks=exc.all_ranks and failed.all_ranks) from exc
    if good is None:
        where = ("the last checkpoint is %s" % runner.checkpoints[-1]) if runner.checkpoints else \
            "no checkpoint was written"
        message = "%s; the probe or object hold NaN/Inf, so no result was written (%s)" % (exc.message, where)
    else:
        message = "%s; the state of iteration %d (the last good one) was written to %s" % (exc.message, good, output)
    hint = exc.hint or "change the parameters of engine %s" % label
    if good is not None:
        hint += "; to continue from it, add --resume %s with a new -o" % output
    if as_json:
        emit_result(dict(status="failed", error=message, output=output if good is not None else None,
                         iterations=good, engines=runner.summaries, exit_code=cls.exit_code), True, "")
        ctx = click.get_current_context(silent=True)
        if ctx is not None:  # this document says it all: no second (error) document from the CLI
            ctx.find_root().meta["ptycli.json_errors"] = False
    raise cls(message, hint=hint, all_ranks=exc.all_ranks) from exc


def _running_as_ptycli():
    """True in the ``ptycli`` process itself (not when a test or a program calls the command in process)."""
    from pathlib import Path

    first = Path(sys.argv[0] if sys.argv and sys.argv[0] else "python")
    return first.name == "ptycli" or (first.parent.name == "ptycli" and first.name == "__main__.py")


def _say_now(text):
    """Write a line to stderr from a signal handler: straight to the file descriptor when there is one.

    ``print``/``click.echo`` there could meet the stream half-way through
    another write (a "reentrant call" error).
    """
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, ValueError, OSError):
        fd = None
    try:
        if fd is None:
            sys.stderr.write(text + "\n")
        else:
            os.write(fd, (text + "\n").encode("utf-8", "replace"))
    except (OSError, ValueError, RuntimeError):
        pass


def _is_quiet():
    import logging

    return logging.getLogger("ptycli").getEffectiveLevel() > logging.INFO


def _stderr_tty():
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def _install_handlers(handler):
    """Route SIGINT and SIGTERM to ``handler`` (main thread only); return the old handlers."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return {}
    old = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            old[sig] = signal.signal(sig, handler)
        except (ValueError, OSError):  # pragma: no cover - not allowed here
            pass
    return old


def _restore_handlers(old):
    for sig, h in old.items():
        try:
            signal.signal(sig, h if h is not None else signal.SIG_DFL)
        except (ValueError, OSError):  # pragma: no cover
            pass
