"""Maximum-likelihood refinement (engine ``ML``): conjugate gradients on (object, probe).

Model and cost
--------------
For every pod ``j`` (frame ``m``, probe mode ``k``, object mode ``l``) the exit
wave is ``psi_j = P_k O_l[window_m]`` and its detector-plane field
``F_j = fw(psi_j)``. Modes add incoherently: the model intensity of frame
``m`` is ``I_m = c_m sum_{j in m} |F_j|^2`` with ``c_m = 1`` unless
``floating_intensities`` is set, in which case ``c_m`` is refitted in closed
form for every frame at every evaluation (the minimiser of the cost over
``c_m``; by the envelope theorem the gradients below stay exact).

The negative log-likelihood is a sum over measured pixels (mask ``m``,
counts ``n``) of a per-pixel term ``l(I)`` (``ML_type``):

=============  ===========================================  ===============================
``gaussian``   ``w (I - n)^2`` with ``w = mask / (n + 1)``   ``l' = 2 w (I - n)``, ``l'' = 2 w``
``poisson``    ``mask (I - n log(I + e) + n log n - n)``     ``l' = mask (1 - n / (I + e))``
``euclid``     ``mask (sqrt(I + e) - sqrt(n))^2``            ``l' = mask (1 - sqrt(n / (I + e)))``
=============  ===========================================  ===============================

(``e`` is ``1e-6`` times the mean count per valid pixel; it keeps the
Poisson and Euclid terms finite where the model is dark.) The optional
smoothness prior ``reg_del2`` adds ``a sum_layers sum |O[y+1,x] - O[y,x]|^2
+ |O[y,x+1] - O[y,x]|^2`` with ``a = reg_del2_amplitude * N_meas N_phot /
(8 N_obj^2)``: the amplitude is relative to the data term at the noise
level (``N_meas`` valid pixels, ``N_phot`` measured counts, ``N_obj`` object
pixels; the object's Poisson variance is about ``N_obj / N_phot`` per pixel).

Gradients (Wirtinger, ``g = dL/dx*``, so that ``dL = 2 Re <g, dx>``)::

    g_F   = c_m l'(I_m) F_j                      (detector plane, per pod)
    g_psi = bw(g_F)
    g_O   = sum_j conj(P_k) g_psi_j              (overlap scatter into the object)
    g_P   = sum_j conj(O_l[window_j]) g_psi_j    (sum over frames)

Search direction: Polak-Ribiere conjugate gradients over the pair (object,
probe) with the diagonal preconditioner ``(1, s)``::

    beta = [<gO, gO - gO'> + s <gP, gP - gP'>] / [<gO', gO'> + s <gP', gP'>]
    hO = -gO + beta hO',   hP = -s gP + beta hP'

restarted (``beta = 0``) when ``beta < 0``, on the first iteration, when the
probe joins (``probe_update_start``) and after a failed line search.
With ``scale_precond`` (Thibault & Guizar-Sicairos, New J. Phys. 14, 063004
(2012)) ``s = scale_probe_object * |gO|^2 / |gP|^2``, smoothed geometrically
over iterations (memory 0.9), balances the probe and object steps; without it
``s = scale_probe_object``. Before ``probe_update_start`` the probe
direction is zero. With ``probe_support`` the probe gradient is multiplied by
the support (the probe is multiplied by it once at the start), so the probe
never leaves it and the line search stays exact.

Line search
-----------
Along ``(O + t hO, P + t hP)`` the exit waves are exactly quadratic in ``t``:
``psi(t) = a + t b + t^2 c`` with ``a = P O``, ``b = P hO + hP O``, ``c = hP hO``,
and so are their transforms ``F(t) = Fa + t Fb + t^2 Fc``. The engine keeps
``Fa`` from the previous evaluation, transforms ``b`` and ``c`` (one batched
FFT pass over the pods; ``c`` vanishes while the probe is fixed), and forms
``I(t) = I0 + t I1 + t^2 I2 + t^3 I3 + t^4 I4`` per pixel with::

    I1 = 2 Re(Fa* Fb), I2 = |Fb|^2 + 2 Re(Fa* Fc), I3 = 2 Re(Fb* Fc), I4 = |Fc|^2

(summed over modes, times ``c_m``).

* ``gaussian``: the cost along the line is *exactly* the polynomial
  ``sum w (D + I1 t + I2 t^2 + I3 t^3 + I4 t^4)^2`` (``D = I0 - n``): quartic
  when only one of object and probe moves, of degree 8 in the joint update.
  All its coefficients come from one batched pass (15 weighted products) and
  the step is its exact minimiser (real roots of the derivative).
* ``poisson``/``euclid``: second-order (Newton) model
  ``L(t) ~ L0 + t sum l' I1 + t^2/2 sum (l'' I1^2 + 2 l' I2)`` and its minimiser.

The regulariser adds its exact quadratic along the line. The new point's
transforms are ``Fa + t Fb + t^2 Fc`` (no forward FFT); the cost there is
evaluated exactly and the step is halved (at most 5 times, then the engine
restarts from steepest descent) when it did not decrease.

Cost per iteration
------------------
With compiled kernels (``kernels``; :mod:`ptycli.engines.fused_ml`) the
engine keeps only ``F`` between passes and recomputes the transforms at the
new point (``fw(P O)``: one more FFT pass, one exit-wave-sized array less
than keeping ``Fb`` and ``Fc``): four FFT passes per iteration (three while
the probe is fixed), the per-pixel work of each pass fused into one loop,
peak memory the model plus one exit-wave-sized array. The numpy path below
keeps ``Fb`` and ``Fc``:

About three FFT passes over all pods: the transforms of ``b`` and ``c`` and
the inverse transform of the gradient (two while the probe is fixed). Two
passes over the data per iteration: the line-search pass (``b``, ``c``, their
FFTs, the polynomial sums) and a fused pass that moves ``F`` to the new
point, evaluates the cost and errors, and back-propagates and scatters the
gradient. Frames are processed in blocks of about :data:`BLOCK_BYTES`: the
FFTs run in place on persistent buffers, intermediate arrays live in
preallocated per-thread work buffers, object windows are gathered with one
fancy index on a sliding-window view per block. Blocks are shared out among
``get_workers()`` threads (numpy's elementwise loops, pocketfft and the
compiled kernels release the GIL) by
:meth:`ptycli.engines.fused.BlockPool.map_slots`: load-balanced, while each
accumulator slot (two per thread) takes its blocks in a fixed order; the
slots' (conjugate) gradients are summed in a fixed order, in object row bands
on the threads, so a run is deterministic for a given thread count (and
agrees with other thread counts to rounding).

Records and MPI
---------------
Each iteration's record describes the state *after* its update:
``likelihood`` (the data cost divided by the number of valid pixels, summed
over ranks; about 1 at the noise level for ``gaussian``), ``fourier_error``,
``photon_error`` and ``exit_change`` as defined in :mod:`ptycli.engines.base`,
and the extras ``ml_step`` (the step ``t``) and ``ml_beta``. Every global
quantity (costs, error sums, line-search coefficients, and the gradients,
which live in one flat buffer) is summed over MPI ranks with
:func:`ptycli.parallel.allreduce` in :meth:`ML._allsum`, so every rank takes
the same steps; the regulariser is computed once on the (replicated) object.

Checkpoints carry the conjugate-gradient memory (:meth:`ML.engine_state`:
direction, previous gradient, preconditioner scale), so a resumed run takes
the same steps as an uninterrupted one. :meth:`ML.finalize` orthogonalises
the probe modes (a unitary mixing, the likelihood does not change) and sets
the exit waves to ``probe * object`` for the next engine of the chain.

Single precision stays single: frames, gradients and directions are in the
model's complex type; global sums are accumulated in float64 from per-block
float32 partial sums (``numpy.einsum``, no threaded BLAS in reductions).

Position refinement (``position_refinement``, :mod:`ptycli.engines.posref`)
runs after the scheduled iterations; when frames moved, the blocks' window
indices are refreshed and the next iteration re-evaluates the cost from
scratch and restarts the conjugate gradients (the cost function changed).

Pure helpers (used by the engine and the tests): :func:`noise_terms`,
:func:`floating_scale`, :func:`line_intensity_terms`,
:func:`gaussian_line_coefficients`, :func:`newton_line_coefficients`,
:func:`poly_argmin`, :func:`del2_cost`, :func:`del2_gradient`,
:func:`del2_line_coefficients`.
"""

