"""ptycli's reconstruction file: the result of ``ptycli reconstruct`` (and its checkpoints).

One HDF5 file per run, written atomically by MPI rank 0. Checkpoints use the
same layout (``kind='checkpoint'``); a result file holds the resume state
too, so ``ptycli reconstruct CONFIG --resume RESULT.h5`` continues a finished
run with more iterations.

Layout (format version 1)
-------------------------
::

    /                                   attrs: format='ptycli-reconstruction', format_version=1,
                                               kind='result' | 'checkpoint', creator='ptycli <version>',
                                               created=<ISO 8601 time>, run=<run label>
    /reconstruction/object/<storageID>  (layers, rows, cols) complex: object modes;
                                        attrs psize (2,) [m], center (2,) [pixel: the
                                        physical origin], origin (2,) [m: pixel (0, 0)],
                                        units='m', axes='layer,y,x'
                                        a multislice object (sample.slices > 1): the layers are
                                        the slices in beam order (the probe's plane is slice 0's),
                                        axes='slice,y,x', attrs slices, slice_distance [m]
    /reconstruction/probe/<storageID>   (modes, rows, cols) complex: probe modes; same attrs
                                        a variable probe (illumination.variable_modes: K): the K
                                        eigen-probes, strongest first, axes='eigenprobe,y,x',
                                        attr variable_modes (ptycli.core.variable_probe)
    /scans/<label>/positions            (N, 2) float64 final scan positions (y, x), units='m'
    /scans/<label>/positions_initial    (N, 2) float64 positions before refinement, units='m'
    /scans/<label>/indices              (N,) int64 global frame indices of the rows above
    /scans/<label>/background           (rows, cols) float: the fitted incoherent background, counts per
                                        detector pixel and frame (only with scans.<label>.background:
                                        true; ptycli.core.background), attr units
    /scans/<label>/probe_weights        (N, K) complex128: a variable probe's weights, frame N's probe
                                        is sum_k w[N, k] eigenprobe_k (rows as indices; only with
                                        illumination.variable_modes: K > 0)
    /scans/<label>                      attrs: energy (keV), distance (m), detector_psize (2,) [m],
                                               resolution (2,) [m: sample pixel], shape (2,) [pixel],
                                               num_frames, propagation, loader, source,
                                               probe (storage ID), object (storage ID),
                                               slices (object slices; 1: thin),
                                               slice_distance_m (m, when slices > 1),
                                               intensity_scale (detector units per unit of the
                                               model's intensities: the frames were divided by it as
                                               they were loaded, photon counts times a constant or
                                               frames far from photons' scale; 1: as stored)
    /history/<column>                   the error history, one row per engine iteration:
                                          iteration        int64   iteration over the whole chain (1-based)
                                          engine_iteration int64   iteration within its engine (1-based)
                                          engine           str     engine label (e.g. 'dm')
                                          engine_name      str     engine class (e.g. 'DM')
                                          fourier_error    float64 (NaN when the engine does not report it)
                                          photon_error     float64
                                          exit_change      float64
                                          likelihood       float64
                                          model_fourier_error float64 DM/RAAR: the Fourier error of
                                                           probe x object itself (fourier_error is
                                                           that of the projection input); NaN at
                                                           iterations where it was not computed
                                          model_photon_error  float64 likewise
                                          time_s           float64 [s] time of the iteration
                                        attr columns = the column names in this order
    /engines                            attr order = engine labels in run order
    /health                             the health check after each engine (ptycli.engines.health);
                                        attr order = engine labels
    /health/<label>                     attrs: iteration (chain iteration checked), engine_name,
                                               findings (their number; 0 = nothing found)
    /health/<label>/code                (N,) fixed-length UTF-8: finding codes (e.g. 'probe_off_centre')
    /health/<label>/message             (N,) fixed-length UTF-8: one line each, problem and what to try
    /health/<label>/values              (N,) fixed-length UTF-8: JSON objects, the numbers judged
    /engines/<label>                    attrs: name, numiter, iterations (done), finished (bool),
                                               time_s, final_<error> for each error column
    /parameters/yaml                    str: the complete resolved parameter tree (YAML), reusable
                                        as a config file
    /parameters                         attrs: config (the config file given, '-' for stdin),
                                               overrides (the --set items)
    /provenance                         attrs: ptycli, python, numpy, scipy, h5py, mpi4py, platform,
                                               command_line, cwd, host, mpi_size, start_time,
                                               end_time (ISO 8601), duration_s
    /state                              what ``--resume`` needs; attrs: engine_index, engine_label,
                                        engine_name, engine_iteration (iterations done by the engine
                                        at engine_index), engine_finished (bool: that engine ended),
                                        total_iterations, finished (bool: the whole chain ran),
                                        data_type, mpi_size
    /state/exit/<storageID>             (layers, rows, cols) exit waves of all ranks, attr layermap
                                        (global layer of each row); always in checkpoints, in
                                        results only with io.keep_exit_waves: true (a resume
                                        without them restarts them from probe x object)
    /state/engine/...                   the engine's ``state_dict()`` without its probe/object/exit
                                        copies (iteration counters, RNG state, engine arrays): a tree of
                                        groups, arrays as datasets, other values as typed scalars or
                                        JSON (attr type); under MPI ranks r > 0 under
                                        /state/engine/ranks/<r>/

The probe and object are found at ``/reconstruction/probe/<storageID>`` and
``/reconstruction/object/<storageID>`` (storage IDs are ``'S' + scan label``), which is
where an initial-guess loader (``illumination.model: recon``/``sample.model: recon``)
looks for them. Readers should ignore groups and attributes they do not know;
the layout only grows within format version 1.

Python API
----------
:func:`write_reconstruction` writes a plain-dict snapshot (see its docstring),
:func:`load_reconstruction` reads a file back into a :class:`Reconstruction`
(parameters as a :class:`~ptycli.utils.parameters.Param`, arrays as numpy).
"""

