"""Position refinement (``engines.<label>.position_refinement``) with DM and ML.

MoonFlower scans of 80 noiseless 64 x 64 frames whose reported positions carry
2 pixels (rms per axis) of random error; the error is measured against the
simulation's true positions after removing the mean offset (a global shift of
all positions is not determined by the data). The whole-pixel search runs with
``subpixel: off``; the sub-pixel stage (with the sub-pixel model) has its own
tests at the end.
"""

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from ptycli.cli import main
from ptycli.core import Ptycho
from ptycli.engines import make_engine
from ptycli.engines.posref import PositionRefiner, trial_shifts
from ptycli.errors import ConfigError
from ptycli.utils.parameters import Param

NOISE = 2.0  # pixels, rms per axis


def build(frames=80, shape=64, density=0.1, noise=NOISE, seed=0, scan=None, **data):
    p = Param()
    p["scans.MF.data.name"] = "MoonFlowerScan"
    p["scans.MF.data.shape"] = shape
    p["scans.MF.data.num_frames"] = frames
    p["scans.MF.data.add_poisson_noise"] = False
    p["scans.MF.data.position_noise"] = noise
    p["scans.MF.data.density"] = density
    p["scans.MF.data.seed"] = seed
    for k, v in data.items():
        p["scans.MF.data." + k] = v
    # whole-pixel refinement unless a test asks for the sub-pixel model (the reported positions lie off the grid)
    for k, v in dict({"subpixel": "off"}, **(scan or {})).items():
        p["scans.MF." + k] = v
    return Ptycho(p, level=2)


def positions(P):
    """Object-view coordinates (m) of every frame, (n, 2)."""
    m = P.scans["MF"]
    return np.array([pod.ob_view.coord for pod in m.pods[::m.modes]])


def pixel_errors(P, pos=None):
    """Position errors in pixels against the truth, mean offset removed, (n, 2)."""
    gt = P.scans["MF"].data.ground_truth
    d = ((positions(P) if pos is None else pos) - gt["positions_m"]) / np.asarray(gt["resolution_m"])
    return d - d.mean(axis=0)


def rms(d):
    return float(np.sqrt(np.mean(np.sum(d ** 2, axis=1))))


def run(P, name, numiter, posref=None, label=None, **pars):
    if posref is not None:
        pars["position_refinement"] = posref
    e = make_engine(P, dict(name=name, numiter=numiter, **pars), label or name.lower())
    e.run()
    return e


def check_views_follow_book(P, engine):
    """The object views' buffer addresses equal the address book's windows."""
    for g in engine.book.groups:
        for i, pod in enumerate(g.pods):
            v = pod.ob_view
            assert (int(v.dlow[0]), int(v.dlow[1])) == (int(g.ob_y[i]), int(g.ob_x[i]))
        first = g.pod_start[:-1]
        assert np.array_equal(g.frame_y, g.ob_y[first]) and np.array_equal(g.frame_x, g.ob_x[first])


# -- trial shifts ------------------------------------------------------------------------------

def test_trial_shifts_are_deterministic_nonzero_and_split_independent():
    idx = np.arange(50)
    a = trial_shifts(3, 7, "MF", idx, 6, 2.5)
    assert a.shape == (50, 6, 2) and a.dtype == np.int64
    assert np.all(np.any(a != 0, axis=2))          # never the current position
    assert np.abs(a).max() <= 3                      # rint of [-2.5, 2.5]
    np.testing.assert_array_equal(a, trial_shifts(3, 7, "MF", idx, 6, 2.5))
    # a frame draws the same trials whatever the other frames (MPI split, order)
    np.testing.assert_array_equal(a[[40, 3]], trial_shifts(3, 7, "MF", [40, 3], 6, 2.5))
    # another round, seed or scan draws other trials
    for other in (trial_shifts(3, 8, "MF", idx, 6, 2.5), trial_shifts(4, 7, "MF", idx, 6, 2.5),
                  trial_shifts(3, 7, "XY", idx, 6, 2.5)):
        assert not np.array_equal(a, other)
    # amplitude 1: only the 8 neighbours
    b = trial_shifts(0, 0, "MF", idx, 8, 1.0)
    assert np.abs(b).max() == 1 and np.all(np.any(b != 0, axis=2))
    # roughly uniform over [-a, a]
    c = trial_shifts(1, 0, "MF", np.arange(2000), 4, 3.0)
    assert abs(c.mean()) < 0.1 and set(np.unique(c).tolist()) == {-3, -2, -1, 0, 1, 2, 3}


