"""Block passes of the ML engine: the interface and its numpy implementation.

The engine (:mod:`ptycli.engines.ml.engine`) works on each
:class:`~ptycli.engines.addressing.PodGroup` through one :class:`MLPasses`
object, of the implementation chosen once at initialisation:
:class:`NumpyMLPasses` (here) or
:class:`~ptycli.engines.ml.compiled_passes.CompiledMLPasses` (numba
kernels). Both offer the same passes over a frame block:

:meth:`~MLPasses.evaluate_block`
    Transforms at the current point, floating scales, cost and errors; with
    ``gradient`` the back-propagated detector-plane gradient ``l' F``
    scattered into the slot's (conjugate) object and probe accumulators.
:meth:`~MLPasses.line_block`
    The direction terms' transforms and the block's line-search
    coefficients (the noise model's, :meth:`NoiseModel.line_coefficients
    <ptycli.engines.ml.noise_models.NoiseModel.line_coefficients>`),
    followed by the three exit-change sums.

each after a per-pass preparation on the whole group
(:meth:`~MLPasses.prepare_evaluate`, :meth:`~MLPasses.prepare_line`).

Cost per iteration (numpy)
--------------------------
About three FFT passes over all pods: the transforms of ``b`` and ``c`` and
the inverse transform of the gradient (two while the probe is fixed). Two
passes over the data per iteration: the line-search pass (``b``, ``c``, their
FFTs, the polynomial sums) and a fused pass that moves ``F`` to the new
point (``F + du Fb + du2 Fc``, no forward FFT), evaluates the cost and
errors, and back-propagates and scatters the gradient. Frames are processed
in blocks: the FFTs run in place on persistent buffers, intermediate arrays
live in preallocated per-thread work buffers (:class:`Workspace`), object
windows are gathered with one fancy index on a sliding-window view per
block.
"""

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ...core import fft
from .sums import fdot, fsum, pair_add, pairs, same_buffer

__all__ = ["MLPasses", "NumpyMLPasses", "Block", "Workspace"]


class Block:
    """One frame block of a group: frames ``f0 .. f1 - 1``, pods ``p0 .. p1 - 1`` (plus its constant arrays)."""

    __slots__ = ("f0", "f1", "p0", "p1", "n", "mask", "w", "pw", "fmag", "mn", "valid", "pods")

    def __init__(self, f0, f1, p0, p1):
        self.f0, self.f1, self.p0, self.p1 = f0, f1, p0, p1
        self.pods = None


class Workspace:
    """Scratch arrays of one thread for one group (sized for the largest block).

    ``cA``, ``cT``: complex pod blocks; ``rp``: a real pod block (None when
    pods are frames, or ``with_real`` is False); ``fr``: six real frame blocks.
    """

    def __init__(self, maxp, maxf, shape, ctype, ftype, pods_are_frames, with_real=True):
        H, W = shape
        self.cA = fft.empty((maxp, H, W), ctype)
        self.cT = fft.empty((maxp, H, W), ctype)
        self.rp = None if pods_are_frames or not with_real else np.empty((maxp, H, W), ftype)
        self.fr = [np.empty((maxf, H, W), ftype) for _ in range(6)] if with_real else []


