"""Counting (Poisson) noise of measured amplitudes: the floor below which no model should fit the data.

A detector pixel that counts ``N`` photons with mean ``lam`` gives an
amplitude ``sqrt(N)`` whose variance ``Var(sqrt(N))`` is about ``lam`` for
``lam << 1`` and tends to 1/4 for large ``lam`` (the square root stabilises
Poisson variance; Anscombe, Biometrika 35, 246 (1948),
doi:10.1093/biomet/35.3-4.246). A model whose amplitudes ``|F|`` lie closer to
the measured ``sqrt(I)`` than that, per pixel on average, is fitting the noise.
The projection engines use the floor as their power bound on counted data
(Thibault & Guizar-Sicairos, New J. Phys. 14, 063004 (2012),
doi:10.1088/1367-2630/14/6/063004, discuss such relaxed modulus
constraints); the trial of candidate probes uses it too.
"""

import numpy as np

__all__ = ["sqrt_poisson_variance", "amplitude_noise_floor", "looks_like_counts", "whole_numbers"]

_TABLE_MEANS = np.concatenate([[0.0], np.logspace(-4, np.log10(200.0), 240)])


def _exact_variance(lam, nmax=600):
    """``Var(sqrt(N))`` for ``N ~ Poisson(lam)``, summed over ``N < nmax`` (``lam <= 200``).

    The probabilities ``lam^n exp(-lam) / n!`` are formed from their
    logarithms (``log n! = sum_{k<=n} log k``), exact to rounding.
    """
    n = np.arange(nmax, dtype=np.float64)
    log_factorial = np.concatenate([[0.0], np.cumsum(np.log(n[1:]))])
    out = np.empty(len(lam))
    for i, m in enumerate(lam):
        if m == 0:
            out[i] = 0.0
            continue
        p = np.exp(n * np.log(m) - m - log_factorial)
        first = float(np.sum(p * np.sqrt(n)))
        out[i] = m - first * first
    return out


_TABLE_VARIANCES = None  # made on first use


def _table_variances():
    global _TABLE_VARIANCES
    if _TABLE_VARIANCES is None:
        _TABLE_VARIANCES = _exact_variance(_TABLE_MEANS)
    return _TABLE_VARIANCES


def sqrt_poisson_variance(mean_counts):
    """Variance of ``sqrt(N)`` for Poisson counts ``N`` of the given mean.

    Parameters
    ----------
    mean_counts : array_like
        Mean counts ``lam >= 0`` per pixel.

    Returns
    -------
    ndarray of float64
        ``Var(sqrt(N))``: 0 at ``lam = 0``, about ``lam`` below 0.1, 0.40 at
        ``lam = 1`` (its largest), tending to 0.25 for ``lam > 200``
        (interpolated from exact sums).
    """
    lam = np.clip(np.asarray(mean_counts, dtype=np.float64), 0.0, None)
    return np.interp(lam, _TABLE_MEANS, _table_variances(), right=0.25)


def amplitude_noise_floor(mean_pattern, valid_fraction=None):
    """Expected mean squared deviation ``(sqrt(N) - sqrt(lam))^2`` per valid pixel of a frame.

    Parameters
    ----------
    mean_pattern : ndarray (rows, cols)
        Mean measured counts per pixel over the frames (the estimate of ``lam``).
    valid_fraction : ndarray (rows, cols), optional
        Fraction of frames in which each pixel is valid (default all).

    Returns
    -------
    float
        The average of :func:`sqrt_poisson_variance` over the pixels,
        weighted by ``valid_fraction``.
    """
    variance = sqrt_poisson_variance(mean_pattern)
    weight = np.ones(variance.shape) if valid_fraction is None else np.asarray(valid_fraction, dtype=np.float64)
    total = float(np.sum(weight))
    return float(np.sum(variance * weight) / total) if total > 0 else 0.0


def looks_like_counts(frames, sample=4096):
    """Whether the frames hold photon counts: non-negative whole numbers.

    Normalised or background-subtracted data (fractions, negative values)
    are not counts, and their noise is unknown: the floor does not apply.

    Parameters
    ----------
    frames : ndarray
        Measured intensities (any shape).
    sample : int
        Check about this many values, evenly spread (the whole array when smaller).
    """
    flat = np.asarray(frames).ravel()
    if flat.size == 0:
        return False
    values = flat[:: max(1, flat.size // sample)].astype(np.float64)
    return bool(np.all(values >= 0)) and whole_numbers(values, sample)


def whole_numbers(frames, sample=4096):
    """Whether the finite values of ``frames`` (about ``sample`` of them, evenly spread) are all whole numbers."""
    flat = np.asarray(frames).ravel()
    values = flat[:: max(1, flat.size // sample)].astype(np.float64)
    values = values[np.isfinite(values)]
    return bool(np.all(values == np.round(values)))
