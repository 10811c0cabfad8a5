"""The seed's second tutorial (POD, Geo, scan patterns) with the values it prints."""
import os

import numpy as np
import pytest

from ptycli import utils as u
from ptycli.core import Base, Container, POD, View, geometry, xy
from ptycli.resources import flower_obj, moon_pr


class Base2(Base):
    pass


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    out = {}
    P = Base2()
    P.CType = np.complex128
    P.FType = np.float64
    g = u.Param()
    g.energy = None
    g.lam = 5.32e-7
    g.distance = 15e-2
    g.psize = 24e-6
    g.shape = 256
    g.propagation = "farfield"
    G = geometry.Geo(owner=P, pars=g)
    out["resolution"] = str(G.resolution)
    fsize = G.shape * G.resolution
    out["fsize"] = "%.2fx%.2fmm" % tuple(fsize * 1e3)
    P.probe = Container(P, "Cprobe", data_type="complex")
    moon_probe = -moon_pr(G.shape)
    pr_shape = (1,) + tuple(G.shape)
    pr = P.probe.new_storage(shape=pr_shape, psize=G.resolution)
    pr.fill(moon_probe)
    y, x = G.propagator.grids_sam
    apert = u.smooth_step(fsize[0] / 5 - np.sqrt(x**2 + y**2), 1e-6)
    pr2 = P.probe.new_storage(shape=pr_shape, psize=G.resolution)
    pr2.fill(apert)
    pr3 = P.probe.new_storage(shape=pr_shape, psize=G.resolution)
    y, x = pr3.grids()
    apert = u.smooth_step(fsize[0] / 5 - np.abs(x), 3e-5) * u.smooth_step(fsize[1] / 5 - np.abs(y), 3e-5)
    pr3.fill(apert)
    for pp in [pr, pr2, pr3]:
        pp.data *= np.sqrt(1e9 / np.sum(pp.data * pp.data.conj()))
    out["norm"] = u.norm2(pr.data)
    out["probe_ids"] = [pr.ID, pr2.ID, pr3.ID]
    ill = pr.data[0]
    out["propagated"] = G.propagator.fw(ill)
    out["ill"] = ill
    pos = u.Param()
    pos.model = "round"
    pos.spacing = fsize[0] / 8
    pos.steps = None
    pos.extent = fsize * 1.5
    positions = xy.from_pars(pos)
    out["npos"] = len(positions)
    P.obj = Container(P, "Cobj", data_type="complex")
    oar = View.DEFAULT_ACCESSRULE.copy()
    oar.storageID = "S00"
    oar.psize = G.resolution
    oar.layer = 0
    oar.shape = G.shape
    oar.active = True
    for p in positions:
        r = oar.copy()
        r.coord = p
        View(P.obj, None, r)
    P.obj.reformat()
    out["obj_report"] = P.obj.formatted_report()
    storage = P.obj.storages["S00"]
    storage.fill(flower_obj(storage.shape[-2:]))
    P.exit = Container(P, "Cexit", data_type="complex")
    P.diff = Container(P, "Cdiff", data_type="real")
    P.mask = Container(P, "Cmask", data_type="real")
    objviews = list(P.obj.views.values())
    obview = objviews[0]
    probe_ar = View.DEFAULT_ACCESSRULE.copy()
    probe_ar.psize = G.resolution
    probe_ar.shape = G.shape
    probe_ar.active = True
    probe_ar.storageID = pr.ID
    prview = View(P.probe, None, probe_ar)
    exit_ar = probe_ar.copy()
    exit_ar.layer = 0
    exit_ar.active = True
    exview = View(P.exit, None, exit_ar)
    diff_ar = probe_ar.copy()
    diff_ar.layer = 0
    diff_ar.active = True
    diff_ar.psize = G.psize
    mask_ar = diff_ar.copy()
    maview = View(P.mask, None, mask_ar)
    diview = View(P.diff, None, diff_ar)
    pods = []
    views = {"probe": prview, "obj": obview, "exit": exview, "diff": diview, "mask": maview}
    pod = POD(P, ID=None, views=views, geometry=G)
    pods.append(pod)
    pod.exit = pod.probe * pod.object
    out["first_exit"] = np.array(list(P.exit.storages.values())[0].data[0])
    pod.diff = np.abs(pod.fw(pod.exit)) ** 2
    out["first_diff"] = np.array(pod.diff)
    for obview in objviews[1:]:
        prview = View(P.probe, None, probe_ar)
        exit_ar.layer += 1
        diff_ar.layer += 1
        exview = View(P.exit, None, exit_ar)
        maview = View(P.mask, None, mask_ar)
        diview = View(P.diff, None, diff_ar)
        views = {"probe": prview, "obj": obview, "exit": exview, "diff": diview, "mask": maview}
        pod = POD(P, ID=None, views=views, geometry=G)
        pods.append(pod)
    for C in [P.mask, P.exit, P.diff, P.probe]:
        C.reformat()
    rng = np.random.default_rng(0)
    for pod in pods:
        pod.exit = pod.probe * pod.object
        pod.diff = rng.poisson(np.abs(pod.fw(pod.exit)) ** 2)
        pod.mask = np.ones_like(pod.diff)
    out["P"], out["G"], out["pods"], out["positions"] = P, G, pods, positions
    # storing the simulation, as the tutorial does
    save_path = str(tmp_path_factory.mktemp("sim")) + "/"
    with open(save_path + "geometry.txt", "w") as f:
        f.write("distance %.4e\n" % G.p.distance)
        f.write("energy %.4e\n" % G.energy)
        f.write("psize %.4e\n" % G.psize[0])
        f.write("shape %d\n" % G.shape[0])
    with open(save_path + "positions.txt", "w") as f:
        if not os.path.exists(save_path + "ccd/"):
            os.mkdir(save_path + "ccd/")
        for pod in pods:
            diff_frame = "ccd/diffraction_%04d.npy" % pod.di_view.layer
            f.write(diff_frame + " %.4e %.4e\n" % tuple(pod.ob_view.coord))
            frame = pod.diff.astype(np.int32)
            np.save(save_path + diff_frame, frame)
    out["save_path"] = save_path
    return out


