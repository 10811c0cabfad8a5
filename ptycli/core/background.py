"""The incoherent background of a scan (``scans.<label>.background``): model, start and updates.

Model
-----
Air scattering, fluorescence and detector offsets add counts that no
coherent wave explains. With ``background: true`` a scan's model intensity
of frame ``j`` at detector pixel ``q`` is::

    I_j(q) = sum_k |F_jk(q)|^2 + B(q),        B >= 0,

``F_jk`` the detector-plane waves of the frame's coherent modes and ``B``
one array of counts per pixel and frame, the same for every frame of the
scan (Favre-Nicolin et al., "PyNX: high-performance computing toolkit for
coherent X-ray imaging based on operators", J. Appl. Cryst. 53, 1404 (2020),
doi:10.1107/S1600576720010985; Marchesini et al., "Augmented projections for
ptychographic imaging", Inverse Problems 29, 115009 (2013),
doi:10.1088/0266-5611/29/11/115009). ``B`` lives on the scan model
(``ScanModel.background``, (H, W) in the model's real type), so it is part of
the model every engine of a chain sees, and is written to the result and
checkpoints (``/scans/<label>/background``) and restored on ``--resume``.

Start
-----
:func:`initial_background`: the per-pixel minimum over the frames of the
measured counts (no frame can hold less than the background, apart from the
noise), smoothed as below. Collective under MPI (a minimum over all ranks).

Projection engines (DM, RAAR, the PIE family): the augmented modulus projection
------------------------------------------------------------------------------
Following Marchesini et al., the background amplitude ``sqrt(B)`` is one
more incoherent component of every frame. The model amplitude of a pixel is
``A = sqrt(sum_k |F_k|^2 + B)``; the (power-bound relaxed) modulus
projection replaces it by ``A' = sqrt(I) + r (A - sqrt(I))`` and scales every
component of the frame by the same factor ``f_j = A' / A``: each mode
``F_k -> f_j F_k`` and the frame's background ``B -> f_j^2 B`` (frames
inside the power bound keep ``f_j = 1``). The projection onto "the same
background in every frame" is the mean of those over the frames (masked
pixels excluded)::

    B <- B * sum_j m_j f_j^2 / sum_j m_j

a multiplicative update that keeps ``B >= 0``. Measured against the
alternative, the least-squares update ``B = mean_j (I_j - sum_k |F_jk|^2)``
from the projection input (see the note in :func:`projection_update`), on a
flat background of 5 % of the mean counts (64 x 64 frames, DM 100 from the
true probe, smoothing 3 pixels) the augmented update came within 0.11
relative rms, the least-squares one within 0.19 (unsmoothed both were off by
10 to 15 times in the bright ring of the pattern, see "Smoothing").

The PIE family (ePIE, rPIE, mPIE) makes the same projection frame by frame
(:meth:`ptycli.engines.pie_step.FrameKernel.step`; the numpy step, the
compiled kernels have no background) and updates ``B`` after every sweep
from the frames' ``m_j f_j^2`` (:mod:`ptycli.engines.background_sums`).
LSQML adds ``B`` to every frame's model intensity (its exit-wave step moves
the coherent part, ``I(a) = C u^2 + B``, :func:`ptycli.engines.lsqml.steps.exit_step`)
and updates ``B`` after every epoch from the frames' ``m_j u_j^2``, the same way.

Maximum likelihood (ML)
-----------------------
``B`` enters the likelihood through ``I_j``; the cost's derivative is
``dL/dB(q) = sum_j l'(I_j(q))`` (``l'`` the noise model's derivative with
respect to the intensity, :mod:`ptycli.engines.ml.noise_models`). ML keeps
``B`` out of its conjugate-gradient vector and takes one closed-form step
per iteration after the line search on object and probe, per noise model
(``NoiseModel.background_step``): the multiplicative weighted-least-squares
step (ISRA) for ``gaussian``, the expectation-maximisation (Richardson-Lucy)
step for ``poisson`` and its amplitude analogue for ``euclid``.

Smoothing
---------
A per-pixel estimate is as noisy as the counts where the coherent signal is
bright: in a ring of 2500 counts per pixel, 100 frames fix ``B`` only to
about ``sqrt(2500 / 100) = 5`` counts, and the coherent model's own errors
add to that. ``background_smoothing`` (Gaussian sigma, detector pixels; 0:
off) replaces each update by the normalised convolution
``G * (w B) / G * w`` with the statistical weight ``w = sum_j m_j / (n_j + 1)``
(the inverse variance of the pixel's estimate): where the pattern is bright
the background is taken from its darker surroundings.

MPI
---
Every sum over frames (the projection's ``sum_j m_j f_j^2``, ML's
``sum_j l'``, and the constants ``sum_j m_j``, ``sum_j m_j / (n_j + 1)``) is
summed over the ranks with :func:`ptycli.parallel.allreduce` before the
update, so every rank holds the same ``B``.
"""

