"""One reconstruction run of a validated parameter tree, step by step (the work of ``ptycli reconstruct``).

Nothing is computed before the checks pass. :class:`Job` holds the run's
plan and does each step as a method, in this order:

1. ``Job(p, ...)``: the engine chain, the result, CXI and checkpoint names,
   the ``--resume`` checkpoint matched to the chain (no data read);
   :meth:`Job.check`: every file the run may write against every input, each
   other and the disk, then locked (:func:`ptycli.io.outputs.check_outputs`);
   the scans' metadata read (:func:`check_inputs`);
2. :meth:`Job.build_model` (``Ptycho(p, level=2)``), :meth:`Job.restore`
   (the checkpoint's model and counters);
3. :meth:`Job.chain_runner`: the :class:`~ptycli.runner.chain.ChainRunner`
   that runs the engines;
4. :meth:`Job.write_result` (rank 0 writes the result, :mod:`ptycli.io.reconstruction`,
   and the CXI file), :meth:`Job.remove_checkpoints`.

Reporting (the text and JSON printed, exit codes) is the command's
(:mod:`ptycli.commands.reconstruct`).
"""

import datetime
import os
import platform
import shlex
import socket
import sys
import time

import numpy as np

from .. import __version__, parallel
from ..core.geometry import set_workers
from ..core.ptycho import Ptycho
from ..errors import ConfigError, DataError
from ..io.checkpoint import collect_model, load_checkpoint, plan_resume, restore_model, write_snapshot
from ..io.cxi import write_cxi_result
from ..io.outputs import CheckpointNames, check_outputs, checkpoint_ranges, input_files, remove_checkpoints
from ..log import get_logger
from ..params.tree import check_resume, checkpoint_path, engine_sequence, result_path
from ..params.yamlio import dump_yaml
from ..scans import get_loader
from ..versions import dist_version
from .chain import ChainRunner

__all__ = ["Job", "check_inputs", "provenance", "write_cxi"]

logger = get_logger(__name__)


def check_inputs(p):
    """Open every scan's input (metadata only) so that a wrong path fails before any computing.

    Problems become usage errors (exit code 2).
    """
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


def near_field(p):
    """Whether a scan of tree ``p`` is near field: so configured, or (``propagation`` null) so recorded by its input.

    Only metadata are read. An input that cannot be read counts as far field
    here: :func:`check_inputs` reports it. The engine chain depends on it
    (:func:`~ptycli.params.tree.engine_sequence`: DM's near-field warm-up).
    """
    for label, scan in (p.get("scans") or {}).items():
        propagation = scan.get("propagation")
        if propagation is None:
            try:
                propagation = get_loader(scan.data.name)(scan.data, path="scans.%s.data" % label).recorded_propagation()
            except Exception:  # noqa: BLE001 - whatever the input's fault, check_inputs reports it in one line
                propagation = None
        if propagation == "nearfield":
            return True
    return False


def provenance(start, end=None, command_line=None):
    """Versions, host, MPI size, command line and times of this run (a flat dict)."""

    def iso(t):
        return datetime.datetime.fromtimestamp(t).astimezone().isoformat(timespec="seconds")

    end = time.time() if end is None else end
    return {
        "ptycli": __version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": dist_version("scipy") or "",
        "h5py": dist_version("h5py") or "",
        "mpi4py": dist_version("mpi4py") or "not installed",
        "platform": platform.platform(),
        "command_line": command_line or " ".join(shlex.quote(a) for a in sys.argv),
        "cwd": os.getcwd(),
        "host": socket.gethostname(),
        "mpi_size": int(parallel.size),
        "start_time": iso(start),
        "end_time": iso(end),
        "duration_s": round(float(end - start), 3),
    }


def write_cxi(path, P, p, command_line):
    """Write the model ``P`` (first object and probe; the others as extra images) to the CXI file ``path``.

    Collective under MPI (the positions are gathered); rank 0 writes.
    """
    objects = list(P.obj.S.values())
    probes = list(P.probe.S.values())
    extra = [(S.data, "object", S.psize) for S in objects[1:]] + [(S.data, "probe", S.psize) for S in probes[1:]]
    first = next(iter(P.scans.values()))
    positions = None
    energy = distance = None
    if first.data is not None:
        energy, distance = float(first.data.energy_kev), float(first.data.distance_m)
    snap = collect_model(P, with_exit=False)
    if parallel.master and snap["scans"]:
        positions = next(iter(snap["scans"].values()))["positions"]
    if not parallel.master:
        return None
    return write_cxi_result(path, objects[0].data, probes[0].data, objects[0].psize, probes[0].psize,
                            program="ptycli", version=__version__, command=command_line,
                            configuration_yaml=dump_yaml(p), energy_kev=energy, distance_m=distance,
                            positions=positions, extra_images=extra)


def _escape(path):
    return str(path).replace("{", "{{").replace("}", "}}")


