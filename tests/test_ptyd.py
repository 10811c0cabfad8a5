"""PtyPy .ptyd files: writer/reader round trips, the real PtyPy file, PtydScan."""

import os

import h5py
import numpy as np
import pytest

from ptycli.errors import DataError
from ptycli.io.ptyd import read_node, read_ptyd_frames, read_ptyd_meta, write_node, write_ptyd

REAL = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "siemens.ptyd")
if not os.path.exists(REAL):
    REAL = "/work/shared/data/siemens.ptyd"
needs_real = pytest.mark.skipif(not os.path.exists(REAL), reason="shared/data/siemens.ptyd not present")


def _synthetic(n=25, h=8, w=6, seed=0):
    rng = np.random.default_rng(seed)
    data = rng.poisson(50.0, size=(n, h, w)).astype(np.float32)
    pos = np.stack([np.linspace(-1e-6, 1e-6, n), np.linspace(3e-6, 5e-6, n) ** 2 * 1e5], axis=1)
    weights = np.ones((n, h, w))
    weights[:, 0, 0] = 0.0
    weights[min(3, n - 1), 2, 1] = 0.0
    return data, pos, weights


@pytest.fixture
def ptyd_file(tmp_path):
    data, pos, weights = _synthetic()
    path = str(tmp_path / "syn.ptyd")
    write_ptyd(path, data, pos, weights, energy_kev=6.2, distance_m=3.5, psize_m=(172e-6, 55e-6),
               label="syn", chunk_size=10, compression=None)
    return path, data, pos, weights


def test_round_trip_meta(ptyd_file):
    path, data, pos, weights = ptyd_file
    m = read_ptyd_meta(path)
    assert m["num_frames"] == 25 and m["num_frames_meta"] == 25
    assert m["frame_shape"] == (8, 6) and m["shape"] == (8, 6)
    assert m["energy_kev"] == 6.2 and m["distance_m"] == 3.5
    np.testing.assert_array_equal(m["psize_m"], [172e-6, 55e-6])
    np.testing.assert_array_equal(m["center"], [4, 3])
    assert m["label"] == "syn" and m["positions_unit"] == "m"
    assert m["chunks"] == [("0", 0, 10), ("1", 10, 20), ("2", 20, 25)]
    assert m["info"]["energy"] == 6.2 and m["info"]["orientation"] is None


def test_round_trip_frames_across_chunks(ptyd_file):
    path, data, pos, weights = ptyd_file
    full = read_ptyd_frames(path)
    np.testing.assert_array_equal(full["data"], data)
    np.testing.assert_array_equal(full["positions"], pos)
    np.testing.assert_array_equal(full["mask"], weights > 0)
    np.testing.assert_array_equal(full["indices"], np.arange(25))
    assert full["data"].dtype == np.float32 and full["positions"].dtype == np.float64
    # a block spanning chunks 0 and 1, and one spanning all three
    for a, b in ((7, 13), (9, 21), (10, 20), (24, 25), (5, 5)):
        part = read_ptyd_frames(path, a, b)
        np.testing.assert_array_equal(part["data"], data[a:b])
        np.testing.assert_array_equal(part["positions"], pos[a:b])
        np.testing.assert_array_equal(part["mask"], weights[a:b] > 0)
        np.testing.assert_array_equal(part["indices"], np.arange(a, b))
    assert not read_ptyd_frames(path, 3, 4)["mask"][0, 2, 1]


def test_out_of_range_block(ptyd_file):
    with pytest.raises(DataError, match="25 frames"):
        read_ptyd_frames(ptyd_file[0], 20, 30)


def test_written_layout_matches_ptypy_encoding(ptyd_file):
    path = ptyd_file[0]
    with h5py.File(path, "r") as f:
        assert f.attrs["h5rw_version"] == "0.1"
        for grp in ("chunks", "chunks/0", "meta", "info"):
            assert f[grp].attrs["type"] == "dict"
        assert f["chunks/0/data"].attrs["type"] == "array"
        assert f["chunks/0/data"].dtype == np.float32
        assert f["chunks/0/indices"].attrs["type"] == "arraylist"
        assert f["meta/label"].attrs["type"] == "string"
        assert h5py.check_string_dtype(f["meta/label"].dtype).length is None  # variable length
        assert f["meta/energy"].attrs["type"] == "scalar" and f["meta/energy"].shape == ()
        assert f["meta/num_frames"].dtype == np.int64
        assert f["info/orientation"].attrs["type"] == "None"


