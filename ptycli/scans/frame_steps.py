"""The frame-preparation steps of a scan loader, each a small function on arrays.

:meth:`ptycli.scans.base.ScanLoader.load` reads the frames chunk by chunk and
passes each chunk through these steps (numbers as in the pipeline of
:mod:`ptycli.scans.base`):

* reader output checked: :func:`checked_frames`, :func:`checked_positions`,
  :func:`checked_indices`; per-frame or static arrays brought to frame stacks
  (:func:`as_stack`, :func:`static_frame`);
* 1-4, the corrections (:func:`correct_frames`): mask (:func:`frame_mask`),
  invalid values (:func:`invalid_values`), saturation markers
  (:func:`marker_pixels`, :func:`count_markers`), dark subtraction
  (:func:`subtract_dark`), flat-field division (:func:`normalise_flat`);
* 5-6, :func:`fftshift_frames`, :func:`orient`;
* 7, :func:`mass_center` (the 'auto' centre);
* 8-9, :func:`crop_pad` about the centre (:func:`padding_warning`), :func:`rebin`;
* 10, :func:`empty_frames`, :func:`transform_positions`.

Each function takes arrays and the names it needs for its messages (the
input's name ``source``, configuration paths); none reads files or talks to
other MPI ranks.
"""

import numpy as np

from ..core.counting_noise import whole_numbers
from ..errors import ConfigError, DataError
from ..log import get_logger

__all__ = ["FLOAT_MARKER", "marker_pixels", "as_stack", "static_frame", "checked_frames",
           "checked_positions", "checked_indices", "frame_mask", "negative_noise", "invalid_values", "count_markers",
           "subtract_dark", "normalise_flat", "correct_frames", "fftshift_frames", "orient",
           "orient_point", "oriented_shape", "crop_pad", "rebin", "mass_center", "padding_warning",
           "empty_frames", "transform_positions"]

logger = get_logger("ptycli.scans")


#: The marker of float frames: the uint32 maximum, as Eiger detectors flag dead and gap pixels
#: (kept when their frames are converted to floating point).
FLOAT_MARKER = 4294967295


def marker_pixels(frames):
    """Pixels holding a saturation or dead-pixel marker: the largest value of the frames' type.

    Integer frames: ``np.iinfo(dtype).max`` (65535 for uint16, 4294967295 for
    uint32: what detectors such as the Eiger write for saturated, dead and gap
    pixels). Float frames of at least single precision: :data:`FLOAT_MARKER`
    (as stored in that precision). Other types (bool) have no marker.

    Returns
    -------
    ndarray of bool or None
        Same shape as ``frames``; None when the type has no marker.
    """
    kind, size = frames.dtype.kind, frames.dtype.itemsize
    if kind in "ui":
        return frames == np.iinfo(frames.dtype).max
    if kind == "f" and size >= 4:
        return frames == frames.dtype.type(FLOAT_MARKER)
    return None


def as_stack(arr, n, frame_shape, what, source):
    """Broadcast a (h,w) or (n,h,w) array to (n,h,w); DataError on a shape mismatch."""
    arr = np.asarray(arr)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[-2:] != tuple(frame_shape) or arr.shape[0] not in (1, n):
        raise DataError("%s: %s has shape %s, expected %s or %s" % (
            source, what, arr.shape, tuple(frame_shape), (n,) + tuple(frame_shape)),
            hint="give a %s with the shape of the raw detector frames" % what)
    return arr


def static_frame(arr, raw_shape, what, source, param=None, path=None):
    """A frame-independent mask, dark or flat as one (h, w) frame of the raw shape.

    A (k, h, w) dark or flat stack is averaged; a (1, h, w) array loses its
    first axis. A shape mismatch is a ConfigError naming ``param`` (``path``)
    for a file given in the configuration, else a DataError naming the input.
    """
    arr = np.asarray(arr)
    if arr.ndim == 3 and what in ("dark", "flat"):
        arr = arr.mean(axis=0)
    elif arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.shape != tuple(raw_shape):
        where = "%s (%s)" % (param, path) if param else "%s of %s" % (what, source)
        cls = ConfigError if param else DataError
        raise cls("%s: %s shape %s does not match the frame shape %s" % (
            where, what, arr.shape, tuple(raw_shape)),
            hint="give a %s of the raw detector frame's shape" % what)
    return arr


