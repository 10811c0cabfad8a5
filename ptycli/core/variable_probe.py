"""Variable probe (orthogonal probe relaxation, OPR): the model, its gauge and its start.

Reference: M. Odstrčil, P. Baksh, S. A. Boden, R. Card, J. E. Chad, J. G.
Frey and W. S. Brocklesby, "Ptychographic coherent diffractive imaging with
orthogonal probe relaxation", Opt. Express 24, 8360 (2016),
doi:10.1364/OE.24.008360.

(The ``variable_modes`` of the parameters; PtyPy users know the idea as the
"OPR" custom engine, Tike and PtychoShelves as the variable probe.)

Model
-----
With ``illumination.variable_modes: K`` every frame ``f`` of a scan has its
own probe, a weighted sum of ``K`` eigen-probes ``U_k`` shared by all frames::

    P_f = sum_k w_fk U_k            (w: complex weights, (frames, K))

The paper's observation: the probes of a real scan (flux, beam position,
focus drifting during a fly scan) form a set of low rank, so that a few
orthogonal modes describe every frame's probe; letting each frame's probe
relax within that subspace removes the artefacts a single shared probe
leaves, while the low rank keeps the problem as well posed as ptychography
with one probe. The eigen-probes are the layers of the scan's probe storage
(layer 0, the strongest, is the one the pods view); the weights are the scan
model's ``probe_weights`` (this process's frames, rows in the order of its
frames).

Gauge (:func:`reparametrize`): after every iteration the pair ``(w, U)`` is
re-expressed, without changing any ``P_f``, as the principal components of
the set of probes: the eigen-probes orthogonal and ordered by power, the
weight columns orthogonal over the frames with mean power one,
``(1/N) sum_f conj(w_fj) w_fk = delta_jk``. So ``|U_k|^2`` summed over the
frame is the mean power mode ``k`` carries per frame, ``U_0`` is close to the
mean probe when the variation is weak, and the weights of mode 0 are about
1. Phases: ``sum_f w_f0`` is real and positive; for ``k >= 1``,
``sum_f w_fk^2`` is real and positive (weights that are real up to a common
phase come out real) and their correlation with the frame index is not
negative.

The update of weights and eigen-probes inside the engines is
:mod:`ptycli.engines.variable_probe` (the PIE family),
:mod:`ptycli.engines.lsqml.variable` (LSQML) and
:mod:`ptycli.engines.projection_variable` (DM, RAAR).
"""

import numpy as np

__all__ = ["frame_probe", "frame_probes", "reparametrize", "initial_eigenprobes", "low_rank", "SINGULAR"]

#: Relative eigenvalue below which the weights' Gram matrix counts as singular (the gauge then only orthogonalises).
SINGULAR = 1e-10

def frame_probe(U, w, out, tmp=None):
    """``out = sum_k w_k U_k`` (in place).

    Parameters
    ----------
    U : ndarray (K, H, W) complex
        Eigen-probes.
    w : ndarray (K,) complex
        The frame's weights.
    out : ndarray (H, W) complex
        Receives the frame's probe (the type of ``U``).
    tmp : ndarray (H, W), optional
        Scratch frame.
    """
    ct = out.dtype.type
    np.multiply(U[0], ct(w[0]), out=out)
    if len(w) > 1:
        if tmp is None:
            tmp = np.empty_like(out)
        for k in range(1, len(w)):
            np.multiply(U[k], ct(w[k]), out=tmp)
            out += tmp
    return out


def frame_probes(U, W, out=None):
    """Every frame's probe ``out[f] = sum_k W[f, k] U_k`` (``K`` passes over the stack).

    Parameters
    ----------
    U : ndarray (K, H, W) complex
        Eigen-probes.
    W : ndarray (n, K) complex
        The frames' weights.
    out : ndarray (n, H, W), optional
        Receives the probes (default: a new array of ``U``'s type).

    Returns
    -------
    ndarray (n, H, W)
    """
    ct = U.dtype
    if out is None:
        out = np.empty((W.shape[0],) + U.shape[1:], dtype=ct)
    w = np.asarray(W).astype(ct)
    for f0 in range(0, len(w), 64):  # in chunks: small temporaries
        o, wc = out[f0:f0 + 64], w[f0:f0 + 64]
        np.multiply(wc[:, 0, None, None], U[0], out=o)
        for k in range(1, U.shape[0]):
            o += wc[:, k, None, None] * U[k]
    return out


def _reduce_none(a):
    return a


