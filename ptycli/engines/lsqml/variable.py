"""LSQ-ML with a variable probe (orthogonal probe relaxation, OPR): every frame's probe from eigen-probes.

References: Odstrčil, Menzel & Guizar-Sicairos, Opt. Express 26, 3108
(2018), doi:10.1364/OE.26.003108 (LSQ-ML, with the variable probe as one of
its extensions); Odstrčil et al., Opt. Express 24, 8360 (2016),
doi:10.1364/OE.24.008360 (OPR). The model, its gauge and the starting
eigen-probes are :mod:`ptycli.core.variable_probe`: frame ``j`` sees
``P_j = sum_k w_jk U_k`` with the eigen-probes ``U_k`` the layers of the
scan's probe storage and the weights ``w`` the scan model's
``probe_weights`` (rows = diffraction rows).

What changes in a batch (:mod:`ptycli.engines.lsqml.engine`)
-----------------------------------------------------------
1. **Exit waves and object direction** use every frame's own probe ``P_j``
   (:meth:`VariableGroupBatch.probe_rows` mixes the storage's layers with
   the frame's weights, so the object sums ``conj(P_j) chi_j``, ``|P_j|^2``,
   the step system and the position estimate are those of the frame's probe).
2. **Eigen-probe directions**: the least-squares direction of each
   eigen-probe for the current weights, mode by mode (the batch's probe
   direction of the engine with ``w_j0 = 1``, ``K = 1``)::

       dU_k = sum_j conj(w_jk) conj(O_j) chi_j / (sum_j |w_jk|^2 |O_j|^2 + delta_P)

   (:meth:`VariableGroupBatch.direction_sums`). A frame's probe direction is
   ``dP_j = sum_k w_jk dU_k`` (the same mixing as ``P_j``), which enters the
   per-frame 2 x 2 step system as the probe direction does; every
   eigen-probe moves by the batch mean of the probe steps,
   ``U_k <- U_k + probe_step mean(a_P) dU_k``, so frame ``j``'s probe moves
   by ``probe_step mean(a_P) dP_j``.
3. **Weights** (least squares per frame, :meth:`VariableGroupBatch.weight_steps`):
   the change ``c_j`` of frame ``j``'s weights that best explains, in the
   exit-wave plane, what is left of ``chi_j`` after the eigen-probe update::

       c_j = argmin_c || chi_j - a v_j - sum_k c_k O_j U_k ||^2       (a = probe_step mean(a_P), v_j = O_j dP_j)

   a ``K x K`` system per frame (Gram matrix ``<O_j U_k, O_j U_l>``,
   Tikhonov ``1e-3`` of its largest diagonal element), then
   ``w_j <- w_j + probe_step c_j``. Before ``probe_update_start`` the
   weights, like the probe, stay.
4. **Gauge** after every epoch that updated the probe:
   :func:`ptycli.engines.variable_probe.refactor_book` (the PIE family's:
   eigen-probes orthogonal and ordered by power, weight columns of mean
   power 1), then the probe constraints.

Step 3 takes the variation from frame to frame, step 2 what all frames of a
batch share; the gauge keeps the eigen-probes the principal components of
the set of frame probes (the alternating least-squares fit of a rank-``K``
factorisation, whose fixed point is the truncated SVD the paper uses).

Under MPI every weight row belongs to the rank holding its frame (no
communication); the eigen-probe sums are reduced with the batch's other
sums and the gauge's sums by :func:`ptycli.parallel.allreduce`, so results
do not depend on the number of ranks. The passes are numpy: an engine with a
variable probe runs its groups with :class:`VariableGroupBatch` even where
``kernels`` would choose the compiled passes (logged).

Cost per frame besides the thin-object LSQ-ML: forming ``P_j`` (one matrix
product over the pods), the ``K`` weighted probe sums, and the weight
system: ``K`` products ``O_j U_k`` and ``K (K + 1) / 2 + K`` dot products.
"""

import numpy as np

from ..variable_probe import WEIGHT_TIKHONOV, refactor_book, solve_weights
from .batch import GroupBatch

__all__ = ["VariableGroupBatch", "WEIGHT_TIKHONOV", "refactor_book", "solve_weights", "update_weights"]