# -- the Fourier error of trial positions -------------------------------------------------------

def test_trial_errors_match_a_direct_computation():
    """Two probe modes and a mask: the batched errors equal a per-pod computation, shifted or not."""
    P = build(frames=12, shape=32, density=0.2, probe_modes=2, scan={"coherence.num_probe_modes": 2})
    mask = P.mask.S["SMF"].data
    mask[:, :3, :] = 0
    mask[0, 10:14, 5:9] = 0
    e = make_engine(P, dict(name="DM", numiter=3, position_refinement=dict(start=100)), "dm")
    e.initialize()
    e.iterate(3)
    ref = e.posref
    st = ref.groups[0]
    g = st.g
    assert g.modes == 2 and not g.mask_trivial
    cur = st.current()
    shift = np.array([1, -2])
    frames = np.arange(g.n_frames)
    ef = np.repeat(frames, 2)
    eyx = np.empty((2 * g.n_frames, 2), np.int64)
    eyx[0::2] = cur
    eyx[1::2] = cur + shift
    ok = np.all((eyx >= np.repeat(st.lo, 2, axis=0)) & (eyx <= np.repeat(st.hi, 2, axis=0)), axis=1)
    got = ref._errors(st, ef[ok], eyx[ok])
    H, W = g.shape
    ob, pr = g.obj.data, g.probe.data
    want = []
    for k in np.flatnonzero(ok):
        f = ef[k]
        dy, dx = eyx[k] - cur[f]
        inten = 0.0
        for p in range(g.pod_start[f], g.pod_start[f + 1]):
            y, x = g.ob_y[p] + dy, g.ob_x[p] + dx
            w = pr[g.pr_layer[p]].astype(np.complex128) * ob[g.ob_layer[p], y:y + H, x:x + W]
            inten = inten + np.abs(g.propagator.fw(w)) ** 2
        m = g.mask.data[g.frame_ma[f]]
        d = np.sqrt(inten) - np.sqrt(np.maximum(g.diff.data[g.frame_di[f]], 0))
        want.append(float(np.sum(m * d * d)))
    np.testing.assert_allclose(got, want, rtol=2e-3)
    assert ok.sum() > g.n_frames  # some shifted trials were inside the storage


# -- refinement with DM and ML -----------------------------------------------------------------

@pytest.fixture(scope="module")
def dm_refined():
    P = build()
    initial = positions(P)
    before = rms(pixel_errors(P))
    e = run(P, "DM", 60, posref=dict(start=5, interval=2, max_shift=8, amplitude=2))
    return P, e, initial, before


def test_dm_refinement_halves_the_position_error(dm_refined):
    P, e, initial, before = dm_refined
    after = rms(pixel_errors(P))
    assert before > 2.0                              # the scan really is off
    assert after <= 0.5 * before, (before, after)
    # the records carry the refinement statistics on the refinement iterations
    recs = [r for r in P.runtime.history if "posref_moved" in r]
    assert len(recs) == e.posref.rounds == 28        # iterations 5, 7, ..., 59
    assert sum(r["posref_moved"] for r in recs) > 0
    assert recs[0]["posref_amplitude"] == 2.0 and recs[-1]["posref_amplitude"] == 1.0
    check_views_follow_book(P, e)


def test_dm_refined_positions_are_pixel_centres_within_max_shift(dm_refined):
    P, e, initial, before = dm_refined
    final = positions(P)
    S = P.obj.S["SMF"]
    moved = np.any(final != initial, axis=1)
    assert moved.sum() > 40
    # a moved frame sits on the centre pixel of its window
    pc = (final[moved] - S.origin) / S.psize
    np.testing.assert_allclose(pc, np.round(pc), atol=1e-6)
    # never more than max_shift (whole pixels) from the initial window
    shift = np.round(pc) - np.round((initial[moved] - S.origin) / S.psize + 1e-5)
    assert np.all(np.hypot(shift[:, 0], shift[:, 1]) <= 8.0)


