"""Variable probe (orthogonal probe relaxation, OPR; issue 16): parameters, the math, the result file, ground truth.

The acceptance test simulates a fly scan whose probe drifts (flux, beam
position, defocus) with the independent simulator ``benchmarks/sim_flyscan.py``
and compares every frame's reconstructed probe and the object with the truth.
"""

import os
import sys

import numpy as np
import pytest

from ptycli.errors import ConfigError

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))

import sim_flyscan as sf  # noqa: E402


# -- parameters ----------------------------------------------------------------------------------

def _tree(engine="ePIE", **illumination):
    return {"scans": {"MF": {"data": {"name": "MoonFlowerScan"}, "illumination": illumination}},
            "engines": {"e": {"name": engine}}}


def test_parameter_declared_and_checked():
    from ptycli.params.scan import ILLUMINATION
    from ptycli.params.tree import validate

    par = ILLUMINATION["variable_modes"]
    assert par.default == 0 and par.low == 0 and "eigen-probes" in par.doc
    assert validate(_tree(variable_modes=3)).scans.MF.illumination.variable_modes == 3
    assert validate(_tree()).scans.MF.illumination.variable_modes == 0
    with pytest.raises(ConfigError, match="variable_modes"):
        validate(_tree(variable_modes=-1))
    tree = _tree(variable_modes=2)
    tree["scans"]["MF"]["coherence"] = {"num_probe_modes": 2}
    with pytest.raises(ConfigError, match="replaces incoherent probe modes, not 2; set coherence.num_probe_modes: 1"):
        validate(tree)
    tree = _tree(variable_modes=2)
    tree["scans"]["MF"]["sample"] = {"slices": 2, "slice_distance_m": 1e-6}
    with pytest.raises(ConfigError, match="not supported with a multislice object"):
        validate(tree)
    tree = _tree(variable_modes=2)
    tree["scans"]["B"] = {"data": {"name": "MoonFlowerScan"}, "probe_share": "MF"}
    with pytest.raises(ConfigError, match="scans.B.probe_share: scan 'MF' has a variable probe"):
        validate(tree)


@pytest.mark.parametrize("engine", ["ML"])
def test_engines_without_variable_probe_refuse(engine):
    import ptycli.engines  # noqa: F401  (registers the engines)
    from ptycli.params.capabilities import capable_engines
    from ptycli.params.tree import validate

    assert {"ePIE", "rPIE", "mPIE", "LSQML", "DM", "RAAR"} <= set(capable_engines("VARIABLE_PROBE"))
    assert engine not in capable_engines("VARIABLE_PROBE")
    tree = _tree(variable_modes=2)
    tree["engines"] = {"first": {"name": "ePIE"}, "x": {"name": engine}}
    with pytest.raises(ConfigError) as err:
        validate(tree)
    msg = str(err.value)
    assert "engines.x: %s does not reconstruct a variable probe (scans.MF.illumination.variable_modes: 2)" % engine \
        in msg and "ePIE" in msg and "\n" not in msg


# -- the math --------------------------------------------------------------------------------------

def _drift_set(N=40, H=24, K=3, seed=0):
    """An exactly rank-K set of smooth probes that drift (amplitude, position, focus), and its factors."""
    from ptycli.core.variable_probe import low_rank

    y, x = np.mgrid[:H, :H] - H // 2
    t = np.linspace(0, 1, N)
    T = np.array([(1 + 0.3 * np.sin(5 * ti)) * np.exp(-((x - 2 * ti) ** 2 + y ** 2) / 30.0)
                  * np.exp(1j * (0.02 + 0.03 * ti) * (x ** 2 + y ** 2)) for ti in t])
    U, W = low_rank(T, K)
    return np.einsum("nk,khw->nhw", W, U), U, W


def _probes(W, U):
    return np.einsum("nk,khw->nhw", W, U)


