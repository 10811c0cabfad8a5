"""MPI facade: the only module in ptycli that talks to MPI.

Everything else imports from here::

    from ptycli import parallel
    start, stop = parallel.block_range(n_frames)   # frames owned by this rank
    parallel.allreduce(numerator)                  # in place, no-op in one process
    if parallel.master:
        save(...)

When ptycli runs as a single process, or mpi4py is not installed, or it fails
to import, the module falls back to a serial stub: ``rank == 0``,
``size == 1``, reductions are no-ops and ``comm`` is a small object with the
mpi4py methods ptycli uses. No warning is printed in that case.

MPI is only initialised when the process was started by an MPI launcher
(``mpirun``/``mpiexec``/``srun``; detected from the environment variables they
set). A plain ``ptycli ...`` therefore does not pay the MPI start-up cost
(about a second for a singleton Open MPI process). Set ``PTYCLI_MPI=1`` to
import mpi4py anyway, or ``PTYCLI_MPI=0`` to never use it.

Rules for the code that uses it: probe and object are replicated on every
rank, frames are not; every iteration sums its numerators, denominators,
gradients and error terms with :func:`allreduce` on numpy buffers (one
``MPI_Allreduce`` each, no pickling; :func:`comm_stats` counts calls and
bytes), and uses the pickle-based calls (:func:`allreduce_scalar`,
:func:`bcast`, :func:`gather`, :func:`allgather`) only outside iteration
loops. An error under MPI ends every rank through :func:`fail_all`
(``MPI_Abort`` after printing the message once), never a hang, unless the
ranks agreed on it first (:func:`reduce_flags`, e.g. the engines' divergence
check) and raise it together (``PtycliError.all_ranks``): then rank 0 prints
it and every rank exits normally with its code.
"""

import os
import sys
import time

# numpy is imported where it is used: ``ptycli --help`` does not need it

__all__ = [
    "MPI",
    "comm",
    "rank",
    "size",
    "MPIenabled",
    "master",
    "launcher_size",
    "allreduce",
    "allreduce_scalar",
    "reduce_flags",
    "bcast",
    "bcast_array",
    "barrier",
    "gather",
    "allgather",
    "abort",
    "fail_all",
    "ABORT_GRACE_S",
    "block_range",
    "cpu_count",
    "fft_workers",
    "describe",
    "launch_problem",
    "comm_stats",
    "reset_comm_stats",
]

# Environment variables through which MPI launchers tell a process its rank /
# world size: Open MPI, PMIx (Open MPI 5, srun --mpi=pmix), MPICH/Intel MPI
# (Hydra, PMI), MVAPICH, Cray ALPS/PALS.
_SIZE_VARS = (
    "OMPI_COMM_WORLD_SIZE",
    "PMI_SIZE",
    "PMIX_SIZE",
    "MV2_COMM_WORLD_SIZE",
    "PALS_SIZE",
    "ALPS_APP_PE_COUNT",
)
_RANK_VARS = (
    "OMPI_COMM_WORLD_RANK",
    "PMIX_RANK",
    "PMI_RANK",
    "MV2_COMM_WORLD_RANK",
    "PALS_RANKID",
    "ALPS_APP_PE",
)
_LOCAL_SIZE_VARS = (
    "OMPI_COMM_WORLD_LOCAL_SIZE",
    "MPI_LOCALNRANKS",
    "MV2_COMM_WORLD_LOCAL_SIZE",
    "PALS_LOCAL_SIZE",
)

_OPS = ("sum", "prod", "max", "min", "land", "lor", "band", "bor")


def _env_int(names):
    for name in names:
        value = os.environ.get(name)
        if value:
            try:
                return int(value)
            except ValueError:
                continue
    return None


def _launched():
    """True when an MPI launcher started this process."""
    return any(os.environ.get(name) for name in _SIZE_VARS + _RANK_VARS)


#: world size announced by the launcher (None when not launched by one)
launcher_size = _env_int(_SIZE_VARS)

#: why MPI is not used (None when it is); shown by ``ptycli info``
_disabled_reason = None


