"""Running ``ptycli`` in-process for tests."""
from click.testing import CliRunner

from ptycli.cli import main


def runner():
    """A CliRunner with stdout and stderr apart (click < 8.2 needs mix_stderr=False)."""
    try:
        return CliRunner(mix_stderr=False)
    except TypeError:  # click >= 8.2 keeps stderr apart anyway
        return CliRunner()


def invoke(*args, input=None):
    """``ptycli ARGS`` in this process; the result has exit_code, stdout, stderr."""
    return runner().invoke(main, [str(a) for a in args], input=input)
