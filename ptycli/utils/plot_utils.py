"""Plotting helpers (matplotlib is optional and imported only when plotting).

:func:`complex2rgb` needs numpy only; :func:`plot_storage` imports
matplotlib on first use and selects the non-interactive ``Agg`` backend when
no display is available (and no backend was chosen by the user).
"""

import os
import sys

import numpy as np

__all__ = ["complex2rgb", "plot_storage", "parse_slices", "PLOT_INSTALL_HINT"]

PLOT_INSTALL_HINT = "matplotlib is needed for plotting: pip install 'ptycli[plot]'"

_CHANNEL_NAMES = {"r": "real", "i": "imag", "a": "amplitude", "p": "phase", "c": "complex"}


def _pyplot():
    """Import and return ``matplotlib.pyplot`` (Agg when headless)."""
    try:
        import matplotlib
    except ImportError as exc:
        raise ImportError(PLOT_INSTALL_HINT) from exc
    if (
        "matplotlib.pyplot" not in sys.modules
        and not os.environ.get("MPLBACKEND")
        and sys.platform.startswith("linux")
        and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    ):
        matplotlib.use("Agg")
    try:
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError(PLOT_INSTALL_HINT) from exc
    return plt


def _hsv_to_rgb(h, s, v):
    """Vectorised HSV -> RGB, all inputs in [0, 1]; returns (..., 3)."""
    h = np.asarray(h, dtype=float) % 1.0
    s = np.broadcast_to(np.asarray(s, dtype=float), h.shape)
    v = np.broadcast_to(np.asarray(v, dtype=float), h.shape)
    h6 = h * 6.0
    sector = np.floor(h6).astype(int) % 6
    f = h6 - np.floor(h6)
    p = v * (1.0 - s)
    q = v * (1.0 - s * f)
    t = v * (1.0 - s * (1.0 - f))
    choices_r = [v, q, p, p, t, v]
    choices_g = [t, v, v, q, p, p]
    choices_b = [p, p, t, v, v, q]
    r = np.choose(sector, choices_r)
    g = np.choose(sector, choices_g)
    b = np.choose(sector, choices_b)
    return np.stack([r, g, b], axis=-1)


def complex2rgb(c, vmin=None, vmax=None, modulus="linear"):
    """Colour-code a complex array: hue = phase, brightness = amplitude.

    Phase 0 is red, pi/2 yellow-green, pi cyan, -pi/2 violet (the HSV hue
    circle, ``hue = phase / 2pi mod 1``); full saturation.

    Parameters
    ----------
    c : array_like
        Complex (or real) values.
    vmin, vmax : float, optional
        Amplitude range (after ``modulus``) mapped to brightness 0..1;
        default the data's minimum-to-zero and maximum.
    modulus : 'linear', 'sqrt' or 'log'
        Transform applied to the amplitude before scaling.

    Returns
    -------
    numpy.ndarray
        RGB floats in ``[0, 1]``, shape ``c.shape + (3,)``.
    """
    c = np.asarray(c)
    amp = _apply_modulus(np.abs(c), modulus)
    lo = (0.0 if modulus != "log" else np.nanmin(amp)) if vmin is None else vmin
    hi = np.nanmax(amp) if vmax is None else vmax
    if not np.isfinite(hi) or hi <= lo:
        val = np.zeros(amp.shape)
    else:
        val = np.clip((amp - lo) / (hi - lo), 0.0, 1.0)
    val = np.nan_to_num(val)
    hue = np.angle(c) / (2 * np.pi)
    return _hsv_to_rgb(hue, 1.0, val)


def _apply_modulus(v, modulus):
    """Apply 'linear' | 'sqrt' | 'log' (log10) to real values."""
    if modulus == "linear":
        return v
    if modulus == "sqrt":
        return np.sign(v) * np.sqrt(np.abs(v))
    if modulus == "log":
        av = np.abs(v)
        positive = av[av > 0]
        floor = positive.min() if positive.size else 1.0
        return np.log10(np.maximum(av, floor))
    raise ValueError("modulus must be 'linear', 'sqrt' or 'log', got %r" % (modulus,))


def _parse_one(token):
    token = token.strip()
    if ":" not in token:
        return int(token)
    parts = [p.strip() for p in token.split(":")]
    if len(parts) > 3:
        raise ValueError("bad slice %r" % token)
    vals = [int(p) if p else None for p in parts]
    return slice(*vals)


