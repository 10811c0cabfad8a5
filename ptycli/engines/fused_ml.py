"""Fused compiled kernels (numba) of the ML engine.

The compiled path of :class:`~ptycli.engines.ml.ML` keeps one array the size
of the exit waves, the transforms ``F = fw(P O)`` at the current point, and
works frame block by frame block with block-sized scratch:

Blocks run on the engine's threads (serial kernels that release the GIL,
single-threaded FFTs, load-balanced with accumulator slots:
:meth:`ptycli.engines.fused.BlockPool.map_slots`).

1. line pass: :func:`line_waves` forms the direction terms ``b`` and ``c``
   of the exit waves, they are transformed (FFT), and :func:`line_sums`
   accumulates the cost polynomial along the line from ``F``, ``Fb`` and
   ``Fc`` in one pass per frame;
2. evaluation at the new point: :func:`exit_product` forms ``P O``, it is
   transformed into ``F``, :func:`evaluate` computes the floating scales,
   cost, errors and the detector-plane gradient ``l' F``, which is
   back-propagated (inverse FFT) and scattered by :func:`gradient_sums`.

Four FFT passes per iteration (three while the probe is fixed), no
per-pixel arrays kept between passes, so the peak memory is the model plus
one exit-wave-sized array. Formulas: :mod:`ptycli.engines.ml`. Sums are
per frame (or per slot) in float64; the caller adds them in a fixed order.

Pod addresses come packed as ``pods = (ol, oy, ox, pl)``: pod ``i`` uses
object row ``ol[i]`` with the window's top-left pixel ``(oy[i], ox[i])`` and
probe row ``pl[i]`` (:class:`~ptycli.engines.addressing.PodGroup`).

Noise models (``model``): the models' :attr:`~ptycli.engines.ml.noise_models.NoiseModel.code`,
0 gaussian, 1 poisson, 2 euclid. Their per-pixel formulas are written once
here, in :func:`_pixel_terms` (cost and derivatives, for :func:`evaluate` and
:func:`line_sums`) and in :func:`evaluate` (the floating scale), and once in
numpy in :mod:`ptycli.engines.ml.noise_models`.
"""

import numpy as np

from .fused import njit, _JIT, _INLINE

__all__ = ["exit_product", "line_waves", "line_sums", "evaluate", "gradient_sums", "real_dot", "cg_dots", "cg_step"]

#: polynomial coefficients in :func:`line_sums`' output (degree 8, lowest first)
N_COEF = 9
#: columns of :func:`line_sums`' output: the coefficients, then the three exit-change sums
N_LINE = N_COEF + 3


@njit(**_INLINE)
def _pod(pods, i):
    """Object row, window top-left pixel ``(y, x)`` and probe row of pod ``i`` (``pods``: see the module docstring)."""
    ol, oy, ox, pl = pods
    return ol[i], oy[i], ox[i], pl[i]


@njit(**_JIT)
def exit_product(out, ob, pt, pods, p0):
    """``out[k] = ob_window(i) * pt[pl[i]]`` for pods ``i = p0 + k``."""
    npb, H, W = out.shape
    for k in range(npb):
        lo, y0, x0, q = _pod(pods, p0 + k)
        for y in range(H):
            orow = ob[lo, y0 + y, x0:x0 + W]
            prow = pt[q, y]
            trow = out[k, y]
            for x in range(W):
                trow[x] = orow[x] * prow[x]


@njit(**_JIT)
def line_waves(Fb, Fc, probe_on, ob, hob, pt, hpt, hpt2, pods, p0):
    """Direction terms of the exit waves along ``(O + t hO, P + t hP)``.

    ``Fb[k] = pt * hO_window + hpt * O_window`` and ``Fc[k] = hpt2 * hO_window``
    when ``probe_on``; else ``Fb[k] = pt * hO_window`` (``Fc`` untouched).
    ``pt``, ``hpt``, ``hpt2`` are probe-shaped and carry the line scaling.
    """
    npb, H, W = Fb.shape
    for k in range(npb):
        lo, y0, x0, q = _pod(pods, p0 + k)
        for y in range(H):
            hrow = hob[lo, y0 + y, x0:x0 + W]
            prow = pt[q, y]
            brow = Fb[k, y]
            if probe_on:
                orow = ob[lo, y0 + y, x0:x0 + W]
                qrow = hpt[q, y]
                q2row = hpt2[q, y]
                crow = Fc[k, y]
                for x in range(W):
                    h = hrow[x]
                    brow[x] = prow[x] * h + qrow[x] * orow[x]
                    crow[x] = q2row[x] * h
            else:
                for x in range(W):
                    brow[x] = prow[x] * hrow[x]


