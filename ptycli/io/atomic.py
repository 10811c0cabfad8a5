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
import os
import tempfile

from ..errors import ConfigError

__all__ = ["atomic_write", "check_writable"]


@contextlib.contextmanager
def atomic_write(path):
    """Yield a temporary path next to ``path``; rename it to ``path`` on success.

    The parent folder is created when missing. On an exception inside the
    block the temporary file is removed and the exception propagates; an
    existing ``path`` is then left untouched.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    # keep the extension last, so that e.g. numpy.save does not append another
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".",
                               suffix=".tmp" + os.path.splitext(path)[1], dir=folder)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    # mkstemp creates 0600 files; give the result the usual permissions
    with contextlib.suppress(OSError):
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(path, 0o666 & ~umask)


def check_writable(path, force=False, what="output file"):
    """Make sure ``path`` can be written; create its missing parent folders.

    Raises
    ------
    ConfigError
        When ``path`` exists and ``force`` is false, is a folder, or its folder
        cannot be created or written.
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
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError("cannot write %s %s: folder %s is not writable" % (what, path, folder),
                          hint="choose a writable location")
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise ConfigError("cannot overwrite %s %s: it is read-only" % (what, path),
                          hint="choose another name")
    return path