import numpy as np

from .. import parallel

__all__ = ["new_background", "initial_background", "detector_floor", "frame_sums", "smooth",
           "projection_update", "relative_error", "FLOOR_TILE", "AUTO_FLOOR_FRACTION", "AUTO_STEADINESS",
           "AUTO_MIN_FRAMES"]


def new_background(shape, ftype=np.float32):
    """A zero background of a frame shape, (H, W) of the model's real type ``ftype``."""
    return np.zeros(tuple(int(s) for s in shape), dtype=ftype)


#: frames per block of the per-pixel sums (keeps the float64 temporaries small)
_BLOCK = 32


#: side (detector pixels) of the square tiles over which :func:`detector_floor` averages the counts
FLOOR_TILE = 8

#: ``background: auto`` fits a background where :func:`detector_floor`'s ``fraction`` is at least this ...
AUTO_FLOOR_FRACTION = 0.01

#: ... and its ``steadiness`` at least this ...
AUTO_STEADINESS = 0.6

#: ... in a scan of at least this many frames (in fewer, a tile's minimum over them seldom falls in a dark
#: frame: 16 MoonFlower frames of 32 x 32 read fraction 0.023 and steadiness 0.70, 100 of 64 x 64 0.011 and 0.50)
AUTO_MIN_FRAMES = 50