@njit(**_JIT)
def line_sums(F, Fb, Fc, probe_on, pod_start, cscale, diff, drows, mask, mrows, use_mask, model, eps, bg, out,
              sb=np.float32(1.0), sc=np.float32(1.0)):
    """Per-frame partial sums of the cost polynomial along the line (see the module docstring of ML).

    ``sb``, ``sc``: the factors still due on ``Fb`` and ``Fc`` (the unitary scaling of an
    unnormalised FFT, :func:`ptycli.core.fft.fft2_deferred`; 1: none), folded into the
    products that read them instead of a scaling pass over the waves.

    ``out[j, 0:9]``: gaussian, the coefficients of ``sum w (D + I1 t + ... + I4 t^4)^2``;
    otherwise ``[0, sum l' I1, sum (l'' I1^2 / 2 + l' I2), 0 ...]`` (Newton model).
    ``out[j, 9:12]``: ``sum |Fb|^2``, ``sum 2 Re(Fb* Fc)``, ``sum |Fc|^2`` (unscaled).
    ``cscale[j]`` is the frame's intensity scale (1 without floating intensities); ``bg`` (H, W)
    the incoherent background added to ``I0`` (zeros without one).
    """
    nf = out.shape[0]
    H, W = F.shape[1], F.shape[2]
    for j in range(nf):
        a, b = pod_start[j], pod_start[j + 1]
        c = np.float32(cscale[j])
        acc = np.zeros(N_LINE)
        I = np.empty((5, W), dtype=np.float32)
        mf = np.ones(W, dtype=np.float32)
        mr = mrows[j] if use_mask else 0
        for y in range(H):
            ex = _line_powers(F, Fb, Fc, probe_on, a, b, y, I, sb, sc)
            brow = bg[y]
            for x in range(W):
                I[0, x] += brow[x]
            mrow = _mask_row(mask, mr, y, use_mask, mf)
            acc[9] += ex[0]
            acc[10] += ex[1]
            acc[11] += ex[2]
            if model == 0:
                r = _gauss_row(I, c, diff[drows[j], y], mrow, use_mask)
                for k in range(9):
                    acc[k] += r[k]
            else:  # the loop once per model (a constant model inside: no branch in the loop)
                if model == 1:
                    r2 = _newton_row(I, c, diff[drows[j], y], mrow, use_mask, 1, np.float32(eps))
                else:
                    r2 = _newton_row(I, c, diff[drows[j], y], mrow, use_mask, 2, np.float32(eps))
                acc[1] += r2[0]
                acc[2] += r2[1]
        for k in range(N_LINE):
            out[j, k] = acc[k]


