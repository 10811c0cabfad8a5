"""A guarded look at an input HDF5 file: a hang or crash of libhdf5 becomes a DataError.

libhdf5 does not survive every kind of damage: a damaged global heap (where
variable-length strings live) sends it into an endless loop
(``H5HG__cache_heap_deserialize``), and other damage can crash it. Python
cannot catch either. So before a reader opens an input file,
:func:`check_structure` reads the file's structure once in a forked child
process: the child opens the file read-only, visits every group and dataset
(hard links), reads every attribute and every string or small dataset, walks
the chunk index of every chunked dataset and reads one element of every
dataset. When the child does not finish in :data:`TIMEOUT_S` seconds (plus
:data:`PER_OBJECT_S` per object it got through) it is killed; when it dies
from a signal; either way the parent raises a one-line
:class:`~ptycli.errors.DataError` naming the file::

    from ptycli.io.h5guard import check_structure
    check_structure(path)            # DataError on a file libhdf5 cannot survive
    with h5py.File(path, "r") as f:  # now safe from hangs and crashes
        ...

An ordinary error of one object in the child (a damaged object h5py reports
with an exception, a missing filter; also a file h5py cannot open at all) is
not the guard's business: the child skips it and the real reader reports the
problem in its own words (:func:`ptycli.io.reading.reading`) if it needs that
object. Any other exception in the child is reported as ``reading()`` would.

The verdict is cached per file (path, device, inode, size, modification and
change times), so one process probes a file once, whichever loader asks.
The child only reads, never touches MPI, ends with :func:`os._exit` (no
atexit handlers, no flushing of the parent's buffers) and writes nothing to
the terminal. Without :func:`os.fork` (Windows) the check is skipped, and
``PTYCLI_H5GUARD=0`` turns it off. Under MPI every rank checks for itself
(the callers are not collective calls, so a broadcast of one rank's verdict
could deadlock); the cost is one fork per file and rank, a few milliseconds.

The child dies with its parent: on Linux it asks the kernel for SIGKILL when
the parent ends (``prctl(PR_SET_PDEATHSIG)``), however the parent ends
(SIGTERM, SIGKILL, a crash), and the parent kills its live children at exit
(:func:`kill_children`). A path that is not a regular file (a FIFO, a device
node, a socket, a symlink loop) is refused at once, before any child starts:
reading it could block for ever or never end.
"""

import atexit
import contextlib
import json
import os
import signal
import time

from ..errors import DataError
from .reading import DAMAGED_HINT as READ_HINT
from .reading import refuse_special_file

__all__ = ["TIMEOUT_S", "PER_OBJECT_S", "check_structure", "clear_cache", "kill_children"]

#: seconds the child may take before it counts as hung (see also :data:`PER_OBJECT_S`)
TIMEOUT_S = 20.0
#: extra seconds allowed for each group or dataset the child got through
PER_OBJECT_S = 0.01
#: numeric datasets of at most this many bytes are read whole (larger ones: one element)
SMALL_BYTES = 1 << 16
#: datasets of strings (or other variable-length values) of at most this many elements are read whole
MAX_STRINGS = 100000
#: hint of the errors raised here
DAMAGED_HINT = "the file is damaged: copy or export it again"

#: the child reports progress every this many objects
TICK_OBJECTS = 32

_cache = {}
#: children probing now (killed by :func:`kill_children`)
_children = set()


def clear_cache():
    """Forget every verdict (tests; a file replaced within the same clock tick)."""
    _cache.clear()


def _enabled():
    return hasattr(os, "fork") and os.environ.get("PTYCLI_H5GUARD", "1").strip().lower() not in (
        "0", "no", "off", "false")


