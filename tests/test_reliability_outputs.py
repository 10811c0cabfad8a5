"""Outputs and numerics: results are written safely, and a diverging engine keeps its last good state.

* an existing output needs ``--force``; a missing folder is created; an unwritable one is refused
  before anything is computed (exit 2);
* every file is written to a temporary file in the target folder, flushed and renamed into place:
  a failed write (disk full, simulated by making h5py raise ENOSPC mid-write) or an interruption
  leaves the old file intact and no temporary file behind, and exits with 1;
* divergence (NaN/Inf in the probe, object or errors): the engine restores its last good state and
  raises EngineError; the CLI writes that state to the output (marked failed, resumable), says so
  in one line and exits with 1.
"""

import errno
import json
import os
import shutil

import h5py
import numpy as np
import pytest

import reliability_helpers as rh
from ptycli.errors import EngineError, RuntimeFailure
from ptycli.io import load_reconstruction
from ptycli.io.atomic import atomic_write


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    return rh.simulate(tmp_path_factory.mktemp("outputs") / "data.h5")


@pytest.fixture
def cfg(pristine, tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(rh.config(pristine, numiter=6, top="io: {checkpoint: {interval: 2}}\n"))
    return path


def temp_files(folder):
    return sorted(p.name for p in folder.iterdir() if ".tmp" in p.name or p.name.startswith(".ptycli-write-test"))


@pytest.fixture
def no_computing(monkeypatch):
    """Fail loudly if the model builder is reached (the checks must come first)."""
    from ptycli.core import ptycho

    def boom(*a, **k):
        raise AssertionError("computing started before the output checks")

    monkeypatch.setattr(ptycho.Ptycho, "__init__", boom)


# -- output location -------------------------------------------------------------------------------

def test_existing_output_needs_force(cfg, tmp_path, no_computing):
    out = tmp_path / "out.h5"
    out.write_bytes(b"a good old result")
    res = rh.invoke("reconstruct", cfg, "-o", out)
    rh.assert_clean_error(res, 2, "output file %s already exists" % out, "use --force")
    assert out.read_bytes() == b"a good old result"
    assert not (tmp_path / "out.checkpoint.h5").exists()


def test_missing_output_folder_is_created(cfg, tmp_path):
    out = tmp_path / "new" / "deeper" / "out.h5"
    res = rh.invoke("reconstruct", cfg, "-o", out)
    assert res.exit_code == 0, res.stderr
    assert out.exists()
    # the checkpoint is removed once the run finished well (io.checkpoint.keep: false)
    assert not (tmp_path / "new" / "deeper" / "out.checkpoint.h5").exists()
    assert temp_files(out.parent) == []


def test_output_folder_cannot_be_created(cfg, tmp_path, no_computing):
    (tmp_path / "afile").write_text("x")
    res = rh.invoke("reconstruct", cfg, "-o", tmp_path / "afile" / "out.h5")
    rh.assert_clean_error(res, 2, "cannot create the folder", "choose a writable location")


def test_output_is_a_folder(cfg, tmp_path, no_computing):
    (tmp_path / "res.h5").mkdir()
    res = rh.invoke("reconstruct", cfg, "-o", tmp_path / "res.h5")
    rh.assert_clean_error(res, 2, "is a folder", "give a file name")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes anywhere")
def test_output_folder_not_writable(cfg, tmp_path, no_computing):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        res = rh.invoke("reconstruct", cfg, "-o", ro / "out.h5")
    finally:
        ro.chmod(0o755)
    rh.assert_clean_error(res, 2, "folder %s is not writable" % ro)


def test_output_folder_on_a_read_only_file_system(cfg, tmp_path, monkeypatch, no_computing):
    """A real write test, not os.access (which says yes to root on a read-only mount)."""
    import tempfile

    ro = tmp_path / "mnt"
    ro.mkdir()
    real = tempfile.mkstemp

    def mkstemp(*a, dir=None, **k):
        if dir is not None and os.path.abspath(dir) == str(ro):
            raise OSError(errno.EROFS, "Read-only file system")
        return real(*a, dir=dir, **k)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    res = rh.invoke("reconstruct", cfg, "-o", ro / "out.h5")
    rh.assert_clean_error(res, 2, "folder %s is not writable (Read-only file system)" % ro)


def test_checkpoint_location_checked_first(cfg, tmp_path, no_computing):
    (tmp_path / "afile").write_text("x")
    res = rh.invoke("reconstruct", cfg, "-o", tmp_path / "out.h5",
                    "--set", "io.checkpoint.path=%s" % (tmp_path / "afile" / "ck.h5"))
    rh.assert_clean_error(res, 2, "cannot create the folder", "checkpoint file")


# -- disk full and interrupted writes ----------------------------------------------------------------

def _fail_writes(monkeypatch, matches, after=3, exc=None):
    """Make h5py raise ENOSPC when creating the ``after``-th dataset in files whose name ``matches``."""
    from h5py._hl.group import Group

    real = Group.create_dataset
    count = {"n": 0}

    def create_dataset(self, name, *a, **k):
        if matches(os.path.basename(self.file.filename)):
            count["n"] += 1
            if count["n"] >= after:
                raise exc or OSError(errno.ENOSPC, "No space left on device")
        return real(self, name, *a, **k)

    monkeypatch.setattr(Group, "create_dataset", create_dataset)
    return count


def test_disk_full_while_writing_the_result(cfg, tmp_path, monkeypatch):
    out = tmp_path / "out.h5"
    res = rh.invoke("reconstruct", cfg, "-o", out)
    assert res.exit_code == 0, res.stderr
    good = out.read_bytes()
    count = _fail_writes(monkeypatch, lambda name: name.startswith(".out.h5."), after=4)
    res = rh.invoke("reconstruct", cfg, "-o", out, "--force", "--set", "engines.dm.numiter=3")
    assert count["n"] >= 4
    rh.assert_clean_error(res, 1, "cannot write %s: no space left on the device" % out,
                          "the existing file is unchanged")
    assert out.read_bytes() == good                   # the old result is intact
    assert temp_files(tmp_path) == []                 # and no half-written file is left
    assert load_reconstruction(out).total_iterations == 6
    # the checkpoints written before the failure are complete
    assert load_reconstruction(tmp_path / "out.checkpoint.h5").total_iterations == 3


def test_disk_full_while_writing_a_checkpoint(cfg, tmp_path, monkeypatch):
    """The second checkpoint fails: the run stops (exit 1), the first checkpoint stays complete."""
    out = tmp_path / "out.h5"
    calls = {"files": 0}
    from h5py._hl.group import Group

    real = Group.create_dataset
    opened = set()

    def create_dataset(self, name, *a, **k):
        fn = os.path.basename(self.file.filename)
        if fn.startswith(".out.checkpoint.h5."):
            opened.add(fn)
            if len(opened) >= 2:
                calls["files"] += 1
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, name, *a, **k)

    monkeypatch.setattr(Group, "create_dataset", create_dataset)
    res = rh.invoke("reconstruct", cfg, "-o", out)
    rh.assert_clean_error(res, 1, "cannot write %s: no space left on the device" % (tmp_path / "out.checkpoint.h5"))
    assert calls["files"] == 1
    assert not out.exists()
    assert temp_files(tmp_path) == []
    ck = load_reconstruction(tmp_path / "out.checkpoint.h5")
    assert ck.total_iterations == 2 and ck.kind == "checkpoint"


