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

__all__ = ["sqrt_poisson_variance", "amplitude_noise_floor", "looks_like_counts", "whole_numbers", "lattice_step",
           "photon_scale", "frame_photon_scales", "LATTICE_SAMPLE", "LATTICE_FRACTION", "MAX_LATTICE_COUNT",
           "LOW_LEVELS", "LATTICE_FRAMES"]

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


#: valid values of a scan sampled (evenly spread over its frames) by :func:`photon_scale`
LATTICE_SAMPLE = 200_000
#: fraction of the sampled values that must lie on the lattice (a few stray values: hot pixels, rounding)
LATTICE_FRACTION = 0.999
#: largest value over the step at which a lattice is tested: float32 resolves whole counts up to 2**24, and
#: values of continuous (unquantised) data differ by steps so small that they exceed this
MAX_LATTICE_COUNT = 2 ** 20
#: levels up to this multiple of the smallest fix the lattice step (:func:`lattice_step`)
LOW_LEVELS = 1024


def lattice_step(values):
    """The step ``G`` of a lattice ``{0, G, 2G, ...}`` that holds the values, or None.

    The step is the smallest positive value or difference between distinct
    values up to :data:`LOW_LEVELS` times the smallest (both are whole
    multiples of ``G`` on a lattice, and a scan holds neighbouring levels),
    refined by least squares over the levels ``k = round(v / G)`` (of those
    values, then of all); the values lie on the lattice when at least
    :data:`LATTICE_FRACTION` of them are within ``1e-3 + 4 eps32 k`` of
    ``k G`` (float32 rounding of ``k G``).

    Parameters
    ----------
    values : ndarray
        Non-negative measured values (any shape; non-finite ones are ignored).

    Returns
    -------
    float or None
        None when fewer than 16 positive values or 3 levels are present, when
        a value would be more than :data:`MAX_LATTICE_COUNT` steps, or when the
        values do not lie on the lattice.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v) & (v > 0)]
    if v.size < 16:
        return None
    levels = np.unique(v)
    if levels.size < 3:
        return None
    # the low levels fix the step: a difference of stored values near k G carries k times their rounding
    low = levels[levels <= LOW_LEVELS * levels[0]]
    step = float(min(low[0], np.min(np.diff(low)))) if low.size > 1 else float(low[0])
    if not step > 0 or levels[-1] / step > MAX_LATTICE_COUNT:
        return None
    for only_low in (True, False):  # least squares over the low levels, then all: its error shrinks as k grows
        near = v[v <= LOW_LEVELS * step] if only_low else v
        k = np.rint(near / step)
        if not np.any(k > 0):
            return None
        step = float(np.dot(near, k) / np.dot(k, k))
    r = v / step
    on = np.abs(r - np.rint(r)) <= 1e-3 + 4.0 * 2.0 ** -24 * r
    return step if np.mean(on) >= LATTICE_FRACTION else None


def _stack(frames, valid):
    """``frames`` as (n, rows, cols) and ``valid`` (None, or bool broadcast to them)."""
    frames = np.asarray(frames)
    if frames.ndim == 2:
        frames = frames[None]
    if valid is not None:
        valid = np.broadcast_to(np.asarray(valid, dtype=bool), frames.shape)
    return frames, valid


def photon_scale(frames, valid=None, sample=LATTICE_SAMPLE):
    """Detector units per photon of frames that hold photon counts times one constant, or None.

    Counts divided by an exposure time (counts per second), converted to
    other units by a constant or stored doubled by a detector's gain are no
    longer whole numbers of photons, yet their noise is the counting noise of
    those photons: the noise models need them in photons. Such frames lie on
    a lattice ``{0, G, 2G, ...}`` (:func:`lattice_step`), which continuous
    data (dark-subtracted, flat-fielded, simulated without noise) do not.

    Parameters
    ----------
    frames : ndarray (n, rows, cols)
        Measured intensities, non-negative.
    valid : ndarray (n, rows, cols) or (rows, cols) of bool, optional
        Valid pixels (None: all); only these are sampled.
    sample : int
        About this many valid values are tested, evenly spread over the frames.

    Returns
    -------
    float or None
        ``G`` (the frames divided by it are photon counts), or None: the frames
        are whole counts already (``G`` 1) or not counts times a constant.
    """
    frames, valid = _stack(frames, valid)
    n = frames.shape[0]
    used = min(n, max(1, int(sample) // 16))  # frames sampled, at least 16 values each
    per_frame = -(-int(sample) // max(used, 1))
    parts = []
    for f in np.unique(np.linspace(0, n - 1, used).round().astype(int)) if n else []:
        values = np.ravel(frames[f] if valid is None else frames[f][valid[f]])
        parts.append(values[:: max(1, values.size // per_frame)])
    values = np.concatenate(parts) if parts else np.zeros(0)
    if values.size == 0 or np.any(values[np.isfinite(values)] < 0):
        return None
    step = lattice_step(values)
    if step is None or abs(step - 1.0) <= 1e-6:
        return None
    return step


#: frames whose own lattices :func:`frame_photon_scales` tests, spread over the scan
LATTICE_FRAMES = 16


def frame_photon_scales(frames, valid=None, count=LATTICE_FRAMES):
    """Each frame's own lattice step, for frames of counts each multiplied by its own factor; or None.

    Frames normalised by a monitor (ion chamber, beam current) before they
    were stored hold ``N_f c_f``: one lattice per frame (:func:`lattice_step`),
    none shared. Up to ``count`` frames spread over the scan (those with at
    least 16 positive valid values) are tested.

    Parameters
    ----------
    frames : ndarray (n, rows, cols)
        Measured intensities, non-negative.
    valid : ndarray (n, rows, cols) or (rows, cols) of bool, optional
        Valid pixels (None: all).
    count : int
        Frames tested.

    Returns
    -------
    ndarray or None
        The tested frames' steps, or None when a tested frame has no lattice
        (or no frame could be tested).
    """
    frames, valid = _stack(frames, valid)
    n = frames.shape[0]
    steps = []
    for f in np.unique(np.linspace(0, n - 1, min(n, int(count))).round().astype(int)) if n else []:
        values = frames[f] if valid is None else frames[f][valid[f]]
        if np.count_nonzero(values > 0) < 16:
            continue
        if np.any(values[np.isfinite(values)] < 0):
            return None
        step = lattice_step(values)
        if step is None:
            return None
        steps.append(step)
    return np.array(steps) if steps else None
