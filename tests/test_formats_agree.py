"""The same scan written as ptycli HDF5, CXI and .ptyd loads into the same model, bit for bit."""

import numpy as np
import pytest
from click.testing import CliRunner

from ptycli.cli import main
from ptycli.core.ptycho import Ptycho
from ptycli.io.cxi import joule_to_kev, kev_to_joule

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
        P = Ptycho(dict(verbose_level="error", scans=dict(MF=dict(name="Full", data=dict(name=loader,
                                                                                           dfile=str(path))))),
                   level=2)
        m = P.scans["MF"]
        out[ext] = dict(diff=list(P.diff.S.values())[0].data, mask=list(P.mask.S.values())[0].data,
                        positions=m.positions_m(), probe=list(P.probe.S.values())[0].data,
                        obj_shape=list(P.obj.S.values())[0].data.shape, lam=m.geometry.lam,
                        resolution=np.asarray(m.geometry.resolution), distance=m.geometry.distance)
    return out


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
