"""LSQML with a variable probe (OPR) and with a multislice object (issue 16).

Fast: LSQML declares both capabilities; the per-frame weight system recovers
known weight changes exactly (far field, on a real pod group); the frame
probes are the weights times the eigen-probes; LSQML's multislice forward
pass reproduces the independent simulator's frames. Slow: resume continues
both exactly, and the ground truth of ``benchmarks/validate_opr.py`` and
``benchmarks/validate_multislice.py`` with LSQML chains.
"""

import os
import sys

import numpy as np
import pytest

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
if BENCHMARKS not in sys.path:
    sys.path.insert(0, BENCHMARKS)

import sim_flyscan as sf  # noqa: E402
import sim_multislice as sm  # noqa: E402
import validate_multislice as vm  # noqa: E402

_OPR = """
verbose_level: error
data_type: double
scans:
  MF:
    data: {name: MoonFlowerScan, shape: 32, num_frames: 30, photons: 1.0e7, seed: 5}
    illumination: {variable_modes: 2}
engines:
  e: {name: LSQML, numiter: 4, probe_update_start: 1, batch_size: 4}
"""


def test_lsqml_models_both():
    import ptycli.engines  # noqa: F401  (registers the engines)
    from ptycli.params.capabilities import capable_engines

    assert "LSQML" in capable_engines("VARIABLE_PROBE") and "LSQML" in capable_engines("MULTISLICE")


def _opr_engine():
    from ptycli.core.ptycho import Ptycho
    from ptycli.engines import make_engine
    from ptycli.params.yamlio import load_config_text

    P = Ptycho(load_config_text(_OPR), level=2)
    e = make_engine(P, load_config_text(_OPR)["engines"]["e"], "e")
    e.initialize()
    return P, e


def test_frame_probes_and_the_weight_system_recover_known_changes():
    """Every pod's probe is ``w_j @ U``; an exit-wave change ``chi_j = pre O_j sum_k c_jk U_k`` (far field) gives
    back ``c_j`` from the per-frame least-squares system (to its 1e-3 Tikhonov)."""
    from ptycli.engines.lsqml.variable import VariableGroupBatch

    P, e = _opr_engine()
    G = e.groups[0]
    assert isinstance(G, VariableGroupBatch) and G.pre is not None
    rng = np.random.default_rng(1)
    U = P.probe.S["SMF"].data
    U[1] = U[0] * np.exp(1j * rng.uniform(0, 2 * np.pi, U.shape[1:])) * 0.5   # not orthogonal: a K x K system
    W = G.weights
    W[...] = rng.normal(size=W.shape) + 1j * rng.normal(size=W.shape)
    frames = np.array([3, 7, 11])
    pods, starts = G.pods_of(frames)
    rows = G.probe_rows(U, pods)
    expect = np.einsum("pk,khw->phw", W[G.pod_row[pods]], U)
    np.testing.assert_allclose(rows, expect, rtol=1e-12, atol=1e-12 * np.abs(expect).max())
    c_true = rng.normal(size=(len(frames), 2)) + 1j * rng.normal(size=(len(frames), 2))
    obj = P.obj.S["SMF"].data
    ob = G.windows(obj, pods)
    chi = ob * np.einsum("pk,khw->phw", c_true, G.probe_eff(U))
    state = dict(frames=frames, pods=pods, starts=starts, obj=obj, ob=ob, chi=chi)
    got = G.weight_steps(state, U, None, 0.0)
    np.testing.assert_allclose(got, c_true, rtol=0, atol=5e-3 * np.abs(c_true).max())
    before = W[G.g.frame_di[frames]].copy()
    G.apply_weights(state, got)
    np.testing.assert_allclose(W[G.g.frame_di[frames]], before + got)


