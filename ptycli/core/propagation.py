"""Wave propagators: sample plane to detector plane (``fw``) and back (``bw``).

:class:`FarfieldPropagator` (Fresnel far field on centred arrays) and
:class:`NearfieldPropagator` (angular spectrum), built by
:func:`get_propagator`; the pure functions :func:`fourier_fw` /
:func:`fourier_bw` (and their far- and near-field forms) that engines call on
frame stacks with cached factors. :class:`~ptycli.core.geometry.Geo` builds
the propagator of an experiment.

Conventions
-----------
* Arrays are stored *centred*: in the sample plane the physical origin sits
  at pixel ``origin`` (default ``shape // 2``) and in the detector plane the
  optical axis (zero spatial frequency) sits at pixel ``center`` (default
  ``shape // 2``). No ``fftshift`` copies are made: the centring is folded
  into the pre- and post-FFT phase factors (see :class:`FarfieldPropagator`).
* All propagators are unitary: ``sum|fw(w)|**2 == sum|w|**2`` and
  ``bw(fw(w)) == w`` to floating-point precision.
* ``fw``/``bw`` accept a single 2D frame or any stack ``(..., rows, cols)``
  and transform all frames with one :mod:`scipy.fft` call. The dtype is
  preserved: ``complex64`` in gives ``complex64`` out, real input is promoted
  to the complex type of matching precision (``float32 -> complex64``, other
  real/integer types ``-> complex128``).
* Coordinates are ``(y, x)`` in metres; energies in keV; wavelengths,
  distances and pixel sizes in metres.

Performance note for engines
----------------------------
The far-field post-FFT factor is a pure phase. A Fourier-modulus projection
``bw(F * fw(w))`` with a real factor ``F`` therefore does not need it: the
post factor and its conjugate cancel. Engines can use :func:`fourier_fw` /
:func:`fourier_bw` with ``post=None`` and the cached factors from
:meth:`FarfieldPropagator.factors` to save two passes over the stack.
"""

import numpy as np

from . import fft
from .fft import get_workers
from ..utils.array_utils import checked_pair

__all__ = [
    "PROPAGATIONS",
    "FarfieldPropagator",
    "NearfieldPropagator",
    "get_propagator",
    "fourier_fw",
    "fourier_bw",
    "farfield_fw",
    "farfield_bw",
    "nearfield_fw",
    "nearfield_bw",
    "transfer_propagate",
    "complex_dtype_for",
]

#: Valid values of the ``propagation`` parameter.
PROPAGATIONS = ("farfield", "nearfield")


# --------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------

def complex_dtype_for(dtype):
    """Complex dtype of matching precision.

    ``complex64``/``float32``/``float16`` give ``complex64``;
    ``complex256``/``longdouble`` give ``complex256`` where available;
    everything else (``float64``, integers, bool) gives ``complex128``.
    """
    dtype = np.dtype(dtype)
    if dtype.kind == "c":
        return dtype
    if dtype in (np.dtype(np.float32), np.dtype(np.float16)):
        return np.dtype(np.complex64)
    if dtype == np.dtype(np.longdouble) and dtype.itemsize > 8:
        return np.dtype(np.clongdouble)
    return np.dtype(np.complex128)


def _as_complex(w):
    """``w`` as a complex ndarray of matching precision (no copy if already)."""
    w = np.asarray(w)
    if w.dtype.kind != "c":
        w = w.astype(complex_dtype_for(w.dtype))
    if w.ndim < 2:
        raise ValueError("expected a 2D frame or a stack (..., rows, cols), got shape %s"
                         % (w.shape,))
    return w


