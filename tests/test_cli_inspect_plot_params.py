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
    assert info["loader"] == {"h5": "Hdf5Scan", "cxi": "CxiScan", "ptyd": "PtydScan"}[fmt]
    res = invoke("inspect", files[fmt])
    assert "frames:      30 of 32x32" in res.stdout
    assert res.stdout.splitlines()[1].startswith("  loader:      %s (scans.<label>.data.name" % info["loader"])
    if fmt in ("h5", "ptyd"):  # both record the propagation (a .ptyd in /meta/propagation); CXI cannot
        assert info["propagation"] == "farfield"
        assert "  propagation: farfield" in res.stdout.splitlines()
    else:
        assert "propagation" not in info


def test_inspect_ptyd_propagation(tmp_path):
    """.ptyd: the propagation ptycli records in /meta is shown; a PtyPy file (none recorded) shows none."""
    import numpy as np
    from ptycli.io.ptyd import write_ptyd

    frames = np.ones((3, 8, 8), np.float32)
    positions = np.zeros((3, 2))
    for name, prop in (("near.ptyd", "nearfield"), ("plain.ptyd", None)):
        write_ptyd(str(tmp_path / name), frames, positions, energy_kev=8.0, distance_m=0.01, psize_m=1e-7,
                   propagation=prop)
    info = json.loads(invoke("inspect", tmp_path / "near.ptyd", "--json").stdout)
    assert info["kind"] == "ptyd" and info["propagation"] == "nearfield" and info["frames"] == 3
    assert "  propagation: nearfield" in invoke("inspect", tmp_path / "near.ptyd").stdout.splitlines()
    info = json.loads(invoke("inspect", tmp_path / "plain.ptyd", "--json").stdout)
    assert "propagation" not in info
    lines = invoke("inspect", tmp_path / "plain.ptyd").stdout.splitlines()
    assert "  frames:      3 of 8x8 (float32)" in lines
    assert not any(ln.strip().startswith("propagation") for ln in lines)


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


def test_plot_error_curves_show_the_model_error(files):
    """DM's Fourier error of probe x object: points where it was computed (NaN elsewhere), DM rows only."""
    pytest.importorskip("matplotlib")
    import numpy as np
    from ptycli.io import load_reconstruction
    from ptycli.utils import plotting

    rec = load_reconstruction(str(files["recon"]))
    model = plotting.error_series(rec.history, "model_fourier_error")
    # DM 4 iterations then ML 2: computed at DM's last iteration only
    assert np.flatnonzero(np.isfinite(model)).tolist() == [3]
    assert model[3] == pytest.approx(rec.history[3]["model_fourier_error"]) and model[3] > 0
    Figure, _ = plotting.figure_module()
    ax = Figure().add_subplot(1, 1, 1)
    plotting._errors_axis(ax, rec.history, rec.engines)
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    line = lines[plotting._MODEL_LABEL]
    assert line.get_xdata().tolist() == [4] and line.get_ydata().tolist() == [model[3]]
    assert line.get_marker() == "o"
    ferr = lines["Fourier error (DM/RAAR: of the projection input)"]
    assert len(ferr.get_xdata()) == 6
    assert plotting._MODEL_LABEL in [t.get_text() for t in ax.get_legend().get_texts()]
    # several points per DM run, joined within a run only; a chain without DM/RAAR draws none
    hist = [dict(engine="dm", fourier_error=1.0, model_fourier_error=0.5 if i in (2, 4) else None)
            for i in range(1, 5)]
    hist += [dict(engine="ml", fourier_error=0.3)]
    hist += [dict(engine="dm2", fourier_error=1.0, model_fourier_error=0.2 if i == 3 else None)
             for i in range(1, 4)]
    ax = Figure().add_subplot(1, 1, 1)
    plotting._errors_axis(ax, hist)
    model_lines = [ln for ln in ax.get_lines() if ln.get_marker() == "o"]
    assert [ln.get_xdata().tolist() for ln in model_lines] == [[2, 4], [8]]
    assert [ln.get_ydata().tolist() for ln in model_lines] == [[0.5, 0.5], [0.2]]
    assert model_lines[0].get_color() == model_lines[1].get_color()
    assert [ln.get_label() for ln in model_lines][0] == plotting._MODEL_LABEL
    assert not model_lines[1].get_label() or model_lines[1].get_label().startswith("_")
    ax = Figure().add_subplot(1, 1, 1)
    plotting._errors_axis(ax, [dict(engine="ml", fourier_error=0.3, likelihood=2.0)] * 2)
    assert [ln.get_label() for ln in ax.get_lines()] == ["Fourier error"]


@pytest.mark.slow
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
    assert res.exit_code == 2  # issue 17: an installation to complete is exit 2 (was 1)
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
