"""PtyPy parameters that ptycli does not declare: translated, or dropped with a log line.

A PtyPy user's configuration carries names from PtyPy's own parameter tree
(PtyPy 0.9): switches for its GUI and autosave, engine names of its
accelerated back ends (``DM_serial``, ``ML_pycuda``), the ``Hdf5Loader``
with its ``intensities.file/key`` layout, and engine parameters ptycli names
differently or has no use for. :func:`translate` rewrites such a tree into
ptycli's names before validation (:func:`ptycli.params.tree.validate` calls
it), so that the file runs unchanged. Every rewrite is logged once, at
validation:

* **renamed** (INFO): the value moves to ptycli's parameter, e.g. ePIE's
  ``alpha``/``beta`` to ``object_step``/``probe_step``, ML's
  ``scale_probe_objects`` to ``scale_probe_object``, ``DM_serial`` to ``DM``,
  ``BlockFull`` to ``Full``;
* **no effect** (INFO): switches that change nothing a ptycli run computes
  (``numiter_contiguous``, ``io.autoplot``, ``record_local_error``, ...);
* **not modelled** (WARNING): features PtyPy has and ptycli does not, given a
  value that would change PtyPy's result (``obj_smooth_std: 2``,
  ``smooth_gradient: 20``, ``probe_fourier_support``); the line says so and
  names ptycli's nearest parameter. At PtyPy's default value these are
  dropped at INFO.

A name ptycli declares is never rewritten; a PtyPy name whose ptycli name is
also given is an error (two values for one parameter). Anything not listed
here still fails validation with the closest valid names.
"""

import logging
import os

from .. import parallel
from ..errors import ConfigError
from ..utils.param_tree import Param
from .registry import ENGINES

__all__ = ["translate", "ENGINE_SUFFIXES", "SCAN_MODEL_NAMES"]

logger = logging.getLogger(__name__)


def _say(level, text, *args):
    """Log once per run: every MPI rank validates the same configuration, rank 0 speaks."""
    if parallel.master:
        logger.log(level, text, *args)

#: PtyPy's back-end suffixes of engine names (``DM_serial`` is PtyPy's DM on numpy, ...).
ENGINE_SUFFIXES = ("_serial", "_pycuda", "_cupy", "_ocl", "_local", "_nostream", "_stream")

#: PtyPy scan models and ptycli's model that computes the same pods.
SCAN_MODEL_NAMES = {"blockfull": "Full", "gradfull": "Full", "blockgradfull": "Full",
                    "blockvanilla": "Vanilla"}

_NO_GUI = "ptycli has no live plots or interaction server; plot a result with `ptycli plot`"

#: Top-level and io names: (dotted path, reason). Always without effect.
_TREE_NO_EFFECT = [
    ("io.autosave", "ptycli writes checkpoints instead (io.checkpoint.interval)"),
    ("io.autoplot", _NO_GUI),
    ("io.interaction", _NO_GUI),
    ("io.benchmark", "ptycli records timings in every result (/runtime)"),
    ("io.rformat", "ptycli's result format is io.format"),
    ("frames_per_block", "ptycli's engines choose their own blocks (block_frames)"),
    ("min_frames", "ptycli loads whole scans"),
    ("dry_run", "use `ptycli params --validate CONFIG` to check a configuration"),
    ("ipython_kernel", "ptycli has no interactive kernel"),
]

#: Engine names (all engines): name -> (PtyPy default, reason, ptycli's nearest parameter or None).
_ENGINE_DROPPED = {
    "numiter_contiguous": (1, "ptycli records every record_interval iterations", None),
    "record_local_error": (False, "ptycli records the per-frame errors in every result", None),
    "compute_log_likelihood": (True, "ML records the likelihood; DM the Fourier error", None),
    "probe_fourier_support": (None, "no Fourier-space probe support in ptycli", "probe_support"),
    "obj_smooth_std": (None, "no object smoothing in DM/RAAR", "object_inertia"),
    "smooth_gradient": (0.0, "no gradient smoothing in ML", "reg_del2"),
    "smooth_gradient_decay": (0.0, "no gradient smoothing in ML", "reg_del2"),
    "intensity_renormalization": (1.0, "ML fits the measured intensities as they are", "floating_intensities"),
    "poly_line_coeffs": ("quadratic", "ML's line search is the exact polynomial of its cost", None),
    "fourier_power_bound": (None, "the power bound follows fourier_relax_factor and the counting noise",
                            "fourier_relax_factor"),
    "subpix_start": (0, "sub-pixel positions are a scan option", "scans.<label>.subpixel"),
    "subpix": ("linear", "sub-pixel positions are a scan option", "scans.<label>.subpixel"),
    "object_norm_is_global": (False, "ePIE normalises by the frame's probe peak", None),
    "rescale_probe": (True, "ePIE keeps the probe's scale", None),
    "synchronization": (1, "ptycli's PIE engines merge ranks every iteration", None),
    "fft_lib": ("reikna", "ptycli picks the fastest FFT on the machine (FFTW or pocketfft)", None),
}

