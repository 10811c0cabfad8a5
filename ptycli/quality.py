"""Reconstruction-quality helpers: compare a reconstruction with a ground truth.

A ptychographic reconstruction is only defined up to a global phase factor
and (for probe and object together) a shift, and outside the illuminated
area it is not defined at all. These helpers remove those ambiguities before
comparing.

:func:`align_and_compare`
    Removes a sub-pixel shift (cross-correlation peak refined on an upsampled
    grid by a matrix DFT) and a global phase factor, then returns the
    normalised complex correlation ``|<a, b>| / (|a| |b|)`` over a weighted
    region (1 for identical arrays up to phase, shift and scale).
:func:`illumination_coverage`, :func:`illuminated_region`
    Probe intensity summed over all views of an object storage, and the
    well-illuminated part of it (coverage above a fraction of its maximum).
:func:`object_vs_truth`
    Cuts the well-illuminated region of a reconstructed object, maps it onto
    the ground-truth object through the pixel positions of the physical
    origin in both (``Storage.center`` and ``ground_truth['object_center']``)
    and compares.
:func:`probe_vs_truth`
    Compares probe modes: the strongest modes (shift and phase), every mode
    pair, the relative mode powers and the density-matrix similarity
    ``tr(rho_a rho_b) / sqrt(tr rho_a^2 tr rho_b^2)`` of the incoherent
    mixtures (insensitive to how the mixture is split into modes).
:func:`mode_powers`
    Relative powers of probe modes.
"""

import numpy as np

__all__ = ["align_and_compare", "fourier_shift", "illumination_coverage", "illuminated_region",
           "object_vs_truth", "probe_vs_truth", "mode_powers", "density_similarity"]


def _dft_matrix(n, shifts):
    """Rows ``exp(2 pi i k s / n)`` for frequencies ``k`` (FFT order) and shifts ``s``."""
    k = np.fft.fftfreq(n) * n
    return np.exp(2j * np.pi * np.outer(shifts, k) / n)


def fourier_shift(a, shift):
    """Shift a 2D array by ``shift = (dy, dx)`` pixels (sub-pixel, periodic), via the Fourier phase ramp."""
    a = np.asarray(a)
    ky = np.fft.fftfreq(a.shape[-2])[:, None]
    kx = np.fft.fftfreq(a.shape[-1])[None, :]
    ramp = np.exp(-2j * np.pi * (ky * shift[0] + kx * shift[1]))
    return np.fft.ifft2(np.fft.fft2(a) * ramp)


def _cross_correlation_peak(r, t, w, upsample=20):
    """Shift ``s`` (dy, dx) maximising ``|sum w conj(t(x - s)) r(x)| / sqrt(sum w |t(x - s)|^2)``.

    ``r`` is only read inside the region ``w`` (a reconstruction may hold
    large, meaningless values outside it), the clean ``t`` is moved. All
    integer shifts are evaluated by FFT (periodic), then the best one is
    refined on a grid of ``1 / upsample`` pixels by matrix DFTs.
    """
    n0, n1 = r.shape
    num_spec = np.fft.fft2(w * r) * np.conj(np.fft.fft2(t))
    den_spec = np.fft.fft2(w) * np.conj(np.fft.fft2(np.abs(t) ** 2))
    num = np.abs(np.fft.ifft2(num_spec))
    den = np.fft.ifft2(den_spec).real
    sy, sx = _signed_argmax(num / np.sqrt(np.maximum(den, 1e-12 * max(den.max(), 1e-300))))
    if upsample <= 1:
        return np.array([float(sy), float(sx)])
    steps = _fine_steps(upsample)
    ey = _dft_matrix(n0, sy + steps)
    ex = _dft_matrix(n1, sx + steps)
    fnum = np.abs(ey @ num_spec @ ex.T)
    fden = (ey @ den_spec @ ex.T).real
    return _refined(fnum / np.sqrt(np.maximum(fden, 1e-12 * max(fden.max(), 1e-300))), sy, sx, steps)


