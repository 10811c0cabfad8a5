"""Bad configurations: every mistake is one ``Error:`` line naming the problem and the fix, exit code 2,
nothing computed or written, no traceback (unless ``-v``).

Catalogue: YAML (syntax with line and column, empty file, list/scalar where a mapping is expected,
duplicate keys, tabs), parameters (unknown key with did-you-mean, wrong type, out of range, unknown
engine or loader listing the valid ones, missing required values, conflicting values between scans).
"""

import pytest

import reliability_helpers as rh


@pytest.fixture(scope="module")
def datafile(tmp_path_factory):
    return rh.simulate(tmp_path_factory.mktemp("cfgdata") / "data.h5")


_run = rh.reconstruct_text  # (tmp_path, config text, *extra args) -> (result, output path)


def _nothing_written(tmp_path):
    assert not (tmp_path / "out.h5").exists()
    assert not (tmp_path / "out.checkpoint.h5").exists()


# -- YAML ------------------------------------------------------------------------------------------

YAML_CASES = {
    # name: (text, words in the error line)
    "syntax error": ("scans:\n  MF: {data: {name: Hdf5Scan}\nengines: [\n", ["run.yaml:3:1:", "expected ',' or '}'"]),
    "unclosed quote": ("run: 'abc\nscans: {}\n", ["run.yaml:3:1:", "quoted scalar"]),
    "missing colon": ("engines:\n  dm: {name: DM}\n  bad line\n", ["run.yaml:", "':'"]),
    "empty file": ("", ["run.yaml: config file is empty", "key: value"]),
    "only comments": ("# nothing here\n\n", ["config file is empty"]),
    "top-level list": ("- scans\n- engines\n", ["top level must be a mapping", "got a list"]),
    "top-level scalar": ("hello\n", ["top level must be a mapping", "single value ('hello')"]),
    "list for engines": ("scans: {MF: {data: {name: MoonFlowerScan}}}\nengines: [dm, ml]\n",
                         ["engines: expected a mapping"]),
    "scalar for a scan": ("scans:\n  MF: 5\nengines: {dm: {name: DM}}\n", ["scans.MF: expected a mapping"]),
    "list for data": ("scans:\n  MF: {data: [Hdf5Scan]}\nengines: {dm: {name: DM}}\n",
                      ["scans.MF.data: expected a mapping", "Hdf5Scan"]),
    "duplicate top-level key": ("engines:\n  dm: {name: DM}\nengines:\n  ml: {name: ML}\n",
                                ["run.yaml:3:1:", "duplicate key 'engines' (first given on line 1)"]),
    "duplicate nested key": ("engines:\n  dm:\n    name: DM\n    numiter: 3\n    numiter: 4\n",
                             ["run.yaml:5:5:", "duplicate key 'numiter' (first given on line 4)"]),
    "tab indentation": ("scans:\n\tMF: {data: {name: MoonFlowerScan}}\n", ["run.yaml:2:1:", "tab", "spaces"]),
    "tab after key": ("engines:\n  dm:\n    name:\tDM\n    numiter:\t3\n  x:\n\t\ty: 1\n", ["tab"]),
}


@pytest.mark.parametrize("name", sorted(YAML_CASES))
def test_yaml_errors(tmp_path, name):
    text, words = YAML_CASES[name]
    res, _ = _run(tmp_path, text)
    rh.assert_clean_error(res, 2, *words)
    _nothing_written(tmp_path)


