"""Fused compiled kernels (numba) for the hot passes of the engines.

The numpy implementation of an engine step makes one pass over the exit
waves per elementwise operation (gather, multiply, subtract, abs, sqrt ...).
These kernels do each step's arithmetic in a single pass per frame, in the
model's precision, with the per-frame sums accumulated in float64.
Engines use them as their ``kernels`` parameter says (:func:`use_compiled`:
by default when numba is importable and the job is large enough to repay the
first compilation); otherwise they take their numpy path, which computes the
same quantities (tests compare both).

Addressing is that of :class:`~ptycli.engines.addressing.PodGroup`, passed
as one packed argument ``addr = (ol, oy, ox, pl)``
(:attr:`PodGroup.addresses <ptycli.engines.addressing.PodGroup>`): pod ``i``
uses probe row ``pl[i]``, object row ``ol[i]`` and the object window with
top-left pixel ``(oy[i], ox[i])``.

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
:func:`object_numerator`, :func:`object_den_rows`, :func:`probe_sums`
    Overlap-update numerators and denominators.
:func:`object_divide_rows`
    The object update of a band of rows: the numerator's slots folded, the
    divisor and the division in one sweep.

The kernels of ML are in :mod:`ptycli.engines.fused_ml`, those of ePIE/rPIE
in :mod:`ptycli.engines.fused_pie`. First use compiles the kernels (about 12
s each for the projection engines and ML on 2 cores; cached on disk by numba
afterwards).
"""

import os
import sys

import numpy as np

from .. import parallel
from ..errors import EngineError
from ..log import get_logger
from .threads import BlockPool  # noqa: F401  (the engines' thread pool; old import path)

__all__ = ["available", "use_compiled", "AUTO_MIN_PIXELS", "projection_input",
           "modulus_constraint", "projection_update", "object_numerator", "object_den_rows", "object_divide_rows", "probe_sums"]

try:  # numba is optional: the engines fall back to numpy
    import numba
    from numba import njit
    _HAVE_NUMBA = True
except Exception:  # pragma: no cover - depends on the installation
    numba = None
    _HAVE_NUMBA = False

    def njit(*args, **kwargs):
        def wrap(f):
            return f
        return wrap


#: serial kernels that release the GIL; numpy's error model: a division by zero gives inf/nan
#: instead of a per-division check that blocks vectorisation (engines test for NaN/Inf anyway)
_JIT = dict(fastmath=True, cache=True, nogil=True, error_model="numpy")
#: row helpers: inlined into the kernels (a called helper with array slices does not vectorise)
_INLINE = dict(fastmath=True, nogil=True, cache=True, inline="always", error_model="numpy")
_TINY = 1e-12


