"""Tests of ptycli.core.geometry: Geo parameters and the propagators."""

import numpy as np
import pytest

from ptycli.core import geometry
from ptycli.core.base import Base
from ptycli.core.geometry import Geo
from ptycli.utils.parameters import Param

HC = 1.23984193e-9


class Base2(Base):
    pass


def seed_geo(**kw):
    g = Param()
    g.energy = None
    g.lam = 5.32e-7
    g.distance = 15e-2
    g.psize = 24e-6
    g.shape = 256
    g.propagation = "farfield"
    g.update(kw)
    return Geo(owner=Base2(), pars=g)


def rand_stack(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(shape) + 1j * rng.standard_normal(shape)
    return w.astype(dtype)


TOL = {np.complex64: 2e-5, np.complex128: 1e-12}


# -- parameters -------------------------------------------------------------

def test_seed_resolution_and_frame_size():
    G = seed_geo()
    assert G.ID == "G0000"
    assert str(G.resolution) == "[1.29882812e-05 1.29882812e-05]"
    np.testing.assert_allclose(G.resolution, 5.32e-7 * 15e-2 / (256 * 24e-6), rtol=1e-15)
    fsize = G.shape * G.resolution
    assert "%.2fx%.2fmm" % tuple(fsize * 1e3) == "3.32x3.32mm"
    assert G.shape.dtype.kind == "i" and G.shape.tolist() == [256, 256]
    assert G.psize.tolist() == [24e-6, 24e-6]
    assert G.p.distance == 15e-2
    np.testing.assert_allclose(G.energy, HC / 5.32e-7, rtol=1e-15)
    np.testing.assert_allclose(G.p.energy, G.energy)


def test_defaults():
    G = Geo()
    assert G.ID is None
    assert G.energy == 6.2
    np.testing.assert_allclose(G.lam, HC / 6.2, rtol=1e-15)
    assert G.distance == 7.19
    assert G.shape.tolist() == [256, 256]
    np.testing.assert_allclose(G.resolution, G.lam * 7.19 / (256 * 172e-6))
    assert G.center.tolist() == [128, 128] and G.origin.tolist() == [128, 128]
    assert isinstance(G.propagator, geometry.FarfieldPropagator)


def test_energy_lam_consistency():
    G = Geo(energy=8.0)
    np.testing.assert_allclose(G.lam, HC / 8.0, rtol=1e-15)
    # lam alone: energy is derived, the default energy does not win
    G = Geo(lam=1e-10)
    assert G.lam == 1e-10
    np.testing.assert_allclose(G.energy, HC / 1e-10, rtol=1e-15)
    # both given: energy wins
    G = Geo(energy=10.0, lam=1e-10)
    np.testing.assert_allclose(G.lam, HC / 10.0, rtol=1e-15)
    # setters keep both consistent
    G.lam = 2e-10
    np.testing.assert_allclose(G.energy, HC / 2e-10, rtol=1e-15)
    assert G.p.lam == 2e-10 and G.p.energy == G.energy
    G.energy = 12.4
    np.testing.assert_allclose(G.lam, HC / 12.4, rtol=1e-15)
    np.testing.assert_allclose(G.p.lam, G.lam)
    with pytest.raises(ValueError):
        Geo(energy=None, lam=None)
    with pytest.raises(ValueError):
        Geo(energy=-1.0)


def test_parameter_changes_rebuild_propagator():
    G = seed_geo()
    res0 = G.resolution
    prop0 = G.propagator
    G.distance = 0.3
    assert G.propagator is not prop0
    np.testing.assert_allclose(G.resolution, 2 * res0, rtol=1e-14)
    np.testing.assert_allclose(G.propagator.psize_sam, G.resolution)
    G.psize = 48e-6
    np.testing.assert_allclose(G.resolution, res0, rtol=1e-14)
    G.energy = G.energy * 2  # lam halves
    np.testing.assert_allclose(G.resolution, res0 / 2, rtol=1e-14)
    G.shape = (64, 128)
    assert G.shape.tolist() == [64, 128]
    assert G.propagator.grids_sam[0].shape == (64, 128)
    np.testing.assert_allclose(G.resolution * G.shape * G.psize, G.lam * G.distance)
    out = G.propagator.fw(np.ones((64, 128), np.complex64))
    assert out.shape == (64, 128)
    with pytest.raises(ValueError):
        G.propagator.fw(np.ones((256, 256), np.complex64))
    # a failed change leaves the geometry untouched
    with pytest.raises(ValueError):
        G.distance = -1.0
    assert G.distance == 0.3 and G.p.distance == 0.3
    # several at once
    G.update(distance=1.0, shape=32)
    assert G.distance == 1.0 and G.shape.tolist() == [32, 32]


def test_resolution_authoritative_and_precedence():
    lam = 1e-10
    G = Geo(lam=lam, distance=2.0, psize=None, resolution=50e-9, shape=128)
    np.testing.assert_allclose(G.resolution, 50e-9)
    np.testing.assert_allclose(G.psize, lam * 2.0 / (128 * 50e-9))
    G.distance = 4.0  # resolution stays, psize follows
    np.testing.assert_allclose(G.resolution, 50e-9)
    np.testing.assert_allclose(G.psize, lam * 4.0 / (128 * 50e-9))
    G.psize = 100e-6  # psize now authoritative
    np.testing.assert_allclose(G.resolution, lam * 4.0 / (128 * 100e-6))
    G2 = Geo(lam=lam, distance=2.0, psize=1e-4, resolution=50e-9, shape=128,
             precedence="resolution")
    np.testing.assert_allclose(G2.resolution, 50e-9)
    G3 = Geo(lam=lam, distance=2.0, psize=1e-4, resolution=50e-9, shape=128)
    np.testing.assert_allclose(G3.psize, 1e-4)


def test_nearfield_resolution_is_psize():
    G = Geo(energy=10.0, distance=0.01, psize=(50e-9, 60e-9), shape=(64, 32),
            propagation="nearfield")
    np.testing.assert_allclose(G.resolution, [50e-9, 60e-9])
    assert isinstance(G.propagator, geometry.NearfieldPropagator)
    G.propagation = "farfield"
    assert isinstance(G.propagator, geometry.FarfieldPropagator)
    np.testing.assert_allclose(G.resolution, G.lam * 0.01 / (G.shape * G.psize))


def test_bad_parameters():
    with pytest.raises(ValueError, match="propagation"):
        Geo(propagation="sideways")
    with pytest.raises(ValueError):
        Geo(distance=0.0)
    with pytest.raises(ValueError):
        Geo(psize=-1e-6)
    with pytest.raises(ValueError):
        Geo(shape=(1, 2, 3))
    with pytest.raises(ValueError):
        Geo(shape=10.5)
    with pytest.warns(UserWarning, match="distnace"):
        Geo(distnace=1.0)


def test_grids_centred():
    G = seed_geo(shape=(64, 48))
    y, x = G.propagator.grids_sam
    assert y.shape == (64, 48) and x.shape == (64, 48)
    assert np.all(y[32, :] == 0) and np.all(x[:, 24] == 0)
    np.testing.assert_allclose(np.diff(y[:, 0]), G.resolution[0])
    np.testing.assert_allclose(np.diff(x[0, :]), G.resolution[1])
    np.testing.assert_allclose(y[0, 0], -32 * G.resolution[0])
    yd, xd = G.propagator.grids_det
    assert np.all(yd[32, :] == 0) and np.all(xd[:, 24] == 0)
    np.testing.assert_allclose(np.diff(xd[0, :]), G.psize[1])
    # odd shape: origin at shape // 2
    G.shape = 33
    y, x = G.grids_sam
    assert np.all(y[16, :] == 0) and np.all(x[:, 16] == 0)


# -- far field ----------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.complex64, np.complex128])
@pytest.mark.parametrize("propagation", ["farfield", "nearfield"])
def test_roundtrip_energy_dtype(dtype, propagation):
    G = Geo(energy=7.0, distance=0.5 if propagation == "farfield" else 2e-3,
            psize=75e-6 if propagation == "farfield" else 100e-9,
            shape=(64, 80), propagation=propagation)
    w = rand_stack((3, 64, 80), dtype)
    f = G.propagator.fw(w)
    assert f.dtype == dtype and f.shape == w.shape
    np.testing.assert_allclose(np.sum(np.abs(f) ** 2), np.sum(np.abs(w) ** 2),
                               rtol=TOL[dtype])
    b = G.propagator.bw(f)
    assert b.dtype == dtype
    err = np.max(np.abs(b - w)) / np.max(np.abs(w))
    assert err < (1e-5 if dtype == np.complex64 else 1e-12)
    # the propagation did something
    assert np.max(np.abs(f - w)) > 0.1


@pytest.mark.parametrize("propagation", ["farfield", "nearfield"])
def test_real_input_promoted_to_matching_precision(propagation):
    G = Geo(shape=32, propagation=propagation, distance=0.1 if propagation == "nearfield" else 7.19,
            psize=1e-6 if propagation == "nearfield" else 172e-6)
    assert G.propagator.fw(np.ones((32, 32), np.float32)).dtype == np.complex64
    assert G.propagator.fw(np.ones((32, 32), np.float64)).dtype == np.complex128
    assert G.propagator.bw(np.ones((2, 32, 32), np.float32)).dtype == np.complex64
    assert G.propagator.fw(np.ones((32, 32), int)).dtype == np.complex128


@pytest.mark.parametrize("propagation", ["farfield", "nearfield"])
def test_batched_equals_per_frame(propagation):
    G = Geo(energy=9.0, shape=(40, 36), propagation=propagation,
            distance=1.0 if propagation == "farfield" else 5e-3,
            psize=55e-6 if propagation == "farfield" else 80e-9)
    w = rand_stack((2, 3, 40, 36), np.complex64, seed=3)
    f = G.propagator.fw(w)
    b = G.propagator.bw(w)
    for i in range(2):
        for j in range(3):
            np.testing.assert_allclose(f[i, j], G.propagator.fw(w[i, j]), rtol=0, atol=1e-6)
            np.testing.assert_allclose(b[i, j], G.propagator.bw(w[i, j]), rtol=0, atol=1e-6)


def explicit_farfield(w, G):
    """Brute-force Fresnel far field from the physical formula."""
    lam, z = G.lam, G.distance
    ys, xs = G.propagator.grids_sam
    yd, xd = G.propagator.grids_det
    N = np.prod(G.shape)
    q_s = np.exp(1j * np.pi * (ys ** 2 + xs ** 2) / (lam * z))
    q_d = np.exp(1j * np.pi * (yd ** 2 + xd ** 2) / (lam * z))
    ky = np.exp(-2j * np.pi * np.multiply.outer(yd[:, 0], ys[:, 0]) / (lam * z))
    kx = np.exp(-2j * np.pi * np.multiply.outer(xd[0, :], xs[0, :]) / (lam * z))
    return q_d * (ky @ (q_s * w) @ kx.T) / np.sqrt(N)


@pytest.mark.parametrize("kw", [dict(), dict(center=(5, 3.5), origin=(3, 6)),
                                dict(origin="geometric", center="geometric")])
def test_farfield_matches_fresnel_formula(kw):
    G = Geo(energy=5.0, distance=0.8, psize=(60e-6, 90e-6), shape=(12, 9), **kw)
    w = rand_stack((12, 9), np.complex128, seed=5)
    # the brute-force phases (arguments up to ~1e2 rad) limit the agreement
    np.testing.assert_allclose(G.propagator.fw(w), explicit_farfield(w, G), rtol=0, atol=1e-10)


@pytest.mark.parametrize("shape", [(64, 64), (63, 50)])
def test_farfield_zero_frequency_at_centre(shape):
    G = seed_geo(shape=shape)
    prop = G.propagator
    c = tuple(np.array(shape) // 2)
    ys, xs = prop.grids_sam
    # a flat wave (quadratic sample phase removed) focuses on pixel shape // 2
    flat = np.exp(-1j * np.pi * (ys ** 2 + xs ** 2) / (G.lam * G.distance))
    inten = np.abs(prop.fw(flat)) ** 2
    assert np.unravel_index(np.argmax(inten), shape) == c
    np.testing.assert_allclose(inten[c], np.prod(shape), rtol=1e-12)
    # a point at the real-space origin gives a flat diffraction pattern
    delta = np.zeros(shape, complex)
    delta[c] = 1.0
    np.testing.assert_allclose(np.abs(prop.fw(delta)), 1 / np.sqrt(np.prod(shape)), rtol=1e-12)
    # and the backward propagation of a detector delta at the centre is that
    # flat wave again (up to a constant)
    d = np.zeros(shape, complex)
    d[c] = 1.0
    back = prop.bw(d) / flat
    np.testing.assert_allclose(back, back[0, 0], rtol=1e-10)


def test_farfield_center_moves_zero_frequency():
    G = seed_geo(shape=64, center=(20, 40))
    ys, xs = G.grids_sam
    flat = np.exp(-1j * np.pi * (ys ** 2 + xs ** 2) / (G.lam * G.distance))
    inten = np.abs(G.fw(flat)) ** 2
    assert np.unravel_index(np.argmax(inten), inten.shape) == (20, 40)


def test_tilted_plane_wave_lands_at_expected_pixel():
    """A tilt by angle a lands at detector position z * a (Fraunhofer)."""
    G = seed_geo(shape=128)
    ys, xs = G.grids_sam
    flat = np.exp(-1j * np.pi * (ys ** 2 + xs ** 2) / (G.lam * G.distance))
    shift = np.array([7, -11])  # detector pixels
    ang = shift * G.psize / G.distance
    tilt = np.exp(2j * np.pi * (ang[0] * ys + ang[1] * xs) / G.lam)
    inten = np.abs(G.fw(flat * tilt)) ** 2
    peak = np.unravel_index(np.argmax(inten), inten.shape)
    assert tuple(np.array(peak) - 64) == tuple(shift)


def test_pure_function_api_and_cached_factors():
    G = seed_geo(shape=32)
    prop = G.propagator
    w = rand_stack((4, 32, 32), np.complex64, seed=2)
    f = geometry.farfield_fw(w, prop.pre_fft.astype(np.complex64),
                             prop.post_fft.astype(np.complex64))
    assert f.dtype == np.complex64
    np.testing.assert_allclose(f, prop.fw(w), atol=1e-6)
    b = geometry.farfield_bw(f, prop.pre_fft, prop.post_fft)
    assert b.dtype == np.complex64
    np.testing.assert_allclose(b, w, atol=1e-5)
    fac = prop.factors(np.complex64)
    assert fac is prop.factors(np.float32)  # cached per precision
    assert fac.pre.dtype == np.complex64 and fac.post_bw.dtype == np.complex64
    assert prop.factors(np.complex128).pre.dtype == np.complex128
    # modulus projection without the post factor gives the same result
    amp = np.abs(rand_stack((4, 32, 32), np.complex64, seed=9)).astype(np.float32)
    ref = prop.bw(amp * np.exp(1j * np.angle(prop.fw(w))).astype(np.complex64))
    d = geometry.fourier_fw(w, fac.pre, None)
    alt = geometry.fourier_bw(amp * np.exp(1j * np.angle(d)).astype(np.complex64),
                              None, fac.post_bw)
    np.testing.assert_allclose(alt, ref, atol=1e-5)


# -- near field -----------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.complex64, np.complex128])
def test_nearfield_plus_minus_z_returns_input(dtype):
    kw = dict(energy=8.0, psize=100e-9, shape=(64, 72), propagation="nearfield")
    Gp = Geo(distance=3e-3, **kw)
    Gm = Geo(distance=-3e-3, **kw)
    w = rand_stack((2, 64, 72), dtype, seed=7)
    out = Gm.propagator.fw(Gp.propagator.fw(w))
    assert out.dtype == dtype
    np.testing.assert_allclose(out, w, rtol=0, atol=(1e-5 if dtype == np.complex64 else 1e-12))
    np.testing.assert_allclose(Gm.propagator.fw(w), Gp.propagator.bw(w), atol=1e-6)


def test_nearfield_gaussian_beam_spreads_as_expected():
    lam = 1e-10
    w0 = 1e-6
    zr = np.pi * w0 ** 2 / lam
    G = Geo(lam=lam, distance=zr, psize=50e-9, shape=256, propagation="nearfield")
    y, x = G.grids_sam
    beam = np.exp(-(x ** 2 + y ** 2) / w0 ** 2)

    def second_moment(a):
        i = np.abs(a) ** 2
        return np.sum(i * x ** 2) / np.sum(i)

    ratio = np.sqrt(second_moment(G.fw(beam)) / second_moment(beam))
    np.testing.assert_allclose(ratio, np.sqrt(2.0), rtol=1e-3)
    # zero distance is the identity
    G.distance = 0.0
    np.testing.assert_allclose(G.fw(beam), beam, atol=1e-12)


def test_workers_setting():
    assert geometry.get_workers() >= 1
    geometry.set_workers(1)
    try:
        assert geometry.get_workers() == 1
        G = seed_geo(shape=16)
        w = rand_stack((16, 16), np.complex128)
        np.testing.assert_allclose(G.bw(G.fw(w)), w, atol=1e-12)
    finally:
        geometry.set_workers(None)
    with pytest.raises(ValueError):
        geometry.set_workers(0)
