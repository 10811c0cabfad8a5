"""The files ptycli writes: never an input, never a device, never twice at once; small; checked first.

Issue 13 (class 1: files destroyed or overwritten; class 2: a FIFO as data, guard children that
outlive their parent; class 3: damaged checkpoints, two quick Ctrl-C; class 4: output paths that
cannot work, ``~`` and symlink loops in data paths) and issue 17 item 2 (disk use: results without
exit waves, checkpoints removed at the end, checkpoint names ending ``.h5``), through the real CLI.
"""

import errno
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

import reliability_helpers as rh
from ptycli.io import load_reconstruction


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    return rh.simulate(tmp_path_factory.mktemp("catalogue_outputs") / "data.h5")


@pytest.fixture
def data(pristine, tmp_path):
    """A copy of the small data file in this test's folder."""
    path = tmp_path / "data.h5"
    shutil.copy(pristine, path)
    return path


def write_config(folder, dfile, numiter=4, top="", engines=None, name="run.yaml"):
    path = folder / name
    path.write_text(rh.config(dfile, numiter=numiter, top=top, engines=engines))
    return path


@pytest.fixture
def no_computing(monkeypatch):
    """Fail loudly if the model builder is reached (the checks must come first)."""
    from ptycli.core import ptycho

    def boom(*a, **k):
        raise AssertionError("computing started before the output checks")

    monkeypatch.setattr(ptycho.Ptycho, "__init__", boom)


def leftovers(folder):
    """Temporary and lock files in ``folder``."""
    return sorted(p.name for p in folder.iterdir() if ".tmp" in p.name or p.name.endswith(".ptycli.lock"))


# -- 1. files destroyed or overwritten -------------------------------------------------------------------

def test_output_naming_the_data_file_is_refused_even_with_force(data, tmp_path, no_computing):
    before = rh.fingerprint(data)
    cfg = write_config(tmp_path, data)
    res = rh.invoke("reconstruct", cfg, "-o", data, "--force")
    rh.assert_clean_error(res, 2, "output file %s is %s (scans.MF.data.dfile)" % (data, data),
                          "never replaces an input, even with --force", "choose another output name")
    assert rh.fingerprint(data) == before
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("link", ["symlink", "hardlink", "dotdot"])
def test_output_that_is_the_data_file_by_another_name(data, tmp_path, link, no_computing):
    before = rh.fingerprint(data)
    cfg = write_config(tmp_path, data)
    if link == "symlink":
        out = tmp_path / "out.h5"
        out.symlink_to(data)
    elif link == "hardlink":
        out = tmp_path / "out.h5"
        os.link(data, out)
    else:
        (tmp_path / "sub").mkdir()
        out = tmp_path / "sub" / ".." / "data.h5"
    res = rh.invoke("reconstruct", cfg, "-o", out, "--force")
    rh.assert_clean_error(res, 2, "never replaces an input")
    assert rh.fingerprint(data) == before


def test_config_mask_and_resume_files_are_inputs_too(data, tmp_path, no_computing):
    mask = tmp_path / "mask.npy"
    np.save(mask, np.ones((16, 16), np.uint8))
    cfg = write_config(tmp_path, data, top="", name="run.yaml")
    cfg.write_text(rh.config(data, data="mask: '%s'" % mask))
    for target, words in ((cfg, "the config file"), (mask, "scans.MF.data.mask")):
        before = rh.fingerprint(target)
        res = rh.invoke("reconstruct", cfg, "-o", target, "--force")
        rh.assert_clean_error(res, 2, "(%s)" % words, "never replaces an input")
        assert rh.fingerprint(target) == before


def test_result_never_replaces_the_resume_file(data, tmp_path):
    cfg = write_config(tmp_path, data, numiter=2)
    first = tmp_path / "first.h5"
    assert rh.invoke("reconstruct", cfg, "-o", first).exit_code == 0
    before = rh.fingerprint(first)
    res = rh.invoke("reconstruct", cfg, "-o", first, "--resume", first, "--force", "--set", "engines.dm.numiter=4")
    rh.assert_clean_error(res, 2, "(the --resume file)", "never replaces an input")
    assert rh.fingerprint(first) == before


@pytest.mark.parametrize("template, victim", [("{home}/ck_{iterations}.h5", "ck_3.h5"),
                                              ("{home}/{engine}.h5", "ml.h5")])
