"""Hdf5Scan: dataset mapping, multipliers, units, blocks and error messages."""

import logging

import h5py
import numpy as np
import pytest

from ptycli.errors import ConfigError, DataError
from ptycli.scans.hdf5 import Hdf5Scan


def beamline_file(path, n=6, h=8, w=8):
    """A file in a foreign layout: eV, um, mm, separate motor positions."""
    rng = np.random.default_rng(5)
    frames = rng.poisson(10, (n, h, w)).astype(np.uint32)
    with h5py.File(path, "w") as f:
        f["/entry/data/eiger"] = frames
        f["/entry/motors/sy"] = np.arange(n) * 1.5          # um
        f["/entry/motors/sx"] = -np.arange(n) * 0.5         # um
        f["/entry/mono/energy"] = 6200.0                     # eV
        f["/entry/det/distance"] = 1500.0                    # mm
        f["/entry/det/pixel"] = 75.0                         # um
        f["/entry/det/mask"] = np.ones((h, w), np.uint8)
        f["/entry/det/mask"][0, 0] = 0
        f["/entry/det/dark"] = np.ones((3, h, w))
    return frames


def foreign(path, **extra):
    pars = {
        "dfile": str(path), "intensities": "/entry/data/eiger",
        "positions_slow": "/entry/motors/sy", "positions_fast": "/entry/motors/sx",
        "positions_slow_multiplier": 1e-6, "positions_fast_multiplier": 1e-6,
        "energy_dataset": "/entry/mono/energy", "energy_multiplier": 1e-3,
        "distance_dataset": "/entry/det/distance", "distance_multiplier": 1e-3,
        "psize_dataset": "/entry/det/pixel", "psize_multiplier": 1e-6,
        "mask_dataset": "/entry/det/mask", "center": "geometric",
    }
    pars.update(extra)
    return Hdf5Scan.from_pars(pars)


def test_separate_slow_fast_positions_with_multipliers(tmp_path):
    frames = beamline_file(tmp_path / "b.h5")
    s = foreign(tmp_path / "b.h5").load()
    np.testing.assert_allclose(s.positions[:, 0], np.arange(6) * 1.5e-6)
    np.testing.assert_allclose(s.positions[:, 1], -np.arange(6) * 0.5e-6)
    assert s.energy_kev == pytest.approx(6.2)
    assert s.distance_m == pytest.approx(1.5)
    np.testing.assert_allclose(s.psize_m, [75e-6, 75e-6])
    assert not s.mask[:, 0, 0].any() and s.mask.sum() == 6 * 63
    expect = frames.astype(np.float32)
    expect[:, 0, 0] = 0
    np.testing.assert_array_equal(s.intensities, expect)


def test_dark_dataset_stack_is_averaged(tmp_path):
    frames = beamline_file(tmp_path / "b.h5")
    s = foreign(tmp_path / "b.h5", dark_dataset="/entry/det/dark").load()
    expect = np.maximum(frames.astype(np.float32) - 1, 0)
    expect[:, 0, 0] = 0
    np.testing.assert_array_equal(s.intensities, expect)


def test_block_of_second_rank(tmp_path):
    frames = beamline_file(tmp_path / "b.h5", n=5)
    s = foreign(tmp_path / "b.h5", chunk_size=1).load(rank=1, size=2)
    np.testing.assert_array_equal(s.indices, [3, 4])
    np.testing.assert_array_equal(s.intensities[:, 1:, 1:], frames[3:, 1:, 1:])
    np.testing.assert_allclose(s.positions[:, 0], [4.5e-6, 6e-6])


def test_units_attributes_are_honoured(tmp_path):
    path = tmp_path / "u.h5"
    with h5py.File(path, "w") as f:
        f["/data/intensities"] = np.ones((2, 4, 4))
        f["/data/positions"] = np.array([[1.0, 2.0], [3.0, 4.0]])
        f["/data/positions"].attrs["units"] = "um"
        f["/geometry/energy"] = 8000.0
        f["/geometry/energy"].attrs["units"] = "eV"
        f["/geometry/distance"] = 2.0
        f["/geometry/psize"] = [55.0, 55.0]
        f["/geometry/psize"].attrs["units"] = "um"
    s = Hdf5Scan.from_pars({"dfile": str(path), "center": "geometric"}).load()
    assert s.energy_kev == pytest.approx(8.0)
    np.testing.assert_allclose(s.psize_m, [55e-6, 55e-6])
    np.testing.assert_allclose(s.positions, [[1e-6, 2e-6], [3e-6, 4e-6]])
    assert s.positions_unit == "m"


