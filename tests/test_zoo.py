"""A small, fast version of the validation zoo (benchmarks/validate_zoo.py, issue 12).

The simulator and the runner live in ``benchmarks/`` (not a package): they are
imported by putting that folder on ``sys.path`` below. The simulator
(``zoo_sim``) is an independent numpy forward model that writes files with
plain h5py; these tests check

* the writers: each layout (PtyPy .ptyd, CXI 1.5, beamline HDF5 with its own
  names and units) loads through ptycli's loaders with the right frames,
  positions (metres, 1e-9 relative), energy, distance, pixel size and mask;
* the simulator itself on cases with a known answer (sub-pixel windows of a
  plane wave, the far-field and near-field conventions);
* that ptycli started from the true probe reconstructs tiny zoo scans (far
  field focused probe in .ptyd, rectangular frames in CXI, near field)
  above thresholds measured with a margin; of the default-settings scores
  only the focused case's (which passes comfortably) is asserted, since the
  probe guess is being reworked;
* that the score is mean-removed: an unreconstructed (flat) object scores
  low.

Everything is written under pytest's ``tmp_path``.
"""

import dataclasses
import os
import sys

import numpy as np
import pytest

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
if BENCHMARKS not in sys.path:
    sys.path.insert(0, BENCHMARKS)

import validate_zoo  # noqa: E402
import zoo_sim  # noqa: E402
from zoo_sim import CaseSpec  # noqa: E402


def _load(data_section, propagation="farfield"):
    """Load a scan through ptycli's loader as a reconstruction would (no engines)."""
    from ptycli.core.manager import get_scan_model
    from ptycli.core.ptycho import Ptycho

    cfg = {"verbose_level": "error",
           "scans": {"zoo": {"data": dict(data_section), "propagation": propagation}}}
    P = Ptycho(cfg, level=1)
    pars = P.p.scans["zoo"]
    model = get_scan_model(pars.name)(P, "zoo", pars)
    return model.load()


TINY = {
    # far field, focused probe, raster with jitter, PtyPy .ptyd with hot/dead pixels
    "focused_ptyd": CaseSpec("focused_ptyd", layout="ptyd", probe="focused", probe_size_px=2.5,
                             frame_shape=(32, 32), scan="raster", frames=64, photons=1e7,
                             defects=True, seed=101),
    # rectangular frames (different object pixel per axis), CXI with a beam stop, spiral
    "rect_cxi": CaseSpec("rect_cxi", layout="cxi", probe="zoneplate", probe_size_px=6.0,
                         frame_shape=(32, 48), scan="spiral", frames=70, photons=1e7,
                         beamstop_radius_px=2.0, seed=102),
    # near field, diffuser probe, random positions, beamline layout (uint16, um, eV, mm)
    "near_beamline": CaseSpec("near_beamline", layout="beamline", probe="diffuser",
                              frame_shape=(32, 32), propagation="nearfield", energy_kev=8.0,
                              detector_pixel_m=0.65e-6, near_fresnel_px=10.0, scan="random",
                              frames=60, overlap=0.6, photons=1e6, seed=103),
}


@pytest.fixture(scope="module")
def tiny_cases(tmp_path_factory):
    folder = tmp_path_factory.mktemp("zoo")
    return {name: zoo_sim.build_case(spec, str(folder)) for name, spec in TINY.items()}


# ----------------------------------------------------------------------------------------------
# simulator
# ----------------------------------------------------------------------------------------------
def test_subpixel_windows_of_a_plane_wave_are_exact():
    # a plane wave of integer frequency is periodic on the object grid, so the Fourier shift is exact
    ky, kx = 3, -5
    shape = (40, 48)
    yy, xx = np.indices(shape)
    obj = np.exp(2j * np.pi * (ky * yy / shape[0] + kx * xx / shape[1]))
    pos = np.array([[2.25, 3.5], [0.0, 1.0], [5.75, 0.125]])
    origin = np.array([-1, -2])
    win = zoo_sim.object_windows(obj, pos, origin, (8, 10))
    for p, w in zip(pos, win):
        s = p - origin
        wy, wx = np.indices((8, 10))
        expect = np.exp(2j * np.pi * (ky * (wy + s[0]) / shape[0] + kx * (wx + s[1]) / shape[1]))
        np.testing.assert_allclose(w, expect, atol=1e-10)
    # an integer position is a plain slice
    np.testing.assert_array_equal(win[1], obj[1:9, 3:13])


