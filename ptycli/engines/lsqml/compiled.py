"""Compiled (numba) window passes of LSQ-ML: the same sums as the numpy passes of :mod:`.batch`, loop-fused.

The numpy passes spend most of their time outside the FFTs in per-window
Python loops (scatters into the object-shaped sums) and in the step sums,
which build ``u = P dO`` and ``v = O dP`` as arrays before six dot products.
Here each is one loop over the windows' pixels:

* :func:`amplitude_step` - the ``gaussian`` detector-plane step with its
  error sums and cost, in place on the transforms (``poisson``, with its
  Newton steps, stays numpy); in the far field the FFTs are left unscaled
  (:func:`ptycli.core.fft.fft2_deferred`) and the step applies both unitary
  factors as it reads and writes the stack (no scaling passes; for frames of
  2^k x 2^k pixels the factors are powers of two and the numbers are those of
  the scaled transforms bit for bit);
* :func:`exit_waves` - ``P O`` of the pods straight from the object
  (the windows are never gathered: the later passes read them in place);
* :func:`object_sums` - the object and the probe direction sums in one pass
  over ``chi``, in a row band of the object (``conj(P) chi`` formed here and
  again in :func:`scatter_update` rather than written per pod and read back;
  the probe sums of the pods' rows in the band into the band's own
  accumulators), with the largest ``denO``; a pixel left marked by the last
  batch starts anew (no zeroing pass);
* :func:`step_sums` - the five sums of the 2 x 2 step system per frame
  (float64 accumulators) without forming ``u`` and ``v`` (nor ``dO``: the
  quotient ``numO / (denO + regO)`` per pod pixel);
* :func:`scatter_update` - ``target[window] += w_pod conj(P) chi / (denO + regO)`` (row band),
  marking the pixels (``denO <- -(denO + regO)``) for the next batch's
  :func:`object_sums` to start anew (no zeroing pass);
* :func:`finish_windows`, :func:`zero_windows`, :func:`windows_max` - the
  window operations of :mod:`.batch`.

:class:`CompiledGroupBatch` is :class:`~ptycli.engines.lsqml.batch.GroupBatch`
with these kernels. Chosen by the engine parameter
``kernels`` like the other engines' compiled passes
(:func:`ptycli.engines.fused.use_compiled`); the numbers agree with the numpy
passes to rounding (``tests/test_engines_lsqml.py``).

The kernels read and write the rows of complex arrays as real arrays of
(real, imaginary) pairs: those loops vectorise, loops over complex elements
did not (one thread, pods of 128 x 128, ns per pod pixel: step sums 4.2 ->
1.0, object update 2.5 -> 1.2, probe sums 1.5 -> 0.7, exit waves 1.0 -> 0.5).

The window passes read the object-shaped arrays row by row on windows that
lie apart (a sparse batch), one short stream per window row, which the
hardware prefetchers pick up late; each pass asks for the rows
:data:`AHEAD` rows on in advance (:func:`_prefetch`, LLVM's prefetch hint:
no effect on the numbers). Object and probe sums on windows out of the
cache (one thread, 8 pods of 128 x 128 at random places of a 742 x 768
object, alternating runs on the loaded 2-core machine): 5.6-6.3 -> 4.8-5.5 ns
per pod pixel (minimum of 75 runs).
"""

import numpy as np

from ...core import fft
from ..fused import njit
from .batch import GroupBatch

try:  # the prefetch hint is LLVM's; without numba the kernels are plain Python (ptycli.engines.fused.njit)
    from llvmlite import ir
    from numba import types
    from numba.core import cgutils
    from numba.extending import intrinsic
except ImportError:  # pragma: no cover - depends on the installation
    intrinsic = None

__all__ = ["CompiledGroupBatch", "amplitude_step", "exit_waves", "object_sums", "step_sums", "scatter_update",
           "finish_windows", "zero_windows", "windows_max"]

_JIT = dict(fastmath=True, cache=True, nogil=True, error_model="numpy")

#: rows ahead of the one being read that the window passes ask the cache for (:func:`_prefetch`)
AHEAD = 2