def test_gauge_keeps_every_probe_and_orders_the_components():
    from ptycli.core.variable_probe import reparametrize

    rng = np.random.default_rng(3)
    K, N = 3, 30
    U = rng.normal(size=(K, 8, 8)) + 1j * rng.normal(size=(K, 8, 8))
    W = rng.normal(size=(N, K)) + 1j * rng.normal(size=(N, K))
    before = _probes(W, U)
    reparametrize(U, W)
    assert np.abs(_probes(W, U) - before).max() < 1e-10 * np.abs(before).max()
    np.testing.assert_allclose(W.conj().T @ W / N, np.eye(K), atol=1e-12)        # weight columns: mean power 1
    gram = U.reshape(K, -1) @ U.reshape(K, -1).conj().T
    power = np.diag(gram).real
    assert np.abs(gram - np.diag(power)).max() < 1e-9 * power[0]                  # orthogonal eigen-probes
    assert np.all(np.diff(power) < 0)                                             # strongest first
    assert abs(np.angle(W[:, 0].sum())) < 1e-12                                   # sum_f w_f0 real, positive
    for k in range(1, K):
        assert abs(np.sin(np.angle((W[:, k] ** 2).sum()))) < 1e-9                 # sum_f w_fk^2 real
        assert np.sum(W[:, k].real * (np.arange(N) - (N - 1) / 2)) >= 0           # rising with the frame index


@pytest.mark.slow
def test_low_rank_and_initial_eigenprobes():
    from ptycli.core.variable_probe import initial_eigenprobes, low_rank

    T, U, W = _drift_set()
    assert np.abs(_probes(W, U) - T).max() < 1e-12 * np.abs(T).max()
    E = initial_eigenprobes(T[0], 5)
    assert np.array_equal(E[0], T[0])
    gram = E.reshape(5, -1) @ E.reshape(5, -1).conj().T
    np.testing.assert_allclose(np.diag(gram).real, np.vdot(T[0], T[0]).real, rtol=1e-12)   # the power of P0
    assert np.abs(gram - np.diag(np.diag(gram))).max() < 1e-10 * gram[0, 0].real           # orthogonal
    U2, W2 = low_rank(T[:, :, :], 1)
    assert U2.shape == (1,) + T.shape[1:] and W2.shape == (len(T), 1)


def test_sweeps_recover_a_known_low_rank_set_of_probes():
    """FrameProbes fed with targets halfway to a known rank-3 set converges to it (the orthogonal iteration)."""
    from ptycli.core.variable_probe import initial_eigenprobes, reparametrize
    from ptycli.engines.variable_probe import FrameProbes

    T, _, _ = _drift_set()
    N, H = T.shape[0], T.shape[1]

    class Group:  # the attributes FrameProbes reads
        shape = (H, H)
        ctype = np.dtype(np.complex128)
        frame_di = np.arange(N)
        probe_weights = np.zeros((N, 3), complex)

    g = Group()
    g.probe_weights[:, 0] = 1.0
    U = initial_eigenprobes(T.mean(0), 3)
    fp = FrameProbes(g)
    rng = np.random.default_rng(1)
    for sweep in range(30):
        fp.begin(U)
        for f in rng.permutation(N):
            P = fp.load(f)
            P[0] += 0.5 * (T[f] - P[0])   # the "PIE step": halfway to the frame's true probe
            fp.feed(f)
        fp.finish()
        reparametrize(U, g.probe_weights)
    err = np.linalg.norm((_probes(g.probe_weights, U) - T).reshape(N, -1), axis=1) / \
        np.linalg.norm(T.reshape(N, -1), axis=1)
    assert err.max() < 1e-6, err.max()   # geometric: 1e-3 after 10 sweeps, 1e-7 after 30


