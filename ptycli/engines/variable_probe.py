"""Variable probe (orthogonal probe relaxation, OPR): the update of weights and eigen-probes in the engines.

The model ``P_f = sum_k w_fk U_k``, its gauge and the starting eigen-probes
are :mod:`ptycli.core.variable_probe` (with the reference: Odstrčil et al.,
Opt. Express 24, 8360 (2016), doi:10.1364/OE.24.008360).

Update (a PIE sweep; :class:`FrameProbes`)
-----------------------------------------
The paper lets every frame's probe take its own PIE update and then replaces
the set of all per-frame probes by its best rank-``K`` approximation (a
truncated SVD) after each iteration. Here the same projection is computed
without storing a probe per frame, as one step of the subspace (orthogonal)
iteration of the set of updated probes, accumulated frame by frame:

1. frame ``f`` is given its probe ``P_f = sum_k w_fk U_k``; the PIE step
   (object and probe update, :mod:`ptycli.engines.pie_step`) turns it into
   the frame's target ``T_f``;
2. the frame's new weights are the projections of its target on the
   eigen-probes of the start of the sweep (orthogonal, ``V_k``):
   ``w'_fk = <V_k, T_f> / <V_k, V_k>``; the sweep accumulates
   ``G = sum_f conj(w'_f)^T w'_f`` (K x K) and ``B_k = sum_f conj(w'_fk) T_f``;
3. so that later frames of the same sweep profit at once (as ePIE's shared
   probe does), the change ``dP = T_f - P_f`` is spread over the working
   eigen-probes, each taking a part in proportion to its power in this
   frame, ``U_k += |U_k|^2 conj(w_fk) dP / sum_j |U_j|^2 |w_fj|^2``
   (:func:`share_change`; the frame's own probe then moves by exactly
   ``dP``; with one eigen-probe and weights 1 this is the PIE probe update);
4. at the end of the sweep the weights become ``w'`` and the eigen-probes
   the least-squares fit of all targets with them, ``U = G^-1 B``
   (:func:`fit_eigenprobes`; ``G`` and ``B`` summed over the MPI ranks);
   then the gauge of :func:`ptycli.core.variable_probe.reparametrize` makes
   them orthogonal, ordered by power, for the next sweep.

mPIE's probe momentum (:mod:`ptycli.engines.momentum`) steps the working
eigen-probes of step 3 every ``T`` frames; the refit of step 4 moves its
anchor (so the refit itself is not accelerated) and the gauge's change of
basis :func:`refactor_book` returns is applied to its velocities and anchors
(:mod:`ptycli.engines.stochastic`, "Modules").

On a set of targets that does not change, steps 2 and 4 are the orthogonal
iteration: it converges to the ``K`` strongest components of the set, i.e.
to its truncated SVD (``tests/test_variable_probe.py`` recovers a known
rank-3 set of probes to 1e-6). Before ``probe_update_start`` the frames use
their probes and nothing else changes. The eigen-probes other than ``U_0``
start as first-order variations of the initial probe and the weights as
``(1, 0, ...)`` (:func:`ptycli.core.variable_probe.initial_eigenprobes`), so
the first iteration starts from exactly the configured probe.

Visiting order (measured, ``benchmarks/validate_opr.py``): the frames'
probes change with time, so the PIE engines visit the frames of a scan with
a variable probe in the order of measurement, forth and back in turn
(``order: auto``, :mod:`ptycli.engines.stochastic`): each frame then starts
from eigen-probes just corrected by the frames measured before it. In a
random order, on a simulated fly scan whose beam drifts slowly over the whole
scan, the object takes up part of the drift (every object pixel is updated by
some twenty frames per iteration, a frame's weights by one): the frames at
the far end of the drift stayed at a probe correlation of 0.79 (ePIE 200),
against 0.96 or more in acquisition order.

Cost: per frame ``4K + 2`` passes over a frame (forming ``P_f``, a copy,
the projections, the products, the shares) besides the PIE step. Measured
(400 x 128^2, ePIE, CPU time over the one-thread FFT floor, a busy 2-core
machine): 1.27 with one probe, 1.78 / 1.77 / 1.6-1.84 / 2.27 with 1 / 2 / 3 / 4
eigen-probes; alone, the per-frame work of this module costs 0.2 / 0.56 /
0.66 / 1.14 FFT pairs (128^2, one thread; fastest of five alternating rounds).
"""

