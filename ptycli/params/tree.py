"""The parameter tree of a run: top-level declarations, validation, listings.

A configuration (``config.yaml``) is a mapping::

    verbose_level: info        # 0..5 as in PtyPy, or critical/error/warning/info/inspect/debug
    data_type: single          # single or double precision
    run: null                  # run label; null = the config file's name (see resolve_run_label)
    io:
      home: ./                 # output folder
      rfile: '{home}/{run}.h5' # result file template
      checkpoint: {interval: 50, path: null}
      format: [h5]             # h5 and/or cxi
    scans:                     # label -> scan (see ptycli.params.scan)
      MF: {data: {name: MoonFlowerScan}}
    engines:                   # label -> engine; run in the order written here
      dm: {name: DM, numiter: 100}
      ml: {name: ML, numiter: 50}

Engine order
------------
Engines run in the order their labels appear in the ``engines`` mapping of
the YAML file (YAML mappings are read, and Python dicts kept, in document
order). Labels are *not* sorted. An override (``engines.new.name=ML``) that
adds a label puts it after the existing ones. :func:`engine_sequence`
returns them in this order.

Functions
---------
:func:`validate` (complete, checked tree), :func:`defaults`,
:func:`describe` (rows for ``ptycli params``), :func:`dump_defaults_yaml`,
:func:`apply_overrides`, :func:`engine_sequence`, :func:`resolve_run_label`,
:func:`result_path`, :func:`checkpoint_path`, :func:`share_owner`.
"""

import collections
import os

import yaml

from .. import __version__
from ..errors import ConfigError
from ..utils.param_tree import Param
from .capabilities import CAPABILITIES, check_engines
from .declare import Parameter, ParamSet, describe_value
from .ptypy_names import translate as translate_ptypy_names
from .registry import ENGINES, LOADERS, load_plugins, suggest
from .scan import (DATA, ILLUMINATION_MODELS, SCAN, PathTemplate, RegistryName, WordList, check_label,
                   validate_scan, validate_set, validate_named)
from .overrides import apply_overrides, parse_override  # noqa: F401 (part of this module's API)
from .resume import RESUME_KEYS, check_resume  # noqa: F401 (part of this module's API)
from .yamlio import to_plain

__all__ = [
    "TOP",
    "ENGINE",
    "IO",
    "VerboseLevel",
    "Row",
    "validate",
    "validate_engine",
    "defaults",
    "scan_defaults",
    "engine_paramset",
    "describe",
    "dump_defaults_yaml",
    "apply_overrides",
    "parse_override",
    "engine_sequence",
    "WARMUP_SUFFIX",
    "resolve_run_label",
    "result_path",
    "checkpoint_path",
    "share_owner",
    "check_resume",
    "TEMPLATE_FIELDS",
]

#: Placeholders allowed in ``io.rfile`` and ``io.checkpoint.path``.
TEMPLATE_FIELDS = ("home", "run", "engine", "iterations")

_LEVEL_NAMES = ("critical", "error", "warning", "info", "inspect", "debug")


class VerboseLevel(Parameter):
    """PtyPy's ``verbose_level``: an integer 0..5 or a level name.

    Integers (also as strings, ``'3'``) are returned as ``int``; names
    case-insensitively as lower-case words (``warn`` gives ``warning``).
    """

    def __init__(self, name, default, doc):
        super().__init__(name, default, "any", doc)

    def expected(self):
        return "an integer 0..5 or one of " + ", ".join(_LEVEL_NAMES)

    def check(self, value, path=None):
        path = path or self.name
        if isinstance(value, str):
            text = value.strip().lower()
            if text == "warn":
                return "warning"
            if text in _LEVEL_NAMES:
                return text
            try:
                value = int(text)
            except ValueError:
                hint = suggest(text, _LEVEL_NAMES)
                raise ConfigError("%s: unknown level %r%s; expected %s" % (
                    path, value, " (did you mean %s?)" % " or ".join(hint) if hint else "",
                    self.expected())) from None
        if isinstance(value, bool) or not isinstance(value, int) and not (
                isinstance(value, float) and value.is_integer()):
            self._fail(path, value)
        value = int(value)
        if not 0 <= value <= 5:
            self._fail(path, value, "out of range")
        return value


