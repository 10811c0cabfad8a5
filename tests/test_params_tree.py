"""The parameter tree of a run: registries, scan and top-level declarations, validation,
overrides, listings and the commented default YAML."""

import sys
import textwrap

import pytest

from ptycli.errors import ConfigError
from ptycli.params import registry, tree
from ptycli.params.declare import Parameter, ParamSet
from ptycli.params.yamlio import load_config
from ptycli.utils.parameters import Param


class _Factory:
    """Stands in for a loader/engine class."""


class _OtherFactory:
    pass


@pytest.fixture
def plugins():
    """Register a dummy loader, dummy engines (and DM when no real one exists); remove them after."""
    registry.load_plugins()
    added = []

    def add(reg, name, ps):
        if name not in reg:
            reg.register(name, ps, _Factory)
            added.append((reg, name))

    add(registry.LOADERS, "TestLoader", ParamSet("TestLoader", [
        Parameter("shape", 64, "intpair", "frame shape", low=8, unit="pixel"),
        Parameter("num_frames", 10, "int", "frames", low=1),
    ]))
    add(registry.ENGINES, "TestEngine", ParamSet("TestEngine", [
        Parameter("alpha", 1.0, "float", "mixing", low=0.0, high=1.0),
    ]))
    add(registry.ENGINES, "OtherEngine", ParamSet("OtherEngine", [
        Parameter("numiter", 7, "int", "own default", low=0),
        Parameter("beta", 0.5, "float", "step"),
    ]))
    add(registry.ENGINES, "DM", ParamSet("DM", [Parameter("alpha", 1.0, "float", "DM mixing")]))
    yield
    for reg, name in added:
        reg.unregister(name)


def _scan(**extra):
    s = {"data": {"name": "TestLoader"}}
    s.update(extra)
    return s


def _err(tree_, **kw):
    with pytest.raises(ConfigError) as info:
        tree.validate(tree_, **kw)
    assert info.value.exit_code == 2
    msg = str(info.value)
    assert "\n" not in msg
    return msg


# -- registries -------------------------------------------------------------------

def test_registry_lookup_is_case_insensitive_and_canonical(plugins):
    assert registry.get_loader("testloader").name == "TestLoader"
    assert registry.get_engine("TESTENGINE").factory is _Factory
    assert "TestLoader" in registry.loaders()
    assert registry.engines() == sorted(registry.engines(), key=str.lower)
    assert {"Full", "Vanilla"} <= set(registry.scan_models())


def test_registry_unknown_name_lists_valid_names(plugins):
    with pytest.raises(ConfigError) as info:
        registry.get_engine("TestEngin", path="engines.e1.name")
    msg = str(info.value)
    assert info.value.exit_code == 2
    assert msg.startswith("engines.e1.name: unknown engine 'TestEngin'")
    assert "did you mean TestEngine?" in msg
    assert "OtherEngine" in msg


def test_registry_decorator_and_conflicts():
    ps = ParamSet("X", [Parameter("a", 1, "int", "a")])
    try:
        @registry.register_engine("ZzTmpEngine", ps)
        class Eng:
            pass

        assert registry.get_engine("zztmpengine").factory is Eng
        # same class again (module reload) is fine; another class is a programming error
        registry.register_engine("ZzTmpEngine", ps, Eng)
        with pytest.raises(ValueError):
            registry.register_engine("zztmpENGINE", ps, _OtherFactory)
        registry.register_engine("ZzTmpEngine", ps, _OtherFactory, replace=True)
        assert registry.get_engine("ZzTmpEngine").factory is _OtherFactory
        with pytest.raises(ValueError):
            registry.register_engine("bad.name", ps, Eng)
    finally:
        registry.ENGINES.unregister("ZzTmpEngine")
    assert "ZzTmpEngine" not in registry.engines()


def test_scan_model_placeholders_take_a_factory():
    old = registry.SCAN_MODELS.find("Vanilla")
    try:
        registry.register_scan_model("Vanilla", None, _Factory)
        assert registry.get_scan_model("vanilla").factory is _Factory
    finally:
        registry.SCAN_MODELS._entries["vanilla"] = old


