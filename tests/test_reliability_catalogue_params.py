"""Catalogue of bad configurations, parameters and detector values (issue 13 classes 2-4, issue 17 item 5).

Every case goes through the command line (in process, or as a real process where a hang or runaway
memory is the risk) and checks the promise: one ``Error:`` line naming the key or the problem with its
fix, exit code 2, no traceback, nothing allocated or read before the refusal.

* bounds: config size (a large file, an endless FIFO), YAML alias bombs, recursive aliases, deep
  nesting (in a file and in ``--set``), memory estimated before allocating (MoonFlowerScan);
* numbers: NaN and infinity in integer, size and float parameters (config, ``--set``,
  ``params --validate``), huge integers, limits, a mapping where a path or number goes;
* checks without data: ``clip_object``, centre, orientation, position refinement, ``--resume``
  with other scans: refused by ``params --validate`` and by ``reconstruct`` before reading data;
* messages with their fix: YAML indentation, ``params nosuch``, a mistyped engine label in ``--set``,
  ``NpyFolderScan`` given a file;
* detector markers: saturated / dead pixels (largest value of the integer type) masked with one
  counted warning; a frame that holds only markers is an error.
"""

import os
import resource
import threading
import time

import numpy as np
import pytest

import reliability_helpers as rh
from ptycli.scans import get_loader
from ptycli.scans.base import available_memory, marker_pixels

DATA_LINE = "    data: {name: Hdf5Scan, dfile: '%s'%s}\n"


@pytest.fixture(scope="module")
def datafile(tmp_path_factory):
    return rh.simulate(tmp_path_factory.mktemp("catdata") / "data.h5")


def _config(dfile, data="", engine="numiter: 2", scan=""):
    return ("scans:\n  MF:\n" + DATA_LINE % (dfile, (", " + data) if data else "") + scan
            + "engines:\n  dm: {name: DM, %s}\n" % engine)


def _validate(tmp_path, text, *extra):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(text)
    return rh.invoke("params", "--validate", cfg, *extra)


_reconstruct = rh.reconstruct_text  # (tmp_path, config text, *extra args) -> (result, output path)


def _maxrss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# -- class 2: bounded config size, aliases, nesting -----------------------------------------------

def test_config_larger_than_the_bound_is_refused_at_once(tmp_path):
    big = tmp_path / "big.yaml"
    with open(big, "w") as fh:  # a valid YAML mapping, 5 MB of comments
        fh.write("run: x\n")
        fh.write(("# " + "x" * 97 + "\n") * 50000)
    t0 = time.time()
    res = rh.invoke("params", "--validate", big)
    assert time.time() - t0 < 2.0
    rh.assert_clean_error(res, 2, "big.yaml", "MB", "more than a configuration can be")


def test_endless_stream_as_config_stops_at_the_bound(tmp_path):
    """A FIFO fed without end (like /dev/zero): the read stops at the bound, exit 2, no hang."""
    fifo = tmp_path / "endless.yaml"
    os.mkfifo(fifo)
    stop = threading.Event()

    def feed():
        try:
            with open(fifo, "wb") as fh:
                chunk = b"# endless\n" * 10000
                while not stop.is_set():
                    fh.write(chunk)
        except (BrokenPipeError, OSError):
            pass

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    try:
        t0 = time.time()
        res = rh.ptycli("params", "--validate", fifo, "--no-data", timeout=60)
        assert time.time() - t0 < 30
        rh.assert_clean_error(res, 2, "endless.yaml", "endless stream")
    finally:
        stop.set()
        try:  # release a writer still waiting for a reader
            os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))
        except OSError:
            pass
        writer.join(5)


#: "billion laughs": nine levels of nine aliases, 9**9 strings when expanded, as one flow list
BOMB = "[%s]" % ", ".join("&%s [%s]" % (chr(97 + i), ", ".join(["*%s" % chr(96 + i)] * 9 if i else ["lol"] * 9))
                          for i in range(9))


def test_alias_bomb_is_refused_without_expanding(tmp_path, datafile):
    """In a value of a valid key (scans.MF.tags), where the list would be walked and printed."""
    before = _maxrss_mb()
    t0 = time.time()
    res = _validate(tmp_path, _config(datafile, scan="    tags: %s\n" % BOMB))
    assert time.time() - t0 < 2.0
    rh.assert_clean_error(res, 2, "run.yaml:4:", "aliases", "expand to more than")
    assert _maxrss_mb() - before < 100  # 9**9 values were never built


