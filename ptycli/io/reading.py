"""Reading input files safely: every failure becomes a one-line :class:`~ptycli.errors.DataError`.

h5py raises many exception types on a damaged, truncated or unexpected file
(``OSError``, ``KeyError``, ``ValueError``, ``TypeError``, ``RuntimeError``,
``IndexError`` ...), numpy ``ValueError``/``EOFError`` on a truncated
``.npy``. Readers wrap their work in :func:`reading` so the user gets
``Error: FILE: cannot read WHAT (OSError: ...); <hint>`` instead of a
"bug in ptycli" report, with the original exception chained (``-v`` shows it)::

    with reading(path, "the frames"):
        with h5py.File(path, "r") as f:
            data = f["/data/intensities"][0:10]

Every reader opens its input read-only; nothing here writes.
"""

import contextlib
import os

import numpy as np

from ..errors import DataError, PtycliError
from .atomic import file_kind

__all__ = ["READ_ERRORS", "reading", "h5_text", "check_format", "refuse_special_file", "expand_user_paths"]

#: What reading a damaged or unexpected input can raise (turned into DataError by :func:`reading`).
READ_ERRORS = (OSError, EOFError, KeyError, IndexError, ValueError, TypeError, RuntimeError,
               ArithmeticError, AttributeError)

DAMAGED_HINT = ("the file may be damaged or incomplete: check it (ptycli inspect --tree, h5ls -r) "
                "or copy it again")


def _one_line(text):
    return " ".join(str(text).split())


@contextlib.contextmanager
def reading(source, what="it", validation=False):
    """Turn the errors of reading ``source`` into :class:`~ptycli.errors.DataError`.

    Parameters
    ----------
    source : str
        The file (or other input) named in the message.
    what : str
        The part being read (``'the metadata'``, ``'frames 0..99'``).
    validation : bool
        Raise usage errors (exit code 2) instead of runtime failures (1): for
        checks made before a job starts.

    PtycliErrors pass through unchanged; :data:`READ_ERRORS` and MemoryError
    (a damaged dataset shape asking for terabytes) become DataErrors.
    """
    try:
        yield
    except PtycliError:
        raise
    except MemoryError as exc:
        raise DataError("%s: not enough memory to read %s (%s)" % (
            source, what, _one_line(exc) or "MemoryError"),
            hint="check the dataset shapes (the file may be damaged), or read less at a time",
            validation=validation) from exc
    except READ_ERRORS as exc:
        raise DataError("%s: cannot read %s (%s: %s)" % (source, what, type(exc).__name__, _one_line(exc)),
                        hint=DAMAGED_HINT, validation=validation) from exc


def refuse_special_file(path, what=None, validation=False):
    """Raise a DataError at once when ``path`` is a FIFO, device node, socket or symlink loop.

    Reading a FIFO or a device can block for ever or never end, and a symlink
    loop is not "missing". A regular file, a folder or a path that does not
    exist pass (the reader reports a missing file in its own words).

    Parameters
    ----------
    path : str
        The input.
    what : str, optional
        Words naming it (``'scans.MF.data.dfile'``), put before the path.
    validation : bool
        Raise usage errors (exit code 2): for checks before a job starts.
    """
    path = os.fspath(path)
    kind = file_kind(path)
    if kind is None:
        return
    where = "%s: %s" % (what, path) if what else path
    if kind == "a symlink loop":
        raise DataError("%s is a symlink loop (resolving it leads back to itself)" % where,
                        hint="point the link at the file itself", validation=validation)
    raise DataError("%s is %s, not a regular file" % (where, kind),
                    hint="give the file itself (reading %s could block for ever)" % kind.split(" (")[0],
                    validation=validation)


def expand_user_paths(tree, keys=("scans",)):
    """Expand ``~`` and ``~user`` at the start of the strings under ``tree[key]`` (in place).

    Every string there that starts with ``~`` is a path (data, mask, dark,
    flat, probe and object files); other strings do not start so. Returns
    ``tree``.
    """
    def walk(node):
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for key, value in list(items):
            if isinstance(value, str) and value.startswith("~"):
                node[key] = os.path.expanduser(value)
            elif isinstance(value, (dict, list)):
                walk(value)

    for key in keys:
        if isinstance(tree, dict) and isinstance(tree.get(key), (dict, list)):
            walk(tree[key])
    return tree


def h5_text(value):
    """An HDF5 string, bytes or scalar value as ``str`` (bytes decoded as UTF-8)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray) and value.shape == ():
        return h5_text(value[()])
    if isinstance(value, np.generic):
        return h5_text(value.item())
    return str(value)


def check_format(f, path, format, max_version, name, version_name, hint):
    """Refuse an open HDF5 file ``f`` that is not one of ptycli's files of ``format`` (or is newer).

    Parameters
    ----------
    f : h5py.File
        The open file; its root attributes ``format`` and ``format_version`` are checked.
    path : str
        The file, named in the message.
    format : str
        The expected ``format`` attribute.
    max_version : int
        The newest ``format_version`` this ptycli reads.
    name, version_name : str
        Words for the messages: "PATH is not a ptycli NAME" and "PATH has
        VERSION_NAME format version N".
    hint : str
        What to do about a file of another format.

    Raises
    ------
    DataError
        When the format differs or the version is newer.
    """
    found = h5_text(f.attrs.get("format", ""))
    if found != format:
        raise DataError("%s is not a ptycli %s (format attribute %r)" % (path, name, found), hint=hint)
    version = int(f.attrs.get("format_version", 0))
    if version > max_version:
        raise DataError("%s has %s format version %d; this ptycli reads up to %d"
                        % (path, version_name, version, max_version), hint="update ptycli")