def test_load_plugins_tolerates_missing_and_broken_packages(tmp_path, monkeypatch):
    pkg = tmp_path / "zz_broken_engines"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "good.py").write_text(
        "from ptycli.params.registry import register_engine\n"
        "register_engine('ZzGood', None, object)\n")
    (pkg / "bad.py").write_text("raise RuntimeError('half written')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "_PLUGIN_PACKAGES",
                        {"loader": "zz_no_such_package", "engine": "zz_broken_engines"})
    monkeypatch.setattr(registry, "_errors", {})
    try:
        errors = registry.load_plugins(force=True)
        assert "ZzGood" in registry.engines()
        assert "zz_broken_engines.bad" in errors and "half written" in errors["zz_broken_engines.bad"]
        with pytest.raises(ConfigError) as info:
            registry.get_engine("nothing")
        assert "zz_broken_engines.bad" in str(info.value)
    finally:
        registry.ENGINES.unregister("ZzGood")
        sys.modules.pop("zz_broken_engines.good", None)
        sys.modules.pop("zz_broken_engines", None)


# -- defaults and validation ------------------------------------------------------------

def test_defaults_top_level():
    d = tree.defaults()
    assert isinstance(d, Param)
    assert d.verbose_level == "info" and d.data_type == "single" and d.run is None
    assert d.io.home == "./" and d.io.rfile == "{home}/{run}.h5"
    assert d.io.checkpoint.interval == 50 and d.io.checkpoint.path is None
    assert d.io.format == ["h5"]
    assert d.scans == {} and d.engines == {}


def test_validate_fills_defaults_and_canonical_names(plugins):
    raw = {"scans": {"MF": {"name": "vanilla", "data": {"name": "testloader", "num_frames": 5}}},
           "engines": {"e1": {"name": "testengine"}}}
    snapshot = repr(raw)
    p = tree.validate(raw)
    assert repr(raw) == snapshot  # input untouched
    s = p.scans.MF
    # propagation defaults to null: the data file's (when it records one), else farfield at model build
    assert s.name == "Vanilla" and s.propagation is None
    assert list(s.data) == ["name", "shape", "num_frames"]
    assert s.data.name == "TestLoader" and s.data.shape == (64, 64) and s.data.num_frames == 5
    ill = s.illumination
    assert ill.model == "auto" and ill.photons is None
    assert ill.aperture.form == "circ" and ill.aperture.size is None
    assert ill.aperture.size_fraction == 0.5 and ill.aperture.edge == 2.0
    assert ill.aperture.central_stop is None and ill.aperture.offset == (0.0, 0.0)
    assert ill.propagation.focussed is None and ill.propagation.parallel is None
    assert ill.diversity.noise == (0.5, 1.0) and ill.diversity.power == 0.1 and ill.diversity.seed == 1
    assert s.sample.model == "fill" and s.sample.fill == 1.0 and s.sample.fill_phase == 0.0
    assert s.sample.diversity.noise == (0.0, 0.0)
    assert s.coherence.num_probe_modes == 1 and s.coherence.num_object_modes == 1
    assert s.probe_share is None and s.object_share is None and s.tags == []
    e = p.engines.e1
    assert list(e) == ["name", "numiter", "alpha"]
    assert e.name == "TestEngine" and e.numiter == 20 and e.alpha == 1.0
    # an engine may redeclare numiter with its own default
    assert tree.validate({"engines": {"o": {"name": "otherengine"}}}).engines.o.numiter == 7
    # validating a validated tree changes nothing
    assert tree.validate(p) == p


