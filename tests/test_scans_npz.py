"""NpzScan: frames and positions from NumPy .npz/.npy files (plain, bzip2, gzip); README's own-data examples."""

import bz2
import gzip
import io
import json
import zipfile

import numpy as np
import pytest

from cli_helpers import invoke  # noqa: E402
from ptycli.errors import ConfigError, DataError
from ptycli.scans import get_loader
from ptycli.scans.npz import (NOMINAL_DISTANCE_M, NOMINAL_ENERGY_KEV, NpzScan, as_positions,
                              detect_fftshift, nominal_pixel_geometry, open_arrays)


def centred_frames(n=6, shape=(16, 16), seed=0):
    """Counts with a bright centre at shape // 2 (far-field-like)."""
    rng = np.random.default_rng(seed)
    y, x = np.indices(shape)
    peak = 400.0 * np.exp(-((y - shape[0] // 2) ** 2 + (x - shape[1] // 2) ** 2) / 6.0)
    return rng.poisson(peak + 1.0, (n,) + shape).astype(np.uint32)


def load(path, **pars):
    return NpzScan.from_pars(dict(dfile=str(path), **pars)).load(rank=0, size=1)


# -- reading ----------------------------------------------------------------------------------

def test_common_key_names_shifted_frames_and_squeezed_positions(tmp_path):
    frames = centred_frames()
    pos = np.arange(12, dtype=float).reshape(6, 2)
    path = tmp_path / "scan.npz"
    np.savez(path, diffraction=np.fft.ifftshift(frames, axes=(-2, -1)), scan_positions=pos[None])
    s = load(path, positions_unit="pixel")
    # FFT-shifted input detected: shifted back and centred geometrically (not by the mass centre)
    np.testing.assert_array_equal(s.intensities, frames.astype(np.float32))
    assert s.meta["fftshifted"] is True and s.meta["center_raw"] == [8.0, 8.0]
    np.testing.assert_array_equal(s.positions, pos)  # (1, 6, 2) squeezed to (6, 2)
    assert s.positions_unit == "pixel" and s.label == "scan"
    # positions in pixels, no geometry given: the nominal one, object pixel 1
    assert s.energy_kev == NOMINAL_ENERGY_KEV and s.distance_m == NOMINAL_DISTANCE_M
    lam = 1.23984193e-9 / s.energy_kev
    np.testing.assert_allclose(lam * s.distance_m / (np.array(s.shape) * s.psize_m), [1.0, 1.0])


def test_centred_frames_stay_and_explicit_keys(tmp_path):
    frames = centred_frames(n=4)
    path = tmp_path / "scan.npz"
    np.savez(path, stack=frames, xy=np.zeros((4, 2)), beam_stop=np.ones((16, 16)), energy=6.2,
             distance=2.0, psize=[75e-6, 55e-6])
    with pytest.raises(DataError, match="found no positions"):
        load(path)
    s = load(path, positions="xy", mask_key="beam_stop", center="geometric")
    assert s.meta["fftshifted"] is False
    np.testing.assert_array_equal(s.intensities, frames)
    assert s.energy_kev == pytest.approx(6.2) and s.distance_m == pytest.approx(2.0)
    np.testing.assert_allclose(s.psize_m, [75e-6, 55e-6])
    assert s.positions_unit == "m"
    with pytest.raises(DataError, match="no array 'nope'.*holds stack"):
        load(path, positions="nope")


def test_grid_frames_mask_per_frame_and_transposed_positions(tmp_path):
    frames = centred_frames(n=6).reshape(2, 3, 16, 16)
    mask = np.ones((2, 3, 16, 16), np.uint8)
    mask[1, 2, 0, 0] = 0
    path = tmp_path / "grid.npz"
    np.savez(path, data=frames, positions=np.array([np.arange(6.0), -np.arange(6.0)]), mask=mask,
             energy=6.2, distance=2.0, psize=75e-6)
    s = load(path, center="geometric", fftshifted=False)
    assert s.intensities.shape == (6, 16, 16)
    np.testing.assert_array_equal(s.positions[:, 0], np.arange(6.0))  # (2, N): rows y and x
    np.testing.assert_array_equal(s.positions[:, 1], -np.arange(6.0))
    assert not s.mask[5, 0, 0] and s.mask[4, 0, 0] and s.intensities[5, 0, 0] == 0


@pytest.mark.parametrize("compress", [bz2.compress, gzip.compress])
def test_compressed_npz_and_npy_with_positions_file(tmp_path, compress):
    frames = centred_frames(n=5)
    buf = io.BytesIO()
    np.savez(buf, intensities=frames, positions=np.ones((5, 2)), energy=6.2, distance=2.0, psize=75e-6)
    (tmp_path / "a.npz.x").write_bytes(compress(buf.getvalue()))
    s = load(tmp_path / "a.npz.x", center="geometric")
    np.testing.assert_array_equal(s.intensities, frames)
    # a .npy holds the frames only: positions from a text file
    buf = io.BytesIO()
    np.save(buf, frames[:, None])  # a leading length-1 axis per frame
    (tmp_path / "f.npy.x").write_bytes(compress(buf.getvalue()))
    with pytest.raises(ConfigError, match="positions_file"):
        load(tmp_path / "f.npy.x", energy=6.2, distance=2.0, psize=75e-6)
    np.savetxt(tmp_path / "pos.txt", np.arange(10.0).reshape(5, 2))
    s = load(tmp_path / "f.npy.x", positions_file=str(tmp_path / "pos.txt"), positions_unit="pixel",
             center="geometric")
    np.testing.assert_array_equal(s.intensities, frames)
    np.testing.assert_array_equal(s.positions, np.arange(10.0).reshape(5, 2))


def test_decompression_bomb_and_declared_sizes_are_bounded(tmp_path):
    bomb = tmp_path / "bomb.npz.bz2"
    bomb.write_bytes(bz2.compress(b"\0" * (4 << 20)))  # 4 MB of zeros in a few hundred bytes
    with pytest.raises(DataError, match="expands to more than"):
        open_arrays(bomb, limit=1 << 20)
    # an .npz member whose header declares far more than the limit is refused before reading
    path = tmp_path / "big.npz"
    np.savez(path, intensities=np.zeros((64, 64, 64), np.float32))
    arrays = open_arrays(path, limit=1 << 16)
    with pytest.raises(DataError, match="needs 1.05 MB"):
        arrays.array("intensities")
    # pickled object arrays are never loaded
    with zipfile.ZipFile(tmp_path / "obj.npz", "w") as z:
        b = io.BytesIO()
        np.save(b, np.array([{"a": 1}], dtype=object), allow_pickle=True)
        z.writestr("intensities.npy", b.getvalue())
    with pytest.raises(DataError, match="without pickle"):
        open_arrays(tmp_path / "obj.npz").array("intensities")


def test_bad_inputs_are_one_line_errors(tmp_path):
    (tmp_path / "t.npz").write_text("not numpy")
    with pytest.raises(DataError, match="neither a NumPy"):
        load(tmp_path / "t.npz")
    np.savez(tmp_path / "m.npz", intensities=centred_frames(n=3), positions=np.zeros((3, 2)))
    with pytest.raises(ConfigError, match="energy.*positions_unit: pixel"):
        load(tmp_path / "m.npz")  # metres and no geometry: say both ways out
    with pytest.raises(DataError, match="is a folder"):
        load(tmp_path)


def test_helpers():
    assert detect_fftshift(np.fft.ifftshift(centred_frames()[0]))[0]
    assert not detect_fftshift(centred_frames()[0])[0]
    np.testing.assert_array_equal(as_positions(np.zeros((3, 4, 2)), "p").shape, (12, 2))
    with pytest.raises(DataError, match=r"expected \(N, 2\)"):
        as_positions(np.zeros((5, 3)), "p")
    e, d, ps = nominal_pixel_geometry((32, 64), transpose=True)
    lam = 1.23984193e-9 / e
    np.testing.assert_allclose(lam * d / (np.array([32, 64]) * ps[::-1]), [1.0, 1.0])
    assert get_loader("npzscan") is NpzScan


def object_correlation(rec, truth):
    """Correlation of a result's object with the true one, in the middle of the scanned area."""
    from ptycli.engines import metrics

    sid = next(iter(rec.objects))
    obj = rec.object[0]
    off = np.round(truth["object_center"] - np.asarray(rec.object_meta[sid]["center"])).astype(int)
    h, w = obj.shape
    y0, x0 = h // 4, w // 4
    tru = truth["object"][y0 + off[0]:h - y0 + off[0], x0 + off[1]:w - x0 + off[1]]
    return metrics.align_and_compare(obj[y0:h - y0, x0:w - x0], tru)["correlation"]


# -- the command line -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def moonflower_npz(tmp_path_factory):
    """A MoonFlower scan as a bz2-compressed npz: FFT-shifted frames, pixel positions (1, N, 2), truth."""
    sd = get_loader("MoonFlowerScan").from_pars(
        dict(name="MoonFlowerScan", shape=32, num_frames=50, photons=1e8, seed=3)).load()
    lam = 1.23984193e-9 / sd.energy_kev
    pixel = lam * sd.distance_m / (np.array(sd.shape) * sd.psize_m)
    root = tmp_path_factory.mktemp("npz")
    buf = io.BytesIO()
    np.savez(buf, intensities=np.fft.ifftshift(sd.intensities, axes=(-2, -1)),
             positions=(sd.positions / pixel)[None])
    path = root / "mf.npz.bz2"
    path.write_bytes(bz2.compress(buf.getvalue()))
    return path, sd.ground_truth


@pytest.mark.slow
def test_reconstruct_npz_through_the_cli(moonflower_npz, tmp_path):
    from ptycli.io import load_reconstruction

    path, truth = moonflower_npz
    cfg = tmp_path / "rec.yaml"
    cfg.write_text("data_type: single\nscans:\n  MF:\n    data: {name: NpzScan, dfile: %s, positions_unit: pixel}\n"
                   "engines:\n  dm: {name: DM, numiter: 40}\n  ml: {name: ML, numiter: 10}\n" % path)
    out = tmp_path / "rec.h5"
    res = invoke("reconstruct", cfg, "-o", out, "--json")
    assert res.exit_code == 0, res.stderr
    assert "FFT-shifted" in res.stderr and "object pixel is 1" in res.stderr
    assert json.loads(res.stdout)["output"] == str(out)
    rec = load_reconstruction(str(out))
    sid = next(iter(rec.objects))
    np.testing.assert_allclose(rec.object_meta[sid]["psize"], [1.0, 1.0])
    c = object_correlation(rec, truth)
    assert c > 0.97, c  # measured 0.99+
    assert "nominal geometry: lengths in object pixels" in invoke("inspect", out).stdout


def test_validate_npz_config_without_geometry(moonflower_npz, tmp_path):
    path, _ = moonflower_npz
    cfg = tmp_path / "rec.yaml"
    cfg.write_text("scans:\n  MF:\n    data: {name: NpzScan, dfile: %s, positions_unit: pixel}\n"
                   "engines:\n  dm: {name: DM, numiter: 1}\n" % path)
    res = invoke("params", "--validate", cfg)
    assert res.exit_code == 0 and res.stdout == "OK\n", res.stderr
    cfg.write_text(cfg.read_text().replace("positions_unit: pixel", "intensities: nope"))
    res = invoke("params", "--validate", cfg)
    assert res.exit_code == 2 and len(res.stderr.splitlines()) == 1
    assert "no array 'nope'" in res.stderr and "intensities" in res.stderr


# -- the README's "Bring your own data" examples, as written -----------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("block", ["byod-npz", "byod-hdf5", "byod-ptyd-cxi", "byod-npyfolder"])
def test_readme_bring_your_own_data(tmp_path, block):
    from ptycli.io import load_reconstruction
    from test_readme_pipeline import ROOT, readme_blocks, run, shell_env

    code = readme_blocks()[block]
    (tmp_path / "sample_data").symlink_to(ROOT / "sample_data")
    res = run(code, tmp_path, shell_env(tmp_path))
    assert res.returncode == 0, res.stderr
    results = sorted((tmp_path / "byod").glob("*.h5"))
    results = [r for r in results if r.name != "beamline.h5"]
    assert results
    truth = get_loader("Hdf5Scan").from_pars({"dfile": str(ROOT / "sample_data" / "moonflower.h5")}).load(
        rank=0, size=1).ground_truth
    for out in results:
        # 40 DM + 10 ML iterations of the bundled scan find its object, whatever the input format
        c = object_correlation(load_reconstruction(str(out)), truth)
        assert c > 0.95, (out.name, c)