def test_mpie_velocities_follow_the_gauge_and_the_refit():
    """mPIE's probe momentum with a variable probe: after the gauge (``W <- W T``, ``U <- T^-1 U``) the
    velocities and anchors mixed with ``T^-1`` give every frame the same probe velocity ``sum_k w_fk v_k`` and
    progress ``sum_k w_fk (U_k - A_k)`` as before; a refit moves the anchor with the eigen-probes (no progress)."""
    from ptycli.core.variable_probe import reparametrize
    from ptycli.engines.momentum import Momentum

    rng = np.random.default_rng(4)
    K, n, H = 3, 12, 8
    cplx = lambda *s: rng.normal(size=s) + 1j * rng.normal(size=s)  # noqa: E731
    U, W = cplx(K, H, H), cplx(n, K)
    m = Momentum(0.5, 10)
    m.reset("probe", {"S": U})
    m.velocity["probe"]["S"][...] = cplx(K, H, H)
    m.anchor["probe"]["S"][...] = U + 0.1 * cplx(K, H, H)
    per_frame = lambda Wm, X: np.einsum("nk,khw->nhw", Wm, X)  # noqa: E731
    v0, d0 = per_frame(W, m.velocity["probe"]["S"]), per_frame(W, U - m.anchor["probe"]["S"])
    T = reparametrize(U, W)
    assert not np.allclose(T, np.eye(K))                           # a real change of basis
    m.mix_modes("probe", {"S": np.linalg.inv(T).T})
    np.testing.assert_allclose(per_frame(W, m.velocity["probe"]["S"]), v0, atol=1e-10)
    np.testing.assert_allclose(per_frame(W, U - m.anchor["probe"]["S"]), d0, atol=1e-10)
    refit = cplx(K, H, H)
    m.follow("probe", "S", refit)
    U += refit
    np.testing.assert_allclose(per_frame(W, U - m.anchor["probe"]["S"]), d0, atol=1e-10)


def test_share_change_moves_the_frame_by_dP():
    from ptycli.core.variable_probe import frame_probe
    from ptycli.engines.variable_probe import share_change

    rng = np.random.default_rng(5)
    U = rng.normal(size=(3, 8, 8)) + 1j * rng.normal(size=(3, 8, 8))
    w = np.array([1.0, 0.3 - 0.2j, -0.5j])
    dP = rng.normal(size=(8, 8)) + 1j * rng.normal(size=(8, 8))
    before = frame_probe(U, w, np.empty((8, 8), complex))
    share_change(U, w, dP.copy())
    np.testing.assert_allclose(frame_probe(U, w, np.empty((8, 8), complex)), before + dP, atol=1e-12)
    U1 = U[:1].copy()
    share_change(U1, np.array([1.0 + 0j]), dP.copy())   # one eigen-probe of weight 1: the plain probe update
    np.testing.assert_allclose(U1[0], U[0] * 0 + U1[0], atol=0)
    V = np.ones((1, 8, 8), complex)
    share_change(V, np.array([1.0 + 0j]), dP.copy())
    np.testing.assert_allclose(V[0], 1.0 + dP, atol=1e-12)


# -- the model, the result file, resume -----------------------------------------------------------------

_RUN = """
verbose_level: error
scans:
  MF:
    data: {name: MoonFlowerScan, shape: 32, num_frames: 30, photons: 1.0e7, seed: 5}
    illumination: {variable_modes: 2}
engines:
  e: {name: ePIE, numiter: 4, probe_update_start: 1}
"""


def test_model_starts_from_the_configured_probe(tmp_path):
    """Eigen-probes as probe layers (the first = the configured probe), weights (1, 0) per frame; ML refuses."""
    from ptycli.core.ptycho import Ptycho
    from ptycli.engines import make_engine
    from ptycli.params.yamlio import load_config_text

    p = load_config_text(_RUN)
    P = Ptycho(p, level=2)
    S = P.probe.S["SMF"]
    model = P.scans["MF"]
    assert S.data.shape == (2, 32, 32) and S.variable_modes == 2
    p0 = load_config_text(_RUN.replace("variable_modes: 2", "variable_modes: 0"))
    single = Ptycho(p0, level=2).probe.S["SMF"].data
    np.testing.assert_array_equal(S.data[0], single[0])
    assert abs(np.vdot(S.data[0], S.data[1])) < 1e-4 * np.vdot(S.data[0], S.data[0]).real
    assert model.probe_weights.shape == (30, 2)
    np.testing.assert_array_equal(model.probe_weights, np.tile([1.0, 0.0], (30, 1)))
    with pytest.raises(ConfigError, match="ML does not reconstruct a variable probe"):
        make_engine(P, {"name": "ML", "numiter": 1}).initialize()