if intrinsic is not None:
    @intrinsic
    def _prefetch(typingctx, row):
        """Hint the CPU to fetch the cache lines of the contiguous 1-D array ``row`` (LLVM's prefetch; no result).

        The window passes read short rows (one window row: 1 KiB at 128 complex64 pixels) spread over the
        object, so the hardware prefetchers, which follow a stream within a 4 KiB page, start every row anew;
        asking for the rows :data:`AHEAD` in advance overlaps their fetch with the arithmetic.
        """
        def codegen(context, builder, signature, args):
            ary = context.make_array(signature.args[0])(context, builder, args[0])
            data = builder.bitcast(ary.data, ir.IntType(8).as_pointer())
            item = context.get_abi_sizeof(context.get_data_type(signature.args[0].dtype))
            nbytes = builder.mul(ary.nitems, context.get_constant(types.intp, item))
            i32 = ir.IntType(32)
            fnty = ir.FunctionType(ir.VoidType(), [ir.IntType(8).as_pointer(), i32, i32, i32])
            fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0i8")
            with cgutils.for_range_slice(builder, context.get_constant(types.intp, 0), nbytes,
                                         context.get_constant(types.intp, 64)) as (offset, _):
                # read, keep in all cache levels, data cache
                builder.call(fn, [builder.gep(data, [offset]), i32(0), i32(3), i32(1)])
            return context.get_dummy_value()

        return types.void(row), codegen
else:  # pragma: no cover
    def _prefetch(row):
        pass


@njit(fastmath=True, cache=True, nogil=True, inline="always")
def _ahead(oy, k, i, r0, r1, H):
    """The pod and row ``(k', i')`` that a pass over the pods' rows in the object rows ``r0:r1`` reads
    :data:`AHEAD` rows after row ``i`` of pod ``k`` (the next pod's first rows at the end of a pod); ``k' = -1``:
    none."""
    i1 = min(r1 - oy[k], H)
    if i + AHEAD < i1:
        return k, i + AHEAD
    kk = k + 1
    if kk < oy.shape[0]:
        ii = max(r0 - oy[kk], 0) + (i + AHEAD - i1)
        if ii < min(r1 - oy[kk], H):
            return kk, ii
    return -1, 0


@njit(**_JIT)
def exit_waves(F, obj, pr, ol, oy, ox):
    """``F[k] = pr[k] * obj[ol[k], window k]`` (``pr[0]`` for all pods when it has one row)."""
    one = pr.shape[0] == 1
    H, W = F.shape[1], F.shape[2]
    rt = F.real.dtype
    for k in range(ol.shape[0]):
        p = pr[0] if one else pr[k]
        for i in range(H):
            kk, ii = _ahead(oy, k, i, 0, 2**62, H)
            if kk >= 0:
                _prefetch(obj[ol[kk], oy[kk] + ii, ox[kk]:ox[kk] + W])
            # rows as real arrays of (real, imaginary) pairs: the loop vectorises (complex elements do not)
            o = obj[ol[k], oy[k] + i, ox[k]:ox[k] + W].view(rt)
            b = p[i].view(rt)
            f = F[k, i].view(rt)
            for j in range(W):
                br, bi, o_r, oi = b[2 * j], b[2 * j + 1], o[2 * j], o[2 * j + 1]
                f[2 * j] = br * o_r - bi * oi
                f[2 * j + 1] = br * oi + bi * o_r