def test_far_and_near_field_conventions():
    rng = np.random.default_rng(0)
    geo_far = zoo_sim.Geometry(6.2, 5.0, 172e-6, (16, 16), "farfield")
    # far field: a flat exit wave puts all counts in the centre pixel (the zero frequency at N // 2)
    counts, probes = zoo_sim.simulate_intensities(np.ones((16, 16)), np.ones((1, 16, 16)), np.zeros((1, 2)),
                                                  np.array([0, 0]), geo_far, 1000.0, rng, poisson=False)
    assert counts[0, 8, 8] == pytest.approx(1000.0)
    assert counts.sum() == pytest.approx(1000.0)
    assert np.sum(np.abs(probes) ** 2) == pytest.approx(1000.0)  # Parseval: probe in count units
    # far-field object pixel lam z / (N p) per axis
    geo_rect = zoo_sim.Geometry(6.2, 5.0, 172e-6, (48, 80), "farfield")
    lam = zoo_sim.HC_KEV_M / 6.2
    np.testing.assert_allclose(geo_rect.object_pixel_m, [lam * 5.0 / (48 * 172e-6), lam * 5.0 / (80 * 172e-6)])
    # near field: a plane wave stays a plane wave; one Fourier component only picks up a phase
    geo_near = zoo_sim.Geometry(8.0, 0.03, 1e-6, (16, 16), "nearfield")
    wave = np.exp(2j * np.pi * 2 * np.arange(16) / 16)[None, None, :] * np.ones((1, 16, 16))
    out = zoo_sim.propagate_near(wave, geo_near)
    fx = 2 / (16 * 1e-6)
    expect_phase = -np.pi * geo_near.wavelength_m * 0.03 * fx ** 2
    np.testing.assert_allclose(out, wave * np.exp(1j * expect_phase), atol=1e-12)


def test_position_errors_and_subpixel_truth(tmp_path):
    spec = CaseSpec("err", layout="ptyd", probe="zoneplate", probe_size_px=5.0, frame_shape=(32, 32),
                    scan="raster", frames=100, photons=1e5, position_error_px=1.5, subpixel=True, seed=5)
    case = zoo_sim.build_case(spec, str(tmp_path))
    truth = case["truth"]
    err = case["reported_pos_px"] - truth["pos_px"]
    rms = np.sqrt(np.mean(np.sum(err ** 2, axis=1)))
    assert 1.2 < rms < 1.8
    assert np.any(np.abs(truth["pos_px"] - np.round(truth["pos_px"])) > 0.1)  # really off the grid
    assert truth["lit_mask"].sum() > 0.3 * truth["frame_mask"].sum()
    assert np.all(truth["frame_mask"][truth["lit_mask"]])


# ----------------------------------------------------------------------------------------------
# writers: the files load through ptycli with the right numbers
# ----------------------------------------------------------------------------------------------
def _bad_pixels_in_file(case):
    """The defect mask (True = bad) of a case, from its file (weights, CXI bits, valid dataset)."""
    import h5py

    with h5py.File(case["data_file"], "r") as f:
        if "chunks" in f:
            return f["chunks/0/weights"][0] == 0
        if "entry_1" in f:
            return (f["entry_1/instrument_1/detector_1/mask"][()] & 0x1) != 0
        valid = f[zoo_sim.BEAMLINE_PATHS["valid"]][()]
        return valid.reshape((-1,) + valid.shape[-2:]).min(axis=0) == 0


@pytest.mark.parametrize("name", sorted(TINY))
def test_written_files_load_through_ptycli(tiny_cases, name):
    import h5py

    case = tiny_cases[name]
    spec = TINY[name]
    truth = case["truth"]
    geo = case["geometry"]
    d = _load(case["data_section"], spec.propagation)
    n = len(truth["pos_px"])
    assert d.num_frames_total == n
    assert tuple(d.shape) == tuple(spec.frame_shape)
    # positions in metres: the written (reported) pixel positions times the object pixel
    expect_m = case["reported_pos_px"] * truth["resolution_m"]
    got = np.asarray(d.positions, float)
    order = np.asarray(d.indices, int)
    assert d.positions_unit == "m"
    np.testing.assert_allclose(got, expect_m[order], rtol=1e-9, atol=1e-9 * np.abs(expect_m).max())
    # geometry conversions: CXI energy in J, beamline eV / mm / um
    assert d.energy_kev == pytest.approx(spec.energy_kev, rel=1e-12)
    assert d.distance_m == pytest.approx(geo.distance_m, rel=1e-12)
    np.testing.assert_allclose(np.broadcast_to(d.psize_m, (2,)), spec.detector_pixel_m, rtol=1e-12)
    # the frames arrive unchanged, masked pixels aside
    with h5py.File(case["data_file"], "r") as f:
        if spec.layout == "ptyd":
            raw = np.concatenate([f["chunks/%s/data" % k][()] for k in sorted(f["chunks"], key=int)])
        elif spec.layout == "cxi":
            raw = f["entry_1/instrument_1/detector_1/data"][()]
        else:
            raw = f[zoo_sim.BEAMLINE_PATHS["frames"]][()]
            assert raw.dtype == np.uint16
    mask = np.asarray(d.mask, bool).reshape((-1,) + tuple(spec.frame_shape))
    intens = np.asarray(d.intensities, float).reshape(mask.shape)
    np.testing.assert_array_equal(intens[mask], raw[order].astype(float)[mask])
    if spec.defects or spec.beamstop_radius_px:
        # hot/dead pixels and the beam stop are masked in every frame, nothing else is
        invalid = ~mask.all(axis=0)
        expect_invalid = np.asarray(_bad_pixels_in_file(case), bool)
        np.testing.assert_array_equal(invalid, expect_invalid)


