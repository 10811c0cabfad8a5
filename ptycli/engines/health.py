"""Health check of a reconstruction: likely failures a user can see without a ground truth.

After each engine (:meth:`ptycli.engines.base.Engine.finalize`) the probe,
the object and the engine's error history are checked for signs of a failed
reconstruction. Each sign found is a :class:`Finding`: a ``code``, a
one-line ``message`` that names the problem and what to try, and the
``values`` it was judged on. The engine logs each finding as one warning line
(logger ``ptycli.engines``), keeps them in ``engine.health`` and in its last
history record (key ``health``); the result file stores them under
``/health/<engine label>`` (:mod:`ptycli.io.reconstruction`) and
``ptycli inspect`` shows them.

Checks
------
The functions here are pure (arrays in, numbers or findings out) except
:func:`check_engine`, :func:`coverage` and :func:`data_patterns`, which read an
engine's address book. Limits in :data:`THRESHOLDS`.

``probe_collapsed``
    The probe's own detector-plane intensity ``|fw(P)|^2`` (modes summed)
    covers an effective area (participation ratio ``(sum I)^2 / sum I^2``)
    more than ``probe_detector_ratio`` times that of the mean measured
    pattern. The data are the probe's pattern broadened by the object, so a
    probe that fits them gives a ratio of at most about 1 (0.38-0.99 measured);
    a probe that shrank to a few pixels or broke up into speckle spreads its
    light over the whole detector. This works for any probe size (a 3-pixel
    focused spot is fine when the data say so).
``probe_off_centre``
    The probe's centre of mass is more than ``probe_offset_frac`` of half the
    smaller frame side from the frame centre.
``probe_at_edge``
    More than ``probe_edge_frac`` of the probe energy lies in the frame's outer
    rim (``edge_band_frac`` of the side): the probe wraps around the frame.
``probe_outside_support``
    The probe support removed more than ``probe_support_cut`` of the probe
    energy at the engine's last probe update (the probe wants to be larger
    than its support, or drifted into it).
``object_outliers``
    More than ``object_outlier_frac`` of the lit object pixels (coverage
    ``sum |P|^2`` above ``lit_frac`` of its maximum: by default every pixel
    any frame lights at all, since blown-up pixels sit where the coverage is
    tiny and still show in the image) have an amplitude above
    ``object_outlier_factor`` times the median lit amplitude.
``error_rising``
    The engine's model error (``model_fourier_error`` for DM/RAAR, whose
    ``fourier_error`` is that of the projection input and may rise in a good
    run; ``fourier_error`` for ML and ePIE/rPIE) ended more than
    ``1 + error_rise`` times its minimum over the run, or rose by more than
    ``error_tail_rise`` over the last third of the run.

Measurements behind the limits: DM 200 + ML 100 on the 22 cases of
``benchmarks/validate_zoo.py`` and the 4 foreign scans, each from the default
and from the true probe (96 engine runs; the good ones score 0.92-1.0 against
the truth), the MoonFlower quick start and the real Siemens-star scan. Largest
value on good runs -> limit: detector ratio 0.99 -> 3; centre offset 0.46 of
the half width (a focused probe that drifted, object correlation 0.98) -> 0.6;
frame-rim energy 0.04 (near-field diffuser probe) -> 0.1; support cut 0.09
(0.16 with the former circular support on 48 x 80 frames) -> 0.25; object
outliers none at any coverage (largest amplitude 6.7 x the median) -> 0.2 %
above 10 x; DM model error final / minimum up to 2.6 and rise over the last
third up to 27 % -> 3 x or 50 %; ML/ePIE Fourier error final / minimum
<= 1.03. Failures: DM with alpha 3 on MoonFlower (detector ratio 70-133,
support cut 0.30-0.63); DM without the weak-illumination prior
(``object_weak_floor: 0``: 5.6 % of the lit MoonFlower pixels above 10 x, up to
115 x); rPIE with steps of 2 after DM (final error 75-119 x its minimum);
the foreign near-field scan from the default probe (object correlation 0.48:
36 % of the probe energy in the frame rim). Not caught: failures that leave
probe and object plausible (low dose at 1e3-1e4 photons per frame, a
rectangular foreign scan that converged to a too small probe).
"""

import dataclasses

import numpy as np

from .. import parallel

__all__ = ["Finding", "THRESHOLDS", "probe_stats", "check_probe", "object_stats", "check_object",
           "error_series", "error_trend", "check_errors", "coverage", "check_engine", "participation_area",
           "detector_area_ratio", "data_patterns", "probe_detector_ratio"]

