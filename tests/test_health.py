"""The health check after each engine (ptycli.engines.health) and the model's own Fourier error of DM/RAAR.

Constructed failures must raise their finding, good reconstructions none. The
limits were set on DM 200 + ML 100 runs of the validation zoo and the foreign
scans (see the module docstring of ptycli.engines.health for the figures).
"""

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import yaml

from ptycli.engines import health
from ptycli.engines.health import THRESHOLDS

from cli_helpers import invoke

ROOT = Path(__file__).resolve().parents[1]
MOONFLOWER = ROOT / "sample_data" / "moonflower.h5"
FOREIGN = ROOT.parent / "shared" / "data" / "foreign"


def gaussian_probe(shape=(64, 64), sigma=6.0, centre=None):
    h, w = shape
    cy, cx = centre if centre is not None else (h // 2, w // 2)
    y, x = np.mgrid[:h, :w]
    amp = np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (4.0 * sigma ** 2))  # intensity sigma = sigma
    return (amp * np.exp(0.3j * x)).astype(np.complex64)[None]


def codes(findings):
    return sorted(f.code if isinstance(f, health.Finding) else f["code"] for f in findings)


# -- probe -------------------------------------------------------------------------------------------

def test_probe_stats_of_a_gaussian():
    s = health.probe_stats(gaussian_probe(sigma=5.0, centre=(32, 40)))
    assert s["area_px"] == pytest.approx(4 * np.pi * 25.0, rel=0.01)  # participation area of a Gaussian
    assert s["centre_of_mass"][0] == pytest.approx(0.0, abs=1e-3)
    assert s["centre_of_mass"][1] == pytest.approx(8.0, abs=1e-3)
    assert s["offset_frac"] == pytest.approx(8.0 / 32.0, abs=1e-4)
    assert s["edge_fraction"] < 1e-3


def test_centred_probe_passes():
    assert health.check_probe(gaussian_probe(), support_cut=0.02, detector_ratio=0.9) == []


def test_off_centre_probe():
    p = gaussian_probe(sigma=3.0, centre=(32 + 18, 32 + 12))  # 21.6 px from the centre, limit 0.6 * 32
    found = health.check_probe(p, detector_ratio=0.9)
    assert codes(found) == ["probe_off_centre"]
    assert found[0].values["offset_px"] == pytest.approx(np.hypot(18, 12), abs=0.05)
    assert "off centre" in found[0].message and "probe_center_tol" in found[0].message
    # a drift like the largest seen in good runs (0.46 of the half width) passes
    assert health.check_probe(gaussian_probe(sigma=3.0, centre=(32 + 12, 32 + 9)), detector_ratio=0.9) == []


def test_probe_at_the_frame_edge():
    flat = np.ones((1, 64, 64), np.complex64)  # fills the frame: 29 % of its energy in the 5-px rim
    found = health.check_probe(flat, detector_ratio=0.5)
    assert codes(found) == ["probe_at_edge"]
    assert found[0].values["edge_fraction"] == pytest.approx(1 - (54 / 64) ** 2, rel=1e-3)


def test_probe_outside_its_support():
    found = health.check_probe(gaussian_probe(), support_cut=0.4, detector_ratio=0.9)
    assert codes(found) == ["probe_outside_support"]
    assert found[0].values["support_cut"] == pytest.approx(0.4)
    assert health.check_probe(gaussian_probe(), support_cut=0.16, detector_ratio=0.9) == []  # good-run maximum


def far_field_data(probe, n=40, seed=0):
    """Far-field intensities of ``probe`` times random phase-object windows (numpy only)."""
    rng = np.random.default_rng(seed)
    h, w = probe.shape[-2:]
    big = np.exp(1j * 1.5 * rng.random((h + 40, w + 40)))
    frames = []
    for _ in range(n):
        y, x = rng.integers(0, 40, 2)
        ex = probe[0] * big[y:y + h, x:x + w]
        frames.append(np.abs(np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(ex), norm="ortho"))) ** 2)
    return np.array(frames)


def detector(probe):
    return np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(probe, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))


