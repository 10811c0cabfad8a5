"""Every file a run may write, planned and checked before it starts; its checkpoints removed after.

* :func:`input_files`: every file a run reads (refusing FIFOs and devices);
* :func:`checkpoint_ranges` and :class:`CheckpointNames`: every name the
  ``io.checkpoint.path`` template can take during the run;
* :func:`check_outputs`: the result, CXI and checkpoint files against the
  inputs, each other and the disk, then locked (:mod:`ptycli.io.atomic`);
* :func:`remove_checkpoints`: the checkpoints removed once the result is written.
"""

import os
import re

from ..errors import ConfigError
from ..log import get_logger
from .atomic import check_writable, file_key, lock_outputs, release_locks
from .reading import refuse_special_file

__all__ = ["input_files", "checkpoint_ranges", "CheckpointNames", "check_outputs", "remove_checkpoints",
           "MAX_LISTED_CHECKPOINTS", "MAX_LOCKED_CHECKPOINTS"]

logger = get_logger(__name__)


def input_files(p, config=None, resume_path=None):
    """Every file the run reads: ``[(words naming it, path)]``.

    The strings under ``scans`` that name an existing file or folder (data,
    mask, dark, flat, probe and object files; ``file.h5:/dataset`` counts as
    ``file.h5``), the config file and the ``--resume`` file. A FIFO, device
    node, socket or symlink loop among them is a usage error at once (reading
    it could block for ever).
    """
    found = []

    def walk(node, where):
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for key, value in items:
            here = "%s.%s" % (where, key)
            if isinstance(value, (dict, list)):
                walk(value, here)
            elif isinstance(value, str) and value.strip():
                for path in (value, value.rsplit(":", 1)[0] if ":" in value else None):
                    if path and os.path.lexists(path):
                        refuse_special_file(path, here, validation=True)
                        found.append((here, path))
                        break

    walk(p.get("scans") or {}, "scans")
    if config not in (None, "-") and os.path.lexists(str(config)):
        found.append(("the config file", str(config)))
    if resume_path:
        found.append(("the --resume file", os.fspath(resume_path)))
    return found


#: at most this many checkpoint names are listed one by one; beyond, paths are matched (CheckpointNames)
MAX_LISTED_CHECKPOINTS = 20000
#: checkpoint names locked one by one when a run may write at most this many
MAX_LOCKED_CHECKPOINTS = 8


def checkpoint_ranges(chain, plan, start_total=0):
    """``[(engine label, first, last)]``: the chain iterations after which each engine may write a checkpoint.

    An engine that runs writes one every ``interval``, when it ends and when
    a signal stops it (after any of its iterations), so every iteration it
    runs counts; skipped engines write none.
    """
    ranges, total = [], int(start_total)
    for (label, epars), done in zip(chain, plan):
        numiter = int(epars.numiter)
        if done is None or done >= numiter:
            continue
        ranges.append((label, total + 1, total + numiter - done))
        total += numiter - done
    return ranges


