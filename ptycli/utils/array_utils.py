"""Array helpers: coordinate grids, norms, smooth steps, crop/pad, zoom, rebin.

Conventions
-----------
* Arrays are indexed ``[..., row, col]``; pairs are ``(y, x)`` = ``(row, col)``.
* Physical coordinates are ``(index - center) * psize``, with ``center`` in
  pixels and ``psize`` in metres (or whatever unit the caller uses; the
  functions here never assume one).
* Energies are in keV, wavelengths in metres.
"""

import math
import os

import numpy as np

__all__ = [
    "expect2",
    "checked_pair",
    "grids",
    "abs2",
    "norm2",
    "norm",
    "smooth_step",
    "crop_pad",
    "crop_pad_symmetric_2d",
    "zoom",
    "bilinear",
    "gaussian_wrap",
    "rebin",
    "mass_center",
    "keV2m",
    "m2keV",
    "clean_path",
]

#: h * c in keV * m: ``wavelength [m] = HC_KEV_M / energy [keV]``.
HC_KEV_M = 1.23984193e-9


def expect2(a):
    """Return ``a`` as a float pair ``(y, x)``; a scalar is used for both.

    Parameters
    ----------
    a : scalar or sequence of length 1 or 2
        Value(s) for the two trailing axes.

    Returns
    -------
    numpy.ndarray
        Shape ``(2,)``, dtype float64.
    """
    arr = np.asarray(a, dtype=float).ravel()
    if arr.size == 1:
        return np.array([arr[0], arr[0]])
    if arr.size != 2:
        raise ValueError("expected a scalar or a pair, got %r" % (a,))
    return arr.copy()


def checked_pair(value, name, kind=float, positive=False):
    """A finite scalar or pair ``(y, x)`` as an ndarray of 2, checked and named in errors.

    Parameters
    ----------
    value : scalar or sequence of length 1 or 2
        The value; a scalar is used for both axes.
    name : str
        What the value is, for the ValueError messages.
    kind : type
        ``float`` (default) or ``int``: integer-valued entries, returned as ints.
    positive : bool
        Refuse entries that are not > 0.

    Returns
    -------
    numpy.ndarray
        Shape ``(2,)``, float64 (int for ``kind=int``).
    """
    arr = np.asarray(value, dtype=float).ravel()
    if arr.size == 1:
        arr = np.array([arr[0], arr[0]])
    elif arr.size != 2:
        raise ValueError("%s must be a scalar or a pair (y, x), got %r" % (name, value))
    if not np.all(np.isfinite(arr)):
        raise ValueError("%s must be finite, got %r" % (name, value))
    if positive and np.any(arr <= 0):
        raise ValueError("%s must be > 0, got %r" % (name, value))
    if kind is int:
        iarr = np.rint(arr)
        if np.any(np.abs(iarr - arr) > 1e-9):
            raise ValueError("%s must be integer, got %r" % (name, value))
        return iarr.astype(int)
    return arr


def _shape2(shape):
    """Normalise ``shape`` to a tuple of ints with at least two entries."""
    if np.isscalar(shape):
        n = int(shape)
        return (n, n)
    shape = tuple(int(s) for s in shape)
    if len(shape) == 1:
        return shape * 2
    if len(shape) == 0:
        raise ValueError("shape must not be empty")
    return shape


