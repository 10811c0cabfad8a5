"""Independent forward simulator and file writers for ptycli's validation zoo (issue 12).

Nothing here imports ptycli: objects, probes, scans, the forward model and the
four file layouts (PtyPy .ptyd, CXI, a beamline HDF5, PtyLab's HDF5) are written
with numpy and plain h5py, so that the zoo tests ptycli on data it did not write
itself.

Conventions (the same as the foreign scans in ``../shared/data/foreign``)
-------------------------------------------------------------------------
* Far field: ``I = |fftshift(fft2(ifftshift(probe * object_window), norm='ortho'))|**2``;
  the object pixel is ``lam * z / (N * detector_pixel)`` per axis (rectangular
  frames get different pixel sizes on the two axes).
* Near field: ``I = |ifft2(fft2(probe * object_window, norm='ortho') * H, norm='ortho')|**2``
  with ``H = exp(-i pi lam z (fy**2 + fx**2))`` (``fy``, ``fx`` in cycles per
  metre); the object pixel equals the detector pixel.
* The frame at scan position ``p`` (object pixels, (y, x)) covers
  ``object[p - origin : p - origin + shape]``. A position off the integer grid
  is simulated exactly: the object is Fourier-shifted by the sub-pixel
  remainder (band-limited interpolation) before the window is cut.
* Positions in the files are metres, (y, x), relative to the scan centre:
  pixel positions times the object pixel size.
* Probe modes are incoherent: their intensities add.

Typical use::

    import zoo_sim
    spec = zoo_sim.CaseSpec(name="demo", layout="ptyd", probe="focused")
    case = zoo_sim.build_case(spec, "/tmp/zoo")
    case["config_scan"]     # the scan section of a ptycli config reading it

Layouts written
---------------
``ptyd``     PtyPy prepared data (``chunks/<k>/data, indices, positions,
             weights``; ``info/positions_scan``; ``meta/...``), as PtyPy's
             h5rw writes it (type attributes on every node).
``cxi``      CXI 1.5 (``entry_1/instrument_1/detector_1/data``, energy in J,
             translations (N, 3) as x, y, z in metres, mask bits).
``beamline`` A beamline-style HDF5 file: uint16 frames, positions in
             micrometres, energy in eV, distance in mm, pixel size in
             micrometres, its own dataset names; read by ptycli's Hdf5Scan with
             the mapping returned by :func:`beamline_data_section`.
"""

from dataclasses import dataclass, asdict
import os

import h5py
import numpy as np

__all__ = [
    "HC_KEV_M", "ELECTRON_VOLT_J", "Geometry", "CaseSpec", "wavelength_m",
    "smooth_noise", "make_object", "focused_probe", "zone_plate_probe", "defocused_probe",
    "diffuser_probe", "aperture_probe", "second_mode", "probe_diameter_px",
    "raster_scan", "fermat_spiral_scan", "random_scan", "object_windows", "propagate_far",
    "propagate_near", "simulate_intensities", "detector_defects", "apply_defects",
    "lit_masks", "background_pattern", "write_ptyd", "write_cxi", "write_beamline", "beamline_data_section",
    "data_section", "build_case",
]

#: Planck constant times speed of light, keV * m (``lam [m] = HC_KEV_M / E [keV]``)
HC_KEV_M = 1.2398419843320026e-9
#: one electronvolt in joules
ELECTRON_VOLT_J = 1.602176634e-19
#: CXI 1.5 detector mask bits used here
CXI_MASK_INVALID, CXI_MASK_SATURATED, CXI_MASK_HOT, CXI_MASK_DEAD, CXI_MASK_SHADOWED = 0x1, 0x2, 0x4, 0x8, 0x10


def wavelength_m(energy_kev):
    """Photon wavelength (m) of a photon energy given in keV."""
    return HC_KEV_M / float(energy_kev)


@dataclass
class Geometry:
    """Experiment geometry of one scan.

    Attributes
    ----------
    energy_kev : float
        Photon energy (keV).
    distance_m : float
        Sample-detector distance (m).
    detector_pixel_m : float
        Detector pixel size (m), square pixels.
    frame_shape : tuple of int
        Frame (rows, cols) in detector pixels.
    propagation : str
        ``'farfield'`` or ``'nearfield'``.
    """

    energy_kev: float = 6.2
    distance_m: float = 5.0
    detector_pixel_m: float = 172e-6
    frame_shape: tuple = (64, 64)
    propagation: str = "farfield"

    @property
    def wavelength_m(self):
        """Wavelength (m)."""
        return wavelength_m(self.energy_kev)

    @property
    def object_pixel_m(self):
        """Object-plane pixel (m), (y, x): ``lam z / (N p)`` in far field, ``p`` in near field."""
        if self.propagation == "nearfield":
            return np.array([self.detector_pixel_m, self.detector_pixel_m], dtype=np.float64)
        n = np.asarray(self.frame_shape, dtype=np.float64)
        return self.wavelength_m * self.distance_m / (n * self.detector_pixel_m)

    @property
    def fresnel_px(self):
        """Near-field propagation strength ``lam z / dx**2`` per axis (dimensionless)."""
        dx = self.object_pixel_m
        return self.wavelength_m * self.distance_m / dx ** 2


# ----------------------------------------------------------------------------------------------
# objects
# ----------------------------------------------------------------------------------------------
def smooth_noise(shape, rng, correlation_px):
    """Gaussian-filtered white noise, rescaled to [0, 1].

    Parameters
    ----------
    shape : tuple of int
        Array shape (rows, cols).
    rng : numpy.random.Generator
        Random generator.
    correlation_px : float
        Standard deviation (pixels) of the Gaussian filter: the feature size.

    Returns
    -------
    ndarray (rows, cols), float64, min 0 and max 1
    """
    white = rng.standard_normal(shape)
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = np.fft.fftfreq(shape[1])[None, :]
    gauss = np.exp(-2.0 * (np.pi * correlation_px) ** 2 * (fy ** 2 + fx ** 2))
    smooth = np.real(np.fft.ifft2(np.fft.fft2(white) * gauss))
    smooth -= smooth.min()
    return smooth / max(smooth.max(), 1e-30)


def _soft_shapes(shape, rng, count, size_range_px, edge_px=0.7):
    """A sum of random discs and rectangles with slightly smoothed edges, values in [0, 1]."""
    yy, xx = np.indices(shape, dtype=np.float64)
    layer = np.zeros(shape)
    for _ in range(count):
        cy, cx = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        size = rng.uniform(*size_range_px)
        level = rng.uniform(0.3, 1.0)
        if rng.random() < 0.5:
            dist = np.hypot(yy - cy, xx - cx) - size / 2
        else:
            half_y, half_x = size / 2, rng.uniform(0.3, 1.0) * size / 2
            dist = np.maximum(np.abs(yy - cy) - half_y, np.abs(xx - cx) - half_x)
        shape_mask = 0.5 * (1.0 - np.tanh(dist / edge_px))
        layer = np.maximum(layer, level * shape_mask)
    return layer


