"""The passes of the projection engines (DM, RAAR), in two implementations chosen once per run.

:class:`~ptycli.engines.projectional.ProjectionEngine` states the algorithm
(see :mod:`ptycli.engines.projectional`: the update rule, the power bound,
the overlap update); the work over the exit waves goes through the passes of
:class:`ProjectionPasses`:

``fourier_pass(acc)``
    The generalised projection step on every exit wave, its errors into
    ``acc``, and, when the engine's ``_fuse_object`` is set, the object
    numerator ``sum conj(P) psi`` while the new exit waves are in cache.
    For a scan with a fitted background the model amplitude includes it and
    the pass adds ``sum_j m_j f_j^2`` (the augmented projection's share,
    :mod:`ptycli.core.background`) into ``engine._bg_sums[label]``.
``model_errors(acc)``
    Errors of ``probe * object`` against the data (nothing is updated).
``object_numerator()``
    ``sum conj(P) psi`` into the engine's object numerators (which hold the
    inertia term).
``object_divide(recompute_den)``
    The object denominator (when the probe changed), the MPI sums and the
    division into the object storages.
``probe_sums()``
    ``sum conj(O) psi`` and ``sum |O|^2`` into the engine's probe numerators
    and denominators (not for a variable probe, whose groups address every
    frame's probe: :mod:`ptycli.engines.projection_variable`; numpy only).

The passes read and write the engine's model, address book, scratch
buffers and accumulators (``engine._scratch``, ``_ob_num``, ``_ob_den``,
``_ob_prior``, ``_pr_num``, ``_pr_den``, ``_blocks``). Two implementations
compute the same numbers (tests compare them), chosen once in
``engine_initialize`` from the ``kernels`` parameter
(:func:`ptycli.engines.fused.use_compiled`):

:class:`NumpyProjectionPasses`
    Window-by-window numpy calls; frames inside the power bound skip the
    inverse FFT when a block has enough of them.
:class:`CompiledProjectionPasses`
    The fused kernels of :mod:`ptycli.engines.fused`: per block one pass for
    the projection input, one per frame for the modulus constraint with its
    errors, one for the exit-wave update with the object numerator; blocks
    load-balanced over the FFT threads (:class:`~ptycli.engines.threads.BlockPool`)
    with accumulator slots that keep the sums independent of timing (two
    per thread; one for objects larger than :data:`~ptycli.engines.threads.LARGE_SLOT_BYTES`); the
    object denominator, the division and the folding of the slots in one
    sweep per object row band; passes after the Fourier pass run the blocks
    last to first, starting where the cache is warm.
"""

import numpy as np

from .. import parallel
from ..core import fft
from .._lazy import lazy_module
from .kernels import fft_inplace, ifft_inplace, model_amplitude, fourier_errors, modulus_factor, power_bound_renorm
from .threads import BlockPool, slots_per_thread

__all__ = ["ProjectionPasses", "NumpyProjectionPasses", "CompiledProjectionPasses", "weak_divisor", "work_probe"]

#: the compiled kernels, imported (with numba) at first use
fused = lazy_module("ptycli.engines.fused")

#: A block takes the subset path (inverse FFT only of frames outside the power
#: bound) when at most this fraction of its frames is outside; otherwise all
#: frames are transformed (those inside get the factor 1).
_SUBSET_FRACTION = 0.7

#: the factor still due after a transform that scaled its result itself (:func:`ptycli.core.fft.fft2_deferred`)
_ONE = np.float32(1.0)


def _real_view(a):
    """A complex stack ``(n, H, W)`` seen as real numbers ``(n, H, 2 W)`` (the kernels scale it in place)."""
    return a.view(a.real.dtype)


def work_probe(g):
    """The probe of group ``g`` in the working frame: ``pre * probe`` (far field) or the probe itself.

    With the sub-pixel model the probe is the expanded one (:meth:`PodGroup.model_probe
    <ptycli.engines.addressing.PodGroup.model_probe>`), one layer per shift class and mode.

    In the far field the Fourier step works on ``pre * psi`` (``pre``: the
    propagator's sample-plane phase factor, ``|pre| = 1``): then
    ``FFT(pre * t)`` needs no separate phase pass, since
    ``pre * pw = (pre * probe) * object``. The exit storage always holds
    the true exit waves; the factor is applied to ``psi`` frame by frame
    while it is in cache.
    """
    probe = g.model_probe()  # the expanded (shifted) probe with the sub-pixel model
    if g.farfield:
        return probe * g.factors.pre
    return probe


