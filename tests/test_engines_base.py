"""Engine base class, registry, address book, history, divergence and resume."""
import numpy as np
import pytest

from ptycli.core import Ptycho
from ptycli.engines import ENGINES, Engine, make_engine
from ptycli.engines.addressing import AddressBook
from ptycli.engines.projectional import DM
from ptycli.errors import ConfigError, EngineError
from ptycli.params.tree import validate
from ptycli.utils.parameters import Param


def model(frames=40, shape=32, modes=1, engines=None, **data):
    p = Param()
    p["scans.MF.data.name"] = "MoonFlowerScan"
    p["scans.MF.data.shape"] = shape
    p["scans.MF.data.num_frames"] = frames
    for k, v in data.items():
        p["scans.MF.data." + k] = v
    if modes > 1:
        p["scans.MF.coherence.num_probe_modes"] = modes
    for label, e in (engines or {}).items():
        for k, v in e.items():
            p["engines.%s.%s" % (label, k)] = v
    return Ptycho(p, level=2)


def arrays(P):
    return (P.probe.S["SMF"].data.copy(), P.obj.S["SMF"].data.copy(), P.exit.S["SMF"].data.copy())


# -- registry and parameters ------------------------------------------------------------

def test_registry_has_projection_engines():
    assert "DM" in ENGINES and "RAAR" in ENGINES
    from ptycli.params import registry

    assert "DM" in registry.engines() and "RAAR" in registry.engines()


def test_unknown_engine_lists_valid_names():
    P = model(frames=10)
    with pytest.raises(ConfigError) as info:
        make_engine(P, {"name": "DN"}, "x")
    msg = str(info.value)
    assert "DM" in msg and "RAAR" in msg and "engines.x.name" in msg
    with pytest.raises(ConfigError) as info:
        validate({"engines": {"a": {"name": "nope"}}})
    assert "DM" in str(info.value)


def test_engine_params_validated_with_defaults():
    p = validate({"engines": {"dm": {"name": "dm", "numiter": 3}}})
    e = p.engines.dm
    assert e.name == "DM" and e.numiter == 3
    assert e.probe_update_start == 2 and e.alpha == 1.0 and e.fourier_relax_factor == "auto"
    assert e.object_inertia == 1e-4 and e.probe_inertia == 1e-9 and e.overlap_max_iterations == 10
    r = validate({"engines": {"r": {"name": "RAAR"}}}).engines.r
    assert r.beta == 0.75 and r.fourier_relax_factor == "auto"
    with pytest.raises(ConfigError, match="numiter"):
        validate({"engines": {"dm": {"name": "DM", "numiter": -1}}})
    with pytest.raises(ConfigError, match="alpa"):
        validate({"engines": {"dm": {"name": "DM", "alpa": 1}}})
    with pytest.raises(ConfigError, match="beta"):
        validate({"engines": {"r": {"name": "RAAR", "beta": 2}}})
    P = model(frames=10)
    with pytest.raises(ConfigError, match="clip_object"):
        DM(P, {"clip_object": [2, 1]}, "dm")


def test_direct_construction_fills_defaults():
    P = model(frames=10)
    e = DM(P, {"numiter": 1}, "first")
    assert e.p.name == "DM" and e.p.numiter == 1 and e.label == "first"
    assert e.p.probe_support == "auto"


def test_auto_probe_support_is_smaller_while_positions_are_refined():
    from ptycli.engines.constraints import support_fraction

    P = model(frames=10)
    assert DM(P, {"numiter": 1}, "a").support_fraction_used() == 1.0
    refining = DM(P, {"numiter": 1, "position_refinement": {"start": 2}}, "b")
    assert refining.support_fraction_used() == 0.8
    assert DM(P, {"numiter": 1, "probe_support": 0.5}, "c").support_fraction_used() == 0.5
    assert DM(P, {"numiter": 1, "probe_support": None}, "d").probe_supports() == {}
    with pytest.raises(ConfigError, match="probe_support"):
        DM(P, {"probe_support": -1.0}, "e")
    with pytest.raises(ConfigError, match="probe_support"):
        DM(P, {"probe_support": "large"}, "f")
    assert support_fraction(" AUTO ", "x") == "auto" and support_fraction(1, "x") == 1.0
    # an engine of the configured chain that refines later makes the earlier ones keep 0.8 too
    P.p["engines"] = {"dm": {"name": "DM"}, "ml": {"name": "ML", "position_refinement": {"start": 0}}}
    assert DM(P, {"numiter": 1}, "g").support_fraction_used() == 0.8