@njit(**_JIT)
def object_sums(numO, denO, numP, denP, post, obj, chi, pr, ol, oy, ox, pl, r0, r1):
    """The direction sums of the pods' rows in the object rows ``r0:r1``, in one pass; returns the largest ``denO``
    written (0 without pixels).

    Object: ``numO[window k] += conj(P_k) chi[k]``, ``denO[window k] += |P_k|^2`` (``pr``: one shared row or
    one per pod). A pixel that the last batch's update marked (``denO < 0``,
    :func:`scatter_update`) starts from zero: the sums need no zeroing pass between batches. ``denO``
    only grows within a batch, so the largest value written is the largest final sum on the windows.

    Probe (the rows of those pods in the band): ``numP[pl[k]] += post conj(O) chi[k]``,
    ``denP[pl[k]] += |O|^2`` (``O`` the window of ``obj``; ``post``: ``conj(pre)``, back to the probe's plane
    in the far field, or empty: none, see :mod:`.batch`). Bands on threads at once take their own ``numP``,
    ``denP``.
    """
    one = pr.shape[0] == 1
    has_post = post.shape[0] > 0
    H, W = chi.shape[1], chi.shape[2]
    rt = denO.dtype
    zr = rt.type(0)
    best = zr
    for k in range(ol.shape[0]):
        p = pr[0] if one else pr[k]
        q = pl[k]
        for i in range(max(r0 - oy[k], 0), min(r1 - oy[k], H)):
            kk, ii = _ahead(oy, k, i, r0, r1, H)
            if kk >= 0:
                _prefetch(numO[ol[kk], oy[kk] + ii, ox[kk]:ox[kk] + W])
                _prefetch(denO[ol[kk], oy[kk] + ii, ox[kk]:ox[kk] + W])
                _prefetch(obj[ol[kk], oy[kk] + ii, ox[kk]:ox[kk] + W])
            # rows as real arrays of (real, imaginary) pairs: the loops vectorise (complex elements do not)
            no = numO[ol[k], oy[k] + i, ox[k]:ox[k] + W].view(rt)
            do = denO[ol[k], oy[k] + i, ox[k]:ox[k] + W]
            o = obj[ol[k], oy[k] + i, ox[k]:ox[k] + W].view(rt)
            b = p[i].view(rt)
            c = chi[k, i].view(rt)
            nP = numP[q, i].view(rt)
            dP = denP[q, i]
            for j in range(W):
                br, bi, cr, ci = b[2 * j], b[2 * j + 1], c[2 * j], c[2 * j + 1]
                d = do[j]
                fresh = d < zr
                d = (zr if fresh else d) + (br * br + bi * bi)
                no[2 * j] = (zr if fresh else no[2 * j]) + (br * cr + bi * ci)
                no[2 * j + 1] = (zr if fresh else no[2 * j + 1]) + (br * ci - bi * cr)
                do[j] = d
                best = max(best, d)
            if has_post:
                e = post[i].view(rt)
                for j in range(W):
                    o_r, oi, cr, ci = o[2 * j], o[2 * j + 1], c[2 * j], c[2 * j + 1]
                    xr = o_r * cr + oi * ci
                    xi = o_r * ci - oi * cr
                    er, ei = e[2 * j], e[2 * j + 1]
                    nP[2 * j] += er * xr - ei * xi
                    nP[2 * j + 1] += er * xi + ei * xr
                    dP[j] += o_r * o_r + oi * oi
            else:
                for j in range(W):
                    o_r, oi, cr, ci = o[2 * j], o[2 * j + 1], c[2 * j], c[2 * j + 1]
                    nP[2 * j] += o_r * cr + oi * ci
                    nP[2 * j + 1] += o_r * ci - oi * cr
                    dP[j] += o_r * o_r + oi * oi
    return best


