"""MoonFlowerScan: a simulated far-field or near-field ptychography scan for tests and demos.

The probe is the procedural moon (or a defocused ring-shaped aperture
probe), the object the procedural flower field of :mod:`ptycli.resources`.
Positions follow a scan pattern of :mod:`ptycli.core.xy` with a step of
``density`` times the frame width, snapped to the object pixel grid so that
the ground truth and the reconstruction grid agree exactly. Each frame is
``sum_modes |fw(probe_mode * object_patch)|^2`` with the propagator of the
scan's ``propagation`` (:attr:`ScanLoader.propagation`, set from
``scans.<label>.propagation``; 'farfield' when unset): far field (Fresnel,
sample pixel ``lam z / (N psize)``) or near field (angular spectrum over
``distance``, sample pixel = detector pixel; without ``distance``/``psize``
the near-field defaults are 5 mm and 100 nm, a Fresnel number of 0.01 per
pixel at 6.2 keV). Optionally blurred by a
Gaussian detector point-spread function and drawn with Poisson noise from a
generator seeded by ``(seed, frame index)``, so every MPI split of the frames
gives identical data. Each rank simulates only its own frames.

The ground truth (object, probe modes, true positions, pixel size and the
object's pixel centre) is kept in ``ScanData.ground_truth``.
"""

import numpy as np

from .. import parallel
from ..core import xy
from ..core.illumination import _angular_spectrum, add_modes, aperture
from ..core.propagation import get_propagator
from ..params.declare import Parameter
from .base import ScanLoader, check_memory, register

__all__ = ["MoonFlowerScan", "simulate_model", "sample_pixel"]

_DEFAULTS = dict(shape=128, num_frames=100, energy=6.2, distance=7.0, psize=172e-6)
#: near field: an effective (magnified) pixel of 100 nm 5 mm from the sample,
#: i.e. a Fresnel number psize**2 / (lam z) of 0.01 per pixel at 6.2 keV
_NEARFIELD_DEFAULTS = dict(distance=5e-3, psize=100e-9)