@njit(**_INLINE)
def _line_powers(F, Fb, Fc, probe_on, a, b, y, I, sb, sc):
    """Row ``y`` of ``I0 .. I4`` (mode sums) into ``I[0:5]``; returns the row's exit-change sums.

    ``sb``, ``sc``: the factors due on ``Fb`` and ``Fc`` (see :func:`line_sums`).

    In loops of at most two output rows each (``I0, I1``; ``I2``; ``I3, I4``):
    a loop that wrote the five rows of ``I`` and read three waves needed more
    run-time overlap checks than the compiler allows for vectorising it, and
    ran scalar (line_sums 2.7 ns per pixel, 1.6 in these loops; 400 x 128^2,
    one thread).
    The waves are indexed directly (``F[p, y, x]``): row views (``F[p, y]``)
    made inside the pod loop kept the loops scalar as well (line_sums 2.9 ->
    1.7 ns per pixel, Poisson, probe updated, one thread, block in cache).
    """
    W = I.shape[1]
    two = np.float32(2.0)
    t1 = two * sb  # 2 Re(F* Fb)
    t2 = two * sc  # 2 Re(F* Fc)
    t3 = two * (sb * sc)  # 2 Re(Fb* Fc)
    b2s = sb * sb
    c2s = sc * sc
    sum_b = 0.0
    sum_bc = 0.0
    sum_c = 0.0
    i0 = I[0]
    i1 = I[1]
    i2 = I[2]
    i3 = I[3]
    i4 = I[4]
    for p in range(a, b):
        first = p == a
        rb = np.float32(0.0)
        rbc = np.float32(0.0)
        rc = np.float32(0.0)
        if first:
            for x in range(W):
                fa, fb = F[p, y, x], Fb[p, y, x]
                i0[x] = fa.real * fa.real + fa.imag * fa.imag
                i1[x] = t1 * (fa.real * fb.real + fa.imag * fb.imag)
        else:
            for x in range(W):
                fa, fb = F[p, y, x], Fb[p, y, x]
                i0[x] += fa.real * fa.real + fa.imag * fa.imag
                i1[x] += t1 * (fa.real * fb.real + fa.imag * fb.imag)
        if probe_on:
            if first:
                for x in range(W):
                    fa, fb, fc = F[p, y, x], Fb[p, y, x], Fc[p, y, x]
                    b2 = b2s * (fb.real * fb.real + fb.imag * fb.imag)
                    i2[x] = b2 + t2 * (fa.real * fc.real + fa.imag * fc.imag)
                    rb += b2
                for x in range(W):
                    fb, fc = Fb[p, y, x], Fc[p, y, x]
                    bc = t3 * (fb.real * fc.real + fb.imag * fc.imag)
                    c2 = c2s * (fc.real * fc.real + fc.imag * fc.imag)
                    i3[x] = bc
                    i4[x] = c2
                    rbc += bc
                    rc += c2
            else:
                for x in range(W):
                    fa, fb, fc = F[p, y, x], Fb[p, y, x], Fc[p, y, x]
                    b2 = b2s * (fb.real * fb.real + fb.imag * fb.imag)
                    i2[x] += b2 + t2 * (fa.real * fc.real + fa.imag * fc.imag)
                    rb += b2
                for x in range(W):
                    fb, fc = Fb[p, y, x], Fc[p, y, x]
                    bc = t3 * (fb.real * fc.real + fb.imag * fc.imag)
                    c2 = c2s * (fc.real * fc.real + fc.imag * fc.imag)
                    i3[x] += bc
                    i4[x] += c2
                    rbc += bc
                    rc += c2
        else:
            if first:
                for x in range(W):
                    fb = Fb[p, y, x]
                    b2 = b2s * (fb.real * fb.real + fb.imag * fb.imag)
                    i2[x] = b2
                    rb += b2
                for x in range(W):
                    i3[x] = np.float32(0.0)
                    i4[x] = np.float32(0.0)
            else:
                for x in range(W):
                    fb = Fb[p, y, x]
                    b2 = b2s * (fb.real * fb.real + fb.imag * fb.imag)
                    i2[x] += b2
                    rb += b2
        sum_b += rb
        sum_bc += rbc
        sum_c += rc
    return sum_b, sum_bc, sum_c


@njit(**_INLINE)
def _gauss_row(I, c, irow, mrow, use_mask):
    """One row's coefficients of ``sum w (D + i1 t + i2 t^2 + i3 t^3 + i4 t^4)^2`` (9 floats)."""
    W = I.shape[1]
    one = np.float32(1.0)
    two = np.float32(2.0)
    zero = np.float32(0.0)
    r0 = r1 = r2 = r3 = r4 = r5 = r6 = r7 = r8 = zero
    for x in range(W):
        n = max(irow[x], zero)
        w = one / (n + one)
        if use_mask:
            w = w * mrow[x]
        d = c * I[0, x] - n
        i1 = c * I[1, x]
        i2 = c * I[2, x]
        i3 = c * I[3, x]
        i4 = c * I[4, x]
        wd = w * d
        w1 = w * i1
        w2 = w * i2
        w3 = w * i3
        r0 += wd * d
        r1 += two * wd * i1
        r2 += two * wd * i2 + w1 * i1
        r3 += two * (wd * i3 + w1 * i2)
        r4 += two * (wd * i4 + w1 * i3) + w2 * i2
        r5 += two * (w1 * i4 + w2 * i3)
        r6 += two * w2 * i4 + w3 * i3
        r7 += two * w3 * i4
        r8 += w * i4 * i4
    return (float(r0), float(r1), float(r2), float(r3), float(r4), float(r5), float(r6), float(r7),
            float(r8))


