"""The common frame pipeline of ScanLoader, on tiny in-memory scans."""

import logging

import numpy as np
import pytest

from ptycli.errors import ConfigError, DataError
from ptycli.scans import LOADERS, ScanData, ScanLoader, get_loader
from ptycli.scans.base import orientation_flags


class ArrayScan(ScanLoader):
    """A loader serving arrays from memory (not registered)."""

    NAME = "ArrayScan"

    def __init__(self, data, positions=None, meta=None, frame_mask=None, frame_dark=None,
                 static=None, **pars):
        pars.setdefault("center", "geometric")
        super().__init__(ScanLoader.PARAMS.validate(pars, "scan.data"))
        self.data = np.asarray(data)
        n = self.data.shape[0]
        self.pos = np.zeros((n, 2)) if positions is None else np.asarray(positions, float)
        self.m = {"energy_kev": 6.2, "distance_m": 1.5, "psize_m": 1e-4}
        self.m.update(meta or {})
        self.frame_mask = frame_mask
        self.frame_dark = frame_dark
        self.static = static or {}
        self.calls = []

    @property
    def source(self):
        return "memory.h5"

    def read_meta(self):
        m = dict(self.m)
        m.update(num_frames=self.data.shape[0], frame_shape=self.data.shape[1:])
        return m

    def read_frames(self, start, stop):
        self.calls.append((start, stop))
        out = {"data": self.data[start:stop], "positions": self.pos[start:stop]}
        if self.frame_mask is not None:
            out["mask"] = self.frame_mask[start:stop]
        if self.frame_dark is not None:
            out["dark"] = self.frame_dark
        return out

    def read_static(self):
        return self.static


def ramp(n=1, h=8, w=8):
    return np.arange(n * h * w, dtype=np.float64).reshape(n, h, w) + 1


# -- registry -------------------------------------------------------------------------


def test_registry_and_get_loader():
    assert "Hdf5Scan" in LOADERS and "NpyFolderScan" in LOADERS
    assert get_loader("hdf5scan") is LOADERS["Hdf5Scan"]
    with pytest.raises(ConfigError, match="Hdf5Scan"):
        get_loader("Hdf5Scn")
    assert LOADERS["Hdf5Scan"].PARAMS["name"].default == "Hdf5Scan"


def test_from_pars_validates():
    with pytest.raises(ConfigError, match="scan.data.rebinn"):
        LOADERS["Hdf5Scan"].from_pars({"rebinn": 2})
    with pytest.raises(ConfigError, match="orientation"):
        ArrayScan(ramp(), orientation=9)
    with pytest.raises(ConfigError, match="center"):
        ArrayScan(ramp(), center="middle")


# -- geometry ---------------------------------------------------------------------------


def test_geometry_config_overrides_file_and_missing_value_is_named():
    s = ArrayScan(ramp(), energy=8.0, psize=[1e-4, 2e-4]).load()
    assert s.energy_kev == 8.0 and s.distance_m == 1.5
    np.testing.assert_allclose(s.psize_m, [1e-4, 2e-4])
    assert s.wavelength_m == pytest.approx(1.23984193e-9 / 8.0)
    scan = ArrayScan(ramp(), meta={"distance_m": None})
    with pytest.raises(ConfigError, match=r"scan\.data\.distance.*memory\.h5"):
        scan.load()


# -- crop / pad / centre ------------------------------------------------------------------


def test_crop_about_given_center():
    d = ramp(2, 8, 8)
    s = ArrayScan(d, center=[2, 5], shape=4).load()
    assert s.shape == (4, 4) and s.intensities.shape == (2, 4, 4)
    np.testing.assert_array_equal(s.intensities[1], d[1, 0:4, 3:7])
    assert s.mask.all()
    assert s.intensities.dtype == np.float32 and s.mask.dtype == bool


def test_pad_about_center_masks_padding():
    d = ramp(1, 8, 8)
    s = ArrayScan(d, center=[1, 6], shape=[4, 6]).load()
    # rows -1..2, cols 3..8: row 0 and col 5 (raw col 8) are padding
    expect = np.zeros((4, 6))
    expect[1:, :5] = d[0, 0:3, 3:8]
    np.testing.assert_array_equal(s.intensities[0], expect)
    assert not s.mask[0, 0].any() and not s.mask[0, :, 5].any()
    assert s.mask[0, 1:, :5].all()