def checked_frames(got, c0, c1, raw_shape, source, loader):
    """The frames of a ``read_frames(c0, c1)`` result ``got``, checked: (n, h, w) numbers.

    DataError naming ``source`` when ``loader`` returned no data or positions,
    frames of another shape, or values that are not numbers.
    """
    n = c1 - c0
    if "data" not in got or "positions" not in got:
        raise DataError("%s: loader %s returned no data/positions" % (source, loader))
    d = np.asarray(got["data"])
    if d.ndim == 2 and n == 1:
        d = d[None]
    if d.ndim != 3 or d.shape != (n,) + tuple(raw_shape):
        raise DataError("%s: frames %d..%d have shape %s, expected %s" % (
            source, c0, c1 - 1, d.shape, (n,) + tuple(raw_shape)))
    if d.dtype.kind not in "biuf":
        raise DataError("%s: frames %d..%d hold %s values, expected numbers (counts)" % (
            source, c0, c1 - 1, d.dtype))
    return d


def checked_positions(pos, c0, c1, source):
    """``pos`` (float64) when it holds one finite (y, x) pair per frame ``c0 .. c1-1``; DataError otherwise."""
    n = c1 - c0
    if pos.ndim != 2 or pos.shape[1] != 2 or pos.shape[0] != n:
        raise DataError("%s: %s positions for frames %d..%d (%d frames); expected (%d, 2)" % (
            source, pos.shape, c0, c1 - 1, n, n),
            hint="give one (y, x) position per frame")
    nonfinite = int(np.count_nonzero(~np.isfinite(pos).all(axis=1)))
    if nonfinite:
        raise DataError("%s: %d positions of frames %d..%d are not finite (NaN or Inf)"
                        % (source, nonfinite, c0, c1 - 1),
                        hint="fix the positions or limit num_frames")
    return pos


def checked_indices(idx, n, source):
    """The global frame indices a reader returned (or None), as (n,) int64; DataError on a count mismatch."""
    if idx is None:
        return None
    idx = np.asarray(idx, dtype=np.int64).reshape(-1)
    if idx.shape != (n,):
        raise DataError("%s: %d indices for %d frames" % (source, idx.size, n))
    return idx


# -- 1-4: corrections -------------------------------------------------------------


def frame_mask(frames_mask, static_mask, shape, raw_shape, source):
    """Step 1: the valid pixels of a chunk of ``shape``: the reader's mask AND the static one."""
    valid = np.ones(shape, dtype=bool)
    if frames_mask is not None:
        valid &= as_stack(frames_mask, shape[0], raw_shape, "mask", source) != 0
    if static_mask is not None:
        valid &= static_mask
    return valid


#: ``negative_values: auto`` on float frames: a pixel negative in at least this fraction of a chunk's frames
#: holds a flag (a gap, a dead pixel), not read noise around a dim intensity
FLAG_FRACTION = 0.9


def negative_noise(d, mode, raw_kind):
    """The negative values of a chunk that are read noise (to be clipped to 0 and kept), per ``mode``.

    ``negative_values`` (see the scan parameters): ``mask`` -> none (every
    negative is a flag), ``clip`` -> all, ``auto`` -> none in frames of
    counts (an integer ``raw_kind``, or float frames whose finite values are
    all whole numbers: counts are never negative, a negative is a flag), and
    in other float frames those at pixels negative in fewer than
    :data:`FLAG_FRACTION` of the chunk's frames. Dark-subtracted float frames
    (CCD, sCMOS, integrating electron detectors) scatter around zero where
    the intensity is dim; masking their negatives keeps only the upward
    noise there, a bias that costs low-dose reconstructions (zoo, zone plate,
    1e5 photons per frame, Gaussian read noise sigma 3, DM + ML: object
    correlation 0.730 masked, 0.787 clipped).
    """
    with np.errstate(invalid="ignore"):
        negative = d < 0
    if mode == "clip":
        return negative
    if mode == "mask" or raw_kind != "f" or not negative.any():
        return np.zeros_like(negative)
    if whole_numbers(d):  # counts stored as floats
        return np.zeros_like(negative)
    flagged = negative.mean(axis=0) >= FLAG_FRACTION
    return negative & ~flagged


def invalid_values(d, dark, noise=None):
    """Step 2: NaN, +-Inf and negative raw values other than ``noise``, and pixels where the ``dark`` is not finite."""
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(d) | (d < 0)
    if noise is not None:
        bad &= ~noise
    if dark is not None:
        bad |= ~np.isfinite(np.broadcast_to(dark, d.shape))
    return bad