def make_object(shape, rng, phase_span_rad=2.0, amplitude_range=(0.5, 1.0), feature_px=2.0,
                shape_count=None):
    """A random complex test object: filtered noise plus sharp-edged shapes.

    Parameters
    ----------
    shape : tuple of int
        Object (rows, cols), pixels.
    rng : numpy.random.Generator
        Random generator.
    phase_span_rad : float
        Phase range (rad): the phase lies in ``[-phase_span_rad, 0]``. Above
        2 pi the phase wraps (a strong phase object).
    amplitude_range : tuple of float
        (min, max) amplitude, e.g. (0.5, 1.0).
    feature_px : float
        Correlation length (pixels) of the noise texture.
    shape_count : int, optional
        Number of discs/rectangles (default: one per 400 pixels).

    Returns
    -------
    ndarray (rows, cols), complex128
    """
    count = shape_count if shape_count is not None else max(4, shape[0] * shape[1] // 400)
    size_range = (3.0, max(6.0, min(shape) / 6.0))
    amp_layer = 0.6 * smooth_noise(shape, rng, feature_px) + 0.4 * _soft_shapes(shape, rng, count, size_range)
    phase_layer = 0.6 * smooth_noise(shape, rng, feature_px * 1.3) \
        + 0.4 * _soft_shapes(shape, rng, count, size_range)
    if phase_span_rad > 2 * np.pi:
        # strong phase: add a slow component that carries most of the range, so that the phase
        # wraps several times while the gradient stays below about 1 rad per pixel
        slow = smooth_noise(shape, rng, max(8.0, min(shape) / 12.0))
        phase_layer = 0.25 * phase_layer + 0.75 * slow
    amp_layer = (amp_layer - amp_layer.min()) / max(np.ptp(amp_layer), 1e-30)
    phase_layer = (phase_layer - phase_layer.min()) / max(np.ptp(phase_layer), 1e-30)
    amplitude = amplitude_range[0] + (amplitude_range[1] - amplitude_range[0]) * amp_layer
    phase = -phase_span_rad * phase_layer
    return amplitude * np.exp(1j * phase)


# ----------------------------------------------------------------------------------------------
# probes (complex arrays of the frame shape, unit total power; scaled to photons later)
# ----------------------------------------------------------------------------------------------
def _unit_power(field_):
    return field_ / np.sqrt(np.sum(np.abs(field_) ** 2))


def _centred_grid(shape):
    """Pixel offsets (y, x) from the frame centre ``shape // 2``."""
    yy, xx = np.indices(shape, dtype=np.float64)
    return yy - shape[0] // 2, xx - shape[1] // 2


def _frequency_radius_px(shape):
    """Radius of every pixel of a centred detector-plane grid, in detector pixels."""
    dy, dx = _centred_grid(shape)
    return np.hypot(dy, dx)


def _soft_disc(radius_map, radius, edge_px=1.0):
    return 0.5 * (1.0 - np.tanh((radius_map - radius) / max(edge_px, 1e-6)))


def _pupil_to_probe(pupil, defocus_px2=0.0):
    """Sample-plane probe of a detector-plane (centred) pupil, with a Fresnel defocus.

    ``defocus_px2`` is ``lam dz / dx**2`` (dimensionless): the pupil is multiplied by
    ``exp(-i pi defocus (fy**2 + fx**2))``, ``f`` in cycles per object pixel, then inverse
    transformed with the far-field convention.
    """
    shape = pupil.shape
    fy = (np.arange(shape[0]) - shape[0] // 2)[:, None] / shape[0]
    fx = (np.arange(shape[1]) - shape[1] // 2)[None, :] / shape[1]
    chirp = np.exp(-1j * np.pi * defocus_px2 * (fy ** 2 + fx ** 2))
    probe = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(pupil * chirp), norm="ortho"))
    return _unit_power(probe)


def focused_probe(shape, spot_fwhm_px=3.0, defocus_px2=0.0):
    """Focused probe: the far-field focus of a circular pupil (an Airy spot with side lobes).

    Parameters
    ----------
    shape : tuple of int
        Frame (rows, cols).
    spot_fwhm_px : float
        Full width at half maximum of the focal spot (object pixels, along the
        shorter frame axis).
    defocus_px2 : float
        Optional defocus ``lam dz / dx**2`` (dimensionless).

    Returns
    -------
    ndarray, complex128, unit total power
    """
    n = min(shape)
    # Airy FWHM = 1.029 lam / (2 NA); with a pupil of radius R detector pixels the spot is
    # 1.029 * n / (2 R) object pixels wide
    radius = 1.029 * n / (2.0 * spot_fwhm_px)
    pupil = _soft_disc(_frequency_radius_px(shape), radius, edge_px=0.5)
    return _pupil_to_probe(pupil, defocus_px2)


def zone_plate_probe(shape, ring_radius_px, pupil_radius_px=None, stop_fraction=0.45):
    """Zone-plate probe: an annular pupil (central stop) defocused into a ring.

    Parameters
    ----------
    shape : tuple of int
        Frame (rows, cols).
    ring_radius_px : float
        Outer radius of the defocused ring (object pixels), set by the
        defocus: ``radius = defocus * pupil_radius / n`` in geometric optics.
    pupil_radius_px : float, optional
        Outer pupil radius (detector pixels); default ``min(shape) / 5``.
    stop_fraction : float
        Central-stop radius as a fraction of the pupil radius.

    Returns
    -------
    probe : ndarray, complex128, unit total power
    """
    n = min(shape)
    radius = pupil_radius_px if pupil_radius_px is not None else n / 5.0
    rmap = _frequency_radius_px(shape)
    pupil = _soft_disc(rmap, radius, 0.5) * (1.0 - _soft_disc(rmap, stop_fraction * radius, 0.5))
    defocus = ring_radius_px * n / radius
    return _pupil_to_probe(pupil, defocus)


def defocused_probe(shape, ring_radius_px, pupil_radius_px=None):
    """Large defocused probe: a full circular pupil defocused to a disc with Fresnel fringes.

    Parameters are those of :func:`zone_plate_probe` without the stop.
    """
    n = min(shape)
    radius = pupil_radius_px if pupil_radius_px is not None else n / 5.0
    pupil = _soft_disc(_frequency_radius_px(shape), radius, 0.5)
    return _pupil_to_probe(pupil, ring_radius_px * n / radius)


def _propagate_px(field_, fresnel_px2):
    """Paraxial propagation of a sample-plane field by ``lam dz / dx**2`` (dimensionless)."""
    fy = np.fft.fftfreq(field_.shape[0])[:, None]
    fx = np.fft.fftfreq(field_.shape[1])[None, :]
    kernel = np.exp(-1j * np.pi * fresnel_px2 * (fy ** 2 + fx ** 2))
    return np.fft.ifft2(np.fft.fft2(field_) * kernel)


def diffuser_probe(shape, rng, radius_px=None, grain_px=1.5, phase_rms_rad=2.0, fresnel_px2=6.0,
                   support_radius_px=None):
    """Structured (speckle) probe: an aperture times a random phase screen, propagated a little.

    Parameters
    ----------
    shape : tuple of int
        Frame (rows, cols).
    rng : numpy.random.Generator
        Random generator of the phase screen.
    radius_px : float, optional
        Aperture radius (object pixels); default ``0.3 * min(shape)``.
    grain_px : float
        Correlation length of the phase screen (pixels).
    phase_rms_rad : float
        Rms of the phase screen (rad).
    fresnel_px2 : float
        Propagation after the diffuser, ``lam dz / dx**2``: turns phase
        structure into speckle of the amplitude.
    support_radius_px : float, optional
        Soft window applied at the end (keeps the probe inside the frame);
        default ``0.4 * min(shape)``.

    Returns
    -------
    ndarray, complex128, unit total power
    """
    n = min(shape)
    radius = radius_px if radius_px is not None else 0.3 * n
    support = support_radius_px if support_radius_px is not None else 0.4 * n
    dy, dx = _centred_grid(shape)
    r = np.hypot(dy, dx)
    screen = smooth_noise(shape, rng, grain_px)
    screen = (screen - screen.mean()) / max(screen.std(), 1e-30) * phase_rms_rad
    field_ = _soft_disc(r, radius, 1.0) * np.exp(1j * screen)
    field_ = _propagate_px(field_, fresnel_px2)
    return _unit_power(field_ * _soft_disc(r, support, 2.0))


def aperture_probe(shape, radius_px=None, edge_px=0.8):
    """A simple aperture: a flat disc with a slightly smoothed edge (a pinhole image).

    Parameters
    ----------
    shape : tuple of int
        Frame (rows, cols).
    radius_px : float, optional
        Disc radius (object pixels); default ``0.2 * min(shape)``.
    edge_px : float
        Width of the edge (pixels).
    """
    radius = radius_px if radius_px is not None else 0.2 * min(shape)
    dy, dx = _centred_grid(shape)
    return _unit_power(_soft_disc(np.hypot(dy, dx), radius, edge_px).astype(np.complex128))


def second_mode(probe, relative_power=0.3, axis=1):
    """A second incoherent mode: the probe times a linear ramp across it (an HG01-like mode).

    Made orthogonal to ``probe`` and scaled to ``relative_power`` of its power.

    Parameters
    ----------
    probe : ndarray, complex
        First mode.
    relative_power : float
        Power of the second mode relative to the first.
    axis : int
        Axis of the ramp (0 rows, 1 columns).

    Returns
    -------
    ndarray (2, rows, cols), complex128: both modes
    """
    intensity = np.abs(probe) ** 2
    coords = np.indices(probe.shape, dtype=np.float64)[axis]
    centre = np.sum(coords * intensity) / np.sum(intensity)
    width = np.sqrt(np.sum((coords - centre) ** 2 * intensity) / np.sum(intensity))
    mode = probe * (coords - centre) / max(width, 1e-6)
    mode = mode - np.vdot(probe, mode) / np.vdot(probe, probe) * probe
    mode *= np.sqrt(relative_power * np.sum(intensity) / np.sum(np.abs(mode) ** 2))
    return np.stack([probe, mode])


def probe_diameter_px(probes, energy_fraction=0.9):
    """Diameter (pixels) of the disc about the centre of mass holding ``energy_fraction`` of the power.

    Parameters
    ----------
    probes : ndarray (modes, rows, cols) or (rows, cols), complex
    energy_fraction : float

    Returns
    -------
    float
    """
    intensity = np.sum(np.abs(np.asarray(probes).reshape((-1,) + np.shape(probes)[-2:])) ** 2, axis=0)
    yy, xx = np.indices(intensity.shape, dtype=np.float64)
    total = intensity.sum()
    cy, cx = (intensity * yy).sum() / total, (intensity * xx).sum() / total
    radius = np.hypot(yy - cy, xx - cx).ravel()
    order = np.argsort(radius)
    cumulative = np.cumsum(intensity.ravel()[order]) / total
    return 2.0 * float(radius[order][np.searchsorted(cumulative, energy_fraction)])


# ----------------------------------------------------------------------------------------------
# scans (positions in object pixels, (y, x), about the scan centre)
# ----------------------------------------------------------------------------------------------
def raster_scan(rows, cols, step_px, rng, jitter_px=0.0):
    """Raster grid with Gaussian stage jitter.

    Parameters
    ----------
    rows, cols : int
        Grid size.
    step_px : float or pair
        Grid step (pixels), (y, x) or one value.
    rng : numpy.random.Generator
    jitter_px : float
        Rms jitter per axis (pixels).

    Returns
    -------
    ndarray (rows * cols, 2), float64
    """
    step = np.broadcast_to(np.asarray(step_px, dtype=np.float64), (2,))
    gy, gx = np.meshgrid(np.arange(rows) - (rows - 1) / 2, np.arange(cols) - (cols - 1) / 2, indexing="ij")
    pos = np.stack([gy.ravel() * step[0], gx.ravel() * step[1]], axis=1)
    return pos + rng.normal(0.0, jitter_px, pos.shape) if jitter_px else pos


def fermat_spiral_scan(count, step_px, aspect=(1.0, 1.0)):
    """Fermat spiral (golden-angle) scan with a mean nearest-neighbour distance of about ``step_px``.

    Parameters
    ----------
    count : int
        Number of positions.
    step_px : float
        Typical distance between neighbours (pixels).
    aspect : pair of float
        Stretch of the (y, x) axes (keeps the point density when their product is 1).

    Returns
    -------
    ndarray (count, 2), float64
    """
    k = np.arange(count, dtype=np.float64)
    # golden-angle spiral: one point per area pi c**2, nearest neighbours about 1.75 c apart
    c = step_px / 1.75
    radius = c * np.sqrt(k + 0.5)
    angle = k * np.pi * (3.0 - np.sqrt(5.0))
    return np.stack([aspect[0] * radius * np.sin(angle), aspect[1] * radius * np.cos(angle)], axis=1)


def random_scan(count, step_px, rng, min_distance_fraction=0.5):
    """Random positions in a square at a density of one per ``step_px**2``, not closer than a fraction of the step.

    Parameters
    ----------
    count : int
    step_px : float
        Mean spacing (pixels).
    rng : numpy.random.Generator
    min_distance_fraction : float
        Smallest allowed distance between positions, as a fraction of the step.

    Returns
    -------
    ndarray (count, 2), float64
    """
    side = step_px * np.sqrt(count)
    min_distance = min_distance_fraction * step_px
    points = []
    tries = 0
    while len(points) < count:
        candidate = rng.uniform(-side / 2, side / 2, 2)
        tries += 1
        if tries > 200 * count:  # too crowded: accept anyway
            points.append(candidate)
            continue
        if all(np.hypot(*(candidate - p)) >= min_distance for p in points):
            points.append(candidate)
    return np.array(points)


# ----------------------------------------------------------------------------------------------
# forward model
# ----------------------------------------------------------------------------------------------
def object_windows(obj, pos_px, origin_px, shape):
    """Exact object windows seen by each frame, sub-pixel positions included.

    Parameters
    ----------
    obj : ndarray (rows, cols), complex
        Object on its pixel grid.
    pos_px : ndarray (N, 2)
        Positions (y, x), object pixels; need not be integers.
    origin_px : ndarray (2,), int
        Object pixel position of object[0, 0]: the frame at ``p`` covers
        ``obj[p - origin : p - origin + shape]``.
    shape : tuple of int
        Frame (rows, cols).

    Returns
    -------
    ndarray (N, rows, cols), complex128

    Notes
    -----
    For a fractional start ``s = i + f`` the window holds ``O(i + f + k)``,
    taken from the object Fourier-shifted by ``f`` (periodic band-limited
    interpolation; the object has a margin, so its wrap-around is never lit).
    """
    pos = np.asarray(pos_px, dtype=np.float64)
    start = pos - np.asarray(origin_px, dtype=np.float64)
    whole = np.floor(start + 1e-9).astype(int)
    frac = start - whole
    frac[np.abs(frac) < 1e-9] = 0.0
    h, w = shape
    if np.any(whole < 0) or np.any(whole[:, 0] + h > obj.shape[0]) or np.any(whole[:, 1] + w > obj.shape[1]):
        raise ValueError("a frame leaves the object: grow the object or its margin")
    out = np.empty((len(pos), h, w), dtype=np.complex128)
    spectrum = None
    fy = np.fft.fftfreq(obj.shape[0])[:, None]
    fx = np.fft.fftfreq(obj.shape[1])[None, :]
    for k, ((iy, ix), (ay, ax)) in enumerate(zip(whole, frac)):
        if ay == 0.0 and ax == 0.0:
            out[k] = obj[iy:iy + h, ix:ix + w]
            continue
        if spectrum is None:
            spectrum = np.fft.fft2(obj)
        # O(n + a) = ifft(fft(O) * exp(+2 pi i f a)); only the window's rows and columns are needed
        ramp_y = np.exp(2j * np.pi * fy * ay)
        ramp_x = np.exp(2j * np.pi * fx * ax)
        shifted = np.fft.ifft2(spectrum * ramp_y * ramp_x)
        out[k] = shifted[iy:iy + h, ix:ix + w]
    return out


def propagate_far(exit_waves):
    """Far-field detector amplitudes ``fftshift(fft2(ifftshift(psi), norm='ortho'))`` over the last two axes."""
    return np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(exit_waves, axes=(-2, -1)), norm="ortho"),
                           axes=(-2, -1))