def grids(shape, psize=1.0, center="geometric", full=False):
    """Coordinate grids ``(y, x)`` over the last two axes of ``shape``.

    Pixel ``i`` along an axis sits at ``(i - center) * psize``.

    Parameters
    ----------
    shape : int or sequence of int
        Array shape.  An int ``n`` means ``(n, n)``.  Leading dimensions
        (e.g. ``(layers, rows, cols)``) are allowed; see ``full``.
    psize : float or pair of float
        Pixel size per axis ``(y, x)`` in physical units (e.g. metres).
    center : 'geometric', 'midpoint', 'fft', float or pair of float
        Pixel position (row, col) of the coordinate origin:

        * ``'geometric'`` (default): pixel ``shape // 2``, the convention of
          storages and of centred (``fftshift``-ed) diffraction data; for odd
          sizes this is the exact middle of the array.
        * ``'midpoint'``: ``(shape - 1) / 2``, the exact middle also for even
          sizes (half-integer centre, coordinates symmetric about zero).
        * ``'fft'``: unshifted FFT order: the origin at pixel 0 and pixels
          beyond ``shape // 2`` wrapped to negative coordinates
          (``fftfreq(n) * n * psize``).
        * a number or ``(row, col)`` pair of (fractional) pixel positions.
    full : bool
        If True and ``shape`` has leading dimensions, each grid has the full
        ``shape``; otherwise each grid has shape ``shape[-2:]``.

    Returns
    -------
    numpy.ndarray
        Shape ``(2,) + grid_shape``, float64: ``grids(...)[0]`` is ``y`` (varies
        along rows), ``[1]`` is ``x`` (varies along columns); unpack with
        ``y, x = grids(...)``.

    Examples
    --------
    >>> y, x = grids(3)
    >>> x[0]
    array([-1.,  0.,  1.])
    """
    shape = _shape2(shape)
    rows, cols = shape[-2:]
    ps = expect2(psize)
    n = np.array([rows, cols])
    axes = []
    if isinstance(center, str):
        if center == "geometric":
            cen = n // 2
        elif center == "midpoint":
            cen = (n - 1) / 2.0
        elif center == "fft":
            axes = [np.fft.fftfreq(m) * m * p for m, p in zip(n, ps)]
        else:
            raise ValueError("unknown center %r (use 'geometric', 'midpoint', 'fft' "
                             "or pixel coordinates)" % center)
    else:
        cen = expect2(center)
    if not axes:
        axes = [(np.arange(m) - c) * p for m, c, p in zip(n, cen, ps)]
    y = np.broadcast_to(axes[0][:, None], (rows, cols))
    x = np.broadcast_to(axes[1][None, :], (rows, cols))
    out_shape = shape if (full and len(shape) > 2) else (rows, cols)
    out = np.empty((2,) + out_shape)
    out[0] = y
    out[1] = x
    return out


def abs2(a):
    """Squared modulus ``|a|**2``, element-wise.

    Parameters
    ----------
    a : array_like
        Real or complex values.

    Returns
    -------
    numpy.ndarray
        Real array (float32 for complex64/float32 input, float64 for
        complex128/float64, float64 for integers).
    """
    a = np.asarray(a)
    if np.iscomplexobj(a):
        return a.real * a.real + a.imag * a.imag
    if a.dtype.kind != "f":
        a = a.astype(np.float64)
    return a * a


def norm2(a):
    """Squared L2 norm ``sum(|a|**2)`` (accumulated in double precision).

    Parameters
    ----------
    a : array_like
        Real or complex values (e.g. a wave field; the result is then its
        total intensity in photons when ``a`` is in sqrt(photons)).

    Returns
    -------
    float
    """
    return float(np.sum(abs2(a), dtype=np.float64))


def norm(a):
    """L2 norm ``sqrt(sum(|a|**2))``: the square root of :func:`norm2` (same argument), a float."""
    return float(np.sqrt(norm2(a)))


def _erf(x):
    """The error function of each element of ``x`` (float64): the C library's ``erf`` through :mod:`math`.

    (:func:`scipy.special.erf` would load scipy.special and its shared libraries into every
    reconstruction, for arrays of frame size at most, made once per probe model or support.)
    """
    return np.asarray(_ERF(x), dtype=float)


_ERF = np.frompyfunc(math.erf, 1, 1)


def smooth_step(x, mfs):
    """A smooth step from 0 (``x << 0``) to 1 (``x >> 0``), 0.5 at ``x = 0``.

    ``0.5 * (1 + erf(2 * sqrt(ln 2) * x / mfs))``: the derivative is a
    Gaussian whose full width at half maximum is ``mfs``.  At ``x = mfs``
    the step is at 0.99, at ``x = -mfs`` at 0.01.

    Parameters
    ----------
    x : array_like
        Signed distance from the edge, in physical units (e.g. metres);
        positive inside.
    mfs : float
        Width of the transition ("minimum feature size"), same unit as ``x``.
        ``0`` gives a hard step (1 for ``x > 0``, 0.5 at 0, 0 for ``x < 0``).

    Returns
    -------
    numpy.ndarray or float
        Values in ``[0, 1]``, same shape as ``x``.

    Examples
    --------
    >>> y, x = grids(64, psize=1e-6)
    >>> aperture = smooth_step(20e-6 - np.sqrt(x**2 + y**2), 1e-6)
    """
    x = np.asarray(x, dtype=float)
    if mfs < 0:
        raise ValueError("mfs must be >= 0")
    if mfs == 0:
        out = np.where(x > 0, 1.0, np.where(x < 0, 0.0, 0.5))
    else:
        out = 0.5 * (1.0 + _erf(x * (2.0 * np.sqrt(np.log(2.0)) / mfs)))
    return out if out.ndim else float(out)


