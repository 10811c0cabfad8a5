"""Unitary 2D FFTs over the last two axes, in place, with the fastest library on the machine.

Every transform of the engines and propagators goes through :func:`fft2_inplace`
and :func:`ifft2_inplace` (``norm='ortho'``: ``sum |x|^2`` is kept). Two
libraries sit behind them:

``fftw``
    FFTW through :mod:`pyfftw` (a dependency of ptycli; used when it imports).
    A one-thread plan is made once per (frame stack shape, dtype, direction)
    with ``FFTW_MEASURE`` and kept for the process; every thread
    gets its own plan object from the process's wisdom (the same algorithm,
    so results do not depend on which thread transforms a block). Wisdom is
    saved to disk after each new plan (:func:`wisdom_path`) and loaded at
    start, so later runs skip the planning (about 0.1-0.3 s per shape) and
    use the same algorithms (a resumed run reproduces the numbers of an
    uninterrupted one). Measured on the 2-core development machine
    (complex64, forward + inverse, one thread): 1.3-2.5x faster than
    pocketfft for 64^2 to 256^2 frames. Plans are made for stacks aligned to
    :data:`ALIGNMENT` bytes (unaligned plans lose most of the gain); an
    unaligned stack is transformed through an aligned copy (so buffers that
    are transformed often should come from :func:`empty`), which also keeps
    the numbers independent of where an array lies in memory. Long stacks
    are transformed in chunks of :data:`MAX_CHUNK` frames and one of the
    rest (:func:`_chunks`: at most 16 plans per frame shape, in practice
    one or two: the engines' frame blocks have one or two sizes), shared
    out to ``workers`` threads; the chunks do not depend on the thread
    count, so neither do the numbers.
``pocketfft``
    :mod:`scipy.fft`'s pocketfft (its ``c2c`` entry point when that matches
    ``scipy.fft.fft2`` bit for bit: it saves about 10 us per call).

``PTYCLI_FFT`` (``fftw``, ``pocketfft``, ``auto``) or :func:`set_backend`
chooses; ``auto`` (the default) takes FFTW when :mod:`pyfftw` imports.
The thread count of a call is ``workers`` (default :func:`get_workers`).

Functions
---------
:func:`fft2_inplace`, :func:`ifft2_inplace`
    The transforms (overwrite and return their argument).
:func:`fft2_deferred`, :func:`ifft2_deferred`, :func:`deferred_factor`
    The same, the unitary scaling left to the caller where that saves a pass.
:func:`bound_pair`
    Transforms bound to one buffer, for per-frame loops.
:func:`empty`, :func:`zeros`
    Arrays aligned for the SIMD transforms.
:func:`backend`, :func:`set_backend`, :func:`available_backends`
    The library in use.
:func:`get_workers`, :func:`set_workers`
    Threads per transform call.
"""

import os
import pickle
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .. import parallel

__all__ = ["fft2_inplace", "ifft2_inplace", "fft2_deferred", "ifft2_deferred", "bound_pair", "empty", "zeros", "backend", "set_backend", "available_backends",
           "get_workers", "set_workers", "wisdom_path", "ALIGNMENT"]

#: Byte alignment of :func:`empty` arrays (at least FFTW's SIMD alignment, 32 with AVX2).
ALIGNMENT = 64

_PYFFTW = []  # [module or None], imported at the first transform (``import ptycli`` stays light)


def _fftw_module():
    """:mod:`pyfftw`, or None when it does not import."""
    if not _PYFFTW:
        # pyfftw's package import builds its scipy interfaces when it can import scipy.fftpack, which loads
        # scipy.fft and its shared libraries (about 10 MB of resident memory that no ptycli pass uses): a None
        # entry in sys.modules makes that import fail for the moment of pyfftw's own import
        hide = "scipy.fftpack" not in sys.modules
        if hide:
            sys.modules["scipy.fftpack"] = None
        try:  # optional at run time: pocketfft is the fallback
            import pyfftw
        except Exception:  # noqa: BLE001 - any import failure means: not available
            pyfftw = None
        finally:
            if hide and sys.modules.get("scipy.fftpack", 0) is None:
                del sys.modules["scipy.fftpack"]
        _PYFFTW.append(pyfftw)
    return _PYFFTW[0]

