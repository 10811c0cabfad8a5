"""Temporary files of killed writers are removed by the next write of the same target.

:func:`ptycli.io.atomic.atomic_write` names its temporary file after the writing process
(``.<name>.ptycli.<host>.<pid>.<random>.tmp<ext>``). A writer killed with SIGKILL leaves it
behind; the next ``atomic_write`` or ``check_writable`` of that target removes the temporary
files of processes of this host that no longer run, and leaves the others alone (a live
writer, another host, another target, an old-style name without a PID).
"""

import logging
import os
import signal
import socket
import subprocess
import sys

import h5py
import numpy as np
import pytest

import reliability_helpers as rh
from ptycli.io.atomic import _host, atomic_write, check_writable, remove_stale_temps, temp_prefix


def dead_pid():
    """The PID of a process that ran and was reaped (so it no longer exists)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    pid = proc.pid
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return pid
    pytest.skip("PID %d was reused at once" % pid)


def temps(folder):
    return sorted(p.name for p in folder.iterdir() if ".tmp" in p.name)


def plant(folder, target, pid, host=None, rand="abc123_x"):
    name = temp_prefix(folder / target, pid=pid, host=host) + rand + ".tmp" + os.path.splitext(target)[1]
    (folder / name).write_bytes(b"half a file")
    return name


def test_temp_name_names_host_and_pid(tmp_path):
    target = tmp_path / "recon.h5"
    with atomic_write(target) as tmp:
        name = os.path.basename(tmp)
        assert name.startswith(".recon.h5.ptycli.%s.%d." % (_host(), os.getpid()))
        assert name.endswith(".tmp.h5")
        with h5py.File(tmp, "w") as f:
            f["a"] = np.arange(3)
    assert target.exists() and temps(tmp_path) == []


def test_stale_temp_of_a_dead_writer_is_removed(tmp_path, caplog):
    target = tmp_path / "recon.h5"
    stale = plant(tmp_path, "recon.h5", dead_pid())
    live = plant(tmp_path, "recon.h5", os.getpid())                      # this process: running
    parent = plant(tmp_path, "recon.h5", os.getppid(), rand="parent__")  # another live process
    foreign = plant(tmp_path, "recon.h5", dead_pid(), host="another-host.example.org")
    other = plant(tmp_path, "other.h5", dead_pid())                      # another target
    old_style = ".recon.h5.k2j3h4g5.tmp.h5"                              # before PIDs were in the name
    (tmp_path / old_style).write_bytes(b"x")
    with caplog.at_level(logging.INFO, logger="ptycli"):
        with atomic_write(target) as tmp:
            assert stale not in temps(tmp_path)                          # removed before writing
            with h5py.File(tmp, "w") as f:
                f["a"] = np.arange(3)
    assert target.exists()
    assert temps(tmp_path) == sorted([live, parent, foreign, other, old_style])
    assert "removed 1 stale temporary file of %s" % target in caplog.text


def test_check_writable_removes_stale_temps(tmp_path):
    target = tmp_path / "out" / "recon.h5"
    target.parent.mkdir()
    stale = [plant(target.parent, "recon.h5", dead_pid(), rand="r%d" % k) for k in range(2)]
    live = plant(target.parent, "recon.h5", os.getpid())
    check_writable(target, force=False)
    assert temps(target.parent) == [live] and not set(stale) & set(temps(target.parent))
    assert remove_stale_temps(target) == 0


def test_host_with_dots(tmp_path, monkeypatch):
    monkeypatch.setattr(socket, "gethostname", lambda: "node-7.cluster.example.org")
    stale = plant(tmp_path, "r.h5", dead_pid())
    assert ".node-7.cluster.example.org." in stale
    assert remove_stale_temps(tmp_path / "r.h5") == 1 and temps(tmp_path) == []


_KILLED_WRITER = """
import os, signal, sys
from ptycli.io.atomic import atomic_write
with atomic_write(sys.argv[1]) as tmp:
    with open(tmp, "wb") as f:
        f.write(b"half written")
        f.flush()
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_sigkill_inside_atomic_write_then_the_next_write(tmp_path):
    """A real writer killed inside atomic_write leaves its temporary file; the next write removes it."""
    target = tmp_path / "recon.h5"
    target.write_bytes(b"old and good")
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(target)], env=rh.env())
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    left = temps(tmp_path)
    assert len(left) == 1 and left[0].startswith(".recon.h5.ptycli.%s.%d." % (_host(), proc.pid)), left
    assert target.read_bytes() == b"old and good"
    live = plant(tmp_path, "recon.h5", os.getpid())
    with atomic_write(target) as tmp:
        with open(tmp, "wb") as f:
            f.write(b"new")
    assert target.read_bytes() == b"new"
    assert temps(tmp_path) == [live]