@pytest.mark.slow
def test_ml_refinement_halves_the_position_error():
    P = build()
    before = rms(pixel_errors(P))
    # a first object, no refinement; built alone, DM cannot see that ML refines after it (a config's chain
    # gives it probe_support auto's 0.8 then): with 1.0 the probe absorbs the errors, 2.77 -> 3.69 px after ML
    run(P, "DM", 20, probe_support=0.8)
    assert rms(pixel_errors(P)) == before
    # (phase_ramp none: the exit waves checked below are those of probe * object as ML left them)
    e = run(P, "ML", 40, posref=dict(start=0, interval=2, max_shift=8), phase_ramp="none")
    after = rms(pixel_errors(P))
    assert after <= 0.5 * before, (before, after)
    assert e.posref.rounds == 20
    check_views_follow_book(P, e)
    # ML's result is consistent with the moved windows: exit = probe * object at the new place
    pod = P.scans["MF"].pods[40]
    np.testing.assert_allclose(pod.exit, pod.probe * pod.object, rtol=1e-5, atol=1e-3)


@pytest.mark.slow
def test_mpie_refinement_halves_the_position_error():
    """mPIE declares the refinement (whole pixels; the frames' windows move in its sweep): noiseless MoonFlower
    with 2 px rms position errors per axis, mPIE 40 from the default start, measured 2.77 -> 0.00 px rms
    (whole-pixel truth) and an object error of 0.13 against 0.31 without refinement."""
    from ptycli.quality import object_vs_truth

    out = {}
    for posref in (None, dict(start=5, interval=2, max_shift=8, amplitude=2)):
        P = build()
        before = rms(pixel_errors(P))
        e = run(P, "mPIE", 40, posref=posref)
        out[posref is None] = (rms(pixel_errors(P)), object_vs_truth(P)["error"])
    after, err_on = out[False]
    assert before > 2.0 and out[True][0] == before      # without refinement nothing moves
    assert after <= 0.5 * before, (before, after)
    assert e.posref.rounds == 18                       # iterations 5, 7, ..., 39
    check_views_follow_book(P, e)
    assert err_on < 0.8 * out[True][1], out


def test_refinement_off_leaves_positions_unchanged():
    P = build(frames=30, shape=32)
    initial = positions(P)
    e = run(P, "DM", 5)
    assert e.posref is None
    np.testing.assert_array_equal(positions(P), initial)
    assert not any("posref_moved" in r for r in P.runtime.history)
    # declared with defaults: off
    assert e.p.position_refinement.start is None
    e = run(P, "ML", 3, posref=dict(nshifts=8))     # parameters without start: still off
    assert e.posref is None
    np.testing.assert_array_equal(positions(P), initial)


def test_max_shift_is_respected():
    P = build(frames=40, shape=32, density=0.15, noise=3.0)
    S = P.obj.S["SMF"]
    initial = positions(P)
    w0 = np.round((initial - S.origin) / S.psize + 1e-5)
    e = run(P, "DM", 30, posref=dict(start=2, max_shift=1.5, amplitude=4, amplitude_decay=1.0, nshifts=6))
    w1 = np.round((positions(P) - S.origin) / S.psize + 1e-5)
    d = np.hypot(*(w1 - w0).T)
    assert d.max() <= 1.5 and np.any(d > 1.0)        # diagonal neighbours reached, nothing further
    # also through the address book (the initial windows of the refiner)
    st = e.posref.groups[0]
    assert np.all(np.hypot(*(st.current() - st.d0).T) <= 1.5)
    check_views_follow_book(P, e)


def test_stop_and_interval_schedule():
    P = build(frames=20, shape=32)
    e = run(P, "RAAR", 12, posref=dict(start=3, stop=9, interval=2))
    assert isinstance(e.posref, PositionRefiner)
    done = [r["iteration"] for r in P.runtime.history if "posref_moved" in r]
    assert done == [4, 6, 8]                         # after engine iterations 3, 5, 7 (0-based)
    with pytest.raises(ConfigError, match="stop"):
        run(P, "DM", 2, posref=dict(start=5, stop=5))


@pytest.mark.slow
def test_same_seed_same_result_other_seed_other_trials():
    def once(seed):
        P = build(frames=30, shape=32, density=0.15)
        run(P, "DM", 12, posref=dict(start=2, seed=seed, max_shift=6))
        return positions(P), P.obj.S["SMF"].data.copy(), [r["posref_moved"] for r in P.runtime.history
                                                           if "posref_moved" in r]
    a, b, c = once(0), once(0), once(1)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert a[2] == b[2]
    assert not np.array_equal(a[0], c[0]) or a[2] != c[2]


def test_epie_does_not_declare_refinement():
    P = build(frames=10, shape=32)
    with pytest.raises(ConfigError, match="position_refinement"):
        make_engine(P, dict(name="ePIE", numiter=1, position_refinement=dict(start=0)), "epie")


# -- the result file ---------------------------------------------------------------------------

