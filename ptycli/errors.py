"""Exceptions that ptycli shows to users.

Every error a user can cause or fix is a :class:`PtycliError`. The CLI turns it
into a single line ``Error: <message>`` on stderr and exits with the error's
``exit_code`` (no traceback unless ``-v`` is given). Write messages as one line
that names the problem *and* the fix, e.g.::

    raise ConfigError("scan.shape must be a positive integer, got -3",
                      hint="set scan.shape to the detector crop size, e.g. 128")

Exit codes follow the usual CLI convention:

=====  ==================================================================
code   meaning
=====  ==================================================================
0      success
1      runtime failure (the job started but could not finish)
2      bad configuration or usage (nothing was computed)
130    interrupted by the user (Ctrl-C)
=====  ==================================================================
"""

__all__ = [
    "EXIT_OK",
    "EXIT_FAILURE",
    "EXIT_USAGE",
    "EXIT_INTERRUPTED",
    "PtycliError",
    "ConfigError",
    "DataError",
    "RuntimeFailure",
    "EngineError",
    "DivergenceError",
]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def _one_line(text):
    """Collapse whitespace (newlines included) so a message prints on one line."""
    return " ".join(str(text).split())


class PtycliError(Exception):
    """Base class of the errors ptycli reports to users.

    Parameters
    ----------
    message : str
        What went wrong, naming the parameter, file or value involved.
    hint : str, optional
        How to fix it. Appended to the message as ``"<message>; <hint>"``.
    exit_code : int, optional
        Overrides the class default :attr:`exit_code`.
    all_ranks : bool, optional
        Under MPI: every rank raises this error together, after agreeing on
        it in a collective call (e.g. a divergence check). The CLI then prints
        the message once (rank 0) and ends every rank with ``exit_code``,
        without ``MPI_Abort``. Leave it false (the default) for an error that
        one rank may hit alone: the CLI must then abort the other ranks,
        which may be waiting for this one in a collective call.
    """

    #: process exit status the CLI uses for this error
    exit_code = EXIT_FAILURE
    #: see the ``all_ranks`` parameter
    all_ranks = False

    def __init__(self, message, hint=None, exit_code=None, all_ranks=None):
        self.message = _one_line(message)
        self.hint = _one_line(hint) if hint else None
        if exit_code is not None:
            self.exit_code = int(exit_code)
        if all_ranks is not None:
            self.all_ranks = bool(all_ranks)
        super().__init__(self.message)

    def __str__(self):
        if self.hint:
            return f"{self.message}; {self.hint}"
        return self.message


class ConfigError(PtycliError):
    """Bad configuration or usage: a parameter, option or file name is wrong.

    Raised before any computation starts; exit code 2.
    """

    exit_code = EXIT_USAGE


class DataError(PtycliError):
    """Bad input data: a file is missing, unreadable, or has the wrong layout.

    A runtime failure (exit code 1) by default. Pass ``validation=True`` when the
    problem is found while checking the inputs before the job starts (for
    example ``ptycli reconstruct`` validating that the scan file exists and has
    the declared shape): it is then a usage error with exit code 2.
    """

    exit_code = EXIT_FAILURE

    def __init__(self, message, hint=None, exit_code=None, validation=False, all_ranks=None):
        if exit_code is None and validation:
            exit_code = EXIT_USAGE
        super().__init__(message, hint=hint, exit_code=exit_code, all_ranks=all_ranks)


class RuntimeFailure(PtycliError):
    """The job started but could not finish (out of memory, a write failed, ...)."""

    exit_code = EXIT_FAILURE


class EngineError(RuntimeFailure):
    """A reconstruction engine failed (diverged, produced NaN, bad state)."""


class DivergenceError(EngineError):
    """An engine diverged (NaN/Inf in the probe, object or errors); its last good state was restored.

    Raised by the engines' divergence check (:mod:`ptycli.engines.base`),
    which is collective under MPI: when any rank finds a non-finite value,
    every rank restores its last good state and raises this error, so
    ``all_ranks`` is true by default and the ranks can still write that state
    together (``ptycli reconstruct`` does, then exits 1).
    """

    all_ranks = True
