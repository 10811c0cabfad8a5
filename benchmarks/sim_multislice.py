"""An independent multislice forward simulator for ptycli's multislice tests (issue 16).

Nothing here imports ptycli: the thick sample, the probe, the scan, the
propagation through the slices and the far-field patterns are plain numpy,
and the scan is written as a NumPy ``.npz`` that ptycli's ``NpzScan`` reads.

Physics and conventions
-----------------------
* Wavelength ``lam = 1.23984198e-9 / E[keV]`` m; far-field geometry with
  detector distance ``z`` and pixel ``p``: the object pixel is
  ``dx = lam z / (N p)`` for ``N x N`` frames.
* The sample is ``S`` thin slices ``T_1 .. T_S`` (complex transmissions) a
  distance ``dz`` apart along the beam. The wave incident on slice 1 is the
  probe; the wave leaving slice ``s`` is the incident wave times ``T_s``; the
  wave incident on slice ``s + 1`` is that one propagated by ``dz`` in free
  space, computed with the exact angular spectrum
  ``exp(2 pi i dz (sqrt(1/lam**2 - fy**2 - fx**2) - 1/lam))`` on a window
  twice the frame (so that the spreading wave is not wrapped round the
  frame; the probe is zero outside the frame).
* The detector records ``|FT(psi * exp(i pi r**2 / (lam z)))|**2`` of the
  wave ``psi`` leaving the last slice (Fresnel far field, ``r`` measured from
  the frame's centre pixel ``N // 2``), sampled at the detector pixels: the
  doubled window is folded onto the frame (the DFT of the detector sampling)
  before an ``N x N`` unitary FFT; zero frequency at pixel ``N // 2``.
* Depth of field: ``2 dx**2 / lam`` (:func:`depth_of_field`).
* Positions in the file are metres, (y, x), relative to the pixel
  ``object_center`` of the truth arrays; the frame whose top-left pixel is
  ``(y0, x0)`` sits at ``((y0 + N//2, x0 + N//2) - object_center) * dx``.

Typical use::

    import sim_multislice as sm
    case = sm.simulate(sm.Spec(), "/tmp/ms/scan.npz")
    case["slices"]           # (S, H, W) true transmissions
    case["slice_distance_m"], case["depth_of_field_m"]
"""

from dataclasses import dataclass
import os

import numpy as np

__all__ = ["HC_KEV_M", "Spec", "wavelength_m", "depth_of_field", "weak_phase_slice", "speckle_probe",
           "raster_positions", "angular_spectrum", "exit_wave", "far_field", "simulate"]

#: Planck constant times speed of light, keV * m
HC_KEV_M = 1.23984198e-9


@dataclass
class Spec:
    """One simulated multislice scan.

    Attributes
    ----------
    frame : int
        Frame side ``N`` (pixels).
    slices : int
        Number of slices ``S``.
    dof_apart : float
        Slice distance in depths of field (``dz = dof_apart * 2 dx**2 / lam``).
    energy_kev, distance_m, detector_pixel_m : float
        Far-field geometry.
    phase_rad : float
        Peak-to-peak phase of each (weak phase) slice.
    absorption : float
        Peak amplitude loss of each slice (1 - min amplitude).
    feature_px : float
        Feature size of the slice textures (pixels).
    probe_radius_px : float
        Radius of the probe's aperture (pixels).
    steps : int
        Scan grid ``steps x steps``.
    step_px : float
        Scan step (pixels; random jitter of a quarter step is added).
    photons : float or None
        Mean photons per frame (Poisson noise); None: noiseless.
    seed : int
        Random seed of everything.
    """

    frame: int = 64
    slices: int = 3
    dof_apart: float = 7.0
    energy_kev: float = 8.0
    distance_m: float = 2.0
    detector_pixel_m: float = 75e-6
    phase_rad: float = 0.6
    absorption: float = 0.05
    feature_px: float = 1.5
    probe_radius_px: float = 12.0
    steps: int = 10
    step_px: float = 6.0
    photons: float = None
    seed: int = 7


def wavelength_m(energy_kev):
    """Wavelength (m) of photons of ``energy_kev``."""
    return HC_KEV_M / float(energy_kev)


def depth_of_field(dx, lam):
    """Depth of field ``2 dx**2 / lam`` (m) of object pixel ``dx`` at wavelength ``lam``."""
    return 2.0 * dx * dx / lam


def _smooth(shape, rng, feature_px):
    """Gaussian-filtered white noise with zero mean and unit peak magnitude."""
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = np.fft.fftfreq(shape[1])[None, :]
    g = np.exp(-2.0 * (np.pi * feature_px) ** 2 * (fy ** 2 + fx ** 2))
    a = np.real(np.fft.ifft2(np.fft.fft2(rng.standard_normal(shape)) * g))
    a -= a.mean()
    return a / np.abs(a).max()


def weak_phase_slice(shape, rng, phase_rad, absorption, feature_px):
    """A weak phase transmission ``(1 - absorption * t) exp(i phase_rad * u)`` of random textures.

    ``u`` in ``[-1/2, 1/2]`` and ``t`` in ``[0, 1]``, from filtered noise.
    """
    u = _smooth(shape, rng, feature_px)
    u = (u - u.min()) / (u.max() - u.min()) - 0.5
    t = _smooth(shape, rng, 2.0 * feature_px)
    t = (t - t.min()) / (t.max() - t.min())
    return (1.0 - absorption * t) * np.exp(1j * phase_rad * u)


