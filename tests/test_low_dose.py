"""Low dose: the counting-noise floor, the noise-aware power bound and the weak-illumination prior.

Ground truth from the independent zoo simulator (``benchmarks/zoo_sim.py``):
a zone-plate probe over a textured object at 1e4 photons per frame with
Poisson noise, reconstructed by DM from the true probe.
"""

import os
import shutil
import sys

import h5py
import numpy as np
import pytest
import yaml

from ptycli.core.counting_noise import (amplitude_noise_floor, frame_photon_scales, lattice_step, looks_like_counts,
                                        photon_scale, sqrt_poisson_variance)

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
if BENCHMARKS not in sys.path:
    sys.path.insert(0, BENCHMARKS)

import validate_zoo  # noqa: E402
import zoo_sim  # noqa: E402
from cli_helpers import invoke  # noqa: E402


@pytest.mark.parametrize("lam", [0.01, 0.3, 1.0, 4.0, 50.0])
def test_sqrt_poisson_variance_matches_sampling(lam):
    draws = np.sqrt(np.random.default_rng(7).poisson(lam, 2_000_000))
    assert sqrt_poisson_variance(lam) == pytest.approx(draws.var(), abs=2e-3)


def test_sqrt_poisson_variance_limits():
    assert sqrt_poisson_variance(0.0) == 0.0
    assert sqrt_poisson_variance(1e-3) == pytest.approx(1e-3, rel=0.01)  # ~lam for lam << 1
    assert sqrt_poisson_variance(1e4) == 0.25  # the variance-stabilised limit
    assert 0.39 < sqrt_poisson_variance(1.0) < 0.41  # near its largest


def test_noise_floor_is_a_weighted_mean():
    mean = np.array([[0.0, 1e4], [1e4, 1e4]])
    assert amplitude_noise_floor(mean) == pytest.approx(0.75 * 0.25)
    assert amplitude_noise_floor(mean, np.array([[1.0, 0.0], [0.0, 0.0]])) == 0.0


def test_counts_are_whole_non_negative_numbers():
    assert looks_like_counts(np.array([[0, 3], [7, 12]], dtype=np.uint16))
    assert looks_like_counts(np.array([0.0, 3.0, 7.0], dtype=np.float32))
    assert not looks_like_counts(np.array([0.5, 3.0]))  # normalised data
    assert not looks_like_counts(np.array([-1.0, 3.0]))  # background subtracted
    assert not looks_like_counts(np.array([]))


@pytest.fixture(scope="module")
def low_dose_case(tmp_path_factory):
    spec = zoo_sim.CaseSpec("lowdose", layout="ptyd", probe="zoneplate", probe_size_px=6.0, frame_shape=(32, 32),
                            frames=80, photons=1e4, seed=21)
    return zoo_sim.build_case(spec, str(tmp_path_factory.mktemp("lowdose")))


def _dm(case, **dm):
    from ptycli.core.ptycho import Ptycho

    cfg = validate_zoo.natural_config(case["data_section"], "farfield", true_probe_file=case["probe_file"],
                                      dm_iterations=100, ml_iterations=0)
    cfg["engines"]["dm"].update(dm)
    P = Ptycho(cfg, level=2)
    P.run()
    return P, validate_zoo.score_object(P, case["truth"])["correlation"]


@pytest.mark.slow
def test_noise_power_bound_keeps_dm_from_fitting_the_noise(low_dose_case):
    P, bounded = _dm(low_dose_case)
    assert P.scans["zoo"].noise_floor > 0.05  # measured 0.13; the relaxed bound is ~0.001 here
    _, unbounded = _dm(low_dose_case, noise_power_bound=False)
    assert bounded > 0.85, bounded  # measured 0.91
    assert bounded > unbounded + 0.2, (bounded, unbounded)  # measured 0.54 without the bound