#: Limits of the checks; the module docstring gives the measurements behind them.
THRESHOLDS = dict(
    probe_detector_ratio=3.0,    # probe's detector-plane area / measured patterns' area above this: collapsed
    probe_min_area_px=3.0,       # ... or (when the data are not at hand) an effective area below this many pixels
    probe_offset_frac=0.6,       # centre-of-mass offset / half the smaller frame side above this: off centre
    probe_edge_frac=0.10,        # probe energy in the frame rim above this
    edge_band_frac=0.08,         # width of the frame rim: this fraction of the smaller frame side (at least 2 px)
    probe_support_cut=0.25,      # energy removed by the support at the last probe update above this
    lit_frac=0.0,                # object pixels with coverage above this fraction of the maximum are lit
    object_outlier_factor=10.0,  # outlier: amplitude above this times the median lit amplitude
    object_outlier_frac=0.002,   # fraction of lit pixels that may be outliers
    error_rise=2.0,              # final error above (1 + this) * its minimum over the run ...
    error_tail_rise=0.5,         # ... or above (1 + this) * its value at the start of the last third
    error_min_points=3,          # at least this many error values to judge
)


@dataclasses.dataclass
class Finding:
    """One likely problem: ``code``, a one-line ``message`` (problem and what to try), ``values``."""

    code: str
    message: str
    values: dict = dataclasses.field(default_factory=dict)

    def as_dict(self):
        return dict(code=self.code, message=self.message, values=dict(self.values))

    @classmethod
    def from_dict(cls, d):
        return cls(str(d.get("code", "")), str(d.get("message", "")), dict(d.get("values") or {}))


def _round(v, digits=4):
    """A JSON-friendly float with ``digits`` significant digits."""
    v = float(v)
    if not np.isfinite(v) or v == 0:
        return v
    return float("%.*g" % (digits, v))


# -- probe ---------------------------------------------------------------------------------------------

def participation_area(values):
    """Effective number of pixels of a non-negative array: ``(sum a)^2 / sum a^2`` (0 for an empty one)."""
    a = np.asarray(values, dtype=np.float64)
    s2 = float(np.sum(a * a))
    return float(np.sum(a)) ** 2 / s2 if s2 > 0 else 0.0


def probe_stats(probe):
    """Numbers describing a probe (modes, H, W) or (H, W).

    Returns
    -------
    dict
        ``area_px`` (participation area of the intensity ``sum_modes |P|^2``),
        ``area_frac`` (over the frame's pixels), ``offset_px`` (centre of mass
        to the frame centre ``shape // 2``), ``offset_frac`` (``offset_px`` /
        half the smaller frame side), ``centre_of_mass`` ((y, x) from the
        centre), ``edge_fraction`` (energy in the outer rim of the frame,
        ``edge_band_frac`` of the smaller side wide, at least 2 pixels),
        ``power`` (total intensity).
    """
    p = np.asarray(probe)
    if p.ndim == 2:
        p = p[None]
    inten = np.sum(p.real.astype(np.float64) ** 2 + p.imag.astype(np.float64) ** 2, axis=0)
    h, w = inten.shape
    total = float(inten.sum())
    half = min(h, w) / 2.0
    if not total > 0 or not np.isfinite(total):
        return dict(area_frac=0.0, area_px=0.0, offset_px=0.0, offset_frac=0.0, centre_of_mass=(0.0, 0.0),
                    edge_fraction=0.0, power=total)
    area = participation_area(inten)
    y = np.arange(h) - h // 2
    x = np.arange(w) - w // 2
    cy = float(np.dot(y, inten.sum(axis=1)) / total)
    cx = float(np.dot(x, inten.sum(axis=0)) / total)
    offset = float(np.hypot(cy, cx))
    band = max(2, int(round(THRESHOLDS["edge_band_frac"] * min(h, w))))
    rim = np.ones((h, w), dtype=bool)
    rim[band:h - band, band:w - band] = False
    return dict(area_frac=area / (h * w), area_px=area, offset_px=offset, offset_frac=offset / half,
                centre_of_mass=(cy, cx), edge_fraction=float(inten[rim].sum() / total), power=total)


