"""Bad input files: one ``Error:`` line naming the file and the problem, no traceback.

Exit codes: problems found by the checks before anything is computed (the file's metadata: missing,
unreadable, not HDF5, truncated, wrong dataset paths or shapes, counts that do not match, absurd
positions) exit with 2; problems met while reading the frames (a damaged chunk, NaN positions, no
counts at all) exit with 1. Invalid pixel values (NaN, Inf, negative counts) and a crop larger
than the detector are not errors: they are masked, with one warning that counts them.
Reading never modifies an input file.
"""

import errno
import logging
import os
import shutil

import h5py
import numpy as np
import pytest

import reliability_helpers as rh
from ptycli.scans import get_loader


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    return rh.simulate(tmp_path_factory.mktemp("files") / "data.h5")


@pytest.fixture
def data(pristine, tmp_path):
    """A fresh copy of the small data file (20 frames of 16 x 16)."""
    path = tmp_path / "data.h5"
    shutil.copy(pristine, path)
    return path


def reconstruct(tmp_path, dfile, data="", *extra):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(rh.config(dfile, numiter=2, data=data))
    out = tmp_path / "out.h5"
    return rh.invoke("reconstruct", cfg, "-o", out, *extra), out


def edit(path, fn):
    with h5py.File(path, "a") as f:
        fn(f)
    return path


def replace(f, name, value):
    del f[name]
    f[name] = value


def chunk_offset(path, name="/data/intensities", index=0):
    with h5py.File(path, "r") as f:
        info = f[name].id.get_chunk_info(index)
        return info.byte_offset, info.size


# -- the file itself ---------------------------------------------------------------------------

def test_missing_file(tmp_path):
    res, out = reconstruct(tmp_path, tmp_path / "nope.h5")
    rh.assert_clean_error(res, 2, "scans.MF.data.dfile", "nope.h5 does not exist", "check the path")
    assert not out.exists()


def test_folder_instead_of_file(tmp_path):
    res, _ = reconstruct(tmp_path, tmp_path)
    rh.assert_clean_error(res, 2, "is a folder, not an HDF5 file")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file(data, tmp_path):
    data.chmod(0)
    try:
        res, _ = reconstruct(tmp_path, data)
    finally:
        data.chmod(0o644)
    rh.assert_clean_error(res, 2, str(data), "not a readable HDF5 file")


def test_unreadable_file_permission_error(data, tmp_path, monkeypatch):
    """As above, for root too: h5py's open fails with EACCES."""
    real = h5py.File

    def deny(name, mode="r", *a, **k):
        if os.fspath(name) == str(data):
            raise OSError(errno.EACCES, "Unable to synchronously open file (unable to open file: name = '%s', "
                                        "errno = 13, error message = 'Permission denied')" % name)
        return real(name, mode, *a, **k)

    monkeypatch.setattr(h5py, "File", deny)
    res, _ = reconstruct(tmp_path, data)
    rh.assert_clean_error(res, 2, str(data), "Permission denied")


def test_not_hdf5(tmp_path):
    bad = tmp_path / "notes.h5"
    bad.write_text("these are my notes, not a data file\n" * 20)
    res, _ = reconstruct(tmp_path, bad)
    rh.assert_clean_error(res, 2, "notes.h5 is not a readable HDF5 file", "file signature not found")


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.5, 0.9])
def test_truncated(data, tmp_path, fraction):
    raw = data.read_bytes()
    data.write_bytes(raw[:int(len(raw) * fraction)])
    res, _ = reconstruct(tmp_path, data)
    line = rh.assert_clean_error(res, 2, "data.h5")
    assert any(w in line for w in ("truncated", "not a readable HDF5 file", "cannot read"))


def test_damaged_frames_chunk(data, tmp_path):
    """Garbage in the compressed frames: found while reading the frames (exit 1), names file and frames."""
    off, size = chunk_offset(data, index=3)
    raw = bytearray(data.read_bytes())
    raw[off:off + size] = bytes((7 * i + 11) % 256 for i in range(size))
    data.write_bytes(bytes(raw))
    res, out = reconstruct(tmp_path, data)
    rh.assert_clean_error(res, 1, str(data), "cannot read frames 0..19", "damaged")
    assert not out.exists()


@pytest.mark.parametrize("name, param", [("data/intensities", "intensities"), ("data/positions", "positions"),
                                         ("geometry/energy", "energy_dataset")])
def test_damaged_object_header(data, tmp_path, name, param):
    """A damaged header: the dataset is named as damaged, not as missing (exit 2, before computing)."""
    with h5py.File(data, "r") as f:
        addr = h5py.h5o.get_info(f[name].id).addr
    raw = bytearray(data.read_bytes())
    for i in range(addr, addr + 16):
        raw[i] ^= 0xFF
    data.write_bytes(bytes(raw))
    res, _ = reconstruct(tmp_path, data)
    rh.assert_clean_error(res, 2, str(data), "/%s cannot be opened" % name, "damaged",
                          "scans.MF.data.%s" % param)


