"""Projection engines: Difference Map (DM) and RAAR as one generalised update.

Update rule
-----------
With ``pw = probe * object`` (the exit waves the current probe and object
predict: the overlap projection of the previous exit waves) and ``P_F`` the
(power-bound relaxed) Fourier-modulus projection, every iteration does::

    psi <- psi + beta * [P_F((1 + alpha) pw - alpha psi) - pw] + (1 - beta) (pw - psi)

followed by the overlap update (probe and object from the new ``psi``).

* **DM** (Elser's difference map in the form used in ptychography):
  ``beta = 1``: ``psi <- psi + P_F((1 + alpha) pw - alpha psi) - pw``;
  ``alpha = 1`` gives the classic ``psi + P_F(2 pw - psi) - pw``.
* **RAAR** (Luke 2005): ``x <- [beta/2 (R_F R_O + I) + (1 - beta) P_O] x`` with
  reflectors ``R = 2P - I``. Expanding,
  ``beta/2 (R_F R_O x + x) = beta/2 (2 P_F(2 P_O x - x) - (2 P_O x - x) + x)
  = beta [P_F(2 pw - psi) - pw + psi]``; adding ``(1 - beta) pw`` gives
  ``beta psi + beta [P_F(2 pw - psi) - pw] + (1 - beta) pw``, which is the
  rule above with ``alpha = 1`` (``psi - (1 - beta) psi = beta psi``).

One Fourier projection (one forward and one inverse FFT of all exit waves)
per iteration.

Fourier projection with power bound
-----------------------------------
``|F| = sqrt(sum_modes |F_k|^2)`` (modes of a frame add incoherently). For
each frame the mean squared amplitude deviation over valid pixels
``err = sum mask (|F| - sqrt(I))^2 / sum mask`` is compared with
``pbound = fourier_relax_factor**2 * mean_power / 4`` (``mean_power``: mean
measured counts per valid pixel). Frames with ``err <= pbound`` are left
unchanged (they already lie in the relaxed constraint set); the others get
the amplitude ``sqrt(I) + r (|F| - sqrt(I))`` with ``r = sqrt(pbound / err)``,
i.e. they are moved onto the boundary of the set, not onto the measurement.
The factor multiplies every mode of the frame; masked pixels are left
unchanged. With ``fourier_relax_factor = 0`` this is the plain modulus
projection.

On counted data (``noise_power_bound``) ``pbound`` is at least the
counting-noise floor: the mean over pixels of ``Var(sqrt(N))`` for Poisson
counts of the mean pattern (:mod:`ptycli.core.counting_noise`; about 1/4 on
well-lit pixels). A model closer to the data than that fits the noise. At
1e4 photons per 64 x 64 frame the relaxed bound was 0.0015 and the floor
0.072; DM 200 + Poisson ML 100 from the true probe went from an object
correlation of 0.32 to 0.91 (DM alone 0.18 to 0.88), at 1e3 photons from
0.28 to 0.66, at 1e5 from 0.94 to 0.98. At 1e6 photons and more the relaxed
bound is the larger one and nothing changes.

In the far field the projection is computed as
``conj(pre) * IFFT(m * FFT(pre * w))``: the propagator's post-FFT phase
factor cancels for the real factor ``m`` and is skipped.

Overlap update
--------------
Object (per object mode; sums over pods and MPI ranks)::

    O = (sum conj(P) psi + c_o O_old + w) / (sum |P|^2 + c_o + w),
    c_o = object_inertia * mean_power * modes,
    w = c_w^2 / (sum |P|^2 + c_w),   c_w = object_weak_floor * max sum_modes |P|^2

The inertia ``c_o`` leaves the fixed point unchanged. The weak-illumination
prior ``w`` pulls pixels that are barely lit by any frame (``sum |P|^2`` below
``c_w``, a fraction of the probe's peak intensity) towards 1, the initial
object; where the coverage exceeds ``c_w`` it fades as ``(c_w / sum |P|^2)^2``
(a bias of 1e-4 where a frame's centre passes). Without it, exit-wave noise
divided by a tiny ``sum |P|^2`` drove 10 % of a low-dose scan's object pixels
(1e4 photons per frame; all where the coverage is below 1e-4 of its peak) to
3-3000 times the lit amplitude. A prior of constant weight ``c_w`` stopped that
too, but biased the well-lit object (MoonFlower, DM 150: correlation 0.989
against 0.997).

Probe (per probe mode)::

    P = (sum conj(O) psi + c_p P_old) / (sum |O|^2 + c_p),   c_p = probe_inertia * n_frames * <|O|^2>

(``<|O|^2>``: mean object intensity over the object storage; ``n_frames``: all
frames of all ranks, the scale of ``sum |O|^2`` for a transmission object.)
The two updates alternate (object first when ``update_object_first``) until
the relative change of the constrained probe ``sqrt(sum |dP|^2 / sum |P|^2)`` falls below
``overlap_converge_factor`` or ``overlap_max_iterations`` rounds are done;
before ``probe_update_start`` only the object is updated, once. After each
probe update the probe constraints of the base class apply (support, mode
orthogonalisation and power ordering, recentring). Numerators and
denominators are summed over MPI ranks with in-place ``allreduce`` on numpy
buffers, so any number of ranks gives the same result. ``sum |P|^2`` over the
object is recomputed only when the probe changed.

Position refinement
-------------------
``position_refinement`` (:mod:`ptycli.engines.posref`) runs after the overlap
update of the scheduled iterations. When frames moved, ``sum |P|^2`` over the
object is recomputed and the exit waves of the moved frames are reset to
``probe * object`` at their new windows (their old exit waves belong to the
old windows).

Performance
-----------
Frames are processed in blocks of ``block_frames`` (about 2 MB of complex
data per block by default), so that the elementwise passes run in cache and
the temporaries stay small; each block does one batched in-place forward and
one inverse FFT over all its frames and modes (``scipy.fft``, workers from
``ptycli.core.fft.get_workers``). In the far field the work is done on
``pre * psi`` so the FFT needs no phase passes (the exit storage always holds
the true exit waves). The first object update's numerator is accumulated in
the Fourier loop, and ``sum |P|^2`` over the object only when the probe
changed. Single precision throughout.

Two implementations compute the same numbers (``kernels``, see
:func:`ptycli.engines.fused.use_compiled`): the compiled path
(:mod:`ptycli.engines.fused`: per block one pass for the projection input,
one per frame for the modulus constraint with its errors, one for the
exit-wave update with the object numerator; blocks load-balanced over the
FFT threads with accumulator slots that keep the sums independent of
timing; the object denominator, the division and the folding of the slots
in one sweep per object row band; passes after the Fourier pass run the
blocks last to first, starting where the cache is warm) and the numpy path
(window-by-window numpy calls; frames inside the power bound skip the
inverse FFT when a block has enough of them). Figures:
``benchmarks/bench_engines.py``.
"""