def test_ptyd_layout_mimics_ptypy(tiny_cases):
    import h5py

    with h5py.File(tiny_cases["focused_ptyd"]["data_file"], "r") as f:
        assert f.attrs["h5rw_version"] == "0.1"
        assert f["chunks"].attrs["type"] == "dict"
        assert f["chunks/0/data"].dtype == np.int32 and f["chunks/0/data"].attrs["type"] == "array"
        assert f["chunks/0/indices"].attrs["type"] == "arraylist"
        assert f["meta/label"].attrs["type"] == "string"
        assert f["meta/num_frames"][()] == 64
        np.testing.assert_array_equal(f["meta/shape"][()], [32, 32])
        np.testing.assert_array_equal(f["meta/center"][()], [16, 16])
        np.testing.assert_array_equal(f["info/positions_scan"][()],
                                      np.concatenate([f["chunks/0/positions"][()]]))


def test_cxi_layout(tiny_cases):
    import h5py

    case = tiny_cases["rect_cxi"]
    with h5py.File(case["data_file"], "r") as f:
        assert f["cxi_version"][()] == 150
        e_j = f["entry_1/instrument_1/source_1/energy"][()]
        assert e_j == pytest.approx(6.2e3 * 1.602176634e-19, rel=1e-12)
        tr = f["entry_1/sample_1/geometry_1/translation"][()]
        assert tr.shape == (70, 3) and np.all(tr[:, 2] == 0)
        # columns x, y: x = column position times the x pixel
        res = case["truth"]["resolution_m"]
        np.testing.assert_allclose(tr[:, 0], case["reported_pos_px"][:, 1] * res[1], rtol=1e-12)
        np.testing.assert_allclose(tr[:, 1], case["reported_pos_px"][:, 0] * res[0], rtol=1e-12)
        assert res[0] != pytest.approx(res[1])  # rectangular: different pixel per axis


# ----------------------------------------------------------------------------------------------
# reconstructions from the true probe (thresholds measured with a margin)
# ----------------------------------------------------------------------------------------------
#: case -> (DM, ML iterations, lowest accepted true-probe score). Measured (seeds 0-2 of each
#: case, 2026-12-02, while ptycli was being changed): focused 0.988-0.997, rectangular CXI
#: 0.955-0.991, near field 0.940-0.977.
RECON = {
    "focused_ptyd": (40, 20, 0.95),
    "rect_cxi": (40, 20, 0.90),
    "near_beamline": (40, 20, 0.90),
}


@pytest.mark.parametrize("name", sorted(RECON))
def test_true_probe_reconstruction(tiny_cases, name):
    case = tiny_cases[name]
    spec = TINY[name]
    dm, ml, floor = RECON[name]
    cfg = validate_zoo.natural_config(case["data_section"], spec.propagation, true_probe_file=case["probe_file"],
                                      dm_iterations=dm, ml_iterations=ml)
    res = validate_zoo.reconstruct_and_score(cfg, case["truth"])
    assert res["error"] is None
    assert res["score"] > floor, res
    assert res["pos_rms_px"] < 1e-5  # no refinement: the frames stay at the true positions (file rounding ~1e-7)


def test_default_probe_reconstructs_the_focused_case(tiny_cases):
    # the one default-settings score asserted here: it passes comfortably today (0.993-0.999 over
    # three seeds); the rectangular (0.95) and near-field (0.37-0.68) defaults are left to the zoo
    case = tiny_cases["focused_ptyd"]
    cfg = validate_zoo.natural_config(case["data_section"], "farfield", dm_iterations=40, ml_iterations=20)
    res = validate_zoo.reconstruct_and_score(cfg, case["truth"])
    assert res["error"] is None
    assert res["score"] > 0.93, res