def test_geometric_center_and_shape_null_keep_frame():
    d = ramp(1, 6, 5)
    s = ArrayScan(d).load()
    np.testing.assert_array_equal(s.intensities[0], d[0])
    assert s.shape == (6, 5)


def test_auto_center_recovers_shifted_peak():
    yy, xx = np.mgrid[:32, :32]
    peak = 100 * np.exp(-((yy - 11.0) ** 2 + (xx - 19.0) ** 2) / 4.0)
    d = np.stack([peak, 2 * peak, peak])
    s = ArrayScan(d, center="auto", shape=16).load()
    np.testing.assert_allclose(s.meta["center_raw"], [11, 19], atol=1e-6)
    assert np.unravel_index(np.argmax(s.intensities[0]), (16, 16)) == (8, 8)
    np.testing.assert_allclose(s.intensities[1, 8, 8], 200, rtol=1e-6)


def test_center_null_uses_file_center_else_auto():
    yy, xx = np.mgrid[:16, :16]
    peak = np.exp(-((yy - 5.0) ** 2 + (xx - 10.0) ** 2))
    s = ArrayScan(peak[None], center=None, shape=8).load()
    np.testing.assert_allclose(s.meta["center_raw"], [5, 10], atol=1e-6)
    s = ArrayScan(peak[None], center=None, shape=8, meta={"center": [8, 8]}).load()
    np.testing.assert_allclose(s.meta["center_raw"], [8, 8])


def test_auto_center_masks_excluded_from_mass_center():
    d = np.zeros((1, 16, 16))
    d[0, 4, 4] = 10
    d[0, 12, 12] = 1000   # hot pixel, masked
    mask = np.ones((16, 16), bool)
    mask[12, 12] = False
    s = ArrayScan(d, center="auto", static={"mask": mask}).load()
    np.testing.assert_allclose(s.meta["center_raw"], [4, 4])


# -- orientation ---------------------------------------------------------------------------


@pytest.mark.parametrize("orientation, ops", [
    (0, lambda a: a),
    (1, lambda a: a[:, ::-1]),
    (2, lambda a: a[::-1, :]),
    (3, lambda a: a[::-1, ::-1]),
    (4, lambda a: a.T),
    (5, lambda a: a.T[:, ::-1]),
    (6, lambda a: a.T[::-1, :]),
    (7, lambda a: a.T[::-1, ::-1]),
    ([True, False, True], lambda a: a.T[:, ::-1]),
    ([False, True, False], lambda a: a[::-1, :]),
])
def test_orientation_variants(orientation, ops):
    a = np.array([[1, 2, 3], [4, 5, 6]], dtype=float)
    s = ArrayScan(a[None], orientation=orientation).load()
    np.testing.assert_array_equal(s.intensities[0], ops(a))


def test_orientation_flags_encoding():
    assert orientation_flags(4) == (True, False, False)
    assert orientation_flags(2) == (False, True, False)
    assert orientation_flags(1) == (False, False, True)
    assert orientation_flags(None) == (False, False, False)
    with pytest.raises(ConfigError):
        orientation_flags([True, False])


def test_center_pair_is_in_raw_frame_through_orientation():
    d = ramp(1, 8, 10)
    # transpose: raw (2, 7) -> oriented (7, 2); flipud on 10 rows -> (2, 2)
    s = ArrayScan(d, orientation=6, center=[2, 7], shape=3).load()
    oriented = d[0].T[::-1, :]
    np.testing.assert_array_equal(s.intensities[0], oriented[1:4, 1:4])
    assert s.intensities[0, 1, 1] == d[0, 2, 7]


# -- rebin -----------------------------------------------------------------------------------


def test_rebin_sums_blocks_and_mask_rule():
    d = ramp(1, 4, 6)
    mask = np.ones((4, 6), bool)
    mask[3, 4] = False
    s = ArrayScan(d, rebin=2, static={"mask": mask}, psize=1e-4).load()
    assert s.shape == (2, 3)
    expect = d[0].reshape(2, 2, 3, 2).sum(axis=(1, 3))
    expect[1, 2] = 0
    np.testing.assert_allclose(s.intensities[0], expect)
    np.testing.assert_array_equal(s.mask[0], [[1, 1, 1], [1, 1, 0]])
    np.testing.assert_allclose(s.psize_m, [2e-4, 2e-4])