@njit(**_JIT)
def step_sums(numO, denO, reg, pr, obj, chi, dpe, use_probe, ol, oy, ox, frame, out):
    """Per-frame ``<u,u>, <v,v>, Re<u,v>, Re<u,chi>, Re<v,chi>`` into ``out`` (5, frames), added.

    ``u = P dO`` on the pod's window (``dO = numO / (denO + reg)``, the object direction, formed here per pod
    pixel: a vectorised division costs less than a pass over the windows that would store it),
    ``v = O dP_eff`` (``O`` the window of ``obj``). Real arithmetic on the parts, one
    branch-free row loop per case, row sums in the frame's precision added in float64.
    """
    one = pr.shape[0] == 1
    H, W = chi.shape[1], chi.shape[2]
    rt = obj.real.dtype
    zero = rt.type(0)
    unit = rt.type(1)
    for k in range(ol.shape[0]):
        p = pr[0] if one else pr[k]
        dp = dpe[0] if dpe.shape[0] == 1 else dpe[k]
        uu = 0.0
        vv = 0.0
        uv = 0.0
        uc = 0.0
        vc = 0.0
        for i in range(H):
            kk, ii = _ahead(oy, k, i, 0, 2**62, H)
            if kk >= 0:
                _prefetch(numO[ol[kk], oy[kk] + ii, ox[kk]:ox[kk] + W])
                _prefetch(denO[ol[kk], oy[kk] + ii, ox[kk]:ox[kk] + W])
                _prefetch(obj[ol[kk], oy[kk] + ii, ox[kk]:ox[kk] + W])
            nw = numO[ol[k], oy[k] + i, ox[k]:ox[k] + W].view(rt)
            dd = denO[ol[k], oy[k] + i, ox[k]:ox[k] + W]
            ob = obj[ol[k], oy[k] + i, ox[k]:ox[k] + W].view(rt)
            b = p[i].view(rt)
            e = dp[i].view(rt)
            c = chi[k, i].view(rt)
            ruu = zero
            ruc = zero
            rvv = zero
            ruv = zero
            rvc = zero
            if use_probe:
                for j in range(W):
                    g = unit / (dd[j] + reg)
                    ar, ai, br, bi = nw[2 * j] * g, nw[2 * j + 1] * g, b[2 * j], b[2 * j + 1]
                    ur = ar * br - ai * bi
                    ui = ar * bi + ai * br
                    o_r, oi, er, ei = ob[2 * j], ob[2 * j + 1], e[2 * j], e[2 * j + 1]
                    vr = o_r * er - oi * ei
                    vi = o_r * ei + oi * er
                    cr, ci = c[2 * j], c[2 * j + 1]
                    ruu += ur * ur + ui * ui
                    ruc += ur * cr + ui * ci
                    rvv += vr * vr + vi * vi
                    ruv += ur * vr + ui * vi
                    rvc += vr * cr + vi * ci
            else:
                for j in range(W):
                    g = unit / (dd[j] + reg)
                    ar, ai, br, bi = nw[2 * j] * g, nw[2 * j + 1] * g, b[2 * j], b[2 * j + 1]
                    ur = ar * br - ai * bi
                    ui = ar * bi + ai * br
                    cr, ci = c[2 * j], c[2 * j + 1]
                    ruu += ur * ur + ui * ui
                    ruc += ur * cr + ui * ci
            uu += ruu
            uc += ruc
            vv += rvv
            uv += ruv
            vc += rvc
        f = frame[k]
        out[0, f] += uu
        out[1, f] += vv
        out[2, f] += uv
        out[3, f] += uc
        out[4, f] += vc


@njit(**_JIT)
def scatter_update(target, chi, pr, wpod, denO, reg, ol, oy, ox, r0, r1):
    """``target[window k] += wpod[k] * conj(P_k) chi[k] / (denO + reg)``, object rows ``r0:r1``; every pixel
    written is left marked, ``denO <- -(denO + reg)``.

    The first pod over a pixel marks it; the pods after it read the divisor back from the mark. A marked
    pixel starts anew in the next batch's :func:`object_sums`: no pass zeroes the sums between batches.
    """
    one = pr.shape[0] == 1
    H, W = chi.shape[1], chi.shape[2]
    rt = denO.dtype
    zr = rt.type(0)
    unit = rt.type(1)
    for k in range(ol.shape[0]):
        p = pr[0] if one else pr[k]
        w = wpod[k]
        for i in range(max(r0 - oy[k], 0), min(r1 - oy[k], H)):
            kk, ii = _ahead(oy, k, i, r0, r1, H)
            if kk >= 0:
                _prefetch(target[ol[kk], oy[kk] + ii, ox[kk]:ox[kk] + W])
                _prefetch(denO[ol[kk], oy[kk] + ii, ox[kk]:ox[kk] + W])
            t = target[ol[k], oy[k] + i, ox[k]:ox[k] + W].view(rt)
            dd = denO[ol[k], oy[k] + i, ox[k]:ox[k] + W]
            b = p[i].view(rt)
            c = chi[k, i].view(rt)
            for j in range(W):
                d = dd[j]
                q = d + reg if d >= zr else -d
                dd[j] = -q
                s = w * (unit / q)
                br, bi, cr, ci = b[2 * j], b[2 * j + 1], c[2 * j], c[2 * j + 1]
                t[2 * j] += (br * cr + bi * ci) * s
                t[2 * j + 1] += (br * ci - bi * cr) * s


