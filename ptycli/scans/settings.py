"""The common loader parameters (``scans.<label>.data``) and the functions that interpret them.

:data:`COMMON_PARAMS` declares what every loader reads: input, frame
selection, the frame-preparation settings and the geometry overrides. The
settings that need more than a type check are interpreted by the normalisers
here (:func:`orientation_flags`, :func:`normalise_center`,
:func:`normalise_flip`, :func:`normalise_propagation`), which the declarations
also run, so that a bad value is refused with the configuration, before any
data is read.
"""

import numpy as np

from ..errors import ConfigError
from ..params.declare import Parameter, ParamSet

__all__ = ["COMMON_PARAMS", "MAX_FRAME_SIDE", "PROPAGATIONS", "normalise_propagation",
           "orientation_flags", "normalise_center", "normalise_flip", "loader_params"]

#: valid values of a scan's propagation
PROPAGATIONS = ("farfield", "nearfield")


def normalise_propagation(value, where="propagation"):
    """'farfield' / 'nearfield' (or None) from a configured or recorded value.

    Accepts any case and the spellings 'far-field', 'far field', 'far_field'
    (same for near); anything else is a ConfigError naming ``where``.
    """
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    text = "".join(ch for ch in str(value).strip().lower() if ch not in " -_")
    if text in PROPAGATIONS:
        return text
    raise ConfigError("%s: unknown propagation %r; expected farfield or nearfield" % (where, value))


def orientation_flags(orientation, where="orientation"):
    """``(transpose, flipud, fliplr)`` for an orientation setting.

    Integers 0..7 encode ``4 * transpose + 2 * flipud + 1 * fliplr`` (so 1 is
    a left-right flip, 2 an up-down flip, 4 a transpose; PtyPy's meaning).
    The operations are applied in the order transpose, flipud, fliplr.
    A sequence of three booleans is taken as is; None means 0.
    """
    if orientation is None:
        return (False, False, False)
    if isinstance(orientation, (bool, np.bool_)):
        raise ConfigError("%s: expected an integer 0..7 or [transpose, flipud, fliplr], got %r"
                          % (where, orientation))
    if isinstance(orientation, (int, np.integer)):
        o = int(orientation)
        if not 0 <= o <= 7:
            raise ConfigError("%s: integer must be in 0..7 (4 transpose + 2 flipud + 1 "
                              "fliplr), got %d" % (where, o))
        return (bool(o & 4), bool(o & 2), bool(o & 1))
    if isinstance(orientation, (list, tuple)) and len(orientation) == 3:
        out = []
        for v in orientation:
            if isinstance(v, (bool, np.bool_)) or v in (0, 1):
                out.append(bool(v))
            else:
                break
        else:
            return tuple(out)
    raise ConfigError("%s: expected an integer 0..7 or [transpose, flipud, fliplr] booleans, "
                      "got %r" % (where, orientation))


def normalise_center(value, where):
    """The ``center`` setting: None, 'auto', 'geometric' or a float (row, col) pair; ConfigError otherwise."""
    if value is None:
        return None
    if isinstance(value, str):
        v = value.strip().lower()
        if v in ("auto", "geometric"):
            return v
        raise ConfigError("%s: expected null, 'auto', 'geometric' or [row, col], got %r"
                          % (where, value))
    try:
        arr = np.asarray(value, dtype=float).reshape(-1)
    except (TypeError, ValueError):
        arr = np.zeros(0)
    if arr.size == 1:
        arr = np.repeat(arr, 2)
    if arr.size != 2 or not np.all(np.isfinite(arr)):
        raise ConfigError("%s: expected null, 'auto', 'geometric' or [row, col], got %r"
                          % (where, value))
    return arr


def normalise_flip(value, where):
    """The ``positions_flip`` setting as ``(flip_y, flip_x)`` booleans; ConfigError otherwise."""
    if value is None:
        return (False, False)
    if isinstance(value, (bool, np.bool_)):
        return (bool(value), bool(value))
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(
            isinstance(v, (bool, np.bool_)) or v in (0, 1) for v in value):
        return (bool(value[0]), bool(value[1]))
    raise ConfigError("%s: expected [flip_y, flip_x] booleans or one boolean, got %r"
                      % (where, value))


#: Largest frame side (pixels) a ``shape`` may ask for; detectors have at most a few thousand.
MAX_FRAME_SIDE = 16384


def _checked_by(name):
    """A ``check`` for a declaration: run the module function ``name(value, path)``, keep the value.

    The functions that interpret a setting when loading (``orientation_flags``,
    ``normalise_center``, ``normalise_flip``) also validate it, so that a bad
    value is refused with the configuration, before any data is read.
    """
    def check(value, path):
        globals()[name](value, path)
        return value
    return check


