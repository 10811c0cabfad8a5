"""The probe/object phase ramp (engine parameter ``phase_ramp``, :mod:`ptycli.engines.phase_ramp`)."""
import numpy as np
import pytest

from ptycli.core.propagation import get_propagator
from ptycli.engines.phase_ramp import (RAMP_BLOCK_ROWS, apply_phase_ramp, edge_power, object_phase_gradient,
                                       object_plane_fit, object_ramp, phase_ramp, spectrum_centroid,
                                       spectrum_symmetry_centre)

from ptycli.engines import make_engine

from test_engines_dm import build, reconstruct


def _disc(shape, radius):
    y, x = np.indices(shape) - np.array(shape)[:, None, None] // 2
    return (np.hypot(y, x) < radius).astype(np.complex128)


@pytest.mark.parametrize("kind", ["farfield", "nearfield"])
def test_centroid_of_a_tilted_probe_is_its_tilt(kind):
    """The circular centroid moves exactly with a ramp; a disc's spectrum is concentrated, a random screen's not."""
    shape = (64, 48)
    prop = get_propagator(kind, shape, 1e-10, 5.0 if kind == "farfield" else 1e-3, 1e-6 if kind == "nearfield"
                          else 172e-6)
    f = np.array([0.031, -0.047])  # cycles per pixel
    probe = _disc(shape, 8.0)[None] * phase_ramp(shape, f, np.complex128)
    got, concentration = spectrum_centroid(probe, prop)
    np.testing.assert_allclose(got, f, atol=2e-3)  # the untilted disc's own centroid is not quite 0 (pre factor)
    assert np.all(concentration > 0.8), concentration
    # centred by the opposite ramp, exactly
    np.testing.assert_allclose(spectrum_centroid(probe * phase_ramp(shape, -got, np.complex128), prop)[0], 0,
                               atol=1e-9)
    assert np.all(spectrum_centroid(np.zeros((1,) + shape), prop)[0] == 0)
    screen = np.exp(2.5j * np.random.default_rng(0).standard_normal(shape))  # uncorrelated phase: a flat spectrum
    assert np.all(spectrum_centroid((_disc(shape, 20.0) * screen)[None], prop)[1] < 0.3)


@pytest.mark.parametrize("kind", ["farfield", "nearfield"])
@pytest.mark.parametrize("f", [(0.031, -0.047), (0.29, -0.41)])
def test_symmetry_centre_of_a_tilted_probe_is_its_tilt(kind, f):
    """A ramp moves the symmetry centre exactly, also by more than a quarter of the detector (the centroid
    picks among the centres half a detector apart); no power, no move."""
    shape = (64, 48)
    prop = get_propagator(kind, shape, 1e-10, 5.0 if kind == "farfield" else 1e-3, 1e-6 if kind == "nearfield"
                          else 172e-6)
    f = np.array(f)
    disc = _disc(shape, 8.0)[None]
    f0 = spectrum_symmetry_centre(disc, prop)  # the untilted disc's own
    assert np.all(np.abs(f0) < 1e-3), f0
    got = spectrum_symmetry_centre(disc * phase_ramp(shape, f, np.complex128), prop)
    np.testing.assert_allclose(got, f0 + f, atol=1e-7)
    assert np.all(spectrum_symmetry_centre(np.zeros((1,) + shape), prop) == 0)


def test_edge_power_is_the_power_in_the_frame_margin():
    """A flat frame of 64 x 48 pixels has margins of 4 and 3 pixels (1/16): 1 - (56 x 42) / (64 x 48) of its
    power there; a centred disc of radius 8 none; two modes add their intensities; no power, 0."""
    shape = (64, 48)
    flat = np.ones((1,) + shape, np.complex64)
    assert edge_power(flat) == pytest.approx(1 - 56 * 42 / (64 * 48), rel=1e-12)
    assert edge_power(_disc(shape, 8.0)[None]) == 0
    corner = np.zeros((1,) + shape, np.complex128)
    corner[0, 0, 0] = 1
    assert edge_power(np.concatenate([_disc(shape, 8.0)[None] / np.sqrt(np.pi * 64), corner])) == pytest.approx(
        1 / (1 + np.sum(np.abs(_disc(shape, 8.0)) ** 2) / (np.pi * 64)), rel=1e-12)
    assert edge_power(np.zeros((2,) + shape)) == 0


