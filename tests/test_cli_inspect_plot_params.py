"""``ptycli inspect``, ``ptycli plot`` and ``ptycli params``."""

import json

import pytest
import yaml

from ptycli.cli import main
from cli_helpers import runner, invoke  # noqa: E402

SIM = """
scans:
  MF:
    data: {name: MoonFlowerScan, shape: 32, num_frames: 30, photons: 1.0e7, seed: 7}
"""
RECON = SIM + """
engines:
  dm: {name: DM, numiter: 4}
  ml: {name: ML, numiter: 2}
"""


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("files")
    (root / "sim.yaml").write_text(SIM)
    (root / "recon.yaml").write_text(RECON)
    out = {}
    for fmt in ("h5", "cxi", "ptyd"):
        path = root / ("data." + fmt)
        res = invoke("simulate", root / "sim.yaml", "-o", path)
        assert res.exit_code == 0, res.stderr
        out[fmt] = path
    rec = root / "recon.h5"
    res = invoke("reconstruct", root / "recon.yaml", "-o", rec, "--format", "cxi")
    assert res.exit_code == 0, res.stderr
    out["recon"] = rec
    out["cxi-result"] = root / "recon.cxi"
    out["root"] = root
    return out


# -- inspect ----------------------------------------------------------------------------------

def test_inspect_reconstruction(files):
    res = invoke("inspect", files["recon"])
    assert res.exit_code == 0, res.stderr
    text = res.stdout
    assert "ptycli reconstruction" in text and "iterations:  6" in text
    assert "engine dm" in text and "engine ml" in text and "fourier_error" in text
    assert "object SMF" in text and "probe  SMF" in text and "versions:" in text
    res = invoke("inspect", files["recon"], "--json")
    info = json.loads(res.stdout)
    assert info["kind"] == "reconstruction" and info["iterations"] == 6
    assert [(e["label"], e["name"], e["iterations"]) for e in info["engines"]] == [("dm", "DM", 4), ("ml", "ML", 2)]
    assert info["probes"]["SMF"]["shape"] == [1, 32, 32]
    assert info["scans"]["MF"]["frames"] == 30
    assert info["provenance"]["ptycli"]
    assert info["resume"]["finished"]
    assert set(info["final_errors"]) >= {"fourier_error", "photon_error"}


@pytest.mark.parametrize("fmt, kind", [("h5", "data"), ("cxi", "cxi"), ("ptyd", "ptyd")])
def test_inspect_data_files(files, fmt, kind):
    res = invoke("inspect", files[fmt], "--json")
    assert res.exit_code == 0, res.stderr
    info = json.loads(res.stdout)
    assert info["kind"] == kind
    assert info["frames"] == 30 and info["frame_shape"] == [32, 32]
    assert info["energy_kev"] == pytest.approx(6.2) and info["distance_m"] == pytest.approx(7.0)
    res = invoke("inspect", files[fmt])
    assert "frames:      30 of 32x32" in res.stdout


def test_inspect_cxi_result(files):
    info = json.loads(invoke("inspect", files["cxi-result"], "--json").stdout)
    assert info["kind"] == "cxi-result"
    assert [im["data_type"] for im in info["images"]] == ["object", "probe"]


def test_inspect_tree(files):
    res = invoke("inspect", files["recon"], "--tree")
    assert res.exit_code == 0
    lines = res.stdout.splitlines()
    assert any(ln.startswith("/reconstruction/probe/SMF") and "(1, 32, 32)" in ln and "complex64" in ln
               for ln in lines)
    assert "/history/" in lines
    res = invoke("inspect", files["cxi"], "--tree", "--attrs")
    assert "/entry_1/data_1/data -> /entry_1/instrument_1/detector_1/data" in res.stdout
    res = invoke("inspect", files["recon"], "--tree", "--json", "--attrs")
    nodes = json.loads(res.stdout)["nodes"]
    probe = [n for n in nodes if n["path"] == "/reconstruction/probe/SMF"][0]
    assert probe["attrs"]["units"] == "m" and len(probe["attrs"]["psize"]) == 2


def test_inspect_errors(tmp_path):
    res = invoke("inspect", tmp_path / "nothing.h5")
    assert res.exit_code == 2 and res.stderr.startswith("Error:") and "does not exist" in res.stderr
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    res = invoke("inspect", text)
    assert res.exit_code == 2 and "not an HDF5 file" in res.stderr


# -- plot -------------------------------------------------------------------------------------

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("what", ["recon", "h5", "cxi-result"])
def test_plot(files, tmp_path, what):
    pytest.importorskip("matplotlib")
    out = tmp_path / ("%s.png" % what)
    res = invoke("plot", files[what], "-o", out)
    assert res.exit_code == 0, res.stderr
    assert res.stdout == "%s\n" % out
    assert out.read_bytes()[:8] == PNG
    res = invoke("plot", files[what], "-o", out)
    assert res.exit_code == 2 and "--force" in res.stderr


