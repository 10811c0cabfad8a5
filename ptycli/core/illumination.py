"""Initial guesses of the probe (illumination), as pure functions on arrays.

The entry point is :func:`init_probe`, which turns the declared
``scans.<label>.illumination`` parameters into a stack of probe modes of shape
``(modes, rows, cols)``. The models:

``auto``
    Derived from the data (:func:`~ptycli.core.probe_guess.probe_from_data`): several candidate
    guesses (the wavefront-curvature guess for defocused and zone-plate
    probes, the back-propagated mean pattern for focused probes and
    near-field illumination, a support-constrained guess for plain
    apertures, a flat wave in near field) each start a short trial
    reconstruction on the frames nearest the scan centre
    (:mod:`ptycli.core.probe_trial`); the one whose model explains the data
    best is kept, scaled to the measured photon count. The choice and every
    candidate's trial error are logged and stored with the scan.
``flat``
    A constant over the frame.
``aperture``
    A circular (``circ``) or rectangular (``rect``) aperture with a smooth
    edge, an optional central stop and offset; optionally propagated.
``focused``
    An aperture with a lens phase, propagated to its focus
    (``propagation.focussed`` sets the focal distance).
``moon``
    The procedural moon test probe of :mod:`ptycli.resources`.
a path
    A ``.npy`` file (2D, or 3D with modes) or an earlier ptycli result
    (``.h5``), resized to the frame by cropping/padding about the centre.

Extra modes get random diversity (``diversity.noise`` amplitude and phase
noise), a power fraction ``diversity.power`` of the first mode each, and are
orthogonalised and ordered by power.
"""

import logging
import os

import numpy as np

from .. import parallel
from ..errors import ConfigError, DataError
from ..utils.array_utils import crop_pad_symmetric_2d, smooth_step
from .probe_guess import mean_measured_pattern, probe_from_data  # noqa: F401 (re-exported)

__all__ = ["init_probe", "aperture", "probe_from_data", "orthogonalize_modes", "add_modes",
           "load_array", "fit_frame"]

log = logging.getLogger("ptycli")

AUTO_MODELS = ("auto", "flat", "aperture", "focused", "moon")


