"""Issue 17: seeing what happened (inspect, plot, error measures, compile notice) and a fast, tidy CLI.

``ptycli --help`` loads no command module and no numpy; usage errors are one line; ``--json``
errors are JSON on stdout; ``info`` lists numba.
"""

import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from cli_helpers import invoke  # noqa: E402
from ptycli.cli import COMMANDS, main
from ptycli.measures import ERROR_MEASURES

ROOT = Path(__file__).resolve().parents[1]

RECON = """
scans:
  MF:
    data: {name: MoonFlowerScan, shape: 32, num_frames: 30, photons: 1.0e7, seed: 7}
engines:
  dm: {name: DM, numiter: 4}
  ml: {name: ML, numiter: 2}
io:
  checkpoint: {keep: true}
"""


def _no_nan(text):
    """json.loads that refuses NaN/Infinity (invalid JSON)."""
    def refuse(name):
        raise ValueError("invalid JSON constant %s" % name)
    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    root = tmp_path_factory.mktemp("seeing")
    cfg = root / "recon.yaml"
    cfg.write_text(RECON)
    out = root / "recon.h5"
    res = invoke("reconstruct", cfg, "-o", out)
    assert res.exit_code == 0, res.stderr
    return out


def _python(code):
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


# -- a fast command line ------------------------------------------------------------------------

def test_importing_the_cli_loads_no_heavy_library():
    res = _python("import sys, ptycli.cli\n"
                  "print(sorted(m for m in ('numpy', 'scipy', 'h5py', 'numba', 'matplotlib') if m in sys.modules))")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


def test_help_loads_no_command_module():
    res = _python("import sys\nfrom ptycli.cli import main\n"
                  "try:\n    main(['--help'], prog_name='ptycli')\nexcept SystemExit as e:\n    assert e.code == 0\n"
                  "print(sorted(m for m in sys.modules if m.startswith('ptycli.commands.') or m == 'numpy'))")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1] == "[]"
    for name in COMMANDS:
        assert re.search(r"^  %s\s+\S" % name, res.stdout, re.M), name


def test_command_summaries_match_the_commands():
    import click

    ctx = click.Context(main)
    for name, (module, attribute, summary) in COMMANDS.items():
        cmd = main.get_command(ctx, name)
        assert cmd is getattr(__import__(module, fromlist=[attribute]), attribute)
        assert cmd.get_short_help_str(1000) == summary, name
    # no circle: command modules do not import ptycli.cli to register themselves
    for path in (ROOT / "ptycli" / "commands").glob("*.py"):
        assert "@main.command" not in path.read_text(), path.name


def test_usage_errors_are_one_line():
    res = invoke("reconstruct")
    assert res.exit_code == 2
    assert res.stderr == "Error: Missing argument 'CONFIG'; try 'ptycli reconstruct --help'\n"
    res = invoke("no-such-command")
    assert res.exit_code == 2 and res.stderr == "Error: No such command 'no-such-command'; try 'ptycli --help'\n"
    res = invoke("inspect", "x.h5", "--frobnicate")
    assert res.exit_code == 2 and len(res.stderr.splitlines()) == 1
    assert res.stderr.startswith("Error: No such option") and "try 'ptycli inspect --help'" in res.stderr
    assert res.stdout == ""


def test_json_errors_are_json_on_stdout(tmp_path):
    res = invoke("inspect", tmp_path / "missing.h5", "--json")
    assert res.exit_code == 2 and len(res.stderr.splitlines()) == 1
    doc = json.loads(res.stdout)
    assert doc["exit_code"] == 2 and "missing.h5 does not exist" in doc["error"]
    res = invoke("reconstruct", "--json")  # a usage error
    assert res.exit_code == 2
    assert json.loads(res.stdout) == {"error": "Missing argument 'CONFIG'; try 'ptycli reconstruct --help'",
                                      "exit_code": 2}
    bad = tmp_path / "bad.yaml"
    bad.write_text("engines:\n  dm: {name: DM, numiter: -3}\n")
    res = invoke("params", "--validate", bad, "--json")
    assert res.exit_code == 2 and json.loads(res.stdout)["exit_code"] == 2
    assert "numiter" in json.loads(res.stdout)["error"]


def test_info_lists_numba():
    from importlib import metadata

    data = json.loads(invoke("info", "--json").stdout)
    assert data["numba"] == metadata.version("numba")
    try:
        assert data["pyfftw"] == metadata.version("pyFFTW")
    except metadata.PackageNotFoundError:
        assert "pyfftw" not in data


