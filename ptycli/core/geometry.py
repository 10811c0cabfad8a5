"""Experimental geometry and wave propagators.

A :class:`Geo` describes one detector setup (photon energy, sample-detector
distance, detector pixel size and frame shape) and carries a matching
propagator (``G.propagator``) that takes exit waves from the sample plane to
the detector plane (``fw``) and back (``bw``).

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

import os
import warnings

import numpy as np

from . import fft
from .base import Base
from .fft import get_workers, set_workers  # noqa: F401 - part of this module's API (FFT threads)
from ..utils.array_utils import checked_pair
from ..utils.param_tree import Param

__all__ = [
    "Geo",
    "DEFAULT",
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
    "keV2m",
    "m2keV",
    "set_workers",
    "get_workers",
    "complex_dtype_for",
]

#: hc in keV * m: ``lam [m] = HC_KEV_M / energy [keV]``.
HC_KEV_M = 1.23984193e-9

#: Valid values of the ``propagation`` parameter.
PROPAGATIONS = ("farfield", "nearfield")

#: Declared defaults of the geometry parameters (see :class:`Geo`).
DEFAULT = Param(
    energy=6.2,  # keV
    lam=None,  # m; derived from energy unless energy is None
    distance=7.19,  # m, sample-detector distance
    psize=172e-6,  # m, detector pixel size (scalar or (y, x))
    resolution=None,  # m, sample-plane pixel size; None = derived
    shape=256,  # pixels (int or (rows, cols))
    propagation="farfield",  # 'farfield' or 'nearfield'
    misfit=0.0,  # pixels, sub-pixel misfit (bookkeeping only)
    center=None,  # detector pixel of the optical axis; None = shape // 2
    origin=None,  # sample pixel of the physical origin; None = shape // 2
    precedence=None,  # 'psize' or 'resolution' when both are given
)


# --------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------

def keV2m(energy):
    """Wavelength in metres of a photon of ``energy`` keV."""
    return HC_KEV_M / energy


def m2keV(lam):
    """Photon energy in keV of wavelength ``lam`` metres."""
    return HC_KEV_M / lam


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


# --------------------------------------------------------------------------
# Geo
# --------------------------------------------------------------------------

def _parameter_property(name, doc, copy):
    """A Geo property reading ``_<name>`` (a copy for arrays); setting it re-applies the parameters."""

    def getter(self):
        value = getattr(self, "_" + name)
        return value.copy() if copy else value

    def setter(self, value):
        self._set(**{name: value})

    return property(getter, setter, doc=doc)


class Geo(Base):
    """Geometry of one experiment: energy, distance, pixel sizes, propagator.

    Parameters
    ----------
    owner : Base, optional
        Owner (registers the geometry under prefix ``'G'``).
    ID : None, int or str
        Requested ID.
    pars : dict or Param, optional
        Geometry parameters, merged over :data:`DEFAULT`:

        energy : float or None
            Photon energy (keV, default 6.2). Wins over ``lam`` when both are
            given; when ``lam`` is given and ``energy`` is not (or is None),
            the energy is derived from ``lam``.
        lam : float or None
            Wavelength (m), ``lam = 1.23984193e-9 / energy``.
        distance : float
            Sample-detector distance (m, default 7.19); far field needs > 0.
        psize : float or (float, float)
            Detector pixel size (m, default 172e-6).
        resolution : None, float or (float, float)
            Sample-plane pixel size (m). None (default) = derived from
            ``psize`` (far field ``lam * distance / (shape * psize)``, near
            field ``psize``). Given with ``psize=None`` it is authoritative and
            ``psize`` is derived.
        shape : int or (int, int)
            Frame shape in pixels (default 256).
        propagation : 'farfield' or 'nearfield'
        misfit : float or (float, float)
            Sub-pixel misfit (pixels) between sample grid and storages;
            bookkeeping only, not used by the propagator.
        center : None, 'fftshift', 'geometric' or (float, float)
            Detector pixel of the optical axis / zero frequency (None =
            ``shape // 2``).
        origin : None, 'fftshift', 'geometric' or (float, float)
            Sample-plane pixel of the physical origin (None = ``shape // 2``).
        precedence : None, 'psize' or 'resolution'
            Which of ``psize``/``resolution`` is kept when both are given
            (None = 'psize'). Setting ``G.psize`` or ``G.resolution`` later
            makes that one authoritative.
    **kwargs
        Same keys as ``pars``; override it.

    Attributes
    ----------
    p : Param
        The parameters in use (``energy`` and ``lam`` always both filled).
    energy, lam, distance, psize, resolution, shape, propagation, center,
    origin, misfit : properties
        Settable; every change updates dependent quantities and rebuilds
        ``propagator``. ``psize``/``resolution``/``center``/``origin`` are
        float ndarrays of 2, ``shape`` an int ndarray of 2.
    propagator : FarfieldPropagator or NearfieldPropagator
        With ``fw``, ``bw``, ``grids_sam``, ``grids_det``.
    """

    _PREFIX = "G"
    DEFAULT = DEFAULT

    def __init__(self, owner=None, ID=None, pars=None, **kwargs):
        super().__init__(owner, ID, BeOwner=False)
        user = {}
        if pars is not None:
            user.update(dict(pars))
        user.update(kwargs)
        self.p = Param()
        for key, val in DEFAULT.items():
            self.p[key] = val
        self._propagator = None
        self._apply(user, initial=True)

    # -- parameter handling ------------------------------------------------
    def _apply(self, user, initial=False):
        unknown = sorted(k for k in user if k not in DEFAULT)
        if unknown:
            warnings.warn("Geo: unknown parameter(s) %s ignored (known: %s)"
                          % (unknown, sorted(DEFAULT)), stacklevel=3)
        p = self.p
        old = dict(p)
        for key, val in user.items():
            if key in DEFAULT:
                p[key] = val
        # energy / lam: energy wins when both are given
        energy_given = "energy" in user and user["energy"] is not None
        lam_given = "lam" in user and user["lam"] is not None
        if lam_given and not energy_given:
            p.energy = None
        # psize / resolution: a newly given one becomes authoritative
        if not initial:
            if "psize" in user and user["psize"] is not None and "resolution" not in user:
                p.resolution = None
            elif "resolution" in user and user["resolution"] is not None and "psize" not in user:
                p.psize = None
        try:
            self._update()
        except Exception:
            dict.clear(self.p)
            dict.update(self.p, old)
            raise

    def update(self, pars=None, **kwargs):
        """Change several parameters at once (one propagator rebuild).

        Same keys as the constructor; ``G.update(energy=8.0, distance=5.)``.
        """
        user = {}
        if pars is not None:
            user.update(dict(pars))
        user.update(kwargs)
        self._apply(user)

    def _update(self):
        """Validate ``p``, derive dependent quantities, rebuild the propagator."""
        p = self.p
        if p.propagation not in PROPAGATIONS:
            raise ValueError("propagation must be one of %s, got %r"
                             % (PROPAGATIONS, p.propagation))
        if p.energy is not None:
            energy = float(p.energy)
            if not energy > 0:
                raise ValueError("energy must be > 0 keV, got %r" % p.energy)
            lam = HC_KEV_M / energy
        elif p.lam is not None:
            lam = float(p.lam)
            if not lam > 0:
                raise ValueError("lam must be > 0 m, got %r" % p.lam)
            energy = HC_KEV_M / lam
        else:
            raise ValueError("one of energy (keV) or lam (m) must be given")
        p.energy = energy
        p.lam = lam

        if p.distance is None:
            raise ValueError("distance must be given (m)")
        distance = float(p.distance)
        if not np.isfinite(distance):
            raise ValueError("distance must be finite, got %r" % p.distance)
        if p.propagation == "farfield" and not distance > 0:
            raise ValueError("far-field distance must be > 0 m, got %r" % p.distance)

        shape = checked_pair(p.shape, "shape", int)
        if np.any(shape < 1):
            raise ValueError("shape must be >= 1, got %r" % (p.shape,))

        precedence = p.precedence
        if precedence not in (None, "psize", "resolution"):
            raise ValueError("precedence must be None, 'psize' or 'resolution', got %r"
                             % (precedence,))
        use_res = p.resolution is not None and (p.psize is None or precedence == "resolution")
        if not use_res and p.psize is None:
            raise ValueError("one of psize or resolution must be given (m)")
        if use_res:
            resolution = checked_pair(p.resolution, "resolution")
            if np.any(resolution <= 0):
                raise ValueError("resolution must be > 0 m, got %r" % (p.resolution,))
            if p.propagation == "farfield":
                psize = lam * distance / (shape * resolution)
            else:
                psize = resolution.copy()
        else:
            psize = checked_pair(p.psize, "psize")
            if np.any(psize <= 0):
                raise ValueError("psize must be > 0 m, got %r" % (p.psize,))
            if p.propagation == "farfield":
                resolution = lam * distance / (shape * psize)
            else:
                resolution = psize.copy()

        misfit = checked_pair(p.misfit if p.misfit is not None else 0.0, "misfit")
        center = _pixel_pos(p.center, shape, "center")
        origin = _pixel_pos(p.origin, shape, "origin")

        (self._lam, self._energy, self._distance, self._shape, self._psize, self._resolution,
         self._misfit, self._center, self._origin) = (
            lam, energy, distance, shape, psize, resolution, misfit, center, origin)
        self._propagator = get_propagator(p.propagation, shape, lam, distance, psize,
                                          origin=p.origin, center=p.center)

    def _set(self, **kw):
        self._apply(kw)

    # -- properties ----------------------------------------------------------
    energy = _parameter_property("energy", "Photon energy (keV).", copy=False)
    distance = _parameter_property("distance", "Sample-detector distance (m).", copy=False)
    shape = _parameter_property("shape", "Frame shape (int ndarray of 2, pixels).", copy=True)
    psize = _parameter_property("psize", "Detector pixel size (float ndarray of 2, m).", copy=True)
    resolution = _parameter_property("resolution", "Sample-plane pixel size (float ndarray of 2, m).",
                                     copy=True)
    center = _parameter_property("center", "Detector pixel of the optical axis (float ndarray of 2).",
                                 copy=True)
    origin = _parameter_property("origin", "Sample-plane pixel of the physical origin (float ndarray of 2).",
                                 copy=True)
    misfit = _parameter_property("misfit", "Sub-pixel misfit (float ndarray of 2, pixels; bookkeeping only).",
                                 copy=True)

    @property
    def lam(self):
        """Wavelength (m)."""
        return self._lam

    @lam.setter
    def lam(self, value):
        if value is None:
            raise ValueError("lam cannot be set to None")
        self._set(lam=value)

    @property
    def propagation(self):
        """'farfield' or 'nearfield'."""
        return self.p.propagation

    @propagation.setter
    def propagation(self, value):
        self._set(propagation=value)

    @property
    def propagator(self):
        """The current propagator (rebuilt on every parameter change)."""
        return self._propagator

    @property
    def grids_sam(self):
        """``(y, x)`` sample-plane coordinates (m), see the propagator."""
        return self._propagator.grids_sam

    @property
    def grids_det(self):
        """``(y, x)`` detector-plane coordinates (m), see the propagator."""
        return self._propagator.grids_det

    def fw(self, w):
        """Shortcut for ``self.propagator.fw``."""
        return self._propagator.fw(w)

    def bw(self, w):
        """Shortcut for ``self.propagator.bw``."""
        return self._propagator.bw(w)

    def __repr__(self):
        return ("<Geo %s: %s, E=%.4g keV, lam=%.4g m, z=%.4g m, shape=%s, psize=%s m, "
                "resolution=%s m>" % (self.ID, self.p.propagation, self._energy, self._lam,
                                      self._distance, tuple(int(s) for s in self._shape),
                                      tuple(float(s) for s in self._psize),
                                      tuple(float(s) for s in self._resolution)))
