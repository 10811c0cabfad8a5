"""Cost of the sub-pixel position model: paired A/B timing of the same scan with the model on and off.

A simulated MoonFlowerScan whose reported positions lie off the pixel grid
(``position_noise``, pixels) is built twice, identical but for
``scans.MF.subpixel`` (``off`` and ``on``). Each engine (DM, ML) runs on
both; the timed iterations alternate between the two (one of A, one of B,
...), so that the drift of a shared machine's speed falls on both alike. The
script prints per case and engine the median wall and CPU time per
iteration of each and the median of the paired ratios on / off, with the
number of shift classes the model used.

Usage::

    python benchmarks/bench_subpixel.py                        # 120 x 64^2 and 400 x 128^2, DM and ML
    python benchmarks/bench_subpixel.py --cases 400x128 --engines DM --iterations 20
    python benchmarks/bench_subpixel.py --resolution 8         # quantisation steps per pixel (default: auto)
"""

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from ptycli.core import Ptycho  # noqa: E402
from ptycli.engines import make_engine  # noqa: E402
from ptycli.utils.parameters import Param  # noqa: E402

CASES = [(120, 64), (400, 128)]


def build(frames, shape, subpixel, resolution=None, noise_px=0.3):
    p = Param()
    p["verbose_level"] = "warning"
    p["scans.MF.data.name"] = "MoonFlowerScan"
    p["scans.MF.data.shape"] = shape
    p["scans.MF.data.num_frames"] = frames
    p["scans.MF.data.position_noise"] = noise_px
    p["scans.MF.subpixel"] = subpixel
    if resolution:
        p["scans.MF.subpixel_resolution"] = resolution
    return Ptycho(p, level=2)


def paired(PA, PB, name, iterations, warmup, kernels):
    """Alternate iterations of engine ``name`` on models A and B: per-iteration (wall, cpu) lists and engines."""
    engines = []
    for P in (PA, PB):
        e = make_engine(P, {"name": name, "numiter": warmup + iterations, "probe_update_start": 0,
                            "kernels": kernels}, name.lower())
        e.initialize()
        e.iterate(warmup)
        engines.append(e)
    times = [[], []]
    for _ in range(iterations):
        for k, e in enumerate(engines):
            t0, c0 = time.perf_counter(), time.process_time()
            e.iterate(1)
            times[k].append((time.perf_counter() - t0, time.process_time() - c0))
    classes = sum(len(g.sub.used) for g in engines[1].book.groups if g.sub is not None)
    for e in engines:
        e.finalize()
    return [np.array(t) for t in times], classes


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default=None, help="comma-separated FRAMESxSHAPE (default 120x64,400x128)")
    ap.add_argument("--engines", default="DM,ML", help="comma-separated engine names")
    ap.add_argument("--iterations", type=int, default=12, help="timed iterations per model")
    ap.add_argument("--warmup", type=int, default=4, help="untimed iterations first")
    ap.add_argument("--resolution", type=int, default=None, help="subpixel_resolution (default: auto)")
    ap.add_argument("--noise", type=float, default=0.3, help="position noise (pixels) that puts frames off the grid")
    ap.add_argument("--kernels", default="auto", choices=("auto", "compiled", "numpy"))
    a = ap.parse_args(argv)
    cases = CASES if not a.cases else [tuple(int(v) for v in c.split("x")) for c in a.cases.split(",")]
    print("%-12s %-6s %8s %8s %8s %8s %8s %8s %8s" % ("case", "engine", "off ms", "on ms", "ratio", "off cpu",
                                                       "on cpu", "ratio", "classes"))
    for frames, shape in cases:
        PA = build(frames, shape, "off", a.resolution, a.noise)
        PB = build(frames, shape, "on", a.resolution, a.noise)
        for name in a.engines.split(","):
            (ta, tb), classes = paired(PA, PB, name, a.iterations, a.warmup, a.kernels)
            ratio_w = float(np.median(tb[:, 0] / ta[:, 0]))
            ratio_c = float(np.median(tb[:, 1] / ta[:, 1]))
            print("%-12s %-6s %8.1f %8.1f %8.2f %8.1f %8.1f %8.2f %8d" % (
                "%dx%d^2" % (frames, shape), name, np.median(ta[:, 0]) * 1e3, np.median(tb[:, 0]) * 1e3, ratio_w,
                np.median(ta[:, 1]) * 1e3, np.median(tb[:, 1]) * 1e3, ratio_c, classes), flush=True)


if __name__ == "__main__":
    main()
