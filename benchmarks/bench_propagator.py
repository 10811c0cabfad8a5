"""Time the propagators against a bare batched FFT.

For stacks of 400 x 128x128 and 100 x 256x256 complex64 frames, prints the
time of ``fw`` followed by ``bw`` (far field and near field, plus the far
field without the post phase factor as engines may use it) and the time of
a bare ``scipy.fft.fft2`` + ``ifft2`` of the same stack with the same number
of threads, and their ratio. Times are the best of ``--repeat`` runs.

Usage::

    python benchmarks/bench_propagator.py [--repeat 7] [--workers N]
"""

import argparse
import time

import numpy as np
import scipy.fft as sp_fft

from ptycli.core import geometry
from ptycli.core.geometry import Geo


def best_time(fn, repeat):
    fn()  # warm-up (plans, caches)
    best = np.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def bench(nframes, n, repeat, workers):
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((nframes, n, n))
         + 1j * rng.standard_normal((nframes, n, n))).astype(np.complex64)

    def bare():
        f = sp_fft.fft2(w, axes=(-2, -1), norm="ortho", workers=workers)
        return sp_fft.ifft2(f, axes=(-2, -1), norm="ortho", workers=workers, overwrite_x=True)

    t_bare = best_time(bare, repeat)
    far = Geo(shape=n, propagation="farfield").propagator
    near = Geo(shape=n, propagation="nearfield", distance=1e-3, psize=100e-9).propagator
    fac = far.factors(np.complex64)

    rows = [
        ("farfield fw+bw", lambda: far.bw(far.fw(w))),
        ("farfield fw+bw, no post", lambda: geometry.fourier_bw(
            geometry.fourier_fw(w, fac.pre, None), None, fac.post_bw)),
        ("nearfield fw+bw", lambda: near.bw(near.fw(w))),
    ]
    out = far.bw(far.fw(w))
    assert out.dtype == np.complex64
    print("\n%d x %dx%d complex64 (%.1f MB), workers=%d" % (nframes, n, n, w.nbytes / 2**20,
                                                         workers))
    print("  %-26s %9.2f ms  %7.1f us/frame  ratio 1.00" % (
        "bare fft2+ifft2", t_bare * 1e3, t_bare / nframes * 1e6))
    for name, fn in rows:
        t = best_time(fn, repeat)
        print("  %-26s %9.2f ms  %7.1f us/frame  ratio %.2f" % (
            name, t * 1e3, t / nframes * 1e6, t / t_bare))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--workers", type=int, default=None,
                    help="FFT threads (default: available cores)")
    args = ap.parse_args()
    if args.workers is not None:
        geometry.set_workers(args.workers)
    workers = geometry.get_workers()
    for nframes, n in ((400, 128), (100, 256)):
        bench(nframes, n, args.repeat, workers)


if __name__ == "__main__":
    main()
