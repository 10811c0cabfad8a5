"""The compiled (numba) kernels compute what the numpy paths compute.

Every engine with compiled kernels is run for a few iterations twice on the
same small model, once with ``kernels: numpy`` and once with
``kernels: compiled``; probe, object, exit waves and the error records must
agree to single-precision rounding. Layouts covered: one probe mode, two
probe modes, two object modes, a mask with dead pixels, near field.
"""
import numpy as np
import pytest

from ptycli.core import Ptycho
from ptycli.engines import fused, make_engine
from ptycli.engines.threads import LARGE_SLOT_BYTES, BlockPool, slots_per_thread
from ptycli.errors import EngineError

pytestmark = pytest.mark.skipif(not fused.available(), reason="numba is not installed")


@pytest.fixture(autouse=True)
def _no_kernel_override(monkeypatch):
    monkeypatch.delenv("PTYCLI_KERNELS", raising=False)  # the tests choose the kernels themselves


def build(frames=24, shape=32, propagation="farfield", probe_modes=1, object_modes=1, background=False):
    scan = dict(name="Full", propagation=propagation, background=background,
                coherence=dict(num_probe_modes=probe_modes, num_object_modes=object_modes),
                data=dict(name="MoonFlowerScan", shape=shape, num_frames=frames, photons=1e7,
                          add_poisson_noise=True, probe_modes=probe_modes))
    P = Ptycho(dict(verbose_level="error", scans=dict(MF=scan)), level=2)
    if background:  # counts the coherent model cannot explain, so that the background moves
        P.diff.S["SMF"].data += np.float32(3.0)
    return P


def state(P):
    # (the PIE engines give the exit storage back while they run: a released storage holds nothing)
    out = {k: {sid: S.data.copy() for sid, S in C.S.items() if not S.released} for k, C in
           (("probe", P.probe), ("obj", P.obj), ("exit", P.exit))}
    out["background"] = {label: m.background.copy() for label, m in P.scans.items() if m.background is not None}
    return out


def restore(P, snap):
    for k, C in (("probe", P.probe), ("obj", P.obj), ("exit", P.exit)):
        for sid, S in C.S.items():
            if sid in snap[k] and not S.released:
                S.data[...] = snap[k][sid]
    for label, B in snap["background"].items():
        P.scans[label].background[...] = B


def run(P, kernels, numiter=4, **pars):
    e = make_engine(P, dict(pars, numiter=numiter, probe_update_start=1, kernels=kernels), "e")
    e.initialize()
    assert e._compiled == (kernels == "compiled")
    recs = e.iterate(numiter)
    e.finalize()
    return recs, state(P)


def assert_same(P, pars, dead_pixels=False, tol=1e-4, rtol=2e-4):
    if dead_pixels:
        m = P.mask.S["SMF"].data
        m[:, 3, 5] = 0
        m[::2, 10:12, 7] = 0
    start = state(P)
    recs_np, out_np = run(P, "numpy", **pars)
    restore(P, start)
    recs_c, out_c = run(P, "compiled", **pars)
    for key in ("fourier_error", "photon_error", "exit_change", "likelihood"):
        if recs_np[0].get(key) is None:
            continue
        a = [r[key] for r in recs_np]
        b = [r[key] for r in recs_c]
        np.testing.assert_allclose(b, a, rtol=rtol, err_msg=key)
    for kind in out_np:
        for sid, a in out_np[kind].items():
            if kind == "background":
                assert not np.array_equal(a, start[kind][sid])  # the background was fitted
            b = out_c[kind][sid]
            rel = np.linalg.norm(b - a) / np.linalg.norm(a)
            assert rel <= tol, (kind, sid, rel)


@pytest.mark.parametrize("name,extra", [("DM", {}), ("DM", {"alpha": 0.8}), ("RAAR", {"beta": 0.7}),
                                        ("DM", {"update_object_first": False}),
                                        ("DM", {"fourier_relax_factor": 0.0})])
def test_projection_engines_compiled_equals_numpy(name, extra):
    assert_same(build(), dict(name=name, **extra))


