"""Where an iteration's time goes: per pass and per kernel, against the FFT floor.

Wraps the engine's passes (wall time, calling thread) and the compiled
kernels and transforms (CPU time of the thread that runs them, summed over
threads), runs ``--iterations`` iterations after ``--warmup``, and prints
ms per iteration per part next to the FFT floor of ``bench_engines.py``
(fastest forward + inverse transform of all exit waves, measured in the
same run).

Usage::

    python benchmarks/profile_iteration.py --case 400x128 --engine DM
    python benchmarks/profile_iteration.py --case 400x128 --engine ML --iterations 10
    python benchmarks/profile_iteration.py --case 400x128 --engine ML --set ML_type=gaussian
"""

import argparse
import collections
import functools
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import bench_engines as be  # noqa: E402
from ptycli.core import fft  # noqa: E402
from ptycli.engines import make_engine  # noqa: E402


class Timers:
    def __init__(self):
        self.wall = collections.defaultdict(float)
        self.cpu = collections.defaultdict(float)
        self.calls = collections.defaultdict(int)

    def wrap(self, owner, attr, name=None, kind="wall"):
        """Replace ``owner.attr`` by a timed version (``kind``: 'wall' of the caller, 'cpu' of its thread)."""
        f = getattr(owner, attr)
        name = name or attr

        @functools.wraps(f)
        def timed(*a, **k):
            t0, c0 = time.perf_counter(), time.thread_time()
            try:
                return f(*a, **k)
            finally:
                self.wall[name] += time.perf_counter() - t0
                self.cpu[name] += time.thread_time() - c0
                self.calls[name] += 1

        setattr(owner, attr, timed)
        return f

    def reset(self):
        self.wall.clear()
        self.cpu.clear()
        self.calls.clear()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", default="400x128")
    ap.add_argument("--engine", default="DM")
    ap.add_argument("--iterations", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--kernels", default="auto")
    ap.add_argument("--gap", type=int, default=0, metavar="ROWS",
                    help="mask this many detector rows across the middle (a detector gap: the masked kernels)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="an engine parameter (repeatable; VALUE read as YAML), e.g. --set ML_type=gaussian")
    args = ap.parse_args(argv)
    frames, shape = (int(v) for v in args.case.lower().split("x"))
    P = be.build(frames, shape)
    if args.gap:
        for S in P.mask.S.values():
            S.data[:, shape // 2 - args.gap // 2:shape // 2 - args.gap // 2 + args.gap, :] = 0
    floor = be.FFTFloor(P.exit.S["SMF"].data.shape[0], (shape, shape))
    T = Timers()
    from ptycli.engines import fused, fused_ml, projection_passes as pp, projectional as pj  # noqa: F401
    from ptycli.engines.lsqml import compiled as lsqml_compiled
    # kernels and transforms (CPU of the running thread)
    for mod, names in ((fused, ["projection_input", "modulus_constraint", "projection_update", "object_numerator",
                                "object_den_rows", "object_divide_rows", "probe_sums"]),
                       (fused_ml, ["exit_product", "evaluate", "gradient_sums", "line_waves", "line_sums"]),
                       (lsqml_compiled, ["exit_waves", "amplitude_step", "object_sums", "step_sums",
                                         "scatter_update"]),
                       (fft, ["fft2_deferred", "ifft2_deferred", "fft2_inplace", "ifft2_inplace"])):
        for n in names:
            T.wrap(mod, n, "k:" + n)
    e = make_engine(P, dict({"name": args.engine, "numiter": 10 ** 6, "probe_update_start": 0,
                             "kernels": args.kernels}, **be.engine_settings(args.set)), args.engine.lower())
    e.initialize()
    # engine-level passes (wall of the calling thread)
    if hasattr(e, "passes"):
        for n in ("fourier_pass", "object_numerator", "object_divide", "probe_sums"):
            T.wrap(e.passes, n, "p:" + n)
        for n in ("background_update", "overlap_update", "object_update", "probe_update", "orthogonalize_probe",
                  "pin_scale", "apply_probe_constraints", "apply_object_constraints", "new_error_sums",
                  "model_errors", "_init_object_numerator", "_record"):
            T.wrap(e, n, "e:" + n)
    elif hasattr(e, "draw_batches"):  # LSQML
        for n in ("_batch", "_momentum_step", "apply_probe_constraints", "orthogonalize_probe",
                  "apply_object_constraints", "draw_batches", "_local", "_accumulators"):
            T.wrap(e, n, "e:" + n)
    else:
        for n in ("_evaluate", "_line_coefficients", "_direction", "_direction_scale", "_move_to", "_constrain",
                  "_run", "_record", "_step_length"):
            T.wrap(e, n, "e:" + n)
    e.iterate(args.warmup)
    fl_w, fl_c, it_w, it_c = [], [], [], []
    T.reset()
    rounds = []
    for _ in range(args.iterations):
        w, c = floor.once()
        fl_w.append(w)
        fl_c.append(c)
        t0, c0 = time.perf_counter(), time.process_time()
        e.iterate(1)
        it_w.append(time.perf_counter() - t0)
        it_c.append(time.process_time() - c0)
        rounds.append(getattr(e, "last_overlap_rounds", 0))
    n = args.iterations
    fw, fc = np.median(fl_w) * 1e3, np.median(fl_c) * 1e3
    print("# %s %s: floor %s %.1f ms wall, %.1f ms cpu; iteration %.1f ms wall (x%.2f), %.1f ms cpu (x%.2f); "
          "rounds %s" % (args.engine, args.case, floor.best, fw, fc, np.median(it_w) * 1e3,
                         np.median(np.array(it_w) / np.array(fl_w)), np.median(it_c) * 1e3,
                         np.median(np.array(it_c) / np.array(fl_c)), rounds))
    print("%-28s %9s %9s %7s %8s" % ("part", "wall ms", "cpu ms", "calls", "cpu/fl"))
    for name in sorted(T.wall, key=lambda k: (k[0], -T.wall[k])):
        print("%-28s %9.2f %9.2f %7.1f %8.2f" % (name, T.wall[name] / n * 1e3, T.cpu[name] / n * 1e3,
                                               T.calls[name] / n, T.cpu[name] / n * 1e3 / fc))
    e.finalize()


if __name__ == "__main__":
    main()
