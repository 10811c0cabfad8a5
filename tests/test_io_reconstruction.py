"""The reconstruction file: documented layout, round trip through the reader, use as an initial guess."""

import json

import h5py
import numpy as np
import pytest

from ptycli.cli import main
from ptycli.errors import DataError
from ptycli.io import load_reconstruction
from ptycli.io.reconstruction import (FORMAT, HISTORY_COLUMNS, history_table, is_reconstruction, read_tree,
                                      write_reconstruction, write_tree)
from cli_helpers import runner  # noqa: E402

CONFIG = """
run: io
scans:
  MF:
    data: {name: MoonFlowerScan, shape: 32, num_frames: 30, photons: 1.0e7, seed: 6}
    coherence: {num_probe_modes: 2}
engines:
  dm: {name: DM, numiter: 4}
  ml: {name: ML, numiter: 2}
"""


def snapshot(rng):
    obj = (rng.normal(size=(1, 20, 22)) + 1j * rng.normal(size=(1, 20, 22))).astype(np.complex64)
    probe = (rng.normal(size=(2, 8, 8)) + 1j * rng.normal(size=(2, 8, 8))).astype(np.complex64)
    return {
        "objects": {"SA": {"data": obj, "psize": (1e-8, 2e-8), "center": (10, 11), "origin": (-1e-7, -2.2e-7)}},
        "probes": {"SA": {"data": probe, "psize": (1e-8, 2e-8), "center": (4, 4), "origin": (-4e-8, -8e-8)}},
        "scans": {"A": {"positions": rng.normal(size=(5, 2)), "positions_initial": np.zeros((5, 2)),
                        "indices": np.arange(5), "energy": 6.2, "distance": 7.0, "loader": "Hdf5Scan",
                        "shape": np.array([8, 8])}},
        "history": [dict(engine="dm", name="DM", iteration=1, fourier_error=2.0, photon_error=3.0,
                         exit_change=0.5, likelihood=None, time_s=0.01),
                    dict(engine="ml", name="ML", iteration=2, fourier_error=1.0, photon_error=1.5,
                         exit_change=0.25, likelihood=7.0, time_s=0.02)],
        "engines": [dict(label="dm", name="DM", numiter=1, iterations=1, finished=True, time_s=0.01,
                         final_fourier_error=2.0),
                    dict(label="ml", name="ML", numiter=1, iterations=1, finished=True, time_s=0.02)],
        "parameters_yaml": "run: x\nengines:\n  dm: {name: DM}\n",
        "config": "x.yaml", "overrides": ["engines.dm.numiter=1"], "run": "x",
        "provenance": {"ptycli": "0.1.0", "mpi_size": 1, "host": "h"},
        "state": {"attrs": {"engine_index": 1, "engine_label": "ml", "engine_iteration": 1, "finished": True},
                  "exit": {"SA": {"data": np.ones((10, 8, 8), np.complex64), "layermap": np.arange(10)}},
                  "engine": {"iteration": 1, "rng": {"state": {"state": 2 ** 100 + 7, "inc": 3}, "name": "PCG64"},
                             "extra": {"dirn": np.arange(6.0)}, "flag": True, "nothing": None, "x": 0.5,
                             "lst": [1, 2, 3]}},
    }


def test_round_trip(tmp_path):
    snap = snapshot(np.random.default_rng(0))
    path = write_reconstruction(str(tmp_path / "r.h5"), snap, kind="result")
    assert is_reconstruction(path)
    rec = load_reconstruction(path)
    assert rec.kind == "result"
    np.testing.assert_array_equal(rec.objects["SA"], snap["objects"]["SA"]["data"])
    np.testing.assert_array_equal(rec.probe, snap["probes"]["SA"]["data"])
    np.testing.assert_allclose(rec.object_meta["SA"]["psize"], [1e-8, 2e-8])
    np.testing.assert_allclose(rec.probe_meta["SA"]["center"], [4, 4])
    np.testing.assert_array_equal(rec.scans["A"]["positions"], snap["scans"]["A"]["positions"])
    assert rec.scans["A"]["energy"] == 6.2 and rec.scans["A"]["loader"] == "Hdf5Scan"
    assert [h["engine"] for h in rec.history] == ["dm", "ml"]
    assert rec.history[0]["likelihood"] is None and rec.history[1]["likelihood"] == 7.0
    assert [h["engine_iteration"] for h in rec.history] == [1, 1]
    assert [e["label"] for e in rec.engines] == ["dm", "ml"]
    assert rec.engines[0]["finished"] is True or rec.engines[0]["finished"] == 1
    assert rec.params.engines.dm.name == "DM"
    assert rec.provenance["host"] == "h" and rec.provenance["overrides"] == ["engines.dm.numiter=1"]
    st = rec.state
    assert st["attrs"]["engine_label"] == "ml"
    assert st["engine"]["rng"]["state"]["state"] == 2 ** 100 + 7
    assert st["engine"]["flag"] is True and st["engine"]["nothing"] is None and st["engine"]["lst"] == [1, 2, 3]
    np.testing.assert_array_equal(st["engine"]["extra"]["dirn"], np.arange(6.0))
    assert st["exit"]["SA"]["layermap"] == list(range(10))
    assert rec.total_iterations == 2


