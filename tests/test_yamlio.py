"""Strict YAML loading of configurations and plain YAML dumping."""

import io
import os

import numpy as np
import pytest
import yaml

from ptycli.errors import ConfigError
from ptycli.params.yamlio import dump_yaml, load_config, load_config_text, to_plain
from ptycli.utils.parameters import Param


def _write(tmp_path, text, name="config.yaml"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _error(source):
    with pytest.raises(ConfigError) as info:
        load_config(source)
    assert info.value.exit_code == 2
    msg = str(info.value)
    assert "\n" not in msg
    return msg


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_load_from_path_text_stdin_and_stream(in_tmp, monkeypatch):
    text = "verbose_level: 3\nscans:\n  MF:\n    data: {name: MoonFlowerScan, shape: 128}\n"
    path = _write(in_tmp, text)
    for source in (str(path), path, "config.yaml"):
        p = load_config(source)
        assert isinstance(p, Param) and isinstance(p.scans.MF.data, Param)
        assert p.verbose_level == 3 and p.scans.MF.data.shape == 128
    assert load_config(text) == load_config(str(path))
    assert load_config("verbose_level: 2").verbose_level == 2
    monkeypatch.setattr("sys.stdin", io.StringIO(text))
    assert load_config("-").scans.MF.data.name == "MoonFlowerScan"
    assert load_config(io.StringIO(text)).verbose_level == 3
    assert load_config(io.BytesIO(text.encode())).verbose_level == 3


def test_values_keep_yaml_types_and_order(in_tmp):
    p = load_config(_write(in_tmp, "b: 1e-3\na: 1.0e-3\nc: [1, 2]\nd: null\ne: yes\n"))
    assert list(p) == ["b", "a", "c", "d", "e"]
    assert p.b == "1e-3" and p.a == 0.001 and p.c == [1, 2] and p.d is None and p.e is True


def test_byte_order_mark_is_ignored(in_tmp):
    path = in_tmp / "bom.yaml"
    path.write_bytes("\ufeffrun: x\n".encode("utf-8"))
    assert load_config(path).run == "x"


def test_duplicate_keys_name_key_and_lines(in_tmp):
    path = _write(in_tmp, "engines:\n  dm:\n    numiter: 5\n    name: DM\n    numiter: 7\n")
    msg = _error(path)
    assert msg.startswith("%s:5:5: duplicate key 'numiter' (first given on line 3)" % path)
    msg = _error(_write(in_tmp, "run: a\nio: {}\nrun: b\n", "top.yaml"))
    assert ":3:1: duplicate key 'run'" in msg
    msg = _error("a: {x: 1, x: 2}\n")
    assert msg.startswith("<string>:1:11: duplicate key 'x'")


def test_merge_keys_may_be_overridden():
    p = load_config("base: &b {numiter: 5, name: DM}\nengines:\n  e1:\n    <<: *b\n    numiter: 9\n")
    assert p.engines.e1 == {"numiter": 9, "name": "DM"}


def test_tabs_in_indentation(in_tmp):
    path = _write(in_tmp, "scans:\n  MF:\n\tdata: {}\n")
    msg = _error(path)
    assert msg.startswith("%s:3:1: tab character in the indentation" % path)
    assert "spaces" in msg
    msg = _error("a:\n  b: 1\n  \tc: 2\n")
    assert msg.startswith("<string>:3:3: tab character")
    # PyYAML also refuses a tab between key and value
    msg = _error("run: x\na:\t1\n")
    assert msg.startswith("<string>:2:3: tab character;") and "spaces" in msg
    # inside quotes a tab is text
    assert load_config('a: "x\ty"\n').a == "x\ty"


@pytest.mark.parametrize("text, where, words", [
    ("a: b: c\n", "1:5", "mapping values are not allowed here"),
    ("engines: [1, 2\nrun: x\n", "2:4", "expected ',' or ']'"),
    ("run: 'open\n", "2:1", "end of stream"),
    ("a: 1\n b: 2\n", "2:3", "mapping values are not allowed"),
    ("a: \x07\n", "1:4", "special characters"),
])
def test_syntax_errors_give_line_and_column(in_tmp, text, where, words):
    path = _write(in_tmp, text)
    msg = _error(path)
    assert msg.startswith("%s:%s: " % (path, where)), msg
    assert words in msg


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "---\n"])
def test_empty_file(in_tmp, text):
    path = _write(in_tmp, text)
    msg = _error(path)
    assert msg.startswith("%s: config file is empty;" % path)


@pytest.mark.parametrize("text, words", [
    ("- scans\n- engines\n", "got a list"),
    ("just words\n", "got a single value ('just words')"),
    ("42\n", "got a single value (42)"),
])
def test_top_level_must_be_a_mapping(in_tmp, text, words):
    path = _write(in_tmp, text)
    msg = _error(path)
    assert msg.startswith("%s: the top level must be a mapping" % path) and words in msg


def test_missing_directory_and_binary_files(in_tmp):
    msg = _error("nothere.yaml")
    assert msg.startswith("config file not found: nothere.yaml")
    msg = _error(in_tmp / "sub" / "c.yaml")
    assert "config file not found" in msg and "c.yaml" in msg
    os.mkdir(in_tmp / "adir")
    msg = _error(in_tmp / "adir")
    assert msg.startswith("%s is a directory" % (in_tmp / "adir"))
    (in_tmp / "bin.yaml").write_bytes(b"run: \xff\xfe\x00\n")
    msg = _error(in_tmp / "bin.yaml")
    assert "not a UTF-8 text file" in msg
    with pytest.raises(ConfigError):
        load_config(3)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="needs file permissions")
def test_unreadable_file(in_tmp):
    path = _write(in_tmp, "run: x\n")
    path.chmod(0)
    try:
        msg = _error(path)
        assert "permission denied" in msg and str(path) in msg
    finally:
        path.chmod(0o644)


def test_dump_yaml_plain_values():
    p = Param()
    p.a = np.float32(0.1)
    p.b = np.int64(3)
    p.c = np.arange(3)
    p.d = (1.0, 2.0)
    p.e = {"f": np.array([[1.5, 2.5]]), "g": None, "h": np.bool_(True)}
    p.i = 1 + 2j
    p.j = "{home}/{run}.h5"
    text = dump_yaml(p)
    assert "!!" not in text
    back = yaml.safe_load(text)
    assert back == {"a": 0.1, "b": 3, "c": [0, 1, 2], "d": [1.0, 2.0],
                    "e": {"f": [[1.5, 2.5]], "g": None, "h": True}, "i": "(1+2j)",
                    "j": "{home}/{run}.h5"}
    assert type(back["b"]) is int
    assert "d: [1.0, 2.0]" in text
    assert list(back) == list(p)
    assert load_config_text(text) == Param(back)
    buf = io.StringIO()
    assert dump_yaml(p, buf) == buf.getvalue()
    assert to_plain(np.float64(0.25)) == 0.25 and to_plain(np.str_("x")) == "x"
