"""Tests of the procedural test images in :mod:`ptycli.resources`."""
import time

import numpy as np
import pytest

from ptycli import resources
from ptycli.resources import flower_obj, moon_pr

SHAPES = [
    (64, (64, 64)),
    ((48, 80), (48, 80)),
    (np.array([96, 96]), (96, 96)),
    (np.array([40, 56]), (40, 56)),
    ([638, 640], (638, 640)),
    (np.int64(32), (32, 32)),
]


def _radius_map(shape):
    ny, nx = shape
    y, x = np.indices(shape)
    return np.hypot(y - (ny - 1) / 2.0, x - (nx - 1) / 2.0)


# ---------------------------------------------------------------------------
# shape handling and determinism (both generators)
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("func", [moon_pr, flower_obj])
@pytest.mark.parametrize("shape, expected", SHAPES)
def test_shape_and_dtype(func, shape, expected):
    out = func(shape)
    assert out.shape == expected
    assert out.dtype == np.complex128
    assert np.all(np.isfinite(out))


@pytest.mark.parametrize("func", [moon_pr, flower_obj])
def test_deterministic(func):
    a = func((100, 120))
    b = func((100, 120))
    assert np.array_equal(a, b)
    # int, tuple and ndarray spellings of the same shape agree
    assert np.array_equal(func(90), func((90, 90)))
    assert np.array_equal(func(90), func(np.array([90, 90])))


@pytest.mark.parametrize("func", [moon_pr, flower_obj])
def test_seed_changes_image(func):
    a = func(128)
    b = func(128, seed=12345)
    assert not np.allclose(a, b)
    assert np.array_equal(b, func(128, seed=12345))


@pytest.mark.parametrize("func", [moon_pr, flower_obj])
@pytest.mark.parametrize("shape", [1, 2, 5, (3, 100), (100, 3)])
def test_tiny_shapes(func, shape):
    out = func(shape)
    assert np.all(np.isfinite(out))
    assert np.abs(out).max() == pytest.approx(1.0, abs=0.4)


@pytest.mark.parametrize("bad", [0, (0, 10), (10, -1), []])
def test_bad_shape(bad):
    with pytest.raises(ValueError):
        moon_pr(bad)


@pytest.mark.parametrize("func", [moon_pr, flower_obj])
def test_fast(func):
    func(1024)  # warm up
    best = min(_timed(func, 1024) for _ in range(3))
    # the target is ~0.3 s; leave headroom for slow or busy CI machines
    assert best < 1.0


def _timed(func, shape):
    t0 = time.perf_counter()
    func(shape)
    return time.perf_counter() - t0


# ---------------------------------------------------------------------------
# moon probe
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def moon():
    return moon_pr(256)


def test_moon_amplitude_normalised(moon):
    amp = np.abs(moon)
    assert amp.max() == pytest.approx(1.0, abs=1e-12)
    assert amp.min() == 0.0


def test_moon_zero_outside_disc(moon):
    amp = np.abs(moon)
    for corner in (amp[:20, :20], amp[:20, -20:],
                   amp[-20:, :20], amp[-20:, -20:]):
        assert np.all(corner == 0)
    # nothing beyond the disc radius plus its soft edge
    r = _radius_map(amp.shape)
    assert np.all(amp[r > 0.33 * 256 + 2] == 0)


def test_moon_disc_size(moon):
    amp = np.abs(moon)
    n = amp.shape[0]
    row = np.nonzero(amp[n // 2])[0]
    col = np.nonzero(amp[:, n // 2])[0]
    for idx in (row, col):
        diameter = (idx[-1] - idx[0] + 1) / n
        assert 0.6 <= diameter <= 0.72
    frac = np.mean(amp > 0)
    assert np.pi * 0.30 ** 2 <= frac <= np.pi * 0.36 ** 2


def test_moon_soft_edge(moon):
    # the rim goes from 0 to full brightness over a couple of pixels
    amp = np.abs(moon)
    r = _radius_map(amp.shape)
    radius = 0.33 * 256
    ring = (r > radius - 1.0) & (r < radius + 1.0)
    vals = amp[ring]
    assert np.any((vals > 0.02) & (vals < 0.5))


def test_moon_craters_present(moon):
    amp = np.abs(moon)
    r = _radius_map(amp.shape)
    inner = amp[r < 0.9 * 0.33 * 256]
    assert inner.min() > 0.03            # craters are dark, not holes
    assert inner.std() / inner.mean() > 0.1
    # a noticeable fraction is clearly darker than the bright highlands
    assert np.mean(inner < 0.6 * np.percentile(inner, 90)) > 0.05


def test_moon_phase_smooth_and_gentle(moon):
    amp = np.abs(moon)
    ph = np.angle(moon)
    r = _radius_map(amp.shape)
    disc = r < 0.95 * 0.33 * 256
    assert np.ptp(ph[disc]) < 4.0
    assert np.ptp(ph[disc]) > 0.5        # not flat: a defocus-like curvature
    dy = np.abs(np.diff(ph, axis=0))[disc[1:] & disc[:-1]]
    dx = np.abs(np.diff(ph, axis=1))[disc[:, 1:] & disc[:, :-1]]
    assert dy.max() < 0.1 and dx.max() < 0.1


def test_moon_resolution_independent_fill():
    for n in (64, 512):
        amp = np.abs(moon_pr(n))
        frac = np.mean(amp > 0)
        assert np.pi * 0.30 ** 2 <= frac <= np.pi * 0.37 ** 2


# ---------------------------------------------------------------------------
# flower object
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def flower():
    return flower_obj((638, 640))


def test_flower_amplitude_range(flower):
    amp = np.abs(flower)
    assert amp.min() >= 0.5
    assert amp.max() <= 1.0 + 1e-12
    assert amp.std() > 0.03


def test_flower_phase_range(flower):
    ph = np.angle(flower)
    assert ph.min() >= -1.5 and ph.max() <= 1.5
    assert ph.std() > 0.2


def test_flower_amplitude_phase_correlated_not_identical(flower):
    amp = np.abs(flower).ravel()
    ph = np.angle(flower).ravel()
    corr = np.corrcoef(amp, ph)[0, 1]
    assert 0.2 < abs(corr) < 0.95


def test_flower_fine_detail(flower):
    # structure at the scale of a few pixels: neighbouring-pixel differences
    amp = np.abs(flower)
    ph = np.angle(flower)
    assert np.mean(np.abs(np.diff(amp, axis=1)) > 0.02) > 0.02
    assert np.mean(np.abs(np.diff(ph, axis=0)) > 0.05) > 0.02


def test_flower_small_and_odd_shapes():
    for shape in [(64, 64), (17, 23), (1, 50), (300, 40)]:
        obj = flower_obj(shape)
        amp = np.abs(obj)
        assert obj.shape == shape
        assert amp.min() >= 0.5 and amp.max() <= 1.0 + 1e-12
        assert np.abs(np.angle(obj)).max() <= 1.5
    # even a small frame shows flowers, not just background
    assert np.angle(flower_obj(64)).std() > 0.2


def test_flower_larger_frame_shows_more_flowers():
    # petals and centres have phase > 0.2, the meadow lies well below
    small = np.angle(flower_obj(128)) > 0.2
    large = np.angle(flower_obj(512)) > 0.2
    from scipy import ndimage
    n_small = ndimage.label(small)[1]
    n_large = ndimage.label(large)[1]
    assert n_large > 2 * n_small
    assert 0.15 < small.mean() < 0.7 and 0.15 < large.mean() < 0.7


def test_public_names():
    assert set(resources.__all__) == {"moon_pr", "flower_obj"}