@pytest.mark.parametrize("layout", ["probe_modes", "object_modes", "mask", "nearfield", "blocks"])
def test_projection_layouts_compiled_equals_numpy(layout):
    pars = dict(name="DM")
    if layout == "probe_modes":
        P = build(probe_modes=2)
    elif layout == "object_modes":
        P = build(object_modes=2)
    elif layout == "nearfield":
        P = build(propagation="nearfield")
    else:
        P = build()
    if layout == "blocks":
        pars["block_frames"] = 5  # blocks of unequal sizes
    # near field: the object's poorly lit edge grows large and amplifies float32 rounding
    assert_same(P, pars, dead_pixels=layout == "mask", tol=5e-4 if layout == "nearfield" else 1e-4)


def test_kernels_choice(monkeypatch):
    assert fused.use_compiled("numpy", 10 ** 9) is False
    assert fused.use_compiled("compiled", 10) is True
    assert fused.use_compiled("compiled", 10, precision_ok=False) is False  # double precision: numpy
    assert fused.use_compiled("auto", fused.AUTO_MIN_PIXELS - 1) is False
    assert fused.use_compiled("auto", fused.AUTO_MIN_PIXELS) is True
    monkeypatch.setenv("PTYCLI_KERNELS", "numpy")
    assert fused.use_compiled("compiled", 10) is False
    monkeypatch.setattr(fused, "_HAVE_NUMBA", False)
    monkeypatch.setenv("PTYCLI_KERNELS", "")
    assert fused.use_compiled("auto", 10 ** 9) is False
    with pytest.raises(EngineError, match="needs numba"):
        fused.use_compiled("compiled", 10)


@pytest.mark.parametrize("model,floating,layout", [
    ("gaussian", False, "plain"), ("gaussian", True, "mask"), ("poisson", False, "plain"),
    ("poisson", True, "probe_modes"), ("euclid", False, "mask"), ("euclid", True, "plain"),
    ("gaussian", False, "nearfield"), ("gaussian", False, "object_modes"),
])
def test_ml_compiled_equals_numpy(model, floating, layout):
    P = build(probe_modes=2 if layout == "probe_modes" else 1, object_modes=2 if layout == "object_modes" else 1,
              propagation="nearfield" if layout == "nearfield" else "farfield")
    # a few DM iterations first: ML from a converged-ish start (as it is used)
    make_engine(P, dict(name="DM", numiter=5, kernels="numpy"), "dm").run()
    # the recorded errors: float32 sums in another order, through 4 line searches (measured up to 9e-4 apart)
    assert_same(P, dict(name="ML", ML_type=model, floating_intensities=floating, reg_del2=True),
                dead_pixels=layout == "mask", tol=5e-4 if layout == "nearfield" else 1e-4, rtol=2e-3)


@pytest.mark.parametrize("name,extra,layout", [
    ("DM", {}, "plain"), ("RAAR", {"beta": 0.7}, "mask"),
    pytest.param("DM", {}, "probe_modes", marks=pytest.mark.slow),
    ("ML", {"ML_type": "gaussian"}, "plain"), ("ML", {"ML_type": "poisson"}, "mask"),
    pytest.param("ML", {"ML_type": "euclid"}, "probe_modes", marks=pytest.mark.slow),
])
def test_background_compiled_equals_numpy(name, extra, layout):
    P = build(probe_modes=2 if layout == "probe_modes" else 1, background=True)
    if name == "ML":
        make_engine(P, dict(name="DM", numiter=5, kernels="numpy"), "dm").run()
    assert_same(P, dict(name=name, **extra), dead_pixels=layout == "mask", rtol=2e-3 if name == "ML" else 2e-4)


