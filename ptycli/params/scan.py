"""Declared parameters of one scan: ``scans.<label>``.

Names follow PtyPy where PtyPy users know them::

    scans:
      MF:                       # the label: letters, digits, '_' and '-'
        name: Full              # scan model: Full (mixed states) or Vanilla
        propagation: null       # farfield or nearfield (null: the data file's, else farfield)
        data:                   # the loader and its own parameters
          name: MoonFlowerScan
          shape: 128
        illumination: {model: auto, photons: null, aperture: {...}, ...,
                       variable_modes: 0}   # K > 0: a probe per frame from K eigen-probes (OPR)
        sample: {model: fill, fill: 1.0, fill_phase: 0.0, diversity: {...},
                 slices: 1, slice_distance_m: null}   # slices > 1: a thick (multislice) sample
        coherence: {num_probe_modes: 1, num_object_modes: 1}
        background: auto        # fit an incoherent background (ptycli.core.background); auto: where the frames show one
        photon_scale: auto      # detector units per photon (auto: found from the frames; null: frames as stored)
        probe_share: null       # label of another scan whose probe this one uses
        object_share: null
        tags: []

``data`` is validated by the loader named in ``data.name`` (see
:mod:`ptycli.params.registry`); the other groups are declared here.

This module also holds the :class:`~ptycli.params.declare.Parameter`
subclasses for values the basic types cannot express (a word or a file path,
a strictly positive number, a list of words, a registered name, a path
template, a verbosity level); :mod:`ptycli.params.tree` uses them too.
"""

import os
import re
import string

from ..errors import ConfigError
from ..log import get_logger
from ..utils.param_tree import Param
from .declare import Parameter, ParamSet, describe_value
from .registry import LOADERS, SCAN_MODELS, suggest

logger = get_logger("ptycli.params")

__all__ = [
    "ModelParameter",
    "PositiveFloat",
    "WordList",
    "RegistryName",
    "PathTemplate",
    "ILLUMINATION_MODELS",
    "SAMPLE_MODELS",
    "ARRAY_FILE_EXTENSIONS",
    "ILLUMINATION",
    "SAMPLE",
    "COHERENCE",
    "DATA",
    "SCAN",
    "check_label",
    "scan_paramset",
    "validate_data",
    "validate_set",
    "validate_scan",
    "check_slices",
    "check_variable_probe",
]

#: File name endings accepted as an array file for ``illumination.model`` / ``sample.model``.
ARRAY_FILE_EXTENSIONS = (".npy", ".h5", ".hdf5", ".ptyr")
#: Words of ``illumination.model`` (anything else must be an array file path).
ILLUMINATION_MODELS = ("auto", "flat", "aperture", "focused", "moon")
#: Words of ``sample.model``.
SAMPLE_MODELS = ("fill", "flower")

_LABEL_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]*$")


# -- parameter kinds ------------------------------------------------------------

class ModelParameter(Parameter):
    """A model word (case-insensitive, returned lower-case) or an array file path.

    A path is any string ending in one of :data:`ARRAY_FILE_EXTENSIONS`
    (whether the file exists is checked when it is loaded).
    """

    def __init__(self, name, default, words, doc, extensions=ARRAY_FILE_EXTENSIONS):
        super().__init__(name, default, "str", doc)
        self.words = tuple(words)
        self.extensions = tuple(extensions)

    def expected(self):
        return "one of %s, or a file path ending %s" % (", ".join(self.words), "/".join(self.extensions))

    def check(self, value, path=None):
        path = path or self.name
        if not isinstance(value, str) or not value.strip():
            self._fail(path, value)
        text = value.strip()
        for w in self.words:
            if text.lower() == w:
                return w
        if text.lower().endswith(self.extensions):
            return text
        hint = suggest(text, self.words)
        raise ConfigError("%s: unknown model %r%s; expected %s" % (
            path, value, " (did you mean %s?)" % " or ".join(hint) if hint else "", self.expected()))


class PositiveFloat(Parameter):
    """A number strictly greater than zero (optionally null)."""

    def __init__(self, name, default, doc, nullable=None, unit=None):
        super().__init__(name, default, "float", doc, nullable=nullable, unit=unit)

    def expected(self):
        return "a number > 0" + (" (or null)" if self.nullable else "")

    def check(self, value, path=None):
        value = super().check(value, path)
        if value is not None and value <= 0:
            self._fail(path or self.name, value, "must be greater than 0")
        return value