def test_plot_pdf(files, tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "r.pdf"
    assert invoke("plot", files["recon"], "-o", out, "--title", "test").exit_code == 0
    assert out.read_bytes()[:4] == b"%PDF"


def test_plot_without_matplotlib(files, tmp_path, monkeypatch):
    from ptycli.utils import plotting

    def missing():
        raise ImportError("matplotlib is needed for plotting: pip install 'ptycli[plot]'")

    monkeypatch.setattr(plotting, "figure_module", missing)
    res = invoke("plot", files["recon"], "-o", tmp_path / "x.png")
    assert res.exit_code == 1
    assert res.stderr.strip() == "Error: matplotlib is needed for plotting: pip install 'ptycli[plot]'"
    assert not (tmp_path / "x.png").exists()


def test_plot_errors(files, tmp_path):
    res = invoke("plot", files["recon"], "-o", tmp_path / "x.gif2")
    assert res.exit_code == 2 and "figure format" in res.stderr
    res = invoke("plot", tmp_path / "missing.h5", "-o", tmp_path / "x.png")
    assert res.exit_code == 2
    res = invoke("plot", files["recon"])
    assert res.exit_code == 2  # -o is required


# -- params -----------------------------------------------------------------------------------

def test_params_listing():
    res = invoke("params", "engines.DM")
    assert res.exit_code == 0
    assert "engines.<label>[DM].alpha = 1.0" in res.stdout
    assert "engines.<label>.numiter = 20" in res.stdout
    rows = json.loads(invoke("params", "io", "--json").stdout)
    paths = {r["path"]: r for r in rows}
    assert paths["io.checkpoint.interval"]["default"] == 50
    assert all(r["path"].startswith("io.") for r in rows)
    assert {"path", "default", "type", "doc", "unit"} <= set(rows[0])
    res = invoke("params")
    assert res.exit_code == 0 and "scans.<label>.data[MoonFlowerScan].shape" in res.stdout


def test_params_unknown_path():
    res = invoke("params", "engines.dm.alpah")
    assert res.exit_code == 2 and res.stderr.startswith("Error: params: no parameter matches")


def test_params_validate(files, tmp_path):
    res = invoke("params", "--validate", files["root"] / "recon.yaml")
    assert res.exit_code == 0 and res.stdout == "OK\n"
    res = invoke("params", "--validate", "-", "--json", input=RECON)
    assert res.exit_code == 0
    summary = json.loads(res.stdout)
    assert summary["valid"] and [e["label"] for e in summary["engines"]] == ["dm", "ml"]
    res = invoke("params", "--validate", files["root"] / "recon.yaml", "--set", "engines.dm.numiter=x")
    assert res.exit_code == 2
    assert res.stdout == "" and len(res.stderr.strip().splitlines()) == 1 and "numiter" in res.stderr
    # a scan-only config is fine for simulate, not for reconstruct
    res = invoke("params", "--validate", files["root"] / "sim.yaml")
    assert res.exit_code == 2 and "engine" in res.stderr
    assert invoke("params", "--validate", files["root"] / "sim.yaml", "--for", "simulate").exit_code == 0
    # input files are opened (metadata only)
    bad = tmp_path / "bad.yaml"
    bad.write_text(RECON.replace("{name: MoonFlowerScan, shape: 32, num_frames: 30, photons: 1.0e7, seed: 7}",
                                 "{name: Hdf5Scan, dfile: nowhere.h5}"))
    res = invoke("params", "--validate", bad)
    assert res.exit_code == 2 and "nowhere.h5" in res.stderr
    assert invoke("params", "--validate", bad, "--no-data").exit_code == 0


def test_params_dump(tmp_path):
    from ptycli.params.tree import validate
    from ptycli.params.yamlio import load_config_text

    res = invoke("params", "--dump")
    assert res.exit_code == 0
    text = res.stdout
    assert text.startswith("# ptycli") and "checkpoint:" in text
    tree = load_config_text(text)
    validate(tree, require_scans=True, require_engines=True)
    out = tmp_path / "defaults.yaml"
    assert invoke("params", "--dump", "-o", out).exit_code == 0
    assert yaml.safe_load(out.read_text()) == yaml.safe_load(text)
    assert invoke("params", "--dump", "-o", out).exit_code == 2
    assert invoke("params", "--dump", "-o", out, "--force").exit_code == 0


def test_params_usage_errors(tmp_path):
    assert invoke("params", "--dump", "--validate", "x.yaml").exit_code == 2
    assert invoke("params", "io", "--dump").exit_code == 2
    assert invoke("params", "--set", "a=1").exit_code == 2