def test_dotted_keys_and_type_coercion(plugins):
    p = tree.validate({
        "scans.MF.data.name": "TestLoader",
        "scans.MF.data.shape": [32, 48],
        "scans.MF.illumination.propagation.focussed": "1e-3",
        "scans.MF.illumination.aperture.size": 2e-6,
        "scans.MF.coherence.num_probe_modes": "3",
        "scans.MF.tags": "first",
        "verbose_level": "DEBUG",
        "data_type": "Double",
        "io.format": "cxi",
    })
    s = p.scans.MF
    assert s.data.shape == (32, 48)
    assert s.illumination.propagation.focussed == 0.001
    assert s.illumination.aperture.size == (2e-6, 2e-6)
    assert s.coherence.num_probe_modes == 3
    assert s.tags == ["first"]
    assert p.verbose_level == "debug" and p.data_type == "double" and p.io.format == ["cxi"]
    msg = _err({"engines": {"e1": {"name": "TestEngine", "numiter": "ten"}}})
    assert msg.startswith("engines.e1.numiter: expected an integer")
    assert "'ten'" in msg
    msg = _err({"engines": {"e1": {"name": "TestEngine", "numiter": 2.5}}})
    assert "engines.e1.numiter" in msg and "whole number" in msg


@pytest.mark.parametrize("key, value, words", [
    ("coherence.num_probe_modes", 0, "lower limit 1"),
    ("coherence.num_object_modes", -2, "lower limit 1"),
    ("illumination.photons", 0, "greater than 0"),
    ("illumination.photons", -1e6, "greater than 0"),
    ("illumination.aperture.size_fraction", 1.5, "upper limit 1.0"),
    ("illumination.aperture.central_stop", -0.1, "lower limit 0.0"),
    ("illumination.aperture.form", "circle", "did you mean circ"),
    ("illumination.diversity.power", 2, "upper limit"),
    ("illumination.diversity.noise", [1, 2, 3], "exactly two"),
    ("propagation", "far", "did you mean farfield"),
    ("sample.fill", "one", "expected a number"),
    ("tags", [1], "not a string"),
])
def test_scan_limits_name_the_dotted_path(plugins, key, value, words):
    raw = {"scans": {"MF": _scan()}}
    raw["scans"]["MF"].update(Param({key: value}).to_dict())
    msg = _err(raw)
    assert msg.startswith("scans.MF.%s:" % key), msg
    assert words in msg


def test_unknown_keys_suggest_the_closest(plugins):
    msg = _err({"scans": {"MF": _scan(illumination={"aperure": {"size": 1e-6}})}})
    assert msg.startswith("scans.MF.illumination.aperure: unknown parameter")
    assert "did you mean aperture?" in msg
    msg = _err({"verbose_levle": 3})
    assert msg.startswith("verbose_levle: unknown parameter") and "verbose_level" in msg
    msg = _err({"io": {"checkpoint": {"intervall": 3}}})
    assert "io.checkpoint.intervall" in msg and "interval" in msg
    msg = _err({"scans": {"MF": {"data": {"name": "TestLoader", "shpe": 3}}}})
    assert msg.startswith("scans.MF.data.shpe: unknown parameter") and "did you mean shape?" in msg
    msg = _err({"engines": {"e1": {"name": "TestEngine", "alhpa": 0.5}}})
    assert msg.startswith("engines.e1.alhpa: unknown parameter") and "alpha" in msg


def test_loader_names(plugins):
    msg = _err({"scans": {"MF": {"data": {"name": "TestLoadr"}}}})
    assert msg.startswith("scans.MF.data.name: unknown loader 'TestLoadr'")
    assert "did you mean TestLoader?" in msg
    msg = _err({"scans": {"MF": {"illumination": {"model": "flat"}}}})
    assert msg.startswith("scans.MF.data.name: no loader given") and "TestLoader" in msg
    msg = _err({"scans": {"MF": {"data": "scan.h5"}}})
    assert msg.startswith("scans.MF.data: expected a mapping") and "TestLoader" in msg
    msg = _err({"scans": {"MF": _scan(name="Fulll")}})
    assert msg.startswith("scans.MF.name: unknown scan model") and "did you mean Full?" in msg