def speckle_probe(n, rng, radius_px, lam, dx):
    """A structured probe: a soft round aperture times a random phase screen, propagated a little.

    Broad in angle (a diffuser), so that the slices are seen from many
    directions; unit total power; zero outside the aperture's spread.
    """
    y, x = np.mgrid[:n, :n] - n // 2
    r = np.hypot(y, x)
    aperture = 0.5 * (1 - np.tanh((r - radius_px) / 1.5))
    screen = np.exp(1j * 2.5 * _smooth((n, n), rng, 1.2))
    probe = angular_spectrum(aperture * screen, lam, dx, 4.0 * dx * dx / lam)
    probe *= 0.5 * (1 - np.tanh((r - radius_px - 4.0) / 2.0))   # keep it compact
    return probe / np.sqrt(np.sum(np.abs(probe) ** 2))


def raster_positions(steps, step_px, rng):
    """Top-left pixel offsets (y, x) of a jittered ``steps x steps`` raster, from 0."""
    g = np.arange(steps) * step_px
    yy, xx = np.meshgrid(g, g, indexing="ij")
    pos = np.stack([yy.ravel(), xx.ravel()], axis=1)
    pos = pos + rng.uniform(-0.25, 0.25, pos.shape) * step_px
    pos = np.rint(pos - pos.min(axis=0)).astype(int)
    return pos


def angular_spectrum(wave, lam, dx, dz):
    """Free-space propagation of ``wave`` (square pixels ``dx``) by ``dz`` (exact angular spectrum).

    Frequencies beyond ``1 / lam`` (evanescent) are dropped.
    """
    ny, nx = wave.shape[-2:]
    fy = np.fft.fftfreq(ny, dx)[:, None]
    fx = np.fft.fftfreq(nx, dx)[None, :]
    arg = 1.0 / lam ** 2 - fy ** 2 - fx ** 2
    kernel = np.where(arg > 0, np.exp(2j * np.pi * dz * (np.sqrt(np.maximum(arg, 0)) - 1.0 / lam)), 0)
    return np.fft.ifft2(np.fft.fft2(wave) * kernel)


def exit_wave(probe, windows, lam, dx, dz):
    """The wave leaving the last slice, on a window twice the frame (probe centred in it).

    ``windows``: (S, 2N, 2N) the slices' transmissions around the frame
    (the frame in the middle).
    """
    n = probe.shape[-1]
    psi = np.zeros((2 * n, 2 * n), dtype=complex)
    psi[n // 2:n // 2 + n, n // 2:n // 2 + n] = probe
    psi = psi * windows[0]
    for s in range(1, windows.shape[0]):
        psi = angular_spectrum(psi, lam, dx, dz) * windows[s]
    return psi


def far_field(psi2, lam, dx, z):
    """Detector amplitudes (N, N) of the doubled-window exit wave ``psi2`` (2N, 2N): Fresnel far field.

    The Fresnel phase ``exp(i pi r**2 / (lam z))`` about the frame centre, then
    the detector sampling folds the doubled window onto the frame.
    """
    n2 = psi2.shape[-1]
    n = n2 // 2
    y, x = (np.mgrid[:n2, :n2] - n) * dx           # frame centre N//2 sits at n//2 + N//2 = n in the window
    w = psi2 * np.exp(1j * np.pi * (y ** 2 + x ** 2) / (lam * z))
    # fold: pixel j of the window is frame pixel (j - n//2) mod n
    folded = np.zeros((n, n), dtype=complex)
    for a in range(2):
        for b in range(2):
            folded += np.roll(w[a * n:(a + 1) * n, b * n:(b + 1) * n], (-(n // 2), -(n // 2)), axis=(0, 1))
    return np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(folded), norm="ortho"))


def simulate(spec, path):
    """Simulate ``spec``, write the scan to ``path`` (``.npz``) and return the ground truth.

    Returns
    -------
    dict
        ``slices`` (S, H, W) true transmissions, ``probe`` (N, N), ``object_center``
        (pixel of the physical origin in the truth arrays), ``positions_m`` (n, 2),
        ``corners`` (n, 2) top-left pixels, ``dx`` (m), ``lam`` (m),
        ``slice_distance_m``, ``depth_of_field_m``, ``path``.
    """
    rng = np.random.default_rng(spec.seed)
    n = int(spec.frame)
    lam = wavelength_m(spec.energy_kev)
    dx = lam * spec.distance_m / (n * spec.detector_pixel_m)
    dof = depth_of_field(dx, lam)
    dz = spec.dof_apart * dof
    corners = raster_positions(spec.steps, spec.step_px, rng) + n // 2   # margin of half a frame
    shape = tuple(int(v) for v in corners.max(axis=0) + n + n // 2 + 1)
    slices = np.stack([weak_phase_slice(shape, rng, spec.phase_rad, spec.absorption, spec.feature_px)
                       for _ in range(spec.slices)])
    probe = speckle_probe(n, rng, spec.probe_radius_px, lam, dx)
    frames = np.empty((len(corners), n, n))
    for i, (y0, x0) in enumerate(corners):
        win = slices[:, y0 - n // 2:y0 + n + n // 2, x0 - n // 2:x0 + n + n // 2]
        frames[i] = np.abs(far_field(exit_wave(probe, win, lam, dx, dz), lam, dx, spec.distance_m)) ** 2
    if spec.photons:
        scale = float(spec.photons) / frames.sum(axis=(1, 2)).mean()
        frames = rng.poisson(frames * scale).astype(np.float64)
    center = np.rint((corners + n // 2).mean(axis=0)).astype(int)
    positions = (corners + n // 2 - center) * dx
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    np.savez(path, intensities=frames, positions=positions, energy=np.float64(spec.energy_kev),
             distance=np.float64(spec.distance_m), psize=np.float64(spec.detector_pixel_m))
    return dict(slices=slices, probe=probe, object_center=center, positions_m=positions, corners=corners,
                dx=dx, lam=lam, slice_distance_m=dz, depth_of_field_m=dof, path=os.fspath(path))