def test_binary_config(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_bytes(b"scans:\n  \xff\xfe\x00\x01")
    res = rh.invoke("reconstruct", cfg, "-o", tmp_path / "out.h5")
    rh.assert_clean_error(res, 2, "not a UTF-8 text file")


def test_missing_config_file(tmp_path):
    res = rh.invoke("reconstruct", tmp_path / "nope.yaml", "-o", tmp_path / "out.h5")
    rh.assert_clean_error(res, 2, "config file not found", "nope.yaml", "check the path")


def test_config_is_a_folder(tmp_path):
    res = rh.invoke("reconstruct", tmp_path, "-o", tmp_path / "out.h5")
    rh.assert_clean_error(res, 2, "is a directory", ".yaml")


# -- parameters ------------------------------------------------------------------------------------

def _param_cases(d):
    good_engines = "  dm: {name: DM, numiter: 2}\n"
    return {
        # name: (config text, extra CLI args, words in the error line)
        "unknown engine key": (rh.config(d, engines="  dm: {name: DM, numitre: 3}\n"), [],
                               ["engines.dm.numitre: unknown parameter", "did you mean numiter"]),
        "unknown top-level key": (rh.config(d).replace("engines:", "enignes:"), [],
                                  ["enignes: unknown parameter", "did you mean engines", "valid names here"]),
        "unknown data key": (rh.config(d, data="shpae: 8"), [], ["scans.MF.data.shpae", "did you mean shape"]),
        "unknown key by --set": (rh.config(d), ["--set", "engines.dm.alpah=0.5"],
                                 ["engines.dm.alpah", "did you mean alpha"]),
        "wrong type": (rh.config(d, engines="  dm: {name: DM, numiter: ten}\n"), [],
                       ["engines.dm.numiter: expected an integer", "'ten'"]),
        "not a whole number": (rh.config(d, engines="  dm: {name: DM, numiter: 2.5}\n"), [],
                               ["engines.dm.numiter", "not a whole number"]),
        "wrong type in a pair": (rh.config(d, data="shape: [16, x]"), [], ["scans.MF.data.shape", "'x'"]),
        "bool expected": (rh.config(d, data="fftshifted: maybe"), [], ["scans.MF.data.fftshifted", "true or false"]),
        "negative numiter": (rh.config(d, engines="  dm: {name: DM, numiter: -3}\n"), [],
                             ["engines.dm.numiter", "below the lower limit 0", "-3"]),
        "DM alpha below 0": (rh.config(d, engines="  dm: {name: DM, alpha: -0.5}\n"), [],
                             ["engines.dm.alpha", "below the lower limit"]),
        "RAAR beta above 1": (rh.config(d, engines="  r: {name: RAAR, beta: 1.5}\n"), [],
                              ["engines.r.beta", "above the upper limit 1"]),
        "rPIE alpha above 1": (rh.config(d, engines="  r: {name: rPIE, alpha: 2}\n"), [],
                               ["engines.r.alpha", "above the upper limit 1"]),
        "shape 0": (rh.config(d, data="shape: 0"), [], ["scans.MF.data.shape", "below the lower limit 1"]),
        "shape of three values": (rh.config(d, data="shape: [16, 16, 16]"), [],
                                  ["scans.MF.data.shape", "needs exactly two values"]),
        "negative energy": (rh.config(d, data="energy: -6"), [], ["scans.MF.data.energy"]),
        "probe modes 0": (rh.config(d) + "", ["--set", "scans.MF.coherence.num_probe_modes=0"],
                          ["scans.MF.coherence.num_probe_modes", "below the lower limit 1"]),
        "checkpoint interval negative": (rh.config(d), ["--set", "io.checkpoint.interval=-5"],
                                         ["io.checkpoint.interval"]),
        "unknown engine": (rh.config(d, engines="  dm: {name: DMX}\n"), [],
                           ["engines.dm.name: unknown engine 'DMX'", "did you mean DM",
                            "DM, ePIE, LSQML, ML, mPIE, RAAR, rPIE"]),
        "unknown loader": (rh.config(d).replace("Hdf5Scan", "Hdf5Scn"), [],
                           ["scans.MF.data.name: unknown loader 'Hdf5Scn'", "did you mean Hdf5Scan",
                            "CxiScan, Hdf5Scan, MoonFlowerScan, NpyFolderScan, NpzScan, PtydScan"]),
        "unknown scan model": (rh.config(d), ["--set", "scans.MF.name=Fulll"], ["scans.MF.name", "Full"]),
        "unknown propagation": (rh.config(d), ["--set", "scans.MF.propagation=farfeld"],
                                ["scans.MF.propagation", "did you mean farfield"]),
        "no data file": ("scans:\n  MF:\n    data: {name: Hdf5Scan}\nengines:\n" + good_engines, [],
                         ["scans.MF.data.dfile: no input given", "set dfile"]),
        "no loader": ("scans:\n  MF: {}\nengines:\n" + good_engines, [],
                      ["scans.MF.data.name: no loader given", "Hdf5Scan"]),
        "no scan": ("engines:\n" + good_engines, [], ["scans: no scan given", "scans.MF.data.name"]),
        "no engine": (rh.config(d).split("engines:")[0], [], ["engines: no engine given", "engines.dm.name: DM"]),
        "override without '='": (rh.config(d), ["--set", "engines.dm.numiter"], ["missing '='", "KEY=VALUE"]),
        "override into a value": (rh.config(d), ["--set", "engines.dm.numiter.x=3"], ["not a mapping"]),
        "probe_share to a missing scan": (rh.config(d), ["--set", "scans.MF.probe_share=MX"],
                                          ["scans.MF.probe_share", "no scan labelled 'MX'"]),
        "probe_share to itself": (rh.config(d), ["--set", "scans.MF.probe_share=MF"],
                                  ["scans.MF.probe_share", "cannot share its probe with itself"]),
        "bad run label template": (rh.config(d), ["--set", "io.rfile={home}/{rnu}.h5"],
                                   ["io.rfile", "unknown placeholder {rnu}", "did you mean {run}"]),
    }


CASE_NAMES = sorted(_param_cases("x"))


@pytest.mark.parametrize("name", CASE_NAMES)
def test_parameter_errors(tmp_path, datafile, name):
    text, extra, words = _param_cases(datafile)[name]
    res, _ = _run(tmp_path, text, *extra)
    rh.assert_clean_error(res, 2, *words)
    _nothing_written(tmp_path)


def _two_scans(d, a="", b="", b_data=""):
    """Scans A and B reading the same file; ``a``/``b``: extra scan entries, ``b_data``: extra data entries of B."""
    return ("scans:\n  A: {data: {name: Hdf5Scan, dfile: '%s'}%s}\n  B: {data: {name: Hdf5Scan, dfile: '%s'%s}%s}\n"
            "engines:\n  dm: {name: DM, numiter: 2}\n" % (d, a, d, b_data, b))


@pytest.mark.parametrize("a, b, b_data, words", [
    # the conflict the brief names: probe_share with a different number of probe modes
    (", coherence: {num_probe_modes: 2}", ", probe_share: A", "",
     ["scans.B.probe_share", "has 2 modes, this scan asks for 1", "same coherence.num_probe_modes"]),
    (", coherence: {num_object_modes: 2}", ", object_share: A", "",
     ["scans.B.object_share", "has 2 modes, this scan asks for 1", "same coherence.num_object_modes"]),
    # a shared probe needs the same frame shape (was an unexpected ValueError)
    ("", ", probe_share: A", ", shape: 12", ["scans.B.probe_share", "(12, 12)", "(16, 16)", "same data.shape"]),
    # a shared object needs the same sample pixel (was silently wrong: views took the owner's pixel size)
    ("", ", object_share: A", ", shape: 12", ["scans.B.object_share", "sample pixel", "same energy, distance"]),
    ("", ", object_share: A", ", energy: 7.5", ["scans.B.object_share", "sample pixel"]),
])
def test_conflicting_scans(tmp_path, datafile, a, b, b_data, words):
    res, _ = _run(tmp_path, _two_scans(datafile, a, b, b_data))
    rh.assert_clean_error(res, 2, *words)
    _nothing_written(tmp_path)


def test_compatible_shares_run(tmp_path, datafile):
    res, out = _run(tmp_path, _two_scans(datafile, "", ", probe_share: A, object_share: A"))
    assert res.exit_code == 0, res.stderr
    assert out.exists()


def test_validate_reports_the_same_error(tmp_path, datafile):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(rh.config(datafile, engines="  dm: {name: DM, numitre: 3}\n"))
    res = rh.invoke("params", "--validate", cfg)
    rh.assert_clean_error(res, 2, "engines.dm.numitre", "did you mean numiter")


def test_verbose_shows_the_traceback(tmp_path, datafile):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(rh.config(datafile, engines="  dm: {name: DM, numiter: ten}\n"))
    res = rh.invoke("-v", "reconstruct", cfg, "-o", tmp_path / "out.h5")
    assert res.exit_code == 2
    assert "Traceback" in res.stderr
    assert res.stderr.rstrip().splitlines()[-1].startswith("Error: engines.dm.numiter")


# -- real processes ----------------------------------------------------------------------------------

def test_real_process_yaml_error(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("scans:\n  MF: {data: {name: Hdf5Scan}\nengines: [\n")
    res = rh.ptycli("reconstruct", cfg, "-o", tmp_path / "out.h5")
    rh.assert_clean_error(res, 2, "run.yaml:3:1:")
    assert res.stdout == ""
    _nothing_written(tmp_path)


def test_real_process_parameter_error_from_stdin(tmp_path, datafile):
    res = rh.ptycli("reconstruct", "-", "-o", tmp_path / "out.h5",
                    input=rh.config(datafile, engines="  dm: {name: DM, numiter: -1}\n"))
    rh.assert_clean_error(res, 2, "engines.dm.numiter", "below the lower limit 0")
    assert res.stdout == ""
    _nothing_written(tmp_path)