def test_scan_grid_4d_dataset(tmp_path):
    path = tmp_path / "g.h5"
    data = np.arange(2 * 3 * 4 * 4, dtype=float).reshape(2, 3, 4, 4) + 1
    with h5py.File(path, "w") as f:
        f["/data/intensities"] = data
        f["/data/positions"] = np.zeros((6, 2))
    scan = Hdf5Scan.from_pars({"dfile": str(path), "center": "geometric", "energy": 6,
                               "distance": 1, "psize": 1e-4, "chunk_size": 2})
    s = scan.load(rank=1, size=2)
    np.testing.assert_array_equal(s.intensities, data.reshape(6, 4, 4)[3:])
    assert scan.meta()["num_frames"] == 6


def test_missing_geometry_names_parameter(tmp_path):
    path = tmp_path / "g.h5"
    with h5py.File(path, "w") as f:
        f["/data/intensities"] = np.ones((2, 4, 4))
        f["/data/positions"] = np.zeros((2, 2))
    with pytest.raises(ConfigError, match=r"scan\.data\.energy: not given and .*g\.h5"):
        Hdf5Scan.from_pars({"dfile": str(path)}).load()


# -- errors -----------------------------------------------------------------------------------


def test_missing_file_and_not_hdf5(tmp_path):
    with pytest.raises(DataError, match=r"scan\.data\.dfile: input .*nothere\.h5 does not exist"):
        Hdf5Scan.from_pars({"dfile": str(tmp_path / "nothere.h5")}).load()
    (tmp_path / "t.h5").write_text("not hdf5")
    with pytest.raises(DataError, match=r"t\.h5 is not a readable HDF5 file"):
        Hdf5Scan.from_pars({"dfile": str(tmp_path / "t.h5")}).load()
    with pytest.raises(ConfigError, match=r"scan\.data\.dfile: no input given"):
        Hdf5Scan.from_pars({}).load()
    with pytest.raises(DataError, match="is a folder"):
        Hdf5Scan.from_pars({"dfile": str(tmp_path)}).load()


def test_missing_dataset_names_file_dataset_and_parameter(tmp_path):
    beamline_file(tmp_path / "b.h5")
    with pytest.raises(DataError, match=r"b\.h5: dataset /data/intensities does not exist; "
                                        r"set scan\.data\.intensities"):
        Hdf5Scan.from_pars({"dfile": str(tmp_path / "b.h5")}).load()
    with pytest.raises(DataError, match=r"b\.h5: dataset /entry/motors/sz does not exist; "
                                        r"set scan\.data\.positions_fast"):
        foreign(tmp_path / "b.h5", positions_fast="/entry/motors/sz").load()
    with pytest.raises(DataError, match=r"dataset /entry/det is a group"):
        foreign(tmp_path / "b.h5", energy_dataset="/entry/det").load()
    with pytest.raises(ConfigError, match="positions_fast"):
        foreign(tmp_path / "b.h5", positions_fast=None).load()


def test_wrong_ndim_and_count_mismatch(tmp_path):
    path = tmp_path / "w.h5"
    with h5py.File(path, "w") as f:
        f["/data/intensities"] = np.ones((4, 4))
        f["/data/positions"] = np.zeros((3, 2))
        f["/data/frames"] = np.ones((3, 4, 4))
        f["/data/pos3"] = np.zeros((3, 3))
        f["/data/mask2"] = np.ones((2, 4, 4))
    base = {"dfile": str(path), "energy": 6, "distance": 1, "psize": 1e-4}
    with pytest.raises(DataError, match=r"w\.h5: dataset /data/intensities has 2 dimensions"):
        Hdf5Scan.from_pars(base).load()
    with pytest.raises(DataError, match=r"w\.h5: dataset /data/pos3 has shape \(3, 3\), "
                                        r"expected \(N, 2\)"):
        Hdf5Scan.from_pars(dict(base, intensities="/data/frames", positions="/data/pos3")).load()
    with h5py.File(path, "a") as f:
        del f["/data/positions"]
        f["/data/positions"] = np.zeros((2, 2))
    with pytest.raises(DataError, match=r"w\.h5: 2 positions for 3 frames"):
        Hdf5Scan.from_pars(dict(base, intensities="/data/frames")).load()
    with h5py.File(path, "a") as f:
        del f["/data/positions"]
        f["/data/positions"] = np.zeros((3, 2))
    with pytest.raises(DataError, match=r"w\.h5: mask dataset /data/mask2 has shape "
                                        r"\(2, 4, 4\), expected \(4, 4\) or \(3, 4, 4\)"):
        Hdf5Scan.from_pars(dict(base, intensities="/data/frames",
                                mask_dataset="/data/mask2")).load()