@pytest.mark.parametrize("sigma", [1.5, 6.0])
def test_collapse_is_judged_against_the_data(sigma):
    true = gaussian_probe(sigma=sigma)
    mean = far_field_data(true).mean(axis=0)
    good = health.detector_area_ratio(detector(true), mean)
    assert good < 1.0  # the data are the probe's pattern broadened by the object
    assert health.check_probe(true, detector_ratio=good) == []  # a small focused probe is fine
    collapsed = gaussian_probe(sigma=sigma / 3.0)
    bad = health.detector_area_ratio(detector(collapsed), mean)
    assert bad > THRESHOLDS["probe_detector_ratio"]
    found = health.check_probe(collapsed, detector_ratio=bad)
    assert codes(found) == ["probe_collapsed"] and found[0].values["detector_ratio"] == pytest.approx(bad, rel=1e-3)


def test_masked_pixels_are_left_out_of_the_ratio():
    true = gaussian_probe(sigma=4.0)
    data = far_field_data(true)
    valid = np.ones(data.shape[1:], bool)
    valid[28:37, 28:37] = False  # a beam stop over the bright centre
    mean = np.where(valid, data.mean(axis=0), 0)
    assert health.detector_area_ratio(detector(true), mean, valid) < 1.0


def test_empty_probe():
    assert codes(health.check_probe(np.zeros((1, 16, 16), np.complex64))) == ["probe_empty"]


# -- object ------------------------------------------------------------------------------------------

def lit_object(seed=0):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:160, :160]
    cov = np.exp(-((y - 80.0) ** 2 + (x - 80.0) ** 2) / (2 * 40.0 ** 2))[None]
    obj = ((1 + 0.05 * rng.standard_normal(cov.shape)) * np.exp(1j * rng.random(cov.shape))).astype(np.complex64)
    return obj, cov


def test_object_without_outliers_passes():
    obj, cov = lit_object()
    assert health.check_object(obj, cov) == []
    s = health.object_stats(obj, cov)
    assert s["median"] == pytest.approx(1.0, abs=0.01) and s["outliers"] == 0


