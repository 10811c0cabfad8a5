"""Closed-form step lengths of LSQ-ML: the exit-wave step and the per-frame object/probe steps.

Pure functions of per-frame sums (no engine state), so that the published
formulas can be checked on their own (Odstrčil, Menzel & Guizar-Sicairos,
Opt. Express 26, 3108 (2018), doi:10.1364/OE.26.003108; the equation
numbers below are of that paper's sections 2-4 as read for this module).

Exit-wave step
--------------
In the detector plane every pod of frame ``j`` moves along the negative
likelihood gradient ``-l'(I_j) Psi`` (``l'`` the derivative of the per-pixel
cost with respect to the frame's intensity ``I_j = sum_modes |Psi|^2``, see
:mod:`ptycli.engines.ml.noise_models`)::

    Psi' = Psi (1 - a_j l'),    I_j(a) = I_j (1 - a l')^2

``gaussian`` (the paper's amplitude-Gaussian model, ML's ``euclid`` cost
``(sqrt(I) - sqrt(n))^2``): ``l' = 1 - sqrt(n / I)`` and ``a = 1`` gives
``Psi sqrt(n / I)``, the modulus projection, which minimises every pixel's
term exactly; :func:`exit_step` returns 1.

``poisson`` (``I - n log I``): no pixel-wise closed form with a common
``a``; :func:`exit_step` takes Newton steps on the frame's cost ``f(a)``::

    f'(a)  = -2 sum l'(I(a)) l' I u
    f''(a) =  4 sum l''(I(a)) l'^2 I^2 u^2 + 2 sum l'(I(a)) l'^2 I     (u = 1 - a l')

(from ``a = 0`` the first step would be ``sum l'^2 I / sum l'^2 (I + n)``, 1/2
near the solution) and clips ``a`` to ``[0, 1]``. The sums run over the pixels the
safeguard below leaves free at the current ``a`` (a clipped pixel does not
move with ``a``), starting from ``a = 1/2``.

Safeguard (``poisson``): where the model is darker than the measurement
(``n > I``), a pixel's multiplier ``u = 1 - a l'`` is capped at the pixel's
own optimum ``sqrt(n / I)`` (:func:`exit_factor`). There ``l' = 1 - n / I``
can be huge (a dark model pixel that counted a photon) and the common step
would multiply the pixel's amplitude by about ``a n / I`` (5000 for ``n = 1``,
``I = 1e-4``), far past ``sqrt(n / I)``; such pixels made the reconstruction
noisy and amplified rounding differences by about 200x per epoch (two MPI
ranks against one process). Pixels brighter than the measurement keep the
gradient step, so ``poisson`` stays a likelihood-gradient method and does
not turn into the modulus projection (capping both sides would: every pixel
would stop at its own optimum and the frame's best step would be ``a = 1``).
"""

import numpy as np

__all__ = ["exit_step", "exit_factor", "frame_steps", "NEWTON_STEPS"]

#: Newton steps of the Poisson exit-wave step length
NEWTON_STEPS = 3


def exit_step(noise, I, n, weight, mn, eps, lp, scratch, background=None):
    """Per-frame exit-wave step ``a_j`` along ``-l' Psi`` (see the module docstring).

    With an incoherent ``background`` ``B`` (:mod:`ptycli.core.background`) in
    the model, ``I = C + B`` and only the coherent part moves with the step:
    ``I(a) = C u^2 + B`` (``C`` in place of ``I`` in the derivatives).

    Parameters
    ----------
    noise : NoiseModel
        :class:`~ptycli.engines.ml.noise_models.Euclid` (the paper's Gaussian: all 1) or
        :class:`~ptycli.engines.ml.noise_models.Poisson` (Newton steps).
    I, n : ndarray (frames, H, W), real
        Model intensities and measured counts.
    weight, mn : ndarray or None
        The mask (None: all valid) and ``mask * n`` as the noise model wants them.
    eps : float
        Dark-pixel regularisation of the noise model.
    lp : ndarray like ``I``
        ``l'(I)`` (from the noise model's ``cost_terms``).
    scratch : list of ndarrays like ``I``
        Work arrays (5 for ``poisson``).
    background : ndarray (H, W), optional
        ``B``, included in ``I``.

    Returns
    -------
    ndarray float64 (frames,)
    """
    nf = I.shape[0]
    if noise.name != "poisson":
        return np.ones(nf)
    a = np.full(nf, 0.5)
    lp0 = lp.reshape(nf, -1).astype(np.float64)
    I0 = I.reshape(nf, -1).astype(np.float64)
    B = 0.0 if background is None else np.asarray(background, np.float64).reshape(1, -1)
    C0 = I0 - B  # the coherent part, the one the step moves
    lpa, l2a, t1, t2, t3 = scratch
    # the pixel optima u* = sqrt(n / I): the safeguard of exit_factor keeps u between 1 and u*
    s = np.sqrt(np.asarray(n, np.float64).reshape(nf, -1) / (I0 + eps))
    hi = np.maximum(s, 1.0)
    for _ in range(NEWTON_STEPS):
        u = 1.0 - a[:, None] * lp0
        free = u <= hi  # pixels the safeguard clips do not move with a
        Ia = (C0 * u * u + B).astype(I.dtype).reshape(I.shape)
        noise.cost_terms(Ia, n, weight, None, mn, eps, lpa, l2a, t1, t2, t3, second=True)
        la = np.where(free, lpa.reshape(nf, -1), 0.0)
        l2 = np.where(free, l2a.reshape(nf, -1), 0.0)
        d1 = -2.0 * np.sum(la * lp0 * C0 * u, axis=1)
        d2 = 4.0 * np.sum(l2 * (lp0 * C0 * u) ** 2, axis=1) + 2.0 * np.sum(la * lp0 * lp0 * C0, axis=1)
        ok = d2 > 0
        a = np.where(ok, a - np.where(ok, d1, 0.0) / np.where(ok, d2, 1.0), a)
        a = np.clip(a, 0.0, 1.0)
    return a


