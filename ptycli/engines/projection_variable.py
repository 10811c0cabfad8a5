"""DM and RAAR with a variable probe (orthogonal probe relaxation, OPR): the probe step of the overlap update.

The model ``P_j = sum_k w_jk U_k`` (eigen-probes ``U``, the layers of the
probe storage; weights ``w``, the scan model's ``probe_weights``), its gauge
and its start are :mod:`ptycli.core.variable_probe` (reference: Odstrčil et
al., Opt. Express 24, 8360 (2016), doi:10.1364/OE.24.008360).

In the projection engines (:mod:`ptycli.engines.projectional`) the pods of a
scan with a variable probe address every frame's own probe
(:meth:`PodGroup.set_frame_probes <ptycli.engines.addressing.PodGroup.set_frame_probes>`):
the Fourier step, the exit-wave update, the object update and the model
errors use ``P_j`` where a shared probe would be. The probe step of the
overlap update is the least-squares fit of the exit waves ``psi_j`` by
``O_j P_j`` in two parts, each exact for the other part fixed
(:func:`probe_step`):

1. **eigen-probes** for the current weights, one ``K x K`` system per pixel
   from all frames (:func:`eigenprobe_sums`, :func:`solve_eigenprobes`)::

       sum_l [sum_j conj(w_jk) w_jl |O_j|^2 + c_p delta_kl] U_l = sum_j conj(w_jk) conj(O_j) psi_j + c_p U_k

   (``c_p``: the probe inertia of the shared probe's update; with ``K = 1``
   and weights 1 this is that update);
2. **weights** for the new eigen-probes, one ``K x K`` system per frame for
   the change ``c_j`` (:func:`weight_sums`; Tikhonov :data:`WEIGHT_TIKHONOV
   <ptycli.engines.variable_probe.WEIGHT_TIKHONOV>` of its largest diagonal
   element, so the weights of a frame without signal stay)::

       sum_l <O_j U_k, O_j U_l> c_jl = <O_j U_k, psi_j - O_j P_j>,   w_j <- w_j + c_j

The object update between the rounds is the engine's, with each frame's
probe. After the overlap update of an iteration that updated the probe the
gauge of :func:`ptycli.engines.variable_probe.refactor_book` re-expresses
``(w, U)`` as principal components (every ``P_j`` unchanged). Alternating
these least-squares steps on fixed exit waves is the alternating fit of a
rank-``K`` factorisation of the set of frame probes; its fixed point is the
truncated SVD the paper takes of the per-frame updated probes.

Measured (``benchmarks/validate_opr.py --engine DM:200``: issue 16's
simulated fly scan, flux +-30 %, beam +-2 px, defocus +-20 depths of field,
seed 3, data-driven probe guess): frames' probes worst / median, object:
DM 200 with 3 eigen-probes 0.930 / 0.985, 0.999; with 4 0.956 / 0.984,
0.999; one shared probe 0.754 / 0.783, 0.952; DM 200 then ePIE 100 (3)
0.950 / 0.990, 0.999; RAAR 200 (3) 0.820 / 0.928, 0.997 (one probe 0.790
/ 0.872, 0.965); ePIE 200 (3) 0.971 / 0.988, 0.999.

Under MPI the per-pixel systems (``K^2 + K`` frames of sums) are summed over
the ranks, once per round; every weight row stays on the rank of its frame.
The passes are numpy (the engine chooses them for a run with a variable
probe, logged).

Cost per round and frame besides the shared probe's: the eigen-probe sums
(``2 K^2`` real and ``K`` complex multiply-adds per pixel), the weight
system (``2 K^2`` real and ``K`` complex per pixel, with ``conj(U_k) U_l``
formed once per round), the residual and two mixings ``sum_k w_jk U_k``;
per round and pixel one ``K x K`` solve. The sums over frames are
``numpy.einsum``, not BLAS matrix products: on the busy test machine the
BLAS threads cost 10-20 times more CPU time for these shapes (144 frames of
64 x 64, ``K = 3``: the probe step 111 ms against 27 ms with einsum).
"""

import numpy as np

from ..core.variable_probe import frame_probes
from .variable_probe import solve_weights

__all__ = ["eigenprobe_sums", "solve_eigenprobes", "weight_sums", "probe_step"]


def eigenprobe_sums(g, blocks, A, B):
    """Add group ``g``'s sums of the eigen-probe systems (step 1 of the module docstring) into ``A`` and ``B``.

    Parameters
    ----------
    g : PodGroup
        A group of a variable probe (its exit waves, object windows and weights).
    blocks : list of (f0, f1, p0, p1)
        The group's frame blocks.
    A : ndarray (K, K, H * W) complex128
        ``sum_j conj(w_jk) w_jl |O_j|^2`` per pixel (accumulated).
    B : ndarray (K, H * W) complex128
        ``sum_j conj(w_jk) conj(O_j) psi_j`` per pixel (accumulated).
    """
    K = A.shape[0]
    ob = g.obj.data
    for f0, f1, p0, p1 in blocks:
        n = p1 - p0
        O = g.gather_object(ob, p0, p1)
        w = g.frame_weights(g.frame[p0:p1])                        # (pods, K) complex128
        o2 = (O.real * O.real + O.imag * O.imag).reshape(n, -1)
        M = (np.conj(w)[:, :, None] * w[:, None, :]).reshape(n, K * K)
        # real and imaginary parts of sum_j M_j |O_j|^2 in one real product (the frame's type); einsum, not the
        # BLAS matrix product, whose threads cost 10-20 times more CPU time on a busy machine (measured)
        R = np.einsum("qp,pm->qm", np.concatenate([M.real.T, M.imag.T]).astype(o2.dtype), o2)
        Af = A.reshape(K * K, -1)                                  # a view (A is contiguous)
        Af += R[:K * K] + 1j * R[K * K:]
        y = np.conj(O, out=O)
        y *= g.read_exit(p0, p1)
        B += np.einsum("pk,pm->km", np.conj(w).astype(y.dtype), y.reshape(n, -1))


