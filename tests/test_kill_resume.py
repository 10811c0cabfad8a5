"""Killed runs resume: the last checkpoint always opens, and resuming it finishes the job.

A real ``python -m ptycli reconstruct`` process (checkpoint every 3 iterations) is killed with
SIGKILL at a random moment after its first checkpoint (a few seeds: it may die inside an
iteration or in the middle of writing a checkpoint). The checkpoint left behind must load, and
``--resume`` it must run the rest of the chain and give the same object as an uninterrupted
run, and no temporary file of the killed process may remain after it. SIGINT and SIGTERM stop at the end of an iteration with a final checkpoint (exit 130/143).
"""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import reliability_helpers as rh
from ptycli.io import load_reconstruction

NUMITER_DM, NUMITER_ML, INTERVAL = 30, 8, 3


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A 60-frame 32 x 32 data file, its config and the result of an uninterrupted run."""
    d = tmp_path_factory.mktemp("kill")
    data = rh.simulate(d / "data.h5", frames=60, shape=32)
    cfg = d / "run.yaml"
    cfg.write_text(rh.config(data, top="io: {checkpoint: {interval: %d}}\n" % INTERVAL,
                             engines="  dm: {name: DM, numiter: %d}\n  ml: {name: ML, numiter: %d}\n"
                             % (NUMITER_DM, NUMITER_ML)))
    ref = d / "reference.h5"
    res = rh.invoke("reconstruct", cfg, "-o", ref, "-q")
    assert res.exit_code == 0, res.stderr
    return dict(cfg=cfg, data=data, reference=load_reconstruction(ref))


def _start(cfg, cwd):
    return subprocess.Popen([sys.executable, "-m", "ptycli", "reconstruct", str(cfg), "-o", "out.h5"],
                            cwd=cwd, env=rh.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(path, proc, timeout=60):
    deadline = time.time() + timeout
    while not path.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert path.exists(), "no checkpoint appeared: %s" % (proc.communicate(timeout=30),)


def _resume_and_compare(setup, cwd):
    ckpt = cwd / "out.checkpoint.h5"
    res = subprocess.run([sys.executable, "-m", "ptycli", "reconstruct", str(setup["cfg"]), "-o", "out.h5",
                          "--resume", "out.checkpoint.h5", "--json", "-q"],
                         cwd=cwd, env=rh.env(), capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["iterations"] == NUMITER_DM + NUMITER_ML
    assert [e["iterations"] for e in summary["engines"]] == [NUMITER_DM, NUMITER_ML]
    rec = load_reconstruction(cwd / "out.h5")
    assert rec.state["attrs"]["finished"]
    ref = setup["reference"]
    for sid, arr in ref.objects.items():   # the same object as the uninterrupted run
        np.testing.assert_allclose(rec.objects[sid], arr, rtol=1e-5, atol=1e-6 * np.abs(arr).max())
    for sid, arr in ref.probes.items():
        np.testing.assert_allclose(rec.probes[sid], arr, rtol=1e-5, atol=1e-6 * np.abs(arr).max())
    assert not ckpt.exists()  # removed once the run finished well (io.checkpoint.keep: false)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sigkill_then_resume(setup, tmp_path, seed):
    rng = np.random.default_rng(seed)
    proc = _start(setup["cfg"], tmp_path)
    ckpt = tmp_path / "out.checkpoint.h5"
    try:
        # a random iteration after the first checkpoint: after the k-th checkpoint (each one is a new
        # file renamed into place: inode or mtime change), plus a fraction of the checkpoint interval
        _wait_for(ckpt, proc)
        wanted, seen, last = int(rng.integers(1, 6)), 0, None
        deadline = time.time() + 60
        while seen < wanted and proc.poll() is None and time.time() < deadline:
            try:
                st = os.stat(ckpt)
                now = (st.st_ino, st.st_mtime_ns, st.st_size)
            except FileNotFoundError:
                now = last
            if now != last:
                seen, last = seen + 1, now
            time.sleep(0.001)
        time.sleep(float(rng.uniform(0.0, 0.06)))
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == -signal.SIGKILL, "the run ended before the kill; make it longer"
    assert not (tmp_path / "out.h5").exists()
    # the checkpoint is complete (written atomically), whatever the kill interrupted
    rec = load_reconstruction(ckpt)
    st = rec.state["attrs"]
    assert st["total_iterations"] >= INTERVAL and not st["finished"]
    assert len(rec.history) == st["total_iterations"]
    assert all(np.isfinite(a).all() for a in rec.objects.values())
    # a kill while writing a checkpoint leaves its temporary file (named after the killed process);
    # the next run of the same output removes it
    left = _temp_files(tmp_path)
    assert all(".%d." % proc.pid in name for name in left), left
    _resume_and_compare(setup, tmp_path)
    assert _temp_files(tmp_path) == [], "stale temporary files after the next run (%s after the kill)" % left


def _temp_files(folder):
    return sorted(p.name for p in folder.iterdir() if ".tmp" in p.name)


@pytest.mark.slow
@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_writes_a_final_checkpoint(setup, tmp_path, sig, code):
    proc = _start(setup["cfg"], tmp_path)
    ckpt = tmp_path / "out.checkpoint.h5"
    try:
        _wait_for(ckpt, proc)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == code, err
    assert out == "" and "Traceback" not in err
    assert "checkpoint written to out.checkpoint.h5" in err and "--resume out.checkpoint.h5" in err
    st = load_reconstruction(ckpt).state["attrs"]
    assert 0 < st["total_iterations"] < NUMITER_DM + NUMITER_ML and not st["finished"]
    _resume_and_compare(setup, tmp_path)
