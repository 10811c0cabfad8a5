"""Block passes of the ML engine on the compiled kernels (:mod:`ptycli.engines.fused_ml`).

:class:`CompiledMLPasses` implements :class:`~ptycli.engines.ml.passes.MLPasses`
keeping only ``F`` between passes: the line pass forms the direction terms
(:func:`~ptycli.engines.fused_ml.line_waves`), transforms them into two
block-sized buffers and sums the cost polynomial
(:func:`~ptycli.engines.fused_ml.line_sums`); the evaluation recomputes the
transforms at the new point (``fw(P O)``: one more FFT pass, one
exit-wave-sized array less than keeping ``Fb`` and ``Fc``), then cost,
errors and ``l' F`` in one fused loop, the inverse FFT and the scatter of
the gradients. The transforms of the direction terms and of the gradient
waves are left unnormalised (:func:`ptycli.core.fft.fft2_deferred`): their
factor goes into the products of :func:`~ptycli.engines.fused_ml.line_sums`
and into the weights ``l'`` of :func:`~ptycli.engines.fused_ml.evaluate`
(two scaling passes over the waves fewer per iteration, three with the probe on). Four FFT passes per iteration (three while the probe is
fixed), peak memory the model plus one exit-wave-sized array. The noise
model reaches the kernels as its :attr:`~ptycli.engines.ml.noise_models.NoiseModel.code`.

:func:`~ptycli.engines.fused_ml.evaluate` works pixel by pixel (no window,
no neighbour), so it sees each frame as rows of several detector rows
(:data:`EVALUATE_ROW`, :meth:`CompiledMLPasses.pixel_rows`): its nine short
loops per row then run a quarter as often (128^2 frames: 2.6 -> 2.3 ns per
pixel Poisson, 1.9 -> 1.5 Gaussian, one thread, block in cache; its float32
partial sums run over the longer rows).
"""

import numpy as np

from ..._lazy import lazy_module
from .passes import MLPasses, Workspace

# imported at first use: listing the parameters (ptycli params) needs no numba
fused_ml = lazy_module("ptycli.engines.fused_ml")

__all__ = ["CompiledMLPasses", "EVALUATE_ROW"]

#: Pixels per row that :func:`~ptycli.engines.fused_ml.evaluate` is given at most (whole detector rows).
EVALUATE_ROW = 512


class CompiledMLPasses(MLPasses):
    """:class:`~ptycli.engines.ml.passes.MLPasses` on the numba kernels (numba threads inside each kernel)."""

    compiled = True

    def __init__(self, g, noise, ctype, ftype, block_frames):
        super().__init__(g, noise, ctype, ftype, block_frames)
        H, W = self.shape
        for b in self.blocks:
            b.valid = 0.0
        self.use_mask = not g.mask_trivial
        self.mask = g.mask.data if self.use_mask else np.ones((1, H, W), np.uint8)
        self.mrows = g.frame_ma if self.use_mask else np.zeros(g.n_frames, np.int64)
        #: the background added to the model intensity (zeros without one: one add per pixel)
        self.bg = g.background if g.background is not None else np.zeros((H, W), self.ftype)
        self.bg_dummy = np.zeros((1, 1), np.float64)
        H, W = self.shape
        #: detector rows per row of :meth:`pixel_rows`: the largest divisor of H with at most EVALUATE_ROW pixels
        self.merge = max([r for r in range(1, H + 1) if H % r == 0 and r * W <= EVALUATE_ROW] or [1])

    def pixel_rows(self, a):
        """A view of ``a`` (..., H, W) as (..., H / merge, merge * W): rows of ``merge`` detector rows (no copy)."""
        H, W = a.shape[-2:]
        v = a.view()
        v.shape = a.shape[:-2] + (H // self.merge, self.merge * W)  # raises rather than copying
        return v

    def workspace(self):
        """Two block-sized complex buffers."""
        return Workspace(self.maxp, self.maxf, self.shape, self.ctype, self.ftype, self.pf, with_real=False)

    def pods(self):
        """The pod addresses packed for the kernels: ``(object row, window y, window x, probe row)`` per pod."""
        return self.g.addresses  # probe rows: expanded-probe layers with the sub-pixel model

    def prepare_evaluate(self):
        g = self.g
        return g.obj.data, self.probe_eff(g.probe.data), self.pods()

    def evaluate_block(self, b, ws, prep, move, floating, eps, gradient, cg_obj, cg_probe, workers, bg_sum=None):
        obj, probe_eff, pods = prep
        g = self.g
        p0, p1, f0, f1 = b.p0, b.p1, b.f0, b.f1
        F = self.F[p0:p1]
        du, _, stale = move
        if stale or du:  # the transforms are recomputed at a new point (``F`` is current otherwise)
            fused_ml.exit_product(F, obj, probe_eff, pods, p0)
            self.propagate_inplace(F, workers)
        gF = ws.cA[:p1 - p0]
        out = np.zeros((f1 - f0, 4))
        gs = self.deferred_factor(gF)  # the inverse transform's scaling, folded into the weights l'
        rows = self.pixel_rows
        fused_ml.evaluate(rows(F), rows(gF), g.pod_start[f0:f1 + 1] - p0, rows(g.diff.data), g.frame_di[f0:f1],
                          rows(self.mask), self.mrows[f0:f1], self.use_mask, self.noise.code, float(eps), floating,
                          self.c[f0:f1], rows(self.bg), bg_sum is not None,
                          rows(bg_sum) if bg_sum is not None else self.bg_dummy, out, gs)
        if gradient:
            due = self.propagate_deferred(gF, workers, inverse=True)
            assert due == gs
            fused_ml.gradient_sums(gF, obj, probe_eff, pods, p0, cg_obj, cg_probe)
        return out.sum(axis=0)

    def prepare_line(self, hobj, hprobe, tau):
        g = self.g
        pt, hpt, hpt2 = self.line_probes(g.probe.data, hprobe, tau)
        return g.obj.data, hobj, pt, hpt, hpt2, self.pods()

    def line_block(self, b, ws, prep, probe_on, eps, workers):
        obj, hobj, pt, hpt, hpt2, pods = prep
        g = self.g
        p0, p1, f0, f1 = b.p0, b.p1, b.f0, b.f1
        Fb, Fc = ws.cA[:p1 - p0], ws.cT[:p1 - p0]
        dummy = pt if hpt is None else hpt
        fused_ml.line_waves(Fb, Fc, probe_on, obj, hobj, pt, dummy, dummy if hpt2 is None else hpt2, pods, p0)
        sb = self.propagate_deferred(Fb, workers)  # the scaling is folded into line_sums' products
        sc = self.propagate_deferred(Fc, workers) if probe_on else sb
        out = np.zeros((f1 - f0, fused_ml.N_LINE))
        fused_ml.line_sums(self.F[p0:p1], Fb, Fc, probe_on, g.pod_start[f0:f1 + 1] - p0, self.c[f0:f1],
                           g.diff.data, g.frame_di[f0:f1], self.mask, self.mrows[f0:f1], self.use_mask,
                           self.noise.code, float(eps), self.bg, out, sb, sc)
        r = out.sum(axis=0)
        return np.concatenate([r[:self.noise.n_line], r[fused_ml.N_COEF:]])
