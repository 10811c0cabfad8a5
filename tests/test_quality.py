"""Reconstruction-quality helpers (ptycli.quality)."""
import numpy as np
import pytest

from ptycli import quality as metrics
from ptycli.resources import flower_obj, moon_pr


@pytest.fixture(scope="module")
def flower():
    return flower_obj((96, 96)).astype(np.complex128)


def taper(shape, margin=12):
    w = np.zeros(shape)
    w[margin:-margin, margin:-margin] = 1.0
    return w


def test_identical_arrays(flower):
    out = metrics.align_and_compare(flower, flower)
    assert out["correlation"] == pytest.approx(1.0, abs=1e-12)
    assert out["shift"] == (0.0, 0.0) and abs(out["phase_offset"]) < 1e-12
    assert out["error"] < 1e-10


def test_global_phase_and_scale_removed(flower):
    out = metrics.align_and_compare(2.5 * np.exp(1j * 1.2) * flower, flower)
    assert out["correlation"] == pytest.approx(1.0, abs=1e-9)
    assert out["phase_offset"] == pytest.approx(1.2, abs=1e-9)
    assert out["scale"] == pytest.approx(2.5, rel=1e-9)


@pytest.mark.parametrize("shift", [(0.0, 0.0), (1.0, -2.0), (0.35, -0.6), (-2.25, 1.7)])
def test_subpixel_shift_recovered(flower, shift):
    moved = metrics.fourier_shift(flower, shift) * np.exp(-0.7j)
    w = taper(flower.shape)
    out = metrics.align_and_compare(moved, flower, w)
    assert out["shift"][0] == pytest.approx(-shift[0], abs=0.06)
    assert out["shift"][1] == pytest.approx(-shift[1], abs=0.06)
    assert out["correlation"] > 0.999


def test_phase_ramp_removed(flower):
    y, x = np.indices(flower.shape)
    ramp = np.exp(2j * np.pi * (0.8 * y + -1.3 * x) / 96)
    w = taper(flower.shape)
    out = metrics.align_and_compare(flower * ramp, flower, w)
    assert out["correlation"] > 0.999
    assert out["ramp"][0] == pytest.approx(0.8, abs=0.06) and out["ramp"][1] == pytest.approx(-1.3, abs=0.06)
    plain = metrics.align_and_compare(flower * ramp, flower, w, remove_ramp=False)
    assert plain["correlation"] < out["correlation"]


def test_noise_lowers_correlation(flower):
    rng = np.random.default_rng(1)
    noisy = flower + 0.3 * (rng.standard_normal(flower.shape) + 1j * rng.standard_normal(flower.shape))
    c = metrics.align_and_compare(noisy, flower)["correlation"]
    assert 0.5 < c < 0.99
    other = flower_obj((96, 96)).T.astype(complex)
    assert metrics.align_and_compare(np.ones_like(flower) + 0 * other, flower)["correlation"] < 0.99


def test_weight_restricts_region(flower):
    bad = flower.copy()
    bad[:20] = 0
    w = np.zeros(flower.shape)
    w[40:80, 20:80] = 1
    assert metrics.align_and_compare(bad, flower, w, remove_ramp=False)["correlation"] == pytest.approx(1.0, abs=1e-9)
    assert metrics.align_and_compare(bad, flower, remove_ramp=False)["correlation"] < 0.95


def test_mode_powers_and_density_similarity():
    rng = np.random.default_rng(3)
    a = rng.standard_normal((2, 16, 16)) + 1j * rng.standard_normal((2, 16, 16))
    a[1] *= 0.5
    p = metrics.mode_powers(a)
    assert p.sum() == pytest.approx(1.0) and p[0] > p[1]
    # the density matrix does not depend on how the mixture is split into modes
    theta = 0.4
    U = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]]) * np.exp(0.3j)
    mixed = np.tensordot(U, a, axes=(1, 0))
    assert metrics.density_similarity(mixed, a) == pytest.approx(1.0, abs=1e-12)
    assert metrics.density_similarity(a[:1], a) < 0.99


def test_probe_vs_truth_modes():
    m = moon_pr((48, 48)).astype(np.complex128)
    rng = np.random.default_rng(0)
    second = m * np.exp(1j * rng.standard_normal(m.shape) * 0.5)
    second -= np.vdot(m, second) / np.vdot(m, m) * m
    second *= np.sqrt(0.3 * np.vdot(m, m).real / np.vdot(second, second).real)
    truth = np.stack([m, second])
    recon = np.stack([metrics.fourier_shift(m, (0.5, -1.0)) * 1j, metrics.fourier_shift(second, (0.5, -1.0))])
    out = metrics.probe_vs_truth(recon[::-1], truth)  # order is found from the powers
    assert out["correlation"] > 0.999
    assert out["shift"][0] == pytest.approx(-0.5, abs=0.06) and out["shift"][1] == pytest.approx(1.0, abs=0.06)
    np.testing.assert_allclose(out["powers"], out["true_powers"], atol=1e-3)
    assert out["true_powers"][1] == pytest.approx(0.3 / 1.3, rel=1e-6)
    assert min(out["mode_correlations"]) > 0.99
    assert out["density_similarity"] > 0.99


def test_object_vs_truth_on_a_model():
    from ptycli.core import Ptycho
    from ptycli.utils.parameters import Param

    p = Param()
    p["scans.MF.data.name"] = "MoonFlowerScan"
    p["scans.MF.data.shape"] = 32
    p["scans.MF.data.num_frames"] = 30
    P = Ptycho(p, level=2)
    gt = P.scans["MF"].data.ground_truth
    # put the truth into the object storage through the pixel-centre mapping
    S = P.obj.S["SMF"]
    off = np.round(gt["object_center"] - S.center).astype(int)
    h, w = S.data.shape[-2:]
    S.data[0] = gt["object"][off[0]:off[0] + h, off[1]:off[1] + w]
    out = metrics.object_vs_truth(P, fraction=0.3)
    assert out["correlation"] > 0.9999 and out["pixels"] > 100
    region = metrics.illuminated_region(P, 0.3)
    assert region.shape == S.data.shape[-2:] and 0 < region.sum() < region.size
    cov = metrics.illumination_coverage(P)
    assert cov.max() > 0 and cov[~region].max() <= 0.3 * cov.max() + 1e-9
