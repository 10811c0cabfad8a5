"""Noise models of the ML engine (``ML_type``): one class each, the engine asks the model.

The negative log-likelihood is a sum over measured pixels (mask ``m``,
counts ``n``) of a per-pixel term ``l(I)`` of the model intensity ``I``:

=============  ===========================================  ===============================
``gaussian``   ``w (I - n)^2`` with ``w = mask / (n + 1)``   ``l' = 2 w (I - n)``, ``l'' = 2 w``
``poisson``    ``mask (I - n log(I + e) + n log n - n)``     ``l' = mask (1 - n / (I + e))``
``euclid``     ``mask (sqrt(I + e) - sqrt(n))^2``            ``l' = mask (1 - sqrt(n / (I + e)))``
=============  ===========================================  ===============================

(``e`` is :data:`EPS_REL` times the mean count per valid pixel; it keeps the
Poisson and Euclid terms finite where the model is dark.)

With a fitted incoherent background ``B`` (:mod:`ptycli.core.background`)
``I`` includes it, and each model takes one closed-form step on ``B`` per
iteration from ``g = sum_j l'(I_j)`` (its derivative, summed over frames),
``m = sum_j m_j``, ``w = sum_j m_j / (n_j + 1)`` and ``s = sum_j m_j n_j / (n_j + 1)``
(:meth:`~NoiseModel.background_step`, then the weighted smoothing). The
multiplicative steps change ``B`` little where the coherent signal is bright
(by its share of the intensity), so the noisy per-pixel estimate there does
not take over:

=============  ================================================================
``gaussian``   ``B sum_j w_j n_j / sum_j w_j I_j = B s / (g / 2 + s)`` with
               ``s = sum_j w_j n_j``: the multiplicative step of weighted least
               squares (ISRA; Daube-Witherspoon & Muehllehner, IEEE Trans. Med.
               Imaging 5, 61 (1986), doi:10.1109/TMI.1986.4307748), never negative
``poisson``    ``B (1 - g / m) = B sum_j m_j n_j / I_j / m``: the EM step
               (Richardson-Lucy; Shepp & Vardi, IEEE Trans. Med. Imaging 1, 113
               (1982), doi:10.1109/TMI.1982.4307558), never negative and, before
               smoothing, never raising the cost
``euclid``     ``B (1 - g / m)^2``: its amplitude analogue
=============  ================================================================

The Gaussian weights ``1 / (n + 1)`` favour low counts, so its background
comes out low on Poisson data (a flat background of 12 counts per pixel,
64 x 64 frames, DM 100 + ML 50: 13 % low, relative rms error 0.14, against
0.06 with ``poisson``): ``poisson`` suits counted data, and ``ML_type: auto``
(the default) takes it there.

Each model (:class:`Gaussian`, :class:`Poisson`, :class:`Euclid`, all
:class:`NoiseModel`) holds, for the numpy passes, its cost and derivatives
on a block (:meth:`~NoiseModel.cost_terms`), its closed-form per-frame
intensity scale (:meth:`~NoiseModel.floating_scale`), its line-search
coefficients and step (:meth:`~NoiseModel.line_coefficients`,
:meth:`~NoiseModel.step_length`) and its constants. The compiled kernels
(:mod:`ptycli.engines.fused_ml`) write the same per-pixel formulas once more
in numba and know a model by its :attr:`~NoiseModel.code`.

:func:`noise_terms` and :func:`floating_scale` are the models' formulas as
pure functions of a model name (the tests' entry points).
"""

import numpy as np

from ...core.background import smooth
from .line_search import newton_step, poly_argmin, square_coefficients
from .sums import fdot, fsum

__all__ = ["NoiseModel", "Gaussian", "Poisson", "Euclid", "NOISE_MODELS", "ML_TYPES", "EPS_REL",
           "noise_model", "noise_terms", "floating_scale"]

#: Relative regularisation of dark model pixels (Poisson, Euclid): ``e = EPS_REL * mean counts``.
EPS_REL = 1e-6