import numpy as np

from .. import parallel
from ..core import fft
from .._lazy import lazy_module
from ..params.declare import Parameter
from .base import Engine, register
from .posref import POSREF_PARAMS
from .threads import BlockPool
from .kernels import (fft_inplace, ifft_inplace, model_amplitude, fourier_errors, modulus_factor,
                      power_bound_renorm)  # noqa: F401

__all__ = ["ProjectionEngine", "DM", "RAAR"]

#: the compiled kernels, imported (with numba) at first use
fused = lazy_module("ptycli.engines.fused")

#: A block takes the subset path (inverse FFT only of frames outside the power
#: bound) when at most this fraction of its frames is outside; otherwise all
#: frames are transformed (those inside get the factor 1).
_SUBSET_FRACTION = 0.7



def weak_divisor(den, prior, c_obj, c_weak):
    """The object update's divisor and weak-illumination prior, in place (see the module docstring).

    ``den`` (``sum |P|^2``) becomes ``1 / (sum |P|^2 + c_o + w)`` and
    ``prior`` becomes ``w / (sum |P|^2 + c_o + w)`` with ``w = c_w^2 /
    (sum |P|^2 + c_w)``: the object is then ``num * den + prior``.
    ``prior`` is not touched when ``c_weak`` is 0.
    """
    if c_weak > 0:
        np.add(den, den.dtype.type(c_weak), out=prior)
        np.divide(den.dtype.type(c_weak * c_weak), prior, out=prior)
        den += prior
    den += den.dtype.type(c_obj)
    np.reciprocal(den, out=den)
    if c_weak > 0:
        prior *= den

_PROJECTION_PARAMS = [
    Parameter("fourier_relax_factor", 0.05, "float",
              "power bound: frames whose rms amplitude deviation is below half this fraction of the rms "
              "measured amplitude are not corrected", low=0.0),
    Parameter("noise_power_bound", True, "bool",
              "on counted data (whole numbers), raise the power bound to the counting-noise floor, so that "
              "frames already within the Poisson noise of the data are not corrected"),
    Parameter("object_inertia", 1e-4, "float",
              "weight of the previous object in the object update, relative to the mean probe power", low=0.0),
    Parameter("object_weak_floor", 1e-2, "float",
              "weight of a prior that pulls barely lit object pixels to 1, as a fraction of the probe's peak "
              "intensity (keeps them from blowing up; 0: off)", low=0.0),
    Parameter("probe_inertia", 1e-9, "float",
              "weight of the previous probe in the probe update, relative to the frames' object power",
              low=0.0),
    Parameter("overlap_converge_factor", 0.05, "float",
              "stop the object/probe inner loop when the relative probe change falls below this", low=0.0),
    Parameter("overlap_max_iterations", 10, "int", "most object/probe rounds per iteration", low=1),
    Parameter("update_object_first", True, "bool", "update the object before the probe in each round"),
    Parameter("block_frames", None, "int",
              "frames processed together (null: about 2 MB of exit waves per block)", low=1, nullable=True),
    POSREF_PARAMS,
]