def test_object_amplitude_outliers():
    obj, cov = lit_object()
    lit = np.flatnonzero(cov.ravel() > THRESHOLDS["lit_frac"] * cov.max())
    rng = np.random.default_rng(1)
    bad = rng.choice(lit, size=len(lit) // 100, replace=False)  # 1 % of the lit pixels at 20 x the median
    blown = obj.copy().ravel()
    blown[bad] *= 20
    found = health.check_object(blown.reshape(obj.shape), cov)
    assert codes(found) == ["object_outliers"]
    assert found[0].values["outliers"] == len(bad)
    assert found[0].values["outlier_frac"] == pytest.approx(len(bad) / len(lit), rel=1e-3)
    # 0.1 % is below the limit; unlit pixels do not count at all
    few = obj.copy().ravel()
    few[bad[: len(lit) // 1000]] *= 20
    assert health.check_object(few.reshape(obj.shape), cov) == []
    outside = cov.copy()
    outside[..., :20] = 0  # no frame reaches these columns
    unlit = obj.copy()
    unlit[..., :20] *= 1000
    assert health.check_object(unlit, outside) == []


def test_non_finite_object_pixels_count_as_outliers():
    obj, cov = lit_object()
    obj[0, 70:80, 70:80] = np.nan
    assert codes(health.check_object(obj, cov)) == ["object_outliers"]


# -- error trend -------------------------------------------------------------------------------------

def test_falling_and_wandering_errors_pass():
    it = np.arange(10, 201, 10)
    assert health.check_errors(it, 100 * np.exp(-it / 40.0) + 5) == []
    # DM on noisy data: the model error wanders up to ~2.6 x its early minimum (largest in good runs)
    wander = np.concatenate([np.linspace(10, 4, 5), np.linspace(4, 10.5, 15)])
    assert health.check_errors(it, wander) == []
    assert health.check_errors([10, 20], [1.0, 50.0]) == []  # too few points to judge


def test_error_far_above_its_minimum():
    it = np.arange(1, 31)
    v = np.concatenate([np.linspace(30, 25, 5), np.full(25, 2500.0)])  # blew up, then stayed there
    found = health.check_errors(it, v, "fourier_error")
    assert codes(found) == ["error_rising"]
    assert found[0].values["rise"] == pytest.approx(99.0)
    assert "100.0 x its minimum" in found[0].message


def test_error_rising_over_the_last_third():
    it = np.arange(10, 121, 10)
    v = np.array([9, 8, 7, 6, 6, 6, 6, 6, 6, 7.5, 8.5, 9.5])  # 6 -> 9.5 over the last third (from iteration 90)
    found = health.check_errors(it, v, "model_fourier_error")
    assert codes(found) == ["error_rising"]
    assert found[0].values["tail_change"] == pytest.approx(9.5 / 6.0 - 1, rel=1e-3)


def test_error_series_prefers_the_model_error():
    hist = [dict(engine="dm", iteration=i, fourier_error=10.0 * i,
                 model_fourier_error=(100.0 / i if i % 5 == 0 else None)) for i in range(1, 21)]
    hist += [dict(engine="ml", iteration=20 + i, fourier_error=1.0 / i) for i in range(1, 6)]
    key, it, v = health.error_series(hist, "dm")
    assert key == "model_fourier_error" and list(it) == [5, 10, 15, 20] and v[-1] == pytest.approx(5.0)
    key, it, v = health.error_series(hist, "ml")
    assert key == "fourier_error" and len(v) == 5


# -- engines -----------------------------------------------------------------------------------------

def moonflower(engines):
    from ptycli.core.ptycho import Ptycho

    cfg = dict(verbose_level="error", data_type="single",
               scans=dict(MF=dict(name="Full", propagation="farfield",
                                  data=dict(name="Hdf5Scan", dfile=str(MOONFLOWER)))),
               engines=engines)
    return Ptycho(cfg, level=2)


def pod_model_error(P):
    """The Fourier error of probe x object over all pods, computed independently of the engines."""
    num = den = 0.0
    for pod in P.pods.values():
        f = pod.fw(pod.probe * pod.object)
        m = pod.mask
        num += float(np.sum(m * (np.abs(f) - np.sqrt(np.maximum(pod.diff, 0))) ** 2))
        den += float(np.sum(m))
    return num / den


@pytest.mark.parametrize("kernels", ["numpy", "compiled"])
@pytest.mark.parametrize("name", ["DM", "RAAR"])
@pytest.mark.slow
def test_model_error_is_that_of_probe_times_object(name, kernels):
    from ptycli.engines import fused, make_engine

    if kernels == "compiled" and not fused.available():
        pytest.skip("numba not installed")
    P = moonflower({})
    e = make_engine(P, dict(name=name, numiter=12, kernels=kernels), "e")
    e.initialize()
    e.iterate(12)
    rec = P.runtime.history[-1]
    assert rec["model_fourier_error"] == pytest.approx(pod_model_error(P), rel=1e-4)
    # the projection input's error is another number (larger here, early in the run)
    assert abs(rec["fourier_error"] / rec["model_fourier_error"] - 1) > 0.05
    e.finalize()


@pytest.mark.slow
def test_model_error_schedule():
    from ptycli.engines import make_engine

    P = moonflower({})
    e = make_engine(P, dict(name="DM", numiter=45), "dm")
    assert [i for i in range(1, 46) if e.model_error_due(i)] == [10, 20, 30, 40, 45]
    e = make_engine(P, dict(name="DM", numiter=200, record_interval=3), "dm")
    due = [i for i in range(1, 201) if e.model_error_due(i)]
    assert due[-1] == 200 and all(i % 3 == 0 for i in due[:-1]) and len(due) == 8
    ml = make_engine(P, dict(name="ML", numiter=5), "ml")
    assert not ml.MODEL_ERRORS


@pytest.mark.slow
def test_good_run_has_no_findings():
    P = moonflower(dict(dm=dict(name="DM", numiter=60), ml=dict(name="ML", numiter=30)))
    P.run()
    for e in P.engines:
        assert e.health == [], (e.label, e.health)
    dm_last = [r for r in P.runtime.history if r["engine"] == "dm"][-1]
    assert dm_last["health"] == dict(iteration=60, findings=[])
    assert P.runtime.history[-1]["health"]["iteration"] == 90
    assert dm_last["model_fourier_error"] > 0


def test_constructed_failures_on_a_good_state(caplog):
    from ptycli.engines import make_engine

    P = moonflower({})
    e = make_engine(P, dict(name="DM", numiter=40), "dm")
    e.initialize()
    e.iterate(40)
    assert e.check_health() == []
    S = next(iter(P.probe.S.values()))
    O = next(iter(P.obj.S.values()))
    good_probe, good_obj = S.data.copy(), O.data.copy()
    # drifted: the good (large) probe moved by 22 pixels wraps around the frame edge
    S.data[...] = np.roll(good_probe, (18, 13), axis=(-2, -1))
    with caplog.at_level(logging.WARNING, logger="ptycli"):
        found = e.check_health()
    assert codes(found) == ["probe_at_edge"] and found[0]["values"]["edge_fraction"] > 0.3
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(lines) == 1 and lines[0].startswith("dm (DM): ") and lines[0].endswith("[probe_at_edge]")
    # off centre: a small probe (the good one shrunk to a 4-pixel sigma) 22 pixels from the centre
    small = np.zeros_like(good_probe)
    small[0] = gaussian_probe(good_probe.shape[-2:], sigma=4.0, centre=(32 + 18, 32 + 13))[0] * np.abs(good_probe).max()
    S.data[...] = small
    found = e.check_health()
    assert "probe_off_centre" in codes(found)
    assert next(f for f in found if f["code"] == "probe_off_centre")["values"]["offset_px"] == pytest.approx(
        np.hypot(18, 13), abs=0.1)
    # collapsed to a blob of a few pixels
    blob = np.zeros_like(good_probe)
    blob[0, 30:33, 30:33] = np.abs(good_probe).max()
    S.data[...] = blob
    found = e.check_health()
    assert codes(found) == ["probe_collapsed"] and found[0]["values"]["detector_ratio"] > 10
    # object amplitude outliers on 1 % of the lit pixels
    S.data[...] = good_probe
    cov = health.coverage(e.book)[O.ID]
    lit = np.flatnonzero(cov.ravel() > THRESHOLDS["lit_frac"] * cov.max())
    idx = np.random.default_rng(0).choice(lit, len(lit) // 100, replace=False)
    O.data.reshape(-1)[idx] *= 30
    found = e.check_health()
    assert codes(found) == ["object_outliers"] and found[0]["values"]["outlier_frac"] > 0.009
    O.data[...] = good_obj
    assert e.check_health() == []
    e.finalize()


@pytest.mark.slow
def test_blown_up_weakly_lit_pixels_are_flagged():
    """DM without the weak-illumination prior: noise divided by a tiny coverage blows up the frame edges."""
    from ptycli.engines import ENGINES

    if "object_weak_floor" not in [e.name for e in ENGINES["DM"].PARAMS]:
        pytest.skip("DM has no object_weak_floor")
    P = moonflower(dict(dm=dict(name="DM", numiter=60, object_weak_floor=0.0)))
    P.run()
    found = P.engines[0].health
    assert codes(found) == ["object_outliers"]
    assert found[0]["values"]["outlier_frac"] > 0.01 and found[0]["values"]["max_ratio"] > 50
    P = moonflower(dict(dm=dict(name="DM", numiter=60)))  # with the prior (the default): nothing
    P.run()
    assert P.engines[0].health == []


@pytest.mark.slow
def test_a_failing_check_does_not_fail_the_run(monkeypatch, caplog):
    def broken(engine):
        raise RuntimeError("broken check")

    monkeypatch.setattr(health, "check_engine", broken)
    P = moonflower(dict(dm=dict(name="DM", numiter=3)))
    with caplog.at_level(logging.WARNING, logger="ptycli"):
        P.run()
    assert P.engines[0].health is None and "health" not in P.runtime.history[-1]
    assert any("health check failed (RuntimeError: broken check)" in r.getMessage() for r in caplog.records)


@pytest.mark.slow
def test_a_failing_dm_run_is_flagged():
    P = moonflower(dict(dm=dict(name="DM", numiter=30, alpha=3.0)))  # DM with a far too large alpha
    P.run()
    found = P.engines[0].health
    assert "probe_collapsed" in codes(found)
    assert next(f for f in found if f["code"] == "probe_collapsed")["values"]["detector_ratio"] > 10


@pytest.mark.slow
def test_an_overshooting_engine_is_flagged_error_rising():
    P = moonflower(dict(dm=dict(name="DM", numiter=30),
                        rp=dict(name="rPIE", numiter=10, object_step=2.0, probe_step=2.0)))
    P.run()
    assert P.engines[0].health == []
    found = P.engines[1].health
    assert codes(found) == ["error_rising"] and found[0]["values"]["rise"] > 10
    assert found[0]["values"]["key"] == "fourier_error"


@pytest.mark.slow
@pytest.mark.skipif(not (FOREIGN / "zoneplate_visible.ptyd").exists(), reason="shared foreign scans absent")
def test_dm_projection_error_rises_while_the_model_error_does_not():
    """The issue's point: in a good DM run the projection input's error rises and would read as divergence."""
    from ptycli.core.ptycho import Ptycho

    scan = dict(data=dict(name="PtydScan", dfile=str(FOREIGN / "zoneplate_visible.ptyd")), propagation="farfield")
    # probe_support 0.8 and the power bound 0.05 (DM's defaults before auto): with auto's 1.0 DM converges
    # further (model error 70 -> 7.4 against 98 -> 35) and the projection error no longer rises in 60 iterations
    dm = dict(name="DM", numiter=60, probe_support=0.8, fourier_relax_factor=0.05)
    P = Ptycho(dict(verbose_level="error", scans=dict(s=scan), engines=dict(dm=dm)), level=2)
    P.run()
    hist = P.runtime.history
    it = [r["iteration"] for r in hist]
    assert codes(health.check_errors(it, [r["fourier_error"] for r in hist])) == ["error_rising"]
    key, mit, mv = health.error_series(hist, "dm")
    assert key == "model_fourier_error" and len(mv) == 6 and mv[-1] < 1.2 * mv.min()
    assert P.engines[0].health == []


# -- result file and inspect -------------------------------------------------------------------------

def test_health_round_trips_through_the_result_file(tmp_path):
    from ptycli.io.reconstruction import load_reconstruction, write_reconstruction

    finding = dict(code="probe_off_centre", message="the probe is off centre: 21.6 pixels (µm ok)",
                   values=dict(offset_px=21.6, offset_frac=0.675, limit=0.6))
    hist = [dict(engine="dm", name="DM", iteration=i, fourier_error=1.0 / i,
                 model_fourier_error=2.0 / i if i in (5, 10) else None) for i in range(1, 11)]
    hist[-1]["health"] = dict(iteration=10, findings=[finding])
    hist += [dict(engine="ml", name="ML", iteration=11, fourier_error=0.05, health=dict(iteration=11, findings=[]))]
    snap = dict(objects={"S0": dict(data=np.ones((1, 4, 4), np.complex64))},
                probes={"S0": dict(data=np.ones((1, 2, 2), np.complex64))}, history=hist,
                engines=[dict(label="dm", name="DM"), dict(label="ml", name="ML")])
    path = write_reconstruction(tmp_path / "r.h5", snap)
    rec = load_reconstruction(path)
    assert rec.health == {"dm": dict(iteration=10, engine_name="DM", findings=[finding]),
                          "ml": dict(iteration=11, engine_name="ML", findings=[])}
    assert rec.history[9]["health"] == dict(iteration=10, findings=[finding])
    assert rec.history[4]["model_fourier_error"] == pytest.approx(0.4) and rec.history[3]["model_fourier_error"] is None
    # what a resumed run writes again is the same
    snap["history"] = rec.history
    rec2 = load_reconstruction(write_reconstruction(tmp_path / "r2.h5", snap))
    assert rec2.health == rec.health
    import h5py

    with h5py.File(path, "r") as f:
        assert f["health/dm/code"].dtype.kind == "S"  # fixed-length UTF-8
        assert f["health/dm"].attrs["findings"] == 1 and f["health/ml/message"].shape == (0,)


@pytest.mark.slow
def test_inspect_shows_the_health_check(tmp_path):
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    base = dict(data_type="single", scans=dict(MF=dict(name="Full", propagation="farfield",
                                                       data=dict(name="Hdf5Scan", dfile=str(MOONFLOWER)))))
    good.write_text(yaml.safe_dump(dict(base, engines=dict(dm=dict(name="DM", numiter=60),
                                                           ml=dict(name="ML", numiter=30)))))
    bad.write_text(yaml.safe_dump(dict(base, engines=dict(dm=dict(name="DM", numiter=30, alpha=3.0)))))
    for cfg in (good, bad):
        res = invoke("reconstruct", cfg, "-o", tmp_path / (cfg.stem + ".h5"))
        assert res.exit_code == 0, res.stderr
    res = invoke("inspect", tmp_path / "good.h5")
    assert res.exit_code == 0
    assert "health:      no warnings after dm, ml" in res.stdout and "WARNING" not in res.stdout
    assert "model_fourier_error" in res.stdout  # the DM engine line shows the model's own error
    res = invoke("inspect", tmp_path / "bad.h5")
    lines = [line for line in res.stdout.splitlines() if line.startswith("  WARNING:")]
    assert any(line.startswith("  WARNING:     dm: the probe collapsed") and line.endswith("[probe_collapsed]")
               for line in lines)
    info = json.loads(invoke("inspect", tmp_path / "bad.h5", "--json").stdout)
    assert "probe_collapsed" in [f["code"] for f in info["health"]["dm"]["findings"]]
    assert info["health"]["dm"]["iteration"] == 30
    assert info["engines"][0]["final_model_fourier_error"] > 0
