"""Fuzzing the data file: corrupted bytes end in a clean PtycliError or a correct run, never anything else.

A small data file from ``ptycli simulate`` (20 frames of 16 x 16, ptycli's HDF5 layout with ground
truth) is damaged in a few hundred seeded ways: bytes changed in the HDF5 structures (superblock,
object headers, heaps, B-trees), in the uncompressed numbers (positions, geometry), anywhere (also
the compressed frames), truncation, and overwritten blocks. Each case goes the way of
``ptycli reconstruct`` in process: the loader's checks, the model (``Ptycho``, level 2) and two DM
iterations. The outcome must be a PtycliError (a DataError names the file) or a run with finite
errors: no other exception, no crash, no hang. Some damage (a wrong size of the global heap of the
variable-length strings) sends libhdf5 into an endless loop: the loaders' guard
(:mod:`ptycli.io.h5guard`, here with a short timeout) turns that into a DataError. Each entry of
``RUNS`` (seed, cases) is one test; tests/test_h5guard.py damages the global heap on purpose.

The cases run in one worker process (started once: ``python tests/test_fuzz.py --worker``) so
that a crash inside the HDF5 library or a hang fails this test, with the case number to
reproduce it, instead of taking pytest down. Reproduce one case with
``python tests/test_fuzz.py --worker DATA.h5 OUTDIR SEED FIRST COUNT``.
"""

import collections
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

#: (seed, first case, number of cases) of each run (one test each). Damage of the global heap of the
#: variable-length strings sends libhdf5 into an endless loop (ptycli.io.h5guard catches it): with
#: the data file of ptycli 0.1 that is case 276 of seed 1 and case 147 of seed 2 (and case 307 of
#: seed 1 with the file's earlier layout, variable-length /meta strings)
RUNS = ((20240611, 0, 100), (1, 250, 100), (2, 100, 100))
#: seconds for the cases of one run (they take about 5 s; more on a busy machine)
TIMEOUT = 90
#: seconds before the HDF5 guard counts a file as hung (ptycli.io.h5guard.TIMEOUT_S; a probe takes ms)
GUARD_TIMEOUT = 2
STRATEGIES = ("structure", "numbers", "anywhere", "truncate", "block")
WEIGHTS = (0.4, 0.2, 0.2, 0.1, 0.1)


# -- the worker ------------------------------------------------------------------------------------

def regions(path):
    """Byte ranges of raw dataset storage: [(start, stop, name, compressed)]."""
    import h5py

    out = []
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            if not isinstance(obj, h5py.Dataset):
                return
            if obj.chunks:
                for i in range(obj.id.get_num_chunks()):
                    ci = obj.id.get_chunk_info(i)
                    out.append((ci.byte_offset, ci.byte_offset + ci.size, name, obj.compression is not None))
            else:
                off = obj.id.get_offset()
                if off is not None:
                    out.append((off, off + obj.id.get_storage_size(), name, False))
        f.visititems(visit)
    return out


def damage(raw, rng, pools):
    """A damaged copy of ``raw`` and a description of the damage."""
    b = bytearray(raw)
    strategy = STRATEGIES[rng.choice(len(STRATEGIES), p=WEIGHTS)]
    if strategy == "truncate":
        n = int(rng.integers(0, len(b)))
        return bytes(b[:n]), "truncate at %d" % n
    if strategy == "block":
        start = int(rng.integers(0, len(b)))
        size = int(rng.integers(16, 257))
        fill = int(rng.integers(0, 256)) if rng.random() < 0.5 else None
        for i in range(start, min(len(b), start + size)):
            b[i] = fill if fill is not None else int(rng.integers(0, 256))
        return bytes(b), "block %d+%d" % (start, size)
    pool = pools[strategy]
    where = [int(p) for p in rng.choice(pool, int(rng.integers(1, 5)))]
    for p in where:
        b[p] = int(rng.integers(0, 256))
    return bytes(b), "%s bytes %s" % (strategy, where)


def run_case(path):
    """What ``ptycli reconstruct`` does with the file: checks, model, two DM iterations."""
    from ptycli.core.ptycho import Ptycho
    from ptycli.engines import make_engine
    from ptycli.params.tree import validate
    from ptycli.scans import get_loader

    tree = validate({"verbose_level": 0,
                     "scans": {"MF": {"data": {"name": "Hdf5Scan", "dfile": str(path)}}},
                     "engines": {"dm": {"name": "DM", "numiter": 2}}})
    get_loader("Hdf5Scan")(tree.scans.MF.data, path="scans.MF.data").check()
    P = Ptycho(tree, level=2)
    engine = make_engine(P, tree.engines.dm, label="dm")
    engine.initialize()
    recs = engine.iterate(2)
    engine.finalize()
    assert all(np.isfinite(r["fourier_error"]) for r in recs)


