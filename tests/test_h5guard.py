"""The guarded look at input HDF5 files (ptycli.io.h5guard): a hang or crash of libhdf5 becomes a DataError.

The child's work (``h5guard._walk``) is replaced to simulate a file that hangs libhdf5 (sleep) or
crashes it (SIGSEGV); the fork happens after the replacement, so the child runs it.
"""

import os
import signal
import subprocess
import sys
import time

import pytest

import reliability_helpers as rh
from ptycli.errors import DataError
from ptycli.io import h5guard
from ptycli.scans import get_loader

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="the guard needs os.fork")


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    return rh.simulate(tmp_path_factory.mktemp("guard") / "data.h5")


@pytest.fixture(autouse=True)
def fresh_cache():
    h5guard.clear_cache()
    yield
    h5guard.clear_cache()


def _hang(path, tick):
    time.sleep(60)


def _segfault(path, tick):
    os.kill(os.getpid(), signal.SIGSEGV)


def _raise(path, tick):
    raise RuntimeError("boom\nsecond line")


def test_healthy_file_passes_once(pristine, monkeypatch):
    calls = []
    probe = h5guard._probe
    monkeypatch.setattr(h5guard, "_probe", lambda *a: calls.append(a) or probe(*a))
    t0 = time.perf_counter()
    h5guard.check_structure(pristine)
    assert time.perf_counter() - t0 < 5
    h5guard.check_structure(str(pristine))  # cached: no second probe
    assert len(calls) == 1
    assert h5guard._walk(str(pristine), lambda: None)["objects"] >= 15  # it visits the whole file


def test_hang_becomes_data_error(pristine, monkeypatch):
    monkeypatch.setattr(h5guard, "_walk", _hang)
    t0 = time.perf_counter()
    with pytest.raises(DataError) as info:
        h5guard.check_structure(pristine, timeout=0.5)
    assert time.perf_counter() - t0 < 5
    text = str(info.value)
    assert text.startswith("%s: reading its HDF5 structure did not finish in" % pristine), text
    assert "libhdf5 hangs" in text and "the file is damaged" in text and "\n" not in text
    assert info.value.exit_code == 1
    # the verdict is cached: no second wait
    t0 = time.perf_counter()
    with pytest.raises(DataError, match="did not finish"):
        h5guard.check_structure(pristine, validation=True)
    assert time.perf_counter() - t0 < 0.5


def test_crash_becomes_data_error(pristine, monkeypatch):
    monkeypatch.setattr(h5guard, "_walk", _segfault)
    t0 = time.perf_counter()
    with pytest.raises(DataError) as info:
        h5guard.check_structure(pristine, validation=True)
    assert time.perf_counter() - t0 < 5
    assert str(info.value).startswith("%s: reading its HDF5 structure crashed libhdf5 (SIGSEGV)" % pristine)
    assert info.value.exit_code == 2


def test_exception_reported_as_reading_would(pristine, monkeypatch):
    monkeypatch.setattr(h5guard, "_walk", _raise)
    with pytest.raises(DataError) as info:
        h5guard.check_structure(pristine)
    assert str(info.value).startswith("%s: cannot read its HDF5 structure (RuntimeError: boom second line); "
                                      "the file may be damaged" % pristine), str(info.value)


def test_not_for_the_guard(tmp_path, monkeypatch):
    """Missing files, non-HDF5 files and a disabled guard pass: the readers report those."""
    h5guard.check_structure(tmp_path / "missing.h5")
    text = tmp_path / "notes.h5"
    text.write_text("not HDF5")
    h5guard.check_structure(text)
    monkeypatch.setattr(h5guard, "_walk", _segfault)
    monkeypatch.setenv("PTYCLI_H5GUARD", "0")
    h5guard.check_structure(text)


def test_loader_reports_hang(pristine, monkeypatch):
    monkeypatch.setattr(h5guard, "_walk", _hang)
    monkeypatch.setattr(h5guard, "TIMEOUT_S", 0.5)
    loader = get_loader("Hdf5Scan").from_pars({"dfile": str(pristine)})
    with pytest.raises(DataError) as info:
        loader.check()
    assert str(pristine) in str(info.value) and "did not finish" in str(info.value)
    assert info.value.exit_code == 2


def test_child_leaves_parent_output_alone(pristine):
    """The child ends with os._exit: the parent's unflushed output is written once, by the parent."""
    code = ("import sys; from ptycli.io import h5guard; sys.stdout.write('before|'); "
            "h5guard.check_structure(sys.argv[1]); sys.stdout.write('after')")
    res = subprocess.run([sys.executable, "-c", code, str(pristine)], env=rh.env(), capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout == "before|after"
    assert res.stderr == ""


@pytest.mark.slow
def test_damaged_global_heap(pristine, tmp_path):
    """The damage of issue 7: a wrong size of the global heap of the variable-length strings.

    libhdf5 loops forever reading it (H5HG__cache_heap_deserialize); the loader now stops with a
    DataError naming the file. Run in a separate process, so that a regression fails instead of hanging.
    """
    raw = bytearray(pristine.read_bytes())
    at = raw.find(b"GCOL")  # the global heap collection (the file's attribute strings)
    assert at > 0
    raw[at + 9] = 0x20  # its size: 4096 -> 8192 + 4096
    damaged = tmp_path / "heap.h5"
    damaged.write_bytes(bytes(raw))
    code = ("import sys\n"
            "from ptycli.errors import DataError\n"
            "from ptycli.io import h5guard\n"
            "from ptycli.scans import get_loader\n"
            "h5guard.TIMEOUT_S = 1\n"
            "try:\n"
            "    get_loader('Hdf5Scan').from_pars({'dfile': sys.argv[1]}).check()\n"
            "    print('ok')\n"
            "except DataError as exc:\n"
            "    print('DataError', exc)\n")
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", code, str(damaged)], env=rh.env(), capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("DataError %s: " % damaged), res.stdout
    assert time.perf_counter() - t0 < 30
