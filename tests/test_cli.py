"""The command-line group, its error handling, logging setup and error classes."""

import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest

import ptycli
from ptycli import log
from ptycli.cli import PtycliGroup, error_boundary, main
from ptycli.errors import (
    ConfigError,
    DataError,
    EngineError,
    PtycliError,
    RuntimeFailure,
)
from cli_helpers import runner  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


# --- the real group ---------------------------------------------------------

def test_help_lists_commands_and_examples():
    res = runner().invoke(main, ["--help"])
    assert res.exit_code == 0
    assert "Usage:" in res.stdout
    assert "Examples:" in res.stdout
    assert "info" in res.stdout
    assert "-q, --quiet" in res.stdout and "-v, --verbose" in res.stdout


def test_version():
    res = runner().invoke(main, ["--version"])
    assert res.exit_code == 0
    assert res.stdout.strip() == f"ptycli {ptycli.__version__}"


def test_version_via_python_m():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    res = subprocess.run([sys.executable, "-m", "ptycli", "--version"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout == f"ptycli {ptycli.__version__}\n"


def test_info_text():
    res = runner().invoke(main, ["info"])
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    keys = [line.split()[0] for line in lines]
    for key in ("ptycli", "python", "numpy", "scipy", "h5py", "mpi4py", "mpi_size",
                "mpi_rank", "cpu_cores", "fft_workers"):
        assert key in keys
    assert lines[0].split() == ["ptycli", ptycli.__version__]


def test_info_json():
    res = runner().invoke(main, ["info", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["ptycli"] == ptycli.__version__
    import numpy
    assert data["numpy"] == numpy.__version__
    assert isinstance(data["mpi_size"], int) and data["mpi_size"] >= 1
    assert data["mpi_rank"] == 0
    assert data["cpu_cores"] >= 1 and data["fft_workers"] >= 1
    assert isinstance(data["mpi4py"], str)  # a version or 'not installed'


def test_quiet_and_verbose_together_is_a_usage_error():
    res = runner().invoke(main, ["-q", "-v", "info"])
    assert res.exit_code == 2
    assert "exclude each other" in res.stderr


def test_unknown_command_is_a_usage_error():
    res = runner().invoke(main, ["no-such-command"])
    assert res.exit_code == 2


def test_main_is_a_ptycli_group():
    assert isinstance(main, PtycliGroup)


# --- the error boundary on a throwaway group -------------------------------

def make_cli(exc):
    @click.group(cls=PtycliGroup)
    @click.option("-v", "--verbose", count=True)
    def cli(verbose):
        pass

    @cli.command()
    def boom():
        raise exc

    @cli.group()
    def sub():
        pass

    @sub.command(name="boom")
    def sub_boom():
        raise exc

    return cli


@pytest.mark.parametrize(
    "exc, code",
    [
        (ConfigError("scan.shape must be positive, got -3", hint="set scan.shape to 128"), 2),
        (DataError("scan.h5 has no /data", validation=True), 2),
        (DataError("could not read frame 17 of scan.h5"), 1),
        (RuntimeFailure("out of memory"), 1),
        (EngineError("DM diverged at iteration 3"), 1),
    ],
)
def test_ptycli_errors_become_one_line(exc, code, monkeypatch):
    monkeypatch.delenv("PTYCLI_TRACEBACK", raising=False)
    for args in (["boom"], ["sub", "boom"]):
        res = runner().invoke(make_cli(exc), args)
        assert res.exit_code == code
        assert res.stderr == f"Error: {exc}\n"
        assert "Traceback" not in res.output


def test_config_error_message_and_hint_on_one_line(monkeypatch):
    monkeypatch.delenv("PTYCLI_TRACEBACK", raising=False)
    exc = ConfigError("scan.shape must be\npositive", hint="set it to 128")
    res = runner().invoke(make_cli(exc), ["boom"])
    assert res.exit_code == 2
    assert res.stderr == "Error: scan.shape must be positive; set it to 128\n"


def test_unexpected_error_is_one_line_exit_1(monkeypatch):
    monkeypatch.delenv("PTYCLI_TRACEBACK", raising=False)
    res = runner().invoke(make_cli(ValueError("broken\nthing")), ["boom"])
    assert res.exit_code == 1
    lines = res.stderr.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("Error: unexpected ValueError: broken thing")
    assert "Traceback" not in res.output


def test_verbose_shows_traceback(monkeypatch):
    monkeypatch.delenv("PTYCLI_TRACEBACK", raising=False)
    res = runner().invoke(make_cli(ValueError("broken")), ["-v", "boom"])
    assert res.exit_code == 1
    assert "Traceback (most recent call last)" in res.stderr
    assert res.stderr.rstrip().splitlines()[-1].startswith("Error: unexpected ValueError")
    res = runner().invoke(make_cli(ConfigError("bad")), ["-v", "boom"])
    assert res.exit_code == 2
    assert "Traceback" in res.stderr


def test_keyboard_interrupt_exits_130():
    res = runner().invoke(make_cli(KeyboardInterrupt()), ["boom"])
    assert res.exit_code == 130
    assert res.stderr == "Interrupted.\n"


def test_click_usage_errors_pass_through():
    res = runner().invoke(make_cli(click.BadParameter("nope")), ["boom"])
    assert res.exit_code == 2
    assert "nope" in res.stderr


def test_error_boundary_directly():
    with pytest.raises(click.ClickException) as info:
        with error_boundary():
            raise ConfigError("bad")
    assert info.value.exit_code == 2
    with pytest.raises(click.ClickException) as info:
        with error_boundary():
            raise KeyError("x")
    assert info.value.exit_code == 1
    with pytest.raises(SystemExit):
        with error_boundary():
            raise SystemExit(0)
    with error_boundary():
        pass


# --- errors -----------------------------------------------------------------

def test_error_classes():
    assert issubclass(ConfigError, PtycliError)
    assert issubclass(EngineError, RuntimeFailure)
    assert PtycliError("x").exit_code == 1
    assert ConfigError("x").exit_code == 2
    assert DataError("x").exit_code == 1
    assert DataError("x", validation=True).exit_code == 2
    assert RuntimeFailure("x", exit_code=3).exit_code == 3
    assert str(ConfigError("a  b\n c", hint="do d")) == "a b c; do d"


# --- logging ----------------------------------------------------------------

@pytest.mark.parametrize(
    "value, level",
    [
        (0, logging.CRITICAL), (1, logging.ERROR), (2, logging.WARNING), (3, logging.INFO),
        (4, log.INSPECT), (5, logging.DEBUG), ("3", logging.INFO), ("debug", logging.DEBUG),
        ("WARNING", logging.WARNING), ("info", logging.INFO), (logging.DEBUG, logging.DEBUG),
    ],
)
def test_level_from(value, level):
    assert log.level_from(value) == level


@pytest.mark.parametrize("value", [6, -1, "loud", None, True, 2.5])
def test_level_from_rejects(value):
    with pytest.raises(ConfigError):
        log.level_from(value)


def test_resolve_level_flags_win():
    assert log.resolve_level() == logging.INFO
    assert log.resolve_level(quiet=True) == logging.WARNING
    assert log.resolve_level(verbose=1) == logging.DEBUG
    assert log.resolve_level(verbose_level=1) == logging.ERROR
    assert log.resolve_level(verbose=2, verbose_level=1) == logging.DEBUG
    assert log.resolve_level(quiet=True, verbose_level="debug") == logging.WARNING


def test_setup_logging_rank0_and_other_ranks():
    stream = io.StringIO()
    try:
        assert log.setup_logging(verbose=1, stream=stream, rank=0, size=1) == logging.DEBUG
        log.get_logger("engines.test").debug("dbg %d", 1)
        log.get_logger("ptycli.engines.test").info("hello")
        assert stream.getvalue() == "DEBUG: dbg 1\nhello\n"
        stream = io.StringIO()
        assert log.setup_logging(verbose=1, stream=stream, rank=1, size=2) == logging.WARNING
        log.logger.info("hidden")
        log.logger.warning("careful")
        assert stream.getvalue() == "[rank 1] WARNING: careful\n"
        # calling again replaces the handler instead of adding one
        ours = [h for h in log.logger.handlers if isinstance(h, log._PtycliHandler)]
        assert len(ours) == 1
    finally:
        log.setup_logging()


def test_cli_logs_to_stderr_not_stdout():
    res = runner().invoke(main, ["-v", "info", "--json"])
    assert res.exit_code == 0
    json.loads(res.stdout)  # stdout holds only the JSON document


# --- CI and README stay in step --------------------------------------------

def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    commands = [line.strip() for line in readme.splitlines()
                if "pytest" in line and "pip install" in line]
    assert commands, "README quick start lost its test command"
    assert commands[0] in [line.strip() for line in ci.splitlines()]