def test_disk_full_in_simulate(tmp_path, monkeypatch):
    cfg = tmp_path / "sim.yaml"
    cfg.write_text(rh.SIM_CONFIG)
    _fail_writes(monkeypatch, lambda name: name.startswith(".sim.h5."), after=2)
    res = rh.invoke("simulate", cfg, "-o", tmp_path / "sim.h5")
    rh.assert_clean_error(res, 1, "cannot write", "no space left on the device", "nothing was written")
    assert not (tmp_path / "sim.h5").exists()
    assert temp_files(tmp_path) == []


def test_h5py_error_text_without_errno(tmp_path):
    """h5py's OSError carries the errno only in its text."""
    target = tmp_path / "r.h5"
    with pytest.raises(RuntimeFailure, match="no space left on the device"):
        with atomic_write(target) as tmp:
            raise OSError("Can't write data (file write failed: time = ..., filename = '%s', errno = 28, "
                          "error message = 'No space left on device')" % tmp)
    assert not target.exists() and temp_files(tmp_path) == []


@pytest.mark.parametrize("exc", [KeyboardInterrupt(), ValueError("bug"), OSError(errno.EIO, "I/O error")])
def test_interrupted_write_keeps_the_old_file(tmp_path, exc):
    target = tmp_path / "r.h5"
    target.write_bytes(b"old and good")
    expected = RuntimeFailure if isinstance(exc, OSError) else type(exc)
    with pytest.raises(expected):
        with atomic_write(target) as tmp:
            with h5py.File(tmp, "w") as f:
                f["a"] = np.zeros(1000)
            raise exc
    assert target.read_bytes() == b"old and good"
    assert temp_files(tmp_path) == []