#: ``kernels: auto`` compiles the kernels for jobs with at least this many exit-wave pixels over all
#: processes (below, the first compilation would cost more than the kernels save in a typical run).
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
        Exit-wave pixels of this process (pods x frame pixels); ``auto``
        decides on their sum over all MPI processes (the job), so that
        every rank makes the same choice and ``mpirun -n 2`` on a large job
        keeps the compiled path (deciding per process switched it off).
    precision_ok : bool
        False when the model's precision has no compiled variant (double).

    Raises
    ------
    EngineError
        ``compiled`` was asked for but numba is not installed.
    """
    choice = os.environ.get("PTYCLI_KERNELS", "").strip().lower() or str(choice).lower()
    if choice == "numpy":
        return False
    if choice == "compiled":
        if not _HAVE_NUMBA:
            raise EngineError("kernels: compiled needs numba, which is not installed",
                              hint="pip install numba, or set kernels: auto")
        compiled = bool(precision_ok)
    else:
        job_pixels = parallel.allreduce_scalar(float(n_pixels)) if parallel.size > 1 else n_pixels
        compiled = bool(_HAVE_NUMBA and precision_ok and job_pixels >= AUTO_MIN_PIXELS)
    if compiled:
        _announce_compilation(_KERNEL_MODULES.get(sys._getframe(1).f_globals.get("__name__"), "fused"))
    return compiled


#: the kernels module each engine module compiles
_KERNEL_MODULES = {"ptycli.engines.projectional": "fused", "ptycli.engines.ml.engine": "fused_ml",
                   "ptycli.engines.stochastic": "fused_pie"}
_ANNOUNCED = set()


def kernel_cache_is_cold(module="fused"):
    """Whether numba has no on-disk cache of ``ptycli.engines.<module>``'s kernels yet (or a stale one).

    Cheap: looks for numba's index files (``<module>.*.nbi``) no older than the
    module's source, next to it (``__pycache__``) or under ``NUMBA_CACHE_DIR``.
    """
    import glob

    here = os.path.dirname(os.path.abspath(__file__))
    try:
        source_time = os.stat(os.path.join(here, module + ".py")).st_mtime
    except OSError:
        return False
    patterns = [os.path.join(here, "__pycache__", module + ".*.nbi")]
    if os.environ.get("NUMBA_CACHE_DIR"):
        patterns.append(os.path.join(os.environ["NUMBA_CACHE_DIR"], "**", module + ".*.nbi"))
    for pattern in patterns:
        for index in glob.iglob(pattern, recursive=True):
            try:
                if os.stat(index).st_mtime >= source_time:
                    return False
            except OSError:
                continue
    return True


def _announce_compilation(module):
    """Say once per process that the first large job compiles the kernels (a silent 20 s otherwise)."""
    if module in _ANNOUNCED:
        return
    _ANNOUNCED.add(module)
    if kernel_cache_is_cold(module):
        get_logger(__name__).info("compiling the kernels (first run only, about 20 s)")


@njit(**_JIT)
def projection_input(out, psi, ob, pt, pre, use_pre, addr, p0, a1, ma):
    """``out[k] = a1 * ob_window(i) * pt[pl[i]] + ma * pre * psi[k]`` for pods ``i = p0 + k``.

    ``pt`` is the probe in the working frame (``pre * probe`` in the far
    field), ``pre`` the propagator's sample-plane factor (ignored unless
    ``use_pre``), ``a1 = 1 + alpha``, ``ma = -alpha``.
    """
    ol, oy, ox, pl = addr
    npb, H, W = out.shape
    for k in range(npb):
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
                       ferr, photon, valid, renorm, bg, use_bg, bgsum, scale):
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
    bg : real (H, W)
        The incoherent background ``B`` (:mod:`ptycli.core.background`), added to
        the model intensity: ``|F|^2 = sum_modes |F_k|^2 + B`` (zeros without one).
    use_bg, bgsum : bool, float64 (H, W)
        With ``use_bg`` (and ``apply``), ``bgsum += mask * f^2`` per frame, ``f``
        the frame's modulus factor (1 inside the bound): the sums of the
        augmented projection's background update.
    scale : float
        The factor still due on ``F`` (the unitary scaling of an unnormalised
        FFT, :func:`ptycli.core.fft.fft2_deferred`; 1: none): the powers are
        ``scale^2 |F|^2``, and ``F`` is left unscaled (the correction multiplies
        it as it is), so the factor is still due on it afterwards: the caller
        passes it on to :func:`projection_update` with the inverse transform's.
        Folded into the arithmetic instead of a scaling pass over ``F``.
    """
    nf = ferr.shape[0]
    H, W = F.shape[1], F.shape[2]
    zero = np.float32(0.0)
    one = np.float32(1.0)
    tiny = np.float32(_TINY)
    s2 = np.float32(scale) * np.float32(scale)
    a2 = np.empty(W, dtype=np.float32)
    q = np.empty((H, W), dtype=np.float32)  # mask * (|F| - sqrt(I)) / |F|, for the correction
    for j in range(nf):
        a, b = pod_start[j], pod_start[j + 1]
        single = b == a + 1
        e = 0.0
        ph = 0.0
        v = 0.0
        for y in range(H):
            brow = bg[y]
            if not (single and not use_mask):
                _row_power(F, a, b, y, a2)
                for x in range(W):
                    a2[x] = a2[x] * s2 + brow[x]
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
            elif single:  # the common case in one loop
                frow = F[a, y]
                for x in range(W):
                    f = frow[x]
                    f2 = (f.real * f.real + f.imag * f.imag) * s2 + brow[x]
                    inten = max(irow[x], zero)
                    af = np.sqrt(f2)
                    d = af - np.sqrt(inten)
                    t = f2 - inten
                    er += d * d
                    pr += t * t / (inten + one)
                    qrow[x] = d / max(af, tiny)
                vr = np.float32(W)
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
        if use_bg and apply:
            kb = np.float32(r - 1.0)
            for y in range(H):
                qrow = q[y]
                srow = bgsum[y]
                if use_mask:
                    mrow = mask[mrows[j], y]
                    for x in range(W):
                        fm = one + kb * qrow[x]
                        srow[x] += mrow[x] * fm * fm
                else:
                    for x in range(W):
                        fm = one + kb * qrow[x]
                        srow[x] += fm * fm
        if not apply or r == 1.0:
            continue
        k = np.float32(r - 1.0)
        for y in range(H):
            qrow = q[y]
            if single:
                frow = F[a, y]
                for x in range(W):
                    frow[x] = frow[x] * (one + k * qrow[x])
                continue
            for x in range(W):
                qrow[x] = one + k * qrow[x]
            for p in range(a, b):
                frow = F[p, y]
                for x in range(W):
                    frow[x] = frow[x] * qrow[x]