def _defocused_probe(shape, psize_m, lam_m):
    """A ring-structured, out-of-focus probe.

    An annular aperture (half the frame wide, central stop 40 %, soft edge)
    propagated to a Fresnel number of 6 gives a bright ring with a dim
    centre; a quadratic phase of 3 pi at 30 % of the frame width models the
    wavefront curvature of a probe observed away from its focus.
    """
    ap = aperture(shape, psize_m, form="circ", size_fraction=0.5, edge_px=3.0, central_stop=0.4)
    radius = 0.25 * shape[0] * psize_m[0]
    ring = _angular_spectrum(ap.astype(np.complex128), psize_m, lam_m, radius**2 / (lam_m * 6.0))
    yy, xx = np.indices(shape)
    r2 = ((yy - shape[0] // 2) ** 2 + (xx - shape[1] // 2) ** 2) / (0.3 * min(shape)) ** 2
    return ring * np.exp(3j * np.pi * r2)


def sample_pixel(shape, energy_kev, distance_m, psize_m, propagation="farfield"):
    """Sample-plane pixel size (y, x) in metres of a scan geometry.

    Far field ``lam z / (N psize)`` per axis; near field the detector pixel.
    """
    psize = np.broadcast_to(np.asarray(psize_m, float), (2,)).copy()
    if propagation == "nearfield":
        return psize
    lam = 1.23984193e-9 / energy_kev
    return lam * distance_m / (np.array(shape, dtype=float) * psize)


def simulate_model(p, shape, energy_kev, distance_m, psize_m, propagation="farfield"):
    """Probe modes, object and positions of a MoonFlower scan.

    ``propagation`` ('farfield' or 'nearfield') sets the sample pixel
    (:func:`sample_pixel`), and so the positions' metres.

    Returns
    -------
    dict
        ``probe`` (modes, H, W) complex128 scaled to ``photons``, ``object``
        (Ho, Wo) complex128, ``object_center`` (2,) pixel of the physical
        origin in the object, ``resolution`` (2,) m, ``positions`` (N, 2) m
        (true, on the pixel grid), ``positions_reported`` (N, 2) m (with
        ``position_noise``), ``pixel_offsets`` (N, 2) int top-left corners.
    """
    from ..resources import flower_obj, moon_pr

    shape = tuple(int(s) for s in shape)
    lam = 1.23984193e-9 / energy_kev
    resolution = sample_pixel(shape, energy_kev, distance_m, psize_m, propagation)
    frame_m = np.array(shape) * resolution
    n = int(p.num_frames or _DEFAULTS["num_frames"])
    spacing = float(p.density) * frame_m
    # enough points of the pattern, centred on the origin, then cut to n
    if p.pattern == "round":
        shells = 1
        while 1 + 5 * shells * (shells + 1) // 2 < n:
            shells += 1
        pos = xy.round_scan(spacing, shells)
    elif p.pattern == "spiral":
        r = spacing * (np.sqrt(n / np.pi) * 1.2 + 2)
        pos = xy.spiral_scan(spacing, r)
    else:  # raster
        side = int(np.ceil(np.sqrt(n)))
        pos = xy.raster_scan(side, side, spacing[0], spacing[1])
    pos = pos[:n]
    pix = np.round(pos / resolution).astype(int)
    positions = pix * resolution
    rng = np.random.default_rng([int(p.seed), 7])
    reported = positions + (rng.standard_normal(positions.shape) * float(p.position_noise) * resolution
                            if p.position_noise else 0.0)
    # object covering every frame with a margin of 8 pixels
    half = np.array(shape) // 2
    lo = pix.min(axis=0) - half - 8
    hi = pix.max(axis=0) + (np.array(shape) - half) + 8
    obj_shape = tuple(int(v) for v in hi - lo)
    obj = flower_obj(obj_shape).astype(np.complex128)
    center = -lo  # pixel of the physical origin in the object
    offsets = pix + center - half
    if p.probe == "moon":
        probe0 = moon_pr(shape).astype(np.complex128)
    else:
        probe0 = _defocused_probe(shape, resolution, lam)
    nmodes = int(p.probe_modes)
    if nmodes > 1:
        probe = add_modes(probe0, nmodes, noise=(0.8, 1.5), power=1.0, seed=int(p.seed) + 11)
        # explicit power split: mode k gets probe_mode_power ** k of the first's
        weights = np.array([float(p.probe_mode_power) ** k for k in range(nmodes)])
        powers = np.sum(np.abs(probe) ** 2, axis=(1, 2))
        probe = probe * np.sqrt(weights / powers)[:, None, None]
    else:
        probe = probe0[None]
    probe *= np.sqrt(float(p.photons) / np.sum(np.abs(probe) ** 2))
    return dict(probe=probe, object=obj, object_center=center.astype(float), resolution=resolution,
                positions=positions, positions_reported=reported, pixel_offsets=offsets)


@register
class MoonFlowerScan(ScanLoader):
    """Simulated scan of the procedural flower object with the moon probe."""

    NAME = "MoonFlowerScan"
    PARAMS = ScanLoader.PARAMS.extended("MoonFlowerScan", [
        Parameter("num_frames", None, "int", "number of simulated frames (null = 100)", low=1,
                  nullable=True),
        Parameter("shape", None, "intpair", "frame shape (null = 128)", low=8, high=4096, nullable=True,
                  unit="pixel"),
        Parameter("energy", None, "float", "photon energy (null = 6.2)", low=0.0, nullable=True,
                  unit="keV"),
        Parameter("distance", None, "float", "sample-detector distance (null = 7.0; near field 5e-3)", low=0.0,
                  nullable=True, unit="m"),
        Parameter("psize", None, "pair", "detector pixel size (null = 172e-6; near field 100e-9, the sample pixel)", low=0.0,
                  nullable=True, unit="m"),
        Parameter("density", 0.2, "float", "scan step as a fraction of the frame width",
                  low=0.01, high=1.0),
        Parameter("pattern", "round", "str", "scan pattern", choices=["round", "spiral", "raster"]),
        Parameter("photons", 1e8, "float", "photons in the probe (all modes) per frame", low=0.0,
                  high=1e15),
        Parameter("add_poisson_noise", True, "bool", "draw Poisson-distributed counts"),
        Parameter("psf", 0.0, "float", "Gaussian detector point-spread sigma (0 = none)", low=0.0,
                  high=64.0, unit="pixel"),
        Parameter("seed", 0, "int", "seed of the noise and position generators", low=0),
        Parameter("probe", "moon", "str", "simulated probe: the moon, or a defocused ring-shaped "
                  "aperture probe", choices=["moon", "defocused"]),
        Parameter("probe_modes", 1, "int", "incoherent probe modes in the simulation", low=1, high=8),
        Parameter("probe_mode_power", 0.25, "float",
                  "power of probe mode k relative to the first is probe_mode_power**k", low=0.0, high=1.0),
        Parameter("position_noise", 0.0, "float",
                  "std of random errors added to the reported positions", low=0.0, unit="pixel"),
    ], doc="simulated MoonFlower scan")

    @property
    def sim_propagation(self):
        """The propagation simulated: the scan's (:attr:`propagation`), else 'farfield'."""
        return self.propagation or "farfield"

    def _propagation_changed(self):
        self._meta = None
        self._model = None

    def recorded_propagation(self):
        """None: a simulation records no propagation, it simulates the scan's."""
        return None

    def _sim_geometry(self):
        p = self.pars
        defaults = dict(_DEFAULTS)
        if self.sim_propagation == "nearfield":
            defaults.update(_NEARFIELD_DEFAULTS)
        shape = tuple(p.shape) if p.get("shape") is not None else (defaults["shape"],) * 2
        energy = p.energy if p.get("energy") is not None else defaults["energy"]
        distance = p.distance if p.get("distance") is not None else defaults["distance"]
        psize = np.broadcast_to(np.asarray(p.psize if p.get("psize") is not None else defaults["psize"],
                                           float), (2,)).copy()
        return shape, float(energy), float(distance), psize

    def memory_estimate(self):
        """Bytes this process would allocate to simulate the scan (frames, mask, object, positions).

        Frames and mask take 5 bytes a pixel for this process's share plus one
        block being simulated; the object covers the scan (about ``sqrt(n) *
        density`` frame widths a side, plus a frame and a margin) and, with the
        flower generator's work arrays, takes about 64 bytes a pixel.
        """
        shape = self._sim_geometry()[0]
        n = float(self.pars.num_frames or _DEFAULTS["num_frames"])
        h, w = (float(v) for v in shape)
        side = np.sqrt(n) * float(self.pars.density) * 1.2
        frames = 5.0 * h * w * (np.ceil(n / max(parallel.size, 1)) + min(64.0, n))
        obj = 64.0 * (side * h + h + 16) * (side * w + w + 16)
        return frames + obj + 64.0 * n

    def model(self):
        """The simulation's ground truth (computed once, see :func:`simulate_model`).

        The memory it needs is checked first (:meth:`memory_estimate`): a scan
        that cannot fit is a ConfigError before anything is allocated.
        """
        if getattr(self, "_model", None) is None:
            shape = self._sim_geometry()[0]
            check_memory(self.memory_estimate(), "%s: a MoonFlowerScan of %d frames of %dx%d" % (
                self.path, int(self.pars.num_frames or _DEFAULTS["num_frames"]), shape[0], shape[1]),
                hint="simulate fewer frames (%s) or smaller ones (%s)" % (
                    self._where("num_frames"), self._where("shape")))
            shape, energy, distance, psize = self._sim_geometry()
            self._model = simulate_model(self.pars, shape, energy, distance, psize,
                                         propagation=self.sim_propagation)
        return self._model

    @property
    def source(self):
        return "MoonFlowerScan"

    def read_meta(self):
        shape, energy, distance, psize = self._sim_geometry()
        m = self.model()
        n = int(self.pars.num_frames or _DEFAULTS["num_frames"])
        truth = dict(object=m["object"], probe=m["probe"], object_center=m["object_center"],
                     resolution_m=m["resolution"], positions_m=m["positions"])
        return dict(num_frames=n, frame_shape=shape, energy_kev=energy, distance_m=distance,
                    psize_m=psize, positions_unit="m", center=np.array(shape) // 2,
                    label="MoonFlower", ground_truth=truth)

    def read_frames(self, start, stop):
        from scipy.ndimage import gaussian_filter

        p = self.pars
        shape, energy, distance, psize = self._sim_geometry()
        m = self.model()
        lam = 1.23984193e-9 / energy
        prop = get_propagator(self.sim_propagation, shape, lam, distance, psize)
        h, w = shape
        out = np.empty((stop - start, h, w), dtype=np.float32)
        for i0 in range(start, stop, 64):  # bounded memory for large scans
            i1 = min(i0 + 64, stop)
            off = m["pixel_offsets"][i0:i1]
            patches = np.stack([m["object"][y:y + h, x:x + w] for y, x in off])
            intensity = np.zeros((i1 - i0, h, w))
            for mode in m["probe"]:
                intensity += np.abs(prop.fw(patches * mode)) ** 2
            if p.psf:
                intensity = gaussian_filter(intensity, (0, float(p.psf), float(p.psf)))
            if p.add_poisson_noise:
                for k in range(i1 - i0):
                    rng = np.random.default_rng([int(p.seed), i0 + k])
                    intensity[k] = rng.poisson(intensity[k])
            out[i0 - start:i1 - start] = intensity
        return dict(data=out, positions=m["positions_reported"][start:stop].copy())