# -- inspect --------------------------------------------------------------------------------------

def test_inspect_positions_moved_and_sizes(result, tmp_path):
    moved = tmp_path / "moved.h5"
    shutil.copy(result, moved)
    with h5py.File(moved, "r+") as f:
        g = f["scans/MF"]
        res = np.asarray(g.attrs["resolution"], float)
        pos = g["positions_initial"][()]
        shift = np.zeros_like(pos)
        shift[0] = [3 * res[0], 4 * res[1]]  # one frame moved by 5 pixels
        g["positions"][...] = pos + shift
    info = _no_nan(invoke("inspect", moved, "--json").stdout)
    m = info["scans"]["MF"]["positions_moved"]
    n = len(pos)
    assert m["max_pixel"] == pytest.approx(5.0) and m["rms_pixel"] == pytest.approx(5.0 / np.sqrt(n))
    assert m["max_m"] == pytest.approx(np.hypot(3 * res[0], 4 * res[1]))
    assert info["size_bytes"] == moved.stat().st_size and info["checkpoint"] is None
    text = invoke("inspect", moved).stdout
    assert "positions refined: rms %.3g pixel" % (5.0 / np.sqrt(n)) in text and "max 5 pixel" in text
    # the run kept its checkpoint (io.checkpoint.keep): inspect names it with its size
    info = _no_nan(invoke("inspect", result, "--json").stdout)
    ck = Path(str(result)[:-3] + ".checkpoint.h5")
    assert info["checkpoint"] == {"path": str(ck), "size_bytes": ck.stat().st_size}
    assert info["scans"]["MF"]["positions_moved"]["max_m"] == 0.0
    assert "checkpoint %s:" % ck in invoke("inspect", result).stdout


def test_inspect_json_has_no_nan(result, tmp_path):
    odd = tmp_path / "odd.h5"
    shutil.copy(result, odd)
    with h5py.File(odd, "r+") as f:
        f["engines/dm"].attrs["final_likelihood"] = np.nan
        f["engines/dm"].attrs["time_s"] = np.inf
        f["history/fourier_error"][0] = np.nan
    info = _no_nan(invoke("inspect", odd, "--json").stdout)
    dm = [e for e in info["engines"] if e["label"] == "dm"][0]
    assert dm["final_likelihood"] is None and dm["time_s"] is None
    tree = _no_nan(invoke("inspect", odd, "--json", "--tree").stdout)
    assert any(n["path"] == "/engines/dm/" and n["attrs"]["final_likelihood"] is None for n in tree["nodes"])


def test_inspect_ptyd_shows_the_scan_extent(tmp_path):
    cfg = tmp_path / "sim.yaml"
    cfg.write_text("scans:\n  MF:\n    data: {name: MoonFlowerScan, shape: 32, num_frames: 20, seed: 1}\n")
    path = tmp_path / "d.ptyd"
    assert invoke("simulate", cfg, "-o", path).exit_code == 0
    with h5py.File(path, "r") as f:
        pos = np.concatenate([f["chunks/%s/positions" % k][()] for k in f["chunks"]])
    info = _no_nan(invoke("inspect", path, "--json").stdout)
    np.testing.assert_allclose(info["scan_extent"], np.ptp(pos, axis=0))
    assert "scan extent: (%.4g, %.4g) (y, x) m" % tuple(np.ptp(pos, axis=0)) in invoke("inspect", path).stdout


# -- error measures ---------------------------------------------------------------------------------

def test_error_measures_defined_once(result):
    res = invoke("params", "errors", "--json")
    assert res.exit_code == 0
    assert {r["name"]: (r["units"], r["doc"]) for r in json.loads(res.stdout)} == ERROR_MEASURES
    text = invoke("params", "errors").stdout
    for name in ("fourier_error", "photon_error", "exit_change", "likelihood", "model_fourier_error"):
        assert "history.%s" % name in text
    with h5py.File(result, "r") as f:
        for name, (units, doc) in ERROR_MEASURES.items():
            assert f["history"][name].attrs["description"] == doc
            assert f["history"][name].attrs.get("units", "") == units
    readme = (ROOT / "README.md").read_text()
    for name, (units, doc) in ERROR_MEASURES.items():
        assert "| `%s` | %s | %s |" % (name, units or "-", doc) in readme, name