import logging
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .. import parallel
from .._lazy import lazy_module
from ..core import fft
from ..params.declare import Parameter
from .base import Engine, register
from .posref import POSREF_PARAMS

# imported at first use: listing the parameters (ptycli params) needs no numba
fused = lazy_module("ptycli.engines.fused")
fused_ml = lazy_module("ptycli.engines.fused_ml")

__all__ = [
    "ML",
    "ML_TYPES",
    "noise_terms",
    "floating_scale",
    "line_intensity_terms",
    "gaussian_line_coefficients",
    "newton_line_coefficients",
    "poly_argmin",
    "del2_cost",
    "del2_gradient",
    "del2_line_coefficients",
]

log = logging.getLogger("ptycli.engines")

#: Noise models of ``ML_type``.
ML_TYPES = ("gaussian", "poisson", "euclid")

#: Target size in bytes of one complex pod block (frames are processed in blocks this size).
BLOCK_BYTES = 1 << 20

#: Relative regularisation of dark model pixels (Poisson, Euclid): ``e = EPS_REL * mean counts``.
EPS_REL = 1e-6


# ----------------------------------------------------------------------------------------
# small numerical helpers
# ----------------------------------------------------------------------------------------

def _fdot(a, b):
    """``sum a * b`` of two real arrays as a Python float (no BLAS; float32 partial sums)."""
    return float(np.einsum("i,i->", a.reshape(-1), b.reshape(-1)))


def _fsum(a):
    """``sum a`` of a real array as a Python float (pairwise summation)."""
    return float(np.add.reduce(a.reshape(-1)))


def _flat_real(a):
    """A complex array's (contiguous) buffer as a flat real array (re, im interleaved)."""
    a = np.ascontiguousarray(a)
    return a.reshape(-1).view(a.real.dtype)


def _cdot(a, b, compiled=False):
    """``Re sum conj(a) b`` of two complex arrays, accumulated in float64 (one compiled pass if ``compiled``)."""
    af, bf = _flat_real(a), _flat_real(b)
    if compiled and af.dtype == np.float32:
        return float(fused_ml.real_dot(af, bf))
    out = 0.0
    step = 1 << 16
    for i in range(0, af.size, step):
        out += float(np.einsum("i,i->", af[i:i + step], bf[i:i + step]))
    return out


def _pairs(c):
    """Complex array ``(..., W)`` as its real buffer ``(..., 2W)`` (no copy)."""
    return c.view(c.real.dtype)


def _same_buffer(a, b):
    """Whether two arrays are the same memory with the same layout (an in-place result)."""
    return (a.__array_interface__["data"][0] == b.__array_interface__["data"][0]
            and a.shape == b.shape and a.strides == b.strides)


def _pair_add(x, out):
    """``out = x[..., 0::2] + x[..., 1::2]``: the real part of a product formed on pairs."""
    return np.add(x[..., 0::2], x[..., 1::2], out=out)


# ----------------------------------------------------------------------------------------
# noise models
# ----------------------------------------------------------------------------------------

def _noise_kernel(model, I, n, weight, fmag, mn, eps, lp, aux, t1, t2, t3, second=True):
    """Noise-model kernel on a frame block, writing into preallocated arrays.

    ``lp`` receives ``dl/dI``; ``aux`` receives ``D = I - n`` (gaussian) or
    ``d2l/dI2`` (others, when ``second``). ``t1..t3`` are scratch arrays
    like ``I``. ``mn`` is ``mask * n`` (poisson; ``n`` when there is no
    mask). Returns the cost (float).
    """
    if model == "gaussian":
        np.subtract(I, n, out=aux)
        if weight is not None:
            np.multiply(aux, weight, out=lp)
        else:
            lp[...] = aux
        cost = _fdot(lp, aux)
        lp *= 2.0
        return cost
    if model == "poisson":
        Ie = np.add(I, eps, out=t1)
        r = np.divide(n, Ie, out=t2)
        logI = np.log(Ie, out=t3)
        if weight is not None:
            cost = _fdot(weight, I) - _fdot(mn, logI)
            np.subtract(weight, np.multiply(weight, r, out=lp), out=lp)
        else:
            cost = _fsum(I) - _fdot(n, logI)
            np.subtract(1.0, r, out=lp)
        if second:
            np.divide(r, Ie, out=aux)
            if weight is not None:
                aux *= weight
        return cost
    if model == "euclid":
        Ie = np.add(I, eps, out=t1)
        a = np.sqrt(Ie, out=t2)
        d = np.subtract(a, fmag, out=t3)
        if weight is not None:
            np.multiply(d, weight, out=lp)
            cost = _fdot(lp, d)
            np.divide(lp, a, out=lp)
        else:
            cost = _fdot(d, d)
            np.divide(d, a, out=lp)
        if second:
            np.divide(fmag, Ie, out=aux)
            aux /= a
            aux *= 0.5
            if weight is not None:
                aux *= weight
        return cost
    raise ValueError("unknown ML_type %r; valid: %s" % (model, ", ".join(ML_TYPES)))


def noise_terms(model, I, n, weight, fmag=None, eps=0.0, second=False):
    """Cost and its derivatives with respect to the model intensity, per pixel.

    Parameters
    ----------
    model : str
        ``'gaussian'``, ``'poisson'`` or ``'euclid'``.
    I : ndarray (frames, H, W), real
        Model intensities (including a floating scale, if any).
    n : ndarray like ``I``
        Measured counts.
    weight : ndarray like ``I`` or None
        ``gaussian``: the weights ``mask / (n + 1)``; otherwise the mask
        (None: all pixels valid).
    fmag : ndarray like ``I``, optional
        ``sqrt(n)`` (``euclid`` only; computed when not given).
    eps : float
        Dark-pixel regularisation (``poisson``/``euclid``).
    second : bool
        Also return the second derivative ``l''`` (``poisson``/``euclid``).

    Returns
    -------
    cost : float
        ``sum l(I)`` (``poisson``: without the constant ``sum mask (n log n - n)``).
    lp : ndarray like ``I``
        ``dl/dI``.
    aux : ndarray like ``I`` or None
        ``gaussian``: ``D = I - n``; otherwise ``d2l/dI2`` when ``second``,
        else None.
    """
    if model not in ML_TYPES:
        raise ValueError("unknown ML_type %r; valid: %s" % (model, ", ".join(ML_TYPES)))
    I = np.asarray(I)
    n = np.asarray(n, dtype=I.dtype)
    if fmag is None and model == "euclid":
        fmag = np.sqrt(n)
    mn = (n * weight if weight is not None else n) if model == "poisson" else None
    lp = np.empty_like(I)
    aux = np.empty_like(I)
    t = [np.empty_like(I) for _ in range(3)]
    cost = _noise_kernel(model, I, n, weight, fmag, mn, eps, lp, aux, *t, second=second)
    if model != "gaussian" and not second:
        aux = None
    return cost, lp, aux


def floating_scale(model, Ir, n, weight, fmag=None):
    """Per-frame intensity scale ``c`` minimising the cost of ``c * Ir`` (closed form).

    ``gaussian``: ``sum w Ir n / sum w Ir^2``; ``poisson``: ``sum mask n / sum mask Ir``;
    ``euclid``: ``(sum mask sqrt(Ir n) / sum mask Ir)^2`` (the dark-pixel
    ``e`` is neglected). Frames without signal get 1.

    Parameters are as in :func:`noise_terms` (``Ir``: the unscaled model
    intensities); returns an array (frames,) of the real type of ``Ir``.
    """
    nf = Ir.shape[0]

    def fl(x):
        return x.reshape(nf, -1)

    if model == "gaussian":
        wI = Ir * weight if weight is not None else Ir
        num = np.einsum("fk,fk->f", fl(wI), fl(n))
        den = np.einsum("fk,fk->f", fl(wI), fl(Ir))
    elif model == "poisson":
        if weight is not None:
            num = np.einsum("fk,fk->f", fl(weight), fl(n))
            den = np.einsum("fk,fk->f", fl(weight), fl(Ir))
        else:
            num = fl(n).sum(axis=1)
            den = fl(Ir).sum(axis=1)
    elif model == "euclid":
        if fmag is None:
            fmag = np.sqrt(n)
        a = np.sqrt(Ir)
        ma = a * weight if weight is not None else a
        num = np.einsum("fk,fk->f", fl(ma), fl(fmag))
        den = np.einsum("fk,fk->f", fl(ma), fl(a))
    else:
        raise ValueError("unknown ML_type %r" % (model,))
    num = num.astype(np.float64)
    den = den.astype(np.float64)
    ok = (den > 0) & (num > 0)
    c = np.ones(nf)
    c[ok] = num[ok] / den[ok]
    if model == "euclid":
        c = c * c
    return c.astype(Ir.dtype)


