"""The nominal far-field geometry of scans whose positions are given in pixels.

A loader that has positions in object pixels and no energy, distance or
detector pixel size (``NpzScan`` with ``positions_unit: pixel``) uses a
wavelength of 1 m and a distance of 1e9 m, with the detector pixel chosen so
that the object pixel is exactly 1 (``lam z / (N psize) = 1``). ``inspect``
and ``plot`` recognise a result made that way and show lengths in pixels.
"""

__all__ = ["NOMINAL_ENERGY_KEV", "NOMINAL_DISTANCE_M", "is_nominal"]

#: photon energy (keV) of a 1 m wavelength: ``hc / 1 m``
NOMINAL_ENERGY_KEV = 1.23984193e-9
#: sample-detector distance (m)
NOMINAL_DISTANCE_M = 1e9


def is_nominal(energy_kev, distance_m):
    """Whether ``energy_kev`` and ``distance_m`` are the nominal geometry's (to 1e-6, relative).

    Values that are missing or not numbers give False.
    """
    try:
        return (abs(float(energy_kev) / NOMINAL_ENERGY_KEV - 1) < 1e-6
                and abs(float(distance_m) / NOMINAL_DISTANCE_M - 1) < 1e-6)
    except (TypeError, ValueError, ZeroDivisionError):
        return False