@pytest.mark.parametrize("engine", ["ePIE", pytest.param("mPIE", marks=pytest.mark.slow),
                                    pytest.param("DM", marks=pytest.mark.slow)])
def test_result_file_inspect_and_resume(tmp_path, engine):
    """The result holds the eigen-probes and the weights; inspect names them; a resumed run ends exactly as an
    uninterrupted one (weights read back; mPIE: also its velocities, which follow the eigen-probes' gauge; DM:
    also its exit waves);
    another number of eigen-probes is refused."""
    from ptycli.io import load_reconstruction

    from cli_helpers import invoke
    from reliability_helpers import assert_clean_error, reconstruct_text

    # mPIE: a momentum step every 7 frames, so that the resumed run starts with velocities in mid-build
    run = _RUN.replace("name: ePIE", "name: %s" % engine + (", momentum_interval: 7" if engine == "mPIE" else ""))
    if engine == "DM":  # DM carries its exit waves: the result keeps them for an exact resume
        run += "io: {keep_exit_waves: true}\n"
    res, out = reconstruct_text(tmp_path, run)
    assert res.exit_code == 0, res.stderr
    rec = load_reconstruction(out)
    W = rec.scans["MF"]["probe_weights"]
    assert W.shape == (30, 2) and rec.probes["SMF"].shape == (2, 32, 32)
    assert rec.probe_meta["SMF"]["variable_modes"] == 2
    np.testing.assert_allclose(W.conj().T @ W / 30, np.eye(2), atol=1e-6)   # the gauge: columns of mean power 1
    assert np.std(np.abs(W[:, 1])) > 0                                         # the frames' probes differ
    shown = invoke("inspect", out).stdout
    assert "2 eigen-probes" in shown and "30 frames x 2 eigen-probes" in shown
    # resume: 4 + 2 iterations; the weights were read back (a run from scratch would restart them)
    res = invoke("reconstruct", tmp_path / "run.yaml", "-o", tmp_path / "more.h5", "--resume", out,
                 "--set", "engines.e.numiter=6")
    assert res.exit_code == 0, res.stderr
    more = load_reconstruction(tmp_path / "more.h5")
    assert more.total_iterations == 6
    straight = tmp_path / "straight.h5"
    assert invoke("reconstruct", tmp_path / "run.yaml", "-o", straight, "--set", "engines.e.numiter=6").exit_code == 0
    a = load_reconstruction(straight)
    np.testing.assert_array_equal(more.scans["MF"]["probe_weights"], a.scans["MF"]["probe_weights"])
    np.testing.assert_array_equal(more.probe, a.probe)
    np.testing.assert_array_equal(more.object, a.object)
    res = invoke("reconstruct", tmp_path / "run.yaml", "-o", tmp_path / "bad.h5", "--resume", out,
                 "--set", "scans.MF.illumination.variable_modes=3")
    assert_clean_error(res, 2, "variable_modes is 2 in the checkpoint but 3")


@pytest.mark.slow
def test_plot_draws_the_weights(tmp_path):
    """``ptycli plot`` of a variable-probe result adds a row: the weights against the frame index."""
    pytest.importorskip("matplotlib")
    from matplotlib.image import imread

    from cli_helpers import invoke
    from reliability_helpers import reconstruct_text

    res, out = reconstruct_text(tmp_path, _RUN.replace("variable_modes: 2", "variable_modes: 1"))
    assert res.exit_code == 0, res.stderr
    assert invoke("plot", out, "-o", tmp_path / "var.png").exit_code == 0
    one = tmp_path / "one"
    one.mkdir()
    res, out1 = reconstruct_text(one, _RUN.replace("variable_modes: 2", "variable_modes: 0"))
    assert res.exit_code == 0, res.stderr
    assert invoke("plot", out1, "-o", one / "fixed.png").exit_code == 0
    hv, h1 = imread(tmp_path / "var.png").shape[0], imread(one / "fixed.png").shape[0]
    assert hv > 1.15 * h1, (hv, h1)


