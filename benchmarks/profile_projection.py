"""Where the time of a DM/RAAR iteration goes (compiled path): per pass and per kernel.

Wraps the passes of :class:`~ptycli.engines.projection_passes.CompiledProjectionPasses`
and the kernels and transforms they call with timers and prints, per iteration
(median over the timed iterations), the wall time of each pass, the thread-summed time of
each kernel and transform (``--cpu``: their CPU time in the thread that calls them, which
other processes on a shared machine do not inflate), the overlap rounds, the FFT floor of
bench_engines measured before each iteration, and the medians of the paired
ratios of iteration to floor (wall and CPU time, as bench_engines).

Usage::

    python benchmarks/profile_projection.py --case 400x128 --engine DM --iterations 8
"""

import argparse
import os
import sys
import threading
import time
from collections import defaultdict

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_engines as B  # noqa: E402
from ptycli.engines import make_engine, projection_passes as pp  # noqa: E402
from ptycli.engines import fused  # noqa: E402
from ptycli.core import fft  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", default="400x128")
    ap.add_argument("--engine", default="DM")
    ap.add_argument("--iterations", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--block-frames", type=int, default=0, help="the engines' block_frames (0: their default)")
    ap.add_argument("--cpu", action="store_true", help="kernels and transforms timed in CPU time of their thread")
    a = ap.parse_args(argv)
    n, s = (int(v) for v in a.case.split("x"))
    P = B.build(n, (s, s))
    floor = B.FFTFloor(n, (s, s), verbose=False)

    lock = threading.Lock()
    acc = defaultdict(float)

    kernel_clock = time.thread_time if a.cpu else time.perf_counter

    def timed(name, fn, clock=time.perf_counter):
        def wrap(*args, **kw):
            t0 = clock()
            try:
                return fn(*args, **kw)
            finally:
                dt = clock() - t0
                with lock:
                    acc[name] += dt
        return wrap

    for name in ("projection_input", "modulus_constraint", "projection_update", "probe_sums", "object_numerator",
                 "object_den_rows", "object_divide_rows"):
        setattr(fused, name, timed("k:" + name, getattr(fused, name), kernel_clock))
    fft.fft2_deferred = timed("k:fft", fft.fft2_deferred, kernel_clock)  # the compiled passes' transforms
    fft.ifft2_deferred = timed("k:ifft", fft.ifft2_deferred, kernel_clock)
    C = pp.CompiledProjectionPasses
    for name in ("fourier_pass", "object_numerator", "object_divide", "probe_sums", "model_errors"):
        setattr(C, name, timed("p:" + name, getattr(C, name)))
    e = make_engine(P, {"name": a.engine, "numiter": a.warmup + a.iterations, "probe_update_start": 0,
                        "kernels": "compiled", **({"block_frames": a.block_frames} if a.block_frames else {})},
                    a.engine.lower())
    e.initialize()
    e.iterate(a.warmup)
    per = defaultdict(list)
    rounds, floors, ratios, ratios_cpu = [], [], [], []
    for _ in range(a.iterations):
        fw, fc = floor.once()
        floors.append(fw)
        acc.clear()
        t0, c0 = time.perf_counter(), time.process_time()
        e.iterate(1)
        per["iteration"].append(time.perf_counter() - t0)
        ratios.append(per["iteration"][-1] / fw)  # paired with the floor measured just before
        ratios_cpu.append((time.process_time() - c0) / fc)
        for k, v in acc.items():
            per[k].append(v)
        rounds.append(e.last_overlap_rounds)
    e.finalize()
    fl = float(np.median(floors)) * 1e3
    print(f"{a.engine} {a.case}: floor {fl:.1f} ms, rounds {rounds}")
    for k in sorted(per):
        print(f"  {k:24s} {np.median(per[k]) * 1e3:8.1f} ms")
    print(f"  ratio to floor {np.median(ratios):.2f} (wall), {np.median(ratios_cpu):.2f} (cpu)")


if __name__ == "__main__":
    main()