def test_alias_bomb_at_the_top_and_in_set(tmp_path, datafile):
    res = _validate(tmp_path, "run: x\nbomb: %s\n" % BOMB)
    rh.assert_clean_error(res, 2, "aliases", "expand to more than")
    flow = "{a: &a [x, x, x, x, x, x, x, x, x, x], b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a], " \
           "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b], d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c], " \
           "e: [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]}"
    res = _validate(tmp_path, _config(datafile), "--set", "scans.MF.tags=" + flow)
    rh.assert_clean_error(res, 2, "scans.MF.tags", "aliases")


def test_recursive_alias_is_refused(tmp_path):
    res = _validate(tmp_path, "run: x\ntags: &t [a, *t]\n")
    rh.assert_clean_error(res, 2, "run.yaml:2:", "recursive alias")


@pytest.mark.parametrize("depth", [150, 5000])
def test_deep_nesting_is_one_line(tmp_path, depth):
    res = _validate(tmp_path, "run: x\ntags: " + "[" * depth + "]" * depth + "\n")
    rh.assert_clean_error(res, 2, "run.yaml", "nested", "levels")


def test_deep_nesting_in_set(tmp_path, datafile):
    res = _validate(tmp_path, _config(datafile), "--set", "scans.MF.tags=" + "[" * 3000 + "]" * 3000)
    err = rh.assert_clean_error(res, 2, "scans.MF.tags", "nested")
    assert len(err) < 200


def test_memory_is_checked_before_allocating(tmp_path, monkeypatch):
    """MoonFlowerScan with 1e9 frames: refused with what it needs and what there is, nothing simulated."""
    import ptycli.scans.moonflower as mf

    def never(*args, **kwargs):
        raise AssertionError("simulate_model called before the memory check")

    monkeypatch.setattr(mf, "simulate_model", never)
    cfg = tmp_path / "sim.yaml"
    cfg.write_text("scans:\n  MF:\n    data: {name: MoonFlowerScan, num_frames: 1.0e+9}\n")
    before = _maxrss_mb()
    t0 = time.time()
    res = rh.invoke("simulate", cfg, "-o", tmp_path / "sim.h5")
    assert time.time() - t0 < 2.0
    err = rh.assert_clean_error(res, 2, "scans.MF.data", "1000000000 frames", "would need", "GB available",
                                "num_frames")
    assert "damaged" not in err
    assert _maxrss_mb() - before < 100
    assert not (tmp_path / "sim.h5").exists()


def test_memory_check_in_reconstruct_and_sane_figures(tmp_path):
    available, total = available_memory()
    assert 0 < available <= total
    res, out = _reconstruct(tmp_path, "scans:\n  MF:\n    data: {name: MoonFlowerScan, shape: 4096, "
                                      "num_frames: 100000}\nengines:\n  dm: {name: DM}\n")
    rh.assert_clean_error(res, 2, "MoonFlowerScan of 100000 frames of 4096x4096", "would need")
    assert not out.exists()


# -- class 3: numbers, limits, types ------------------------------------------------------------------

