"""Tests of ptycli.core.xy: scan patterns."""

import numpy as np
import pytest
from scipy.spatial import cKDTree

from ptycli.core import xy
from ptycli.utils.parameters import Param

RES = 5.32e-7 * 15e-2 / (256 * 24e-6)  # seed sample pixel, 1.298828125e-05 m


def seed_pars():
    fsize = np.array([256, 256]) * np.array([RES, RES])
    pos = Param()
    pos.model = "round"
    pos.spacing = fsize[0] / 8
    pos.steps = None
    pos.extent = fsize * 1.5
    return pos


def test_seed_round_scan_116_positions():
    pars = seed_pars()
    pos = xy.from_pars(pars)
    assert pos.shape == (116, 2) and pos.dtype == np.float64
    assert np.all(pos[0] == 0)
    half = pars.extent / 2
    assert np.all(np.abs(pos) <= half * (1 + 1e-9))
    # the two boundary points of shell 6 (radius == extent/2) are kept
    assert np.sum(np.isclose(np.abs(pos[:, 1]), half[1], rtol=1e-12)) == 2
    # radii are multiples of the spacing, at most 7 shells
    r = np.hypot(pos[:, 0], pos[:, 1]) / pars.spacing
    np.testing.assert_allclose(r, np.rint(r), atol=1e-9)
    assert r.max() < 7.01
    # plain dict input gives the same
    np.testing.assert_array_equal(xy.from_pars(dict(pars)), pos)


def test_round_scan_shells():
    pos = xy.round_scan(2.0, 3)
    assert pos.shape == (1 + 5 + 10 + 15, 2)
    r = np.hypot(pos[:, 0], pos[:, 1])
    np.testing.assert_allclose(r[1:6], 2.0)
    np.testing.assert_allclose(r[6:16], 4.0)
    np.testing.assert_allclose(r[16:], 6.0)
    # angle 0 first, as (r sin, r cos)
    np.testing.assert_allclose(pos[1], [0.0, 2.0])
    np.testing.assert_allclose(pos[2], [2 * np.sin(2 * np.pi / 5), 2 * np.cos(2 * np.pi / 5)])
    assert xy.round_scan(1.0, 2, bullseye=False).shape == (15, 2)


def test_round_shell_count_from_steps():
    # steps 4 -> extent 4, shells 1..3 (1 + 5 + 10 + 15 = 31 points) before the
    # cut at |coord| <= 2: shell 3 (radius 3) has no point with both
    # |sin|, |cos| <= 2/3, so 16 remain
    pos = xy.from_pars(model="round", spacing=1.0, steps=4)
    assert len(pos) == 16
    # a larger extent with a consistent spacing keeps more shells
    assert len(xy.from_pars(model="round", spacing=1.0, extent=(4, 4.5))) == 16
    # unequal steps: extent (2, 4) keeps the origin, shell 1 and two points of shell 2
    assert len(xy.from_pars(model="round", spacing=1.0, steps=(2, 4))) == 8


def test_steps_robust_rounding():
    assert 1.2 / 0.1 == 11.999999999999998
    e, s, d = xy.complete(extent=1.2, spacing=0.1)
    assert s.tolist() == [12, 12]
    # not within tolerance: floor
    e, s, d = xy.complete(extent=1.25, spacing=0.1)
    assert s.tolist() == [12, 12]
    e, s, d = xy.complete(extent=(1.2, 0.55), spacing=0.1)
    assert s.tolist() == [12, 5]
    # the round model uses the rounded value: 7 shells, not 6
    pos = xy.from_pars(model="round", spacing=0.1, extent=1.2)
    assert len(pos) == 116
    e, s, d = xy.complete(steps=(4, 8), spacing=0.5)
    np.testing.assert_allclose(e, [2.0, 4.0])
    e, s, d = xy.complete(steps=10, extent=3e-6)
    np.testing.assert_allclose(d, [3e-7, 3e-7])
    # consistent triple accepted
    xy.complete(extent=1.2, steps=12, spacing=0.1)


def test_raster_count_spacing_centred():
    pos = xy.from_pars(model="raster", spacing=(1e-6, 2e-6), steps=(4, 5))
    assert pos.shape == (20, 2)
    np.testing.assert_allclose(pos.mean(axis=0), 0.0, atol=1e-18)
    ys = np.unique(np.round(pos[:, 0] / 1e-6, 9))
    xs = np.unique(np.round(pos[:, 1] / 2e-6, 9))
    np.testing.assert_allclose(np.diff(ys), 1.0)
    np.testing.assert_allclose(np.diff(xs), 1.0)
    assert len(ys) == 4 and len(xs) == 5
    # x is the fast axis
    np.testing.assert_allclose(pos[1] - pos[0], [0.0, 2e-6])
    np.testing.assert_allclose(xy.raster_scan(3, 2, 1.0), [[-1, -0.5], [-1, 0.5], [0, -0.5],
                                                          [0, 0.5], [1, -0.5], [1, 0.5]])
    # from extent and spacing
    pos = xy.from_pars(model="raster", spacing=1.0, extent=10.0)
    assert len(pos) == 100 and np.abs(pos).max() == 4.5


