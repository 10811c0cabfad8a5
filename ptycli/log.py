"""Logging for ptycli.

All modules log through children of the ``ptycli`` logger::

    from ptycli.log import get_logger
    logger = get_logger(__name__)        # 'ptycli.engines.dm', ...
    logger.info("DM iteration %d: error %.3g", it, err)

The CLI calls :func:`setup_logging` once. Messages go to stderr (stdout stays
free for results such as ``ptycli info --json``). Verbosity comes from the
command-line flags (``-q`` warnings only, default info, ``-v`` debug) or, when
no flag is given, from the ``verbose_level`` parameter of a configuration,
which takes PtyPy's integers 0..5 or a level name.

Only MPI rank 0 logs at info/debug level; other ranks log warnings and errors
only, prefixed with their rank.

Progress bars go to stderr too: :func:`progress_bar` (tqdm, drawn only on a
terminal, see :func:`stderr_is_tty`) with the error fields of
:func:`progress_fields`; both the engine chain of ``ptycli reconstruct``
(:class:`ptycli.runner.ChainRunner`) and :meth:`ptycli.engines.base.Engine.run`
use them.
"""

import logging
import os
import sys

from . import parallel
from .errors import ConfigError

__all__ = [
    "LOGGER_NAME",
    "INSPECT",
    "logger",
    "get_logger",
    "level_from",
    "resolve_level",
    "setup_logging",
    "stderr_is_tty",
    "progress_bar",
    "progress_fields",
    "PROGRESS_KEYS",
]

LOGGER_NAME = "ptycli"

#: PtyPy's level between INFO and DEBUG (verbose_level 4)
INSPECT = 15
logging.addLevelName(INSPECT, "INSPECT")

# PtyPy's verbose_level: 0 critical, 1 error, 2 warning, 3 info, 4 inspect, 5 debug
_PTYPY_LEVELS = (
    logging.CRITICAL,
    logging.ERROR,
    logging.WARNING,
    logging.INFO,
    INSPECT,
    logging.DEBUG,
)
_NAMED_LEVELS = {
    "critical": logging.CRITICAL,
    "error": logging.ERROR,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "info": logging.INFO,
    "inspect": INSPECT,
    "debug": logging.DEBUG,
}

logger = logging.getLogger(LOGGER_NAME)


def get_logger(name=None):
    """Return the ``ptycli`` logger or one of its children.

    ``get_logger(__name__)`` inside ``ptycli.engines.dm`` gives
    ``ptycli.engines.dm``; other names are put under ``ptycli.``.
    """
    if not name or name == LOGGER_NAME:
        return logger
    if not name.startswith(LOGGER_NAME + "."):
        name = f"{LOGGER_NAME}.{name}"
    return logging.getLogger(name)


def level_from(value):
    """Map a verbosity setting to a :mod:`logging` level.

    Accepts PtyPy's ``verbose_level`` integers 0..5 (0 critical, 1 error,
    2 warning, 3 info, 4 inspect, 5 debug), a level name (``'critical'``,
    ``'error'``, ``'warning'``, ``'info'``, ``'inspect'``, ``'debug'``, any
    case), a string holding one of those integers, or a :mod:`logging` level
    number (10, 20, ...). Raises :class:`~ptycli.errors.ConfigError` otherwise.
    """
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _NAMED_LEVELS:
            return _NAMED_LEVELS[text]
        try:
            value = int(text)
        except ValueError:
            value = None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(
            f"invalid verbose_level {value!r}",
            hint="use an integer 0..5 or one of 'critical', 'error', 'warning', "
            "'info', 'debug'",
        )
    if 0 <= value < len(_PTYPY_LEVELS):
        return _PTYPY_LEVELS[value]
    if value in (logging.DEBUG, INSPECT, logging.INFO, logging.WARNING,
                 logging.ERROR, logging.CRITICAL):
        return value
    raise ConfigError(
        f"invalid verbose_level {value!r}",
        hint="use an integer 0..5 or one of 'critical', 'error', 'warning', "
        "'info', 'debug'",
    )


def resolve_level(quiet=False, verbose=0, verbose_level=None):
    """The level to log at: command-line flags first, then ``verbose_level``.

    ``-q`` gives warnings only, ``-v`` (any count) debug. Without a flag,
    ``verbose_level`` (see :func:`level_from`) decides; the default is info.
    """
    if verbose:
        return logging.DEBUG
    if quiet:
        return logging.WARNING
    if verbose_level is not None:
        return level_from(verbose_level)
    return logging.INFO