def test_checkpoint_template_reaching_the_data_later_is_refused(pristine, tmp_path, template, victim,
                                                                no_computing):
    """Every expansion counts, not just the first: ``ck_3.h5`` comes after iteration 3, ``ml.h5`` with ML."""
    data = tmp_path / victim
    shutil.copy(pristine, data)
    before = rh.fingerprint(data)
    cfg = write_config(tmp_path, data, engines="  dm: {name: DM, numiter: 2}\n  ml: {name: ML, numiter: 2}\n")
    res = rh.invoke("reconstruct", cfg, "-o", tmp_path / "out.h5", "--force", "--set", "io.home=%s" % tmp_path,
                    "--set", "io.checkpoint.path=%s" % template)
    rh.assert_clean_error(res, 2, "io.checkpoint.path would replace scans.MF.data.dfile %s" % data,
                          "choose another io.checkpoint.path")
    assert rh.fingerprint(data) == before


def test_checkpoint_template_reaching_an_existing_file_needs_force(data, tmp_path):
    old = tmp_path / "ck_4.h5"
    old.write_bytes(b"an older file")
    cfg = write_config(tmp_path, data, numiter=4)
    args = ["reconstruct", cfg, "-o", tmp_path / "out.h5", "--set", "io.checkpoint.path=%s/ck_{iterations}.h5"
            % tmp_path, "--set", "io.checkpoint.interval=2"]
    res = rh.invoke(*args)
    rh.assert_clean_error(res, 2, "checkpoint file %s exists from an earlier run" % old, "--force")
    assert old.read_bytes() == b"an older file" and not (tmp_path / "out.h5").exists()
    res = rh.invoke(*args, "--force")   # not an input: --force replaces it (and the run removes it at the end)
    assert res.exit_code == 0, res.stderr


def test_many_checkpoint_names_are_matched_not_listed(data, tmp_path, monkeypatch, no_computing):
    """Beyond the listing limit a template is matched against the inputs and the folder's files."""
    from ptycli.io import outputs

    monkeypatch.setattr(outputs, "MAX_LISTED_CHECKPOINTS", 3)
    victim = tmp_path / "ck_0007.h5"
    shutil.copy(data, victim)
    cfg = write_config(tmp_path, victim, numiter=50)
    template = "io.checkpoint.path=%s/ck_{iterations:04d}.h5" % tmp_path
    res = rh.invoke("reconstruct", cfg, "-o", tmp_path / "out.h5", "--set", template)
    rh.assert_clean_error(res, 2, "would replace scans.MF.data.dfile %s (engine dm, iteration 7)" % victim)
    other = write_config(tmp_path, data, numiter=50, name="other.yaml")
    res = rh.invoke("reconstruct", other, "-o", tmp_path / "out.h5", "--set", template)
    rh.assert_clean_error(res, 2, "checkpoint file %s exists from an earlier run" % victim)


def test_checkpoint_equal_to_the_cxi_output_or_the_result(data, tmp_path, no_computing):
    cfg = write_config(tmp_path, data)
    out = tmp_path / "out.h5"
    res = rh.invoke("reconstruct", cfg, "-o", out, "--format", "cxi",
                    "--set", "io.checkpoint.path=%s" % (tmp_path / "out.cxi"))
    rh.assert_clean_error(res, 2, "the checkpoint file and the CXI output file are both", "io.checkpoint.path")
    res = rh.invoke("reconstruct", cfg, "-o", out, "--set", "io.checkpoint.path=%s/{run}.h5" % tmp_path,
                    "--set", "run=out")
    rh.assert_clean_error(res, 2, "the checkpoint file and the output file are both")


def test_fifo_as_output_is_refused_even_with_force(data, tmp_path, no_computing):
    fifo = tmp_path / "out.h5"
    os.mkfifo(fifo)
    cfg = write_config(tmp_path, data)
    res = rh.invoke("reconstruct", cfg, "-o", fifo, "--force")
    rh.assert_clean_error(res, 2, "output file %s is a FIFO (named pipe), not a regular file" % fifo,
                          "even with --force")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert not (tmp_path / "out.checkpoint.h5").exists()


def test_device_node_as_output_is_refused_even_with_force(data, tmp_path, no_computing):
    node = tmp_path / "null"
    try:
        os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except (PermissionError, OSError) as exc:
        pytest.skip("cannot make a device node here (%s)" % exc)
    cfg = write_config(tmp_path, data)
    res = rh.invoke("reconstruct", cfg, "-o", node, "--force")
    rh.assert_clean_error(res, 2, "is a character device, not a regular file")
    assert stat.S_ISCHR(os.lstat(node).st_mode)
    assert not (tmp_path / "null.checkpoint.h5").exists()