def test_spiral_within_extent_and_nn_spacing():
    spacing = 1e-6
    extent = 20e-6
    pos = xy.from_pars(model="spiral", spacing=spacing, extent=extent)
    r = np.hypot(pos[:, 0], pos[:, 1])
    assert r.max() <= extent / 2 * (1 + 1e-9)
    assert r.max() > extent / 2 * 0.95  # fills out to the edge
    d, _ = cKDTree(pos).query(pos, 2)
    nn = d[:, 1]
    assert abs(np.median(nn) / spacing - 1) < 0.03
    assert nn.min() > 0.85 * spacing and nn.max() < 1.1 * spacing
    # a sunflower is a little less dense than a hexagonal packing with the
    # same nearest-neighbour distance
    hexagonal = np.pi * (extent / 2) ** 2 / (np.sqrt(3) / 2 * spacing ** 2)
    assert 0.7 * hexagonal < len(pos) < hexagonal
    # ordered from the centre outwards
    assert np.all(np.diff(r) >= 0)
    assert len(xy.spiral_scan(1.0, 10.0, maxpts=7)) == 7


def test_offset_then_cut_then_count():
    base = xy.from_pars(model="raster", spacing=1.0, steps=4)  # -1.5 .. 1.5, extent 4
    shifted = xy.from_pars(model="raster", spacing=1.0, steps=4, offset=(0.25, -0.5))
    np.testing.assert_allclose(shifted, base + [0.25, -0.5])
    # an offset that pushes a column beyond extent/2 removes it
    cut = xy.from_pars(model="raster", spacing=1.0, steps=4, offset=(0.0, 1.0))
    assert len(cut) == 12 and cut[:, 1].max() == 1.5
    first = xy.from_pars(model="raster", spacing=1.0, steps=4, count=5)
    np.testing.assert_array_equal(first, base[:5])
    assert len(xy.from_pars(model="raster", spacing=1.0, steps=4, count=1000)) == 16


def test_jitter_seeded():
    kw = dict(model="raster", spacing=1.0, steps=5)  # extent 5, points at <= 2
    a = xy.from_pars(jitter=0.1, seed=1, **kw)
    b = xy.from_pars(jitter=0.1, seed=1, **kw)
    c = xy.from_pars(jitter=0.1, seed=2, **kw)
    ref = xy.from_pars(**kw)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    dev = a - ref
    assert 0.05 < dev.std() < 0.2


def test_custom_positions():
    p = [[0.0, 1e-6], [2e-6, -3e-6], [5e-6, 5e-6]]
    np.testing.assert_array_equal(xy.from_pars(model=None, positions=p), np.array(p))
    np.testing.assert_array_equal(xy.from_pars(model="custom", positions=p, count=2),
                                  np.array(p[:2]))
    np.testing.assert_array_equal(xy.from_pars({"model": np.array(p)}), np.array(p))
    np.testing.assert_array_equal(xy.from_pars(np.array(p)), np.array(p))
    # a given extent still clips, the offset is added first
    out = xy.from_pars(model="custom", positions=p, extent=8e-6, offset=(1e-6, 0))
    np.testing.assert_allclose(out, [[1e-6, 1e-6], [3e-6, -3e-6]])


@pytest.mark.parametrize("kw, match", [
    (dict(model="round", spacing=0.1, steps=10, extent=1.2), "disagree"),
    (dict(model="round"), "two of"),
    (dict(model="raster", spacing=1.0), "two of"),
    (dict(model="round", spacing=-1.0, extent=10.0), "spacing"),
    (dict(model="round", spacing=1.0, extent=0.0), "extent"),
    (dict(model="raster", steps=0, spacing=1.0), "steps"),
    (dict(model="raster", steps=2.5, spacing=1.0), "integer"),
    (dict(model="raster", spacing=2.0, extent=1.0), "smaller"),
    (dict(model="hexagonal", spacing=1.0, steps=3), "round"),
    (dict(model=None), "positions"),
    (dict(model="custom", positions=[[1, 2, 3]]), "positions"),
    (dict(model="raster", spacing=1.0, steps=3, count=0), "count"),
    (dict(model="raster", spacing=(1.0, 2.0, 3.0), steps=3), "pair"),
    (dict(model="raster", spacing=1.0, steps=3, spaceing=2.0), "unknown"),
])
def test_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        xy.from_pars(kw)


def test_unknown_model_lists_valid_ones():
    with pytest.raises(ValueError) as e:
        xy.from_pars(model="zigzag", spacing=1.0, steps=3)
    msg = str(e.value)
    for m in ("'round'", "'raster'", "'spiral'", "'custom'"):
        assert m in msg