def detector_area_ratio(probe_detector, mean_pattern, valid=None):
    """How much wider the probe's own detector-plane intensity is than the measured patterns.

    Parameters
    ----------
    probe_detector : ndarray (modes, H, W) or (H, W), real or complex
        The probe propagated to the detector (``fw(P)`` per mode; complex
        values are squared, modes summed).
    mean_pattern : ndarray (H, W)
        The mean measured intensity over all frames.
    valid : ndarray bool (H, W), optional
        Pixels measured in most frames (masked pixels, e.g. a beam stop, are
        left out of both areas).

    Returns
    -------
    float
        ``participation_area(|fw(P)|^2) / participation_area(mean pattern)``.
        The measured mean pattern is the probe's own pattern broadened by the
        object's scattering, so a probe that fits the data gives a ratio of 1
        or less; a probe that collapsed to a few pixels spreads its light over
        the whole detector and gives a ratio well above 1.
    """
    f = np.asarray(probe_detector)
    if np.iscomplexobj(f):
        f = f.real.astype(np.float64) ** 2 + f.imag.astype(np.float64) ** 2
    f = np.asarray(f, dtype=np.float64)
    if f.ndim == 3:
        f = f.sum(axis=0)
    m = np.asarray(mean_pattern, dtype=np.float64)
    if valid is not None:
        f = f[valid]
        m = m[valid]
    am = participation_area(np.maximum(m, 0))
    return participation_area(f) / am if am > 0 else 0.0


def check_probe(probe, support_cut=None, detector_ratio=None, name="the probe"):
    """Findings on one probe storage (see the module docstring).

    Parameters
    ----------
    probe : ndarray complex (modes, H, W)
    support_cut : float, optional
        Fraction of the probe energy the support removed at the engine's last
        probe update (None: no support, or the engine keeps the probe inside it).
    detector_ratio : float, optional
        :func:`detector_area_ratio` of the probe against the data (None: unknown).
    """
    s = probe_stats(probe)
    t = THRESHOLDS
    h, w = np.shape(probe)[-2:]
    out = []
    if not s["power"] > 0:
        out.append(Finding("probe_empty", "%s has no intensity; check the data (all zero?) and the probe guess "
                           "(illumination parameters)" % name, dict(power=s["power"])))
        return out
    if detector_ratio is not None:
        collapsed = detector_ratio > t["probe_detector_ratio"]
    else:
        collapsed = s["area_px"] < t["probe_min_area_px"]
    if collapsed:
        if detector_ratio is not None:
            what = "its own diffraction pattern is %.1f x wider than the measured ones" % detector_ratio
        else:
            what = "its effective area is %.1f pixels" % s["area_px"]
        out.append(Finding(
            "probe_collapsed",
            "%s collapsed or broke up (%s; effective area ~%.0f pixels); the reconstruction likely failed: start "
            "from another probe guess (illumination.model, aperture, defocus), lower the DM alpha / relaxation, or "
            "check the geometry (distance, pixel size, energy)" % (name, what, s["area_px"]),
            dict(area_px=_round(s["area_px"]), detector_ratio=_round(detector_ratio) if detector_ratio is not None
                 else None, limit=t["probe_detector_ratio"] if detector_ratio is not None
                 else t["probe_min_area_px"])))
    if s["offset_frac"] > t["probe_offset_frac"]:
        cy, cx = s["centre_of_mass"]
        out.append(Finding(
            "probe_off_centre",
            "%s is off centre: its centre of mass is %.1f pixels (y %+.1f, x %+.1f) from the frame centre, %.0f %% "
            "of the way to the edge; the probe drifted (the object moved the other way): set probe_center_tol, "
            "or start from a centred probe guess" % (name, s["offset_px"], cy, cx, 100 * s["offset_frac"]),
            dict(offset_px=_round(s["offset_px"]), offset_frac=_round(s["offset_frac"]),
                 limit=t["probe_offset_frac"])))
    if s["edge_fraction"] > t["probe_edge_frac"]:
        out.append(Finding(
            "probe_at_edge",
            "%.0f %% of the energy of %s is near the frame edge; the probe is larger than the field of view or "
            "drifted, and wraps around: use a probe_support, larger frames (crop less), or a smaller probe guess"
            % (100 * s["edge_fraction"], name),
            dict(edge_fraction=_round(s["edge_fraction"]), limit=t["probe_edge_frac"])))
    if support_cut is not None and support_cut > t["probe_support_cut"]:
        out.append(Finding(
            "probe_outside_support",
            "%.0f %% of the energy of %s fell outside its support at the last update; the probe wants to be larger "
            "than the support or drifted: enlarge probe_support (or set it to null) or check the probe guess"
            % (100 * support_cut, name),
            dict(support_cut=_round(support_cut), limit=t["probe_support_cut"])))
    return out


# -- object --------------------------------------------------------------------------------------------