def test_noise_bound_is_the_declared_fraction_of_the_floor(low_dose_case):
    """DM's power bound on counted data: noise_bound_fraction (default 0.7) of the scan's counting-noise floor."""
    from ptycli.core.ptycho import Ptycho
    from ptycli.engines import make_engine

    cfg = validate_zoo.natural_config(low_dose_case["data_section"], "farfield", dm_iterations=1, ml_iterations=0,
                                      true_probe_file=low_dose_case["probe_file"])
    P = Ptycho(cfg, level=2)
    floor = P.scans["zoo"].noise_floor
    assert floor > 0.05  # measured 0.13
    for fraction, expected in ((None, 0.7), (1.0, 1.0), (0.0, 0.0)):
        params = dict(name="DM", numiter=1) if fraction is None else dict(name="DM", numiter=1,
                                                                          noise_bound_fraction=fraction)
        engine = make_engine(P, params, "dm_%s" % fraction).initialize()
        relaxed = engine.relax_factor_used() ** 2 * engine.mean_power / 4.0  # 0 here (plain projection)
        assert engine.pbound == pytest.approx(max(relaxed, expected * floor), rel=1e-12)
        engine.finalize()


@pytest.mark.slow
def test_noise_bound_fraction_lets_dm_alone_fit_low_dose_data(tmp_path):
    """The zoo's lowdose_1e4 scan (1e4 photons per 64 x 64 frame), DM 200 alone from the default start: 0.873
    with the bound at the whole noise floor, 0.907 at 0.7 of it (the default)."""
    spec = next(c for c in validate_zoo.CASES if c.name == "lowdose_1e4")
    case = zoo_sim.build_case(spec, str(tmp_path))
    scores = {}
    for fraction in (1.0, 0.7):
        config = validate_zoo.natural_config(case["data_section"], spec.propagation,
                                             chain=[("DM", 200, {"noise_bound_fraction": fraction})])
        result = validate_zoo.reconstruct_and_score(config, case["truth"])
        assert result["error"] is None, result
        scores[fraction] = result["score"]
    assert scores[0.7] >= 0.895 and scores[0.7] > scores[1.0] + 0.02, scores


def test_weak_illumination_prior_keeps_unlit_pixels_sane(low_dose_case):
    from ptycli import quality as metrics

    for floor, most in ((0.01, 4.0), (0.0, None)):
        P, _ = _dm(low_dose_case, object_weak_floor=floor)
        amplitude = np.abs(P.obj.S["Szoo"].data[0])
        cov = metrics.illumination_coverage(P)
        median = np.median(amplitude[cov > 0.3 * cov.max()])
        ratio = amplitude.max() / median
        if most is not None:
            assert ratio < most, ratio  # measured 1.4
        else:
            assert ratio > 20, ratio  # measured 137: without the prior, barely lit pixels blow up


@pytest.mark.parametrize("scale", [2.0, 3.7e-3, 1e-6, 123.4, 1 / 0.37])
@pytest.mark.parametrize("mean_counts", [0.5, 1e3])
def test_photon_scale_finds_counts_times_a_constant(scale, mean_counts):
    """Counts per second, in other units, doubled by a gain: the lattice step is the scale, to 1e-6."""
    rng = np.random.default_rng(5)
    counts = rng.poisson(rng.gamma(0.5, 2.0 * mean_counts, size=(60, 32, 32))).astype(np.float64)
    for dtype in (np.float32, np.float64):
        assert photon_scale((counts * scale).astype(dtype)) == pytest.approx(scale, rel=1e-6)
    assert lattice_step(np.array([3.0, 6.0, 9.0] * 6)) == 3.0


def test_photon_scale_leaves_other_data_alone():
    rng = np.random.default_rng(6)
    counts = rng.poisson(rng.gamma(0.5, 2.0, size=(60, 32, 32))).astype(np.float32)
    assert photon_scale(counts) is None  # whole counts already
    assert photon_scale(rng.random((60, 32, 32)).astype(np.float32)) is None  # continuous
    assert photon_scale(rng.gamma(0.5, 77.0, size=(60, 32, 32))) is None  # noise-free intensities
    assert photon_scale(np.clip(counts + rng.normal(0, 0.3, counts.shape), 0, None)) is None  # read noise
    per_frame = counts * rng.uniform(0.9, 1.1, (60, 1, 1))  # each frame its own factor (a monitor)
    assert photon_scale(per_frame.astype(np.float32)) is None
    assert photon_scale(-counts * 0.5) is None  # negative values
    valid = np.ones(counts.shape, bool)
    spoiled = counts * 0.25
    spoiled[:, 0, 0] = 0.1  # off the lattice, but masked
    valid[:, 0, 0] = False
    assert photon_scale(spoiled, valid) == pytest.approx(0.25, rel=1e-6)