#: The parameters every loader reads (``scans.<label>.data``); a loader extends them.
COMMON_PARAMS = ParamSet("scan_data", [
    Parameter("name", None, "str", "loader name", nullable=True),
    Parameter("dfile", None, "path", "input file (or folder) to read", nullable=True),
    Parameter("label", None, "str", "scan label (default: from the file or the file name)",
              nullable=True),
    Parameter("num_frames", None, "int", "use only the first N frames (null = all)", low=1,
              nullable=True),
    Parameter("chunk_size", 100, "int", "frames read per call", low=1, high=100000),
    Parameter("shape", None, "intpair",
              "frame shape after crop/pad about the centre and rebinning (null = keep)",
              low=1, high=MAX_FRAME_SIDE, nullable=True, unit="pixel"),
    Parameter("center", None, "any",
              "diffraction centre: null (the file's, else auto), 'auto' (mass centre), "
              "'geometric' (frame centre) or [row, col] in raw-frame pixels", nullable=True,
              check=_checked_by("normalise_center")),
    Parameter("fftshifted", False, "bool",
              "frames have the zero frequency at pixel [0, 0] (shift to centred first)"),
    Parameter("orientation", None, "any",
              "frame orientation: integer 0..7 (4 transpose + 2 flipud + 1 fliplr, applied "
              "in that order) or [transpose, flipud, fliplr]", nullable=True,
              check=_checked_by("orientation_flags")),
    Parameter("rebin", 1, "int", "sum r x r detector pixels (the pixel size grows r times)",
              low=1, high=64),
    Parameter("energy", None, "float", "photon energy, or with radiation: electron the electrons' kinetic "
              "energy (overrides the file)", low=0.0, nullable=True, unit="keV"),
    Parameter("radiation", "xray", "str",
              "what the beam is: xray (photons; the wavelength is hc / energy) or electron (the energy is the "
              "electrons' kinetic energy; relativistic wavelength hc / sqrt(E (E + 2 m0 c^2)); the geometry "
              "records the photon energy of that wavelength)", choices=["xray", "electron"]),
    Parameter("distance", None, "float", "sample-detector distance (overrides the file)",
              low=0.0, nullable=True, unit="m"),
    Parameter("psize", None, "pair", "detector pixel size (overrides the file)", low=0.0,
              nullable=True, unit="m"),
    Parameter("positions_unit", None, "str",
              "unit of the positions: 'm' or 'pixel' (null = from the file, else 'm')",
              choices=["m", "pixel"], nullable=True),
    Parameter("positions_scale", 1.0, "float", "multiplier applied to the positions"),
    Parameter("positions_swap", False, "bool", "swap the y and x columns of the positions"),
    Parameter("positions_flip", None, "any",
              "negate positions: [flip_y, flip_x] booleans, or one boolean for both",
              nullable=True, check=_checked_by("normalise_flip")),
    Parameter("dark", None, "path", "dark frame .npy/.h5 file, subtracted (null = the file's)",
              nullable=True),
    Parameter("flat", None, "path", "flat-field .npy/.h5 file, divided (null = the file's)",
              nullable=True),
    Parameter("negative_values", "auto", "str",
              "negative raw values: mask (detector flags: the pixel is ignored in that frame), clip (read "
              "noise of dark-subtracted frames: set to 0 and kept), or auto: mask in frames of counts (integers, "
              "or floats holding whole numbers only); in other float frames clip, except at pixels negative in "
              ">= 90 %% of a chunk's frames (gaps, flags), which are masked", choices=["auto", "mask", "clip"]),
    Parameter("mask", None, "path",
              "mask .npy/.h5 file (0 = ignore pixel), combined with the file's mask; "
              "'file.h5:/dataset' picks a dataset", nullable=True),
], doc="scan data: input file, frame preparation and geometry")


def loader_params(name, input_doc, entries=(), doc=None):
    """The ParamSet of loader ``name``: :data:`COMMON_PARAMS`, its ``dfile`` described, plus ``entries``.

    Parameters
    ----------
    name : str
        The loader's NAME.
    input_doc : str
        What ``dfile`` names for this loader (e.g. 'CXI file (.cxi) to read').
    entries : sequence of Parameter
        The loader's own parameters (replacing common ones of the same name).
    doc : str, optional
        One line on the loader's input.
    """
    return COMMON_PARAMS.extended(name, [Parameter("dfile", None, "path", input_doc, nullable=True)]
                                  + list(entries), doc=doc)