@pytest.mark.parametrize("name,extra,layout", [
    ("ePIE", {}, "plain"), ("ePIE", {"object_step": 0.7, "probe_step": 0.5}, "mask"),
    ("rPIE", {}, "plain"), ("rPIE", {"alpha": 0.2}, "mask"),
    ("rPIE", {"noise_bound": 20.0}, "mask"),  # the power bound: every step scaled by 0.85-0.91 here
    ("mPIE", {"momentum_interval": 7}, "plain"),  # the one numpy momentum step between compiled frames
])
def test_pie_compiled_equals_numpy(name, extra, layout):
    # rPIE's large steps where the probe is weak make it chaotic: a 1e-7 change of the start changes its
    # third iteration's errors by 3e-4 (with numpy alone), so it is compared over two iterations
    numiter = 2 if name in ("rPIE", "mPIE") else 4
    assert_same(build(), dict(name=name, numiter=numiter, **extra), dead_pixels=layout == "mask")


@pytest.mark.parametrize("name", ["DM", "ML", "ePIE"])
def test_compiled_resume_is_exact(name):
    """Stopping after 3 iterations and resuming from the state gives the uninterrupted result."""
    P = build(frames=30)
    start = state(P)
    pars = dict(name=name, numiter=6, probe_update_start=1, kernels="compiled")
    if name == "DM":
        pars["block_frames"] = 7  # several blocks: both threads busy
    e = make_engine(P, pars, "a")
    e.initialize()
    e.iterate(6)
    e.finalize()
    straight = state(P)
    restore(P, start)
    e = make_engine(P, pars, "b")
    e.initialize()
    e.iterate(3)
    saved = e.state_dict()
    e.finalize()
    restore(P, start)  # a fresh process would start from the checkpoint only
    e = make_engine(P, pars, "c")
    e.load_state(saved)
    e.iterate(3)
    e.finalize()
    for kind in ("probe", "obj"):
        np.testing.assert_array_equal(state(P)[kind]["SMF"], straight[kind]["SMF"], err_msg=kind)


def test_block_pool_slots_keep_order_and_balance():
    """map_slots: every item once, results in item order, each slot's items in slot order (reversed on
    request), and a slow thread's slots taken over by the fast one."""
    import threading
    import time

    pool = BlockPool(2, slots_per_thread=2)
    try:
        assert pool.slots == 4
        seen = {s: [] for s in range(4)}
        threads = {}
        lock = threading.Lock()

        def fn(k, s, item):
            if k == 0:
                time.sleep(0.004)  # thread 0 is slow
            with lock:
                seen[s].append(item)
                threads[item] = k
            return item * 10

        items = list(range(22))
        assert pool.map_slots(fn, items) == [i * 10 for i in items]
        for s in range(4):
            assert seen[s] == list(range(s, 22, 4))
        assert sum(1 for k in threads.values() if k == 1) > 11  # the fast thread did more than half
        seen = {s: [] for s in range(4)}
        pool.map_slots(fn, items, reverse=True)
        for s in range(4):
            assert seen[s] == list(range(s, 22, 4))[::-1]
    finally:
        pool.close()
    one = BlockPool(1)
    assert one.slots == 1
    assert one.map_slots(lambda k, s, it: (k, s, it), [5, 6]) == [(0, 0, 5), (0, 0, 6)]


def test_slots_per_thread_drops_to_one_for_large_objects():
    assert slots_per_thread(LARGE_SLOT_BYTES) == 2
    assert slots_per_thread(LARGE_SLOT_BYTES + 1) == 1
    assert BlockPool(2, slots_per_thread(LARGE_SLOT_BYTES + 1)).slots == 2