class Job:
    """A reconstruction run of the validated tree ``p``: its files, resume plan, model and result.

    Parameters
    ----------
    p : Param
        The validated tree (scans and engines required); ``io.rfile`` and
        ``io.format`` are set from ``output`` and ``fmt``.
    config : str, optional
        The config file (``-``: standard input), recorded with the result.
    overrides : list of str
        The ``--set`` overrides, recorded with the result.
    output : str, optional
        The result file (default ``result_path(p)``); a ``.cxi`` name is a
        :class:`~ptycli.errors.ConfigError`.
    fmt : {'h5', 'cxi'}, optional
        ``cxi`` also writes a CXI file next to the result (default ``io.format``).
    resume_path : str, optional
        The checkpoint (or earlier result) to continue from; read and
        matched to the chain here.
    command_line : str, optional
        Recorded in the provenance (default: ``sys.argv``).
    t_start : float, optional
        When the run began (default now).
    """

    def __init__(self, p, config=None, overrides=(), output=None, fmt=None, resume_path=None, command_line=None,
                 t_start=None):
        self.t_start = time.time() if t_start is None else t_start
        self.command_line = command_line or " ".join(shlex.quote(a) for a in sys.argv)
        self.p = p
        self.config = config
        self.overrides = list(overrides or ())
        self.chain = engine_sequence(p, near_field=near_field(p))
        total_numiter = sum(int(e.numiter) for _, e in self.chain)
        if output is None:
            output = result_path(p, iterations=total_numiter)
        output = os.fspath(output)
        if output.lower().endswith(".cxi"):
            raise ConfigError("-o %s: the main result is ptycli's HDF5 file" % output,
                              hint="give an .h5 name and add --format cxi for a CXI file next to it")
        self.output = output
        p.io.rfile = _escape(output)
        if fmt is not None:
            p.io.format = ["h5", "cxi"] if fmt == "cxi" else ["h5"]
        self.cxi_path = os.path.splitext(output)[0] + ".cxi" if "cxi" in list(p.io.format) else None
        self.interval = int(p.io.checkpoint.interval)
        self.resume_path = resume_path
        self.resume = rec = load_checkpoint(resume_path) if resume_path else None
        self.plan = plan_resume(self.chain, rec) if rec is not None else [0] * len(self.chain)
        if rec is not None:  # scans that do not fit the checkpoint: refused before any data is read
            check_resume(p, rec.params, "--resume %s" % resume_path, probes=rec.probes)
        self.keep_exit = bool(p.io.get("keep_exit_waves", False))
        self.keep_checkpoints = bool(p.io.checkpoint.get("keep", False))
        self.P = None
        self.parameters_yaml = None

    def checkpoint_path(self, label=None, iterations=0):
        """The checkpoint file of engine ``label`` after ``iterations`` of the chain (``io.checkpoint.path``)."""
        return checkpoint_path(self.p, engine=label, iterations=iterations)

    def check(self, force=False):
        """Check and lock every file the run may write, and read the scans' metadata (rank 0; collective).

        ``force``: replace existing regular files that are not inputs. The
        locks last until :func:`ptycli.io.atomic.release_locks`.
        """
        if parallel.master:
            rec = self.resume
            start_total = int(rec.state["attrs"].get("total_iterations", 0)) if rec is not None else 0
            checkpoints = CheckpointNames(self.checkpoint_path, checkpoint_ranges(self.chain, self.plan, start_total))
            check_outputs(self.output, self.cxi_path, checkpoints, input_files(self.p, self.config, self.resume_path),
                          force, resume=rec)
            check_inputs(self.p)
        parallel.barrier()

    def build_model(self):
        """Build the model (``Ptycho(p, level=2)``: data loaded, storages made); return it."""
        if parallel.size > 1:
            # FFT (and ML block) threads: the node's cores shared between its ranks, not all
            # cores in every rank (mpirun --oversubscribe / --bind-to none do not pin ranks)
            set_workers(parallel.fft_workers())
        self.P = Ptycho(self.p, level=2)
        return self.P

    def restore(self):
        """Put the ``--resume`` checkpoint's model and counters into the model; note the parameters.

        Without a checkpoint only the parameters (as the files of the run
        record them, :meth:`info`) are noted.
        """
        rec, P = self.resume, self.P
        if rec is not None:
            had_exit = restore_model(P, rec)
            P.runtime.iterations = int(rec.state["attrs"].get("total_iterations", len(rec.history)))
            logger.info("resuming from %s at iteration %d (engine %s)", self.resume_path, P.runtime.iterations,
                        rec.state["attrs"].get("engine_label"))
            if not had_exit:
                logger.info("%s holds no exit waves (results keep them only with io.keep_exit_waves: true, "
                            "checkpoints only while DM or RAAR runs): they restart from probe x object",
                            self.resume_path)
        self.parameters_yaml = dump_yaml(self.p)

    def info(self, end=None):
        """What every file of the run records: parameters, config, overrides, run label, provenance."""
        return dict(parameters_yaml=self.parameters_yaml, config=self.config, overrides=list(self.overrides),
                    run=self.p.run,
                    provenance=provenance(self.t_start, end, self.command_line) if parallel.master else {})

    def chain_runner(self, progress=False):
        """The :class:`~ptycli.runner.chain.ChainRunner` of this run (``progress``: show a progress bar)."""
        return ChainRunner(self.P, self.chain, self.plan, self.checkpoint_path, self.interval, self.info,
                           resume=self.resume, progress=progress, keep_exit=self.keep_exit)

    def write_result(self, runner):
        """Write the result (and the CXI file) after ``runner`` finished (collective; rank 0 writes)."""
        runner.phase = "writing"
        attrs, state = runner.last_state
        write_snapshot(self.output, self.P, "result", [dict(s) for s in runner.summaries], attrs, state,
                       self.info(time.time()), with_exit=runner.keep_exit)
        if self.cxi_path:
            write_cxi(self.cxi_path, self.P, self.p, self.command_line)
        parallel.barrier()

    def remove_checkpoints(self, runner):
        """Remove the checkpoints ``runner`` wrote unless ``io.checkpoint.keep`` (never the ``--resume`` input)."""
        if self.keep_checkpoints:
            return []
        rec = self.resume
        return remove_checkpoints(runner.checkpoints,
                                  self.resume_path if rec is not None and rec.kind != "checkpoint" else None)