@pytest.mark.mpi
def test_two_ranks_keep_the_eigenprobes_equal(tmp_path):
    """Under mpirun (2 ranks) ePIE/rPIE/mPIE/DM/RAAR with a variable probe keep probe and object equal on every rank
    and communicate only numpy buffers (the gauge's and the fit's sums; DM/RAAR: the per-pixel systems)."""
    import json

    import mpi_helpers as mh

    reason = mh.skip_reason()
    if reason:
        pytest.skip(reason)
    cfg = tmp_path / "run.yaml"
    cfg.write_text(_RUN)
    res = mh.run([mh.__file__, "engines", cfg, "ePIE:4", "rPIE:3", "mPIE:3", "DM:3", "RAAR:3"], nprocs=2, timeout=120)
    assert res.returncode == 0, res.describe()
    report = json.loads(res.stdout)
    for name, info in report["engines"].items():
        assert info["replicas_equal"] and info["frames_per_rank"] == [15, 15], name
        assert all(it["object_calls"] == 0 for it in info["iterations"]), name


# -- ground truth: a fly scan whose probe drifts ------------------------------------------------------------

@pytest.mark.slow
def test_fly_scan_every_frame_probe_recovered_where_one_probe_fails(tmp_path):
    """Issue 16 acceptance: a simulated fly scan whose probe drifts (flux +-30 %, beam +-2 px, defocus +-20
    depths of field; 3 eigen-modes describe every true probe at >= 0.99), ePIE 200 from the data-driven
    probe guess with 3 eigen-probes: every frame's probe >= 0.95 and the object >= 0.95; one shared probe
    from the same start scores clearly worse, in either visiting order.

    Measured (seed 3, 1e6 photons per frame): frames 0.971 worst / 0.988 median, object 0.999; one probe
    0.706 / 0.827, object 0.969 (random order), 0.808 / 0.902, object 0.993 (alternating order: the
    sequential probe follows the drift in part).
    """
    import validate_opr as vo

    engines = {"e": {"name": "ePIE", "numiter": 200}}
    r = vo.run_case(sf.Spec(photons=1e6), str(tmp_path), engines, modes=3, single_alternate=True)
    v = r["variable"]
    assert v["probe"].min() >= 0.95, np.sort(v["probe"])[:5]
    assert v["object"] >= 0.95
    for key in ("single", "single_alternate"):
        s = r[key]
        assert s["probe"].min() < v["probe"].min() - 0.15 and np.median(s["probe"]) < np.median(v["probe"]) - 0.05, key
        assert s["object"] < v["object"] and s["fourier_error"] > 1.2 * v["fourier_error"], (
            key, s["object"], v["object"], s["fourier_error"], v["fourier_error"])
    assert r["single"]["object"] < v["object"] - 0.02
    # the weights follow the flux: |w_0| correlates with the true amplitude factor
    assert np.corrcoef(np.abs(v["weights"][:, 0]), r["truth"]["amplitude"])[0, 1] > 0.9


@pytest.mark.slow
def test_fly_scan_acceptance_with_mpie(tmp_path):
    """The issue's acceptance with mPIE 60 (defaults): every frame's probe >= 0.95 and the object >= 0.95 with 3
    eigen-probes; one shared probe from the same start clearly worse. Measured (seed 3, 1e6 photons): frames
    0.963 worst / 0.981 median, object 0.997; one probe 0.723 / 0.855, object 0.967."""
    import validate_opr as vo

    r = vo.run_case(sf.Spec(photons=1e6), str(tmp_path), {"e": {"name": "mPIE", "numiter": 60}}, modes=3)
    v, s = r["variable"], r["single"]
    assert v["probe"].min() >= 0.95 and v["object"] >= 0.95, (np.sort(v["probe"])[:5], v["object"])
    assert s["probe"].min() < v["probe"].min() - 0.15 and np.median(s["probe"]) < np.median(v["probe"]) - 0.05
    assert s["object"] < v["object"] - 0.02 and s["fourier_error"] > 1.2 * v["fourier_error"], (
        s["object"], v["object"], s["fourier_error"], v["fourier_error"])