#: Engine-specific renames: engine name (lower case) -> {PtyPy name: ptycli name}.
_ENGINE_RENAMED = {
    "ml": {"scale_probe_objects": "scale_probe_object"},
    "epie": {"alpha": "object_step", "beta": "probe_step", "random_seed": "seed"},
}

#: Data (loader) names common to PtyPy's PtyScan that no ptycli loader needs.
_DATA_NO_EFFECT = {
    "save": "ptycli reads the input file directly; no .ptyd copy is written",
    "chunk_format": "ptycli reads the input file directly",
    "load_parallel": "every MPI rank reads its own frames",
    "min_frames": "ptycli loads whole scans",
    "positions_theory": "positions come from the file",
    "experimentID": "not used", "version": "not used", "recipe": "not used",
}


def translate(tree):
    """Rewrite PtyPy-only names of a configuration tree into ptycli's.

    Parameters
    ----------
    tree : dict or Param
        A configuration (not modified).

    Returns
    -------
    Param
        A copy with PtyPy's names translated or dropped (each logged once);
        the tree itself when it holds none.

    Raises
    ------
    ConfigError
        When a PtyPy name and its ptycli name are both given, or a PtyPy
        loader layout cannot be expressed (e.g. ``Hdf5Loader`` reading its
        positions from a second file).
    """
    if not isinstance(tree, dict):
        return tree
    out = Param(tree).copy()
    changed = False
    for path, reason in _TREE_NO_EFFECT:
        changed |= _drop(out, path.split("."), path, None, reason, None)
    for label, scan in _items(out.get("scans")):
        changed |= _translate_scan(scan, "scans.%s" % label)
    for label, engine in _items(out.get("engines")):
        changed |= _translate_engine(engine, "engines.%s" % label)
    return out if changed else tree


def _items(mapping):
    if not isinstance(mapping, dict):
        return []
    return [(k, v) for k, v in mapping.items() if isinstance(v, dict)]


def _drop(tree, keys, path, default, reason, nearest):
    """Remove ``tree[keys...]`` when present; log INFO (PtyPy default) or WARNING (a value that matters)."""
    parent = tree
    for key in keys[:-1]:
        parent = parent.get(key) if isinstance(parent, dict) else None
        if not isinstance(parent, dict):
            return False
    if keys[-1] not in parent:
        return False
    value = parent.pop(keys[-1])
    if nearest is None or _is_default(value, default):
        _say(logging.INFO, "%s: PtyPy's parameter has no effect in ptycli and is ignored (%s)", path, reason)
    else:
        _say(logging.WARNING, "%s = %r: PtyPy's parameter is not modelled in ptycli and is ignored (%s); "
             "the nearest ptycli parameter is %s", path, value, reason, nearest)
    return True


def _is_default(value, default):
    if value is None or value is False or value == default:
        return True
    if isinstance(value, dict):  # a PtyPy sub-tree such as {active: false}
        return not value.get("active", True)
    return False


def _rename(tree, old, new, path):
    if old not in tree:
        return False
    if new in tree:
        raise ConfigError("%s: both PtyPy's %s and ptycli's %s are given; keep %s only" % (path, old, new, new))
    tree[new] = tree.pop(old)
    _say(logging.INFO, "%s.%s: PtyPy's name, read as %s.%s", path, old, path, new)
    return True


def _translate_engine(engine, path):
    changed = False
    name = engine.get("name")
    if isinstance(name, str):
        lowered = name.strip().lower()
        for suffix in ENGINE_SUFFIXES:
            if lowered.endswith(suffix) and len(lowered) > len(suffix):
                base = name.strip()[:-len(suffix)]
                engine["name"] = base
                _say(logging.INFO, "%s.name: PtyPy's engine %s, run as ptycli's %s", path, name, base)
                lowered, changed = base.lower(), True
                break
        for old, new in _ENGINE_RENAMED.get(lowered, {}).items():
            changed |= _rename(engine, old, new, path)
    entry = ENGINES.find(engine.get("name"))
    declared = entry.paramset if entry is not None else ()
    for key, (default, reason, nearest) in _ENGINE_DROPPED.items():
        if key not in declared:
            changed |= _drop(engine, [key], "%s.%s" % (path, key), default, reason, nearest)
    return changed


def _translate_scan(scan, path):
    changed = False
    model = scan.get("name")
    if isinstance(model, str) and model.strip().lower() in SCAN_MODEL_NAMES:
        scan["name"] = SCAN_MODEL_NAMES[model.strip().lower()]
        _say(logging.INFO, "%s.name: PtyPy's scan model %s, built as ptycli's %s", path, model, scan["name"])
        changed = True
    for key, reason in (("coherence.spectrum", "one wavelength"),
                        ("coherence.object_dispersion", "one wavelength"),
                        ("coherence.probe_dispersion", "one wavelength"),
                        ("illumination.propagation.antialiasing", "the probe guess is not resampled"),
                        ("illumination.recon", "give the result file as illumination.model"),
                        ("sample.recon", "give the result file as sample.model"),
                        ("sample.process", "the object starts from sample.fill")):
        changed |= _drop(scan, key.split("."), "%s.%s" % (path, key), None, reason,
                         "scans.<label>.%s" % key.split(".")[0])
    data = scan.get("data")
    if isinstance(data, dict):
        changed |= _translate_data(scan, data, path)
    return changed