def test_frame_photon_scales_find_each_frames_factor():
    """Counts normalised by a monitor before they were stored: one lattice per frame, none shared."""
    rng = np.random.default_rng(8)
    counts = rng.poisson(rng.gamma(0.5, 2.0, size=(40, 32, 32))).astype(np.float64)
    factors = 0.02 * rng.uniform(0.9, 1.1, 40)
    steps = frame_photon_scales((counts * factors[:, None, None]).astype(np.float32))
    tested = np.unique(np.linspace(0, 39, 16).round().astype(int))
    np.testing.assert_allclose(steps, factors[tested], rtol=1e-6)
    assert frame_photon_scales(rng.random((40, 32, 32))) is None


def _scaled_copy(path, folder, scale, per_frame=None, dither=False):
    """A copy of a .ptyd file with its frames stored as float32 counts times ``scale`` (and ``per_frame[i]``;
    with ``dither``, plus uniform 0-1 noise before the scale: continuous values, no lattice)."""
    out = os.path.join(folder, "scaled_%g_" % scale + os.path.basename(path))
    shutil.copy(path, out)
    with h5py.File(out, "r+") as f:
        for key in f["chunks"]:
            group = f["chunks"][key]
            frames, attrs = group["data"][...], dict(group["data"].attrs)
            del group["data"]
            factors = 1.0 if per_frame is None else per_frame[group["indices"][...]][:, None, None]
            if dither:
                frames = frames + np.random.default_rng(int(key)).random(frames.shape)
            ds = group.create_dataset("data", data=(frames * scale * factors).astype(np.float32))
            for name, value in attrs.items():
                ds.attrs[name] = value
    return out


def test_scaled_counts_build_the_model_of_the_counts(low_dose_case, tmp_path):
    """Frames stored as counts times 3.7e-3 (float32) are divided back to the very same counts: the same
    diffraction data, counting-noise floor and probe guess as the file of whole counts."""
    from ptycli.core.ptycho import Ptycho

    models = {}
    for scale in (1.0, 3.7e-3):
        section = dict(low_dose_case["data_section"])
        if scale != 1.0:
            section["dfile"] = _scaled_copy(section["dfile"], str(tmp_path), scale)
        P = Ptycho(validate_zoo.natural_config(section, "farfield", dm_iterations=1, ml_iterations=0), level=2)
        models[scale] = P
    plain, scaled = models[1.0], models[3.7e-3]
    assert scaled.scans["zoo"].intensity_scale == pytest.approx(3.7e-3, rel=1e-6)
    assert plain.scans["zoo"].intensity_scale == 1.0
    assert scaled.scans["zoo"].counted and scaled.scans["zoo"].noise_floor == plain.scans["zoo"].noise_floor > 0.05
    for sid, S in plain.diff.S.items():
        np.testing.assert_array_equal(scaled.diff.S[sid].data, S.data)
    for sid, S in plain.probe.S.items():
        np.testing.assert_array_equal(scaled.probe.S[sid].data, S.data)


def test_monitor_normalised_counts_are_counted(low_dose_case, tmp_path):
    """Counts each multiplied by its own factor (0.9-1.1 times 3.7e-3): divided by the mean step and marked as
    monitor-scaled counts (the noise floor of the counts, within the factors' spread)."""
    from ptycli.core.ptycho import Ptycho

    section = dict(low_dose_case["data_section"])
    plain = Ptycho(validate_zoo.natural_config(section, "farfield", dm_iterations=1, ml_iterations=0), level=2)
    factors = np.random.default_rng(9).uniform(0.9, 1.1, len(low_dose_case["truth"]["pos_px"]))
    section["dfile"] = _scaled_copy(section["dfile"], str(tmp_path), 3.7e-3, factors)
    P = Ptycho(validate_zoo.natural_config(section, "farfield", dm_iterations=1, ml_iterations=0), level=2)
    model = P.scans["zoo"]
    assert model.intensity_scale == pytest.approx(3.7e-3, rel=0.03)
    assert model.counted and model.data.meta["monitor_scaled_counts"]
    assert model.noise_floor == pytest.approx(plain.scans["zoo"].noise_floor, rel=0.03)


