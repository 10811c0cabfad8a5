"""Tests for ptycli.utils.array_utils."""

import os
import subprocess
import sys

import numpy as np
import pytest

from ptycli import utils as u


def test_grids_7x7_center_3():
    y, x = u.grids((7, 7), psize=1.0, center=(3, 3))
    expected = np.arange(7) - 3.0
    assert y.shape == x.shape == (7, 7)
    np.testing.assert_array_equal(y, np.repeat(expected[:, None], 7, axis=1))
    np.testing.assert_array_equal(x, np.repeat(expected[None, :], 7, axis=0))
    # 'geometric' is shape // 2, i.e. 3 here
    np.testing.assert_array_equal(u.grids(7), u.grids(7, center=3))


def test_grids_psize_and_fractional_center():
    # the seed's S1 after center=(2, 2), psize=0.1, origin -= 0.12 -> center 3.2
    y, x = u.grids((1, 7, 7), psize=0.1, center=(3.2, 3.2), full=True)
    assert y.shape == (1, 7, 7)
    np.testing.assert_allclose(y[0, :, 0], (np.arange(7) - 3.2) * 0.1)
    np.testing.assert_allclose(x[0, 0], [-0.32, -0.22, -0.12, -0.02, 0.08, 0.18, 0.28])
    y2, x2 = u.grids((3, 4, 6), psize=(2.0, 0.5), center=(1, 2))
    assert y2.shape == (4, 6)
    np.testing.assert_array_equal(y2[:, 0], [-2.0, 0.0, 2.0, 4.0])
    np.testing.assert_array_equal(x2[0], [-1.0, -0.5, 0.0, 0.5, 1.0, 1.5])


def test_grids_center_modes_even():
    np.testing.assert_array_equal(u.grids(4)[1][0], [-2.0, -1.0, 0.0, 1.0])
    np.testing.assert_array_equal(u.grids(4, center="midpoint")[1][0], [-1.5, -0.5, 0.5, 1.5])
    np.testing.assert_array_equal(u.grids(4, center="fft")[1][0], [0.0, 1.0, -2.0, -1.0])
    np.testing.assert_array_equal(np.fft.fftshift(u.grids(4, center="fft")[0], axes=0),
                                  u.grids(4)[0])
    with pytest.raises(ValueError):
        u.grids(4, center="nowhere")


def test_norms_and_abs2():
    a = np.array([3 + 4j, 0, 1j])
    np.testing.assert_array_equal(u.abs2(a), [25.0, 0.0, 1.0])
    assert u.norm2(a) == 26.0 and isinstance(u.norm2(a), float)
    assert u.norm(np.array([3.0, 4.0])) == 5.0
    assert u.abs2(np.ones(2, np.complex64)).dtype == np.float32
    assert u.norm2(np.arange(4)) == 14.0


def test_smooth_step_limits():
    mfs = 1e-6
    assert u.smooth_step(0.0, mfs) == 0.5
    assert u.smooth_step(10 * mfs, mfs) == 1.0
    assert u.smooth_step(-10 * mfs, mfs) == 0.0
    v = u.smooth_step(np.array([-mfs, mfs]), mfs)
    np.testing.assert_allclose(v, [0.0093, 0.9907], atol=2e-4)
    # derivative FWHM equals mfs: step values at +-mfs/2 are 0.5 -+ 0.5*erf(sqrt(ln2))
    x = np.linspace(-3, 3, 60001)
    d = np.gradient(u.smooth_step(x, 1.0), x)
    above = x[d >= d.max() / 2]
    assert above[-1] - above[0] == pytest.approx(1.0, abs=1e-3)
    np.testing.assert_array_equal(u.smooth_step(np.array([-1.0, 0.0, 2.0]), 0), [0, 0.5, 1])
    assert np.all(np.diff(u.smooth_step(x, 0.3)) >= 0)


def test_smooth_step_error_function_values():
    # 0.5 (1 + erf(2 sqrt(ln 2) x / mfs)) at x = mfs / 2: erf(sqrt(ln 2)) = 0.7609681...
    assert u.smooth_step(0.5, 1.0) == pytest.approx(0.5 * (1 + 0.7609681085504880), abs=1e-15)
    assert isinstance(u.smooth_step(0.5, 1.0), float)
    steps = u.smooth_step(np.array([[-0.5, 0.5]]), 1.0)
    assert steps.dtype == np.float64 and steps.shape == (1, 2)
    np.testing.assert_allclose(steps.sum(), 1.0, atol=1e-15)  # odd around 0.5