IO = ParamSet("io", [
    Parameter("home", "./", "path", "output folder; relative paths are relative to the working directory"),
    PathTemplate("rfile", "{home}/{run}.h5", TEMPLATE_FIELDS,
                 "result file; placeholders {home}, {run}, {engine} (last engine label), "
                 "{iterations} (total iterations)"),
    ParamSet("checkpoint", [
        Parameter("interval", 50, "int", "write a checkpoint every this many iterations; "
                  "0 writes one only when an engine ends", low=0),
        PathTemplate("path", None, TEMPLATE_FIELDS, "checkpoint file; null puts it next to the result "
                     "(<result name without extension>.checkpoint.h5)", nullable=True),
        Parameter("keep", False, "bool", "keep the checkpoint files when the run finishes well (false: "
                  "removed once the result is written; a stopped or failed run always keeps them)"),
    ], "checkpoints for resuming a run"),
    WordList("format", ["h5"], "result formats to write: h5 (ptycli/HDF5) and/or cxi", choices=["h5", "cxi"],
             min_items=1),
    Parameter("keep_exit_waves", False, "bool", "store the exit waves (/state/exit, as large as all frames) "
              "in the result; without them a run resumed from the result restarts them from probe x object"),
], "output files")

TOP = ParamSet("", [
    VerboseLevel("verbose_level", "info", "logging verbosity: 0 critical, 1 error, 2 warning, 3 info, "
                 "4 inspect, 5 debug (or the name)"),
    Parameter("data_type", "single", "str", "floating-point precision of the reconstruction",
              choices=["single", "double"]),
    Parameter("run", None, "str", "run label used in output names; null takes the config file's name"),
    IO,
    Parameter("scans", {}, "dict", "the scans, by label (see scans.<label>.*); a run needs at least one",
              nullable=True),
    Parameter("engines", {}, "dict", "the engines, by label, run in the order written (see engines.<label>.*)",
              nullable=True),
], "a ptycli run")

#: Parameters common to every engine; an engine's own ParamSet is added to these.
ENGINE = ParamSet("engine", [
    RegistryName("name", None, ENGINES, "reconstruction engine", nullable=True),
    Parameter("numiter", 20, "int", "number of iterations", low=0),
], "one engine of the chain")


# -- validation --------------------------------------------------------------------

def engine_paramset(name):
    """Declarations of engine ``name`` (any case): :data:`ENGINE` plus the engine's own."""
    entry = ENGINES.get(name)
    return ENGINE.extended(entry.name, list(entry.paramset), doc=ENGINE.doc)


def validate_engine(tree, path="engines.<label>"):
    """Validate one engine mapping through the engine named in ``name``; 'name' first."""
    if tree is None:
        tree = {}
    if not isinstance(tree, dict):
        raise ConfigError("%s: expected a mapping with at least 'name' and 'numiter', got %s"
                          % (path, describe_value(tree)))
    entry = ENGINES.get(tree.get("name"), path + ".name")
    merged = ENGINE.extended(entry.name, list(entry.paramset))
    return validate_named(entry.name, merged, tree, path)


def _labelled(tree, key, check_one):
    value = tree.get(key)
    if value is None:
        return Param()
    out = Param()
    for label, sub in value.items():
        path = "%s.%s" % (key, label)
        check_label(label, path)
        out[label] = check_one(sub, path)
    return out