def test_frames_without_a_unit_reconstruct_alike_at_any_scale(low_dose_case, tmp_path):
    """Continuous frames (counts plus uniform dither, no lattice) stored times 1e-12 and 1e9 are put in one unit
    (mean 1000 per valid pixel): the same model intensities to rounding, the same reconstruction (as they were:
    0.853 and 0.778); stored as they are (10 per pixel, photon-like) they are left alone."""
    from ptycli.core.manager import UNITLESS_MEAN
    from ptycli.core.ptycho import Ptycho

    scores, data = {}, {}
    for scale in (1.0, 1e-12, 1e9):
        section = dict(low_dose_case["data_section"])
        section["dfile"] = _scaled_copy(section["dfile"], str(tmp_path), scale, dither=True)
        config = validate_zoo.natural_config(section, "farfield", dm_iterations=40, ml_iterations=20)
        P = Ptycho(config, level=2)
        model = P.scans["zoo"]
        assert not model.counted
        S = next(iter(P.diff.S.values()))
        mask = next(iter(P.mask.S.values())).data.astype(bool)
        data[scale] = (S.data.copy(), model.intensity_scale, S.data[mask].mean())
        P.run()
        scores[scale] = validate_zoo.score_object(P, low_dose_case["truth"])["correlation"]
    assert data[1.0][1] == 1.0 and 5 < data[1.0][2] < 20  # photon-like: kept
    for scale in (1e-12, 1e9):
        assert data[scale][2] == pytest.approx(UNITLESS_MEAN, rel=1e-3)
        assert data[scale][1] == pytest.approx(scale * data[1.0][2] / UNITLESS_MEAN, rel=1e-3)
    np.testing.assert_allclose(data[1e9][0], data[1e-12][0], rtol=1e-5, atol=1e-3)
    assert abs(scores[1e9] - scores[1e-12]) < 0.005 and scores[1e9] > 0.8, scores  # measured 0.833 both


def test_the_result_says_what_the_frames_were_divided_by(low_dose_case, tmp_path):
    """``/scans/<label>`` attribute ``intensity_scale`` and ``ptycli inspect``'s units line."""
    section = dict(low_dose_case["data_section"], dfile=_scaled_copy(low_dose_case["data_section"]["dfile"],
                                                                     str(tmp_path), 3.7e-3))
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(validate_zoo.natural_config(section, "farfield", dm_iterations=2,
                                                                 ml_iterations=0)))
    out = tmp_path / "result.h5"
    assert invoke("-q", "reconstruct", config, "-o", out).exit_code == 0
    with h5py.File(out, "r") as f:
        assert f["scans/zoo"].attrs["intensity_scale"] == pytest.approx(3.7e-3, rel=1e-6)
    res = invoke("inspect", out)
    assert res.exit_code == 0 and "units  zoo      frames divided by 0.0037 as they loaded" in res.stdout


def test_photon_scale_given_or_off(low_dose_case, tmp_path):
    """``scans.<label>.photon_scale``: a number divides the frames by it and makes them counts; null keeps them
    as stored (not counted); anything else is refused with one line."""
    from ptycli.core.ptycho import Ptycho
    from ptycli.errors import ConfigError

    section = dict(low_dose_case["data_section"])
    section["dfile"] = _scaled_copy(section["dfile"], str(tmp_path), 3.7e-3)
    models = {}
    for setting in ("auto", 3.7e-3, None, "none"):
        config = validate_zoo.natural_config(section, "farfield", dm_iterations=1, ml_iterations=0)
        config["scans"]["zoo"]["photon_scale"] = setting
        models[setting] = Ptycho(config, level=2).scans["zoo"]
    auto, given = models["auto"], models[3.7e-3]
    assert given.intensity_scale == 3.7e-3 and given.counted
    np.testing.assert_allclose(given.data.intensities, auto.data.intensities, rtol=1e-5, atol=1e-4)
    assert given.noise_floor == pytest.approx(auto.noise_floor, rel=1e-4)
    for off in (None, "none"):
        assert models[off].intensity_scale == 1.0 and not models[off].counted and models[off].noise_floor == 0.0
    for bad in (0, -2.0, "photons", True):
        config = validate_zoo.natural_config(section, "farfield", dm_iterations=1, ml_iterations=0)
        config["scans"]["zoo"]["photon_scale"] = bad
        with pytest.raises(ConfigError, match="photon_scale: expected auto, null or a number > 0"):
            Ptycho(config, level=2)