def weak_divisor(den, prior, c_obj, c_weak):
    """The object update's divisor and weak-illumination prior, in place (see :mod:`ptycli.engines.projectional`).

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


class ProjectionPasses:
    """The passes a projection engine calls (see the module docstring); one instance per engine run."""

    def fourier_pass(self, acc):
        """Projection step on all exit waves; errors into ``acc`` (:class:`~ptycli.engines.error_sums.ErrorSums`)."""
        raise NotImplementedError

    def model_errors(self, acc):
        """Errors of ``probe * object`` into ``acc``."""
        raise NotImplementedError

    def object_numerator(self):
        """Add ``sum conj(P) psi`` to the engine's object numerators."""
        raise NotImplementedError

    def object_divide(self, recompute_den):
        """Object denominator (when ``recompute_den``), MPI sums, and the new object in the storages."""
        raise NotImplementedError

    def probe_sums(self):
        """Add ``sum conj(O) psi`` and ``sum |O|^2`` to the engine's probe numerators and denominators."""
        raise NotImplementedError


class NumpyProjectionPasses(ProjectionPasses):
    """The passes in numpy, window by window (see the module docstring)."""

    def __init__(self, engine):
        self.e = engine

    def fourier_pass(self, acc):
        for g in self.e.book.groups:
            self._fourier_group(g, acc)

    def _fourier_group(self, g, acc):
        """Generalised projection step on the exit waves of group ``g``; errors into ``acc``.

        Works frame block by frame block (see the module docstring). Frames
        inside the power bound need no Fourier correction (``P_F(t) = t``), so
        their update is ``(alpha beta + 1 - beta)(pw - psi)`` and they skip the
        inverse FFT when enough of a block is inside. When
        ``engine._fuse_object`` is set, the object-update numerator
        ``sum conj(P) psi`` is accumulated here while the new exit waves are
        in cache.
        """
        e = self.e
        sc = e._scratch[g.shape]
        H, W = g.shape
        alpha, beta = float(e.alpha), float(e.beta)
        ctype = e.ctype
        c_in = ctype.type(alpha * beta + 1.0 - beta)
        a1 = ctype.type(1.0 + alpha)
        ma = ctype.type(-alpha)
        far = g.farfield
        pre = g.factors.pre if far else None
        post = g.factors.post_bw if far else None  # conj(pre)
        pt = work_probe(g)
        ob = g.obj.data
        modes = g.modes if g.regular else 0
        fuse = e._fuse_object
        ol, oy, ox, pl = g.addresses
        frame_tmp = sc["frame"]
        if fuse:
            prc = np.conj(g.model_probe())
            num = e._ob_num[g.obj.ID]
        bg = g.background
        if bg is not None:
            bsum = e._bg_sums[g.label]
        for f0, f1, p0, p1 in e._blocks[id(g)]:
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
            # model amplitude (modes summed incoherently, plus the background) and errors
            if modes:
                model_amplitude(F, modes, af, tmp)
            else:
                np.sqrt(g.sum_modes(np.abs(F) ** 2, f0, f1), out=af)
            mask = g.mask_frames(f0, f1)
            if bg is not None:
                np.multiply(af, af, out=af)
                af += bg
                np.sqrt(af, out=af)
            ferr, photon, valid = fourier_errors(af, g.fmag(f0, f1), mask, fdev=fdev, tmp=tmp,
                                                 weight=g.photon_weight(f0, f1))
            acc.add(fourier=float(ferr.sum()), photon=photon, valid=float(valid.sum()))
            r = power_bound_renorm(ferr / np.maximum(valid, 1.0), e.pbound)
            out = r < 1.0  # frames that need the Fourier correction
            n_out = int(np.count_nonzero(out))
            if 0 < n_out < nb and n_out > _SUBSET_FRACTION * nb:
                # few frames inside the bound: cheaper to transform all (their factor is 1)
                # than to copy the others out and back
                out[:] = True
                n_out = nb
            if bg is not None and n_out < nb:  # frames inside the bound: fm = 1
                inside = ~out
                bsum += np.sum(mask[inside], axis=0, dtype=np.float64) if mask is not None else float(
                    np.count_nonzero(inside))
            if n_out:
                if n_out == nb:
                    pod_out = None
                    Fo, fo, afo, ro = F, fdev, af, r
                else:
                    pod_out = np.flatnonzero(out[g.frame[p0:p1] - f0])
                    Fo, fo, afo, ro = F[pod_out], fdev[out], af[out], r[out]
                fm = modulus_factor(fo, afo, ro, out=fo)
                if bg is not None:
                    # the background's share of the projection: B fm^2 per frame (fm = 1 inside the bound)
                    f2 = fm * fm
                    if mask is not None:
                        f2 *= mask[out] if n_out < nb else mask
                    bsum += np.sum(f2, axis=0, dtype=np.float64)
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

    def model_errors(self, acc):
        for g in self.e.book.groups:
            self._model_errors_group(g, acc)

    def _model_errors_group(self, g, acc):
        """:meth:`model_errors` of group ``g`` (the engine's scratch buffers)."""
        e = self.e
        sc = e._scratch[g.shape]
        pt = work_probe(g)  # far field: FFT(pre * P O) has the model's modulus
        ob = g.obj.data
        modes = g.modes if g.regular else 0
        for f0, f1, p0, p1 in e._blocks[id(g)]:
            nb = f1 - f0
            af, tmp = sc["af"][:nb], sc["tmp"][:nb]
            buf = g.gather_product(ob, pt, p0, p1, out=sc["buf"][:p1 - p0])
            F = fft_inplace(buf) if g.farfield else g.propagator.fw(buf)
            if modes:
                model_amplitude(F, modes, af, tmp)
            else:
                np.sqrt(g.sum_modes(np.abs(F) ** 2, f0, f1), out=af)
            if g.background is not None:
                np.multiply(af, af, out=af)
                af += g.background
                np.sqrt(af, out=af)
            ferr, photon, valid = fourier_errors(af, g.fmag(f0, f1), g.mask_frames(f0, f1), fdev=sc["fdev"][:nb],
                                                 tmp=tmp, weight=g.photon_weight(f0, f1))
            acc.add(fourier=float(ferr.sum()), photon=photon, valid=float(valid.sum()))

    def object_numerator(self):
        e = self.e
        for g in e.book.groups:
            num = e._ob_num[g.obj.ID]
            prc = np.conj(g.model_probe())
            tmp = e._scratch[g.shape]["frame"]
            for f0, f1, p0, p1 in e._blocks[id(g)]:
                g.scatter_probe_product(num, g.read_exit(p0, p1), prc, p0, p1, tmp=tmp)

    def object_divide(self, recompute_den):
        e = self.e
        if recompute_den:
            for sid in e.book.obj_storages:
                e._ob_den[sid].fill(0)
            for g in e.book.groups:
                pm = g.model_probe()
                p2 = (pm.real ** 2 + pm.imag ** 2).astype(e.ftype)
                g.scatter_object_const(e._ob_den[g.obj.ID], p2)
        c_obj, c_weak = e.c_obj, e.c_weak
        for sid, S in e.book.obj_storages.items():
            num, den, prior = e._ob_num[sid], e._ob_den[sid], e._ob_prior[sid]
            parallel.allreduce(num)
            if recompute_den:
                parallel.allreduce(den)

            def work(k, rows, S=S, num=num, den=den, prior=prior):
                if recompute_den:
                    weak_divisor(den[..., rows, :], prior[..., rows, :], c_obj, c_weak)
                out = np.multiply(num[..., rows, :], den[..., rows, :], out=S.data[..., rows, :])
                if c_weak > 0:
                    out += prior[..., rows, :]

            e._row_work(work, [num])

    def probe_sums(self):
        e = self.e
        objc = {}
        objw = {}
        for sid, S in e.book.obj_storages.items():
            objw[sid] = (S.data.real ** 2 + S.data.imag ** 2).astype(e.ftype)
            objc[sid] = np.conj(S.data)
        for g in e.book.groups:
            if g.frame_probes:  # a variable probe: its own step (ptycli.engines.projection_variable)
                continue
            num = e._pr_num[e.probe_key(g)]
            den = e._pr_den[e.probe_key(g)]
            tmp = e._scratch[g.shape]["frame"]
            for f0, f1, p0, p1 in e._blocks[id(g)]:
                g.accumulate_probe(num, den, objc[g.obj.ID], objw[g.obj.ID], g.read_exit(p0, p1), p0, p1, tmp=tmp)


