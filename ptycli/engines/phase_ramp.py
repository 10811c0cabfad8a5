"""The linear phase ramp that probe and object can trade, and where ptycli puts it.

A probe ``P(r) exp(2 pi i f.r)`` and an object ``O(r) exp(-2 pi i f.r)``
give every frame the same exit wave up to a constant phase, so the same
intensities: no measurement fixes ``f``. Left free, the ramp wanders between
the two during a reconstruction (the object of the zoo's ``strong_phase``
scan, seed 21, carried 0.4-1.1 cycles of it across the field after DM 100,
mPIE 50 or LSQML 50), and an object compared with a reference by shift and
global phase only then scores 0.22-0.87 where it scores 0.997-1.000 with
the ramp removed.

With ``center_probe_spectrum: true`` (an engine parameter, off by default)
ptycli fixes it by the direction of the undiffracted beam: the probe's
far-field intensity centroid is put at the detector centre (the
propagator's ``center``, the pixel of zero scattering angle) when that
centroid is well defined (a focused, zone-plate or aperture beam, whose far
field is a compact pupil: :data:`MIN_CONCENTRATION`); the opposite ramp goes
to the object. A diffuser's speckled beam and near-field scans are left as
reconstructed. A sample that deflects the whole beam (a wedge) keeps its
ramp in the object; a probe that comes in at an angle keeps it in the probe. On the strong-phase scan the probe's
centroid predicted the object's ramp against the truth to 0.03 cycles across
the field in four runs, while the object's own mean phase gradient was off
by the truth's gradient (0.3 cycles).

:func:`spectrum_centroid` measures ``f``; :func:`phase_ramp` builds the
factor ``exp(2 pi i f.n)`` over an array's pixels.
"""

import numpy as np

__all__ = ["spectrum_centroid", "phase_ramp", "MIN_CONCENTRATION"]

#: The ramp is moved only for a far-field probe whose spectrum is concentrated at least this much on
#: both axes (:func:`spectrum_centroid`'s ``concentration``). Measured on the zoo's reconstructions:
#: focused, zone-plate, aperture and two-mode probes 0.74-0.98 (their centroid gave the truth's ramp);
#: a diffuser probe 0.67 (far field) and 0.30-0.69 (near field), whose random phase screen tilts the
#: beam by its own amount: moving the ramp there made the shift-and-phase score 0.99 -> 0.23.
MIN_CONCENTRATION = 0.72


def spectrum_centroid(modes, propagator):
    """Circular centroid of the probe's far-field intensity (near field: angular spectrum), cycles per pixel.

    Per axis ``f = arg(sum_k I(k) exp(2 pi i (k - c) / N)) / (2 pi)`` over the
    marginal intensity ``I`` of the ``N`` detector pixels (``c``: the
    propagator's ``center``; near field: the FFT's frequencies, ``c = 0``).
    A linear centroid of the periodic transform is biased where the spectrum
    wraps (a disc's tails: 0.002 cycles per pixel left after one correction);
    the circular one moves exactly with a ramp: ``modes * exp(2 pi i g.n)``
    gives ``f + g`` (the sum is the lag-one autocorrelation of the wave
    the transform is taken of).

    Parameters
    ----------
    modes : ndarray (modes, rows, cols), complex
        The probe modes (their intensities add).
    propagator : FarfieldPropagator or NearfieldPropagator
        The scan's propagator (``kind``, ``center`` and ``fw`` are used in the far field).

    Returns
    -------
    f : ndarray (2,) float64
        ``(f_y, f_x)``, each in ``(-1/2, 1/2]``, with ``modes * exp(-2 pi i f.n)``
        (``n`` the pixel index) centred; zeros when the probe holds no power.
    concentration : ndarray (2,) float64
        ``|sum_k I(k) exp(...)| / sum_k I(k)`` per axis: 1 for all power in
        one pixel, about 0 for power spread over the whole detector (see
        :data:`MIN_CONCENTRATION`).
    """
    modes = np.asarray(modes, dtype=np.complex128).reshape((-1,) + np.shape(modes)[-2:])
    rows, cols = modes.shape[-2:]
    if getattr(propagator, "kind", "farfield") == "farfield":
        power = np.sum(np.abs(np.asarray(propagator.fw(modes))) ** 2, axis=0)
        centre = np.asarray(propagator.center, dtype=np.float64)
    else:
        power = np.sum(np.abs(np.fft.fft2(modes)) ** 2, axis=0)
        centre = np.zeros(2)
    total = float(power.sum())
    if not (total > 0 and np.isfinite(total)):
        return np.zeros(2), np.zeros(2)
    f = np.zeros(2)
    concentration = np.zeros(2)
    for axis, (marginal, n) in enumerate(((power.sum(axis=1), rows), (power.sum(axis=0), cols))):
        moment = np.sum(marginal * np.exp(2j * np.pi * (np.arange(n) - centre[axis]) / n))
        f[axis] = float(np.angle(moment)) / (2 * np.pi) if abs(moment) > 0 else 0.0
        concentration[axis] = abs(moment) / total
    return f, concentration


def phase_ramp(shape, f, dtype=np.complex64):
    """``exp(2 pi i (f_y n_y + f_x n_x))`` over the last two axes of ``shape`` (pixel indices from 0).

    Parameters
    ----------
    shape : tuple of int
        ``(..., rows, cols)``; the ramp has shape ``(rows, cols)`` and broadcasts.
    f : pair of float
        Cycles per pixel along rows and columns.
    dtype : numpy dtype
        Complex type of the result (computed in double precision).
    """
    rows, cols = shape[-2:]
    y = np.exp(2j * np.pi * float(f[0]) * np.arange(rows))
    x = np.exp(2j * np.pi * float(f[1]) * np.arange(cols))
    return np.multiply.outer(y, x).astype(dtype)
