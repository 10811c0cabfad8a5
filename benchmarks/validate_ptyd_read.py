"""Validate the .ptyd reader on the real PtyPy file in ../shared/data (when present).

Checks that ``read_ptyd_frames`` returns exactly the Tike frames after an
fftshift (the .ptyd holds centred frames), that positions / sample-plane pixel
equal the pixel positions of ``siemens_geometry.npz``, that our writer
reproduces PtyPy's node layout, and times full and block reads.

    python benchmarks/validate_ptyd_read.py [DATA_DIR]
"""

import bz2
import os
import sys
import tempfile
import time

import h5py
import numpy as np

from ptycli.io.ptyd import read_ptyd_frames, read_ptyd_meta, write_ptyd


def _layout(path):
    out = {}

    def visit(name, obj):
        if name.startswith("chunks/") and name.count("/") >= 1 and not name.startswith("chunks/0"):
            return
        kind = obj.attrs.get("type")
        out[name] = (kind, obj.dtype.kind, obj.ndim) if isinstance(obj, h5py.Dataset) else (kind,)

    with h5py.File(path, "r") as f:
        f.visititems(visit)
    return out


def main(data_dir):
    ptyd = os.path.join(data_dir, "siemens.ptyd")
    if not os.path.exists(ptyd):
        print("skip: %s not found" % ptyd)
        return 0
    ok = True
    t = time.perf_counter()
    meta = read_ptyd_meta(ptyd)
    t_meta = time.perf_counter() - t
    t = time.perf_counter()
    frames = read_ptyd_frames(ptyd)
    t_full = time.perf_counter() - t
    t = time.perf_counter()
    read_ptyd_frames(ptyd, 190, 210)
    t_block = time.perf_counter() - t
    print("meta: %d frames %s, %.4g keV, %.4g m, psize %s, center %s, chunks %s" % (
        meta["num_frames"], meta["frame_shape"], meta["energy_kev"], meta["distance_m"],
        meta["psize_m"], meta["center"], meta["chunks"]))
    print("read: meta %.3f s, all frames %.3f s, 20-frame block across chunks %.3f s"
          % (t_meta, t_full, t_block))

    npz = os.path.join(data_dir, "siemens-star-small.npz.bz2")
    if os.path.exists(npz):
        with bz2.open(npz, "rb") as fh, np.load(fh) as z:
            raw = z["data"][0]
        same = np.array_equal(np.fft.fftshift(raw, axes=(-2, -1)), frames["data"])
        print("frames == fftshift(Tike frames): %s" % same)
        ok &= same
    geo = os.path.join(data_dir, "siemens_geometry.npz")
    if os.path.exists(geo):
        with np.load(geo) as g:
            err = np.abs(frames["positions"] / float(g["resolution"]) - g["pos_px"]).max()
        print("max |positions / resolution - pos_px| = %.3g pixel" % err)
        ok &= err < 1e-6

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "copy.ptyd")
        write_ptyd(out, frames["data"], frames["positions"], frames["weights"],
                   energy_kev=meta["energy_kev"], distance_m=meta["distance_m"],
                   psize_m=meta["psize_m"], label=meta["label"], chunk_size=200)
        same_layout = _layout(out) == _layout(ptyd)
        back = read_ptyd_frames(out)
        same_data = all(np.array_equal(back[k], frames[k]) for k in frames)
        print("writer layout == PtyPy layout: %s; re-read identical: %s" % (same_layout, same_data))
        ok &= same_layout and same_data
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    here = os.path.dirname(os.path.abspath(__file__))
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "..", "..", "shared", "data")))