def test_engine_names_and_params(plugins):
    msg = _err({"engines": {"e1": {"numiter": 3}}})
    assert msg.startswith("engines.e1.name: no engine given") and "TestEngine" in msg
    msg = _err({"engines": {"e1": {"name": "TestEngin"}}})
    assert "did you mean TestEngine?" in msg
    msg = _err({"engines": {"e1": {"name": "TestEngine", "alpha": 2}}})
    assert msg.startswith("engines.e1.alpha:") and "upper limit" in msg
    msg = _err({"engines": {"e1": {"name": "TestEngine", "numiter": -1}}})
    assert msg.startswith("engines.e1.numiter:") and "lower limit 0" in msg
    msg = _err({"engines": {"e1": "DM"}})
    assert msg.startswith("engines.e1: expected a mapping")


def test_model_words_and_paths(plugins):
    def model(value, where="illumination"):
        return tree.validate({"scans": {"MF": _scan(**{where: {"model": value}})}}).scans.MF[where].model

    assert model("Flat") == "flat"
    assert model("FOCUSED") == "focused"
    assert model("guess/probe.npy") == "guess/probe.npy"
    assert model("old_run.H5") == "old_run.H5"
    assert model("Flower", "sample") == "flower"
    assert model("obj.hdf5", "sample") == "obj.hdf5"
    msg = _err({"scans": {"MF": _scan(illumination={"model": "aperure"})}})
    assert msg.startswith("scans.MF.illumination.model: unknown model 'aperure'")
    assert "did you mean aperture?" in msg and ".npy" in msg
    msg = _err({"scans": {"MF": _scan(sample={"model": "probe.txt"})}})
    assert msg.startswith("scans.MF.sample.model:")
    msg = _err({"scans": {"MF": _scan(illumination={"model": 3})}})
    assert msg.startswith("scans.MF.illumination.model:")


@pytest.mark.parametrize("value, expected", [
    (3, 3), ("4", 4), (0, 0), (5, 5), ("Warning", "warning"), ("warn", "warning"),
    ("critical", "critical"), ("inspect", "inspect"), (2.0, 2)])
def test_verbose_level_accepts(value, expected):
    assert tree.validate({"verbose_level": value}).verbose_level == expected


@pytest.mark.parametrize("value, words", [
    (6, "out of range"), (-1, "out of range"), ("infoo", "did you mean info?"), (True, "expected"),
    ([3], "expected"), (2.5, "expected")])
def test_verbose_level_rejects(value, words):
    msg = _err({"verbose_level": value})
    assert msg.startswith("verbose_level:") and words in msg


def test_io_parameters(plugins):
    msg = _err({"io": {"rfile": "{home}/{rnu}.h5"}})
    assert msg.startswith("io.rfile: unknown placeholder {rnu}") and "did you mean {run}?" in msg
    msg = _err({"io": {"rfile": "{home/x.h5"}})
    assert msg.startswith("io.rfile: malformed template")
    msg = _err({"io": {"format": ["h5", "hdf"]}})
    assert msg.startswith("io.format: unknown value 'hdf'")
    msg = _err({"io": {"format": []}})
    assert msg.startswith("io.format:") and "at least 1" in msg
    msg = _err({"io": {"checkpoint": {"interval": -5}}})
    assert msg.startswith("io.checkpoint.interval:")
    assert tree.validate({"io": {"format": ["CXI", "h5", "cxi"]}}).io.format == ["cxi", "h5"]
    msg = _err({"data_type": "half"})
    assert msg.startswith("data_type: unknown value 'half'")


