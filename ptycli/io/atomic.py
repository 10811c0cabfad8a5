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

Before a job starts, :func:`check_writable` refuses targets that cannot work
(a folder, a device node, a FIFO or socket whatever ``--force`` says; a path
through a missing folder and ``..``; a name whose temporary or lock file name
exceeds the file system's limit), and :func:`lock_outputs` takes an exclusive
lock on the targets (``.<name>.ptycli.lock`` next to each, locked with
``flock``), so that a second run on the same target fails at once. The kernel
drops the lock of a killed process, so a lock file left by it is taken over.
:func:`file_key` names a file by its identity (device and inode when it
exists), so that two spellings of one file (symlinks, hard links, ``..``)
compare equal.
"""

import atexit
import contextlib
import errno
import os
import re
import socket
import stat
import tempfile

from ..errors import ConfigError, RuntimeFailure
from ..log import get_logger

__all__ = ["atomic_write", "check_writable", "temp_prefix", "remove_stale_temps", "file_key",
           "file_kind", "lock_outputs", "release_locks", "abandon_temporaries", "name_limit",
           "LOCK_SUFFIX"]

logger = get_logger(__name__)

#: marks ptycli's temporary files (``.<target>.ptycli.<host>.<pid>.<random>.tmp<ext>``)
TEMP_TAG = "ptycli"
#: the lock file of a target is ``.<target>`` + this
LOCK_SUFFIX = ".ptycli.lock"
#: characters :func:`tempfile.mkstemp` puts between prefix and suffix
_RANDOM_CHARS = 8
#: temporary files being written now (removed by :func:`abandon_temporaries`)
_active_temps = set()
#: locks held by this process: {lock file path: (open file descriptor, pid of the holder)}
_held_locks = {}


def _folder(path):
    """The folder of ``path`` as the kernel resolves it (``a/..`` is not shortened, unlike abspath)."""
    return os.path.dirname(os.fspath(path)) or os.curdir


def file_key(path):
    """An identity of ``path`` for comparing files: ``('inode', dev, ino)`` when it exists.

    Symlinks are followed, so a link, a hard link or another spelling of the
    same file give the same key. A path that does not exist gets
    ``('path', <real path of its folder>/<name>)``.
    """
    path = os.fspath(path)
    try:
        st = os.stat(path)
        return ("inode", st.st_dev, st.st_ino)
    except OSError:
        pass
    return ("path", os.path.join(os.path.realpath(_folder(path)), os.path.basename(path)))


def file_kind(path):
    """Words for what ``path`` is when it is neither a regular file nor a folder, else None.

    ``'a FIFO (named pipe)'``, ``'a character device'``, ``'a block device'``,
    ``'a socket'``; ``'a symlink loop'`` when resolving it loops. A path
    that does not exist gives None.
    """
    try:
        mode = os.stat(os.fspath(path)).st_mode
    except OSError as exc:
        return "a symlink loop" if exc.errno == errno.ELOOP else None
    for test, words in ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
                        (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return words
    return None


def name_limit(folder):
    """The longest file name the file system of ``folder`` allows (NAME_MAX; 255 when unknown).

    A folder that does not exist yet is judged by its nearest existing parent.
    """
    folder = os.fspath(folder) or os.curdir
    while True:
        try:
            return int(os.pathconf(folder, "PC_NAME_MAX"))
        except (OSError, ValueError, AttributeError):
            parent = os.path.dirname(os.path.abspath(folder))
            if parent == os.path.abspath(folder):
                return 255
            folder = parent


def temp_name_length(path):
    """Length of the names of the temporary files :func:`atomic_write` makes for ``path``."""
    return len(temp_prefix(path)) + _RANDOM_CHARS + len(_temp_suffix(path))


def lock_path(path):
    """The lock file of target ``path`` (``.<name>.ptycli.lock`` in its folder)."""
    return os.path.join(_folder(path), "." + os.path.basename(os.fspath(path)) + LOCK_SUFFIX)


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
    folder = _folder(path)
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
    folder = _folder(path)
    tmp = made = None
    try:
        os.makedirs(folder, exist_ok=True)
        remove_stale_temps(path)
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path), suffix=_temp_suffix(path), dir=folder)
        made = tmp
        _active_temps.add(made)
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
        _active_temps.discard(made)
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


def _check_reachable(path, what):
    """Refuse a path that goes through a missing folder and ``..`` (``nosuchdir/../o.h5``).

    The kernel resolves ``nosuchdir/..`` only when ``nosuchdir`` exists, while
    a name shortened on paper (``os.path.normpath``) would hide that until the
    final rename fails, after all the computing.
    """
    parts = path.split(os.sep)
    for k, part in enumerate(parts[:-1]):
        if part != os.pardir or k == 0:
            continue
        before = os.sep.join(parts[:k]) or os.sep
        if not os.path.isdir(before):
            raise ConfigError("%s %s cannot be reached: it goes through %s, which is not a folder, and '..'"
                              % (what, path, before),
                              hint="give the path without '..' (e.g. %s), or create %s first" % (
                                  os.path.normpath(path), before))


def _check_name_lengths(path, what):
    """Refuse a name whose own, temporary or lock file name is longer than the file system allows."""
    limit = name_limit(_folder(path))  # the nearest existing folder's file system
    name = os.path.basename(path)
    for kind, length in (("name", len(name)), ("temporary file name", temp_name_length(path)),
                         ("lock file name", len(os.path.basename(lock_path(path))))):
        if length > limit:
            raise ConfigError("%s %s: its %s would be %d characters long; the file system allows %d"
                              % (what, path, kind, length, limit),
                              hint="choose a file name of at most %d characters" % max(
                                  1, limit - (temp_name_length(path) - len(name))))


def check_writable(path, force=False, what="output file"):
    """Make sure ``path`` can be written; create its missing parent folders.

    Also removes the temporary files of ``path`` that killed writers left
    (see :func:`remove_stale_temps`).

    Parameters
    ----------
    path : str
        The target file.
    force : bool
        Allow replacing an existing regular file (never a folder, device
        node, FIFO or socket).
    what : str
        Words naming the target in messages (``'output file'``).

    Raises
    ------
    ConfigError
        When ``path`` is a folder or not a regular file (whatever ``force``
        says), exists and ``force`` is false, cannot be reached (a missing
        folder followed by ``..``), has a name (or temporary or lock file
        name) longer than the file system allows, or its folder cannot be
        created or written (a file is created and removed there to find out).
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ConfigError("%s %s is a folder" % (what, path), hint="give a file name")
    kind = file_kind(path)
    if kind is not None:
        raise ConfigError("%s %s is %s, not a regular file; ptycli never replaces it, even with --force"
                          % (what, path, kind), hint="give the name of a regular file")
    if os.path.lexists(path) and not force:
        raise ConfigError("%s %s already exists" % (what, path),
                          hint="use --force to overwrite it, or choose another name")
    _check_reachable(path, what)
    _check_name_lengths(path, what)
    folder = _folder(path)
    shown = os.path.abspath(folder)
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        raise ConfigError("cannot create the folder %s for %s %s (%s)" % (
            shown, what, path, exc.strerror or exc),
            hint="choose a writable location") from exc
    problem = _probe_folder(folder)
    if problem is not None:
        raise ConfigError("cannot write %s %s: folder %s is not writable (%s)" % (
            what, path, shown, _reason(problem)),
            hint="choose a writable location") from problem
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise ConfigError("cannot overwrite %s %s: it is read-only" % (what, path),
                          hint="choose another name")
    remove_stale_temps(path)
    return path


# -- locks on the outputs of a run ---------------------------------------------------------------

def _lock_owner(lock_file):
    try:
        with open(lock_file) as f:
            return f.read(64).strip()
    except OSError:
        return ""


def _take_lock(target, what):
    """Lock ``target`` (see :func:`lock_outputs`); True when this call took it."""
    import fcntl

    lock_file = lock_path(target)
    if lock_file in _held_locks:
        return False
    while True:
        try:
            fd = os.open(lock_file, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        except OSError:
            return False  # no lock where nothing can be written: check_writable says why
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                return False  # a file system without locks: go on unlocked
            owner = _lock_owner(lock_file)
            raise ConfigError("%s %s is being written by another ptycli run%s" % (
                what, target, " (process %s)" % owner if owner else ""),
                hint="wait for it to finish, or choose another output name") from None
        # the file may have been removed (released) between open and flock: lock the current one
        try:
            same = os.fstat(fd).st_ino == os.stat(lock_file).st_ino
        except OSError:
            same = False
        if not same:
            os.close(fd)
            continue
        os.ftruncate(fd, 0)
        os.write(fd, ("%d %s\n" % (os.getpid(), _host())).encode())
        _held_locks[lock_file] = (fd, os.getpid())
        return True


def lock_outputs(targets, what="output file"):
    """Take an exclusive lock on each of ``targets`` for the rest of this run.

    Each target gets a lock file ``.<name>.ptycli.lock`` next to it, locked
    with ``flock`` (the kernel releases it when the process ends, however it
    ends, so a lock file left by a killed run is simply taken over). Call
    :func:`release_locks` when done (also done at exit).

    Parameters
    ----------
    targets : iterable of str or (str, str)
        Target paths, or ``(path, words naming it)`` pairs.
    what : str
        Default words naming a target in messages.

    Returns
    -------
    list of str
        The lock files taken by this call.

    Raises
    ------
    ConfigError
        When another process holds the lock of a target (exit code 2); the
        locks taken by this call are released first.
    """
    taken = []
    try:
        for item in targets:
            target, words = item if isinstance(item, tuple) else (item, what)
            if _take_lock(os.fspath(target), words):
                taken.append(lock_path(target))
    except ConfigError:
        release_locks(taken)
        raise
    return taken


def release_locks(lock_files=None):
    """Remove and unlock the lock files taken by this process (all of them by default)."""
    for lock_file in list(_held_locks) if lock_files is None else list(lock_files):
        held = _held_locks.pop(lock_file, None)
        if held is None:
            continue
        fd, pid = held
        if pid != os.getpid():  # a forked child: the lock is its parent's
            continue
        with contextlib.suppress(OSError):
            os.remove(lock_file)  # before unlocking: a waiting run then finds the file gone and retries
        with contextlib.suppress(OSError):
            os.close(fd)


def abandon_temporaries():
    """Remove the temporary files being written now and release the locks (before :func:`os._exit`)."""
    for tmp in list(_active_temps):
        with contextlib.suppress(OSError):
            os.remove(tmp)
        _active_temps.discard(tmp)
    release_locks()


atexit.register(release_locks)