class MLPasses:
    """The block passes of ML over one pod group (the interface; see the module docstring).

    Parameters
    ----------
    g : PodGroup
        The group.
    noise : NoiseModel
        The noise model.
    ctype, ftype : dtype
        Complex and real type of the model.
    block_frames : int
        Frames per block.

    Attributes
    ----------
    blocks : list of Block
    F : ndarray (pods, H, W)
        The transforms ``fw(P O)`` at the current point.
    c : ndarray (frames,)
        The frames' intensity scales (1 without floating intensities).
    """

    #: whether the passes run the compiled kernels
    compiled = False

    def __init__(self, g, noise, ctype, ftype, block_frames):
        self.g = g
        self.noise = noise
        self.shape = g.shape
        self.ctype, self.ftype = np.dtype(ctype), np.dtype(ftype)
        self.pre = g.factors.pre if g.farfield else None
        self.pf = g.n_pods == g.n_frames  # one pod per frame: pod arrays are frame arrays
        self.blocks = [Block(*blk) for blk in g.blocks(block_frames)]
        self.maxp = max([b.p1 - b.p0 for b in self.blocks] or [1])
        self.maxf = max([b.f1 - b.f0 for b in self.blocks] or [1])
        H, W = self.shape
        self.F = self._detector_buffer(g)
        self.c = np.ones(g.n_frames, self.ftype)

    def _detector_buffer(self, g):
        """The array ``F`` of every pod's detector wave: the exit storage's memory where it fits.

        ML keeps no exit waves between iterations (the engine rebuilds them as
        probe x object when it finishes, and its checkpoints leave them out:
        ``KEEPS_EXIT_WAVES``), so in the regular layout the exit storage, of
        exactly this shape and type, holds ``F`` while ML runs: one array as
        large as all frames less. Otherwise an array of its own.
        """
        H, W = self.shape
        ex = g.exit.data
        if (g.regular and ex.dtype == self.ctype and ex.shape == (g.n_pods, H, W) and ex.flags.c_contiguous
                and ex.ctypes.data % fft.ALIGNMENT == 0):
            ex.fill(0)
            return ex
        return fft.zeros((g.n_pods, H, W), self.ctype)

    def workspace(self):
        """Scratch buffers for one thread."""
        raise NotImplementedError

    def positions_changed(self):
        """Frames moved (position refinement): refresh what depends on the windows."""

    def release(self):
        """Drop the exit-wave-sized arrays."""
        self.F = None

    # -- propagation (far field: pre factor folded into the probe, post factor dropped) --
    def propagate_inplace(self, x, workers, inverse=False):
        """Forward (or with ``inverse`` backward) transform of the contiguous pod array ``x``, in place."""
        if self.pre is not None:
            out = (fft.ifft2_inplace if inverse else fft.fft2_inplace)(x, workers)
        else:
            prop = self.g.propagator
            out = prop.bw(x) if inverse else prop.fw(x)
        if not same_buffer(out, x):
            x[...] = out
        return x

    def propagate_deferred(self, x, workers, inverse=False):
        """:meth:`propagate_inplace` that may leave the unitary scaling due: returns the factor still due.

        Far field: :func:`ptycli.core.fft.fft2_deferred` (FFTW unnormalised);
        near field: the propagator's transforms (factor 1).
        """
        if self.pre is not None:
            out, factor = (fft.ifft2_deferred if inverse else fft.fft2_deferred)(x, workers)
        else:
            prop = self.g.propagator
            out, factor = (prop.bw(x) if inverse else prop.fw(x)), x.real.dtype.type(1.0)
        if not same_buffer(out, x):
            x[...] = out
        return factor

    def deferred_factor(self, x):
        """The factor :meth:`propagate_deferred` will leave due on ``x``."""
        return fft.deferred_factor(x) if self.pre is not None else x.real.dtype.type(1.0)

    def probe_eff(self, probe):
        """The probe as seen by the FFT: ``pre * P`` (far field) or ``P`` (a new array).

        With the sub-pixel model ``P`` is expanded first (one layer per shift
        class and mode, :meth:`PodGroup.model_probe <ptycli.engines.addressing.PodGroup.model_probe>`).
        """
        probe = self.g.model_probe(probe)
        return probe * self.pre if self.pre is not None else probe.copy()

    def probe_gradient(self, cg_probe_eff):
        """The *conjugate* probe gradient from the conjugate gradient of the effective probe (a new array).

        ``conj(gP) = conj(conj(pre) gPe)``, with the sub-pixel model mapped
        back through the adjoint of the expansion (``S^H``, per shift class).
        """
        c = cg_probe_eff * self.pre if self.pre is not None else cg_probe_eff.copy()
        sub = self.g.sub
        if sub is None:
            return c
        out = np.zeros(self.g.probe.data.shape, c.dtype)
        sub.collapse(np.conj(c), out)
        return np.conj(out, out=out)

    @property
    def probe_layers(self):
        """Layers of the effective probe in use: the probe's, or the expanded probe's (sub-pixel model)."""
        g = self.g
        return g.probe.data.shape[0] if g.sub is None else g.sub.n_active

    def probe_accumulator(self):
        """A zero (conjugate) gradient accumulator of the effective probe (expanded with the sub-pixel model)."""
        g = self.g
        rows = g.probe.data.shape[0] if g.sub is None else g.sub.n_layers
        return np.zeros((rows,) + self.shape, g.probe.data.dtype)

    def line_probes(self, probe, hprobe, tau):
        """Probe factors of the direction terms: ``b = (tau P) hO + (tau hP) O``, ``c = (tau^2 hP) hO``.

        Returns ``(pt, hpt, hpt2)`` (effective probes; the last two None
        without a probe direction ``hprobe``).
        """
        pt = self.probe_eff(probe)
        pt *= tau
        if hprobe is None:
            return pt, None, None
        hpt = self.probe_eff(hprobe)
        hpt *= tau
        return pt, hpt, hpt * tau

    # -- the passes -----------------------------------------------------------------------
    def prepare_evaluate(self):
        """Per-pass data of :meth:`evaluate_block` (object and effective probe)."""
        raise NotImplementedError

    def evaluate_block(self, b, ws, prep, move, floating, eps, gradient, cg_obj, cg_probe, workers, bg_sum=None):
        """Transforms at the current point, cost and errors of block ``b``; with ``gradient`` the gradients.

        ``move = (du, du2, stale)`` says how the point moved since the last
        evaluation (along the line by ``du``, its square's change ``du2``;
        ``stale``: anywhere). Adds the *conjugate* gradients into ``cg_obj``
        (object-shaped) and ``cg_probe`` (effective probe); with ``bg_sum``
        (H, W) adds ``sum over frames of l'`` (the background's gradient) to
        it. The model intensity includes the group's background when it has
        one. Returns ``[cost, fourier, photon, valid]``.
        """
        raise NotImplementedError

    def prepare_line(self, hobj, hprobe, tau):
        """Per-pass data of :meth:`line_block` (``hprobe`` None while the probe is fixed)."""
        raise NotImplementedError

    def line_block(self, b, ws, prep, probe_on, eps, workers):
        """Transforms of the direction terms of block ``b`` and its line-search sums.

        Returns the noise model's ``n_line`` coefficient partials followed by
        ``sum|Fb|^2, sum 2Re(Fb* Fc), sum|Fc|^2`` (exit change).
        """
        raise NotImplementedError


