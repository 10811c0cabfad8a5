"""Checkpoints and ``--resume``: an interrupted and resumed run ends where an uninterrupted one does."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ptycli.cli import main
from ptycli.io import load_reconstruction
from cli_helpers import runner, invoke  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

CONFIG = """
run: resume
io:
  checkpoint: {interval: 10}
scans:
  MF:
    data: {name: MoonFlowerScan, shape: 32, num_frames: 30, photons: 1.0e7, seed: 5}
engines:
  dm: {name: DM, numiter: 20}
"""


@pytest.fixture
def cfg(tmp_path):
    path = tmp_path / "resume.yaml"
    path.write_text(CONFIG)
    return path


@pytest.mark.slow
def test_checkpoint_at_10_resumes_to_the_same_object(cfg, tmp_path):
    """20 iterations in one go vs. stopping at the checkpoint of iteration 10 and resuming."""
    full = tmp_path / "full.h5"
    tmpl = "io.checkpoint.path={home}/ck_{iterations}.h5"
    res = invoke("reconstruct", cfg, "-o", full, "--set", "io.home=%s" % tmp_path, "--set", tmpl,
                 "--set", "io.checkpoint.keep=true")
    assert res.exit_code == 0, res.stderr
    ck10 = tmp_path / "ck_10.h5"
    assert ck10.exists() and (tmp_path / "ck_20.h5").exists()
    ck = load_reconstruction(ck10)
    assert ck.kind == "checkpoint"
    assert ck.state["attrs"]["engine_iteration"] == 10 and not ck.state["attrs"]["engine_finished"]
    assert len(ck.history) == 10
    resumed = tmp_path / "resumed.h5"
    res = invoke("reconstruct", cfg, "-o", resumed, "--resume", ck10, "--json",
                 "--set", "io.home=%s/r" % tmp_path, "--set", tmpl)
    assert res.exit_code == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["iterations"] == 20 and summary["resumed_from"] == str(ck10)
    a, b = load_reconstruction(full), load_reconstruction(resumed)
    np.testing.assert_allclose(b.object, a.object, rtol=1e-5, atol=1e-5 * np.abs(a.object).max())
    np.testing.assert_allclose(b.probe, a.probe, rtol=1e-5, atol=1e-5 * np.abs(a.probe).max())
    # the resumed file carries the whole history
    assert [h["iteration"] for h in b.history] == list(range(1, 21))
    np.testing.assert_allclose([h["fourier_error"] for h in b.history],
                               [h["fourier_error"] for h in a.history], rtol=1e-4)


@pytest.mark.slow
def test_sigint_in_process_writes_checkpoint_then_resume(cfg, tmp_path, monkeypatch):
    """A real SIGINT during iteration 7: stop after it, checkpoint, exit 130; resume gives the same object."""
    from ptycli.runner import ChainRunner

    full = tmp_path / "full.h5"
    res = invoke("reconstruct", cfg, "-o", full)
    assert res.exit_code == 0, res.stderr

    original = ChainRunner._stop_due

    def stop_due(self):
        if int(self.P.runtime.iterations) == 7 and self.stop_signal is None:
            os.kill(os.getpid(), signal.SIGINT)
        return original(self)

    monkeypatch.setattr(ChainRunner, "_stop_due", stop_due)
    out = tmp_path / "run.h5"
    res = invoke("reconstruct", cfg, "-o", out, "--json")
    assert res.exit_code == 130, res.stderr
    ckpt = tmp_path / "run.checkpoint.h5"
    assert "--resume %s" % ckpt in res.stderr
    report = json.loads(res.stdout)
    assert report["status"] == "interrupted" and report["iterations"] == 7
    assert report["checkpoint"] == str(ckpt)
    assert not out.exists()
    assert load_reconstruction(ckpt).state["attrs"]["total_iterations"] == 7
    monkeypatch.setattr(ChainRunner, "_stop_due", original)
    # a new run without --resume would throw the checkpoint away: refused
    res = invoke("reconstruct", cfg, "-o", out)
    assert res.exit_code == 2 and "--resume" in res.stderr
    res = invoke("reconstruct", cfg, "-o", out, "--resume", ckpt)
    assert res.exit_code == 0, res.stderr
    a, b = load_reconstruction(full), load_reconstruction(out)
    np.testing.assert_allclose(b.object, a.object, rtol=1e-5, atol=1e-5 * np.abs(a.object).max())


@pytest.mark.slow
def test_resume_a_result_with_more_iterations(cfg, tmp_path):
    """A finished result is a resume point: 10 + 10 iterations give the 20-iteration result.

    Exactly so when the result keeps its exit waves (io.keep_exit_waves: true); without them (the
    default) they restart from probe x object (tests/test_reliability_catalogue_outputs.py).
    """
    res = invoke("reconstruct", cfg, "-o", tmp_path / "r20.h5")
    assert res.exit_code == 0, res.stderr
    res = invoke("reconstruct", cfg, "-o", tmp_path / "r10.h5", "--set", "engines.dm.numiter=10",
                 "--set", "io.keep_exit_waves=true")
    assert res.exit_code == 0, res.stderr
    res = invoke("reconstruct", cfg, "-o", tmp_path / "r10_20.h5", "--resume", tmp_path / "r10.h5")
    assert res.exit_code == 0, res.stderr
    a, b = load_reconstruction(tmp_path / "r20.h5"), load_reconstruction(tmp_path / "r10_20.h5")
    np.testing.assert_allclose(b.object, a.object, rtol=1e-5, atol=1e-5 * np.abs(a.object).max())


@pytest.mark.slow
def test_resume_skips_finished_engines(cfg, tmp_path):
    """The checkpoint written when DM ends: resuming runs only the next engine."""
    two = ["--set", "engines.raar.name=RAAR", "--set", "engines.raar.numiter=3",
           "--set", "io.checkpoint.path={home}/ck_{engine}_{iterations}.h5", "--set", "io.home=%s" % tmp_path,
           "--set", "io.checkpoint.keep=true"]
    res = invoke("reconstruct", cfg, "-o", tmp_path / "a.h5", *two)
    assert res.exit_code == 0, res.stderr
    ck = tmp_path / "ck_dm_20.h5"
    assert load_reconstruction(ck).state["attrs"]["engine_finished"]
    # --force: the resumed run writes ck_raar_23.h5 again, which the first run kept
    res = invoke("reconstruct", cfg, "-o", tmp_path / "b.h5", "--resume", ck, "--json", "--force", *two)
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["iterations"] == 23
    a, b = load_reconstruction(tmp_path / "a.h5"), load_reconstruction(tmp_path / "b.h5")
    np.testing.assert_allclose(b.object, a.object, rtol=1e-5, atol=1e-5 * np.abs(a.object).max())
    assert [e["iterations"] for e in b.engines] == [20, 3]


def test_resume_with_another_chain_is_refused(cfg, tmp_path):
    res = invoke("reconstruct", cfg, "-o", tmp_path / "a.h5", "--set", "engines.dm.numiter=3")
    assert res.exit_code == 0, res.stderr
    res = invoke("reconstruct", cfg, "-o", tmp_path / "b.h5", "--resume", tmp_path / "a.h5",
                 "--set", "engines.dm.name=RAAR")
    assert res.exit_code == 2
    assert "resume with the engine chain" in res.stderr
    res = invoke("reconstruct", cfg, "-o", tmp_path / "c.h5", "--resume", tmp_path / "a.h5",
                 "--set", "scans.MF.data.shape=40")
    assert res.exit_code == 2
    assert "shape" in res.stderr
    bad = tmp_path / "not_a_checkpoint.h5"
    bad.write_text("text")
    res = invoke("reconstruct", cfg, "-o", tmp_path / "d.h5", "--resume", bad)
    assert res.exit_code == 2


@pytest.mark.slow
@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_in_a_real_process(tmp_path, sig, code):
    """Ctrl-C / SIGTERM: finish the iteration, write a checkpoint, say how to resume, exit 130/143."""
    cfg = tmp_path / "long.yaml"
    cfg.write_text(CONFIG.replace("numiter: 20", "numiter: 1000000").replace("interval: 10", "interval: 3"))
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.Popen([sys.executable, "-m", "ptycli", "reconstruct", str(cfg), "-o", "out.h5"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ckpt = tmp_path / "out.checkpoint.h5"
    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert ckpt.exists(), proc.communicate(timeout=30)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert out == ""
    assert "ptycli reconstruct %s -o out.h5 --resume out.checkpoint.h5" % cfg in err
    state = load_reconstruction(ckpt).state["attrs"]
    assert state["total_iterations"] >= 3 and not state["finished"]
    assert not (tmp_path / "out.h5").exists()
    # the suggested command continues (here with a reachable number of iterations)
    done = int(state["total_iterations"])
    res = subprocess.run([sys.executable, "-m", "ptycli", "reconstruct", str(cfg), "-o", "out.h5", "--resume",
                          "out.checkpoint.h5", "--set", "engines.dm.numiter=%d" % (done + 2), "--json"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["iterations"] == done + 2