def test_auto_power_bound_is_plain_unless_positions_are_refined():
    from ptycli.engines.projectional import RAAR

    P = model(frames=10)
    assert DM(P, {"numiter": 1}, "a").relax_factor_used() == 0.0
    assert DM(P, {"numiter": 1, "position_refinement": {"start": 2}}, "b").relax_factor_used() == 0.05
    assert DM(P, {"numiter": 1, "fourier_relax_factor": 0.1}, "c").relax_factor_used() == 0.1
    assert RAAR(P, {"numiter": 1}, "d").relax_factor_used() == 0.0
    assert RAAR(P, {"numiter": 1, "position_refinement": {"start": 2}}, "d").relax_factor_used() == 0.05
    for bad in (-0.1, "loose", True):
        with pytest.raises(ConfigError, match="fourier_relax_factor"):
            DM(P, {"fourier_relax_factor": bad}, "e")
    P.p["engines"] = {"dm": {"name": "DM"}, "ml": {"name": "ML", "position_refinement": {"start": 0}}}
    assert DM(P, {"numiter": 1}, "f").relax_factor_used() == 0.05


# -- address book ----------------------------------------------------------------------------

@pytest.mark.parametrize("modes", [1, 2])
def test_address_book_matches_views(modes):
    P = model(frames=12, modes=modes)
    book = AddressBook(P)
    assert len(book.groups) == 1
    g = book.groups[0]
    assert g.regular and g.modes == modes and g.n_frames == 12 and g.n_pods == 12 * modes
    assert g.probe.data is P.probe.S["SMF"].data  # live, not copies
    assert g.exit.data is P.exit.S["SMF"].data
    for i, pod in enumerate(g.pods):
        assert g.pr_layer[i] == pod.pr_view.dlayer and g.ob_layer[i] == pod.ob_view.dlayer
        assert (g.ob_y[i], g.ob_x[i]) == tuple(pod.ob_view.dlow)
        assert g.ex_layer[i] == pod.ex_view.dlayer and g.di_layer[i] == pod.di_view.dlayer
        np.testing.assert_array_equal(g.gather_object(g.obj.data, i, i + 1)[0], pod.object)
        np.testing.assert_array_equal(g.read_exit(i, i + 1)[0], pod.exit)
    # frames of a block are contiguous pods; diff rows are live views
    blocks = g.blocks(5)
    assert [b[:2] for b in blocks] == [(0, 5), (5, 10), (10, 12)]
    assert np.shares_memory(g.diff_frames(0, 5), P.diff.S["SMF"].data)
    np.testing.assert_allclose(g.fmag(), np.sqrt(P.diff.S["SMF"].data))
    assert g.mask_trivial and g.mask_frames() is None


def test_address_book_general_layout_and_scatter():
    P = model(frames=8)
    pods = list(P.pods.values())[::-1]  # order must not matter
    g = AddressBook(P, pods).groups[0]
    assert g.n_pods == 8
    # scatter of ones equals the coverage computed pod by pod
    cov = np.zeros(P.obj.S["SMF"].data.shape, np.float32)
    for pod in P.pods.values():
        v = pod.ob_view
        cov[v.dlayer, v.dlow[0]:v.dhigh[0], v.dlow[1]:v.dhigh[1]] += 1
    np.testing.assert_array_equal(g.coverage(), cov)
    # force the general path and check the helpers agree with the regular ones
    g.regular = False
    pw = g.gather_object(g.obj.data, 0, 8) * g.probe_for(g.probe.data, 0, 8)
    np.testing.assert_allclose(g.sum_modes(pw, 0, 8), pw)
    assert g.to_pods(np.arange(8.0), 0, 8).shape == (8,)


# -- loop, records, dtypes -------------------------------------------------------------------------

def test_history_records_and_chain_counts():
    P = model(frames=20, engines={"a": dict(name="DM", numiter=3), "b": dict(name="RAAR", numiter=2)})
    P.run()
    h = P.runtime.history
    assert [r["iteration"] for r in h] == [1, 2, 3, 4, 5]
    assert [r["engine"] for r in h] == ["a"] * 3 + ["b"] * 2
    assert [r["name"] for r in h] == ["DM"] * 3 + ["RAAR"] * 2
    assert P.runtime.iterations == 5
    for r in h:
        assert set(r) >= {"engine", "name", "iteration", "fourier_error", "photon_error", "exit_change",
                          "likelihood", "time_s"}
        assert r["likelihood"] is None
        assert r["fourier_error"] > 0 and r["photon_error"] > 0 and r["exit_change"] > 0 and r["time_s"] > 0
    assert len(P.engines) == 2 and P.engines[1].history == h[3:]


def test_record_interval_and_callbacks():
    P = model(frames=10)
    e = DM(P, {"numiter": 5, "record_interval": 2}, "dm")
    seen = []
    e.callbacks.append(lambda eng, rec: seen.append(rec["iteration"]))
    e.run()
    assert seen == [1, 2, 3, 4, 5]
    assert [r["iteration"] for r in P.runtime.history] == [2, 4, 5]