def test_bilinear_reproduces_planes_and_zeroes_outside():
    yy, xx = np.mgrid[0:6, 0:9]
    plane = (2.0 + 0.5 * yy - 0.25 * xx).astype(np.float32)
    y = np.array([0.0, 2.5, 4.75, 5.0, 1.2])
    x = np.array([0.0, 3.5, 7.25, 8.0, 0.3])
    values = u.bilinear(plane, y, x)
    assert values.dtype == np.float32
    np.testing.assert_allclose(values, 2.0 + 0.5 * y - 0.25 * x, rtol=1e-6)
    # outside the samples: 0 (just past either edge too)
    np.testing.assert_array_equal(u.bilinear(plane, np.array([-0.01, 5.01, 1.0, 1.0]),
                                             np.array([1.0, 1.0, -0.5, 8.5])), 0)


def test_bilinear_wrap_is_periodic():
    image = np.arange(12.0).reshape(3, 4)
    # between the last column and the first: halfway from 3 to 0; whole periods change nothing
    assert u.bilinear(image, 0.0, 3.5, wrap=True) == pytest.approx(1.5)
    assert u.bilinear(image, 2.5, 0.0, wrap=True) == pytest.approx(4.0)  # rows 2 and 0: (8 + 0) / 2
    y, x = np.array([0.3, 1.7]), np.array([2.2, 0.9])
    np.testing.assert_allclose(u.bilinear(image, y + 3, x - 8, wrap=True), u.bilinear(image, y, x, wrap=True))


def test_gaussian_wrap_weights_and_periodicity():
    stack = np.zeros((2, 16, 20), np.float32)
    stack[0, 0, 0] = 1.0
    out = u.gaussian_wrap(stack, 1.0)
    assert out.dtype == np.float32 and out.shape == stack.shape
    assert float(out.sum()) == pytest.approx(1.0, abs=1e-6)  # normalised, nothing lost over the edges
    d = np.arange(-4, 5)
    w = np.exp(-0.5 * d ** 2)
    w /= w.sum()
    # a point at the corner spreads to the opposite edges: w(dy) w(dx), truncated at 4 sigma
    np.testing.assert_allclose(out[0, -1, -2], w[3] * w[2], rtol=1e-5)
    np.testing.assert_allclose(out[0, 4, 0], w[8] * w[4], rtol=1e-5)
    assert out[0, 5, 0] == 0 and not out[1].any()


def test_crop_pad_shapes_and_values():
    a = np.arange(12.0).reshape(3, 4)
    p = u.crop_pad(a, 1)
    assert p.shape == (5, 6)
    np.testing.assert_array_equal(p[1:-1, 1:-1], a)
    assert p[0].sum() == 0 and p[:, 0].sum() == 0
    c = u.crop_pad(a, [-1, -1])
    np.testing.assert_array_equal(c, [[5.0, 6.0]])
    mixed = u.crop_pad(a, [2, -1], fillpar=-1.0)
    assert mixed.shape == (7, 2)
    np.testing.assert_array_equal(mixed[2:5], a[:, 1:3])
    assert np.all(mixed[:2] == -1.0) and np.all(mixed[5:] == -1.0)
    one_side = u.crop_pad(a, [(0, 2), (-1, 0)])
    assert one_side.shape == (5, 3)
    np.testing.assert_array_equal(one_side[:3], a[:, 1:])
    stack = u.crop_pad(np.ones((2, 3, 3), np.complex64), 2)
    assert stack.shape == (2, 7, 7) and stack.dtype == np.complex64
    axis0 = u.crop_pad(a, 1, axes=0)
    assert axis0.shape == (5, 4)
    mirror = u.crop_pad(np.array([1.0, 2.0, 3.0]), 1, axes=-1, filltype="mirror")
    np.testing.assert_array_equal(mirror, [1, 1, 2, 3, 3])
    periodic = u.crop_pad(np.array([1.0, 2.0, 3.0]), 1, axes=-1, filltype="periodic")
    np.testing.assert_array_equal(periodic, [3, 1, 2, 3, 1])
    # pad then crop is the identity
    np.testing.assert_array_equal(u.crop_pad(u.crop_pad(a, 3), -3), a)
    with pytest.raises(ValueError):
        u.crop_pad(a, -2)