def validate(tree=None, require_scans=False, require_engines=False):
    """Check a configuration tree; return it complete with defaults.

    Loads the loader/engine plugins first (:func:`registry.load_plugins`).

    Parameters
    ----------
    tree : dict or Param or None
        The configuration (dotted keys allowed). Not modified.
    require_scans, require_engines : bool
        Demand at least one scan / engine (``ptycli reconstruct`` needs both,
        ``ptycli simulate`` only scans; model building alone needs neither).

    Returns
    -------
    Param
        A new tree: every declared key present, values converted to their
        declared types (pairs as tuples of floats), canonical names for
        loaders, engines and scan models, scans and engines in given order.
        PtyPy's own parameter names are translated or dropped first, each
        logged (:func:`ptycli.params.ptypy_names.translate`).

    Raises
    ------
    ConfigError
        Naming the dotted path, what was expected and, for unknown keys or
        names, the closest valid ones.
    """
    load_plugins()
    if tree is None:
        tree = {}
    if not isinstance(tree, dict):
        raise ConfigError("top level: expected a mapping of parameters, got %s" % describe_value(tree))
    tree = translate_ptypy_names(Param(tree))
    out = validate_set(TOP, tree, "")
    _check_unnamed_labels(out)
    out["scans"] = _labelled(out, "scans", validate_scan)
    out["engines"] = _labelled(out, "engines", validate_engine)
    _check_shares(out.scans)
    check_engines(out)  # multislice objects and variable probes: only the engines that model them
    if require_scans and not out.scans:
        names = LOADERS.names()
        raise ConfigError("scans: no scan given; add one, e.g. scans.MF.data.name: %s"
                          % ("MoonFlowerScan" if "MoonFlowerScan" in LOADERS or not names else names[0]))
    if require_engines and not out.engines:
        names = ENGINES.names()
        raise ConfigError("engines: no engine given; add one, e.g. engines.%s.name: %s%s" % (
            "dm" if "DM" in ENGINES or not names else names[0].lower(),
            "DM" if "DM" in ENGINES or not names else names[0],
            " (registered: %s)" % ", ".join(names) if names else ""))
    return out


def _named(group, sub):
    """Whether scan/engine ``sub`` names its loader/engine (a mistyped label usually does not)."""
    if not isinstance(sub, dict):
        return True  # reported as a type error later
    if group == "engines":
        return sub.get("name") is not None
    data = sub.get("data")
    return not isinstance(data, dict) or data.get("name") is not None


def _check_unnamed_labels(tree):
    """A scan or engine without a name whose label is close to another's: a typo ("did you mean dm?").

    ``--set engines.dn.numiter=10`` (for ``dm``) adds a new engine ``dn`` with
    only ``numiter``; saying "no engine given" would hide the typo.
    """
    for group, what, key in (("scans", "scan", "data.name"), ("engines", "engine", "name")):
        items = tree.get(group) or {}
        for label, sub in items.items():
            if _named(group, sub):
                continue
            others = [str(o) for o, osub in items.items() if o != label and _named(group, osub)]
            hint = suggest(label, others)
            if hint:
                registry = LOADERS if group == "scans" else ENGINES
                raise ConfigError(
                    "%s.%s: %s label %r has no %s (did you mean %s?)" % (
                        group, label, what, label, "loader" if group == "scans" else "engine name",
                        " or ".join(hint)),
                    hint="correct the label, or give the new %s %s.%s.%s (one of %s)" % (
                        what, group, label, key, ", ".join(registry.names())))