# -- beamline layouts: raster axes, grids, other files, a monitor ----------------------------------

def raster_file(path, ny=3, nx=4, h=6, w=6, four_d=True):
    """Frames on a ny x nx raster (fast axis fastest) with the motor axes as 1-D datasets (um)."""
    rng = np.random.default_rng(11)
    frames = rng.poisson(20, (ny * nx, h, w)).astype(np.uint16)
    with h5py.File(path, "w") as f:
        f["/entry/data/frames"] = frames.reshape(ny, nx, h, w) if four_d else frames
        f["/entry/scan/y_axis"] = 10.0 + 2.0 * np.arange(ny)
        f["/entry/scan/x_axis"] = -5.0 + 1.0 * np.arange(nx)
    return frames


def raster_pars(path, **extra):
    pars = {"dfile": str(path), "intensities": "/entry/data/frames", "positions_slow": "/entry/scan/y_axis",
            "positions_fast": "/entry/scan/x_axis", "positions_slow_multiplier": 1e-6,
            "positions_fast_multiplier": 1e-6, "energy": 6.2, "distance": 2.0, "psize": 75e-6,
            "center": "geometric"}
    pars.update(extra)
    return pars


@pytest.mark.parametrize("four_d", [True, False])
def test_raster_axes_are_meshed_fast_axis_fastest(tmp_path, four_d):
    frames = raster_file(tmp_path / "r.h5", four_d=four_d)
    scan = Hdf5Scan.from_pars(raster_pars(tmp_path / "r.h5", chunk_size=5))
    assert scan.meta()["num_positions"] == 12
    s = scan.load()
    expect_y = (10.0 + 2.0 * np.repeat(np.arange(3), 4)) * 1e-6
    expect_x = (-5.0 + np.tile(np.arange(4), 3)) * 1e-6
    np.testing.assert_allclose(s.positions[:, 0], expect_y)
    np.testing.assert_allclose(s.positions[:, 1], expect_x)
    np.testing.assert_array_equal(s.intensities, frames.astype(np.float32))
    # a second rank's block gets its own rows of the raster
    s1 = Hdf5Scan.from_pars(raster_pars(tmp_path / "r.h5", chunk_size=2)).load(rank=1, size=2)
    np.testing.assert_allclose(s1.positions[:, 1], expect_x[6:])


def test_per_frame_grid_positions_of_a_4d_raster(tmp_path):
    path = tmp_path / "g.h5"
    frames = raster_file(path)
    yy, xx = np.meshgrid(np.arange(3) * 3.0, np.arange(4) * 0.5, indexing="ij")
    with h5py.File(path, "a") as f:
        f["/entry/scan/y_grid"] = yy + 0.1 * xx  # a slightly skewed raster, one value per frame
        f["/entry/scan/x_grid"] = xx
    s = Hdf5Scan.from_pars(raster_pars(path, positions_slow="/entry/scan/y_grid",
                                       positions_fast="/entry/scan/x_grid")).load()
    np.testing.assert_allclose(s.positions[:, 0], (yy + 0.1 * xx).ravel() * 1e-6)
    np.testing.assert_allclose(s.positions[:, 1], xx.ravel() * 1e-6)
    assert s.intensities.shape == frames.shape