def test_symmetry_centre_ignores_faint_power_to_one_side():
    """A centred pupil plus a faint ring brighter on one side (as a low-dose reconstruction's probe can carry):
    the intensity centroid moves with the ring's power, the symmetry centre stays at the centre."""
    shape = (64, 64)
    prop = get_propagator("farfield", shape, 1e-10, 5.0, 172e-6)
    y, x = np.indices(shape) - np.asarray(prop.center, dtype=float)[:, None, None]
    r = np.hypot(y, x)
    pupil = (r < 10).astype(float)
    ring = ((r > 16) & (r < 22)) * (1 + 0.9 * x / np.maximum(r, 1))
    screen = np.exp(1j * np.random.default_rng(1).uniform(0, 6, shape))
    for fraction in (0.02, 0.05, 0.1):  # the ring's share of the pupil's power
        far = np.sqrt(pupil + fraction * ring * pupil.sum() / ring.sum()) * np.where(r > 14, screen, 1)
        probe = prop.bw(far[None].astype(np.complex128))
        pulled = spectrum_centroid(probe, prop)[0][1]
        assert pulled > 0.08 * fraction  # towards the bright side: 0.0018-0.009 cycles per pixel
        # (between the pixels the ring's random phases are not symmetric: 2.5e-4)
        np.testing.assert_allclose(spectrum_symmetry_centre(probe, prop), 0, atol=3e-4)