def _load_mpi():
    """Import ``mpi4py.MPI`` if appropriate; return the module or None."""
    global _disabled_reason
    mode = os.environ.get("PTYCLI_MPI", "auto").strip().lower()
    if mode in ("0", "off", "no", "false", "never"):
        _disabled_reason = "disabled by PTYCLI_MPI"
        return None
    if mode in ("", "auto") and not _launched():
        _disabled_reason = "not started by an MPI launcher"
        return None
    try:
        from mpi4py import MPI as _MPI  # noqa: N811
    except ImportError:
        _disabled_reason = "mpi4py is not installed"
        return None
    except Exception as exc:  # broken MPI library, missing libmpi, ...
        _disabled_reason = f"mpi4py failed to import ({type(exc).__name__}: {exc})"
        return None
    return _MPI


class _SerialComm:
    """Stand-in for ``MPI.COMM_WORLD`` in a single process.

    Implements the subset of the mpi4py communicator API that ptycli uses,
    with single-process semantics.
    """

    rank = 0
    size = 1

    def Get_rank(self):
        return 0

    def Get_size(self):
        return 1

    def Barrier(self):
        pass

    barrier = Barrier

    def Allreduce(self, sendbuf, recvbuf, op=None):
        # MPI.IN_PLACE is None in the stub: the data are already in recvbuf.
        if sendbuf is not None and sendbuf is not recvbuf:
            import numpy as np

            np.copyto(np.asarray(recvbuf), np.asarray(sendbuf))

    def allreduce(self, obj, op=None):
        return obj

    def Bcast(self, buf, root=0):
        pass

    def bcast(self, obj, root=0):
        return obj

    def gather(self, obj, root=0):
        return [obj]

    def allgather(self, obj):
        return [obj]

    def Abort(self, errorcode=1):
        raise SystemExit(errorcode)

    def __repr__(self):
        return "<ptycli.parallel serial communicator (size 1)>"


#: the ``mpi4py.MPI`` module, or None when MPI is not in use
MPI = _load_mpi()

if MPI is not None:
    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    size = comm.Get_size()
else:
    comm = _SerialComm()
    rank = 0
    size = 1

#: True when mpi4py is in use (the communicator may still have size 1)
MPIenabled = MPI is not None
#: True on rank 0, the process that prints and writes files
master = rank == 0


#: collective calls made through this module (also counted in one process, where they are
#: no-ops): numpy-buffer reductions/broadcasts with their bytes, and pickled-object calls
_stats = {"buffer_calls": 0, "buffer_bytes": 0, "buffer_seconds": 0.0, "buffer_cpu_seconds": 0.0,
          "object_calls": 0, "flag_calls": 0}


def comm_stats():
    """Counters of this process's collective calls since the last :func:`reset_comm_stats`.

    A dict: ``buffer_calls``, ``buffer_bytes``, ``buffer_seconds`` and
    ``buffer_cpu_seconds`` (in-place ``Allreduce``/``Bcast`` of numpy buffers:
    :func:`allreduce`, :func:`bcast_array`; wall and CPU time of the reductions, both
    including waiting for the other ranks) and ``object_calls`` (pickled Python
    objects: :func:`allreduce_scalar`, :func:`bcast`, :func:`gather`, :func:`allgather`)
    and ``flag_calls`` (:func:`reduce_flags`: one 8-byte integer per call, the ranks agreeing
    on a control decision such as the engines' divergence check; not counted in the
    ``buffer_*`` figures, which are the engines' numerical sums).
    Tests and benchmarks use it to check that an engine's iterations reduce numpy buffers
    only, and how many bytes.
    """
    return dict(_stats)


def reset_comm_stats():
    """Zero the counters of :func:`comm_stats`; return their values before."""
    old = dict(_stats)
    for key in _stats:
        _stats[key] = type(_stats[key])(0)
    return old


def _count(kind, nbytes=0):
    if kind == "buffer":
        _stats["buffer_calls"] += 1
        _stats["buffer_bytes"] += int(nbytes)
    else:
        _stats["object_calls"] += 1


