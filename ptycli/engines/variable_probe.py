"""Variable probe (orthogonal probe relaxation, OPR): the update of weights and eigen-probes in the engines.

The model ``P_f = sum_k w_fk U_k``, its gauge and the starting eigen-probes
are :mod:`ptycli.core.variable_probe` (with the reference: Odstrčil et al.,
Opt. Express 24, 8360 (2016), doi:10.1364/OE.24.008360).

Update (one frame, inside a PIE sweep; :func:`absorb`)
------------------------------------------------------
The PIE step updates the frame's probe ``P_f`` (built from the current
weights and eigen-probes) to ``P_f + dP``. The change is split between the
frame's weights and the eigen-probes. Its projection on the eigen-probes,
``c_k = <U_k, dP> / <U_k, U_k>`` (``U`` orthogonal at the start of the sweep)
is a change of the weights, the rest ``r = dP - g sum_k c_k U_k`` a change of
the eigen-probes, spread over them in proportion to the frame's weights with
the smallest change that reproduces it::

    w_f <- w_f + g c
    U_k <- U_k + conj(w_fk) r / sum_j |w_fj|^2         (w_f before its change)

To first order the frame's probe is then exactly ``P_f + dP``. ``g`` is the
weight step (1: the whole in-span change goes into the weights). With one
eigen-probe whose weights stay 1 this is the ePIE/rPIE probe update itself.
Over a sweep the eigen-probe changes add the frames' residuals weighted by
their conjugate weights and the weight changes project every frame's probe
on the eigen-probes: one step of the power (subspace) iteration of the set of
per-frame probes, interleaved with the PIE updates, as the paper's truncated
SVD of the per-frame probes after each iteration is, without storing a probe
per frame. The eigen-probes other than ``U_0`` start as the first-order
variations of the initial probe (:func:`initial_eigenprobes`: a shift along
x and y, a change of focus, then smooth random fields) with weights 0, so the
first iteration starts from exactly the configured probe.

Cost: per frame ``3K + 2`` passes over a frame (forming ``P_f``, the
projections, the updates) besides the PIE step; under MPI the eigen-probes
are averaged over the ranks like the probe (:mod:`ptycli.engines.stochastic`)
and the gauge uses the Gram matrices of the weights summed over the ranks.
"""

import numpy as np

from ..core.variable_probe import frame_probe, reparametrize

__all__ = ["absorb", "FrameProbes", "refactor_book"]

def absorb(U, w, dP, inv_norm2, weight_step=1.0, tmp=None):
    """Split a frame's probe change ``dP`` between its weights ``w`` and the eigen-probes ``U`` (in place).

    See the module docstring ("Update").

    Parameters
    ----------
    U : ndarray (K, H, W) complex
        Eigen-probes (updated in place).
    w : ndarray (K,) complex128
        The frame's weights (updated in place).
    dP : ndarray (H, W) complex
        Change of the frame's probe; overwritten with the residual ``r``.
    inv_norm2 : ndarray (K,) float
        ``1 / <U_k, U_k>`` (0 for an empty eigen-probe).
    weight_step : float
        ``g`` in [0, 1].

    Returns
    -------
    ndarray (K,) complex128
        The projections ``c``.
    """
    K = len(w)
    c = np.array([np.vdot(U[k], dP) for k in range(K)], dtype=np.complex128) * inv_norm2
    w_old = w.copy()
    s = float(np.vdot(w_old, w_old).real)
    ct = U.dtype.type
    if weight_step > 0:
        if tmp is None:
            tmp = np.empty_like(dP)
        for k in range(K):
            if c[k] != 0:
                np.multiply(U[k], ct(weight_step * c[k]), out=tmp)
                dP -= tmp
        w += weight_step * c
    if s > 0:
        if tmp is None:
            tmp = np.empty_like(dP)
        for k in range(K):
            if w_old[k] != 0:
                np.multiply(dP, ct(np.conj(w_old[k]) / s), out=tmp)
                U[k] += tmp
    return c


class FrameProbes:
    """The per-frame probes of one pod group during a PIE sweep (see the module docstring).

    Parameters
    ----------
    group : PodGroup
        A group whose probe storage holds the eigen-probes and whose scan model holds ``probe_weights``.
    weight_step : float
        ``g`` of :func:`absorb`.

    Attributes
    ----------
    probe : ndarray (1, H, W)
        The current frame's probe (what the frame kernel updates).
    """

    def __init__(self, group, weight_step=1.0):
        self.group = group
        self.weights = group.probe_weights          # live (n_local, K) complex128
        self.rows = np.asarray(group.frame_di, dtype=np.int64)  # weight row of each group frame
        self.weight_step = float(weight_step)
        H, W = group.shape
        self.probe = np.empty((1, H, W), dtype=group.ctype)
        self.before = np.empty((H, W), dtype=group.ctype)
        self.tmp = np.empty((H, W), dtype=group.ctype)
        self.U = None
        self.inv_norm2 = None

    def begin(self, U):
        """Start a sweep on the working eigen-probes ``U`` (K, H, W) (the probe storage or its folded copy)."""
        self.U = U
        n2 = np.array([float(np.vdot(U[k], U[k]).real) for k in range(U.shape[0])])
        self.inv_norm2 = np.where(n2 > 0, 1.0 / np.where(n2 > 0, n2, 1.0), 0.0)

    def load(self, f):
        """The probe of group frame ``f`` in :attr:`probe` (returned); a copy kept for :meth:`absorb`."""
        frame_probe(self.U, self.weights[self.rows[f]], self.probe[0], self.tmp)
        self.before[...] = self.probe[0]
        return self.probe

    def absorb(self, f):
        """Feed the kernel's change of :attr:`probe` into the weights of frame ``f`` and the eigen-probes."""
        dP = np.subtract(self.probe[0], self.before, out=self.before)
        absorb(self.U, self.weights[self.rows[f]], dP, self.inv_norm2, self.weight_step, self.tmp)


def refactor_book(book, reduce=None):
    """Apply :func:`reparametrize` to every probe storage of ``book`` that holds a variable probe.

    Returns the storage IDs handled. Collective under MPI (``reduce``): every
    rank must call it with the same storages.
    """
    done = []
    for g in book.groups:
        W = getattr(g, "probe_weights", None)
        if W is None or g.probe.ID in done:
            continue
        frames = np.asarray(g.diff.layermap, dtype=np.float64)  # global frame index of each weight row
        reparametrize(g.probe.data, W, reduce=reduce, frames=frames)
        done.append(g.probe.ID)
    return done
