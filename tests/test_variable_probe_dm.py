"""Variable probe (OPR) in DM and RAAR (issue 16): the least-squares probe step, a small fly scan, MPI, ground truth.

The probe step is :mod:`ptycli.engines.projection_variable`; the model and
the PIE/LSQML side are tested in ``test_variable_probe.py``.
"""

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))

import sim_flyscan as sf  # noqa: E402

_RUN = """
verbose_level: error
data_type: double
scans:
  MF:
    data: {name: MoonFlowerScan, shape: 32, num_frames: 30, photons: 1.0e7, seed: 5}
    illumination: {variable_modes: 3}
engines:
  e: {name: DM, numiter: 1}
"""


def _engine():
    """A DM engine on the 30-frame scan with 3 eigen-probes (double precision), initialised."""
    from ptycli.core.ptycho import Ptycho
    from ptycli.engines import make_engine
    from ptycli.params.yamlio import load_config_text

    P = Ptycho(load_config_text(_RUN), level=2)
    e = make_engine(P, {"name": "DM", "numiter": 1})
    e.initialize()
    return P, e


def _known_model(g, rng):
    """Random eigen-probes, weights and object in the group's storages; exit waves = O_j P_j. Returns (U, W)."""
    K, H, W_ = g.probe.data.shape
    y, x = np.mgrid[:H, :W_] - H / 2
    U = np.array([np.exp(-(x ** 2 + y ** 2) / 60.0) * (rng.normal(size=(H, W_)) + 1j * rng.normal(size=(H, W_)))
                  for _ in range(K)])
    Wt = rng.normal(size=(g.n_frames, K)) + 1j * rng.normal(size=(g.n_frames, K))
    g.obj.data[...] = np.exp(1j * rng.uniform(0, 1, g.obj.data.shape)) * rng.uniform(0.5, 1.0, g.obj.data.shape)
    g.probe.data[...] = U
    g.probe_weights[g.frame_di] = Wt
    g.write_exit(g.gather_product(g.obj.data, g.model_probe()))
    return U, Wt


def test_least_squares_steps_recover_known_eigenprobes_and_weights():
    """On noiseless exit waves ``psi_j = O_j sum_k w_jk U_k`` the per-pixel step gives the true eigen-probes from
    any start (exact, double precision), and the per-frame weight step the true weights (the Tikhonov damping
    of the change leaves 1e-3 of the error after one step, 1e-6 after two); the frames' probes the pods
    address follow."""
    from ptycli.engines.projection_variable import eigenprobe_sums, solve_eigenprobes, weight_sums

    P, e = _engine()
    g = e.book.groups[0]
    assert g.frame_probes and g.pod_probe_rows is g.frame
    rng = np.random.default_rng(1)
    U, Wt = _known_model(g, rng)
    blocks = g.blocks(7)
    K, H, W_ = U.shape
    # eigen-probes from a wrong start, no inertia
    g.probe.data[...] = rng.normal(size=U.shape)
    A, B = np.zeros((K, K, H * W_), complex), np.zeros((K, H * W_), complex)
    eigenprobe_sums(g, blocks, A, B)
    solve_eigenprobes(A, B, g.probe.data, 0.0)
    lit = np.abs(U).sum(axis=0) > 1e-6 * np.abs(U).max()
    np.testing.assert_allclose(g.probe.data[:, lit], U[:, lit], rtol=0, atol=1e-9 * np.abs(U).max())
    # weights from a wrong start: two damped least-squares steps
    g.probe.data[...] = U
    start = Wt + 0.3 * (rng.normal(size=Wt.shape) + 1j * rng.normal(size=Wt.shape))
    g.probe_weights[g.frame_di] = start
    errors = []
    for _ in range(2):
        g.probe_weights[g.frame_di] += weight_sums(g, blocks, g.probe.data)
        errors.append(np.abs(g.probe_weights[g.frame_di] - Wt).max() / np.abs(start - Wt).max())
    assert 1e-5 < errors[0] < 1e-2 and errors[1] < 1e-5, errors
    np.testing.assert_allclose(g.model_probe(), np.einsum("fk,khw->fhw", g.probe_weights[g.frame_di], U), atol=1e-9)


