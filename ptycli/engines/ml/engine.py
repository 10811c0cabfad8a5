"""The ML engine: preconditioned conjugate gradients on (object, probe) with a polynomial line search.

Model and cost
--------------
For every pod ``j`` (frame ``m``, probe mode ``k``, object mode ``l``) the exit
wave is ``psi_j = P_k O_l[window_m]`` and its detector-plane field
``F_j = fw(psi_j)``. Modes add incoherently: the model intensity of frame
``m`` is ``I_m = c_m sum_{j in m} |F_j|^2`` with ``c_m = 1`` unless
``floating_intensities`` is set, in which case ``c_m`` is refitted in closed
form for every frame at every evaluation (the minimiser of the cost over
``c_m``; by the envelope theorem the gradients below stay exact). A scan
with a fitted incoherent background (``background: true``,
:mod:`ptycli.core.background`) adds its ``B`` to every frame's model
intensity, ``I_m = sum_{j in m} |F_j|^2 + B`` (not combined with floating
intensities). The cost
is the noise model's sum over measured pixels
(:mod:`ptycli.engines.ml.noise_models`), plus the optional smoothness prior
``reg_del2`` (:mod:`ptycli.engines.ml.regularisers`).

Gradients (Wirtinger, ``g = dL/dx*``, so that ``dL = 2 Re <g, dx>``)::

    g_F   = c_m l'(I_m) F_j                      (detector plane, per pod)
    g_psi = bw(g_F)
    g_O   = sum_j conj(P_k) g_psi_j              (overlap scatter into the object)
    g_P   = sum_j conj(O_l[window_j]) g_psi_j    (sum over frames)

With the sub-pixel model (:mod:`ptycli.core.subpixel`) the probe of pod
``j`` is ``S_j P`` (the probe shifted by its frame's remainder); the probe
gradient is then ``sum_j S_j^H (conj(O_l[window_j]) g_psi_j)``, gathered per
shift class and shifted back (:meth:`~ptycli.engines.ml.passes.MLPasses.probe_gradient`).

Search direction: Polak-Ribiere conjugate gradients over the pair (object,
probe) with the diagonal preconditioner ``(1, s)``::

    beta = [<gO, gO - gO'> + s <gP, gP - gP'>] / [<gO', gO'> + s <gP', gP'>]
    hO = -gO + beta hO',   hP = -s gP + beta hP'

restarted (``beta = 0``) when ``beta < 0``, on the first iteration, when the
probe joins (``probe_update_start``) and after a failed line search.
With ``scale_precond`` (Thibault & Guizar-Sicairos, New J. Phys. 14, 063004
(2012)) ``s = scale_probe_object * |gO|^2 / |gP|^2``, smoothed geometrically
over iterations (memory 0.9), balances the probe and object steps; without it
``s = scale_probe_object``. Before ``probe_update_start`` the probe
direction is zero. With ``probe_support`` the probe gradient is multiplied by
the support (the probe is multiplied by it once at the start), so the probe
never leaves it and the line search stays exact. The step along the
direction: :mod:`ptycli.engines.ml.line_search`.

Background step
---------------
``B`` is not part of the conjugate-gradient vector: after the line search
on object and probe, the evaluation at the new point also sums the cost's
derivative ``dL/dB = sum_m l'(I_m)`` per detector pixel (over frames, slots
and MPI ranks), the noise model takes one closed-form step
(:meth:`~ptycli.engines.ml.noise_models.NoiseModel.background_step`) and
the gradient is then evaluated at the new ``B`` (an inverse-FFT pass that
the iteration makes anyway; the compiled path reuses the transforms).

Passes and threads
------------------
The data are visited in frame blocks of about :data:`BLOCK_BYTES` through
the block passes of :mod:`ptycli.engines.ml.passes` (numpy) or
:mod:`ptycli.engines.ml.compiled_passes` (``kernels``), one object per pod
group, chosen once at initialisation. Blocks are shared out among
``get_workers()`` threads (numpy's elementwise loops, pocketfft and the
compiled kernels release the GIL) by
:meth:`ptycli.engines.threads.BlockPool.map_slots`: load-balanced, while each
accumulator slot (two per thread; one for objects above
:data:`~ptycli.engines.threads.LARGE_SLOT_BYTES`) takes its blocks in a fixed order; the
slots' (conjugate) gradients are summed in a fixed order, in object row bands
on the threads, so a run is deterministic for a given thread count (and
agrees with other thread counts to rounding).

Records and MPI
---------------
Each iteration's record describes the state *after* its update:
``likelihood`` (the data cost divided by the number of valid pixels, summed
over ranks; about 1 at the noise level for ``gaussian``), ``fourier_error``,
``photon_error`` and ``exit_change`` as defined in :mod:`ptycli.engines.base`,
and the extras ``ml_step`` (the step ``t``) and ``ml_beta``. Every global
quantity (costs, error sums, line-search coefficients, and the gradients,
which live in one flat buffer) is summed over MPI ranks with
:func:`ptycli.parallel.allreduce` in :meth:`ML._allsum`, so every rank takes
the same steps; the regulariser is computed once on the (replicated) object.

Checkpoints carry the conjugate-gradient memory (:meth:`ML.engine_state`:
direction, previous gradient, preconditioner scale), so a resumed run takes
the same steps as an uninterrupted one. :meth:`ML.finalize` orthogonalises
the probe modes (a unitary mixing, the likelihood does not change) and sets
the exit waves to ``probe * object`` for the next engine of the chain.

Single precision stays single: frames, gradients and directions are in the
model's complex type; global sums are accumulated in float64 from per-block
float32 partial sums (:mod:`ptycli.engines.ml.sums`).

The module is about 700 lines: the algorithm (directions, line
search safeguard, records, checkpoints, MPI sums) reads in one place.

Position refinement (``position_refinement``, :mod:`ptycli.engines.posref`)
runs after the scheduled iterations; when frames moved, the blocks' window
indices are refreshed and the next iteration re-evaluates the cost from
scratch and restarts the conjugate gradients (the cost function changed).
"""