def _number_cases(d):
    return {
        # name: (config text, --set args, words in the error line)
        "numiter nan": (_config(d, engine="numiter: .nan"), [], ["engines.dm.numiter", "NaN"]),
        "numiter inf": (_config(d, engine="numiter: .inf"), [], ["engines.dm.numiter", "not a finite number"]),
        "numiter nan by --set": (_config(d), ["--set", "engines.dm.numiter=nan"], ["engines.dm.numiter", "NaN"]),
        "numiter inf by --set": (_config(d), ["--set", "engines.dm.numiter=-inf"], ["engines.dm.numiter", "finite"]),
        "numiter 10**29": (_config(d, engine="numiter: 100000000000000000000000000000"), [],
                           ["engines.dm.numiter", "exceeds the limit"]),
        "numiter 1e29": (_config(d, engine="numiter: 1.0e+29"), [], ["engines.dm.numiter", "exceeds the limit"]),
        "shape inf": (_config(d, data="shape: .inf"), [], ["scans.MF.data.shape", "not a finite number"]),
        "shape nan pair": (_config(d, data="shape: [16, .nan]"), [], ["scans.MF.data.shape", "NaN"]),
        "shape 1000000": (_config(d, data="shape: 1000000"), [], ["scans.MF.data.shape", "above the upper limit"]),
        "alpha inf": (_config(d, engine="numiter: 2, alpha: .inf"), [], ["engines.dm.alpha", "not a finite number"]),
        "energy -inf": (_config(d, data="energy: -.inf"), [], ["scans.MF.data.energy", "finite"]),
        "psize nan": (_config(d, data="psize: [.nan, 1.0e-6]"), [], ["scans.MF.data.psize", "NaN"]),
        "positions_scale inf": (_config(d, data="positions_scale: .inf"), [], ["scans.MF.data.positions_scale"]),
        "probe modes huge": (_config(d), ["--set", "scans.MF.coherence.num_probe_modes=100000"],
                             ["scans.MF.coherence.num_probe_modes", "above the upper limit"]),
        "mapping for a path": (_config("x", data="mask: {a: 1}"), [],
                               ["scans.MF.data.mask", "a file path", "a mapping {a}"]),
        "mapping for a number": (_config(d, engine="numiter: {a: 1, b: 2}"), [],
                                 ["engines.dm.numiter", "an integer", "a mapping {a, b}"]),
        "list for a number": (_config(d, engine="numiter: [1, 2]"), [], ["engines.dm.numiter", "[1, 2]"]),
        "mapping for a loader name": (_config(d).replace("name: Hdf5Scan", "name: {x: 1}"), [],
                                      ["scans.MF.data.name", "a mapping {x}"]),
        "clip_object one value": (_config(d, engine="numiter: 2, clip_object: [0.5]"), [],
                                  ["engines.dm.clip_object", "two values"]),
        "clip_object reversed": (_config(d, engine="numiter: 2, clip_object: [2, 1]"), [],
                                 ["engines.dm.clip_object", "min is larger than max"]),
        "clip_object words": (_config(d, engine="numiter: 2, clip_object: [a, b]"), [],
                              ["engines.dm.clip_object", "'a'"]),
        "clip_object negative": (_config(d, engine="numiter: 2, clip_object: [-1, 2]"), [],
                                 ["engines.dm.clip_object", "below the lower limit 0"]),
        "center nan": (_config(d, data="center: [3, .nan]"), [], ["scans.MF.data.center", "[row, col]"]),
        "orientation 9": (_config(d, data="orientation: 9"), [], ["scans.MF.data.orientation", "0..7"]),
        "positions_flip word": (_config(d, data="positions_flip: maybe"), [], ["scans.MF.data.positions_flip"]),
        "posref stop before start": (_config(d, engine="numiter: 2, position_refinement: {start: 5, stop: 3}"), [],
                                     ["engines.dm.position_refinement", "stop (3) must be greater than start (5)"]),
    }


CASE_NAMES = sorted(_number_cases("d"))


@pytest.mark.parametrize("name", CASE_NAMES)
def test_bad_numbers_validate(tmp_path, datafile, name):
    text, extra, words = _number_cases(datafile)[name]
    res = _validate(tmp_path, text, "--no-data", *extra)
    err = rh.assert_clean_error(res, 2, *words)
    assert "Param(" not in err and " id" not in err  # no internal object dump
    assert res.stdout.strip() != "OK"


@pytest.mark.parametrize("name", CASE_NAMES)
def test_bad_numbers_reconstruct_before_reading_data(tmp_path, name):
    """The same cases refused by reconstruct before any data is read: the data file does not even exist."""
    missing = tmp_path / "no_such_data.h5"
    text, extra, words = _number_cases(missing)[name]
    res, out = _reconstruct(tmp_path, text, *extra)
    err = rh.assert_clean_error(res, 2, *words)
    assert "no_such_data" not in err
    assert not out.exists()


@pytest.mark.parametrize("data, words", [
    ("photons: .inf", ["scans.MF.data.photons", "finite"]),
    ("shape: 100000", ["scans.MF.data.shape", "above the upper limit 4096"]),
    ("num_frames: .nan", ["scans.MF.data.num_frames", "NaN"]),
    ("psf: 1.0e+9", ["scans.MF.data.psf", "above the upper limit"]),
])
def test_simulate_bad_numbers_are_parameter_errors(tmp_path, data, words):
    cfg = tmp_path / "sim.yaml"
    cfg.write_text("scans:\n  MF:\n    data: {name: MoonFlowerScan, %s}\n" % data)
    res = rh.invoke("simulate", cfg, "-o", tmp_path / "sim.h5")
    err = rh.assert_clean_error(res, 2, *words)
    assert "damaged" not in err and not (tmp_path / "sim.h5").exists()