def test_probe_step_and_gauge_keep_a_consistent_model_still():
    """At the exact model (exit waves = O_j P_j) a whole probe step with inertia changes no frame's probe, and the
    gauge that follows an iteration leaves every frame's probe as it was."""
    from ptycli.engines.projection_variable import probe_step
    from ptycli.engines.variable_probe import refactor_book

    P, e = _engine()
    g = e.book.groups[0]
    U, Wt = _known_model(g, np.random.default_rng(2))
    change, norm = probe_step([g], {id(g): g.blocks(5)}, g.probe.data, 1e-3)
    assert change < 1e-18 * norm and norm > 0
    before = g.model_probe().copy()
    refactor_book(e.book)
    W = g.probe_weights
    np.testing.assert_allclose(W.conj().T @ W / len(W), np.eye(3), atol=1e-10)
    np.testing.assert_allclose(g.model_probe(), before, atol=1e-10 * np.abs(before).max())


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["DM", "RAAR"])
def test_small_fly_scan_variable_probe_beats_one_probe(tmp_path, engine):
    """DM / RAAR 40 with 2 eigen-probes on a small simulated fly scan (64 frames of 32^2; flux +-30 %, beam
    +-1.5 px, defocus +-15 depths of field) against one shared probe from the same start. Measured (all
    frames): DM 0.79 worst / 0.91 median, object 0.994, Fourier error 28; one probe 0.86 / 0.86, object 0.933,
    Fourier error 379; RAAR 0.79 / 0.91, 0.993, 23; one probe 0.85 / 0.86, 0.934, 359. (The worst frame of
    two eigen-probes after 40 iterations is below one probe's: not asserted.)"""
    import validate_opr as vo
    from ptycli.core.ptycho import Ptycho
    from ptycli.quality import object_vs_truth

    spec = sf.Spec(frame=32, probe_radius_px=6.0, lines=8, per_line=8, step_px=3.0, shift_px=1.5, defocus_dof=15.0,
                   photons=1e6, seed=3)
    truth = sf.simulate(spec, tmp_path / "scan.npz")
    res = {}
    pars = {"name": engine, "numiter": 40}
    pars["fourier_relax_factor"] = 0.05  # the power bound auto takes with a variable probe, given to one probe too
    for K in (2, 0):
        P = Ptycho(vo.config(str(tmp_path), spec, K, {"e": dict(pars)}), level=3)
        obj = object_vs_truth(P, dict(object=truth["object"], object_center=truth["object_center"]))["correlation"]
        probes = vo.probe_scores(vo.frame_probes(P)[::2], truth["probes"][::2])
        res[K] = (probes, obj, P.runtime.history[-1]["fourier_error"])
    (pv, ov, ev), (p1, o1, e1) = res[2], res[0]
    assert ov > 0.98 and ov > o1 + 0.03, (ov, o1)
    assert np.median(pv) > np.median(p1) + 0.03, (np.median(pv), np.median(p1))
    assert ev < 0.2 * e1, (ev, e1)


def test_exit_waves_start_from_every_frame_probe():
    """The exit waves a model starts from (a resume from a result without them) are ``O_j P_j`` with each frame's
    own probe, not the first eigen-probe's."""
    from ptycli.core.ptycho import Ptycho
    from ptycli.params.yamlio import load_config_text

    P = Ptycho(load_config_text(_RUN), level=2)
    model = P.scans["MF"]
    rng = np.random.default_rng(3)
    W = model.probe_weights
    W[...] = rng.normal(size=W.shape) + 1j * rng.normal(size=W.shape)
    model.init_exit()
    U = P.probe.S["SMF"].data
    for pod in model.pods[::7]:
        row = int(pod.di_view.dlayer)
        np.testing.assert_allclose(pod.exit, np.einsum("k,khw->hw", W[row], U) * pod.object, atol=1e-12)


def test_dm_after_epie_starts_from_every_frame_probe():
    """A chain ePIE -> DM keeps the variable probe: DM rebuilds the exit waves ePIE gave back as ``O_j P_j`` with
    the weights ePIE left (not the first eigen-probe), and its first iteration moves on from them."""
    from ptycli.core.ptycho import Ptycho
    from ptycli.engines import make_engine
    from ptycli.params.yamlio import load_config_text

    P = Ptycho(load_config_text(_RUN), level=2)
    e = make_engine(P, {"name": "ePIE", "numiter": 3})
    e.initialize()
    e.iterate(3)
    e.finalize()
    W = P.scans["MF"].probe_weights.copy()
    assert np.abs(W[:, 1:]).max() > 1e-3  # ePIE gave the frames different probes
    d = make_engine(P, {"name": "DM", "numiter": 1})
    d.initialize()
    g = d.book.groups[0]
    U = P.probe.S["SMF"].data
    probes = np.einsum("fk,khw->fhw", W[g.frame_di], U)
    np.testing.assert_allclose(g.read_exit(), g.gather_object(g.obj.data) * probes[g.frame], atol=1e-12)
    d.iterate(1)
    d.finalize()
    assert np.all(np.isfinite(P.scans["MF"].probe_weights))


_MPI_SIM = """\
verbose_level: warning
data_type: double
scans:
  MF:
    name: Full
    propagation: farfield
    data: {name: MoonFlowerScan, shape: 32, num_frames: 40, density: 0.2, photons: 1.0e8,
           add_poisson_noise: true, seed: 0}
"""