class WordList(Parameter):
    """A list of strings; a single string means a list of one.

    With ``choices`` every item must be one of them (case-insensitive,
    returned as declared, duplicates dropped). ``min_items`` sets how many
    items are needed.
    """

    def __init__(self, name, default, doc, choices=None, min_items=0):
        super().__init__(name, list(default), "list", doc)
        self.words = None if choices is None else list(choices)
        self.min_items = min_items

    def expected(self):
        if self.words:
            text = "a list of %s" % ", ".join(self.words)
        else:
            text = "a list of strings"
        if self.min_items:
            text += " (at least %d)" % self.min_items
        return text

    def check(self, value, path=None):
        path = path or self.name
        if value is None:
            value = []
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)):
            self._fail(path, value)
        out = []
        for item in value:
            if not isinstance(item, str):
                self._fail(path, value, "item %s is not a string" % describe_value(item))
            if self.words is not None:
                match = [w for w in self.words if w.lower() == item.strip().lower()]
                if not match:
                    hint = suggest(item, self.words)
                    raise ConfigError("%s: unknown value %r%s; expected %s" % (
                        path, item, " (did you mean %s?)" % " or ".join(hint) if hint else "",
                        self.expected()))
                item = match[0]
            if item not in out:
                out.append(item)
        if len(out) < self.min_items:
            self._fail(path, value, "needs at least %d item%s" % (self.min_items, "s" if self.min_items > 1 else ""))
        return out


class RegistryName(Parameter):
    """The name of a registered loader, engine or scan model (case-insensitive).

    Returns the canonical spelling. ``expected()`` lists the names registered
    at the time of asking.
    """

    def __init__(self, name, default, registry, doc, nullable=None):
        super().__init__(name, default, "str", doc, nullable=nullable)
        self.registry = registry

    def expected(self):
        names = self.registry.names()
        kind = self.registry.kind
        text = ("one of " + ", ".join(names)) if names else "the name of %s %s" % (
            "an" if kind[0] in "aeiou" else "a", kind)
        return text + (" (or null)" if self.nullable else "")

    def check(self, value, path=None):
        if value is None and self.nullable:
            return None
        return self.registry.get(value, path or self.name).name


class PathTemplate(Parameter):
    """A file path with ``{field}`` placeholders (Python format syntax).

    Only the declared ``fields`` may appear; format specs are allowed
    (``{iterations:04d}``). Write ``{{``/``}}`` for literal braces.
    """

    def __init__(self, name, default, fields, doc, nullable=None):
        super().__init__(name, default, "path", doc, nullable=nullable)
        self.fields = tuple(fields)

    def expected(self):
        return "a file path, may contain %s" % ", ".join("{%s}" % f for f in self.fields) + (
            " (or null)" if self.nullable else "")

    def check(self, value, path=None):
        path = path or self.name
        value = super().check(value, path)
        if value is None:
            return None
        if not value.strip():
            self._fail(path, value, "empty path")
        try:
            parsed = list(string.Formatter().parse(value))
        except ValueError as exc:
            raise ConfigError("%s: malformed template %r (%s); write {{ and }} for literal braces" % (
                path, value, exc)) from None
        for _, field, _, _ in parsed:
            if field is None:
                continue
            base = re.split(r"[.\[]", field, maxsplit=1)[0]
            if base not in self.fields:
                hint = suggest(base, self.fields)
                raise ConfigError("%s: unknown placeholder {%s}%s; expected %s" % (
                    path, field, " (did you mean {%s}?)" % "} or {".join(hint) if hint else "",
                    self.expected()))
        return value


def check_label(label, path):
    """Check a scan or engine label (a mapping key); return it.

    Labels name storages and groups in result files: letters, digits, ``_``
    and ``-``, not starting with ``-``.
    """
    if not isinstance(label, str) or not _LABEL_RE.match(label):
        raise ConfigError("%s: invalid label %r; use letters, digits, '_' and '-' (e.g. MF, scan_01)"
                          % (path, label))
    return label


# -- declarations ----------------------------------------------------------------

def _diversity(modes, noise):
    """The ``diversity`` group of the probe or object model: how its extra ``modes`` differ from the first.

    Parameters
    ----------
    modes : str
        'probe' or 'object', for the descriptions.
    noise : pair
        Default amplitude and phase noise.
    """
    return ParamSet("diversity", [
        Parameter("noise", noise, "pair", "amplitude and phase noise of the extra %s modes" % modes,
                  low=0.0),
        Parameter("power", 0.1, "float", "power of each extra mode relative to the first",
                  low=0.0, high=1.0),
        Parameter("seed", 1, "int", "random seed of the mode noise"),
    ], "how extra %s modes differ from the first" % modes)