def test_bad_number_through_a_real_process(tmp_path, datafile):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(_config(datafile, engine="numiter: .nan"))
    res = rh.ptycli("reconstruct", cfg, "-o", tmp_path / "o.h5")
    rh.assert_clean_error(res, 2, "engines.dm.numiter", "NaN")


def test_good_values_still_pass(tmp_path, datafile):
    text = _config(datafile, data="shape: 16, center: [8, 8], orientation: [false, true, false]",
                   engine="numiter: 2, alpha: 0.9, clip_object: [0, 2]")
    res = _validate(tmp_path, text)
    assert res.exit_code == 0, res.stderr
    assert res.stdout.strip() == "OK"


# -- issue 17 item 5: checks without data, messages with their fix ----------------------------

def test_resume_with_other_scans_is_refused_before_reading_data(tmp_path, datafile):
    import shutil

    data = tmp_path / "data.h5"
    shutil.copy(datafile, data)
    res, out = _reconstruct(tmp_path, _config(data, scan="    illumination: {model: flat}\n"))
    assert res.exit_code == 0, res.stderr
    data.unlink()  # if the data were read first, the message would name the missing file
    res = rh.invoke("reconstruct", tmp_path / "run.yaml", "-o", tmp_path / "again.h5", "--resume", out,
                    "--set", "scans.MF.coherence.num_probe_modes=2")
    err = rh.assert_clean_error(res, 2, "--resume", "scans.MF.coherence.num_probe_modes", "is 1 in the checkpoint",
                                "2 in the configuration")
    assert "data.h5" not in err.replace(str(out), "")
    res = rh.invoke("reconstruct", tmp_path / "run.yaml", "-o", tmp_path / "again.h5", "--resume", out,
                    "--set", "scans.MF.data.shape=12")
    rh.assert_clean_error(res, 2, "frames of 16x16 pixels", "scans.MF.data.shape [12, 12]")


@pytest.mark.parametrize("text, words", [
    ("scans:\n  MF:\n    data:\n      name: Hdf5Scan\n     dfile: x.h5\n",
     ["run.yaml:5:6:", "bad indentation", "line 3", "same number of spaces"]),
    ("scans:\n  MF:\n    data: {name: Hdf5Scan}\n   engines: {}\n", ["run.yaml:4:4:", "bad indentation"]),
    ("engines:\n  dm:\n    - name: DM\n   - numiter: 3\n", ["run.yaml:4:", "indent"]),
    ("run: x\n- y\n", ["run.yaml:2:1:", "list item", "key: value"]),
    ("run: *nothere\n", ["run.yaml:1:6:", "undefined alias", "&nothere"]),
])
def test_yaml_errors_say_where_and_how_to_fix(tmp_path, text, words):
    res = _validate(tmp_path, text)
    err = rh.assert_clean_error(res, 2, *words)
    assert "<block" not in err and "; " in err


def test_params_unknown_path_suggests(tmp_path):
    res = rh.invoke("params", "nosuch")
    rh.assert_clean_error(res, 2, "no parameter matches 'nosuch'", "did you mean", "ptycli params")
    res = rh.invoke("params", "numitr")
    rh.assert_clean_error(res, 2, "did you mean engines.<label>.numiter")
    res = rh.invoke("params", "zzzzzzzz")
    rh.assert_clean_error(res, 2, "top-level names", "scans", "engines")


def test_set_with_a_mistyped_label_says_did_you_mean(tmp_path, datafile):
    res = _validate(tmp_path, _config(datafile), "--set", "engines.dn.numiter=10")
    rh.assert_clean_error(res, 2, "engines.dn", "did you mean dm?", "engines.dn.name")
    res = _validate(tmp_path, _config(datafile), "--set", "scans.MG.data.dfile=x.h5")
    rh.assert_clean_error(res, 2, "scans.MG", "did you mean MF?")
    # a new, named engine is fine
    res = _validate(tmp_path, _config(datafile), "--set", "engines.ml.numiter=2", "--set", "engines.ml.name=ML")
    assert res.exit_code == 0, res.stderr


def test_npyfolder_given_a_file_says_so(tmp_path):
    f = tmp_path / "frames.npy"
    np.save(f, np.zeros((3, 8, 8)))
    cfg = tmp_path / "run.yaml"
    cfg.write_text("scans:\n  MF:\n    data: {name: NpyFolderScan, dfile: '%s'}\n" % f)
    res = rh.invoke("params", "--validate", cfg, "--for", "simulate")
    rh.assert_clean_error(res, 2, "scans.MF.data.dfile", "is a file", "reads a folder", "positions.txt",
                          "set dfile to that folder")