import numpy as np

from ..core.variable_probe import frame_probe, reparametrize

__all__ = ["share_change", "fit_eigenprobes", "FrameProbes", "refactor_book", "solve_weights", "WEIGHT_TIKHONOV"]

#: Tikhonov factor of a frame's weight system, times the largest diagonal element of its Gram matrix
WEIGHT_TIKHONOV = 1e-3


def share_change(U, w, dP, tmp=None):
    """Spread a frame's probe change ``dP`` over the eigen-probes ``U`` (in place); the frame's probe moves by ``dP``.

    ``U_k += s_k dP`` with ``s_k = |U_k|^2 conj(w_k) / sum_j |U_j|^2 |w_j|^2``:
    each eigen-probe takes a part in proportion to its power in this frame,
    so that ``sum_k w_k U_k`` changes by exactly ``dP`` (see the module docstring).
    """
    K = len(w)
    n2 = np.array([np.vdot(U[k], U[k]).real for k in range(K)], dtype=np.float64)
    share = n2 * np.conj(np.asarray(w, dtype=np.complex128))
    s = float(np.sum(n2 * np.abs(w) ** 2))
    if not s > 0:
        return
    if tmp is None:
        tmp = np.empty_like(dP)
    ct = U.dtype.type
    for k in range(K):
        if share[k] != 0:
            np.multiply(dP, ct(share[k] / s), out=tmp)
            U[k] += tmp


def fit_eigenprobes(gram, products, reduce=None):
    """The least-squares eigen-probes for given weights: ``U = G^-1 B``.

    Parameters
    ----------
    gram : ndarray (K, K) complex128
        ``G = sum_f conj(w_f)^T w_f`` over this process's frames.
    products : ndarray (K, H, W) complex
        ``B_k = sum_f conj(w_fk) T_f`` (the targets ``T_f``).
    reduce : callable, optional
        Sums an array over the MPI ranks in place (None: one process).

    Returns
    -------
    ndarray (K, H, W) complex128
        Minimises ``sum_f |T_f - sum_k w_fk U_k|^2`` (a pseudo-inverse where ``G`` is singular).
    """
    if reduce is not None:
        reduce(gram)
        reduce(products)
    K = gram.shape[0]
    flat = products.reshape(K, -1).astype(np.complex128)
    U = np.linalg.pinv(gram, rcond=1e-12, hermitian=True) @ flat
    return U.reshape(products.shape)


