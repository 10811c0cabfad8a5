"""Result figures for ``ptycli plot`` (matplotlib is optional and imported lazily).

:func:`plot_reconstruction` draws object amplitude and phase, the probe
modes and the error curves of a reconstruction; :func:`plot_data` the mean
diffraction pattern, the scan positions and any ground truth of a data file.
Both save the figure to a file (format from its extension) and never open a
window: the ``Agg`` backend is used unless the user chose another one.

Without matplotlib every function raises :class:`ImportError` carrying
:data:`~ptycli.utils.plot_utils.PLOT_INSTALL_HINT`.
"""

import os

import numpy as np

from ..errors import DataError
from .nominal_geometry import is_nominal
from .plot_utils import PLOT_INSTALL_HINT, _si_scale, complex2rgb

__all__ = ["plot_reconstruction", "plot_data", "figure_module", "PLOT_INSTALL_HINT"]

_ERROR_STYLES = (("fourier_error", "Fourier error"), ("photon_error", "photon error"),
                 ("exit_change", "exit change"), ("likelihood", "-log likelihood"))
#: legend label of ``model_fourier_error`` (DM, RAAR: the Fourier error of probe x object)
_MODEL_LABEL = "Fourier error of probe x object"


def figure_module():
    """``matplotlib.figure`` and ``matplotlib.backends.backend_agg`` (no pyplot, no window).

    Raises ImportError with the install hint when matplotlib is missing.
    """
    try:
        import matplotlib  # noqa: F401
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError(PLOT_INSTALL_HINT) from exc
    return Figure, FigureCanvasAgg