def test_compile_notice_once_and_cold_cache_detection(tmp_path, monkeypatch, caplog):
    from ptycli.engines import fused

    fake = tmp_path / "fused.py"
    fake.write_text("# source\n")
    monkeypatch.setattr(fused, "__file__", str(fake))
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    assert fused.kernel_cache_is_cold("fused")  # no index at all
    (tmp_path / "__pycache__").mkdir()
    index = tmp_path / "__pycache__" / "fused.kernel-12.py311.nbi"
    index.write_text("")
    os.utime(index, (fake.stat().st_mtime - 100,) * 2)
    assert fused.kernel_cache_is_cold("fused")  # older than the source: numba recompiles
    os.utime(index, (fake.stat().st_mtime + 100,) * 2)
    assert not fused.kernel_cache_is_cold("fused")
    monkeypatch.setattr(fused, "kernel_cache_is_cold", lambda module="fused": True)
    monkeypatch.setattr(fused, "_ANNOUNCED", set())
    monkeypatch.setattr(fused, "_HAVE_NUMBA", True)
    monkeypatch.delenv("PTYCLI_KERNELS", raising=False)
    with caplog.at_level(logging.INFO, logger="ptycli"):
        assert fused.use_compiled("compiled", 10)
        assert fused.use_compiled("auto", fused.AUTO_MIN_PIXELS)
        assert not fused.use_compiled("auto", 10)  # the numpy path compiles nothing
    notes = [r.getMessage() for r in caplog.records if "compiling" in r.getMessage()]
    assert notes == ["compiling the kernels (first run only, about 20 s)"]


# -- plot -------------------------------------------------------------------------------------------

def _figure_of(monkeypatch, rec):
    """The matplotlib Figure plot_reconstruction draws (captured instead of saved)."""
    from ptycli.utils import plotting

    got = {}
    monkeypatch.setattr(plotting, "_save", lambda fig, canvas, path, dpi: got.setdefault("fig", fig) and canvas(fig))
    plotting.plot_reconstruction(rec, "unused.png")
    return got["fig"]


def test_plot_draws_positions_wheel_and_a_tidy_layout(result, monkeypatch):
    pytest.importorskip("matplotlib")
    from ptycli.io import load_reconstruction

    rec = load_reconstruction(str(result))
    sc = rec.scans["MF"]
    sc["positions"] = np.asarray(sc["positions"]) + 2e-8  # refinement moved every frame
    fig = _figure_of(monkeypatch, rec)
    fig.canvas.draw()  # lays the figure out (constrained layout)
    axes = fig.get_axes()
    titles = [ax.get_title() for ax in axes]
    assert "scan positions (initial \u2192 refined)" in titles
    pos_ax = axes[titles.index("scan positions (initial \u2192 refined)")]
    assert [t.get_text() for t in pos_ax.get_legend().get_texts()] == ["initial", "refined"]
    assert any(t.startswith("phase (hue)") for t in titles)  # the colour wheel
    # every axes holds something (no empty grid cells); the phase image has its colour bar next to it
    for ax in axes:
        assert ax.images or ax.lines or ax.collections or ax.texts or ax.get_label() == "<colorbar>", ax
    bars = [ax for ax in axes if ax.get_label() == "<colorbar>"]
    assert {b.get_ylabel() for b in bars} == {"amplitude", "rad"}
    # errors: the legend lies below the axes (covers no curve); log axes read as plain numbers
    err = [ax for ax in axes if ax.get_xlabel() == "iteration"][0]
    renderer = fig.canvas.get_renderer()
    assert err.get_legend().get_window_extent(renderer).y1 <= err.get_window_extent(renderer).y0
    twin = [ax for ax in axes if ax.get_ylabel().startswith("-log likelihood")][0]
    labels = [t.get_text() for t in twin.get_yticklabels(which="both") if t.get_text()]
    assert labels and all(re.fullmatch(r"[0-9.e+-]+", t) for t in labels), labels


def test_plot_zero_width_frames_is_one_line(tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "zw.h5"
    shutil.copy(ROOT / "sample_data" / "moonflower.h5", path)
    with h5py.File(path, "r+") as f:
        del f["data/intensities"]
        f["data/intensities"] = np.zeros((100, 0, 64), np.float32)
        del f["data/mask"]
    res = invoke("plot", path, "-o", tmp_path / "zw.png")
    assert res.exit_code == 2 and len(res.stderr.splitlines()) == 1
    assert "no pixels to draw" in res.stderr and "zw.h5" in res.stderr
    assert not (tmp_path / "zw.png").exists()