def test_documented_paths_and_units(tmp_path):
    path = write_reconstruction(str(tmp_path / "r.h5"), snapshot(np.random.default_rng(1)))
    with h5py.File(path, "r") as f:
        assert f.attrs["format"] == FORMAT and f.attrs["format_version"] == 1
        ds = f["/reconstruction/object/SA"]
        assert ds.attrs["units"] == "m"
        np.testing.assert_allclose(ds.attrs["psize"], [1e-8, 2e-8])
        assert "/reconstruction/probe/SA" in f
        assert f["/scans/A/positions"].attrs["units"] == "m"
        assert list(f["/history"].attrs["columns"]) == list(HISTORY_COLUMNS)
        assert f["/history/time_s"].attrs["units"] == "s"
        assert np.isnan(f["/history/likelihood"][0])
        assert "/parameters/yaml" in f and "/provenance" in f and "/state/exit/SA" in f


def test_initial_guess_loader_finds_probe_and_object(tmp_path):
    from ptycli.core.illumination import load_array

    snap = snapshot(np.random.default_rng(2))
    path = write_reconstruction(str(tmp_path / "r.h5"), snap)
    np.testing.assert_array_equal(load_array(path, "probe"), snap["probes"]["SA"]["data"])
    np.testing.assert_array_equal(load_array(path, "object"), snap["objects"]["SA"]["data"])


def test_reader_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_reconstruction(str(tmp_path / "none.h5"))
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = 1
    with pytest.raises(DataError, match="not a ptycli reconstruction"):
        load_reconstruction(str(other))
    newer = tmp_path / "newer.h5"
    write_reconstruction(str(newer), snapshot(np.random.default_rng(3)))
    with h5py.File(newer, "a") as f:
        f.attrs["format_version"] = 99
    with pytest.raises(DataError, match="update ptycli"):
        load_reconstruction(str(newer))


def test_tree_and_history_helpers(tmp_path):
    with h5py.File(tmp_path / "t.h5", "w") as f:
        tree = {"a": {"b": np.arange(3), "c": "text"}, "d": 1.5, "e": [{"k": 1}], "f": 1 + 2j}
        write_tree(f.create_group("t"), tree)
        back = read_tree(f["t"])
    np.testing.assert_array_equal(back["a"]["b"], np.arange(3))
    assert back["a"]["c"] == "text" and back["d"] == 1.5 and back["e"] == [{"k": 1}] and back["f"] == 1 + 2j
    t = history_table([dict(engine="dm", iteration=1), dict(engine="dm", iteration=2),
                       dict(engine="ml", iteration=3, likelihood=4.0)])
    assert t["engine_iteration"].tolist() == [1, 2, 1]
    assert np.isnan(t["fourier_error"]).all() and t["likelihood"][2] == 4.0
    assert history_table([])["iteration"].shape == (0,)


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    root = tmp_path_factory.mktemp("recon")
    cfg = root / "io.yaml"
    cfg.write_text(CONFIG)
    out = root / "io.h5"
    res = runner().invoke(main, ["reconstruct", str(cfg), "-o", str(out), "--json"])
    assert res.exit_code == 0, res.stderr
    return out, json.loads(res.stdout)


def test_real_result_round_trip(result):
    out, summary = result
    rec = load_reconstruction(str(out))
    assert rec.params.run == "io"
    assert rec.params.engines.dm.numiter == 4 and rec.params.scans.MF.coherence.num_probe_modes == 2
    assert list(rec.params.engines) == ["dm", "ml"]
    assert rec.probe.shape == (2, 32, 32) and rec.probe.dtype == np.complex64
    assert rec.object.ndim == 3 and min(rec.object.shape[1:]) > 32
    sc = rec.scans["MF"]
    assert sc["positions"].shape == (30, 2) and sc["positions_initial"].shape == (30, 2)
    assert sc["indices"].tolist() == list(range(30))
    assert sc["energy"] == pytest.approx(6.2)
    assert len(rec.history) == 6 and [h["engine"] for h in rec.history] == ["dm"] * 4 + ["ml"] * 2
    assert rec.history[-1]["fourier_error"] == pytest.approx(summary["final_errors"]["fourier_error"])
    assert rec.engines[1]["final_likelihood"] == pytest.approx(summary["engines"][1]["final_errors"]["likelihood"])
    for key in ("ptycli", "numpy", "scipy", "h5py", "command_line", "start_time", "end_time", "host", "mpi_size"):
        assert key in rec.provenance, key
    assert rec.provenance["mpi_size"] == 1
    # the stored parameter tree is a complete config: it validates and reproduces the run's settings
    from ptycli.params.tree import validate

    p = validate(rec.params, require_scans=True, require_engines=True)
    assert p.engines.ml.name == "ML"


def test_result_as_initial_guess(result, tmp_path):
    """illumination.model / sample.model may name an earlier result file."""
    from ptycli.core.ptycho import Ptycho
    from ptycli.params.yamlio import load_config_text

    out, _ = result
    rec = load_reconstruction(str(out))
    tree = load_config_text(CONFIG)
    tree.scans.MF.illumination = {"model": str(out)}
    tree.scans.MF.sample = {"model": str(out)}
    P = Ptycho(tree, level=2)
    probe = next(iter(P.probe.S.values())).data
    np.testing.assert_allclose(np.abs(probe), np.abs(rec.probe), rtol=1e-4, atol=1e-6 * np.abs(rec.probe).max())