ILLUMINATION = ParamSet("illumination", [
    ModelParameter(
        "model", "auto", ILLUMINATION_MODELS,
        "initial probe: auto (derived from the data), flat, aperture, focused (aperture then lens), "
        "moon (test image), or a .npy/.h5 file holding a probe (2D, or 3D modes)"),
    PositiveFloat(
        "photons", None,
        "photons in the initial probe; null scales it to the mean measured counts per frame",
        unit="photons"),
    ParamSet("aperture", [
        Parameter("form", "circ", "str", "aperture shape", choices=["circ", "rect"]),
        Parameter("size", None, "pair", "aperture diameter (circ) or side lengths (rect); "
                  "null uses size_fraction of the frame", low=0.0, unit="m"),
        Parameter("size_fraction", 0.5, "float", "aperture size as a fraction of the frame "
                  "(used when size is null)", low=0.0, high=1.0),
        Parameter("edge", 2.0, "float", "width of the smoothed aperture edge", low=0.0, unit="px"),
        Parameter("central_stop", None, "float", "central beam stop as a fraction of the aperture "
                  "size; null for none", low=0.0, high=1.0),
        Parameter("offset", (0.0, 0.0), "pair", "offset of the aperture from the frame centre (y, x)",
                  unit="m"),
    ], "aperture of the aperture/focused models"),
    ParamSet("propagation", [
        Parameter("focussed", None, "float", "focal distance of a lens after the aperture; "
                  "null for no lens", unit="m"),
        Parameter("parallel", None, "float", "propagation distance applied to the initial probe "
                  "(defocus); null for none", unit="m"),
    ], "propagation of the modelled probe"),
    _diversity("probe", (0.5, 1.0)),
    Parameter("variable_modes", 0, "int",
              "variable probe (orthogonal probe relaxation, OPR; ePIE, rPIE, mPIE, LSQML, DM and RAAR): 0 for one probe shared "
              "by all frames, K >= 1 gives every frame its own probe, a weighted sum of K orthogonal eigen-probes with "
              "weights per frame refined every iteration (written to /scans/<label>/probe_weights)",
              low=0, high=16),
], "initial probe (illumination) model")

SAMPLE = ParamSet("sample", [
    ModelParameter(
        "model", "fill", SAMPLE_MODELS,
        "initial object: fill (constant), flower (test image), or a .npy/.h5 file holding an object"),
    Parameter("fill", 1.0, "float", "amplitude of the constant object (fill model)"),
    Parameter("fill_phase", 0.0, "float", "phase of the constant object (fill model)", unit="rad"),
    _diversity("object", (0.0, 0.0)),
    Parameter("slices", 1, "int", "object slices along the beam (multislice; ePIE, rPIE and LSQML): 1 for a "
              "thin object, S > 1 for S transmission slices with near-field propagation between them",
              low=1, high=64),
    PositiveFloat("slice_distance_m", None, "distance between neighbouring object slices (needed when "
                  "slices > 1)", unit="m"),
], "initial object (sample) model")

COHERENCE = ParamSet("coherence", [
    Parameter("num_probe_modes", 1, "int", "number of incoherent probe modes", low=1, high=64),
    Parameter("num_object_modes", 1, "int", "number of incoherent object modes", low=1, high=64),
], "mixed-state (partial coherence) modes")

#: ``data`` as declared for every loader: only ``name``; the rest comes from the loader.
DATA = ParamSet("data", [
    RegistryName("name", None, LOADERS, "scan loader that reads (or simulates) the frames (null or 'auto': "
                 "told from dfile's format)", nullable=True),
], "the scan's data source: a loader and its parameters")

def _photon_scale(value, path):
    """``scans.<label>.photon_scale`` checked: ``'auto'``, a finite number > 0, or None (also ``'none'``)."""
    if isinstance(value, str) and value.strip().lower() in ("auto", "none", "null"):
        return "auto" if value.strip().lower() == "auto" else None
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or value == float("inf"):
        raise ConfigError("%s: expected auto, null or a number > 0 (detector units per photon), got %r"
                          % (path, value),
                          hint="auto finds counts times a constant from the frames; an integrating detector's gain "
                               "(units per photon) divides the frames by it; null uses them as stored")
    return float(value)