class VariableGroupBatch(GroupBatch):
    """:class:`~ptycli.engines.lsqml.batch.GroupBatch` for a group whose probe is variable (module docstring).

    Parameters
    ----------
    g : PodGroup
        A group with ``probe_weights`` (its probe storage's layers are the eigen-probes).
    noise, eps
        As for :class:`~ptycli.engines.lsqml.batch.GroupBatch`.
    """

    def __init__(self, g, noise, eps):
        super().__init__(g, noise, eps)
        self.weights = g.probe_weights                               # live (rows, K) complex128
        self.pod_row = np.asarray(g.frame_di, np.int64)[g.frame]     # weight row of every pod

    def pod_weights(self, pods):
        """The weights of the pods' frames, (pods, K) in the model's complex type."""
        return self.weights[self.pod_row[pods]].astype(self.ctype)

    def probe_rows(self, layers, pods):
        """Every pod's frame probe ``sum_k w_jk layers_k``: (pods, H, W) (``layers`` (K, H, W), any plane)."""
        K = layers.shape[0]
        n = len(pods)
        return np.einsum("pk,km->pm", self.pod_weights(pods), layers.reshape(K, -1)).reshape((n,) + layers.shape[1:])

    def probe_sums(self, acc, ob, chi, pods):
        """The eigen-probe sums of step 2 (module docstring): ``numP_k += sum conj(w_jk) conj(O_j) chi_j``, ``denP_k``."""
        K = acc["numP"].shape[0]
        n = len(pods)
        wc = np.conj(self.pod_weights(pods))                        # (pods, K)
        po = np.conj(ob) * chi
        # einsum, not the BLAS matrix product: with these shapes (K or n small) complex64 products were
        # 10-100x slower at times on the test machine
        num = np.einsum("pk,pm->km", wc, po.reshape(n, -1)).reshape((K,) + chi.shape[1:])
        if self.pre is not None:
            num *= np.conj(self.pre)
        acc["numP"] += num
        o2 = (ob.real * ob.real + ob.imag * ob.imag).reshape(n, -1)
        w2 = (wc.real * wc.real + wc.imag * wc.imag).astype(self.ftype)
        acc["denP"] += (w2.T @ o2).reshape((K,) + chi.shape[1:])

    def weight_steps(self, c, layers, dP, probe_step):
        """Step 3: the frames' weight changes ``c_j`` (frames, K) complex128 for the eigen-probes ``layers``.

        ``dP`` the eigen-probe directions (K, H, W) (None: no probe update,
        the residual is ``chi_j``), ``probe_step`` the step applied to them
        (``probe_step mean(a_P)``).
        """
        pods, starts, chi = c["pods"], c["starts"], c["chi"]
        ob = c["ob"] if c["ob"] is not None else self.windows(c["obj"], pods)
        n = len(pods)
        K = layers.shape[0]
        r = chi
        if dP is not None and probe_step != 0:
            r = chi - self.ctype.type(probe_step) * (self.probe_rows(self.probe_eff(dP), pods) * ob)
        Y = ob[:, None] * self.probe_eff(layers)[None]              # (pods, K, H, W): O_j U_k
        Yf = Y.reshape(n, K, -1)
        Yc = np.conj(Yf)
        G = np.einsum("pkm,plm->pkl", Yc, Yf).astype(np.complex128)      # (pods, K, K)
        b = np.einsum("pkm,pm->pk", Yc, r.reshape(n, -1)).astype(np.complex128)   # (pods, K)
        if len(starts) != n:  # object modes: sum a frame's pods
            G = np.add.reduceat(G, starts, axis=0)
            b = np.add.reduceat(b, starts, axis=0)
        return solve_weights(G, b)

    def apply_weights(self, c, change):
        """``w_j += change_j`` for the part's frames (rows of this group's frames)."""
        self.weights[np.asarray(self.g.frame_di, np.int64)[c["frames"]]] += change


def update_weights(pool, groups, items, states, probes, directions, step, weight_step):
    """Step 3 for a batch's work items on the engine's threads: every variable group's frames get new weights.

    Parameters
    ----------
    pool : BlockPool
        The engine's threads (item ``i`` on thread ``i % T``).
    groups : list of GroupBatch
        The engine's group passes (only :class:`VariableGroupBatch` ones are touched).
    items, states : lists
        The batch's work items ``(group index, frames)`` and their states (from ``exit_update``).
    probes, directions : dict
        Probe storage ID -> the eigen-probes (K, H, W) before the batch's update and their directions.
    step : float
        The step the eigen-probes take (``probe_step mean(a_P)``).
    weight_step : float
        Factor on the least-squares weight changes (``probe_step``).
    """

    def one(k, i):
        G = groups[items[i][0]]
        if not isinstance(G, VariableGroupBatch):
            return
        sid = G.g.probe.ID
        change = G.weight_steps(states[i], probes[sid], directions.get(sid), step)
        G.apply_weights(states[i], weight_step * change)

    pool.map(one, range(len(items)))
