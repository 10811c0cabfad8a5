"""Procedurally generated complex test images.

Everything here is synthesised from scratch with numpy (and a little
``scipy.ndimage``); no image files are read. Two generators are provided:

``moon_pr``
    A probe-like illumination that looks like the full moon: a bright disc
    with soft dark maria and rimmed craters, zero outside the disc, and a
    gentle, smooth phase (defocus-like curvature plus low-order aberrations).

``flower_obj``
    A weakly absorbing, phase-shifting object showing a meadow of flowers
    over a textured background. Amplitude and phase are correlated (petals and
    flower centres appear in both) but not identical (stems and leaves exist
    only in the phase).

Both are deterministic for a given ``shape`` and ``seed``.

(Just over 600 lines: two image generators and the drawing helpers they
share: noise, smooth steps and patches; none of it is used elsewhere.)
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["moon_pr", "flower_obj"]

#: Default seed of :func:`moon_pr`.
MOON_SEED = 1969
#: Default seed of :func:`flower_obj`.
FLOWER_SEED = 1884


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------
def _as_shape(shape):
    """Convert an int, a pair or an array-like into a 2-tuple of ints.

    Parameters
    ----------
    shape : int or sequence of int or numpy.ndarray
        A single number gives a square frame; otherwise the last two entries
        are used as ``(rows, columns)``.

    Returns
    -------
    tuple of int
        ``(ny, nx)``, both at least 1.
    """
    arr = np.asarray(shape).ravel()
    if arr.size == 0:
        raise ValueError("shape must not be empty")
    if arr.size == 1:
        ny = nx = int(arr[0])
    else:
        ny, nx = int(arr[-2]), int(arr[-1])
    if ny < 1 or nx < 1:
        raise ValueError(f"shape entries must be positive, got {shape!r}")
    return ny, nx


def _smoothstep(e0, e1, x):
    """Cubic Hermite step, 0 for ``x <= e0`` and 1 for ``x >= e1``.

    ``e0 > e1`` gives the mirrored (falling) step.
    """
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _coverage(d):
    """Anti-aliased coverage (0..1) from a signed distance ``d`` in pixels."""
    return np.clip(0.5 - d, 0.0, 1.0)


def _unit_noise(rng, shape, sigma):
    """Gaussian-filtered white noise with zero mean and unit std."""
    n = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    n -= n.mean()
    s = n.std()
    return n / s if s > 0 else n


def _spectral_noise(rng, shape, mixes):
    """Sums of band-limited Gaussian noise fields, synthesised spectrally.

    A white-noise spectrum is drawn directly in the Fourier domain; a second,
    independent one is obtained by reading the same numbers at other
    frequencies (rows reversed). Each output field is ``sum(w * N_k(s))``
    over its ``(w, k, s)`` terms, where ``N_k(s)`` is noise spectrum ``k``
    (0 or 1) low-pass filtered by a Gaussian of width ``s`` pixels and scaled
    to unit standard deviation. Only one inverse FFT per output field is
    needed, and no forward FFT at all.

    Parameters
    ----------
    rng : numpy.random.Generator
        Random source.
    shape : tuple of int
        ``(ny, nx)`` of the fields.
    mixes : list of list of tuple
        One list of ``(weight, spectrum_index, sigma_px)`` terms per field.

    Returns
    -------
    list of numpy.ndarray
        One float32 field of ``shape`` per entry of ``mixes``.
    """
    ny, nx = shape
    hx = nx // 2 + 1
    white = rng.standard_normal((ny, hx, 2), dtype=np.float32)
    spec0 = white.view(np.complex64)[..., 0]
    # a second, independent spectrum: the same numbers at other frequencies
    spec = (spec0, spec0[::-1])
    fy = np.fft.fftfreq(ny)
    fx = np.fft.rfftfreq(nx)
    # columns that appear twice in the full (Hermitian) spectrum
    wx = np.full(hx, 2.0)
    wx[0] = 1.0
    if nx % 2 == 0:
        wx[-1] = 1.0
    # white spectrum with unit variance per real/imaginary part
    norm = ny * nx / np.sqrt(2.0)
    gauss = {}
    out = []
    for terms in mixes:
        total = np.zeros((ny, hx), dtype=np.complex64)
        for w, k, s in terms:
            if s not in gauss:
                gy = np.exp(-2.0 * (np.pi * s * fy) ** 2)
                gx = np.exp(-2.0 * (np.pi * s * fx) ** 2)
                power = np.sum(gy ** 2) * np.sum(wx * gx ** 2)
                gauss[s] = (gy / np.sqrt(power)).astype(np.float32), \
                    gx.astype(np.float32)
            gy, gx = gauss[s]
            total += spec[k] * (np.float32(w * norm) * gy[:, None]) \
                * gx[None, :]
        field = np.fft.irfft2(total, s=(ny, nx))
        out.append(field.astype(np.float32, copy=False))
    return out


def _polar(amp, phase):
    """``amp * exp(1j * phase)`` as complex128, without a complex exp."""
    out = np.empty(np.shape(amp), dtype=np.complex128)
    out.real = amp * np.cos(phase)
    out.imag = amp * np.sin(phase)
    return out


def _patch(cy, cx, ext_y, ext_x, ny, nx, dtype=np.float64):
    """Clip a box around ``(cy, cx)`` to the frame.

    Returns ``None`` when the box misses the frame, otherwise
    ``(slice_y, slice_x, y, x)`` with local coordinates ``y`` (column vector)
    and ``x`` (row vector) relative to the centre.
    """
    y0 = max(int(np.floor(cy - ext_y)), 0)
    y1 = min(int(np.ceil(cy + ext_y)) + 1, ny)
    x0 = max(int(np.floor(cx - ext_x)), 0)
    x1 = min(int(np.ceil(cx + ext_x)) + 1, nx)
    if y1 <= y0 or x1 <= x0:
        return None
    y = (np.arange(y0, y1, dtype=float) - cy)[:, None].astype(dtype)
    x = (np.arange(x0, x1, dtype=float) - cx)[None, :].astype(dtype)
    return slice(y0, y1), slice(x0, x1), y, x


# ---------------------------------------------------------------------------
# moon
# ---------------------------------------------------------------------------
def _moon_albedo_grid(rng, g, half):
    """Large-scale moon albedo on a ``g x g`` grid in normalised coordinates.

    The grid spans ``[-half, half]`` in units of the disc radius, so the
    large-scale appearance does not depend on the output resolution. The
    albedo combines limb darkening, dark maria (clusters of soft ellipses
    frayed by noise), a mottled highland texture and the bright ray system of
    one young crater.

    Returns
    -------
    albedo : numpy.ndarray
        The ``(g, g)`` albedo map.
    ray_centre : tuple of float
        Normalised ``(u, v)`` position of the rayed crater.
    """
    c = np.linspace(-half, half, g)
    v = c[:, None]
    u = c[None, :]
    du = c[1] - c[0]
    rho2 = np.minimum(u * u + v * v, 1.0)

    # maria: clusters of overlapping soft ellipses, frayed by noise
    m = np.zeros((g, g))
    for _ in range(rng.integers(5, 8)):
        rad = 0.75 * np.sqrt(rng.uniform(0.0, 1.0))
        ang = rng.uniform(0, 2 * np.pi)
        mu, mv = rad * np.cos(ang), rad * np.sin(ang)
        size = rng.uniform(0.10, 0.22)
        for _ in range(rng.integers(2, 5)):
            ou, ov = mu + rng.normal(0, size), mv + rng.normal(0, size)
            su, sv = size * rng.uniform(0.6, 1.3), size * rng.uniform(0.6, 1.3)
            rot = rng.uniform(0, np.pi)
            cr, sr = np.cos(rot), np.sin(rot)
            a = ((u - ou) * cr + (v - ov) * sr) / su
            b = (-(u - ou) * sr + (v - ov) * cr) / sv
            m += rng.uniform(0.7, 1.0) * np.exp(-0.5 * (a * a + b * b))
    fray = (0.7 * _unit_noise(rng, (g, g), 0.025 / du)
            + 0.3 * _unit_noise(rng, (g, g), 0.008 / du))
    maria = _smoothstep(0.3, 0.85, m + 0.2 * fray)
    # internal shading of the maria
    maria *= 0.85 + 0.15 * _unit_noise(rng, (g, g), 0.05 / du).clip(-1, 1)

    # highland texture at two scales
    tex = (0.6 * _unit_noise(rng, (g, g), 0.04 / du)
           + 0.4 * _unit_noise(rng, (g, g), 0.01 / du))

    # one young crater with a bright halo and clumpy, tapering rays
    ang = rng.uniform(0, 2 * np.pi)
    rad = rng.uniform(0.4, 0.65)
    ru, rv = rad * np.cos(ang), rad * np.sin(ang)
    rr = np.hypot(u - ru, v - rv)
    th = np.arctan2(v - rv, u - ru)
    clump = np.clip(0.6 + 0.6 * _unit_noise(rng, (g, g), 0.02 / du), 0, 1.2)
    rays = np.zeros((g, g))
    for _ in range(rng.integers(9, 13)):
        t0 = rng.uniform(-np.pi, np.pi)
        width = rng.uniform(0.035, 0.08)
        length = rng.uniform(0.25, 0.8)
        dth = np.angle(np.exp(1j * (th - t0)))
        rays += np.exp(-0.5 * (dth / width) ** 2) * np.exp(-rr / length)
    rays = rays * clump * _smoothstep(0.04, 0.09, rr)
    rays += 0.6 * np.exp(-((rr - 0.05) / 0.05) ** 2)
    rays = np.clip(rays, 0, 1.2)

    albedo = 0.84 + 0.16 * np.sqrt(1.0 - rho2)          # limb darkening
    albedo *= 1.0 - 0.42 * maria
    albedo *= 1.0 + 0.05 * tex
    albedo += 0.3 * rays
    return albedo, (ru, rv)


def moon_pr(shape, seed=MOON_SEED):
    """Moon-like complex probe.

    The amplitude is a bright disc (diameter about two thirds of the smaller
    frame dimension, soft edge of a couple of pixels) showing dark, soft-edged
    maria, a bright rayed crater and a population of rimmed craters of varied
    sizes; it is exactly zero outside the disc and normalised to a maximum
    of 1. The phase is smooth and gentle: a defocus-like quadratic curvature
    plus small astigmatism and coma, a few radians peak to valley at most.

    Parameters
    ----------
    shape : int or tuple of int or numpy.ndarray
        Frame shape. A single number gives a square frame, e.g. ``256`` or
        ``np.array([256, 256])``.
    seed : int, optional
        Seed of the random generator placing craters and maria. The default
        gives the same image every time.

    Returns
    -------
    numpy.ndarray
        Complex128 array of the requested shape.

    Examples
    --------
    >>> pr = moon_pr(128)
    >>> pr.shape, pr.dtype, float(abs(pr).max())
    ((128, 128), dtype('complex128'), 1.0)
    """
    ny, nx = _as_shape(shape)
    rng = np.random.default_rng(seed)

    radius = 0.33 * min(ny, nx)          # disc radius in pixels
    edge_w = min(1.5, 0.25 * radius)     # half width of the soft rim
    cy, cx = (ny - 1) / 2.0, (nx - 1) / 2.0

    # work in the box around the disc only
    box = _patch(cy, cx, radius + edge_w + 1, radius + edge_w + 1, ny, nx)
    by, bx, y, x = box
    r = np.hypot(y, x)
    edge = _smoothstep(radius + edge_w, radius - edge_w, r)

    # --- large-scale albedo from the normalised grid -----------------------
    half = 1.08
    g = 201
    albedo, (ru, rv) = _moon_albedo_grid(rng, g, half)
    scale = (g - 1) / (2.0 * half)
    iy = (y / radius + half) * scale
    ix = (x / radius + half) * scale
    amp = ndimage.map_coordinates(
        albedo, [np.broadcast_to(iy, r.shape), np.broadcast_to(ix, r.shape)],
        order=1, mode="nearest")

    # --- craters in pixel space ---------------------------------------------
    sizes = np.concatenate([
        rng.uniform(0.07, 0.13, rng.integers(3, 5)),            # large
        rng.uniform(0.03, 0.065, rng.integers(10, 14)),         # medium
        0.012 + 0.012 * rng.pareto(2.5, rng.integers(40, 55)),  # small
    ])
    sizes = np.clip(sizes, 0.01, 0.15)
    centres = []
    for rc in sizes:
        rad = (0.97 - rc) * np.sqrt(rng.uniform(0.0, 1.0))
        ang = rng.uniform(0, 2 * np.pi)
        centres.append((rad * np.cos(ang), rad * np.sin(ang)))
    sizes = np.append(sizes, 0.035)       # the rayed crater itself
    centres.append((ru, rv))

    light = rng.uniform(0, 2 * np.pi)
    lu, lv = np.cos(light), np.sin(light)
    crat = np.zeros_like(amp)
    bny, bnx = amp.shape
    oy, ox = cy - by.start, cx - bx.start       # disc centre in the box
    for rc, (cu, cv) in zip(sizes, centres):
        rpx = max(rc * radius, 1e-6)
        ext = 1.5 * rpx + 2
        p = _patch(oy + cv * radius, ox + cu * radius, ext, ext, bny, bnx)
        if p is None:
            continue
        sy, sx, py, px = p
        s = np.hypot(py, px) / rpx
        depth = rng.uniform(0.25, 0.45)
        rim_w = max(0.13, 0.7 / rpx)
        floor = 1.0 - _smoothstep(0.7, 1.0, s)
        # inner wall lit on one side, in shadow on the other
        wall = (px * lu + py * lv) / rpx * floor
        cc = (-depth * floor
              + 0.18 * np.exp(-0.5 * ((s - 1.0) / rim_w) ** 2)
              + 0.12 * wall)
        if rc > 0.06:   # central peak of large craters
            cc += 0.2 * np.exp(-0.5 * (s / 0.12) ** 2)
        crat[sy, sx] += cc

    amp *= 1.0 + crat
    np.clip(amp, 0.08, None, out=amp)
    amp *= edge
    amp /= amp.max()

    # --- smooth phase: defocus, astigmatism and coma (no trigonometry) ------
    u, v = x / radius, y / radius
    rho2 = u * u + v * v
    defocus = rng.uniform(1.2, 1.8)
    astig = rng.uniform(0.2, 0.4)
    coma = rng.uniform(0.1, 0.25)
    ta = rng.uniform(0, np.pi)
    tc = rng.uniform(0, 2 * np.pi)
    ua = u * np.cos(ta) + v * np.sin(ta)
    va = -u * np.sin(ta) + v * np.cos(ta)
    phase = (defocus * rho2 + astig * (ua * ua - va * va)
             + coma * (3 * rho2 - 2) * (u * np.cos(tc) + v * np.sin(tc)))

    phase[amp == 0] = 0.0      # clean zeros (no -0.0) outside the disc
    out = np.zeros((ny, nx), dtype=np.complex128)
    out[by, bx] = _polar(amp, phase)
    return out


# ---------------------------------------------------------------------------
# flowers
# ---------------------------------------------------------------------------
_BG_AMP, _BG_PH = 0.93, -0.4


def _stem_and_leaves(rng, ph, cy, cx, rf):
    """Draw a stem with one or two leaves into the phase only."""
    ny, nx = ph.shape
    psi = np.pi / 2 + rng.normal(0, 0.35)          # roughly downwards
    length = rf * rng.uniform(1.1, 1.8)
    width = max(0.8, rf * rng.uniform(0.05, 0.08))
    bend = rng.normal(0, 0.12) * length
    dy, dx = float(np.sin(psi)), float(np.cos(psi))
    leaves = []
    n_leaves = rng.integers(1, 3)
    for side in rng.choice([-1.0, 1.0], size=n_leaves, replace=False):
        t = rng.uniform(0.35, 0.75)
        la = rf * rng.uniform(0.35, 0.6)           # half length
        lb = la * rng.uniform(0.25, 0.4)           # half width
        beta = psi + side * rng.uniform(0.5, 1.0)
        ay = cy + t * length * dy + bend * t * t * dx
        ax = cx + t * length * dx - bend * t * t * dy
        leaves.append((ay + la * np.sin(beta), ax + la * np.cos(beta),
                       beta, la, lb))
    # tight box around the bent stem: sample its centre line
    ts = np.linspace(0.0, 1.0, 9)
    ly_ = cy + ts * length * dy + bend * ts * ts * dx
    lx_ = cx + ts * length * dx - bend * ts * ts * dy
    pad = width + 2.0
    by0, by1 = ly_.min() - pad, ly_.max() + pad
    bx0, bx1 = lx_.min() - pad, lx_.max() + pad
    p = _patch(0.5 * (by0 + by1), 0.5 * (bx0 + bx1),
               0.5 * (by1 - by0), 0.5 * (bx1 - bx0), ny, nx)
    if p is not None:
        _stem(ph, p, cy, cx, dy, dx, length, width, bend)
    _leaves(rng, ph, leaves)


def _stem(ph, p, cy, cx, dy, dx, length, width, bend):
    """Draw a gently bent stem into the phase patch ``p``."""
    sy, sx = p[0], p[1]
    # local coordinates relative to the flower centre
    py = (np.arange(sy.start, sy.stop) - cy)[:, None].astype(np.float32)
    px = (np.arange(sx.start, sx.stop) - cx)[None, :].astype(np.float32)
    # distance to the centre line (a segment bent by bend * t**2)
    along = py * dy + px * dx
    t = np.clip(along / length, 0.0, 1.0)
    across = -py * dx + px * dy + bend * t * t
    d_stem = np.hypot(along - t * length, across) - width
    m_stem = _coverage(d_stem)
    val = 0.05 + 0.05 * np.cos(np.pi * across / width)
    _blend(ph[sy, sx], m_stem, val)


def _leaves(rng, ph, leaves):
    """Draw pointed leaves with veins into the phase."""
    ny, nx = ph.shape
    for ly, lx, beta, la, lb in leaves:
        q = _patch(ly, lx, la + 2, la + 2, ny, nx, np.float32)
        if q is None:
            continue
        qy, qx, yy, xx = q
        cb, sb = float(np.cos(beta)), float(np.sin(beta))
        lu = xx * cb + yy * sb
        lv = -xx * sb + yy * cb
        half_w = lb * np.clip(1.0 - (lu / la) ** 2, 0.0, None)
        d = np.maximum(np.abs(lv) - half_w, np.abs(lu) - la)
        m = _coverage(d)
        # midrib and side veins
        veins = (0.12 * np.exp(-0.5 * (lv / 0.7) ** 2)
                 + 0.06 * np.cos(2 * np.pi * (lu - 0.8 * np.abs(lv))
                                 / max(2.5, 0.3 * la)))
        val = rng.uniform(-0.1, 0.1) + veins
        _blend(ph[qy, qx], m, val)


def _polar_patch(cy, cx, ext, shape):
    """Patch of radius ``ext`` around a centre, with float32 polar coordinates.

    Returns ``None`` when the patch misses the frame, otherwise
    ``(sy, sx, rho, theta)``.
    """
    p = _patch(cy, cx, ext, ext, shape[0], shape[1], np.float32)
    if p is None:
        return None
    sy, sx, y, x = p
    return sy, sx, np.hypot(y, x), np.arctan2(y, x)


def _sub_patch(p, cy, cx, ext, shape):
    """Restrict a polar patch from :func:`_polar_patch` to radius ``ext``."""
    q = _patch(cy, cx, ext, ext, shape[0], shape[1])
    if q is None:
        return None
    sy, sx, rho, th = p
    iy = slice(q[0].start - sy.start, q[0].stop - sy.start)
    ix = slice(q[1].start - sx.start, q[1].stop - sx.start)
    return q[0], q[1], rho[iy, ix], th[iy, ix]


def _blend(dst, m, val):
    """In place ``dst = (1 - m) * dst + m * val``."""
    dst += m * (val - dst)


def _flower(rng, amp, ph, cy, cx, rf):
    """Draw one flower (petals and centre) into amplitude and phase."""
    outer = _polar_patch(cy, cx, 1.15 * rf + 2, amp.shape)
    if outer is None:
        return
    rc = rf * rng.uniform(0.18, 0.3)
    p_amp = rng.uniform(0.7, 0.84)
    p_ph = rng.uniform(0.25, 0.6)
    n_layers = 2 if rf > 6 and rng.random() < 0.6 else 1
    daisy = rng.random() < 0.5
    k = int(rng.integers(5, 10)) if daisy else int(rng.integers(4, 8))
    sector = 2 * np.pi / k
    theta0 = rng.uniform(0, 2 * np.pi)
    vein_k = 2 * np.pi * rf / (3 * max(2.0, 0.08 * rf))

    for layer in range(n_layers):
        scale = 1.0 if layer == 0 else rng.uniform(0.55, 0.7)
        r_out = rf * scale
        tw = theta0 + layer * np.pi / k
        jit_k = (1.0 + np.clip(rng.normal(0, 0.07, k), -0.15, 0.15)
                 ).astype(np.float32)
        ph_k = (p_ph + 0.1 * layer + 0.1 * rng.normal(0, 1, k)
                ).astype(np.float32)
        width = rng.uniform(0.3, 0.5)
        sharp = rng.uniform(0.5, 1.2)
        shade = rng.uniform(-0.05, 0.05)
        p = _sub_patch(outer, cy, cx, 1.15 * r_out + 2, amp.shape)
        if p is None:
            continue
        sy, sx, rho, th = p
        j = np.round((th - tw) / sector)
        delta = th - tw - j * sector
        jj = j.astype(int) % k
        jitter = jit_k[jj]
        if daisy:
            a = 0.5 * (r_out - 0.7 * rc) * jitter
            c0 = 0.7 * rc + a
            b = np.minimum(width * a, 0.95 * c0 * float(np.tan(sector / 2)))
            along = rho * np.cos(delta)
            across = rho * np.sin(delta)
            d = (np.hypot((along - c0) / a, across / b) - 1.0) * b
            frac = np.clip((along - 0.7 * rc) / (2 * a), 0, 1)
            acr = across / b
        else:
            lobe = np.abs(np.cos(0.5 * k * (th - tw))) ** sharp
            d = rho - r_out * jitter * (0.3 + 0.7 * lobe)
            frac = np.clip(rho / (r_out * jitter), 0, 1)
            acr = delta * (2.0 / sector)
        m = _coverage(d)
        veins = np.cos(vein_k * acr) * (0.3 + 0.7 * frac)
        midrib = np.clip(1.0 - (acr / 0.25) ** 2, 0, 1) ** 2 * frac
        av = (p_amp + shade) + 0.08 * frac - 0.03 * veins - 0.05 * midrib
        pv = ph_k[jj] + 0.25 * (1 - frac) + 0.06 * veins
        _blend(amp[sy, sx], m, av)
        _blend(ph[sy, sx], m, pv)

    # centre with a sunflower-like seed pattern
    c_amp = rng.uniform(0.62, 0.68)
    c_ph = rng.uniform(0.7, 0.85)
    p = _sub_patch(outer, cy, cx, rc + 2, amp.shape)
    if p is None:
        return
    sy, sx, rho, th = p
    m = _coverage(rho - rc)
    dome = np.clip(1 - (rho / rc) ** 2, 0, 1)
    av = c_amp - 0.02 * dome
    pv = c_ph + 0.1 * dome
    if rc > 4:
        spiral = (2 * np.pi / max(2.2, 0.12 * rc)) * rho
        seeds = np.cos(spiral + 13 * th) * np.cos(spiral - 21 * th)
        av = av + 0.04 * seeds
        pv = pv + 0.08 * seeds
    _blend(amp[sy, sx], m, av)
    _blend(ph[sy, sx], m, pv)


def flower_obj(shape, seed=FLOWER_SEED):
    """Field of flowers as a weakly absorbing complex object.

    Flowers (daisy-like with elliptical petals, or rose-curve shaped, some
    with a second inner layer of petals) sit on a jittered grid over a
    mottled background, with smaller flowers scattered in between. Petals
    carry veins and a midrib, the centres a spiral seed pattern, so there is
    structure from a few pixels up to the flower size. Stems and leaves are
    drawn only in the phase, so amplitude and phase are correlated but not
    identical.

    The flower size grows slowly with the frame (about 24 px per flower cell
    at 64 x 64, about 75 px at 640 x 640): a larger frame shows both more
    and larger flowers. Any shape is accepted, e.g. ``(638, 640)``.

    Parameters
    ----------
    shape : int or tuple of int or numpy.ndarray
        Frame shape. A single number gives a square frame.
    seed : int, optional
        Seed of the random generator. The default gives the same image for a
        given shape every time.

    Returns
    -------
    numpy.ndarray
        Complex128 array of the requested shape with amplitude within
        ``[0.6, 1.0]`` and phase within ``[-1, 1]`` rad.

    Examples
    --------
    >>> obj = flower_obj((64, 80))
    >>> obj.shape, obj.dtype
    ((64, 80), dtype('complex128'))
    >>> amp = abs(obj)
    >>> bool(amp.min() > 0.6 - 1e-12 and amp.max() < 1.0 + 1e-12)
    True
    """
    ny, nx = _as_shape(shape)
    rng = np.random.default_rng(seed)
    n_eff = np.sqrt(ny * nx)
    cell = float(24.0 * np.sqrt(max(n_eff, 16.0) / 64.0))

    # background: mottled, partially correlated amplitude and phase
    amp, ph = _spectral_noise(rng, (ny, nx), [
        [(0.025, 0, cell / 3.0), (0.015, 0, cell / 10.0), (0.01, 0, 0.8),
         (-0.02, 1, cell / 4.0)],
        [(0.04, 0, cell / 3.0), (0.05, 0, cell / 10.0), (0.04, 0, 0.8),
         (0.1, 1, cell / 4.0)],
    ])
    amp += _BG_AMP
    ph += _BG_PH

    # flower positions: jittered grid plus scattered small flowers
    gy = int(np.ceil(ny / cell)) + 2
    gx = int(np.ceil(nx / cell)) + 2
    oy = (ny - (gy - 2) * cell) / 2.0 - cell
    ox = (nx - (gx - 2) * cell) / 2.0 - cell
    big = []
    for iy in range(gy):
        for ix in range(gx):
            if rng.random() < 0.15:   # leave some meadow free
                continue
            fy = oy + (iy + 0.5 + rng.uniform(-0.35, 0.35)) * cell
            fx = ox + (ix + 0.5 + rng.uniform(-0.35, 0.35)) * cell
            big.append((fy, fx, cell * rng.uniform(0.28, 0.5)))
    n_small = int(rng.poisson(0.8 * gy * gx))
    small = [(rng.uniform(-0.5 * cell, ny + 0.5 * cell),
              rng.uniform(-0.5 * cell, nx + 0.5 * cell),
              cell * rng.uniform(0.1, 0.2)) for _ in range(n_small)]

    order = rng.permutation(len(big))
    big = [big[i] for i in order]
    for fy, fx, rf in big:
        _stem_and_leaves(rng, ph, fy, fx, rf)
    for fy, fx, rf in small + big:
        _flower(rng, amp, ph, fy, fx, rf)

    amp = np.clip(amp.astype(np.float64), 0.6, 1.0)
    ph = np.clip(ph.astype(np.float64), -1.0, 1.0)
    return _polar(amp, ph)
