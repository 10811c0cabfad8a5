"""Engine benchmark: time per iteration against the FFT floor, and peak memory.

For each case (simulated MoonFlowerScan, ``frames`` of ``shape``) and each
engine (DM, RAAR, and ML / ePIE / mPIE / LSQML when those engines are installed) this
prints

* ``ms/it``   - wall time per iteration (median over the timed iterations,
  with probe updates from the start: ``probe_update_start = 0``),
* ``fft ms``  - the FFT floor measured in the same run, interleaved with the
  engine's iterations: the fastest in-place forward plus inverse transform
  of a complex64 stack of all exit waves (frames x modes) available here
  (pocketfft and FFTW, one thread, all workers, and blocks shared out to
  threads: all are timed per case and printed; ePIE, rPIE and mPIE,
  sequential over frames, against the fastest one-thread transform; LSQML, whose
  iteration is an epoch of mini-batches, against the all-thread floor) (median),
* ``ratio``   - time per iteration over the FFT floor (the number we
  optimise; DESIGN.md section 3): the median of the ratios of each timed
  iteration to the floor measured just before it (pairs share the drift of
  a shared machine's speed); the same three columns follow in CPU time of
  this process (all threads), which other processes on a shared machine
  disturb less than wall time,
* ``mem``     - peak memory of model plus engine (tracemalloc: container
  buffers plus everything the engine allocates) divided by the size of the
  raw data plus exit waves (float32 intensities + complex64 exit waves).

Usage::

    python benchmarks/bench_engines.py            # 400 x 128^2 and 1000 x 256^2
    python benchmarks/bench_engines.py --quick    # 200 x 64^2 and 400 x 128^2
    python benchmarks/bench_engines.py --cases 400x128 --engines DM --iterations 10
    python benchmarks/bench_engines.py --kernels numpy   # the engines' numpy paths (before numba)
    python benchmarks/bench_engines.py --background      # the scan fits an incoherent background
    python benchmarks/bench_engines.py --engines ePIE --variable-modes 3   # a variable probe (OPR)

``--kernels`` sets the engines' ``kernels`` parameter (default ``auto``:
the compiled numba kernels where installed). Scratch arrays that the
compiled kernels allocate internally (a frame or a row per thread) are not
seen by tracemalloc; they are far below a percent of the totals.
"""

import argparse
import gc
import os
import sys
import time
import tracemalloc

import numpy as np
import scipy.fft as sp_fft
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from ptycli.core import Ptycho  # noqa: E402
from ptycli.core import fft  # noqa: E402
from ptycli.core.fft import get_workers  # noqa: E402
from ptycli.engines import ENGINES, make_engine  # noqa: E402
from ptycli.utils.parameters import Param  # noqa: E402

FULL = [(400, 128), (1000, 256)]
QUICK = [(200, 64), (400, 128)]


def build(frames, shape, modes=1, background=False, variable_modes=0):
    p = Param()
    p["verbose_level"] = "warning"
    p["scans.MF.data.name"] = "MoonFlowerScan"
    p["scans.MF.data.shape"] = shape
    p["scans.MF.data.num_frames"] = frames
    if modes > 1:
        p["scans.MF.coherence.num_probe_modes"] = modes
    if background:
        p["scans.MF.background"] = True
    if variable_modes:
        p["scans.MF.illumination.variable_modes"] = variable_modes
    return Ptycho(p, level=2)


def snapshot(P):
    return {k: {sid: S.data.copy() for sid, S in C.S.items()} for k, C in
            (("probe", P.probe), ("obj", P.obj), ("exit", P.exit))}


def restore(P, snap):
    for k, C in (("probe", P.probe), ("obj", P.obj), ("exit", P.exit)):
        for sid, S in C.S.items():
            S.allocate()  # an engine that keeps no exit waves released them
            S.data[...] = snap[k][sid]
    P.runtime.iterations = 0
    P.runtime.history = []


def transform_candidates(workers):
    """The forward + inverse transforms of a stack available here: name -> f(stack) (in place)."""
    def pocket(w):
        def run(a):
            b = sp_fft.fft2(a, axes=(-2, -1), norm="ortho", workers=w, overwrite_x=True)
            a[...] = sp_fft.ifft2(b, axes=(-2, -1), norm="ortho", workers=w, overwrite_x=True)
        return run

    def library(name, w):
        def run(a):
            fft.set_backend(name)
            try:
                fft.fft2_inplace(a, w)
                fft.ifft2_inplace(a, w)
            finally:
                fft.set_backend(None)
        return run

    pool = ThreadPoolExecutor(workers) if workers > 1 else None

    def blocked(name):
        def run(a):
            blocks = [a[i:i + 32] for i in range(0, len(a), 32)]
            list(pool.map(library(name, 1), blocks))
        return run

    cands = {"pocketfft 1": pocket(1)}
    if workers > 1:
        cands["pocketfft %d" % workers] = pocket(workers)
    for name in fft.available_backends():
        cands["%s 1 (ptycli)" % name] = library(name, 1)
        if workers > 1:
            cands["%s %d (ptycli)" % (name, workers)] = library(name, workers)
            cands["%s blocks on %d threads" % (name, workers)] = blocked(name)
    return cands


