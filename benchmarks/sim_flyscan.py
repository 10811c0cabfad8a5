"""An independent fly-scan simulator with a drifting probe, for ptycli's variable-probe (OPR) tests (issue 16).

Nothing here imports ptycli: the object, the probe and its drift, the scan
and the far-field patterns are plain numpy, and the scan is written as a
NumPy ``.npz`` that ptycli's ``NpzScan`` reads.

Physics and conventions
-----------------------
* Wavelength ``lam = 1.23984198e-9 / E[keV]`` m; far field with detector
  distance ``z`` and pixel ``p``: the object pixel is ``dx = lam z / (N p)``
  for ``N x N`` frames.
* A fly scan: the sample moves continuously along the lines of a snake
  raster; frame ``t`` (its time order) is recorded at its position along
  the line. While the scan runs the beam drifts, so frame ``t`` sees its own
  probe::

      P_t = a_t * shift(propagate(P, dz_t), s_t)

  with the flux factor ``a_t = 1 + amp_drift sin(2 pi 1.3 t / T)``, a shift
  ``s_t`` of the beam along x between ``-shift_px`` and ``+shift_px``
  (sub-pixel: a Fourier phase ramp) and a defocus ``dz_t`` between
  ``-defocus`` and ``+defocus`` depths of field (angular spectrum). With
  ``cycles = 0`` the shift is a linear ramp over the scan and the defocus a
  half cosine (a slow drift); with ``cycles = c > 0`` the shift follows
  ``sin(2 pi c t / T)`` and the defocus ``cos(2 pi 0.7 c t / T)`` (the beam
  wanders back and forth, as with vibrating optics or a periodic
  thermal load). ``P`` is a structured probe: a soft round aperture
  times a smooth random phase screen, propagated a little (a diffuser).
* The detector records ``|FT(P_t O_t exp(i pi r**2 / (lam z)))|**2`` with
  ``O_t`` the object window of the frame (Fresnel far field, ``r`` from the
  frame's centre pixel ``N // 2``; unitary FFT, zero frequency at pixel
  ``N // 2``), optionally with Poisson noise at ``photons`` per frame (mean).
* Positions in the file are metres, (y, x), relative to the pixel
  ``object_center`` of the truth object; the frame whose top-left pixel is
  ``(y0, x0)`` sits at ``((y0 + N//2, x0 + N//2) - object_center) * dx``.

Typical use::

    import sim_flyscan as sf
    truth = sf.simulate(sf.Spec(), "/tmp/fly/scan.npz")
    truth["probes"]       # (T, N, N) the probe of every frame, in frame order
    truth["object"], truth["object_center"]
"""

from dataclasses import dataclass
import os

import numpy as np

# the physics shared with the multislice simulator: one copy
from sim_multislice import HC_KEV_M, _smooth, angular_spectrum, wavelength_m  # noqa: F401

__all__ = ["HC_KEV_M", "Spec", "wavelength_m", "object_texture", "diffuser_probe", "angular_spectrum",
           "subpixel_shift", "drifting_probes", "snake_positions", "far_field", "simulate", "probe_rank_fidelity"]


@dataclass
class Spec:
    """One simulated fly scan with a drifting probe.

    Attributes
    ----------
    frame : int
        Frame side ``N`` (pixels).
    energy_kev, distance_m, detector_pixel_m : float
        Far-field geometry.
    phase_rad, absorption, feature_px : float
        Object: peak-to-peak phase, peak amplitude loss, feature size (pixels).
    probe_radius_px : float
        Radius of the probe's aperture (pixels).
    lines, per_line : int
        The snake raster: lines and frames per line.
    step_px : float
        Distance between lines and between frames along a line (pixels).
    amp_drift : float
        Relative flux variation (amplitude factor ``1 +- amp_drift``).
    shift_px : float
        Beam drift along x: from ``-shift_px`` to ``+shift_px`` pixels over the scan.
    defocus_dof : float
        Defocus drift: from ``-defocus_dof`` to ``+defocus_dof`` depths of field (``2 dx**2 / lam``).
    cycles : float
        0: a slow drift over the scan; c > 0: beam position and focus wander back and forth c times.
    photons : float or None
        Mean photons per frame (Poisson noise); None: noiseless.
    seed : int
        Random seed of everything.
    """

    frame: int = 64
    energy_kev: float = 8.0
    distance_m: float = 2.0
    detector_pixel_m: float = 75e-6
    phase_rad: float = 1.0
    absorption: float = 0.2
    feature_px: float = 2.0
    probe_radius_px: float = 12.0
    lines: int = 12
    per_line: int = 12
    step_px: float = 5.0
    amp_drift: float = 0.3
    shift_px: float = 2.0
    defocus_dof: float = 20.0
    cycles: float = 0.0
    photons: float = None
    seed: int = 3



def object_texture(shape, rng, phase_rad, absorption, feature_px):
    """A transmission ``(1 - absorption * t) exp(i phase_rad * u)`` of random textures (``u``, ``t`` in [0, 1])."""
    u = _smooth(shape, rng, feature_px)
    u = (u - u.min()) / (u.max() - u.min())
    t = _smooth(shape, rng, 1.5 * feature_px)
    t = (t - t.min()) / (t.max() - t.min())
    return (1.0 - absorption * t) * np.exp(1j * phase_rad * u)



def subpixel_shift(a, dy, dx):
    """``a`` moved by ``(dy, dx)`` pixels (periodic, Fourier phase ramp)."""
    ky = np.fft.fftfreq(a.shape[-2])[:, None]
    kx = np.fft.fftfreq(a.shape[-1])[None, :]
    return np.fft.ifft2(np.fft.fft2(a) * np.exp(-2j * np.pi * (ky * dy + kx * dx)))