def parse_slices(slices, ndim=3):
    """Turn a slice specification into a tuple of ``ndim`` indices.

    Parameters
    ----------
    slices : str, slice, int or tuple
        ``'0,120:-120,120:-120'`` or ``':2,:,:'`` (numpy syntax without
        brackets), or a tuple of ints/slices.  Missing trailing entries mean
        ``:``.
    ndim : int
        Number of axes to index.

    Returns
    -------
    tuple
        ``ndim`` ints or slices.
    """
    if slices is None:
        items = []
    elif isinstance(slices, str):
        text = slices.strip().strip("[]()")
        items = [_parse_one(t) for t in text.split(",") if t.strip()] if text else []
    elif isinstance(slices, (slice, int, np.integer)):
        items = [slices]
    else:
        items = list(slices)
    if len(items) > ndim:
        raise ValueError("%d indices for %d axes" % (len(items), ndim))
    return tuple(items) + (slice(None),) * (ndim - len(items))


def _si_scale(extent_m):
    """Pick a unit for lengths of about ``extent_m`` metres."""
    span = max(abs(float(extent_m)), 1e-300)
    for factor, unit in ((1.0, "m"), (1e-3, "mm"), (1e-6, "\u00b5m"), (1e-9, "nm")):
        if span >= factor:
            return factor, unit
    return 1e-12, "pm"


def _storage_geometry(storage):
    """Return (data3d, psize or None, center, label) for a storage or array."""
    if hasattr(storage, "data") and not isinstance(storage, np.ndarray):
        data = np.asarray(storage.data)
        psize = getattr(storage, "psize", None)
        center = getattr(storage, "center", None)
        label = str(getattr(storage, "ID", "") or "")
    else:
        data = np.asarray(storage)
        psize, center, label = None, None, ""
    if data.ndim == 2:
        data = data[None]
    if data.ndim != 3:
        raise ValueError("plot_storage needs 2-d or 3-d data, got shape %s" % (data.shape,))
    if psize is not None:
        psize = np.broadcast_to(np.asarray(psize, dtype=float).ravel(), (2,)).copy() \
            if np.size(psize) in (1, 2) else None
    if center is None:
        center = np.array(data.shape[-2:]) // 2
    center = np.broadcast_to(np.asarray(center, dtype=float).ravel(), (2,)).copy()
    return data, psize, center, label


def _channel(data, channel, modulus):
    if channel == "r":
        return _apply_modulus(np.real(data).astype(float), modulus)
    if channel == "i":
        return _apply_modulus(np.imag(data).astype(float), modulus)
    if channel == "a":
        return _apply_modulus(np.abs(data).astype(float), modulus)
    if channel == "p":
        return np.angle(data)
    raise ValueError("channel must be one of 'r', 'i', 'a', 'p', 'c', got %r" % (channel,))