def test_multislice_forward_pass_fits_the_simulated_frames(tmp_path):
    """True probe and slices, zero steps: LSQML's multislice pass reproduces the simulator's frames (the thin
    product of the slices does not): the exit-wave model under the LSQ directions is the physics."""
    from ptycli.core.ptycho import Ptycho
    from ptycli.engines import make_engine

    spec = sm.Spec(frame=32, steps=4, step_px=5, probe_radius_px=6)
    truth = sm.simulate(spec, tmp_path / "scan.npz")
    np.save(tmp_path / "probe.npy", truth["probe"])

    def misfit(distance):
        P = Ptycho(vm.config(spec, truth, str(tmp_path), 3, {}, data_type="double", slice_distance=distance), level=2)
        S = P.obj.S["Sms"]
        off = vm.truth_offset(S, truth)
        h, w = S.data.shape[-2:]
        S.data[...] = truth["slices"][:, off[0]:off[0] + h, off[1]:off[1] + w]
        # in the model's unit: frames far from photons' scale are divided by intensity_scale as they load
        P.probe.S["Sms"].data[0] = truth["probe"] / np.sqrt(next(iter(P.scans.values())).intensity_scale)
        e = make_engine(P, {"name": "LSQML", "numiter": 1, "object_step": 0.0, "probe_update_start": 10}, "e")
        rec = e.iterate(1)[-1]
        np.testing.assert_array_equal(S.data, truth["slices"][:, off[0]:off[0] + h, off[1]:off[1] + w])
        return rec["fourier_error"]

    dz = truth["slice_distance_m"]
    good, thin = misfit(dz), misfit(1e-12 * dz)
    print("fourier error: true model %.3g, thin %.3g" % (good, thin))
    assert thin > 300 * good, (good, thin)


# -- resume ---------------------------------------------------------------------------------------------------------

def _resume_equals_straight(tmp_path, text, numiter, more, keys):
    from cli_helpers import invoke
    from ptycli.io import load_reconstruction
    from reliability_helpers import reconstruct_text

    res, out = reconstruct_text(tmp_path, text)
    assert res.exit_code == 0, res.stderr
    resumed = tmp_path / "resumed.h5"
    res = invoke("reconstruct", tmp_path / "run.yaml", "-o", resumed, "--resume", out,
                 "--set", "engines.e.numiter=%d" % more)
    assert res.exit_code == 0, res.stderr
    straight = tmp_path / "straight.h5"
    assert invoke("reconstruct", tmp_path / "run.yaml", "-o", straight, "--set",
                  "engines.e.numiter=%d" % more).exit_code == 0
    a, b = load_reconstruction(straight), load_reconstruction(resumed)
    assert a.total_iterations == b.total_iterations == more
    np.testing.assert_array_equal(a.object, b.object)
    np.testing.assert_array_equal(a.probe, b.probe)
    for label, key in keys:
        np.testing.assert_array_equal(a.scans[label][key], b.scans[label][key])
    assert not np.array_equal(a.object, load_reconstruction(out).object)
    return a


@pytest.mark.slow
def test_resume_lsqml_variable_probe(tmp_path):
    """LSQML + OPR: 4 epochs, then --resume to 6 = 6 uninterrupted epochs (weights, eigen-probes, object)."""
    a = _resume_equals_straight(tmp_path, _OPR, 4, 6, [("MF", "probe_weights")])
    W = a.scans["MF"]["probe_weights"]
    np.testing.assert_allclose(W.conj().T @ W / 30, np.eye(2), atol=1e-6)   # the gauge
    assert np.std(np.abs(W[:, 1])) > 0


@pytest.mark.slow
def test_resume_lsqml_multislice(tmp_path):
    """LSQML + 2 slices: 2 epochs, then --resume to 4 = 4 uninterrupted epochs (every slice, probe)."""
    spec = sm.Spec(frame=16, steps=3, step_px=4, probe_radius_px=4)
    truth = sm.simulate(spec, tmp_path / "scan.npz")
    np.save(tmp_path / "probe.npy", truth["probe"])
    text = """
verbose_level: error
scans:
  ms:
    data: {name: NpzScan, dfile: %s, center: [8, 8]}
    illumination: {model: %s}
    sample: {slices: 2, slice_distance_m: %r}
engines:
  e: {name: LSQML, numiter: 2, batch_size: 3}
""" % (tmp_path / "scan.npz", tmp_path / "probe.npy", truth["slice_distance_m"])
    a = _resume_equals_straight(tmp_path, text, 2, 4, [])
    assert a.object.shape[0] == 2 and not np.allclose(a.object[0], a.object[1])


