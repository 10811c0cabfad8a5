"""The MoonFlower simulator: frame counts, noise, psf, ground truth consistency."""
import numpy as np
import pytest

from ptycli.core.geometry import get_propagator
from ptycli.scans.moonflower import MoonFlowerScan


def load(**pars):
    base = dict(shape=32, num_frames=20)
    base.update(pars)
    return MoonFlowerScan.from_pars(base).load()


@pytest.mark.parametrize("pattern", ["round", "spiral", "raster"])
@pytest.mark.parametrize("n", [1, 7, 130])
def test_exact_frame_count(pattern, n):
    sd = MoonFlowerScan.from_pars(dict(shape=16, num_frames=n, pattern=pattern, add_poisson_noise=False))
    assert len(sd.model()["positions"]) == n


def test_noiseless_frames_are_the_model():
    sd = load(add_poisson_noise=False)
    truth = sd.ground_truth
    res = truth["resolution_m"]
    lam = 1.23984193e-9 / 6.2
    prop = get_propagator("farfield", (32, 32), lam, 7.0, (172e-6, 172e-6))
    # frame k: probe times the object patch at its position (object centre = physical origin)
    k = 5
    pix = np.round(sd.positions[k] / res).astype(int)
    y0, x0 = (pix + truth["object_center"].astype(int) - 16)
    patch = truth["object"][y0:y0 + 32, x0:x0 + 32]
    model = np.abs(prop.fw(truth["probe"][0] * patch)) ** 2
    np.testing.assert_allclose(sd.intensities[k], model, rtol=2e-5, atol=1e-3 * model.max())
    # positions lie on the object pixel grid, in metres
    np.testing.assert_allclose(sd.positions / res, np.round(sd.positions / res), atol=1e-9)
    # photons: the probe carries 1e8 photons; the weakly absorbing object keeps most of them
    assert np.sum(np.abs(truth["probe"]) ** 2) == pytest.approx(1e8, rel=1e-9)
    assert 0.4e8 < sd.intensities[k].sum() < 1e8


def test_poisson_noise_statistics():
    clean = load(add_poisson_noise=False, photons=1e5)
    noisy = load(add_poisson_noise=True, photons=1e5)
    assert np.all(noisy.intensities == np.round(noisy.intensities))
    diff = noisy.intensities - clean.intensities
    # variance of Poisson counts equals their mean
    ratio = np.sum(diff**2) / np.sum(clean.intensities)
    assert ratio == pytest.approx(1.0, rel=0.05)


def test_psf_blurs_the_patterns():
    sharp = load(add_poisson_noise=False)
    blurred = load(add_poisson_noise=False, psf=1.5)
    np.testing.assert_allclose(blurred.intensities.sum(), sharp.intensities.sum(), rtol=1e-3)
    assert blurred.intensities.max() < 0.8 * sharp.intensities.max()


def test_position_noise_only_changes_reported_positions():
    exact = load(add_poisson_noise=False)
    jittered = load(add_poisson_noise=False, position_noise=2.0)
    np.testing.assert_array_equal(exact.intensities, jittered.intensities)
    shift_px = (jittered.positions - exact.positions) / exact.ground_truth["resolution_m"]
    assert 1.0 < np.std(shift_px) < 3.0


def test_two_mode_probe_power_split():
    sd = load(probe_modes=2, probe_mode_power=0.3, add_poisson_noise=False)
    probe = sd.ground_truth["probe"]
    power = np.sum(np.abs(probe) ** 2, axis=(1, 2))
    assert power[1] / power[0] == pytest.approx(0.3, rel=1e-9)
    assert abs(np.vdot(probe[0], probe[1])) < 1e-6 * power[0]


def test_defocused_probe_is_ring_shaped():
    sd = load(probe="defocused", shape=64, add_poisson_noise=False)
    amp = np.abs(sd.ground_truth["probe"][0])
    c = 32
    # darker centre (central stop) than the ring around it
    ring = amp[c, c - 13:c - 8].max()
    assert amp[c, c] < 0.6 * ring
