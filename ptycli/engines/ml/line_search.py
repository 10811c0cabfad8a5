"""The polynomial line search of the ML engine.

Along ``(O + t hO, P + t hP)`` the exit waves are exactly quadratic in ``t``:
``psi(t) = a + t b + t^2 c`` with ``a = P O``, ``b = P hO + hP O``, ``c = hP hO``,
and so are their transforms ``F(t) = Fa + t Fb + t^2 Fc``. The engine keeps
``Fa`` from the previous evaluation, transforms ``b`` and ``c`` (one batched
FFT pass over the pods; ``c`` vanishes while the probe is fixed), and forms
``I(t) = I0 + t I1 + t^2 I2 + t^3 I3 + t^4 I4`` per pixel with::

    I1 = 2 Re(Fa* Fb), I2 = |Fb|^2 + 2 Re(Fa* Fc), I3 = 2 Re(Fb* Fc), I4 = |Fc|^2

(summed over modes, times ``c_m``).

* ``gaussian``: the cost along the line is *exactly* the polynomial
  ``sum w (D + I1 t + I2 t^2 + I3 t^3 + I4 t^4)^2`` (``D = I0 - n``): quartic
  when only one of object and probe moves, of degree 8 in the joint update.
  All its coefficients come from one batched pass (15 weighted products,
  :func:`square_coefficients`) and the step is its exact minimiser
  (:func:`poly_argmin`: real roots of the derivative).
* ``poisson``/``euclid``: second-order (Newton) model
  ``L(t) ~ L0 + t sum l' I1 + t^2/2 sum (l'' I1^2 + 2 l' I2)`` and its
  minimiser (:func:`newton_step`).

The regulariser adds its exact quadratic along the line
(:func:`ptycli.engines.ml.regularisers.del2_line_coefficients`). The new
point's transforms are ``Fa + t Fb + t^2 Fc`` (no forward FFT); the cost there
is evaluated exactly and the step is halved (at most ``ML.MAX_BACKTRACK``
times, then the engine restarts from steepest descent) when it did not
decrease.
"""

import numpy as np

from .sums import fdot

__all__ = ["line_intensity_terms", "square_coefficients", "gaussian_line_coefficients",
           "newton_line_coefficients", "poly_argmin", "newton_step"]


def line_intensity_terms(Fa, Fb, Fc=None, sum_modes=None):
    """Polynomial pieces of ``I(t) = sum_modes |Fa + t Fb + t^2 Fc|^2``.

    Parameters
    ----------
    Fa, Fb, Fc : ndarray (pods, H, W), complex
        Current transforms and those of the two direction terms (``Fc`` None: zero).
    sum_modes : callable, optional
        Maps a pod array to a frame array (default: pods are frames).

    Returns
    -------
    I1, I2, I3, I4 : ndarray (frames, H, W) or None
        ``I(t) = I0 + t I1 + t^2 I2 + t^3 I3 + t^4 I4``; ``I3 = I4 = None``
        when ``Fc`` is None.
    """
    sm = sum_modes or (lambda x: x)

    def rcm(a, b):
        return (a.conj() * b).real

    I1 = sm(2 * rcm(Fa, Fb))
    I2 = sm(rcm(Fb, Fb))
    if Fc is None:
        return I1, I2, None, None
    I2 = I2 + sm(2 * rcm(Fa, Fc))
    I3 = sm(2 * rcm(Fb, Fc))
    I4 = sm(rcm(Fc, Fc))
    return I1, I2, I3, I4


def square_coefficients(D, weight, P, q, scale=None):
    """Coefficients of ``sum w (D + sum_k s_k P[k-1] t^k)^2`` (``s_k = scale[k-1]``, default 1).

    ``q`` is scratch like ``D``. 15 weighted products for the full degree 8;
    returns a float64 array of 9, lowest order first.
    """
    p = [D] + list(P)
    s = [1.0] + (list(scale) if scale is not None else [1.0] * len(P))
    c = np.zeros(9)
    for i in range(len(p)):
        if weight is not None:
            qi = np.multiply(p[i], weight, out=q)
        else:
            qi = p[i]
        for j in range(i, len(p)):
            v = fdot(qi, p[j]) * s[i] * s[j]
            c[i + j] += v if i == j else 2.0 * v
    return c


def gaussian_line_coefficients(D, weight, I1, I2, I3=None, I4=None):
    """Coefficients ``c_0 .. c_8`` of ``sum w (D + I1 t + I2 t^2 + I3 t^3 + I4 t^4)^2``.

    Exact for the Gaussian model along a search line (see the module
    docstring). ``I3``/``I4`` None (probe or object fixed) gives a quartic
    (``c_5 .. c_8 = 0``). Returns a float64 array of 9, lowest order first.
    """
    P = [I1, I2] + ([I3, I4] if I3 is not None else [])
    return square_coefficients(D, weight, P, np.empty_like(D))


def newton_line_coefficients(lp, lpp, I1, I2):
    """Second-order model ``L(t) ~ L0 + c1 t + c2 t^2`` of a non-Gaussian cost along a line.

    ``c1 = sum l' I1``, ``c2 = sum (l'' I1^2 / 2 + l' I2)``; returns ``(c1, c2)``.
    """
    c1 = fdot(lp, I1)
    c2 = 0.5 * fdot(lpp * I1, I1) + fdot(lp, I2)
    return c1, c2


def poly_argmin(coefs):
    """Smallest-cost ``t >= 0`` of the polynomial ``sum_k coefs[k] t^k``.

    The minimiser among the positive real roots of the derivative (the
    variable is rescaled by the Newton step ``-c1 / (2 c2)`` for
    conditioning). Returns 0 when the polynomial does not decrease from
    ``t = 0`` (``c1 >= 0``), and the Newton step when no root qualifies.
    """
    c = np.asarray(coefs, dtype=np.float64)
    if c.size < 3 or not np.all(np.isfinite(c)):
        return 0.0
    c1, c2 = c[1], c[2]
    if not c1 < 0:
        return 0.0
    tau = -c1 / (2 * c2) if c2 > 0 else 1.0
    a = c * tau ** np.arange(c.size)
    big = np.max(np.abs(a[1:]))
    if not np.isfinite(big) or big == 0:
        return 0.0
    deg = c.size - 1
    while deg > 2 and abs(a[deg]) < 1e-13 * big:
        deg -= 1
    a = a[:deg + 1]
    if deg == 2:
        return float(tau) if c2 > 0 else 0.0
    d = (np.arange(1, deg + 1) * a[1:])[::-1]  # derivative, highest first
    roots = np.roots(d)
    real = roots[np.abs(roots.imag) <= 1e-6 * np.maximum(np.abs(roots.real), 1e-30)].real
    real = real[real > 0]
    if real.size == 0:
        return float(tau) if c2 > 0 else 0.0
    vals = np.polyval(a[::-1], real)
    return float(real[int(np.argmin(vals))] * tau)


def newton_step(coefs):
    """The minimiser of the Newton model ``c0 + c1 t + c2 t^2`` along a descent line.

    ``-c1 / (2 c2)`` when the model is convex; 1 (the expected step, which
    the line-search safeguard halves if needed) when it is concave; 0 when
    the line does not descend (``c1 >= 0``).
    """
    c1, c2 = coefs[1], coefs[2]
    if c1 < 0 and c2 > 0:
        return -c1 / (2.0 * c2)
    if c1 < 0:
        return 1.0
    return 0.0