class FFTFloor:
    """The fastest batched in-place forward + inverse FFT of a complex64 stack of ``n`` frames here.

    All transforms of :func:`transform_candidates` (pocketfft and FFTW, one
    thread, ``workers`` threads, and blocks of 32 frames shared out to
    threads) are timed at the start (medians of 5, printed); the fastest is
    the floor, and the fastest one-thread transform the floor of the
    sequential engines (ePIE, rPIE), both measured again beside every
    timed iteration.
    """

    def __init__(self, n, shape, verbose=True):
        self.a = fft.empty((n,) + shape, np.complex64)
        self.a[...] = (np.random.default_rng(0).standard_normal((n,) + shape) * (1 + 1j)).astype(np.complex64)
        self.w = get_workers()
        self.cands = transform_candidates(self.w)
        times = {}
        for name, run in self.cands.items():
            run(self.a)  # plans
            ts = []
            for _ in range(5):
                t0 = time.perf_counter()
                run(self.a)
                ts.append(time.perf_counter() - t0)
            times[name] = float(np.median(ts))
        self.best = min(times, key=times.get)
        self.best_one = min((k for k in times if " 1" in k and "blocks" not in k), key=times.get)
        if verbose:
            print("#   FFT floors (forward + inverse, ms): " + ", ".join(
                "%s %.1f%s" % (k, v * 1e3, " *" if k in (self.best, self.best_one) else "")
                for k, v in sorted(times.items(), key=lambda kv: kv[1])))
        self.times = times

    def once(self, one_thread=False):
        """One forward+inverse transform with the fastest transform: (wall s, cpu s)."""
        run = self.cands[self.best_one if one_thread else self.best]
        t0, c0 = time.perf_counter(), time.process_time()
        run(self.a)
        return time.perf_counter() - t0, time.process_time() - c0


def model_bytes(P):
    return sum(S.data.nbytes for C in (P.probe, P.obj, P.exit, P.diff, P.mask) for S in C.S.values())


KERNELS = "auto"
#: extra engine parameters (``--set``)
ENGINE_SET = {}

def engine_settings(pairs):
    """``--set KEY=VALUE`` options as a dict of engine parameters (values read as YAML)."""
    import yaml
    out = {}
    for kv in pairs:
        key, _, value = kv.partition("=")
        out[key.strip()] = yaml.safe_load(value)
    return out


#: Engines sequential over frames: compared with the fastest one-thread transform.
SEQUENTIAL = ("ePIE", "rPIE", "mPIE")


def time_engine(P, name, iterations, warmup, floor):
    """Median wall and CPU time per iteration, each interleaved with an FFT-floor measurement.

    Interleaving keeps the ratio meaningful when the machine's load changes
    during the run; CPU time (all threads of this process) is less sensitive
    to other processes than wall time.
    """
    e = make_engine(P, dict({"name": name, "numiter": warmup + iterations, "probe_update_start": 0,
                             "kernels": KERNELS}, **ENGINE_SET), name.lower())
    e.initialize()
    e.iterate(warmup)
    one_thread = name in SEQUENTIAL
    floor.once(one_thread)
    ew, ec, fw, fc = [], [], [], []
    for _ in range(iterations):
        w, c = floor.once(one_thread)
        fw.append(w)
        fc.append(c)
        t0, c0 = time.perf_counter(), time.process_time()
        e.iterate(1)
        ew.append(time.perf_counter() - t0)
        ec.append(time.process_time() - c0)
    rounds = getattr(e, "last_overlap_rounds", None)
    e.finalize()
    med = lambda v: float(np.median(v)) * 1e3  # noqa: E731
    # ratios of each iteration to the floor measured just before it, then their median: the speed
    # of a shared virtual machine drifts by 10-20 % within seconds, and the pairs share the drift
    ratio = float(np.median(np.array(ew) / np.array(fw)))
    ratio_cpu = float(np.median(np.array(ec) / np.array(fc)))
    return dict(wall=med(ew), cpu=med(ec), fft_wall=med(fw), fft_cpu=med(fc), rounds=rounds, ratio=ratio,
                ratio_cpu=ratio_cpu)


