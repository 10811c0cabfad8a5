"""Does the scan's position convention fit its frames? A check against the conventions files disagree on.

Files written by different programs disagree on the sign of each scan axis
and on their order (CXI stores (x, y, z) translations of the sample, a
beamline file its motor axes, a simulation what its author chose). A wrong
convention does not fail loudly: the reconstruction runs, overlaps the wrong
frames and ends blurred. The frames themselves can tell, for all but one
ambiguity: positions rotated by 180 degrees fit the same frames exactly (the
twin image, ``P*(-r)`` and ``O*(-r)``), so only the other classes are tried:

* ``flipped`` (one axis negated; negating the other is its twin),
* ``swapped`` (y and x exchanged; square frames only),
* ``swapped and flipped``.

Each starts the short difference-map trial of :mod:`ptycli.core.probe_trial`
from the scan's initial probe on the frames nearest the scan centre (the
same frames the automatic probe guess tries its candidates on). A class whose
error is below :data:`RATIO` of the error of the positions as given is
reported; nothing is changed (the probe guess itself was made with the
positions as given, which favours them, so a report is strong evidence).
Measured on 12 cases of the validation zoo (``benchmarks/validate_zoo.py``,
the 24 central frames): with the right convention no other class came below 0.96 of
its error (focused probe: 15-26x higher; zone plate 1.2-1.3x; two probe modes
and a diffuser 0.96-1.2x, where the classes cannot be told apart), and none of
the four foreign scans of ``shared/data/foreign`` warned; with the positions
flipped in x the right class scored 0.04 (focused probe) and 0.14 (aperture)
of the given one, but 0.52-0.58 in near field and 0.9 for zone-plate and
diffuser probes, whose curved wavefronts the guess had fitted to the wrong
positions.
"""

import numpy as np

from .probe_guess import TRIAL_FRAMES, TRIAL_MIN_FRAMES, central_frames, valid_pixels
from .probe_trial import trial_errors

__all__ = ["convention_errors", "RATIO", "CLASSES"]

#: A convention whose trial error is below this fraction of the one as given is reported.
RATIO = 0.5

#: The conventions tried: name -> (swap y and x, negate y, negate x) (about the scan centre).
CLASSES = {
    "as given": (False, False, False),
    "flipped": (False, False, True),
    "swapped": (True, False, False),
    "swapped and flipped": (True, False, True),
}


def convention_errors(probe, intensities, mask, propagator, positions_px, noise_floor=0.0):
    """Trial Fourier errors of the positions as given and under the other conventions.

    Parameters
    ----------
    probe : ndarray (rows, cols), complex
        The scan's initial probe (the first mode).
    intensities, mask : ndarray (n, rows, cols)
        This process's frames and valid pixels (mask may be None).
    propagator : object with ``fw`` and ``bw``
        The scan's propagator.
    positions_px : ndarray (n, 2)
        This process's positions (y, x) in sample pixels.
    noise_floor : float
        The trial's power bound (counting noise), as for the probe guess.

    Returns
    -------
    dict or None
        Class name (:data:`CLASSES`) -> error after the trial, the same on
        every process; None with too few frames or non-finite positions.
        Swapped classes are left out for rectangular frames.
    """
    valid = valid_pixels(intensities, mask)
    central = central_frames(intensities, valid, positions_px, max_frames=TRIAL_FRAMES)
    if central is None or central[0].shape[0] < TRIAL_MIN_FRAMES:
        return None
    frames, frame_valid, pos = central
    centre = pos.mean(axis=0)
    square = frames.shape[-2] == frames.shape[-1]
    errors = {}
    for name, (swap, flip_y, flip_x) in CLASSES.items():
        if swap and not square:
            continue
        p = pos - centre
        if swap:
            p = p[:, ::-1]
        p = p * np.array([-1.0 if flip_y else 1.0, -1.0 if flip_x else 1.0])
        errors[name] = trial_errors({name: probe}, frames, frame_valid, p + centre, propagator,
                                    power_bound=noise_floor)[name]
    return errors