def test_run_label_and_paths(plugins, tmp_path):
    p = tree.validate({"io": {"home": str(tmp_path), "rfile": "{home}/{run}_{engine}_{iterations:04d}.h5"},
                       "engines": {"dm": {"name": "TestEngine"}, "ml": {"name": "OtherEngine"}}})
    assert tree.resolve_run_label(p, "configs/siemens_star.yaml") == "siemens_star"
    assert p.run == "siemens_star"
    assert tree.resolve_run_label(p, "other.yaml") == "siemens_star"  # an explicit label stays
    assert tree.result_path(p) == str(tmp_path / "siemens_star_ml_0000.h5")
    assert tree.result_path(p, engine="dm", iterations=12) == str(tmp_path / "siemens_star_dm_0012.h5")
    assert tree.checkpoint_path(p) == str(tmp_path / "siemens_star_ml_0000.checkpoint.h5")
    q = tree.validate({"io": {"checkpoint": {"path": "{home}/ck/{run}.h5"}}})
    tree.resolve_run_label(q, "-")
    assert q.run == "ptycli"
    assert tree.checkpoint_path(q) == "ck/ptycli.h5"
    assert tree.result_path(q) == "ptycli.h5"


def test_labels_must_be_simple(plugins):
    msg = _err({"scans": {"my scan": _scan()}})
    assert msg.startswith("scans.my scan: invalid label")
    msg = _err({"engines": {3: {"name": "TestEngine"}}})
    assert msg.startswith("engines.3: invalid label")


def test_shares(plugins):
    p = tree.validate({"scans": {"A": _scan(), "B": _scan(probe_share="A", object_share="A")}})
    assert p.scans.B.probe_share == "A"
    assert tree.share_owner(p, "B", "probe") == "A" and tree.share_owner(p, "A", "object") == "A"
    msg = _err({"scans": {"scanA": _scan(), "B": _scan(probe_share="scanB")}})
    assert msg.startswith("scans.B.probe_share: no scan labelled 'scanB'") and "did you mean scanA?" in msg
    msg = _err({"scans": {"A": _scan(object_share="A")}})
    assert msg.startswith("scans.A.object_share:") and "itself" in msg
    msg = _err({"scans": {"A": _scan(), "B": _scan(probe_share="A"), "C": _scan(probe_share="B")}})
    assert msg.startswith("scans.C.probe_share:") and "name 'A' directly" in msg


def test_required_sections(plugins):
    msg = _err({}, require_scans=True)
    assert msg.startswith("scans: no scan given")
    msg = _err({"scans": {"MF": _scan()}}, require_scans=True, require_engines=True)
    assert msg.startswith("engines: no engine given")
    assert tree.validate({"scans": None, "engines": None}).scans == {}
    msg = _err([1, 2])
    assert msg.startswith("top level: expected a mapping")


# -- engine order ---------------------------------------------------------------------

def test_engine_order_is_the_yaml_order(plugins):
    text = textwrap.dedent("""\
        engines:
          zeta: {name: TestEngine, numiter: 1}
          alpha: {name: OtherEngine, numiter: 2}
          mid: {name: TestEngine, numiter: 3}
        """)
    p = tree.validate(load_config(text))
    seq = tree.engine_sequence(p)
    assert [label for label, _ in seq] == ["zeta", "alpha", "mid"]
    assert [e.numiter for _, e in seq] == [1, 2, 3]
    assert seq[1][1].name == "OtherEngine"
    p2 = tree.validate(tree.apply_overrides(load_config(text), ["engines.alpha.numiter=9",
                                                                "engines.aaa.name=TestEngine"]))
    assert [label for label, _ in tree.engine_sequence(p2)] == ["zeta", "alpha", "mid", "aaa"]
    assert p2.engines.alpha.numiter == 9
    assert tree.engine_sequence(tree.defaults()) == []


