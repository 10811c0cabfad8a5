"""Safe output files: write to a temporary file, then rename into place.

>>> check_writable("out/recon.h5", force=False)   # before the job starts
>>> with atomic_write("out/recon.h5") as tmp:
...     with h5py.File(tmp, "w") as f:
...         ...
# out/recon.h5 appears only if the block finished without an exception

The temporary file lives in the destination folder (``.recon.h5.<random>.tmp.h5``)
so that the final :func:`os.replace` is atomic on the same file system; it is
removed when the block raises.
"""

import contextlib
import errno
import os
import tempfile

from ..errors import ConfigError, RuntimeFailure

__all__ = ["atomic_write", "check_writable"]


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

    The parent folder is created when missing. The temporary file is flushed
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
        # keep the extension last, so that e.g. numpy.save does not append another
        fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".",
                                   suffix=".tmp" + os.path.splitext(path)[1], dir=folder)
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
    return path
