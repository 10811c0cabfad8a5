"""Ptycho's model builder: scan models, modes, sharing, initial guesses."""
import numpy as np
import pytest

from ptycli.core import Ptycho
from ptycli.core.illumination import aperture, orthogonalize_modes, add_modes, probe_from_data
from ptycli.core.geometry import get_propagator
from ptycli.errors import ConfigError
from ptycli.utils import Param


def tree(**extra):
    p = Param()
    p["scans.MF.data.name"] = "MoonFlowerScan"
    p["scans.MF.data.shape"] = 32
    p["scans.MF.data.num_frames"] = 12
    for k, v in extra.items():
        p[k.replace("__", ".")] = v
    return p


def test_full_model_pods_are_frames_times_modes():
    P = Ptycho(tree(scans__MF__coherence__num_probe_modes=2, scans__MF__coherence__num_object_modes=3), level=2)
    assert len(P.pods) == 12 * 2 * 3
    assert P.probe.S["SMF"].shape == (2, 32, 32)
    assert P.obj.S["SMF"].shape[0] == 3
    assert P.exit.S["SMF"].shape == (72, 32, 32)
    assert P.diff.S["SMF"].shape == (12, 32, 32)
    # each diffraction view is shared by the six pods of its frame
    dv = next(iter(P.diff.V.values()))
    assert len(dv.pods) == 6
    layers = sorted((p.pr_view.layer, p.ob_view.layer) for p in dv.pods.values())
    assert layers == [(a, b) for a in range(2) for b in range(3)]
    # probe modes are orthogonal and ordered by power
    modes = P.probe.S["SMF"].data.astype(np.complex128)
    overlap = abs(np.vdot(modes[0], modes[1])) / np.sqrt(np.vdot(modes[0], modes[0]).real * np.vdot(modes[1], modes[1]).real)
    assert overlap < 1e-4
    power = np.sum(np.abs(modes) ** 2, axis=(1, 2))
    assert power[0] > power[1]
    # the total probe power is the mean photon count per frame
    photons = P.diff.S["SMF"].data.sum() / 12
    assert power.sum() == pytest.approx(photons, rel=1e-3)


def test_vanilla_is_single_mode_with_aperture_probe():
    P = Ptycho(tree(scans__MF__name="Vanilla", scans__MF__coherence__num_probe_modes=3), level=2)
    assert len(P.pods) == 12
    probe = P.probe.S["SMF"].data[0]
    amp = np.abs(probe)
    # a circular aperture of half the frame: flat inside, zero in the corners
    assert amp[16, 16] == pytest.approx(amp.max(), rel=1e-3)
    assert amp[0, 0] < 1e-3 * amp.max()


def test_object_fits_every_frame_and_exit_is_product():
    P = Ptycho(tree(), level=2)
    S = P.obj.S["SMF"]
    for pod in P.pods.values():
        assert np.all(pod.ob_view.dlow >= 0)
        assert np.all(pod.ob_view.dhigh <= S.shape[-2:])
        np.testing.assert_allclose(pod.exit, pod.probe * pod.object, rtol=1e-6)
    assert S.dtype == np.complex64 and P.diff.S["SMF"].dtype == np.float32
    np.testing.assert_allclose(S.data, 1.0)


def test_double_precision():
    P = Ptycho(tree(data_type="double"), level=2)
    assert P.probe.S["SMF"].dtype == np.complex128
    assert P.diff.S["SMF"].dtype == np.float64


def test_two_scans_sharing_a_probe():
    p = tree()
    p["scans.B.data.name"] = "MoonFlowerScan"
    p["scans.B.data.shape"] = 32
    p["scans.B.data.num_frames"] = 8
    p["scans.B.data.seed"] = 4
    p["scans.B.probe_share"] = "MF"
    P = Ptycho(p, level=2)
    assert sorted(P.probe.S) == ["SMF"]
    assert sorted(P.obj.S) == ["SB", "SMF"]
    assert len(P.pods) == 20
    b_pod = next(pod for pod in P.pods.values() if pod.model.label == "B")
    assert b_pod.pr_view.storage is P.probe.S["SMF"]
    assert b_pod.ob_view.storage is P.obj.S["SB"]


