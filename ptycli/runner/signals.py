"""SIGINT and SIGTERM during a run: the handlers, the exit codes and messages safe inside a handler.

A first signal asks :class:`ptycli.runner.ChainRunner` to stop at the next
iteration boundary (:meth:`~ptycli.runner.ChainRunner.request_stop`); the
process then exits with :func:`exit_code` (130 for SIGINT, 143 for SIGTERM).
"""

import os
import signal
import sys
import threading
from pathlib import Path

from ..errors import EXIT_INTERRUPTED

__all__ = ["EXIT_TERMINATED", "SIGNAL_EXIT", "exit_code", "say_now", "install_handlers", "restore_handlers",
           "running_as_ptycli"]

EXIT_TERMINATED = 143
#: exit code per stop signal
SIGNAL_EXIT = {signal.SIGINT: EXIT_INTERRUPTED, signal.SIGTERM: EXIT_TERMINATED}


def exit_code(signum):
    """The exit code of a process stopped by ``signum`` (130, 143, else 128 + signum)."""
    return SIGNAL_EXIT.get(signum, 128 + int(signum))


def say_now(text):
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


def install_handlers(handler):
    """Route SIGINT and SIGTERM to ``handler`` (main thread only); return the old handlers."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    old = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            old[sig] = signal.signal(sig, handler)
        except (ValueError, OSError):  # pragma: no cover - not allowed here
            pass
    return old


def restore_handlers(old):
    """Put back the handlers :func:`install_handlers` returned."""
    for sig, h in old.items():
        try:
            signal.signal(sig, h if h is not None else signal.SIG_DFL)
        except (ValueError, OSError):  # pragma: no cover
            pass


def running_as_ptycli():
    """True in the ``ptycli`` process itself (not when a test or a program calls the command in process)."""
    first = Path(sys.argv[0] if sys.argv and sys.argv[0] else "python")
    return first.name == "ptycli" or (first.parent.name == "ptycli" and first.name == "__main__.py")
