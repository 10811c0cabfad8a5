"""PtyLabScan: PtyLab's HDF5 layout (ptychogram, encoder, wavelength, zo, dxd), and Hdf5Scan's wavelength."""

import os
import sys

import h5py
import numpy as np
import pytest

from ptycli.core.geometry import HC_KEV_M
from ptycli.scans.hdf5 import Hdf5Scan
from ptycli.scans.ptylab import PtyLabScan

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
if BENCHMARKS not in sys.path:
    sys.path.insert(0, BENCHMARKS)

import validate_zoo  # noqa: E402
import zoo_sim  # noqa: E402


def ptylab_file(path, n=7, size=16, transposed=False):
    """A file as PtyLab writes one: SI units, one-element arrays, frames brightest off the centre."""
    rng = np.random.default_rng(3)
    frames = rng.poisson(5.0, (n, size, size)).astype(np.float32)
    frames[:, 2:5, 2:5] += 400.0  # the mass centre is far from size // 2: 'auto' would move the frames
    encoder = np.stack([np.arange(n) * 2.5e-6, -np.arange(n) * 1.25e-6], axis=1)
    with h5py.File(path, "w") as f:
        f.create_dataset("ptychogram", data=frames, dtype="f")
        f.create_dataset("encoder", data=encoder.T if transposed else encoder)
        f.create_dataset("wavelength", data=(632.8e-9,), dtype="f")
        f.create_dataset("zo", data=(5e-2,), dtype="f")
        f.create_dataset("dxd", data=(72e-6,), dtype="f")
        f.create_dataset("Nd", data=(size,), dtype="i")
        f.create_dataset("orientation", data=0)
    return frames, encoder


@pytest.mark.parametrize("transposed", [False, True])
def test_ptylab_file_needs_no_mapping(tmp_path, transposed):
    frames, encoder = ptylab_file(tmp_path / "simu.hdf5", transposed=transposed)
    s = PtyLabScan.from_pars({"dfile": str(tmp_path / "simu.hdf5")}).load()
    np.testing.assert_allclose(s.positions, encoder, rtol=1e-6)
    assert s.energy_kev == pytest.approx(HC_KEV_M / 632.8e-9, rel=1e-6)   # 1.959 eV, from the wavelength
    assert s.distance_m == pytest.approx(0.05, rel=1e-6)
    np.testing.assert_allclose(s.psize_m, [72e-6, 72e-6], rtol=1e-6)
    # the centre is PtyLab's (Nd // 2), not the mass centre: the frames are as stored
    np.testing.assert_array_equal(s.intensities, frames)


def test_hdf5scan_reads_a_wavelength_when_there_is_no_energy(tmp_path):
    path = tmp_path / "w.h5"
    with h5py.File(path, "w") as f:
        f["/entry/frames"] = np.ones((3, 8, 8), np.float32)
        f["/entry/pos"] = np.zeros((3, 2))
        f["/entry/lambda_nm"] = 0.2
        f["/entry/energy_kev"] = 8.0
    pars = {"dfile": str(path), "intensities": "/entry/frames", "positions": "/entry/pos", "center": "geometric",
            "distance": 1.0, "psize": 75e-6, "wavelength_dataset": "/entry/lambda_nm", "wavelength_multiplier": 1e-9}
    assert Hdf5Scan.from_pars(pars).load().energy_kev == pytest.approx(HC_KEV_M / 0.2e-9)
    # an energy dataset, when there is one, is what the file says the energy is
    with_energy = dict(pars, energy_dataset="/entry/energy_kev")
    assert Hdf5Scan.from_pars(with_energy).load().energy_kev == pytest.approx(8.0)


def test_ptylab_layout_reconstructs(tmp_path):
    # the zoo's independent simulator writes PtyLab's layout; default settings, no probe guess
    spec = zoo_sim.CaseSpec("ptylab_tiny", layout="ptylab", probe="focused", probe_size_px=2.5,
                            frame_shape=(32, 32), scan="raster", frames=64, photons=1e7, seed=101)
    case = zoo_sim.build_case(spec, str(tmp_path))
    assert case["data_section"] == {"name": "PtyLabScan", "dfile": case["data_file"]}
    cfg = validate_zoo.natural_config(case["data_section"], "farfield", dm_iterations=40, ml_iterations=20)
    res = validate_zoo.reconstruct_and_score(cfg, case["truth"])
    assert res["error"] is None
    assert res["score"] > 0.93, res
