"""Tests for ptycli.utils.parameters.Param."""

import copy
import io
import pickle
import re

import numpy as np
import pytest
import yaml

from ptycli.utils import Param
from ptycli.utils.parameters import _id_token

ACCESSRULE_TAIL = [
    "  * storageID            : None",
    "  * shape                : None",
    "  * coord                : None",
    "  * psize                : 1.0",
    "  * layer                : 0",
    "  * active               : True",
]


def accessrule():
    return Param(storageID=None, shape=None, coord=None, psize=1.0, layer=0, active=True)


# -- printing ---------------------------------------------------------------

def test_print_layout_matches_seed():
    p = accessrule()
    lines = str(p).split("\n")
    assert re.fullmatch(r"\* id[0-9A-Z]{10}           : ptycli\.utils\.parameters\.Param\(6\)",
                        lines[0])
    assert lines[1:] == ACCESSRULE_TAIL
    # the separator sits at column 24 on every line
    assert all(line.index(" : ") == 24 for line in lines)
    assert repr(p) == str(p)


def test_id_token_stable_and_distinct():
    p, q = accessrule(), accessrule()
    assert str(p).split()[1] == str(p).split()[1] == _id_token(p)
    assert _id_token(p) != _id_token(q)
    assert re.fullmatch(r"id[0-9A-Z]{10}", _id_token(p))


def test_print_nested_and_values():
    p = Param()
    p.verbose_level = 3
    p["scans.MF.data.shape"] = (4, 4)
    p.name = "Full"
    p.small = np.array([1.0, 1.0])
    p.big = np.zeros((1, 64, 64), dtype=np.complex64)
    p.npf = np.float64(0.5)
    lines = str(p).split("\n")
    assert lines[0].endswith(" : ptycli.utils.parameters.Param(6)")
    assert lines[1:] == [
        "  * verbose_level        : 3",
        "  * scans                : ptycli.utils.parameters.Param(1)",
        "    * MF                 : ptycli.utils.parameters.Param(1)",
        "      * data             : ptycli.utils.parameters.Param(1)",
        "        * shape          : (4, 4)",
        "  * name                 : 'Full'",
        "  * small                : [1. 1.]",
        "  * big                  : array(shape=(1, 64, 64), dtype=complex64)",
        "  * npf                  : 0.5",
    ]


def test_print_empty_and_long_key():
    assert str(Param()).endswith(" : ptycli.utils.parameters.Param(0)")
    assert "\n" not in str(Param())
    p = Param()
    p.a_very_long_parameter_name_indeed = 1
    assert str(p).split("\n")[1] == "  * a_very_long_parameter_name_indeed : 1"


def test_print_recursive_tree_terminates():
    p = Param(a=1)
    p.me = p
    assert "<recursive" in str(p)


# -- attribute and item access -------------------------------------------------

def test_attribute_access_and_hasattr():
    p = Param()
    p.a = Param()
    p.a.b = 1
    assert p["a"]["b"] == 1 and p.a.b == 1
    assert hasattr(p, "a") and not hasattr(p, "missing")
    with pytest.raises(AttributeError):
        p.missing
    with pytest.raises(KeyError):
        p["missing"]
    assert getattr(p, "missing", 42) == 42
    del p.a
    assert "a" not in p
    with pytest.raises(AttributeError):
        del p.a


def test_dotted_keys():
    p = Param()
    p["a.b.c"] = 1
    assert isinstance(p.a, Param) and isinstance(p.a.b, Param)
    assert p.a.b.c == 1
    assert p["a.b.c"] == 1
    assert "a.b.c" in p and "a.b" in p and "a.x" not in p and "x.y" not in p
    assert p.get("a.b") is p.a.b
    assert p.get("a.b.x", "dflt") == "dflt"
    assert p.get("a.b.c.d", 7) == 7  # c is a leaf
    p["a.b.d"] = 2
    assert list(p.a.b.keys()) == ["c", "d"]
    assert p.pop("a.b.c") == 1 and "a.b.c" not in p
    assert p.pop("a.b.zz", None) is None
    del p["a.b.d"]
    assert p.a.b == {}
    with pytest.raises(KeyError):
        del p["a.b.d"]
    with pytest.raises(TypeError):
        p["x"] = 1
        p["x.y"] = 2
    with pytest.raises(KeyError):
        p["a..b"] = 1
    assert p.setdefault("q.r", 5) == 5 and p.q.r == 5


def test_dicts_become_params():
    p = Param({"a": {"b": {"c": 1}}}, d={"e": 2})
    assert isinstance(p.a, Param) and isinstance(p.a.b, Param) and isinstance(p.d, Param)
    p.x = {"y": {"z": 3}}
    assert isinstance(p.x.y, Param) and p.x.y.z == 3
    p.lst = [{"name": "DM"}, 3]
    assert isinstance(p.lst[0], Param) and p.lst[0].name == "DM"
    plain = [1, 2]
    p.plain = plain
    assert p.plain is plain  # lists without dicts are stored as given
    sub = Param(k=1)
    p.sub = sub
    assert p.sub is sub  # Params are stored as given


def test_dict_method_names_and_dir():
    p = Param(items=3, alpha=1)
    assert p["items"] == 3  # the method wins for attribute reads
    assert callable(p.items)
    assert "alpha" in dir(p)


# -- copy, pickle ------------------------------------------------------------

def test_deep_copy_independence():
    p = Param()
    p["a.b"] = np.zeros(3)
    p["a.c"] = [1, 2]
    q = p.copy()
    assert isinstance(q, Param) and isinstance(q.a, Param)
    q.a.b[0] = 5
    q.a.c.append(3)
    q.a.new = 1
    assert p.a.b[0] == 0 and p.a.c == [1, 2] and "new" not in p.a
    r = copy.deepcopy(p)
    assert isinstance(r.a, Param) and r.a is not p.a
    assert copy.copy(p).a is p.a