@njit(**_INLINE)
def _newton_row(I, c, irow, mrow, use_mask, model, eps):
    """One row's ``(sum l' I1, sum (l'' I1^2 / 2 + l' I2))`` (poisson: model 1, euclid: 2)."""
    W = I.shape[1]
    one = np.float32(1.0)
    half = np.float32(0.5)
    zero = np.float32(0.0)
    s1 = zero
    s2 = zero
    for x in range(W):
        n = max(irow[x], zero)
        m = mrow[x] if use_mask else one
        i1 = c * I[1, x]
        _, lp, lpp = _pixel_terms(model, c * I[0, x], n, m, one, eps)
        s1 += lp * i1
        s2 += half * lpp * i1 * i1 + lp * c * I[2, x]
    return float(s1), float(s2)


@njit(**_JIT)
def evaluate(F, gF, pod_start, diff, drows, mask, mrows, use_mask, model, eps, floating, cscale, bg, want_bg,
             bgsum, out, gscale=np.float32(1.0)):
    """Cost, errors and the detector-plane gradient of a frame block.

    Per frame ``j`` (pods ``pod_start[j] .. pod_start[j + 1] - 1``): with
    ``floating`` the closed-form intensity scale into ``cscale[j]`` (else
    ``cscale`` is used as given), then ``out[j] = [cost, sum mask (|F| - sqrt(n))^2,
    sum mask (I - n)^2 / (n + 1), sum mask]`` with ``I = c sum |F|^2 + B``
    (``bg``: the background B, zeros without one; floating scales are not
    combined with it), and ``gF[p] = c l'(I) F[p]`` (the gradient with respect
    to the unscaled waves' intensity, times the waves). With ``want_bg``,
    ``bgsum[y, x] += l'(I)`` over the frames (float64, (H, W)). ``gF`` is multiplied by
    ``gscale``: the factor its inverse transform will leave due
    (:func:`ptycli.core.fft.deferred_factor`), applied here in the weight at no cost.

    Every pixel is computed on its own: the "rows" (the last two axes of ``F``,
    ``gF``, ``diff``, ``mask``, ``bg``, ``bgsum``) may be any split of the
    frames' pixels (the ML passes give rows of several detector rows).
    """
    nf = out.shape[0]
    H, W = F.shape[1], F.shape[2]
    zero = np.float32(0.0)
    one = np.float32(1.0)
    ep = np.float32(eps)
    for j in range(nf):
        a, b = pod_start[j], pod_start[j + 1]
        ir = np.empty(W, dtype=np.float32)
        lp = np.empty(W, dtype=np.float32)
        rr = np.empty(W, dtype=np.float32)
        lg = np.empty(W, dtype=np.float32)
        le = np.empty(W, dtype=np.float32)
        mf = np.ones(W, dtype=np.float32)
        mr = mrows[j] if use_mask else 0
        if floating:
            num = 0.0
            den = 0.0
            for y in range(H):
                _power(F, a, b, y, ir)
                irow = diff[drows[j], y]
                mrow = _mask_row(mask, mr, y, use_mask, mf)
                rn = zero
                rd = zero
                for x in range(W):
                    n = max(irow[x], zero)
                    m = mrow[x] if use_mask else one
                    if model == 0:  # the floating scale's sums (see NoiseModel.floating_scale)
                        wi = m * ir[x] / (n + one)
                        rn += wi * n
                        rd += wi * ir[x]
                    elif model == 1:
                        rn += m * n
                        rd += m * ir[x]
                    else:
                        rn += m * np.sqrt(ir[x] * n)
                        rd += m * ir[x]
                num += rn
                den += rd
            cs = num / den if (den > 0.0 and num > 0.0) else 1.0
            if model == 2:
                cs = cs * cs
            cscale[j] = cs
        c = np.float32(cscale[j])
        cost = 0.0
        ferr = 0.0
        perr = 0.0
        valid = 0.0
        for y in range(H):
            _power(F, a, b, y, ir)
            brow = bg[y]
            for x in range(W):
                ir[x] += brow[x]
            mrow = _mask_row(mask, mr, y, use_mask, mf)
            r = _eval_row(ir, c, diff[drows[j], y], mrow, use_mask, model, ep, lp, rr, lg, le)
            if want_bg:
                srow = bgsum[y]
                for x in range(W):
                    srow[x] += lp[x]
            cost += r[0]
            ferr += r[1]
            perr += r[2]
            valid += r[3]
            if gscale != one:
                for x in range(W):
                    lp[x] *= gscale
            for p in range(a, b):
                frow = F[p, y]
                grow = gF[p, y]
                for x in range(W):
                    grow[x] = frow[x] * lp[x]
        out[j, 0] = cost
        out[j, 1] = ferr
        out[j, 2] = perr
        out[j, 3] = valid