def _hplanes_per_axis(hplanes, naxes):
    """Expand ``hplanes`` into ``naxes`` ``(low, high)`` int pairs."""
    if np.isscalar(hplanes):
        return [(int(hplanes), int(hplanes))] * naxes
    hp = list(hplanes)
    if len(hp) != naxes:
        raise ValueError("hplanes needs one entry per axis (%d), got %r" % (naxes, hplanes))
    out = []
    for h in hp:
        if np.isscalar(h):
            out.append((int(h), int(h)))
        else:
            lo, hi = h
            out.append((int(lo), int(hi)))
    return out


def crop_pad(a, hplanes, axes=(-2, -1), fillpar=0.0, filltype="scalar"):
    """Pad (positive) or crop (negative) an array at both ends of some axes.

    Parameters
    ----------
    a : array_like
        Input array.
    hplanes : int or sequence
        Pixels to add (> 0) or remove (< 0) at *each* end of each axis in
        ``axes``: an int for all axes, or one entry per axis, each an int
        (same at both ends) or a ``(low, high)`` pair.  ``crop_pad(a, 2)``
        grows a ``(10, 10)`` array to ``(14, 14)``; ``crop_pad(a, -2)``
        shrinks it to ``(6, 6)``.
    axes : int or sequence of int
        Axes to work on (default the last two).
    fillpar : scalar
        Value of new pixels when ``filltype='scalar'``.
    filltype : 'scalar', 'mirror', 'periodic' or 'edge'
        How new pixels are filled: ``fillpar``, mirrored content, periodic
        continuation, or the edge value repeated.

    Returns
    -------
    numpy.ndarray
        A new array of the same dtype.
    """
    a = np.asarray(a)
    axes = [axes] if np.isscalar(axes) else list(axes)
    axes = [ax % a.ndim for ax in axes]
    pairs = _hplanes_per_axis(hplanes, len(axes))
    # crop first
    index = [slice(None)] * a.ndim
    pad = [(0, 0)] * a.ndim
    for ax, (lo, hi) in zip(axes, pairs):
        n = a.shape[ax]
        start = -lo if lo < 0 else 0
        stop = n + hi if hi < 0 else n
        if stop < start:
            raise ValueError("cannot crop %d pixels from an axis of length %d" % (-lo - hi, n))
        index[ax] = slice(start, stop)
        pad[ax] = (max(lo, 0), max(hi, 0))
    out = a[tuple(index)]
    if not any(p != (0, 0) for p in pad):
        return out.copy()
    modes = {"scalar": "constant", "mirror": "symmetric", "periodic": "wrap", "edge": "edge"}
    if filltype not in modes:
        raise ValueError("filltype must be one of %s" % ", ".join(modes))
    if filltype == "scalar":
        return np.pad(out, pad, mode="constant", constant_values=fillpar)
    return np.pad(out, pad, mode=modes[filltype])


def crop_pad_symmetric_2d(a, newshape, center=None, fillpar=0.0):
    """Crop or pad the last two axes to ``newshape`` about a centre pixel.

    The pixel ``round(center)`` of ``a`` ends up at ``newshape // 2``; regions
    outside ``a`` are filled with ``fillpar``.  Typical use: cut diffraction
    frames to a square around the beam centre.

    Parameters
    ----------
    a : array_like
        Array of shape ``(..., rows, cols)``.
    newshape : int or pair of int
        New ``(rows, cols)``.
    center : pair of float, optional
        Pixel position ``(row, col)`` in ``a`` to centre on; default
        ``shape[-2:] // 2``.
    fillpar : scalar
        Value for pixels that lie outside ``a``.

    Returns
    -------
    out : numpy.ndarray
        Shape ``a.shape[:-2] + newshape``, dtype of ``a``.
    new_center : numpy.ndarray
        Where ``center`` lies in ``out`` (float pair; ``newshape // 2`` plus
        the fractional part of ``center``'s offset from its rounded pixel).
    """
    a = np.asarray(a)
    new = np.array(_shape2(newshape)[-2:], dtype=int)
    old = np.array(a.shape[-2:], dtype=int)
    cen = old // 2 if center is None else expect2(center)
    offset = np.rint(cen).astype(int) - new // 2  # out[i] = a[i + offset]
    out = np.full(a.shape[:-2] + tuple(new), fillpar, dtype=a.dtype)
    src, dst = [], []
    for o, n_old, n_new in zip(offset, old, new):
        lo = max(0, -o)
        hi = min(n_new, n_old - o)
        if hi <= lo:
            src.append(slice(0, 0))
            dst.append(slice(0, 0))
        else:
            dst.append(slice(lo, hi))
            src.append(slice(lo + o, hi + o))
    out[(Ellipsis,) + tuple(dst)] = a[(Ellipsis,) + tuple(src)]
    return out, np.asarray(cen, dtype=float) - offset


