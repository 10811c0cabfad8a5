"""The same scan written as ptycli HDF5, CXI and .ptyd loads into the same model, bit for bit."""

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from ptycli.cli import main
from ptycli.core.ptycho import Ptycho
from ptycli.errors import ConfigError, DataError
from ptycli.io.cxi import joule_to_kev, kev_to_joule
from ptycli.scans.detect import detect_loader

SIM = """
scans:
  MF:
    name: Full
    data: {name: MoonFlowerScan, shape: 32, num_frames: 20, photons: 1.0e6, add_poisson_noise: true,
           seed: 2, energy: 8.7}
"""
LOADERS = {"h5": "Hdf5Scan", "cxi": "CxiScan", "ptyd": "PtydScan"}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("formats")
    config = d / "sim.yaml"
    config.write_text(SIM)
    out = {}
    for ext, loader in LOADERS.items():
        path = d / ("sim." + ext)
        res = CliRunner().invoke(main, ["-q", "simulate", str(config), "-o", str(path)])
        assert res.exit_code == 0, res.output
        out[ext] = _model(dict(name=loader, dfile=str(path)))
        out[ext]["path"] = path
    return out


def _model(data):
    P = Ptycho(dict(verbose_level="error", scans=dict(MF=dict(name="Full", data=data))), level=2)
    m = P.scans["MF"]
    return dict(diff=list(P.diff.S.values())[0].data, mask=list(P.mask.S.values())[0].data,
                positions=m.positions_m(), probe=list(P.probe.S.values())[0].data,
                obj_shape=list(P.obj.S.values())[0].data.shape, lam=m.geometry.lam,
                resolution=np.asarray(m.geometry.resolution), distance=m.geometry.distance,
                loader=P.p.scans.MF.data.name)


@pytest.mark.parametrize("ext", ["cxi", "ptyd"])
def test_model_is_the_same_from_every_format(models, ext):
    ref, other = models["h5"], models[ext]
    for key in ("diff", "mask", "positions", "probe", "resolution"):
        np.testing.assert_array_equal(other[key], ref[key], err_msg=key)
    assert other["lam"] == ref["lam"] and other["distance"] == ref["distance"]
    assert other["obj_shape"] == ref["obj_shape"]


@pytest.mark.parametrize("kev", [6.2, 8.7, 12.4, 0.25, 17.48])
def test_cxi_energy_round_trip_is_exact(kev):
    assert joule_to_kev(kev_to_joule(kev)) == kev


# -- the loader told from the file when the config names none ------------------------------------

@pytest.mark.parametrize("ext", sorted(LOADERS))
@pytest.mark.slow
def test_loader_is_told_from_the_file(models, ext):
    assert detect_loader(models[ext]["path"])[0] == LOADERS[ext]
    for name in (None, "auto", "AUTO"):
        data = dict(dfile=str(models[ext]["path"]))
        if name:
            data["name"] = name
        model = _model(data)
        assert model["loader"] == LOADERS[ext]
        np.testing.assert_array_equal(model["diff"], models[ext]["diff"])
        np.testing.assert_array_equal(model["positions"], models[ext]["positions"])


def test_the_contents_decide_over_the_extension(models, tmp_path):
    renamed = tmp_path / "really_cxi.h5"
    renamed.write_bytes(models["cxi"]["path"].read_bytes())
    assert detect_loader(renamed) == ("CxiScan", "an HDF5 file with /entry_1")
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["frames"] = np.zeros((2, 4, 4))
    assert detect_loader(other)[0] == "Hdf5Scan"  # no known layout: the loader with configurable paths
    lab = tmp_path / "lab.hdf5"
    with h5py.File(lab, "w") as f:
        f["ptychogram"] = np.zeros((2, 4, 4))
    assert detect_loader(lab)[0] == "PtyLabScan"
    npz = tmp_path / "scan.npz.bz2"
    npz.write_bytes(b"")
    assert detect_loader(npz)[0] == "NpzScan"
    assert detect_loader(tmp_path)[0] == "NpyFolderScan"
    text = tmp_path / "notes.txt"
    text.write_text("not a scan")
    assert detect_loader(text)[0] is None


def test_a_file_of_unknown_format_or_a_missing_file_is_one_clear_error(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not a scan")
    with pytest.raises(ConfigError, match=r"data.name: no loader given, and the format of .*notes.txt could "
                                          r"not be told \(neither HDF5 nor a known file type\); expected one of "):
        _model(dict(dfile=str(text)))
    with pytest.raises(ConfigError, match=r"data.dfile: .*missing.cxi does not exist"):
        _model(dict(dfile=str(tmp_path / "missing.cxi")))
    with pytest.raises(ConfigError, match=r"'auto' needs .*dfile"):
        _model(dict(name="auto"))


@pytest.mark.parametrize("wrong,ext", [("Hdf5Scan", "cxi"), ("CxiScan", "ptyd"), ("PtydScan", "h5")])
def test_a_wrong_loader_name_points_to_the_right_one(models, wrong, ext):
    with pytest.raises(DataError) as info:
        _model(dict(name=wrong, dfile=str(models[ext]["path"])))
    assert "which %s reads: set scans.MF.data.name to %s" % (LOADERS[ext], LOADERS[ext]) in str(info.value)