def _check_shares(scans):
    for what in ("probe", "object"):
        key = what + "_share"
        for label, scan in scans.items():
            target = scan.get(key)
            if target is None:
                continue
            path = "scans.%s.%s" % (label, key)
            if target == label:
                raise ConfigError("%s: a scan cannot share its %s with itself; use null" % (path, what))
            if target not in scans:
                hint = suggest(target, [s for s in scans if s != label])
                raise ConfigError("%s: no scan labelled %r%s; expected the label of another scan (%s)" % (
                    path, target, " (did you mean %s?)" % " or ".join(hint) if hint else "",
                    ", ".join(s for s in scans if s != label) or "there is no other scan"))
            if what == "probe" and int(scans[target].illumination.get("variable_modes") or 0) > 0:
                raise ConfigError("%s: scan %r has a variable probe (illumination.variable_modes: %d), which other "
                                  "scans cannot share; set probe_share: null" % (
                                      path, target, int(scans[target].illumination.variable_modes)))
            if what == "object":
                for sub in ("slices", "slice_distance_m"):
                    mine, theirs = scan.sample.get(sub), scans[target].sample.get(sub)
                    if mine != theirs and (sub == "slices" or int(scan.sample.slices) > 1):
                        raise ConfigError("%s: scan %r has sample.%s %s, the shared object of scan %r %s; give "
                                          "both the same" % (path, label, sub, mine, target, theirs))
            further = scans[target].get(key)
            if further is not None:
                raise ConfigError("%s: scan %r itself takes its %s from %r; name %r directly" % (
                    path, target, what, further, further))














def share_owner(p, label, what="probe"):
    """Label of the scan that owns the probe (``what='probe'``) or object used by scan ``label``."""
    return p.scans[label].get(what + "_share") or label


def defaults():
    """The top-level defaults (no scans, no engines) as a Param."""
    return TOP.defaults()


def scan_defaults(loader="MoonFlowerScan"):
    """A complete, validated scan using ``loader`` with its defaults (``loader`` must be registered)."""
    load_plugins()
    return validate_scan({"data": {"name": loader}}, "scans.<label>")


#: Label suffix of the warm-up engine put before a first engine that declares ``warmup`` (:func:`engine_sequence`).
WARMUP_SUFFIX = "_warmup"


def engine_sequence(p, near_field=None):
    """The engines of tree ``p`` in run order: a list of ``(label, Param)``.

    The order is the order of the labels in the ``engines`` mapping as
    written in the YAML file (see the module docstring).

    Warm-up: an engine's first iterations from a model probe can decide
    where it ends. A refining engine (ML, LSQML) stalls when it starts from
    a probe that is not a reconstruction, and the difference map (DM, RAAR)
    leaves the plane-wave start of a near-field scan slowly. When a scan's
    probe starts from a model (``illumination.model`` one of ``auto``,
    ``flat``, ``aperture``, ..., not a file) and the first engine's
    ``warmup`` is above 0, an engine of that many iterations runs first,
    labelled ``<label>_warmup``: DM before ML and LSQML, mPIE before DM and
    RAAR (their ``warmup: auto`` is above 0 only in near field from the
    automatic guess, ``illumination.model: auto``). A warm-up
    engine may have its own (``<label>_warmup_warmup``). The chain is a
    function of the tree and the scans' propagation, so a resumed run finds
    the same engines.
    No warm-up runs when a scan is multislice or has a variable probe
    (:data:`~ptycli.params.capabilities.CAPABILITIES`): their engines start
    the slices and eigen-probes themselves.

    Parameters
    ----------
    p : Param
        A validated tree.
    near_field : bool, optional
        Whether a scan is near field; default: a scan's ``propagation`` in
        ``p`` is ``nearfield`` (the scan model writes the resolved value
        there when it loads the data; before that, a caller that read the
        inputs' recorded propagation passes it).
    """
    engines = p.get("engines") if isinstance(p, dict) else None
    seq = [(label, sub) for label, sub in (engines or {}).items()]
    if not seq or not _probe_from_model(p) or not _plain_scans(p):
        return seq
    if near_field is None:
        near_field = any(str((scan or {}).get("propagation")).lower() == "nearfield"
                         for scan in (p.get("scans") or {}).values())
    # the near-field warm-up starts from the automatic guess, which offers local engines no plane wave: from a
    # plane wave (model: flat) ePIE puts the probe's structure into the object (foreign_nearfield, DM 50 + ML 50
    # from flat: 0.649 without the warm-up, 0.029 with it)
    near_field_guess = near_field and _probe_from_model(p, models=("auto",))
    for _ in range(len(ENGINES.names())):  # bounded: declarations that form a cycle cannot loop forever
        label, first = seq[0]
        engine, iterations = _warmup(first, near_field_guess)
        if not engine or iterations <= 0:
            return seq
        seq.insert(0, (label + WARMUP_SUFFIX, validate_engine(
            {"name": engine, "numiter": iterations}, "engines.%s.warmup" % label)))
    return seq