def test_score_of_an_unreconstructed_object_is_low(tiny_cases):
    # no engine: the object stays the flat initial guess, which the score must not reward
    case = tiny_cases["focused_ptyd"]
    cfg = validate_zoo.natural_config(case["data_section"], "farfield", true_probe_file=case["probe_file"],
                                      dm_iterations=0, ml_iterations=0)
    res = validate_zoo.reconstruct_and_score(cfg, case["truth"])
    assert res["error"] is None
    assert res["score"] < 0.3, res
    assert res["score_raw"] > 0.8  # the uncentred correlation would have called it a success


def test_score_removes_shift_ramp_and_phase_but_not_structure():
    from ptycli.engines import metrics

    rng = np.random.default_rng(3)
    truth = zoo_sim.make_object((64, 64), rng, feature_px=1.5)
    weight = np.zeros((64, 64))
    weight[12:52, 12:52] = 1.0
    yy, xx = np.indices((64, 64)) / 64.0
    ramp = np.exp(2j * np.pi * (1.3 * yy - 0.7 * xx))

    def score(recon):
        cmp = metrics.align_and_compare(recon, truth, weight)
        return validate_zoo.mean_removed_correlation(recon, truth, weight, cmp["shift"], cmp["ramp"])

    moved = metrics.fourier_shift(truth, (0.4, -1.3)) * ramp * np.exp(0.7j) * 1.7
    assert score(moved) > 0.99
    # a flat object, with or without a phase ramp, has none of the structure
    assert score(np.ones((64, 64), complex)) < 0.1
    assert score(ramp) < 0.2


@pytest.mark.slow
def test_raar_beta_ramp_leaves_the_plateau_of_a_poor_start(tmp_path):
    # a diffuser probe from a poor start: RAAR with beta = 0.75 from the first iteration stalls
    # (0.48-0.67 over two seeds), starting at beta = 1 and relaxing (beta_ramp, the default) does not
    # (0.96-0.97); the full zoo's table is in RAAR's docstring. The start is the back-propagated
    # mean pattern (PtyPy's stxm recipe; 0.51 against 0.97): the default guess was that poor until its
    # curvature ladder (issue 16), from which the constant beta reached 0.95 here too
    spec = CaseSpec("diffuser_tiny", layout="ptyd", probe="diffuser", frame_shape=(32, 32), frames=60,
                    photons=1e7, seed=8)
    case = zoo_sim.build_case(spec, str(tmp_path))
    start = validate_zoo.mean_pattern_probe_file(case["data_section"], tmp_path / "start.npy")
    scores = {}
    for ramp in (0, 80):
        cfg = validate_zoo.natural_config(case["data_section"], "farfield", true_probe_file=start,
                                          chain=[("RAAR", 120, {"beta_ramp": ramp})])
        # a diffuser's patterns fill every frame: background: auto would fit one (the stalled run then
        # reached 0.84); this test is about the beta ramp
        cfg["scans"]["zoo"]["background"] = False
        res = validate_zoo.reconstruct_and_score(cfg, case["truth"])
        assert res["error"] is None
        scores[ramp] = res["score"]
    assert scores[80] > 0.93 and scores[0] < 0.8, scores


@pytest.mark.slow
def test_low_dose_default_start_picks_a_probe_guess_that_converges(tmp_path):
    """1e4 photons per frame, zone-plate probe near focus, a seed where the trial once picked a wrong curvature.

    Scored on all pixels, the probe guess's trial preferred a strongly curved
    candidate that fits the counting noise: DM 200 + ML 100 then scored 0.368
    (true probe 0.923). Scored on held-out pixels it keeps the support
    guess: 0.923.
    """
    spec = dataclasses.replace(next(c for c in validate_zoo.CASES if c.name == "lowdose_1e4"), seed=22)
    case = zoo_sim.build_case(spec, str(tmp_path))
    config = validate_zoo.natural_config(case["data_section"], spec.propagation, poisson=True)
    result = validate_zoo.reconstruct_and_score(config, case["truth"])
    assert result["error"] is None, result
    assert result["score"] >= 0.9, result  # measured 0.923 (before: 0.368)


def _lowdose_1e3(tmp_path, seed):
    spec = dataclasses.replace(next(c for c in validate_zoo.CASES if c.name == "lowdose_1e3"), seed=seed)
    return spec, zoo_sim.build_case(spec, str(tmp_path))


def test_very_low_dose_curvature_is_measured_on_more_frames(tmp_path):
    """0.3 counts per pixel (1e3 photons per 64 x 64 frame, zone-plate probe of 0.051 rad/pixel^2, zoo seed 24).

    Measured on the 40 central frames the curvature was (0.0245, 0.0123),
    and the guess was twice too wide; on all 150 frames
    (:data:`~ptycli.core.probe_guess.VERY_LOW_COUNT_FRAMES`) it is (0.0368, 0.0295).
    """
    from ptycli.core import probe_guess
    from ptycli.core.ptycho import Ptycho

    spec, case = _lowdose_1e3(tmp_path, 24)
    P = Ptycho(validate_zoo.natural_config(case["data_section"], spec.propagation, poisson=True, chain=[("DM", 1)]),
               level=2)
    info = P.scans["zoo"].probe_guess
    ay, ax = info["curvature"]
    assert 0.025 < ay < 0.06 and 0.025 < ax < 0.06, info
    assert info["pairs"] > 4 * probe_guess.CENTRAL_FRAMES  # every frame's pairs, not the central 40's


