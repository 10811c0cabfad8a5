"""Rank candidate initial probes by a short trial reconstruction on a few frames.

No single recipe for the initial probe suits every kind of illumination: the
curvature-based guess of :mod:`ptycli.core.illumination` suits defocused and
zone-plate probes, the back-propagated mean pattern suits focused probes and
near-field (structured) illumination, a support-constrained guess suits plain
apertures. The data can tell them apart. Each candidate starts a short joint
object and probe refinement on the frames nearest the scan centre, and the
candidate whose model then explains the measured moduli best wins.

The trial is the difference map of Thibault et al., Ultramicroscopy 109, 338
(2009), doi:10.1016/j.ultramic.2008.12.011, in its plainest form: one
object-then-probe least-squares round for the overlap constraint per
iteration, the probe refined from iteration ``probe_start``. Error reduction
(``beta = 0``) was tried first and separates the candidates far less in the
same number of iterations (a support-constrained guess that fits the mean
pattern keeps a low error for a long time even when its wavefront is wrong).
It is deterministic, has no parameters to tune and is not one of the engines:
it runs on a handful of frames on integer positions, before the containers
are filled.

The score of a candidate is the model's own Fourier error after the trial,

    ``sum_frames sum_valid (|F(probe * object_view)| - sqrt(I))^2 / sum_frames sum_valid I``,

0 for a perfect model, about 1 or more for a model that explains nothing.
With ``holdout`` a fixed pseudo-random share of the valid pixels
(:func:`heldout_pixels`) is left out of the modulus constraint (the model
keeps its own amplitude there) and the score sums over those pixels only: a
candidate that fits the counting noise of the trial frames gains nothing
there (:func:`ptycli.core.probe_guess.probe_from_data` uses it on counted
data with few counts per pixel, and in near field).

With ``held_frames`` whole frames are left out of the trial (neither the
modulus constraint nor the object and probe updates see them) and the score
sums over those frames only: the model must predict frames at positions it
was not fitted to, from the object its neighbours built and the candidate's
refined probe (cross-validation over frames; used for engines with local
probe updates, see :func:`ptycli.core.probe_guess.probe_from_data`).
"""

import numpy as np

__all__ = ["trial_errors", "trial_grid", "heldout_pixels", "HOLDOUT_FRACTION"]

#: Share of the valid pixels the trial leaves out of its modulus constraint and scores the candidates on.
HOLDOUT_FRACTION = 0.2

#: Seed of the held-out pixels (fixed: the same pixels on every process and every run).
HOLDOUT_SEED = 20261203


def trial_grid(positions_px, shape):
    """Integer frame corners on a small object grid for the trial.

    Parameters
    ----------
    positions_px : ndarray (n, 2)
        Scan positions (y, x) in sample pixels, any common offset.
    shape : (int, int)
        Frame shape in pixels.

    Returns
    -------
    corners : ndarray of int (n, 2)
        Top-left pixel of each frame's window on the trial object.
    object_shape : (int, int)
        Shape of the trial object, just large enough for all windows.
    """
    pos = np.rint(np.asarray(positions_px, dtype=float)).astype(np.int64)
    corners = pos - pos.min(axis=0)
    object_shape = tuple(int(v) for v in corners.max(axis=0) + np.asarray(shape))
    return corners, object_shape


def heldout_pixels(valid, fraction, seed=HOLDOUT_SEED):
    """A fixed pseudo-random share ``fraction`` of the ``valid`` pixels, left out of a trial and scored.

    Parameters
    ----------
    valid : ndarray of bool
        Valid pixels (any shape).
    fraction : float
        Share of the pixels held out (0: none).
    seed : int
        Seed of the draw: the same pixels on every process and every run.

    Returns
    -------
    ndarray of bool, the shape of ``valid``
    """
    if fraction <= 0:
        return np.zeros(valid.shape, dtype=bool)
    return valid & (np.random.default_rng(seed).random(valid.shape) < fraction)


