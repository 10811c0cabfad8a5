"""Hdf5Scan: dataset mapping, multipliers, units, blocks and error messages."""

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