def worker(data, outdir, seed, first, count):
    import logging
    import traceback
    import warnings

    from ptycli.errors import ConfigError, DataError, EngineError, PtycliError
    from ptycli.io import h5guard

    h5guard.TIMEOUT_S = GUARD_TIMEOUT  # a damaged global heap hangs libhdf5: do not wait 20 s each time
    warnings.simplefilter("ignore")
    logging.getLogger("ptycli").setLevel(logging.CRITICAL + 1)
    raw = Path(data).read_bytes()
    isdata = np.zeros(len(raw), bool)
    numbers = np.zeros(len(raw), bool)
    for a, b, _, compressed in regions(data):
        isdata[a:b] = True
        numbers[a:b] = not compressed
    pools = {"structure": np.flatnonzero(~isdata), "numbers": np.flatnonzero(numbers),
             "anywhere": np.arange(len(raw))}
    for case in range(first, first + count):
        rng = np.random.default_rng([seed, case])
        blob, how = damage(raw, rng, pools)
        path = Path(outdir) / ("case_%04d.h5" % case)
        path.write_bytes(blob)
        print("CASE %d %s" % (case, how), flush=True)
        t0 = time.perf_counter()
        base = None
        try:
            run_case(path)
            kind, detail = "ok", ""
        except PtycliError as exc:
            kind, detail = type(exc).__name__, str(exc)
            # the family: DivergenceError is an EngineError, ...
            base = next((c.__name__ for c in (DataError, ConfigError, EngineError) if isinstance(exc, c)), kind)
        except BaseException as exc:  # noqa: B902 - that is the point
            kind = "UNEXPECTED"
            detail = "%s: %s | %s" % (type(exc).__name__, exc, " / ".join(
                traceback.format_exc().strip().splitlines()[-7:]))
        logging.getLogger("ptycli").setLevel(logging.CRITICAL + 1)
        print("RESULT %s" % json.dumps(dict(case=case, kind=kind, base=base or kind, detail=detail, how=how,
                                             path=path.name,
                                             time=time.perf_counter() - t0)), flush=True)
        if kind != "UNEXPECTED":
            path.unlink()
    print("DONE", flush=True)


# -- the test -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    sys.path.insert(0, str(Path(__file__).parent))
    import reliability_helpers as rh

    return rh.simulate(tmp_path_factory.mktemp("fuzz") / "data.h5")


@pytest.mark.slow
@pytest.mark.parametrize("seed,first,count", RUNS, ids=["seed%d" % r[0] for r in RUNS])
def test_fuzz_data_file(data_file, tmp_path, seed, first, count):
    import reliability_helpers as rh

    data = data_file
    cases = tmp_path / "cases"
    cases.mkdir()
    t0 = time.time()
    proc = subprocess.Popen([sys.executable, __file__, "--worker", str(data), str(cases), str(seed), str(first),
                             str(count)], env=rh.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=TIMEOUT)
        why = "died (exit %s)" % proc.returncode
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
        why = "hung (killed after %d s)" % TIMEOUT
    results = [json.loads(line[len("RESULT "):]) for line in stdout.splitlines() if line.startswith("RESULT ")]
    started = [line for line in stdout.splitlines() if line.startswith("CASE ")]
    # no crash, no hang: the worker got through every case
    assert proc.returncode == 0 and stdout.rstrip().endswith("DONE"), (
        "the worker %s in %s (file kept in %s; reproduce with: python %s --worker %s OUT %d N 1); stderr: %s" % (
            why, started[-1] if started else "startup", cases, __file__, data, seed, stderr[-3000:]))
    assert len(results) == count
    bad = [r for r in results if r["kind"] == "UNEXPECTED"]
    assert not bad, "\n".join("case %(case)d (%(how)s, kept as %(path)s): %(detail)s" % r for r in bad[:10])
    for r in results:
        if r["base"] == "DataError":   # a DataError names the damaged file
            assert r["path"] in r["detail"], r
        assert r["time"] < 10, r       # nothing close to a hang
    kinds = collections.Counter(r["base"] for r in results)
    # the damage does something, and many cases still run
    assert kinds["DataError"] >= count // 10 and kinds["ok"] >= count // 10, kinds
    assert set(kinds) <= {"ok", "DataError", "ConfigError", "EngineError"}, kinds
    assert time.time() - t0 < TIMEOUT


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "--worker":
    worker(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]))
