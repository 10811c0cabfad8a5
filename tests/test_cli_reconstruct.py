"""``ptycli reconstruct``: end to end, options, exit codes, output checks before computing."""

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from ptycli.cli import main
from cli_helpers import runner, invoke  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

# 30 frames of 32 x 32: a reconstruction takes a fraction of a second
CONFIG = """
run: tiny
io:
  checkpoint: {interval: 5}
scans:
  MF:
    data: {name: MoonFlowerScan, shape: 32, num_frames: 30, photons: 1.0e7, seed: 2}
engines:
  dm: {name: DM, numiter: 6}
  ml: {name: ML, numiter: 4}
"""


@pytest.fixture
def cfg(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(CONFIG)
    return path


def env():
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    e.pop("PTYCLI_TRACEBACK", None)
    return e


def ptycli(*args, cwd=None, input=None, timeout=180):
    return subprocess.run([sys.executable, "-m", "ptycli"] + [str(a) for a in args], env=env(), cwd=cwd,
                          capture_output=True, text=True, input=input, timeout=timeout)


# -- in process -------------------------------------------------------------------------------

def test_json_summary_and_file(cfg, tmp_path):
    out = tmp_path / "res" / "tiny.h5"          # the folder does not exist yet
    res = invoke("reconstruct", cfg, "-o", out, "--json")
    assert res.exit_code == 0, res.output + res.stderr
    summary = json.loads(res.stdout)            # stdout holds the JSON document only
    assert summary["status"] == "ok"
    assert summary["output"] == str(out)
    assert summary["iterations"] == 10
    assert [e["label"] for e in summary["engines"]] == ["dm", "ml"]
    assert [e["iterations"] for e in summary["engines"]] == [6, 4]
    for e in summary["engines"]:
        assert np.isfinite(e["final_errors"]["fourier_error"])
        assert e["time_s"] >= 0
    assert summary["final_errors"] == summary["engines"][-1]["final_errors"]
    assert summary["time_s"] > 0
    assert out.exists()
    # DM records the Fourier error of probe x object (its fourier_error is the projection input's) at its
    # last iteration: reported per engine, the same value as in the history; ML records none
    with h5py.File(out, "r") as f:
        model = f["history/model_fourier_error"][()]
        model_photon = f["history/model_photon_error"][()]
    dm, ml = summary["engines"]
    assert np.isfinite(model[5]) and model[5] > 0
    assert dm["final_errors"]["model_fourier_error"] == pytest.approx(model[5], rel=1e-12)
    assert dm["final_errors"]["model_photon_error"] == pytest.approx(model_photon[5], rel=1e-12)
    assert dm["final_errors"]["model_fourier_error"] != dm["final_errors"]["fourier_error"]
    assert np.isnan(model[6:]).all()
    assert "model_fourier_error" not in ml["final_errors"] and "model_fourier_error" not in summary["final_errors"]
    # checkpoints: every 5 iterations and at the end of each engine, next to the result
    ckpt = tmp_path / "res" / "tiny.checkpoint.h5"
    assert summary["checkpoints"] == [str(ckpt)]
    with h5py.File(out, "r") as f:
        assert f.attrs["format"] == "ptycli-reconstruction"
        assert f.attrs["kind"] == "result"
        assert f["reconstruction/object/SMF"].dtype == np.complex64
        assert f["reconstruction/probe/SMF"].shape == (1, 32, 32)
        assert f["history/iteration"][()].tolist() == list(range(1, 11))
        assert [v.decode() if isinstance(v, bytes) else v for v in f["history/engine"][()]] == ["dm"] * 6 + ["ml"] * 4
        assert f["scans/MF/positions"].shape == (30, 2)
        assert f["state"].attrs["finished"]


def test_text_output_is_the_path(cfg, tmp_path):
    out = tmp_path / "a.h5"
    res = invoke("reconstruct", cfg, "-o", out, "--set", "engines.ml.numiter=0")
    assert res.exit_code == 0, res.stderr
    assert res.stdout == "%s\n" % out
    assert "dm (DM)" in res.stderr              # logs go to stderr
    # the end-of-engine line gives DM's Fourier error of probe x object too
    with h5py.File(out, "r") as f:
        ferr, model = f["history/fourier_error"][-1], f["history/model_fourier_error"][-1]
    line = [ln for ln in res.stderr.splitlines() if "dm (DM): 6 iterations" in ln]
    assert len(line) == 1, res.stderr
    assert line[0].endswith("fourier error %.4g (of probe x object: %.4g)" % (ferr, model))


def test_progress_bar_shows_the_model_error(cfg, tmp_path, monkeypatch):
    """On a terminal the bar's fields include DM's model error ('model'), kept once computed."""
    from ptycli.commands import reconstruct as rc
    from ptycli.runner import ChainRunner

    posts = []

    class Bar:
        def __init__(self, label):
            self.label = label

        def set_postfix(self, post, refresh=True):
            posts.append((self.label, dict(post)))

        def update(self, n):
            pass

        def close(self):
            pass

    monkeypatch.setattr(rc, "stderr_is_tty", lambda: True)
    monkeypatch.setattr(ChainRunner, "_bar", lambda self, label, name, numiter, initial: Bar(label))
    out = tmp_path / "bar.h5"
    res = invoke("reconstruct", cfg, "-o", out, "--set", "engines.dm.numiter=12", "--set", "engines.ml.numiter=2")
    assert res.exit_code == 0, res.stderr
    with h5py.File(out, "r") as f:
        model = f["history/model_fourier_error"][()]
    assert [lab for lab, _ in posts] == ["dm"] * 12 + ["ml"] * 2
    # DM, 12 iterations: computed at 10 and 12 (every 10, and the last)
    assert np.flatnonzero(np.isfinite(model)).tolist() == [9, 11]
    assert all("model" not in p for _, p in posts[:9])
    assert posts[9][1]["model"] == posts[10][1]["model"] == "%.3g" % model[9]
    assert posts[11][1]["model"] == "%.3g" % model[11]
    assert all("model" not in p and "LL" in p for _, p in posts[12:])
    assert all(p["ferr"] for _, p in posts)


def test_set_overrides_and_stdin(tmp_path):
    out = tmp_path / "stdin.h5"
    res = invoke("reconstruct", "-", "-o", out, "--json", "--set", "engines.dm.numiter=3",
                 "--set", "engines.ml.numiter=2", "--set", "engines.dm.alpha=0.8", input=CONFIG)
    assert res.exit_code == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["iterations"] == 5
    assert summary["overrides"] == ["engines.dm.numiter=3", "engines.ml.numiter=2", "engines.dm.alpha=0.8"]
    from ptycli.io import load_reconstruction

    rec = load_reconstruction(out)
    assert rec.params.engines.dm.alpha == 0.8
    assert rec.params.engines.dm.numiter == 3
    assert rec.provenance["config"] == "-"


def test_existing_output_needs_force(cfg, tmp_path):
    out = tmp_path / "exists.h5"
    out.write_bytes(b"old")
    res = invoke("reconstruct", cfg, "-o", out)
    assert res.exit_code == 2
    assert "already exists" in res.stderr and "--force" in res.stderr
    assert out.read_bytes() == b"old"
    assert not (tmp_path / "exists.checkpoint.h5").exists()   # nothing was computed
    res = invoke("reconstruct", cfg, "-o", out, "--force", "--set", "engines.ml.numiter=0")
    assert res.exit_code == 0, res.stderr
    assert h5py.is_hdf5(out)


@pytest.mark.parametrize("args, words", [
    (["--set", "engines.dm.alpah=1"], "alpah"),                      # unknown key, with a suggestion
    (["--set", "engines.dm.numiter=-1"], "numiter"),
    (["--set", "engines=null"], "no engine"),
    (["--set", "scans=null"], "no scan"),
    (["--set", "scans.MF.data={name: Hdf5Scan, dfile: missing.h5}"], "missing.h5"),
    (["--resume", "nothing_here.h5"], "nothing_here.h5"),
])
def test_configuration_errors_exit_2(cfg, tmp_path, args, words):
    out = tmp_path / "bad.h5"
    res = invoke("reconstruct", cfg, "-o", out, *args)
    assert res.exit_code == 2, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert lines[-1].startswith("Error:") and words in lines[-1]
    assert not out.exists()


def test_contradicting_propagation_fails_in_the_early_check(tmp_path, monkeypatch):
    """A config whose propagation contradicts the data file's record: exit 2 from check_inputs, no model built."""
    sim = tmp_path / "sim.yaml"
    sim.write_text("scans:\n  MF:\n    propagation: nearfield\n"
                   "    data: {name: MoonFlowerScan, shape: 32, num_frames: 12, photons: 1.0e7, seed: 1}\n")
    data = tmp_path / "near.h5"
    res = invoke("simulate", sim, "-o", data)
    assert res.exit_code == 0, res.stderr
    from ptycli.core import ptycho
    from ptycli.runner import check_inputs
    from ptycli.errors import ConfigError
    from ptycli.commands.common import load_tree

    def no_model(*args, **kwargs):
        raise AssertionError("the model was built before the inputs were checked")

    monkeypatch.setattr(ptycho, "Ptycho", no_model)
    cfg = tmp_path / "rec.yaml"
    cfg.write_text("scans:\n  MF:\n    propagation: farfield\n    data: {name: Hdf5Scan, dfile: %s}\n"
                   "engines:\n  dm: {name: DM, numiter: 2}\n" % data)
    out = tmp_path / "rec.h5"
    res = invoke("reconstruct", cfg, "-o", out)
    assert res.exit_code == 2, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: scans.MF.propagation is farfield")
    assert "%s holds nearfield data" % data in lines[0]
    assert not out.exists() and not (tmp_path / "rec.checkpoint.h5").exists()
    # check_inputs itself: the contradiction raises, the matching or unset propagation passes
    p = load_tree(str(cfg), [], require_scans=True, require_engines=True)
    with pytest.raises(ConfigError, match="scans.MF.propagation is farfield"):
        check_inputs(p)
    for value in ("nearfield", None):
        p.scans.MF.propagation = value
        check_inputs(p)


def test_cxi_output_name_is_refused(cfg, tmp_path):
    res = invoke("reconstruct", cfg, "-o", tmp_path / "x.cxi")
    assert res.exit_code == 2
    assert "--format cxi" in res.stderr


@pytest.fixture
def failing_engine():
    """An engine that fails at its third iteration (a runtime failure)."""
    from ptycli.engines import base
    from ptycli.errors import EngineError
    from ptycli.params import registry

    @base.register
    class Failing(base.Engine):
        NAME = "FailingTest"

        def engine_iterate(self, n):
            if self.iteration >= 2:
                raise EngineError("engine %s diverged (test)" % self.label)
            return [dict(fourier_error=1.0) for _ in range(n)]

    yield "FailingTest"
    base.ENGINES.pop("FailingTest", None)
    registry.ENGINES.unregister("FailingTest")


def test_runtime_failure_exit_1(cfg, tmp_path, failing_engine):
    out = tmp_path / "fail.h5"
    res = invoke("reconstruct", cfg, "-o", out, "--set", "engines.dm.name=%s" % failing_engine)
    assert res.exit_code == 1, res.stderr
    assert "Error: engine dm diverged (test)" in res.stderr
    # the last good state (iteration 2) is kept in the output, marked as failed
    from ptycli.io import load_reconstruction

    state = load_reconstruction(out).state["attrs"]
    assert state["status"] == "failed" and not state["finished"] and state["total_iterations"] == 2


def test_cxi_format(cfg, tmp_path):
    out = tmp_path / "c.h5"
    res = invoke("reconstruct", cfg, "-o", out, "--format", "cxi", "--json", "--set", "engines.ml.numiter=0")
    assert res.exit_code == 0, res.stderr
    cxi = tmp_path / "c.cxi"
    assert json.loads(res.stdout)["cxi"] == str(cxi)
    from ptycli.io import load_reconstruction

    rec = load_reconstruction(out)
    with h5py.File(cxi, "r") as f:
        assert f["entry_1/image_1/data_type"][()] in (b"object", "object")
        assert f["entry_1/image_2/data_type"][()] in (b"probe", "probe")
        np.testing.assert_array_equal(f["entry_1/image_1/data"][()], rec.objects["SMF"])
        np.testing.assert_array_equal(f["entry_1/image_2/data"][()], rec.probes["SMF"])
        assert f["entry_1/image_1/x_pixel_size"][()] == pytest.approx(rec.object_meta["SMF"]["psize"][1])
        assert f["entry_1/sample_1/geometry_1/translation"].shape == (30, 3)
        assert "ptycli" in f["entry_1/image_1/process_1/program"][()].decode()
    from ptycli.io.cxi import read_cxi_result

    r = read_cxi_result(str(cxi))
    assert r["energy_kev"] == pytest.approx(6.2)


def test_help_has_examples():
    for cmd in ("reconstruct", "inspect", "plot", "params"):
        res = invoke(cmd, "--help")
        assert res.exit_code == 0
        assert "Examples:" in res.stdout, cmd


def test_quiet_flag_silences_logs(cfg, tmp_path):
    res = invoke("reconstruct", cfg, "-o", tmp_path / "q.h5", "-q", "--set", "engines.ml.numiter=0")
    assert res.exit_code == 0
    assert res.stderr == ""


# -- a real process: simulate -> reconstruct -> inspect -> plot ------------------------------------

@pytest.mark.slow
def test_subprocess_pipeline(tmp_path):
    sim = tmp_path / "sim.yaml"
    sim.write_text("""
scans:
  MF:
    data: {name: MoonFlowerScan, shape: 32, num_frames: 30, photons: 1.0e7, seed: 4}
""")
    res = ptycli("simulate", sim, "-o", tmp_path / "data.h5", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    recon = """
scans:
  S1:
    data: {name: Hdf5Scan, dfile: data.h5}
engines:
  dm: {name: DM, numiter: 5}
  ml: {name: ML, numiter: 3}
"""
    res = ptycli("reconstruct", "-", "-o", "out/r.h5", "--json", cwd=tmp_path, input=recon)
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["iterations"] == 8 and summary["output"] == "out/r.h5"
    res = ptycli("inspect", "out/r.h5", "--json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)
    assert info["kind"] == "reconstruction" and info["iterations"] == 8
    assert [e["label"] for e in info["engines"]] == ["dm", "ml"]
    assert info["objects"]["SS1"]["dtype"] == "complex64"
    pytest.importorskip("matplotlib")
    res = ptycli("plot", "out/r.h5", "-o", "out/r.png", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "out" / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # exit codes of a real process: 2 for a bad configuration, and the error on one line
    res = ptycli("reconstruct", "-", "-o", "out/r2.h5", "--set", "engines.dm.numiter=many", cwd=tmp_path,
                 input=recon)
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0 and res.stderr.startswith("Error:")
    res = ptycli("reconstruct", "-", "-o", "out/r.h5", cwd=tmp_path, input=recon)
    assert res.returncode == 2 and "--force" in res.stderr


def test_bundled_config_validates(monkeypatch):
    """configs/reconstruct_moonflower.yaml reads the bundled sample data with DM then ML."""
    monkeypatch.chdir(ROOT)  # its data path is relative to the repository root
    res = invoke("params", "--validate", "configs/reconstruct_moonflower.yaml", "--json")
    assert res.exit_code == 0, res.stderr
    summary = json.loads(res.stdout)
    assert [e["name"] for e in summary["engines"]] == ["DM", "ML"]
    assert summary["output"] == "out/moonflower_recon.h5"


def test_mpie_config_validates(monkeypatch):
    """configs/mpie.yaml: the bundled far-field scan with mPIE then ML."""
    monkeypatch.chdir(ROOT)
    res = invoke("params", "--validate", "configs/mpie.yaml", "--json")
    assert res.exit_code == 0, res.stderr
    summary = json.loads(res.stdout)
    assert [e["name"] for e in summary["engines"]] == ["mPIE", "ML"]
    assert summary["output"] == "out/moonflower_mpie.h5"