@njit(**_INLINE)
def _mask_row(mask, mr, y, use_mask, out):
    """``out = mask[mr, y]`` as float32 when ``use_mask`` (else ``out`` as it is: ones), returned.

    The pixel loops read this row, never the mask's own (uint8): a uint8 row read in a loop that
    writes float32 rows kept LLVM from vectorising it, also where the flag skips the read (the
    Poisson ``evaluate`` of 400 x 128^2 frames, no mask: 6.1 -> 2.1 ns per pixel; ``line_sums``
    31 -> 16 ms per iteration).
    """
    if use_mask:
        mrow = mask[mr, y]
        for x in range(out.shape[0]):
            out[x] = np.float32(mrow[x])
    return out


@njit(**_INLINE)
def _eval_row(ir, c, irow, mrow, use_mask, model, eps, lp, rr, lg, le):
    """One row of :func:`evaluate`: ``lp = c l'(c ir)``; returns (cost, fourier, photon, valid) sums.

    ``rr``, ``lg``, ``le``: float32 scratch rows (the Poisson model's ratios, their logarithms, exponents).
    """
    if model == 0:  # the loop once per model (a constant model inside: no branch in the loop)
        return _eval_pixels(ir, c, irow, mrow, use_mask, 0, eps, lp)
    if model == 1:
        return _eval_poisson(ir, c, irow, mrow, use_mask, eps, lp, rr, lg, le)
    return _eval_pixels(ir, c, irow, mrow, use_mask, 2, eps, lp)


@njit(**_INLINE)
def _eval_pixels(ir, c, irow, mrow, use_mask, model, eps, lp):
    """The loop of :func:`_eval_row` for one model."""
    W = ir.shape[0]
    zero = np.float32(0.0)
    one = np.float32(1.0)
    rc = zero
    rf = zero
    rp = zero
    rv = zero
    for x in range(W):
        n = max(irow[x], zero)
        m = mrow[x] if use_mask else one
        I = c * ir[x]
        d = I - n
        cost, lpx, _ = _pixel_terms(model, I, n, m, c, eps)
        rc += cost
        lp[x] = lpx
        fa = np.sqrt(I) - np.sqrt(n)
        rf += m * fa * fa
        if model != 0:
            rp += m * d * d / (n + one)
        rv += m
    if model == 0:
        rp = rc  # the Gaussian cost is the photon error
    return float(rc), float(rf), float(rp), float(rv)