class NumpyMLPasses(MLPasses):
    """:class:`MLPasses` in numpy: keeps ``Fb``/``Fc`` and the per-pixel derivatives between passes."""

    def __init__(self, g, noise, ctype, ftype, block_frames):
        super().__init__(g, noise, ctype, ftype, block_frames)
        ft = self.ftype
        n_all = np.asarray(g.diff_frames(), dtype=ft)
        m_all = g.mask_frames()
        m_all = None if m_all is None else np.asarray(m_all, dtype=ft)
        fmag_all = np.asarray(g.fmag(), dtype=ft)
        pw_all = np.reciprocal(n_all + ft.type(1.0))  # photon-error weights mask / (n + 1)
        if m_all is not None:
            pw_all *= m_all
        for b in self.blocks:
            f0, f1 = b.f0, b.f1
            b.n = n_all[f0:f1]
            b.mask = None if m_all is None else m_all[f0:f1]
            b.fmag = fmag_all[f0:f1]
            b.pw = pw_all[f0:f1]
            b.w = noise.block_weight(b.pw, b.mask)
            b.mn = noise.masked_counts(b.n, b.mask)
            b.valid = float(b.n.size) if b.mask is None else fsum(b.mask)
            b.pods = self.pod_index(b)
        H, W = self.shape
        # persistent transforms and per-pixel derivatives
        self.Fb = fft.zeros((g.n_pods, H, W), self.ctype)
        self.Fc = None
        self.fc_valid = False  # whether Fc belongs to the current line
        self.lp = np.zeros((g.n_frames, H, W), ft)
        self.aux = np.zeros((g.n_frames, H, W), ft)

    def workspace(self):
        return Workspace(self.maxp, self.maxf, self.shape, self.ctype, self.ftype, self.pf)

    def positions_changed(self):
        for b in self.blocks:
            b.pods = self.pod_index(b)

    def release(self):
        self.F = self.Fb = self.Fc = self.lp = self.aux = None

    # -- layout helpers -----------------------------------------------------------------
    def msum(self, b, x, out):
        """Sum the pod array ``x`` of block ``b`` over each frame's modes into ``out``."""
        g = self.g
        if g.regular:
            return np.sum(g.as4d(x, b.f0, b.f1), axis=1, out=out)
        out[...] = g.sum_modes(x, b.f0, b.f1)
        return out

    def pair_sum(self, b, x, ws, out):
        """``out`` (frames) = mode sum of ``x[..., 0::2] + x[..., 1::2]`` (x: pod pairs)."""
        if self.pf:
            return pair_add(x, out)
        n = b.p1 - b.p0
        return self.msum(b, pair_add(x, ws.rp[:n]), out)

    def probe_rows(self, probe, b):
        """The probe of each pod of ``b`` in a shape that broadcasts against :meth:`pods4`."""
        return self.g.probe_for(probe, b.p0, b.p1)

    def pods4(self, b, x):
        """A pod array of block ``b`` reshaped for probe broadcasting."""
        g = self.g
        if g.regular and g.modes > 1:
            return g.as4d(x, b.f0, b.f1)
        return x

    def frames4(self, b, x):
        """A frame array of block ``b`` shaped to broadcast against :meth:`pods4` arrays."""
        g = self.g
        if self.pf:
            return x
        if g.regular:
            return x[:, None]
        return g.to_pods(x, b.f0, b.f1)

    def add_probe_gradient(self, b, target, prod):
        """``target[pr_layer] += sum over pods of prod`` (per probe row)."""
        g = self.g
        if g.sub is not None:  # expanded probe: one layer per pod (a loop: np.add.at is slow)
            for k, q in enumerate(g.sub.layer[b.p0:b.p1].tolist()):
                target[q] += prod[k]
        elif g.regular:
            if g.modes == 1:
                target[int(g.mode_pr[0])] += prod.sum(axis=0)
            else:
                np.add.at(target, g.mode_pr, g.as4d(prod, b.f0, b.f1).sum(axis=0))
        elif g.single_probe_layer:
            target[int(g.pr_layer[0])] += prod.sum(axis=0)
        else:
            np.add.at(target, g.pr_layer[b.p0:b.p1], prod)

    def pod_index(self, b):
        """Per-pod window addresses of block ``b``: index arrays (object layer, y, x)."""
        g = self.g
        sl = slice(b.p0, b.p1)
        return (g.ob_layer[sl].copy(), g.ob_y[sl].copy(), g.ob_x[sl].copy())

    def windows(self, obj):
        """All ``H x W`` windows of an object array, ``(layers, Y, X, H, W)`` (a strided view)."""
        return sliding_window_view(obj, self.shape, axis=(1, 2))

    # -- evaluation -------------------------------------------------------------------------
    def prepare_evaluate(self):
        g = self.g
        return self.windows(g.obj.data), self.probe_eff(g.probe.data)

    def forward_block(self, b, sw_obj, probe_eff, workers):
        """``F = fw(P O)`` of block ``b`` (in the persistent buffer)."""
        F = self.F[b.p0:b.p1]
        ow = sw_obj[b.pods]
        np.multiply(self.pods4(b, ow), self.probe_rows(probe_eff, b), out=self.pods4(b, F))
        self.propagate_inplace(F, workers)

    def evaluate_block(self, b, ws, prep, move, floating, eps, gradient, cg_obj, cg_probe, workers, bg_sum=None):
        sw_obj, probe_eff = prep
        r = self.cost_block(b, ws, move, floating, eps, sw_obj, probe_eff, workers, bg_sum)
        if gradient:
            self.gradient_block(b, ws, sw_obj, probe_eff, cg_obj, cg_probe, workers)
        return r

    def cost_block(self, b, ws, move, floating, eps, sw_obj, probe_eff, workers, bg_sum=None):
        """Move ``F`` by ``du Fb + du2 Fc``, evaluate cost and errors, store ``l'`` and ``aux``.

        Returns ``[cost, fourier, photon, valid]``.
        """
        du, du2, stale = move
        noise = self.noise
        p0, p1, f0, f1 = b.p0, b.p1, b.f0, b.f1
        n, nf = p1 - p0, f1 - f0
        F = self.F[p0:p1]
        if stale:
            self.forward_block(b, sw_obj, probe_eff, workers)
        elif du:
            tmp = ws.cA[:n]
            F += np.multiply(self.Fb[p0:p1], du, out=tmp)
            if du2 and self.fc_valid:
                F += np.multiply(self.Fc[p0:p1], du2, out=tmp)
        fr = ws.fr
        t1, t2, t3 = fr[1][:nf], fr[2][:nf], fr[3][:nf]
        amp = None
        if self.pf:
            amp = np.abs(F, out=fr[4][:nf])
            I = np.multiply(amp, amp, out=fr[0][:nf])
        else:
            Fp = pairs(F)
            I = self.pair_sum(b, np.multiply(Fp, Fp, out=pairs(ws.cT[:n])), ws, fr[0][:nf])
        bg = self.g.background
        if bg is not None:  # the model intensity: coherent modes plus the background
            I += bg
            amp = None
        if floating:
            c = noise.floating_scale(I, b.n, b.w, b.fmag)
            self.c[f0:f1] = c
            I *= c[:, None, None]
            amp = None
        lp = self.lp[f0:f1]
        aux = self.aux[f0:f1]
        cost = noise.cost_terms(I, b.n, b.w, b.fmag, b.mn, eps, lp, aux, t1, t2, t3, second=True)
        if floating:
            lp *= self.c[f0:f1, None, None]  # d cost / d (unscaled intensity)
        if bg_sum is not None:
            bg_sum += np.sum(lp, axis=0, dtype=np.float64)  # d cost / d B
        # errors
        a = np.sqrt(I, out=t1) if amp is None else amp
        a -= b.fmag
        if b.mask is not None:
            ferr = fdot(np.multiply(a, b.mask, out=t2), a)
        else:
            ferr = fdot(a, a)
        perr = noise.photon_error(cost, I, b.n, b.pw, t1, t2)
        return np.array([cost, ferr, perr, b.valid])

    def gradient_block(self, b, ws, sw_obj, probe_eff, cgO, cgPe, workers):
        """Back-propagate ``l' F`` of block ``b``; accumulate the *conjugate* gradients.

        With ``G = bw(l' F)``: ``conj(gP) += sum O conj(G)`` per probe row and
        ``conj(gO) += P conj(G)`` scattered into the object windows
        (conjugate accumulators save a conjugated copy of the windows).
        """
        p0, p1 = b.p0, b.p1
        n = p1 - p0
        H, W = self.shape
        gF = ws.cA[:n]
        np.multiply(self.pods4(b, self.F[p0:p1]), self.frames4(b, self.lp[b.f0:b.f1]), out=self.pods4(b, gF))
        self.propagate_inplace(gF, workers, inverse=True)
        np.conj(gF, out=gF)
        ow = sw_obj[b.pods]
        ow *= gF
        self.add_probe_gradient(b, cgPe, ow)
        self.pods4(b, gF)[...] *= self.probe_rows(probe_eff, b)
        ol, oy, ox = b.pods
        for k, (l, y, x) in enumerate(zip(ol.tolist(), oy.tolist(), ox.tolist())):
            cgO[l, y:y + H, x:x + W] += gF[k]

    # -- line search ------------------------------------------------------------------------
    def prepare_line(self, hobj, hprobe, tau):
        g = self.g
        if hprobe is not None and self.Fc is None:
            self.Fc = fft.zeros(self.Fb.shape, self.Fb.dtype)
        self.fc_valid = hprobe is not None  # whether Fc belongs to the current line
        pt, hpt, hpt2 = self.line_probes(g.probe.data, hprobe, tau)
        return self.windows(g.obj.data), self.windows(hobj), pt, hpt, hpt2

    def line_block(self, b, ws, prep, probe_on, eps, workers):
        sw_obj, sw_h, probe_tau, hPe_tau, hPe_tau2 = prep
        p0, p1, f0, f1 = b.p0, b.p1, b.f0, b.f1
        n, nf = p1 - p0, f1 - f0
        Fa = self.F[p0:p1]
        Fb = self.Fb[p0:p1]
        Fc = self.Fc[p0:p1] if probe_on else None
        hw = sw_h[b.pods]
        if probe_on:
            np.multiply(self.pods4(b, hw), self.probe_rows(hPe_tau2, b), out=self.pods4(b, Fc))
            np.multiply(self.pods4(b, hw), self.probe_rows(probe_tau, b), out=self.pods4(b, Fb))
            del hw
            ow = sw_obj[b.pods]
            self.pods4(b, ow)[...] *= self.probe_rows(hPe_tau, b)
            Fb += ow
            del ow
            self.propagate_inplace(Fc, workers)
        else:
            np.multiply(self.pods4(b, hw), self.probe_rows(probe_tau, b), out=self.pods4(b, Fb))
        self.propagate_inplace(Fb, workers)
        fr = ws.fr
        tf = pairs(ws.cT[:n])
        tg = pairs(ws.cA[:n])
        Ap, Bp = pairs(Fa), pairs(Fb)
        ex = np.zeros(3)
        # polynomial pieces, the factors 2 of I1 = 2 J1 and I3 = 2 J3 applied to the sums
        J1 = self.pair_sum(b, np.multiply(Ap, Bp, out=tf), ws, fr[0][:nf])
        np.multiply(Bp, Bp, out=tg)
        if Fc is None:
            I2 = self.pair_sum(b, tg, ws, fr[1][:nf])
            ex[0] = fsum(I2)
            P, scale = [J1, I2], [2.0, 1.0]
        else:
            ex[0] = fsum(tg)
            Cp = pairs(Fc)
            np.multiply(Ap, Cp, out=tf)
            tf *= 2.0
            tf += tg
            I2 = self.pair_sum(b, tf, ws, fr[1][:nf])
            J3 = self.pair_sum(b, np.multiply(Bp, Cp, out=tf), ws, fr[2][:nf])
            I4 = self.pair_sum(b, np.multiply(Cp, Cp, out=tf), ws, fr[3][:nf])
            ex[1] = 2.0 * fsum(J3)
            ex[2] = fsum(I4)
            P, scale = [J1, I2, J3, I4], [2.0, 1.0, 2.0, 1.0]
        c = self.c[f0:f1, None, None]
        scaled = not np.all(self.c[f0:f1] == 1)
        if scaled:
            for x in P:
                x *= c
        coefs = self.noise.line_coefficients(P, scale, self.aux[f0:f1], self.lp[f0:f1], b.w,
                                             c if scaled else None, fr[4][:nf], fr[5][:nf])
        return np.concatenate([coefs, ex])
