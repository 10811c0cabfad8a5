"""Experimental geometry and wave propagators.

A :class:`Geo` describes one detector setup (photon energy, sample-detector
distance, detector pixel size and frame shape) and carries a matching
propagator (``G.propagator``) that takes exit waves from the sample plane to
the detector plane (``fw``) and back (``bw``).

The propagators and the functions engines call (:func:`fourier_fw`, ...)
live in :mod:`ptycli.core.propagation`; this module re-exports them (and the
FFT thread setting of :mod:`ptycli.core.fft`) under their classic names.
Coordinates are ``(y, x)`` in metres; energies in keV; wavelengths,
distances and pixel sizes in metres.
"""
import warnings

import numpy as np

from . import propagation
from .base import Base
from .fft import get_workers, set_workers  # noqa: F401 - part of this module's API (FFT threads)
from .propagation import (PROPAGATIONS, FarfieldPropagator, NearfieldPropagator,  # noqa: F401 (re-exported)
                          _pixel_pos, complex_dtype_for, farfield_bw, farfield_fw, fourier_bw, fourier_fw,
                          get_propagator, nearfield_bw, nearfield_fw, transfer_propagate)
from ..utils.array_utils import checked_pair
from ..utils.param_tree import Param

__all__ = ["Geo", "DEFAULT", "keV2m", "m2keV", "electron_wavelength_m", "set_workers", "get_workers"] + [
    name for name in propagation.__all__ if name != "PROPAGATIONS"]

#: hc in keV * m: ``lam [m] = HC_KEV_M / energy [keV]``.
HC_KEV_M = 1.23984193e-9

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


#: The electron's rest energy ``m0 c^2`` (keV; CODATA 2018).
ELECTRON_REST_KEV = 510.99895


def electron_wavelength_m(energy_kev):
    """Relativistic de Broglie wavelength (m) of electrons of kinetic energy ``energy_kev`` (keV).

    ``lam = h c / sqrt(E (E + 2 m0 c^2))``: 1.9687 pm at 300 keV, 2.5079 pm
    at 200 keV, 4.8661 pm at 60 keV (the non-relativistic ``h / sqrt(2 m0 E)``
    is 3.7 % longer at 60 keV, 13 % at 300 keV).
    """
    e = float(energy_kev)
    return HC_KEV_M / np.sqrt(e * (e + 2.0 * ELECTRON_REST_KEV))


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
        given = "resolution" if use_res else "psize"
        value = checked_pair(p[given], given)
        if np.any(value <= 0):
            raise ValueError("%s must be > 0 m, got %r" % (given, p[given]))
        # far field: the sample and detector pixels are reciprocal (lam z / (N psize)); near field: equal
        other = lam * distance / (shape * value) if p.propagation == "farfield" else value.copy()
        psize, resolution = (other, value) if use_res else (value, other)

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