def test_rebin_with_shape_crops_shape_times_rebin():
    d = ramp(1, 12, 12)
    s = ArrayScan(d, rebin=3, shape=2, center=[6, 6]).load()
    # crop 6x6 about (6, 6): rows/cols 3..8, then 3x3 sums
    expect = d[0, 3:9, 3:9].reshape(2, 3, 2, 3).sum(axis=(1, 3))
    np.testing.assert_allclose(s.intensities[0], expect)
    np.testing.assert_allclose(s.psize_m, [3e-4, 3e-4])


# -- fftshift ---------------------------------------------------------------------------------


def test_fftshifted_input_equals_centred_input():
    rng = np.random.default_rng(1)
    centred = rng.poisson(20, (2, 8, 10)).astype(float)
    shifted = np.fft.ifftshift(centred, axes=(-2, -1))
    a = ArrayScan(centred, shape=6).load()
    b = ArrayScan(shifted, fftshifted=True, shape=6).load()
    np.testing.assert_array_equal(a.intensities, b.intensities)
    np.testing.assert_array_equal(a.mask, b.mask)
    # an explicit centre is given in the raw (shifted) frame: (0, 0) is the zero frequency
    c = ArrayScan(shifted, fftshifted=True, shape=6, center=[0, 0]).load()
    np.testing.assert_array_equal(a.intensities, c.intensities)


# -- positions --------------------------------------------------------------------------------


def test_positions_unit_scale_swap_flip():
    pos = np.array([[1.0, 2.0], [3.0, -4.0]])
    s = ArrayScan(ramp(2), positions=pos, positions_unit="pixel").load()
    assert s.positions_unit == "pixel"
    np.testing.assert_array_equal(s.positions, pos)
    np.testing.assert_allclose(s.positions_in_metres([1e-8, 2e-8]), pos * [1e-8, 2e-8])
    s = ArrayScan(ramp(2), positions=pos, positions_scale=1e-6, positions_swap=True,
                  positions_flip=[False, True]).load()
    assert s.positions_unit == "m"
    np.testing.assert_allclose(s.positions, [[2e-6, -1e-6], [-4e-6, -3e-6]])
    s = ArrayScan(ramp(2), positions=pos, positions_flip=True).load()
    np.testing.assert_array_equal(s.positions, -pos)
    s = ArrayScan(ramp(2), positions=pos, meta={"positions_unit": "pixel"}).load()
    assert s.positions_unit == "pixel"


def test_nonfinite_positions_raise_data_error_with_count():
    pos = np.array([[0, 0], [np.nan, 1], [2, np.inf], [1, 1]], float)
    with pytest.raises(DataError, match=r"memory\.h5: 2 positions .* not finite"):
        ArrayScan(ramp(4), positions=pos).load()


def test_position_count_mismatch():
    scan = ArrayScan(ramp(3), positions=np.zeros((2, 2)))
    with pytest.raises(DataError, match=r"memory\.h5.*positions"):
        scan.load()
    scan = ArrayScan(ramp(3), meta={"num_positions": 2})
    with pytest.raises(DataError, match=r"memory\.h5: 2 positions for 3 frames"):
        scan.load()


# -- dark, flat, mask, invalid values -----------------------------------------------------------


def test_dark_and_flat_files(tmp_path):
    rng = np.random.default_rng(0)
    truth = rng.integers(1, 50, (3, 6, 6)).astype(float)
    flat = rng.uniform(0.5, 1.5, (6, 6))
    flat /= flat.mean()
    dark = np.full((6, 6), 7.0)
    np.save(tmp_path / "dark.npy", np.stack([dark - 1, dark + 1]))   # averaged stack
    np.save(tmp_path / "flat.npy", 3 * flat)                           # normalised to mean 1
    raw = truth * flat + dark
    s = ArrayScan(raw, dark=str(tmp_path / "dark.npy"), flat=str(tmp_path / "flat.npy")).load()
    np.testing.assert_allclose(s.intensities, truth, rtol=1e-5)
    assert s.mask.all()