@njit(**_JIT)
def amplitude_step(F, starts, frames, fmag, n, mask, has_mask, eps, sf, sb, out, bg, has_bg, ratio):
    """The ``gaussian`` detector step in place, ``F <- -l' F`` with ``l' = mask (1 - sqrt(n / (I + eps)))``.

    With ``has_bg`` the model intensity includes the background ``bg`` (H, W)
    and ``ratio`` (H, W, float64) receives ``sum_frames mask u^2``, ``u = 1 - l'``
    (:mod:`ptycli.engines.background_sums`); both are not read otherwise.

    ``I`` is the frame's sum over its pods (``starts``: (frames + 1,) pod
    offsets; ``frames``: the frames' rows of ``fmag``, ``n``, ``mask``); adds to ``out`` the Fourier error, photon error, valid pixels,
    cost ``mask (sqrt(I + eps) - sqrt(n))^2`` and ``sum |dPsi|^2`` (as the numpy
    passes: :meth:`~ptycli.engines.lsqml.batch.GroupBatch.detector_step`).
    ``sf``: the forward transform's unitary factor still due on ``F`` (applied as each value is read);
    ``sb``: the inverse transform's, applied to the result for the unscaled inverse to come
    (:func:`ptycli.core.fft.fft2_deferred`; 1 and 1 for transforms that scale themselves).
    """
    nf = starts.shape[0] - 1
    H, W = F.shape[1], F.shape[2]
    rt = fmag.dtype
    zero = rt.type(0)
    I = np.empty(W, rt)
    g = np.empty(W, rt)
    for f in range(nf):
        p0, p1 = starts[f], starts[f + 1]
        fm, cnt, mk = fmag[frames[f]], n[frames[f]], mask[frames[f]]
        for i in range(H):
            # row passes without branches over pods inside, on (real, imaginary) pairs, so that they vectorise
            for j in range(W):
                I[j] = zero
            for p in range(p0, p1):
                x = F[p, i].view(rt)
                for j in range(W):
                    xr = x[2 * j] * sf
                    xi = x[2 * j + 1] * sf
                    I[j] += xr * xr + xi * xi
            if has_bg:
                brow = bg[i]
                for j in range(W):
                    I[j] += brow[j]
            fe = pe = va = co = zero
            fr, cr, mr = fm[i], cnt[i], mk[i]
            for j in range(W):
                m = mr[j] if has_mask else rt.type(1)
                d = np.sqrt(I[j]) - fr[j]
                fe += m * d * d
                di = I[j] - cr[j]
                pe += m * di * di / (cr[j] + 1)
                va += m
                ae = np.sqrt(I[j] + eps)
                dc = ae - fr[j]
                co += m * dc * dc
                g[j] = -m * dc / ae if ae > 0 else zero
            if has_bg:
                rrow = ratio[i]
                for j in range(W):
                    m = mr[j] if has_mask else rt.type(1)
                    u = rt.type(1) + g[j]
                    rrow[j] += m * u * u
            ch = zero
            for p in range(p0, p1):
                x = F[p, i].view(rt)
                for j in range(W):
                    vr = (x[2 * j] * sf) * g[j]
                    vi = (x[2 * j + 1] * sf) * g[j]
                    ch += vr * vr + vi * vi
                    x[2 * j] = vr * sb
                    x[2 * j + 1] = vi * sb
            out[0] += fe
            out[1] += pe
            out[2] += va
            out[3] += co
            out[4] += ch