def _key(path):
    st = os.stat(path)
    return (os.path.abspath(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def check_structure(path, timeout=None, validation=False):
    """Check in a child process that reading ``path``'s HDF5 structure neither hangs nor crashes.

    Parameters
    ----------
    path : str
        The input file (read-only). A path that does not exist, or a file that
        is not HDF5, passes: the caller reports that in its own words.
    timeout : float, optional
        Seconds before the child counts as hung (default :data:`TIMEOUT_S`),
        plus :data:`PER_OBJECT_S` for each object the child got through.
    validation : bool
        Raise usage errors (exit code 2): for checks before a job starts.

    Raises
    ------
    DataError
        When the child hangs (killed after the timeout), dies from a signal, or
        fails outside the objects it skips (see the module docstring).
    """
    path = os.fspath(path)
    refuse_special_file(path, validation=validation)
    if not _enabled():
        return
    try:
        key = _key(path)
    except OSError:
        return  # missing or unreadable: the caller's own check says so
    if key not in _cache:
        _cache[key] = _probe(path, TIMEOUT_S if timeout is None else float(timeout))
    problem = _cache[key]
    if problem is not None:
        message, hint = problem
        raise DataError("%s: %s" % (path, message), hint=hint, validation=validation)


def kill_children():
    """Kill (SIGKILL) and reap the guard children still running; called at exit and on abandon."""
    for pid in list(_children):
        _kill(pid)


# -- the parent ---------------------------------------------------------------------------------

def _h5py_lock():
    """h5py's global lock, held around fork so the child does not inherit it taken by another thread."""
    try:
        from h5py._objects import phil
    except ImportError:  # pragma: no cover - other h5py versions
        return contextlib.nullcontext()
    return phil


def _fork():
    import warnings

    with _h5py_lock(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # Python 3.12+: fork of a threaded process
        return os.fork()


def _probe(path, timeout):
    """None when the child got through ``path``, else ``(message, hint)`` of the DataError."""
    import h5py  # noqa: F401 - imported here so that the child does not pay for it

    prctl = _prctl()
    rfd, wfd = os.pipe()
    parent = os.getpid()
    try:
        pid = _fork()
    except OSError:  # no memory or processes left for a child: read without the guard
        os.close(rfd)
        os.close(wfd)
        return None
    if pid == 0:  # the child: never returns
        _child(path, rfd, wfd, parent, prctl)
    _children.add(pid)
    os.close(wfd)
    t0 = time.monotonic()
    data = bytearray()
    finished = False
    status = None
    try:
        poller = _Poller(rfd)
        while True:
            objects = TICK_OBJECTS * data.count(b".")
            left = t0 + timeout + PER_OBJECT_S * objects - time.monotonic()
            if left <= 0:
                break
            if poller.ready(left):
                chunk = os.read(rfd, 65536)
                if not chunk:
                    finished = True
                    break
                data += chunk
        if finished:
            status = _reap(pid, 5.0)
    finally:
        os.close(rfd)
        if not finished or status is None:
            _kill(pid)
    if status is None:
        return ("reading its HDF5 structure did not finish in %.0f s (libhdf5 hangs on some kinds "
                "of damage)" % (time.monotonic() - t0), DAMAGED_HINT)
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = "signal %d" % sig
        return "reading its HDF5 structure crashed libhdf5 (%s)" % name, DAMAGED_HINT
    if b"=" not in data or os.WEXITSTATUS(status) != 0:
        return ("reading its HDF5 structure ended abnormally (exit status %d)" % os.WEXITSTATUS(status),
                DAMAGED_HINT)
    try:
        summary = json.loads(bytes(data[data.index(b"=") + 1:]).decode())
    except ValueError:
        summary = {}
    if summary.get("exception"):  # as ptycli.io.reading.reading reports it
        return "cannot read its HDF5 structure (%s)" % summary["exception"], READ_HINT
    return None


class _Poller:
    """Wait until a file descriptor can be read (poll where there is one, else select)."""

    def __init__(self, fd):
        import select

        self.fd = fd
        self.poll = select.poll() if hasattr(select, "poll") else None
        if self.poll is not None:
            self.poll.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
        self.select = select.select

    def ready(self, seconds):
        if self.poll is not None:
            return bool(self.poll.poll(max(1, int(seconds * 1000))))
        return bool(self.select([self.fd], [], [], seconds)[0])


def _reap(pid, seconds):
    """The child's wait status once it ended, or None after ``seconds``."""
    end = time.monotonic() + seconds
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            _children.discard(pid)
            return status
        if time.monotonic() > end:
            return None
        time.sleep(0.001)


def _kill(pid):
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass
    _children.discard(pid)


atexit.register(kill_children)


_PRCTL = []


def _prctl():
    """libc's ``prctl`` (Linux), looked up once in the parent; None elsewhere."""
    if not _PRCTL:
        import ctypes
        import sys

        func = None
        if sys.platform.startswith("linux"):
            try:
                func = ctypes.CDLL(None, use_errno=True).prctl  # the C library is in the process already
            except (OSError, AttributeError):
                func = None
        _PRCTL.append(func)
    return _PRCTL[0]


def _die_with_parent(parent, prctl):
    """Ask the kernel to SIGKILL this (child) process when its parent ends (Linux); exit if it has."""
    if prctl is not None:
        try:
            prctl(1, int(signal.SIGKILL), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
        except (OSError, TypeError, ValueError):
            pass
    if os.getppid() != parent:  # the parent ended before the request took effect
        os._exit(70)


# -- the child ----------------------------------------------------------------------------------

def _child(path, rfd, wfd, parent, prctl=None):
    """Probe ``path``, report on ``wfd``: '.' per TICK_OBJECTS objects, then '=' and a JSON summary.

    Ends the process with :func:`os._exit` whatever happens, and when ``parent`` ends.
    """
    code = 70
    try:
        _die_with_parent(parent, prctl)
        import gc

        gc.disable()  # a collection would touch (and copy) every page of the parent's heap
        t0 = time.perf_counter()
        os.close(rfd)
        _quiet_child()
        count = [0]

        def tick():
            count[0] += 1
            if count[0] % TICK_OBJECTS == 0:
                os.write(wfd, b".")

        try:
            summary = _walk(path, tick)
        except Exception as exc:  # not one object's error (those _walk skips): report it
            summary = {"exception": "%s: %s" % (type(exc).__name__, " ".join(str(exc).split()))}
        summary["seconds"] = time.perf_counter() - t0
        os.write(wfd, b"=" + json.dumps(summary).encode())
        code = 0
    except BaseException:  # noqa: B902 - the child must reach os._exit whatever happens
        pass
    finally:
        os._exit(code)


def _quiet_child():
    """Default signal handlers, no core file, no faulthandler, output to /dev/null."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (ImportError, ValueError, OSError):
        pass
    import faulthandler

    faulthandler.disable()
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)


def _walk(path, tick):
    """Read the structure of ``path`` (see the module docstring); a summary dict."""
    import h5py

    summary = {"objects": 0, "errors": 0, "first_error": None}

    def attempt(fn, *args):
        try:
            return fn(*args)
        except Exception as exc:  # an ordinary error: the real reader reports it if it matters
            summary["errors"] += 1
            if summary["first_error"] is None:
                summary["first_error"] = "%s: %s" % (type(exc).__name__, " ".join(str(exc).split()))
            return None

    f = attempt(h5py.File, path, "r")
    if f is None:
        return summary
    seen = set()
    groups = [f]
    attempt(_read_attrs, f)
    while groups:
        group = groups.pop()
        for name in attempt(lambda: list(group.keys())) or ():
            tick()
            summary["objects"] += 1
            obj = attempt(_hard_member, group, name)
            if obj is None:
                continue
            ident = attempt(_identity, obj)
            if ident is not None:
                if ident in seen:  # a second hard link to an object already read
                    continue
                seen.add(ident)
            attempt(_read_attrs, obj)
            if isinstance(obj, h5py.Group):
                groups.append(obj)
            elif isinstance(obj, h5py.Dataset):
                attempt(_touch, obj)
    return summary


def _identity(obj):
    import h5py

    info = h5py.h5o.get_info(obj.id)
    return (info.fileno, info.addr)


def _hard_member(group, name):
    """``group[name]`` when it is a hard link (soft and external links are not followed)."""
    import h5py

    if not isinstance(group.get(name, getlink=True), h5py.HardLink):
        return None
    return group[name]


def _read_attrs(obj):
    attrs = obj.attrs
    for name in list(attrs.keys()):
        try:
            attrs[name]
        except Exception:  # noqa: S110 - see _walk: ordinary errors are not ours
            pass


def _touch(ds):
    """Read ``ds`` whole when it holds strings or is small, else walk its chunks and read one element."""
    import h5py
    import numpy as np

    shape = ds.shape
    dtype = ds.dtype
    if ds.chunks is not None:
        ds.id.get_num_chunks()  # walks the whole chunk index
    if shape is None:
        return
    n = int(np.prod(shape, dtype=np.float64))
    if n == 0:
        return
    variable = dtype.kind == "O" or h5py.check_vlen_dtype(dtype) is not None
    if (n <= MAX_STRINGS if variable else n * dtype.itemsize <= SMALL_BYTES):
        ds[()]
    else:
        ds[(0,) * len(shape)]
