"""PtyPy's parameter names: translated into ptycli's or dropped with a log line, never silently."""

import logging

import h5py
import numpy as np
import pytest

from ptycli.errors import ConfigError
from ptycli.params.ptypy_names import translate
from ptycli.params.tree import validate
from ptycli.scans.hdf5 import Hdf5Scan

from test_scans_hdf5 import beamline_file


def ptypy_config(**engines):
    return {"scans": {"S": {"name": "BlockFull", "data": {"name": "MoonFlowerScan", "num_frames": 20,
                                                          "shape": 32, "save": None, "auto_center": True},
                            "coherence": {"spectrum": None}}},
            "io": {"autosave": {"active": False}, "autoplot": {"active": False, "interval": 1}},
            "engines": engines}


def test_renames_reach_ptycli_parameters():
    p = validate(ptypy_config(
        e0={"name": "DM_serial", "numiter": 3, "numiter_contiguous": 5, "alpha": 0.9},
        e1={"name": "ML_pycuda", "numiter": 2, "scale_probe_objects": 0.5, "intensity_renormalization": 1.0},
        e2={"name": "EPIE", "numiter": 2, "alpha": 0.7, "beta": 0.3, "object_norm_is_global": False}))
    assert [e.name for e in p.engines.values()] == ["DM", "ML", "ePIE"]
    assert p.engines.e0.alpha == 0.9            # DM's alpha is ptycli's DM alpha
    assert p.engines.e1.scale_probe_object == 0.5
    assert (p.engines.e2.object_step, p.engines.e2.probe_step) == (0.7, 0.3)
    assert p.scans.S.name == "Full"
    assert p.scans.S.data.center == "auto"      # auto_center: true with no centre given
    assert "autosave" not in p.io and "numiter_contiguous" not in p.engines.e0


def test_declared_names_are_never_rewritten():
    # rPIE declares its own alpha (the rPIE weight): it must not become object_step
    p = validate(ptypy_config(e0={"name": "rPIE", "numiter": 1, "alpha": 0.25}))
    assert p.engines.e0.alpha == 0.25 and p.engines.e0.object_step == 1.0
    tree = {"engines": {"e0": {"name": "DM", "numiter": 1}}}
    assert translate(tree) is tree               # nothing PtyPy's: the same tree back


def test_both_names_given_is_one_clear_error():
    with pytest.raises(ConfigError, match="engines.e0: both PtyPy's alpha and ptycli's object_step"):
        validate(ptypy_config(e0={"name": "ePIE", "numiter": 1, "alpha": 0.5, "object_step": 0.5}))


def test_log_level_says_whether_the_value_mattered(caplog):
    with caplog.at_level(logging.INFO, logger="ptycli.params.ptypy_names"):
        validate(ptypy_config(e0={"name": "DM", "numiter": 1, "obj_smooth_std": 2.0,
                                  "probe_fourier_support": None},
                              e1={"name": "ML", "numiter": 1, "smooth_gradient": 0.0}))
    by_level = {}
    for r in caplog.records:
        by_level.setdefault(r.levelno, []).append(r.getMessage())
    warnings = by_level.get(logging.WARNING, [])
    assert len(warnings) == 1 and warnings[0].startswith("engines.e0.obj_smooth_std = 2.0")
    infos = " ".join(by_level[logging.INFO])
    assert "engines.e0.probe_fourier_support" in infos and "engines.e1.smooth_gradient" in infos
    assert "io.autosave" in infos and "scans.S.name: PtyPy's scan model BlockFull" in infos


def test_unknown_names_still_fail():
    with pytest.raises(ConfigError, match="engines.e0.numiter_contiguos: unknown parameter"):
        validate(ptypy_config(e0={"name": "DM", "numiter": 1, "numiter_contiguos": 1}))


def hdf5_loader_data(path, **extra):
    data = {"name": "Hdf5Loader",
            "intensities": {"file": str(path), "key": "/entry/data/eiger"},
            "positions": {"file": str(path), "slow_key": "/entry/motors/sy", "fast_key": "/entry/motors/sx",
                          "slow_multiplier": 1e-6, "fast_multiplier": 1e-6},
            "mask": {"file": str(path), "key": "/entry/det/mask"},
            "darkfield": {"file": None, "key": None},
            "recorded_energy": {"file": str(path), "key": "/entry/mono/energy", "multiplier": 1e-3},
            "recorded_distance": {"file": str(path), "key": "/entry/det/distance", "multiplier": 1e-3},
            "recorded_psize": {"file": str(path), "key": "/entry/det/pixel", "multiplier": 1e-6},
            "center": "geometric"}
    data.update(extra)
    return {"scans": {"S": {"data": data}}}


def test_hdf5_loader_reads_the_same_frames_as_hdf5scan(tmp_path):
    path = tmp_path / "b.h5"
    frames = beamline_file(path)
    data = validate(hdf5_loader_data(path)).scans.S.data
    assert data.name == "Hdf5Scan" and data.dfile == str(path)
    s = Hdf5Scan.from_pars(data).load()
    np.testing.assert_allclose(s.positions[:, 0], np.arange(6) * 1.5e-6)
    np.testing.assert_allclose(s.positions[:, 1], -np.arange(6) * 0.5e-6)
    assert s.energy_kev == pytest.approx(6.2) and s.distance_m == pytest.approx(1.5)
    np.testing.assert_allclose(s.psize_m, [75e-6, 75e-6])
    expect = frames.astype(np.float32)
    expect[:, 0, 0] = 0                        # the mask's one bad pixel
    np.testing.assert_array_equal(s.intensities, expect)


def test_hdf5_loader_groups_in_other_files_and_normalisation(tmp_path):
    """Positions and the ion chamber in a master file, frames in the detector's file, as beamlines write them."""
    from ptycli.scans.hdf5 import FILE_SEPARATOR

    path = tmp_path / "b.h5"
    frames = beamline_file(path)
    i0 = np.array([1.0, 2.0, 1.0, 0.5, 1.0, 1.5]) * 1e4
    with h5py.File(tmp_path / "master.h5", "w") as f:
        f["sy"] = np.arange(6) * 3.0
        f["sx"] = np.arange(6) * 1.0
        f["i0"] = i0
    config = hdf5_loader_data(path, normalisation={"file": str(tmp_path / "master.h5"), "key": "i0"})
    config["scans"]["S"]["data"]["positions"].update(file=str(tmp_path / "master.h5"), slow_key="sy", fast_key="sx")
    data = validate(config).scans.S.data
    assert data.dfile == str(path) and data.intensities == "/entry/data/eiger"
    assert data.positions_slow == str(tmp_path / "master.h5") + FILE_SEPARATOR + "sy"
    s = Hdf5Scan.from_pars(data).load()
    np.testing.assert_allclose(s.positions[:, 0], np.arange(6) * 3e-6)
    expect = frames.astype(np.float32) * (i0.mean() / i0)[:, None, None].astype(np.float32)
    expect[:, 0, 0] = 0
    np.testing.assert_allclose(s.intensities, expect, rtol=1e-6)


def test_hdf5_loader_layouts_ptycli_cannot_read_are_refused(tmp_path):
    path = tmp_path / "b.h5"
    beamline_file(path)
    boxed = hdf5_loader_data(path)
    boxed["scans"]["S"]["data"]["positions"]["bounding_box"] = {"fast_axis_bounds": [0, 3]}
    with pytest.raises(ConfigError, match="bounding_box: PtyPy's Hdf5Loader crop of the scan is not supported"):
        validate(boxed)
