"""NpyFolderScan: the folder layout stored by the PtyPy tutorial."""

import numpy as np
import pytest

from ptycli.errors import ConfigError, DataError
from ptycli.scans.npyfolder import NpyFolderScan, read_geometry_txt, read_positions_txt


def tutorial_folder(root, n=4, shape=8):
    """Write geometry.txt, positions.txt and ccd/diffraction_%04d.npy as the tutorial does."""
    rng = np.random.default_rng(2)
    (root / "ccd").mkdir(parents=True)
    with open(root / "geometry.txt", "w") as f:
        f.write("distance %.4e\n" % 0.15)
        f.write("energy %.4e\n" % 6.2)
        f.write("psize %.4e\n" % 24e-6)
        f.write("shape %d\n" % shape)
    frames, pos = [], []
    with open(root / "positions.txt", "w") as f:
        for i in range(n):
            name = "ccd/diffraction_%04d.npy" % i
            yx = (1.2e-4 * i, -3.4e-5 * i)
            f.write(name + " %.4e %.4e\n" % yx)
            frame = rng.poisson(5, (shape, shape)).astype(np.int32)
            np.save(root / name, frame)
            frames.append(frame)
            pos.append(yx)
    return np.array(frames), np.array(pos)


def load(root, **pars):
    pars.setdefault("center", "geometric")
    return NpyFolderScan.from_pars(dict(dfile=str(root), **pars)).load()


def test_reads_tutorial_folder(tmp_path):
    frames, pos = tutorial_folder(tmp_path / "sim")
    s = load(tmp_path / "sim")
    np.testing.assert_array_equal(s.intensities, frames.astype(np.float32))
    np.testing.assert_allclose(s.positions, pos)
    assert s.distance_m == pytest.approx(0.15) and s.energy_kev == pytest.approx(6.2)
    np.testing.assert_allclose(s.psize_m, [24e-6, 24e-6])
    assert s.shape == (8, 8) and s.mask.all() and s.label == "sim"
    assert s.positions_unit == "m"
    # dfile may also name positions.txt; the pipeline options apply
    s = load(tmp_path / "sim" / "positions.txt", shape=2, rebin=2, num_frames=3)
    assert s.intensities.shape == (3, 2, 2)
    np.testing.assert_allclose(s.intensities[0], frames[0, 2:6, 2:6].reshape(2, 2, 2, 2)
                               .sum(axis=(1, 3)))


def test_rank_block(tmp_path):
    frames, pos = tutorial_folder(tmp_path / "sim", n=5)
    s = NpyFolderScan.from_pars({"dfile": str(tmp_path / "sim"), "center": "geometric"}).load(
        rank=1, size=2)
    np.testing.assert_array_equal(s.indices, [3, 4])
    np.testing.assert_array_equal(s.intensities, frames[3:])


def test_frames_with_leading_axis_and_config_geometry(tmp_path):
    root = tmp_path / "f"
    root.mkdir()
    np.save(root / "a.npy", np.ones((1, 4, 4)))
    np.save(root / "b.npy", 2 * np.ones((1, 4, 4)))
    (root / "positions.txt").write_text("# frame y x\n\na.npy 0 0\nb.npy 1e-6 2e-6\n")
    with pytest.raises(DataError, match="geometry file .*geometry.txt does not exist"):
        load(root)
    s = load(root, energy=7.0, distance=2.0, psize=1e-4)
    assert s.intensities.shape == (2, 4, 4) and s.intensities[1, 0, 0] == 2
    (root / "geometry.txt").write_text("energy 7\n")
    with pytest.raises(ConfigError, match=r"scan\.data\.distance"):
        load(root)


def test_malformed_lines_report_line_numbers(tmp_path):
    tutorial_folder(tmp_path / "sim")
    geo = tmp_path / "sim" / "geometry.txt"
    geo.write_text("distance 1.5e-01\nenergy six\n")
    with pytest.raises(DataError, match=r"geometry\.txt line 2: 'six' is not a number"):
        load(tmp_path / "sim")
    geo.write_text("distance\n")
    with pytest.raises(DataError, match=r"geometry\.txt line 1: expected 'distance'"):
        read_geometry_txt(str(geo))
    geo.write_text("psize 1e-4 2e-4\nshape 8\nfoo 3\n")
    g = read_geometry_txt(str(geo))
    assert g == {"psize": (1e-4, 2e-4), "shape": (8, 8)}
    pos = tmp_path / "sim" / "positions.txt"
    pos.write_text("ccd/diffraction_0000.npy 0 0\n\nccd/diffraction_0001.npy 1e-4\n")
    with pytest.raises(DataError, match=r"positions\.txt line 3: expected 'frame_file y x'"):
        read_positions_txt(str(pos))
    pos.write_text("ccd/diffraction_0000.npy 0 x\n")
    with pytest.raises(DataError, match=r"positions\.txt line 1: positions '0 x' are not numbers"):
        read_positions_txt(str(pos))
    pos.write_text("# nothing\n")
    with pytest.raises(DataError, match="lists no frames"):
        read_positions_txt(str(pos))


def test_missing_files(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load(tmp_path / "nothere")
    tutorial_folder(tmp_path / "sim")
    (tmp_path / "sim" / "ccd" / "diffraction_0002.npy").unlink()
    with pytest.raises(DataError, match=r"frame file .*diffraction_0002\.npy listed in "
                                        r"positions\.txt does not exist"):
        load(tmp_path / "sim")
    (tmp_path / "sim" / "positions.txt").unlink()
    with pytest.raises(DataError, match=r"positions file .*positions\.txt does not exist"):
        load(tmp_path / "sim")


def test_shape_mismatch(tmp_path):
    tutorial_folder(tmp_path / "sim", shape=8)
    (tmp_path / "sim" / "geometry.txt").write_text("distance 1\nenergy 6\npsize 1e-4\nshape 16\n")
    with pytest.raises(DataError, match=r"geometry\.txt says shape 16 but frame "
                                        r".*diffraction_0000\.npy has shape \(8, 8\)"):
        load(tmp_path / "sim")
    (tmp_path / "sim" / "geometry.txt").write_text("distance 1\nenergy 6\npsize 1e-4\n")
    np.save(tmp_path / "sim" / "ccd" / "diffraction_0003.npy", np.ones((6, 8)))
    with pytest.raises(DataError, match=r"diffraction_0003\.npy has shape \(6, 8\), the first "
                                        r"frame \(8, 8\)"):
        load(tmp_path / "sim")
    np.save(tmp_path / "sim" / "ccd" / "diffraction_0003.npy", np.ones((2, 8, 8)))
    with pytest.raises(DataError, match=r"diffraction_0003\.npy holds an array of shape "
                                        r"\(2, 8, 8\), expected a 2-D frame"):
        load(tmp_path / "sim")