def test_atomic_write_flushes_before_the_rename(tmp_path, monkeypatch):
    synced = []
    real = os.fsync

    def fsync(fd):
        synced.append(os.readlink("/proc/self/fd/%d" % fd) if os.path.exists("/proc/self/fd") else fd)
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    target = tmp_path / "r.h5"
    with atomic_write(target) as tmp:
        with h5py.File(tmp, "w") as f:
            f["a"] = np.arange(10)
        tmp_name = tmp
    assert target.exists() and not os.path.exists(tmp_name)
    assert synced, "nothing flushed"
    if isinstance(synced[0], str):
        assert synced[0] == tmp_name and str(tmp_path) in synced
    assert oct(target.stat().st_mode & 0o777) != oct(0o600)


# -- divergence -----------------------------------------------------------------------------------------

def _poison_dm(monkeypatch, at, restore=True, where="obj"):
    """DM puts NaN into the object (or probe) in engine iteration ``at`` (0-based); keeps the state before it.

    ``restore=False`` raises EngineError directly, bypassing the base class's restore (an engine that
    fails in a broken state).
    """
    from ptycli.engines.projectional import DM

    real = DM.engine_iterate
    seen = {}

    def engine_iterate(self, n):
        if self.iteration == at:
            C = self.ptycho.obj if where == "obj" else self.ptycho.probe
            seen["obj"] = {k: S.data.copy() for k, S in self.ptycho.obj.S.items()}
            seen["probe"] = {k: S.data.copy() for k, S in self.ptycho.probe.S.items()}
            out = real(self, n)
            for S in C.S.values():
                S.data[..., 3, 3] = np.nan
            if not restore:
                raise EngineError("engine %s failed in a broken state (test)" % self.label)
            return out
        return real(self, n)

    monkeypatch.setattr(DM, "engine_iterate", engine_iterate)
    return seen


def test_engine_base_restores_the_last_good_state(pristine, monkeypatch):
    """The engines' contract (ptycli/engines/base.py): NaN -> restore last good probe/object, EngineError."""
    from ptycli.core.ptycho import Ptycho
    from ptycli.engines import make_engine
    from ptycli.params.yamlio import load_config_text

    seen = _poison_dm(monkeypatch, at=2)
    P = Ptycho(load_config_text(rh.config(pristine, numiter=6)), level=2)
    engine = make_engine(P, P.p.engines.dm, label="dm")
    engine.initialize()
    engine.iterate(2)
    with pytest.raises(EngineError, match="diverged at iteration 3.*restored"):
        engine.iterate(1)
    for key, C in (("obj", P.obj), ("probe", P.probe)):
        for sid, S in C.S.items():
            np.testing.assert_array_equal(S.data, seen[key][sid])


