"""Fused compiled kernels (numba) of the ePIE/rPIE frame step (one probe and one object mode).

A frame costs one forward and one inverse FFT; the elementwise work around
them is three single-pass kernels on the frame (each a loop over its pixels,
in the frame's precision with float32 row sums added in float64):

1. :func:`exit_wave` - ``psi = P O`` and the maxima of ``|P|^2`` and ``|O|^2``;
2. :func:`modulus` - the Fourier modulus correction in place (``g * mask (sqrt(I) - |g|) / (|g| + eps)``),
   with the frame's Fourier and photon error sums;
3. :func:`update` - object and probe updates from ``dpsi``, both from the
   estimates before this frame:
   ``O += object_step conj(P) dpsi / max((1 - a)|P|^2 + a max|P|^2, tiny)``,
   ``P += probe_step conj(O) dpsi / max((1 - b)|O|^2 + b max|O|^2, tiny)``.

The kernels are single-threaded: a 128 x 128 frame is too small for threads
to pay. Formulas and conventions: :mod:`ptycli.engines.stochastic`.
"""

import numpy as np

from .fused import njit

__all__ = ["exit_wave", "modulus", "update"]

_SERIAL = dict(fastmath=True, cache=True, nogil=True, error_model="numpy")


@njit(**_SERIAL)
def exit_wave(ex, P, obj, layer, y0, x0):
    """``ex = P * O`` with ``O = obj[layer, y0:y0+H, x0:x0+W]``; returns ``(max |P|^2, max |O|^2)``.

    The window is addressed in the object storage (rows of a C-contiguous
    array vectorise; a strided window view would not).
    """
    H, W = ex.shape
    mp = np.float32(0.0)
    mo = np.float32(0.0)
    for y in range(H):
        prow = P[y]
        orow = obj[layer, y0 + y, x0:x0 + W]
        erow = ex[y]
        for x in range(W):
            p = prow[x]
            o = orow[x]
            erow[x] = p * o
            mp = max(mp, p.real * p.real + p.imag * p.imag)
            mo = max(mo, o.real * o.real + o.imag * o.imag)
    return float(mp), float(mo)


@njit(**_SERIAL)
def modulus(g, sqrt_i, mask, use_mask, intensity, use_photon, eps):
    """Modulus correction of the detector wave ``g`` in place; returns ``(fourier, photon)`` sums.

    ``g <- g * d / (|g| + eps)`` with ``d = mask (sqrt_i - |g|)``;
    ``fourier = sum d^2``, ``photon = sum ((sqrt_i + |g|) d)^2 / (intensity + 1)``
    (0 unless ``use_photon``). ``mask`` and ``intensity`` are read only
    when their flags are set.
    """
    H, W = g.shape
    fourier = 0.0
    photon = 0.0
    one = np.float32(1.0)
    e = np.float32(eps)
    for y in range(H):
        grow = g[y]
        srow = sqrt_i[y]
        mrow = mask[y]
        irow = intensity[y]
        rf = np.float32(0.0)
        rp = np.float32(0.0)
        if use_photon:
            for x in range(W):
                f = grow[x]
                amp = np.sqrt(f.real * f.real + f.imag * f.imag)
                d = (srow[x] - amp) * (mrow[x] if use_mask else one)
                rf += d * d
                t = (srow[x] + amp) * d
                rp += t * t / (irow[x] + one)
                grow[x] = f * (d / (amp + e))
        elif use_mask:
            for x in range(W):
                f = grow[x]
                amp = np.sqrt(f.real * f.real + f.imag * f.imag)
                d = (srow[x] - amp) * mrow[x]
                rf += d * d
                grow[x] = f * (d / (amp + e))
        else:
            for x in range(W):
                f = grow[x]
                amp = np.sqrt(f.real * f.real + f.imag * f.imag)
                d = srow[x] - amp
                rf += d * d
                grow[x] = f * (d / (amp + e))
        fourier += rf
        photon += rp
    return fourier, photon


@njit(**_SERIAL)
def update(P, obj, layer, y0, x0, dpsi, max_p2, max_o2, object_step, probe_step, object_alpha, probe_alpha,
           update_probe, tiny):
    """Object window (as in :func:`exit_wave`) and, with ``update_probe``, probe update from ``dpsi``, in place.

    See the module docstring for the formulas.
    """
    H, W = dpsi.shape
    ao = np.float32(object_alpha)
    ap = np.float32(probe_alpha)
    one = np.float32(1.0)
    so = np.float32(object_step)
    sp = np.float32(probe_step)
    mp = ao * np.float32(max_p2)
    mpo = ap * np.float32(max_o2)
    t = np.float32(tiny)
    for y in range(H):
        prow = P[y]
        orow = obj[layer, y0 + y, x0:x0 + W]
        drow = dpsi[y]
        if update_probe:
            for x in range(W):
                p = prow[x]
                o = orow[x]
                d = drow[x]
                den_o = max((one - ao) * (p.real * p.real + p.imag * p.imag) + mp, t)
                den_p = max((one - ap) * (o.real * o.real + o.imag * o.imag) + mpo, t)
                orow[x] = o + np.conj(p) * d * (so / den_o)
                prow[x] = p + np.conj(o) * d * (sp / den_p)
        else:
            for x in range(W):
                p = prow[x]
                den_o = max((one - ao) * (p.real * p.real + p.imag * p.imag) + mp, t)
                orow[x] = orow[x] + np.conj(p) * drow[x] * (so / den_o)