def test_dark_from_loader_negative_results_clipped_not_masked():
    raw = np.full((2, 4, 4), 10.0)
    raw[0, 0, 0] = 8.0
    dark = np.full((4, 4), 9.0)
    s = ArrayScan(raw, frame_dark=dark).load()
    assert s.intensities[0, 0, 0] == 0 and s.mask[0, 0, 0]
    np.testing.assert_allclose(s.intensities[1], 1.0)


def test_flat_with_zero_pixel_masks_it():
    raw = np.full((1, 4, 4), 4.0)
    flat = np.full((4, 4), 2.0)
    flat[1, 2] = 0
    s = ArrayScan(raw, static={"flat": flat}).load()
    assert not s.mask[0, 1, 2] and s.intensities[0, 1, 2] == 0
    np.testing.assert_allclose(s.intensities[0][s.mask[0]], 4.0)


def test_invalid_values_masked_with_one_warning(caplog):
    raw = ramp(4, 5, 5)
    raw[0, 1, 1] = np.nan
    raw[0, 2, 2] = np.inf
    raw[2, 0, 3] = -1
    with caplog.at_level(logging.WARNING, logger="ptycli"):
        s = ArrayScan(raw, chunk_size=1).load()
    warnings = [r for r in caplog.records if "invalid" in r.getMessage()]
    assert len(warnings) == 1
    assert "3 invalid pixels" in warnings[0].getMessage()
    assert "in 2 frames" in warnings[0].getMessage()
    for f, y, x in ((0, 1, 1), (0, 2, 2), (2, 0, 3)):
        assert not s.mask[f, y, x] and s.intensities[f, y, x] == 0
    assert s.mask.sum() == 4 * 25 - 3


def _noisy_float_frames(n=20, seed=0):
    """Float frames of read noise around 0 (sigma 1) with a gap pixel flagged -1 in every frame."""
    raw = np.random.default_rng(seed).normal(0.0, 1.0, (n, 6, 6))
    raw[:, 1:5, 1:5] += 100.0  # a bright region: never negative
    raw[:, 0, 5] = -1.0  # the gap
    return raw


def test_negative_float_noise_clipped_and_kept_flags_masked(caplog):
    raw = _noisy_float_frames()
    noise = raw < 0
    noise[:, 0, 5] = False
    with caplog.at_level(logging.INFO, logger="ptycli"):
        s = ArrayScan(raw, chunk_size=10).load()
    assert not s.mask[:, 0, 5].any() and not s.intensities[:, 0, 5].any()  # the gap: masked in every frame
    assert s.mask[noise].all() and not s.intensities[noise].any()  # the noise: 0 and kept
    assert s.mask.sum() == 20 * 35
    np.testing.assert_allclose(s.intensities[raw > 0], raw[raw > 0], rtol=1e-6)
    infos = [r.getMessage() for r in caplog.records if "read noise" in r.getMessage()]
    assert len(infos) == 1 and "%d negative values" % noise.sum() in infos[0], infos
    warnings = [r.getMessage() for r in caplog.records if "invalid pixels" in r.getMessage()]
    assert len(warnings) == 1 and "20 invalid pixels" in warnings[0], warnings  # the gap, once per frame


def test_negative_values_mask_and_clip_and_integer_frames():
    raw = _noisy_float_frames()
    masked = ArrayScan(raw, chunk_size=10, negative_values="mask").load()
    assert np.array_equal(masked.mask, raw >= 0)
    clipped = ArrayScan(raw, chunk_size=10, negative_values="clip").load()
    assert clipped.mask.all() and np.array_equal(clipped.intensities, np.maximum(raw, 0).astype(np.float32))
    counts = np.where(raw < 0, -1, np.rint(raw)).astype(np.int32)  # integer frames: a negative is a flag
    assert np.array_equal(ArrayScan(counts, chunk_size=10).load().mask, counts >= 0)
    # so it is in float frames that hold whole numbers only (counts stored as floats)
    assert np.array_equal(ArrayScan(counts.astype(np.float32), chunk_size=10).load().mask, counts >= 0)
    one_frame = ArrayScan(raw[:1], chunk_size=1).load()  # a chunk of one frame cannot tell noise from a flag
    assert np.array_equal(one_frame.mask, raw[:1] >= 0)
    with pytest.raises(ConfigError, match="negative_values"):
        ArrayScan(raw, negative_values="keep")