def _mpi_op(op):
    name = str(op).lower()
    if name not in _OPS:
        raise ValueError(f"unknown reduction {op!r}; use one of {', '.join(_OPS)}")
    return getattr(MPI, name.upper()) if MPI is not None else name


def allreduce(a, op="sum"):
    """Reduce a numpy array over all ranks, in place; return it.

    ``op`` is one of ``'sum', 'prod', 'max', 'min', 'land', 'lor', 'band',
    'bor'``. A no-op when ``size == 1``. Non-contiguous arrays are reduced
    through a contiguous copy and written back.
    """
    op_ = _mpi_op(op)
    _count("buffer", getattr(a, "nbytes", 0))
    if size == 1:
        return a
    import numpy as np

    if not isinstance(a, np.ndarray):
        raise TypeError(
            f"allreduce works in place on numpy arrays, got {type(a).__name__}; "
            "use allreduce_scalar for Python numbers"
        )
    t0, c0 = time.perf_counter(), time.thread_time()
    if a.flags.c_contiguous:
        comm.Allreduce(MPI.IN_PLACE, a, op=op_)
    else:
        buf = np.ascontiguousarray(a)
        comm.Allreduce(MPI.IN_PLACE, buf, op=op_)
        a[...] = buf
    _stats["buffer_seconds"] += time.perf_counter() - t0
    _stats["buffer_cpu_seconds"] += time.thread_time() - c0
    return a


def allreduce_scalar(x, op="sum"):
    """Reduce a Python/numpy scalar (or any picklable value) over all ranks."""
    op_ = _mpi_op(op)
    _count("object")
    if size == 1:
        return x
    return comm.allreduce(x, op=op_)


def reduce_flags(bits):
    """Bitwise OR of a small non-negative integer over all ranks; every rank returns it.

    For decisions every rank must take together (``any rank found NaN`` ->
    all restore and stop): one ``MPI_Allreduce`` of a single int64 buffer
    (no pickling, so it may run every iteration), counted as ``flag_calls``
    in :func:`comm_stats`. In one process it returns ``int(bits)``.
    """
    bits = int(bits)
    if bits < 0:
        raise ValueError(f"reduce_flags takes non-negative bit sets, got {bits}")
    _stats["flag_calls"] += 1
    if size == 1 or MPI is None:  # (tests stand in for several identical ranks without MPI)
        return bits
    import numpy as np

    buf = np.array([bits], dtype=np.int64)
    comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.BOR)
    return int(buf[0])


def bcast(obj, root=0):
    """Broadcast a picklable object from ``root``; every rank returns it."""
    _count("object")
    if size == 1:
        return obj
    return comm.bcast(obj, root=root)


def bcast_array(a, root=0):
    """Broadcast a numpy array from ``root`` in place.

    Every rank must pass an array of the same shape and dtype.
    """
    _count("buffer", getattr(a, "nbytes", 0))
    if size == 1:
        return a
    if not a.flags.c_contiguous:
        import numpy as np

        buf = np.ascontiguousarray(a)
        comm.Bcast(buf, root=root)
        a[...] = buf
    else:
        comm.Bcast(a, root=root)
    return a


def barrier():
    """Wait until every rank reaches this point."""
    if size > 1:
        comm.Barrier()


def gather(obj, root=0):
    """Gather one picklable object per rank: a list on ``root``, None elsewhere."""
    _count("object")
    if size == 1:
        return [obj]
    return comm.gather(obj, root=root)


def allgather(obj):
    """Gather one picklable object per rank; every rank gets the list."""
    _count("object")
    if size == 1:
        return [obj]
    return comm.allgather(obj)


def abort(code=1):
    """Stop all ranks with exit status ``code``.

    Under MPI this calls ``MPI_Abort`` (use it when one rank hit an error the
    others cannot know about, so they do not wait forever). In one process it
    raises ``SystemExit(code)`` so that cleanup still runs.
    """
    if size > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        comm.Abort(code)
    raise SystemExit(code)


#: seconds a rank other than 0 waits before it reports an error and aborts (see :func:`fail_all`)
ABORT_GRACE_S = 1.0