def test_typed_nodes_round_trip(tmp_path):
    value = {"s": "text", "i": 3, "f": 2.5, "b": True, "n": None, "a": np.arange(6.0).reshape(2, 3),
             "l": [1, 2, 3], "mixed": ["x", 1], "d": {"inner": "y"}}
    with h5py.File(tmp_path / "n.h5", "w") as f:
        write_node(f, "root", value)
    with h5py.File(tmp_path / "n.h5", "r") as f:
        got = read_node(f["root"])
    np.testing.assert_array_equal(got.pop("a"), value.pop("a"))
    assert got == value


def test_weights_default_and_2d(tmp_path):
    data, pos, _ = _synthetic(n=4)
    p = str(tmp_path / "a.ptyd")
    write_ptyd(p, data, pos, energy_kev=1, distance_m=1, psize_m=1e-4)
    assert read_ptyd_frames(p)["mask"].all()
    w2 = np.ones(data.shape[1:])
    w2[1, 1] = 0
    write_ptyd(p, data, pos, w2, energy_kev=1, distance_m=1, psize_m=1e-4)
    m = read_ptyd_frames(p)["mask"]
    assert not m[:, 1, 1].any() and m.sum() == m.size - 4
    np.testing.assert_array_equal(read_ptyd_meta(p)["psize_m"], [1e-4, 1e-4])