@njit(**_INLINE)
def _eval_poisson(ir, c, irow, mrow, use_mask, eps, lp, rr, lg, le):
    """:func:`_eval_pixels` of the Poisson model, the logarithm of the deviance in a loop of its own.

    ``log`` has no vector form in numba without Intel's SVML: called per pixel
    it kept the whole loop scalar (4 ns per pixel for :func:`evaluate`).
    Here the ratios ``r = n / (I + eps)`` go to ``rr`` and ``lg`` (1 where
    ``n = 0``), :func:`_log_row` takes the logarithm of ``lg`` in place
    (vectorised), and the cost ``m (I - n + n log r)`` and the derivative
    ``c m (1 - r)`` follow in a third loop: the formulas of
    :func:`_pixel_terms` for ``model = 1``.
    """
    W = ir.shape[0]
    zero = np.float32(0.0)
    one = np.float32(1.0)
    for x in range(W):
        n = max(irow[x], zero)
        r = n / (c * ir[x] + eps)
        rr[x] = r
        lg[x] = r if n > zero else one
    _log_row(lg, lg.view(np.int32), le)
    rc = zero
    rf = zero
    rp = zero
    rv = zero
    for x in range(W):
        n = max(irow[x], zero)
        m = mrow[x] if use_mask else one
        I = c * ir[x]
        d = I - n
        dev = d + n * lg[x]
        rc += m * dev
        lp[x] = c * m * (one - rr[x])
        fa = np.sqrt(I) - np.sqrt(n)
        rf += m * fa * fa
        rp += m * d * d / (n + one)
        rv += m
    return float(rc), float(rf), float(rp), float(rv)


@njit(**_INLINE)
def _log_row(v, bits, e):
    """``v = log(v)`` in place for positive normal float32 numbers, in two vectorisable loops.

    ``bits`` is ``v`` seen as int32. The first loop splits every number into
    ``m 2^e`` (``m`` in ``[sqrt(1/2), sqrt(2))``, written back as the number,
    ``e`` kept as a float); the second evaluates ``log m + e log 2`` with the
    minimax polynomial of Cephes' ``logf`` (S. L. Moshier, *Methods and
    Programs for Mathematical Functions*, 1989; relative error about 1e-7,
    that of float32 rounding). Each loop reads and writes through one view of
    the buffer only, so the compiler vectorises both. ``e``: a float32 scratch row.
    """
    W = v.shape[0]
    mant = np.int32(0x007FFFFF)
    half = np.int32(0x3F000000)  # exponent of 0.5
    for k in range(W):
        b = bits[k]
        ex = ((b >> np.int32(23)) & np.int32(0xFF)) - np.int32(126)  # v = m' 2^ex, m' in [0.5, 1)
        mb = (b & mant) | half
        low = mb < np.int32(0x3F3504F3)  # m' < sqrt(1/2): m = 2 m', ex - 1
        bits[k] = mb + np.int32(0x00800000) if low else mb
        e[k] = np.float32(ex - np.int32(1) if low else ex)
    one = np.float32(1.0)
    for k in range(W):
        x = v[k] - one
        z = x * x
        y = np.float32(7.0376836292e-2) * x - np.float32(1.1514610310e-1)
        y = y * x + np.float32(1.1676998740e-1)
        y = y * x - np.float32(1.2420140846e-1)
        y = y * x + np.float32(1.4249322787e-1)
        y = y * x - np.float32(1.6668057665e-1)
        y = y * x + np.float32(2.0000714765e-1)
        y = y * x - np.float32(2.4999993993e-1)
        y = y * x + np.float32(3.3333331174e-1)
        y = y * x * z
        fe = e[k]
        y += np.float32(-2.12194440e-4) * fe
        y -= np.float32(0.5) * z
        v[k] = (x + y) + np.float32(0.693359375) * fe


@njit(**_INLINE)
def _pixel_terms(model, I, n, m, c, eps):
    """One pixel's cost ``l(I)``, ``c l'(I)`` and ``l''(I)`` (mask ``m``, counts ``n``; ``model``: the model's code).

    ``l''`` of the Gaussian model is not needed (its line cost is exact, see
    :func:`_gauss_row`) and returned as 0.
    """
    one = np.float32(1.0)
    two = np.float32(2.0)
    half = np.float32(0.5)
    if model == 0:
        d = I - n
        pw = m / (n + one)
        return pw * d * d, c * two * pw * d, np.float32(0.0)
    ie = I + eps
    if model == 1:
        r = n / ie
        dev = I - n  # the deviance, 0 at a perfect fit: small numbers, summed without cancellation
        if n > 0:
            dev += n * np.log(r)
        return m * dev, c * m * (one - r), m * r / ie
    sa = np.sqrt(ie)
    fm = np.sqrt(n)
    da = sa - fm
    return m * da * da, c * m * da / sa, half * m * fm / (ie * sa)