@pytest.mark.slow
def test_random_order_leaves_the_far_end_of_a_drift(tmp_path):
    """Why ``order: auto`` visits a variable probe's frames in acquisition order: in a random order the object
    takes up part of the slow drift and the frames at its far end stay below 0.9 (measured 0.77 after ePIE 100,
    0.79 after 200)."""
    import validate_opr as vo

    engines = {"e": {"name": "ePIE", "numiter": 100, "order": "random"}}
    truth = sf.simulate(sf.Spec(photons=1e6), tmp_path / "scan.npz")
    from ptycli.core.ptycho import Ptycho

    P = Ptycho(vo.config(str(tmp_path), sf.Spec(photons=1e6), 3, engines), level=3)
    scores = vo.probe_scores(vo.frame_probes(P), truth["probes"])
    assert scores.min() < 0.9 and np.median(scores) > 0.85, (scores.min(), np.median(scores))


@pytest.mark.slow
def test_true_per_frame_probes_are_kept(tmp_path):
    """Started from the true eigen-probes and weights (the truncated SVD of the true probes) and a flat object,
    ePIE 30 keeps every frame's probe at >= 0.95 (measured 0.985) and recovers the object (>= 0.99)."""
    import validate_opr as vo
    from ptycli.core.ptycho import Ptycho
    from ptycli.core.variable_probe import low_rank
    from ptycli.engines import make_engine
    from ptycli.quality import object_vs_truth

    spec = sf.Spec(photons=1e6)
    truth = sf.simulate(spec, tmp_path / "scan.npz")
    P = Ptycho(vo.config(str(tmp_path), spec, 3, {}), level=2)
    U, W = low_rank(truth["probes"], 3)
    P.probe.S["Sfly"].data[...] = U
    P.scans["fly"].probe_weights[...] = W
    e = make_engine(P, {"name": "ePIE", "numiter": 30})
    e.initialize()
    e.iterate(30)
    e.finalize()
    scores = vo.probe_scores(vo.frame_probes(P), truth["probes"])
    assert scores.min() >= 0.95, np.sort(scores)[:5]
    obj = object_vs_truth(P, dict(object=truth["object"], object_center=truth["object_center"]))
    assert obj["correlation"] >= 0.99, obj


@pytest.mark.slow
def test_mpie_small_fly_scan_variable_probe_beats_one_probe(tmp_path):
    """mPIE with 2 eigen-probes on a small simulated fly scan (64 frames of 32^2; flux +-30 %, beam +-1.5 px,
    defocus +-15 depths of field) against mPIE with one shared probe, both 20 iterations from the data-driven
    guess (every other frame scored). Measured: frames 0.82 worst / 0.93 median, object 0.993, Fourier error
    1.9; one probe 0.79 / 0.87, object 0.957, Fourier error 24. The full-size case is
    ``benchmarks/validate_opr.py --engine mPIE:60``."""
    import validate_opr as vo
    from ptycli.core.ptycho import Ptycho
    from ptycli.quality import object_vs_truth

    spec = sf.Spec(frame=32, probe_radius_px=6.0, lines=8, per_line=8, step_px=3.0, shift_px=1.5, defocus_dof=15.0,
                   photons=1e6, seed=3)
    truth = sf.simulate(spec, tmp_path / "scan.npz")
    res = {}
    for K in (2, 0):
        P = Ptycho(vo.config(str(tmp_path), spec, K, {"e": {"name": "mPIE", "numiter": 20}}), level=3)
        obj = object_vs_truth(P, dict(object=truth["object"], object_center=truth["object_center"]))["correlation"]
        probes = vo.probe_scores(vo.frame_probes(P)[::2], truth["probes"][::2])  # every other frame: half the time
        res[K] = (probes, obj, P.runtime.history[-1]["fourier_error"])
    (pv, ov, ev), (p1, o1, e1) = res[2], res[0]
    assert ov > 0.98 and ov > o1 + 0.02, (ov, o1)
    assert np.median(pv) > np.median(p1) + 0.03 and pv.min() > p1.min(), (np.median(pv), np.median(p1))
    assert ev < 0.3 * e1, (ev, e1)