def test_errors_missing_file_not_hdf5_missing_dataset(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_ptyd_meta(str(tmp_path / "nope.ptyd"))
    bad = tmp_path / "text.ptyd"
    bad.write_text("not hdf5\n")
    with pytest.raises(DataError, match="not an HDF5 file"):
        read_ptyd_meta(str(bad))
    data, pos, _ = _synthetic(n=4)
    p = str(tmp_path / "broken.ptyd")
    write_ptyd(p, data, pos, energy_kev=1, distance_m=1, psize_m=1e-4, chunk_size=2)
    with h5py.File(p, "a") as f:
        del f["chunks/1/positions"]
    with pytest.raises(DataError) as exc:
        read_ptyd_frames(p)
    assert p in str(exc.value) and "chunks/1/positions" in str(exc.value)
    with h5py.File(p, "a") as f:
        del f["chunks/0/data"]
    with pytest.raises(DataError, match=r"broken\.ptyd.*chunks/0/data"):
        read_ptyd_meta(p)
    with h5py.File(str(tmp_path / "other.h5"), "w") as f:
        f["x"] = 1
    with pytest.raises(DataError, match="not a PtyPy"):
        read_ptyd_meta(str(tmp_path / "other.h5"))


def test_meta_missing_geometry_is_none(tmp_path):
    data, pos, _ = _synthetic(n=3)
    p = str(tmp_path / "g.ptyd")
    write_ptyd(p, data, pos, energy_kev=1, distance_m=1, psize_m=1e-4)
    with h5py.File(p, "a") as f:
        del f["meta/energy"]
        del f["meta/center"]
    m = read_ptyd_meta(p)
    assert m["energy_kev"] is None and m["center"] is None and m["distance_m"] == 1.0


# ---------------------------------------------------------------------------
# the real file written by PtyPy


@needs_real
def test_real_ptyd_meta():
    m = read_ptyd_meta(REAL)
    assert m["num_frames"] == 516 and m["num_frames_meta"] == 516
    assert m["frame_shape"] == (128, 128)
    assert m["energy_kev"] == pytest.approx(8.8)
    assert m["distance_m"] == pytest.approx(2.0)
    np.testing.assert_allclose(m["psize_m"], [75e-6, 75e-6])
    np.testing.assert_array_equal(m["center"], [64, 64])
    assert m["label"] == "siemens"
    assert m["chunks"] == [("0", 0, 200), ("1", 200, 400), ("2", 400, 516)]


@needs_real
def test_real_ptyd_frames_block_spanning_chunks():
    got = read_ptyd_frames(REAL, 195, 205)
    assert got["data"].shape == (10, 128, 128) and got["positions"].shape == (10, 2)
    np.testing.assert_array_equal(got["indices"], np.arange(195, 205))
    assert got["mask"].all()
    with h5py.File(REAL, "r") as f:
        np.testing.assert_array_equal(got["data"][5:], f["chunks/1/data"][:5])
        np.testing.assert_array_equal(got["positions"][:5], f["chunks/0/positions"][195:])
    # centred frames: the brightest region is around pixel (64, 64)
    total = got["data"].sum(axis=0)
    yy, xx = np.indices(total.shape)
    assert abs((total * yy).sum() / total.sum() - 64) < 6
    assert abs((total * xx).sum() / total.sum() - 64) < 6
    assert np.abs(got["positions"]).max() < 1e-5  # metres, a few µm scan


@needs_real
def test_writer_mirrors_real_layout(tmp_path):
    """Our writer produces the same node tree, types and dtypes as PtyPy's file."""
    def describe(f):
        out = {}

        def visit(name, obj):
            kind = obj.attrs.get("type")
            if isinstance(obj, h5py.Dataset):
                out[name] = (kind, obj.dtype.kind, obj.ndim)
            else:
                out[name] = (kind,)
        f.visititems(visit)
        return out

    p = str(tmp_path / "copy.ptyd")
    with h5py.File(REAL, "r") as f:
        data = f["chunks/0/data"][:6]
        pos = f["chunks/0/positions"][:6]
        want = describe(f)
    write_ptyd(p, data, pos, energy_kev=8.8, distance_m=2.0, psize_m=75e-6, label="siemens",
               chunk_size=2)
    with h5py.File(p, "r") as f:
        got = describe(f)
    for key in ("meta", "info"):
        sub_want = {k: v for k, v in want.items() if k.startswith(key)}
        sub_got = {k: v for k, v in got.items() if k.startswith(key)}
        assert sub_got == sub_want
    chunk_want = {k[len("chunks/0"):]: v for k, v in want.items() if k.startswith("chunks/0")}
    chunk_got = {k[len("chunks/1"):]: v for k, v in got.items() if k.startswith("chunks/1")}
    assert chunk_got == chunk_want


# ---------------------------------------------------------------------------
# the loader (through the ScanLoader base class)


def _loader(pars):
    from ptycli.scans import get_loader

    return get_loader("PtydScan").from_pars(pars)


def test_loader_synthetic_rank_blocks(ptyd_file):
    path, data, pos, weights = ptyd_file
    full = _loader({"dfile": path, "chunk_size": 7}).load(rank=0, size=1)
    assert full.num_frames_total == 25 and full.shape == (8, 6)
    np.testing.assert_array_equal(full.intensities, data * (weights > 0))
    np.testing.assert_array_equal(full.mask, weights > 0)
    np.testing.assert_array_equal(full.positions, pos)
    assert full.positions_unit == "m" and full.label == "syn"
    assert full.energy_kev == 6.2 and full.distance_m == 3.5
    np.testing.assert_array_equal(full.psize_m, [172e-6, 55e-6])
    parts = [_loader({"dfile": path, "chunk_size": 4}).load(rank=r, size=3) for r in range(3)]
    assert [p.num_frames for p in parts] == [9, 8, 8]
    np.testing.assert_array_equal(np.concatenate([p.intensities for p in parts]), full.intensities)
    np.testing.assert_array_equal(np.concatenate([p.positions for p in parts]), pos)
    np.testing.assert_array_equal(parts[1].indices, np.arange(9, 17))


def test_loader_config_overrides_geometry(ptyd_file):
    d = _loader({"dfile": ptyd_file[0], "energy": 9.0, "distance": 1.5, "psize": 1e-4}).load(0, 1)
    assert d.energy_kev == 9.0 and d.distance_m == 1.5
    np.testing.assert_array_equal(d.psize_m, [1e-4, 1e-4])


def test_loader_missing_file(tmp_path):
    with pytest.raises(DataError, match="nope.ptyd"):
        _loader({"dfile": str(tmp_path / "nope.ptyd")}).load(0, 1)


@needs_real
def test_loader_real_file():
    full = _loader({"dfile": REAL}).load(rank=0, size=1)
    assert full.num_frames_total == 516 and full.intensities.shape == (516, 128, 128)
    assert full.mask.all() and full.meta["center_raw"] == [64.0, 64.0]
    assert full.energy_kev == pytest.approx(8.8) and full.distance_m == pytest.approx(2.0)
    np.testing.assert_allclose(full.psize_m, [75e-6, 75e-6])
    part = _loader({"dfile": REAL}).load(rank=1, size=4)
    assert part.num_frames_total == 516 and part.num_frames == 129
    np.testing.assert_array_equal(part.indices, np.arange(129, 258))
    assert part.shape == (128, 128) and part.intensities.dtype == np.float32
    assert part.energy_kev == pytest.approx(8.8) and part.distance_m == pytest.approx(2.0)
    np.testing.assert_allclose(part.psize_m, [75e-6, 75e-6])
    assert part.positions_unit == "m" and part.label == "siemens"
    raw = read_ptyd_frames(REAL, 129, 258)
    np.testing.assert_array_equal(part.intensities, raw["data"])  # already centred: untouched
    np.testing.assert_array_equal(part.positions, raw["positions"])
    np.testing.assert_array_equal(full.intensities[129:258], part.intensities)