@njit(**_JIT)
def finish_windows(obj, upd, num, den, windows, r0, r1):
    """``obj += upd`` on the union of the windows in rows ``r0:r1`` (every pixel once), then ``upd``, ``num``,
    ``den`` zeroed there."""
    for r in range(windows.shape[0]):
        l, y, x, h, w = windows[r, 0], windows[r, 1], windows[r, 2], windows[r, 3], windows[r, 4]
        for i in range(max(y, r0), min(y + h, r1)):
            for j in range(x, x + w):
                obj[l, i, j] += upd[l, i, j]
                upd[l, i, j] = 0
                num[l, i, j] = 0
                den[l, i, j] = 0


@njit(**_JIT)
def _zero(a, windows, r0, r1):
    for r in range(windows.shape[0]):
        l, y, x, h, w = windows[r, 0], windows[r, 1], windows[r, 2], windows[r, 3], windows[r, 4]
        for i in range(max(y, r0), min(y + h, r1)):
            for j in range(x, x + w):
                a[l, i, j] = 0


@njit(**_JIT)
def _zero2(a, b, windows, r0, r1):
    for r in range(windows.shape[0]):
        l, y, x, h, w = windows[r, 0], windows[r, 1], windows[r, 2], windows[r, 3], windows[r, 4]
        for i in range(max(y, r0), min(y + h, r1)):
            for j in range(x, x + w):
                a[l, i, j] = 0
                b[l, i, j] = 0


def zero_windows(arrays, windows, r0=0, r1=2**62):
    """Zero every array of ``arrays`` on the windows (rows ``r0:r1``; two arrays in one pass)."""
    arrays = list(arrays)
    while len(arrays) >= 2:
        _zero2(arrays.pop(0), arrays.pop(0), windows, r0, r1)
    for a in arrays:
        _zero(a, windows, r0, r1)


@njit(**_JIT)
def windows_max(arr, windows, r0, r1):
    """Largest value of the real ``arr`` over the windows in rows ``r0:r1``; 0 without windows."""
    best = 0.0
    for r in range(windows.shape[0]):
        l, y, x, h, w = windows[r, 0], windows[r, 1], windows[r, 2], windows[r, 3], windows[r, 4]
        for i in range(max(y, r0), min(y + h, r1)):
            for j in range(x, x + w):
                if arr[l, i, j] > best:
                    best = arr[l, i, j]
    return best