def test_ramp_moves_between_probe_and_object_and_leaves_the_data_model_alone():
    """A ramp put on the probe (the opposite on the object) after DM is taken back off the probe,
    the object returns to the reconstruction without it, and exit = probe * object still holds."""
    P = build(frames=50, shape=32)
    e = reconstruct(P, numiter=20, phase_ramp="none")
    probe = P.probe.S["SMF"].data
    obj = P.obj.S["SMF"].data
    f = np.array([0.06, -0.04])
    ref_obj = obj.copy()
    f0 = spectrum_symmetry_centre(probe, e.book.groups[0].propagator)  # the reconstruction's own (small)
    probe *= phase_ramp(probe.shape, f, probe.dtype)
    obj *= phase_ramp(obj.shape, -f, obj.dtype)
    g = e.book.groups[0]
    for layer, y, x in zip(g.ex_layer, g.ob_y, g.ob_x):  # the exit waves follow (exit = probe * object)
        g.exit.data[layer] *= np.exp(-2j * np.pi * (f[0] * y + f[1] * x))
    pods = list(P.pods.values())[:10]
    exit_before = [pod.exit.copy() for pod in pods]
    model_before = [pod.probe * pod.object for pod in pods]
    e.p.phase_ramp = "probe"
    moved = e.fix_phase_ramp()
    (moved_f,) = moved.values()
    np.testing.assert_allclose(moved_f, f0 + f, atol=1e-6)  # the ramp put on, found again
    assert np.all(np.abs(spectrum_symmetry_centre(probe, g.propagator)) < 1e-6)
    # the object gets back its form before the ramp (and the probe's own f0) up to a constant phase
    ratio = obj / (ref_obj * phase_ramp(obj.shape, f0, np.complex128))
    np.testing.assert_allclose(ratio / ratio.flat[ratio.size // 2], 1, atol=3e-4)  # single precision: 1.2e-4
    # the exit waves wait (they belong with the state before the move, which a resume goes on from) ...
    for pod, ex0 in zip(pods, exit_before):
        np.testing.assert_array_equal(pod.exit, ex0)
    assert set(e.state_dict()["unmoved"]) == {"probe", "obj"}  # the state before the move, for a resume
    # ... until the next engine starts: each turned by the constant phase that turned probe * object
    e2 = make_engine(P, dict(name="DM", numiter=2), "dm2").initialize()
    for pod, ex0, m0 in zip(pods, exit_before, model_before):
        model_turn = (pod.probe * pod.object) / m0
        np.testing.assert_allclose(model_turn, model_turn.flat[0], atol=1e-4)
        np.testing.assert_allclose(pod.exit, ex0 * model_turn.flat[0], rtol=1e-5, atol=1e-5 * np.abs(ex0).max())
    e2.run()  # DM goes on from the moved state without a jump in the error
    assert e2.history[-1]["fourier_error"] < 1.5 * e.history[-1]["fourier_error"]


def test_object_phase_gradient_is_the_ramp_put_on():
    """The coverage-weighted circular mean of the neighbour phase steps moves exactly with a ramp, in row
    blocks as in one; a random phase has no coherence."""
    rng = np.random.default_rng(3)
    shape = (3, 70, 50)  # three layers (object modes) add
    smooth = np.fft.ifft2(np.fft.fft2(rng.standard_normal(shape)) * (np.hypot(*np.meshgrid(
        np.fft.fftfreq(50), np.fft.fftfreq(70))) < 0.05)).real
    obj = (0.8 + 0.2 * rng.random(shape)) * np.exp(3j * smooth / smooth.std())  # a strong phase (wraps)
    coverage = rng.random(shape[1:])
    g0, c0 = object_phase_gradient(obj, coverage)
    h = np.array([0.013, -0.021])
    g1, c1 = object_phase_gradient(obj * phase_ramp(shape, h, np.complex128), coverage)
    np.testing.assert_allclose(g1, g0 + h, atol=1e-12)
    np.testing.assert_allclose(c1, c0, atol=1e-12)
    assert np.all(c0 > 0.8), c0
    np.testing.assert_allclose(object_phase_gradient(obj, coverage, rows_per_block=7), (g0, c0), atol=1e-12)
    noise = np.exp(2j * np.pi * rng.random(shape))
    assert np.all(object_phase_gradient(noise, coverage)[1] < 0.05)
    assert np.all(object_phase_gradient(obj, np.zeros(shape[1:]))[0] == 0)


def test_object_rule_leaves_no_mean_phase_gradient():
    """``phase_ramp: object`` (near field's ``auto``): after DM the object's best plane-wave fit over its coverage
    is flat and the probe carries the ramp; ``none`` leaves the ramp that was put on."""
    from ptycli.engines.health import coverage

    P = build(frames=50, shape=32)
    e = reconstruct(P, numiter=10, phase_ramp="none")
    obj = P.obj.S["SMF"].data
    probe = P.probe.S["SMF"].data
    f = np.array([0.02, 0.03])
    obj *= phase_ramp(obj.shape, f, obj.dtype)
    probe *= phase_ramp(probe.shape, -f, probe.dtype)
    cov = coverage(e.book)["SMF"]
    before = object_ramp(obj, cov)
    np.testing.assert_allclose(before, f + object_ramp(obj * phase_ramp(obj.shape, -f), cov), atol=1e-6)
    e.p.phase_ramp = "object"
    (moved,) = e.fix_phase_ramp().values()
    np.testing.assert_allclose(moved, -before, atol=1e-9)
    np.testing.assert_allclose(object_plane_fit(obj, cov, (0.0, 0.0))[0], 0, atol=2e-6)  # single precision
    e.p.phase_ramp = "none"
    assert e.fix_phase_ramp() == {}


def test_object_plane_fit_moves_exactly_with_a_ramp():
    """The weighted spectrum's peak moves exactly with a ramp, from any nearby start, in row blocks as in one
    pass; a strong phase object has no such peak and ``object_ramp`` keeps the mean phase step there; noise
    has no ramp."""
    rng = np.random.default_rng(5)
    rows, cols = 90, 70
    y, x = np.indices((rows, cols))
    weak = (0.7 + 0.3 * rng.random((rows, cols))) * np.exp(0.4j * rng.standard_normal((rows, cols)))
    coverage = np.exp(-((y - 45) ** 2 + (x - 35) ** 2) / (2 * 18.0 ** 2))
    h = np.array([0.004, -0.007])
    f0, c0 = object_plane_fit(weak[None], coverage, object_phase_gradient(weak, coverage)[0])
    f1, c1 = object_plane_fit((weak * phase_ramp(weak.shape, h, np.complex128))[None], coverage, (0.0, 0.0))
    np.testing.assert_allclose(f1, f0 + h, atol=1e-8)
    np.testing.assert_allclose(c1, c0, atol=1e-9)
    assert c0 > 0.8 and np.max(np.abs(f0)) < 1e-3, (f0, c0)  # a texture without a ramp: about none
    np.testing.assert_allclose(object_plane_fit(weak, coverage, (0.0, 0.0), rows_per_block=11)[0], f0, atol=1e-10)
    np.testing.assert_allclose(object_ramp(weak * phase_ramp(weak.shape, h, np.complex128), coverage), f1,
                               atol=1e-8)
    strong = np.exp(6j * np.sin(x / 7.0) * np.cos(y / 9.0)) * np.exp(1j * rng.random((rows, cols)))
    assert object_plane_fit(strong, coverage, (0.0, 0.0))[1] < 0.8
    np.testing.assert_array_equal(object_ramp(strong, coverage), object_phase_gradient(strong, coverage)[0])
    assert object_ramp(np.exp(2j * np.pi * rng.random((rows, cols))), coverage) is None  # noise: no ramp


@pytest.mark.parametrize("dtype", [np.complex64, np.complex128])
def test_apply_phase_ramp_in_blocks_gives_the_whole_ramps_numbers(dtype):
    # rows beyond one block and not a multiple of it, a leading axis (object layers)
    rng = np.random.default_rng(3)
    shape = (2, 2 * RAMP_BLOCK_ROWS + 7, 93)
    arr = (rng.normal(size=shape) + 1j * rng.normal(size=shape)).astype(dtype)
    f = (0.0123, -0.0371)
    expected = arr * phase_ramp(shape, f, dtype)
    apply_phase_ramp(arr, f)
    assert arr.dtype == dtype
    np.testing.assert_array_equal(arr, expected)
    # and it is the ramp: exp(2 pi i f.n) at one pixel
    one = np.ones(shape, dtype)
    apply_phase_ramp(one, f)
    np.testing.assert_allclose(one[1, 100, 50], np.exp(2j * np.pi * (f[0] * 100 + f[1] * 50)), rtol=1e-6)
