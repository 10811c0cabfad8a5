"""How close the data-derived probe guess (``illumination.model: auto``) comes to the true probe (issue 16).

For each zoo case (``validate_zoo.CASES``, simulated by ``zoo_sim``) and the
foreign scans, ptycli's model is built (level 2, no iterations) with the
natural config of ``validate_zoo`` (``--engines`` sets the chain, which
decides whether the guess is made for an engine with local probe updates),
and the guess is compared with the true probe (first mode):

* ``corr``: ``max_s |<g(r), t(r + s)>| / (|g| |t|)`` over integer shifts
  ``s`` (a shift of the probe moves the object the other way: not an error);
  1 is perfect. ``twin``: the same for ``conj(g)`` mirrored (the
  complex-conjugate twin, a guess with the wrong curvature sign).
* ``a_guess`` / ``a_true``: wavefront curvature in rad per sample pixel
  squared, ``(a_y + a_x) / 2`` from the second difference of the phase,
  ``arg sum t(r + e) t(r - e) conj(t(r))^2 / 2`` (independent of where the
  quadratic phase is centred; weighted by the amplitude).
* ``r90_guess`` / ``r90_true``: radius (pixels) holding 90 % of the power,
  about the intensity centroid.
* every candidate's ``corr`` and the pick (``info["method"]``).

Usage::

    python benchmarks/validate_probe_guess.py --cases strong_phase,two_modes --seed 113
    python benchmarks/validate_probe_guess.py --engines LSQML:100
    python benchmarks/validate_probe_guess.py --json guess.json
"""

import argparse
import json
import os
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import validate_zoo as vz  # noqa: E402
import zoo_sim  # noqa: E402


def shift_correlation(guess, truth):
    """``max_s |<g, t(. + s)>| / (|g| |t|)`` over integer (cyclic) shifts ``s``."""
    g = np.asarray(guess, dtype=np.complex128)
    t = np.asarray(truth, dtype=np.complex128)
    xc = np.fft.ifft2(np.conj(np.fft.fft2(g)) * np.fft.fft2(t))
    return float(np.abs(xc).max() / max(np.linalg.norm(g) * np.linalg.norm(t), 1e-300))


def curvature(field):
    """Mean wavefront curvature ``(a_y + a_x) / 2`` (rad per pixel squared) from second differences of the phase."""
    f = np.asarray(field, dtype=np.complex128)
    out = []
    for axis in (0, 1):
        up = np.roll(f, -1, axis=axis)
        down = np.roll(f, 1, axis=axis)
        out.append(np.angle(np.sum(up * down * np.conj(f) ** 2)) / 2)
    return float(np.mean(out)), tuple(out)


def radius90(field):
    """Radius (pixels) about the intensity centroid holding 90 % of the power."""
    p = np.abs(field) ** 2
    yy, xx = np.indices(p.shape)
    total = p.sum()
    cy, cx = (p * yy).sum() / total, (p * xx).sum() / total
    r = np.hypot(yy - cy, xx - cx).ravel()
    order = np.argsort(r)
    cum = np.cumsum(p.ravel()[order]) / total
    return float(r[order][np.searchsorted(cum, 0.9)])


def guess_report(config, true_probe, label="zoo"):
    """Build ptycli's model for ``config``, capture the candidates, compare with ``true_probe``."""
    from ptycli.core import probe_guess
    from ptycli.core.ptycho import Ptycho

    captured = {}
    original = probe_guess.trial_errors

    def spy(candidates, *args, **kwargs):
        if "first" not in captured and "mean_pattern" in candidates:  # the candidates' trial (not the ladder's)
            captured["first"] = {k: np.array(v) for k, v in candidates.items()}
        return original(candidates, *args, **kwargs)

    probe_guess.trial_errors = spy
    try:
        P = Ptycho(config, level=2)
    finally:
        probe_guess.trial_errors = original
    model = P.scans[label]
    S = P.probe.S[model.probe_sid]
    guess = np.asarray(S.data)[0]
    truth = np.asarray(true_probe).reshape((-1,) + np.shape(true_probe)[-2:])[0]
    info = dict(model.probe_guess)
    row = {"method": info.get("method"), "corr": shift_correlation(guess, truth),
           "twin": shift_correlation(np.conj(guess[::-1, ::-1]), truth),
           "a_guess": curvature(guess)[0], "a_true": curvature(truth)[0],
           "a_info": info.get("curvature"), "r90_guess": radius90(guess), "r90_true": radius90(truth),
           "candidates": {k: shift_correlation(v, truth) for k, v in captured.get("first", {}).items()},
           "trial": info.get("trial"), "held_frames": info.get("held_frames"), "ladder": info.get("ladder")}
    return row


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", default="", help="comma-separated substrings of case names")
    ap.add_argument("--seed", type=int, default=None, help="replace every zoo case's seed")
    ap.add_argument("--engines", default="", help="engine chain (as validate_zoo; decides local_engine)")
    ap.add_argument("--no-foreign", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    patterns = [p for p in args.cases.split(",") if p]
    chain = [vz.parse_engine(e) for e in args.engines.split(",") if e] or None
    own = {s.name: s for s in vz.CASES}
    foreign = {} if args.no_foreign or not os.path.isdir(vz.FOREIGN_DIR) else dict(vz.FOREIGN)
    names = vz.select(list(own) + list(foreign), False, patterns)
    rows = []
    print("%-24s %-13s %6s %6s %8s %8s %6s %6s  %s" % ("case", "pick", "corr", "twin", "a_guess", "a_true", "r90_g",
                                                       "r90_t", "candidates (corr)"))
    with tempfile.TemporaryDirectory(prefix="ptycli_guess_") as folder:
        for n in names:
            if n in own:
                spec = own[n] if args.seed is None else vz.with_seed(own[n], args.seed)
                case = zoo_sim.build_case(spec, folder)
                config = vz.natural_config(case["data_section"], spec.propagation, probe_modes=spec.probe_modes,
                                           poisson=spec.poisson_ml, refine_positions=spec.position_refinement,
                                           chain=chain)
                truth = case["truth"]["probes"]
            else:
                fname, loader, propagation = vz.FOREIGN[n]
                t = np.load(os.path.join(vz.FOREIGN_DIR, fname.rsplit(".", 1)[0] + "_truth.npz"))
                truth = t["probes"]
                modes = int(np.asarray(truth).reshape((-1,) + truth.shape[-2:]).shape[0])
                config = vz.natural_config({"name": loader, "dfile": os.path.join(vz.FOREIGN_DIR, fname)},
                                           propagation, probe_modes=modes, chain=chain)
            row = guess_report(config, truth)
            row["case"] = n
            rows.append(row)
            print("%-24s %-13s %6.3f %6.3f %8.4f %8.4f %6.1f %6.1f  %s" % (
                n, row["method"], row["corr"], row["twin"], row["a_guess"], row["a_true"], row["r90_guess"],
                row["r90_true"], " ".join("%s %.2f" % kv for kv in row["candidates"].items())), flush=True)
    corr = np.array([r["corr"] for r in rows])
    if len(rows):
        print("median corr %.3f, min %.3f (%s)" % (np.median(corr), corr.min(), rows[int(np.argmin(corr))]["case"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1, default=float)
    return 0


if __name__ == "__main__":
    sys.exit(main())
