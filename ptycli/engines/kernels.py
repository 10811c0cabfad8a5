"""Batched numerical kernels shared by the engines.

All functions work on stacks ``(frames, H, W)`` (or ``(frames, modes, H, W)``)
in the model's precision (``complex64``/``float32`` by default) and avoid
temporaries: they take ``out=`` buffers and work in place where they can.
Measured on 2 cores (128 x 128 frames, blocks of 32 frames in cache): one
elementwise complex64 pass costs about 3 % of a forward+inverse FFT of the
same frames, so the engines count passes. These are the engines' numpy
paths; :mod:`ptycli.engines.fused` holds the compiled ones.

Functions
---------
:func:`fft_inplace`, :func:`ifft_inplace`
    Unitary 2D FFTs over the last two axes that overwrite their input
    (:mod:`ptycli.core.fft`: FFTW when pyfftw is there, else pocketfft).
:func:`model_amplitude`
    ``sqrt(sum_modes |F|^2)`` of a Fourier-space stack.
:func:`fourier_errors`
    Per-frame squared amplitude deviation, photon-error sum and valid pixels.
:func:`modulus_factor`
    The power-bound relaxed modulus correction factor.
"""

import numpy as np

from ..core import fft

__all__ = ["fft_inplace", "ifft_inplace", "model_amplitude", "fourier_errors", "modulus_factor",
           "power_bound_renorm", "TINY"]

#: Added to amplitudes before dividing (float32-safe, far below one photon).
TINY = 1e-12


def fft_inplace(x, workers=None):
    """Unitary forward FFT over the last two axes, overwriting ``x`` (complex); returns it.

    :func:`ptycli.core.fft.fft2_inplace` (FFTW or pocketfft); ``workers``
    threads, default :func:`ptycli.core.fft.get_workers`.
    """
    return fft.fft2_inplace(x, workers)


def ifft_inplace(x, workers=None):
    """Unitary inverse FFT over the last two axes, overwriting ``x`` (complex); returns it."""
    return fft.ifft2_inplace(x, workers)


def model_amplitude(F, modes, out, tmp=None):
    """``sqrt(sum over modes |F|^2)`` per frame.

    Parameters
    ----------
    F : ndarray complex (frames * modes, H, W)
        Fourier-space waves, the modes of a frame consecutive.
    modes : int
        Pods per frame (1: a plain ``abs``).
    out : ndarray real (frames, H, W)
        Result buffer.
    tmp : ndarray real (frames, H, W), optional
        Scratch for ``modes > 1``.

    Returns
    -------
    out
    """
    if modes == 1:
        return np.abs(F, out=out)
    F4 = F.reshape((-1, modes) + F.shape[-2:])
    if tmp is None:
        tmp = np.empty_like(out)
    np.abs(F4[:, 0], out=out)
    np.multiply(out, out, out=out)
    for m in range(1, modes):
        np.abs(F4[:, m], out=tmp)
        np.multiply(tmp, tmp, out=tmp)
        np.add(out, tmp, out=out)
    return np.sqrt(out, out=out)


def fourier_errors(af, fmag, mask=None, intensity=None, fdev=None, tmp=None, weight=None):
    """Fourier and photon error sums of a frame block.

    Parameters
    ----------
    af, fmag : ndarray real (frames, H, W)
        Model and measured amplitudes.
    mask : ndarray (frames, H, W) or None
        Valid pixels (0/1); None: all valid.
    intensity : ndarray, optional
        Measured ``I`` for the photon error (default ``fmag**2``).
    fdev : ndarray real (frames, H, W), optional
        Output buffer for ``mask * (af - fmag)`` (kept for :func:`modulus_factor`).
    tmp : ndarray real (frames, H, W), optional
        Scratch buffer.
    weight : ndarray real (frames, H, W), optional
        Precomputed ``1 / (I + 1)`` (saves two passes).

    Returns
    -------
    ferr : ndarray float64 (frames,)
        ``sum mask (af - fmag)^2`` per frame.
    photon : float
        ``sum mask (af^2 - I)^2 / (I + 1)``.
    valid : ndarray float64 (frames,)
        ``sum mask`` per frame.

    Notes
    -----
    On return ``fdev`` holds ``mask * (af - fmag)``.
    """
    n = af.shape[0]
    if fdev is None:
        fdev = np.empty_like(af)
    if tmp is None:
        tmp = np.empty_like(af)
    np.subtract(af, fmag, out=fdev)
    if mask is not None:
        np.multiply(fdev, mask, out=fdev)
        valid = np.sum(mask.reshape(n, -1), axis=1, dtype=np.float64)
    else:
        valid = np.full(n, float(af[0].size) if n else 0.0)
    flat = fdev.reshape(n, -1)
    ferr = np.einsum("ij,ij->i", flat, flat).astype(np.float64)
    # photon error: (af^2 - I)^2 / (I + 1) with af^2 - I = fdev * (af + fmag)
    np.add(af, fmag, out=tmp)
    np.multiply(tmp, fdev, out=tmp)
    if weight is None:
        w = np.empty_like(af)
        if intensity is None:
            np.multiply(fmag, fmag, out=w)
        else:
            np.copyto(w, intensity)
        w += 1
        np.reciprocal(w, out=w)
    else:
        w = weight
    np.multiply(tmp, tmp, out=tmp)
    photon = float(np.dot(tmp.reshape(-1), w.reshape(-1)))
    return ferr, photon, valid


def power_bound_renorm(ferr_mean, pbound):
    """Per-frame factor of the power-bound correction.

    ``r = sqrt(pbound / err)`` for frames with ``err > pbound``, else 1, so
    that the corrected amplitude ``fmag + r * (af - fmag)`` lies on the
    sphere of mean squared deviation ``pbound`` about the measurement (or is
    left unchanged inside it). ``pbound = 0`` gives ``r = 0``: the plain
    modulus projection.
    """
    ferr_mean = np.asarray(ferr_mean, dtype=np.float64)
    r = np.ones_like(ferr_mean)
    if pbound <= 0:
        return np.zeros_like(ferr_mean)
    sel = ferr_mean > pbound
    r[sel] = np.sqrt(pbound / ferr_mean[sel])
    return r


def modulus_factor(fdev, af, renorm, out=None):
    """Relaxed modulus correction factor ``1 + (r - 1) * fdev / af``.

    With ``fdev = mask * (af - fmag)`` this equals
    ``(fmag + r * (af - fmag)) / af`` on valid pixels and 1 on masked ones.

    Parameters
    ----------
    fdev : ndarray real (frames, H, W)
        Masked amplitude deviation (from :func:`fourier_errors`).
    af : ndarray real (frames, H, W)
        Model amplitude; overwritten with ``max(af, TINY)``.
    renorm : ndarray (frames,)
        Per-frame factor ``r`` (:func:`power_bound_renorm`).
    out : ndarray real, optional
        Result buffer (may be ``fdev``).

    Returns
    -------
    ndarray real (frames, H, W)
    """
    if out is None:
        out = np.empty_like(fdev)
    k = (np.asarray(renorm, dtype=np.float64) - 1.0).astype(fdev.dtype)
    np.multiply(fdev, k[:, None, None], out=out)
    np.maximum(af, TINY, out=af)
    np.divide(out, af, out=out)
    out += 1
    return out