def _balanced_blocks(g, max_frames):
    """Frame blocks of group ``g`` of at most ``max_frames`` frames, as equal as possible, their number a
    multiple of the FFT workers (so the threads of the compiled path get equal shares).

    Returns ``[(f0, f1, p0, p1)]`` as :meth:`~ptycli.engines.addressing.PodGroup.blocks`.
    """
    n = g.n_frames
    T = max(1, int(fft.get_workers()))
    count = -(-n // max(1, int(max_frames)))
    count = max(1, min(n, -(-count // T) * T))
    edges = np.unique(np.round(np.linspace(0, n, count + 1)).astype(np.int64))
    return [(int(f0), int(f1), int(g.pod_start[f0]), int(g.pod_start[f1])) for f0, f1 in zip(edges[:-1], edges[1:])]


class ProjectionEngine(Engine):
    """Generalised projection update (see the module docstring).

    Subclasses set :attr:`alpha` and :attr:`beta` from their parameters in
    :meth:`engine_initialize`.
    """

    NAME = "Projection"
    PARAMS = Engine.PARAMS.extended("Projection", _PROJECTION_PARAMS, doc="generalised projection engine")

    alpha = 1.0
    beta = 1.0
    #: the recorded errors are those of the projection input: add the model's own (:meth:`model_errors`)
    MODEL_ERRORS = True
    #: reset the exit waves of frames moved by position refinement to ``probe * object``
    RESET_MOVED_EXIT = True

    # -- set-up ------------------------------------------------------------
    def set_coefficients(self):
        """Set ``self.alpha`` and ``self.beta`` from the parameters (override)."""

    def engine_initialize(self):
        self.set_coefficients()
        self.pbound = float(self.p.fourier_relax_factor) ** 2 * self.mean_power / 4.0
        if self.p.noise_power_bound:
            noise = max((float(getattr(m, "noise_floor", 0.0)) for m in self.ptycho.scans.values()), default=0.0)
            self.pbound = max(self.pbound, noise)
        ctype, ftype = self.ctype, self.ftype
        # block sizes and scratch buffers (shared by all groups)
        max_pods = max_frames = 1
        self._blocks = {}
        for g in self.book.groups:
            H, W = g.shape
            if self.p.get("block_frames"):
                blocks = g.blocks(int(self.p.block_frames))
            else:
                per_frame = max(1, (g.n_pods // max(g.n_frames, 1))) * H * W * np.dtype(ctype).itemsize
                blocks = _balanced_blocks(g, max(1, int(2 * 2 ** 20 // per_frame)))
            self._blocks[id(g)] = blocks
            for f0, f1, p0, p1 in blocks:
                max_pods = max(max_pods, p1 - p0)
                max_frames = max(max_frames, f1 - f0)
        shapes = {g.shape for g in self.book.groups}
        self._scratch = {}
        for shape in shapes:
            self._scratch[shape] = dict(
                buf=fft.empty((max_pods,) + shape, dtype=ctype),  # transformed: aligned for the FFT library
                pw=fft.empty((max_pods,) + shape, dtype=ctype),
                af=np.empty((max_frames,) + shape, dtype=ftype),
                fdev=np.empty((max_frames,) + shape, dtype=ftype),
                tmp=np.empty((max_frames,) + shape, dtype=ftype),
                frame=np.empty(shape, dtype=ctype),
                frame_stack=np.empty((max_pods,) + shape, dtype=ctype) if self.beta != 1.0 else None,
            )
        # overlap-update accumulators, one per storage
        self._ob_num = {sid: np.empty_like(S.data) for sid, S in self.book.obj_storages.items()}
        self._ob_den = {sid: np.empty(S.data.shape, dtype=ftype) for sid, S in self.book.obj_storages.items()}
        # the weak-illumination prior's share of the object (see weak_divisor); unused when it is off
        self._ob_prior = {sid: np.empty(S.data.shape if self.p.object_weak_floor > 0 else (1, 1, 1), dtype=ftype)
                          for sid, S in self.book.obj_storages.items()}
        self._pr_num = {sid: np.empty_like(S.data) for sid, S in self.book.probe_storages.items()}
        self._pr_den = {sid: np.empty(S.data.shape, dtype=ftype) for sid, S in self.book.probe_storages.items()}
        self._den_valid = False
        self._fuse_object = False
        nmodes = max((S.data.shape[0] for S in self.book.probe_storages.values()), default=1)
        self.c_obj = float(self.p.object_inertia) * self.mean_power * nmodes
        n_pixels = sum(g.n_pods * g.shape[0] * g.shape[1] for g in self.book.groups)
        self._compiled = fused.use_compiled(self.p.kernels, n_pixels, self.ctype == np.complex64)
        if self._compiled:
            self._init_compiled(shapes, max_pods)

    def _init_compiled(self, shapes, max_pods):
        """Thread pool, per-thread block buffers and per-slot accumulators of the compiled path.

        Thread 0 uses the engine's own block buffer, slot 0 the engine's own
        numerators; the other threads and slots get their own (each slot an
        object- or probe-sized array), added into slot 0's after a pass.
        """
        self._pool = BlockPool(fft.get_workers())
        T = self._pool.n
        self._no_mask = np.ones((1, 1, 1), dtype=self.ftype)
        # work items: one per frame block, with the block's constant index arrays
        self._items = []
        for g in self.book.groups:
            for f0, f1, p0, p1 in self._blocks[id(g)]:
                mrows = g.frame_ma[f0:f1].copy() if not g.mask_trivial else np.zeros(f1 - f0, np.int64)
                self._items.append((g, (f0, f1, p0, p1), (g.pod_start[f0:f1 + 1] - p0, g.frame_di[f0:f1].copy(),
                                                          mrows)))

        S = self._pool.slots  # accumulator slots (BlockPool.map_slots), a few per thread

        def more(acc):
            return [acc] + [{sid: np.zeros_like(a) for sid, a in acc.items()} for _ in range(S - 1)]

        self._tbuf = [{shape: self._scratch[shape]["buf"] for shape in shapes}] + [
            {shape: fft.empty((max_pods,) + shape, dtype=self.ctype) for shape in shapes} for _ in range(T - 1)]
        # slot 0 accumulates into the engine's own numerators (they start from the inertia terms); the
        # object denominator needs no slots (fused.object_den_rows fills it in row bands)
        self._ob_num_t, self._pr_num_t, self._pr_den_t = more(self._ob_num), more(self._pr_num), more(self._pr_den)
        # accumulators of slots 1.. are zero between passes: a pass marks its set dirty, the fold that
        # adds them into slot 0's clears them in the same sweep and marks it clean
        self._dirty = set()

    def _start_sums(self, name):
        """Before a pass that accumulates into the per-slot accumulators ``self.<name>``: zero it if a fold was missed."""
        accs = getattr(self, name)
        if name in self._dirty:
            for acc in accs[1:]:
                for a in acc.values():
                    a.fill(0)
        self._dirty.add(name)

    def _fold_sums(self, name, rows=slice(None)):
        """Add slots 1.. of ``self.<name>`` into slot 0's (rows ``rows``), zeroing them as they are read.

        Call it over all row bands before :meth:`_sums_folded`.
        """
        accs = getattr(self, name)
        for sid in accs[0]:
            target = accs[0][sid][..., rows, :]
            for acc in accs[1:]:
                part = acc[sid][..., rows, :]
                target += part
                part[...] = 0

    def _sums_folded(self, name):
        """Mark the slots of ``self.<name>`` zero again (after :meth:`_fold_sums` over all bands)."""
        self._dirty.discard(name)

    def engine_finalize(self):
        if getattr(self, "_pool", None) is not None:
            self._pool.close()
        for name in ("_scratch", "_ob_num", "_ob_den", "_pr_num", "_pr_den", "_blocks", "_pool", "_items", "_tbuf",
                     "_ob_num_t", "_ob_den_t", "_pr_num_t", "_pr_den_t"):
            if hasattr(self, name):
                delattr(self, name)

    # -- working frame ------------------------------------------------------------
    def _work_probe(self, g):
        """The probe in the working frame: ``pre * probe`` (far field) or the probe itself.

        In the far field the Fourier step works on ``pre * psi`` (``pre``: the
        propagator's sample-plane phase factor, ``|pre| = 1``): then
        ``FFT(pre * t)`` needs no separate phase pass, since
        ``pre * pw = (pre * probe) * object``. The exit storage always holds
        the true exit waves; the factor is applied to ``psi`` frame by frame
        while it is in cache.
        """
        if g.farfield:
            return g.probe.data * g.factors.pre
        return g.probe.data

    # -- iteration -----------------------------------------------------------
    def engine_iterate(self, n):
        out = []
        for _ in range(n):
            acc = self.new_error_sums()
            self._obj_power = None  # sum |O|^2 as left by the last object update, if nothing changed O since
            self._fuse_object = bool(self.p.update_object_first) or not self.probe_update_due()
            if self._fuse_object:
                self._init_object_numerator()
            if self._compiled:
                self._fourier_pass_compiled(acc)
            else:
                for g in self.book.groups:
                    self.fourier_update(g, acc)
            self.overlap_update()
            out.append(acc.reduce())
        return out

    def fourier_update(self, g, acc):
        """Generalised projection step on the exit waves of group ``g``; errors into ``acc``.

        Works frame block by frame block (see the module docstring). Frames
        inside the power bound need no Fourier correction (``P_F(t) = t``), so
        their update is ``(alpha beta + 1 - beta)(pw - psi)`` and they skip the
        inverse FFT when enough of a block is inside. When
        ``self._fuse_object`` is set, the object-update numerator
        ``sum conj(P) psi`` is accumulated here while the new exit waves are
        in cache.
        """
        sc = self._scratch[g.shape]
        H, W = g.shape
        alpha, beta = float(self.alpha), float(self.beta)
        ctype = self.ctype
        c_in = ctype.type(alpha * beta + 1.0 - beta)
        a1 = ctype.type(1.0 + alpha)
        ma = ctype.type(-alpha)
        far = g.farfield
        pre = g.factors.pre if far else None
        post = g.factors.post_bw if far else None  # conj(pre)
        pt = self._work_probe(g)
        ob = g.obj.data
        modes = g.modes if g.regular else 0
        fuse = self._fuse_object
        ol, oy, ox, pl = g.ob_layer, g.ob_y, g.ob_x, g.pr_layer
        frame_tmp = sc["frame"]
        if fuse:
            prc = np.conj(g.probe.data)
            num = self._ob_num[g.obj.ID]
        for f0, f1, p0, p1 in self._blocks[id(g)]:
            nb, npb = f1 - f0, p1 - p0
            buf = sc["buf"][:npb]
            pw = sc["pw"][:npb]
            af = sc["af"][:nb]
            fdev = sc["fdev"][:nb]
            tmp = sc["tmp"][:nb]
            psi = g.read_exit(p0, p1)
            # pw~ = (pre probe) * object window and t~ = (1 + alpha) pw~ - alpha pre psi, frame by frame
            for k in range(npb):
                i = p0 + k
                y, x = oy[i], ox[i]
                pwk, bk = pw[k], buf[k]
                np.multiply(ob[ol[i], y:y + H, x:x + W], pt[pl[i]], out=pwk)
                if far:
                    np.multiply(psi[k], pre, out=bk)
                else:
                    bk[...] = psi[k]
                if alpha == 1.0:
                    np.subtract(pwk, bk, out=bk)
                    bk += pwk
                else:
                    bk *= ma
                    np.multiply(pwk, a1, out=frame_tmp)
                    bk += frame_tmp
            # to the detector (far field: the post factor cancels in the modulus projection)
            F = fft_inplace(buf) if far else g.propagator.fw(buf)
            # model amplitude (modes summed incoherently) and errors
            if modes:
                model_amplitude(F, modes, af, tmp)
            else:
                np.sqrt(g.sum_modes(np.abs(F) ** 2, f0, f1), out=af)
            mask = g.mask_frames(f0, f1)
            ferr, photon, valid = fourier_errors(af, g.fmag(f0, f1), mask, fdev=fdev, tmp=tmp,
                                                 weight=g.photon_weight(f0, f1))
            acc.add(fourier=float(ferr.sum()), photon=photon, valid=float(valid.sum()))
            r = power_bound_renorm(ferr / np.maximum(valid, 1.0), self.pbound)
            out = r < 1.0  # frames that need the Fourier correction
            n_out = int(np.count_nonzero(out))
            if 0 < n_out < nb and n_out > _SUBSET_FRACTION * nb:
                # few frames inside the bound: cheaper to transform all (their factor is 1)
                # than to copy the others out and back
                out[:] = True
                n_out = nb
            if n_out:
                if n_out == nb:
                    pod_out = None
                    Fo, fo, afo, ro = F, fdev, af, r
                else:
                    pod_out = np.flatnonzero(out[g.frame[p0:p1] - f0])
                    Fo, fo, afo, ro = F[pod_out], fdev[out], af[out], r[out]
                fm = modulus_factor(fo, afo, ro, out=fo)
                if modes == 1:
                    np.multiply(Fo, fm, out=Fo)
                elif modes:
                    g.as4d(Fo, 0, len(fm))[...] *= fm[:, None]
                else:
                    lf = g.frame[p0:p1] - f0
                    idx = lf if pod_out is None else lf[pod_out]
                    remap = np.cumsum(out) - 1
                    Fo *= fm[remap[idx]]
                G = ifft_inplace(Fo) if far else g.propagator.bw(Fo)
            if n_out < nb or beta != 1.0:
                # pw~ - pre psi (needed inside the bound, and by RAAR)
                d_in = buf if n_out < nb else sc["frame_stack"][:npb]
                if far:
                    np.multiply(psi, pre, out=d_in)
                    np.subtract(pw, d_in, out=d_in)
                else:
                    np.subtract(pw, psi, out=d_in)
            if n_out:
                # delta~ = beta (P_F(t~) - pw~) + (1 - beta)(pw~ - pre psi)
                pwo = pw if pod_out is None else pw[pod_out]
                np.subtract(G, pwo, out=G)
                if beta != 1.0:
                    G *= ctype.type(beta)
                    d = d_in if pod_out is None else d_in[pod_out]
                    G += ctype.type(1.0 - beta) * d
            if n_out < nb:
                # frames inside the bound: delta~ = (alpha beta + 1 - beta)(pw~ - pre psi)
                if c_in != 1:
                    buf *= c_in
            if n_out == nb:
                delta = G
            elif n_out == 0:
                delta = buf
            else:
                buf[pod_out] = G
                delta = buf
            flat = delta.reshape(-1)
            acc.add_exit_change(np.vdot(flat, flat).real)
            # psi += conj(pre) delta~, and the object numerator while psi is in cache
            for k in range(npb):
                pk = psi[k]
                if far:
                    np.multiply(delta[k], post, out=frame_tmp)
                    pk += frame_tmp
                else:
                    pk += delta[k]
                if fuse:
                    i = p0 + k
                    y, x = oy[i], ox[i]
                    np.multiply(prc[pl[i]], pk, out=frame_tmp)
                    num[ol[i], y:y + H, x:x + W] += frame_tmp
            g.write_exit(psi, p0, p1)

    def _fourier_pass_compiled(self, acc):
        """:meth:`fourier_update` of every group with the fused kernels of :mod:`ptycli.engines.fused`.

        Per frame block (blocks of all groups shared out by
        ``self._pool.map_slots``): the projection input in one pass, the FFT
        (one thread), the modulus constraint with its errors in one pass per
        frame, the inverse FFT, and the exit-wave update (with the object
        numerator into the block's slot accumulator when
        ``self._fuse_object``) in one pass.
        """
        alpha, beta = float(self.alpha), float(self.beta)
        a1, ma = np.float32(1.0 + alpha), np.float32(-alpha)
        fuse = self._fuse_object
        if fuse:  # the numerator sums stay in the slots' accumulators until object_update folds them
            self._start_sums("_ob_num_t")
        prep = {}
        for g in self.book.groups:
            frame = self._scratch[g.shape]["frame"]  # placeholder for the unused factors (near field)
            prep[id(g)] = (g.factors.pre if g.farfield else frame, g.factors.post_bw if g.farfield else frame,
                           self._work_probe(g), np.conj(g.probe.data),
                           g.mask.data if not g.mask_trivial else self._no_mask)

        pbound = float(self.pbound)

        def work(k, slot, item):
            g, (f0, f1, p0, p1), (pod_start, drows, mrows) = item
            pre, post, pt, prc, mask = prep[id(g)]
            far, ob = g.farfield, g.obj.data
            buf = self._tbuf[k][g.shape][:p1 - p0]
            psi = g.read_exit(p0, p1)
            fused.projection_input(buf, psi, ob, pt, pre, far, g.ob_layer, g.ob_y, g.ob_x, g.pr_layer, p0, a1, ma)
            F = fft_inplace(buf, workers=1) if far else g.propagator.fw(buf)
            sums = np.empty((4, f1 - f0))
            fused.modulus_constraint(F, pod_start, g.diff.data, drows, mask, mrows, not g.mask_trivial, pbound,
                                     True, *sums)
            G = ifft_inplace(F, workers=1) if far else g.propagator.bw(F)
            change = fused.projection_update(psi, G, ob, pt, pre, post, far, g.ob_layer, g.ob_y, g.ob_x,
                                             g.pr_layer, p0, beta, fuse, self._ob_num_t[slot][g.obj.ID], prc)
            g.write_exit(psi, p0, p1)
            return float(sums[0].sum()), float(sums[1].sum()), float(sums[2].sum()), change

        for fourier, photon, valid, change in self._pool.map_slots(work, self._items):  # summed in item order
            acc.add(fourier=fourier, photon=photon, valid=valid)
            acc.add_exit_change(change)

    # -- the model's own errors ------------------------------------------------------------
    def model_errors(self):
        """Errors of the model's exit waves ``probe * object`` against the data (nothing is updated).

        The record's ``fourier_error`` of DM/RAAR is that of the projection
        input ``(1 + alpha) P O - alpha psi``, which can rise while the
        reconstruction improves (the iterate ``psi`` moves away from
        ``P O`` before the two meet); this is the error of ``P O`` itself,
        with the same normalisation (:class:`~ptycli.engines.base.ErrorSums`).
        One product pass, one forward FFT and one error pass over all frames
        (summed over MPI ranks). Called by the base at scheduled iterations
        (:meth:`~ptycli.engines.base.Engine.model_error_due`).

        Returns
        -------
        dict
            ``model_fourier_error``, ``model_photon_error``.
        """
        acc = self.new_error_sums()
        if self._compiled:
            self._model_errors_compiled(acc)
        else:
            for g in self.book.groups:
                self._model_errors_group(g, acc)
        r = acc.reduce()
        return dict(model_fourier_error=r["fourier_error"], model_photon_error=r["photon_error"])

    def _model_errors_group(self, g, acc):
        """:meth:`model_errors` of group ``g`` on the numpy path (the engine's scratch buffers)."""
        sc = self._scratch[g.shape]
        pt = self._work_probe(g)  # far field: FFT(pre * P O) has the model's modulus
        ob = g.obj.data
        modes = g.modes if g.regular else 0
        for f0, f1, p0, p1 in self._blocks[id(g)]:
            nb = f1 - f0
            af, tmp = sc["af"][:nb], sc["tmp"][:nb]
            buf = g.gather_product(ob, pt, p0, p1, out=sc["buf"][:p1 - p0])
            F = fft_inplace(buf) if g.farfield else g.propagator.fw(buf)
            if modes:
                model_amplitude(F, modes, af, tmp)
            else:
                np.sqrt(g.sum_modes(np.abs(F) ** 2, f0, f1), out=af)
            ferr, photon, valid = fourier_errors(af, g.fmag(f0, f1), g.mask_frames(f0, f1), fdev=sc["fdev"][:nb],
                                                 tmp=tmp, weight=g.photon_weight(f0, f1))
            acc.add(fourier=float(ferr.sum()), photon=photon, valid=float(valid.sum()))

    def _model_errors_compiled(self, acc):
        """:meth:`model_errors` with the fused kernels (the projection input with ``alpha = 0``, errors only)."""
        one, zero = np.float32(1.0), np.float32(0.0)
        prep = {}
        for g in self.book.groups:
            frame = self._scratch[g.shape]["frame"]
            prep[id(g)] = (g.factors.pre if g.farfield else frame, self._work_probe(g),
                           g.mask.data if not g.mask_trivial else self._no_mask)

        def work(k, slot, item):
            g, (f0, f1, p0, p1), (pod_start, drows, mrows) = item
            pre, pt, mask = prep[id(g)]
            buf = self._tbuf[k][g.shape][:p1 - p0]
            fused.projection_input(buf, g.read_exit(p0, p1), g.obj.data, pt, pre, g.farfield, g.ob_layer, g.ob_y,
                                   g.ob_x, g.pr_layer, p0, one, zero)
            F = fft_inplace(buf, workers=1) if g.farfield else g.propagator.fw(buf)
            sums = np.empty((4, f1 - f0))
            fused.modulus_constraint(F, pod_start, g.diff.data, drows, mask, mrows, not g.mask_trivial, 0.0, False,
                                     *sums)
            return float(sums[0].sum()), float(sums[1].sum()), float(sums[2].sum())

        for fourier, photon, valid in self._pool.map_slots(work, self._items):  # summed in item order
            acc.add(fourier=fourier, photon=photon, valid=valid)

    # -- overlap update ------------------------------------------------------------
    def overlap_update(self):
        """Alternate object and probe updates (see the module docstring)."""
        update_probe = self.probe_update_due()
        rounds = int(self.p.overlap_max_iterations) if update_probe else 1
        self.last_overlap_rounds = 0
        for k in range(rounds):
            self.last_overlap_rounds = k + 1
            if not update_probe or self.p.update_object_first or k > 0:
                self.object_update()
            if not update_probe:
                break
            change = self.probe_update()
            if change < float(self.p.overlap_converge_factor):
                break
        if update_probe:
            # orthogonalise the modes once per iteration, mixing the exit waves alike
            self.orthogonalize_probe(rotate_exit=True)
            self.pin_scale()

    def pin_scale(self):
        """Fix the scale ambiguity: probe power to the mean counts per frame, object to match.

        ``P O`` (so the exit waves and every error) is unchanged by ``P -> k P,
        O -> O / k``, and nothing else in the iteration fixes ``k``: left free,
        it drifts (the median lit object amplitude of a near-field scan went
        from 1.6 to 2.3 in 200 DM iterations, to 4.1 with the weak-illumination
        prior). Pinned, the object keeps the scale of a transmission (about 1
        where the probe carries the counts).
        """
        probes = list(self.book.probe_storages.values())
        power = sum(float(np.vdot(S.data, S.data).real) for S in probes)
        target = len(probes) * self.total_counts / max(float(self.n_frames_total), 1.0)
        if not (power > 0 and target > 0):
            return
        k = np.sqrt(target / power)
        for S in probes:
            S.data *= self.ftype.type(k)
        for S in self.book.obj_storages.values():
            S.data *= self.ftype.type(1.0 / k)
        self._den_valid = False
        self._obj_power = None

    @property
    def c_weak(self):
        """Weight of the weak-illumination prior: ``object_weak_floor`` times the probe's peak intensity."""
        floor = float(self.p.object_weak_floor)
        if floor <= 0:
            return 0.0
        return floor * max((float(np.max(np.sum(S.data.real ** 2 + S.data.imag ** 2, axis=0)))
                            for S in self.book.probe_storages.values()), default=0.0)

    def _init_object_numerator(self):
        c = self.ctype.type(self.c_obj)
        for sid, S in self.book.obj_storages.items():
            num = self._ob_num[sid]

            def work(k, rows, S=S, num=num):
                if parallel.master:  # the inertia term enters the MPI sum once
                    np.multiply(S.data[..., rows, :], c, out=num[..., rows, :])
                else:
                    num[..., rows, :] = 0

            self._row_work(work, [num])

    def object_update(self):
        """``O = (sum conj(P) psi + c_o O + w) / (sum |P|^2 + c_o + w)`` for every object storage.

        The numerator comes from the Fourier step when it was accumulated
        there (first object update of an iteration), else it is summed here.
        """
        recompute_den = not self._den_valid
        fused = self._fuse_object
        self._fuse_object = False
        if not fused:
            self._init_object_numerator()
        if self._compiled:
            if not fused:
                self._object_sums_compiled()
            self._object_divide_compiled(recompute_den)
            return
        for sid, S in self.book.obj_storages.items():
            if recompute_den:
                self._ob_den[sid].fill(0)
        for g in self.book.groups:
            if not fused:
                num = self._ob_num[g.obj.ID]
                prc = np.conj(g.probe.data)
                tmp = self._scratch[g.shape]["frame"]
                for f0, f1, p0, p1 in self._blocks[id(g)]:
                    g.scatter_probe_product(num, g.read_exit(p0, p1), prc, p0, p1, tmp=tmp)
            if recompute_den:
                p2 = (g.probe.data.real ** 2 + g.probe.data.imag ** 2).astype(self.ftype)
                g.scatter_object_const(self._ob_den[g.obj.ID], p2)
        c_obj, c_weak = self.c_obj, self.c_weak
        for sid, S in self.book.obj_storages.items():
            num, den, prior = self._ob_num[sid], self._ob_den[sid], self._ob_prior[sid]
            parallel.allreduce(num)
            if recompute_den:
                parallel.allreduce(den)

            def work(k, rows, S=S, num=num, den=den, prior=prior):
                if recompute_den:
                    weak_divisor(den[..., rows, :], prior[..., rows, :], c_obj, c_weak)
                out = np.multiply(num[..., rows, :], den[..., rows, :], out=S.data[..., rows, :])
                if c_weak > 0:
                    out += prior[..., rows, :]

            self._row_work(work, [num])
        self._den_valid = True
        self.apply_object_constraints()

    def _object_divide_compiled(self, recompute_den):
        """The object from the slots' sums, in row bands: fold the numerators, gather the denominator, divide.

        One sweep per row band when there is one process; with MPI the
        folded sums are reduced over the ranks between the fold and the
        division.
        """
        c_obj, c_weak = self.c_obj, self.c_weak
        mpi = parallel.size > 1
        # sum |O|^2 for the probe update's c_p, from the bands while they are in cache (unless clipping follows)
        power = {sid: [0.0] * self._pool.n for sid in self.book.obj_storages} if self.p.get("clip_object") is None \
            else None

        p2 = {id(g): (g.probe.data.real ** 2 + g.probe.data.imag ** 2).astype(self.ftype) for g in self.book.groups} \
            if recompute_den else None

        def fold(k, rows):
            self._fold_sums("_ob_num_t", rows)
            if recompute_den:
                for sid, den in self._ob_den.items():
                    den[..., rows, :] = 0
                    y_lo, y_hi, _ = rows.indices(den.shape[-2])
                    for g in self.book.groups:
                        if g.obj.ID == sid:
                            fused.object_den_rows(den, p2[id(g)], g.ob_layer, g.ob_y, g.ob_x, g.pr_layer, y_lo, y_hi)

        def divide(k, rows):
            for sid, S in self.book.obj_storages.items():
                d = self._ob_den[sid][..., rows, :]
                prior = self._ob_prior[sid][..., rows, :]
                if recompute_den:
                    weak_divisor(d, prior, c_obj, c_weak)
                band = np.multiply(self._ob_num[sid][..., rows, :], d, out=S.data[..., rows, :])
                if c_weak > 0:
                    band += prior
                if power is not None:
                    power[sid][k] = float(np.vdot(band, band).real)

        arrays = list(self._ob_num.values())
        if mpi:
            self._pool.rows(fold, arrays)
            for sid in self.book.obj_storages:
                parallel.allreduce(self._ob_num[sid])
                if recompute_den:
                    parallel.allreduce(self._ob_den[sid])
            self._pool.rows(divide, arrays)
        else:
            self._pool.rows(lambda k, rows: (fold(k, rows), divide(k, rows)), arrays)
        self._sums_folded("_ob_num_t")
        self._den_valid = True
        self._obj_power = {sid: sum(parts) for sid, parts in power.items()} if power is not None else None
        self.apply_object_constraints()

    def _object_sums_compiled(self):
        """Object numerator (:func:`fused.object_numerator`) over all blocks, into the slots' accumulators.

        :meth:`_object_divide_compiled` folds them.
        """
        self._start_sums("_ob_num_t")
        prc = {id(g): np.conj(g.probe.data) for g in self.book.groups}

        def work(k, slot, item):
            g, (f0, f1, p0, p1), _ = item
            fused.object_numerator(self._ob_num_t[slot][g.obj.ID], g.read_exit(p0, p1), prc[id(g)], g.ob_layer,
                                   g.ob_y, g.ob_x, g.pr_layer, p0)

        self._pool.map_slots(work, self._items, reverse=True)  # starts with the blocks last in the cache

    def probe_update(self):
        """``P = (sum conj(O) psi + c_p P) / (sum |O|^2 + c_p)``; returns the relative change."""
        num_change = 0.0
        norm = 0.0
        # c_p from the object power
        cps = {}
        objc = {}
        objw = {}
        sums = np.zeros(2)
        known, self._obj_power = getattr(self, "_obj_power", None) or {}, None
        for sid, S in self.book.obj_storages.items():
            sums[0] += known[sid] if sid in known else float(np.vdot(S.data, S.data).real)
            sums[1] += S.data.size
            if not self._compiled:
                objw[sid] = (S.data.real ** 2 + S.data.imag ** 2).astype(self.ftype)
                objc[sid] = np.conj(S.data)
        mean_obj = sums[0] / max(sums[1], 1.0)
        cp = float(self.p.probe_inertia) * self.n_frames_total * max(mean_obj, 1e-30)
        for sid, S in self.book.probe_storages.items():
            if parallel.master:  # the inertia term enters the MPI sum once
                np.multiply(S.data, self.ctype.type(cp), out=self._pr_num[sid])
            else:
                self._pr_num[sid].fill(0)
            self._pr_den[sid].fill(0)
            cps[sid] = cp
        if self._compiled:
            self._start_sums("_pr_num_t")
            self._start_sums("_pr_den_t")

            def work(k, slot, item):
                g, (f0, f1, p0, p1), _ = item
                fused.probe_sums(self._pr_num_t[slot][g.probe.ID], self._pr_den_t[slot][g.probe.ID], True,
                                 g.read_exit(p0, p1), g.obj.data, g.ob_layer, g.ob_y, g.ob_x, g.pr_layer, p0)

            self._pool.map_slots(work, self._items, reverse=True)  # starts with the blocks last in the cache
            for name in ("_pr_num_t", "_pr_den_t"):  # probe-sized: in this thread
                self._fold_sums(name)
                self._sums_folded(name)
        else:
            for g in self.book.groups:
                num = self._pr_num[g.probe.ID]
                den = self._pr_den[g.probe.ID]
                tmp = self._scratch[g.shape]["frame"]
                for f0, f1, p0, p1 in self._blocks[id(g)]:
                    g.accumulate_probe(num, den, objc[g.obj.ID], objw[g.obj.ID], g.read_exit(p0, p1), p0, p1,
                                       tmp=tmp)
        before = {}
        for sid, S in self.book.probe_storages.items():
            num = self._pr_num[sid]
            den = self._pr_den[sid]
            parallel.allreduce(num)
            parallel.allreduce(den)
            den += self.ftype.type(cps[sid])
            np.divide(num, den, out=num)
            before[sid] = S.data.copy()
            S.data[...] = num
        self.apply_probe_constraints(orthogonalize=False)
        # the change of the constrained probe: measured before the support, the power the support
        # cuts again each round (in the frame corners, where the object is barely lit) never settles
        for sid, S in self.book.probe_storages.items():
            d = S.data - before[sid]
            num_change += float(np.vdot(d, d).real)
            norm += float(np.vdot(S.data, S.data).real)
        self._den_valid = False
        return float(np.sqrt(num_change / max(norm, 1e-30)))

    # -- position refinement ---------------------------------------------------------------
    def positions_changed(self, moved):
        """Frames moved: recompute ``sum |P|^2`` over the object; moved frames restart from ``P O``.

        The exit waves of a moved frame belong to its old window; they are
        replaced by ``probe * object`` at the new one (the iterate restarts
        there, as after an overlap projection).
        """
        self._den_valid = False
        if not self.RESET_MOVED_EXIT:
            return
        for gi, frames in moved.items():
            g = self.book.groups[gi]
            pr, ob = g.probe.data, g.obj.data
            for f in np.asarray(frames).tolist():
                p0, p1 = int(g.pod_start[f]), int(g.pod_start[f + 1])
                g.write_exit(g.gather_product(ob, pr, p0, p1), p0, p1)

    # -- state ------------------------------------------------------------------------
    def engine_load_state(self, state):
        self._den_valid = False


@register
class DM(ProjectionEngine):
    """Difference Map: ``psi <- psi + P_F((1 + alpha) pw - alpha psi) - pw``."""

    NAME = "DM"
    PARAMS = ProjectionEngine.PARAMS.extended("DM", [
        Parameter("alpha", 1.0, "float", "difference-map mixing parameter (1: classic DM)", low=0.0),
    ], doc="difference map")

    def set_coefficients(self):
        self.alpha = float(self.p.alpha)
        self.beta = 1.0


@register
class RAAR(ProjectionEngine):
    """Relaxed averaged alternating reflections: the update with ``alpha = 1`` and ``beta``."""

    NAME = "RAAR"
    PARAMS = ProjectionEngine.PARAMS.extended("RAAR", [
        Parameter("beta", 0.75, "float", "RAAR relaxation (1: DM with alpha = 1)", low=0.0, high=1.0),
    ], doc="relaxed averaged alternating reflections")

    def set_coefficients(self):
        self.alpha = 1.0
        self.beta = float(self.p.beta)