def fail_all(message, code=1):
    """Print ``message`` on stderr once for the whole job, then stop every rank.

    The command line's error boundary calls this for an error under MPI.
    ``MPI_Abort`` ends all ranks, also those waiting for this one in a
    collective call, so a failure never hangs the job; the exit status is
    ``code``. To print the message once, rank 0 reports and aborts at once
    while any other rank first waits ``ABORT_GRACE_S`` seconds (a little more
    for higher ranks): when every rank hit the error (a bad configuration, a
    read error the scan loader shares between the ranks, a diverged engine),
    rank 0's abort ends the others before they print; an error of one rank
    alone is reported by that rank after the wait. In one process: print and
    raise ``SystemExit(code)``.
    """
    if size > 1 and rank > 0:
        time.sleep(ABORT_GRACE_S + 0.05 * min(rank, 20))
    try:
        sys.stderr.write(str(message).rstrip("\n") + "\n")
    except (OSError, ValueError):  # stderr closed: still stop the job
        pass
    abort(code)


def block_range(n_items, rank=None, size=None):
    """Return the ``(start, stop)`` block of ``n_items`` owned by ``rank``.

    Items are split into ``size`` contiguous blocks whose lengths differ by at
    most one, the earlier ranks taking the extra items. With more ranks than
    items the last ranks get empty blocks (``start == stop``). ``rank`` and
    ``size`` default to this process's rank and the world size.
    """
    if rank is None:
        rank = globals()["rank"]
    if size is None:
        size = globals()["size"]
    n_items, rank, size = int(n_items), int(rank), int(size)
    if n_items < 0:
        raise ValueError(f"n_items must be >= 0, got {n_items}")
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    if not 0 <= rank < size:
        raise ValueError(f"rank must be in [0, {size}), got {rank}")
    base, extra = divmod(n_items, size)
    start = rank * base + min(rank, extra)
    stop = start + base + (1 if rank < extra else 0)
    return start, stop


def cpu_count():
    """Number of CPU cores this process may run on (respects affinity masks)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def fft_workers():
    """Threads for ``scipy.fft`` in this process.

    ``PTYCLI_FFT_WORKERS`` wins when set. Otherwise the cores this process may
    use, shared between the ranks on this node when the launcher did not
    pin each rank to its own cores.
    """
    env = os.environ.get("PTYCLI_FFT_WORKERS")
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            pass
    cores = cpu_count()
    total = os.cpu_count() or cores
    if cores < total:  # pinned by the launcher: these cores are ours
        return max(1, cores)
    local = _env_int(_LOCAL_SIZE_VARS) or size
    return max(1, cores // max(1, local))


def launch_problem():
    """A one-line warning when ``mpirun -n N`` (N > 1) started a serial process.

    Each of the N processes would then run the whole job on its own. Returns
    None when everything is consistent.
    """
    if not (launcher_size and launcher_size > 1 and size == 1):
        return None
    if _disabled_reason == "mpi4py is not installed":
        fix = "install MPI support with: pip install 'ptycli[mpi]'"
    elif _disabled_reason == "disabled by PTYCLI_MPI":
        fix = "unset PTYCLI_MPI to use MPI"
    else:
        fix = "check that mpi4py was built for the MPI library of this mpirun"
    reason = _disabled_reason or "mpi4py sees a single process"
    return (
        f"started by an MPI launcher as one of {launcher_size} processes, but MPI "
        f"is not in use ({reason}); every process runs the whole job; {fix}"
    )


def describe():
    """A dict describing the MPI setup (for ``ptycli info`` and provenance)."""
    info = {
        "mpi_enabled": MPIenabled,
        "mpi_size": size,
        "mpi_rank": rank,
        "mpi_library": None,
        "mpi_disabled_reason": _disabled_reason,
    }
    if MPI is not None:
        try:
            first = MPI.Get_library_version().strip().splitlines()[0]
            info["mpi_library"] = first.split(",")[0].strip()
        except Exception:  # pragma: no cover - very old mpi4py
            info["mpi_library"] = "unknown"
    return info
