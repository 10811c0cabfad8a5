"""ptycli's data file (write/read round trip) and the atomic-write helpers."""

import os

import h5py
import numpy as np
import pytest

from ptycli.errors import ConfigError, DataError
from ptycli.io.atomic import atomic_write, check_writable
from ptycli.io.datafile import FORMAT, is_datafile, read_datafile, write_datafile
from ptycli.scans import ScanData, get_loader


def make_scan(n=5, h=6, w=8, gt=True):
    rng = np.random.default_rng(3)
    inten = rng.poisson(30, (n, h, w)).astype(np.float32)
    mask = np.ones((n, h, w), bool)
    mask[1, 2, 3] = False
    mask[4, 0, :] = False
    inten[~mask] = 0
    truth = None
    if gt:
        truth = {
            "object": (rng.normal(size=(12, 14)) + 1j * rng.normal(size=(12, 14))).astype(
                np.complex64),
            "object_psize_m": np.array([1e-8, 1.5e-8]),
            "probe": np.exp(1j * rng.normal(size=(h, w))),
            "probe_psize_m": np.array([1e-8, 1.5e-8]),
            "seed": 3,
        }
    return ScanData(
        intensities=inten, mask=mask, positions=rng.normal(size=(n, 2)) * 1e-6,
        positions_unit="m", indices=np.arange(n), num_frames_total=n, energy_kev=6.2,
        distance_m=1.5, psize_m=np.array([172e-6, 170e-6]), shape=(h, w), label="sim1",
        source="MoonFlowerScan", meta={"propagation": "farfield", "noise": "poisson"},
        ground_truth=truth)


def test_layout(tmp_path):
    path = tmp_path / "sim.h5"
    write_datafile(str(path), make_scan(), config_yaml="scans: {}\n")
    with h5py.File(path, "r") as f:
        assert f.attrs["format"] == FORMAT and f.attrs["format_version"] == 1
        assert f.attrs["creator"].startswith("ptycli") and f.attrs["created"]
        assert f["data/intensities"].dtype == np.float32
        assert f["data/intensities"].attrs["units"] == "counts"
        assert f["data/positions"].attrs["units"] == "m"
        assert f["data/positions"].attrs["axes"] == "y,x"
        assert f["data/mask"].dtype == np.uint8 and f["data/mask"][1, 2, 3] == 0
        assert f["geometry/energy"].attrs["units"] == "keV"
        assert f["geometry/energy"][()] == 6.2
        np.testing.assert_array_equal(f["geometry/shape"][()], [6, 8])
        np.testing.assert_array_equal(f["geometry/center"][()], [3, 4])
        assert f["geometry"].attrs["propagation"] == "farfield"
        np.testing.assert_allclose(f["ground_truth/object"].attrs["psize"], [1e-8, 1.5e-8])
        assert f["ground_truth/object"].dtype == np.complex64
        assert f["meta/label"][()].decode() == "sim1"
        assert f["meta/config_yaml"][()].decode() == "scans: {}\n"
    assert is_datafile(str(path))
    assert [p.name for p in tmp_path.iterdir()] == ["sim.h5"]   # no temporary left


def test_round_trip_read_datafile(tmp_path):
    sd = make_scan()
    path = str(tmp_path / "sim.h5")
    write_datafile(path, sd)
    back = read_datafile(path)
    np.testing.assert_array_equal(back.intensities, sd.intensities)
    np.testing.assert_array_equal(back.mask, sd.mask)
    np.testing.assert_array_equal(back.positions, sd.positions)
    np.testing.assert_array_equal(back.indices, sd.indices)
    np.testing.assert_array_equal(back.psize_m, sd.psize_m)
    assert (back.energy_kev, back.distance_m, back.shape) == (6.2, 1.5, (6, 8))
    assert back.label == "sim1" and back.positions_unit == "m"
    assert back.meta["propagation"] == "farfield" and back.meta["noise"] == "poisson"
    gt = back.ground_truth
    np.testing.assert_array_equal(gt["object"], sd.ground_truth["object"])
    np.testing.assert_array_equal(gt["probe"], sd.ground_truth["probe"])
    np.testing.assert_allclose(gt["probe_psize_m"], [1e-8, 1.5e-8])
    assert gt["seed"] == 3