@pytest.mark.parametrize("where", ["obj", "probe"])
def test_divergence_keeps_the_last_good_state(cfg, tmp_path, monkeypatch, where):
    seen = _poison_dm(monkeypatch, at=3, where=where)
    out = tmp_path / "out.h5"
    res = rh.invoke("reconstruct", cfg, "-o", out)
    line = rh.assert_clean_error(res, 1, "engine dm (DM) diverged at iteration 4", "NaN/Inf in probe or object",
                                 "the state of iteration 3 (the last good one) was written to %s" % out,
                                 "--resume %s" % out)
    assert res.stdout == ""
    rec = load_reconstruction(out)
    for sid, arr in seen["obj"].items():
        np.testing.assert_array_equal(rec.objects[sid], arr)
    for sid, arr in seen["probe"].items():
        np.testing.assert_array_equal(rec.probes[sid], arr)
    st = rec.state["attrs"]
    assert st["status"] == "failed" and "diverged" in st["error"]
    assert not st["finished"] and st["total_iterations"] == 3 and st["engine_iteration"] == 3
    assert [h["iteration"] for h in rec.history] == [1, 2, 3]
    assert rec.engines[0]["iterations"] == 3 and not rec.engines[0]["finished"]
    assert "diverged" in line
    # inspect says so
    res = rh.invoke("inspect", out)
    assert res.exit_code == 0 and "FAILED:" in res.stdout
    # and the run continues from it once the cause is gone
    monkeypatch.undo()
    res = rh.invoke("reconstruct", cfg, "-o", tmp_path / "continued.h5", "--resume", out, "--json")
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["iterations"] == 6


def test_divergence_json(cfg, tmp_path, monkeypatch):
    _poison_dm(monkeypatch, at=1)
    out = tmp_path / "out.h5"
    res = rh.invoke("reconstruct", cfg, "-o", out, "--json")
    rh.assert_clean_error(res, 1, "diverged")
    doc = json.loads(res.stdout)
    assert doc["status"] == "failed" and doc["output"] == str(out) and doc["iterations"] == 1
    assert "diverged at iteration 2" in doc["error"]


def test_engine_failing_in_a_broken_state_writes_nothing(cfg, tmp_path, monkeypatch):
    _poison_dm(monkeypatch, at=3, restore=False)
    out = tmp_path / "out.h5"
    res = rh.invoke("reconstruct", cfg, "-o", out)
    rh.assert_clean_error(res, 1, "failed in a broken state (test)", "no result was written",
                          "the last checkpoint is %s" % (tmp_path / "out.checkpoint.h5"))
    assert not out.exists()
    assert load_reconstruction(tmp_path / "out.checkpoint.h5").total_iterations == 2


def test_divergence_from_absurd_data(pristine, tmp_path):
    """A single pixel of 1e20 counts: the errors overflow in the first iteration."""
    data = tmp_path / "huge.h5"
    shutil.copy(pristine, data)
    with h5py.File(data, "a") as f:
        x = f["data/intensities"][()]
        x[0, 8, 8] = 1e20
        f["data/intensities"][...] = x
    cfg = tmp_path / "huge.yaml"
    cfg.write_text(rh.config(data, numiter=4))
    out = tmp_path / "out.h5"
    res = rh.invoke("reconstruct", cfg, "-o", out)
    rh.assert_clean_error(res, 1, "diverged at iteration 1", "NaN/Inf", "written to %s" % out)
    assert "RuntimeWarning" not in res.stderr          # numpy's warnings only with -v
    rec = load_reconstruction(out)
    assert rec.state["attrs"]["total_iterations"] == 0
    assert all(np.isfinite(a).all() for a in list(rec.objects.values()) + list(rec.probes.values()))


@pytest.mark.slow
def test_divergence_in_a_real_process(pristine, tmp_path):
    data = tmp_path / "huge.h5"
    shutil.copy(pristine, data)
    with h5py.File(data, "a") as f:
        x = f["data/intensities"][()]
        x[:, 8, 8] = 3e38
        f["data/intensities"][...] = x
    cfg = tmp_path / "huge.yaml"
    cfg.write_text(rh.config(data, numiter=4))
    res = rh.ptycli("reconstruct", cfg, "-o", tmp_path / "out.h5")
    rh.assert_clean_error(res, 1, "diverged at iteration 1", "written to %s" % (tmp_path / "out.h5"))
    assert res.stdout == "" and "RuntimeWarning" not in res.stderr


def test_divergence_and_a_full_disk(cfg, tmp_path, monkeypatch):
    _poison_dm(monkeypatch, at=3)
    _fail_writes(monkeypatch, lambda name: name.startswith(".out.h5."), after=2)
    out = tmp_path / "out.h5"
    res = rh.invoke("reconstruct", cfg, "-o", out)
    rh.assert_clean_error(res, 1, "diverged at iteration 4", "writing its last good state failed too",
                          "no space left on the device")
    assert not out.exists() and temp_files(tmp_path) == []
