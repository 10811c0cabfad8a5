"""The seed's third tutorial: Ptycho(p, level=2) on MoonFlower data and a hand-written DM."""
import numpy as np
import pytest

import ptycli
from ptycli import utils as u


def fourier_update(pods):
    pod = list(pods.values())[0]
    mask = pod.mask
    modulus = np.sqrt(np.abs(pod.diff))
    Imodel = np.zeros_like(pod.diff)
    err = 0.0
    Dphi = {}
    for gamma, pod in pods.items():
        Dphi[gamma] = pod.fw(2 * pod.probe * pod.object - pod.exit)
        Imodel += np.abs(Dphi[gamma] * Dphi[gamma].conj())
    factor = (1 - mask) + mask * modulus / (np.sqrt(Imodel) + 1e-10)
    for gamma, pod in pods.items():
        df = pod.bw(factor * Dphi[gamma]) - pod.probe * pod.object
        pod.exit += df
        err += np.mean(np.abs(df * df.conj()))
    return err


def probe_update(probe, norm, pods, fill=0.0):
    probe *= fill
    norm << fill + 1e-10
    for name, pod in pods.items():
        if not pod.active:
            continue
        probe[pod.pr_view] += pod.object.conj() * pod.exit
        norm[pod.pr_view] += pod.object * pod.object.conj()
    probe.allreduce()
    norm.allreduce()
    probe /= norm


def object_update(obj, norm, pods, fill=0.0):
    obj *= fill
    norm << fill + 1e-10
    for pod in pods.values():
        if not pod.active:
            continue
        pod.object += pod.probe.conj() * pod.exit
        norm[pod.ob_view] += pod.probe * pod.probe.conj()
    obj.allreduce()
    norm.allreduce()
    obj /= norm


def iterate(P, num):
    obj_norm = P.obj.copy(fill=0.0)
    probe_norm = P.probe.copy(fill=0.0)
    errors = []
    for i in range(num):
        err = 0
        for di_view in P.diff.V.values():
            if not di_view.active:
                continue
            err += fourier_update(di_view.pods)
        probe_update(P.probe, probe_norm, P.pods)
        object_update(P.obj, obj_norm, P.pods)
        errors.append(err)
    P.obj.delete_copy()
    P.probe.delete_copy()
    return errors


@pytest.fixture(scope="module")
def P():
    p = u.Param()
    p.verbose_level = 3
    p.data_type = "single"
    p.scans = u.Param()
    p.scans.MF = u.Param()
    p.scans.MF.name = "Full"
    p.scans.MF.data = u.Param()
    p.scans.MF.data.name = "MoonFlowerScan"
    p.scans.MF.data.shape = 64
    p.scans.MF.data.num_frames = 100
    return ptycli.core.Ptycho(p, level=2)


def test_level2_model(P):
    diff_storage = list(P.diff.storages.values())[0]
    assert diff_storage.shape == (100, 64, 64)
    assert diff_storage.dtype == np.float32
    assert len(P.pods) == 100
    probe_storage = list(P.probe.S.values())[0]
    assert probe_storage.shape == (1, 64, 64) and probe_storage.dtype == np.complex64
    obj_storage = list(P.obj.S.values())[0]
    assert obj_storage.shape[0] == 1 and min(obj_storage.shape[1:]) > 64
    # every pod sees its own frame, and the default probe carries the measured photons
    pod = next(iter(P.pods.values()))
    assert pod.diff.shape == (64, 64)
    photons = diff_storage.data.sum() / 100
    assert u.norm2(probe_storage.data) == pytest.approx(photons, rel=1e-3)
    # exit waves start as probe * object
    np.testing.assert_allclose(pod.exit, pod.probe * pod.object, rtol=1e-5)


def test_hand_written_dm_converges(P):
    errors = iterate(P, 9) + iterate(P, 36)
    assert np.all(np.isfinite(errors))
    # the error declines steadily, as in the seed (an order of magnitude over 45 iterations)
    assert errors[-1] < 0.1 * errors[0]
    assert np.mean(errors[-5:]) < np.mean(errors[10:15])