def test_mask_file_combined_with_file_mask(tmp_path):
    raw = ramp(2, 4, 4)
    fmask = np.ones((2, 4, 4), bool)
    fmask[1, 0, 0] = False
    user = np.ones((4, 4), np.uint8)
    user[3, 3] = 0
    np.save(tmp_path / "mask.npy", user)
    s = ArrayScan(raw, frame_mask=fmask, mask=str(tmp_path / "mask.npy")).load()
    assert not s.mask[1, 0, 0] and s.mask[0, 0, 0]
    assert not s.mask[:, 3, 3].any()
    assert s.mask.sum() == 32 - 3
    assert s.intensities[1, 0, 0] == 0


def test_mask_file_hdf5_and_shape_mismatch(tmp_path):
    import h5py
    with h5py.File(tmp_path / "m.h5", "w") as f:
        f["/detector/pixelmask"] = np.ones((4, 4), np.uint8)
        f["/other"] = np.ones((4, 4))
    s = ArrayScan(ramp(1, 4, 4), mask=str(tmp_path / "m.h5") + ":/detector/pixelmask").load()
    assert s.mask.all()
    with pytest.raises(ConfigError, match="name one"):
        ArrayScan(ramp(1, 4, 4), mask=str(tmp_path / "m.h5")).load()
    np.save(tmp_path / "bad.npy", np.ones((5, 4)))
    with pytest.raises(ConfigError, match=r"scan\.data\.mask .*bad\.npy.*\(5, 4\).*\(4, 4\)"):
        ArrayScan(ramp(1, 4, 4), mask=str(tmp_path / "bad.npy")).load()
    with pytest.raises(ConfigError, match="nothere.npy does not exist"):
        ArrayScan(ramp(1, 4, 4), mask=str(tmp_path / "nothere.npy")).load()


def test_all_zero_frames_warned(caplog):
    raw = ramp(3, 4, 4)
    raw[1] = 0
    with caplog.at_level(logging.WARNING, logger="ptycli"):
        ArrayScan(raw).load()
    assert any("1 frames hold no counts" in r.getMessage() for r in caplog.records)


# -- frame selection, ranks, chunks ---------------------------------------------------------------


def test_rank_blocks_read_only_own_frames():
    raw = ramp(5, 4, 4)
    pos = np.arange(10.0).reshape(5, 2)
    scan = ArrayScan(raw, positions=pos, chunk_size=1)
    s = scan.load(rank=1, size=2)
    assert isinstance(s, ScanData)
    np.testing.assert_array_equal(s.indices, [3, 4])
    np.testing.assert_array_equal(s.intensities, raw[3:5])
    np.testing.assert_array_equal(s.positions, pos[3:5])
    assert s.num_frames == 2 and s.num_frames_total == 5
    assert scan.calls == [(3, 4), (4, 5)]
    s0 = ArrayScan(raw, positions=pos).load(rank=0, size=2)
    np.testing.assert_array_equal(s0.indices, [0, 1, 2])


def test_num_frames_limit_and_chunks():
    raw = ramp(7, 4, 4)
    scan = ArrayScan(raw, num_frames=5, chunk_size=2)
    s = scan.load()
    assert s.num_frames_total == 5
    np.testing.assert_array_equal(s.indices, np.arange(5))
    np.testing.assert_array_equal(s.intensities, raw[:5])
    assert scan.calls == [(0, 2), (2, 4), (4, 5)]
    s = ArrayScan(raw, num_frames=5).load(rank=1, size=2)
    np.testing.assert_array_equal(s.indices, [3, 4])
    s = ArrayScan(raw, num_frames=50).load()
    assert s.num_frames_total == 7


def test_empty_rank_block():
    s = ArrayScan(ramp(2, 4, 4), center="auto").load(rank=2, size=3)
    assert s.intensities.shape == (0, 4, 4) and s.num_frames_total == 2


def test_label_and_meta():
    s = ArrayScan(ramp(1), label="run7").load()
    assert s.label == "run7" and s.source == "memory.h5"
    assert s.meta["rebin"] == 1 and s.meta["orientation"] == [False, False, False]