def _auto_on_off(hint):
    """A check reading a value as 'auto', 'on' or 'off' (YAML reads a bare on/off or true/false as a boolean)."""
    def check(value, path):
        if isinstance(value, bool):
            return "on" if value else "off"
        text = str(value).strip().lower()
        if text not in ("auto", "on", "off"):
            raise ConfigError("%s: expected auto, on or off (true, false), got %r" % (path, value), hint=hint)
        return text
    return check


SCAN = ParamSet("scan", [
    RegistryName("name", "Full", SCAN_MODELS, "scan model: Full (mixed states) or Vanilla (single mode)"),
    Parameter("propagation", None, "str", "propagation between sample and detector (null: the one the data "
              "file records, else farfield; a value that contradicts the file's is an error)",
              choices=["farfield", "nearfield"], nullable=True),
    DATA,
    ILLUMINATION,
    SAMPLE,
    COHERENCE,
    Parameter("subpixel", "auto", "any",
              "sub-pixel scan positions: auto, on or off (YAML true/false too); on shifts each frame's probe by "
              "the remainder of its position (auto: on when the positions lie off the pixel grid; far field only)",
              check=_auto_on_off("auto uses the model when the positions lie off the pixel grid")),
    Parameter("subpixel_resolution", 4, "int",
              "steps per pixel to which the sub-pixel remainders are quantised (frames of one step share a "
              "shifted probe: at most (resolution + 1)^2 of them)", low=1, high=64, unit="1/pixel"),
    Parameter("position_check", True, "bool",
              "before the engines, try the positions flipped and with y and x swapped on the central frames and "
              "warn when another convention fits the frames clearly better (nothing is changed)"),
    Parameter("photon_scale", "auto", "any",
              "detector units per photon: the frames are divided by it as they load and the noise models treat "
              "them as photon counts (an integrating detector's gain; for counts per second, 1 / the exposure "
              "time); auto: 1 for whole counts, found from frames of counts times a constant or a constant per "
              "frame (a lattice of values), and frames that are not counts with a mean per valid pixel outside "
              "1e-3..1e6 are divided to a mean of 1000; null: the frames as stored (ptycli.core.manager; the "
              "factor is written to /scans/<label> as intensity_scale)", check=_photon_scale, nullable=True),
    Parameter("probe_share", None, "str", "label of another scan whose probe this scan uses; "
              "null for its own probe"),
    Parameter("object_share", None, "str", "label of another scan whose object this scan uses; "
              "null for its own object"),
    Parameter("background", "auto", "any",
              "fit an incoherent background (counts per detector pixel, the same in every frame) that adds to the "
              "model intensity, in every engine; written to /scans/<label>/background: auto, true or false "
              "(auto: fitted in far field where every frame of a scan of 50 frames or more holds the same floor of "
              "counts, at least 1 % of the mean count per pixel; ptycli.core.background.detector_floor)",
              check=_auto_on_off("auto fits a background where every frame holds the same floor of counts")),
    Parameter("background_smoothing", 1.0, "float",
              "Gaussian smoothing of the fitted background, weighted by the counting statistics of each pixel "
              "(0: every pixel on its own)", low=0.0, high=1000.0, unit="pixel"),
    WordList("tags", [], "free tags of the scan (kept in the result file)"),
], "one scan: model, data source, initial probe and object")


def scan_paramset(model_name="Full"):
    """The ParamSet of a scan using scan model ``model_name`` (its extra entries added)."""
    entry = SCAN_MODELS.find(model_name)
    if entry is None or not len(entry.paramset.entries):
        return SCAN
    return SCAN.extended("scan", list(entry.paramset))


def validate_set(ps, tree, path):
    """``ps.validate(tree, path)`` (kept as a named step for the scan and engine sets)."""
    return ps.validate(tree, path)


def validate_named(name, paramset, tree, path):
    """Validate the parameters of the plugin called ``name`` (a loader, an engine) against ``paramset``.

    The one route of ``scans.<label>.data`` and ``engines.<label>``: the
    mapping ``tree`` without its 'name' is checked and completed with defaults;
    the result starts with ``name`` (the canonical spelling).
    """
    rest = {k: v for k, v in tree.items() if k != "name"}
    validated = validate_set(paramset, rest, path)
    out = Param()
    out["name"] = name
    for key, value in validated.items():
        if key != "name":
            out[key] = value
    return out


