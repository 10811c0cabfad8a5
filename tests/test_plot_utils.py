"""Tests for ptycli.utils.plot_utils (headless, Agg)."""

import sys

import numpy as np
import pytest

from ptycli import utils as u
from ptycli.utils.plot_utils import parse_slices

mpl = pytest.importorskip("matplotlib")
mpl.use("Agg")


class FakeStorage:
    """Duck-typed stand-in for a core Storage."""

    def __init__(self, data, psize=1e-6, center=None):
        self.data = data
        self.psize = np.array([psize, psize], dtype=float)
        self.center = np.array(data.shape[-2:]) // 2 if center is None else np.asarray(center)
        self.ID = "S0000"


@pytest.fixture(autouse=True)
def close_figures():
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


def test_parse_slices():
    assert parse_slices("0,120:-120,120:-120") == (0, slice(120, -120), slice(120, -120))
    assert parse_slices(":2,:,:") == (slice(None, 2), slice(None), slice(None))
    assert parse_slices("1") == (1, slice(None), slice(None))
    assert parse_slices("::2") == (slice(None, None, 2), slice(None), slice(None))
    tup = (slice(2), slice(None), slice(None))
    assert parse_slices(tup) == tup
    with pytest.raises(ValueError):
        parse_slices("0,1,2,3")


def test_complex2rgb_colours():
    c = np.array([1.0, 1j, -1.0, 0.0, 0.5])
    rgb = u.complex2rgb(c)
    assert rgb.shape == (5, 3)
    np.testing.assert_allclose(rgb[0], [1, 0, 0], atol=1e-12)  # phase 0: red
    np.testing.assert_allclose(rgb[1], [0.5, 1, 0], atol=1e-12)  # pi/2: hue 90 deg
    np.testing.assert_allclose(rgb[2], [0, 1, 1], atol=1e-12)  # pi: cyan
    np.testing.assert_allclose(rgb[3], [0, 0, 0])  # zero amplitude: black
    np.testing.assert_allclose(rgb[4], [0.5, 0, 0])  # half amplitude: half bright
    assert rgb.min() >= 0 and rgb.max() <= 1
    assert u.complex2rgb(np.ones((2, 3, 4), complex)).shape == (2, 3, 4, 3)


def test_plot_storage_default_first_layer():
    data = np.random.default_rng(0).random((3, 32, 40))
    fig = u.plot_storage(FakeStorage(data), 0)
    images = [ax.images[0] for ax in fig.axes if ax.images]
    assert len(images) == 1
    np.testing.assert_array_equal(images[0].get_array(), data[0])
    # x axis in SI units (32 um wide -> um), y in pixels
    ax = images[0].axes
    assert "\u00b5m" in ax.get_xlabel() and "pixel" in ax.get_ylabel()
    left, right, bottom, top = images[0].get_extent()
    assert left == pytest.approx(-20.5) and right == pytest.approx(19.5)
    assert top == pytest.approx(-0.5) and bottom == pytest.approx(31.5)


def test_plot_storage_slices_string_and_modulus():
    data = np.arange(2 * 10 * 10, dtype=float).reshape(2, 10, 10) + 1
    fig = u.plot_storage(FakeStorage(data), 1, slices=":2,2:-2,3:", modulus="log", si_axes="xy")
    images = [ax.images[0] for ax in fig.axes if ax.images]
    assert len(images) == 2
    np.testing.assert_allclose(images[1].get_array(), np.log10(data[1, 2:-2, 3:]))
    fig = u.plot_storage(FakeStorage(data), 2, slices="1,1:3,:",
                         modulus="sqrt")
    images = [ax.images[0] for ax in fig.axes if ax.images]
    assert len(images) == 1
    np.testing.assert_allclose(images[0].get_array(), np.sqrt(data[1, 1:3, :]))


def test_plot_storage_channels_and_array_input():
    z = np.exp(1j * np.linspace(0, 1, 16)).reshape(1, 4, 4) * 2
    for ch, expected in (("r", z.real), ("i", z.imag), ("a", np.abs(z)), ("p", np.angle(z))):
        fig = u.plot_storage(z, 3, channel=ch)
        im = [ax.images[0] for ax in fig.axes if ax.images][0]
        np.testing.assert_allclose(im.get_array(), expected[0])
    fig = u.plot_storage(z[0], 4, channel="c")
    im = fig.axes[0].images[0]
    np.testing.assert_allclose(im.get_array(), u.complex2rgb(z[0]))
    assert "pixel" in fig.axes[0].get_xlabel()  # bare arrays: pixel axes
    with pytest.raises(ValueError):
        u.plot_storage(z, 5, channel="q")
    with pytest.raises(ValueError):
        u.plot_storage(z, 5, modulus="cube")


def test_plot_storage_mask_and_figure_reuse():
    data = np.ones((1, 4, 4))
    mask = np.ones((4, 4), bool)
    mask[0, 0] = False
    fig = u.plot_storage(FakeStorage(data), 7, mask=mask)
    arr = fig.axes[0].images[0].get_array()
    assert np.ma.is_masked(arr) and arr.mask[0, 0] and not arr.mask[1, 1]
    fig2 = u.plot_storage(FakeStorage(data), 7)
    assert fig2 is fig and len([a for a in fig2.axes if a.images]) == 1


def test_missing_matplotlib_message(monkeypatch):
    for name in list(sys.modules):
        if name == "matplotlib" or name.startswith("matplotlib."):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"pip install 'ptycli\[plot\]'"):
        u.plot_storage(np.ones((4, 4)))
    # numpy-only helpers still work
    assert u.complex2rgb(np.ones(2)).shape == (2, 3)