def object_stats(obj, coverage):
    """Amplitude statistics of an object (layers, rows, cols) over its illuminated pixels.

    Parameters
    ----------
    obj : ndarray complex (layers, rows, cols) or (rows, cols)
    coverage : ndarray real, same shape
        ``sum over views |probe|^2`` (the illumination dose of each pixel).

    Returns
    -------
    dict
        ``lit_pixels`` (coverage above ``lit_frac`` of its maximum), ``median``
        (median lit amplitude), ``max_ratio`` (largest lit amplitude / median),
        ``outlier_frac`` (fraction of lit pixels above ``object_outlier_factor``
        times the median), ``outliers`` (their number).
    """
    obj = np.asarray(obj)
    cov = np.asarray(coverage)
    if obj.shape != cov.shape:
        raise ValueError("object %s and coverage %s differ in shape" % (obj.shape, cov.shape))
    cmax = float(cov.max()) if cov.size else 0.0
    if not cmax > 0:
        return dict(lit_pixels=0, median=0.0, max_ratio=0.0, outlier_frac=0.0, outliers=0)
    # the lit amplitudes in the object's own precision, one copy (the check runs when every other array of the
    # run is allocated: its temporaries were the peak of a whole ePIE run at 400 x 128^2)
    vals = np.abs(obj)
    vals = vals[cov > THRESHOLDS["lit_frac"] * cmax]
    n = int(vals.size)
    ok = np.isfinite(vals)
    finite = vals if ok.all() else vals[ok]
    med = float(np.median(finite)) if finite.size else 0.0
    if not med > 0:
        med = float(finite.mean()) if finite.size else 0.0
    limit = THRESHOLDS["object_outlier_factor"] * med
    bad = int(np.count_nonzero(~np.isfinite(vals) | (vals > limit))) if med > 0 else 0
    return dict(lit_pixels=n, median=med, max_ratio=float(finite.max() / med) if med > 0 and finite.size else 0.0,
                outlier_frac=bad / max(n, 1), outliers=bad)


def check_object(obj, coverage, name="object"):
    """Findings on one object storage (amplitude outliers over the illuminated area)."""
    s = object_stats(obj, coverage)
    t = THRESHOLDS
    if s["outlier_frac"] > t["object_outlier_frac"]:
        return [Finding(
            "object_outliers",
            "%s has amplitude outliers: %d of %d illuminated pixels (%.2g %%) exceed %g x the median amplitude "
            "%.3g (largest %.3g x); weakly measured pixels blew up: raise object_weak_floor (DM/RAAR), set "
            "clip_object, or check the probe and the dose" % (
                name, s["outliers"], s["lit_pixels"], 100 * s["outlier_frac"], t["object_outlier_factor"],
                s["median"], s["max_ratio"]),
            dict(outlier_frac=_round(s["outlier_frac"]), outliers=s["outliers"], lit_pixels=s["lit_pixels"],
                 median=_round(s["median"]), max_ratio=_round(s["max_ratio"]), limit=t["object_outlier_frac"]))]
    return []


# -- error trend ---------------------------------------------------------------------------------------

def error_series(history, label):
    """``(key, iterations, values)``: the model error an engine recorded (see :func:`check_errors`).

    ``model_fourier_error`` where the engine records it (DM, RAAR), else
    ``fourier_error``; only the records of engine ``label`` with a finite value.
    """
    recs = [r for r in (history or []) if r.get("engine") == label]
    key = "model_fourier_error" if any(r.get("model_fourier_error") is not None for r in recs) else "fourier_error"
    it, vals = [], []
    for r in recs:
        v = r.get(key)
        if v is not None and np.isfinite(v):
            it.append(int(r.get("iteration") or len(it) + 1))
            vals.append(float(v))
    return key, np.asarray(it, dtype=np.int64), np.asarray(vals, dtype=np.float64)