@pytest.mark.parametrize("scans, engines, want", [
    # ML first from a model probe (the automatic guess, the default): a DM warm-up of engines.ml.warmup
    ("{MF: {data: {name: MoonFlowerScan}}}", "{ml: {name: ML, numiter: 5}}", [("ml_warmup", "DM", 100), ("ml", "ML", 5)]),
    ("{MF: {data: {name: MoonFlowerScan}, illumination: {model: aperture}}}", "{ml: {name: ML, numiter: 5, warmup: 7}}",
     [("ml_warmup", "DM", 7), ("ml", "ML", 5)]),
    # turned off, a probe from a file (an earlier reconstruction), or ML not first: the chain as written
    ("{MF: {data: {name: MoonFlowerScan}}}", "{ml: {name: ML, numiter: 5, warmup: 0}}", [("ml", "ML", 5)]),
    ("{MF: {data: {name: MoonFlowerScan}, illumination: {model: probe.npy}}}", "{ml: {name: ML, numiter: 5}}",
     [("ml", "ML", 5)]),
    ("{MF: {data: {name: MoonFlowerScan}}}", "{dm: {name: DM, numiter: 3}, ml: {name: ML, numiter: 5}}",
     [("dm", "DM", 3), ("ml", "ML", 5)]),
    # LSQML first: 50 DM iterations by default; none on a multislice or variable-probe scan
    ("{MF: {data: {name: MoonFlowerScan}}}", "{l: {name: LSQML, numiter: 5}}", [("l_warmup", "DM", 50), ("l", "LSQML", 5)]),
    ("{MF: {data: {name: MoonFlowerScan}, sample: {slices: 2, slice_distance_m: 1.0e-6}}}",
     "{l: {name: LSQML, numiter: 5}}", [("l", "LSQML", 5)]),
    ("{MF: {data: {name: MoonFlowerScan}, illumination: {variable_modes: 2}}}", "{l: {name: LSQML, numiter: 5}}",
     [("l", "LSQML", 5)]),
    ("{MF: {data: {name: MoonFlowerScan}}}", "{l: {name: LSQML, numiter: 5, warmup: 0}}", [("l", "LSQML", 5)]),
    # engines without a warm-up (ePIE) run as written
    ("{MF: {data: {name: MoonFlowerScan}}}", "{e: {name: ePIE, numiter: 5}}", [("e", "ePIE", 5)]),
    ("{MF: {data: {name: MoonFlowerScan}, propagation: nearfield}}", "{e: {name: ePIE, numiter: 5}}",
     [("e", "ePIE", 5)]),
    # DM and RAAR first: warmup auto is 30 mPIE sweeps in near field, none in far field; a number applies anywhere
    ("{MF: {data: {name: MoonFlowerScan}}}", "{dm: {name: DM, numiter: 3}}", [("dm", "DM", 3)]),
    ("{MF: {data: {name: MoonFlowerScan}, propagation: nearfield}}", "{dm: {name: DM, numiter: 3}}",
     [("dm_warmup", "mPIE", 30), ("dm", "DM", 3)]),
    ("{MF: {data: {name: MoonFlowerScan}, propagation: nearfield}}", "{r: {name: RAAR, numiter: 3}}",
     [("r_warmup", "mPIE", 30), ("r", "RAAR", 3)]),
    ("{MF: {data: {name: MoonFlowerScan}, propagation: nearfield}}", "{dm: {name: DM, numiter: 3, warmup: 0}}",
     [("dm", "DM", 3)]),
    ("{MF: {data: {name: MoonFlowerScan}}}", "{dm: {name: DM, numiter: 3, warmup: 4}}",
     [("dm_warmup", "mPIE", 4), ("dm", "DM", 3)]),
    ("{MF: {data: {name: MoonFlowerScan}, propagation: nearfield, illumination: {model: probe.npy}}}",
     "{dm: {name: DM, numiter: 3}}", [("dm", "DM", 3)]),
    # auto only from the automatic guess: not from a plane wave or another model; a number from any model
    ("{MF: {data: {name: MoonFlowerScan}, propagation: nearfield, illumination: {model: flat}}}",
     "{dm: {name: DM, numiter: 3}}", [("dm", "DM", 3)]),
    ("{MF: {data: {name: MoonFlowerScan}, propagation: nearfield, illumination: {model: aperture}}}",
     "{dm: {name: DM, numiter: 3}}", [("dm", "DM", 3)]),
    ("{MF: {data: {name: MoonFlowerScan}, propagation: nearfield, illumination: {model: flat}}}",
     "{dm: {name: DM, numiter: 3, warmup: 5}}", [("dm_warmup", "mPIE", 5), ("dm", "DM", 3)]),
    ("{MF: {data: {name: MoonFlowerScan}, propagation: nearfield, illumination: {variable_modes: 2}}}",
     "{dm: {name: DM, numiter: 3}}", [("dm", "DM", 3)]),
    # ML and LSQML first in near field: their DM warm-up has its own mPIE warm-up
    ("{MF: {data: {name: MoonFlowerScan}, propagation: nearfield}}", "{ml: {name: ML, numiter: 5}}",
     [("ml_warmup_warmup", "mPIE", 30), ("ml_warmup", "DM", 100), ("ml", "ML", 5)]),
    ("{MF: {data: {name: MoonFlowerScan}, propagation: nearfield}}", "{l: {name: LSQML, numiter: 5}}",
     [("l_warmup_warmup", "mPIE", 30), ("l_warmup", "DM", 50), ("l", "LSQML", 5)]),
])
def test_engine_sequence_puts_a_warmup_before_the_first_engine_from_a_model_probe(scans, engines, want):
    p = tree.validate(load_config("scans: %s\nengines: %s\n" % (scans, engines)))
    seq = tree.engine_sequence(p)
    assert [(label, e.name, e.numiter) for label, e in seq] == want
    if len(want) == 2 and want[0][1] == "DM":
        assert seq[0][1] == tree.validate_engine({"name": "DM", "numiter": want[0][2]})  # DM's own defaults
    assert tree.engine_sequence(p) == seq  # a function of the tree: a resumed run finds the same chain