import dataclasses
import datetime
import os
from typing import Optional

import numpy as np

from .. import __version__
from ..errors import DataError
from ..params.yamlio import load_config_text
from ..utils.parameters import Param
from .atomic import atomic_write
from .h5guard import check_structure
from .h5text import fixed_text
from .hdf5 import open_hdf5
from .h5tree import get_attrs, read_tree, set_attrs, write_tree
from .history import (ERROR_COLUMNS, HISTORY_COLUMNS, attach_health, health_reports, history_table, read_health,
                      read_history, write_health, write_history)
from .reading import check_format
from .reading import h5_text as _str

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "HISTORY_COLUMNS",
    "ERROR_COLUMNS",
    "Reconstruction",
    "write_reconstruction",
    "load_reconstruction",
    "is_reconstruction",
    "history_table",
    "health_reports",
    "read_health",
    "write_tree",
    "read_tree",
]

FORMAT = "ptycli-reconstruction"
FORMAT_VERSION = 1


def _creator():
    return "ptycli %s" % __version__


def _now():
    return datetime.datetime.now(datetime.timezone.utc).astimezone().isoformat(timespec="seconds")


# -- writing -------------------------------------------------------------------------------

def _write_storages(group, storages):
    for sid, s in storages.items():
        ds = group.create_dataset(sid, data=np.asarray(s["data"]))
        set_attrs(ds, {
            "psize": np.asarray(s.get("psize", (1.0, 1.0)), dtype=np.float64),
            "center": np.asarray(s.get("center", (0.0, 0.0)), dtype=np.float64),
            "origin": np.asarray(s.get("origin", (0.0, 0.0)), dtype=np.float64),
            "units": "m",
            "axes": "slice,y,x" if s.get("slices", 1) > 1 else
                    "eigenprobe,y,x" if s.get("variable_modes", 0) > 0 else "layer,y,x",
        })
        if s.get("variable_modes", 0) > 0:
            set_attrs(ds, {"variable_modes": int(s["variable_modes"])})
        if s.get("slices", 1) > 1:
            set_attrs(ds, {"slices": int(s["slices"]), "slice_distance": float(s["slice_distance"])})