def _hold_lock(target):
    """Another process holding ptycli's lock on ``target`` (until its stdin closes)."""
    code = "import sys; from ptycli.io.atomic import lock_outputs; lock_outputs([sys.argv[1]]); " \
           "print('locked', flush=True); sys.stdin.read()"
    proc = subprocess.Popen([sys.executable, "-c", code, str(target)], env=rh.env(), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_run_on_the_same_output_fails_at_once(data, tmp_path, no_computing):
    cfg = write_config(tmp_path, data)
    out = tmp_path / "new.h5"
    holder = _hold_lock(out)
    try:
        t0 = time.monotonic()
        res = rh.invoke("reconstruct", cfg, "-o", out)
        rh.assert_clean_error(res, 2, "output file %s is being written by another ptycli run (process %d"
                              % (out, holder.pid), "wait for it to finish, or choose another output name")
        assert time.monotonic() - t0 < 5
    finally:
        holder.communicate("")
    assert not out.exists()


def test_a_lock_left_by_a_killed_run_is_taken_over(data, tmp_path):
    cfg = write_config(tmp_path, data, numiter=2)
    out = tmp_path / "out.h5"
    (tmp_path / ".out.h5.ptycli.lock").write_text("999999 somehost\n")   # its process is gone: no flock held
    res = rh.invoke("reconstruct", cfg, "-o", out)
    assert res.exit_code == 0, res.stderr
    assert out.exists() and leftovers(tmp_path) == []


@pytest.mark.slow
def test_two_real_runs_on_one_new_output(data, tmp_path):
    """Two processes started on the same new output: the second fails at once, the first finishes."""
    cfg = write_config(tmp_path, data, numiter=300)
    first = subprocess.Popen([sys.executable, "-m", "ptycli", "reconstruct", str(cfg), "-o", "same.h5", "-q"],
                             cwd=tmp_path, env=rh.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while not (tmp_path / ".same.h5.ptycli.lock").exists() and time.time() < deadline:
            time.sleep(0.02)
        second = rh.ptycli("reconstruct", cfg, "-o", "same.h5", cwd=tmp_path)
        rh.assert_clean_error(second, 2, "is being written by another ptycli run (process %d" % first.pid)
        _, err = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
            first.communicate()
    assert first.returncode == 0, err
    assert load_reconstruction(tmp_path / "same.h5").total_iterations == 300
    assert leftovers(tmp_path) == []


# -- 2. a FIFO as data, guard children -------------------------------------------------------------------

def test_fifo_as_data_file_is_refused_at_once(tmp_path):
    fifo = tmp_path / "data.h5"
    os.mkfifo(fifo)
    cfg = write_config(tmp_path, fifo)
    t0 = time.monotonic()
    res = rh.invoke("reconstruct", cfg, "-o", tmp_path / "out.h5")
    rh.assert_clean_error(res, 2, "scans.MF.data.dfile: %s is a FIFO (named pipe), not a regular file" % fifo)
    assert time.monotonic() - t0 < 2


def test_guard_refuses_special_files_itself(tmp_path):
    from ptycli.errors import DataError
    from ptycli.io.h5guard import check_structure

    fifo = tmp_path / "pipe.h5"
    os.mkfifo(fifo)
    with pytest.raises(DataError, match="is a FIFO"):
        check_structure(fifo, validation=True)


def _alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"   # a zombie is dead
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_guard_child_dies_with_its_parent(pristine, tmp_path):
    """SIGTERM to the parent while its guard child is busy (as in a libhdf5 loop): no child is left."""
    pid_file = tmp_path / "child.pid"
    script = textwrap.dedent("""
        import os, sys, time
        from ptycli.io import h5guard

        def busy(path, tick):
            open(sys.argv[2], "w").write(str(os.getpid()))
            while True:
                pass

        h5guard._walk = busy
        h5guard.check_structure(sys.argv[1])
    """)
    parent = subprocess.Popen([sys.executable, "-c", script, str(pristine), str(pid_file)], env=rh.env())
    try:
        deadline = time.time() + 30
        while not (pid_file.exists() and pid_file.read_text()) and time.time() < deadline:
            time.sleep(0.01)
        child = int(pid_file.read_text())
        assert _alive(child)
        parent.send_signal(signal.SIGTERM)
        parent.wait(timeout=10)
        deadline = time.time() + 5
        while _alive(child) and time.time() < deadline:
            time.sleep(0.02)
        assert not _alive(child), "the guard child %d outlived its parent" % child
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


# -- 3. damaged checkpoints, two quick Ctrl-C ---------------------------------------------------------------

@pytest.fixture(scope="module")
def checkpoint(pristine, tmp_path_factory):
    folder = tmp_path_factory.mktemp("damaged")
    cfg = write_config(folder, pristine, numiter=4, top="io: {checkpoint: {interval: 2, keep: true}}\n")
    res = rh.invoke("reconstruct", cfg, "-o", folder / "out.h5")
    assert res.exit_code == 0, res.stderr
    return dict(cfg=cfg, path=folder / "out.checkpoint.h5")


def _rng_of_wrong_type(f):
    del f["state/engine/rng/state/state"]
    ds = f["state/engine/rng/state"].create_dataset("state", data=np.bytes_("not a number"))
    ds.attrs["type"] = "str"


def _nan_positions(f):
    f["scans/MF/positions"][0, 0] = np.nan


def _negative_iteration(f):
    f["state"].attrs["engine_iteration"] = -7


def _flat_probe(f):
    del f["reconstruction/probe/SMF"]
    f["reconstruction/probe"].create_dataset("SMF", data=np.ones((16, 16), np.complex64))


def _exit_rows(f):
    ex = f["state/exit/SMF"]
    ex.attrs["layermap"] = np.arange(3)


@pytest.mark.parametrize("damage, words", [
    (_rng_of_wrong_type, "/state/engine/rng is not a random generator state"),
    (_nan_positions, "scan MF: positions holds NaN or infinite values"),
    (_negative_iteration, "/state attribute engine_iteration is -7, not a whole number >= 0"),
    (_flat_probe, "probe SMF has shape (16, 16)"),
    (_exit_rows, "exit waves SMF: 20 rows but a layer map of 3"),
])
def test_damaged_checkpoint_is_a_usage_error(checkpoint, tmp_path, damage, words, no_computing):
    damaged = tmp_path / "damaged.h5"
    shutil.copy(checkpoint["path"], damaged)
    with h5py.File(damaged, "r+") as f:
        damage(f)
    res = rh.invoke("reconstruct", checkpoint["cfg"], "-o", tmp_path / "out.h5", "--resume", damaged)
    rh.assert_clean_error(res, 2, "--resume %s: the checkpoint is damaged: %s" % (damaged, words),
                          "resume from another checkpoint")
    assert "resuming at iteration" not in res.stderr


@pytest.mark.slow
@pytest.mark.parametrize("gap", [0.0, 0.05, 0.3])
def test_two_quick_ctrl_c(pristine, tmp_path, gap):
    """Two SIGINTs in quick succession: exit 130, no traceback, no message contradicting another."""
    cfg = write_config(tmp_path, pristine, numiter=100000, top="io: {checkpoint: {interval: 1}}\n")
    proc = subprocess.Popen([sys.executable, "-m", "ptycli", "reconstruct", str(cfg), "-o", "out.h5"],
                            cwd=tmp_path, env=rh.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while not (tmp_path / "out.checkpoint.h5").exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.01)
        proc.send_signal(signal.SIGINT)
        time.sleep(gap)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "Exception ignored" not in err, err
    stopped_at_once = "stopped at once" in err
    assert stopped_at_once != ("checkpoint written to" in err), err   # one story, not both
    assert leftovers(tmp_path) == [], err
    load_reconstruction(tmp_path / "out.checkpoint.h5")   # the last checkpoint is whole


# -- 4. paths that cannot work, ~, symlink loops ---------------------------------------------------------

def test_path_through_a_missing_folder_and_dotdot(data, tmp_path, no_computing):
    cfg = write_config(tmp_path, data)
    out = os.path.join(str(tmp_path), "nosuchdir", "..", "o.h5")
    res = rh.invoke("reconstruct", cfg, "-o", out)
    rh.assert_clean_error(res, 2, "cannot be reached", "nosuchdir")
    assert not (tmp_path / "nosuchdir").exists()


def test_output_name_whose_temporary_name_is_too_long(data, tmp_path, no_computing):
    cfg = write_config(tmp_path, data)
    limit = os.pathconf(tmp_path, "PC_NAME_MAX")
    out = tmp_path / ("a" * (limit - 18) + ".h5")    # fits itself, not with the temporary's tag
    res = rh.invoke("reconstruct", cfg, "-o", out)
    rh.assert_clean_error(res, 2, "output file %s: its temporary file name would be" % out, "the file system allows")
    assert not out.exists()


def test_checkpoint_name_too_long_at_a_later_iteration(data, tmp_path, no_computing):
    """``c..c_9.h5`` fits the file-name limit, ``c..c_10.h5`` (after iteration 10) does not: refused up front."""
    limit = os.pathconf(tmp_path, "PC_NAME_MAX")
    cfg = write_config(tmp_path, data, numiter=10)
    template = "io.checkpoint.path=%s/%s_{iterations}.h5" % (tmp_path, "c" * (limit - 5))
    res = rh.invoke("reconstruct", cfg, "-o", tmp_path / "out.h5", "--set", template)
    line = rh.assert_clean_error(res, 2, "checkpoint file", "_10.h5: its name would be %d characters long" % (limit + 1))
    assert "the file system allows %d" % limit in line


def test_tilde_in_data_paths(data, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    mask = tmp_path / "mask.npy"
    np.save(mask, np.ones((16, 16), np.uint8))
    cfg = tmp_path / "run.yaml"
    cfg.write_text(rh.config("~/data.h5", numiter=1, data="mask: '~/mask.npy'"))
    res = rh.invoke("reconstruct", cfg, "-o", tmp_path / "out.h5", "--json")
    assert res.exit_code == 0, res.stderr
    params = load_reconstruction(tmp_path / "out.h5").params
    assert params.scans.MF.data.dfile == str(data) and params.scans.MF.data.mask == str(mask)


def test_symlink_loop_as_data_file(tmp_path, no_computing):
    loop = tmp_path / "data.h5"
    loop.symlink_to(tmp_path / "data.h5")
    cfg = write_config(tmp_path, loop)
    res = rh.invoke("reconstruct", cfg, "-o", tmp_path / "out.h5")
    rh.assert_clean_error(res, 2, "scans.MF.data.dfile: %s is a symlink loop" % loop)
    assert "does not exist" not in res.stderr


# -- issue 17: disk use ------------------------------------------------------------------------------------

def test_result_without_exit_waves_and_no_checkpoint_left(data, tmp_path):
    cfg = write_config(tmp_path, data, numiter=2)
    out = tmp_path / "out.h5"
    res = rh.invoke("reconstruct", cfg, "-o", out, "--json")
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["checkpoints"] == [str(tmp_path / "out.checkpoint.h5")] and doc["checkpoints_kept"] is False
    assert not (tmp_path / "out.checkpoint.h5").exists()
    with h5py.File(out, "r") as f:
        assert "state" in f and "exit" not in f["state"]
    kept = tmp_path / "kept.h5"
    res = rh.invoke("reconstruct", cfg, "-o", kept, "--set", "io.keep_exit_waves=true",
                    "--set", "io.checkpoint.keep=true")
    assert res.exit_code == 0, res.stderr
    with h5py.File(kept, "r") as f:
        assert f["state/exit/SMF"].shape[0] == 20
    assert (tmp_path / "kept.checkpoint.h5").exists()
    assert os.path.getsize(out) < os.path.getsize(kept)


def test_resume_from_a_result_without_exit_waves_says_so(data, tmp_path):
    cfg = write_config(tmp_path, data, numiter=2)
    first = tmp_path / "first.h5"
    assert rh.invoke("reconstruct", cfg, "-o", first).exit_code == 0
    res = rh.invoke("reconstruct", cfg, "-o", tmp_path / "more.h5", "--resume", first,
                    "--set", "engines.dm.numiter=4", "--json")
    assert res.exit_code == 0, res.stderr
    notes = [ln for ln in res.stderr.splitlines() if "holds no exit waves" in ln]
    assert len(notes) == 1 and "restart from probe x object" in notes[0]
    assert json.loads(res.stdout)["iterations"] == 4
    assert first.exists()   # an input: never removed


def test_checkpoint_name_always_ends_h5(data, tmp_path):
    cfg = write_config(tmp_path, data, numiter=2)
    res = rh.invoke("reconstruct", cfg, "-o", tmp_path / "results" / "out.txt", "--set", "io.checkpoint.keep=true")
    assert res.exit_code == 0, res.stderr
    assert (tmp_path / "results" / "out.checkpoint.h5").exists()
    assert not (tmp_path / "results" / "out.checkpoint.txt").exists()


def test_a_stopped_run_keeps_its_checkpoint(data, tmp_path, monkeypatch):
    from ptycli.runner import ChainRunner

    original = ChainRunner._stop_due

    def stop_due(self):
        if int(self.P.runtime.iterations) == 2 and self.stop_signal is None:
            self.stop_signal = signal.SIGINT
        return original(self)

    monkeypatch.setattr(ChainRunner, "_stop_due", stop_due)
    cfg = write_config(tmp_path, data, numiter=4)
    res = rh.invoke("reconstruct", cfg, "-o", tmp_path / "out.h5")
    assert res.exit_code == 130, res.stderr
    assert (tmp_path / "out.checkpoint.h5").exists() and leftovers(tmp_path) == []