def zoom(a, factor, order=1, **kwargs):
    """Resample an array by spline interpolation (``scipy.ndimage.zoom``).

    Complex arrays are zoomed as real and imaginary parts separately.

    Parameters
    ----------
    a : array_like
        Input array (real or complex).
    factor : float or sequence of float
        Zoom factor for all axes, or one per axis (use ``(1, f, f)`` to zoom
        only the last two axes of a stack).
    order : int
        Spline order (0-5; default 1, linear).
    **kwargs
        Passed to ``scipy.ndimage.zoom`` (``mode``, ``grid_mode``, ...).

    Returns
    -------
    numpy.ndarray
        Shape ``round(shape * factor)``, same dtype as ``a``.
    """
    from scipy import ndimage

    a = np.asarray(a)
    if np.iscomplexobj(a):
        re = ndimage.zoom(np.ascontiguousarray(a.real), factor, order=order, **kwargs)
        im = ndimage.zoom(np.ascontiguousarray(a.imag), factor, order=order, **kwargs)
        out = np.empty(re.shape, dtype=a.dtype)
        out.real = re
        out.imag = im
        return out
    return ndimage.zoom(a, factor, order=order, **kwargs)


def bilinear(image, y, x, wrap=False):
    """Values of the 2-D ``image`` at fractional pixel coordinates ``(y, x)`` by bilinear interpolation.

    Parameters
    ----------
    image : ndarray (rows, cols), real
        Samples at integer pixel coordinates.
    y, x : ndarray
        Coordinates (pixels, broadcast together), along rows and columns.
    wrap : bool
        ``True``: the image is periodic (coordinates taken modulo the shape,
        the last pixel interpolated towards the first). ``False``: points
        outside ``0 .. rows - 1`` or ``0 .. cols - 1`` give 0.

    Returns
    -------
    ndarray
        The interpolated values, shape of ``y`` and ``x`` broadcast, in the
        image's dtype (computed in float64).
    """
    image = np.asarray(image)
    h, w = image.shape
    y, x = np.broadcast_arrays(np.asarray(y, dtype=np.float64), np.asarray(x, dtype=np.float64))
    if wrap:
        y = np.mod(y, h)
        x = np.mod(x, w)
        inside = None
    else:
        inside = (y >= 0) & (y <= h - 1) & (x >= 0) & (x <= w - 1)
        y = np.clip(y, 0, h - 1)
        x = np.clip(x, 0, w - 1)
    y0 = np.floor(y).astype(np.intp)
    x0 = np.floor(x).astype(np.intp)
    fy = y - y0
    fx = x - x0
    if wrap:
        y0 %= h  # np.mod can round a tiny negative coordinate up to the shape itself
        x0 %= w
        y1 = (y0 + 1) % h
        x1 = (x0 + 1) % w
    else:
        y1 = np.minimum(y0 + 1, h - 1)
        x1 = np.minimum(x0 + 1, w - 1)
    data = image.astype(np.float64, copy=False)
    out = ((data[y0, x0] * (1 - fx) + data[y0, x1] * fx) * (1 - fy)
           + (data[y1, x0] * (1 - fx) + data[y1, x1] * fx) * fy)
    if inside is not None:
        out = np.where(inside, out, 0.0)
    return out.astype(image.dtype, copy=False)


def gaussian_wrap(stack, sigma):
    """Gaussian smoothing of the last two axes of ``stack`` with periodic boundaries.

    One separable pass per axis with the kernel ``exp(-d^2 / (2 sigma^2))``,
    normalised, truncated at ``4 sigma``; each axis's result is cast back to
    the input's dtype (as ``scipy.ndimage.gaussian_filter(..., mode='wrap')``).

    Parameters
    ----------
    stack : ndarray (..., rows, cols), real
    sigma : float
        Width (pixels, > 0).

    Returns
    -------
    ndarray
        The smoothed stack, same shape and dtype as ``stack``.
    """
    stack = np.asarray(stack)
    radius = int(4.0 * float(sigma) + 0.5)
    offsets = np.arange(-radius, radius + 1)
    weights = np.exp(-0.5 * (offsets / float(sigma)) ** 2)
    weights /= weights.sum()
    out = stack
    for axis in (-2, -1):
        total = np.zeros(out.shape, dtype=np.float64)
        for d, wgt in zip(offsets, weights):
            total += wgt * np.roll(out, -int(d), axis=axis)
        out = total.astype(stack.dtype, copy=False)
    return out


