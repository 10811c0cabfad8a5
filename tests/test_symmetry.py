"""The centre of point symmetry of a pattern (:mod:`ptycli.core.symmetry`) and the beam's place on the detector."""
import numpy as np
import pytest

from ptycli.core.symmetry import symmetry_centre
from ptycli.engines.phase_ramp import BEAM_OFFSET_PX, beam_is_off_centre


def _ring_intensity(shape, centre, padded=True):
    """A zone-plate-like far field (an annulus of uniform amplitude) centred at ``centre`` on the detector grid,
    computed from a sample-plane wave so that a sub-pixel centre is exact (the intensity at half pixels when
    ``padded``)."""
    rows, cols = shape
    y, x = np.indices(shape) - np.array(shape)[:, None, None] // 2
    pupil = ((np.hypot(y, x) > 4) & (np.hypot(y, x) < 12)).astype(complex)
    wave = np.fft.ifft2(np.fft.ifftshift(pupil))  # its far field: the annulus at the detector middle
    ramp = np.exp(2j * np.pi * ((centre[0] - rows // 2) * np.arange(rows)[:, None] / rows
                                + (centre[1] - cols // 2) * np.arange(cols)[None, :] / cols))
    s = (2 * rows, 2 * cols) if padded else shape
    far = np.abs(np.fft.fftshift(np.fft.fft2(wave * ramp, s=s))) ** 2
    return far


@pytest.mark.parametrize("centre", [(32.0, 24.0), (32.3, 23.6), (29.75, 26.5)])
def test_symmetry_centre_of_a_shifted_annulus(centre):
    """Intensities at half-pixel steps: the centre found to 1e-6 px wherever it lies (also off the pixels)."""
    shape = (64, 48)
    power = _ring_intensity(shape, centre)  # (128, 96): half pixels, the middle at (64, 48)
    found = symmetry_centre(power)
    np.testing.assert_allclose(0.5 * found, centre, atol=1e-6)


def test_symmetry_centre_candidates_and_empty_input():
    """The centre is known up to half the array: ``near`` picks; nothing, or not finite: None."""
    power = _ring_intensity((64, 64), (20.0, 40.0), padded=False)  # on the 64 x 64 grid itself
    found = symmetry_centre(power, near=(20, 40))
    np.testing.assert_allclose(found, (20.0, 40.0), atol=0.05)  # (not band-limited on its own grid)
    np.testing.assert_allclose(symmetry_centre(power, near=(52, 8)), (52.0, 8.0), atol=0.05)
    assert symmetry_centre(np.zeros((8, 8))) is None
    assert symmetry_centre(np.full((8, 8), np.nan)) is None


class _Group:
    def __init__(self, found, kind="farfield", centre=(32.0, 32.0)):
        self.beam_centre_px = None if found is None else np.asarray(found, dtype=float)
        self.propagator = type("Prop", (), dict(kind=kind, center=np.asarray(centre)))()


def test_beam_is_off_centre_only_where_it_clearly_is():
    assert not beam_is_off_centre(_Group(None))
    assert not beam_is_off_centre(_Group((32.0 + 0.9 * BEAM_OFFSET_PX, 31.9)))  # a simulation's: the centre
    assert beam_is_off_centre(_Group((31.96, 33.27)))  # the measured Siemens star's
    assert not beam_is_off_centre(_Group((31.0, 35.0), kind="nearfield"))