@pytest.mark.parametrize("name,extra,large", [("DM", {}, False), ("RAAR", {"beta": 0.7}, False), ("DM", {}, True)])
def test_projection_result_does_not_depend_on_thread_timing(name, extra, large, monkeypatch):
    """Two threads, one of them delayed at random: the blocks go to other threads, the results stay
    bit-identical (accumulator slots take their blocks in a fixed order); also with one slot per
    thread, as for objects larger than ``LARGE_SLOT_BYTES``."""
    import time

    from ptycli.core import geometry
    from ptycli.engines import projection_passes, threads

    slots = []

    class Pool(projection_passes.BlockPool):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            slots.append(self.slots)

    monkeypatch.setattr(projection_passes, "BlockPool", Pool)
    if large:
        monkeypatch.setattr(threads, "LARGE_SLOT_BYTES", 0)
    geometry.set_workers(2)
    try:
        pars = dict(name=name, block_frames=3, **extra)
        if large:  # the noise bound leaves a frame at its edge or corrects it: a jump, not a rounding difference
            pars["noise_power_bound"] = False
        P = build(frames=30)
        start = state(P)
        recs, plain = run(P, "compiled", **pars)
        assert slots[0] == (2 if large else 4)
        if large:  # one slot per thread gives the same object as two, up to the order of the sums
            restore(P, start)
            monkeypatch.setattr(threads, "LARGE_SLOT_BYTES", 2 ** 62)
            _, two = run(P, "compiled", **pars)
            monkeypatch.setattr(threads, "LARGE_SLOT_BYTES", 0)
            for sid in plain["obj"]:
                np.testing.assert_allclose(plain["obj"][sid], two["obj"][sid], rtol=1e-4, atol=1e-5)
        restore(P, start)
        restore(P, start)
        rng = np.random.default_rng(1)
        update = fused.projection_update

        def slow_update(*args):
            if rng.random() < 0.5:
                time.sleep(0.002)
            return update(*args)

        monkeypatch.setattr(fused, "projection_update", slow_update)
        recs_slow, slow = run(P, "compiled", **pars)
        for kind in plain:
            for sid in plain[kind]:
                np.testing.assert_array_equal(slow[kind][sid], plain[kind][sid], err_msg=kind)
        assert [r["fourier_error"] for r in recs_slow] == [r["fourier_error"] for r in recs]
    finally:
        geometry.set_workers(None)


def test_missed_fold_is_zeroed_before_the_next_pass():
    """Accumulator slots 1.. must be zero when a pass starts; after a pass whose fold never ran (an
    exception in between) they are zeroed first."""
    from ptycli.core import geometry

    geometry.set_workers(2)
    try:
        P = build(frames=12)
        e = make_engine(P, dict(name="DM", numiter=2, kernels="compiled", block_frames=2), "e")
        e.initialize()
        e.iterate(1)
        stale = e.passes._ob_num_t[1]["SMF"]
        assert not stale.any()  # folded and cleared
        stale[...] = 7.0
        e.passes._start_sums("_ob_num_t")  # clean: trusted as zero
        assert stale.all()
        e.passes._dirty.add("_ob_num_t")
        e.passes._start_sums("_ob_num_t")
        assert not stale.any()
        e.finalize()
    finally:
        geometry.set_workers(None)


@pytest.mark.parametrize("c_weak", [0.0, 0.3])
def test_object_divide_rows_is_the_numpy_fold_divisor_and_division(c_weak):
    """fused.object_divide_rows on a row band: the numbers of the numpy steps it replaces, bit for bit
    (slots added in order, weak_divisor, num * den + prior); slots 1.. zeroed, rows outside the band untouched."""
    from ptycli.engines.projection_passes import weak_divisor

    rng = np.random.default_rng(7)
    shape = (2, 9, 11)

    def cplx():
        return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)

    parts = [cplx() for _ in range(3)]
    den = rng.uniform(0.0, 2.0, shape).astype(np.float32)
    out = cplx()
    c_obj = 1e-3
    rows = slice(2, 7)
    num = parts[0].copy()
    for p in parts[1:]:
        num[..., rows, :] += p[..., rows, :]
    d, prior = den.copy(), np.zeros_like(den)
    weak_divisor(d[..., rows, :], prior[..., rows, :], c_obj, c_weak)
    want = out.copy()
    band = np.multiply(num[..., rows, :], d[..., rows, :], out=want[..., rows, :])
    if c_weak > 0:
        band += prior[..., rows, :]
    got_den, got_prior = den.copy(), np.zeros_like(den)
    f32 = np.float32
    fused.object_divide_rows(tuple(p.view(np.float32) for p in parts), got_den, got_prior, out.view(np.float32),
                             rows.start, rows.stop, True, f32(c_obj), f32(c_weak), f32(c_weak * c_weak))
    np.testing.assert_array_equal(out, want)
    np.testing.assert_array_equal(got_den, d)
    np.testing.assert_array_equal(parts[0], num)
    assert not parts[1][..., rows, :].any() and parts[2][..., :rows.start, :].any()
    if c_weak > 0:
        np.testing.assert_array_equal(got_prior, prior)
    # the divisor kept (recompute False): the same object again from the folded numerator
    again = np.zeros_like(out)
    fused.object_divide_rows((parts[0].view(np.float32),), got_den, got_prior, again.view(np.float32),
                             rows.start, rows.stop, False, f32(c_obj), f32(c_weak), f32(c_weak * c_weak))
    np.testing.assert_array_equal(again[..., rows, :], want[..., rows, :])