def test_engine_sequence_takes_the_near_field_from_the_caller():
    """A scan whose propagation is null (the data file's) is near field when the caller says so."""
    p = tree.validate(load_config("scans: {MF: {data: {name: MoonFlowerScan}}}\nengines: {dm: {name: DM}}\n"))
    assert [label for label, _ in tree.engine_sequence(p)] == ["dm"]
    assert [label for label, _ in tree.engine_sequence(p, near_field=True)] == ["dm_warmup", "dm"]


@pytest.mark.parametrize("value", [-1, 2.5, "some", True, [3]])
def test_dm_warmup_must_be_auto_or_a_whole_number(value):
    with pytest.raises(ConfigError) as info:
        tree.validate_engine({"name": "DM", "warmup": value}, "engines.dm")
    assert "engines.dm.warmup" in str(info.value) and "auto or a whole number >= 0" in str(info.value)
    assert tree.validate_engine({"name": "RAAR", "warmup": 3.0}).warmup == 3
    assert tree.validate_engine({"name": "DM", "warmup": "AUTO"}).warmup == "auto"


# -- overrides -----------------------------------------------------------------------

@pytest.mark.parametrize("text, value", [
    ("a.b=3", 3), ("a.b=0.5", 0.5), ("a.b=true", True), ("a.b=[1,2]", [1, 2]), ("a.b=null", None),
    ("a.b=DM", "DM"), ("a.b = 1e-3", "1e-3"), ("a.b='3'", "3"), ("a.b={home}/x.h5", "{home}/x.h5"),
    ("a.b={x: 1}", {"x": 1}), ("a.b=k=v", "k=v")])
def test_override_typing(text, value):
    out = tree.apply_overrides({}, [text])
    assert out["a.b"] == value
    assert type(out["a.b"]) is type(value) or isinstance(value, dict)


@pytest.mark.parametrize("text, words", [
    ("engines.dm.numiter", "missing '='"), ("=5", "empty key"), ("a..b=1", "malformed key"),
    ("a.b=", "no value"), (".a=1", "malformed key")])
def test_malformed_overrides(text, words):
    with pytest.raises(ConfigError) as info:
        tree.apply_overrides({}, [text])
    assert info.value.exit_code == 2 and words in str(info.value)