def rebin(a, *factors, trim=False):
    """Sum blocks of pixels (binning).

    Parameters
    ----------
    a : array_like
        Input array.
    *factors : int
        Bin sizes for the trailing axes: ``rebin(a, 2)`` bins every axis of a
        1-d or 2-d array and the last two axes of a higher-dimensional one
        (a stack of frames); ``rebin(a, fy, fx)`` gives one factor per
        trailing axis.  A single tuple argument is unpacked.
    trim : bool
        If True, pixels beyond the last whole block are dropped; otherwise
        every binned axis length must be divisible by its factor.

    Returns
    -------
    numpy.ndarray
        Binned array; each pixel is the sum of its block (integer input is
        summed in numpy's default integer type).

    Examples
    --------
    >>> rebin(np.ones((4, 6)), 2).tolist()
    [[4.0, 4.0, 4.0], [4.0, 4.0, 4.0]]
    """
    a = np.asarray(a)
    if len(factors) == 1 and not np.isscalar(factors[0]):
        factors = tuple(factors[0])
    if not factors:
        raise TypeError("rebin needs at least one factor")
    factors = [int(f) for f in factors]
    if len(factors) == 1 and a.ndim > 1:
        factors = factors * min(a.ndim, 2)
    if len(factors) > a.ndim:
        raise ValueError("%d factors for a %d-d array" % (len(factors), a.ndim))
    if any(f < 1 for f in factors):
        raise ValueError("rebin factors must be >= 1")
    lead = a.ndim - len(factors)
    index = [slice(None)] * a.ndim
    new_shape = list(a.shape[:lead])
    sum_axes = []
    for i, f in enumerate(factors):
        n = a.shape[lead + i]
        if n % f:
            if not trim:
                raise ValueError("axis %d of length %d is not divisible by %d (use trim=True)"
                                 % (lead + i, n, f))
            index[lead + i] = slice(0, n - n % f)
        new_shape += [n // f, f]
        sum_axes.append(len(new_shape) - 1)
    a = a[tuple(index)]
    return a.reshape(new_shape).sum(axis=tuple(sum_axes))


def mass_center(a, axes=None):
    """Centre of mass in (fractional) pixel coordinates.

    Parameters
    ----------
    a : array_like
        Weights; complex arrays use ``|a|``.
    axes : sequence of int, optional
        Axes for which to return the centre (default: all, in order).

    Returns
    -------
    numpy.ndarray
        ``sum(index * a) / sum(a)`` for each requested axis.

    Raises
    ------
    ValueError
        If the total mass is zero.
    """
    a = np.asarray(a)
    if np.iscomplexobj(a):
        a = np.abs(a)
    a = a.astype(np.float64, copy=False)
    total = a.sum()
    if total == 0:
        raise ValueError("mass_center of an array with zero total mass")
    axes = range(a.ndim) if axes is None else [ax % a.ndim for ax in axes]
    out = []
    for ax in axes:
        others = tuple(i for i in range(a.ndim) if i != ax)
        profile = a.sum(axis=others) if others else a
        out.append(np.dot(np.arange(a.shape[ax], dtype=np.float64), profile) / total)
    return np.array(out)


def keV2m(energy):
    """Photon wavelength in metres for an energy in keV.

    Parameters
    ----------
    energy : float or array_like
        Photon energy in keV.

    Returns
    -------
    float or numpy.ndarray
        ``1.23984193e-9 / energy`` (m).
    """
    return HC_KEV_M / np.asarray(energy, dtype=float) if not np.isscalar(energy) \
        else HC_KEV_M / float(energy)


def m2keV(wavelength):
    """Photon energy in keV for a wavelength in metres (inverse of :func:`keV2m`).

    Parameters
    ----------
    wavelength : float or array_like
        Wavelength in m.

    Returns
    -------
    float or numpy.ndarray
        ``1.23984193e-9 / wavelength`` (keV).
    """
    return keV2m(wavelength)


def clean_path(path):
    """Expand ``~`` and environment variables and make ``path`` absolute.

    Parameters
    ----------
    path : str or path-like

    Returns
    -------
    str
        Normalised absolute path (the file need not exist).
    """
    return os.path.abspath(os.path.expandvars(os.path.expanduser(os.fspath(path))))