@pytest.mark.slow
def test_very_low_dose_default_chain_reaches_the_true_probe_score(tmp_path):
    """The same scan, DM 200 + ML 100 from the default start: 0.681 (true probe 0.707; from 40 frames' curvature 0.127)."""
    spec, case = _lowdose_1e3(tmp_path, 24)
    result = validate_zoo.reconstruct_and_score(
        validate_zoo.natural_config(case["data_section"], spec.propagation, poisson=True), case["truth"])
    assert result["error"] is None, result
    assert result["score"] >= 0.6, result


def _lowdose_1e4(tmp_path, seed):
    spec = dataclasses.replace(next(c for c in validate_zoo.CASES if c.name == "lowdose_1e4"), seed=seed)
    return spec, zoo_sim.build_case(spec, str(tmp_path))


def test_low_count_curvature_is_tried_at_larger_multiples(tmp_path):
    """2.4 counts per pixel (1e4 photons per 64 x 64 frame, zoo seed 21): the pattern shifts read the wavefront
    curvature as (0.022, 0.029) rad/pixel^2, short of what wins the trial (0.045-0.06), and the trial took the
    support guess; with the measured curvature times :data:`~ptycli.core.probe_guess.LOW_COUNT_CURVATURE_FACTORS`
    among the candidates it takes 3 x (0.065, 0.088), which beats the support's trial error."""
    from ptycli.core import probe_guess
    from ptycli.core.ptycho import Ptycho

    spec, case = _lowdose_1e4(tmp_path, 21)
    P = Ptycho(validate_zoo.natural_config(case["data_section"], spec.propagation, poisson=True, chain=[("DM", 1)]),
               level=2)
    info = P.scans["zoo"].probe_guess
    assert set("curvature_x%g" % k for k in probe_guess.LOW_COUNT_CURVATURE_FACTORS) <= set(info["trial"]), info
    assert info["trial_pick"].startswith("curvature"), info
    assert info["trial"][info["trial_pick"]] < 0.95 * info["trial"]["support"], info


@pytest.mark.slow
def test_low_count_dm_alone_starts_from_a_curved_probe(tmp_path):
    """The same scan, DM 100 alone from the default start: 0.895 (0.544 from the support guess; true probe
    0.874). Seeds 22 / 23: 0.594 / 0.638 -> 0.799 / 0.885; RAAR 100 seeds 21 / 22: 0.481 / 0.551 -> 0.898 /
    0.796; DM 200 + ML 100, mPIE 100 and LSQML 50 within 0.005 (they reached the curvature anyway)."""
    spec, case = _lowdose_1e4(tmp_path, 21)
    result = validate_zoo.reconstruct_and_score(
        validate_zoo.natural_config(case["data_section"], spec.propagation, poisson=True, chain=[("DM", 100)]),
        case["truth"])
    assert result["error"] is None, result
    assert result["score"] >= 0.8, result


@pytest.mark.slow
def test_mpie_noise_bound_ramp_on_low_dose_data(tmp_path):
    """1e4 photons per frame, mPIE 90 from the default start: the noise bound grown in over 60 iterations
    (the default) reaches the true-probe ceiling where the whole bound from the start falls short.

    First measured 0.930 against 0.585 (seed 21) from the support guess. Since the probe guess checks
    held-out frames for engines with local probe updates, the start is better and the gap smaller;
    measured (ramp 0 -> 60) over seeds 12, 21-26: mean 0.868 -> 0.910, every seed better; seed 12
    0.850 -> 0.910, seed 24 0.838 -> 0.923 (true probe about 0.92). Measured without recentring, which
    this test keeps off to compare the ramps alone: mPIE's default ``probe_center_tol`` (2 px) lifts seed
    24's whole-bound run, whose probe drifts, to 0.890 (ramp 60: 0.918); seed 12 is unchanged.
    mPIE's sweeps follow the rounding of the machine's transforms: on an AMD EPYC (no AVX-512) seeds
    12, 21-25 gave 0.851 / 0.916 / 0.836 / 0.904 / 0.807 / 0.878 -> 0.909 / 0.928 / 0.851 / 0.932 / 0.840 /
    0.921 (every seed better, mean 0.865 -> 0.897), so the test asks for the gain on both seeds and in mean.
    """
    base = next(c for c in validate_zoo.CASES if c.name == "lowdose_1e4")
    gains, ramped = [], []
    for seed in (12, 24):
        spec = dataclasses.replace(base, seed=seed)
        case = zoo_sim.build_case(spec, str(tmp_path / str(seed)))
        scores = {}
        for ramp in (0, 60):
            config = validate_zoo.natural_config(case["data_section"], spec.propagation, poisson=True,
                                                 chain=[("mPIE", 90, {"noise_bound_ramp": ramp,
                                                                      "probe_center_tol": None})])
            result = validate_zoo.reconstruct_and_score(config, case["truth"])
            assert result["error"] is None, result
            scores[ramp] = result["score"]
        assert scores[60] >= 0.82 and scores[60] > scores[0] + 0.01, (seed, scores)
        gains.append(scores[60] - scores[0])
        ramped.append(scores[60])
    assert np.mean(ramped) >= 0.86 and np.mean(gains) >= 0.03, (ramped, gains)


