"""Initial guesses of the object (sample transmission), as pure functions.

``sample.model`` is ``fill`` (a constant ``fill * exp(i fill_phase)``),
``flower`` (the procedural test object of :mod:`ptycli.resources`), or a path
to a ``.npy`` array or an earlier ptycli result, cropped or padded about the
centre to the object storage. Extra object modes are the first one with
diversity noise and a power fraction, as for the probe.

A multislice sample (``slices = S > 1``, one mode) starts as ``S`` slices
whose product is the model: each slice of the ``fill`` model is
``fill**(1/S) exp(i fill_phase / S)``; the ``flower`` model or a file fills
the first slice and the others start transparent (1), except a file holding
exactly ``S`` layers (an earlier multislice result), whose layers become the
slices.
"""

import numpy as np

from .illumination import add_modes, fit_frame, load_array

__all__ = ["init_object"]


def init_object(pars, shape, num_modes=1, slices=1):
    """Object modes (or slices) from the ``sample`` parameters.

    Parameters
    ----------
    pars : Param
        Validated ``scans.<label>.sample`` parameters.
    shape : (int, int)
        Object storage shape in pixels.
    num_modes : int
        Number of object modes.
    slices : int
        Object slices (multislice; then ``num_modes`` must be 1).

    Returns
    -------
    ndarray complex128 (num_modes, rows, cols), or (slices, rows, cols)
    """
    model = pars.get("model") or "fill"
    shape = tuple(int(s) for s in shape)
    if slices > 1:
        return _init_slices(pars, model, shape, int(slices))
    if model == "fill":
        value = float(pars.get("fill", 1.0)) * np.exp(1j * float(pars.get("fill_phase", 0.0)))
        obj = np.full(shape, value, dtype=np.complex128)
    elif model == "flower":
        from ..resources import flower_obj

        obj = flower_obj(shape).astype(np.complex128)
    else:
        arr = np.asarray(load_array(str(model), "object"))
        if arr.ndim == 3:
            arr = arr[0]
        obj = fit_frame(arr.astype(np.complex128), shape)
        # padded border: continue with ones rather than zeros (a transparent object)
        if np.any(np.array(arr.shape[-2:]) < np.array(shape)):
            pad = fit_frame(np.ones(arr.shape[-2:], dtype=bool), shape)
            obj = np.where(pad, obj, 1.0 + 0j)
    if num_modes <= 1:
        return obj[None]
    div = pars.get("diversity") or {}
    noise = tuple(div.get("noise", (0.0, 0.0)))
    if noise == (0.0, 0.0):
        noise = (0.1, 0.1)
    return add_modes(obj, num_modes, noise=noise, power=div.get("power", 0.1), seed=div.get("seed", 1))


def _init_slices(pars, model, shape, slices):
    """``slices`` object slices whose product is the single-slice model (see the module docstring)."""
    out = np.ones((slices,) + shape, dtype=np.complex128)
    if model == "fill":
        amp = float(pars.get("fill", 1.0))
        phase = float(pars.get("fill_phase", 0.0)) + (np.pi if amp < 0 else 0.0)
        out[...] = abs(amp) ** (1.0 / slices) * np.exp(1j * phase / slices)
        return out
    if model not in ("flower",):
        arr = np.asarray(load_array(str(model), "object"))
        if arr.ndim == 3 and arr.shape[0] == slices:
            for s in range(slices):
                out[s] = fit_frame(arr[s].astype(np.complex128), shape)
                if np.any(np.array(arr.shape[-2:]) < np.array(shape)):
                    pad = fit_frame(np.ones(arr.shape[-2:], dtype=bool), shape)
                    out[s] = np.where(pad, out[s], 1.0 + 0j)
            return out
    single = dict(pars)
    single["slices"] = 1
    out[0] = init_object(single, shape, 1)[0]
    return out