BACKENDS = ("fftw", "pocketfft")

_WORKERS = None
_BACKEND = None


# --------------------------------------------------------------------------
# threads and library
# --------------------------------------------------------------------------

def get_workers():
    """Threads per transform call.

    :func:`set_workers` wins; otherwise :func:`ptycli.parallel.fft_workers`
    decides (``PTYCLI_FFT_WORKERS``, else the cores of this process shared
    between the MPI ranks on its node).
    """
    if _WORKERS is not None:
        return _WORKERS
    return parallel.fft_workers()


def set_workers(n=None):
    """Set the threads per transform call.

    Parameters
    ----------
    n : int or None
        Number of threads (>= 1); ``None`` restores the automatic choice.
    """
    global _WORKERS
    if n is not None:
        n = int(n)
        if n < 1:
            raise ValueError("workers must be >= 1, got %d" % n)
    _WORKERS = n


def available_backends():
    """The FFT libraries that work here, fastest first."""
    return BACKENDS if _fftw_module() is not None else BACKENDS[1:]


def backend():
    """The FFT library in use: ``'fftw'`` or ``'pocketfft'``."""
    if _BACKEND is not None:
        return _BACKEND
    wanted = os.environ.get("PTYCLI_FFT", "auto").strip().lower() or "auto"
    if wanted == "pocketfft" or _fftw_module() is None:
        return "pocketfft"
    return "fftw"


def set_backend(name=None):
    """Choose the FFT library (``'fftw'``, ``'pocketfft'``; ``None``: ``PTYCLI_FFT`` or the fastest).

    Raises
    ------
    ValueError
        For an unknown name, or ``'fftw'`` when :mod:`pyfftw` does not import.
    """
    global _BACKEND
    if name is not None:
        name = str(name).lower()
        if name not in BACKENDS:
            raise ValueError("FFT backend must be one of %s, got %r" % (", ".join(BACKENDS), name))
        if name not in available_backends():
            raise ValueError("FFT backend 'fftw' needs pyfftw; install it with: pip install pyfftw")
    _BACKEND = name


def empty(shape, dtype=np.complex64):
    """An uninitialised array of ``shape`` and ``dtype`` whose data start on an :data:`ALIGNMENT` boundary."""
    dtype = np.dtype(dtype)
    n = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(n + ALIGNMENT, dtype=np.uint8)
    start = (-raw.ctypes.data) % ALIGNMENT
    return raw[start:start + n].view(dtype).reshape(shape)


def zeros(shape, dtype=np.complex64):
    """Like :func:`empty`, filled with zeros."""
    out = empty(shape, dtype)
    out.fill(0)
    return out


# --------------------------------------------------------------------------
# pocketfft
# --------------------------------------------------------------------------

def _pocketfft_pair():
    """``(forward, inverse)`` in-place unitary transforms ``f(x, workers)`` of :mod:`scipy.fft`."""
    import scipy.fft as sp_fft

    def fw_public(x, workers):
        return sp_fft.fft2(x, axes=(-2, -1), norm="ortho", workers=workers, overwrite_x=True)

    def bw_public(x, workers):
        return sp_fft.ifft2(x, axes=(-2, -1), norm="ortho", workers=workers, overwrite_x=True)

    try:
        from scipy.fft._pocketfft import pypocketfft as _pp

        c2c = _pp.c2c

        def fw_direct(x, workers):
            n = x.ndim
            return c2c(x, (n - 2, n - 1), True, 1, x, workers)

        def bw_direct(x, workers):
            n = x.ndim
            return c2c(x, (n - 2, n - 1), False, 1, x, workers)

        rng = np.random.default_rng(5)
        for dt in (np.complex64, np.complex128):
            a = (rng.standard_normal((2, 6, 10)) + 1j * rng.standard_normal((2, 6, 10))).astype(dt)
            if not (np.array_equal(fw_direct(a.copy(), 1), fw_public(a.copy(), 1))
                    and np.array_equal(bw_direct(a.copy(), 1), bw_public(a.copy(), 1))):
                raise ValueError("pocketfft c2c differs from scipy.fft")
        return fw_direct, bw_direct
    except Exception:  # noqa: BLE001 - private API moved or changed: the public functions are always right
        return fw_public, bw_public