def test_crop_pad_symmetric_2d():
    a = np.arange(36).reshape(6, 6)
    out, cen = u.crop_pad_symmetric_2d(a, 4)
    np.testing.assert_array_equal(out, a[1:5, 1:5])
    np.testing.assert_array_equal(cen, [2.0, 2.0])
    out, cen = u.crop_pad_symmetric_2d(a, (2, 2), center=(1.3, 4))
    np.testing.assert_array_equal(out, a[0:2, 3:5])
    np.testing.assert_allclose(cen, [1.3, 1.0])
    big, cen = u.crop_pad_symmetric_2d(np.ones((1, 2, 2)), 4, fillpar=0)
    assert big.shape == (1, 4, 4)
    assert big.sum() == 4 and big[0, 1:3, 1:3].sum() == 4
    np.testing.assert_array_equal(cen, [2.0, 2.0])


def test_zoom_shape_and_complex():
    a = np.ones((4, 6))
    z = u.zoom(a, 2)
    assert z.shape == (8, 12)
    np.testing.assert_allclose(z, 1.0)
    c = u.zoom(np.full((3, 3), 1 - 2j, np.complex64), (1, 2))
    assert c.shape == (3, 6) and c.dtype == np.complex64
    np.testing.assert_allclose(c, 1 - 2j, rtol=1e-6)


def test_rebin_sums():
    a = np.arange(16.0).reshape(4, 4)
    r = u.rebin(a, 2)
    np.testing.assert_array_equal(r, [[10, 18], [42, 50]])
    assert r.sum() == a.sum()
    stack = np.ones((3, 4, 6))
    assert u.rebin(stack, 2).shape == (3, 2, 3)
    assert np.all(u.rebin(stack, 2) == 4)
    assert u.rebin(stack, 2, 3).shape == (3, 2, 2)
    assert u.rebin(stack, (1, 2, 3)).shape == (3, 2, 2)
    np.testing.assert_array_equal(u.rebin(np.arange(6), 3), [3, 12])
    with pytest.raises(ValueError):
        u.rebin(np.ones((5, 4)), 2)
    assert u.rebin(np.ones((5, 4)), 2, trim=True).shape == (2, 2)


def test_mass_center():
    a = np.zeros((5, 7))
    a[1, 5] = 1.0
    np.testing.assert_array_equal(u.mass_center(a), [1.0, 5.0])
    a[3, 1] = 1.0
    np.testing.assert_array_equal(u.mass_center(a), [2.0, 3.0])
    np.testing.assert_array_equal(u.mass_center(a, axes=[-1]), [3.0])
    assert u.mass_center(1j * a)[0] == 2.0
    with pytest.raises(ValueError):
        u.mass_center(np.zeros(3))


def test_energy_wavelength():
    assert u.keV2m(1.0) == 1.23984193e-9
    assert u.keV2m(6.2) == pytest.approx(1.9997e-10, rel=1e-4)
    assert u.m2keV(u.keV2m(7.3)) == pytest.approx(7.3)
    np.testing.assert_allclose(u.keV2m(np.array([1.0, 2.0])), [1.23984193e-9, 6.19920965e-10])


def test_expect2_and_clean_path(monkeypatch):
    np.testing.assert_array_equal(u.expect2(3), [3.0, 3.0])
    np.testing.assert_array_equal(u.expect2((1, 2)), [1.0, 2.0])
    with pytest.raises(ValueError):
        u.expect2((1, 2, 3))
    monkeypatch.setenv("PTYCLI_TEST_DIR", "/tmp/xyz")
    assert u.clean_path("$PTYCLI_TEST_DIR/a/../b") == "/tmp/xyz/b"
    assert u.clean_path("~") == os.path.expanduser("~")


def test_import_utils_does_not_import_matplotlib():
    code = "import sys, ptycli.utils; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"