@pytest.mark.slow
def test_mpie_default_start_checks_the_probe_guess_on_held_out_frames(tmp_path):
    """Zone-plate probe, ring radius 14 px, simulation seed 104: the trial picks ``support`` (a focused spot).

    DM recovers from that spot (DM 200 + ML 100: 0.986), mPIE stalls: 0.231
    when it started from the trial's pick. The pick predicts frames left out
    of a second trial 2.6 times worse than ``curvature``, so an mPIE-first
    chain starts from ``curvature``: measured 0.991 (true probe 0.992).
    """
    spec = dataclasses.replace(next(c for c in validate_zoo.CASES if c.name == "zoneplate_defocus14"), seed=104)
    case = zoo_sim.build_case(spec, str(tmp_path))
    config = validate_zoo.natural_config(case["data_section"], spec.propagation, chain=[("mPIE", 100)])
    result = validate_zoo.reconstruct_and_score(config, case["truth"])
    assert result["error"] is None, result
    assert result["score"] >= 0.95, result  # measured 0.991 (before: 0.231)


@pytest.mark.slow
def test_monitor_and_positions_in_a_master_file_recover_a_flux_varying_scan(tmp_path):
    """The zoo's beamline pinhole scan with the flux varying 0.3-1.0 from frame to frame (counts thinned
    binomially: Poisson at each frame's dose), the ion chamber and the motor positions in a master file.

    Measured (DM 100 + ML 50, default start): uniform flux 0.997; varying flux with the monitor applied
    0.996 (0.995 before the scaled frames counted as counts for the noise models), ignored 0.914.
    """
    import shutil

    import h5py

    spec = next(c for c in validate_zoo.CASES if c.name == "aperture_raster")
    case = zoo_sim.build_case(spec, str(tmp_path))
    section = case["data_section"]
    rng = np.random.default_rng(3)
    with h5py.File(section["dfile"], "r") as f:
        frames = f[section["intensities"]][()]
        y_um, x_um = f[section["positions_slow"]][()], f[section["positions_fast"]][()]
    flux = rng.uniform(0.3, 1.0, frames.shape[0])
    detector, master = str(tmp_path / "detector.h5"), str(tmp_path / "master.h5")
    shutil.copy(section["dfile"], detector)
    with h5py.File(detector, "a") as f:
        del f[section["intensities"]], f[section["positions_slow"]], f[section["positions_fast"]]
        f[section["intensities"]] = rng.binomial(frames.astype(np.int64), flux[:, None, None]).astype(np.uint16)
    with h5py.File(master, "w") as f:
        f["/entry/y_um"], f["/entry/x_um"], f["/entry/ion_chamber"] = y_um, x_um, flux * 2.5e5
    moved = dict(section, dfile=detector, positions_slow=master + "::/entry/y_um",
                 positions_fast=master + "::/entry/x_um")
    scores = {}
    for label, data in (("applied", dict(moved, normalisation_dataset=master + "::/entry/ion_chamber")),
                        ("ignored", moved)):
        config = validate_zoo.natural_config(data, spec.propagation, dm_iterations=100, ml_iterations=50)
        result = validate_zoo.reconstruct_and_score(config, case["truth"])
        assert result["error"] is None, result
        scores[label] = result["score"]
    assert scores["applied"] >= 0.985 and scores["applied"] > scores["ignored"] + 0.05, scores