_POCKET = []  # (forward, inverse), made at the first transform


def _pocketfft(x, forward, workers):
    if not _POCKET:
        _POCKET.extend(_pocketfft_pair())
    return _POCKET[0 if forward else 1](x, workers)


# --------------------------------------------------------------------------
# FFTW
# --------------------------------------------------------------------------

_PLAN_LOCK = threading.Lock()
_LOCAL = threading.local()
_PLANNED = set()  # plan keys made in this process (wisdom holds them)
_WISDOM_LOADED = False


def wisdom_path():
    """File of the saved FFTW wisdom: ``$PTYCLI_CACHE_DIR`` or ``$XDG_CACHE_HOME/ptycli`` (``~/.cache/ptycli``)."""
    base = os.environ.get("PTYCLI_CACHE_DIR")
    if not base:
        base = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
                            "ptycli")
    return os.path.join(base, "fftw-wisdom-%s.pickle" % getattr(_fftw_module(), "__version__", "none"))


def _load_wisdom():
    global _WISDOM_LOADED
    _WISDOM_LOADED = True
    try:
        with open(wisdom_path(), "rb") as f:
            wisdom = pickle.load(f)
        if isinstance(wisdom, tuple) and all(isinstance(w, bytes) for w in wisdom):
            _fftw_module().import_wisdom(wisdom)
    except Exception:  # noqa: BLE001 - no or unreadable wisdom: plan afresh
        pass


def _save_wisdom():
    """Write the process's wisdom next to the old file and rename it into place (never a torn file)."""
    path = wisdom_path()
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".fftw-wisdom-", dir=os.path.dirname(path))
        try:
            with os.fdopen(fd, "wb") as f:
                pickle.dump(_fftw_module().export_wisdom(), f)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except Exception:  # noqa: BLE001 - a read-only home only costs the planning next time
        pass


#: Largest stack one FFTW plan transforms; longer stacks go in chunks.
MAX_CHUNK = 16