def exit_factor(noise, a, lp, I, n, eps):
    """The detector-plane change ``u - 1`` per pixel (frames, H, W), ``Psi' = u Psi``, in the real type of ``lp``.

    ``u = 1 - a_m l'`` (``a`` per frame); for ``poisson`` at most
    ``max(1, sqrt(n / (I + eps)))`` (see the module docstring). ``lp`` is
    overwritten.
    """
    out = lp
    out *= -np.asarray(a, dtype=lp.dtype)[:, None, None]
    if noise.name == "poisson":
        s = np.sqrt(n / (I + lp.dtype.type(eps)))
        s -= 1
        np.minimum(out, np.maximum(s, 0), out=out)
    return out


def frame_steps(uu, vv, uv, uchi, vchi, lam, probe, mean_uu=None, mean_vv=None):
    """Per-frame object and probe steps from the 2 x 2 least-squares system (module docstring).

    Parameters
    ----------
    uu, vv, uv, uchi, vchi : ndarray float64 (frames,)
        ``<u,u>``, ``<v,v>``, ``Re<u,v>``, ``Re<u,chi>``, ``Re<v,chi>`` per frame.
    lam : float
        Tikhonov factor on the batch means of the diagonal.
    probe : bool
        Whether the probe is updated (else only the object step, ``a_P = 0``).
    mean_uu, mean_vv : float, optional
        The batch means of ``uu`` and ``vv`` (over all MPI ranks; default: of these frames).

    Returns
    -------
    a_O, a_P : ndarray float64 (frames,)
        Frames whose system is singular (no signal) get 0.
    """
    uu, vv, uv, uchi, vchi = (np.asarray(x, np.float64) for x in (uu, vv, uv, uchi, vchi))
    mu = float(np.mean(uu)) if mean_uu is None else float(mean_uu)
    mv = float(np.mean(vv)) if mean_vv is None else float(mean_vv)
    a11 = uu + lam * mu
    if not probe:
        aO = np.divide(uchi, a11, out=np.zeros_like(uchi), where=a11 > 0)
        return aO, np.zeros_like(aO)
    a22 = vv + lam * mv
    det = a11 * a22 - uv * uv
    ok = det > 1e-12 * np.maximum(a11 * a22, 1e-300)
    safe = np.where(ok, det, 1.0)
    aO = np.where(ok, (a22 * uchi - uv * vchi) / safe, 0.0)
    aP = np.where(ok, (a11 * vchi - uv * uchi) / safe, 0.0)
    return aO, aP


def mean_illumination_fraction(probes):
    """The probes' mean intensity over their arrays as a fraction of their largest (the scale of ``delta_O``).

    Parameters
    ----------
    probes : sequence of ndarray complex (layers, H, W)
        The probe storages lighting one object (their layers: incoherent
        modes or eigen-probes, summed as intensities).

    Returns
    -------
    float
        ``mean(I) / max(I)`` with ``I = sum_layers |P|^2`` (dimensionless,
        in ``(0, 1]``), averaged over the probes; 1 for probes without
        intensity. A focused spot in a large array gives a few thousandths,
        a flat or annular probe filling its array a tenth or more
        (:mod:`ptycli.engines.lsqml.engine`, regularisation).
    """
    out = []
    for P in probes:
        a = np.asarray(P)
        intensity = (a.real ** 2 + a.imag ** 2).reshape((-1,) + a.shape[-2:]).sum(axis=0, dtype=np.float64)
        top = float(intensity.max()) if intensity.size else 0.0
        if top > 0:
            out.append(float(intensity.mean()) / top)
    return float(np.mean(out)) if out else 1.0
