"""Safe output files: write to a temporary file, then rename into place.

>>> check_writable("out/recon.h5", force=False)   # before the job starts
>>> with atomic_write("out/recon.h5") as tmp:
...     with h5py.File(tmp, "w") as f:
...         ...
# out/recon.h5 appears only if the block finished without an exception

The temporary file lives in the destination folder, so that the final
:func:`os.replace` is atomic on the same file system; it is removed when the
block raises. Its name says which process writes it::

    .recon.h5.ptycli.<host>.<pid>.<random>.tmp.h5

A writer killed with SIGKILL (or by the out-of-memory killer, a power cut)
cannot remove its temporary file. The next :func:`atomic_write` or
:func:`check_writable` of the same target removes such leftovers: those
written on this host by a process that no longer runs. Temporary files of a
live process, of another host (a shared file system) or without that
information are left alone.
"""

import contextlib
import errno
import os
import re
import socket
import tempfile

from ..errors import ConfigError, RuntimeFailure
from ..log import get_logger

__all__ = ["atomic_write", "check_writable", "temp_prefix", "remove_stale_temps"]

logger = get_logger(__name__)

#: marks ptycli's temporary files (``.<target>.ptycli.<host>.<pid>.<random>.tmp<ext>``)
TEMP_TAG = "ptycli"


def _host():
    """This host's name as it goes into temporary file names (safe characters, at most 64)."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname() or "localhost")
    return name.strip(".")[:64] or "localhost"


def temp_prefix(path, pid=None, host=None):
    """Name prefix of the temporary files of ``path``, written by ``pid`` (default: this process) on ``host``."""
    return ".%s.%s.%s.%d." % (os.path.basename(os.fspath(path)), TEMP_TAG, host or _host(),
                              os.getpid() if pid is None else int(pid))


def _temp_suffix(path):
    # keep the extension last, so that e.g. numpy.save does not append another
    return ".tmp" + os.path.splitext(os.fspath(path))[1]


def _pid_gone(pid):
    """True only when no process ``pid`` exists (on this host); unsure counts as running."""
    if pid <= 0:
        return False
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # PermissionError: it runs under another user
        return False
    return False


def remove_stale_temps(path):
    """Remove temporary files of ``path`` left by writers on this host that no longer run.

    Looks in the folder of ``path`` for ``.<name>.ptycli.<host>.<pid>.<random>.tmp<ext>``
    with ``<host>`` this host and ``<pid>`` a process that does not exist
    (``os.kill(pid, 0)`` fails with ProcessLookupError). Best effort: files it
    cannot remove are skipped. Returns the number removed (logged).
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    lead = ".%s.%s." % (os.path.basename(path), TEMP_TAG)
    suffix = _temp_suffix(path)
    host = _host()
    try:
        names = os.listdir(folder)
    except OSError:
        return 0
    removed = 0
    for name in names:
        if not (name.startswith(lead) and name.endswith(suffix)) or len(name) <= len(lead) + len(suffix):
            continue
        parts = name[len(lead):-len(suffix)].rsplit(".", 2)  # host (may hold dots), pid, random
        if len(parts) != 3 or parts[0] != host or not parts[1].isdigit():
            continue
        if not _pid_gone(int(parts[1])):
            continue
        try:
            os.remove(os.path.join(folder, name))
        except FileNotFoundError:
            continue
        except OSError as exc:
            logger.debug("cannot remove the stale temporary file %s: %s", name, exc)
            continue
        removed += 1
    if removed:
        logger.info("removed %d stale temporary file%s of %s left by killed runs", removed,
                    "" if removed == 1 else "s", path)
    return removed


def _reason(exc):
    """A short reason for an OSError (h5py's carry no errno but name it in the text)."""
    text = " ".join(str(exc).split())
    if getattr(exc, "errno", None) == errno.ENOSPC or "No space left" in text or "errno = 28" in text:
        return "no space left on the device"
    if getattr(exc, "errno", None) == errno.EDQUOT or "quota" in text.lower():
        return "disk quota exceeded"
    return getattr(exc, "strerror", None) or text or type(exc).__name__


def _fsync(path, directory=False):
    """Flush ``path`` (a file or, with ``directory``, a folder) to disk; best effort for folders."""
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        if directory:
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not directory:
            raise
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path):
    """Yield a temporary path next to ``path``; rename it to ``path`` on success.

    The parent folder is created when missing. Temporary files of ``path``
    left by killed writers are removed first (:func:`remove_stale_temps`);
    this one is named ``.<name>.ptycli.<host>.<pid>.<random>.tmp<ext>``
    (:func:`temp_prefix`). The temporary file is flushed
    to disk before the rename, so that a crash or power cut leaves either the
    old file or the complete new one. On an exception inside the block the
    temporary file is removed and the exception propagates; an existing
    ``path`` is then left untouched. An OSError (disk full, quota, permission,
    I/O error) while writing becomes a :class:`~ptycli.errors.RuntimeFailure`
    naming ``path`` (exit code 1).
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        os.makedirs(folder, exist_ok=True)
        remove_stale_temps(path)
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path), suffix=_temp_suffix(path), dir=folder)
        os.close(fd)
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
        tmp = None
        _fsync(folder, directory=True)
    except OSError as exc:
        reason = _reason(exc)
        fix = "free some space or write elsewhere" if reason in (
            "no space left on the device", "disk quota exceeded") else "check the folder or write elsewhere"
        raise RuntimeFailure("cannot write %s: %s" % (path, reason), hint="%s; %s" % (
            fix, "the existing file is unchanged" if os.path.exists(path) else "nothing was written")) from exc
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.remove(tmp)
    # mkstemp creates 0600 files; give the result the usual permissions
    with contextlib.suppress(OSError):
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(path, 0o666 & ~umask)


def _probe_folder(folder):
    """Create and remove a file in ``folder``; return the OSError when that fails.

    ``os.access`` is not enough: it says yes to root on a read-only file
    system and ignores ACLs and network file system rules.
    """
    try:
        fd, tmp = tempfile.mkstemp(prefix=".ptycli-write-test.", dir=folder)
    except OSError as exc:
        return exc
    os.close(fd)
    with contextlib.suppress(OSError):
        os.remove(tmp)
    return None


def check_writable(path, force=False, what="output file"):
    """Make sure ``path`` can be written; create its missing parent folders.

    Also removes the temporary files of ``path`` that killed writers left
    (see :func:`remove_stale_temps`).

    Raises
    ------
    ConfigError
        When ``path`` exists and ``force`` is false, is a folder, or its folder
        cannot be created or written (a file is created and removed there to
        find out).
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ConfigError("%s %s is a folder" % (what, path), hint="give a file name")
    if os.path.exists(path) and not force:
        raise ConfigError("%s %s already exists" % (what, path),
                          hint="use --force to overwrite it, or choose another name")
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        raise ConfigError("cannot create the folder %s for %s %s (%s)" % (
            folder, what, path, exc.strerror or exc),
            hint="choose a writable location") from exc
    problem = _probe_folder(folder)
    if problem is not None:
        raise ConfigError("cannot write %s %s: folder %s is not writable (%s)" % (
            what, path, folder, _reason(problem)),
            hint="choose a writable location") from problem
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise ConfigError("cannot overwrite %s %s: it is read-only" % (what, path),
                          hint="choose another name")
    remove_stale_temps(path)
    return path