def error_trend(iterations, values):
    """Numbers on the end of an error curve.

    Returns
    -------
    dict
        ``final``, ``minimum``, ``rise`` (``final / minimum - 1``), ``tail_change``
        (``final / value at the start of the last third - 1``), ``points``.
    """
    it = np.asarray(iterations, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    n = int(v.size)
    if n == 0:
        return dict(final=None, minimum=None, rise=0.0, tail_change=0.0, points=0)
    final = float(v[-1])
    vmin = float(v.min())
    start = it[0] + (it[-1] - it[0]) * 2.0 / 3.0
    k = int(np.searchsorted(it, start, side="left"))
    k = min(k, n - 2) if n >= 2 else 0
    ref = float(v[k])
    return dict(final=final, minimum=vmin, rise=final / vmin - 1.0 if vmin > 0 else 0.0,
                tail_change=final / ref - 1.0 if ref > 0 else 0.0, points=n)


def check_errors(iterations, values, key="fourier_error"):
    """Finding ``error_rising``: the error ended far above its minimum, or rose steeply over the last third."""
    t = THRESHOLDS
    s = error_trend(iterations, values)
    if s["points"] < t["error_min_points"]:
        return []
    if s["rise"] > t["error_rise"] or s["tail_change"] > t["error_tail_rise"]:
        return [Finding(
            "error_rising",
            "the %s ended at %.4g, %.1f x its minimum %.4g (%+.0f %% over the last third of the run); the "
            "reconstruction moved away from the data: lower the step or relaxation parameters, stop earlier, or "
            "check the probe guess, positions and geometry" % (key.replace("_", " "), s["final"],
                                                                s["final"] / s["minimum"], s["minimum"],
                                                                100 * s["tail_change"]),
            dict(key=key, final=_round(s["final"]), minimum=_round(s["minimum"]), rise=_round(s["rise"]),
                 tail_change=_round(s["tail_change"]), limit_rise=t["error_rise"],
                 limit_tail=t["error_tail_rise"]))]
    return []


# -- an engine -----------------------------------------------------------------------------------------

def coverage(book):
    """``sum over pods |probe|^2`` on each object storage of an address book (summed over MPI ranks)."""
    cov = {sid: np.zeros(S.data.shape, dtype=np.float64) for sid, S in book.obj_storages.items()}
    for g in book.groups:
        pm = g.model_probe()  # the rows the pods address (shifted probes with the sub-pixel model)
        p2 = pm.real.astype(np.float64) ** 2 + pm.imag.astype(np.float64) ** 2
        g.scatter_object_const(cov[g.obj.ID], p2)
    for a in cov.values():
        parallel.allreduce(a)
    return cov


def data_patterns(book, probe):
    """``(mean pattern, valid pixels)`` of the frames of the groups using probe storage ``probe`` (all ranks)."""
    groups = [g for g in book.groups if g.probe is probe]
    shape = probe.data.shape[-2:]
    acc = np.zeros((2,) + tuple(shape), dtype=np.float64)  # sum of masked counts, sum of mask
    n = np.zeros(1)
    for g in groups:
        if tuple(g.shape) != tuple(shape):
            continue
        for f0, f1, _, _ in g.blocks(32):  # small blocks: no data-sized temporaries
            d = np.maximum(g.diff_frames(f0, f1), 0)
            m = g.mask_frames(f0, f1)
            if m is None:
                acc[0] += d.sum(axis=0, dtype=np.float64)
                acc[1] += f1 - f0
            else:
                acc[0] += np.sum(d * m, axis=0, dtype=np.float64)
                acc[1] += m.sum(axis=0, dtype=np.float64)
        n[0] += g.n_frames
    parallel.allreduce(acc)
    parallel.allreduce(n)
    if not n[0] > 0:
        return None, None
    valid = acc[1] > 0.5 * n[0]
    mean = np.where(valid, acc[0] / np.maximum(acc[1], 1.0), 0.0)
    return mean, valid


def probe_detector_ratio(book, probe):
    """:func:`detector_area_ratio` of probe storage ``probe`` against the data of its frames (None if none)."""
    group = next((g for g in book.groups if g.probe is probe), None)
    mean, valid = data_patterns(book, probe)
    if group is None or mean is None or not valid.any():
        return None
    far = group.propagator.fw(np.array(probe.data, dtype=np.complex128 if probe.data.dtype == np.complex128
                                       else np.complex64))
    return detector_area_ratio(far, mean, valid)


def check_engine(engine):
    """All checks on an engine's current probe, object and history; a list of :class:`Finding`.

    Reads ``engine.book`` (probe and object storages, pods, frames), the
    engine's ``support_cut`` (:meth:`~ptycli.engines.base.Engine.apply_probe_constraints`)
    and the records of ``engine.label`` in
    ``engine.ptycho.runtime.history``. The same on every MPI rank (the
    coverage is summed over ranks; probe and object are replicas).
    """
    book = engine.book
    out = []
    multi = len(book.probe_storages) > 1
    cuts = getattr(engine, "support_cut", None) or {}
    for sid, S in book.probe_storages.items():
        out += check_probe(S.data, cuts.get(sid), probe_detector_ratio(book, S),
                           name="probe %s" % sid if multi else "the probe")
    cov = coverage(book)
    multi = len(book.obj_storages) > 1
    for sid, S in book.obj_storages.items():
        out += check_object(S.data, cov[sid], name="object %s" % sid if multi else "the object")
    key, it, vals = error_series(engine.ptycho.runtime.get("history"), engine.label)
    out += check_errors(it, vals, key)
    return out
