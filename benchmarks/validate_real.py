"""Reconstruct the real measured Siemens-star scan in ../shared/data two ways.

1. Through the generic ``Hdf5Scan`` loader from ``siemens-star-small.npz.bz2``
   (Tike's test data: frames FFT-shifted, positions in object pixels), after
   unpacking it into a plain HDF5 file with the datasets ``/data`` and
   ``/scan``: the config maps the datasets, says ``fftshifted: true`` and
   ``positions_unit: pixel``, and gives a consistent geometry (8.8 keV, 2 m,
   75 um pixels, so one object pixel is 2.935e-8 m).
2. Through ``PtydScan`` from ``siemens.ptyd`` (the same frames written by
   PtyPy), with ``siemens_probe_guess.npy`` as the initial probe.

Each run writes ``out/validate_real/<name>.h5`` and a PNG of the object
phase/amplitude, probe and error curves, and prints the final errors. A
correct reconstruction shows a sharp Siemens star, spokes resolved to the
centre. Skips cleanly when the data are absent.

Usage::

    python benchmarks/validate_real.py [--data ../shared/data] [--dm 150] [--ml 50] [--out out/validate_real]
"""

import argparse
import bz2
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_DATA = os.path.normpath(os.path.join(HERE, "..", "..", "shared", "data"))

GEOMETRY = "      energy: 8.8\n      distance: 2.0\n      psize: 75.0e-6\n"


def unpack_npz(src, folder):
    """Write the .npz.bz2 scan as a plain HDF5 file and its probe as .npy; return both paths."""
    import h5py

    with bz2.open(src, "rb") as fh:
        z = np.load(fh)
        data, scan, probe = z["data"][0], z["scan"][0], z["probe"][0, 0, 0, 0]
    h5 = os.path.join(folder, "siemens_tike.h5")
    with h5py.File(h5, "w") as f:
        f["data"] = data
        f["scan"] = scan.astype(np.float64)
    npy = os.path.join(folder, "siemens_tike_probe.npy")
    np.save(npy, probe)
    return h5, npy


def config(data_block, probe_npy, dm, ml):
    return (
        "verbose_level: warning\n"
        "scans:\n"
        "  star:\n"
        "    data:\n" + data_block + GEOMETRY +
        "    illumination:\n"
        "      model: %s\n"
        "engines:\n"
        "  dm:\n    name: DM\n    numiter: %d\n"
        "  ml:\n    name: ML\n    numiter: %d\n" % (probe_npy, dm, ml)
    )


def run(name, cfg_text, out):
    cfg = os.path.join(out, name + ".yaml")
    with open(cfg, "w") as f:
        f.write(cfg_text)
    result = os.path.join(out, name + ".h5")
    t0 = time.time()
    res = subprocess.run([sys.executable, "-m", "ptycli", "reconstruct", cfg, "-o", result, "--force", "--json"],
                         capture_output=True, text=True)
    if res.returncode != 0:
        print("%s: reconstruct failed (exit %d): %s" % (name, res.returncode, res.stderr.strip().splitlines()[-1:]))
        return None
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    png = os.path.join(out, name + ".png")
    plot = subprocess.run([sys.executable, "-m", "ptycli", "plot", result, "-o", png, "--force"],
                          capture_output=True, text=True)
    if plot.returncode != 0:
        png = "no picture (%s)" % (plot.stderr.strip().splitlines() or ["plot exit %d" % plot.returncode])[-1]
    errs = summary["final_errors"]
    print("%-8s %5.1f s  fourier error %.4g  photon error %.4g  likelihood %s  -> %s, %s" % (
        name, time.time() - t0, errs.get("fourier_error"), errs.get("photon_error"),
        "%.4g" % errs["likelihood"] if errs.get("likelihood") is not None else "-", result, png))
    for eng in summary["engines"]:
        print("         %-3s %-3s %4d iterations %.2f s (%.1f ms/iteration)" % (
            eng["label"], eng["name"], eng["iterations"], eng["time_s"], 1e3 * eng["time_s"] / max(eng["iterations"], 1)))
    return summary


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=DEFAULT_DATA)
    ap.add_argument("--dm", type=int, default=150)
    ap.add_argument("--ml", type=int, default=50)
    ap.add_argument("--out", default="out/validate_real")
    args = ap.parse_args()
    npz = os.path.join(args.data, "siemens-star-small.npz.bz2")
    ptyd = os.path.join(args.data, "siemens.ptyd")
    guess = os.path.join(args.data, "siemens_probe_guess.npy")
    if not (os.path.exists(npz) or os.path.exists(ptyd)):
        print("SKIP: no Siemens-star data in %s" % args.data)
        return 0
    os.makedirs(args.out, exist_ok=True)
    if os.path.exists(npz):
        with tempfile.TemporaryDirectory() as tmp:
            h5, probe = unpack_npz(npz, tmp)
            block = ("      name: Hdf5Scan\n      dfile: %s\n      intensities: /data\n      positions: /scan\n"
                     "      positions_unit: pixel\n      fftshifted: true\n      center: geometric\n" % h5)
            run("hdf5", config(block, probe, args.dm, args.ml), args.out)
    else:
        print("SKIP hdf5: %s absent" % npz)
    if os.path.exists(ptyd) and os.path.exists(guess):
        block = "      name: PtydScan\n      dfile: %s\n" % ptyd
        run("ptyd", config(block, guess, args.dm, args.ml), args.out)
    else:
        print("SKIP ptyd: %s or %s absent" % (ptyd, guess))
    return 0


if __name__ == "__main__":
    sys.exit(main())