class CheckpointNames:
    """Every checkpoint file name a run may write, known before it starts.

    Parameters
    ----------
    name_of : callable
        ``f(engine label, chain iteration) -> path`` (``io.checkpoint.path`` filled).
    ranges : list of (label, first, last)
        See :func:`checkpoint_ranges`.

    Up to :data:`MAX_LISTED_CHECKPOINTS` names are listed; a template that
    can give more (``{iterations}`` over a very long run) is matched instead:
    a path is one of its names when filling the template with an engine
    label and one of the numbers in the path gives the same file.
    """

    def __init__(self, name_of, ranges):
        self.name_of = name_of
        self.ranges = [(label, a, b) for label, a, b in ranges if b >= a]
        # a template without {iterations} gives one name per engine, however long the run
        self._fixed = {label for label, a, b in self.ranges
                       if name_of(label, a) == name_of(label, b) == name_of(label, (a + b) // 2)}
        count = sum(1 if label in self._fixed else b - a + 1 for label, a, b in self.ranges)
        self.names = None  # {path: (label, iteration)} when listed
        if count <= MAX_LISTED_CHECKPOINTS:
            self.names = {}
            for label, a, b in self.ranges:
                for n in ([b] if label in self._fixed else range(a, b + 1)):
                    self.names.setdefault(name_of(label, n), (label, n))
            self._keys = {file_key(path): where for path, where in self.names.items()}

    def __len__(self):
        return len(self.names) if self.names is not None else MAX_LISTED_CHECKPOINTS + 1

    def samples(self):
        """Names standing for all of them in folder and length checks (the longest per folder)."""
        if self.names is not None:
            longest = {}
            for path in self.names:
                folder = os.path.dirname(path)
                if len(path) > len(longest.get(folder, "")):
                    longest[folder] = path
            return sorted(longest.values())
        return sorted({self.name_of(label, n) for label, a, b in self.ranges for n in (a, b)})

    def produces(self, path):
        """``(label, iteration)`` when the run may write a checkpoint to ``path`` (the same file), else None."""
        key = file_key(path)
        if self.names is not None:
            return self._keys.get(key)
        numbers = {int(x) for x in re.findall(r"\d+", os.fspath(path))}
        for label, a, b in self.ranges:
            for n in sorted(numbers) + [a]:
                if a <= n <= b and file_key(self.name_of(label, n)) == key:
                    return (label, n)
        return None

    def existing(self):
        """The names that exist now (files or anything else)."""
        if self.names is not None:
            return [path for path in self.names if os.path.lexists(path)]
        found = []
        for label, a, b in self.ranges:
            folder = os.path.dirname(self.name_of(label, a)) or os.curdir
            if folder != (os.path.dirname(self.name_of(label, b)) or os.curdir):
                raise ConfigError("io.checkpoint.path puts {iterations} into a folder name, and engine %s may "
                                  "write %d checkpoints there: too many folders to check" % (label, b - a + 1),
                                  hint="put {iterations} into the file name only")
            try:
                entries = os.listdir(folder)
            except OSError:
                continue
            for name in entries:
                path = os.path.join(folder, name)
                if self.produces(path) is not None:
                    found.append(path)
        return sorted(set(found))


def check_outputs(output, cxi_path, checkpoints, inputs, force, resume=None):
    """Check every file the run may write against the inputs, each other and the disk; lock them.

    Runs before anything is loaded or computed (MPI rank 0).

    Parameters
    ----------
    output, cxi_path : str
        The result file and the CXI file (or None).
    checkpoints : CheckpointNames
        Every checkpoint name the run may write.
    inputs : list of (words, path)
        See :func:`input_files`.
    force : bool
        ``--force``: replace existing regular files that are not inputs.
    resume : Reconstruction, optional
        The ``--resume`` file read: a checkpoint (not a result) may be
        replaced by this run's checkpoints, since it continues that run.

    Returns
    -------
    list of str
        The lock files taken (:func:`ptycli.io.atomic.release_locks`).

    Raises
    ------
    ConfigError
        (exit code 2) When a target is an input (same file, also through
        links; ``--force`` does not help), two targets are the same file, a
        target is a folder, device node, FIFO or socket, an existing target
        lacks ``--force``, a name is too long for the file system, a folder
        cannot be written, or another run holds the lock of a target.
    """
    resume_key = file_key(resume.path) if resume is not None else None
    resumable = resume is not None and str(resume.kind) == "checkpoint"
    inputs_by_key = {}
    for words, path in inputs:
        inputs_by_key.setdefault(file_key(path), (words, path))
    fixed = [(output, "output file")] + ([(cxi_path, "CXI output file")] if cxi_path else [])
    for path, words in fixed:
        hit = inputs_by_key.get(file_key(path))
        if hit is not None:
            raise ConfigError("%s %s is %s (%s): ptycli never replaces an input, even with --force" % (
                words, path, hit[1], hit[0]), hint="choose another output name")
        where = checkpoints.produces(path)
        if where is not None:
            raise ConfigError("the checkpoint file and the %s are both %s (engine %s, iteration %d)" % (
                words, path, where[0], where[1]), hint="set io.checkpoint.path to another name")
    for key, (words, path) in inputs_by_key.items():
        if resumable and key == resume_key:
            continue  # continuing a checkpoint replaces it with newer ones
        where = checkpoints.produces(path)
        if where is not None:
            raise ConfigError("io.checkpoint.path would replace %s %s (engine %s, iteration %d): ptycli never "
                              "replaces an input, even with --force" % (words, path, where[0], where[1]),
                              hint="choose another io.checkpoint.path")
    for path, words in fixed:
        check_writable(path, force=force, what=words)
    samples = checkpoints.samples()
    for path in samples:
        check_writable(path, force=True, what="checkpoint file")
    locked = fixed + ([(path, "checkpoint file") for path in sorted(checkpoints.names)]
                      if checkpoints.names is not None and len(checkpoints) <= MAX_LOCKED_CHECKPOINTS else [])
    taken = lock_outputs(locked)
    try:
        # again under the lock: a run that just finished may have written them
        for path, words in fixed:
            check_writable(path, force=force, what=words)
        for path in checkpoints.existing():
            if resumable and file_key(path) == resume_key:
                continue
            check_writable(path, force=True, what="checkpoint file")
            if not force:
                raise ConfigError("checkpoint file %s exists from an earlier run" % path,
                                  hint="continue it with --resume %s, or use --force to start afresh" % path)
    except Exception:
        release_locks(taken)
        raise
    return taken


def remove_checkpoints(paths, keep=None):
    """Remove the checkpoint files a run wrote, once its result is written (``io.checkpoint.keep: false``).

    ``keep``: a path never to remove (an input). Files that are already gone
    or cannot be removed are left (logged at debug level).
    """
    spared = file_key(keep) if keep else None
    removed = []
    for path in sorted(set(paths)):
        if spared is not None and file_key(path) == spared:
            continue
        try:
            os.remove(path)
            removed.append(path)
        except OSError as exc:
            logger.debug("cannot remove the checkpoint %s: %s", path, exc)
    if removed:
        logger.info("removed the checkpoint%s %s: the run finished (io.checkpoint.keep: true keeps them)",
                    "" if len(removed) == 1 else "s", ", ".join(removed))
    return removed
