"""Fused compiled kernels (numba) for the hot passes of the engines.

The numpy implementation of an engine step makes one pass over the exit
waves per elementwise operation (gather, multiply, subtract, abs, sqrt ...).
These kernels do each step's arithmetic in a single pass per frame, in the
model's precision, with the per-frame sums accumulated in float64, and run
their loops on the threads given to the FFT (:func:`ptycli.core.geometry.get_workers`).
Engines use them as their ``kernels`` parameter says (:func:`use_compiled`:
by default when numba is importable and the job is large enough to repay the
first compilation); otherwise they take their numpy path, which computes the
same quantities (tests compare both).

Addressing is that of :class:`~ptycli.engines.addressing.PodGroup`: pod ``i``
uses probe row ``pl[i]``, object row ``ol[i]`` and the object window with
top-left pixel ``(oy[i], ox[i])``.

Races
-----
Pods overlap on the object, so sums into an object-shaped accumulator are
split by *object row bands* (:func:`row_bands`): each thread owns a range of
object rows and adds the rows of every window that fall inside it; no two
threads write the same element, and no per-thread copies of the object are
needed. Sums into probe-shaped accumulators use one small accumulator per
thread, added at the end.

Kernels
-------
:func:`projection_input`
    ``t = (1 + alpha) P O - alpha pre psi`` for a pod block.
:func:`modulus_constraint`
    Per frame: model amplitude over the modes, Fourier and photon errors,
    the power-bound factor, and the relaxed modulus correction in place.
:func:`projection_update`
    ``psi += conj(pre) delta`` with ``delta = beta (G - P O) + (1 - beta)(P O - pre psi)``,
    the exit-change sum and optionally the object numerator ``sum conj(P) psi``.
:func:`object_sums`, :func:`probe_sums`
    Overlap-update numerators and denominators.

First use compiles the kernels (a few seconds; cached on disk by numba
afterwards).
"""

import os

import numpy as np

__all__ = ["available", "use_compiled", "AUTO_MIN_PIXELS", "threads", "row_bands", "BandCache", "projection_input", "modulus_constraint",
           "projection_update", "object_sums", "probe_sums"]

# numba's OpenMP threads would otherwise spin after each parallel loop and slow down the FFT threads that
# run next on the same cores (measured: DM 30 % slower on 2 cores); a user's explicit setting wins
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

try:  # numba is optional: the engines fall back to numpy
    import numba
    from numba import njit, prange
    _HAVE_NUMBA = True
except Exception:  # pragma: no cover - depends on the installation
    numba = None
    _HAVE_NUMBA = False

    def njit(*args, **kwargs):
        def wrap(f):
            return f
        return wrap

    prange = range

#: numpy's error model: a division by zero gives inf/nan instead of a per-division check that
#: blocks vectorisation (the engines test for NaN/Inf after every iteration)
_JIT = dict(parallel=True, fastmath=True, cache=True, nogil=True, error_model="numpy")
#: row helpers: inlined into the kernels (a called helper with array slices does not vectorise)
_INLINE = dict(fastmath=True, nogil=True, cache=True, inline="always", error_model="numpy")
_TINY = 1e-12


#: ``kernels: auto`` compiles the kernels for jobs with at least this many exit-wave pixels per process
#: (below it, numpy is about as fast and the first compilation, 5-20 s, would not pay).
AUTO_MIN_PIXELS = 2 ** 22


def available():
    """True when numba is importable."""
    return _HAVE_NUMBA


def use_compiled(choice, n_pixels, precision_ok=True):
    """Whether an engine runs its compiled kernels.

    Parameters
    ----------
    choice : {'auto', 'compiled', 'numpy'}
        The engine's ``kernels`` parameter; the environment variable
        ``PTYCLI_KERNELS`` (same values) overrides it.
    n_pixels : int
        Exit-wave pixels of this process (pods x frame pixels).
    precision_ok : bool
        False when the model's precision has no compiled variant (double).

    Raises
    ------
    EngineError
        ``compiled`` was asked for but numba is not installed.
    """
    from ..errors import EngineError

    choice = os.environ.get("PTYCLI_KERNELS", "").strip().lower() or str(choice).lower()
    if choice == "numpy":
        return False
    if choice == "compiled":
        if not _HAVE_NUMBA:
            raise EngineError("kernels: compiled needs numba, which is not installed",
                              hint="pip install numba, or set kernels: auto")
        return precision_ok
    return _HAVE_NUMBA and precision_ok and n_pixels >= AUTO_MIN_PIXELS