def _spectrum_peak(q, upsample=20):
    """Frequency ``(ky, kx)`` (cycles per array side) of the strongest plane-wave component of ``q``."""
    n0, n1 = q.shape
    ky, kx = _signed_argmax(np.abs(np.fft.fft2(q)))
    if upsample <= 1:
        return np.array([float(ky), float(kx)])
    steps = _fine_steps(upsample)
    ey = np.exp(-2j * np.pi * np.outer(ky + steps, np.arange(n0)) / n0)
    ex = np.exp(-2j * np.pi * np.outer(kx + steps, np.arange(n1)) / n1)
    return _refined(np.abs(ey @ q @ ex.T), ky, kx, steps)


def _signed_argmax(a):
    """Position of the largest element of the 2D array ``a`` as signed periodic offsets ``(dy, dx)``."""
    n0, n1 = a.shape
    iy, ix = np.unravel_index(np.argmax(a), a.shape)
    return (iy - n0 if iy > n0 // 2 else iy), (ix - n1 if ix > n1 // 2 else ix)


def _fine_steps(upsample):
    """Offsets ``-1 .. 1`` in steps of ``1 / upsample`` around a coarse peak."""
    return np.arange(-upsample, upsample + 1) / float(upsample)


def _refined(fine, cy, cx, steps):
    """The coarse peak ``(cy, cx)`` moved to the largest element of ``fine`` (rows ``cy + steps``, columns ``cx + steps``)."""
    jy, jx = np.unravel_index(np.argmax(fine), fine.shape)
    return np.array([cy + steps[jy], cx + steps[jx]])


def _ramp(shape, k):
    """``exp(2 pi i (ky y / H + kx x / W))``."""
    y = np.arange(shape[0])[:, None] / shape[0]
    x = np.arange(shape[1])[None, :] / shape[1]
    return np.exp(2j * np.pi * (k[0] * y + k[1] * x))


def _align(r, t, w, upsample=20, max_shift=None, remove_ramp=True):
    """Shift ``s`` and ramp ``k`` with ``r(x) ~ c exp(2 pi i k.x/N) t(x - s)`` over ``w``."""
    k = np.zeros(2)
    s = np.zeros(2)
    for _ in range(2 if remove_ramp else 1):
        r_noramp = r * np.conj(_ramp(r.shape, k)) if np.any(k != 0) else r
        s = _cross_correlation_peak(r_noramp, t, w, upsample)
        if max_shift is not None and np.hypot(*s) > max_shift:
            s = np.zeros(2)
        if remove_ramp:
            t_s = fourier_shift(t, s) if np.any(s != 0) else t
            k = _spectrum_peak(w * np.conj(t_s) * r, upsample)
    return s, k


def align_and_compare(recon, truth, weight=None, upsample=20, max_shift=None, remove_ramp=True):
    """Correlation of ``recon`` with ``truth`` after removing a global phase and a sub-pixel shift.

    Parameters
    ----------
    recon, truth : ndarray (H, W), complex
        Arrays on the same pixel grid (roughly registered).
    weight : ndarray (H, W), optional
        Non-negative weights of the comparison region in the frame of
        ``recon`` (default all ones). ``recon`` is only used where the
        weight is non-zero.
    upsample : int
        Sub-pixel resolution of the shift (and of the ramp), ``1 / upsample``.
    max_shift : float, optional
        Ignore (set to zero) shifts larger than this many pixels.
    remove_ramp : bool
        Also remove a linear phase ramp ``exp(i k.r)``: an ambiguity of
        ptychography (object times a ramp and probe times the opposite ramp
        give the same intensities). Estimated from the strongest plane-wave
        component of ``w conj(t) r`` (sub-pixel in frequency).

    Returns
    -------
    dict
        ``correlation`` - ``|sum w conj(t') r| / sqrt(sum w |r|^2 sum w |t'|^2)``
        with ``t'`` the truth moved onto the reconstruction (shift and ramp);
        1 = identical up to phase, shift, ramp and scale. ``phase_offset``
        (rad) - the global phase (``r ~ exp(i phase) t'``); ``shift`` (dy, dx)
        - pixels to move the reconstruction by to match the truth;
        ``ramp`` (ky, kx) - the phase ramp of the reconstruction relative to
        the truth, in cycles across the array; ``scale`` - the amplitude
        factor ``|<t', r>| / <t', t'>``; ``error`` - normalised rms
        difference after removing phase and scale.

    Notes
    -----
    The shift maximises ``|sum w conj(t(x - s)) r(x)| / sqrt(sum w |t(x - s)|^2)``
    (FFT over all integer shifts, refined by matrix DFTs); the truth, which
    is clean, is the array that gets Fourier-shifted.
    """
    r = np.asarray(recon, dtype=np.complex128)
    t = np.asarray(truth, dtype=np.complex128)
    if r.shape != t.shape:
        raise ValueError("recon and truth must have the same shape, got %s and %s" % (r.shape, t.shape))
    w = np.ones(r.shape) if weight is None else np.asarray(weight, dtype=float)
    s, k = _align(r, t, w, upsample, max_shift, remove_ramp)
    t_al = fourier_shift(t, s) if np.any(s != 0) else t
    if np.any(k != 0):
        t_al = t_al * _ramp(t.shape, k)
    rw = np.where(w > 0, r, 0)
    inner = np.sum(w * np.conj(t_al) * rw)
    nr = np.sum(w * np.abs(rw) ** 2)
    nt = np.sum(w * np.abs(t_al) ** 2)
    corr = float(np.abs(inner) / np.sqrt(max(nr * nt, 1e-300)))
    phase = float(np.angle(inner))
    scale = float(np.abs(inner) / max(nt, 1e-300))
    diff = rw * np.exp(-1j * phase) / max(scale, 1e-300) - t_al
    err = float(np.sqrt(np.sum(w * np.abs(diff) ** 2) / max(nt, 1e-300)))
    return dict(correlation=corr, phase_offset=phase, shift=(float(-s[0]), float(-s[1])),
                ramp=(float(k[0]), float(k[1])), scale=scale, error=err)


def illumination_coverage(ptycho, storage_id=None):
    """``sum over views |probe|^2`` on the object storage (float64, layer 0).

    Parameters
    ----------
    ptycho : Ptycho
        The model.
    storage_id : str, optional
        Object storage (default the first).

    Returns
    -------
    ndarray (rows, cols)
    """
    S = ptycho.obj.S[storage_id] if storage_id else next(iter(ptycho.obj.S.values()))
    cov = np.zeros(S.data.shape[-2:])
    seen = set()
    for pod in ptycho.pods.values():
        ov = pod.ob_view
        if ov.storage is not S or not pod.active:
            continue
        key = (pod.di_view.ID, pod.pr_view.dlayer)  # each probe mode once per frame
        if key in seen:
            continue
        seen.add(key)
        y, x = int(ov.dlow[0]), int(ov.dlow[1])
        h, w = (int(v) for v in ov.shape)
        cov[y:y + h, x:x + w] += np.abs(pod.probe) ** 2
    return cov


def illuminated_region(ptycho, fraction=0.3, storage_id=None):
    """Boolean mask of object pixels whose coverage exceeds ``fraction`` of its maximum."""
    cov = illumination_coverage(ptycho, storage_id)
    return cov > fraction * cov.max()


def object_vs_truth(ptycho, truth=None, scan=None, fraction=0.3, storage_id=None, layer=0, use_truth_probe=False):
    """Compare the reconstructed object with the ground truth over the well-illuminated area.

    Parameters
    ----------
    ptycho : Ptycho
        The model after reconstruction.
    truth : dict, optional
        Ground truth with ``object`` and ``object_center``; default that of
        scan ``scan`` (first scan) from ``ptycho.scans[label].data.ground_truth``.
    fraction : float
        Region: coverage above this fraction of its maximum.
    use_truth_probe : bool
        Compute the coverage with the true probe (otherwise the reconstructed one).

    Returns
    -------
    dict
        :func:`align_and_compare` result plus ``pixels`` (region size) and
        ``offset`` (recon pixel -> truth pixel integer offset used).
    """
    label = scan or next(iter(ptycho.scans))
    if truth is None:
        truth = ptycho.scans[label].data.ground_truth
    S = ptycho.obj.S[storage_id] if storage_id else next(iter(ptycho.obj.S.values()))
    region = illuminated_region(ptycho, fraction, S.ID)
    tobj = np.asarray(truth["object"])
    if tobj.ndim == 3:
        tobj = tobj[layer]
    tcen = np.asarray(truth["object_center"], dtype=float)
    offset = np.round(tcen - np.asarray(S.center, dtype=float)).astype(int)  # truth = recon + offset
    ys, xs = np.nonzero(region)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    # clip the box to the truth array
    y0 = max(y0, -offset[0]); x0 = max(x0, -offset[1])
    y1 = min(y1, tobj.shape[0] - offset[0]); x1 = min(x1, tobj.shape[1] - offset[1])
    rec = S.data[layer, y0:y1, x0:x1]
    tru = tobj[y0 + offset[0]:y1 + offset[0], x0 + offset[1]:x1 + offset[1]]
    w = region[y0:y1, x0:x1].astype(float)
    out = align_and_compare(rec, tru, w)
    out["pixels"] = int(w.sum())
    out["offset"] = tuple(int(v) for v in offset)
    return out


def mode_powers(modes):
    """Relative powers ``sum |mode_k|^2 / sum_all`` of a stack of modes (modes, H, W)."""
    m = np.asarray(modes)
    if m.ndim == 2:
        m = m[None]
    p = np.sum(np.abs(m.reshape(m.shape[0], -1)) ** 2, axis=1)
    return p / max(p.sum(), 1e-300)


def density_similarity(a, b):
    """``tr(rho_a rho_b) / sqrt(tr rho_a^2 tr rho_b^2)`` for ``rho = sum_k |m_k><m_k|`` (mode stacks)."""
    A = np.asarray(a, dtype=np.complex128).reshape(np.shape(a)[0], -1)
    B = np.asarray(b, dtype=np.complex128).reshape(np.shape(b)[0], -1)
    ab = np.sum(np.abs(A.conj() @ B.T) ** 2)
    aa = np.sum(np.abs(A.conj() @ A.T) ** 2)
    bb = np.sum(np.abs(B.conj() @ B.T) ** 2)
    return float(ab / np.sqrt(max(aa * bb, 1e-300)))


def probe_vs_truth(recon, truth, weight=None):
    """Compare probe modes with the true ones.

    The shift and phase are found on the strongest modes and the shift is
    applied to every reconstructed mode.

    Parameters
    ----------
    recon, truth : ndarray (modes, H, W) or (H, W)
    weight : ndarray (H, W), optional
        Comparison weights (default ``|truth|^2`` summed over modes, so the
        dark surroundings of the probe do not count).

    Returns
    -------
    dict
        ``correlation`` (strongest modes, after shift and phase), ``shift``,
        ``phase_offset``, ``mode_correlations`` (each reconstructed mode with
        the true mode of the same rank, shift applied, global phase per
        mode removed), ``powers`` / ``true_powers`` (relative mode powers),
        ``density_similarity`` (incoherent mixtures, shift applied).
    """
    r = np.asarray(recon, dtype=np.complex128)
    t = np.asarray(truth, dtype=np.complex128)
    if r.ndim == 2:
        r = r[None]
    if t.ndim == 2:
        t = t[None]
    pr = mode_powers(r)
    pt = mode_powers(t)
    r = r[np.argsort(pr)[::-1]]
    t = t[np.argsort(pt)[::-1]]
    w = np.sum(np.abs(t) ** 2, axis=0) if weight is None else np.asarray(weight, float)
    w = w / w.max()
    main = align_and_compare(r[0], t[0], w)
    s = -np.array(main["shift"])  # truth modes are moved by s and get the ramp
    ramp = _ramp(t.shape[-2:], main["ramp"])
    moved = np.array([(fourier_shift(m, s) if np.any(s != 0) else m) * ramp for m in t])
    wm = np.sum(np.abs(moved) ** 2, axis=0) if weight is None else w
    wm = wm / wm.max()
    k = min(len(r), len(t))
    mode_corr = []
    for i in range(k):
        inner = np.sum(wm * np.conj(moved[i]) * r[i])
        mode_corr.append(float(np.abs(inner) / np.sqrt(np.sum(wm * np.abs(r[i]) ** 2) *
                                                       np.sum(wm * np.abs(moved[i]) ** 2))))
    sw = np.sqrt(wm)
    return dict(correlation=main["correlation"], shift=main["shift"], phase_offset=main["phase_offset"],
                ramp=main["ramp"], mode_correlations=mode_corr, powers=np.sort(pr)[::-1],
                true_powers=np.sort(pt)[::-1], density_similarity=density_similarity(r * sw, moved * sw))
