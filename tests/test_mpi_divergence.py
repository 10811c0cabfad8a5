"""A diverging engine under ``mpirun``: every rank stops together and the last good state is written.

The divergence check of the engines (:mod:`ptycli.engines.base`) is collective: when any rank
finds NaN/Inf in the errors, the probe or the object, every rank restores its last good state
and raises :class:`~ptycli.errors.DivergenceError` in the same iteration. ``ptycli reconstruct``
then writes that state with the usual collective result writing (rank 0 writes, marked failed),
prints one ``Error:`` line and every rank exits with 1, without ``MPI_Abort``.

Cases: absurd data (every rank's errors overflow in the first iteration), NaN put into the
object on one rank only (the others' replicas stay finite: they must still stop), and the same
with the result write failing on rank 0 (disk full: every rank reports it, no abort).

As a script (``mpirun -n N python tests/test_mpi_divergence.py RANK AT FAILWRITE -- ARGS...``):
runs ``ptycli ARGS...`` with NaN put into the object on rank RANK after DM's engine iteration
AT (0-based; iteration AT + 1 diverges) and, when FAILWRITE is 1, h5py raising ENOSPC while
rank 0 writes the result ``out.h5``.
"""

import errno
import json
import os
import sys
import textwrap

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import mpi_helpers as mh  # noqa: E402

SKIP = mh.skip_reason()


def needs_mpi(test):
    """Mark ``mpi``; skip (saying why) only when mpi4py or an MPI launcher is missing."""
    return pytest.mark.mpi(pytest.mark.skipif(SKIP is not None, reason=SKIP or "")(test))


SIM_YAML = """\
verbose_level: warning
data_type: single
run: sim
scans:
  MF:
    name: Full
    propagation: farfield
    data: {name: MoonFlowerScan, shape: 32, num_frames: 40, density: 0.2, photons: 1.0e8,
           add_poisson_noise: true, seed: 0}
"""

REC_YAML = """\
verbose_level: warning
data_type: single
run: rec
io:
  checkpoint:
    interval: 2
scans:
  MF:
    name: Full
    propagation: farfield
    data: {{name: Hdf5Scan, dfile: '{data}'}}
engines:
  dm: {{name: DM, numiter: {numiter}}}
"""


@pytest.fixture(scope="module")
def scan(tmp_path_factory):
    """A simulated scan (40 frames of 32 x 32) and a copy with one pixel of 3e38 counts in every frame."""
    import h5py

    folder = tmp_path_factory.mktemp("mpi_div")
    sim = folder / "sim.yaml"
    sim.write_text(SIM_YAML)
    data = folder / "scan.h5"
    res = mh.ptycli(["simulate", sim, "-o", data, "--force"])
    assert res.returncode == 0, res.describe()
    huge = folder / "huge.h5"
    huge.write_bytes(data.read_bytes())
    with h5py.File(huge, "r+") as f:
        x = f["data/intensities"][()]
        x[:, 8, 8] = 3e38
        f["data/intensities"][...] = x
    return dict(data=data, huge=huge)


def _config(folder, data, numiter=6):
    path = folder / "rec.yaml"
    path.write_text(textwrap.dedent(REC_YAML.format(data=data, numiter=numiter)))
    return path


def _error_lines(text):
    return [line for line in text.splitlines() if "Error:" in line]


def _assert_one_clean_error(res, *words):
    assert res.returncode == 1, res.describe()
    errors = _error_lines(res.stderr)
    assert len(errors) == 1, res.describe()
    assert errors[0].startswith("Error: "), res.describe()        # printed once, by rank 0
    assert "MPI_ABORT" not in res.stderr and "Traceback" not in res.stderr, res.describe()
    assert "this is a bug in ptycli" not in errors[0]
    for w in words:
        assert w in errors[0], "%r not in %r" % (w, errors[0])
    return errors[0]


def _assert_finite_result(out, total_iterations):
    from ptycli.io import load_reconstruction

    rec = load_reconstruction(out)
    st = rec.state["attrs"]
    assert st["status"] == "failed" and "diverged" in st["error"]
    assert not st["finished"] and st["total_iterations"] == total_iterations and st["mpi_size"] == 2
    assert len(rec.history) == total_iterations
    arrays = list(rec.objects.values()) + list(rec.probes.values())
    assert arrays and all(np.isfinite(a).all() for a in arrays)
    assert all(np.abs(a).max() > 0 for a in arrays)
    return rec


@needs_mpi
def test_divergence_on_every_rank_writes_the_last_good_state(scan, tmp_path):
    """Absurd data: the (summed) errors overflow in iteration 1 on every rank."""
    config = _config(tmp_path, scan["huge"], numiter=4)
    out = tmp_path / "out.h5"
    res = mh.ptycli(["reconstruct", config, "-o", out], nprocs=2, timeout=90)
    _assert_one_clean_error(res, "engine dm (DM) diverged at iteration 1", "NaN/Inf in errors",
                            "the state of iteration 0 (the last good one) was written to %s" % out,
                            "--resume %s" % out)
    assert res.stdout == ""
    _assert_finite_result(out, 0)
    assert not [p.name for p in tmp_path.iterdir() if ".tmp" in p.name]