def _warmup(engine_pars, near_field_guess):
    """The warm-up of an engine as the first of a chain: ``(engine name or None, iterations)``.

    The engine class declares which engine warms it up (``WARMUP_ENGINE``) and
    what ``warmup: auto`` means in near field from the automatic probe guess
    (``AUTO_WARMUP_NEAR_FIELD``; elsewhere ``auto`` is 0).
    """
    entry = ENGINES.find(str(engine_pars.get("name")))
    factory = getattr(entry, "factory", None)
    iterations = engine_pars.get("warmup") or 0
    if iterations == "auto":
        iterations = getattr(factory, "AUTO_WARMUP_NEAR_FIELD", 0) if near_field_guess else 0
    return getattr(factory, "WARMUP_ENGINE", None), int(iterations)


def _plain_scans(p):
    """Whether no scan of ``p`` asks for a model option (multislice object, variable probe: :data:`CAPABILITIES`)."""
    return not any(cap.requested(scan or {}) for scan in (p.get("scans") or {}).values()
                   for cap in CAPABILITIES.values())


def _probe_from_model(p, models=ILLUMINATION_MODELS):
    """Whether a scan of ``p`` starts from a model probe (``illumination.model`` one of ``models``, not a file)."""
    for scan in (p.get("scans") or {}).values():
        model = ((scan.get("illumination") or {}).get("model")) or "auto"
        if str(model).lower() in models:
            return True
    return False


# -- run label and output paths ----------------------------------------------------------

def resolve_run_label(p, config_path=None):
    """Set ``p.run`` when it is null: the config file's name without extension.

    Standard input, text or no file give ``'ptycli'``. Returns the label.
    """
    if p.get("run"):
        return p["run"]
    label = "ptycli"
    if config_path not in (None, "-") and "\n" not in str(config_path):
        stem = os.path.splitext(os.path.basename(os.fspath(config_path)))[0]
        if stem:
            label = stem
    p["run"] = label
    return label


def _fill(template, p, engine, iterations):
    home = os.path.expanduser(str(p.io.home))
    if engine is None:
        seq = engine_sequence(p)
        engine = seq[-1][0] if seq else "none"
    fields = dict(home=home, run=p.get("run") or "ptycli", engine=engine, iterations=int(iterations or 0))
    try:
        text = template.format(**fields)
    except (KeyError, IndexError, ValueError) as exc:
        raise ConfigError("io: cannot fill the template %r (%s)" % (template, exc)) from None
    return os.path.normpath(os.path.expanduser(text))


def result_path(p, engine=None, iterations=None):
    """The result file of validated tree ``p``: ``io.rfile`` with its placeholders filled.

    ``engine`` defaults to the label of the last engine, ``iterations`` to 0.
    """
    return _fill(p.io.rfile, p, engine, iterations)


def checkpoint_path(p, engine=None, iterations=None):
    """The checkpoint file: ``io.checkpoint.path`` filled, or ``<result>.checkpoint.h5``."""
    if p.io.checkpoint.get("path"):
        return _fill(p.io.checkpoint.path, p, engine, iterations)
    root = os.path.splitext(result_path(p, engine, iterations))[0]
    return root + ".checkpoint.h5"  # always .h5, whatever the result's extension


# -- listings ----------------------------------------------------------------------------

#: One row of ``ptycli params``: dotted path, default, words for the type, doc, unit.
Row = collections.namedtuple("Row", "path default type doc unit")