# A local copy of fused._row_power on purpose: numba's on-disk cache of the kernels here is keyed on this
# file only, so a helper inlined from another module could go stale in the cache when that module changes.
@njit(**_INLINE)
def _power(F, a, b, y, out):
    """``out[x] = sum_{p = a .. b-1} |F[p, y, x]|^2``."""
    W = out.shape[0]
    frow = F[a, y]
    for x in range(W):
        f = frow[x]
        out[x] = f.real * f.real + f.imag * f.imag
    for p in range(a + 1, b):
        frow = F[p, y]
        for x in range(W):
            f = frow[x]
            out[x] += f.real * f.real + f.imag * f.imag


@njit(**_JIT)
def gradient_sums(G, ob, pt, pods, p0, cg_obj, cg_probe):
    """Conjugate gradients from the back-propagated waves ``G`` of a pod block.

    ``cg_obj[ol, window] += pt[pl] * conj(G)`` and ``cg_probe[pl] += ob_window * conj(G)``
    (the caller's per-thread accumulators).
    """
    npb, H, W = G.shape
    for k in range(npb):
        lo, y0, x0, q = _pod(pods, p0 + k)
        for y in range(H):
            orow = ob[lo, y0 + y, x0:x0 + W]
            crow = cg_obj[lo, y0 + y, x0:x0 + W]
            prow = pt[q, y]
            grow = G[k, y]
            cprow = cg_probe[q, y]
            for x in range(W):
                g = np.conj(grow[x])
                cprow[x] += orow[x] * g
                crow[x] += prow[x] * g


@njit(**_JIT)
def real_dot(a, b):
    """``sum a * b`` of two flat float32 arrays: float32 partial sums over 4096 elements, added in float64.

    The conjugate-gradient scalars of :class:`~ptycli.engines.ml.ML` in one
    pass (``Re sum conj(x) y`` is this over the interleaved real buffers).
    """
    n = a.shape[0]
    total = 0.0
    for start in range(0, n, 4096):
        part = np.float32(0.0)
        for i in range(start, min(n, start + 4096)):
            part += a[i] * b[i]
        total += part
    return total


@njit(**_JIT)
def cg_dots(g, gp):
    """``(sum g g, sum g gp)`` of two flat float32 arrays in one pass, summed as :func:`real_dot`.

    The object part of the conjugate-gradient scalars of :meth:`ML._direction
    <ptycli.engines.ml.ML._direction>` (``|gO|^2`` and ``<gO, gO'>``).
    """
    n = g.shape[0]
    t1 = 0.0
    t2 = 0.0
    for start in range(0, n, 4096):
        p1 = np.float32(0.0)
        p2 = np.float32(0.0)
        for i in range(start, min(n, start + 4096)):
            a = g[i]
            p1 += a * a
            p2 += a * gp[i]
        t1 += p1
        t2 += p2
    return t1, t2


@njit(**_JIT)
def cg_step(h, g, gp, beta):
    """``h <- beta h - g`` (``-g`` when ``beta`` is 0) and ``gp <- g`` in one pass over flat float32 arrays.

    Returns ``(sum g h, sum h h)`` of the new ``h``, summed as :func:`real_dot`:
    the object part of the slope and of the direction's norm
    (:meth:`ML._direction <ptycli.engines.ml.ML._direction>`). One pass
    instead of five (update, copy and three dot products).
    """
    n = h.shape[0]
    b = np.float32(beta)
    t1 = 0.0
    t2 = 0.0
    for start in range(0, n, 4096):
        stop = min(n, start + 4096)
        p1 = np.float32(0.0)
        p2 = np.float32(0.0)
        if beta == 0.0:
            for i in range(start, stop):
                a = g[i]
                v = -a
                h[i] = v
                gp[i] = a
                p1 += a * v
                p2 += v * v
        else:
            for i in range(start, stop):
                a = g[i]
                v = b * h[i] - a
                h[i] = v
                gp[i] = a
                p1 += a * v
                p2 += v * v
        t1 += p1
        t2 += p2
    return t1, t2