class CompiledGroupBatch(GroupBatch):
    """:class:`~ptycli.engines.lsqml.batch.GroupBatch` with the window passes compiled (module docstring).

    The object-shaped sums are left marked by :meth:`scatter_object_update`,
    not zeroed (the next batch's :func:`object_sums` starts them anew).
    """

    compiled = True
    _post = None  # conj(pre) (far field) or empty, made at the first use

    def detector_pass(self, F, frames, starts, errors, workers=1, ratio=None):
        """As :meth:`GroupBatch.detector_pass`; far field, ``gaussian``: the transforms' unitary scaling is
        done in :func:`amplitude_step` (no scaling passes over the stack; the same numbers, the factors being
        powers of two for frames of 2^k x 2^k pixels)."""
        if self.noise.name == "poisson" or self.pre is None:
            return super().detector_pass(F, frames, starts, errors, workers, ratio)
        sf = self._transform_unscaled(F, workers)
        a = self.detector_step(F, frames, starts, errors, ratio, sf, fft.deferred_factor(F))
        self._transform_unscaled(F, workers, inverse=True)  # its factor was applied in the step
        return a

    @staticmethod
    def _transform_unscaled(x, workers, inverse=False):
        """The far-field transform of :meth:`GroupBatch._propagate` in place, the unitary factor left due
        (:func:`ptycli.core.fft.fft2_deferred`); returns that factor."""
        out, due = (fft.ifft2_deferred if inverse else fft.fft2_deferred)(x, workers)
        if out is not x:
            x[...] = out
        return due

    def detector_step(self, F, frames, starts, errors, ratio=None, sf=1.0, sb=1.0):
        """As :meth:`GroupBatch.detector_step`; ``sf``, ``sb``: the factors of :func:`amplitude_step`."""
        if self.noise.name == "poisson":
            return super().detector_step(F, frames, starts, errors, ratio)
        nf = len(frames)
        st = np.append(np.asarray(starts, np.int64), F.shape[0])
        mask = self.mask if self.mask is not None else self.n  # not read without a mask
        out = np.zeros(5)
        rt = self.ftype.type
        has_bg = self.background is not None
        amplitude_step(F, st, np.asarray(frames, np.int64), self.fmag, self.n, mask, self.mask is not None,
                       rt(self.eps), rt(sf), rt(sb), out, self.background if has_bg else self.fmag[0], has_bg,
                       ratio if ratio is not None else self._no_ratio(F.shape[1:]))
        errors.add(fourier=out[0], photon=out[1], valid=out[2], exit_change=out[4], likelihood=out[3])
        return np.ones(nf)

    def _no_ratio(self, shape):
        """A (H, W) float64 stand-in for :func:`amplitude_step`'s ``ratio`` when none is asked for (its sums are dropped)."""
        buf = getattr(self, "_ratio_stub", None)
        if buf is None or buf.shape != tuple(shape):
            buf = self._ratio_stub = np.zeros(tuple(shape))
        return buf

    def exit_waves(self, F, obj, pr, pods):
        g = self.g
        exit_waves(F, obj, np.ascontiguousarray(pr), g.ob_layer[pods], g.ob_y[pods], g.ob_x[pods])
        return None  # the passes read the object's windows

    def direction_sums(self, acc, obj, ob, pr, chi, pods, buffers=None):
        # all direction sums are added in the object's row bands (scatter_object_sums: one pass over chi)
        return None

    def scatter_object_sums(self, c, numO, denO, r0=0, r1=2**62, acc=None):
        """As :meth:`GroupBatch.scatter_object_sums` (pixels marked by :func:`scatter_update` start anew), and
        the probe sums of :meth:`GroupBatch.probe_sums` of the pods' rows in the band into ``acc`` (``numP``,
        ``denP`` probe-shaped, this band's own); returns the largest ``denO`` written."""
        g = self.g
        pods = c["pods"]
        post = self._post
        if post is None:
            post = self._post = (np.conj(self.pre) if self.pre is not None else np.zeros((0, 0), self.ctype))
        return object_sums(numO, denO, acc["numP"], acc["denP"], post, c["obj"], c["chi"],
                           np.ascontiguousarray(c["pr"]), g.ob_layer[pods], g.ob_y[pods], g.ob_x[pods],
                           g.pr_layer[pods], r0, r1)

    def step_sums(self, c, numO, denO, regO, dP):
        """As :meth:`GroupBatch.step_sums` (the direction's quotient formed per pod pixel)."""
        g = self.g
        pods, pr, chi = c["pods"], c["pr"], c["chi"]
        nf = len(c["frames"])
        frame = np.repeat(np.arange(nf), self.npod[c["frames"]])
        out = np.zeros((5, nf))
        use_probe = dP is not None
        dpe = self.probe_rows(self.probe_eff(dP), pods) if use_probe else pr
        step_sums(numO, denO, regO, np.ascontiguousarray(pr), c["obj"], chi, np.ascontiguousarray(dpe), use_probe,
                  g.ob_layer[pods], g.ob_y[pods], g.ob_x[pods], frame, out)
        c["denO"], c["regO"] = denO, regO  # the update's denominators, read again there
        return out

    def object_update_values(self, c, a_obj, beta):
        # the values are made in the scatter (scatter_update), from conj(P) chi and the denominators
        c["wpod"] = np.repeat(np.asarray(a_obj, self.ftype) * self.ftype.type(beta), self.npod[c["frames"]])

    def scatter_object_update(self, c, target, r0=0, r1=2**62):
        g = self.g
        pods = c["pods"]
        scatter_update(target, c["chi"], np.ascontiguousarray(c["pr"]), c["wpod"], c["denO"], c["regO"],
                       g.ob_layer[pods], g.ob_y[pods], g.ob_x[pods], r0, r1)