def test_copy_depth():
    p = Param()
    p["a.b.c"] = [0]
    shallow = p.copy(0)
    assert shallow is not p and shallow.a is p.a
    one = p.copy(1)
    assert one.a is not p.a and one.a.b is p.a.b
    two = p.copy(2)
    assert two.a.b is not p.a.b and two.a.b.c is p.a.b.c


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_pickle_round_trip(protocol):
    p = accessrule()
    p["x.y"] = np.arange(3)
    q = pickle.loads(pickle.dumps(p, protocol))
    assert type(q) is Param and type(q.x) is Param
    assert q.psize == 1.0 and q.active is True and q.storageID is None
    np.testing.assert_array_equal(q.x.y, np.arange(3))
    assert list(q.keys()) == list(p.keys())


def test_deepcopy_self_reference():
    p = Param(a=1)
    p.me = p
    q = copy.deepcopy(p)
    assert q.me is q and q.a == 1


# -- update ------------------------------------------------------------------

def test_update_is_recursive():
    p = Param()
    p["engine.numiter"] = 100
    p["engine.alpha"] = 1.0
    p["other"] = 1
    q = Param()
    q["engine.numiter"] = 20
    q["engine.beta"] = 0.5
    q["new.sub"] = 1
    p.update(q)
    assert p.engine == {"numiter": 20, "alpha": 1.0, "beta": 0.5}
    assert p.other == 1 and p.new.sub == 1
    # later merges into p never touch q
    p.update({"new": {"more": 2}})
    assert q.new == {"sub": 1}
    assert p.new == {"sub": 1, "more": 2}


def test_update_flat_and_depth():
    p = Param()
    p["a.b.c"] = 1
    p["a.b.d"] = 2
    p["a.e"] = 3
    p.update({"a": {"b": {"c": 10}}}, in_place_depth=0)
    assert p.a == {"b": {"c": 10}}
    p = Param()
    p["a.b.c"] = 1
    p["a.b.d"] = 2
    p["a.e"] = 3
    p.update({"a": {"b": {"c": 10}}}, in_place_depth=1)
    # a merged, a.b replaced
    assert p.a == {"b": {"c": 10}, "e": 3}


def test_update_kwargs_dotted_and_leaf_replacement():
    p = Param(a=1)
    p.update({"x.y": 2}, z=3)
    assert p.x.y == 2 and p.z == 3
    p.update(a={"b": 1})  # a dict replaces a leaf
    assert p.a.b == 1
    p.update(a=5)  # and a leaf replaces a subtree
    assert p.a == 5
    p |= {"x": {"w": 1}}
    assert p.x == {"y": 2, "w": 1}


def test_to_dict_plain():
    p = Param()
    p["a.b"] = 1
    p.lst = [{"c": 2}]
    d = p.to_dict()
    assert d == {"a": {"b": 1}, "lst": [{"c": 2}]}
    assert type(d) is dict and type(d["a"]) is dict and type(d["lst"][0]) is dict


# -- YAML ------------------------------------------------------------------

CONFIG = """\
verbose_level: 3
data_type: single
scans:
  MF:
    name: Full
    data:
      name: MoonFlowerScan
      shape: 128
      num_frames: 400
      psize: 1.72e-4
      center: null
engines:
  engine00: {name: DM, numiter: 80, alpha: 1.0}
"""


def test_yaml_round_trip_text():
    p = Param.from_yaml(CONFIG)
    assert isinstance(p.scans.MF.data, Param)
    assert p.scans.MF.data.shape == 128
    assert p.scans.MF.data.psize == pytest.approx(1.72e-4)
    assert p.scans.MF.data.center is None
    assert p.engines.engine00.alpha == 1.0
    text = p.to_yaml()
    assert yaml.safe_load(text) == yaml.safe_load(CONFIG)
    again = Param.from_yaml(text)
    assert again.to_yaml() == text
    assert again.to_dict() == p.to_dict()


def test_yaml_file_and_stream(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text(CONFIG)
    for source in (path, str(path), io.StringIO(CONFIG)):
        assert Param.from_yaml(source).scans.MF.data.num_frames == 400
    p = Param.from_yaml(CONFIG)
    out = tmp_path / "out.yaml"
    p.to_yaml(out)
    assert Param.from_yaml(out).to_dict() == p.to_dict()
    buf = io.StringIO()
    p.to_yaml(buf)
    assert buf.getvalue() == p.to_yaml()


def test_yaml_empty_and_bad_top_level():
    assert Param.from_yaml("") == {}
    with pytest.raises(TypeError):
        Param.from_yaml("- 1\n- 2\n")


def test_yaml_numpy_values_plain():
    p = Param()
    p.f64 = np.float64(0.1)
    p.f32 = np.float32(0.1)
    p.i = np.int64(3)
    p.b = np.bool_(True)
    p.arr = np.array([[1, 2], [3, 4]])
    p.arr32 = np.array([0.5, 0.25], dtype=np.float32)
    p.tup = (4, 4)
    p.none = None
    text = p.to_yaml()
    assert "!!" not in text  # no python tags
    back = yaml.safe_load(text)
    assert back == {"f64": 0.1, "f32": 0.1, "i": 3, "b": True, "arr": [[1, 2], [3, 4]],
                    "arr32": [0.5, 0.25], "tup": [4, 4], "none": None}
    assert type(back["i"]) is int and type(back["b"]) is bool