def _translate_data(scan, data, path):
    path = path + ".data"
    changed = False
    if isinstance(data.get("name"), str) and data["name"].strip().lower() in ("hdf5loader", "hdf5loaderfast"):
        _hdf5_loader(data, path)
        changed = True
    for key, reason in _DATA_NO_EFFECT.items():
        changed |= _drop(data, [key], "%s.%s" % (path, key), None, reason, None)
    if "propagation" in data:  # PtyScan's own copy of the scan's propagation
        value = data.pop("propagation")
        if scan.get("propagation") is None:
            scan["propagation"] = value
        _say(logging.INFO, "%s.propagation: PtyPy's place for it, read as %s", path, path[:-len(".data")] + ".propagation")
        changed = True
    if "auto_center" in data:
        if data.pop("auto_center") and data.get("center") is None:
            data["center"] = "auto"
            _say(logging.INFO, "%s.auto_center: PtyPy's switch, read as center: auto", path)
        else:
            _say(logging.INFO, "%s.auto_center: PtyPy's switch, ignored (center: null takes the file's centre, "
                 "else finds it)", path)
        changed = True
    return changed


#: how Hdf5Scan names a dataset in another file, ``FILE::PATH`` (:data:`ptycli.scans.hdf5.FILE_SEPARATOR`)
_FILE_SEPARATOR = "::"

#: Hdf5Loader groups -> (ptycli's dataset parameter, its multiplier parameter or None).
_HDF5_GROUPS = {
    "intensities": ("intensities", None),
    "mask": ("mask_dataset", None),
    "darkfield": ("dark_dataset", None),
    "flatfield": ("flat_dataset", None),
    "normalisation": ("normalisation_dataset", None),
    "recorded_energy": ("energy_dataset", "energy_multiplier"),
    "recorded_distance": ("distance_dataset", "distance_multiplier"),
    "recorded_psize": ("psize_dataset", "psize_multiplier"),
}


def _hdf5_loader(data, path):
    """PtyPy's ``Hdf5Loader`` (``{file, key}`` groups) as ptycli's ``Hdf5Scan`` (dataset paths).

    ``dfile`` is the intensities' file; a group in another file becomes a
    ``FILE::KEY`` dataset path. The per-frame ``normalisation`` divides the
    frames as in PtyPy, scaled by its mean (a constant factor, which keeps the
    photon scale).
    """
    original = data["name"]
    groups = {}
    for group in list(_HDF5_GROUPS) + ["positions"]:
        sub = data.pop(group, None)
        if sub is None:
            continue
        if not isinstance(sub, dict):
            raise ConfigError("%s.%s: PtyPy's Hdf5Loader expects a mapping {file, key}, got %r" % (path, group, sub))
        groups[group] = sub
    main = (groups.get("intensities") or {}).get("file")
    if data.get("dfile") is None and main is not None:
        data["dfile"] = str(main)
    dfile = data.get("dfile")

    def located(sub, key):
        """``key`` in ``sub``'s file: a plain path in the dfile (or with no file given), else FILE::KEY."""
        f = sub.get("file")
        if f is None or dfile is None or os.path.abspath(str(f)) == os.path.abspath(str(dfile)):
            return str(key)
        return "%s%s%s" % (os.path.abspath(str(f)), _FILE_SEPARATOR, key)

    for group, (dataset, multiplier) in _HDF5_GROUPS.items():
        sub = groups.get(group)
        if sub is None or sub.get("key") is None:
            continue
        data[dataset] = located(sub, sub["key"])
        if multiplier is not None and sub.get("multiplier") is not None:
            data[multiplier] = sub["multiplier"]
    positions = groups.get("positions")
    if positions is not None:
        for axis in ("slow", "fast"):
            if positions.get(axis + "_key") is not None:
                data["positions_" + axis] = located(positions, positions[axis + "_key"])
            if positions.get(axis + "_multiplier") is not None:
                data["positions_%s_multiplier" % axis] = positions[axis + "_multiplier"]
        if positions.get("bounding_box") not in (None, {}) and any(
                v is not None for v in dict(positions["bounding_box"]).values()):
            raise ConfigError("%s.positions.bounding_box: PtyPy's Hdf5Loader crop of the scan is not supported; "
                              "use num_frames, or crop the file" % path)
    data["name"] = "Hdf5Scan"
    _say(logging.INFO, "%s.name: PtyPy's %s, read by ptycli's Hdf5Scan (dfile %s)", path, original, data.get("dfile"))
