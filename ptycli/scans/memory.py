"""Memory estimates: refuse, before allocating, a job this machine cannot hold.

:func:`available_memory` reads what the machine (and its cgroup) offers;
:func:`check_memory` compares an estimate with it; :func:`frames_memory` is the
estimate of a loader's frames (:meth:`ptycli.scans.base.ScanLoader.check`).
"""

import os

import numpy as np

from ..errors import ConfigError, DataError

__all__ = ["available_memory", "check_memory", "frames_memory"]


def available_memory():
    """Memory this process may use: ``(available, total)`` in bytes.

    ``MemAvailable`` and ``MemTotal`` of ``/proc/meminfo`` (the physical
    memory from ``os.sysconf`` elsewhere, available = total), each capped by a
    cgroup v2 limit (``/sys/fs/cgroup/memory.max``) when one is set. Unknown
    values give 1 TB, so that nothing is refused for want of information.
    """
    total = available = None
    try:
        with open("/proc/meminfo", "r", encoding="ascii", errors="replace") as fh:
            for line in fh:
                key, _, rest = line.partition(":")
                if key in ("MemTotal", "MemAvailable"):
                    value = float(rest.split()[0]) * 1024.0
                    if key == "MemTotal":
                        total = value
                    else:
                        available = value
    except (OSError, ValueError, IndexError):
        pass
    if total is None:
        try:
            total = float(os.sysconf("SC_PAGE_SIZE")) * float(os.sysconf("SC_PHYS_PAGES"))
        except (AttributeError, ValueError, OSError):
            total = 1e12
    if available is None:
        available = total
    try:
        with open("/sys/fs/cgroup/memory.max", "r", encoding="ascii") as fh:
            limit = fh.read().strip()
        if limit.isdigit():
            total = min(total, float(limit))
            available = min(available, total)
    except OSError:
        pass
    return available, total


def check_memory(need, what, hint, error=ConfigError, memory=None):
    """Refuse, before allocating, a job that needs more memory than this machine has available.

    Parameters
    ----------
    need : float
        Bytes the job would allocate (an estimate).
    what : str
        What needs it, starting the message (e.g. ``'scans.MF.data: 1e9 frames of 128x128'``).
    hint : str
        The fix.
    error : type
        Exception class raised (ConfigError: the parameters ask for it; DataError: the input does).
    memory : (float, float), optional
        ``(available, total)`` bytes, as measured by the caller; default
        :func:`available_memory`.

    Raises
    ------
    PtycliError
        One line with what it would need and what there is (exit code 2).
    """
    available, total = available_memory() if memory is None else memory
    if not need <= available:  # also NaN/inf estimates
        kwargs = {"validation": True} if error is DataError else {}
        raise error("%s would need %.3g GB of memory; this machine has %.3g GB available (%.3g GB in all)"
                    % (what, need / 1e9, available / 1e9, total / 1e9), hint=hint, **kwargs)


def frames_memory(ntot, nproc, raw_shape, target, rebin, chunk):
    """Bytes one process needs to read and prepare its share of ``ntot`` frames.

    Its frames as read (float32 + mask, all held while an 'auto' centre is
    measured) and as prepared, plus one chunk of ``chunk`` frames being read,
    converted and cropped.

    Parameters
    ----------
    ntot : int
        Frames over all processes.
    nproc : int
        Processes sharing them.
    raw_shape, target : tuple
        Raw frame shape; crop/pad shape before rebinning.
    rebin : int
        Rebinning factor.
    chunk : int
        Frames read per call.
    """
    raw_px = float(np.prod(np.asarray(raw_shape, dtype=np.float64)))
    out_px = float(np.prod(np.asarray(target, dtype=np.float64))) / rebin ** 2
    return 5.0 * np.ceil(ntot / max(nproc, 1)) * (raw_px + out_px) \
        + chunk * (16.0 * raw_px + 5.0 * out_px * rebin ** 2)