def diffuser_probe(n, rng, radius_px, lam, dx):
    """A soft round aperture times a smooth random phase screen, propagated by four depths of field; unit power."""
    y, x = np.mgrid[:n, :n] - n // 2
    r = np.hypot(y, x)
    aperture = 0.5 * (1 - np.tanh((r - radius_px) / 1.5))
    screen = np.exp(1j * 2.0 * _smooth((n, n), rng, 2.0))
    probe = angular_spectrum(aperture * screen, lam, dx, 4.0 * 2 * dx * dx / lam)
    return probe / np.sqrt(np.sum(np.abs(probe) ** 2))


def drifting_probes(base, times, spec, lam, dx):
    """The probe of every frame (module docstring); returns ``(probes (T, N, N), amplitude, shift_px, defocus_m)``."""
    T = float(max(len(times) - 1, 1))
    tt = np.asarray(times, float) / T                       # 0 .. 1 over the scan
    amplitude = 1.0 + spec.amp_drift * np.sin(2 * np.pi * 1.3 * tt)
    dof = 2.0 * dx * dx / lam
    if spec.cycles > 0:
        shift = spec.shift_px * np.sin(2 * np.pi * spec.cycles * tt)
        defocus = spec.defocus_dof * dof * np.cos(2 * np.pi * 0.7 * spec.cycles * tt)
    else:
        shift = spec.shift_px * (2.0 * tt - 1.0)
        defocus = -spec.defocus_dof * dof * np.cos(np.pi * tt)
    probes = np.empty((len(tt),) + base.shape, dtype=complex)
    for i in range(len(tt)):
        p = angular_spectrum(base, lam, dx, defocus[i])
        probes[i] = amplitude[i] * subpixel_shift(p, 0.0, shift[i])
    return probes, amplitude, shift, defocus


def snake_positions(lines, per_line, step_px, rng):
    """Top-left pixel offsets (y, x) of a snake raster in time order (a little jitter across the lines), from 0."""
    pos = []
    for j in range(lines):
        xs = np.arange(per_line) * step_px
        if j % 2:
            xs = xs[::-1]
        for x in xs:
            pos.append((j * step_px + rng.uniform(-0.3, 0.3), x + rng.uniform(-0.3, 0.3)))
    pos = np.asarray(pos)
    return np.rint(pos - pos.min(axis=0)).astype(int)


def far_field(psi, lam, dx, z):
    """Detector amplitudes (N, N) of exit wave ``psi`` (N, N): Fresnel far field, zero frequency at ``N // 2``."""
    n = psi.shape[-1]
    y, x = (np.mgrid[:n, :n] - n // 2) * dx
    w = psi * np.exp(1j * np.pi * (y ** 2 + x ** 2) / (lam * z))
    return np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(w), norm="ortho"))


def simulate(spec, path):
    """Simulate ``spec``, write the scan to ``path`` (``.npz``) and return the ground truth.

    Returns
    -------
    dict
        ``object`` (H, W), ``object_center`` (pixel of the physical origin), ``probes`` (T, N, N) in frame
        order, ``base_probe`` (N, N), ``amplitude``, ``shift_px``, ``defocus_m`` (T,), ``positions_m`` (T, 2),
        ``corners`` (T, 2) top-left pixels, ``dx`` (m), ``lam`` (m), ``path``.
    """
    rng = np.random.default_rng(spec.seed)
    n = int(spec.frame)
    lam = wavelength_m(spec.energy_kev)
    dx = lam * spec.distance_m / (n * spec.detector_pixel_m)
    corners = snake_positions(spec.lines, spec.per_line, spec.step_px, rng) + n // 4
    shape = tuple(int(v) for v in corners.max(axis=0) + n + n // 4 + 1)
    obj = object_texture(shape, rng, spec.phase_rad, spec.absorption, spec.feature_px)
    base = diffuser_probe(n, rng, spec.probe_radius_px, lam, dx)
    probes, amplitude, shift, defocus = drifting_probes(base, np.arange(len(corners)), spec, lam, dx)
    frames = np.empty((len(corners), n, n))
    for i, (y0, x0) in enumerate(corners):
        frames[i] = np.abs(far_field(probes[i] * obj[y0:y0 + n, x0:x0 + n], lam, dx, spec.distance_m)) ** 2
    if spec.photons:
        scale = float(spec.photons) / frames.sum(axis=(1, 2)).mean()
        frames = rng.poisson(frames * scale).astype(np.float64)
        probes = probes * np.sqrt(scale)
        base = base * np.sqrt(scale)
    center = np.rint((corners + n // 2).mean(axis=0)).astype(int)
    positions = (corners + n // 2 - center) * dx
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    np.savez(path, intensities=frames, positions=positions, energy=np.float64(spec.energy_kev),
             distance=np.float64(spec.distance_m), psize=np.float64(spec.detector_pixel_m))
    return dict(object=obj, object_center=center, probes=probes, base_probe=base, amplitude=amplitude,
                shift_px=shift, defocus_m=defocus, positions_m=positions, corners=corners, dx=dx, lam=lam,
                path=os.fspath(path))


def probe_rank_fidelity(probes, K):
    """Per-frame correlation of the probes with their best rank-``K`` approximation (truncated SVD), (T,).

    How well ``K`` eigen-probes can describe the drift at all (1: exactly).
    """
    A = probes.reshape(len(probes), -1)
    u, s, vh = np.linalg.svd(A, full_matrices=False)
    B = (u[:, :K] * s[:K]) @ vh[:K]
    num = np.abs(np.sum(np.conj(A) * B, axis=1))
    return num / np.sqrt(np.sum(np.abs(A) ** 2, axis=1) * np.sum(np.abs(B) ** 2, axis=1))