def _pixel_pos(value, shape, name):
    """Pixel position (float ndarray of 2) from None/'fftshift'/'geometric'/number."""
    if value is None or (isinstance(value, str) and value == "fftshift"):
        return (shape // 2).astype(float)
    if isinstance(value, str):
        if value == "geometric":
            return (shape - 1) / 2.0
        raise ValueError("%s must be None, 'fftshift', 'geometric' or a pixel "
                         "position (y, x), got %r" % (name, value))
    return checked_pair(value, name)


# --------------------------------------------------------------------------
# pure propagation functions
# --------------------------------------------------------------------------

def _match(factor, dtype):
    if factor is None:
        return None
    factor = np.asarray(factor)
    if factor.dtype != dtype:
        factor = factor.astype(dtype)
    return factor


def _aligned_product(w, factor):
    """``w * factor`` (or a copy of ``w``) in a new array aligned for the FFT library."""
    out = fft.empty(w.shape, w.dtype)
    if factor is None:
        out[...] = w
    else:
        np.multiply(w, factor, out=out)
    return out


def _fourier(transform_inplace, w, pre, post, workers):
    """``post * transform(pre * w)``: the body of :func:`fourier_fw` and :func:`fourier_bw`."""
    w = _as_complex(w)
    workers = get_workers() if workers is None else workers
    pre = _match(pre, w.dtype)
    post = _match(post, w.dtype)
    out = _aligned_product(w, pre)
    transform_inplace(out, workers)
    if post is not None:
        out *= post
    return out


def fourier_fw(w, pre=None, post=None, workers=None):
    """``post * FFT2(pre * w)`` with unitary normalisation.

    Parameters
    ----------
    w : array_like, shape (..., rows, cols)
        Frame or stack of frames. Real input is promoted to complex.
    pre, post : ndarray, shape (rows, cols), or None
        Phase factors multiplied before/after the transform (broadcast over
        the leading axes). ``None`` skips the multiplication. Factors of a
        different dtype are cast to that of ``w`` (pass them pre-cast to avoid
        the cost; see :meth:`FarfieldPropagator.factors`).
    workers : int, optional
        FFT threads; default :func:`get_workers`.

    Returns
    -------
    ndarray
        Same shape as ``w``, complex of the same precision.
    """
    return _fourier(fft.fft2_inplace, w, pre, post, workers)


def fourier_bw(w, pre=None, post=None, workers=None):
    """``post * IFFT2(pre * w)`` with unitary normalisation.

    Same conventions as :func:`fourier_fw`. Note that ``pre``/``post`` are
    applied in the order given: to invert ``fourier_fw(w, a, b)`` call
    ``fourier_bw(v, conj(b), conj(a))``.
    """
    return _fourier(fft.ifft2_inplace, w, pre, post, workers)


def farfield_fw(w, pre, post, workers=None):
    """Far-field forward propagation ``post * FFT2(pre * w)`` (unitary).

    ``pre``/``post`` are the sample- and detector-plane factors of a
    :class:`FarfieldPropagator` (``pre_fft``, ``post_fft``).
    """
    return fourier_fw(w, pre, post, workers)


def farfield_bw(w, pre, post, workers=None):
    """Inverse of :func:`farfield_fw` with the same ``pre``/``post``.

    Computes ``conj(pre) * IFFT2(conj(post) * w)``. The conjugates are
    formed on each call; the propagator objects cache them instead.
    """
    pre = None if pre is None else np.conj(pre)
    post = None if post is None else np.conj(post)
    return fourier_bw(w, post, pre, workers)


def transfer_propagate(w, kernel, workers=None):
    """``IFFT2(kernel * FFT2(w))`` (a convolution; unitary if ``|kernel| == 1``).

    ``kernel`` is laid out in unshifted FFT order (zero frequency at [0, 0]).
    """
    w = _as_complex(w)
    workers = get_workers() if workers is None else workers
    kernel = _match(kernel, w.dtype)
    out = _aligned_product(w, None)
    fft.fft2_inplace(out, workers)
    out *= kernel
    return fft.ifft2_inplace(out, workers)


def nearfield_fw(w, kernel, workers=None):
    """Near-field forward propagation with an angular-spectrum ``kernel``."""
    return transfer_propagate(w, kernel, workers)


def nearfield_bw(w, kernel, workers=None):
    """Inverse of :func:`nearfield_fw` (uses ``conj(kernel)``)."""
    return transfer_propagate(w, np.conj(kernel), workers)


# --------------------------------------------------------------------------
# propagator objects
# --------------------------------------------------------------------------

class _Factors:
    """Phase-factor arrays of one dtype: ``pre, post`` (fw), ``pre_bw, post_bw``."""

    __slots__ = ("pre", "post", "pre_bw", "post_bw")

    def __init__(self, pre, post, pre_bw, post_bw):
        self.pre = pre
        self.post = post
        self.pre_bw = pre_bw
        self.post_bw = post_bw

    def __iter__(self):
        return iter((self.pre, self.post, self.pre_bw, self.post_bw))


class _PropagatorBase:
    """Shared set-up (shape, wavelength, distance, pixel sizes, origin, centre), factor cache and checks."""

    def __init__(self, shape, lam, distance, psize, origin=None, center=None):
        self._cache = {}
        self.shape = checked_pair(shape, "shape", int)
        self.lam = float(lam)
        self.distance = float(distance)
        self.psize_det = checked_pair(psize, "psize")
        self.origin = _pixel_pos(origin, self.shape, "origin")
        self.center = _pixel_pos(center, self.shape, "center")

    def _check(self, w):
        w = _as_complex(w)
        if tuple(w.shape[-2:]) != tuple(self.shape):
            raise ValueError("frame shape %s does not match the propagator shape %s"
                             % (tuple(w.shape[-2:]), tuple(self.shape)))
        return w

    def factors(self, dtype=np.complex128):
        """Cached phase factors cast to the complex type matching ``dtype``.

        Returns an object with attributes ``pre, post`` (forward) and
        ``pre_bw, post_bw`` (backward), so that ``fw(w) ==
        fourier_fw(w, f.pre, f.post)`` and ``bw(v) == fourier_bw(v, f.pre_bw,
        f.post_bw)`` (far field). Near field: ``pre`` is the transfer kernel,
        ``pre_bw`` its conjugate, the post factors are ``None``.
        """
        dtype = complex_dtype_for(dtype)
        f = self._cache.get(dtype)
        if f is None:
            f = self._make_factors(dtype)
            self._cache[dtype] = f
        return f

    def __call__(self, w):
        return self.fw(w)


class FarfieldPropagator(_PropagatorBase):
    """Fresnel far-field propagator on centred arrays (unitary).

    With sample coordinates ``y_s = (n - origin) * resolution`` and detector
    coordinates ``y_d = (k - center) * psize`` (per axis, pixels ``n, k``),

    ``fw(w)[k] = Q_d(k) * sum_n w[n] Q_s(n) exp(-2 pi i (n - origin)(k - center) / N) / sqrt(N)``

    with the Fresnel quadratic phases ``Q_s = exp(i pi (y_s**2 + x_s**2) / (lam z))``
    and ``Q_d = exp(i pi (y_d**2 + x_d**2) / (lam z))`` (2D: product over both
    axes). Since ``resolution * psize = lam z / N`` the kernel equals
    ``exp(-2 pi i (y_s y_d + x_s x_d) / (lam z))``. The constant prefactor
    ``exp(ikz) / (i lam z)`` is replaced by the unitary normalisation.

    The centring is done without ``fftshift``: expanding the kernel gives
    ``pre_fft = Q_s * exp(2 pi i n center / N)`` and
    ``post_fft = Q_d * exp(2 pi i origin k / N) * exp(-2 pi i origin center / N)``,
    so ``fw(w) = post_fft * FFT2(pre_fft * w)`` and
    ``bw(v) = conj(pre_fft) * IFFT2(conj(post_fft) * v)``.

    Parameters
    ----------
    shape : int or (int, int)
        Frame shape (pixels).
    lam : float
        Wavelength (m).
    distance : float
        Sample-detector distance (m, > 0).
    psize : float or (float, float)
        Detector pixel size (m).
    origin, center : None, 'fftshift', 'geometric' or (float, float)
        Pixel of the sample-plane origin / detector optical axis (default
        ``shape // 2``).

    Attributes
    ----------
    shape : ndarray of 2 int
    psize_det, psize_sam : ndarray of 2 float
        Detector pixel (m) and sample pixel ``lam z / (N psize)`` (m).
    grids_sam, grids_det : tuple of 2D ndarray (y, x)
        Physical coordinates (m) of every pixel in each plane.
    pre_fft, post_fft : complex128 ndarray (rows, cols)
        Forward phase factors (see above).
    """

    kind = "farfield"

    def __init__(self, shape, lam, distance, psize, origin=None, center=None):
        super().__init__(shape, lam, distance, psize, origin, center)
        self.psize_sam = self.lam * self.distance / (self.shape * self.psize_det)
        lz = self.lam * self.distance
        pre_1d = []
        post_1d = []
        sam_1d = []
        det_1d = []
        for ax in range(2):
            N = self.shape[ax]
            a = self.origin[ax]
            b = self.center[ax]
            idx = np.arange(N, dtype=float)
            ys = (idx - a) * self.psize_sam[ax]
            yd = (idx - b) * self.psize_det[ax]
            sam_1d.append(ys)
            det_1d.append(yd)
            # phases in units of 2 pi (turns), reduced mod 1 for accuracy
            t_pre = 0.5 * ys ** 2 / lz + np.mod(idx * b, N) / N
            t_post = 0.5 * yd ** 2 / lz + np.mod(a * idx, N) / N - np.mod(a * b, N) / N
            pre_1d.append(np.exp(2j * np.pi * np.mod(t_pre, 1.0)))
            post_1d.append(np.exp(2j * np.pi * np.mod(t_post, 1.0)))
        self.pre_fft = np.multiply.outer(pre_1d[0], pre_1d[1])
        self.post_fft = np.multiply.outer(post_1d[0], post_1d[1])
        self.grids_sam = tuple(np.meshgrid(sam_1d[0], sam_1d[1], indexing="ij"))
        self.grids_det = tuple(np.meshgrid(det_1d[0], det_1d[1], indexing="ij"))

    def _make_factors(self, dtype):
        pre = self.pre_fft.astype(dtype)
        post = self.post_fft.astype(dtype)
        return _Factors(pre, post, np.conj(post), np.conj(pre))

    def fw(self, w):
        """Propagate sample-plane wave(s) ``w`` (..., rows, cols) to the detector."""
        w = self._check(w)
        f = self.factors(w.dtype)
        return fourier_fw(w, f.pre, f.post)

    def bw(self, w):
        """Propagate detector-plane wave(s) back to the sample plane."""
        w = self._check(w)
        f = self.factors(w.dtype)
        return fourier_bw(w, f.pre_bw, f.post_bw)


class NearfieldPropagator(_PropagatorBase):
    """Angular-spectrum (near-field) propagator over ``distance`` (unitary).

    ``fw(w) = IFFT2(H * FFT2(w))`` with the transfer function
    ``H = exp(i z (k_z - k))``, ``k = 2 pi / lam``,
    ``k_z = sqrt(k**2 - (2 pi f_y)**2 - (2 pi f_x)**2)`` and ``f`` the FFT
    frequencies of the pixel grid (``psize``). The constant carrier phase
    ``exp(ikz)`` is dropped (``k_z - k`` is evaluated as
    ``-q**2 / (k + k_z)`` for accuracy). Evanescent frequencies (none for
    realistic X-ray pixel sizes) get ``k_z = 0``, keeping ``|H| == 1`` so that
    the operator stays unitary and ``bw`` (``conj(H)``) inverts ``fw``
    exactly. Propagation is a convolution, so the position of the origin in
    the frame does not matter; the sample and detector pixels both equal
    ``psize``. A negative ``distance`` propagates upstream.

    Attributes
    ----------
    shape, psize_sam, psize_det, grids_sam, grids_det
        As for :class:`FarfieldPropagator` (both pixel sizes equal ``psize``).
    kernel : complex128 ndarray (rows, cols)
        ``H`` in unshifted FFT order.
    """

    kind = "nearfield"

    def __init__(self, shape, lam, distance, psize, origin=None, center=None):
        super().__init__(shape, lam, distance, psize, origin, center)
        self.psize_sam = self.psize_det.copy()
        k = 2 * np.pi / self.lam
        qy = 2 * np.pi * np.fft.fftfreq(self.shape[0], d=self.psize_sam[0])
        qx = 2 * np.pi * np.fft.fftfreq(self.shape[1], d=self.psize_sam[1])
        q2 = np.add.outer(qy ** 2, qx ** 2)
        q2 = np.minimum(q2, k * k)
        kz = np.sqrt(k * k - q2)
        self.kernel = np.exp(1j * self.distance * (-q2 / (k + kz)))
        sam = [(np.arange(self.shape[ax]) - self.origin[ax]) * self.psize_sam[ax] for ax in range(2)]
        det = [(np.arange(self.shape[ax]) - self.center[ax]) * self.psize_det[ax] for ax in range(2)]
        self.grids_sam = tuple(np.meshgrid(sam[0], sam[1], indexing="ij"))
        self.grids_det = tuple(np.meshgrid(det[0], det[1], indexing="ij"))

    def _make_factors(self, dtype):
        kern = self.kernel.astype(dtype)
        return _Factors(kern, None, np.conj(kern), None)

    def fw(self, w):
        """Propagate wave(s) ``w`` (..., rows, cols) by ``+distance``."""
        w = self._check(w)
        return transfer_propagate(w, self.factors(w.dtype).pre)

    def bw(self, w):
        """Propagate wave(s) by ``-distance`` (inverse of :meth:`fw`)."""
        w = self._check(w)
        return transfer_propagate(w, self.factors(w.dtype).pre_bw)


def get_propagator(propagation, shape, lam, distance, psize, origin=None, center=None):
    """Build the propagator for ``propagation`` ('farfield' or 'nearfield')."""
    if propagation == "farfield":
        return FarfieldPropagator(shape, lam, distance, psize, origin, center)
    if propagation == "nearfield":
        return NearfieldPropagator(shape, lam, distance, psize, origin, center)
    raise ValueError("propagation must be one of %s, got %r" % (PROPAGATIONS, propagation))