@pytest.mark.slow
def test_strong_phase_object_holds_no_ramp_against_the_truth(tmp_path):
    """The zoo's strong-phase scan (seed 21), mPIE 50 from the default start, compared by shift and global
    phase only (as the foreign scans' README scores): 0.225 before (a ramp of 1.1 / -0.55 cycles across the
    field), 0.999 with the ramp moved to the probe (``phase_ramp: auto``, the default)."""
    spec = dataclasses.replace(next(c for c in validate_zoo.CASES if c.name == "strong_phase"), seed=21)
    case = zoo_sim.build_case(spec, str(tmp_path))
    config = validate_zoo.natural_config(case["data_section"], spec.propagation,
                                         chain=[("mPIE", 50)])
    result = validate_zoo.reconstruct_and_score(config, case["truth"])
    assert result["error"] is None, result
    assert result["score_no_ramp"] >= 0.98, result


@pytest.mark.slow
@pytest.mark.parametrize("name, chain, low", [("ptylab_defocused", [("mPIE", 100)], 0.98),
                                              ("lowdose_1e4", [("LSQML", 100)], 0.85)])
def test_probe_rule_finds_the_beam_despite_faint_power_to_one_side(tmp_path, name, chain, low):
    """Zoo scans whose reconstructed probe carries faint far-field power off to one side, scored by shift and
    global phase only: the intensity centroid read it as a tilt of the beam (mPIE 100 on ptylab_defocused 0.946,
    LSQML 100 on lowdose_1e4 0.541); the centre of symmetry of the far-field intensity does not (0.988, 0.888)."""
    spec = next(c for c in validate_zoo.CASES if c.name == name)
    case = zoo_sim.build_case(spec, str(tmp_path))
    config = validate_zoo.natural_config(case["data_section"], spec.propagation, chain=chain)
    result = validate_zoo.reconstruct_and_score(config, case["truth"])
    assert result["error"] is None, result
    assert result["score_no_ramp"] >= low, result


@pytest.mark.slow
def test_probe_rule_centres_the_beam_where_it_meets_the_detector(tmp_path, monkeypatch):
    """A measured beam need not meet the detector at its centre pixel: the zoo's zoneplate_defocus5 frames moved
    by two pixels along x (as if the beam fell there; the object is unchanged). mPIE 100 from the default
    start, scored by shift and global phase: the mean pattern's centre of symmetry is found 1.94 px off the
    detector centre (the object's own deflection: -0.06 px, also without the move), the probe rule centres the
    beam there, 0.937; on the detector centre it would put 2/64 cycle per pixel of ramp into the object."""
    import h5py

    from ptycli.engines import phase_ramp as rules

    spec = next(c for c in validate_zoo.CASES if c.name == "zoneplate_defocus5")
    case = zoo_sim.build_case(spec, str(tmp_path))
    with h5py.File(case["data_section"]["dfile"], "r+") as f:
        for name in f["chunks"]:
            frames = f["chunks"][name]["data"]
            frames[...] = np.roll(frames[...], 2, axis=-1)
    config = validate_zoo.natural_config(case["data_section"], spec.propagation, chain=[("mPIE", 100)])
    scores = {}
    for label, offset in (("auto", rules.BEAM_OFFSET_PX), ("detector centre", 1e9)):
        monkeypatch.setattr(rules, "BEAM_OFFSET_PX", offset)
        result = validate_zoo.reconstruct_and_score(config, case["truth"])
        assert result["error"] is None, result
        assert result["score"] >= 0.98, result  # with the ramp removed, either way
        scores[label] = result["score_no_ramp"]
    assert scores["auto"] >= 0.92 and scores["detector centre"] < 0.5, scores


def scores_by_option(spec, folder, engine, numiter, option, values):
    """``{value: score}`` of ``engine`` (``numiter`` iterations from the default start) on the zoo case
    ``spec`` written to ``folder``, once per value of the engine option ``option``."""
    case = zoo_sim.build_case(spec, str(folder))
    scores = {}
    for value in values:
        config = validate_zoo.natural_config(case["data_section"], spec.propagation,
                                             chain=[(engine, numiter, {option: value})])
        result = validate_zoo.reconstruct_and_score(config, case["truth"])
        assert result["error"] is None, result
        scores[value] = result["score"]
    return scores


#: a far-field scan whose defocused probe (ring radius 26 px) fills most of its 64 x 64 frame
FILLED_FRAME = CaseSpec("filled_frame", probe="defocused", probe_size_px=26.0, frames=100, overlap=0.8, seed=46)