def test_overrides_apply_to_a_copy_and_validate(plugins):
    base = Param({"scans": {"MF": _scan()}, "engines": {"dm": None}})
    out = tree.apply_overrides(base, ["engines.dm.name=testengine", "engines.dm.numiter=50",
                                      "scans.MF.illumination.propagation.focussed=1e-3",
                                      "verbose_level=4"])
    assert base.engines.dm is None and "illumination" not in base.scans.MF
    p = tree.validate(out)
    assert p.engines.dm.numiter == 50 and p.engines.dm.name == "TestEngine"
    assert p.scans.MF.illumination.propagation.focussed == 0.001
    assert p.verbose_level == 4
    with pytest.raises(ConfigError) as info:
        tree.apply_overrides(base, ["scans.MF.data.name.x=1"])
    assert "scans.MF.data.name holds 'TestLoader'" in str(info.value)
    assert tree.apply_overrides(base, "run=x").run == "x"
    msg = _err(tree.apply_overrides(base, ["engines.dm.name=TestEngine", "engines.dm.numitre=5"]))
    assert msg.startswith("engines.dm.numitre: unknown parameter") and "numiter" in msg


# -- listings and default YAML ------------------------------------------------------------

def test_describe_rows(plugins):
    rows = tree.describe()
    paths = [r.path for r in rows]
    assert len(paths) == len(set(paths))
    for path in ("verbose_level", "io.checkpoint.interval", "scans.<label>.illumination.aperture.size",
                 "scans.<label>.data.name", "scans.<label>.data[TestLoader].shape",
                 "engines.<label>.numiter", "engines.<label>[TestEngine].alpha"):
        assert path in paths
    row = rows[paths.index("scans.<label>.illumination.aperture.size")]
    assert row.default is None and row.unit == "m" and "pair" in row.type and row.doc
    ap = tree.describe("scans.MF.illumination.aperture")
    assert [r.path.rsplit(".", 1)[1] for r in ap] == ["form", "size", "size_fraction", "edge",
                                                      "central_stop", "offset"]
    eng = [r.path for r in tree.describe("engines.testengine")]
    assert "engines.<label>.numiter" in eng and "engines.<label>[TestEngine].alpha" in eng
    assert not any("OtherEngine" in p for p in eng)
    assert [r.path for r in tree.describe("scans.x.data[testloader]")] == [
        "scans.<label>.data[TestLoader].shape", "scans.<label>.data[TestLoader].num_frames"]
    assert "scans.<label>.data[TestLoader].shape" in [r.path for r in tree.describe("scans.MF.data.shape")]
    with pytest.raises(ConfigError) as info:
        tree.describe("scans.MF.ilumination")
    assert "did you mean scans.<label>.illumination?" in str(info.value)


def test_dump_defaults_yaml_is_complete_and_valid(plugins):
    text = tree.dump_defaults_yaml()
    p = tree.validate(load_config(text), require_scans=True, require_engines=True)
    assert list(p.scans) == ["MF"]
    if "MoonFlowerScan" in registry.LOADERS:
        assert p.scans.MF.data.name == "MoonFlowerScan"
    assert p.engines.dm.name == "DM"
    lines = text.splitlines()
    for i, line in enumerate(lines):  # every key line follows its comment
        stripped = line.strip()
        if stripped and not stripped.startswith("#") and ":" in stripped and not stripped.startswith("MF:") \
                and not stripped.startswith("dm:"):
            assert lines[i - 1].strip().startswith("#"), line
    assert "# Logging verbosity" in text and "rfile: '{home}/{run}.h5'" in text
    assert "noise: [0.5, 1.0]" in text


def test_dump_defaults_yaml_placeholders(monkeypatch):
    registry.load_plugins()
    monkeypatch.setattr(registry.ENGINES, "_entries", {})
    monkeypatch.setattr(registry.LOADERS, "_entries", {})
    text = tree.dump_defaults_yaml()
    assert "engines: {}" in text and "scans: {}" in text
    assert "  #   name: DM" in text and "  # MF:" in text
    p = tree.validate(load_config(text))
    assert p.scans == {} and p.engines == {}