# ----------------------------------------------------------------------------------------
# line search
# ----------------------------------------------------------------------------------------

def line_intensity_terms(Fa, Fb, Fc=None, sum_modes=None):
    """Polynomial pieces of ``I(t) = sum_modes |Fa + t Fb + t^2 Fc|^2``.

    Parameters
    ----------
    Fa, Fb, Fc : ndarray (pods, H, W), complex
        Current transforms and those of the two direction terms (``Fc`` None: zero).
    sum_modes : callable, optional
        Maps a pod array to a frame array (default: pods are frames).

    Returns
    -------
    I1, I2, I3, I4 : ndarray (frames, H, W) or None
        ``I(t) = I0 + t I1 + t^2 I2 + t^3 I3 + t^4 I4``; ``I3 = I4 = None``
        when ``Fc`` is None.
    """
    sm = sum_modes or (lambda x: x)

    def rcm(a, b):
        return (a.conj() * b).real

    I1 = sm(2 * rcm(Fa, Fb))
    I2 = sm(rcm(Fb, Fb))
    if Fc is None:
        return I1, I2, None, None
    I2 = I2 + sm(2 * rcm(Fa, Fc))
    I3 = sm(2 * rcm(Fb, Fc))
    I4 = sm(rcm(Fc, Fc))
    return I1, I2, I3, I4


def _gauss_coefs_kernel(D, weight, P, q, scale=None):
    """Coefficients of ``sum w (D + sum_k s_k P[k-1] t^k)^2`` (``s_k = scale[k-1]``, default 1).

    ``q`` is scratch like ``D``. 15 weighted products for the full degree 8.
    """
    p = [D] + list(P)
    s = [1.0] + (list(scale) if scale is not None else [1.0] * len(P))
    c = np.zeros(9)
    for i in range(len(p)):
        if weight is not None:
            qi = np.multiply(p[i], weight, out=q)
        else:
            qi = p[i]
        for j in range(i, len(p)):
            v = _fdot(qi, p[j]) * s[i] * s[j]
            c[i + j] += v if i == j else 2.0 * v
    return c


def gaussian_line_coefficients(D, weight, I1, I2, I3=None, I4=None):
    """Coefficients ``c_0 .. c_8`` of ``sum w (D + I1 t + I2 t^2 + I3 t^3 + I4 t^4)^2``.

    Exact for the Gaussian model along a search line (see the module
    docstring). ``I3``/``I4`` None (probe or object fixed) gives a quartic
    (``c_5 .. c_8 = 0``). Returns a float64 array of 9, lowest order first.
    """
    P = [I1, I2] + ([I3, I4] if I3 is not None else [])
    return _gauss_coefs_kernel(D, weight, P, np.empty_like(D))


def newton_line_coefficients(lp, lpp, I1, I2):
    """Second-order model ``L(t) ~ L0 + c1 t + c2 t^2`` of a non-Gaussian cost along a line.

    ``c1 = sum l' I1``, ``c2 = sum (l'' I1^2 / 2 + l' I2)``; returns ``(c1, c2)``.
    """
    c1 = _fdot(lp, I1)
    c2 = 0.5 * _fdot(lpp * I1, I1) + _fdot(lp, I2)
    return c1, c2


def poly_argmin(coefs):
    """Smallest-cost ``t >= 0`` of the polynomial ``sum_k coefs[k] t^k``.

    The minimiser among the positive real roots of the derivative (the
    variable is rescaled by the Newton step ``-c1 / (2 c2)`` for
    conditioning). Returns 0 when the polynomial does not decrease from
    ``t = 0`` (``c1 >= 0``), and the Newton step when no root qualifies.
    """
    c = np.asarray(coefs, dtype=np.float64)
    if c.size < 3 or not np.all(np.isfinite(c)):
        return 0.0
    c1, c2 = c[1], c[2]
    if not c1 < 0:
        return 0.0
    tau = -c1 / (2 * c2) if c2 > 0 else 1.0
    a = c * tau ** np.arange(c.size)
    big = np.max(np.abs(a[1:]))
    if not np.isfinite(big) or big == 0:
        return 0.0
    deg = c.size - 1
    while deg > 2 and abs(a[deg]) < 1e-13 * big:
        deg -= 1
    a = a[:deg + 1]
    if deg == 2:
        return float(tau) if c2 > 0 else 0.0
    d = (np.arange(1, deg + 1) * a[1:])[::-1]  # derivative, highest first
    roots = np.roots(d)
    real = roots[np.abs(roots.imag) <= 1e-6 * np.maximum(np.abs(roots.real), 1e-30)].real
    real = real[real > 0]
    if real.size == 0:
        return float(tau) if c2 > 0 else 0.0
    vals = np.polyval(a[::-1], real)
    return float(real[int(np.argmin(vals))] * tau)


# ----------------------------------------------------------------------------------------
# del^2 regulariser (pure functions on object arrays (layers, rows, cols))
# ----------------------------------------------------------------------------------------

def del2_cost(obj, amplitude):
    """``amplitude * sum |O[y+1,x] - O[y,x]|^2 + |O[y,x+1] - O[y,x]|^2`` (float)."""
    dy = obj[..., 1:, :] - obj[..., :-1, :]
    dx = obj[..., :, 1:] - obj[..., :, :-1]
    return float(amplitude) * (_cdot(dy, dy) + _cdot(dx, dx))


def del2_gradient(obj, amplitude, out=None):
    """Wirtinger gradient ``dR/dO*`` of :func:`del2_cost` (``amplitude * (-Laplacian) O``).

    Added into ``out`` when given (same shape and type as ``obj``).
    """
    if out is None:
        out = np.zeros_like(obj)
    a = obj.real.dtype.type(amplitude)
    dy = obj[..., 1:, :] - obj[..., :-1, :]
    dy *= a
    out[..., 1:, :] += dy
    out[..., :-1, :] -= dy
    dx = obj[..., :, 1:] - obj[..., :, :-1]
    dx *= a
    out[..., :, 1:] += dx
    out[..., :, :-1] -= dx
    return out


def del2_line_coefficients(obj, h, amplitude):
    """``(r1, r2)`` with ``R(O + t h) = R(O) + r1 t + r2 t^2`` (exact)."""
    oy = obj[..., 1:, :] - obj[..., :-1, :]
    ox = obj[..., :, 1:] - obj[..., :, :-1]
    hy = h[..., 1:, :] - h[..., :-1, :]
    hx = h[..., :, 1:] - h[..., :, :-1]
    r1 = 2.0 * float(amplitude) * (_cdot(oy, hy) + _cdot(ox, hx))
    r2 = float(amplitude) * (_cdot(hy, hy) + _cdot(hx, hx))
    return r1, r2


# ----------------------------------------------------------------------------------------
# per-group state and block kernels
# ----------------------------------------------------------------------------------------

class _Block:
    """Constant arrays of one frame block of a group (views where possible)."""

    __slots__ = ("f0", "f1", "p0", "p1", "n", "mask", "w", "pw", "fmag", "mn", "valid", "pods")

    def __init__(self, f0, f1, p0, p1):
        self.f0, self.f1, self.p0, self.p1 = f0, f1, p0, p1
        self.pods = None


class _Workspace:
    """Scratch arrays of one thread for one group (sized for the largest block)."""

    def __init__(self, maxp, maxf, shape, ctype, ftype, pods_are_frames):
        H, W = shape
        self.cA = fft.empty((maxp, H, W), ctype)
        self.cT = fft.empty((maxp, H, W), ctype)
        self.rp = None if pods_are_frames else np.empty((maxp, H, W), ftype)
        self.fr = [np.empty((maxf, H, W), ftype) for _ in range(6)]