@njit(**_INLINE)
def _scale_rows(Fv, a, b, y, scale):
    """``Fv[p, y] *= scale`` for ``p = a .. b-1`` (real views of complex rows: each part scaled)."""
    for p in range(a, b):
        row = Fv[p, y]
        for x in range(row.shape[0]):
            row[x] *= scale


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
def projection_update(psi, G, ob, pt, pre, post, use_pre, addr, p0, beta, fuse, num, prc, Gv, scale):
    """New exit waves of a pod block; optionally the object numerator. Returns ``sum |delta|^2``.

    With ``pw = ob_window * pt`` and ``G`` the projected waves (working
    frame), ``delta = beta (G - pw) + (1 - beta)(pw - pre psi)``;
    ``psi += post * delta`` (``post = conj(pre)``; plain ``delta`` unless
    ``use_pre``); when ``fuse``, ``num[ol, window] += prc[pl] * psi_new``.
    ``Gv`` is ``G`` seen as real numbers and ``scale`` the factor still due
    on ``G`` (that of the forward transform, left due by
    :func:`modulus_constraint`, times the inverse's; 1: none): folded into
    RAAR's coefficient, a scaling pass over each row of ``G`` in place (in
    L1) otherwise.

    The fused far-field cases (the hot path of DM and RAAR) run in loop
    nests of their own: a flag tested inside the row loop keeps the
    compiler from vectorising it.
    """
    if fuse and use_pre:
        if beta == 1.0:
            return _update_dm_far(psi, G, ob, pt, post, addr, p0, num, prc, Gv, scale)
        return _update_raar_far(psi, G, ob, pt, post, addr, p0, beta, num, prc, Gv, scale)
    return _update_general(psi, G, ob, pt, pre, post, use_pre, addr, p0, beta, fuse, num, prc, Gv, scale)


@njit(**_JIT)
def _update_dm_far(psi, G, ob, pt, post, addr, p0, num, prc, Gv, scale):
    """:func:`projection_update` for ``beta = 1``, ``use_pre`` and ``fuse``."""
    ol, oy, ox, pl = addr
    npb, H, W = psi.shape
    unit = np.float32(1.0)
    ch = 0.0
    for k in range(npb):
        i = p0 + k
        lo, y0, x0, q = ol[i], oy[i], ox[i], pl[i]
        for y in range(H):
            if scale != unit:  # a complex-by-real product in the loop below was slower than this pass in L1
                _scale_rows(Gv, k, k + 1, y, scale)
            orow = ob[lo, y0 + y, x0:x0 + W]
            prow = pt[q, y]
            grow = G[k, y]
            srow = psi[k, y]
            nrow = num[lo, y0 + y, x0:x0 + W]
            crow = prc[q, y]
            qrow = post[y]
            cr = np.float32(0.0)
            for x in range(W):
                dx = grow[x] - orow[x] * prow[x]
                cr += dx.real * dx.real + dx.imag * dx.imag
                new = srow[x] + dx * qrow[x]
                srow[x] = new
                nrow[x] += crow[x] * new
            ch += cr
    return ch


