"""The seed's first tutorial (Storage, View, Container) with the values it prints."""
import textwrap

import numpy as np
import pytest

from ptycli import utils as u
from ptycli.core import Container, View
from ptycli.core.classes import DEFAULT_ACCESSRULE


def block(text):
    return textwrap.dedent(text).strip("\n")


@pytest.fixture
def tut():
    """Run the tutorial step by step, recording what it prints."""
    out = {}
    C1 = Container(data_type="real")
    S1 = C1.new_storage(shape=(1, 7, 7))
    out["id"] = S1.ID
    out["report"] = S1.formatted_report()[0]
    out["psize"] = str(S1.psize)
    y, x = S1.grids()
    out["y0"], out["x0"] = str(y), str(x)
    out["center0"] = str(S1.center)
    S1.center = (2, 2)
    S1.psize = 0.1
    g = S1.grids()
    out["g0"], out["g1"] = str(g[0]), str(g[1])
    S1.origin -= 0.12
    y, x = S1.grids()
    out["y1"], out["x1"] = str(y), str(x)
    out["center1"] = str(S1.center)
    S1.fill(x + y)
    out["data"] = str(S1.data)
    ar = DEFAULT_ACCESSRULE.copy()
    out["ar"] = str(ar)
    ar.shape = (4, 4)
    ar.coord = 0.0
    ar.storageID = S1.ID
    ar.psize = None
    V1 = View(C1, ID=None, accessrule=ar)
    out["v1"] = (str(V1.shape), str(V1.coord), str(V1.storageID), str(V1.psize), str(V1.storage))
    out["v1d"] = "%s %s %s" % (V1.dlayer, V1.dlow, V1.dhigh)
    data = S1[V1]
    out["v1data"] = str(data)
    out["same"] = (np.allclose(data, C1[V1]), np.allclose(data, V1.data), V1.storage is S1,
                   V1.storageID in C1.S.keys())
    out["sp0"] = "%s %s %s" % (V1.dcoord, V1.pcoord, V1.sp)
    V1.coord = (0.08, 0.08)
    S1.update_views(V1)
    out["sp1"] = "%s %s %s" % (V1.dcoord, V1.pcoord, V1.sp)
    out["dhigh1"] = str(V1.dhigh)
    V1.coord = (0.28, 0.28)
    S1.update_views(V1)
    out["dhigh2"] = str(V1.dhigh)
    out["edge"] = str(S1[V1])
    out["edge_shapes"] = "%s %s" % (S1[V1].shape, V1.shape)
    out["shape0"] = S1.shape
    mn = S1[V1].mean()
    S1.fill_value = mn
    S1.reformat()
    out["shape1"] = S1.shape
    out["after_crop"] = S1.data.copy()
    out["mn"] = mn
    ar2 = ar.copy()
    ar2.coord = (-0.82, -0.82)
    V2 = View(C1, ID=None, accessrule=ar2)
    S1.fill_value = 0.0
    S1.reformat()
    out["shape2"] = S1.shape
    V2.data = V1.data.copy()
    out["v2_equals_v1"] = np.array_equal(V2.data, V1.data)
    for i in range(1, 11):
        ar2 = ar.copy()
        ar2.coord = (-0.82 + i * 0.1, -0.82 + i * 0.1)
        View(C1, ID=None, accessrule=ar2)
    S1.data[:] = S1.get_view_coverage()
    out["coverage"] = S1.data.copy()
    ar = DEFAULT_ACCESSRULE.copy()
    ar.shape = 200
    ar.coord = 0.0
    ar.storageID = "S100"
    ar.psize = 1.0
    V3 = View(C1, ID=None, accessrule=ar)
    out["v3"] = V3
    out["creport"] = C1.formatted_report()
    out["C1"], out["S1"], out["V1"], out["V2"] = C1, S1, V1, V2
    return out


def test_storage_id_and_report(tut):
    assert tut["id"] == "S0000"
    assert tut["report"].rstrip("\n") == block("""
        (C)ontnr : Memory : Shape            : Pixel size      : Dimensions      : Views
        (S)torgs : (MB)   : (Pixel)          : (meters)        : (meters)        : act.
        --------------------------------------------------------------------------------
        S0000    :    0.0 :        1 * 7 * 7 :       1.0*1.0e0 :       7.0*7.0e0 :     0
        """)
    assert tut["psize"] == "[1. 1.]"


