"""CXI files: data round trips, translation column order, energy units, results, CxiScan."""

import h5py
import numpy as np
import pytest

from ptycli.errors import DataError
from ptycli.io.cxi import (ELECTRON_VOLT_J, joule_to_kev, kev_to_joule, read_cxi_frames,
                           read_cxi_meta, read_cxi_result, write_cxi_data, write_cxi_result)


def _synthetic(n=12, h=10, w=7, seed=1):
    rng = np.random.default_rng(seed)
    data = rng.poisson(20.0, size=(n, h, w)).astype(np.float32)
    # y and x clearly different: y in [-2, 2] µm, x in [10, 21] µm
    pos = np.stack([np.linspace(-2e-6, 2e-6, n), 10e-6 + 1e-6 * np.arange(n)], axis=1)
    mask = np.ones((h, w), bool)
    mask[0, :] = False
    mask[h // 2, w - 2] = False
    return data, pos, mask


@pytest.fixture
def cxi_file(tmp_path):
    data, pos, mask = _synthetic()
    path = str(tmp_path / "scan.cxi")
    write_cxi_data(path, data, pos, energy_kev=6.2, distance_m=3.5, psize_m=(172e-6, 55e-6), mask=mask)
    return path, data, pos, mask


def test_energy_conversion():
    assert kev_to_joule(1.0) == pytest.approx(1.602176634e-16, rel=1e-15)
    assert ELECTRON_VOLT_J == 1.602176634e-19
    assert joule_to_kev(kev_to_joule(8.8)) == pytest.approx(8.8, rel=1e-15)


def test_layout_si_units_and_links(cxi_file):
    path, data, pos, mask = cxi_file
    with h5py.File(path, "r") as f:
        assert f["cxi_version"][()] == 150
        det = f["entry_1/instrument_1/detector_1"]
        assert det["data"].shape == data.shape
        assert det["distance"][()] == 3.5
        assert det["x_pixel_size"][()] == 55e-6 and det["y_pixel_size"][()] == 172e-6
        assert f["entry_1/instrument_1/source_1/energy"][()] == pytest.approx(6.2e3 * 1.602176634e-19)
        t = f["entry_1/sample_1/geometry_1/translation"][()]
        assert t.shape == (12, 3)
        np.testing.assert_array_equal(t[:, 0], pos[:, 1])  # column 0 is x
        np.testing.assert_array_equal(t[:, 1], pos[:, 0])  # column 1 is y
        np.testing.assert_array_equal(t[:, 2], 0)
        assert f["entry_1/data_1"].get("data", getlink=True).path == \
            "/entry_1/instrument_1/detector_1/data"
        assert isinstance(f["entry_1/data_1"].get("translation", getlink=True), h5py.SoftLink)
        np.testing.assert_array_equal(f["entry_1/data_1/data"][()], data)
        bits = det["mask"][()]
        assert bits.dtype == np.uint32
        np.testing.assert_array_equal(bits & 1, ~mask)


def test_round_trip(cxi_file):
    path, data, pos, mask = cxi_file
    m = read_cxi_meta(path)
    assert m["num_frames"] == 12 and m["frame_shape"] == (10, 7)
    assert m["energy_kev"] == pytest.approx(6.2, rel=1e-14)
    assert m["distance_m"] == 3.5
    np.testing.assert_array_equal(m["psize_m"], [172e-6, 55e-6])
    assert m["has_mask"] and m["cxi_version"] == 150 and m["positions_unit"] == "m"
    got = read_cxi_frames(path)
    np.testing.assert_array_equal(got["data"], data)
    np.testing.assert_array_equal(got["positions"], pos)
    np.testing.assert_array_equal(got["mask"], mask)
    part = read_cxi_frames(path, 5, 9)
    np.testing.assert_array_equal(part["data"], data[5:9])
    np.testing.assert_array_equal(part["positions"], pos[5:9])
    np.testing.assert_array_equal(part["indices"], np.arange(5, 9))


def test_translation_column_order_hand_written(tmp_path):
    """A file written by someone else: translation x, y, z must land as (y, x)."""
    p = str(tmp_path / "hand.cxi")
    with h5py.File(p, "w") as f:
        f["cxi_version"] = 140
        f["entry_1/instrument_1/detector_1/data"] = np.ones((2, 4, 4), np.uint16)
        f["entry_1/instrument_1/source_1/energy"] = 1.602176634e-15  # 10 keV
        f["entry_1/sample_1/geometry_1/translation"] = [[1e-6, 2e-6, 0.5], [3e-6, 4e-6, 0.5]]
    m = read_cxi_meta(p)
    assert m["energy_kev"] == pytest.approx(10.0) and m["distance_m"] is None and m["psize_m"] is None
    assert m["data_path"] == "/entry_1/instrument_1/detector_1/data"
    got = read_cxi_frames(p)
    np.testing.assert_array_equal(got["positions"], [[2e-6, 1e-6], [4e-6, 3e-6]])
    assert got["mask"] is None and got["data"].dtype == np.float32


def test_mask_bits_and_per_frame_mask(tmp_path):
    data, pos, _ = _synthetic(n=3, h=4, w=4)
    p = str(tmp_path / "m.cxi")
    write_cxi_data(p, data, pos, energy_kev=8, distance_m=1, psize_m=75e-6)
    bits = np.zeros((3, 4, 4), np.uint32)
    bits[0, 0, 0] = 0x1   # invalid
    bits[1, 1, 1] = 0x2   # saturated only
    bits[2, 2, 2] = 0x3
    with h5py.File(p, "a") as f:
        f["entry_1/instrument_1/detector_1/mask"] = bits
    got = read_cxi_frames(p)
    assert got["mask"].shape == (3, 4, 4)
    assert not got["mask"][0, 0, 0] and got["mask"][1, 1, 1] and not got["mask"][2, 2, 2]
    assert got["mask"].sum() == 48 - 2
    strict = read_cxi_frames(p, mask_bits=0x3)
    assert strict["mask"].sum() == 48 - 3
    assert read_cxi_frames(p, 1, 2)["mask"].shape == (1, 4, 4)


def test_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_cxi_meta(str(tmp_path / "none.cxi"))
    bad = tmp_path / "bad.cxi"
    bad.write_bytes(b"\x00\x01 garbage")
    with pytest.raises(DataError, match="not an HDF5 file"):
        read_cxi_frames(str(bad))
    p = str(tmp_path / "nodata.cxi")
    with h5py.File(p, "w") as f:
        f["entry_1/sample_1/geometry_1/translation"] = np.zeros((2, 3))
    with pytest.raises(DataError) as exc:
        read_cxi_meta(p)
    assert "nodata.cxi" in str(exc.value) and "detector_1/data" in str(exc.value)
    p2 = str(tmp_path / "notrans.cxi")
    with h5py.File(p2, "w") as f:
        f["entry_1/instrument_1/detector_1/data"] = np.zeros((2, 3, 3))
    with pytest.raises(DataError, match=r"notrans\.cxi.*translation"):
        read_cxi_frames(p2)
    p3 = str(tmp_path / "noentry.cxi")
    with h5py.File(p3, "w") as f:
        f["x"] = 1
    with pytest.raises(DataError, match="not a CXI file"):
        read_cxi_meta(p3)


def test_result_round_trip(tmp_path):
    rng = np.random.default_rng(3)
    obj = (rng.random((20, 30)) + 1j * rng.random((20, 30))).astype(np.complex64)
    probe = (rng.random((2, 8, 8)) * np.exp(1j * rng.random((2, 8, 8)))).astype(np.complex64)
    cfg = "scans:\n  s1:\n    data:\n      name: CxiScan\n"
    p = str(tmp_path / "recon.cxi")
    write_cxi_result(p, obj, probe, 2.9e-8, (3e-8, 2e-8), program="ptycli", version="0.1.0",
                     command="ptycli reconstruct run.yaml", configuration_yaml=cfg,
                     energy_kev=8.8, distance_m=2.0, positions=[[1e-6, 2e-6], [3e-6, 4e-6]])
    with h5py.File(p, "r") as f:
        img = f["entry_1/image_1"]
        assert img["data_type"][()] == b"object" and img["data_space"][()] == b"real"
        assert f["entry_1/image_2/data_type"][()] == b"probe"
        assert f["entry_1/image_1/process_1/program"][()] == b"ptycli"
        assert f["entry_1/sample_1/geometry_1/translation"][0, 0] == 2e-6
    r = read_cxi_result(p)
    np.testing.assert_array_equal(r["object"], obj)
    np.testing.assert_array_equal(r["probe"], probe)
    np.testing.assert_array_equal(r["object_psize_m"], [2.9e-8, 2.9e-8])
    np.testing.assert_array_equal(r["probe_psize_m"], [3e-8, 2e-8])
    assert r["program"] == "ptycli" and r["version"] == "0.1.0"
    assert r["command"] == "ptycli reconstruct run.yaml" and r["configuration"] == cfg
    assert r["energy_kev"] == pytest.approx(8.8) and r["distance_m"] == 2.0
    np.testing.assert_array_equal(r["positions"], [[1e-6, 2e-6], [3e-6, 4e-6]])
    assert [im["data_type"] for im in r["images"]] == ["object", "probe"]


def test_result_read_rejects_data_file(cxi_file):
    with pytest.raises(DataError, match="image_N"):
        read_cxi_result(cxi_file[0])


# ---------------------------------------------------------------------------
# the loader (through the ScanLoader base class)


def _loader(pars):
    from ptycli.scans import get_loader

    return get_loader("CxiScan").from_pars(pars)


def test_loader_round_trip_and_rank_blocks(cxi_file):
    path, data, pos, mask = cxi_file
    full = _loader({"dfile": path, "center": "geometric", "chunk_size": 5}).load(rank=0, size=1)
    assert full.num_frames_total == 12 and full.shape == (10, 7)
    np.testing.assert_array_equal(full.mask, np.broadcast_to(mask, data.shape))
    np.testing.assert_array_equal(full.intensities, data * mask)
    np.testing.assert_array_equal(full.positions, pos)
    assert full.energy_kev == pytest.approx(6.2, rel=1e-14) and full.distance_m == 3.5
    np.testing.assert_array_equal(full.psize_m, [172e-6, 55e-6])
    assert full.positions_unit == "m" and full.meta["cxi_version"] == 150
    part = _loader({"dfile": path, "center": "geometric"}).load(rank=1, size=2)
    np.testing.assert_array_equal(part.indices, np.arange(6, 12))
    np.testing.assert_array_equal(part.positions, pos[6:])
    np.testing.assert_array_equal(part.intensities, full.intensities[6:])


def test_loader_needs_geometry_or_config(tmp_path):
    from ptycli.errors import ConfigError

    p = str(tmp_path / "bare.cxi")
    with h5py.File(p, "w") as f:
        f["entry_1/instrument_1/detector_1/data"] = np.ones((2, 4, 4))
        f["entry_1/sample_1/geometry_1/translation"] = np.zeros((2, 3))
    with pytest.raises(ConfigError, match="energy"):
        _loader({"dfile": p}).load(0, 1)
    d = _loader({"dfile": p, "energy": 5.0, "distance": 1.0, "psize": 1e-4}).load(0, 1)
    assert d.energy_kev == 5.0 and d.num_frames == 2


def test_loader_mask_bits_parameter(tmp_path):
    data, pos, _ = _synthetic(n=2, h=4, w=4)
    p = str(tmp_path / "b.cxi")
    write_cxi_data(p, data, pos, energy_kev=8, distance_m=1, psize_m=75e-6)
    with h5py.File(p, "a") as f:
        bits = np.zeros((4, 4), np.uint32)
        bits[1, 2] = 0x4
        f["entry_1/instrument_1/detector_1/mask"] = bits
    base = {"dfile": p, "center": "geometric"}
    assert _loader(base).load(0, 1).mask.all()
    assert not _loader(dict(base, mask_bits=0xFF)).load(0, 1).mask[:, 1, 2].any()