@njit(**_JIT)
def _update_raar_far(psi, G, ob, pt, post, addr, p0, beta, num, prc, Gv, scale):
    """:func:`projection_update` for ``use_pre`` and ``fuse`` (any ``beta``).

    With ``post * pre = 1`` the rule is ``psi_new = beta psi + post (beta G + (1 - 2 beta) pw)``:
    no multiply by ``pre``; the exit change is ``|psi_new - psi|^2`` (``|pre| = 1``).
    """
    ol, oy, ox, pl = addr
    npb, H, W = psi.shape
    bc = np.float32(beta) * np.float32(scale)  # the factor due on G folded in
    bm = np.float32(beta - 1.0)
    cw = np.float32(1.0 - 2.0 * beta)
    ch = 0.0
    for k in range(npb):
        i = p0 + k
        lo, y0, x0, q = ol[i], oy[i], ox[i], pl[i]
        for y in range(H):
            orow = ob[lo, y0 + y, x0:x0 + W]
            prow = pt[q, y]
            grow = G[k, y]
            srow = psi[k, y]
            nrow = num[lo, y0 + y, x0:x0 + W]
            crow = prc[q, y]
            qrow = post[y]
            cr = np.float32(0.0)
            for x in range(W):
                s = srow[x]
                dx = bm * s + qrow[x] * (bc * grow[x] + cw * (orow[x] * prow[x]))
                cr += dx.real * dx.real + dx.imag * dx.imag
                new = s + dx
                srow[x] = new
                nrow[x] += crow[x] * new
            ch += cr
    return ch


@njit(**_JIT)
def _update_general(psi, G, ob, pt, pre, post, use_pre, addr, p0, beta, fuse, num, prc, Gv, scale):
    """:func:`projection_update` for the other cases (near field, or no object numerator)."""
    ol, oy, ox, pl = addr
    npb, H, W = psi.shape
    one = beta == 1.0
    bc = np.float32(beta)
    ib = np.float32(1.0 - beta)
    d = np.empty(W, dtype=psi.dtype)
    unit = np.float32(1.0)
    ch = 0.0
    for k in range(npb):
        i = p0 + k
        lo, y0, x0, q = ol[i], oy[i], ox[i], pl[i]
        for y in range(H):
            if scale != unit:
                _scale_rows(Gv, k, k + 1, y, scale)
            orow = ob[lo, y0 + y, x0:x0 + W]
            prow = pt[q, y]
            grow = G[k, y]
            srow = psi[k, y]
            cr = np.float32(0.0)
            if one:
                for x in range(W):
                    dx = grow[x] - orow[x] * prow[x]
                    cr += dx.real * dx.real + dx.imag * dx.imag
                    d[x] = dx
            elif use_pre:
                rrow = pre[y]
                for x in range(W):
                    pw = orow[x] * prow[x]
                    dx = bc * (grow[x] - pw) + ib * (pw - srow[x] * rrow[x])
                    cr += dx.real * dx.real + dx.imag * dx.imag
                    d[x] = dx
            else:
                for x in range(W):
                    pw = orow[x] * prow[x]
                    dx = bc * (grow[x] - pw) + ib * (pw - srow[x])
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
                nrow = num[lo, y0 + y, x0:x0 + W]
                crow = prc[q, y]
                for x in range(W):
                    nrow[x] += crow[x] * srow[x]
    return ch


@njit(**_JIT)
def object_numerator(num, psi, prc, addr, p0):
    """``num[ol, window] += prc[pl] * psi`` over pods ``p0 .. p0 + len(psi) - 1`` (``prc = conj(probe)``)."""
    ol, oy, ox, pl = addr
    npb, H, W = psi.shape
    for k in range(npb):
        i = p0 + k
        lo, y0, x0, q = ol[i], oy[i], ox[i], pl[i]
        for y in range(H):
            nrow = num[lo, y0 + y, x0:x0 + W]
            crow = prc[q, y]
            srow = psi[k, y]
            for x in range(W):
                nrow[x] += crow[x] * srow[x]


