"""The del^2 smoothness prior of the ML engine (pure functions on object arrays ``(layers, rows, cols)``).

``R(O) = a sum_layers sum |O[y+1,x] - O[y,x]|^2 + |O[y,x+1] - O[y,x]|^2`` with
``a = reg_del2_amplitude * N_meas N_phot / (8 N_obj^2)``: the amplitude is
relative to the data term at the noise level (``N_meas`` valid pixels,
``N_phot`` measured counts, ``N_obj`` object pixels; the object's Poisson
variance is about ``N_obj / N_phot`` per pixel), see :func:`del2_amplitude`.
"""

import numpy as np

from .sums import cdot

__all__ = ["del2_amplitude", "del2_cost", "del2_gradient", "del2_line_coefficients"]


def del2_amplitude(relative, n_valid, n_counts, n_object):
    """The prior's amplitude ``a`` from ``reg_del2_amplitude`` (see the module docstring)."""
    n_obj = float(n_object)
    return float(relative) * n_valid * n_counts / (8.0 * n_obj ** 2)


def del2_cost(obj, amplitude):
    """``amplitude * sum |O[y+1,x] - O[y,x]|^2 + |O[y,x+1] - O[y,x]|^2`` (float)."""
    dy = obj[..., 1:, :] - obj[..., :-1, :]
    dx = obj[..., :, 1:] - obj[..., :, :-1]
    return float(amplitude) * (cdot(dy, dy) + cdot(dx, dx))


def del2_gradient(obj, amplitude, out=None):
    """Wirtinger gradient ``dR/dO*`` of :func:`del2_cost` (``amplitude * (-Laplacian) O``).

    Added into ``out`` when given (same shape and type as ``obj``).
    """
    if out is None:
        out = np.zeros_like(obj)
    a = obj.real.dtype.type(amplitude)
    dy = obj[..., 1:, :] - obj[..., :-1, :]
    dy *= a
    out[..., 1:, :] += dy
    out[..., :-1, :] -= dy
    dx = obj[..., :, 1:] - obj[..., :, :-1]
    dx *= a
    out[..., :, 1:] += dx
    out[..., :, :-1] -= dx
    return out


def del2_line_coefficients(obj, h, amplitude):
    """``(r1, r2)`` with ``R(O + t h) = R(O) + r1 t + r2 t^2`` (exact)."""
    oy = obj[..., 1:, :] - obj[..., :-1, :]
    ox = obj[..., :, 1:] - obj[..., :, :-1]
    hy = h[..., 1:, :] - h[..., :-1, :]
    hx = h[..., :, 1:] - h[..., :, :-1]
    r1 = 2.0 * float(amplitude) * (cdot(oy, hy) + cdot(ox, hx))
    r2 = float(amplitude) * (cdot(hy, hy) + cdot(hx, hx))
    return r1, r2