def test_damaged_global_heap(data, tmp_path):
    """The heap of the variable-length strings (units attributes, labels) loses its signature."""
    raw = bytearray(data.read_bytes())
    at = raw.find(b"GCOL")
    assert at > 0
    raw[at:at + 4] = b"XXXX"
    data.write_bytes(bytes(raw))
    res, _ = reconstruct(tmp_path, data)
    rh.assert_clean_error(res, 2, str(data), "cannot read the metadata", "global heap", "damaged")


# -- layout ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("data_par, words", [
    ("intensities: /entry/eiger", ["scans.MF.data", "dataset /entry/eiger does not exist",
                                   "set scans.MF.data.intensities"]),
    ("intensities: /data", ["dataset /data is a group, not a dataset"]),
    ("positions: /data/nope", ["dataset /data/nope does not exist", "scans.MF.data.positions"]),
    ("mask_dataset: /data/nomask", ["/data/nomask does not exist", "scans.MF.data.mask_dataset"]),
])
def test_dataset_path_absent(data, tmp_path, data_par, words):
    res, _ = reconstruct(tmp_path, data, data_par)
    rh.assert_clean_error(res, 2, *words)


@pytest.mark.parametrize("shape", [(20 * 16, 16), (20 * 16 * 16,), (1, 2, 20, 16, 16)])
def test_intensities_not_3d(data, tmp_path, shape):
    edit(data, lambda f: replace(f, "data/intensities", np.ones(shape, np.float32)))
    res, _ = reconstruct(tmp_path, data)
    rh.assert_clean_error(res, 2, "dataset /data/intensities has %d dimensions" % len(shape),
                          "expected (N, H, W)", "scans.MF.data.intensities")


def test_intensities_not_numbers(data, tmp_path):
    edit(data, lambda f: replace(f, "data/intensities", np.full((20, 16, 16), b"x")))
    res, _ = reconstruct(tmp_path, data)
    rh.assert_clean_error(res, 2, "/data/intensities holds string values, expected numbers")


def test_fewer_positions_than_frames(data, tmp_path):
    edit(data, lambda f: replace(f, "data/positions", f["data/positions"][:15]))
    res, out = reconstruct(tmp_path, data)
    rh.assert_clean_error(res, 2, "15 positions for 20 frames", "set scans.MF.data.num_frames to 15")
    assert not out.exists()
    res, out = reconstruct(tmp_path, data, "num_frames: 15")     # the suggested fix works
    assert res.exit_code == 0, res.stderr


def test_more_positions_than_frames_warns(data, tmp_path):
    edit(data, lambda f: replace(f, "data/positions", np.concatenate([f["data/positions"][()]] * 2)))
    res, out = reconstruct(tmp_path, data)
    assert res.exit_code == 0, res.stderr
    assert "40 positions for 20 frames; the first 20 positions are used" in res.stderr


def test_positions_wrong_shape(data, tmp_path):
    edit(data, lambda f: replace(f, "data/positions", np.zeros((20, 3))))
    res, _ = reconstruct(tmp_path, data)
    rh.assert_clean_error(res, 2, "/data/positions has shape (20, 3), expected (N, 2)")


@pytest.mark.parametrize("shape", [(12, 12), (20, 12, 12), (19, 16, 16)])
def test_mask_shape_differs(data, tmp_path, shape):
    edit(data, lambda f: replace(f, "data/mask", np.ones(shape, np.uint8)))
    res, _ = reconstruct(tmp_path, data)
    rh.assert_clean_error(res, 2, "mask dataset /data/mask has shape %s" % (shape,), "expected (16, 16) or (20, 16, 16)")


def test_external_mask_shape_differs(data, tmp_path):
    np.save(tmp_path / "mask.npy", np.ones((8, 8)))
    res, _ = reconstruct(tmp_path, data, "mask: '%s'" % (tmp_path / "mask.npy"))
    rh.assert_clean_error(res, 2, "scans.MF.data.mask", "(8, 8) does not match the frame shape (16, 16)")


def test_missing_geometry(data, tmp_path):
    edit(data, lambda f: f.__delitem__("geometry/energy"))
    res, _ = reconstruct(tmp_path, data)
    rh.assert_clean_error(res, 2, "scans.MF.data.energy: not given", "set scans.MF.data.energy (in keV)")
    res, _ = reconstruct(tmp_path, data, "energy: 6.2")
    assert res.exit_code == 0, res.stderr