class NoiseModel:
    """A noise model of the likelihood (subclasses: one per ``ML_type``).

    Attributes
    ----------
    name : str
        The ``ML_type`` value.
    code : int
        The model's number in the compiled kernels (:mod:`ptycli.engines.fused_ml`).
    n_line : int
        Line-search coefficients per pass (the polynomial's degree + 1).
    residual_aux : bool
        Whether :meth:`cost_terms` stores the residual ``I - n`` in ``aux``
        (always), rather than ``l''`` (when asked).
    """

    name = None
    code = None
    n_line = 3
    residual_aux = False

    # -- constants --------------------------------------------------------------------------
    def eps(self, mean_counts):
        """The dark-pixel regularisation ``e`` for a mean count per valid pixel."""
        return EPS_REL * mean_counts

    def cost_constant(self, blocks):
        """The cost's data-only constant (so that a perfect fit costs about zero).

        ``blocks`` yields ``(counts, mask)`` per frame block (mask None: all
        valid); read only by the models that have a constant.
        """
        return 0.0

    def block_weight(self, photon_weight, mask):
        """The per-pixel weight the cost uses: the mask (None: all valid) or ``mask / (n + 1)``."""
        return mask

    def masked_counts(self, n, mask):
        """``mask * n`` where the cost needs it (else None)."""
        return None

    # -- cost on a block --------------------------------------------------------------------
    def cost_terms(self, I, n, weight, fmag, mn, eps, lp, aux, t1, t2, t3, second=True):
        """Cost of a frame block; ``l'`` into ``lp`` and ``aux`` (see :func:`noise_terms`).

        ``aux`` receives ``D = I - n`` (gaussian) or ``d2l/dI2`` (others, when
        ``second``). ``t1 .. t3`` are scratch arrays like ``I``; ``mn`` is
        :meth:`masked_counts`. Returns the cost (float).
        """
        raise NotImplementedError

    def photon_error(self, cost, I, n, photon_weight, t1, t2):
        """``sum mask (I - n)^2 / (n + 1)`` of a block (``t1``, ``t2``: scratch)."""
        D = np.subtract(I, n, out=t1)
        return fdot(np.multiply(D, photon_weight, out=t2), D)

    # -- floating intensities ----------------------------------------------------------------
    def scale_sums(self, fl, Ir, n, weight, fmag):
        """Per-frame numerator and denominator of the closed-form scale (``fl``: frames x pixels view)."""
        raise NotImplementedError

    def finish_scale(self, c):
        """The scale from the ratio ``num / den``."""
        return c

    def floating_scale(self, Ir, n, weight, fmag=None):
        """Per-frame intensity scale ``c`` minimising the cost of ``c * Ir`` (see :func:`floating_scale`)."""
        nf = Ir.shape[0]

        def fl(x):
            return x.reshape(nf, -1)

        num, den = self.scale_sums(fl, Ir, n, weight, fmag)
        num = num.astype(np.float64)
        den = den.astype(np.float64)
        ok = (den > 0) & (num > 0)
        c = np.ones(nf)
        c[ok] = num[ok] / den[ok]
        c = self.finish_scale(c)
        return c.astype(Ir.dtype)

    # -- line search -------------------------------------------------------------------------
    def line_coefficients(self, P, scale, aux, lp, weight, c, q, spare):
        """A block's coefficients of the cost along the search line (:attr:`n_line` floats).

        ``P`` are the block's polynomial pieces ``[J1, I2(, J3, I4)]`` with
        their factors ``scale`` (``I1 = 2 J1``, ``I3 = 2 J3``), already times
        the frames' intensity scales; ``aux``, ``lp`` and ``weight`` as stored
        by :meth:`cost_terms` (``lp`` with respect to the unscaled intensity);
        ``c`` the frames' scales shaped to broadcast, or None when all are 1;
        ``q``, ``spare``: scratch like ``aux``.
        """
        if c is not None:  # lp is d cost / d Ir; the polynomial is in I = c Ir
            lp = np.divide(lp, c, out=spare)
        J1, I2 = P[0], P[1]
        c1 = 2.0 * fdot(lp, J1)
        c2 = 2.0 * fdot(np.multiply(aux, J1, out=q), J1) + fdot(lp, I2)
        return np.array([0.0, c1, c2])

    def step_length(self, coefs):
        """The step along the line from the summed coefficients (may be negative or not finite)."""
        return newton_step(coefs)

    # -- the incoherent background (ptycli.core.background) ---------------------------------
    def background_raw(self, B, g, const):
        """The model's closed-form background step before smoothing (float64 (H, W)).

        ``g = sum_j l'(I_j)`` per pixel over all frames (the cost's derivative
        with respect to ``B``), ``const``: :func:`ptycli.core.background.frame_sums`
        (``m = sum_j m_j``, ``w = sum_j m_j / (n_j + 1)``).
        """
        raise NotImplementedError

    def background_step(self, B, g, const, sigma):
        """One background step in place: :meth:`background_raw`, then the weighted smoothing (``sigma`` px)."""
        B[...] = smooth(self.background_raw(B, g, const), const["w"], sigma)
        return B

    def _em_factor(self, g, const):
        """``1 - g / m``: the mean over frames of ``n / I`` (poisson) or ``sqrt(n / I)`` (euclid); 1 where no frame is valid."""
        m = const["m"]
        ok = m > 0
        return np.where(ok, np.maximum(1.0 - g / np.where(ok, m, 1.0), 0.0), 1.0)