def threads():
    """Set numba's thread count to the FFT workers and return it."""
    from ..core.geometry import get_workers

    n = max(1, min(int(get_workers()), numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(n)
    return n


def row_bands(oy, H, p0, p1, n_bands, n_rows):
    """Object-row boundaries ``(n_bands + 1,)`` that split the window rows of pods ``p0 .. p1-1`` evenly.

    Parameters
    ----------
    oy : ndarray int64
        Top row of each pod's object window.
    H : int
        Window height (pixels).
    p0, p1 : int
        Pod range.
    n_bands : int
        Number of bands (threads).
    n_rows : int
        Rows of the object storage.

    Returns
    -------
    ndarray int64
        Increasing boundaries, first 0 and last ``n_rows``; band ``t`` owns
        rows ``bounds[t] .. bounds[t + 1] - 1``.
    """
    cover = np.zeros(n_rows + 1, dtype=np.int64)
    np.add.at(cover, oy[p0:p1], 1)
    np.add.at(cover, np.minimum(oy[p0:p1] + H, n_rows), -1)
    rows = np.cumsum(cover[:-1])             # windows covering each object row
    total = np.cumsum(rows)
    bounds = np.empty(n_bands + 1, dtype=np.int64)
    bounds[0], bounds[-1] = 0, n_rows
    if total[-1] == 0:
        bounds[1:-1] = n_rows
        return bounds
    targets = total[-1] * np.arange(1, n_bands) / n_bands
    bounds[1:-1] = np.searchsorted(total, targets, side="left") + 1
    return np.maximum.accumulate(np.minimum(bounds, n_rows))


class BandCache:
    """:func:`row_bands` of pod ranges, computed once per range; :meth:`clear` when frames move."""

    def __init__(self, n_bands):
        self.n_bands = int(n_bands)
        self._cache = {}

    def get(self, g, p0, p1):
        """Row bands of pods ``p0 .. p1-1`` of :class:`~ptycli.engines.addressing.PodGroup` ``g``."""
        key = (id(g), p0, p1)
        b = self._cache.get(key)
        if b is None:
            b = self._cache[key] = row_bands(g.ob_y, g.shape[0], p0, p1, self.n_bands, g.obj.data.shape[-2])
        return b

    def clear(self):
        self._cache.clear()


@njit(**_JIT)
def projection_input(out, psi, ob, pt, pre, use_pre, ol, oy, ox, pl, p0, a1, ma):
    """``out[k] = a1 * ob_window(i) * pt[pl[i]] + ma * pre * psi[k]`` for pods ``i = p0 + k``.

    ``pt`` is the probe in the working frame (``pre * probe`` in the far
    field), ``pre`` the propagator's sample-plane factor (ignored unless
    ``use_pre``), ``a1 = 1 + alpha``, ``ma = -alpha``.
    """
    npb, H, W = out.shape
    for k in prange(npb):
        i = p0 + k
        lo, y0, x0, q = ol[i], oy[i], ox[i], pl[i]
        for y in range(H):
            orow = ob[lo, y0 + y, x0:x0 + W]
            prow = pt[q, y]
            srow = psi[k, y]
            trow = out[k, y]
            if use_pre:
                crow = pre[y]
                for x in range(W):
                    trow[x] = a1 * (orow[x] * prow[x]) + ma * (srow[x] * crow[x])
            else:
                for x in range(W):
                    trow[x] = a1 * (orow[x] * prow[x]) + ma * srow[x]


@njit(**_JIT)
def modulus_constraint(F, pod_start, diff, drows, mask, mrows, use_mask, pbound, apply,
                       ferr, photon, valid, renorm):
    """Errors and the power-bound relaxed modulus correction of a frame block, in place.

    Parameters
    ----------
    F : complex (pods, H, W)
        Fourier-space waves of the block; frame ``j`` owns pods
        ``pod_start[j] .. pod_start[j + 1] - 1`` (its modes, summed incoherently).
    diff : real (rows, H, W)
        Measured intensities; frame ``j`` is row ``drows[j]``.
    mask : real (rows, H, W)
        Valid pixels (0/1), row ``mrows[j]``; ignored unless ``use_mask``.
    pbound : float
        Power bound (mean squared amplitude deviation); <= 0: plain projection.
    apply : bool
        Apply the correction (False: errors only).
    ferr, photon, valid, renorm : float64 (frames,)
        Outputs: ``sum mask (|F| - sqrt(I))^2``, ``sum mask (|F|^2 - I)^2 / (I + 1)``,
        ``sum mask`` and the factor ``r`` (1: inside the bound, unchanged).
    """
    nf = ferr.shape[0]
    H, W = F.shape[1], F.shape[2]
    zero = np.float32(0.0)
    one = np.float32(1.0)
    tiny = np.float32(_TINY)
    for j in prange(nf):
        a, b = pod_start[j], pod_start[j + 1]
        a2 = np.empty(W, dtype=np.float32)
        q = np.empty((H, W), dtype=np.float32)  # mask * (|F| - sqrt(I)) / |F|, for the correction
        e = 0.0
        ph = 0.0
        v = 0.0
        for y in range(H):
            _row_power(F, a, b, y, a2)
            irow = diff[drows[j], y]
            qrow = q[y]
            er = zero
            pr = zero
            vr = zero
            if use_mask:
                mrow = mask[mrows[j], y]
                for x in range(W):
                    inten = max(irow[x], zero)
                    m = mrow[x]
                    af = np.sqrt(a2[x])
                    d = (af - np.sqrt(inten)) * m
                    t = (a2[x] - inten) * m
                    er += d * d
                    pr += t * t / (inten + one)
                    vr += m
                    qrow[x] = d / max(af, tiny)
            else:
                for x in range(W):
                    inten = max(irow[x], zero)
                    af = np.sqrt(a2[x])
                    d = af - np.sqrt(inten)
                    t = a2[x] - inten
                    er += d * d
                    pr += t * t / (inten + one)
                    qrow[x] = d / max(af, tiny)
                vr = np.float32(W)
            e += er
            ph += pr
            v += vr
        ferr[j] = e
        photon[j] = ph
        valid[j] = v
        mean = e / max(v, 1.0)
        if pbound <= 0.0:
            r = 0.0
        elif mean <= pbound:
            r = 1.0
        else:
            r = np.sqrt(pbound / mean)
        renorm[j] = r
        if not apply or r == 1.0:
            continue
        k = np.float32(r - 1.0)
        for y in range(H):
            qrow = q[y]
            for x in range(W):
                qrow[x] = one + k * qrow[x]
            for p in range(a, b):
                frow = F[p, y]
                for x in range(W):
                    frow[x] = frow[x] * qrow[x]


@njit(**_INLINE)
def _row_power(F, a, b, y, out):
    """``out[x] = sum_{p = a .. b-1} |F[p, y, x]|^2``."""
    W = out.shape[0]
    frow = F[a, y]
    for x in range(W):
        f = frow[x]
        out[x] = f.real * f.real + f.imag * f.imag
    for p in range(a + 1, b):
        frow = F[p, y]
        for x in range(W):
            f = frow[x]
            out[x] += f.real * f.real + f.imag * f.imag


@njit(**_JIT)
def projection_update(psi, G, ob, pt, pre, post, use_pre, ol, oy, ox, pl, p0, beta, bands,
                      fuse, num, prc, change):
    """New exit waves of a pod block; optionally the object numerator.

    With ``pw = ob_window * pt`` and ``G`` the projected waves (working
    frame), ``delta = beta (G - pw) + (1 - beta)(pw - pre psi)``;
    ``psi += post * delta`` (``post = conj(pre)``; plain ``delta`` unless
    ``use_pre``). ``change[t]`` receives the ``sum |delta|^2`` of band
    ``t``; when ``fuse``, ``num[ol, window] += prc[pl] * psi_new``. The work
    is split by the object row bands ``bands`` (see :func:`row_bands`).
    """
    npb, H, W = psi.shape
    nb = bands.shape[0] - 1
    one = beta == 1.0
    bc = np.float32(beta)
    ib = np.float32(1.0 - beta)
    for t in prange(nb):
        r0, r1 = bands[t], bands[t + 1]
        d = np.empty(W, dtype=psi.dtype)
        ch = 0.0
        for k in range(npb):
            i = p0 + k
            lo, y0, x0, q = ol[i], oy[i], ox[i], pl[i]
            for y in range(max(0, r0 - y0), min(H, r1 - y0)):
                orow = ob[lo, y0 + y, x0:x0 + W]
                prow = pt[q, y]
                grow = G[k, y]
                srow = psi[k, y]
                nrow = num[lo, y0 + y, x0:x0 + W]
                crow = prc[q, y]
                cr = np.float32(0.0)
                if use_pre and fuse:  # the common cases (far field) in one loop
                    qrow = post[y]
                    if one:
                        for x in range(W):
                            dx = grow[x] - orow[x] * prow[x]
                            cr += dx.real * dx.real + dx.imag * dx.imag
                            new = srow[x] + dx * qrow[x]
                            srow[x] = new
                            nrow[x] += crow[x] * new
                    else:
                        rrow = pre[y]
                        for x in range(W):
                            pw = orow[x] * prow[x]
                            dx = bc * (grow[x] - pw) + ib * (pw - srow[x] * rrow[x])
                            cr += dx.real * dx.real + dx.imag * dx.imag
                            new = srow[x] + dx * qrow[x]
                            srow[x] = new
                            nrow[x] += crow[x] * new
                    ch += cr
                    continue
                for x in range(W):
                    pw = orow[x] * prow[x]
                    if one:
                        dx = grow[x] - pw
                    else:
                        s = srow[x] * pre[y, x] if use_pre else srow[x]
                        dx = bc * (grow[x] - pw) + ib * (pw - s)
                    cr += dx.real * dx.real + dx.imag * dx.imag
                    d[x] = dx
                ch += cr
                if use_pre:
                    qrow = post[y]
                    for x in range(W):
                        srow[x] += d[x] * qrow[x]
                else:
                    for x in range(W):
                        srow[x] += d[x]
                if fuse:
                    for x in range(W):
                        nrow[x] += crow[x] * srow[x]
        change[t] = ch


@njit(**_JIT)
def object_sums(num, den, want_num, want_den, psi, prc, p2, ol, oy, ox, pl, p0, bands):
    """Object-update sums over pods ``p0 .. p0 + len(psi) - 1``, split by row bands.

    ``num[ol, window] += prc[pl] * psi`` (``prc = conj(probe)``) when
    ``want_num``; ``den[ol, window] += p2[pl]`` (``p2 = |probe|^2``) when
    ``want_den``.
    """
    npb, H, W = psi.shape
    nb = bands.shape[0] - 1
    for t in prange(nb):
        r0, r1 = bands[t], bands[t + 1]
        for k in range(npb):
            i = p0 + k
            lo, y0, x0, q = ol[i], oy[i], ox[i], pl[i]
            for y in range(max(0, r0 - y0), min(H, r1 - y0)):
                if want_num:
                    nrow = num[lo, y0 + y, x0:x0 + W]
                    crow = prc[q, y]
                    srow = psi[k, y]
                    for x in range(W):
                        nrow[x] += crow[x] * srow[x]
                if want_den:
                    drow = den[lo, y0 + y, x0:x0 + W]
                    prow = p2[q, y]
                    for x in range(W):
                        drow[x] += prow[x]


@njit(**_JIT)
def probe_sums(num_t, den_t, want_den, psi, ob, ol, oy, ox, pl, p0):
    """Probe-update sums into per-thread accumulators ``num_t``, ``den_t`` (threads, rows, H, W).

    ``num_t[t, pl] += conj(ob_window) * psi`` and, when ``want_den``,
    ``den_t[t, pl] += |ob_window|^2``; the caller adds the thread rows. The
    accumulators are not cleared here.
    """
    npb, H, W = psi.shape
    nt = num_t.shape[0]
    chunk = (npb + nt - 1) // nt
    for t in prange(nt):
        for k in range(t * chunk, min(npb, (t + 1) * chunk)):
            i = p0 + k
            lo, y0, x0, q = ol[i], oy[i], ox[i], pl[i]
            for y in range(H):
                orow = ob[lo, y0 + y, x0:x0 + W]
                srow = psi[k, y]
                nrow = num_t[t, q, y]
                for x in range(W):
                    nrow[x] += np.conj(orow[x]) * srow[x]
                if want_den:
                    drow = den_t[t, q, y]
                    for x in range(W):
                        o = orow[x]
                        drow[x] += o.real * o.real + o.imag * o.imag