@njit(**_JIT)
def object_den_rows(den, p2, addr, y_lo, y_hi):
    """``den[ol, window] += p2[pl]`` over all pods, restricted to object rows ``y_lo .. y_hi - 1``.

    The gather form of the object denominator ``sum |P|^2``: a thread that
    owns a band of object rows adds every pod's probe rows that fall in it,
    pod by pod, so the sums need no per-thread copies and do not depend on
    the number of threads.
    """
    ol, oy, ox, pl = addr
    H, W = p2.shape[1], p2.shape[2]
    for i in range(ol.shape[0]):
        y0 = oy[i]
        a = max(y0, y_lo)
        b = min(y0 + H, y_hi)
        lo, x0, q = ol[i], ox[i], pl[i]
        for y in range(a, b):
            drow = den[lo, y, x0:x0 + W]
            prow = p2[q, y - y0]
            for x in range(W):
                drow[x] += prow[x]


#: IEEE arithmetic in the order written (no fastmath): the numbers of the numpy passes it replaces
_EXACT = dict(cache=True, nogil=True, error_model="numpy")


@njit(**_EXACT)
def object_divide_rows(parts, den, prior, out, y_lo, y_hi, recompute, c_obj, c_weak, c_weak2):
    """The object update over rows ``y_lo .. y_hi - 1``: fold, divisor, division in one sweep.

    Per pixel: ``n = parts[0] + parts[1] + ...`` (added in that order, written
    to ``parts[0]``; ``parts[1:]`` are zeroed); when ``recompute``, the divisor
    and prior of :func:`ptycli.engines.projection_passes.weak_divisor` from
    ``den = sum |P|^2`` (``w = c_weak2 / (den + c_weak)``, ``den <- 1 / (den + w +
    c_obj)``, ``prior <- w den``; no prior when ``c_weak`` is 0), stored in
    ``den`` and ``prior``; then ``out = n den + prior``. The same float32
    operations in the same order as those numpy passes, so the same numbers.

    Parameters
    ----------
    parts : tuple of float32 (layers, rows, 2 W)
        The numerator's accumulator slots, complex seen as real numbers.
    den, prior : float32 (layers, rows, W)
        ``sum |P|^2`` (``recompute``) or the divisor; the prior's share.
    out : float32 (layers, rows, 2 W)
        The object storage, seen as real numbers.
    c_obj, c_weak, c_weak2 : float32
        The inertia, the prior's weight ``c_w`` and ``c_w^2``.
    """
    L, W = den.shape[0], den.shape[2]
    weak = c_weak > 0
    one = np.float32(1.0)
    S = len(parts)
    for lay in range(L):
        for y in range(y_lo, y_hi):
            drow = den[lay, y]
            prow = prior[lay, y] if weak else drow
            orow = out[lay, y]
            nrow = parts[0][lay, y]
            for x in range(W):
                nr, ni = nrow[2 * x], nrow[2 * x + 1]
                for s in range(1, S):
                    srow = parts[s][lay, y]
                    nr += srow[2 * x]
                    ni += srow[2 * x + 1]
                    srow[2 * x] = 0
                    srow[2 * x + 1] = 0
                nrow[2 * x] = nr
                nrow[2 * x + 1] = ni
                d = drow[x]
                if recompute:
                    if weak:
                        w = c_weak2 / (d + c_weak)
                        d = one / ((d + w) + c_obj)
                        prow[x] = w * d
                    else:
                        d = one / (d + c_obj)
                    drow[x] = d
                if weak:
                    orow[2 * x] = nr * d + prow[x]
                else:
                    orow[2 * x] = nr * d
                orow[2 * x + 1] = ni * d


@njit(**_JIT)
def probe_sums(num, den, want_den, psi, ob, addr, p0):
    """Probe-update sums over pods ``p0 .. p0 + len(psi) - 1`` (added to ``num``, ``den``).

    ``num[pl] += conj(ob_window) * psi`` and, when ``want_den``,
    ``den[pl] += |ob_window|^2``.
    """
    ol, oy, ox, pl = addr
    npb, H, W = psi.shape
    for k in range(npb):
        i = p0 + k
        lo, y0, x0, q = ol[i], oy[i], ox[i], pl[i]
        for y in range(H):
            orow = ob[lo, y0 + y, x0:x0 + W]
            srow = psi[k, y]
            nrow = num[q, y]
            if want_den:  # one loop for both sums
                drow = den[q, y]
                for x in range(W):
                    o = orow[x]
                    nrow[x] += np.conj(o) * srow[x]
                    drow[x] += o.real * o.real + o.imag * o.imag
            else:
                for x in range(W):
                    nrow[x] += np.conj(orow[x]) * srow[x]