def reparametrize(U, W, reduce=None, frames=None):
    """Re-express ``(W, U)`` as principal components without changing ``W @ U`` (in place; see the gauge above).

    Parameters
    ----------
    U : ndarray (K, H, W) complex
        Eigen-probes.
    W : ndarray (n, K) complex128
        Weights of this process's frames.
    reduce : callable, optional
        Sums an ndarray over the MPI ranks in place (``ptycli.parallel.allreduce``); None for one process.
    frames : ndarray (n,), optional
        Global frame indices of the rows of ``W`` (the sign gauge); default ``0 .. n-1``.

    Returns
    -------
    T : ndarray (K, K) complex128
        The change of basis: ``W <- W T``, ``U <- T^-1 U``.
    """
    reduce = reduce or _reduce_none
    K = U.shape[0]
    flat = U.reshape(K, -1)
    Wd = W.astype(np.complex128)
    A = reduce(Wd.conj().T @ Wd)                       # (K, K) weight Gram, all frames
    n = float(reduce(np.array([float(len(W))]))[0])
    Cu = (flat @ flat.conj().T).astype(np.complex128)  # U U^H
    da, Ea = np.linalg.eigh(A)
    if n <= 0 or not da.max() > 0 or da.min() <= SINGULAR * da.max():
        # weights of some mode vanish (the start): only make the eigen-probes orthogonal, strongest first
        du, Eu = np.linalg.eigh(Cu)
        T = Eu[:, np.argsort(du)[::-1]]
        Tinv = T.conj().T
    else:
        sq = np.sqrt(da)
        M = (sq[:, None] * (Ea.conj().T @ Cu @ Ea)) * sq[None, :]
        s2, X = np.linalg.eigh(M)
        X = X[:, np.argsort(s2)[::-1]]
        T = np.sqrt(n) * (Ea / sq[None, :]) @ X
        Tinv = (X.conj().T * sq[None, :]) @ Ea.conj().T / np.sqrt(n)
    Wn = Wd @ T
    # phases (and signs) of the weight columns
    if frames is None:
        frames = np.arange(len(W), dtype=np.float64)
    stats = np.zeros((3, K), dtype=np.complex128)
    stats[0] = Wn.sum(axis=0)
    stats[1] = (Wn * Wn).sum(axis=0)
    stats[2, 0] = np.sum(frames)
    stats = reduce(stats)
    mean_f = stats[2, 0].real / n if n > 0 else 0.0
    phase = np.ones(K, dtype=np.complex128)
    if abs(stats[0, 0]) > 0:
        phase[0] = np.exp(-1j * np.angle(stats[0, 0]))
    for k in range(1, K):
        if abs(stats[1, k]) > 0:
            phase[k] = np.exp(-0.5j * np.angle(stats[1, k]))
    trend = np.zeros(K)
    trend[:] = ((Wn * phase[None, :]).real * (np.asarray(frames, float) - mean_f)[:, None]).sum(axis=0)
    trend = reduce(trend)
    phase[1:] *= np.where(trend[1:] < 0, -1.0, 1.0)
    T = T * phase[None, :]
    Tinv = Tinv / phase[:, None]
    W[...] = Wd @ T
    flat[...] = (Tinv @ flat.astype(np.complex128)).astype(flat.dtype)
    return T


def initial_eigenprobes(P0, K, seed=1):
    """``K`` starting eigen-probes: ``P0`` and first-order variations of it, orthogonal, each with ``P0``'s power.

    Modes 1, 2, 3 are ``P0`` times ``x``, ``y`` (a shift) and ``i (r^2 - <r^2>)``
    (a change of focus), with coordinates in units of the probe's rms
    width; further modes are ``P0`` times smooth random complex fields (seeded).

    Returns
    -------
    ndarray (K, H, W) of P0's type
    """
    P0 = np.asarray(P0)
    H, Wd = P0.shape
    out = np.zeros((K, H, Wd), dtype=np.complex128)
    out[0] = P0
    inten = np.abs(P0.astype(np.complex128)) ** 2
    tot = float(inten.sum())
    y, x = np.mgrid[:H, :Wd].astype(np.float64)
    if tot > 0:
        cy, cx = float((inten * y).sum() / tot), float((inten * x).sum() / tot)
        r2 = float((inten * ((y - cy) ** 2 + (x - cx) ** 2)).sum() / tot)
    else:
        cy, cx, r2 = H / 2.0, Wd / 2.0, float(H * Wd)
    sig = np.sqrt(max(r2, 1.0))
    yn, xn = (y - cy) / sig, (x - cx) / sig
    rng = np.random.default_rng(seed)
    fields = [xn, yn, 1j * (xn ** 2 + yn ** 2 - 2.0)]
    norm0 = np.sqrt(tot) if tot > 0 else 1.0
    for k in range(1, K):
        if k - 1 < len(fields):
            f = fields[k - 1]
        else:
            f = np.zeros((H, Wd), np.complex128)
            for _ in range(3):  # a few smooth (low-order) random waves
                a = rng.normal(size=2) * np.pi / 2
                f = f + rng.normal() * np.exp(1j * (a[0] * yn + a[1] * xn + rng.uniform(0, 2 * np.pi)))
        v = P0 * f
        for j in range(k):  # Gram-Schmidt against the modes before
            nj = np.vdot(out[j], out[j]).real
            if nj > 0:
                v = v - out[j] * (np.vdot(out[j], v) / nj)
        nv = np.sqrt(np.vdot(v, v).real)
        out[k] = v * (norm0 / nv) if nv > 0 else 0.0
    return out.astype(P0.dtype if P0.dtype.kind == "c" else np.complex128)


def low_rank(probes, K):
    """The best rank-``K`` approximation of a stack of probes (truncated SVD), in the gauge of :func:`reparametrize`.

    Parameters
    ----------
    probes : ndarray (N, H, W) complex
    K : int

    Returns
    -------
    (U, W) : ndarray (K, H, W) complex128, ndarray (N, K) complex128
        ``probes ~ W @ U`` (``W`` columns with mean power 1).
    """
    N = probes.shape[0]
    A = probes.reshape(N, -1).astype(np.complex128)
    u, s, vh = np.linalg.svd(A, full_matrices=False)
    W = u[:, :K] * np.sqrt(N)
    U = (s[:K, None] * vh[:K]) / np.sqrt(N)
    U = U.reshape((K,) + probes.shape[1:])
    reparametrize(U, W)
    return U, W