_MPI_REC = """\
verbose_level: warning
data_type: double
scans:
  MF:
    name: Full
    propagation: farfield
    data: {name: Hdf5Scan, dfile: %s}
    illumination: {variable_modes: 2}
engines:
  a: {name: DM, numiter: 4, probe_update_start: 1}
  b: {name: RAAR, numiter: 3}
"""


@pytest.mark.mpi
def test_two_ranks_agree_with_one_process(tmp_path):
    """DM and RAAR with a variable probe under mpirun (2 ranks) end as one process does (double precision): object,
    eigen-probes and records to 1e-10, and the weights of every frame."""
    import mpi_helpers as mh
    from ptycli.io import load_reconstruction

    if mh.skip_reason():
        pytest.skip(mh.skip_reason())
    sim = tmp_path / "sim.yaml"
    sim.write_text(_MPI_SIM)
    data = tmp_path / "scan.h5"
    assert mh.ptycli(["simulate", sim, "-o", data, "--force"]).returncode == 0
    rec = tmp_path / "rec.yaml"
    rec.write_text(_MPI_REC % data)
    one, two = tmp_path / "one.h5", tmp_path / "two.h5"
    for out, n in ((one, None), (two, 2)):
        res = mh.ptycli(["reconstruct", rec, "-o", out, "--force", "--json"], nprocs=n, timeout=180)
        assert res.returncode == 0, res.describe()
    diffs = mh.compare(two, one)
    assert max(diffs.values()) <= 1e-10, diffs
    a, b = load_reconstruction(one), load_reconstruction(two)
    Wa, Wb = a.scans["MF"]["probe_weights"], b.scans["MF"]["probe_weights"]
    assert Wa.shape == (40, 2) and np.std(np.abs(Wa[:, 1])) > 0
    assert np.abs(Wa - Wb).max() <= 1e-9 * np.abs(Wa).max()


# -- ground truth: the fly scan of issue 16 -----------------------------------------------------------------------

@pytest.mark.slow
def test_fly_scan_dm_variable_probe_against_one_probe(tmp_path):
    """Issue 16's fly scan (flux +-30 %, beam +-2 px, defocus +-20 depths of field; ``benchmarks/sim_flyscan.py``)
    with DM 200 and 3 eigen-probes from the data-driven guess, against DM 200 with one shared probe.

    Measured (seed 3, 1e6 photons): frames 0.930 worst / 0.985 median, object 0.999; one probe 0.754 / 0.783,
    object 0.952. DM alone stays short of the issue's 0.95 for the worst frames (ePIE 200: 0.971); they lie in
    the middle of the scan, near those a rank-3 model of the true probes fits worst (0.990). Then ePIE 100
    keeping the variable probe: 0.950 / 0.990, object 0.999. (184 s on the busy 2-core machine.)
    """
    import validate_opr as vo

    r = vo.run_case(sf.Spec(photons=1e6), str(tmp_path), {"e": {"name": "DM", "numiter": 200}}, modes=3)
    v, s = r["variable"], r["single"]
    assert v["probe"].min() >= 0.9 and np.median(v["probe"]) >= 0.98 and v["object"] >= 0.99, (
        np.sort(v["probe"])[:5], v["object"])
    assert s["probe"].min() < v["probe"].min() - 0.1 and np.median(s["probe"]) < np.median(v["probe"]) - 0.1
    assert s["object"] < v["object"] - 0.03 and s["fourier_error"] > 3 * v["fourier_error"], (
        s["object"], v["object"], s["fourier_error"], v["fourier_error"])
    assert np.corrcoef(np.abs(v["weights"][:, 0]), r["truth"]["amplitude"])[0, 1] > 0.9


@pytest.mark.slow
def test_fly_scan_dm_four_eigenprobes_meet_the_issue(tmp_path):
    """Issue 16's acceptance with DM alone: 4 eigen-probes (a rank-4 model fits every true probe at >= 0.996),
    DM 200 from the data-driven guess: every frame's probe >= 0.95 and the object >= 0.95; one shared probe
    clearly worse. Measured (seed 3, 1e6 photons): frames 0.956 worst / 0.984 median, object 0.999 (ePIE 200:
    0.980 / 0.991); one probe 0.754 / 0.783, object 0.952."""
    import validate_opr as vo

    # both runs with the power bound 0.05, DM's auto with a variable probe (the one-probe run's auto would be the
    # plain projection, whose worst frame probe is 0.826 against 0.960: the same bound on both sides)
    r = vo.run_case(sf.Spec(photons=1e6), str(tmp_path),
                    {"e": {"name": "DM", "numiter": 200, "fourier_relax_factor": 0.05}}, modes=4)
    v, s = r["variable"], r["single"]
    assert v["probe"].min() >= 0.95 and v["object"] >= 0.95, (np.sort(v["probe"])[:5], v["object"])
    assert s["probe"].min() < v["probe"].min() - 0.15 and s["object"] < v["object"] - 0.03