def _rows_of(ps, prefix, out, skip=()):
    for e in ps:
        if e.name in skip:
            continue
        path = "%s.%s" % (prefix, e.name) if prefix else e.name
        if isinstance(e, ParamSet):
            _rows_of(e, path, out)
        else:
            out.append(Row(path, e.default, e.expected(), e.doc, e.unit))


def _all_rows():
    load_plugins()
    rows = []
    _rows_of(TOP, "", rows, skip=("scans", "engines"))
    rows.append(Row("scans", {}, TOP["scans"].expected(), TOP["scans"].doc, None))
    _rows_of(SCAN, "scans.<label>", rows)
    for entry in LOADERS.entries():
        _rows_of(entry.paramset, "scans.<label>.data[%s]" % entry.name, rows, skip=("name",))
    rows.append(Row("engines", {}, TOP["engines"].expected(), TOP["engines"].doc, None))
    _rows_of(ENGINE, "engines.<label>", rows)
    for entry in ENGINES.entries():
        _rows_of(entry.paramset, "engines.<label>[%s]" % entry.name, rows, skip=("name", "numiter"))
    return rows


def _part_matches(q, r):
    ql = q.lower()
    base, _, qual = r.partition("[")
    qual = qual[:-1] if qual else None
    if ql == r.lower():
        return True
    if base == "<label>":
        if qual is not None and q in ENGINES:
            return ql == qual.lower()
        return "[" not in q
    return qual is not None and q == base


def describe(path=None):
    """Rows ``(path, default, type, doc, unit)`` of all declared parameters, or of those under ``path``.

    Row paths use ``<label>`` for scan and engine labels and name the loader
    or engine a parameter belongs to in brackets::

        scans.<label>.illumination.photons
        scans.<label>.data[MoonFlowerScan].shape
        engines.<label>.numiter
        engines.<label>[DM].alpha

    ``path`` selects rows by dotted prefix: a concrete label matches
    ``<label>`` (``scans.MF.sample``), ``data`` matches every loader's rows
    (``data[HDF5]`` one loader's), and under ``engines`` a registered engine
    name selects that engine (``engines.DM`` gives the common rows and DM's).

    Raises
    ------
    ConfigError
        When nothing matches (with the closest paths).
    """
    rows = _all_rows()
    if not path:
        return rows
    query = [q for q in str(path).strip().split(".")]
    if any(not q for q in query):
        raise ConfigError("params: malformed path %r" % path)
    hits = []
    for row in rows:
        parts = row.path.split(".")
        if len(parts) < len(query):
            continue
        if all(_part_matches(q, r) for q, r in zip(query, parts)):
            hits.append(row)
    if not hits:
        raise ConfigError("params: no parameter matches %r%s" % (path, _nearest_paths(query, rows)),
                          hint="`ptycli params` lists them all")
    return hits


def _nearest_paths(query, rows):
    """' (did you mean ...?)' for a query that matches nothing: the closest paths, else the top-level names.

    Whole dotted prefixes are compared first; then the query's last name
    against the names of all parameters (``numitr`` finds
    ``engines.<label>.numiter``).
    """
    prefixes = sorted({".".join(r.path.split(".")[:n]) for r in rows for n in range(1, len(query) + 1)})
    hint = suggest(".".join(query), prefixes)
    if not hint:
        by_name = {}
        for r in rows:
            by_name.setdefault(r.path.split(".")[-1].split("[")[0], []).append(r.path)
        names = suggest(query[-1], by_name)
        hint = sorted({p for n in names for p in by_name[n]}, key=len)[:3]
    if hint:
        return " (did you mean %s?)" % " or ".join(hint)
    top = []
    for r in rows:
        first = r.path.split(".")[0]
        if first not in top:
            top.append(first)
    return "; the top-level names are %s" % ", ".join(top)


# -- commented default YAML -------------------------------------------------------------

def _flow(value):

    text = yaml.safe_dump([to_plain(value)], default_flow_style=True, width=10 ** 9,
                          allow_unicode=True).strip()
    return text[1:-1]


