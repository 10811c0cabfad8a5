"""The centre of point symmetry of a non-negative 2-D array (a diffraction pattern, a beam's far-field intensity).

The pupil of a beam from optics (a lens, a zone plate, an aperture) is
point-symmetric about the direction of the undiffracted beam, and so is its
far-field intensity and, for a weakly scattering sample, the mean measured
pattern. :func:`symmetry_centre` finds that centre to a fraction of a pixel:
it maximises the self-convolution ``C(s) = sum_k I(k) I(s - k)`` at
``s = 2 m`` (Cauchy-Schwarz: ``C(s) <= sum_k I(k)^2``, equal where
``I(k) = I(s - k)`` for every ``k``). Power off to one side counts there with
its square, where it pulls an intensity centroid linearly.

Used by the probe rule of the engines' ``phase_ramp``
(:func:`ptycli.engines.phase_ramp.spectrum_symmetry_centre`) and for the
beam's place on the detector (:attr:`ptycli.core.manager.ScanModel.beam_centre_px`),
where that rule centres a measured beam that missed the detector centre.
"""

import numpy as np

__all__ = ["symmetry_centre"]


def symmetry_centre(power, near=None, iterations=10):
    """Centre of point symmetry of ``power``, in pixels, on the periodic grid of the array.

    ``C`` comes from two transforms (``FFT(C) = FFT(I)^2``, periodic over the
    array), its peak to a fraction of a pixel from Newton steps on its
    trigonometric interpolant, started at its largest value on a grid of
    eighth samples around the largest sample. ``s`` is periodic over the
    array, so the centre is known up to half the array along each axis: the
    candidate nearest ``near`` is returned.

    Parameters
    ----------
    power : ndarray (rows, cols), float
        A non-negative array (intensities). For the centre to move exactly
        with a sub-pixel shift, its samples must hold all of its Fourier
        series: an intensity ``|FFT(w)|^2`` computed with ``w`` padded to
        twice its size does (then pixels are half pixels of the detector).
    near : pair of float, optional
        Where the centre is expected (pixels; default: the array's middle,
        ``size // 2``).
    iterations : int
        Newton steps at most (each under a pixel; they stop where ``C`` does
        not curve down in every direction).

    Returns
    -------
    ndarray (2,) float64 or None
        ``(row, column)``; None when ``power`` holds nothing (or not finite).
    """
    power = np.asarray(power, dtype=np.float64)
    total = float(power.sum())
    if not (total > 0 and np.isfinite(total)):
        return None
    size = np.array(power.shape, dtype=np.float64)
    spectrum = np.fft.fft2(power) ** 2  # the self-convolution's transform
    conv = np.fft.ifft2(spectrum).real
    s = np.array(np.unravel_index(int(np.argmax(conv)), conv.shape), dtype=np.float64)
    qy = 2j * np.pi * np.fft.fftfreq(power.shape[0])[:, None]
    qx = 2j * np.pi * np.fft.fftfreq(power.shape[1])[None, :]
    # the interpolant on a grid of eighth samples around the largest sample first: a sharp peak (a thin ring's)
    # need not curve down at the sample itself, where Newton would not start
    local = np.arange(-8, 9) / 8.0
    rows_exp = np.exp((s[0] + local)[:, None] * qy.T)  # (17, rows)
    cols_exp = np.exp(qx.T * (s[1] + local)[None, :])  # (cols, 17)
    fine = (rows_exp @ spectrum @ cols_exp).real
    k = np.unravel_index(int(np.argmax(fine)), fine.shape)
    s = s + local[list(k)]
    for _ in range(int(iterations)):
        t = spectrum * (np.exp(qy * s[0]) * np.exp(qx * s[1]))
        grad = np.array([np.sum(qy * t).real, np.sum(qx * t).real])
        hyx = np.sum(qy * qx * t).real
        hess = np.array([[np.sum(qy * qy * t).real, hyx], [hyx, np.sum(qx * qx * t).real]])
        if not (np.all(np.isfinite(hess)) and np.all(np.linalg.eigvalsh(hess) < 0)):
            break
        step = -np.linalg.solve(hess, grad)
        if not (np.all(np.isfinite(step)) and np.max(np.abs(step)) < 1.0):
            break
        s = s + step
        if np.max(np.abs(step)) < 1e-9:
            break
    near = size // 2 if near is None else np.asarray(near, dtype=np.float64)
    half = 0.5 * s
    return half + np.round((near - half) / (0.5 * size)) * (0.5 * size)