class _Group:
    """ML state of one :class:`~ptycli.engines.addressing.PodGroup`."""

    def __init__(self, g, model, ctype, ftype, block_frames, compiled=False):
        self.g = g
        self.shape = g.shape
        self.ctype, self.ftype = np.dtype(ctype), np.dtype(ftype)
        self.pre = g.factors.pre if g.farfield else None
        self.pf = g.n_pods == g.n_frames  # one pod per frame: pod arrays are frame arrays
        self.compiled = compiled
        if compiled:
            self._init_compiled(block_frames)
            return
        ft = self.ftype
        n_all = np.asarray(g.diff_frames(), dtype=ft)
        m_all = g.mask_frames()
        m_all = None if m_all is None else np.asarray(m_all, dtype=ft)
        fmag_all = np.asarray(g.fmag(), dtype=ft)
        pw_all = np.reciprocal(n_all + ft.type(1.0))  # photon-error weights mask / (n + 1)
        if m_all is not None:
            pw_all *= m_all
        self.blocks = []
        for f0, f1, p0, p1 in g.blocks(block_frames):
            b = _Block(f0, f1, p0, p1)
            b.n = n_all[f0:f1]
            b.mask = None if m_all is None else m_all[f0:f1]
            b.fmag = fmag_all[f0:f1]
            b.pw = pw_all[f0:f1]
            b.w = b.pw if model == "gaussian" else b.mask
            b.mn = None
            if model == "poisson":
                b.mn = b.n * b.mask if b.mask is not None else b.n
            b.valid = float(b.n.size) if b.mask is None else _fsum(b.mask)
            b.pods = self.pod_index(b)
            self.blocks.append(b)
        self.maxp = max([b.p1 - b.p0 for b in self.blocks] or [1])
        self.maxf = max([b.f1 - b.f0 for b in self.blocks] or [1])
        H, W = self.shape
        # persistent transforms and per-pixel derivatives
        self.F = fft.zeros((g.n_pods, H, W), self.ctype)
        self.Fb = fft.zeros((g.n_pods, H, W), self.ctype)
        self.Fc = None
        self.fc_valid = False  # whether Fc belongs to the current line
        self.lp = np.zeros((g.n_frames, H, W), ft)
        self.aux = np.zeros((g.n_frames, H, W), ft)
        self.c = np.ones(g.n_frames, ft)

    def _init_compiled(self, block_frames):
        """State of the compiled path (:mod:`ptycli.engines.fused_ml`): ``F`` and per-frame scales only."""
        g = self.g
        H, W = self.shape
        self.blocks = [_Block(*blk) for blk in g.blocks(block_frames)]
        for b in self.blocks:
            b.valid = 0.0
        self.maxp = max([b.p1 - b.p0 for b in self.blocks] or [1])
        self.maxf = max([b.f1 - b.f0 for b in self.blocks] or [1])
        self.F = fft.zeros((g.n_pods, H, W), self.ctype)
        self.Fb = self.Fc = self.lp = self.aux = None
        self.c = np.ones(g.n_frames, self.ftype)
        self.use_mask = not g.mask_trivial
        self.mask = g.mask.data if self.use_mask else np.ones((1, H, W), self.ftype)
        self.mrows = g.frame_ma if self.use_mask else np.zeros(g.n_frames, np.int64)

    def workspace(self):
        if self.compiled:  # two block-sized complex buffers
            ws = _Workspace.__new__(_Workspace)
            H, W = self.shape
            ws.cA = fft.empty((self.maxp, H, W), self.ctype)
            ws.cT = fft.empty((self.maxp, H, W), self.ctype)
            return ws
        return _Workspace(self.maxp, self.maxf, self.shape, self.ctype, self.ftype, self.pf)

    def need_fc(self):
        if self.Fc is None:
            self.Fc = fft.zeros(self.Fb.shape, self.Fb.dtype)
        return self.Fc

    def release(self):
        self.F = self.Fb = self.Fc = self.lp = self.aux = None

    # -- layout helpers -----------------------------------------------------------------
    def msum(self, b, x, out):
        """Sum the pod array ``x`` of block ``b`` over each frame's modes into ``out``."""
        g = self.g
        if g.regular:
            return np.sum(g.as4d(x, b.f0, b.f1), axis=1, out=out)
        out[...] = g.sum_modes(x, b.f0, b.f1)
        return out

    def pair_sum(self, b, x, ws, out):
        """``out`` (frames) = mode sum of ``x[..., 0::2] + x[..., 1::2]`` (x: pod pairs)."""
        if self.pf:
            return _pair_add(x, out)
        n = b.p1 - b.p0
        return self.msum(b, _pair_add(x, ws.rp[:n]), out)

    def probe_rows(self, probe, b):
        """The probe of each pod of ``b`` in a shape that broadcasts against :meth:`pods4`."""
        return self.g.probe_for(probe, b.p0, b.p1)

    def pods4(self, b, x):
        """A pod array of block ``b`` reshaped for probe broadcasting."""
        g = self.g
        if g.regular and g.modes > 1:
            return g.as4d(x, b.f0, b.f1)
        return x

    def frames4(self, b, x):
        """A frame array of block ``b`` shaped to broadcast against :meth:`pods4` arrays."""
        g = self.g
        if self.pf:
            return x
        if g.regular:
            return x[:, None]
        return g.to_pods(x, b.f0, b.f1)

    def add_probe_gradient(self, b, target, prod):
        """``target[pr_layer] += sum over pods of prod`` (per probe row)."""
        g = self.g
        if g.regular:
            if g.modes == 1:
                target[int(g.mode_pr[0])] += prod.sum(axis=0)
            else:
                np.add.at(target, g.mode_pr, g.as4d(prod, b.f0, b.f1).sum(axis=0))
        elif g.single_probe_layer:
            target[int(g.pr_layer[0])] += prod.sum(axis=0)
        else:
            np.add.at(target, g.pr_layer[b.p0:b.p1], prod)

    # -- propagation (far field: pre factor folded into the probe, post factor dropped) --
    def fw_inplace(self, x, workers):
        """Forward transform of the contiguous pod array ``x``, in place."""
        if self.pre is not None:
            out = fft.fft2_inplace(x, workers)
        else:
            out = self.g.propagator.fw(x)
        if not _same_buffer(out, x):
            x[...] = out
        return x

    def bw_inplace(self, x, workers):
        """Backward transform of the contiguous pod array ``x``, in place."""
        if self.pre is not None:
            out = fft.ifft2_inplace(x, workers)
        else:
            out = self.g.propagator.bw(x)
        if not _same_buffer(out, x):
            x[...] = out
        return x

    def probe_eff(self, probe):
        """The probe as seen by the FFT: ``pre * P`` (far field) or ``P`` (a new array)."""
        return probe * self.pre if self.pre is not None else probe.copy()

    # -- kernels ---------------------------------------------------------------------------
    def pod_index(self, b):
        """Per-pod window addresses of block ``b``: index arrays (object layer, y, x)."""
        g = self.g
        sl = slice(b.p0, b.p1)
        return (g.ob_layer[sl].copy(), g.ob_y[sl].copy(), g.ob_x[sl].copy())

    def windows(self, obj):
        """All ``H x W`` windows of an object array, ``(layers, Y, X, H, W)`` (a strided view)."""
        return sliding_window_view(obj, self.shape, axis=(1, 2))

    def forward_block(self, b, ws, sw_obj, probe_eff, workers):
        """``F = fw(P O)`` of block ``b`` (in the persistent buffer)."""
        F = self.F[b.p0:b.p1]
        ow = sw_obj[b.pods]
        np.multiply(self.pods4(b, ow), self.probe_rows(probe_eff, b), out=self.pods4(b, F))
        self.fw_inplace(F, workers)

    def eval_block(self, b, ws, model, floating, eps, du, du2, stale, sw_obj, probe_eff, workers):
        """Move ``F`` by ``du Fb + du2 Fc``, evaluate cost and errors, store ``l'`` and ``aux``.

        Returns ``[cost, fourier, photon, valid]``.
        """
        p0, p1, f0, f1 = b.p0, b.p1, b.f0, b.f1
        n, nf = p1 - p0, f1 - f0
        F = self.F[p0:p1]
        if stale:
            self.forward_block(b, ws, sw_obj, probe_eff, workers)
        elif du:
            tmp = ws.cA[:n]
            F += np.multiply(self.Fb[p0:p1], du, out=tmp)
            if du2 and self.fc_valid:
                F += np.multiply(self.Fc[p0:p1], du2, out=tmp)
        fr = ws.fr
        t1, t2, t3 = fr[1][:nf], fr[2][:nf], fr[3][:nf]
        amp = None
        if self.pf:
            amp = np.abs(F, out=fr[4][:nf])
            I = np.multiply(amp, amp, out=fr[0][:nf])
        else:
            Fp = _pairs(F)
            I = self.pair_sum(b, np.multiply(Fp, Fp, out=_pairs(ws.cT[:n])), ws, fr[0][:nf])
        if floating:
            c = floating_scale(model, I, b.n, b.w, b.fmag)
            self.c[f0:f1] = c
            I *= c[:, None, None]
            amp = None
        lp = self.lp[f0:f1]
        aux = self.aux[f0:f1]
        cost = _noise_kernel(model, I, b.n, b.w, b.fmag, b.mn, eps, lp, aux, t1, t2, t3, second=True)
        if floating:
            lp *= self.c[f0:f1, None, None]  # d cost / d (unscaled intensity)
        # errors
        a = np.sqrt(I, out=t1) if amp is None else amp
        a -= b.fmag
        if b.mask is not None:
            ferr = _fdot(np.multiply(a, b.mask, out=t2), a)
        else:
            ferr = _fdot(a, a)
        if model == "gaussian":
            perr = cost
        else:
            D = np.subtract(I, b.n, out=t1)
            perr = _fdot(np.multiply(D, b.pw, out=t2), D)
        return np.array([cost, ferr, perr, b.valid])

    def grad_block(self, b, ws, sw_obj, probe_eff, cgO, cgPe, workers):
        """Back-propagate ``l' F`` of block ``b``; accumulate the *conjugate* gradients.

        With ``G = bw(l' F)``: ``conj(gP) += sum O conj(G)`` per probe row and
        ``conj(gO) += P conj(G)`` scattered into the object windows
        (conjugate accumulators save a conjugated copy of the windows).
        """
        p0, p1 = b.p0, b.p1
        n = p1 - p0
        H, W = self.shape
        gF = ws.cA[:n]
        np.multiply(self.pods4(b, self.F[p0:p1]), self.frames4(b, self.lp[b.f0:b.f1]), out=self.pods4(b, gF))
        self.bw_inplace(gF, workers)
        np.conj(gF, out=gF)
        ow = sw_obj[b.pods]
        ow *= gF
        self.add_probe_gradient(b, cgPe, ow)
        self.pods4(b, gF)[...] *= self.probe_rows(probe_eff, b)
        ol, oy, ox = b.pods
        for k, (l, y, x) in enumerate(zip(ol.tolist(), oy.tolist(), ox.tolist())):
            cgO[l, y:y + H, x:x + W] += gF[k]

    def line_block(self, b, ws, model, probe_on, sw_obj, sw_h, probe_tau, hPe_tau, hPe_tau2, workers):
        """Transforms of the direction terms of block ``b`` and its polynomial sums.

        Returns the coefficient partials (9 gaussian, 3 otherwise) followed by
        ``sum|Fb|^2, sum 2Re(Fb* Fc), sum|Fc|^2`` (exit change).
        """
        p0, p1, f0, f1 = b.p0, b.p1, b.f0, b.f1
        n, nf = p1 - p0, f1 - f0
        H, W = self.shape
        Fa = self.F[p0:p1]
        Fb = self.Fb[p0:p1]
        Fc = self.Fc[p0:p1] if probe_on else None
        hw = sw_h[b.pods]
        if probe_on:
            np.multiply(self.pods4(b, hw), self.probe_rows(hPe_tau2, b), out=self.pods4(b, Fc))
            np.multiply(self.pods4(b, hw), self.probe_rows(probe_tau, b), out=self.pods4(b, Fb))
            del hw
            ow = sw_obj[b.pods]
            self.pods4(b, ow)[...] *= self.probe_rows(hPe_tau, b)
            Fb += ow
            del ow
            self.fw_inplace(Fc, workers)
        else:
            np.multiply(self.pods4(b, hw), self.probe_rows(probe_tau, b), out=self.pods4(b, Fb))
        self.fw_inplace(Fb, workers)
        fr = ws.fr
        tf = _pairs(ws.cT[:n])
        tg = _pairs(ws.cA[:n])
        Ap, Bp = _pairs(Fa), _pairs(Fb)
        ex = np.zeros(3)
        # polynomial pieces, the factors 2 of I1 = 2 J1 and I3 = 2 J3 applied to the sums
        J1 = self.pair_sum(b, np.multiply(Ap, Bp, out=tf), ws, fr[0][:nf])
        np.multiply(Bp, Bp, out=tg)
        if Fc is None:
            I2 = self.pair_sum(b, tg, ws, fr[1][:nf])
            ex[0] = _fsum(I2)
            P, scale = [J1, I2], [2.0, 1.0]
        else:
            ex[0] = _fsum(tg)
            Cp = _pairs(Fc)
            np.multiply(Ap, Cp, out=tf)
            tf *= 2.0
            tf += tg
            I2 = self.pair_sum(b, tf, ws, fr[1][:nf])
            J3 = self.pair_sum(b, np.multiply(Bp, Cp, out=tf), ws, fr[2][:nf])
            I4 = self.pair_sum(b, np.multiply(Cp, Cp, out=tf), ws, fr[3][:nf])
            ex[1] = 2.0 * _fsum(J3)
            ex[2] = _fsum(I4)
            P, scale = [J1, I2, J3, I4], [2.0, 1.0, 2.0, 1.0]
        c = self.c[f0:f1, None, None]
        scaled = not np.all(self.c[f0:f1] == 1)
        if scaled:
            for x in P:
                x *= c
        aux = self.aux[f0:f1]
        lp = self.lp[f0:f1]
        q = fr[4][:nf]
        if model == "gaussian":
            coefs = _gauss_coefs_kernel(aux, b.w, P, q, scale)
        else:
            if scaled:  # lp is d cost / d Ir; the polynomial is in I = c Ir
                lp = np.divide(lp, c, out=fr[5][:nf])
            c1 = 2.0 * _fdot(lp, J1)
            c2 = 2.0 * _fdot(np.multiply(aux, J1, out=q), J1) + _fdot(lp, I2)
            coefs = np.array([0.0, c1, c2])
        return np.concatenate([coefs, ex])


    # -- compiled path (fused_ml kernels; numba threads inside each kernel) ------------------
    def compiled_eval_block(self, b, ws, model_id, floating, eps, obj, probe_eff, workers, gradient,
                            cg_obj, cg_probe):
        """``F = fw(P O)`` of block ``b``, cost and errors; with ``gradient`` the scattered gradients."""
        g = self.g
        p0, p1, f0, f1 = b.p0, b.p1, b.f0, b.f1
        F = self.F[p0:p1]
        fused_ml.exit_product(F, obj, probe_eff, g.ob_layer, g.ob_y, g.ob_x, g.pr_layer, p0)
        self.fw_inplace(F, workers)
        gF = ws.cA[:p1 - p0]
        out = np.zeros((f1 - f0, 4))
        fused_ml.evaluate(F, gF, g.pod_start[f0:f1 + 1] - p0, g.diff.data, g.frame_di[f0:f1], self.mask,
                          self.mrows[f0:f1], self.use_mask, model_id, float(eps), floating, self.c[f0:f1], out)
        if gradient:
            self.bw_inplace(gF, workers)
            fused_ml.gradient_sums(gF, obj, probe_eff, g.ob_layer, g.ob_y, g.ob_x, g.pr_layer, p0, cg_obj,
                                   cg_probe)
        return out.sum(axis=0)

    def compiled_line_block(self, b, ws, model_id, probe_on, eps, obj, hobj, pt, hpt, hpt2, workers):
        """Direction transforms of block ``b`` and the line-search sums (see :func:`fused_ml.line_sums`)."""
        g = self.g
        p0, p1, f0, f1 = b.p0, b.p1, b.f0, b.f1
        Fb, Fc = ws.cA[:p1 - p0], ws.cT[:p1 - p0]
        dummy = pt if hpt is None else hpt
        fused_ml.line_waves(Fb, Fc, probe_on, obj, hobj, pt, dummy, dummy if hpt2 is None else hpt2,
                            g.ob_layer, g.ob_y, g.ob_x, g.pr_layer, p0)
        self.fw_inplace(Fb, workers)
        if probe_on:
            self.fw_inplace(Fc, workers)
        out = np.zeros((f1 - f0, fused_ml.N_LINE))
        fused_ml.line_sums(self.F[p0:p1], Fb, Fc, probe_on, g.pod_start[f0:f1 + 1] - p0, self.c[f0:f1],
                           g.diff.data, g.frame_di[f0:f1], self.mask, self.mrows[f0:f1], self.use_mask,
                           model_id, float(eps), out)
        return out.sum(axis=0)