def _comment(e):
    words = e.expected()
    unit = " [%s]" % e.unit if e.unit else ""
    doc = e.doc[:1].upper() + e.doc[1:] if e.doc else ""
    return "%s%s; %s" % (doc, unit, words)


def _emit(ps, values, indent, lines):
    pad = " " * indent
    for e in ps:
        if isinstance(e, ParamSet):
            if e.doc:
                lines.append("%s# %s" % (pad, e.doc[:1].upper() + e.doc[1:]))
            lines.append("%s%s:" % (pad, e.name))
            _emit(e, values.get(e.name) or Param(), indent + 2, lines)
        else:
            lines.append("%s# %s" % (pad, _comment(e)))
            lines.append("%s%s: %s" % (pad, e.name, _flow(values.get(e.name, e.default))))


def _commented(lines, indent):
    pad = " " * indent
    return [pad + "# " + line[indent:] if line.strip() else line for line in lines]


def _example_scan(indent):
    """Lines of scan 'MF' (MoonFlowerScan) and whether they are real (not commented)."""
    entry = LOADERS.find("MoonFlowerScan")
    if entry is not None:
        data_ps = ParamSet("data", [DATA["name"]] + [e for e in entry.paramset if e.name != "name"], DATA.doc)
        values = SCAN.defaults()
        values["data"] = data_ps.defaults()
        values["data"]["name"] = entry.name
        ps = ParamSet("scan", [data_ps if e.name == "data" else e for e in SCAN], SCAN.doc)
    else:
        ps = SCAN
        values = SCAN.defaults()
        values["data"] = Param(name="MoonFlowerScan")
    lines = ["%s# %s; the label (here MF) is free" % (" " * indent, SCAN.doc[:1].upper() + SCAN.doc[1:]),
             " " * indent + "MF:"]
    _emit(ps, values, indent + 2, lines)
    return lines, entry is not None


def _example_engine(indent):
    names = ENGINES.names()
    name = "DM" if "DM" in ENGINES else (names[0] if names else None)
    if name is None:
        lines = [" " * indent + "dm:", " " * (indent + 2) + "# " + _comment(ENGINE["name"]),
                 " " * (indent + 2) + "name: DM",
                 " " * (indent + 2) + "# " + _comment(ENGINE["numiter"]),
                 " " * (indent + 2) + "numiter: %d" % ENGINE["numiter"].default]
        return lines, False
    ps = engine_paramset(name)
    values = ps.defaults()
    values["name"] = ENGINES.find(name).name
    lines = [" " * indent + "%s:" % name.lower()]
    _emit(ps, values, indent + 2, lines)
    return lines, True


def dump_defaults_yaml():
    """A complete commented YAML configuration with every parameter at its default.

    Each key is preceded by a ``# doc [unit]; expected values`` comment. The
    scans section shows one scan ``MF`` using the MoonFlowerScan loader and
    the engines section one engine (``dm``: DM, or the first registered
    engine); when that loader or no engine is installed, the example is
    written as comments (and the mapping left empty), so the text always
    loads and validates.
    """

    load_plugins()
    lines = ["# ptycli %s configuration: every parameter at its default." % __version__,
             "# Keys you leave out take these values; see `ptycli params` for a listing.", ""]
    top_rest = ParamSet("", [e for e in TOP if e.name not in ("scans", "engines")], TOP.doc)
    _emit(top_rest, TOP.defaults(), 0, lines)

    for key, example, missing in (
            ("scans", _example_scan, "the MoonFlowerScan loader is not installed; a scan"),
            ("engines", _example_engine, "no engine is installed; an engine")):
        lines.append("")
        lines.append("# " + _comment(TOP[key]))
        body, real = example(2)
        if real:
            lines.append(key + ":")
            lines.extend(body)
        else:
            lines.append(key + ": {}")
            lines.append("  # %s looks like this:" % missing)
            lines.extend(_commented(body, 2))
    return "\n".join(lines) + "\n"