CONFIG = """
run: posref
io:
  checkpoint: {interval: 10}
scans:
  MF:
    data: {name: MoonFlowerScan, shape: 32, num_frames: 30, density: 0.15, add_poisson_noise: false,
           position_noise: 2.0, seed: 4}
engines:
  dm:
    name: DM
    numiter: 20
    position_refinement: {start: 2, max_shift: 6}
"""


def invoke(*args):
    try:
        r = CliRunner(mix_stderr=False)
    except TypeError:
        r = CliRunner()
    return r.invoke(main, [str(a) for a in args])


@pytest.mark.parametrize("subpixel", ["auto", pytest.param("off", marks=pytest.mark.slow)])
def test_result_file_has_refined_positions_and_resume_agrees(tmp_path, subpixel):
    # the reported positions lie off the grid: auto takes the sub-pixel model (and its refinement stage)
    text = CONFIG.replace("  MF:\n", "  MF:\n    subpixel: %s\n" % subpixel)
    cfg = tmp_path / "posref.yaml"
    cfg.write_text(text)
    full = tmp_path / "full.h5"
    tmpl = "io.checkpoint.path={home}/ck_{iterations}.h5"
    res = invoke("reconstruct", cfg, "-o", full, "--set", "io.home=%s" % tmp_path, "--set", tmpl,
                 "--set", "io.checkpoint.keep=true")
    assert res.exit_code == 0, res.output
    with h5py.File(full, "r") as f:
        pos = f["scans/MF/positions"][()]
        pos0 = f["scans/MF/positions_initial"][()]
        idx = f["scans/MF/indices"][()]
        assert f["scans/MF"].attrs["subpixel"] == ("on" if subpixel == "auto" else "off")
    # positions_initial are the reported positions
    from ptycli.params.yamlio import load_config_text
    from ptycli.params.tree import validate

    P = Ptycho(validate(load_config_text(text, "cfg")), level=2)
    reported = P.scans["MF"].positions_m()
    assert np.array_equal(idx, np.arange(30)) and np.array_equal(P.scans["MF"].data.indices, idx)
    np.testing.assert_array_equal(pos0, reported)
    moved = np.any(pos != pos0, axis=1)
    assert moved.sum() >= 10
    res_m = np.asarray(P.scans["MF"].geometry.resolution)
    assert np.all(np.abs(pos - pos0) / res_m <= 6.5)
    # resuming from the checkpoint of iteration 10 ends with the same positions and object
    resumed = tmp_path / "resumed.h5"
    res = invoke("reconstruct", cfg, "-o", resumed, "--resume", tmp_path / "ck_10.h5",
                 "--set", "io.home=%s/r" % tmp_path, "--set", tmpl)
    assert res.exit_code == 0, res.output
    with h5py.File(resumed, "r") as f, h5py.File(full, "r") as g:
        np.testing.assert_array_equal(f["scans/MF/positions"][()], pos)
        np.testing.assert_array_equal(f["scans/MF/positions_initial"][()], pos0)
        a, b = g["reconstruction/object/SMF"][()], f["reconstruction/object/SMF"][()]
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5 * np.abs(a).max())


# -- the sub-pixel stage (scans.<label>.subpixel on) -------------------------------------------------

@pytest.mark.slow
def test_subpixel_stage_refines_below_whole_pixels():
    # measured (80 frames, 2 px rms per axis, DM 60): whole pixels 0.72 px rms; with the sub-pixel stage 0.15
    P = build(scan={"subpixel": "on"})
    assert P.scans["MF"].subpixel["on"]
    S = P.obj.S["SMF"]
    initial = positions(P)
    e = run(P, "DM", 60, posref=dict(start=5, interval=2, max_shift=8, amplitude=2))
    after = rms(pixel_errors(P))
    assert after < 0.3, after
    check_views_follow_book(P, e)
    # views, address book and model agree: window + remainder = the view's exact position
    g = e.book.groups[0]
    first = g.pod_start[:-1]
    sp = np.array([g.pods[int(p)].ob_view.sp for p in first])
    np.testing.assert_array_equal(sp, g.sub.shifts)
    final = positions(P)
    exact = (final - S.origin) / S.psize
    assert np.abs(exact - np.round(exact)).max() > 0.1  # the positions are no longer pixel centres
    d = (final - initial) / S.psize
    assert np.all(np.hypot(d[:, 0], d[:, 1]) <= 8.0 + 1e-9)  # max_shift on the exact positions