def _tile_means(counts, mask, tile):
    """Mean valid counts of every ``tile`` x ``tile`` tile of every frame, (frames, rows, cols); nan where none is valid."""
    n, H, W = counts.shape
    rows, cols = -(-H // tile), -(-W // tile)
    padded = np.zeros((n, rows * tile, cols * tile))
    valid = np.zeros(padded.shape)
    padded[:, :H, :W] = np.maximum(np.asarray(counts, dtype=np.float64), 0.0)
    valid[:, :H, :W] = 1.0 if mask is None else np.asarray(mask, dtype=np.float64)
    padded *= valid
    total = padded.reshape(n, rows, tile, cols, tile).sum(axis=(2, 4))
    number = valid.reshape(n, rows, tile, cols, tile).sum(axis=(2, 4))
    return np.where(number > 0, total / np.maximum(number, 1.0), np.nan)


def detector_floor(counts, mask, tile=FLOOR_TILE):
    """How much of the counts every frame holds: per detector tile, the smallest mean count over the frames (collective).

    A background (air scattering, a dark offset) adds the same counts to every
    frame; a coherent pattern from a compact probe leaves most of the detector
    dark in some frame. Averaging over ``tile`` x ``tile`` pixels first makes
    the floor visible at low counts too, where the per-pixel minimum over the
    frames is 0 whatever the background (a Poisson draw of mean 1 is 0 in a
    third of the frames). Two numbers tell a background apart from coherent
    signal that reaches every tile in every frame (a diffuser or near-field
    hologram, or an object with sharp edges; ``benchmarks/validate_zoo.py``'s
    simulations, 120-150 frames of 64 x 64):

    * ``fraction``, the median floor over the mean count: at most 0.006 for
      far-field scans from compact probes (0.0000-0.0003 at 1e3-1e5 photons
      per frame), 0.011 for ptycli's MoonFlower simulation, 0.011-0.20 with a
      background of 1-20 % of the mean count (0.04-0.05 at 2.7 and 26 counts
      per pixel with 10 and 5 %), 0.03-0.74 in near field and with a diffuser;
    * ``steadiness``, the median over the tiles of the floor over the tile's
      mean over the frames (1 for a pattern the same in every frame): 0.04-0.30
      for compact probes, 0.50 for MoonFlower, 0.67-0.96 with a background of
      1-20 % (0.44 at 2.7 counts per pixel, where the counting noise lowers
      the minimum), 0.63-0.79 in near field and with a diffuser.

    Parameters
    ----------
    counts : ndarray (frames, H, W)
        This rank's measured counts.
    mask : ndarray like ``counts`` or None
        Valid pixels.
    tile : int
        Tile side (detector pixels).

    Returns
    -------
    fraction : float
        Median of the floors over the tiles ever valid, over the mean count
        per valid pixel of all frames (0 for a scan without counts).
    steadiness : float
        Median over the tiles ever valid of the floor over the tile's mean
        count over the frames where it is valid (0 where that mean is 0).
    """
    n, H, W = counts.shape
    rows, cols = -(-H // tile), -(-W // tile)
    low = np.full((rows, cols), np.inf)
    tiles = np.zeros((2, rows, cols))  # sums over frames of the tile means, frames where the tile is valid
    sums = np.zeros(2)  # valid counts, valid pixels
    step = max(1, min(_BLOCK, (1 << 22) // (H * W)))  # frames per block: float64 temporaries of 32 MiB at most
    for j0 in range(0, n, step):
        block = counts[j0:j0 + step]
        valid = None if mask is None else mask[j0:j0 + step]
        means = _tile_means(block, valid, tile)
        seen = np.isfinite(means)
        np.minimum(low, np.where(seen, means, np.inf).min(axis=0), out=low)
        tiles[0] += np.where(seen, means, 0.0).sum(axis=0)
        tiles[1] += seen.sum(axis=0)
        kept = np.maximum(np.asarray(block, dtype=np.float64), 0.0)
        sums[0] += float(kept.sum() if valid is None else np.vdot(np.asarray(valid, np.float64).ravel(),
                                                                  kept.ravel()))
        sums[1] += float(kept.size if valid is None else np.count_nonzero(valid))
    if parallel.size > 1:
        parallel.allreduce(low, op="min")
        parallel.allreduce(tiles)
        parallel.allreduce(sums)
    seen = np.isfinite(low)
    if not seen.any():
        return 0.0, 0.0
    low, tile_mean = low[seen], tiles[0][seen] / np.maximum(tiles[1][seen], 1.0)
    mean = sums[0] / max(sums[1], 1.0)
    fraction = float(np.median(low) / mean) if mean > 0 else 0.0
    steadiness = float(np.median(np.where(tile_mean > 0, low / np.where(tile_mean > 0, tile_mean, 1.0), 0.0)))
    return fraction, steadiness


def frame_sums(counts, mask=None):
    """This rank's per-pixel sums over frames: ``m = sum_j m_j``, ``w = sum_j m_j / (n_j + 1)``, ``wn``.

    Parameters
    ----------
    counts : ndarray (frames, H, W)
        Measured counts ``n``.
    mask : ndarray like ``counts`` or None
        Valid pixels (None: all valid).

    Returns
    -------
    dict
        ``m``, ``w`` and ``wn = sum_j m_j n_j / (n_j + 1)``, float64 (H, W) (sum them over MPI ranks).
        Summed in blocks of frames (no float64 copy of all frames).
    """
    shape = counts.shape[1:]
    out = dict(m=np.zeros(shape), w=np.zeros(shape), wn=np.zeros(shape))
    for j0 in range(0, counts.shape[0], _BLOCK):
        n = np.maximum(np.asarray(counts[j0:j0 + _BLOCK], dtype=np.float64), 0.0)
        inv = 1.0 / (n + 1.0)
        if mask is None:
            out["m"] += n.shape[0]
        else:
            m = np.asarray(mask[j0:j0 + _BLOCK], dtype=np.float64)
            out["m"] += m.sum(axis=0)
            inv *= m
        out["w"] += inv.sum(axis=0)
        out["wn"] += np.einsum("jyx,jyx->yx", inv, n)
    return out


def smooth(values, weight, sigma):
    """Weighted Gaussian smoothing ``G * (w x) / G * w`` (a normalised convolution).

    Parameters
    ----------
    values, weight : ndarray (H, W)
        The estimate and its weights (>= 0).
    sigma : float
        Gaussian standard deviation (pixels); <= 0 returns ``values`` unchanged.

    Returns
    -------
    ndarray (H, W), float64
        Pixels whose neighbourhood has no weight keep their value.
    """
    values = np.asarray(values, dtype=np.float64)
    if not sigma or sigma <= 0:
        return values
    from scipy.ndimage import gaussian_filter

    weight = np.asarray(weight, dtype=np.float64)
    num = gaussian_filter(values * weight, float(sigma), mode="nearest")
    den = gaussian_filter(weight, float(sigma), mode="nearest")
    ok = den > 1e-12 * max(float(den.max()), 1e-300)
    return np.where(ok, num / np.where(ok, den, 1.0), values)


def initial_background(counts, mask, sigma, ftype=np.float32):
    """The starting background: the per-pixel minimum of the counts over all frames, smoothed (collective).

    Parameters
    ----------
    counts : ndarray (frames, H, W)
        This rank's measured counts.
    mask : ndarray like ``counts`` or None
        Valid pixels; a pixel's minimum runs over the frames where it is valid
        (0 where it never is).
    sigma : float
        Smoothing (pixels, see :func:`smooth`).
    ftype : dtype
        The model's real type.

    Returns
    -------
    ndarray (H, W) of ``ftype``
    """
    shape = counts.shape[1:]
    low = np.full(shape, np.inf)
    for j0 in range(0, counts.shape[0], _BLOCK):
        n = np.maximum(np.asarray(counts[j0:j0 + _BLOCK], dtype=np.float64), 0.0)
        if mask is not None:
            n[np.asarray(mask[j0:j0 + _BLOCK]) <= 0] = np.inf
        np.minimum(low, n.min(axis=0), out=low)
    if parallel.size > 1:
        parallel.allreduce(low, op="min")
    low[~np.isfinite(low)] = 0.0
    sums = frame_sums(counts, mask)
    w = sums["w"]
    if parallel.size > 1:
        parallel.allreduce(w)
    return smooth(low, w, sigma).astype(ftype)


def projection_update(B, ratio_sum, msum, weight, sigma):
    """The augmented projection's background update, in place: ``B *= sum_j m_j f_j^2 / sum_j m_j``, smoothed.

    Parameters
    ----------
    B : ndarray (H, W)
        The background (updated in place; returned).
    ratio_sum : ndarray (H, W)
        ``sum_j m_j f_j^2`` over all frames of all ranks (``f_j`` the frame's
        modulus factor, 1 inside the power bound).
    msum, weight : ndarray (H, W)
        ``sum_j m_j`` and ``sum_j m_j / (n_j + 1)`` over all frames (:func:`frame_sums`).
    sigma : float
        Smoothing (pixels, :func:`smooth`).

    Notes
    -----
    The least-squares alternative, ``B = max(0, sum_j m_j (n_j - |F_j|^2) / sum_j m_j)``
    with ``|F_j|^2`` the coherent intensity of the projection input
    ``(1 + alpha) P O - alpha psi``, is biased where the pattern is bright
    (the input's intensity is not the model's), and measured worse (see the
    module docstring).
    """
    ok = msum > 0
    new = np.where(ok, B * (ratio_sum / np.where(ok, msum, 1.0)), B)
    B[...] = smooth(new, weight, sigma)
    return B


def relative_error(B, truth):
    """Relative rms difference over the detector ``sqrt(mean (B - truth)^2 / mean truth^2)``."""
    B = np.asarray(B, dtype=np.float64)
    t = np.asarray(truth, dtype=np.float64)
    return float(np.sqrt(np.mean((B - t) ** 2) / max(float(np.mean(t ** 2)), 1e-300)))