def test_round_trip_through_hdf5scan_defaults(tmp_path):
    sd = make_scan()
    path = str(tmp_path / "sim.h5")
    write_datafile(path, sd)
    s = get_loader("Hdf5Scan").from_pars({"dfile": path}).load()
    np.testing.assert_array_equal(s.intensities, sd.intensities)
    np.testing.assert_array_equal(s.mask, sd.mask)
    np.testing.assert_array_equal(s.positions, sd.positions)
    np.testing.assert_array_equal(s.indices, np.arange(5))
    np.testing.assert_array_equal(s.psize_m, sd.psize_m)
    assert (s.energy_kev, s.distance_m, s.shape) == (6.2, 1.5, (6, 8))
    assert s.label == "sim1" and s.positions_unit == "m"
    assert s.meta["propagation"] == "farfield"
    np.testing.assert_array_equal(s.ground_truth["object"], sd.ground_truth["object"])
    # second rank's block
    s1 = get_loader("Hdf5Scan").from_pars({"dfile": path, "chunk_size": 1}).load(rank=1, size=2)
    np.testing.assert_array_equal(s1.indices, [3, 4])
    np.testing.assert_array_equal(s1.intensities, sd.intensities[3:])


def test_pixel_positions_round_trip(tmp_path):
    sd = make_scan(gt=False)
    sd.positions_unit = "pixel"
    path = str(tmp_path / "px.h5")
    write_datafile(path, sd)
    assert read_datafile(path).positions_unit == "pixel"
    assert get_loader("Hdf5Scan").from_pars({"dfile": path}).load().positions_unit == "pixel"
    assert read_datafile(path).ground_truth is None


def test_read_datafile_errors(tmp_path):
    with pytest.raises(DataError, match="nothere.h5 does not exist"):
        read_datafile(str(tmp_path / "nothere.h5"))
    (tmp_path / "text.h5").write_text("hello")
    with pytest.raises(DataError, match="text.h5 is not a readable HDF5 file"):
        read_datafile(str(tmp_path / "text.h5"))
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = 1
    with pytest.raises(DataError, match="other.h5 is not a ptycli data file"):
        read_datafile(str(tmp_path / "other.h5"))
    assert not is_datafile(str(tmp_path / "other.h5"))
    path = str(tmp_path / "sim.h5")
    write_datafile(path, make_scan(gt=False))
    with h5py.File(path, "a") as f:
        del f["data/positions"]
    with pytest.raises(DataError, match="sim.h5: dataset /data/positions is missing"):
        read_datafile(path)


def test_write_failure_leaves_old_file(tmp_path, monkeypatch):
    path = str(tmp_path / "sim.h5")
    write_datafile(path, make_scan(gt=False))
    bad = make_scan(gt=False)
    bad.positions = np.zeros((3, 2))   # wrong count: reshape fails inside the write
    with pytest.raises(ValueError):
        write_datafile(path, bad)
    assert read_datafile(path).num_frames == 5
    assert [p.name for p in tmp_path.iterdir()] == ["sim.h5"]


# -- atomic helpers ---------------------------------------------------------------------------


def test_atomic_write_success_and_failure(tmp_path):
    target = tmp_path / "sub" / "out.npy"
    with atomic_write(str(target)) as tmp:
        assert os.path.dirname(tmp) == str(tmp_path / "sub")
        assert tmp.endswith(".npy")
        np.save(tmp, np.arange(3))
        assert not target.exists()
    np.testing.assert_array_equal(np.load(target), np.arange(3))
    with pytest.raises(RuntimeError):
        with atomic_write(str(target)) as tmp:
            np.save(tmp, np.arange(5))
            raise RuntimeError("boom")
    np.testing.assert_array_equal(np.load(target), np.arange(3))
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["out.npy"]


def test_check_writable(tmp_path):
    out = tmp_path / "a" / "b" / "r.h5"
    assert check_writable(str(out), force=False) == str(out)
    assert out.parent.is_dir()
    out.write_text("x")
    with pytest.raises(ConfigError, match="r.h5 already exists.*--force"):
        check_writable(str(out), force=False)
    check_writable(str(out), force=True)
    with pytest.raises(ConfigError, match="is a folder"):
        check_writable(str(tmp_path / "a"), force=True)
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        try:
            with pytest.raises(ConfigError, match="not writable"):
                check_writable(str(ro / "x.h5"))
        finally:
            ro.chmod(0o700)