class FrameProbes:
    """The per-frame probes of one pod group during a PIE sweep (see the module docstring).

    Parameters
    ----------
    group : PodGroup
        A group whose probe storage holds the eigen-probes and whose scan model holds ``probe_weights``.

    Attributes
    ----------
    probe : ndarray (1, H, W)
        The current frame's probe (what the frame kernel updates).
    """

    def __init__(self, group):
        self.group = group
        self.weights = group.probe_weights          # live (n_local, K) complex128
        self.rows = np.asarray(group.frame_di, dtype=np.int64)  # weight row of each group frame
        H, W = group.shape
        K = self.weights.shape[1]
        self.probe = np.empty((1, H, W), dtype=group.ctype)
        self.before = np.empty((H, W), dtype=group.ctype)
        self.tmp = np.empty((H, W), dtype=group.ctype)
        self.products = np.zeros((K, H, W), dtype=group.ctype)
        self.gram = np.zeros((K, K), dtype=np.complex128)
        self.new_weights = np.array(self.weights, copy=True)
        self.U = self.V = self.inv_norm2 = None
        self.fed = 0

    def begin(self, U):
        """Start a sweep on the working eigen-probes ``U`` (K, H, W) (the probe storage or its folded copy)."""
        self.U = U
        self.V = np.array(U, copy=True)  # the basis of the projections: the eigen-probes at the start
        n2 = np.array([float(np.vdot(U[k], U[k]).real) for k in range(U.shape[0])])
        self.inv_norm2 = np.where(n2 > 0, 1.0 / np.where(n2 > 0, n2, 1.0), 0.0)
        self.products[...] = 0
        self.gram[...] = 0
        self.new_weights[...] = self.weights
        self.fed = 0

    def load(self, f):
        """The probe of group frame ``f`` in :attr:`probe` (returned); a copy kept for :meth:`feed`."""
        frame_probe(self.U, self.weights[self.rows[f]], self.probe[0], self.tmp)
        self.before[...] = self.probe[0]
        return self.probe

    def feed(self, f):
        """The kernel has updated :attr:`probe` of frame ``f``: take it as the frame's target.

        Its projections on the eigen-probes of the start of the sweep are
        the frame's new weights; it adds to the products of the fit; its
        change is spread over the eigen-probes the next frames see.
        """
        T = self.probe[0]
        V = self.V
        K = V.shape[0]
        w = np.array([np.vdot(V[k], T) for k in range(K)], dtype=np.complex128) * self.inv_norm2
        self.new_weights[self.rows[f]] = w
        self.gram += np.outer(np.conj(w), w)
        ct = self.products.dtype.type
        for k in range(K):
            np.multiply(T, ct(np.conj(w[k])), out=self.tmp)
            self.products[k] += self.tmp
        dP = np.subtract(T, self.before, out=self.before)
        share_change(self.U, self.weights[self.rows[f]], dP, self.tmp)
        self.fed += 1

    def finish(self, reduce=None):
        """End of a sweep that updated the probe: new weights and the least-squares eigen-probes (collective).

        The working eigen-probes (:meth:`begin`) are replaced by the fit of
        every frame's target with its new weights (:func:`fit_eigenprobes`).
        """
        self.weights[...] = self.new_weights
        self.U[...] = fit_eigenprobes(self.gram, self.products, reduce).astype(self.U.dtype)


def refactor_book(book, reduce=None):
    """Apply :func:`reparametrize` to every probe storage of ``book`` that holds a variable probe.

    Returns a dict storage ID -> the change of basis ``T`` (K x K) of
    :func:`reparametrize` (``W <- W T``, ``U <- T^-1 U``) for the storages
    handled. Collective under MPI (``reduce``): every rank must call it with
    the same storages.
    """
    done = {}
    for g in book.groups:
        W = getattr(g, "probe_weights", None)
        if W is None or g.probe.ID in done:
            continue
        frames = np.asarray(g.diff.layermap, dtype=np.float64)  # global frame index of each weight row
        done[g.probe.ID] = reparametrize(g.probe.data, W, reduce=reduce, frames=frames)
    return done


def solve_weights(G, b, tikhonov=WEIGHT_TIKHONOV):
    """Solve ``(G_j + t_j I) c_j = b_j`` per frame (``t_j`` = ``tikhonov`` times ``G_j``'s largest diagonal).

    Parameters
    ----------
    G : ndarray (frames, K, K) complex128
        Hermitian positive semi-definite Gram matrices.
    b : ndarray (frames, K) complex128

    Returns
    -------
    ndarray (frames, K) complex128
        Frames without signal (``G = 0``) get 0.
    """
    K = G.shape[-1]
    diag = np.einsum("fkk->fk", G).real
    t = tikhonov * diag.max(axis=1)
    ok = t > 0
    out = np.zeros(b.shape, np.complex128)
    if np.any(ok):
        A = G[ok] + t[ok, None, None] * np.eye(K)[None]
        out[ok] = np.linalg.solve(A, b[ok][..., None])[..., 0]
    return out