def _chunks(n):
    """Split ``n`` frames into chunks of :data:`MAX_CHUNK` and one chunk of the rest.

    One plan for the rest, not the rest in powers of two: a block of 15
    frames of 128^2 took 42 us per frame and forward transform as one plan
    against 52 as chunks of 8, 4, 2 and 1 (complex64, one thread), with the
    same numbers bit for bit (FFTW's plans of one frame shape for different
    stack lengths ran the same algorithm per frame on the development
    machine, 64^2 to 256^2; they need not everywhere, and the wisdom keeps
    each machine's choice fixed).
    """
    sizes = [MAX_CHUNK] * (n // MAX_CHUNK)
    if n % MAX_CHUNK:
        sizes.append(n % MAX_CHUNK)
    return sizes


def _new_plan(shape, dtype, forward, scratch=None):
    """A new one-thread FFTW plan for aligned C-contiguous stacks ``shape`` (call with ``_PLAN_LOCK`` held).

    Planning with ``FFTW_MEASURE`` overwrites its arrays, so it plans on
    ``scratch`` of the same layout (default: a new one); a shape planned
    before in this process (or in the saved wisdom) gets the same algorithm
    again without measuring.
    """
    if not _WISDOM_LOADED:
        _load_wisdom()
    if scratch is None:
        scratch = empty(shape, dtype)
    plan = _fftw_module().FFTW(scratch, scratch, axes=(-2, -1),
                               direction="FFTW_FORWARD" if forward else "FFTW_BACKWARD",
                               flags=("FFTW_MEASURE",), threads=1)
    key = (shape, np.dtype(dtype).str, forward)
    if key not in _PLANNED:
        _PLANNED.add(key)
        _save_wisdom()
    return plan


def _plan(shape, dtype, forward):
    """This thread's plan and aligned scratch for stacks ``shape`` (all threads' plans share one algorithm).

    The forward and inverse plans of a shape share one scratch array per thread.
    """
    key = (shape, np.dtype(dtype).str)
    plans = getattr(_LOCAL, "plans", None)
    if plans is None:
        plans = _LOCAL.plans = {}
    entry = plans.get(key)
    if entry is None:
        entry = plans[key] = (empty(shape, dtype), {})
    scratch, by_direction = entry
    plan = by_direction.get(forward)
    if plan is None:
        with _PLAN_LOCK:
            plan = by_direction[forward] = _new_plan(shape, dtype, forward, scratch)
    return plan, scratch


def _transform_chunk(part, forward):
    """One chunk in place with this thread's plan (through aligned scratch when ``part`` is not aligned).

    The plan is pointed back at its scratch afterwards, so that it does not keep
    the caller's (possibly temporary) array alive.
    """
    plan, scratch = _plan(part.shape, part.dtype, forward)
    if part.ctypes.data % ALIGNMENT == 0:
        plan.update_arrays(part, part)
        plan.execute()
        plan.update_arrays(scratch, scratch)
    else:
        scratch[...] = part
        plan.update_arrays(scratch, scratch)
        plan.execute()
        part[...] = scratch


_POOL = [None, 0]  # [ThreadPoolExecutor, its threads], made at the first call with workers > 1


def _pool(workers):
    if _POOL[1] != workers:
        if _POOL[0] is not None:
            _POOL[0].shutdown(wait=False)
        _POOL[0] = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ptycli-fft")
        _POOL[1] = workers
    return _POOL[0]


def _fftw(x, forward, workers, scale=True):
    """FFTW in place over the last two axes of ``x``, in chunks of :func:`_chunks` frames.

    With ``scale`` the result is multiplied by ``1 / sqrt(H W)`` (unitary);
    without, it is left unnormalised.

    Every plan is single-threaded: with ``workers > 1`` the chunks are shared
    out to a pool of ``workers`` threads (FFTW's own threads wait for each
    other at every step and slowed a DM run 8x on a loaded 2-core machine;
    chunks on a pool were also the fastest on an idle one). A chunk that does
    not start on an :data:`ALIGNMENT` boundary goes through an aligned scratch
    copy: SIMD and scalar algorithms round differently, and the numbers must
    depend neither on where an array lies nor on the thread count.
    """
    if x.dtype not in (np.complex64, np.complex128) or not x.flags.c_contiguous or x.ndim < 2 or x.size == 0:
        return _pocketfft(x, forward, workers)
    H, W = x.shape[-2:]
    stack = x.reshape(-1, H, W)
    parts = []
    start = 0
    for n in _chunks(stack.shape[0]):
        parts.append(stack[start:start + n])
        start += n
    workers = int(workers)
    if workers > 1 and len(parts) > 1:
        for future in [_pool(workers).submit(_transform_chunk, part, forward) for part in parts]:
            future.result()
    else:
        for part in parts:
            _transform_chunk(part, forward)
    if scale:
        x *= x.real.dtype.type(1.0 / np.sqrt(H * W))
    return x


def fft2_inplace(x, workers=None):
    """Unitary forward 2D FFT over the last two axes of the complex array ``x``, overwriting it; returns it."""
    w = get_workers() if workers is None else workers
    if backend() == "fftw":
        return _fftw(x, True, w)
    return _pocketfft(x, True, w)


def ifft2_inplace(x, workers=None):
    """Unitary inverse 2D FFT over the last two axes of the complex array ``x``, overwriting it; returns it."""
    w = get_workers() if workers is None else workers
    if backend() == "fftw":
        return _fftw(x, False, w)
    return _pocketfft(x, False, w)


def fft2_deferred(x, workers=None):
    """:func:`fft2_inplace` that may leave the unitary scaling to the caller: ``(result, factor still due)``.

    With FFTW the transform is left unnormalised and the factor is
    ``1 / sqrt(H W)`` in ``x``'s real precision: multiplying each real and
    imaginary part of the result by it gives the numbers of
    :func:`fft2_inplace` bit for bit (the scaling pass it saves is folded
    into a kernel that reads the result anyway, :mod:`ptycli.engines.fused`).
    With pocketfft (which scales inside the transform) the result is
    already unitary and the factor is 1.
    """
    return _deferred(x, True, get_workers() if workers is None else workers)


def ifft2_deferred(x, workers=None):
    """:func:`ifft2_inplace` that may leave the unitary scaling to the caller (see :func:`fft2_deferred`)."""
    return _deferred(x, False, get_workers() if workers is None else workers)


def _defers(x):
    """Whether the deferred transforms of ``x`` go to FFTW unscaled (else pocketfft, scaled)."""
    return backend() == "fftw" and x.dtype in (np.complex64, np.complex128) and x.flags.c_contiguous \
        and x.ndim >= 2 and x.size > 0


def deferred_factor(x):
    """The factor :func:`fft2_deferred` and :func:`ifft2_deferred` leave due on ``x``, without transforming.

    For a kernel that scales its input for the transform to come (ML's
    gradient waves: the factor goes into a per-pixel weight it multiplies
    anyway). ``1 / sqrt(H W)`` where the transform goes to FFTW, else 1.
    """
    if not _defers(x):
        return x.real.dtype.type(1.0)
    H, W = x.shape[-2:]
    return x.real.dtype.type(1.0 / np.sqrt(H * W))


def _deferred(x, forward, workers):
    """The transform of :func:`fft2_deferred`: FFTW without its scaling pass where :func:`_fftw` takes ``x``."""
    if not _defers(x):
        return _pocketfft(x, forward, workers), x.real.dtype.type(1.0)
    return _fftw(x, forward, workers, scale=False), deferred_factor(x)


def bound_pair(x, workers=1):
    """In-place ``(forward, inverse)`` transforms of the one array ``x``, as calls without arguments.

    For a buffer transformed again and again (the per-frame step of ePIE):
    FFTW plans bound to ``x`` once (no per-call checks), else the pocketfft
    calls. Both give the numbers of :func:`fft2_inplace`/:func:`ifft2_inplace`.
    """
    n = int(np.prod(x.shape[:-2], dtype=np.int64))
    fftw_ok = (backend() == "fftw" and x.dtype in (np.complex64, np.complex128) and x.flags.c_contiguous
               and x.ndim >= 2 and x.size > 0 and x.ctypes.data % ALIGNMENT == 0 and _chunks(n) == [n])
    if not fftw_ok:
        return (lambda: fft2_inplace(x, workers)), (lambda: ifft2_inplace(x, workers))
    H, W = x.shape[-2:]
    stack = x.reshape((n, H, W))
    scale = x.real.dtype.type(1.0 / np.sqrt(H * W))
    plans = []
    for forward in (True, False):
        with _PLAN_LOCK:
            plan = _new_plan((n, H, W), x.dtype, forward)
        plan.update_arrays(stack, stack)
        plans.append(plan.execute)
    fw_exec, bw_exec = plans

    def fw():
        fw_exec()
        x.__imul__(scale)
        return x

    def bw():
        bw_exec()
        x.__imul__(scale)
        return x

    return fw, bw