@pytest.mark.parametrize("beta,use_pre", [(1.0, True), (0.7, True), (1.0, False)])
def test_kernels_apply_the_deferred_fft_scale_like_a_scaling_pass(beta, use_pre):
    """modulus_constraint and projection_update given an unscaled transform and its factor: the numbers of
    the scaled transform with factor 1 (ptycli.core.fft.fft2_deferred), to float32 rounding; modulus_constraint
    leaves the factor due on F (the correction multiplies the unscaled waves)."""
    rng = np.random.default_rng(3)

    def cplx(*shape):
        return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)

    n, H, W = 3, 8, 12
    scale = np.float32(1 / np.sqrt(H * W))
    F = cplx(n, H, W) * np.float32(10)
    diff = rng.uniform(0, 200, (n, H, W)).astype(np.float32)
    pod_start = np.arange(n + 1)
    rows = np.arange(n)
    mask = np.ones((1, 1, 1), np.uint8)
    bg, bgsum = np.zeros((H, W), np.float32), np.zeros((1, 1))
    results = []
    for fac in (np.float32(1), scale):
        X = F.copy()
        if fac == 1:
            X.view(np.float32)[...] *= scale  # the scaling pass of fft2_inplace
        sums = np.empty((4, n))
        fused.modulus_constraint(X, pod_start, diff, rows, mask, rows, False, 0.5, True, *sums, bg, False, bgsum,
                                 fac)
        results.append((X * fac, sums))  # the factor still due
    np.testing.assert_allclose(results[1][0], results[0][0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(results[1][1], results[0][1], rtol=1e-5)
    assert (results[0][1][3] < 1).any()  # some frames were corrected
    psi, ob, pt, prc, pre = cplx(n, H, W), cplx(1, 20, 20), cplx(1, H, W), cplx(1, H, W), cplx(H, W)
    addr = (np.zeros(n, np.int64), np.array([0, 3, 7]), np.array([1, 5, 2]), np.zeros(n, np.int64))
    out = []
    for fac in (np.float32(1), scale):
        G, p, num = F.copy(), psi.copy(), np.zeros_like(ob)
        if fac == 1:
            G.view(np.float32)[...] *= scale
        change = fused.projection_update(p, G, ob, pt, pre, np.conj(pre), use_pre, addr, 0, beta, True, num, prc,
                                         G.view(np.float32), fac)
        out.append((p, num, change))
    np.testing.assert_allclose(out[1][0], out[0][0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out[1][1], out[0][1], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out[1][2], out[0][2], rtol=1e-5)


def test_ml_vector_log_matches_log():
    """The vectorisable logarithm of the Poisson cost (fused_ml._log_row): within one float32 rounding of log."""
    from numba import njit
    from ptycli.engines import fused_ml

    @njit(cache=False)
    def logs(v):
        fused_ml._log_row(v, v.view(np.int32), np.empty(v.shape[0], np.float32))

    rng = np.random.default_rng(5)
    x = np.exp(rng.uniform(-85, 85, 200000)).astype(np.float32)
    x = np.concatenate([x, np.float32([1.0, 2.0, 0.5, 0.70710677, 0.7071068, 1.0000001, 0.99999994, 3e38, 2e-38])])
    got = x.copy()
    logs(got)
    want = np.log(x.astype(np.float64))
    err = np.abs(got - want)
    assert np.all(err <= np.maximum(1.2e-7 * np.abs(want), 1e-12))
    assert got[-9] == 0.0