def aperture(shape, psize_m, form="circ", size_m=None, size_fraction=0.5, edge_px=2.0,
             central_stop=None, offset_m=(0.0, 0.0)):
    """A real aperture transmission on a frame centred at ``shape // 2``.

    Parameters
    ----------
    shape : (int, int)
        Frame shape in pixels.
    psize_m : (float, float)
        Sample-plane pixel size in metres.
    form : {'circ', 'rect'}
        Circular (``size`` is the diameter) or rectangular (full widths).
    size_m : float or (float, float), optional
        Aperture size in metres; None uses ``size_fraction`` of the frame.
    size_fraction : float
        Size as a fraction of the frame width when ``size_m`` is None.
    edge_px : float
        Width of the smooth edge in pixels (0 for a hard edge).
    central_stop : float, optional
        Diameter of a central stop as a fraction of the aperture size.
    offset_m : (float, float)
        Shift of the aperture centre (y, x) in metres.

    Returns
    -------
    ndarray of float64, shape ``shape``
    """
    shape = tuple(int(s) for s in shape)
    psize_m = np.broadcast_to(np.asarray(psize_m, dtype=float), (2,))
    offset_m = np.broadcast_to(np.asarray(offset_m, dtype=float), (2,))
    if size_m is None:
        size = np.array(shape, dtype=float) * psize_m * size_fraction
    else:
        size = np.broadcast_to(np.asarray(size_m, dtype=float), (2,))
    y = (np.arange(shape[0]) - shape[0] // 2) * psize_m[0] - offset_m[0]
    x = (np.arange(shape[1]) - shape[1] // 2) * psize_m[1] - offset_m[1]
    yy, xx = np.meshgrid(y, x, indexing="ij")
    edge = edge_px * float(np.min(psize_m))
    if form == "circ":
        # elliptical in general: distance in units of the semi-axes, scaled to metres
        r = np.sqrt((yy / (size[0] / 2)) ** 2 + (xx / (size[1] / 2)) ** 2) * (np.min(size) / 2)
        ap = smooth_step(np.min(size) / 2 - r, edge)
        if central_stop:
            ap = ap * smooth_step(r - central_stop * np.min(size) / 2, edge)
    elif form == "rect":
        ap = smooth_step(size[0] / 2 - np.abs(yy), edge) * smooth_step(size[1] / 2 - np.abs(xx), edge)
        if central_stop:
            stop = central_stop * size / 2
            ap = ap * (1 - smooth_step(stop[0] - np.abs(yy), edge) * smooth_step(stop[1] - np.abs(xx), edge))
    else:
        raise ConfigError("illumination.aperture.form: unknown form %r; valid: circ, rect" % (form,))
    return np.asarray(ap, dtype=float)


def load_array(path, what):
    """Load a 2D/3D array from ``.npy`` or from an earlier ptycli result/HDF5 file.

    For HDF5, the dataset is found at ``/<what>`` or the first dataset in the
    group ``/<what>`` or ``/reconstruction/<what>``.
    """
    if not os.path.exists(path):
        raise ConfigError("%s file %s does not exist; give an existing .npy or .h5 file" % (what, path))
    if path.endswith(".npy"):
        try:
            return np.load(path, allow_pickle=False)
        except Exception as exc:  # corrupt or not numpy
            raise DataError("cannot read %s from %s: %s" % (what, path, exc)) from None
    from ..io.h5guard import check_structure

    check_structure(path)  # a hang or crash of libhdf5 on a damaged file becomes a DataError
    try:
        import h5py

        with h5py.File(path, "r") as f:
            for key in ("reconstruction/%s" % what, what):
                if key in f:
                    node = f[key]
                    if isinstance(node, h5py.Dataset):
                        return node[()]
                    for name in node:
                        if isinstance(node[name], h5py.Dataset):
                            return node[name][()]
    except OSError as exc:
        raise DataError("cannot read %s from %s: %s" % (what, path, exc)) from None
    raise DataError("no %s found in %s (looked for /%s and /reconstruction/%s)" % (what, path, what, what))


def fit_frame(arr, shape):
    """Crop or pad the last two axes of ``arr`` about their centre to ``shape``."""
    arr = np.asarray(arr)
    if tuple(arr.shape[-2:]) == tuple(shape):
        return arr
    lead = arr.shape[:-2]
    flat = arr.reshape((-1,) + arr.shape[-2:])
    out = np.stack([crop_pad_symmetric_2d(a, tuple(shape))[0] for a in flat])
    return out.reshape(lead + tuple(shape))


def orthogonalize_modes(modes):
    """Orthogonalise a stack of modes, keeping their total power, ordered by power.

    Parameters
    ----------
    modes : ndarray (m, rows, cols)

    Returns
    -------
    ndarray (m, rows, cols)
        Modes with ``vdot(a, b) == 0`` for ``a != b``, strongest first, whose
        incoherent sum of intensities equals the input's.
    """
    m = modes.shape[0]
    if m == 1:
        return modes.copy()
    flat = modes.reshape(m, -1)
    # eigen-decomposition of the m x m overlap matrix (cheap for few modes)
    overlap = flat.conj() @ flat.T
    evals, evecs = np.linalg.eigh(overlap)
    order = np.argsort(evals)[::-1]
    evecs = evecs[:, order]
    new = evecs.T @ flat
    return new.reshape(modes.shape).astype(modes.dtype, copy=False)


def add_modes(first, num_modes, noise=(0.5, 1.0), power=0.1, seed=1):
    """Stack of ``num_modes`` modes from one, with random diversity.

    Extra mode ``k`` is the first mode times amplitude noise ``noise[0]`` and
    phase noise ``noise[1]`` (radians, smooth over a few pixels), with power
    ``power`` times the first mode's; the stack is then orthogonalised.
    """
    first = np.asarray(first, dtype=np.complex128)
    if num_modes <= 1:
        return first[None].copy()
    from scipy.ndimage import gaussian_filter  # (here: one mode, the common case, needs no scipy)

    rng = np.random.default_rng(seed)
    p0 = float(np.sum(np.abs(first) ** 2))
    modes = [first]
    for _ in range(num_modes - 1):
        amp = 1 + noise[0] * gaussian_filter(rng.standard_normal(first.shape), 2.0) * 3
        ph = noise[1] * gaussian_filter(rng.standard_normal(first.shape), 2.0) * 3
        extra = first * amp * np.exp(1j * ph)
        pk = float(np.sum(np.abs(extra) ** 2))
        if pk > 0:
            extra *= np.sqrt(power * p0 / pk)
        modes.append(extra)
    modes = np.stack(modes)
    total = float(np.sum(np.abs(modes) ** 2))
    modes = orthogonalize_modes(modes)
    new_total = float(np.sum(np.abs(modes) ** 2))
    if new_total > 0:
        modes *= np.sqrt(total / new_total)
    return modes


def init_probe(pars, shape, psize_m, propagator, num_modes=1, intensities=None, mask=None,
               lam_m=None, default_model="auto", positions_m=None, info=None, noise_floor=0.0, local_engine=False):
    """Probe modes from the ``illumination`` parameters.

    Parameters
    ----------
    pars : Param
        Validated ``scans.<label>.illumination`` parameters.
    shape : (int, int)
        Frame shape in pixels.
    psize_m : (float, float)
        Sample-plane pixel size in metres.
    propagator : object with ``fw``/``bw``
        The scan's propagator (for ``auto``).
    num_modes : int
        Number of probe modes.
    intensities, mask : ndarray, optional
        This process's data, needed by ``auto`` and for photon scaling.
    lam_m : float, optional
        Wavelength in metres, needed by ``focused`` and propagation options.
    default_model : str
        The model used for ``'auto'`` (scan models may prefer another).
    positions_m : ndarray (n, 2), optional
        This process's scan positions (y, x) in metres, in the order of
        ``intensities``. ``auto`` uses them to measure the wavefront
        curvature and to try its candidates (see :func:`probe_from_data`);
        without them it falls back to a support-constrained guess that suits
        weakly curved probes only.
    info : dict, optional
        Filled by ``auto`` with how the guess was chosen (see
        :func:`probe_from_data`).
    noise_floor : float
        Counting-noise floor of the amplitudes, for ``auto`` (see :func:`probe_from_data`).
    local_engine : bool
        The first engine moves the probe by local steps, for ``auto`` (see :func:`probe_from_data`).

    Returns
    -------
    ndarray complex128 (num_modes, rows, cols)
    """
    model = pars.get("model") or "auto"
    if model == "auto":
        model = default_model
    shape = tuple(int(s) for s in shape)
    psize_m = np.broadcast_to(np.asarray(psize_m, dtype=float), (2,))
    ap = pars.get("aperture") or {}
    prop = pars.get("propagation") or {}
    # total power the modes end with: the guess's own for data-derived probes
    # (already the measured photons) and earlier results (already on a model's
    # scale); the measured photons per frame otherwise, also for a probe read
    # from a .npy file, whose scale may come from anywhere (``photons`` wins)
    target = None
    if model == "auto":
        if intensities is None:
            raise ConfigError("illumination.model 'auto' needs data; choose another illumination.model")
        positions = None
        if positions_m is not None:
            positions = np.asarray(positions_m, dtype=float).reshape(-1, 2) / psize_m
        probe = probe_from_data(intensities, mask, propagator, positions=positions, info=info,
                                noise_floor=noise_floor, local_engine=local_engine)
        target = float(np.sum(np.abs(probe) ** 2))
    elif model == "flat":
        probe = np.ones(shape, dtype=np.complex128)
    elif model in ("aperture", "focused"):
        probe = aperture(shape, psize_m, form=ap.get("form", "circ"), size_m=ap.get("size"),
                         size_fraction=ap.get("size_fraction", 0.5), edge_px=ap.get("edge", 2.0),
                         central_stop=ap.get("central_stop"), offset_m=ap.get("offset") or (0.0, 0.0)
                         ).astype(np.complex128)
        focal = prop.get("focussed")
        if model == "focused" and focal is None:
            raise ConfigError("illumination.propagation.focussed: the 'focused' model needs the focal "
                              "distance in metres; set it, or use model: aperture")
        if focal is not None:
            if lam_m is None:
                raise ConfigError("illumination.propagation.focussed needs the wavelength (energy)")
            probe = _focus(probe, psize_m, lam_m, focal)
    elif model == "moon":
        from ..resources import moon_pr

        probe = moon_pr(shape).astype(np.complex128)
    else:
        arr = np.asarray(load_array(str(model), "probe"))
        if arr.ndim not in (2, 3):
            raise DataError("probe in %s has %d dimensions; expected a 2D frame or a 3D stack of modes"
                            % (model, arr.ndim))
        arr = fit_frame(arr.astype(np.complex128), shape)
        if not str(model).lower().endswith(".npy"):
            # an earlier result: its probe is already on this model's photon scale
            target = float(np.sum(np.abs(arr[:num_modes] if arr.ndim == 3 else arr) ** 2))
        if arr.ndim == 3 and arr.shape[0] >= num_modes:
            return _scale_photons(arr[:num_modes].copy(), pars.get("photons") or target, intensities, mask)
        probe = arr if arr.ndim == 2 else arr[0]
    defocus = prop.get("parallel")
    if defocus and model != "auto":
        if lam_m is None:
            raise ConfigError("illumination.propagation.parallel needs the wavelength (energy)")
        probe = _angular_spectrum(probe, psize_m, lam_m, defocus)
    div = pars.get("diversity") or {}
    modes = add_modes(probe, num_modes, noise=tuple(div.get("noise", (0.5, 1.0))),
                      power=div.get("power", 0.1), seed=div.get("seed", 1))
    return _scale_photons(modes, pars.get("photons") or target, intensities, mask)


def _scale_photons(modes, photons, intensities, mask):
    """Scale modes so that their total power is ``photons``.

    With ``photons`` None, the mean measured counts per frame (summed over
    MPI ranks) are used; without data the modes are returned unscaled.
    """
    if photons is None and intensities is not None:
        valid = np.asarray(mask, dtype=bool) if mask is not None else np.ones(intensities.shape, bool)
        sums = np.array([float(np.where(valid, intensities, 0).sum(dtype=np.float64)), float(intensities.shape[0])])
        parallel.allreduce(sums)
        photons = sums[0] / max(sums[1], 1.0)
    if photons is None:
        return modes
    power = float(np.sum(np.abs(modes) ** 2))
    if power > 0:
        modes = modes * np.sqrt(photons / power)
    return modes


def _angular_spectrum(w, psize_m, lam_m, distance_m):
    """Angular-spectrum propagation of one frame over ``distance_m``."""
    ny, nx = w.shape
    fy = np.fft.fftfreq(ny, psize_m[0])
    fx = np.fft.fftfreq(nx, psize_m[1])
    fyy, fxx = np.meshgrid(fy, fx, indexing="ij")
    arg = 1.0 / lam_m**2 - fyy**2 - fxx**2
    kernel = np.exp(2j * np.pi * distance_m * np.sqrt(np.clip(arg, 0, None))) * (arg > 0)
    w = np.fft.ifftshift(w)
    out = np.fft.ifft2(np.fft.fft2(w) * kernel)
    return np.fft.fftshift(out)


def _focus(aperture_wave, psize_m, lam_m, focal_m):
    """Aperture times a thin-lens phase, propagated to the focus.

    The lens focal spot is computed by a Fourier transform (far field of the
    lens at its focal plane) and resampled so that it lies on the sample
    grid: a lens of focal length ``f`` maps the aperture plane to a focal
    plane of pixel size ``lam f / (N psize)``. The result is re-expressed on
    the sample grid by zero-padding or cropping in Fourier space.
    """
    # far field of the aperture at the focal plane
    spot = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(aperture_wave)))
    ny, nx = aperture_wave.shape
    focal_psize = lam_m * focal_m / (np.array([ny, nx]) * psize_m)
    # resample focal plane onto the sample grid
    from scipy.ndimage import zoom as _zoom

    factor = focal_psize / psize_m
    re = _zoom(spot.real, factor, order=1)
    im = _zoom(spot.imag, factor, order=1)
    out = fit_frame(re + 1j * im, (ny, nx))
    return out