def count_markers(sat, usable, c0, source, num_frames_param):
    """Count the marker pixels among the usable ones (``sat`` is narrowed to those, in place).

    Returns ``(pixels, frames)``; a frame whose usable pixels all hold the
    marker (a saturated or blank frame) is a DataError naming it.
    """
    sat &= usable
    n = sat.shape[0]
    per_frame = sat.reshape(n, -1).sum(axis=1)
    usable_per_frame = usable.reshape(n, -1).sum(axis=1)
    full = np.flatnonzero((per_frame > 0) & (per_frame == usable_per_frame))
    if full.size:
        raise DataError("%s: frame %d (and %d more in frames %d..%d) holds the saturation/dead-pixel marker "
                        "(the largest value of its data type) in every pixel; such a frame holds no counts"
                        % (source, c0 + int(full[0]), full.size - 1, c0, c0 + n - 1),
                        hint="leave the frame out (%s) or check the dataset of the frames"
                        % num_frames_param, validation=True)
    return int(per_frame.sum()), int(np.count_nonzero(per_frame))


def subtract_dark(d, dark, bad):
    """Step 3, in place: ``d - dark``, bad pixels back to 0, negative results (noise) clipped to 0."""
    with np.errstate(invalid="ignore"):
        d -= np.asarray(dark, dtype=np.float32)
    d[bad] = 0.0
    np.maximum(d, 0.0, out=d)


def normalise_flat(flat, source, flat_param):
    """Step 4: the flat field scaled to a mean of 1 over its usable pixels, and those pixels.

    Returns ``(flat, ok)``: unusable pixels (not positive and finite) hold 1
    and are False in ``ok``. DataError when no pixel is usable.
    """
    flat = np.asarray(flat, dtype=np.float64)
    ok = np.isfinite(flat) & (flat > 0)
    if not ok.any():
        raise DataError("%s: the flat field has no positive values" % source,
                        hint="check %s" % flat_param)
    return np.where(ok, flat / flat[ok].mean(), 1.0), ok


def correct_frames(d, got, static, raw_shape, c0, source, where, negative_values="auto"):
    """Steps 1-4 on one chunk of raw frames ``d`` (frames ``c0 ..``), as read with ``got``.

    Parameters
    ----------
    d : ndarray (n, h, w)
        The raw frames (any number type; :func:`checked_frames`).
    got : dict
        The reader's result: its optional per-frame ``mask``, ``dark``, ``flat``,
        and ``frame_scale`` (n,): factors applied after the flat (a monitor's
        ``mean / value``; a frame whose factor is not positive is masked).
    static : dict
        Frame-independent ``mask`` (bool), ``dark``, ``flat`` with its usable
        pixels ``flat_ok`` (:func:`normalise_flat`); each None when absent.
        They take precedence over the reader's per-frame dark and flat.
    raw_shape : tuple
        Raw frame shape.
    c0 : int
        Global index of the first frame (for messages).
    source : str
        The input, for messages.
    where : callable
        ``where(key)``: the configuration path of a data parameter.
    negative_values : {'auto', 'mask', 'clip'}
        What a negative raw value is (:func:`negative_noise`): noise is set to
        0 and kept valid, a flag is masked with the invalid values.

    Returns
    -------
    d : ndarray (n, h, w) float32
        Corrected frames; invalid pixels hold 0.
    valid : ndarray of bool
    counts : tuple of 6 int
        Invalid-value pixels and frames, marker pixels and frames, negative
        values clipped as noise and their frames.
    """
    n = d.shape[0]
    sat = marker_pixels(d)  # on the raw type: float32 cannot tell 4294967295 from its neighbours
    noise = negative_noise(d, negative_values, d.dtype.kind)
    d = d.astype(np.float32, copy=True)
    valid = frame_mask(got.get("mask"), static["mask"], d.shape, raw_shape, source)
    dark = static["dark"]
    if dark is None and got.get("dark") is not None:
        dark = as_stack(got["dark"], n, raw_shape, "dark", source)
    bad = invalid_values(d, dark, noise)
    nbad_pix = int(np.count_nonzero(bad))
    nbad_frames = int(np.count_nonzero(bad.reshape(n, -1).any(axis=1)))
    noise &= valid
    nnoise = (int(np.count_nonzero(noise)), int(np.count_nonzero(noise.reshape(n, -1).any(axis=1))))
    nsat = count_markers(sat, valid & ~bad, c0, source, where("num_frames")) if sat is not None else (0, 0)
    if nsat[0]:
        bad |= sat
    d[bad] = 0.0
    if dark is None:
        d[noise] = 0.0  # with a dark, the subtraction clips it (step 3)
    valid &= ~bad
    if dark is not None:
        subtract_dark(d, dark, bad)
    flat, ok = static["flat"], static["flat_ok"]
    if flat is None and got.get("flat") is not None:
        flat, ok = normalise_flat(as_stack(got["flat"], n, raw_shape, "flat", source), source, where("flat"))
    if flat is not None:
        d /= flat.astype(np.float32)
        valid &= ok
    scale = got.get("frame_scale")
    if scale is not None:  # a per-frame monitor: frames where it is not positive are masked
        scale = np.asarray(scale, dtype=np.float64).reshape(-1)
        if scale.size != n:
            raise DataError("%s: %d frame scales for %d frames (frames %d..)" % (source, scale.size, n, c0))
        usable = np.isfinite(scale) & (scale > 0)
        d *= np.where(usable, scale, 0.0).astype(np.float32)[:, None, None]
        valid &= usable[:, None, None]
    d[~valid] = 0.0
    return d, valid, (nbad_pix, nbad_frames) + tuple(nsat) + nnoise