def test_grids_and_center_moves(tut):
    assert tut["y0"].splitlines()[0] == "[[[-3. -3. -3. -3. -3. -3. -3.]"
    assert tut["x0"].splitlines()[-1] == "  [-3. -2. -1.  0.  1.  2.  3.]]]"
    assert tut["center0"] == "[3 3]"
    assert tut["g0"] == block("""
        [[[-0.2 -0.2 -0.2 -0.2 -0.2 -0.2 -0.2]
          [-0.1 -0.1 -0.1 -0.1 -0.1 -0.1 -0.1]
          [ 0.   0.   0.   0.   0.   0.   0. ]
          [ 0.1  0.1  0.1  0.1  0.1  0.1  0.1]
          [ 0.2  0.2  0.2  0.2  0.2  0.2  0.2]
          [ 0.3  0.3  0.3  0.3  0.3  0.3  0.3]
          [ 0.4  0.4  0.4  0.4  0.4  0.4  0.4]]]""")
    assert tut["g1"].splitlines()[0] == "[[[-0.2 -0.1  0.   0.1  0.2  0.3  0.4]"
    assert tut["y1"] == block("""
        [[[-0.32 -0.32 -0.32 -0.32 -0.32 -0.32 -0.32]
          [-0.22 -0.22 -0.22 -0.22 -0.22 -0.22 -0.22]
          [-0.12 -0.12 -0.12 -0.12 -0.12 -0.12 -0.12]
          [-0.02 -0.02 -0.02 -0.02 -0.02 -0.02 -0.02]
          [ 0.08  0.08  0.08  0.08  0.08  0.08  0.08]
          [ 0.18  0.18  0.18  0.18  0.18  0.18  0.18]
          [ 0.28  0.28  0.28  0.28  0.28  0.28  0.28]]]""")
    assert tut["x1"].splitlines()[0] == "[[[-0.32 -0.22 -0.12 -0.02  0.08  0.18  0.28]"
    assert tut["center1"] == "[3.2 3.2]"
    assert tut["data"] == block("""
        [[[-0.64 -0.54 -0.44 -0.34 -0.24 -0.14 -0.04]
          [-0.54 -0.44 -0.34 -0.24 -0.14 -0.04  0.06]
          [-0.44 -0.34 -0.24 -0.14 -0.04  0.06  0.16]
          [-0.34 -0.24 -0.14 -0.04  0.06  0.16  0.26]
          [-0.24 -0.14 -0.04  0.06  0.16  0.26  0.36]
          [-0.14 -0.04  0.06  0.16  0.26  0.36  0.46]
          [-0.04  0.06  0.16  0.26  0.36  0.46  0.56]]]""")


def test_default_accessrule_print(tut):
    lines = tut["ar"].splitlines()
    assert lines[0].startswith("* id") and lines[0].endswith(": ptycli.utils.parameters.Param(6)")
    assert lines[0].index(":") == 25
    assert lines[1:] == [
        "  * storageID            : None",
        "  * shape                : None",
        "  * coord                : None",
        "  * psize                : 1.0",
        "  * layer                : 0",
        "  * active               : True",
    ]


def test_view_placement(tut):
    assert tut["v1"] == ("[4 4]", "[0. 0.]", "S0000", "[0.1 0.1]",
                         "          S0000 :    0.00 MB :: data=(1, 7, 7) @float64 psize=[0.1 0.1] center=[3.2 3.2]")
    assert tut["v1d"] == "0 [1 1] [5 5]"
    assert tut["v1data"] == block("""
        [[-0.44 -0.34 -0.24 -0.14]
         [-0.34 -0.24 -0.14 -0.04]
         [-0.24 -0.14 -0.04  0.06]
         [-0.14 -0.04  0.06  0.16]]""")
    assert tut["same"] == (True, True, True, True)
    assert tut["sp0"] == "[3 3] [3.2 3.2] [0.2 0.2]"
    assert tut["sp1"] == "[4 4] [4. 4.] [0. 0.]"
    assert tut["dhigh1"] == "[6 6]"
    assert tut["dhigh2"] == "[8 8]"
    assert tut["edge"] == block("""
        [[0.16 0.26 0.36]
         [0.26 0.36 0.46]
         [0.36 0.46 0.56]]""")
    assert tut["edge_shapes"] == "(3, 3) [4 4]"


def test_reformat_crop_then_grow(tut):
    assert tut["shape0"] == (1, 7, 7)
    assert tut["shape1"] == (1, 4, 4)
    # the cropped buffer keeps the view's 3x3 data and pads with the fill value
    crop = tut["after_crop"][0]
    np.testing.assert_allclose(crop[:3, :3], [[0.16, 0.26, 0.36], [0.26, 0.36, 0.46], [0.36, 0.46, 0.56]])
    np.testing.assert_allclose(crop[3, :], tut["mn"])
    np.testing.assert_allclose(crop[:, 3], tut["mn"])
    assert tut["shape2"] == (1, 15, 15)
    assert tut["v2_equals_v1"]


def test_coverage_and_container_report(tut):
    cov = tut["coverage"][0]
    # views step one pixel along the diagonal, so at most 4 of the 4x4 views overlap
    assert cov.max() == 4 and cov.min() == 0
    assert np.array_equal(np.diag(cov), [1, 2, 3] + [4] * 9 + [3, 2, 1])
    # 12 views of 4x4 pixels each
    assert cov.sum() == 12 * 16
    S1, V1 = tut["S1"], tut["V1"]
    assert tut["creport"].rstrip("\n") == block("""
        (C)ontnr : Memory : Shape            : Pixel size      : Dimensions      : Views
        (S)torgs : (MB)   : (Pixel)          : (meters)        : (meters)        : act.
        --------------------------------------------------------------------------------
        None     :    0.3 : float64
        S0000    :    0.0 :      1 * 15 * 15 :      1.0*1.0e-1 :       1.5*1.5e0 :    12
        S100     :    0.3 :    1 * 200 * 200 :       1.0*1.0e0 :       2.0*2.0e2 :     1
        """)
    assert tut["v3"].storage.shape == (1, 200, 200)
    assert tut["v3"].storage.ID == "S100"


def test_reformat_twice_is_idempotent(tut):
    S1 = tut["S1"]
    before = S1.data.copy(), S1.center.copy()
    S1.reformat()
    assert np.array_equal(S1.data, before[0])
    assert np.array_equal(S1.center, before[1])