def test_sample_models(tmp_path):
    P = Ptycho(tree(scans__MF__sample__fill=0.5, scans__MF__sample__fill_phase=0.3), level=2)
    np.testing.assert_allclose(P.obj.S["SMF"].data, 0.5 * np.exp(0.3j), rtol=1e-6)
    P = Ptycho(tree(scans__MF__sample__model="flower"), level=2)
    amp = np.abs(P.obj.S["SMF"].data)
    assert amp.std() > 0.02 and amp.max() <= 1.0 + 1e-6
    arr = np.full((10, 10), 0.7 + 0.1j)
    np.save(tmp_path / "obj.npy", arr)
    P = Ptycho(tree(scans__MF__sample__model=str(tmp_path / "obj.npy")), level=2)
    data = P.obj.S["SMF"].data[0]
    c = np.array(data.shape) // 2
    assert data[c[0], c[1]] == pytest.approx(0.7 + 0.1j, rel=1e-6)
    assert data[0, 0] == pytest.approx(1.0)  # padded with a transparent object


@pytest.mark.parametrize("model", ["flat", "aperture", "moon"])
def test_probe_models_scaled_to_photons(model):
    P = Ptycho(tree(scans__MF__illumination__model=model), level=2)
    probe = P.probe.S["SMF"].data
    photons = P.diff.S["SMF"].data.sum() / 12
    assert np.sum(np.abs(probe) ** 2) == pytest.approx(photons, rel=1e-3)


def test_probe_from_file_and_explicit_photons(tmp_path):
    probe = np.zeros((2, 40, 40), complex)
    probe[0, 15:25, 15:25] = 1
    probe[1, 18:22, 18:22] = 0.5j
    np.save(tmp_path / "probe.npy", probe)
    P = Ptycho(tree(scans__MF__illumination__model=str(tmp_path / "probe.npy"),
                    scans__MF__illumination__photons=1e6,
                    scans__MF__coherence__num_probe_modes=2), level=2)
    got = P.probe.S["SMF"].data
    assert got.shape == (2, 32, 32)
    assert np.sum(np.abs(got) ** 2) == pytest.approx(1e6, rel=1e-5)
    # cropped about the centre: the 10x10 square stays centred
    assert np.count_nonzero(np.abs(got[0]) > 1) == 100
    with pytest.raises(ConfigError, match="does not exist"):
        Ptycho(tree(scans__MF__illumination__model=str(tmp_path / "missing.npy")), level=2)


def test_aperture_shapes():
    circ = aperture((64, 64), (1.0, 1.0), form="circ", size_m=20.0, edge_px=0)
    assert circ[32, 32] == 1 and circ[32, 32 + 11] == 0 and circ[32, 32 + 9] == 1
    # area of a disc of diameter 20 pixels
    assert circ.sum() == pytest.approx(np.pi * 100, rel=0.05)
    rect = aperture((64, 64), (1.0, 1.0), form="rect", size_m=(10.0, 20.0), edge_px=0)
    assert rect.sum() == pytest.approx(200, rel=0.1)
    stop = aperture((64, 64), (1.0, 1.0), form="circ", size_m=20.0, edge_px=0, central_stop=0.5)
    assert stop[32, 32] == 0 and stop[32, 32 + 7] == 1


def test_modes_orthogonal_power_split():
    rng = np.random.default_rng(0)
    first = rng.standard_normal((16, 16)) + 1j * rng.standard_normal((16, 16))
    modes = add_modes(first, 3, power=0.2, seed=2)
    gram = modes.reshape(3, -1).conj() @ modes.reshape(3, -1).T
    off = gram - np.diag(np.diag(gram))
    assert np.abs(off).max() < 1e-9 * np.abs(gram).max()
    power = np.real(np.diag(gram))
    assert np.all(np.diff(power) <= 0)
    assert power.sum() == pytest.approx(np.sum(np.abs(first) ** 2) * 1.4, rel=1e-9)
    # orthogonalising keeps the incoherent intensity sum
    again = orthogonalize_modes(modes)
    np.testing.assert_allclose(np.sum(np.abs(again) ** 2, 0), np.sum(np.abs(modes) ** 2, 0), rtol=1e-9, atol=1e-12)


def test_data_derived_probe_recovers_probe_size():
    """The 'auto' guess of a known disc probe has about the disc's size."""
    prop = get_propagator("farfield", (64, 64), 1e-10, 1.0, (1e-4, 1e-4))
    res = 1e-10 * 1.0 / (64 * 1e-4)
    disc = aperture((64, 64), (res, res), size_m=20 * res, edge_px=1).astype(complex)
    intens = np.abs(prop.fw(disc)) ** 2
    guess = probe_from_data(intens[None], np.ones((1, 64, 64), bool), prop)
    amp = np.abs(guess)
    inside = amp > 0.3 * amp.max()
    diameter = 2 * np.sqrt(inside.sum() / np.pi)
    assert 14 < diameter < 26
    assert np.sum(amp**2) == pytest.approx(intens.sum(), rel=1e-6)