# -- 5-9: geometry of the frames ----------------------------------------------------


#: (message kind, source) already announced in this process: a run opens its input twice
#: (checked before computing, then loaded), the info lines are printed once
_ANNOUNCED = set()


def announce(kind, source, message, *args):
    """Log ``message`` at INFO once per process for each ``(kind, source)``."""
    if (kind, source) not in _ANNOUNCED:
        _ANNOUNCED.add((kind, source))
        logger.info(message, *args)


def detect_fftshift(frames, mask=None):
    """Whether frames are stored FFT-shifted, and where their intensity maximum is.

    The frames are summed (NaN and negative values count as 0), smoothed over
    3 x 3 pixels (cyclically) and the maximum is taken: it lies within a
    quarter of the frame of a corner for FFT-shifted frames, and near the
    centre for centred ones.

    Parameters
    ----------
    frames : array_like
        (n, H, W) frames (a few are enough).
    mask : array_like, optional
        (H, W) or (n, H, W), nonzero = valid.

    Returns
    -------
    (bool, (int, int))
        Shifted or not, and the (row, column) of the maximum.
    """
    d = np.asarray(frames, dtype=np.float64)
    if d.ndim == 2:
        d = d[None]
    d = np.where(np.isfinite(d) & (d > 0), d, 0.0)
    if mask is not None:
        d = d * (np.asarray(mask) != 0)
    total = d.sum(axis=0)
    smooth = sum(np.roll(np.roll(total, dy, 0), dx, 1) for dy in (-1, 0, 1) for dx in (-1, 0, 1))
    h, w = total.shape
    row, col = (int(v) for v in np.unravel_index(int(np.argmax(smooth)), smooth.shape))
    if not smooth[row, col] > 0:
        return False, (row, col)

    def near_edge(i, n):
        return i < n / 4.0 or i >= 3.0 * n / 4.0

    return bool(near_edge(row, h) and near_edge(col, w)), (row, col)


def fftshift_frames(d, mk):
    """Step 5: frames and mask with the zero frequency moved from pixel [0, 0] to the centre."""
    return np.fft.fftshift(d, axes=(-2, -1)), np.fft.fftshift(mk, axes=(-2, -1))


def orient(a, flags):
    """Apply (transpose, flipud, fliplr) to the last two axes of ``a``."""
    transpose, flipud, fliplr = flags
    if transpose:
        a = np.swapaxes(a, -1, -2)
    if flipud:
        a = a[..., ::-1, :]
    if fliplr:
        a = a[..., :, ::-1]
    return a


def orient_point(point, shape, flags):
    """Map a (row, col) point of a frame of ``shape`` through :func:`orient`."""
    y, x = float(point[0]), float(point[1])
    h, w = shape
    transpose, flipud, fliplr = flags
    if transpose:
        y, x, h, w = x, y, w, h
    if flipud:
        y = h - 1 - y
    if fliplr:
        x = w - 1 - x
    return np.array([y, x])


def oriented_shape(shape, flags):
    """The frame shape after :func:`orient` (a transpose swaps the sides)."""
    return (shape[1], shape[0]) if flags[0] else tuple(shape)