import logging

import numpy as np

from ... import parallel
from ..._lazy import lazy_module
from ...core import fft
from ...core.background import frame_sums
from ...core.illumination import orthogonalize_modes
from ...errors import ConfigError
from ...params.declare import Parameter
from ..base import Engine, register
from ..posref import POSREF_PARAMS
from ..threads import BlockPool, slots_per_thread
from .compiled_passes import CompiledMLPasses
from .noise_models import ML_TYPES, noise_model
from .passes import NumpyMLPasses
from .regularisers import del2_amplitude, del2_cost, del2_gradient, del2_line_coefficients
from .sums import cdot, pairs

# imported at first use: listing the parameters (ptycli params) needs no numba
fused = lazy_module("ptycli.engines.fused")
fused_ml = lazy_module("ptycli.engines.fused_ml")

__all__ = ["ML", "BLOCK_BYTES"]

log = logging.getLogger("ptycli.engines")

#: Target size in bytes of one complex pod block (frames are processed in blocks this size).
BLOCK_BYTES = 1 << 20


def _workers():
    return fft.get_workers()


class _Accumulator:
    """Gradient accumulators of one slot (conjugate gradients, see :meth:`.MLPasses.evaluate_block`)."""

    def __init__(self, book, groups):
        self.gO = {sid: np.zeros_like(S.data) for sid, S in book.obj_storages.items()}  # this rank's
        self.gPe = [G.probe_accumulator() for G in groups]
        self._groups = groups
        #: per group with a background: ``sum over frames of l'`` per detector pixel (float64), else None
        self.gB = [np.zeros(G.g.shape, np.float64) if G.g.background is not None else None for G in groups]

    def zero(self):
        for a in self.gO.values():
            a[...] = 0
        for G, a in zip(self._groups, self.gPe):
            a[:G.probe_layers] = 0  # the layers in use (expanded probe: the used shift classes)
        for a in self.gB:
            if a is not None:
                a[...] = 0