# -- values ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_positions_not_finite(data, tmp_path, value):
    def put(f):
        f["data/positions"][4, 1] = value
    edit(data, put)
    res, out = reconstruct(tmp_path, data)
    rh.assert_clean_error(res, 1, str(data), "1 positions of frames 0..19 are not finite", "fix the positions")
    assert not out.exists()


@pytest.mark.parametrize("scale, code, words", [
    (1e6, 2, ["scan positions", "the object would need", "check the positions and their unit"]),
])
def test_absurd_positions(data, tmp_path, scale, code, words):
    """Micrometres read as metres: refused before anything is allocated."""
    def put(f):
        f["data/positions"][...] *= scale
    edit(data, put)
    res, _ = reconstruct(tmp_path, data)
    rh.assert_clean_error(res, code, *words)


def test_positions_within_one_pixel_warn(data, tmp_path):
    def put(f):
        f["data/positions"][...] *= 1e-6
    edit(data, put)
    res, _ = reconstruct(tmp_path, data)
    assert res.exit_code == 0, res.stderr
    assert "all 20 scan positions lie within one sample pixel" in res.stderr


def test_all_frames_zero(data, tmp_path):
    def put(f):
        f["data/intensities"][...] = 0
    edit(data, put)
    res, out = reconstruct(tmp_path, data)
    rh.assert_clean_error(res, 1, "all 20 frames hold no counts in their valid pixels",
                          "scans.MF.data.intensities")
    assert not out.exists()


def test_all_pixels_masked(data, tmp_path):
    def put(f):
        f["data/mask"][...] = 0
    edit(data, put)
    res, _ = reconstruct(tmp_path, data)
    rh.assert_clean_error(res, 1, "all 20 frames hold no counts", "mask")


def test_some_frames_zero_warn(data, tmp_path):
    def put(f):
        f["data/intensities"][2:5] = 0
    edit(data, put)
    res, out = reconstruct(tmp_path, data)
    assert res.exit_code == 0, res.stderr
    assert "3 frames hold no counts in their valid pixels (of 20)" in res.stderr
    assert out.exists()


def test_invalid_counts_masked_and_counted(data, tmp_path, caplog):
    bad = [(0, 1, 1, np.nan), (1, 3, 3, np.inf), (2, 5, 5, -np.inf), (2, 6, 6, -7.0), (7, 8, 8, np.nan)]

    def put(f):
        x = f["data/intensities"][()]
        for i, r, c, v in bad:
            x[i, r, c] = v
        f["data/intensities"][...] = x
    edit(data, put)
    res, out = reconstruct(tmp_path, data)
    assert res.exit_code == 0, res.stderr
    warnings = [ln for ln in res.stderr.splitlines() if "invalid pixels" in ln]
    assert len(warnings) == 1, res.stderr
    assert "5 invalid pixels (NaN, Inf or negative values) in 4 frames were set to 0 and masked" in warnings[0]
    # the pixels are masked and hold 0 (the pipeline keeps the frames centred: same pixels)
    with caplog.at_level(logging.WARNING, logger="ptycli"):
        sd = get_loader("Hdf5Scan").from_pars({"dfile": str(data), "center": "geometric"}).load()
    for i, r, c, _ in bad:
        assert not sd.mask[i, r, c] and sd.intensities[i, r, c] == 0
    assert np.isfinite(sd.intensities).all() and (sd.intensities >= 0).all()
    assert sd.mask.sum() == sd.mask.size - len(bad)


def test_crop_larger_than_detector_pads_and_masks(data, tmp_path, caplog):
    """shape 24 from 16 x 16 frames: padded to 24 x 24, the padding masked, one warning."""
    res, out = reconstruct(tmp_path, data, "shape: 24, center: geometric")
    assert res.exit_code == 0, res.stderr
    warnings = [ln for ln in res.stderr.splitlines() if "padding" in ln]
    assert len(warnings) == 1, res.stderr
    assert "crop shape (24, 24) is larger than the detector frame (16, 16)" in warnings[0]
    assert "320 of 576 pixels (56%)" in warnings[0] and "masked" in warnings[0]
    with caplog.at_level(logging.WARNING, logger="ptycli"):
        sd = get_loader("Hdf5Scan").from_pars({"dfile": str(data), "shape": 24, "center": "geometric"}).load()
    assert sd.shape == (24, 24)
    assert sd.mask[:, 4:20, 4:20].all() and sd.mask.sum() == 20 * 256
    assert (sd.intensities[~sd.mask] == 0).all()


def test_crop_window_off_the_frame_warns(data, tmp_path):
    res, out = reconstruct(tmp_path, data, "center: [2, 8]")
    assert res.exit_code == 0, res.stderr
    assert "crop window (16, 16) about the centre (2.0, 8.0) reaches outside" in res.stderr