def validate_data(tree, path="scans.<label>.data"):
    """Validate ``scans.<label>.data`` through the loader named in ``name``.

    Returns a Param whose first key is the loader's canonical ``name``,
    followed by the loader's parameters with defaults filled in.
    """
    if tree is None:
        LOADERS.get(None, path + ".name")
    if not isinstance(tree, dict):
        names = LOADERS.names()
        raise ConfigError("%s: expected a mapping with at least 'name' (the loader%s), got %s" % (
            path, ": one of " + ", ".join(names) if names else "", describe_value(tree)))
    tree = _with_detected_loader(tree, path)
    entry = LOADERS.get(tree.get("name"), path + ".name")
    return validate_named(entry.name, entry.paramset, tree, path)


def _with_detected_loader(tree, path):
    """``tree`` with ``name`` filled in from ``dfile`` when it is missing or ``auto`` (:mod:`ptycli.scans.detect`)."""
    name = tree.get("name")
    if not (name is None or (isinstance(name, str) and name.strip().lower() in ("", "auto"))):
        return tree
    dfile = tree.get("dfile")
    if dfile is None or LOADERS.detector is None:
        if name is not None:  # 'auto' without a file to look at
            raise ConfigError("%s.name: 'auto' needs %s.dfile (the file whose format decides the loader)"
                              % (path, path))
        return tree
    detected, reason = LOADERS.detector(dfile)
    if detected is None and not os.path.exists(os.fspath(dfile)):
        raise ConfigError("%s.dfile: %s does not exist; check the file name (relative paths start in the "
                          "current folder)" % (path, dfile))
    if detected is None:
        raise ConfigError("%s.name: no loader given, and the format of %s could not be told (%s); expected "
                          "one of %s" % (path, dfile, reason, ", ".join(LOADERS.names())))
    logger.info("%s.name: %s (detected: %s is %s)", path, detected, dfile, reason)
    return dict(tree, name=detected)


def validate_scan(tree, path="scans.<label>"):
    """Validate one scan mapping; return it complete with defaults.

    Cross-scan checks (``probe_share``/``object_share`` naming existing scans)
    are done by :func:`ptycli.params.tree.validate`.
    """
    if tree is None:
        tree = {}
    if not isinstance(tree, dict):
        raise ConfigError("%s: expected a mapping of scan parameters (name, data, illumination, ...), got %s"
                          % (path, describe_value(tree)))
    model = SCAN_MODELS.get(tree.get("name", SCAN["name"].default), path + ".name")
    rest = {k: v for k, v in tree.items() if k != "data"}
    out = validate_set(scan_paramset(model.name), rest, path)
    out["name"] = model.name
    out["data"] = validate_data(tree.get("data"), path + ".data")
    check_slices(out, path)
    check_variable_probe(out, path)
    return out


def check_slices(scan, path="scans.<label>"):
    """A multislice object (``sample.slices > 1``) needs a slice distance and one object mode."""
    slices = int(scan.sample.slices)
    if slices <= 1:
        return
    if scan.sample.get("slice_distance_m") is None:
        raise ConfigError("%s.sample.slice_distance_m: %d object slices need the distance between them; set it "
                          "in metres (e.g. slice_distance_m: 5e-6)" % (path, slices))
    modes = int(scan.coherence.num_object_modes)
    if modes > 1:
        raise ConfigError("%s.sample.slices: a multislice object (%d slices) has one object mode, not %d; set "
                          "coherence.num_object_modes: 1 or sample.slices: 1" % (path, slices, modes))


def check_variable_probe(scan, path="scans.<label>"):
    """A variable probe (``illumination.variable_modes > 0``) is one coherent probe of a thin object, not shared."""
    k = int(scan.illumination.get("variable_modes") or 0)
    if k <= 0:
        return
    where = "%s.illumination.variable_modes" % path
    modes = int(scan.coherence.num_probe_modes)
    if modes > 1 and str(scan.get("name", "Full")).lower() != "vanilla":
        raise ConfigError("%s: a variable probe (%d eigen-probes) replaces incoherent probe modes, not %d; set "
                          "coherence.num_probe_modes: 1 or variable_modes: 0" % (where, k, modes))
    if int(scan.sample.get("slices", 1) or 1) > 1:
        raise ConfigError("%s: a variable probe is not supported with a multislice object (sample.slices: %d); "
                          "set variable_modes: 0 or sample.slices: 1" % (where, int(scan.sample.slices)))
    if scan.get("probe_share") is not None:
        raise ConfigError("%s: a scan with a variable probe cannot share the probe of scan %r; set "
                          "variable_modes: 0 or probe_share: null" % (where, scan.probe_share))