# -- ground truth -----------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_lsqml_fly_scan_every_frame_probe_recovered_where_one_probe_fails(tmp_path):
    """Issue 16 acceptance with LSQML: the fly scan of ``benchmarks/validate_opr.py`` (flux +-30 %, beam +-2 px,
    defocus +-20 depths of field, 1e6 photons per frame), LSQML 300 epochs from the data-driven probe guess, 3
    eigen-probes: every frame's probe >= 0.95 and the object >= 0.95; one shared probe clearly worse.

    Measured (seed 3): frames 0.982 worst / 0.990 median, object 0.998; one probe 0.75 / 0.87, object 0.97.
    """
    import validate_opr as vo

    r = vo.run_case(sf.Spec(photons=1e6), str(tmp_path), {"e": {"name": "LSQML", "numiter": 300}}, modes=3)
    v, s = r["variable"], r["single"]
    assert v["probe"].min() >= 0.95 and v["object"] >= 0.95, (np.sort(v["probe"])[:5], v["object"])
    assert s["probe"].min() < v["probe"].min() - 0.15 and np.median(s["probe"]) < np.median(v["probe"]) - 0.05
    assert s["object"] < v["object"] - 0.02 and s["fourier_error"] > 1.2 * v["fourier_error"]
    assert np.corrcoef(np.abs(v["weights"][:, 0]), r["truth"]["amplitude"])[0, 1] > 0.9


@pytest.mark.slow
def test_lsqml_three_slices_recovered_where_one_slice_fails(tmp_path):
    """Issue 16 acceptance with LSQML: three weak-phase slices 8 depths of field apart (100 frames of 64 x 64,
    1e6 photons per frame), LSQML 100 epochs from the true probe, probe refined: each slice >= 0.9, wrong
    pairings < 0.35; one slice matches none of them above 0.7.

    Measured: 0.969 / 0.933 / 0.968 (single slice 0.44 / 0.54 / 0.40).
    """
    r = vm.run_case(sm.Spec(photons=1e6, dof_apart=8.0), str(tmp_path), {"e": {"name": "LSQML", "numiter": 100}})
    m, s = r["multi"]["scores"], r["single"]["scores"]
    assert np.all(np.diag(m) >= 0.9), m
    assert np.all(m[~np.eye(3, dtype=bool)] < 0.35), m
    assert np.all(s < 0.7), s


# -- MPI ----------------------------------------------------------------------------------------------------------------

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
    %s
engines:
  e: {name: LSQML, numiter: 6, batch_size: 7, probe_update_start: 1}
"""


@pytest.mark.mpi
@pytest.mark.parametrize("option", ["illumination: {variable_modes: 2}",
                                    "sample: {slices: 2, slice_distance_m: 2.0e-6}"])
def test_two_ranks_agree_with_one_process(tmp_path, option):
    """LSQML + OPR and LSQML + multislice under mpirun (2 ranks) end as one process does (double precision):
    object, probe (eigen-probes / slices) and records to 1e-10, and the weights of every frame."""
    import mpi_helpers as mh
    from ptycli.io import load_reconstruction

    if mh.skip_reason():
        pytest.skip(mh.skip_reason())
    sim = tmp_path / "sim.yaml"
    sim.write_text(_MPI_SIM)
    data = tmp_path / "scan.h5"
    assert mh.ptycli(["simulate", sim, "-o", data, "--force"]).returncode == 0
    rec = tmp_path / "rec.yaml"
    rec.write_text(_MPI_REC % (data, option))
    one, two = tmp_path / "one.h5", tmp_path / "two.h5"
    for out, n in ((one, None), (two, 2)):
        res = mh.ptycli(["reconstruct", rec, "-o", out, "--force", "--json"], nprocs=n, timeout=180)
        assert res.returncode == 0, res.describe()
    diffs = mh.compare(two, one)
    assert max(diffs.values()) <= 1e-10, diffs
    a, b = load_reconstruction(one), load_reconstruction(two)
    if "variable_modes" in option:
        Wa, Wb = a.scans["MF"]["probe_weights"], b.scans["MF"]["probe_weights"]
        assert Wa.shape == (40, 2) and np.abs(Wa - Wb).max() <= 1e-9 * np.abs(Wa).max()
    else:
        assert a.object.shape[0] == 2