# -- other formats -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def other_formats(tmp_path_factory):
    d = tmp_path_factory.mktemp("formats")
    cfg = d / "sim.yaml"
    cfg.write_text(rh.SIM_CONFIG)
    out = {}
    for ext in ("cxi", "ptyd"):
        res = rh.invoke("simulate", cfg, "-o", d / ("d." + ext))
        assert res.exit_code == 0, res.stderr
        out[ext] = d / ("d." + ext)
    return out


@pytest.mark.parametrize("ext, loader", [("cxi", "CxiScan"), ("ptyd", "PtydScan")])
@pytest.mark.parametrize("damage", ["truncated", "chunk", "text"])
def test_damaged_cxi_and_ptyd(other_formats, tmp_path, ext, loader, damage):
    path = tmp_path / ("d." + ext)
    raw = bytearray(other_formats[ext].read_bytes())
    if damage == "truncated":
        raw = raw[:len(raw) // 2]
    elif damage == "chunk":
        name = "/entry_1/instrument_1/detector_1/data" if ext == "cxi" else "/chunks/0/data"
        off, size = chunk_offset(other_formats[ext], name)
        raw[off:off + size] = bytes((13 * i + 5) % 256 for i in range(size))
    else:
        raw = bytearray(b"not hdf5 at all\n" * 100)
    path.write_bytes(bytes(raw))
    cfg = tmp_path / "run.yaml"
    cfg.write_text("scans:\n  MF:\n    data: {name: %s, dfile: '%s'}\nengines:\n  dm: {name: DM, numiter: 2}\n"
                   % (loader, path))
    res = rh.invoke("reconstruct", cfg, "-o", tmp_path / "out.h5")
    assert res.exit_code == (1 if damage == "chunk" else 2), res.stderr
    rh.assert_clean_error(res, res.exit_code, str(path))


@pytest.mark.parametrize("command", [["inspect"], ["inspect", "--tree"], ["plot", "-o", "x.png"]])
def test_inspect_and_plot_damaged_files(data, tmp_path, command):
    raw = bytearray(data.read_bytes())
    trunc = tmp_path / "trunc.h5"
    trunc.write_bytes(bytes(raw[:len(raw) // 2]))
    res = rh.invoke(command[0], trunc, *command[1:])
    rh.assert_clean_error(res, 2, "trunc.h5", "truncated")
    off, size = chunk_offset(data)
    raw[off:off + size] = b"\x00" * size
    data.write_bytes(bytes(raw))
    res = rh.invoke(command[0], data, *[str(tmp_path / c) if c.endswith(".png") else c for c in command[1:]])
    if command == ["plot", "-o", "x.png"]:   # plot reads the frames: a damaged chunk is an error
        rh.assert_clean_error(res, 1, "data.h5", "cannot read")
    else:                                    # inspect reads only the metadata
        assert res.exit_code == 0, res.stderr


# -- inputs are only read -----------------------------------------------------------------------------

@pytest.mark.slow
def test_inputs_are_never_modified(data, tmp_path):
    """Data file, mask file, config and an earlier result used as initial guess: same bytes and mtime."""
    np.save(tmp_path / "mask.npy", np.ones((16, 16), np.uint8))
    cfg = tmp_path / "run.yaml"
    cfg.write_text(rh.config(data, numiter=2, data="mask: '%s'" % (tmp_path / "mask.npy")))
    first = tmp_path / "first.h5"
    res = rh.invoke("reconstruct", cfg, "-o", first)
    assert res.exit_code == 0, res.stderr
    seeded = tmp_path / "seeded.yaml"
    seeded.write_text(cfg.read_text().replace(
        "    data:", "    illumination: {model: '%s'}\n    sample: {model: '%s'}\n    data:" % (first, first)))
    data.chmod(0o444)   # a read-only data file is fine (opened read-only)
    inputs = [data, tmp_path / "mask.npy", cfg, seeded, first]
    for p in inputs:
        os.utime(p, ns=(10 ** 18, 10 ** 18))      # mtimes far from now: any write would change them
    before = {p: rh.fingerprint(p) for p in inputs}
    res = rh.invoke("reconstruct", seeded, "-o", tmp_path / "second.h5")
    assert res.exit_code == 0, res.stderr
    res = rh.invoke("reconstruct", cfg, "-o", tmp_path / "third.h5", "--resume", first,
                    "--set", "engines.dm.numiter=3")
    assert res.exit_code == 0, res.stderr
    for command in (["inspect", first], ["inspect", "--tree", data], ["inspect", data, "--json"],
                    ["plot", first, "-o", tmp_path / "f.png"], ["plot", data, "-o", tmp_path / "d.png"],
                    ["params", "--validate", cfg], ["simulate", cfg, "-o", tmp_path / "copy.h5"]):
        res = rh.invoke(*command)
        assert res.exit_code == 0, (command, res.stderr)
    after = {p: rh.fingerprint(p) for p in inputs}
    assert after == before
    data.chmod(0o644)