def trial_errors(candidates, intensities, valid, positions_px, propagator, iterations=10,
                 probe_start=1, power_bound=0.0, holdout=0.0, held_frames=None):
    """Model Fourier error after a short trial reconstruction from each candidate probe.

    Parameters
    ----------
    candidates : dict of str -> ndarray (rows, cols), complex
        Candidate probes, each already scaled to the measured photon count.
    intensities : ndarray (n, rows, cols)
        Measured intensities of the trial frames (the same on every process).
    valid : ndarray (n, rows, cols) of bool
        Valid detector pixels.
    positions_px : ndarray (n, 2)
        Scan positions (y, x) of the frames in sample pixels.
    propagator : object with ``fw`` and ``bw``
        Sample-to-detector propagator of the scan (far or near field).
    iterations : int
        Trial iterations per candidate.
    probe_start : int
        Iteration from which the probe is refined too (the object settles first).
    power_bound : float
        Mean squared amplitude deviation per valid pixel that a frame may keep
        (the engines' power bound, e.g. the counting-noise floor of
        :func:`ptycli.core.counting_noise.amplitude_noise_floor`): frames
        within it are not corrected, so the trial does not fit the noise.
    holdout : float
        Share of the valid pixels left out of the modulus constraint and
        scored (0: every valid pixel is constrained and scored).
    held_frames : ndarray (n,) of bool, optional
        Frames left out of the trial and scored (instead of the pixels of
        ``holdout``); None or none set: every frame takes part.

    Returns
    -------
    dict of str -> float
        The candidates' model Fourier errors after the trial (lower is better;
        ``inf`` for a candidate whose trial went non-finite).
    """
    # single precision: enough to rank the candidates, and half the time of double
    intensities = np.asarray(intensities, dtype=np.float32)
    valid = np.asarray(valid, dtype=bool)
    shape = intensities.shape[-2:]
    amplitudes = np.sqrt(np.clip(intensities, 0, None))
    held = heldout_pixels(valid, holdout)
    fitted = valid & ~held
    scored = held if held.any() else valid
    if held_frames is not None and np.any(held_frames):
        out = np.asarray(held_frames, dtype=bool)[:, None, None]
        fitted = valid & ~out
        scored = valid & out
    norm = float(np.sum(np.where(scored, intensities, 0), dtype=np.float64))
    corners, object_shape = trial_grid(positions_px, shape)
    windows = [(slice(y, y + shape[0]), slice(x, x + shape[1])) for y, x in corners]
    errors = {}
    for name, probe in candidates.items():
        errors[name] = _trial(np.asarray(probe, dtype=np.complex64), amplitudes, fitted, scored, norm, windows,
                              object_shape, propagator, iterations, probe_start, float(power_bound))
    return errors


def _trial(probe, amplitudes, valid, scored, norm, windows, object_shape, propagator, iterations, probe_start,
           power_bound):
    """One candidate's trial (difference map); returns its final model Fourier error."""
    obj = np.ones(object_shape, dtype=np.complex64)
    views = np.empty(amplitudes.shape, dtype=np.complex64)

    def object_views():
        for k, win in enumerate(windows):
            views[k] = obj[win]
        return views

    exits = probe * object_views()
    used = np.any(valid, axis=(-2, -1))  # frames held out of the trial have no constrained pixel
    error = np.inf
    for it in range(int(iterations) + 1):
        # overlap constraint: object, then probe, by least squares from the exit waves of the used frames
        num = np.zeros(object_shape, dtype=np.complex64)
        den = np.zeros(object_shape, dtype=np.float32)
        weight = np.abs(probe) ** 2
        for k, win in enumerate(windows):
            if used[k]:
                num[win] += np.conj(probe) * exits[k]
                den[win] += weight
        floor = np.float32(1e-3 * float(den.max()))
        obj = (num + floor) / (den + floor)  # tends to 1 where nothing is lit
        if it >= probe_start:
            object_views()
            power = np.sum(np.abs(views[used]) ** 2, axis=0)
            probe = (np.sum(np.conj(views[used]) * exits[used], axis=0)
                     / (power + np.float32(1e-3 * float(power.max()))))
        model = probe * object_views()
        far = propagator.fw(model)
        modulus = np.abs(far)
        error = float(np.sum(np.where(scored, (modulus - amplitudes) ** 2, 0), dtype=np.float64) / max(norm, 1e-300))
        if it == iterations or not np.isfinite(error):
            break
        # difference map (beta = 1): psi += P_F(2 P_O psi - psi) - P_O psi, with the power bound
        far = propagator.fw(2 * model - exits)
        modulus = np.abs(far)
        target = amplitudes
        if power_bound > 0:
            deviation = np.where(valid, modulus - amplitudes, 0)
            mean_sq = np.sum(deviation ** 2, axis=(-2, -1)) / np.maximum(np.sum(valid, axis=(-2, -1)), 1)
            keep = np.sqrt(power_bound / np.maximum(mean_sq, power_bound)).astype(np.float32)  # 1 inside
            target = amplitudes + keep[:, None, None] * deviation
        far = np.where(valid, target * far / np.maximum(modulus, np.float32(1e-30)), far)
        exits += propagator.bw(far) - model
    return error if np.isfinite(error) else np.inf