# ----------------------------------------------------------------------------------------
# the engine
# ----------------------------------------------------------------------------------------

def _workers():
    return fft.get_workers()


class _Accumulator:
    """Gradient accumulators of one slot (conjugate gradients, see :meth:`_Group.grad_block`)."""

    def __init__(self, book, groups):
        self.gO = {sid: np.zeros_like(S.data) for sid, S in book.obj_storages.items()}  # this rank's
        self.gPe = [np.zeros_like(G.g.probe.data) for G in groups]

    def zero(self):
        for a in self.gO.values():
            a[...] = 0
        for a in self.gPe:
            a[...] = 0


@register
class ML(Engine):
    """Maximum-likelihood refinement by preconditioned conjugate gradients (see the module docstring)."""

    NAME = "ML"
    PARAMS = Engine.PARAMS.extended("ML", [
        Parameter("ML_type", "gaussian", "str",
                  "noise model of the likelihood: gaussian (intensities, weights 1/(I+1)), poisson, "
                  "or euclid (least squares on amplitudes)", choices=list(ML_TYPES)),
        Parameter("floating_intensities", False, "bool",
                  "fit a per-frame intensity scale (closed form) at every iteration"),
        Parameter("reg_del2", False, "bool", "add a del^2 (gradient-squared) smoothness prior on the object"),
        Parameter("reg_del2_amplitude", 0.01, "float",
                  "strength of the del^2 prior relative to the data term at the noise level", low=0.0),
        Parameter("scale_precond", True, "bool",
                  "balance probe and object steps by rescaling the probe gradient (|gO|^2 / |gP|^2)"),
        Parameter("scale_probe_object", 1.0, "float",
                  "extra factor on the probe/object step ratio (the ratio itself without scale_precond)",
                  low=0.0),
        POSREF_PARAMS,
    ], doc="maximum-likelihood refinement (conjugate gradients, polynomial line search)")

    #: geometric memory of the probe/object scale preconditioner
    SCALE_MEMORY = 0.9
    #: maximal step halvings of the line-search safeguard
    MAX_BACKTRACK = 5

    # -- life cycle ---------------------------------------------------------------------
    def engine_initialize(self):
        p = self.p
        self.model = str(p.ML_type).lower()
        self.floating = bool(p.floating_intensities)
        self.eps = EPS_REL * self.mean_power if self.model != "gaussian" else 0.0
        book = self.book
        itemsize = np.dtype(self.ctype).itemsize
        n_pixels = sum(g.n_pods * g.shape[0] * g.shape[1] for g in book.groups)
        self._compiled = fused.use_compiled(p.kernels, n_pixels, np.dtype(self.ctype) == np.complex64)
        self._model_id = fused_ml.MODEL_IDS[self.model]
        self.groups = []
        for g in book.groups:
            per_frame = max(1, g.modes or 1) * g.shape[0] * g.shape[1] * itemsize
            nblock = max(1, BLOCK_BYTES // per_frame)
            self.groups.append(_Group(g, self.model, self.ctype, self.ftype, nblock, compiled=self._compiled))
        self._items = [(gi, G, b) for gi, G in enumerate(self.groups) for b in G.blocks]
        # threads: blocks are shared out round-robin; FFT threads inside a block otherwise
        total = max(1, int(_workers()))
        self._nthreads = max(1, min(total, len(self._items)))
        self._fft_workers = max(1, total // self._nthreads)
        self._pool = fused.BlockPool(self._nthreads)
        self._ws = [[G.workspace() for G in self.groups] for _ in range(self._nthreads)]
        self._acc = [_Accumulator(book, self.groups) for _ in range(self._pool.slots)]  # one per slot
        # constant of the Poisson cost (so that a perfect fit costs about zero)
        const = 0.0
        if self.model == "poisson":
            for G in self.groups:
                for b in G.blocks:
                    n = np.maximum(G.g.diff_frames(b.f0, b.f1), 0).astype(np.float64)
                    nl = np.where(n > 0, n * np.log(np.where(n > 0, n, 1.0)), 0.0) - n
                    mask = G.g.mask_frames(b.f0, b.f1)
                    const += float(np.sum(nl * mask if mask is not None else nl))
        self._poisson_const = const  # local (summed with the costs)
        # flat vectors: gradient, previous gradient, direction (object storages, then probe
        # storages). All storages of the model, sorted by ID, so that every MPI rank has the
        # same layout (also a rank without frames).
        P = self.ptycho
        self.obj_storages = {sid: P.obj.S[sid] for sid in sorted(P.obj.S)}
        self.probe_storages = {sid: P.probe.S[sid] for sid in sorted(P.probe.S)}
        self.obj_ids = list(self.obj_storages)
        self.probe_ids = list(self.probe_storages)
        self._layout = []
        off = 0
        for kind, ids, storages in (("obj", self.obj_ids, self.obj_storages),
                                    ("probe", self.probe_ids, self.probe_storages)):
            for sid in ids:
                shape = storages[sid].data.shape
                size = int(np.prod(shape))
                self._layout.append((kind, sid, off, size, shape))
                off += size
        self._nvec = off
        self._nobj = sum(size for kind, _, _, size, _ in self._layout if kind == "obj")
        self.grad = np.zeros(off, dtype=self.ctype)
        self.grad_prev = np.zeros(off, dtype=self.ctype)
        self.dirn = np.zeros(off, dtype=self.ctype)
        # regulariser amplitude
        self.reg_amp = 0.0
        if p.reg_del2:
            n_obj = float(self._nobj)
            self.reg_amp = float(p.reg_del2_amplitude) * self.total_valid * self.total_counts / (8.0 * n_obj ** 2)
        # probe support: applied once at a fresh start (not to a restored state), then the probe
        # gradient is projected onto it
        self.ml_supports = self.probe_supports()
        if not getattr(self, "_loading", False):
            for sid, sup in self.ml_supports.items():
                self.probe_storages[sid].data *= sup
        self.scale = None
        self._dist_prev = None
        self._tau = 1.0
        self._beta = 0.0
        self._gnorm_prev = 0.0
        self._restart = True
        self._probe_was_on = False
        self._stale = True
        self._last = None
        self._final_scales = None
        self._L = self._evaluate(gradient=True)

    def engine_finalize(self):
        # orthogonal probe modes (a unitary mixing of the modes: the likelihood does not change)
        for sid, S in self.probe_storages.items():
            if S.data.shape[0] > 1:
                from ..core.illumination import orthogonalize_modes

                S.data[...] = orthogonalize_modes(S.data)
        self.reset_exit()
        self._final_scales = self.floating_scales() if self.floating else None
        for G in self.groups:
            G.release()
        self.groups = []
        self._items = []
        self._ws = []
        self._acc = []
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def load_state(self, state):
        self._loading = True
        try:
            return super().load_state(state)
        finally:
            self._loading = False

    def engine_state(self):
        """The conjugate-gradient memory (direction, previous gradient, scalars) for checkpoints."""
        nan = float("nan")
        scalars = [self.scale if self.scale is not None else nan,
                   self._dist_prev if self._dist_prev else nan,
                   self._gnorm_prev, float(self._restart), float(self._probe_was_on)]
        return dict(ml_dirn=self.dirn, ml_grad_prev=self.grad_prev, ml_scalars=np.array(scalars))

    def engine_load_state(self, state):
        """Continue from :meth:`engine_state` (a restart of the conjugate gradients without it)."""
        state = state or {}
        ok = all(k in state for k in ("ml_dirn", "ml_grad_prev", "ml_scalars")) and \
            np.shape(state["ml_dirn"]) == self.dirn.shape and np.shape(state["ml_grad_prev"]) == self.dirn.shape
        if ok:
            self.dirn[...] = state["ml_dirn"]
            self.grad_prev[...] = state["ml_grad_prev"]
            sc = [float(v) for v in np.asarray(state["ml_scalars"], dtype=float).ravel()]
            self.scale = None if not np.isfinite(sc[0]) else sc[0]
            self._dist_prev = None if not np.isfinite(sc[1]) else sc[1]
            self._gnorm_prev = sc[2]
            self._restart = bool(sc[3])
            self._probe_was_on = bool(sc[4])
        else:
            self._restart = True
        self._stale = True
        self._L = self._evaluate(gradient=True)

    def positions_changed(self, moved):
        """Frames moved: refresh the blocks' window indices, re-evaluate and restart the conjugate gradients."""
        for G in self.groups:
            for b in G.blocks:
                b.pods = G.pod_index(b)
        self._stale = True
        self._restart = True

    # -- views into the flat vectors ---------------------------------------------------------
    def _parts(self, vec, kind=None):
        """``(kind, sid, array)`` views of a flat vector, shaped like the storages."""
        out = []
        for k, sid, off, size, shape in self._layout:
            if kind is None or k == kind:
                out.append((k, sid, vec[off:off + size].reshape(shape)))
        return out

    def _part(self, vec, kind, sid):
        for k, s, off, size, shape in self._layout:
            if k == kind and s == sid:
                return vec[off:off + size].reshape(shape)
        raise KeyError(sid)

    # -- global sums and block dispatch -------------------------------------------------------
    @staticmethod
    def _allsum(values):
        """Sum a numpy buffer over MPI ranks, in place; return it (the one place ML reduces)."""
        return parallel.allreduce(values)

    def _run(self, fn, zero_acc=False):
        """Run ``fn(gi, G, b, ws, acc)`` on every block; return the results in block order.

        Blocks are shared out by :meth:`ptycli.engines.fused.BlockPool.map_slots`
        (load-balanced; each accumulator slot takes its blocks in a fixed
        order, so the result does not depend on timing); ``ws`` is the
        thread's workspace, ``acc`` the slot's accumulators, which with
        ``zero_acc`` are zeroed before the slot's first block.
        """
        first = {id(item) for item in self._items[:self._pool.slots]} if zero_acc else ()
        for acc in self._acc[len(self._items):] if zero_acc else ():
            acc.zero()  # slots without blocks

        def call(k, slot, item):
            if id(item) in first:
                self._acc[slot].zero()
            return fn(item[0], item[1], item[2], self._ws[k][item[0]], self._acc[slot])

        return self._pool.map_slots(call, self._items)

    def _object_rows(self, fn):
        """``fn(sid, k, rows)`` for every object storage, in row bands on the threads."""
        for sid, S in self.obj_storages.items():
            self._pool.rows(lambda k, rows, sid=sid: fn(sid, k, rows), [S.data])

    # -- passes over the data ------------------------------------------------------------------
    def _evaluate(self, du=0.0, gradient=True):
        """Move ``F`` by ``du`` along the line (see :meth:`_move_to`), evaluate, optionally the gradient.

        Recomputes the transforms from scratch when they are stale. Stores the
        record fields in ``self._last``; returns the total cost (data +
        regulariser). With ``gradient`` the reduced gradient is in ``self.grad``.
        """
        model, floating, eps = self.model, self.floating, self.eps
        stale = self._stale
        du = float(du)
        du2 = float(self._u2_delta) if du else 0.0
        W = self._fft_workers
        prep = []
        for G in self.groups:
            g = G.g
            prep.append((G.windows(g.obj.data), G.probe_eff(g.probe.data)))
        if self._compiled:
            for gi, G in enumerate(self.groups):
                prep[gi] = (G.g.obj.data, prep[gi][1])

            def fn(gi, G, b, ws, acc):
                obj, pe = prep[gi]
                return G.compiled_eval_block(b, ws, self._model_id, floating, eps, obj, pe, W, gradient,
                                             acc.gO[G.g.obj.ID], acc.gPe[gi])
        else:
            def fn(gi, G, b, ws, acc):
                obj, pe = prep[gi]
                r = G.eval_block(b, ws, model, floating, eps, du, du2, stale, obj, pe, W)
                if gradient:
                    G.grad_block(b, ws, obj, pe, acc.gO[G.g.obj.ID], acc.gPe[gi], W)
                return r

        parts = self._run(fn, zero_acc=gradient)
        self._stale = False
        sums = np.zeros(4)
        for r in parts:
            sums += r
        sums[0] += self._poisson_const
        if gradient:
            grad = self.grad
            # the accumulators hold conjugate gradients (see _Group.grad_block); object parts in row bands
            def fold(sid, k, rows):
                out = self._part(grad, "obj", sid)[..., rows, :]
                np.copyto(out, self._acc[0].gO[sid][..., rows, :])
                for acc in self._acc[1:]:
                    out += acc.gO[sid][..., rows, :]
                np.conj(out, out=out)

            self._object_rows(fold)
            probe_parts = self._parts(grad, "probe")
            for _, _, part in probe_parts:
                part[...] = 0
            for acc in self._acc:
                for gi, G in enumerate(self.groups):
                    cgPe = acc.gPe[gi]
                    self._part(grad, "probe", G.g.probe.ID)[...] += cgPe * G.pre if G.pre is not None else cgPe
            for _, _, part in probe_parts:
                np.conj(part, out=part)
            self._allsum(sums)
            self._allsum(grad)
        else:
            self._allsum(sums)
        reg = 0.0
        if self.reg_amp:
            for sid, S in self.obj_storages.items():
                reg += del2_cost(S.data, self.reg_amp)
                if gradient:
                    del2_gradient(S.data, self.reg_amp, out=self._part(self.grad, "obj", sid))
        nvalid = max(sums[3], 1.0)
        self._last = dict(cost=float(sums[0]), reg=reg, total=float(sums[0]) + reg,
                          likelihood=float(sums[0]) / max(self.total_valid, 1.0),
                          fourier_error=float(sums[1] / nvalid), photon_error=float(sums[2] / nvalid))
        return self._last["total"]

    def _line_coefficients(self, probe_on, tau):
        """Transforms of the direction terms and the cost polynomial along the direction.

        The line is parametrised as ``x + u tau h`` (``tau`` normalises the
        direction so that the step ``u`` is of order one and the per-pixel
        powers of the polynomial stay well inside the float range).

        Returns ``(coefs, exit_terms)``: cost coefficients in ``u`` (float64,
        lowest order first; 9 for ``gaussian``, 3 otherwise, including the
        regulariser) and ``(sum|Fb|^2, sum 2Re(Fb* Fc), sum|Fc|^2)`` for the exit change.
        """
        model = self.model
        W = self._fft_workers
        prep = []
        for G in self.groups:
            g = G.g
            if probe_on and not self._compiled:
                G.need_fc()
            G.fc_valid = probe_on
            hO = self._part(self.dirn, "obj", g.obj.ID)
            # scale factors on the (small) probe arrays: b = (tau P) hO + (tau hP) O, c = (tau^2 hP) hO
            pt = G.probe_eff(g.probe.data)
            pt *= tau
            if probe_on:
                hpt = G.probe_eff(self._part(self.dirn, "probe", g.probe.ID))
                hpt *= tau
                hpt2 = hpt * tau
            else:
                hpt = hpt2 = None
            prep.append((G.windows(g.obj.data), G.windows(hO), pt, hpt, hpt2))

        if self._compiled:
            def fn(gi, G, b, ws, acc):
                _, _, pt, hpt, hpt2 = prep[gi]
                g = G.g
                r = G.compiled_line_block(b, ws, self._model_id, probe_on, self.eps, g.obj.data,
                                          self._part(self.dirn, "obj", g.obj.ID), pt, hpt, hpt2, W)
                return r if model == "gaussian" else np.concatenate([r[:3], r[9:]])
        else:
            def fn(gi, G, b, ws, acc):
                obj, hO, pt, hpt, hpt2 = prep[gi]
                return G.line_block(b, ws, model, probe_on, obj, hO, pt, hpt, hpt2, W)

        parts = self._run(fn)
        ncoef = 9 if model == "gaussian" else 3
        buf = np.zeros(ncoef + 3)
        for r in parts:
            buf += r
        self._allsum(buf)
        coefs, ex = buf[:ncoef].copy(), buf[ncoef:].copy()
        if self.reg_amp:
            for sid, S in self.obj_storages.items():
                r1, r2 = del2_line_coefficients(S.data, self._part(self.dirn, "obj", sid), self.reg_amp)
                coefs[1] += r1 * tau
                coefs[2] += r2 * tau * tau
        return coefs, ex

    def _move_to(self, u_from, u_to):
        """Move probe and object along the line from ``u_from`` to ``u_to`` (units of ``tau h``).

        Returns ``du`` for :meth:`_evaluate`, which moves the transforms (and
        sets ``self._u2_delta`` for their quadratic term).
        """
        du = float(u_to - u_from)
        self._u2_delta = float(u_to * u_to - u_from * u_from)
        if du == 0:
            return 0.0
        step = self.ctype.type(du * float(self._tau))
        for kind, sid, h in self._parts(self.dirn, "probe"):
            self.probe_storages[sid].data += step * h
        hO = {sid: h for _, sid, h in self._parts(self.dirn, "obj")}

        def move(sid, k, rows):
            band = self.obj_storages[sid].data[..., rows, :]
            band += step * hO[sid][..., rows, :]

        self._object_rows(move)
        return du

    # -- one iteration ---------------------------------------------------------------------------
    def _direction(self, probe_on):
        """Preconditioned Polak-Ribiere direction into ``self.dirn``; returns the slope ``dL/dt``."""
        g, gp, h = self.grad, self.grad_prev, self.dirn
        so, sp = slice(0, self._nobj), slice(self._nobj, self._nvec)
        if probe_on:
            for sid in self.probe_ids:
                sup = self.ml_supports.get(sid)
                if sup is not None:
                    self._part(g, "probe", sid)[...] *= sup
        else:
            g[sp] = 0
        go2 = _cdot(g[so], g[so], self._compiled)
        gp2 = _cdot(g[sp], g[sp], self._compiled) if probe_on else 0.0
        s = float(self.p.scale_probe_object)
        if probe_on and self.p.scale_precond:
            if gp2 > 0 and go2 > 0:
                s_new = float(self.p.scale_probe_object) * go2 / gp2
                if self.scale is None:
                    self.scale = s_new
                else:
                    m = self.SCALE_MEMORY
                    self.scale = self.scale ** m * s_new ** (1.0 - m)
            s = self.scale if self.scale is not None else s
        restart = self._restart or (probe_on and not self._probe_was_on)
        beta = 0.0
        if not restart:
            num = go2 - _cdot(g[so], gp[so], self._compiled)
            if probe_on:
                num += s * (gp2 - _cdot(g[sp], gp[sp], self._compiled))
            den = self._gnorm_prev
            beta = num / den if den > 0 else 0.0
            if not beta > 0:
                beta = 0.0
        # h = -M g + beta h
        if beta == 0.0:
            np.negative(g, out=h)
        else:
            h *= beta
            h -= g
        if probe_on:
            if s != 1.0:
                h[sp] -= (s - 1.0) * g[sp]
        else:
            h[sp] = 0
        c = self._compiled
        slope = 2.0 * (_cdot(g[so], h[so], c) + (_cdot(g[sp], h[sp], c) if probe_on else 0.0))
        if not slope < 0:  # not a descent direction: steepest descent
            np.negative(g, out=h)
            if probe_on:
                h[sp] *= s
            else:
                h[sp] = 0
            slope = -2.0 * (go2 + s * gp2)
            beta = 0.0
        self._gnorm_prev = go2 + s * gp2
        gp[...] = g
        self._probe_was_on = probe_on
        self._restart = False
        self._beta = beta
        return slope

    def _direction_scale(self):
        """``tau`` so that the step along ``tau h`` is of order one (see :meth:`_line_coefficients`).

        The previous step's length in (object, probe) space divided by the
        new direction's length; on the first iteration a tenth of the object's norm.
        """
        h = self.dirn
        self._dirn_norm = hn = np.sqrt(_cdot(h, h, self._compiled))
        if not hn > 0:
            return 1.0
        dist = self._dist_prev
        if not dist:
            on = 0.0
            for S in self.obj_storages.values():
                on += _cdot(S.data, S.data, self._compiled)
            ho = h[:self._nobj]
            hon = np.sqrt(_cdot(ho, ho, self._compiled))
            return float(0.1 * np.sqrt(on) / (hon if hon > 0 else hn))
        return float(dist / hn)

    def _step_length(self, coefs):
        if self.model == "gaussian":
            u = poly_argmin(coefs)
        else:
            c1, c2 = coefs[1], coefs[2]
            if c1 < 0 and c2 > 0:
                u = -c1 / (2.0 * c2)
            elif c1 < 0:
                u = 1.0  # concave along the line: the expected step (the safeguard halves it if needed)
            else:
                u = 0.0
        if not np.isfinite(u) or u < 0:
            u = 0.0
        return float(u)

    def engine_iterate(self, n):
        return [self._iteration() for _ in range(int(n))]

    def _iteration(self):
        probe_on = self.probe_update_due()
        if self._stale:  # a constraint changed probe or object since the last evaluation
            self._L = self._evaluate(gradient=True)
            self._restart = True
        L0 = self._L
        self._direction(probe_on)
        self._tau = tau = self._direction_scale()
        coefs, ex = self._line_coefficients(probe_on, tau)
        u = self._step_length(coefs)
        L = self._evaluate(self._move_to(0.0, u), gradient=True)
        tol = 1e-6 * abs(L0) + 1e-30
        tries = 0
        while not L <= L0 + tol and tries < self.MAX_BACKTRACK:
            L = self._evaluate(self._move_to(u, 0.5 * u), gradient=True)
            u *= 0.5
            tries += 1
        if not L <= L0 + tol:
            L = self._evaluate(self._move_to(u, 0.0), gradient=True)
            u = 0.0
            self._restart = True
        if tries:
            log.debug("%s: ML step halved %d times", self.label, tries)
        if u > 0:
            self._dist_prev = float(u * tau * self._dirn_norm)  # |h| from _direction_scale (h is unchanged)
        else:  # no progress along this line: steepest descent with a shorter trial next time
            self._restart = True
            if self._dist_prev:
                self._dist_prev *= 0.1
        self._L = L
        # constraints that break the line (rare): the next iteration re-evaluates
        if self._constrain():
            self._stale = True
        last = self._last
        total = max(self.total_counts, 1e-30)
        rec = dict(fourier_error=last["fourier_error"], photon_error=last["photon_error"],
                   likelihood=last["likelihood"],
                   exit_change=float((u * u * ex[0] + u ** 3 * ex[1] + u ** 4 * ex[2]) / total),
                   ml_step=float(u * tau), ml_beta=float(self._beta))
        if self.reg_amp:
            rec["ml_regularizer"] = float(last["reg"]) / max(self.total_valid, 1.0)
        return rec

    def _constrain(self):
        """Object clipping and probe recentring; True when they changed anything."""
        changed = False
        c = self.p.get("clip_object")
        if c is not None:
            lo, hi = float(c[0]), float(c[1])
            for S in self.obj_storages.values():  # all storages: the same on every rank
                a = np.abs(S.data)
                if a.size and (a.min() < lo or a.max() > hi):
                    changed = True
                    scale = np.clip(a, lo, hi)
                    np.divide(scale, a, out=scale, where=a > 0)
                    scale[a == 0] = 1.0
                    S.data *= scale
        if self.p.get("probe_center_tol") is not None:
            if self.recenter_probe():
                changed = True
        return changed

    # -- public helpers (tests, diagnostics) ---------------------------------------------------
    def objective(self):
        """The total cost (data + regulariser) at the current probe and object, from scratch."""
        if not self.initialized:
            self.initialize()
        self._stale = True
        self._restart = True
        self._L = self._evaluate(gradient=False)
        self._stale = True  # the stored l' may not match a gradient yet
        return self._L

    def gradients(self):
        """Fresh gradients ``dL/dx*`` at the current point: ``{'obj': {sid: arr}, 'probe': {...}}`` (copies)."""
        if not self.initialized:
            self.initialize()
        self._stale = True
        self._restart = True
        self._L = self._evaluate(gradient=True)
        out = dict(obj={}, probe={})
        for kind, sid, arr in self._parts(self.grad):
            out[kind][sid] = arr.copy()
        return out

    def floating_scales(self):
        """Per-frame intensity scales ``c_m`` (None without ``floating_intensities``).

        A dict: group label (the scan label) -> ``(frame_rows, scales)``, the
        diffraction-storage rows of this rank's frames and their scales (the
        values of the last evaluation; kept after :meth:`finalize`).
        """
        if not self.floating:
            return None
        if self.groups:
            return {G.g.label: (G.g.frame_di.copy(), G.c.copy()) for G in self.groups}
        return dict(self._final_scales or {})