class Gaussian(NoiseModel):
    """``w (I - n)^2`` with ``w = mask / (n + 1)``: the line cost is an exact polynomial."""

    name = "gaussian"
    code = 0
    n_line = 9
    residual_aux = True

    def eps(self, mean_counts):
        return 0.0

    def block_weight(self, photon_weight, mask):
        return photon_weight

    def cost_terms(self, I, n, weight, fmag, mn, eps, lp, aux, t1, t2, t3, second=True):
        np.subtract(I, n, out=aux)
        if weight is not None:
            np.multiply(aux, weight, out=lp)
        else:
            lp[...] = aux
        cost = fdot(lp, aux)
        lp *= 2.0
        return cost

    def photon_error(self, cost, I, n, photon_weight, t1, t2):
        return cost  # the cost is the photon error

    def scale_sums(self, fl, Ir, n, weight, fmag):
        wI = Ir * weight if weight is not None else Ir
        num = np.einsum("fk,fk->f", fl(wI), fl(n))
        den = np.einsum("fk,fk->f", fl(wI), fl(Ir))
        return num, den

    def line_coefficients(self, P, scale, aux, lp, weight, c, q, spare):
        return square_coefficients(aux, weight, P, q, scale)

    def step_length(self, coefs):
        return poly_argmin(coefs)

    def background_raw(self, B, g, const):
        """The multiplicative least-squares step ``B sum_j w_j n_j / sum_j w_j I_j`` (``sum w I = g / 2 + sum w n``)."""
        wn = const["wn"]
        den = 0.5 * g + wn
        ok = (den > 0) & (wn > 0)
        return np.where(ok, B * (wn / np.where(ok, den, 1.0)), B)


class Poisson(NoiseModel):
    """``mask (I - n log(I + e) + n log n - n)``, computed per pixel as the deviance ``mask (I - n + n log(n / (I + e)))``.

    The deviance is small near a fit (about ``(I - n)^2 / 2n``), so its sum
    keeps the precision that the line search needs: the raw terms
    ``n log(I + e)`` of bright pixels are large and their rounding in single
    precision made the summed cost jitter by more than the line search's
    tolerance (ML then stalled at high counts and its trial steps shrank to
    underflow).
    """

    name = "poisson"
    code = 1

    def masked_counts(self, n, mask):
        return n * mask if mask is not None else n

    def cost_terms(self, I, n, weight, fmag, mn, eps, lp, aux, t1, t2, t3, second=True):
        Ie = np.add(I, eps, out=t1)
        r = np.divide(n, Ie, out=t2)
        dev = t3
        dev.fill(0)
        np.log(r, out=dev, where=r > 0)  # n log(n / (I + e)), 0 where n = 0
        dev *= n
        dev += I
        dev -= n
        if weight is not None:
            cost = fdot(weight, dev)
            np.subtract(weight, np.multiply(weight, r, out=lp), out=lp)
        else:
            cost = fsum(dev)
            np.subtract(1.0, r, out=lp)
        if second:
            np.divide(r, Ie, out=aux)
            if weight is not None:
                aux *= weight
        return cost

    def scale_sums(self, fl, Ir, n, weight, fmag):
        if weight is not None:
            num = np.einsum("fk,fk->f", fl(weight), fl(n))
            den = np.einsum("fk,fk->f", fl(weight), fl(Ir))
        else:
            num = fl(n).sum(axis=1)
            den = fl(Ir).sum(axis=1)
        return num, den

    def background_raw(self, B, g, const):
        """The expectation-maximisation step ``B * sum_j m_j n_j / I_j / sum_j m_j`` (``= B (1 - g / m)``)."""
        return B * self._em_factor(g, const)


