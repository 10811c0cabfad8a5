"""The README's shell-pipeline example runs as written (a parameter sweep collected with jq / Python)."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def readme_blocks():
    """Code blocks that follow a ``<!-- readme-test: NAME -->`` marker in README.md."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    pattern = re.compile(r"<!-- readme-test: (\S+) -->\s*```(?:bash|sh)\n(.*?)```", re.S)
    return {name: code for name, code in pattern.findall(text)}


def shell_env(tmp_path):
    env = dict(os.environ)
    bindir = os.path.dirname(os.path.abspath(sys.executable))
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    if not shutil.which("ptycli", path=env["PATH"]):
        # running from a source tree without the entry point: a small stand-in
        shim = tmp_path / "bin"
        shim.mkdir(exist_ok=True)
        (shim / "ptycli").write_text('#!/bin/sh\nexec "%s" -m ptycli "$@"\n' % sys.executable)
        (shim / "ptycli").chmod(0o755)
        env["PATH"] = str(shim) + os.pathsep + env["PATH"]
    return env


def run(code, cwd, env):
    return subprocess.run(["bash", "-euo", "pipefail", "-c", code], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    blocks = readme_blocks()
    assert {"sweep", "jq", "python"} <= set(blocks), sorted(blocks)
    work = tmp_path_factory.mktemp("readme")
    for name in ("configs", "sample_data"):
        (work / name).symlink_to(ROOT / name)
    env = shell_env(work)
    res = run(blocks["sweep"], work, env)
    assert res.returncode == 0, res.stderr
    return work, env, blocks


@pytest.mark.slow
def test_sweep_writes_one_json_line_per_run(sweep):
    work, _, _ = sweep
    lines = (work / "out" / "sweep" / "runs.jsonl").read_text().splitlines()
    runs = [json.loads(line) for line in lines]
    assert [r["overrides"][0] for r in runs] == ["engines.dm.alpha=%s" % a for a in ("0.5", "0.8", "1.0")]
    for r in runs:
        assert r["status"] == "ok" and r["iterations"] == 20
        assert (work / r["output"]).exists()
        assert r["final_errors"]["fourier_error"] > 0


@pytest.mark.slow
def test_ranking_with_jq(sweep):
    work, env, blocks = sweep
    if not shutil.which("jq", path=env["PATH"]):
        pytest.skip("jq is not installed")
    res = run(blocks["jq"], work, env)
    assert res.returncode == 0, res.stderr
    rows = [line.split("\t") for line in res.stdout.strip().splitlines()]
    assert len(rows) == 3
    errors = [float(r[0]) for r in rows]
    assert errors == sorted(errors)
    assert all(r[1].startswith("engines.dm.alpha=") and r[2].endswith(".h5") for r in rows)


@pytest.mark.slow
def test_ranking_with_python(sweep):
    work, env, blocks = sweep
    res = run(blocks["python"], work, env)
    assert res.returncode == 0, res.stderr
    rows = [line.split() for line in res.stdout.strip().splitlines()]
    assert len(rows) == 3
    errors = [float(r[0]) for r in rows]
    assert errors == sorted(errors)
