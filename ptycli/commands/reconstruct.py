"""``ptycli reconstruct``: the command-line side of a run (options, reporting, exit codes).

The work is :class:`ptycli.runner.Job` (plan and check every file, build the
model, write the result) and :class:`ptycli.runner.ChainRunner` (the engines
with checkpoints, signals and the progress bar); this module calls them in
order and says what happened:

1. load CONFIG (file or ``-``), apply ``--set``, validate (scans and engines
   required); plan the run (``--resume`` matched to the engine chain) and
   check every file it may write against every input, each other and the
   disk, then lock them; read the scans' metadata;
2. build the model (``Ptycho(p, level=2)``), restore the checkpoint;
3. run the engines: a progress bar on a terminal (rank 0), a checkpoint every
   ``io.checkpoint.interval`` iterations and at the end of each engine,
   SIGINT/SIGTERM stop at the next iteration boundary with a final
   checkpoint (exit 130/143, with the command that continues the run); an
   engine that fails (diverges) leaves its last good state, which goes to the
   output file (``/state`` attrs ``status='failed'``, ``error``) before the
   error (exit 1);
4. rank 0 writes the result (exit waves only with ``io.keep_exit_waves``)
   and, with ``--format cxi`` / ``io.format: [h5, cxi]``, a CXI file next to
   it, then removes the checkpoints it wrote (unless ``io.checkpoint.keep``);
   the summary goes to stdout (text or ``--json``).
"""

import logging
import shlex
import signal
import sys
import time
import traceback

import click

from .. import parallel
from ..errors import DivergenceError, EngineError, RuntimeFailure
from ..io.atomic import release_locks
from ..log import get_logger, stderr_is_tty
from ..runner import Job, Stopped, exit_code, final_errors
from ..runner.signals import install_handlers, restore_handlers, running_as_ptycli
from .common import apply_verbose_level, emit_result, load_tree, set_option

logger = get_logger(__name__)

__all__ = ["reconstruct"]


def _reconstruct(config, output, overrides, resume_path, fmt, force, as_json):
    t_start = time.time()
    command_line = " ".join(shlex.quote(a) for a in sys.argv)
    # 1. configuration, files ---------------------------------------------------------------
    p = load_tree(config, overrides, require_scans=True, require_engines=True)
    apply_verbose_level(p.verbose_level)
    job = Job(p, config=config, overrides=overrides, output=output, fmt=fmt, resume_path=resume_path,
              command_line=command_line, t_start=t_start)
    job.check(force)

    # 2. model ------------------------------------------------------------------------------
    job.build_model()
    apply_verbose_level(p.verbose_level)  # Ptycho sets the level from verbose_level; -q/-v win
    job.restore()
    progress = parallel.master and not _is_quiet() and stderr_is_tty()
    runner = job.chain_runner(progress=progress)

    # 3. engines -------------------------------------------------------------------------------
    handlers = install_handlers(runner.request_stop)
    try:
        _run_and_write(job, runner, fmt, as_json)
    except click.exceptions.Exit:
        # stopped by a signal, checkpoint written, the process ends: a further signal must not turn into a
        # KeyboardInterrupt, nor (once Python has dropped its handlers while shutting down) kill the process
        # with another status. Ignored (SIG_IGN outlives the shutdown); SIGKILL still ends a hung exit.
        if running_as_ptycli():
            install_handlers(signal.SIG_IGN)
        else:
            restore_handlers(handlers)
        raise
    except BaseException:
        restore_handlers(handlers)
        raise
    restore_handlers(handlers)
    t_end = time.time()
    if not parallel.master:
        return
    output, cxi_path = job.output, job.cxi_path
    logger.info("wrote %s%s", output, " and %s" % cxi_path if cxi_path else "")
    job.remove_checkpoints(runner)
    if runner.stop_signal is not None:  # the signal came after the last iteration had begun
        click.echo("%s: the run had already finished its iterations; the result is written." % (
            signal.Signals(runner.stop_signal).name), err=True)
    P = job.P
    last = P.runtime.history[-1] if P.runtime.history else None
    summary = dict(
        status="ok", output=output, cxi=cxi_path, run=p.run, config=config, overrides=list(overrides or ()),
        iterations=int(P.runtime.get("iterations", 0)),
        final_errors=final_errors(last),
        engines=[dict(label=s["label"], name=s["name"], numiter=s["numiter"], iterations=s["iterations"],
                      time_s=round(float(s["time_s"]), 4),
                      final_errors={k[len("final_"):]: v for k, v in s.items() if k.startswith("final_")})
                 for s in runner.summaries],
        checkpoints=sorted(set(runner.checkpoints)), checkpoints_kept=job.keep_checkpoints,
        resumed_from=resume_path, mpi_size=parallel.size, time_s=round(t_end - t_start, 3))
    emit_result(summary, as_json, output)


def _run_and_write(job, runner, fmt, as_json):
    """Run the chain (with the signal handlers of ``runner`` installed) and write the result and CXI file."""
    try:
        runner.run()
    except EngineError as exc:
        # Under MPI an EngineError may come from one rank only while the others wait in a collective
        # call: writing the model (collective) could then hang. Leave it to the error boundary
        # (MPI_Abort); the last checkpoint is the resume point. A divergence is found by every rank
        # together (the check is collective): they write the last good state together.
        if runner.failed is None or (parallel.size > 1 and not exc.all_ranks):
            raise
        _report_failure(runner, exc, job.output, as_json)
    except Stopped as stop:
        name = signal.Signals(stop.signum).name
        w = stop.where
        cmd = _resume_command(job.config, job.overrides, job.output, stop.checkpoint, fmt)
        if parallel.master:
            click.echo("Stopped by %s after iteration %d (engine %s, %d of %d); checkpoint written to %s. "
                       "Continue with: %s" % (name, w["total"], w["engine"], w["iteration"], w["numiter"],
                                              stop.checkpoint, cmd), err=True)
        if as_json:
            emit_result(dict(status="interrupted", signal=name, checkpoint=stop.checkpoint, resume_command=cmd,
                             iterations=w["total"], engines=runner.summaries), True, "")
        raise click.exceptions.Exit(exit_code(stop.signum))

    # 4. result (a first signal now lets it finish) ----------------------------------------------------
    job.write_result(runner)


def _report_failure(runner, exc, output, as_json):
    """An engine failed (diverged): keep its last good state in ``output``, then raise EngineError (exit 1).

    Under MPI only for an error of every rank (``exc.all_ranks``, a
    DivergenceError): all ranks write together and raise the same error.
    """
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


def _is_quiet():
    return logging.getLogger("ptycli").getEffectiveLevel() > logging.INFO


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