def propagate_near(exit_waves, geometry):
    """Near-field (Fresnel, angular spectrum, paraxial) detector waves over the last two axes.

    ``ifft2(fft2(psi, norm='ortho') * H, norm='ortho')`` with
    ``H = exp(-i pi lam z (fy**2 + fx**2))``, ``f`` in cycles per metre.
    """
    h, w = exit_waves.shape[-2:]
    dy, dx = geometry.object_pixel_m
    fy = np.fft.fftfreq(h, d=dy)[:, None]
    fx = np.fft.fftfreq(w, d=dx)[None, :]
    transfer = np.exp(-1j * np.pi * geometry.wavelength_m * geometry.distance_m * (fy ** 2 + fx ** 2))
    return np.fft.ifft2(np.fft.fft2(exit_waves, norm="ortho") * transfer, norm="ortho")


def simulate_intensities(obj, probes, pos_px, origin_px, geometry, photons_per_frame, rng,
                         poisson=True):
    """Frames of a scan: incoherent sum over probe modes, scaled to a dose, with Poisson noise.

    Parameters
    ----------
    obj : ndarray, complex
        Object.
    probes : ndarray (modes, rows, cols), complex
        Probe modes (any scale; rescaled here).
    pos_px, origin_px : ndarray
        Positions and object origin (pixels), see :func:`object_windows`.
    geometry : Geometry
    photons_per_frame : float
        Mean total counts of a frame.
    rng : numpy.random.Generator
    poisson : bool
        Draw Poisson counts (else the expected intensities).

    Returns
    -------
    counts : ndarray (N, rows, cols), float64
        Counts (integers when ``poisson``).
    probes_scaled : ndarray (modes, rows, cols), complex128
        The probe modes in the scale of the counts (``sum |F(P O)|**2`` = expected counts).
    """
    probes = np.asarray(probes, dtype=np.complex128).reshape((-1,) + tuple(geometry.frame_shape))
    windows = object_windows(obj, pos_px, origin_px, geometry.frame_shape)
    expected = np.zeros(windows.shape, dtype=np.float64)
    for mode in probes:
        exit_waves = mode[None] * windows
        field_ = propagate_far(exit_waves) if geometry.propagation == "farfield" \
            else propagate_near(exit_waves, geometry)
        expected += np.abs(field_) ** 2
    scale = photons_per_frame / expected.sum(axis=(1, 2)).mean()
    expected *= scale
    counts = rng.poisson(expected).astype(np.float64) if poisson else expected
    return counts, probes * np.sqrt(scale)