def write_reconstruction(path, snap, kind="result"):
    """Write a snapshot dict to ``path`` atomically (rank 0 only); return ``path``.

    ``snap`` keys (all optional except ``objects`` and ``probes``):

    ``objects``, ``probes``
        ``{storageID: {'data': array, 'psize': (2,), 'center': (2,), 'origin': (2,)}}``
    ``scans``
        ``{label: {'positions': (N, 2), 'positions_initial': (N, 2), 'indices': (N,), <attrs>}}``
    ``history``
        list of per-iteration dicts
    ``engines``
        list of dicts ``{label, name, numiter, iterations, finished, time_s, final_*}``
    ``parameters_yaml``, ``config``, ``overrides``, ``run``
    ``provenance``
        flat dict of strings and numbers
    ``state``
        ``{'attrs': {...}, 'exit': {sid: {'data', 'layermap'}}, 'engine': tree}``
    """
    import h5py

    with atomic_write(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs["format"] = FORMAT
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["kind"] = str(kind)
            f.attrs["creator"] = _creator()
            f.attrs["created"] = _now()
            if snap.get("run"):
                f.attrs["run"] = str(snap["run"])
            rec = f.create_group("reconstruction")
            _write_storages(rec.create_group("object"), snap.get("objects") or {})
            _write_storages(rec.create_group("probe"), snap.get("probes") or {})

            scans = f.create_group("scans")
            for label, sc in (snap.get("scans") or {}).items():
                g = scans.create_group(label)
                for key in ("positions", "positions_initial"):
                    if sc.get(key) is not None:
                        ds = g.create_dataset(key, data=np.asarray(sc[key], dtype=np.float64).reshape(-1, 2))
                        ds.attrs["units"] = "m"
                        ds.attrs["axes"] = "y,x"
                if sc.get("indices") is not None:
                    g.create_dataset("indices", data=np.asarray(sc["indices"], dtype=np.int64))
                if sc.get("background") is not None:
                    ds = g.create_dataset("background", data=np.asarray(sc["background"]))
                    set_attrs(ds, {"units": "counts per pixel and frame", "axes": "y,x",
                                   "description": "fitted incoherent background, the same in every frame"})
                if sc.get("probe_weights") is not None:
                    ds = g.create_dataset("probe_weights", data=np.asarray(sc["probe_weights"], dtype=np.complex128))
                    set_attrs(ds, {"axes": "frame,eigenprobe",
                                   "description": "weights of the eigen-probes in each frame's probe (rows as indices)"})
                set_attrs(g, {k: v for k, v in sc.items()
                               if k not in ("positions", "positions_initial", "indices", "background",
                                            "probe_weights")})

            write_history(f, snap.get("history"))
            write_health(f, snap.get("history"))

            eng = f.create_group("engines")
            engines = list(snap.get("engines") or [])
            eng.attrs["order"] = [str(e["label"]) for e in engines] or [""]
            for e in engines:
                set_attrs(eng.create_group(str(e["label"])), {k: v for k, v in e.items() if k != "label"})

            par = f.create_group("parameters")
            par.create_dataset("yaml", data=fixed_text(snap.get("parameters_yaml") or ""))
            set_attrs(par, {"config": snap.get("config"), "overrides": list(snap.get("overrides") or []) or None})

            prov = f.create_group("provenance")
            set_attrs(prov, snap.get("provenance") or {})

            state = snap.get("state")
            if state is not None:
                st = f.create_group("state")
                set_attrs(st, state.get("attrs") or {})
                if state.get("exit"):  # results hold them only with io.keep_exit_waves
                    ex = st.create_group("exit")
                    for sid, s in state["exit"].items():
                        ds = ex.create_dataset(sid, data=np.asarray(s["data"]))
                        ds.attrs["layermap"] = np.asarray(s["layermap"], dtype=np.int64)
                write_tree(st.create_group("engine"), state.get("engine") or {})
    return os.fspath(path)


# -- reading -------------------------------------------------------------------------------

@dataclasses.dataclass
class Reconstruction:
    """A reconstruction file read back (see the module docstring for the layout)."""

    path: str
    kind: str
    #: the resolved parameter tree (Param) and its YAML text
    params: object
    parameters_yaml: str
    #: {storageID: complex array (layers, rows, cols)}
    objects: dict
    probes: dict
    #: {storageID: {'psize': (2,), 'center': (2,), 'origin': (2,)}}
    object_meta: dict
    probe_meta: dict
    #: {scan label: {'positions', 'positions_initial', 'indices', ('background', 'probe_weights') attrs...}}
    scans: dict
    #: list of per-iteration dicts
    history: list
    #: list of per-engine dicts (run order)
    engines: list
    provenance: dict
    attrs: dict
    #: resume state: {'attrs': {...}, 'exit': {sid: {'data', 'layermap'}}, 'engine': tree}, or None
    state: Optional[dict] = None
    #: health check per engine: {label: {'iteration', 'engine_name', 'findings': [{code, message, values}]}}
    health: dict = dataclasses.field(default_factory=dict)

    @property
    def object(self):
        """The first object storage's array (layers, rows, cols)."""
        return next(iter(self.objects.values())) if self.objects else None

    @property
    def probe(self):
        """The first probe storage's array (modes, rows, cols)."""
        return next(iter(self.probes.values())) if self.probes else None

    @property
    def total_iterations(self):
        """Iterations over the whole chain."""
        if self.state is not None and "total_iterations" in self.state.get("attrs", {}):
            return int(self.state["attrs"]["total_iterations"])
        return int(self.history[-1]["iteration"]) if self.history else 0

    def history_table(self):
        """The history as columns (dict of arrays)."""
        return history_table(self.history)


def is_reconstruction(path):
    """True when ``path`` is an HDF5 file with ``format='ptycli-reconstruction'``."""
    import h5py

    try:
        check_structure(path)
        with h5py.File(path, "r") as f:
            return _str(f.attrs.get("format", "")) == FORMAT
    except (OSError, TypeError, ValueError, DataError):
        return False


def _storages(group):
    arrays, meta = {}, {}
    if group is None:
        return arrays, meta
    for sid, ds in group.items():
        arrays[sid] = ds[()]
        a = get_attrs(ds)
        meta[sid] = {k: np.asarray(a[k], dtype=np.float64) for k in ("psize", "center", "origin") if k in a}
        if int(a.get("slices", 1)) > 1:
            meta[sid].update(slices=int(a["slices"]), slice_distance=float(a["slice_distance"]))
        if int(a.get("variable_modes", 0)) > 0:
            meta[sid]["variable_modes"] = int(a["variable_modes"])
    return arrays, meta


def load_reconstruction(path, with_state=True):
    """Read a reconstruction (or checkpoint) file written by ptycli.

    Parameters
    ----------
    path : str or path-like
        The ``.h5`` file: a result or a checkpoint.
    with_state : bool
        Whether to read ``/state`` too (its exit waves can be large).

    Returns
    -------
    Reconstruction
        ``params`` (Param of the resolved tree), ``objects``/``probes``
        (``{storageID: array}``), ``scans`` (positions per scan), ``history``,
        ``engines``, ``provenance``, ``state``.

    Raises
    ------
    DataError
        When the file is missing, not HDF5, not a ptycli reconstruction, or
        of a newer format version.
    """
    import h5py

    path = os.fspath(path)
    with open_hdf5(path, "reconstruction file") as f:
        check_format(f, path, FORMAT, FORMAT_VERSION, "reconstruction file", "reconstruction",
                     hint="give a file written by 'ptycli reconstruct'")
        objects, object_meta = _storages(f.get("reconstruction/object"))
        probes, probe_meta = _storages(f.get("reconstruction/probe"))
        scans = {}
        for label, g in (f.get("scans") or {}).items():
            sc = get_attrs(g)
            for key in ("positions", "positions_initial", "indices", "background", "probe_weights"):
                if key in g:
                    sc[key] = g[key][()]
            scans[label] = sc
        history = read_history(f.get("history"))
        health = read_health(f.get("health"))
        attach_health(history, health)
        engines = []
        eg = f.get("engines")
        if eg is not None:
            order = [o for o in (get_attrs(eg).get("order") or []) if o]
            for label in order + sorted(set(eg.keys()) - set(order)):
                if label in eg:
                    engines.append(dict(label=label, **get_attrs(eg[label])))
        text = _str(f["parameters/yaml"][()]) if "parameters/yaml" in f else ""
        try:
            params = load_config_text(text, path + ":/parameters/yaml") if text.strip() else Param()
        except Exception:  # a damaged tree should not hide the arrays
            params = Param()
        par_attrs = get_attrs(f["parameters"]) if "parameters" in f else {}
        provenance = get_attrs(f["provenance"]) if "provenance" in f else {}
        provenance.setdefault("config", par_attrs.get("config"))
        provenance.setdefault("overrides", par_attrs.get("overrides"))
        state = None
        if with_state and isinstance(f.get("state"), h5py.Group):
            st = f["state"]
            exits = {}
            for sid, ds in (st.get("exit") or {}).items():
                exits[sid] = {"data": ds[()], "layermap": [int(v) for v in ds.attrs.get("layermap", [])]}
            state = {"attrs": get_attrs(st), "exit": exits,
                     "engine": read_tree(st["engine"]) if "engine" in st else {}}
        return Reconstruction(
            path=path, kind=_str(f.attrs.get("kind", "result")), params=params, parameters_yaml=text,
            objects=objects, probes=probes, object_meta=object_meta, probe_meta=probe_meta, scans=scans,
            history=history, engines=engines, provenance=provenance, attrs=get_attrs(f), state=state,
            health=health)