@register
class ML(Engine):
    """Maximum-likelihood refinement by preconditioned conjugate gradients (see the module docstring)."""

    NAME = "ML"
    AUTO_PROBE_SUPPORT = 1.0  # probe_support: auto (measured: ConstraintsMixin.probe_supports)
    WARMUP_ENGINE = "DM"  # engines.<label>.warmup DM iterations first (the parameter's doc)
    SUBPIXEL = True
    PARAMS = Engine.PARAMS.extended("ML", [
        Parameter("ML_type", "auto", "str",
                  "noise model of the likelihood: gaussian (intensities, weights 1/(I+1)), poisson, "
                  "euclid (least squares on amplitudes), or auto: poisson when the frames hold photon "
                  "counts (non-negative whole numbers), else gaussian", choices=["auto"] + list(ML_TYPES)),
        Parameter("floating_intensities", False, "bool",
                  "fit a per-frame intensity scale (closed form) at every iteration"),
        Parameter("reg_del2", False, "bool", "add a del^2 (gradient-squared) smoothness prior on the object"),
        Parameter("reg_del2_amplitude", 0.01, "float",
                  "strength of the del^2 prior relative to the data term at the noise level", low=0.0),
        Parameter("scale_precond", True, "bool",
                  "balance probe and object steps by rescaling the probe gradient (|gO|^2 / |gP|^2)"),
        Parameter("scale_probe_object", 1.0, "float",
                  "extra factor on the probe/object step ratio (the ratio itself without scale_precond)",
                  low=0.0),
        Parameter("warmup", 100, "int",
                  "DM iterations run before ML when ML is the first engine and a scan's probe starts from a "
                  "model (illumination.model auto, flat, aperture, ...; not a file): ML refines and stalls from "
                  "a poor start; 0: none", low=0),
        POSREF_PARAMS,
    ], doc="maximum-likelihood refinement (conjugate gradients, polynomial line search)")

    #: geometric memory of the probe/object scale preconditioner
    SCALE_MEMORY = 0.9
    #: the incoherent background of a scan that has one is part of the model (:mod:`ptycli.core.background`)
    FITS_BACKGROUND = True
    #: maximal step halvings of the line-search safeguard
    MAX_BACKTRACK = 5

    # -- life cycle ---------------------------------------------------------------------
    def engine_initialize(self):
        p = self.p
        if self.starts_from_probe_guess() and parallel.master:
            log.warning("%s (ML) starts from the automatic probe guess: ML refines a reconstruction and can stall "
                        "from a poor start; put DM or RAAR before it (e.g. DM 100 iterations, then ML), or leave "
                        "engines.%s.warmup above 0", self.label, self.label)
        self.noise = noise_model(self.choose_noise_model(p.ML_type, "poisson", "gaussian", "ML_type"))
        self.floating = bool(p.floating_intensities)
        self.eps = self.noise.eps(self.mean_power)
        book = self.book
        itemsize = np.dtype(self.ctype).itemsize
        n_pixels = sum(g.n_pods * g.shape[0] * g.shape[1] for g in book.groups)
        self._compiled = fused.use_compiled(p.kernels, n_pixels, np.dtype(self.ctype) == np.complex64)
        passes = CompiledMLPasses if self._compiled else NumpyMLPasses
        self.groups = []
        for g in book.groups:
            per_frame = max(1, g.modes or 1) * g.shape[0] * g.shape[1] * itemsize
            nblock = max(1, BLOCK_BYTES // per_frame)
            self.groups.append(passes(g, self.noise, self.ctype, self.ftype, nblock))
        self._items = [(gi, G, b) for gi, G in enumerate(self.groups) for b in G.blocks]
        # threads: blocks are shared out round-robin; FFT threads inside a block otherwise
        total = max(1, int(_workers()))
        self._nthreads = max(1, min(total, len(self._items)))
        self._fft_workers = max(1, total // self._nthreads)
        slot_bytes = sum(S.data.nbytes for S in book.obj_storages.values())  # an accumulator: the object's gradient
        self._pool = BlockPool(self._nthreads, slots_per_thread=slots_per_thread(slot_bytes))
        self._ws = [[G.workspace() for G in self.groups] for _ in range(self._nthreads)]
        self._acc = [_Accumulator(book, self.groups) for _ in range(self._pool.slots)]  # one per slot
        # the cost's constant (so that a perfect fit costs about zero); local, summed with the costs
        self._cost_const = self.noise.cost_constant((G.g.diff_frames(b.f0, b.f1), G.g.mask_frames(b.f0, b.f1))
                                                    for G in self.groups for b in G.blocks)
        # flat vectors: gradient, previous gradient, direction (object storages, then probe
        # storages). All storages of the model, sorted by ID, so that every MPI rank has the
        # same layout (also a rank without frames).
        P = self.ptycho
        self.obj_storages = {sid: P.obj.S[sid] for sid in sorted(P.obj.S)}
        self.probe_storages = {sid: P.probe.S[sid] for sid in sorted(P.probe.S)}
        self.obj_ids = list(self.obj_storages)
        self.probe_ids = list(self.probe_storages)
        self._layout = []
        off = 0
        for kind, ids, storages in (("obj", self.obj_ids, self.obj_storages),
                                    ("probe", self.probe_ids, self.probe_storages)):
            for sid in ids:
                shape = storages[sid].data.shape
                size = int(np.prod(shape))
                self._layout.append((kind, sid, off, size, shape))
                off += size
        self._nvec = off
        self._nobj = sum(size for kind, _, _, size, _ in self._layout if kind == "obj")
        self.grad = np.zeros(off, dtype=self.ctype)
        self.grad_prev = np.zeros(off, dtype=self.ctype)
        self.dirn = np.zeros(off, dtype=self.ctype)
        # regulariser amplitude
        self.reg_amp = 0.0
        if p.reg_del2:
            self.reg_amp = del2_amplitude(p.reg_del2_amplitude, self.total_valid, self.total_counts, self._nobj)
        # probe support: applied once at a fresh start (not to a restored state), then the probe
        # gradient is projected onto it
        self.ml_supports = self.probe_supports()
        if not getattr(self, "_loading", False):
            for sid, sup in self.ml_supports.items():
                self.probe_storages[sid].data *= sup
        self._init_background()
        self.scale = None
        self._dist_prev = None
        self._tau = 1.0
        self._beta = 0.0
        self._gnorm_prev = 0.0
        self._restart = True
        self._probe_was_on = False
        self._stale = True
        self._last = None
        self._final_scales = None
        self._L = self._evaluate(gradient=True)

    def engine_release(self):
        """Free the gradient accumulators, block workspaces and the gradient (before the health check).

        The conjugate-gradient memory (``dirn``, ``grad_prev``) stays: checkpoints store it.
        """
        self._acc = []
        self._ws = []
        self.grad = None

    def engine_finalize(self):
        # orthogonal probe modes (a unitary mixing of the modes: the likelihood does not change)
        for sid, S in self.probe_storages.items():
            if S.data.shape[0] > 1:
                S.data[...] = orthogonalize_modes(S.data)
        self.reset_exit()
        self._final_scales = self.floating_scales() if self.floating else None
        for G in self.groups:
            G.release()
        self.groups = []
        self._items = []
        self._ws = []
        self._acc = []
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def load_state(self, state):
        self._loading = True
        try:
            return super().load_state(state)
        finally:
            self._loading = False

    def engine_state(self):
        """The conjugate-gradient memory (direction, previous gradient, scalars) for checkpoints."""
        nan = float("nan")
        scalars = [self.scale if self.scale is not None else nan,
                   self._dist_prev if self._dist_prev else nan,
                   self._gnorm_prev, float(self._restart), float(self._probe_was_on)]
        return dict(ml_dirn=self.dirn, ml_grad_prev=self.grad_prev, ml_scalars=np.array(scalars))

    def engine_load_state(self, state):
        """Continue from :meth:`engine_state` (a restart of the conjugate gradients without it)."""
        state = state or {}
        ok = all(k in state for k in ("ml_dirn", "ml_grad_prev", "ml_scalars")) and \
            np.shape(state["ml_dirn"]) == self.dirn.shape and np.shape(state["ml_grad_prev"]) == self.dirn.shape
        if ok:
            self.dirn[...] = state["ml_dirn"]
            self.grad_prev[...] = state["ml_grad_prev"]
            sc = [float(v) for v in np.asarray(state["ml_scalars"], dtype=float).ravel()]
            self.scale = None if not np.isfinite(sc[0]) else sc[0]
            self._dist_prev = None if not np.isfinite(sc[1]) else sc[1]
            self._gnorm_prev = sc[2]
            self._restart = bool(sc[3])
            self._probe_was_on = bool(sc[4])
        else:
            self._restart = True
        self._stale = True
        self._L = self._evaluate(gradient=True)

    def positions_changed(self, moved):
        """Frames moved: refresh the blocks' window indices, re-evaluate and restart the conjugate gradients."""
        for G in self.groups:
            G.positions_changed()
        self._stale = True
        self._restart = True

    # -- views into the flat vectors ---------------------------------------------------------
    def _parts(self, vec, kind=None):
        """``(kind, sid, array)`` views of a flat vector, shaped like the storages."""
        out = []
        for k, sid, off, size, shape in self._layout:
            if kind is None or k == kind:
                out.append((k, sid, vec[off:off + size].reshape(shape)))
        return out

    def _part(self, vec, kind, sid):
        for k, s, off, size, shape in self._layout:
            if k == kind and s == sid:
                return vec[off:off + size].reshape(shape)
        raise KeyError(sid)

    # -- global sums and block dispatch -------------------------------------------------------
    @staticmethod
    def _allsum(values):
        """Sum a numpy buffer over MPI ranks, in place; return it (the one place ML reduces)."""
        return parallel.allreduce(values)

    def _run(self, fn, zero_acc=False):
        """Run ``fn(gi, G, b, ws, acc)`` on every block; return the results in block order.

        Blocks are shared out by :meth:`ptycli.engines.threads.BlockPool.map_slots`
        (load-balanced; each accumulator slot takes its blocks in a fixed
        order, so the result does not depend on timing); ``ws`` is the
        thread's workspace, ``acc`` the slot's accumulators, which with
        ``zero_acc`` are zeroed before the slot's first block.
        """
        first = {id(item) for item in self._items[:self._pool.slots]} if zero_acc else ()
        for acc in self._acc[len(self._items):] if zero_acc else ():
            acc.zero()  # slots without blocks

        def call(k, slot, item):
            if id(item) in first:
                self._acc[slot].zero()
            return fn(item[0], item[1], item[2], self._ws[k][item[0]], self._acc[slot])

        return self._pool.map_slots(call, self._items)

    def _object_rows(self, fn):
        """``fn(sid, k, rows)`` for every object storage, in row bands on the threads."""
        for sid, S in self.obj_storages.items():
            self._pool.rows(lambda k, rows, sid=sid: fn(sid, k, rows), [S.data])

    # -- passes over the data ------------------------------------------------------------------
    def _evaluate(self, du=0.0, gradient=True, background=False):
        """Move ``F`` by ``du`` along the line (see :meth:`_move_to`), evaluate, optionally the gradient.

        Recomputes the transforms from scratch when they are stale. Stores the
        record fields in ``self._last``; returns the total cost (data +
        regulariser). With ``gradient`` the reduced gradient is in ``self.grad``;
        with ``background`` the sums of the background step are in the slots'
        accumulators (:meth:`_background_step`).
        """
        floating, eps = self.floating, self.eps
        du = float(du)
        move = (du, float(self._u2_delta) if du else 0.0, self._stale)
        W = self._fft_workers
        prep = [G.prepare_evaluate() for G in self.groups]

        def fn(gi, G, b, ws, acc):
            return G.evaluate_block(b, ws, prep[gi], move, floating, eps, gradient, acc.gO[G.g.obj.ID],
                                    acc.gPe[gi], W, acc.gB[gi] if background else None)

        parts = self._run(fn, zero_acc=gradient or background)
        self._stale = False
        sums = np.zeros(4)
        for r in parts:
            sums += r
        sums[0] += self._cost_const
        if gradient:
            grad = self.grad
            # the accumulators hold conjugate gradients (see MLPasses.evaluate_block); object parts in row bands
            def fold(sid, k, rows):
                out = self._part(grad, "obj", sid)[..., rows, :]
                np.copyto(out, self._acc[0].gO[sid][..., rows, :])
                for acc in self._acc[1:]:
                    out += acc.gO[sid][..., rows, :]
                np.conj(out, out=out)

            self._object_rows(fold)
            probe_parts = self._parts(grad, "probe")
            for _, _, part in probe_parts:
                part[...] = 0
            for acc in self._acc:
                for gi, G in enumerate(self.groups):
                    if G.g.sub is None:
                        self._part(grad, "probe", G.g.probe.ID)[...] += G.probe_gradient(acc.gPe[gi])
            for gi, G in enumerate(self.groups):
                if G.g.sub is not None:  # the slots summed first: one transform back per shift class
                    n = G.probe_layers
                    total = self._acc[0].gPe[gi][:n].copy()
                    for acc in self._acc[1:]:
                        total += acc.gPe[gi][:n]
                    self._part(grad, "probe", G.g.probe.ID)[...] += G.probe_gradient(total)
            for _, _, part in probe_parts:
                np.conj(part, out=part)
            self._allsum(sums)
            self._allsum(grad)
        else:
            self._allsum(sums)
        reg = 0.0
        if self.reg_amp:
            for sid, S in self.obj_storages.items():
                reg += del2_cost(S.data, self.reg_amp)
                if gradient:
                    del2_gradient(S.data, self.reg_amp, out=self._part(self.grad, "obj", sid))
        nvalid = max(sums[3], 1.0)
        self._last = dict(cost=float(sums[0]), reg=reg, total=float(sums[0]) + reg,
                          likelihood=float(sums[0]) / max(self.total_valid, 1.0),
                          fourier_error=float(sums[1] / nvalid), photon_error=float(sums[2] / nvalid))
        return self._last["total"]

    def _line_coefficients(self, probe_on, tau):
        """Transforms of the direction terms and the cost polynomial along the direction.

        The line is parametrised as ``x + u tau h`` (``tau`` normalises the
        direction so that the step ``u`` is of order one and the per-pixel
        powers of the polynomial stay well inside the float range).

        Returns ``(coefs, exit_terms)``: cost coefficients in ``u`` (float64,
        lowest order first; 9 for ``gaussian``, 3 otherwise, including the
        regulariser) and ``(sum|Fb|^2, sum 2Re(Fb* Fc), sum|Fc|^2)`` for the exit change.
        """
        W = self._fft_workers
        # scale factors go on the (small) probe arrays: b = (tau P) hO + (tau hP) O, c = (tau^2 hP) hO
        prep = [G.prepare_line(self._part(self.dirn, "obj", G.g.obj.ID),
                               self._part(self.dirn, "probe", G.g.probe.ID) if probe_on else None, tau)
                for G in self.groups]

        def fn(gi, G, b, ws, acc):
            return G.line_block(b, ws, prep[gi], probe_on, self.eps, W)

        parts = self._run(fn)
        ncoef = self.noise.n_line
        buf = np.zeros(ncoef + 3)
        for r in parts:
            buf += r
        self._allsum(buf)
        coefs, ex = buf[:ncoef].copy(), buf[ncoef:].copy()
        if self.reg_amp:
            for sid, S in self.obj_storages.items():
                r1, r2 = del2_line_coefficients(S.data, self._part(self.dirn, "obj", sid), self.reg_amp)
                coefs[1] += r1 * tau
                coefs[2] += r2 * tau * tau
        return coefs, ex

    def _move_to(self, u_from, u_to):
        """Move probe and object along the line from ``u_from`` to ``u_to`` (units of ``tau h``).

        Returns ``du`` for :meth:`_evaluate`, which moves the transforms (and
        sets ``self._u2_delta`` for their quadratic term).
        """
        du = float(u_to - u_from)
        self._u2_delta = float(u_to * u_to - u_from * u_from)
        if du == 0:
            return 0.0
        step = self.ctype.type(du * float(self._tau))
        for kind, sid, h in self._parts(self.dirn, "probe"):
            self.probe_storages[sid].data += step * h
        hO = {sid: h for _, sid, h in self._parts(self.dirn, "obj")}

        def move(sid, k, rows):
            band = self.obj_storages[sid].data[..., rows, :]
            band += step * hO[sid][..., rows, :]

        self._object_rows(move)
        return du

    # -- one iteration ---------------------------------------------------------------------------
    def _direction(self, probe_on):
        """Preconditioned Polak-Ribiere direction into ``self.dirn``; returns the slope ``dL/dt``."""
        g, gp, h = self.grad, self.grad_prev, self.dirn
        so, sp = slice(0, self._nobj), slice(self._nobj, self._nvec)
        if probe_on:
            for sid in self.probe_ids:
                sup = self.ml_supports.get(sid)
                if sup is not None:
                    self._part(g, "probe", sid)[...] *= sup
        else:
            g[sp] = 0
        c = self._compiled
        if c:  # the object part's scalars in one compiled pass (fused_ml.cg_dots)
            go2, g_gp = fused_ml.cg_dots(pairs(g[so]), pairs(gp[so]))
        else:
            go2 = cdot(g[so], g[so])
        gp2 = cdot(g[sp], g[sp], c) if probe_on else 0.0
        s = float(self.p.scale_probe_object)
        if probe_on and self.p.scale_precond:
            if gp2 > 0 and go2 > 0:
                s_new = float(self.p.scale_probe_object) * go2 / gp2
                if self.scale is None:
                    self.scale = s_new
                else:
                    m = self.SCALE_MEMORY
                    self.scale = self.scale ** m * s_new ** (1.0 - m)
            s = self.scale if self.scale is not None else s
        restart = self._restart or (probe_on and not self._probe_was_on)
        beta = 0.0
        if not restart:
            num = go2 - (g_gp if c else cdot(g[so], gp[so]))
            if probe_on:
                num += s * (gp2 - cdot(g[sp], gp[sp], c))
            den = self._gnorm_prev
            beta = num / den if den > 0 else 0.0
            if not beta > 0:
                beta = 0.0
        # h = -M g + beta h
        self._hh_obj = None  # |h_O|^2 when the compiled pass has it (for _direction_scale)
        if c:  # object part: update, copy to gp and its two sums in one pass (fused_ml.cg_step)
            gh_obj, self._hh_obj = fused_ml.cg_step(pairs(h[so]), pairs(g[so]), pairs(gp[so]), beta)
            if beta == 0.0:
                np.negative(g[sp], out=h[sp])
            else:
                h[sp] *= beta
                h[sp] -= g[sp]
        elif beta == 0.0:
            np.negative(g, out=h)
        else:
            h *= beta
            h -= g
        if probe_on:
            if s != 1.0:
                h[sp] -= (s - 1.0) * g[sp]
        else:
            h[sp] = 0
        slope = 2.0 * ((gh_obj if c else cdot(g[so], h[so])) + (cdot(g[sp], h[sp], c) if probe_on else 0.0))
        if not slope < 0:  # not a descent direction: steepest descent
            np.negative(g, out=h)
            if probe_on:
                h[sp] *= s
            else:
                h[sp] = 0
            slope = -2.0 * (go2 + s * gp2)
            beta = 0.0
            self._hh_obj = None
        self._gnorm_prev = go2 + s * gp2
        if c:
            gp[sp] = g[sp]  # the object part was copied by cg_step
        else:
            gp[...] = g
        self._probe_was_on = probe_on
        self._restart = False
        self._beta = beta
        return slope

    def _direction_scale(self):
        """``tau`` so that the step along ``tau h`` is of order one (see :meth:`_line_coefficients`).

        The previous step's length in (object, probe) space divided by the
        new direction's length; on the first iteration a tenth of the object's norm.
        """
        h = self.dirn
        hh_obj = getattr(self, "_hh_obj", None)  # |h_O|^2 from _direction's compiled pass, if it has it
        self._hh_obj = None  # used once: h changes after
        if hh_obj is None:
            self._dirn_norm = hn = np.sqrt(cdot(h, h, self._compiled))
            hh_obj = cdot(h[:self._nobj], h[:self._nobj], self._compiled) if not self._dist_prev else None
        else:
            self._dirn_norm = hn = np.sqrt(hh_obj + cdot(h[self._nobj:], h[self._nobj:], self._compiled))
        if not hn > 0:
            return 1.0
        dist = self._dist_prev
        if not dist:
            on = 0.0
            for S in self.obj_storages.values():
                on += cdot(S.data, S.data, self._compiled)
            hon = np.sqrt(hh_obj)
            return float(0.1 * np.sqrt(on) / (hon if hon > 0 else hn))
        return float(dist / hn)

    def _shortest_trial(self):
        """The shortest trial step worth taking: the object's norm times the rounding unit of its dtype.

        Below it a step changes the object by less than its rounding, and the
        line-search terms underflow in single precision (once a converged run
        shrank its trial step by 10 per iteration to 1e-20 and then overflowed).
        """
        on = 0.0
        for S in self.obj_storages.values():
            on += cdot(S.data, S.data, self._compiled)
        return float(np.finfo(self.dirn.real.dtype).eps * np.sqrt(on))

    def _step_length(self, coefs):
        """The noise model's step along the line (0 when it is not a finite positive number)."""
        u = self.noise.step_length(coefs)
        if not np.isfinite(u) or u < 0:
            u = 0.0
        return float(u)

    def engine_iterate(self, n):
        return [self._iteration() for _ in range(int(n))]

    def _iteration(self):
        probe_on = self.probe_update_due()
        if self._stale:  # a constraint changed probe or object since the last evaluation
            self._L = self._evaluate(gradient=True)
            self._restart = True
        L0 = self._L
        self._direction(probe_on)
        self._tau = tau = self._direction_scale()
        coefs, ex = self._line_coefficients(probe_on, tau)
        u = self._step_length(coefs)
        bg = self._has_background  # the gradient follows the background step (see _background_step)
        L = self._evaluate(self._move_to(0.0, u), gradient=not bg, background=bg)
        tol = 1e-6 * abs(L0) + 1e-30
        tries = 0
        while not L <= L0 + tol and tries < self.MAX_BACKTRACK:
            L = self._evaluate(self._move_to(u, 0.5 * u), gradient=not bg, background=bg)
            u *= 0.5
            tries += 1
        if not L <= L0 + tol:
            L = self._evaluate(self._move_to(u, 0.0), gradient=not bg, background=bg)
            u = 0.0
            self._restart = True
        if bg:
            self._background_step()
            L = self._evaluate(0.0, gradient=True)
        if tries:
            log.debug("%s: ML step halved %d times", self.label, tries)
        if u > 0:
            self._dist_prev = float(u * tau * self._dirn_norm)  # |h| from _direction_scale (h is unchanged)
        else:  # no progress along this line: steepest descent with a shorter trial next time
            self._restart = True
            if self._dist_prev:
                self._dist_prev = max(0.1 * self._dist_prev, self._shortest_trial())
        self._L = L
        # constraints that break the line (rare): the next iteration re-evaluates
        if self._constrain():
            self._stale = True
        last = self._last
        total = max(self.total_counts, 1e-30)
        rec = dict(fourier_error=last["fourier_error"], photon_error=last["photon_error"],
                   likelihood=last["likelihood"],
                   exit_change=float((u * u * ex[0] + u ** 3 * ex[1] + u ** 4 * ex[2]) / total),
                   ml_step=float(u * tau), ml_beta=float(self._beta))
        if self.reg_amp:
            rec["ml_regularizer"] = float(last["reg"]) / max(self.total_valid, 1.0)
        return rec

    # -- the incoherent background ----------------------------------------------------------------
    def _init_background(self):
        """Constants of the background step for the groups whose scan fits a background."""
        self._has_background = any(G.g.background is not None for G in self.groups)
        if self._has_background and self.floating:
            raise ConfigError("engines.%s: floating_intensities cannot be combined with a fitted background "
                              "(scans.<label>.background; auto fits one where every frame holds a floor of "
                              "counts)" % self.label,
                              hint="set scans.<label>.background: false or floating_intensities: false")
        self._bg_const = []
        for G in self.groups:
            g = G.g
            if g.background is None:
                self._bg_const.append(None)
                continue
            const = frame_sums(g.diff_frames(), g.mask_frames())
            for a in const.values():
                self._allsum(a)
            self._bg_const.append(const)

    def _background_step(self):
        """One closed-form step of every fitted background from the last evaluation's sums (see noise_models).

        The sums ``sum over frames of l'`` of all slots are added in slot
        order and over MPI ranks, so every rank takes the same step.
        """
        for gi, G in enumerate(self.groups):
            g = G.g
            if g.background is None:
                continue
            s1 = self._acc[0].gB[gi].copy()
            for acc in self._acc[1:]:
                s1 += acc.gB[gi]
            self._allsum(s1)
            self.noise.background_step(g.background, s1, self._bg_const[gi], self.background_sigma(g))

    def background_sigma(self, g):
        """The smoothing (pixels) of the background of group ``g``'s scan."""
        model = self.ptycho.scans.get(g.label)
        return model.background_sigma if model is not None else 0.0

    def _constrain(self):
        """Object clipping and probe recentring; True when they changed anything."""
        changed = self.apply_object_constraints()  # all storages of the model: the same on every rank
        if self.p.get("probe_center_tol") is not None:
            if self.recenter_probe():
                changed = True
        return changed

    # -- public helpers (tests, diagnostics) ---------------------------------------------------
    def _evaluate_afresh(self, gradient):
        """Evaluate at the current probe and object from scratch (initialising first); restarts the directions."""
        if not self.initialized:
            self.initialize()
        self._stale = True
        self._restart = True
        self._L = self._evaluate(gradient=gradient)
        return self._L

    def objective(self):
        """The total cost (data + regulariser) at the current probe and object, from scratch."""
        self._evaluate_afresh(gradient=False)
        self._stale = True  # the stored l' may not match a gradient yet
        return self._L

    def gradients(self):
        """Fresh gradients ``dL/dx*`` at the current point: ``{'obj': {sid: arr}, 'probe': {...}}`` (copies)."""
        self._evaluate_afresh(gradient=True)
        out = dict(obj={}, probe={})
        for kind, sid, arr in self._parts(self.grad):
            out[kind][sid] = arr.copy()
        return out

    def floating_scales(self):
        """Per-frame intensity scales ``c_m`` (None without ``floating_intensities``).

        A dict: group label (the scan label) -> ``(frame_rows, scales)``, the
        diffraction-storage rows of this rank's frames and their scales (the
        values of the last evaluation; kept after :meth:`finalize`).
        """
        if not self.floating:
            return None
        if self.groups:
            return {G.g.label: (G.g.frame_di.copy(), G.c.copy()) for G in self.groups}
        return dict(self._final_scales or {})
