"""inspect and plot name what a path is when it is not a file (issue 13, class 4)."""

import os

import pytest

import reliability_helpers as rh


@pytest.mark.parametrize("command", ["inspect", "plot"])
def test_symlink_loop_is_named(tmp_path, command):
    loop = tmp_path / "result.h5"
    loop.symlink_to(loop)
    extra = ["-o", str(tmp_path / "fig.png")] if command == "plot" else []
    res = rh.invoke(command, loop, *extra)
    rh.assert_clean_error(res, 2, "%s is a symlink loop, not a file" % loop)
    assert "does not exist" not in res.stderr


def test_fifo_is_refused_without_waiting(tmp_path):
    fifo = tmp_path / "result.h5"
    os.mkfifo(fifo)
    res = rh.invoke("inspect", fifo)  # opening a FIFO would block: refused before
    rh.assert_clean_error(res, 2, "is a FIFO (named pipe), not a file")


def test_missing_file_still_says_so(tmp_path):
    res = rh.invoke("inspect", tmp_path / "nothing.h5")
    rh.assert_clean_error(res, 2, "does not exist", "check the path")