def crop_pad(a, mask, center, target):
    """Crop/pad the last two axes so that pixel ``center`` lands at ``target // 2``.

    Returns new (data, mask); padded pixels hold 0 and are masked.
    """
    n = a.shape[0]
    h, w = a.shape[-2:]
    th, tw = target
    cy, cx = (int(np.floor(c + 0.5)) for c in center)
    y0, x0 = cy - th // 2, cx - tw // 2
    out = np.zeros((n, th, tw), dtype=a.dtype)
    outm = np.zeros((n, th, tw), dtype=bool)
    sy0, sy1 = max(y0, 0), min(y0 + th, h)
    sx0, sx1 = max(x0, 0), min(x0 + tw, w)
    if sy1 > sy0 and sx1 > sx0:
        out[:, sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = a[:, sy0:sy1, sx0:sx1]
        outm[:, sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = mask[:, sy0:sy1, sx0:sx1]
    return out, outm


def rebin(a, mask, r):
    """Sum r x r blocks; a block is valid only when all its pixels are."""
    if r == 1:
        return a, mask
    n, h, w = a.shape
    a = a.reshape(n, h // r, r, w // r, r).sum(axis=(2, 4), dtype=np.float64)
    m = mask.reshape(n, h // r, r, w // r, r).all(axis=(2, 4))
    a = np.where(m, a, 0.0).astype(np.float32)
    return a, m


def mass_center(total, oshape, source):
    """Step 7, 'auto': the (row, col) mass centre of the summed frames ``total``.

    The frame centre (with a warning) when they hold no counts.
    """
    s = total.sum()
    if not s > 0:
        logger.warning("%s: no counts to find the diffraction centre; using the frame "
                       "centre", source)
        return np.array([sh // 2 for sh in oshape], dtype=float)
    yy = np.arange(oshape[0], dtype=np.float64)
    xx = np.arange(oshape[1], dtype=np.float64)
    cy = float((total.sum(axis=1) * yy).sum() / s)
    cx = float((total.sum(axis=0) * xx).sum() / s)
    logger.debug("%s: diffraction centre (mass centre) at %.2f, %.2f", source, cy, cx)
    return np.array([cy, cx])


def padding_warning(center, oshape, target, rebin, source, where):
    """One warning when the crop window (``target`` about ``center``) leaves the frame.

    A ``shape`` larger than the detector frame (or a centre near its edge)
    pads the frames; the padded pixels are masked, so they are not fitted,
    but the user should know that part of every frame holds no data.
    ``where(key)`` gives the configuration path of a data parameter.
    """
    cy, cx = (int(np.floor(c + 0.5)) for c in center)
    inside = 1
    for c, t, n in ((cy, target[0], oshape[0]), (cx, target[1], oshape[1])):
        lo = c - t // 2
        inside *= max(0, min(lo + t, n) - max(lo, 0))
    padded = target[0] * target[1] - inside
    if padded <= 0:
        return
    total = target[0] * target[1]
    if target[0] > oshape[0] or target[1] > oshape[1]:
        why = "the crop shape %s is larger than the detector frame %s" % (
            tuple(t // rebin for t in target), tuple(oshape))
        fix = "; set %s to at most %s to avoid it" % (
            where("shape"), tuple(s // rebin for s in oshape))
    else:
        why = "the crop window %s about the centre (%.1f, %.1f) reaches outside the detector frame %s" % (
            tuple(target), center[0], center[1], tuple(oshape))
        fix = "; check %s" % where("center")
    logger.warning("%s: %s: %d of %d pixels (%.0f%%) of every frame are padding, masked (not fitted)%s",
                   source, why, padded, total, 100.0 * padded / total, fix)


# -- 10: final checks -------------------------------------------------------------------


def empty_frames(intens):
    """How many of the prepared frames ``intens`` hold no counts in their valid pixels."""
    n = intens.shape[0]
    return int(np.count_nonzero(~(intens.reshape(n, -1).sum(axis=1) > 0))) if n else 0


def transform_positions(positions, swap, flip, scale):
    """Positions with ``positions_swap`` (y <-> x), ``positions_flip`` ((y, x) booleans) and ``positions_scale``."""
    if swap:
        positions = positions[:, ::-1].copy()
    fy, fx = flip
    if fy:
        positions[:, 0] *= -1
    if fx:
        positions[:, 1] *= -1
    if scale is not None and scale != 1:
        positions *= float(scale)
    return positions