def test_numiter_zero_changes_nothing():
    P = model(frames=10)
    before = arrays(P)
    hist = DM(P, {"numiter": 0}, "dm").run()
    assert hist == [] and P.runtime.history == [] and P.runtime.iterations == 0
    for a, b in zip(before, arrays(P)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", ["DM", "RAAR"])
def test_dtypes_stay_single(name):
    P = model(frames=10, modes=2)
    e = make_engine(P, {"name": name, "numiter": 3}, "e")
    e.initialize()
    for buf in e._scratch[(32, 32)].values():
        assert buf is None or buf.dtype in (np.complex64, np.float32)
    e.iterate(3)
    for S in (P.probe.S["SMF"], P.obj.S["SMF"], P.exit.S["SMF"]):
        assert S.data.dtype == np.complex64
    for buf in list(e._ob_num.values()) + list(e._pr_num.values()):
        assert buf.dtype == np.complex64
    for buf in list(e._ob_den.values()) + list(e._pr_den.values()):
        assert buf.dtype == np.float32


class _Poisoned(DM):
    """DM that writes a NaN into the object at a given iteration."""

    NAME = "PoisonedDM"
    at = 3

    def engine_iterate(self, n):
        out = super().engine_iterate(n)
        if self.iteration + 1 == self.at:
            self.ptycho.obj.S["SMF"].data[0, 5, 5] = np.nan
        return out


def test_nan_divergence_raises_and_keeps_last_good_state():
    P = model(frames=10)
    e = _Poisoned(P, {"numiter": 6}, "bad")
    e.initialize()
    e.iterate(2)
    good = arrays(P)
    with pytest.raises(EngineError, match="diverged at iteration 3"):
        e.iterate(1)
    probe, obj, ex = arrays(P)
    np.testing.assert_array_equal(probe, good[0])
    np.testing.assert_array_equal(obj, good[1])
    assert np.all(np.isfinite(ex))
    # exit waves reset to probe * object
    pod = next(iter(P.pods.values()))
    np.testing.assert_allclose(pod.exit, pod.probe * pod.object, rtol=1e-5, atol=1e-3)
    assert len(P.runtime.history) == 2


def test_nan_in_errors_detected():
    P = model(frames=10)
    e = DM(P, {"numiter": 2}, "dm")
    e.initialize()
    e.engine_iterate = lambda n: [dict(fourier_error=float("nan"))]
    with pytest.raises(EngineError, match="fourier_error"):
        e.iterate(1)


def test_state_dict_resume_reproduces_continuous_run():
    P1 = model(frames=16)
    e1 = DM(P1, {"numiter": 6}, "dm")
    e1.initialize()
    e1.iterate(3)
    state = e1.state_dict()
    e1.iterate(3)
    assert state["iteration"] == 3 and state["global_iteration"] == 3
    assert set(state) >= {"probe", "obj", "exit", "rng", "extra"}

    P2 = model(frames=16)
    e2 = DM(P2, {"numiter": 6}, "dm")
    e2.load_state(state)
    assert e2.iteration == 3 and P2.runtime.iterations == 3
    e2.iterate(3)
    for a, b in zip(arrays(P1), arrays(P2)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-3 * np.abs(a).max())


def test_custom_engine_subclass_registers():
    from ptycli.engines.base import register
    from ptycli.params import registry
    from ptycli.params.declare import Parameter

    @register
    class Noop(Engine):
        NAME = "NoopTestEngine"
        PARAMS = Engine.PARAMS.extended("NoopTestEngine", [Parameter("k", 1, "int", "a knob", low=0)])

        def engine_iterate(self, n):
            return [dict(fourier_error=1.0)] * n

    try:
        P = model(frames=5)
        e = make_engine(P, {"name": "nooptestengine", "numiter": 2, "k": 3}, "n")
        assert isinstance(e, Noop) and e.p.k == 3
        e.run()
        assert [r["fourier_error"] for r in P.runtime.history] == [1.0, 1.0]
        assert P.runtime.history[0]["photon_error"] is None
    finally:
        registry.ENGINES.unregister("NoopTestEngine")
        ENGINES.pop("NoopTestEngine", None)


def test_clip_object_amplitude_keeps_phase_and_zeros():
    from ptycli.engines.constraints import clip_object_amplitude

    d = np.array([0, 0.5, 2j, 3 + 4j], dtype=np.complex64)
    phase = np.angle(d[1:])
    assert clip_object_amplitude(d, [0.6, 4.0])
    np.testing.assert_allclose(np.abs(d), [0, 0.6, 2, 4], rtol=1e-6)
    np.testing.assert_allclose(np.angle(d[1:]), phase, atol=1e-6)
    before = d.copy()
    assert not clip_object_amplitude(d, [0.0, 10.0])  # nothing outside: untouched
    np.testing.assert_array_equal(d, before)