def test_datasets_in_other_files(tmp_path):
    frames = raster_file(tmp_path / "detector.h5", four_d=False)
    with h5py.File(tmp_path / "master.h5", "w") as f:
        f["/entry/sy"] = np.arange(12) * 1.5
        f["/entry/sx"] = np.arange(12) * -0.5
        f["/entry/energy_ev"] = 8000.0
    other = str(tmp_path / "master.h5")
    scan = Hdf5Scan.from_pars(raster_pars(tmp_path / "detector.h5", energy=None,
                                          positions_slow=other + "::/entry/sy",
                                          positions_fast=other + "::/entry/sx",
                                          energy_dataset=other + "::/entry/energy_ev", energy_multiplier=1e-3))
    s = scan.load()
    np.testing.assert_allclose(s.positions[:, 0], np.arange(12) * 1.5e-6)
    np.testing.assert_allclose(s.positions[:, 1], np.arange(12) * -0.5e-6)
    assert s.energy_kev == pytest.approx(8.0)
    np.testing.assert_array_equal(s.intensities, frames.astype(np.float32))
    # a missing file, and a missing dataset in the other file, are named with the parameter
    with pytest.raises(DataError, match=r"positions_slow: file .*nowhere\.h5 does not exist") as info:
        Hdf5Scan.from_pars(raster_pars(tmp_path / "detector.h5",
                                       positions_slow=str(tmp_path / "nowhere.h5") + "::/entry/sy")).load()
    assert info.value.exit_code == 2
    with pytest.raises(DataError, match=r"master\.h5: dataset /entry/nothing does not exist; set .*positions_fast"):
        Hdf5Scan.from_pars(raster_pars(tmp_path / "detector.h5", positions_fast=other + "::/entry/nothing")).load()


def test_monitor_normalises_frames_to_its_mean_and_masks_dead_frames(tmp_path, caplog):
    path = tmp_path / "m.h5"
    frames = raster_file(path, four_d=False)
    monitor = np.linspace(0.8, 1.2, 12) * 1e5
    monitor[5] = 0.0  # a beam dump
    with h5py.File(path, "a") as f:
        f["/entry/monitor/i0"] = monitor.reshape(3, 4)  # laid out like the raster
    s = Hdf5Scan.from_pars(raster_pars(path, normalisation_dataset="/entry/monitor/i0")).load()
    mean = monitor[monitor > 0].mean()
    for k in (0, 4, 11):
        np.testing.assert_allclose(s.intensities[k], frames[k] * mean / monitor[k], rtol=1e-6)
    assert not s.mask[5].any() and not s.intensities[5].any()
    assert s.mask[[0, 4, 11]].all()
    assert any("not positive for 1 frames" in r.getMessage() for r in caplog.records)
    assert s.meta["monitor_scaled_counts"] is True  # scaled counts: still counting noise
    with h5py.File(path, "a") as f:
        f["/entry/data/fractions"] = frames / 3.0
    s = Hdf5Scan.from_pars(raster_pars(path, intensities="/entry/data/fractions",
                                       normalisation_dataset="/entry/monitor/i0")).load()
    assert "monitor_scaled_counts" not in s.meta
    with h5py.File(path, "a") as f:
        f["/entry/monitor/short"] = np.ones(5)
    with pytest.raises(DataError, match=r"monitor dataset /entry/monitor/short has shape \(5,\); expected one "
                                        r"value per frame \(12\)"):
        Hdf5Scan.from_pars(raster_pars(path, normalisation_dataset="/entry/monitor/short")).load()


def test_fft_shifted_frames_are_detected_and_shifted_back(tmp_path, caplog):
    """Frames written straight from ``numpy.fft.fft2`` (zero frequency at [0, 0]) read as the centred ones."""
    caplog.set_level(logging.INFO, logger="ptycli")
    rng = np.random.default_rng(2)
    yy, xx = np.mgrid[:16, :16]
    centred = rng.poisson(1e3 * np.exp(-((yy - 8) ** 2 + (xx - 8) ** 2) / 8.0)[None] + 1, (5, 16, 16))
    path = tmp_path / "s.h5"
    with h5py.File(path, "w") as f:
        f["/data/centred"] = centred.astype(np.uint32)
        f["/data/shifted"] = np.fft.ifftshift(centred, axes=(-2, -1)).astype(np.uint32)
        f["/data/positions"] = np.zeros((5, 2))
    base = {"dfile": str(path), "energy": 6, "distance": 1, "psize": 1e-4}
    plain = Hdf5Scan.from_pars(dict(base, intensities="/data/centred")).load()
    shifted = Hdf5Scan.from_pars(dict(base, intensities="/data/shifted")).load()
    np.testing.assert_array_equal(shifted.intensities, plain.intensities)
    np.testing.assert_array_equal(shifted.intensities, centred.astype(np.float32))
    assert any("stored FFT-shifted" in r.getMessage() for r in caplog.records)
    # a stated centre (or fftshifted: false) keeps the frames as stored
    kept = Hdf5Scan.from_pars(dict(base, intensities="/data/shifted", center=[8, 8])).load()
    np.testing.assert_array_equal(kept.intensities, np.fft.ifftshift(centred, axes=(-2, -1)).astype(np.float32))
