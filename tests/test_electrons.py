"""Electron data (``scans.<label>.data.radiation: electron``): the relativistic wavelength, end to end.

The scan is simulated by the independent zoo simulator (``benchmarks/zoo_sim.py``) with the wavelength of
300 keV electrons (it takes a photon energy: the one of that wavelength, 629.8 keV), written as a PtyPy
``.ptyd`` file; the config then states what an electron microscopist knows, 300 keV.
"""

import os
import sys

import numpy as np
import pytest

from ptycli.core import Ptycho
from ptycli.core.geometry import HC_KEV_M, electron_wavelength_m

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
if BENCHMARKS not in sys.path:
    sys.path.insert(0, BENCHMARKS)

import validate_zoo  # noqa: E402
import zoo_sim  # noqa: E402


@pytest.mark.parametrize("energy_kev, wavelength_pm", [(300.0, 1.96875), (200.0, 2.50793), (60.0, 4.86606),
                                                       (0.01, 387.828)])
def test_relativistic_electron_wavelength(energy_kev, wavelength_pm):
    # tabulated values (e.g. Williams & Carter, Transmission Electron Microscopy, table 1.1); at 10 eV the
    # non-relativistic h / sqrt(2 m0 E) = 1.22642 nm / sqrt(E / eV), 387.83 pm
    assert electron_wavelength_m(energy_kev) * 1e12 == pytest.approx(wavelength_pm, rel=2e-5)


def _electron_case(tmp_path):
    photon_kev = HC_KEV_M / electron_wavelength_m(300.0)
    spec = zoo_sim.CaseSpec("electrons", layout="ptyd", probe="defocused", probe_size_px=12.0, frames=100,
                            energy_kev=photon_kev, distance_m=0.5, detector_pixel_m=50e-6, seed=61)
    return zoo_sim.build_case(spec, str(tmp_path))


def _reconstruct(case, data_extra):
    cfg = validate_zoo.natural_config(dict(case["data_section"], **data_extra), "farfield",
                                      dm_iterations=60, ml_iterations=0)
    P = Ptycho(cfg, level=2)
    P.run()
    return P, validate_zoo.score_object(P, case["truth"])["correlation"]


@pytest.mark.slow
def test_electron_scan_reconstructs_with_the_electrons_wavelength(tmp_path):
    case = _electron_case(tmp_path)
    P, score = _reconstruct(case, {"energy": 300.0, "radiation": "electron"})
    geo = P.scans["zoo"].geometry
    assert geo.lam == pytest.approx(electron_wavelength_m(300.0), rel=1e-12)
    assert score > 0.95, score
    # the same energy read as a photon's: a wavelength 2.1 times too long, positions 2.1 times too few pixels
    _, wrong = _reconstruct(case, {"energy": 300.0})
    assert wrong < 0.5, wrong