def background_pattern(shape, mean_counts, profile="flat"):
    """An incoherent background (counts per pixel, the same in every frame) with the given mean.

    Parameters
    ----------
    shape : tuple of int
        Frame shape (rows, cols).
    mean_counts : float
        Mean of the pattern over the detector (counts per pixel).
    profile : str
        ``flat`` (constant) or ``radial``: air scattering falling off from the
        direct beam as ``1 / (1 + (q / q0)**2)`` with ``q`` the distance from
        the frame centre in pixels and ``q0`` a quarter of the smaller side,
        plus a flat tenth.

    Returns
    -------
    ndarray (rows, cols), float64
    """
    shape = tuple(int(v) for v in shape)
    if profile == "flat":
        pattern = np.ones(shape)
    elif profile == "radial":
        y = np.arange(shape[0]) - shape[0] // 2
        x = np.arange(shape[1]) - shape[1] // 2
        q2 = y[:, None] ** 2 + x[None, :] ** 2
        q0 = min(shape) / 4.0
        pattern = 0.1 + 1.0 / (1.0 + q2 / q0 ** 2)
    else:
        raise ValueError("unknown background profile %r" % profile)
    return pattern * (float(mean_counts) / pattern.mean())


# ----------------------------------------------------------------------------------------------
# detector defects
# ----------------------------------------------------------------------------------------------
def detector_defects(shape, rng, hot_count=6, dead_count=12, beamstop_radius_px=0.0,
                     dead_column=True):
    """Random hot and dead pixels (plus a dead column) and an optional central beam stop.

    Parameters
    ----------
    shape : tuple of int
        Frame (rows, cols).
    rng : numpy.random.Generator
    hot_count, dead_count : int
        Numbers of isolated hot and dead pixels.
    beamstop_radius_px : float
        Radius (detector pixels) of a beam stop at the frame centre (0: none).
    dead_column : bool
        Also kill part of one column (a dead readout line).

    Returns
    -------
    dict of bool arrays (rows, cols): ``hot``, ``dead``, ``beamstop``, ``valid``
    """
    h, w = shape
    hot = np.zeros(shape, bool)
    dead = np.zeros(shape, bool)
    flat = rng.choice(h * w, hot_count + dead_count, replace=False)
    hot.flat[flat[:hot_count]] = True
    dead.flat[flat[hot_count:]] = True
    if dead_column:
        col = int(rng.integers(w // 8, w // 3))
        dead[h // 2:, col] = True
    dy, dx = _centred_grid(shape)
    beamstop = np.hypot(dy, dx) <= beamstop_radius_px if beamstop_radius_px > 0 else np.zeros(shape, bool)
    return {"hot": hot, "dead": dead, "beamstop": beamstop, "valid": ~(hot | dead | beamstop)}


def apply_defects(counts, defects, rng, hot_level=None):
    """Put detector defects into frames: hot pixels high, dead pixels and the beam stop at 0.

    Parameters
    ----------
    counts : ndarray (N, rows, cols)
    defects : dict from :func:`detector_defects`
    rng : numpy.random.Generator
    hot_level : float, optional
        Typical hot-pixel count (default: 3 times the brightest count).

    Returns
    -------
    ndarray, a new array
    """
    out = counts.copy()
    level = hot_level if hot_level is not None else 3.0 * counts.max()
    n_hot = int(defects["hot"].sum())
    out[:, defects["hot"]] = np.round(rng.uniform(0.5, 1.0, (len(out), n_hot)) * level)
    out[:, defects["dead"]] = 0.0
    out[:, defects["beamstop"]] = 0.0
    return out


def lit_masks(object_shape, probes, pos_px, origin_px, frame_shape, illumination_fraction=0.01):
    """Where to score: pixels under the central half of a frame, and where also lit.

    Parameters
    ----------
    object_shape : tuple of int
    probes : ndarray (modes, rows, cols)
    pos_px, origin_px : ndarray
    frame_shape : tuple of int
    illumination_fraction : float
        A pixel is lit when the summed probe intensity over all frames is at
        least this fraction of its maximum.

    Returns
    -------
    frame_mask : ndarray, bool
        Pixels covered by the central half (each axis) of at least one frame
        (the foreign scans' ``lit_mask``).
    lit_mask : ndarray, bool
        ``frame_mask`` and lit: for broad probes the same; for a focused
        probe it drops the dark pixels of the central half that no probe
        reaches.
    """
    h, w = frame_shape
    frame_mask = np.zeros(object_shape, bool)
    illumination = np.zeros(object_shape)
    intensity = np.sum(np.abs(np.asarray(probes).reshape((-1, h, w))) ** 2, axis=0)
    start = np.floor(np.asarray(pos_px, dtype=np.float64) - np.asarray(origin_px) + 0.5).astype(int)
    for iy, ix in start:
        frame_mask[iy + h // 4:iy + h // 4 + h // 2, ix + w // 4:ix + w // 4 + w // 2] = True
        illumination[iy:iy + h, ix:ix + w] += intensity
    return frame_mask, frame_mask & (illumination >= illumination_fraction * illumination.max())


# ----------------------------------------------------------------------------------------------
# writers
# ----------------------------------------------------------------------------------------------
def _h5rw_dict(group):
    group.attrs["type"] = "dict"
    return group


def _h5rw_array(group, name, value, compress=True):
    value = np.asarray(value)
    kwargs = {"compression": "gzip", "compression_opts": 4, "chunks": True} if compress and value.ndim else {}
    ds = group.create_dataset(name, data=value, **kwargs)
    ds.attrs["type"] = "array"
    return ds


def _h5rw_scalar(group, name, value):
    ds = group.create_dataset(name, data=value)
    ds.attrs["type"] = "scalar"
    return ds


def write_ptyd(path, counts, positions_m, geometry, weights=None, label="zoo", chunk_frames=100):
    """Write a PtyPy prepared-data file (.ptyd) as PtyPy's h5rw writer does.

    Parameters
    ----------
    path : str
        Output file.
    counts : ndarray (N, rows, cols)
        Frames (stored int32), zero frequency at the frame centre.
    positions_m : ndarray (N, 2)
        Positions (y, x) in metres.
    geometry : Geometry
    weights : ndarray (rows, cols) or (N, rows, cols), optional
        Pixel weights, 0 = masked (default all ones); stored float64 per frame.
    label : str
        ``meta/label``.
    chunk_frames : int
        Frames per ``chunks/<k>`` group.
    """
    n, h, w = counts.shape
    weights = np.ones((h, w)) if weights is None else np.asarray(weights, dtype=np.float64)
    if weights.ndim == 2:
        weights = np.broadcast_to(weights, (n, h, w))
    positions_m = np.asarray(positions_m, dtype=np.float64)
    with h5py.File(path, "w") as f:
        f.attrs["h5rw_version"] = "0.1"
        chunks = _h5rw_dict(f.create_group("chunks"))
        for k, start in enumerate(range(0, n, chunk_frames)):
            stop = min(n, start + chunk_frames)
            g = _h5rw_dict(chunks.create_group(str(k)))
            _h5rw_array(g, "data", np.asarray(counts[start:stop]).astype(np.int32))
            ds = g.create_dataset("indices", data=np.arange(start, stop, dtype=np.int64))
            ds.attrs["type"] = "arraylist"
            _h5rw_array(g, "positions", positions_m[start:stop])
            _h5rw_array(g, "weights", np.ascontiguousarray(weights[start:stop], dtype=np.float64))
        info = _h5rw_dict(f.create_group("info"))
        _h5rw_array(info, "positions_scan", positions_m)
        meta = _h5rw_dict(f.create_group("meta"))
        _h5rw_array(meta, "center", np.array([h // 2, w // 2], np.float64), compress=False)
        _h5rw_scalar(meta, "distance", np.float64(geometry.distance_m))
        _h5rw_scalar(meta, "energy", np.float64(geometry.energy_kev))
        ds = meta.create_dataset("label", data=label.encode(), dtype=h5py.string_dtype("ascii"))
        ds.attrs["type"] = "string"
        _h5rw_scalar(meta, "num_frames", np.int64(n))
        _h5rw_array(meta, "psize", np.array([geometry.detector_pixel_m] * 2, np.float64), compress=False)
        _h5rw_array(meta, "shape", np.array([h, w], np.int64), compress=False)
        _h5rw_scalar(meta, "version", np.float64(0.1))


def write_cxi(path, counts, positions_m, geometry, mask_bits=None):
    """Write a CXI 1.5 ptychography file.

    Parameters
    ----------
    path : str
    counts : ndarray (N, rows, cols)
        Frames (stored int32).
    positions_m : ndarray (N, 2)
        Positions (y, x) in metres; stored as the sample translation (N, 3)
        with columns x, y, z (z = 0), no sign change.
    geometry : Geometry
        Energy stored in joules, distance and pixel sizes in metres.
    mask_bits : ndarray (rows, cols), optional
        Detector mask (uint32 bit field; 0x1 = invalid).
    """
    positions_m = np.asarray(positions_m, dtype=np.float64)
    translation = np.zeros((len(positions_m), 3))
    translation[:, 0] = positions_m[:, 1]
    translation[:, 1] = positions_m[:, 0]
    with h5py.File(path, "w") as f:
        f.create_dataset("cxi_version", data=np.int64(150))
        entry = f.create_group("entry_1")
        detector = entry.create_group("instrument_1/detector_1")
        detector.create_dataset("data", data=np.asarray(counts).astype(np.int32), compression="gzip",
                                compression_opts=4, chunks=True)
        detector.create_dataset("distance", data=np.float64(geometry.distance_m))
        detector.create_dataset("x_pixel_size", data=np.float64(geometry.detector_pixel_m))
        detector.create_dataset("y_pixel_size", data=np.float64(geometry.detector_pixel_m))
        if mask_bits is not None:
            detector.create_dataset("mask", data=np.asarray(mask_bits, dtype=np.uint32))
        source = entry.create_group("instrument_1/source_1")
        source.create_dataset("energy", data=np.float64(geometry.energy_kev * 1e3 * ELECTRON_VOLT_J))
        entry.create_group("sample_1/geometry_1").create_dataset("translation", data=translation)
        data_1 = entry.create_group("data_1")
        data_1["data"] = h5py.SoftLink("/entry_1/instrument_1/detector_1/data")
        data_1["translation"] = h5py.SoftLink("/entry_1/sample_1/geometry_1/translation")


#: dataset names of the beamline layout
BEAMLINE_PATHS = {
    "frames": "/entry/data/frames",
    "y_um": "/entry/positions/y_um",
    "x_um": "/entry/positions/x_um",
    "energy_ev": "/entry/instrument/monochromator/energy_eV",
    "distance_mm": "/entry/instrument/detector/distance_mm",
    "pixel_size_um": "/entry/instrument/detector/pixel_size_um",
    "valid": "/entry/instrument/detector/pixel_valid",
}


def write_beamline(path, counts, positions_m, geometry, valid=None):
    """Write a beamline-style HDF5 file: uint16 frames, micrometres, eV, mm.

    Parameters
    ----------
    path : str
    counts : ndarray (N, rows, cols)
        Frames; clipped to 0..65535 and stored uint16 (pixels that saturate
        are marked invalid in ``valid`` when it is written).
    positions_m : ndarray (N, 2)
        Positions (y, x), metres; stored as two (N,) datasets in micrometres.
    geometry : Geometry
    valid : ndarray (rows, cols) or (N, rows, cols) of bool, optional
        Valid pixels (stored uint8, 1 = valid). When a frame saturates, a
        mask is written in any case, one per frame, with the saturated
        pixels invalid (as a detector's saturation flag).

    Returns
    -------
    n_saturated : int
        Number of saturated pixel values (clipped to 65535).
    has_mask : bool
        Whether the file holds the pixel-valid dataset.
    """
    counts = np.asarray(counts)
    saturated = counts >= 65535
    n_saturated = int(saturated.sum())
    frames = np.clip(np.round(counts), 0, 65535).astype(np.uint16)
    positions_um = np.asarray(positions_m, dtype=np.float64) * 1e6
    if n_saturated:
        valid = np.broadcast_to(np.ones(counts.shape[1:], bool) if valid is None else np.asarray(valid, bool),
                                counts.shape) & ~saturated
    with h5py.File(path, "w") as f:
        p = BEAMLINE_PATHS
        f.create_dataset(p["frames"], data=frames, compression="gzip", compression_opts=4,
                         chunks=(1,) + frames.shape[1:])
        f.create_dataset(p["y_um"], data=positions_um[:, 0])
        f.create_dataset(p["x_um"], data=positions_um[:, 1])
        f.create_dataset(p["energy_ev"], data=np.float64(geometry.energy_kev * 1e3))
        f.create_dataset(p["distance_mm"], data=np.float64(geometry.distance_m * 1e3))
        f.create_dataset(p["pixel_size_um"], data=np.float64(geometry.detector_pixel_m * 1e6))
        if valid is not None:
            f.create_dataset(p["valid"], data=np.asarray(valid).astype(np.uint8))
        f["/entry"].attrs["beamline"] = "zoo"
    return n_saturated, valid is not None


def write_ptylab(path, counts, positions_m, geometry):
    """Write PtyLab's HDF5 layout (conventional ptychography): SI units at the top level.

    ``ptychogram`` (N, rows, cols) float32 with the zero frequency at
    ``rows // 2`` (a centred FFT, as :func:`propagate_far`), ``encoder``
    (N, 2) positions (y, x) in metres, ``wavelength``, ``zo`` (distance) and
    ``dxd`` (detector pixel) in metres as one-element arrays, ``Nd`` and an
    ``entrancePupilDiameter`` estimate, as PtyLab's own simulation writes them.
    Far field only.
    """
    counts = np.asarray(counts, dtype=np.float32)
    with h5py.File(path, "w") as f:
        f.create_dataset("ptychogram", data=counts, dtype="f")
        f.create_dataset("encoder", data=np.asarray(positions_m, dtype=np.float64), dtype="f")
        f.create_dataset("wavelength", data=(geometry.wavelength_m,), dtype="f")
        f.create_dataset("zo", data=(geometry.distance_m,), dtype="f")
        f.create_dataset("dxd", data=(geometry.detector_pixel_m,), dtype="f")
        f.create_dataset("Nd", data=(counts.shape[-1],), dtype="i")
        f.create_dataset("entrancePupilDiameter", data=(counts.shape[-1] * geometry.object_pixel_m[0] / 2,),
                         dtype="f")
        f.create_dataset("orientation", data=0)


def beamline_data_section(path, with_mask):
    """The ``scans.<label>.data`` mapping a user writes for :func:`write_beamline` files.

    Parameters
    ----------
    path : str
        The file.
    with_mask : bool
        Whether the file has a pixel-valid dataset.

    Returns
    -------
    dict
    """
    p = BEAMLINE_PATHS
    section = {
        "name": "Hdf5Scan",
        "dfile": str(path),
        "intensities": p["frames"],
        "positions_slow": p["y_um"],
        "positions_fast": p["x_um"],
        "positions_slow_multiplier": 1e-6,
        "positions_fast_multiplier": 1e-6,
        "energy_dataset": p["energy_ev"],
        "energy_multiplier": 1e-3,
        "distance_dataset": p["distance_mm"],
        "distance_multiplier": 1e-3,
        "psize_dataset": p["pixel_size_um"],
        "psize_multiplier": 1e-6,
    }
    if with_mask:
        section["mask_dataset"] = p["valid"]
    return section


def data_section(layout, path, with_mask=False):
    """The ``scans.<label>.data`` section reading a file of ``layout`` (ptyd, cxi, beamline, ptylab)."""
    if layout == "ptyd":
        return {"name": "PtydScan", "dfile": str(path)}
    if layout == "cxi":
        return {"name": "CxiScan", "dfile": str(path)}
    if layout == "beamline":
        return beamline_data_section(path, with_mask)
    if layout == "ptylab":
        return {"name": "PtyLabScan", "dfile": str(path)}
    raise ValueError("unknown layout %r" % layout)


# ----------------------------------------------------------------------------------------------
# cases
# ----------------------------------------------------------------------------------------------
@dataclass
class CaseSpec:
    """Everything that defines one zoo scan.

    Attributes
    ----------
    name : str
        Case name (also the file stem).
    layout : str
        ``ptyd``, ``cxi`` or ``beamline``.
    probe : str
        ``focused``, ``zoneplate``, ``defocused``, ``diffuser``, ``aperture``.
    probe_size_px : float, optional
        Focused: spot FWHM; zoneplate/defocused: ring radius; diffuser/aperture:
        radius (object pixels). None: the probe's default.
    probe_modes : int
        1, or 2 for a second incoherent mode (30 % power).
    frame_shape : tuple of int
        Frame (rows, cols).
    propagation : str
        ``farfield`` or ``nearfield``.
    energy_kev, distance_m, detector_pixel_m : float
        Geometry (near field: ``distance_m`` is chosen so that
        ``lam z / dx**2 = near_fresnel_px`` when ``distance_m`` is None).
    scan : str
        ``raster`` (with jitter), ``spiral`` or ``random``.
    frames : int
        Number of frames (raster: rounded to a square grid).
    overlap : float
        Linear overlap ``1 - step / diameter``, diameter of the disc holding
        90 % of the probe power.
    jitter_px : float
        Raster jitter (pixels rms per axis).
    subpixel : bool
        Keep positions off the integer grid (else round them).
    position_error_px : float
        Rms (2-D, pixels) of the errors added to the positions written to
        the file; the truth keeps the true ones.
    photons : float
        Mean counts per frame.
    phase_span_rad : float
        Object phase range (rad); above 2 pi the phase wraps.
    feature_px : float
        Correlation length (pixels) of the object's noise texture (1.0: content up to
        the Nyquist frequency; 2.0: about as smooth as the foreign scans' objects).
    defects : bool
        Hot/dead pixels and a dead column, masked in the file.
    beamstop_radius_px : float
        Beam stop radius (detector pixels), masked; 0 = none.
    poisson_ml : bool
        Low dose: the natural config gives LSQML ``noise_model: poisson`` (ML's
        default ``ML_type: auto`` is Poisson on counts already).
    position_refinement : bool
        The natural config turns position refinement on.
    seed : int
        Random seed of everything in the case.
    background : float
        An incoherent background added to every frame before the Poisson
        draw, its mean over the detector this fraction of the mean expected
        counts per pixel (0: none; the cases without it are drawn exactly as
        before).
    background_profile : str
        ``flat`` or ``radial`` (a smooth air-scattering profile, see
        :func:`background_pattern`).
    """

    name: str
    layout: str = "ptyd"
    probe: str = "zoneplate"
    probe_size_px: float = None
    probe_modes: int = 1
    frame_shape: tuple = (64, 64)
    propagation: str = "farfield"
    energy_kev: float = 6.2
    distance_m: float = 5.0
    detector_pixel_m: float = 172e-6
    near_fresnel_px: float = 12.0
    scan: str = "spiral"
    frames: int = 120
    overlap: float = 0.7
    jitter_px: float = 0.6
    subpixel: bool = False
    position_error_px: float = 0.0
    photons: float = 1e7
    phase_span_rad: float = 2.0
    feature_px: float = 1.0
    defects: bool = False
    beamstop_radius_px: float = 0.0
    poisson_ml: bool = False
    position_refinement: bool = False
    seed: int = 0
    background: float = 0.0
    background_profile: str = "flat"
    notes: str = ""


def _geometry(spec):
    if spec.propagation == "nearfield":
        lam = wavelength_m(spec.energy_kev)
        distance = spec.near_fresnel_px * spec.detector_pixel_m ** 2 / lam
        return Geometry(spec.energy_kev, distance, spec.detector_pixel_m, tuple(spec.frame_shape),
                        "nearfield")
    return Geometry(spec.energy_kev, spec.distance_m, spec.detector_pixel_m, tuple(spec.frame_shape),
                    "farfield")


def _make_probes(spec, rng):
    shape = tuple(spec.frame_shape)
    size = spec.probe_size_px
    kind = spec.probe
    if kind == "focused":
        probe = focused_probe(shape, size or 3.0)
    elif kind == "zoneplate":
        probe = zone_plate_probe(shape, size or 9.0)
    elif kind == "defocused":
        probe = defocused_probe(shape, size or 16.0)
    elif kind == "diffuser":
        probe = diffuser_probe(shape, rng, radius_px=size)
    elif kind == "aperture":
        probe = aperture_probe(shape, size)
    else:
        raise ValueError("unknown probe %r" % kind)
    return second_mode(probe) if spec.probe_modes == 2 else probe[None]


def _scan_positions(spec, step_px, rng):
    if spec.scan == "raster":
        side = int(round(np.sqrt(spec.frames)))
        return raster_scan(side, side, step_px, rng, spec.jitter_px)
    if spec.scan == "spiral":
        return fermat_spiral_scan(spec.frames, step_px)
    if spec.scan == "random":
        return random_scan(spec.frames, step_px, rng)
    raise ValueError("unknown scan %r" % spec.scan)


def build_case(spec, folder, margin_px=4):
    """Simulate one case and write its data file, truth and true probe.

    Parameters
    ----------
    spec : CaseSpec
    folder : str
        Output folder (created).
    margin_px : int
        Object pixels beyond the outermost frames.

    Returns
    -------
    dict
        ``data_file``, ``truth_file``, ``probe_file`` (.npy of the true probe
        modes in the scale of the counts), ``data_section`` (the config's
        ``scans.<label>.data``), ``truth`` (dict of the truth arrays),
        ``reported_pos_px`` (the positions written, pixels), ``spec`` (dict),
        ``n_saturated``.
    """
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(spec.seed)
    geometry = _geometry(spec)
    shape = tuple(spec.frame_shape)
    probes = _make_probes(spec, rng)
    diameter = probe_diameter_px(probes)
    step = max(1.0, (1.0 - spec.overlap) * diameter)
    true_pos = _scan_positions(spec, step, rng)
    true_pos -= true_pos.mean(axis=0)
    if not spec.subpixel:
        true_pos = np.round(true_pos)
    reported = true_pos.copy()
    if spec.position_error_px:
        reported = true_pos + rng.normal(0.0, spec.position_error_px / np.sqrt(2.0), true_pos.shape)
    lo = np.floor(np.minimum(true_pos.min(axis=0), reported.min(axis=0))).astype(int) - margin_px
    hi = np.ceil(np.maximum(true_pos.max(axis=0), reported.max(axis=0))).astype(int) + margin_px
    origin = lo
    object_shape = tuple(int(v) for v in (hi - lo + np.asarray(shape) + 1))
    obj = make_object(object_shape, rng, spec.phase_span_rad, feature_px=spec.feature_px)
    if spec.background > 0:
        expected, probes_scaled = simulate_intensities(obj, probes, true_pos, origin, geometry, spec.photons, rng,
                                                       poisson=False)
        background = background_pattern(shape, spec.background * float(expected.mean()), spec.background_profile)
        counts = rng.poisson(expected + background).astype(np.float64)
    else:
        counts, probes_scaled = simulate_intensities(obj, probes, true_pos, origin, geometry, spec.photons, rng)
        background = np.zeros(shape)

    weights = None
    mask_bits = None
    valid = None
    if spec.defects or spec.beamstop_radius_px > 0:
        defects = detector_defects(shape, rng, hot_count=6 if spec.defects else 0,
                                   dead_count=12 if spec.defects else 0,
                                   beamstop_radius_px=spec.beamstop_radius_px, dead_column=spec.defects)
        hot_level = 60000.0 if spec.layout == "beamline" else None
        counts = apply_defects(counts, defects, rng, hot_level)
        valid = defects["valid"]
        weights = valid.astype(np.float64)
        mask_bits = np.zeros(shape, np.uint32)
        mask_bits[defects["hot"]] |= CXI_MASK_INVALID | CXI_MASK_HOT
        mask_bits[defects["dead"]] |= CXI_MASK_INVALID | CXI_MASK_DEAD
        mask_bits[defects["beamstop"]] |= CXI_MASK_INVALID | CXI_MASK_SHADOWED

    resolution = geometry.object_pixel_m
    positions_m = reported * resolution
    ext = {"ptyd": ".ptyd", "cxi": ".cxi", "beamline": ".h5", "ptylab": ".hdf5"}[spec.layout]
    data_file = os.path.join(folder, spec.name + ext)
    n_saturated = 0
    has_mask = valid is not None
    if spec.layout == "ptyd":
        write_ptyd(data_file, counts, positions_m, geometry, weights=weights, label=spec.name)
    elif spec.layout == "cxi":
        write_cxi(data_file, counts, positions_m, geometry, mask_bits=mask_bits)
    elif spec.layout == "beamline":
        n_saturated, has_mask = write_beamline(data_file, counts, positions_m, geometry, valid=valid)
    elif spec.layout == "ptylab":
        write_ptylab(data_file, counts, positions_m, geometry)
        has_mask = False
    else:
        raise ValueError("unknown layout %r" % spec.layout)

    frame_mask, lit_mask = lit_masks(object_shape, probes_scaled, true_pos, origin, shape)
    truth = {
        "object": obj.astype(np.complex64),
        "probes": probes_scaled.astype(np.complex64),
        "pos_px": true_pos,
        "reported_pos_px": reported,
        "origin_px": origin,
        "resolution_m": resolution,
        "lit_mask": lit_mask,
        "frame_mask": frame_mask,
        "propagation": np.array(spec.propagation),
        "energy_kev": np.float64(geometry.energy_kev),
        "distance_m": np.float64(geometry.distance_m),
        "detector_pixel_m": np.float64(geometry.detector_pixel_m),
        "photons": np.float64(spec.photons),
        "background": background,
    }
    truth_file = os.path.join(folder, spec.name + "_truth.npz")
    np.savez_compressed(truth_file, **truth)
    probe_file = os.path.join(folder, spec.name + "_true_probe.npy")
    np.save(probe_file, probes_scaled.astype(np.complex64))
    return {
        "data_file": data_file,
        "truth_file": truth_file,
        "probe_file": probe_file,
        "data_section": data_section(spec.layout, data_file, with_mask=has_mask),
        "truth": truth,
        "reported_pos_px": reported,
        "geometry": geometry,
        "spec": asdict(spec),
        "n_saturated": n_saturated,
        "step_px": step,
        "probe_diameter_px": diameter,
    }