def _extent(shape, psize, center):
    """imshow extent (left, right, bottom, top) in a convenient unit, and the unit."""
    if psize is None:
        return None, "pixel"
    psize = np.broadcast_to(np.asarray(psize, float).ravel(), (2,))
    center = np.broadcast_to(np.asarray(center if center is not None else np.array(shape) // 2, float).ravel(),
                             (2,))
    rows, cols = shape
    y0, y1 = (-0.5 - center[0]) * psize[0], (rows - 0.5 - center[0]) * psize[0]
    x0, x1 = (-0.5 - center[1]) * psize[1], (cols - 0.5 - center[1]) * psize[1]
    factor, unit = _si_scale(max(abs(y1 - y0), abs(x1 - x0)))
    return (x0 / factor, x1 / factor, y1 / factor, y0 / factor), unit


def _image(fig, ax, img, title, extent, unit, cmap=None, colorbar=True, label=None, vmin=None, vmax=None):
    im = ax.imshow(img, cmap=cmap, extent=extent, origin="upper", interpolation="nearest", vmin=vmin, vmax=vmax)
    ax.set_title(title, fontsize=9)
    ax.tick_params(labelsize=7)
    ax.set_xlabel("x [%s]" % unit, fontsize=8)
    ax.set_ylabel("y [%s]" % unit, fontsize=8)
    if colorbar and img.ndim == 2:
        cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        cb.ax.tick_params(labelsize=7)
        if label:
            cb.set_label(label, fontsize=8)
    return im


def _object_phase(obj, mask=None):
    """Phase of ``obj`` with the amplitude-weighted mean phase (over ``mask``) removed.

    A global phase is arbitrary in ptychography; removing it makes runs comparable.
    """
    weight = np.abs(obj) ** 2
    if mask is not None:
        weight = weight * mask
    mean = np.sum(obj * weight)
    if abs(mean) > 0:
        obj = obj * np.exp(-1j * np.angle(mean))
    return np.angle(obj)


def _illumination(shape, meta, positions, probe):
    """Summed probe intensity over the scan on the object grid (None when it cannot be placed)."""
    if positions is None or probe is None or "psize" not in meta:
        return None
    psize = np.broadcast_to(np.asarray(meta["psize"], float).ravel(), (2,))
    origin = meta.get("origin")
    if origin is None:
        center = np.broadcast_to(np.asarray(meta.get("center", np.array(shape) // 2), float).ravel(), (2,))
        origin = -center * psize
    origin = np.broadcast_to(np.asarray(origin, float).ravel(), (2,))
    pint = np.sum(np.abs(np.asarray(probe)) ** 2, axis=0)
    ph, pw = pint.shape
    out = np.zeros(shape, dtype=np.float64)
    for coord in np.asarray(positions, float).reshape(-1, 2):
        d = np.round((coord - origin) / psize + 1e-5).astype(int)
        y0, x0 = d[0] - ph // 2, d[1] - pw // 2
        ys, xs = max(y0, 0), max(x0, 0)
        ye, xe = min(y0 + ph, shape[0]), min(x0 + pw, shape[1])
        if ye > ys and xe > xs:
            out[ys:ye, xs:xe] += pint[ys - y0:ye - y0, xs - x0:xe - x0]
    return out if out.max() > 0 else None


def _limits(values, mask):
    v = values[mask] if mask is not None and np.any(mask) else values.ravel()
    v = v[np.isfinite(v)]
    if not v.size:
        return None, None
    lo, hi = np.percentile(v, [0.5, 99.5])
    return (float(lo), float(hi)) if hi > lo else (None, None)


def _crop_box(mask, margin=4):
    if mask is None or not np.any(mask):
        return None
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return (slice(max(rows[0] - margin, 0), rows[-1] + margin + 1),
            slice(max(cols[0] - margin, 0), cols[-1] + margin + 1))


def error_series(history, key):
    """Values of ``key`` over the history (float array, NaN where a record has none).

    ``model_fourier_error`` (DM, RAAR) is computed only at some iterations: NaN elsewhere.
    """
    return np.array([np.nan if h.get(key) is None else float(h[key]) for h in history or []], float)


def _log_axis(ax, axis="y"):
    """A log axis labelled with plain numbers (0.01, 2, 30, 4e+05), no 'x10^n' offsets."""
    from matplotlib import ticker

    target = ax.yaxis if axis == "y" else ax.xaxis
    target.set_major_formatter(ticker.FuncFormatter(lambda v, _pos: "%g" % v))
    target.set_minor_formatter(ticker.FuncFormatter(
        lambda v, _pos: "%g" % v if _few_decades(ax, axis) and str("%g" % v)[0] in "25" else ""))


def _few_decades(ax, axis):
    lo, hi = ax.get_ylim() if axis == "y" else ax.get_xlim()
    return lo > 0 and hi / lo < 30


def _errors_axis(ax, history, engines=None):
    """Error curves (log scale) against the iteration over the chain, engine changes marked.

    For DM and RAAR, whose ``fourier_error`` is that of the projection input
    (it may rise during a good run), the Fourier error of the model (probe x
    object, ``model_fourier_error``) is drawn as points at the iterations
    where it was computed, joined within each engine run. ML's likelihood has
    its own axis on the right (another scale); one legend for every curve
    sits outside the plotting area, so it covers none of them.
    """
    if not history:
        ax.text(0.5, 0.5, "no error history", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return
    it = np.arange(1, len(history) + 1)
    labels = [h.get("engine") or "" for h in history]
    model = error_series(history, "model_fourier_error")
    has_model = bool(np.any(np.isfinite(model) & (model > 0)))
    plotted = False
    for key, label in _ERROR_STYLES:
        if key == "likelihood":
            continue  # drawn on its own axis below (different scale)
        values = error_series(history, key)
        ok = np.isfinite(values) & (values > 0)
        if not ok.any():
            continue
        if key == "fourier_error" and has_model:
            label = "Fourier error (DM/RAAR: of the projection input)"
        ax.plot(it[ok], values[ok], label=label, lw=1.2)
        plotted = True
    if has_model:
        ok = np.isfinite(model) & (model > 0)
        color = None
        start = 0
        for i in range(1, len(labels) + 1):
            if i == len(labels) or labels[i] != labels[start]:
                seg = np.zeros(len(labels), bool)
                seg[start:i] = True
                seg &= ok
                if seg.any():
                    line, = ax.plot(it[seg], model[seg], marker="o", ms=3.5, ls="-", lw=0.8, color=color,
                                    label=None if color is not None else _MODEL_LABEL)
                    color = line.get_color()
                start = i
        plotted = True
    handles, names = ax.get_legend_handles_labels()
    lik = error_series(history, "likelihood")
    okl = np.isfinite(lik) & (lik > 0)
    if okl.any():
        ax2 = ax.twinx()
        line, = ax2.plot(it[okl], lik[okl], color="0.35", ls="--", lw=1.0, label="-log likelihood (right axis)")
        ax2.set_yscale("log")
        _log_axis(ax2)
        ax2.tick_params(which="both", labelsize=7)
        ax2.set_ylabel("-log likelihood per pixel", fontsize=8)
        handles.append(line)
        names.append(line.get_label())
    if plotted:
        ax.set_yscale("log")
        _log_axis(ax)
    if handles:
        # below the axes: it covers no curve and no axis label
        ax.legend(handles, names, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2,
                  borderaxespad=0.0, frameon=False)
    start = 0
    for i in range(1, len(labels) + 1):
        if i == len(labels) or labels[i] != labels[start]:
            if start > 0:
                ax.axvline(start + 0.5, color="0.6", lw=0.8, ls=":")
            ax.text((start + i + 1) / 2.0, 1.01, labels[start], transform=ax.get_xaxis_transform(),
                    ha="center", va="bottom", fontsize=8)
            start = i
    ax.set_xlim(0.5, len(history) + 0.5)
    ax.set_xlabel("iteration", fontsize=8)
    ax.set_ylabel("error (see 'ptycli params errors')", fontsize=8)
    ax.tick_params(which="both", labelsize=7)


def _save(fig, canvas_cls, path, dpi):
    canvas_cls(fig)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path


def _colour_wheel(ax, n=129):
    """The key of :func:`complex2rgb`: hue = phase (around), brightness = amplitude (outwards)."""
    y, x = np.mgrid[-1:1:n * 1j, -1:1:n * 1j]
    z = x - 1j * y  # phase measured anticlockwise from the right
    rgb = complex2rgb(np.where(np.abs(z) <= 1.0, z, 0))
    alpha = (np.abs(z) <= 1.0).astype(float)
    ax.imshow(np.dstack([rgb, alpha]), extent=(-1, 1, -1, 1), interpolation="bilinear")
    for text, (tx, ty) in (("0", (1.22, 0)), ("\u03c0/2", (0, 1.22)), ("\u03c0", (-1.25, 0)),
                           ("-\u03c0/2", (0, -1.25))):
        ax.text(tx, ty, text, ha="center", va="center", fontsize=7)
    ax.set_xlim(-1.5, 1.5)
    ax.set_ylim(-1.5, 1.5)
    ax.set_aspect("equal")
    ax.set_axis_off()
    ax.set_title("phase (hue),\namplitude (brightness)", fontsize=7)


def _nominal_pixels(rec):
    """Whether lengths in ``rec`` are object pixels (NpzScan's nominal geometry for pixel positions)."""
    scans = list((rec.scans or {}).values())
    return bool(scans) and all(is_nominal(sc.get("energy"), sc.get("distance")) for sc in scans)


def _positions_axis(ax, scans, unit_factor, unit):
    """Initial (grey rings) and final (dots) scan positions, with the displacement drawn between them."""
    shown = 0
    moved_any = False
    for label, sc in scans:
        final = np.asarray(sc["positions"], float).reshape(-1, 2) / unit_factor
        initial = sc.get("positions_initial")
        if initial is not None:
            initial = np.asarray(initial, float).reshape(-1, 2) / unit_factor
            if initial.shape == final.shape and np.any(initial != final):
                moved_any = True
                ax.plot(np.stack([initial[:, 1], final[:, 1]]), np.stack([initial[:, 0], final[:, 0]]),
                        color="tab:red", lw=0.8)
                ax.scatter(initial[:, 1], initial[:, 0], s=14, facecolors="none", edgecolors="0.5", lw=0.7,
                           label="initial" if not shown else None)
        ax.scatter(final[:, 1], final[:, 0], s=5, color="tab:blue",
                   label=("refined" if moved_any else "positions") if not shown else None)
        shown += 1
    ax.set_aspect("equal", adjustable="datalim")
    ax.invert_yaxis()
    ax.set_xlabel("x [%s]" % unit, fontsize=8)
    ax.set_ylabel("y [%s]" % unit, fontsize=8)
    ax.tick_params(labelsize=7)
    ax.set_title("scan positions" + (" (initial \u2192 refined)" if moved_any else ""), fontsize=9)
    if moved_any:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False, borderaxespad=0.0)


def _check_drawable(what, arr):
    if arr.ndim < 2 or min(arr.shape[-2:]) < 1:
        raise DataError("%s (shape %s): no pixels to draw" % (what, tuple(arr.shape)),
                        hint="the file may be damaged or cut short; check it with 'ptycli inspect --tree'",
                        validation=True)


def plot_reconstruction(rec, path, dpi=110, max_modes=4, title=None):
    """Draw a :class:`~ptycli.io.reconstruction.Reconstruction` and save it to ``path``.

    One row per object storage (amplitude and phase of the first mode, each
    slice of a multislice object in a row of its own, each
    with its colour bar, and the scan positions: initial and refined), one row
    per probe storage (up to ``max_modes`` modes, hue = phase, brightness =
    amplitude, with a colour wheel as key) and the error curves. Each row has
    its own columns, so no grid cell is left empty.

    Raises
    ------
    ptycli.errors.DataError
        An object or probe without pixels (a zero-width array).
    """
    Figure, Canvas = figure_module()
    objects = []  # (storage ID, layers, title tag): a multislice object gets one row per slice
    for sid, arr in rec.objects.items():
        n = int(rec.object_meta.get(sid, {}).get("slices", 1))
        objects += [(sid, arr[k:k + 1], " slice %d of %d" % (k + 1, n)) for k in range(n)] if n > 1 \
            else [(sid, arr, "")]
    probes = list(rec.probes.items())
    for sid, arr, _ in objects:
        _check_drawable("%s: object %s" % (rec.path, sid), np.asarray(arr))
    for sid, arr in probes:
        _check_drawable("%s: probe %s" % (rec.path, sid), np.asarray(arr))
    pixels = _nominal_pixels(rec)
    # one probe of one mode shares the last row with the error curves (the usual case)
    shared = len(probes) == 1 and probes[0][1].shape[0] == 1
    weights = [(label, sc) for label, sc in (rec.scans or {}).items() if sc.get("probe_weights") is not None]
    heights = [1.0] * (len(objects) + len(probes) - shared) + [0.8] * len(weights) + [1.0 if shared else 0.8]
    fig = Figure(figsize=(11.0, 3.3 * sum(heights)), layout="constrained")
    rows = list(np.atleast_1d(fig.subfigures(len(heights), 1, height_ratios=heights)))
    if shared:
        rows[-1:] = list(rows[-1].subfigures(1, 2, width_ratios=[1.3, 2.0]))
        if weights:  # the probe row comes before the weights
            rows = rows[:-len(weights) - 2] + [rows[-2]] + rows[-len(weights) - 2:-2] + [rows[-1]]
    r = 0
    for sid, obj, tag in objects:
        meta = dict(rec.object_meta.get(sid, {}))
        o = np.asarray(obj)[0]
        # where the scan illuminated the object: colour limits from there, crop to it
        positions, probe, scans = [], None, []
        for label, sc in (rec.scans or {}).items():
            if sc.get("object", sid) == sid and sc.get("positions") is not None:
                positions.append(np.asarray(sc["positions"], float).reshape(-1, 2))
                probe = rec.probes.get(sc.get("probe"), probe)
                scans.append((label, sc))
        if probe is None and rec.probes:
            probe = next(iter(rec.probes.values()))
        if tag and not tag.startswith(" slice 1 "):
            scans = []  # the positions once, beside the first slice
        illum = _illumination(o.shape, meta, np.concatenate(positions) if positions else None, probe)
        mask = None if illum is None else illum > 0.05 * illum.max()
        box = _crop_box(mask)
        if box is not None:
            o = o[box]
            mask = mask[box]
            center = np.broadcast_to(np.asarray(meta.get("center", np.array(obj.shape[-2:]) // 2), float), (2,))
            meta["center"] = center - np.array([box[0].start, box[1].start])
        if pixels:
            extent, unit = _extent(o.shape, 1.0, meta.get("center"))
            unit, factor = "pixel", 1.0
        else:
            extent, unit = _extent(o.shape, meta.get("psize"), meta.get("center"))
            factor = {"m": 1.0, "mm": 1e-3, "\u00b5m": 1e-6, "nm": 1e-9, "pm": 1e-12}.get(unit, 1.0)
        axes = rows[r].subplots(1, 3 if scans else 2)
        modes = " (mode 1 of %d)" % obj.shape[0] if obj.shape[0] > 1 else ""
        amp = np.abs(o)
        lo, hi = _limits(amp, mask)
        _image(rows[r], axes[0], amp, "object %s%s amplitude%s" % (sid, tag, modes), extent, unit, cmap="gray",
               vmin=lo, vmax=hi, label="amplitude")
        phase = _object_phase(o, mask)
        lo, hi = _limits(phase, mask)
        _image(rows[r], axes[1], phase, "object %s%s phase" % (sid, tag), extent, unit, cmap="twilight", vmin=lo,
               vmax=hi, label="rad")
        if scans:
            _positions_axis(axes[2], scans, factor, unit)
        r += 1
    for sid, probe in probes:
        meta = rec.probe_meta.get(sid, {})
        probe = np.asarray(probe)
        power = np.sum(np.abs(probe) ** 2, axis=(-2, -1))
        total = power.sum() or 1.0
        nmodes = min(probe.shape[0], max_modes)
        axes = np.atleast_1d(rows[r].subplots(1, nmodes + 1, width_ratios=[1.0] * nmodes + [0.45]))
        for k in range(nmodes):
            if pixels:
                extent, unit = _extent(probe.shape[-2:], 1.0, meta.get("center"))
                unit = "pixel"
            else:
                extent, unit = _extent(probe.shape[-2:], meta.get("psize"), meta.get("center"))
            _image(rows[r], axes[k], complex2rgb(probe[k]),
                   "probe %s %s %d (%.0f%% of the power)" % (
                       sid, "eigen-probe" if meta.get("variable_modes") else "mode", k + 1,
                       100.0 * power[k] / total), extent, unit, colorbar=False)
        _colour_wheel(axes[nmodes])
        r += 1
    for label, sc in weights:
        _weights_axis(rows[r].subplots(1, 1), label, sc)
        r += 1
    _errors_axis(rows[r].subplots(1, 1), rec.history, rec.engines)
    fig.suptitle(title or "%s: %d iterations (%s)" % (
        os.path.basename(rec.path), len(rec.history),
        ", ".join("%s %s" % (e["label"], e.get("iterations", "")) for e in rec.engines) or "no engines"),
        fontsize=10)
    return _save(fig, Canvas, path, dpi)


def _weights_axis(ax, label, sc):
    """A variable probe's weights against the frame index: ``|w_k|`` (solid) and ``Re w_k`` (dotted) per eigen-probe."""
    W = np.asarray(sc["probe_weights"])
    idx = np.asarray(sc.get("indices") if sc.get("indices") is not None else np.arange(len(W)))
    order = np.argsort(idx, kind="stable")
    for k in range(W.shape[1]):
        line, = ax.plot(idx[order], np.abs(W[order, k]), "-", lw=1.0, label="|w%d|" % (k + 1))
        ax.plot(idx[order], W[order, k].real, ":", lw=0.8, color=line.get_color())
    ax.set_xlabel("frame", fontsize=8)
    ax.set_ylabel("weight", fontsize=8)
    ax.set_title("scan %s: weights of the eigen-probes per frame (solid |w|, dotted Re w)" % label, fontsize=9)
    ax.legend(fontsize=7, ncol=min(W.shape[1], 8))
    ax.tick_params(labelsize=7)


def plot_data(data, path, dpi=110, title=None):
    """Draw a data file's mean diffraction pattern (log), scan positions and ground truth.

    ``data`` is a dict with ``intensities`` (N, H, W) (or ``mean`` (H, W)),
    ``positions`` (N, 2) (y, x), ``positions_unit``, and optionally
    ``ground_truth`` ({'object': ..., 'probe': ..., '<name>_psize_m': ...}) and ``label``.
    """
    Figure, Canvas = figure_module()
    if data.get("mean") is None:
        _check_drawable("%s: the frames" % (data.get("source") or data.get("label") or "data"),
                        np.asarray(data["intensities"]))
    gt = data.get("ground_truth") or {}
    truth = [(k, np.asarray(v)) for k, v in gt.items() if k in ("object", "probe")
             and isinstance(v, np.ndarray) and v.ndim >= 2]
    ncols = 2 + len(truth)
    wheel = any(np.iscomplexobj(a) for _, a in truth)  # the key of the complex images
    fig = Figure(figsize=(3.8 * ncols + 1.6 * wheel, 3.4), layout="constrained")
    grid = fig.add_gridspec(1, ncols + wheel, width_ratios=[1.0] * ncols + [0.45] * wheel)
    mean = data.get("mean")
    if mean is None:
        mean = np.mean(np.asarray(data["intensities"], dtype=np.float64), axis=0)
    ax = fig.add_subplot(grid[0, 0])
    logm = np.log10(np.maximum(mean, max(float(mean[mean > 0].min()) if np.any(mean > 0) else 1.0, 1e-12)))
    _image(fig, ax, logm, "mean diffraction (log10 counts)", None, "pixel", cmap="magma")
    ax = fig.add_subplot(grid[0, 1])
    pos = np.asarray(data["positions"], dtype=float).reshape(-1, 2)
    unit = data.get("positions_unit") or "m"
    if unit == "m" and len(pos):
        factor, unit = _si_scale(np.ptp(pos) if np.ptp(pos) > 0 else 1e-6)
        pos = pos / factor
    ax.plot(pos[:, 1], pos[:, 0], "-", color="0.8", lw=0.6)
    ax.scatter(pos[:, 1], pos[:, 0], c=np.arange(len(pos)), s=8, cmap="viridis")
    ax.set_aspect("equal")
    ax.invert_yaxis()
    ax.set_title("%d scan positions" % len(pos), fontsize=9)
    ax.set_xlabel("x [%s]" % unit, fontsize=8)
    ax.set_ylabel("y [%s]" % unit, fontsize=8)
    ax.tick_params(labelsize=7)
    for i, (name, arr) in enumerate(truth):
        a = arr.reshape((-1,) + arr.shape[-2:])[0]
        extent, u = _extent(a.shape, gt.get(name + "_psize_m"), None)
        _image(fig, fig.add_subplot(grid[0, 2 + i]), complex2rgb(a) if np.iscomplexobj(a) else a,
               "ground truth %s" % name, extent, u, colorbar=False)
    if wheel:
        _colour_wheel(fig.add_subplot(grid[0, ncols]))
    fig.suptitle(title or "%s (%d frames)" % (data.get("label") or "", len(pos)), fontsize=10)
    return _save(fig, Canvas, path, dpi)