def plot_storage(storage, fignum=100, modulus="linear",
                 slices=(slice(1), slice(None), slice(None)), si_axes="x",
                 mask=None, channel="r", cmap=None, vmin=None, vmax=None,
                 title=None, max_panels=16):
    """Show (layers of) a storage's data, one panel per layer.

    Parameters
    ----------
    storage : Storage or array_like
        An object with ``data`` (layers, rows, cols) and optionally
        ``psize`` (m, per axis), ``center`` (pixels) and ``ID``; or a bare
        2-d/3-d array (pixel axes).
    fignum : int, str or None
        matplotlib figure number (the figure is cleared and reused); None
        makes a new figure.
    modulus : 'linear', 'log' or 'sqrt'
        Transform of the plotted values ('log': log10 of the absolute value,
        zeros clipped to the smallest positive value; 'sqrt': signed square
        root).  Ignored for the phase channel; for
        'c' it applies to the brightness.
    slices : str or tuple
        Which part of the (layers, rows, cols) buffer to show, e.g.
        ``'0,120:-120,120:-120'``, ``':2,:,:'`` or
        ``(slice(2), slice(None), slice(None))``.  Default: the first layer.
    si_axes : str or None
        Axes labelled in physical units (m, mm, um or nm): any of ``'x'``,
        ``'y'``, ``'xy'``; ``None`` or ``''`` for pixel indices.  Without a
        pixel size (bare arrays) all axes show pixels.
    mask : array_like, optional
        Boolean or 0/1 array broadcastable to the buffer (or to one layer);
        pixels where it is 0/False are hidden.
    channel : 'r', 'i', 'a', 'p' or 'c'
        Real part, imaginary part, amplitude, phase (rad), or complex
        (hue = phase, brightness = amplitude, see :func:`complex2rgb`).
    cmap : str, optional
        Colour map for the scalar channels (default 'viridis', 'hsv' for
        phase).
    vmin, vmax : float, optional
        Colour range (after ``modulus``).
    title : str, optional
        Figure title (default: the storage ID and channel).
    max_panels : int
        At most this many layers are drawn.

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    ImportError
        If matplotlib is not installed.
    """
    if modulus not in ("linear", "log", "sqrt"):
        raise ValueError("modulus must be 'linear', 'log' or 'sqrt', got %r" % (modulus,))
    if channel not in _CHANNEL_NAMES:
        raise ValueError("channel must be one of 'r', 'i', 'a', 'p', 'c', got %r" % (channel,))
    data, psize, center, label = _storage_geometry(storage)
    index = parse_slices(slices, 3)
    for idx in index[1:]:
        if not isinstance(idx, slice):
            raise ValueError("rows and columns must be sliced, not indexed (%r)" % (idx,))
    layer_idx = index[0]
    if not isinstance(layer_idx, slice):
        layer_idx = slice(int(layer_idx), int(layer_idx) + 1 if int(layer_idx) != -1 else None)
    layers = np.arange(data.shape[0])[layer_idx]
    sel = data[(layer_idx,) + index[1:]]
    if mask is not None:
        m = np.asarray(mask)
        if m.ndim == 2:
            m = m[None]
        m = np.broadcast_to(m, data.shape)[(layer_idx,) + index[1:]].astype(bool)
    else:
        m = None
    if sel.shape[0] == 0 or sel.shape[1] == 0 or sel.shape[2] == 0:
        raise ValueError("slices %r select nothing from shape %s" % (slices, data.shape))
    layers = layers[:max_panels]
    sel = sel[:max_panels]

    # physical (or pixel) extent of the selected region
    rows = np.arange(data.shape[1])[index[1]]
    cols = np.arange(data.shape[2])[index[2]]
    si_axes = si_axes or ""
    use_si = psize is not None
    ext = []
    units = []
    for coords, axis, c, name in ((cols, 1, center[1], "x"), (rows, 0, center[0], "y")):
        lo, hi = coords[0] - 0.5, coords[-1] + 0.5
        if use_si and name in si_axes:
            lo_m, hi_m = (lo - c) * psize[axis], (hi - c) * psize[axis]
            factor, unit = _si_scale(max(abs(lo_m), abs(hi_m)))
            ext.append((lo_m / factor, hi_m / factor))
            units.append("%s (%s)" % (name, unit))
        else:
            ext.append((lo, hi))
            units.append("%s (pixel)" % name)
    extent = (ext[0][0], ext[0][1], ext[1][1], ext[1][0])

    plt = _pyplot()
    if fignum is None:
        fig = plt.figure()
    else:
        fig = plt.figure(fignum)
        fig.clf()
    n = sel.shape[0]
    ncols = min(n, 4)
    nrows = int(np.ceil(n / ncols))
    fig.set_size_inches(4.2 * ncols + 0.6, 3.8 * nrows + 0.6, forward=False)
    default_cmap = cmap or ("hsv" if channel == "p" else "viridis")
    for k in range(n):
        ax = fig.add_subplot(nrows, ncols, k + 1)
        frame = sel[k]
        if channel == "c":
            rgb = complex2rgb(frame, vmin=vmin, vmax=vmax, modulus=modulus)
            if m is not None:
                rgb = np.concatenate([rgb, m[k][..., None].astype(float)], axis=-1)
            ax.imshow(rgb, extent=extent, interpolation="nearest")
        else:
            img = _channel(frame, channel, modulus)
            if m is not None:
                img = np.ma.masked_array(img, mask=~m[k])
            im = ax.imshow(img, extent=extent, cmap=default_cmap, vmin=vmin, vmax=vmax,
                           interpolation="nearest")
            fig.colorbar(im, ax=ax, shrink=0.8)
        ax.set_xlabel(units[0])
        ax.set_ylabel(units[1])
        ax.set_title("%s layer %d" % (label, layers[k]) if label else "layer %d" % layers[k],
                     fontsize="small")
    suffix = _CHANNEL_NAMES[channel] + ("" if modulus == "linear" or channel == "p"
                                       else ", %s" % modulus)
    fig.suptitle(title if title is not None else ("%s (%s)" % (label, suffix) if label else suffix))
    return fig
