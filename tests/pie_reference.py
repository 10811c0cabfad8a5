"""The ePIE/rPIE frame step written as in the papers: the oracle the engines' frame kernels are tested against.

Plain, readable array functions of the published formulas (see
:mod:`ptycli.engines.stochastic`), clear rather than fast; the engines run
:class:`ptycli.engines.pie_step.FrameKernel` (numpy) and the kernels of
:mod:`ptycli.engines.fused_pie` (compiled).
"""

import numpy as np

from ptycli.engines.pie_step import EPS

__all__ = ["pie_weights", "modulus_constraint", "pie_step"]


def pie_weights(other, step, alpha):
    """Update weight of a PIE object (or probe) update.

    Parameters
    ----------
    other : ndarray (modes, rows, cols)
        The *other* factor of the exit wave: the probe modes for the object
        update, the object patch modes for the probe update.
    step : float
        Step size (``object_step`` or ``probe_step``).
    alpha : float
        Regularisation in [0, 1]: 1 gives ePIE (``1 / max sum|other|^2``),
        smaller values the rPIE denominator.

    Returns
    -------
    ndarray (modes, rows, cols)
        ``step * conj(other) / ((1 - alpha) s + alpha max s)``, ``s = sum_modes |other|^2``.
    """
    s = np.sum(np.abs(other) ** 2, axis=0)
    denom = (1.0 - alpha) * s + alpha * s.max()
    denom = np.maximum(denom, np.finfo(s.dtype).tiny)
    return (step * np.conj(other) / denom).astype(other.dtype)


def modulus_constraint(waves, sqrt_i, mask=None, eps=EPS, background=None):
    """Replace the modulus of far-field waves by the measured one.

    Parameters
    ----------
    waves : ndarray (modes, rows, cols)
        Detector-plane waves of one frame (all modes).
    sqrt_i : ndarray (rows, cols)
        Measured amplitude ``sqrt(I)``.
    mask : ndarray (rows, cols), optional
        1 for valid pixels, 0 for masked ones (kept unchanged).
    background : ndarray (rows, cols), optional
        An incoherent background ``B`` in the model amplitude (Marchesini et
        al., Inverse Problems 29, 115009 (2013)): ``|F| = sqrt(sum_modes |waves|^2 + B)``.

    Returns
    -------
    new_waves : ndarray
        ``waves * sqrt_i / |F|`` on valid pixels, ``|F| = sqrt(sum_modes |waves|^2 (+ B))``.
    fourier_error : float
        ``sum mask (|F| - sqrt_i)^2``.
    """
    amp = np.sqrt(np.sum(np.abs(waves) ** 2, axis=0) + (0.0 if background is None else background))
    m = np.ones_like(amp) if mask is None else (np.asarray(mask) > 0).astype(amp.dtype)
    factor = m * sqrt_i / (amp + eps) + (1 - m)
    err = float(np.sum(m * (amp - sqrt_i) ** 2, dtype=np.float64))
    return (waves * factor).astype(waves.dtype), err


def pie_step(probe, obj, sqrt_i, fw, bw, mask=None, object_step=1.0, probe_step=1.0,
             object_alpha=1.0, probe_alpha=1.0, update_probe=True, background=None):
    """One frame of mixed-state ePIE/rPIE, written as in the papers.

    Parameters
    ----------
    probe : ndarray (npr, rows, cols)
        Probe modes.
    obj : ndarray (nob, rows, cols)
        Object modes under this frame's view.
    sqrt_i : ndarray (rows, cols)
        Measured amplitude.
    fw, bw : callable
        Propagation to the detector and back (stacks of frames).
    mask : ndarray, optional
        Valid-pixel mask.
    object_step, probe_step, object_alpha, probe_alpha : float
        See the module docstring (ePIE: both alphas 1).
    update_probe : bool
        Whether to update the probe.
    background : ndarray (rows, cols), optional
        An incoherent background in the model amplitude (:func:`modulus_constraint`).

    Returns
    -------
    new_probe, new_obj : ndarray
        Updated copies.
    errors : dict
        ``fourier`` (``sum mask (|F| - sqrt I)^2``), ``photon``
        (``sum mask (|F|^2 - I)^2 / (I + 1)`` with ``I = sqrt_i^2``),
        ``exit_change`` (``sum |dpsi|^2``); with a background also ``ratio``,
        ``mask (sqrt_i / |F|)^2``: the factor of the background's share.
    """
    npr, nob = probe.shape[0], obj.shape[0]
    psi = probe[:, None] * obj[None, :]  # (npr, nob, rows, cols)
    far = fw(psi.reshape((npr * nob,) + psi.shape[-2:]))
    new_far, ferr = modulus_constraint(far, sqrt_i, mask, background=background)
    dpsi = bw(new_far).reshape(psi.shape) - psi
    wo = pie_weights(probe, object_step, object_alpha)  # (npr, r, c)
    new_obj = obj + np.sum(wo[:, None] * dpsi, axis=0)
    new_probe = probe.copy()
    if update_probe:
        wp = pie_weights(obj, probe_step, probe_alpha)  # (nob, r, c)
        new_probe = probe + np.sum(wp[None, :] * dpsi, axis=1)
    change = float(np.sum(np.abs(dpsi) ** 2, dtype=np.float64))
    amp2 = np.sum(np.abs(far) ** 2, axis=0) + (0.0 if background is None else background)
    intensity = np.asarray(sqrt_i, dtype=np.float64) ** 2
    m = 1.0 if mask is None else (np.asarray(mask) > 0)
    photon = float(np.sum(m * (amp2 - intensity) ** 2 / (intensity + 1)))
    errors = dict(fourier=ferr, photon=photon, exit_change=change)
    if background is not None:
        errors["ratio"] = m * intensity / amp2
    return new_probe.astype(probe.dtype), new_obj.astype(obj.dtype), errors