class _Formatter(logging.Formatter):
    """``message`` for info, ``LEVEL: message`` otherwise; rank prefix under MPI."""

    def __init__(self, rank=0, size=1):
        super().__init__()
        self.prefix = f"[rank {rank}] " if size > 1 else ""

    def format(self, record):
        text = record.getMessage()
        if record.levelno != logging.INFO:
            text = f"{record.levelname}: {text}"
        if record.exc_info:
            text = f"{text}\n{self.formatException(record.exc_info)}"
        return self.prefix + text


class _PtycliHandler(logging.StreamHandler):
    """The handler installed by :func:`setup_logging` (replaced, never stacked).

    Without an explicit stream it writes to whatever ``sys.stderr`` is at the
    time of each message, so swapping stderr (test runners, click's
    ``CliRunner``) never leaves it writing to a closed file.
    """

    def __init__(self, stream=None):
        logging.Handler.__init__(self)
        self._fixed = stream

    @property
    def stream(self):
        return self._fixed if self._fixed is not None else sys.stderr

    @stream.setter
    def stream(self, value):
        self._fixed = value


def setup_logging(level=None, quiet=False, verbose=0, verbose_level=None,
                  stream=None, rank=None, size=None):
    """Configure the ``ptycli`` logger; safe to call more than once.

    Parameters
    ----------
    level : int or str, optional
        Explicit level (anything :func:`level_from` accepts). Otherwise the
        level comes from ``quiet``/``verbose``/``verbose_level`` through
        :func:`resolve_level`.
    stream : file, optional
        Where to write; default ``sys.stderr`` (looked up at each call, so
        test runners that swap stderr see the output).
    rank, size : int, optional
        MPI rank and size; default from :mod:`ptycli.parallel`. Ranks other
        than 0 log warnings and above only.

    Returns
    -------
    int
        The level in force on this rank.
    """
    if level is None:
        level = resolve_level(quiet=quiet, verbose=verbose, verbose_level=verbose_level)
    else:
        level = level_from(level)
    rank = parallel.rank if rank is None else rank
    size = parallel.size if size is None else size
    if rank != 0:
        level = max(level, logging.WARNING)

    for handler in list(logger.handlers):
        if isinstance(handler, _PtycliHandler):
            logger.removeHandler(handler)
    handler = _PtycliHandler(stream)
    handler.setFormatter(_Formatter(rank=rank, size=size))
    logger.addHandler(handler)
    logger.setLevel(level)
    return level


# -- progress on stderr --------------------------------------------------------------------------

#: the progress-bar fields: (history key, short name); DM and RAAR compute the model error at some
#: iterations only
PROGRESS_KEYS = (("fourier_error", "ferr"), ("photon_error", "perr"), ("exit_change", "dpsi"),
                 ("likelihood", "LL"), ("model_fourier_error", "model"))


def stderr_is_tty():
    """Whether stderr is a terminal (False when it is closed or has no ``isatty``)."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def progress_bar(desc, total, initial=0):
    """A tqdm progress bar on stderr (``leave=True``, unit 'it').

    Call it only where a bar is wanted (rank 0, on a terminal: see
    :func:`stderr_is_tty`). A terminal of unknown size (0 x 0), on which tqdm
    would draw nothing, gets a bar 100 columns wide.
    """
    from tqdm import tqdm

    try:
        size = os.get_terminal_size(sys.stderr.fileno())
    except (OSError, ValueError, AttributeError):
        size = os.terminal_size((0, 0))
    known = size.columns > 0 and size.lines > 0
    return tqdm(total=total, initial=initial, desc=desc, file=sys.stderr, unit="it", leave=True,
                dynamic_ncols=known, ncols=None if known else 100, nrows=None if known else 24)


def progress_fields(rec, post=None):
    """Update ``post`` (a new dict when None) with the errors of the history record ``rec``; return it.

    Fields missing from ``rec`` keep their value in ``post`` (the model
    error of DM/RAAR stays shown between the iterations that compute it).
    """
    post = {} if post is None else post
    post.update({short: "%.3g" % rec[k] for k, short in PROGRESS_KEYS if rec.get(k) is not None})
    return post