# -- class 4: saturated and marker-valued pixels ---------------------------------------------------

def _npy_folder(root, frames):
    root.mkdir()
    (root / "geometry.txt").write_text("distance 1.0\nenergy 6.2\npsize 7.5e-5\n")
    lines = []
    for i, fr in enumerate(frames):
        np.save(root / ("f%02d.npy" % i), fr)
        lines.append("f%02d.npy %g %g" % (i, 1e-7 * (i // 3), 1e-7 * (i % 3)))
    (root / "positions.txt").write_text("\n".join(lines) + "\n")
    return root


def _frames(dtype, n=6):
    rng = np.random.default_rng(3)
    return [rng.poisson(50, (16, 16)).astype(dtype) for _ in range(n)]


@pytest.mark.parametrize("dtype", [np.uint32, np.uint16, np.int32])
def test_marker_pixels_are_masked_with_one_counted_warning(tmp_path, dtype):
    frames = _frames(dtype)
    top = np.iinfo(dtype).max
    for i, r, c in [(0, 2, 3), (0, 9, 9), (4, 1, 1)]:
        frames[i][r, c] = top
    folder = _npy_folder(tmp_path / "scan", frames)
    cfg = tmp_path / "sim.yaml"
    cfg.write_text("scans:\n  MF:\n    data: {name: NpyFolderScan, dfile: '%s', center: geometric}\n" % folder)
    res = rh.invoke("simulate", cfg, "-o", tmp_path / "conv.h5")
    assert res.exit_code == 0, res.stderr
    warnings = [ln for ln in res.stderr.splitlines() if "saturated" in ln]
    assert len(warnings) == 1, res.stderr
    assert "3 saturated or dead pixels" in warnings[0] and "in 2 frames were masked" in warnings[0]
    sd = get_loader("NpyFolderScan").from_pars({"dfile": str(folder), "center": "geometric"}).load()
    for i, r, c in [(0, 2, 3), (0, 9, 9), (4, 1, 1)]:
        assert not sd.mask[i, r, c] and sd.intensities[i, r, c] == 0
    assert sd.mask.sum() == sd.mask.size - 3
    assert sd.intensities.max() < 1000


def test_float_frames_with_the_uint32_marker(tmp_path):
    frames = _frames(np.float32)
    frames[2][5, 5] = 4294967295.0
    folder = _npy_folder(tmp_path / "scan", frames)
    sd = get_loader("NpyFolderScan").from_pars({"dfile": str(folder), "center": "geometric"}).load()
    assert not sd.mask[2, 5, 5] and sd.intensities.max() < 1000
    assert marker_pixels(np.array([1.0, 65535.0])).sum() == 0  # only the uint32 marker for floats
    assert marker_pixels(np.array([True])) is None


@pytest.mark.parametrize("which", ["one frame", "all frames"])
def test_a_saturated_frame_is_an_error(tmp_path, which):
    frames = _frames(np.uint16)
    for i in ([3] if which == "one frame" else range(len(frames))):
        frames[i][...] = 65535
    folder = _npy_folder(tmp_path / "scan", frames)
    cfg = tmp_path / "sim.yaml"
    cfg.write_text("scans:\n  MF:\n    data: {name: NpyFolderScan, dfile: '%s'}\n" % folder)
    res = rh.invoke("simulate", cfg, "-o", tmp_path / "conv.h5")
    rh.assert_clean_error(res, 2, "frame %d" % (3 if which == "one frame" else 0), "in every pixel",
                          "num_frames")
    assert not (tmp_path / "conv.h5").exists()


def test_crop_shape_that_cannot_fit_is_refused_before_reading(tmp_path, datafile, monkeypatch):
    """A shape far larger than the detector pads every frame: the prepared frames' memory is checked."""
    import ptycli.scans.base as base

    monkeypatch.setattr(base, "available_memory", lambda: (8e9, 16e9))  # the same on every machine
    res, out = _reconstruct(tmp_path, _config(datafile, data="shape: 16384, num_frames: 20"))
    rh.assert_clean_error(res, 2, "20 frames of 16x16 pixels, prepared as 16384x16384", "would need",
                          "8 GB available (16 GB in all)", "scans.MF.data.shape")
    assert "damaged" not in res.stderr and not out.exists()