def memory_engine(P, name, iterations=2):
    gc.collect()
    tracemalloc.start()
    base_cur, _ = tracemalloc.get_traced_memory()
    e = make_engine(P, dict({"name": name, "numiter": iterations, "probe_update_start": 0, "kernels": KERNELS},
                            **ENGINE_SET), name.lower())
    e.initialize()
    e.iterate(iterations)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    e.finalize()
    return peak - base_cur


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller cases (200 x 64^2, 400 x 128^2)")
    ap.add_argument("--cases", default=None, help="comma-separated FRAMESxSHAPE, e.g. 400x128,1000x256")
    ap.add_argument("--engines", default=None, help="comma-separated engine names (default DM,RAAR,ML,ePIE,mPIE,LSQML)")
    ap.add_argument("--iterations", type=int, default=12, help="timed iterations per engine")
    ap.add_argument("--warmup", type=int, default=10, help="untimed iterations first (steady state)")
    ap.add_argument("--modes", type=int, default=1, help="probe modes")
    ap.add_argument("--no-memory", action="store_true", help="skip the tracemalloc run")
    ap.add_argument("--background", action="store_true",
                    help="the scan fits an incoherent background (scans.MF.background: true)")
    ap.add_argument("--variable-modes", type=int, default=0,
                    help="eigen-probes of a variable probe (illumination.variable_modes; ePIE, rPIE)")
    ap.add_argument("--kernels", default="auto", choices=("auto", "compiled", "numpy"),
                    help="the engines' kernels parameter (default auto)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="an engine parameter for every engine (repeatable; VALUE read as YAML), "
                         "e.g. --set block_frames=8")
    args = ap.parse_args(argv)
    global KERNELS
    KERNELS = args.kernels
    ENGINE_SET.update(engine_settings(args.set))
    if args.cases:
        cases = [tuple(int(v) for v in c.lower().split("x")) for c in args.cases.split(",")]
    else:
        cases = QUICK if args.quick else FULL
    wanted = args.engines.split(",") if args.engines else ["DM", "RAAR", "ML", "ePIE", "mPIE", "LSQML"]
    names = []
    for n in wanted:
        hit = [k for k in ENGINES if k.lower() == n.lower()]
        if hit:
            names.append(hit[0])
        else:
            print("# engine %s not installed, skipped" % n)
    print("# workers=%d  numpy %s  scipy %s  cpus=%s  kernels=%s" % (
        get_workers(), np.__version__, __import__("scipy").__version__, os.cpu_count(), args.kernels))
    print("%-14s %-6s %8s %8s %6s | %8s %8s %6s | %5s %8s %6s" % (
        "case", "engine", "ms/it", "fft ms", "ratio", "cpu ms", "fft cpu", "ratio", "mem", "us/frame", "rounds"))
    for frames, shape in cases:
        t0 = time.perf_counter()
        P = build(frames, shape, args.modes, args.background, args.variable_modes)
        nframes = P.diff.S["SMF"].data.shape[0]
        build_s = time.perf_counter() - t0
        snap = snapshot(P)
        raw = P.diff.S["SMF"].data.nbytes + P.exit.S["SMF"].data.nbytes
        floor = FFTFloor(P.exit.S["SMF"].data.shape[0], (shape, shape))
        case = "%dx%d^2" % (nframes, shape)
        print("# %s: model built in %.1f s; data %.1f MB, exit %.1f MB, model %.1f MB" % (
            case, build_s, P.diff.S["SMF"].data.nbytes / 2**20, P.exit.S["SMF"].data.nbytes / 2**20,
            model_bytes(P) / 2**20))
        for name in names:
            restore(P, snap)
            r = time_engine(P, name, args.iterations, args.warmup, floor)
            mem = float("nan")
            if not args.no_memory:
                restore(P, snap)
                mem = (memory_engine(P, name) + model_bytes(P)) / raw
            print("%-14s %-6s %8.1f %8.1f %6.2f | %8.1f %8.1f %6.2f | %5.2f %8.1f %6s" % (
                case, name, r["wall"], r["fft_wall"], r["ratio"], r["cpu"], r["fft_cpu"],
                r["ratio_cpu"], mem, r["wall"] * 1e3 / nframes, r["rounds"] or "-"))
            sys.stdout.flush()
        del P, snap, floor
        gc.collect()


if __name__ == "__main__":
    main()