@needs_mpi
def test_nan_on_one_rank_stops_every_rank(scan, tmp_path):
    """NaN in rank 1's object only, after iteration 3: rank 0's replica is finite but it stops too."""
    config = _config(tmp_path, scan["data"], numiter=6)
    out = tmp_path / "out.h5"
    res = mh.run([__file__, 1, 3, 0, "--", "reconstruct", config, "-o", out, "--json"], nprocs=2, timeout=90)
    line = _assert_one_clean_error(res, "engine dm (DM) diverged at iteration 4", "NaN/Inf in probe or object",
                                   "the state of iteration 3 (the last good one) was written to %s" % out)
    assert "[rank" not in line
    doc = json.loads(res.stdout)              # one JSON document, from rank 0
    assert doc["status"] == "failed" and doc["output"] == str(out) and doc["iterations"] == 3
    rec = _assert_finite_result(out, 3)
    assert [h["iteration"] for h in rec.history] == [1, 2, 3]
    # the last good state is the one of iteration 3: resuming from it runs the rest of the chain
    res = mh.ptycli(["reconstruct", config, "-o", tmp_path / "continued.h5", "--resume", out, "--json"],
                    nprocs=2, timeout=90)
    assert res.returncode == 0, res.describe()
    assert res.json()["iterations"] == 6


@needs_mpi
def test_divergence_and_a_failed_write_on_rank_0(scan, tmp_path):
    """Writing the last good state fails on rank 0 (disk full): every rank says so and exits 1."""
    config = _config(tmp_path, scan["data"], numiter=6)
    out = tmp_path / "out.h5"
    res = mh.run([__file__, 0, 3, 1, "--", "reconstruct", config, "-o", out], nprocs=2, timeout=90)
    _assert_one_clean_error(res, "diverged at iteration 4", "writing its last good state failed too",
                            "no space left on the device")
    assert not out.exists()
    assert not [p.name for p in tmp_path.iterdir() if ".tmp" in p.name]


# -- one process: the error type and the flag reduction --------------------------------------------

def test_divergence_error_is_an_engine_error_of_all_ranks():
    from ptycli.errors import DivergenceError, EngineError, PtycliError, RuntimeFailure

    exc = DivergenceError("engine dm diverged", hint="lower alpha")
    assert isinstance(exc, EngineError) and exc.all_ranks and exc.exit_code == 1
    assert str(exc) == "engine dm diverged; lower alpha"
    assert not EngineError("x").all_ranks and not RuntimeFailure("x").all_ranks
    assert RuntimeFailure("x", all_ranks=True).all_ranks
    assert not DivergenceError("x", all_ranks=False).all_ranks
    assert not PtycliError.all_ranks


def test_reduce_flags_in_one_process():
    from ptycli import parallel

    before = parallel.comm_stats()
    assert parallel.reduce_flags(0) == 0 and parallel.reduce_flags(3) == 3
    after = parallel.comm_stats()
    assert after["flag_calls"] == before["flag_calls"] + 2
    assert after["buffer_calls"] == before["buffer_calls"] and after["object_calls"] == before["object_calls"]
    with pytest.raises(ValueError):
        parallel.reduce_flags(-1)


def test_engine_raises_divergence_error(tmp_path, monkeypatch):
    """The base class's check raises DivergenceError (restoring the last good state) in one process."""
    import reliability_helpers as rh
    from ptycli.core.ptycho import Ptycho
    from ptycli.engines import make_engine
    from ptycli.engines.projectional import DM
    from ptycli.errors import DivergenceError
    from ptycli.params.yamlio import load_config_text

    data = rh.simulate(tmp_path / "data.h5")
    real = DM.engine_iterate

    def engine_iterate(self, n):
        out = real(self, n)
        if self.iteration == 1:
            for S in self.ptycho.probe.S.values():
                S.data[..., 2, 2] = np.inf
        return out

    monkeypatch.setattr(DM, "engine_iterate", engine_iterate)
    P = Ptycho(load_config_text(rh.config(data, numiter=4)), level=2)
    engine = make_engine(P, P.p.engines.dm, label="dm")
    engine.initialize()
    engine.iterate(1)
    good = {sid: S.data.copy() for sid, S in P.probe.S.items()}
    with pytest.raises(DivergenceError, match="diverged at iteration 2: NaN/Inf in probe or object"):
        engine.iterate(1)
    for sid, S in P.probe.S.items():
        np.testing.assert_array_equal(S.data, good[sid])


# -- the script run under mpirun ----------------------------------------------------------------------

def _main(argv):
    rank, at, fail_write = int(argv[0]), int(argv[1]), argv[2] == "1"
    args = argv[3:]
    if args and args[0] == "--":
        args = args[1:]
    from ptycli import parallel
    from ptycli.engines.projectional import DM

    real = DM.engine_iterate

    def engine_iterate(self, n):
        out = real(self, n)
        if self.iteration == at and parallel.rank == rank:
            for S in self.ptycho.obj.S.values():
                S.data[..., 3, 3] = np.nan
        return out

    DM.engine_iterate = engine_iterate
    if fail_write and parallel.rank == 0:
        from h5py._hl.group import Group

        create = Group.create_dataset

        def create_dataset(self, name, *a, **k):
            if os.path.basename(self.file.filename).startswith(".out.h5."):
                raise OSError(errno.ENOSPC, "No space left on device")
            return create(self, name, *a, **k)

        Group.create_dataset = create_dataset
    from ptycli.cli import main

    main(args, prog_name="ptycli")


if __name__ == "__main__":
    sys.path.insert(0, str(mh.ROOT))
    _main(sys.argv[1:])