class Euclid(NoiseModel):
    """``mask (sqrt(I + e) - sqrt(n))^2``: least squares on amplitudes."""

    name = "euclid"
    code = 2

    def cost_terms(self, I, n, weight, fmag, mn, eps, lp, aux, t1, t2, t3, second=True):
        if fmag is None:
            fmag = np.sqrt(n)
        Ie = np.add(I, eps, out=t1)
        a = np.sqrt(Ie, out=t2)
        d = np.subtract(a, fmag, out=t3)
        if weight is not None:
            np.multiply(d, weight, out=lp)
            cost = fdot(lp, d)
            np.divide(lp, a, out=lp)
        else:
            cost = fdot(d, d)
            np.divide(d, a, out=lp)
        if second:
            np.divide(fmag, Ie, out=aux)
            aux /= a
            aux *= 0.5
            if weight is not None:
                aux *= weight
        return cost

    def scale_sums(self, fl, Ir, n, weight, fmag):
        if fmag is None:
            fmag = np.sqrt(n)
        a = np.sqrt(Ir)
        ma = a * weight if weight is not None else a
        num = np.einsum("fk,fk->f", fl(ma), fl(fmag))
        den = np.einsum("fk,fk->f", fl(ma), fl(a))
        return num, den

    def finish_scale(self, c):
        return c * c  # the ratio is that of the amplitudes

    def background_raw(self, B, g, const):
        """The amplitude analogue of the EM step: ``B (sum_j m_j sqrt(n_j / I_j) / sum_j m_j)^2``."""
        return B * self._em_factor(g, const) ** 2


#: ``ML_type`` -> model, in the order of the parameter's choices
NOISE_MODELS = {m.name: m for m in (Gaussian(), Poisson(), Euclid())}

#: Noise models of ``ML_type``.
ML_TYPES = tuple(NOISE_MODELS)


def noise_model(name):
    """The :class:`NoiseModel` of an ``ML_type`` (ValueError for an unknown one)."""
    try:
        return NOISE_MODELS[name]
    except (KeyError, TypeError):
        raise ValueError("unknown ML_type %r; valid: %s" % (name, ", ".join(ML_TYPES))) from None


def noise_terms(model, I, n, weight, fmag=None, eps=0.0, second=False):
    """Cost and its derivatives with respect to the model intensity, per pixel.

    Parameters
    ----------
    model : str
        ``'gaussian'``, ``'poisson'`` or ``'euclid'``.
    I : ndarray (frames, H, W), real
        Model intensities (including a floating scale, if any).
    n : ndarray like ``I``
        Measured counts.
    weight : ndarray like ``I`` or None
        ``gaussian``: the weights ``mask / (n + 1)``; otherwise the mask
        (None: all pixels valid).
    fmag : ndarray like ``I``, optional
        ``sqrt(n)`` (``euclid`` only; computed when not given).
    eps : float
        Dark-pixel regularisation (``poisson``/``euclid``).
    second : bool
        Also return the second derivative ``l''`` (``poisson``/``euclid``).

    Returns
    -------
    cost : float
        ``sum l(I)``.
    lp : ndarray like ``I``
        ``dl/dI``.
    aux : ndarray like ``I`` or None
        ``gaussian``: ``D = I - n``; otherwise ``d2l/dI2`` when ``second``,
        else None.
    """
    m = noise_model(model)
    I = np.asarray(I)
    n = np.asarray(n, dtype=I.dtype)
    mn = m.masked_counts(n, weight)
    lp = np.empty_like(I)
    aux = np.empty_like(I)
    t = [np.empty_like(I) for _ in range(3)]
    cost = m.cost_terms(I, n, weight, fmag, mn, eps, lp, aux, *t, second=second)
    if not (second or m.residual_aux):
        aux = None
    return cost, lp, aux


def floating_scale(model, Ir, n, weight, fmag=None):
    """Per-frame intensity scale ``c`` minimising the cost of ``c * Ir`` (closed form).

    ``gaussian``: ``sum w Ir n / sum w Ir^2``; ``poisson``: ``sum mask n / sum mask Ir``;
    ``euclid``: ``(sum mask sqrt(Ir n) / sum mask Ir)^2`` (the dark-pixel
    ``e`` is neglected). Frames without signal get 1.

    Parameters are as in :func:`noise_terms` (``Ir``: the unscaled model
    intensities); returns an array (frames,) of the real type of ``Ir``.
    """
    return noise_model(model).floating_scale(Ir, n, weight, fmag)