class CompiledProjectionPasses(ProjectionPasses):
    """The passes with the fused kernels of :mod:`ptycli.engines.fused` on a :class:`BlockPool`."""

    def __init__(self, engine, shapes, max_pods):
        """Thread pool, per-thread block buffers and per-slot accumulators of the compiled path.

        Thread 0 uses the engine's own block buffer, slot 0 the engine's own
        numerators; the other threads and slots get their own (each slot an
        object- or probe-sized array), added into slot 0's after a pass.
        The pool is also the engine's (``engine._pool``: its row-band work runs on it).
        """
        self.e = e = engine
        slot_bytes = sum(S.data.nbytes for S in e.book.obj_storages.values())
        self.pool = e._pool = BlockPool(fft.get_workers(), slots_per_thread=slots_per_thread(slot_bytes))
        T = self.pool.n
        self._no_mask = np.ones((1, 1, 1), dtype=np.uint8)  # the mask storage's type
        # work items: one per frame block, with the block's constant index arrays
        self._items = []
        for g in e.book.groups:
            for f0, f1, p0, p1 in e._blocks[id(g)]:
                mrows = g.frame_ma[f0:f1].copy() if not g.mask_trivial else np.zeros(f1 - f0, np.int64)
                self._items.append((g, (f0, f1, p0, p1), (g.pod_start[f0:f1 + 1] - p0, g.frame_di[f0:f1].copy(),
                                                          mrows)))

        S = self.pool.slots  # accumulator slots (BlockPool.map_slots), a few per thread

        def more(acc):
            return [acc] + [{sid: np.zeros_like(a) for sid, a in acc.items()} for _ in range(S - 1)]

        self._tbuf = [{shape: e._scratch[shape]["buf"] for shape in shapes}] + [
            {shape: fft.empty((max_pods,) + shape, dtype=e.ctype) for shape in shapes} for _ in range(T - 1)]
        # slot 0 accumulates into the engine's own numerators (they start from the inertia terms); the
        # object denominator needs no slots (fused.object_den_rows fills it in row bands)
        self._ob_num_t, self._pr_num_t, self._pr_den_t = more(e._ob_num), more(e._pr_num), more(e._pr_den)
        # accumulators of slots 1.. are zero between passes: a pass marks its set dirty, the fold that
        # adds them into slot 0's clears them in the same sweep and marks it clean
        self._dirty = set()
        # the background: the sums of the augmented projection per slot (detector-sized, float64); zeros
        # stand in for the background of scans without one
        self._bg_t = [{g.label: np.zeros(g.shape, np.float64) for g in e.book.groups if g.background is not None}
                      for _ in range(S)]
        self._no_bg = {shape: np.zeros(shape, e.ftype) for shape in shapes}
        self._no_bgsum = np.zeros((1, 1), np.float64)

    def fourier_pass(self, acc):
        """The projection step of every group with the fused kernels of :mod:`ptycli.engines.fused`.

        Per frame block (blocks of all groups shared out by
        ``self.pool.map_slots``): the projection input in one pass, the FFT
        (one thread), the modulus constraint with its errors in one pass per
        frame, the inverse FFT, and the exit-wave update (with the object
        numerator into the block's slot accumulator when
        ``engine._fuse_object``) in one pass.
        """
        e = self.e
        alpha, beta = float(e.alpha), float(e.beta)
        a1, ma = np.float32(1.0 + alpha), np.float32(-alpha)
        fuse = e._fuse_object
        if fuse:  # the numerator sums stay in the slots' accumulators until object_update folds them
            self._start_sums("_ob_num_t")
        prep = {}
        for g in e.book.groups:
            frame = e._scratch[g.shape]["frame"]  # placeholder for the unused factors (near field)
            prep[id(g)] = (g.factors.pre if g.farfield else frame, g.factors.post_bw if g.farfield else frame,
                           work_probe(g), np.conj(g.model_probe()),
                           g.mask.data if not g.mask_trivial else self._no_mask)

        pbound = float(e.pbound)
        for slot_sums in self._bg_t:
            for a in slot_sums.values():
                a.fill(0)

        def work(k, slot, item):
            g, (f0, f1, p0, p1), (pod_start, drows, mrows) = item
            pre, post, pt, prc, mask = prep[id(g)]
            use_bg = g.background is not None
            bg = g.background if use_bg else self._no_bg[g.shape]
            bgsum = self._bg_t[slot][g.label] if use_bg else self._no_bgsum
            far, ob = g.farfield, g.obj.data
            buf = self._tbuf[k][g.shape][:p1 - p0]
            psi = g.read_exit(p0, p1)
            fused.projection_input(buf, psi, ob, pt, pre, far, g.addresses, p0, a1, ma)
            F, sf = fft.fft2_deferred(buf, workers=1) if far else (g.propagator.fw(buf), _ONE)
            sums = np.empty((4, f1 - f0))
            fused.modulus_constraint(F, pod_start, g.diff.data, drows, mask, mrows, not g.mask_trivial, pbound,
                                     True, *sums, bg, use_bg, bgsum, sf)  # leaves sf due on F
            G, sb = fft.ifft2_deferred(F, workers=1) if far else (g.propagator.bw(F), _ONE)
            change = fused.projection_update(psi, G, ob, pt, pre, post, far, g.addresses, p0, beta, fuse,
                                             self._ob_num_t[slot][g.obj.ID], prc, _real_view(G), sf * sb)
            g.write_exit(psi, p0, p1)
            return float(sums[0].sum()), float(sums[1].sum()), float(sums[2].sum()), change

        for fourier, photon, valid, change in self.pool.map_slots(work, self._items):  # summed in item order
            acc.add(fourier=fourier, photon=photon, valid=valid)
            acc.add_exit_change(change)
        for label, total in e._bg_sums.items():  # the background sums of the slots, in slot order
            for part in self._bg_t:
                total += part[label]

    def model_errors(self, acc):
        """:meth:`model_errors` with the fused kernels (the projection input with ``alpha = 0``, errors only)."""
        e = self.e
        one, zero = np.float32(1.0), np.float32(0.0)
        prep = {}
        for g in e.book.groups:
            frame = e._scratch[g.shape]["frame"]
            prep[id(g)] = (g.factors.pre if g.farfield else frame, work_probe(g),
                           g.mask.data if not g.mask_trivial else self._no_mask)

        def work(k, slot, item):
            g, (f0, f1, p0, p1), (pod_start, drows, mrows) = item
            pre, pt, mask = prep[id(g)]
            buf = self._tbuf[k][g.shape][:p1 - p0]
            fused.projection_input(buf, g.read_exit(p0, p1), g.obj.data, pt, pre, g.farfield, g.addresses, p0, one,
                                   zero)
            F, sf = fft.fft2_deferred(buf, workers=1) if g.farfield else (g.propagator.fw(buf), _ONE)
            sums = np.empty((4, f1 - f0))
            bg = g.background if g.background is not None else self._no_bg[g.shape]
            fused.modulus_constraint(F, pod_start, g.diff.data, drows, mask, mrows, not g.mask_trivial, 0.0, False,
                                     *sums, bg, False, self._no_bgsum, sf)
            return float(sums[0].sum()), float(sums[1].sum()), float(sums[2].sum())

        for fourier, photon, valid in self.pool.map_slots(work, self._items):  # summed in item order
            acc.add(fourier=fourier, photon=photon, valid=valid)

    def object_numerator(self):
        """Object numerator (:func:`fused.object_numerator`) over all blocks, into the slots' accumulators.

        :meth:`object_divide` folds them.
        """
        e = self.e
        self._start_sums("_ob_num_t")
        prc = {id(g): np.conj(g.model_probe()) for g in e.book.groups}

        def work(k, slot, item):
            g, (f0, f1, p0, p1), _ = item
            fused.object_numerator(self._ob_num_t[slot][g.obj.ID], g.read_exit(p0, p1), prc[id(g)], g.addresses,
                                   p0)

        self.pool.map_slots(work, self._items, reverse=True)  # starts with the blocks last in the cache

    def object_divide(self, recompute_den):
        """The object from the slots' sums, in row bands: gather the denominator, fold the numerators, divide.

        One sweep per row band when there is one process
        (:func:`fused.object_divide_rows` folds the slots, makes the divisor
        and divides); with MPI the folded sums are reduced over the ranks
        between the fold and the division.
        """
        e = self.e
        c_obj, c_weak = e.c_obj, e.c_weak
        mpi = parallel.size > 1
        f32 = e.ftype.type
        consts = (f32(c_obj), f32(c_weak), f32(c_weak * c_weak))
        # sum |O|^2 for the probe update's c_p, from the bands while they are in cache (unless clipping follows)
        power = {sid: [0.0] * self.pool.n for sid in e.book.obj_storages} if e.p.get("clip_object") is None \
            else None

        p2 = {id(g): (lambda pm: (pm.real ** 2 + pm.imag ** 2).astype(e.ftype))(g.model_probe())
              for g in e.book.groups} if recompute_den else None

        def gather_den(rows):
            for sid, den in e._ob_den.items():
                den[..., rows, :] = 0
                y_lo, y_hi, _ = rows.indices(den.shape[-2])
                for g in e.book.groups:
                    if g.obj.ID == sid:
                        fused.object_den_rows(den, p2[id(g)], g.addresses, y_lo, y_hi)

        def divide(k, rows, fold):
            for sid, S in e.book.obj_storages.items():
                parts = tuple(_real_view(acc[sid]) for acc in (self._ob_num_t if fold else self._ob_num_t[:1]))
                y_lo, y_hi, _ = rows.indices(S.data.shape[-2])
                fused.object_divide_rows(parts, e._ob_den[sid], e._ob_prior[sid], _real_view(S.data), y_lo, y_hi,
                                         recompute_den, *consts)
                if power is not None:
                    band = S.data[..., rows, :]
                    power[sid][k] = float(np.vdot(band, band).real)

        arrays = list(e._ob_num.values())
        if mpi:
            def fold(k, rows):
                self._fold_sums("_ob_num_t", rows)
                if recompute_den:
                    gather_den(rows)

            self.pool.rows(fold, arrays)
            for sid in e.book.obj_storages:
                parallel.allreduce(e._ob_num[sid])
                if recompute_den:
                    parallel.allreduce(e._ob_den[sid])
            self.pool.rows(lambda k, rows: divide(k, rows, False), arrays)
        else:
            def sweep(k, rows):
                if recompute_den:
                    gather_den(rows)
                divide(k, rows, True)

            self.pool.rows(sweep, arrays)
        self._sums_folded("_ob_num_t")
        e._obj_power = {sid: sum(parts) for sid, parts in power.items()} if power is not None else None

    def probe_sums(self):
        e = self.e
        self._start_sums("_pr_num_t")
        self._start_sums("_pr_den_t")

        def work(k, slot, item):
            g, (f0, f1, p0, p1), _ = item
            fused.probe_sums(self._pr_num_t[slot][e.probe_key(g)], self._pr_den_t[slot][e.probe_key(g)], True,
                             g.read_exit(p0, p1), g.obj.data, g.addresses, p0)

        self.pool.map_slots(work, self._items, reverse=True)  # starts with the blocks last in the cache
        for name in ("_pr_num_t", "_pr_den_t"):  # probe-sized: in this thread
            self._fold_sums(name)
            self._sums_folded(name)

    # -- the accumulator slots -------------------------------------------------------------
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
