"""Variable probe (OPR) against the truth: every frame's probe and the object of a simulated fly scan.

Simulates a fly scan whose probe drifts (flux, beam position, defocus;
``sim_flyscan.py``, an independent simulator), reconstructs it with a variable
probe of ``K`` eigen-probes and with one shared probe (``variable_modes: 0``)
from the same start (one probe also in the alternating order the variable
probe uses), and prints per reconstruction: the correlation of each
frame's reconstructed probe with its true probe (worst frame, median;
:func:`probe_scores`), the object's correlation with the true object
(:func:`ptycli.quality.object_vs_truth`), the final Fourier error and the time.

Usage::

    python benchmarks/validate_opr.py                     # K = 3, ePIE 200, 1e6 photons per frame
    python benchmarks/validate_opr.py --modes 2,3,4 --engine rPIE:200 --probe true-mean
    python benchmarks/validate_opr.py --engine mPIE:60
    python benchmarks/validate_opr.py --engine LSQML:200      # (no alternating-order column: LSQML has no order)
"""

import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import sim_flyscan as sf  # noqa: E402
from validate_multislice import _engines  # noqa: E402  (the NAME:N chain parser)

__all__ = ["config", "frame_probes", "probe_scores", "run_case"]


def config(folder, spec, modes, engines, probe="auto", data_type="single"):
    """A ptycli config reading the simulated scan in ``folder`` (``scan.npz``; ``mean_probe.npy`` for 'true-mean')."""
    n = spec.frame
    model = os.path.join(folder, "mean_probe.npy") if probe == "true-mean" else probe
    return {"verbose_level": "error", "data_type": data_type,
            "scans": {"fly": {"data": {"name": "NpzScan", "dfile": os.path.join(folder, "scan.npz"),
                                       "center": [n // 2, n // 2]},
                              "illumination": {"model": model, "variable_modes": int(modes)}}},
            "engines": engines}


def frame_probes(P, label="fly"):
    """Every local frame's probe (frames, H, W) of a model: ``W @ U`` with a variable probe, else the one probe."""
    model = P.scans[label]
    S = P.probe.S[model.probe_sid]
    W = getattr(model, "probe_weights", None)
    if W is None:
        return np.repeat(np.asarray(S.data[:1]), len(model.data.indices), axis=0)
    return np.einsum("nk,khw->nhw", W, S.data)


def probe_scores(rec, truth):
    """Correlation of each frame's probe with its true probe (shift, phase ramp, phase and scale removed), (T,)."""
    from ptycli.quality import align_and_compare

    return np.array([align_and_compare(rec[i], truth[i])["correlation"] for i in range(len(truth))])


def run_case(spec, folder, engines, modes=3, probe="auto", single_alternate=False):
    """Simulate ``spec`` into ``folder``, reconstruct with ``modes`` eigen-probes and with one probe.

    The engines' ``order`` is theirs (``auto``: alternate with the variable probe, random with one probe);
    ``single_alternate`` adds one probe visited in the alternating order too ('single_alternate').
    Returns a dict ``truth`` and, for 'variable' and 'single': ``probe`` (per-frame correlations),
    ``object`` (correlation), ``fourier_error``, ``time_s``, ``weights`` (variable only).
    """
    from ptycli.core.ptycho import Ptycho
    from ptycli.quality import object_vs_truth

    truth = sf.simulate(spec, os.path.join(folder, "scan.npz"))
    np.save(os.path.join(folder, "mean_probe.npy"), truth["probes"].mean(axis=0))
    out = dict(truth=truth)
    alternate = {label: dict(e, order="alternate") for label, e in engines.items()}
    for key, k, chain in (("variable", modes, engines), ("single", 0, engines), ("single_alternate", 0, alternate)):
        if key == "single_alternate" and not single_alternate:
            continue
        t0 = time.perf_counter()
        P = Ptycho(config(folder, spec, k, chain, probe), level=3)
        obj = object_vs_truth(P, dict(object=truth["object"], object_center=truth["object_center"]))
        out[key] = dict(probe=probe_scores(frame_probes(P), truth["probes"]), object=obj["correlation"],
                        fourier_error=P.runtime.history[-1]["fourier_error"], time_s=time.perf_counter() - t0,
                        weights=None if k == 0 else np.array(P.scans["fly"].probe_weights))
    return out


def has_order(name):
    """Whether engine ``name`` has the ``order`` parameter (the PIE family's frame visiting order)."""
    from ptycli.engines import ENGINES

    return any(e.name == "order" for e in ENGINES.find(name).factory.PARAMS)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--modes", default="3", help="eigen-probes (comma-separated list)")
    ap.add_argument("--engine", default="ePIE:200", help="engine chain NAME:N,NAME:N (ePIE, rPIE, mPIE, LSQML, DM, RAAR)")
    ap.add_argument("--photons", type=float, default=1e6, help="photons per frame (0: noiseless)")
    ap.add_argument("--probe", default="auto", help="initial probe: an illumination model (auto) or 'true-mean'")
    ap.add_argument("--shift", type=float, default=sf.Spec.shift_px, help="beam drift (pixels, +-)")
    ap.add_argument("--defocus", type=float, default=sf.Spec.defocus_dof, help="defocus drift (depths of field, +-)")
    ap.add_argument("--seed", type=int, default=3)
    args = ap.parse_args(argv)
    spec = sf.Spec(photons=args.photons or None, shift_px=args.shift, defocus_dof=args.defocus, seed=args.seed)
    print("fly scan %d x %d frames, drift: flux +-%g, beam +-%g px, defocus +-%g DOF; %s photons; %s; probe %s" % (
        spec.lines, spec.per_line, spec.amp_drift, spec.shift_px, spec.defocus_dof, args.photons or "no noise",
        args.engine, args.probe))
    print("| K | frame probes: worst / median | object | one probe: worst / median, object | one probe, "
          "alternating order | rank-K truth fidelity (worst) | time K / one probe (s) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    engines = _engines(args.engine)
    alternate = all(has_order(e["name"]) for e in engines.values())  # LSQML has no visiting order
    for k in [int(v) for v in args.modes.split(",")]:
        with tempfile.TemporaryDirectory() as folder:
            r = run_case(spec, folder, engines, k, args.probe, single_alternate=alternate)
        v, s = r["variable"], r["single"]
        a = r.get("single_alternate")
        print("| %d | %.3f / %.3f | %.3f | %.3f / %.3f, %.3f | %s | %.4f | %.1f / %.1f |" % (
            k, v["probe"].min(), np.median(v["probe"]), v["object"], s["probe"].min(), np.median(s["probe"]),
            s["object"], "%.3f / %.3f, %.3f" % (a["probe"].min(), np.median(a["probe"]), a["object"]) if a else "-",
            sf.probe_rank_fidelity(r["truth"]["probes"], k).min(), v["time_s"], s["time_s"]))
        sys.stdout.flush()


if __name__ == "__main__":
    main()