def test_geometry_numbers(sim):
    assert sim["resolution"] == "[1.29882812e-05 1.29882812e-05]"
    assert sim["fsize"] == "3.32x3.32mm"


def test_probe_storages_and_photons(sim):
    assert sim["probe_ids"] == ["S0000", "S0001", "S0002"]
    assert sim["norm"] == pytest.approx(1e9, rel=1e-12)
    # unitary propagation keeps the photon count
    assert u.norm2(sim["propagated"]) == pytest.approx(1e9, rel=1e-9)


def test_round_scan_and_object_storage(sim):
    assert sim["npos"] == 116
    lines = sim["obj_report"].rstrip("\n").splitlines()
    assert lines[3] == "Cobj     :    6.5 : complex128"
    assert lines[4] == "S00      :    6.5 :    1 * 638 * 640 :      1.3*1.3e-5 :      8.3*8.3e-3 :   116"


def test_pods_write_through_views(sim):
    P, pods = sim["P"], sim["pods"]
    assert len(pods) == 116
    assert [p.ID for p in pods[:2]] == ["P0000", "P0001"]
    # exit storage grew one layer per pod; the mask views all share layer 0
    assert P.exit.S["S0000"].shape == (116, 256, 256)
    assert P.diff.S["S0000"].shape == (116, 256, 256)
    assert P.mask.S["S0000"].shape == (1, 256, 256)
    pod = pods[5]
    np.testing.assert_allclose(pod.exit, pod.probe * pod.object)
    assert pod.pr_view.storage is P.probe.S["S0000"]
    assert pod.di_view.pods[pod.ID] is pod
    # first diffraction pattern is |fw(exit)|^2 of the first exit wave
    np.testing.assert_allclose(sim["first_diff"], np.abs(sim["G"].propagator.fw(sim["first_exit"])) ** 2)
    # Poisson data: mean counts close to the model intensity
    model = np.abs(pod.fw(pod.exit)) ** 2
    assert abs(pod.diff.sum() / model.sum() - 1) < 1e-3


def test_saved_simulation_files(sim):
    path = sim["save_path"]
    lines = open(path + "geometry.txt").read().splitlines()
    assert lines[0] == "distance 1.5000e-01"
    assert lines[2] == "psize 2.4000e-05"
    assert lines[3] == "shape 256"
    assert float(lines[1].split()[1]) == pytest.approx(1.23984193e-9 / 5.32e-7, rel=1e-4)
    pos_lines = open(path + "positions.txt").read().splitlines()
    assert len(pos_lines) == 116
    assert pos_lines[0].startswith("ccd/diffraction_0000.npy")
    frame = np.load(path + "ccd/diffraction_0003.npy")
    assert frame.shape == (256, 256) and frame.dtype == np.int32


def test_tutorial_plots_render_off_screen(sim):
    """The tutorials' plot_storage calls, rendered with the Agg backend."""
    pytest.importorskip("matplotlib")
    P = sim["P"]
    figs = [
        u.plot_storage(P.probe.S["S0000"], 0),
        u.plot_storage(P.probe.S["S0001"], 1, channel="c"),
        u.plot_storage(P.obj.S["S00"], 5),
        u.plot_storage(list(P.exit.storages.values())[0], 6),
        u.plot_storage(list(P.diff.storages.values())[0], 8, slices=":2,:,:", modulus="log"),
        u.plot_storage(P.obj.S["S00"], 9, slices="0,120:-120,120:-120"),
    ]
    for fig in figs:
        assert fig.axes, "a figure without axes"