@pytest.mark.slow
def test_probe_that_fills_its_frame_takes_the_object_rule(tmp_path):
    """A far-field scan whose defocused probe (ring radius 26 px) fills its 64 x 64 frame (2.5 % of its power
    within 4 px of the edges; an oversampling ratio near 1), DM 200 + ML 100 from the default start, scored
    by shift and global phase: the reconstructed probe's far-field intensity is 0.002-0.004 cycles per pixel
    off the pupil's symmetry, so the probe rule leaves a ramp in the object (0.933); ``auto`` takes the object
    rule for such a probe (0.994). Ramp-removed, both 0.99."""
    case = zoo_sim.build_case(FILLED_FRAME, str(tmp_path))
    scores = {}
    for rule in ("auto", "probe"):
        config = validate_zoo.natural_config(case["data_section"], FILLED_FRAME.propagation,
                                             chain=[("DM", 200), ("ML", 100, {"phase_ramp": rule})])
        result = validate_zoo.reconstruct_and_score(config, case["truth"])
        assert result["error"] is None, result
        assert result["score"] >= 0.98, result
        scores[rule] = result["score_no_ramp"]
    assert scores["auto"] >= 0.98 and scores["probe"] < scores["auto"] - 0.03, scores


@pytest.mark.slow
def test_raar_support_holds_a_probe_that_fills_its_frame(tmp_path):
    """The scan of the test above (a defocused probe of ring radius 26 px in 64 x 64 frames), RAAR 200 from the
    default start: inside ``probe_support: 0.8`` (RAAR's ``auto`` until 2026-12-06) the probe is cut, 0.734;
    ``auto`` (1.0, the ellipse inscribed in the frame, as DM's) 0.991."""
    scores = scores_by_option(FILLED_FRAME, tmp_path, "RAAR", 200, "probe_support", ("auto", 0.8))
    assert scores["auto"] >= 0.98 and scores[0.8] < 0.9, scores


#: a near-field scan lit by a plain aperture (a flat disc of radius 20 px in 64 x 64 frames, dark around it)
NEAR_APERTURE = CaseSpec("near_aperture", probe="aperture", probe_size_px=20.0, propagation="nearfield", frames=100,
                         seed=42)


@pytest.mark.slow
def test_mpie_near_field_aperture_takes_the_larger_alpha(tmp_path):
    """mPIE 100 from the default start on a near-field scan with an aperture probe: with ``alpha`` 0.1 (the
    far-field default) the Fourier error falls for 10 iterations and then grows (from the true probe, held
    fixed, too) and the object is lost (0.17 by shift, ramp and phase); ``auto`` takes 0.3 in the near field
    (0.71; ePIE 100 0.77, DM 200 + ML 100 0.89 still converge there)."""
    scores = scores_by_option(NEAR_APERTURE, tmp_path, "mPIE", 100, "alpha", ("auto", 0.1))
    assert scores["auto"] >= 0.65 and scores[0.1] < 0.4, scores


#: a near-field scan lit by a defocused beam of ring radius 24 px (with its fringes, most of its 64 x 64 frame)
NEAR_DEFOCUSED = CaseSpec("near_defocused", probe="defocused", probe_size_px=24.0, propagation="nearfield",
                          frames=100, seed=71)


@pytest.mark.slow
def test_near_field_support_holds_a_wide_defocused_beam(tmp_path):
    """mPIE 100 from the default start on a near-field scan of a defocused beam (ring radius 24 px in 64 x 64
    frames): the far-field support of the PIE family (0.8 of half the frame) cuts the beam and the object is
    lost (0.16); ``auto`` is 1.0 in the near field (0.975)."""
    scores = scores_by_option(NEAR_DEFOCUSED, tmp_path, "mPIE", 100, "probe_support", ("auto", 0.8))
    assert scores["auto"] >= 0.95 and scores[0.8] < 0.4, scores


FOREIGN_NEARFIELD = os.path.join(validate_zoo.FOREIGN_DIR, validate_zoo.FOREIGN["foreign_nearfield"][0])


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(FOREIGN_NEARFIELD), reason="shared foreign scans absent")
def test_near_field_object_holds_no_ramp_against_the_truth():
    """The foreign near-field scan (a diffuser probe, written by another package), DM 200 + ML 100 from the
    default start, scored by shift and global phase only (as its README scores): with ``phase_ramp: auto``
    the object's mean phase gradient goes to the probe, 0.994. How much ramp the object holds when left
    where the reconstruction put it (``none``) is the engines' drift, not a property of the data: 0.45
    cycles across the field (score 0.349) before DM bounded its Fourier step by the noise floor, 0.71 after;
    so only the rule's result is asserted."""
    fname, loader, propagation = validate_zoo.FOREIGN["foreign_nearfield"]
    truth = dict(np.load(FOREIGN_NEARFIELD.rsplit(".", 1)[0] + "_truth.npz"))
    config = validate_zoo.natural_config({"name": loader, "dfile": FOREIGN_NEARFIELD}, propagation,
                                         chain=[("DM", 200), ("ML", 100, {"phase_ramp": "auto"})])
    result = validate_zoo.reconstruct_and_score(config, truth)
    assert result["error"] is None, result
    assert result["score_no_ramp"] >= 0.97, result
    assert result["score"] >= 0.98, result  # the ramp-removing score
