"""Initial guesses of the object (sample transmission), as pure functions.

``sample.model`` is ``fill`` (a constant ``fill * exp(i fill_phase)``),
``flower`` (the procedural test object of :mod:`ptycli.resources`), or a path
to a ``.npy`` array or an earlier ptycli result, cropped or padded about the
centre to the object storage. Extra object modes are the first one with
diversity noise and a power fraction, as for the probe.
"""

import numpy as np

from .illumination import add_modes, fit_frame, load_array

__all__ = ["init_object"]


def init_object(pars, shape, num_modes=1):
    """Object modes from the ``sample`` parameters.

    Parameters
    ----------
    pars : Param
        Validated ``scans.<label>.sample`` parameters.
    shape : (int, int)
        Object storage shape in pixels.
    num_modes : int
        Number of object modes.

    Returns
    -------
    ndarray complex128 (num_modes, rows, cols)
    """
    model = pars.get("model") or "fill"
    shape = tuple(int(s) for s in shape)
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