def solve_eigenprobes(A, B, U, c_p):
    """The eigen-probes of step 1 (module docstring): solve the ``K x K`` system of every pixel, into ``U``.

    Parameters
    ----------
    A : ndarray (K, K, H * W) complex128
        Summed matrices (changed: the inertia added).
    B : ndarray (K, H * W) complex128
        Summed right-hand sides (changed).
    U : ndarray (K, H, W) complex
        The eigen-probes: the inertia's anchor, then the solution (in place).
    c_p : float
        Inertia weight (pixels whose matrix vanishes keep their eigen-probes when it is positive).
    """
    K = A.shape[0]
    flat = U.reshape(K, -1)
    # a floor far below any lit pixel's matrix keeps an unlit pixel's system regular when c_p is 0
    c = max(float(c_p), 1e-12 * float(np.max(np.einsum("kkm->m", A).real, initial=0.0)), 1e-300)
    for k in range(K):
        A[k, k] += c
    B += c * flat
    X = np.linalg.solve(np.moveaxis(A, 2, 0), np.moveaxis(B, 1, 0)[..., None])[..., 0]  # (H * W, K)
    flat[...] = X.T


def weight_sums(g, blocks, U):
    """The weight changes of step 2 (module docstring) of group ``g``'s frames, for the eigen-probes ``U``.

    Returns
    -------
    ndarray (frames, K) complex128
        ``c_j`` of every frame of the group (0 for frames without signal).
    """
    K = U.shape[0]
    ob = g.obj.data
    out = np.zeros((g.n_frames, K), np.complex128)
    Uf = U.reshape(K, -1)
    # <O_j U_k, O_j U_l> = sum |O_j|^2 conj(U_k) U_l: the products conj(U_k) U_l once, real and imaginary parts
    C = (np.conj(Uf)[:, None] * Uf[None]).reshape(K * K, -1)
    C = np.concatenate([C.real, C.imag])
    Uc = np.conj(Uf)
    for f0, f1, p0, p1 in blocks:
        n = p1 - p0
        O = g.gather_object(ob, p0, p1)
        P = frame_probes(U, g.frame_weights(g.frame[p0:p1]))
        o2 = (O.real * O.real + O.imag * O.imag).reshape(n, -1)
        GR = np.einsum("pm,qm->pq", o2, C)                           # einsum: see eigenprobe_sums
        G = (GR[:, :K * K] + 1j * GR[:, K * K:]).reshape(n, K, K).astype(np.complex128)
        z = g.read_exit(p0, p1) - O * P                              # psi_j - O_j P_j
        z *= np.conj(O)
        b = np.einsum("pm,km->pk", z.reshape(n, -1), Uc).astype(np.complex128)
        starts = g.pod_start[f0:f1] - p0
        if n != f1 - f0:  # object modes: sum a frame's pods
            G = np.add.reduceat(G, starts, axis=0)
            b = np.add.reduceat(b, starts, axis=0)
        out[f0:f1] = solve_weights(G, b)
    return out


def probe_step(groups, blocks, U, c_p, reduce=None):
    """One probe step of the overlap update for one variable probe storage (eigen-probes, then weights).

    Parameters
    ----------
    groups : list of PodGroup
        The groups of this process that use the storage (frame probes on).
    blocks : dict
        ``id(group)`` -> its frame blocks.
    U : ndarray (K, H, W) complex
        The eigen-probes (the probe storage's data; updated in place).
    c_p : float
        Probe inertia weight (:meth:`ProjectionEngine.probe_update
        <ptycli.engines.projectional.ProjectionEngine.probe_update>`).
    reduce : callable, optional
        Sums an ndarray over the MPI ranks in place (None: one process). Collective.

    Returns
    -------
    (change, norm) : float, float
        ``sum_j |P_j' - P_j|^2`` and ``sum_j |P_j'|^2`` over this process's frames (the relative change of
        the frame probes, once summed over the ranks).
    """
    K = U.shape[0]
    HW = U.shape[1] * U.shape[2]
    old = [g.model_probe() for g in groups]                          # the frames' probes before the step
    A = np.zeros((K, K, HW), np.complex128)
    B = np.zeros((K, HW), np.complex128)
    for g in groups:
        eigenprobe_sums(g, blocks[id(g)], A, B)
    if reduce is not None:
        reduce(A)
        reduce(B)
    solve_eigenprobes(A, B, U, c_p)
    change = norm = 0.0
    for g, before in zip(groups, old):
        g.probe_weights[g.frame_di] += weight_sums(g, blocks[id(g)], U)
        after = g.model_probe()
        d = after - before
        change += float(np.vdot(d, d).real)
        norm += float(np.vdot(after, after).real)
    return change, norm
