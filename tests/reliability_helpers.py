"""Helpers of the reliability tests (test_reliability_*.py, test_fuzz.py, test_kill_resume.py).

A small simulated data file (ptycli's HDF5 layout, ``ptycli simulate``), configs that read it,
the CLI run in process (click's CliRunner) or as a real ``python -m ptycli`` process, and the
checks every bad-input case shares: one ``Error:`` line naming the problem, the right exit code,
no traceback.
"""

import hashlib
import os
import subprocess
import sys
from pathlib import Path


from ptycli.cli import main
from cli_helpers import runner, invoke  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

#: the scan of the small data file: 20 frames of 16 x 16
SIM_CONFIG = """
scans:
  MF:
    data: {name: MoonFlowerScan, shape: 16, num_frames: 20, photons: 1.0e6, seed: 1}
"""


def env():
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    e.pop("PTYCLI_TRACEBACK", None)
    e.setdefault("PTYCLI_MPI", "0")
    return e


def ptycli(*args, cwd=None, input=None, timeout=120):
    """``python -m ptycli ARGS`` as a real process (CompletedProcess with text output)."""
    return subprocess.run([sys.executable, "-m", "ptycli"] + [str(a) for a in args], env=env(), cwd=cwd,
                          capture_output=True, text=True, input=input, timeout=timeout)


def simulate(path, frames=20, shape=16, extra=None):
    """Write a simulated ptycli data file to ``path``; return ``path``."""
    cfg = Path(path).with_suffix(".sim.yaml")
    text = SIM_CONFIG.replace("shape: 16", "shape: %d" % shape).replace("num_frames: 20", "num_frames: %d" % frames)
    cfg.write_text(text)
    res = invoke("simulate", cfg, "-o", path, "--force", *(extra or ()))
    assert res.exit_code == 0, res.stderr
    cfg.unlink()
    return Path(path)


def config(dfile, numiter=3, data="", engines=None, top=""):
    """A reconstruction config reading ``dfile`` with Hdf5Scan (``data``: extra '{...}' entries)."""
    engines = engines or "  dm: {name: DM, numiter: %d}\n" % numiter
    return ("%sscans:\n  MF:\n    data: {name: Hdf5Scan, dfile: '%s'%s}\nengines:\n%s"
            % (top, dfile, (", " + data) if data else "", engines))


def reconstruct_text(folder, text, *extra):
    """Write ``text`` as ``folder/run.yaml`` and reconstruct it to ``folder/out.h5``: ``(result, out path)``."""
    cfg = Path(folder) / "run.yaml"
    cfg.write_text(text)
    out = Path(folder) / "out.h5"
    return invoke("reconstruct", cfg, "-o", out, *extra), out


def error_lines(stderr):
    return [ln for ln in stderr.splitlines() if ln.startswith("Error:") or "] Error:" in ln]


def assert_clean_error(res, code, *words):
    """Exit ``code``, exactly one ``Error:`` line (the last line of stderr) holding ``words``, no traceback.

    ``res`` is a click Result or a CompletedProcess.
    """
    rc = getattr(res, "exit_code", None)
    if rc is None:
        rc = res.returncode
    stderr = res.stderr
    assert rc == code, "exit %s, expected %s; stderr:\n%s" % (rc, code, stderr)
    assert "Traceback" not in stderr, stderr
    errors = error_lines(stderr)
    assert len(errors) == 1, stderr
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert lines[-1] == errors[0], stderr
    assert "this is a bug in ptycli" not in errors[0], errors[0]
    for w in words:
        assert w in errors[0], "%r not in %r" % (w, errors[0])
    return errors[0]


def fingerprint(path):
    """(sha256, mtime_ns, size) of a file: to show that reading never modifies it."""
    st = os.stat(path)
    return hashlib.sha256(Path(path).read_bytes()).hexdigest(), st.st_mtime_ns, st.st_size
