"""Checkpoints: snapshot a running reconstruction, write it, read it back, resume.

A checkpoint is a reconstruction file (:mod:`ptycli.io.reconstruction`) with
``kind='checkpoint'`` whose ``/state`` group says where the engine chain
stood: the index and label of the current engine, how many of its iterations
are done, the engine's own state (``engine.state_dict()``) and the exit waves
of all MPI ranks. A result file carries the same state, so either can be
given to ``ptycli reconstruct CONFIG --resume FILE``.

Resuming rebuilds the model from CONFIG (``Ptycho(p, level=2)``), then
:func:`restore_model` puts back probe, object, exit waves, positions and the
error history, and the chain continues: engines before the checkpoint's
engine are skipped, the checkpoint's engine continues at its iteration with
its state (``engine.load_state``), later engines run in full. With the same
configuration, seed and number of MPI ranks, an interrupted and resumed run
ends with the same object as an uninterrupted one.

Checkpoints hold the exit waves when the running engine carries them from
one iteration to the next (DM, RAAR: ``Engine.KEEPS_EXIT_WAVES``); ML and the
PIE engines derive them from probe x object when they finish, so their
checkpoints leave them out (half the file) and a resume is still exact.
Results hold them only with ``io.keep_exit_waves: true`` (they are as large
as all frames together). Resuming a DM/RAAR run from a file without exit
waves restarts them from probe x object (:func:`restore_model` says so), so
the continuation is close to, not the same as, an uninterrupted run.

:func:`load_checkpoint` checks what it reads before anything is computed:
counters that are whole numbers >= 0, finite probe, object and positions,
array shapes that fit together and an RNG state numpy accepts; anything else
is a one-line usage error (exit code 2) naming the damaged entry.

Functions here are collective under MPI (every rank calls them); files are
written by rank 0 only.
"""

import os

import numpy as np

from .. import parallel
from ..errors import ConfigError, DataError
from ..log import get_logger
from .reading import refuse_special_file
from .reconstruction import load_reconstruction, write_reconstruction

logger = get_logger(__name__)

__all__ = [
    "storage_entry",
    "collect_model",
    "restore_model",
    "write_snapshot",
    "load_checkpoint",
    "check_checkpoint",
    "plan_resume",
]


def storage_entry(S, data=True):
    """The dict :func:`~ptycli.io.reconstruction.write_reconstruction` expects for one storage."""
    out = {"psize": np.asarray(S.psize, float).copy(), "center": np.asarray(S.center, float).copy(),
           "origin": np.asarray(S.origin, float).copy()}
    if data:
        out["data"] = S.data.copy()
    if getattr(S, "slices", 1) > 1:  # a multislice object (layers = slices)
        out["slices"] = int(S.slices)
        out["slice_distance"] = float(S.slice_distance)
    if getattr(S, "variable_modes", 0) > 0:  # a variable probe (layers = eigen-probes)
        out["variable_modes"] = int(S.variable_modes)
    return out


def _frame_pods(model):
    """First pod of every frame of a scan model (pods are frame-major, modes inner)."""
    modes = max(1, int(model.modes))
    return model.pods[::modes]


def _scan_entry(model):
    """This rank's part of a scan: indices, initial and final positions, and geometry attributes."""
    d = model.data
    G = model.geometry
    idx = np.asarray(d.indices, dtype=np.int64)
    initial = np.asarray(model.positions_m(), dtype=np.float64).reshape(-1, 2)
    final = np.array([pod.ob_view.coord for pod in _frame_pods(model)], dtype=np.float64).reshape(-1, 2)
    attrs = dict(
        energy=float(d.energy_kev), distance=float(d.distance_m),
        detector_psize=np.broadcast_to(np.asarray(d.psize_m, float), (2,)).copy(),
        resolution=np.asarray(G.resolution, float).copy() if G is not None else None,
        shape=np.asarray(d.shape, dtype=np.int64), num_frames=int(d.num_frames_total),
        propagation=str(model.p.propagation), loader=str(model.p.data.name),
        source=str(d.source or ""), probe=model.probe_sid, object=model.object_sid,
        model=str(model.p.name), slices=int(model.slices),
        slice_distance_m=float(model.p.sample.slice_distance_m) if model.slices > 1 else None,
        # detector units per unit of the model's intensities (the frames were divided by it as they were loaded)
        intensity_scale=float(getattr(model, "intensity_scale", 1.0)),
    )
    guess = getattr(model, "probe_guess", None) or {}
    if guess.get("method"):
        attrs["probe_guess"] = str(guess["method"])
        if guess.get("trial"):
            attrs["probe_guess_trial"] = ", ".join("%s %.4g" % kv for kv in guess["trial"].items())
        if guess.get("held_frames"):
            attrs["probe_guess_held_frames"] = ", ".join("%s %.4g" % kv for kv in guess["held_frames"].items())
    sub = getattr(model, "subpixel", None) or {}
    if sub:
        attrs["subpixel"] = "on" if sub.get("on") else "off"
        attrs["subpixel_reason"] = str(sub.get("reason", ""))
        if sub.get("on"):
            attrs["subpixel_resolution"] = int(sub["resolution"])
    return idx, initial, final, attrs


def _gather_rows(parts):
    """Concatenate gathered ``(indices, *arrays)`` tuples and sort rows by index."""
    idx = np.concatenate([p[0] for p in parts])
    order = np.argsort(idx, kind="stable")
    arrays = [np.concatenate([p[k] for p in parts])[order] for k in range(1, len(parts[0]))]
    return [idx[order]] + arrays


def collect_model(P, with_exit=True):
    """Snapshot the model: objects, probes, scans (positions) and exit waves.

    Collective: every rank must call it. Returns the dict on rank 0 (all
    ranks' frames gathered; objects and probes copied, the exit waves of a
    single process *not* copied: they are the live storage, so write the
    snapshot before the model changes again, as :func:`write_snapshot` does)
    and None on the other ranks.
    """
    snap = {
        "objects": {sid: storage_entry(S) for sid, S in P.obj.S.items()},
        "probes": {sid: storage_entry(S) for sid, S in P.probe.S.items()},
        "scans": {},
    }
    for label, model in P.scans.items():
        idx, initial, final, attrs = _scan_entry(model)
        weights = getattr(model, "probe_weights", None)
        rows = (idx, initial, final) if weights is None else (idx, initial, final, np.array(weights, copy=True))
        if parallel.size > 1:
            parts = parallel.gather(rows)
            if parallel.master:
                rows = _gather_rows(parts)
        idx, initial, final = rows[:3]
        snap["scans"][label] = dict(attrs, indices=idx, positions=final, positions_initial=initial)
        if weights is not None:
            snap["scans"][label]["probe_weights"] = rows[3]
        if getattr(model, "background", None) is not None:  # the same on every rank
            snap["scans"][label]["background"] = np.array(model.background, copy=True)
    exits = {}
    if with_exit:
        for sid, S in P.exit.S.items():
            if S.released:  # given back by an engine that keeps no exit waves: nothing to store
                continue
            layers = np.asarray(S.layermap, dtype=np.int64)
            data = S.data
            if parallel.size > 1:
                parts = parallel.gather((layers, data))
                if parallel.master:
                    layers, data = _gather_rows(parts)
            exits[sid] = {"data": data, "layermap": layers}
    snap["exit"] = exits
    return snap if parallel.master else None


def _check_storage(kind, sid, S, saved, path):
    if sid not in saved:
        raise DataError("%s: the checkpoint has no %s storage %s (it has %s); it was written for another "
                        "configuration" % (path, kind, sid, ", ".join(saved) or "none"),
                        hint="resume with the configuration that wrote it", validation=True)
    arr = saved[sid]
    if tuple(arr.shape) != tuple(S.shape):
        raise DataError("%s: %s %s has shape %s in the checkpoint but %s in this model" % (
            path, kind, sid, tuple(arr.shape), tuple(S.shape)),
            hint="resume with the configuration (scans, frames, modes) that wrote the checkpoint",
            validation=True)


def restore_model(P, rec):
    """Put the state of checkpoint ``rec`` (a Reconstruction) back into model ``P``.

    Object, probe, exit waves (this rank's layers), scan positions and the
    error history are restored. Raises DataError (exit code 2) when the
    checkpoint does not fit the model.
    """
    path = rec.path
    for sid, S in P.obj.S.items():
        _check_storage("object", sid, S, rec.objects, path)
        S.data[...] = rec.objects[sid]
        meta = rec.object_meta.get(sid) or {}
        if "center" in meta:
            S.center = meta["center"]
    for sid, S in P.probe.S.items():
        _check_storage("probe", sid, S, rec.probes, path)
        S.data[...] = rec.probes[sid]
    # positions (refined positions move the object views)
    for label, model in P.scans.items():
        sc = rec.scans.get(label)
        if sc is None or sc.get("positions") is None or sc.get("indices") is None:
            continue
        where = {int(i): k for k, i in enumerate(sc["indices"])}
        modes = max(1, int(model.modes))
        moved = False
        for f, g in enumerate(model.data.indices):
            k = where.get(int(g))
            if k is None:
                raise DataError("%s: frame %d of scan %s is not in the checkpoint" % (path, int(g), label),
                                validation=True)
            coord = np.asarray(sc["positions"][k], dtype=float)
            for pod in model.pods[f * modes:(f + 1) * modes]:
                if not np.array_equal(pod.ob_view.coord, coord):
                    pod.ob_view.coord = coord.copy()
                    moved = True
        if moved:
            for S in P.obj.S.values():
                S.update_views()
    # a variable probe's weights (by global frame index)
    for label, model in P.scans.items():
        W = getattr(model, "probe_weights", None)
        sc = rec.scans.get(label) or {}
        saved = sc.get("probe_weights")
        if W is None:
            continue
        if saved is None or sc.get("indices") is None or np.ndim(saved) != 2 or np.shape(saved)[1] != W.shape[1] \
                or not np.all(np.isfinite(saved)):
            raise DataError("%s: scan %s has no probe weights for %d eigen-probes in the checkpoint (or they are "
                            "damaged)" % (path, label, W.shape[1]),
                            hint="resume with the configuration (illumination.variable_modes) that wrote it",
                            validation=True)
        where = {int(i): k for k, i in enumerate(sc["indices"])}
        for f, g in enumerate(model.data.indices):
            k = where.get(int(g))
            if k is None:
                raise DataError("%s: frame %d of scan %s is not in the checkpoint" % (path, int(g), label),
                                validation=True)
            W[f] = saved[k]
    # fitted backgrounds (a file without one: the model's start value stays)
    for label, model in P.scans.items():
        B = getattr(model, "background", None)
        saved = (rec.scans.get(label) or {}).get("background")
        if B is None or saved is None:
            continue
        if tuple(np.shape(saved)) != tuple(B.shape) or not np.all(np.isfinite(saved)):
            raise DataError("%s: the background of scan %s has shape %s in the checkpoint, %s in this model, or is "
                            "not finite" % (path, label, tuple(np.shape(saved)), tuple(B.shape)), validation=True)
        B[...] = saved
    # exit waves: this rank's layers (a result without them: restart from probe x object)
    state = rec.state or {}
    saved_exit = state.get("exit") or {}
    if not saved_exit and P.exit.S:
        for model in P.scans.values():
            model.init_exit()
        P.runtime.history = [dict(h) for h in rec.history]
        P.runtime.iterations = len(rec.history)
        return False
    for sid, S in P.exit.S.items():
        if sid not in saved_exit:
            raise DataError("%s: the checkpoint has no exit waves for %s" % (path, sid), validation=True)
        ex = saved_exit[sid]
        rows = {int(layer): k for k, layer in enumerate(ex["layermap"])}
        data = ex["data"]
        if tuple(data.shape[1:]) != tuple(S.shape[1:]):
            raise DataError("%s: exit waves %s have frames of %s in the checkpoint, %s in this model" % (
                path, sid, tuple(data.shape[1:]), tuple(S.shape[1:])), validation=True)
        for row, layer in enumerate(S.layermap):
            k = rows.get(int(layer))
            if k is None:
                raise DataError("%s: exit wave layer %d of %s is not in the checkpoint" % (path, layer, sid),
                                validation=True)
            S.data[row] = data[k]
    P.runtime.history = [dict(h) for h in rec.history]
    P.runtime.iterations = len(rec.history)
    return True


def write_snapshot(path, P, kind, engines, state_attrs, engine_state, info, with_exit=True):
    """Collect the model (collective) and write it to ``path`` on rank 0.

    Parameters
    ----------
    path : str
        Output file (written atomically).
    P : Ptycho
        The model.
    kind : 'checkpoint' or 'result'
    engines : list of dict
        Per-engine summaries (run order).
    state_attrs : dict
        ``/state`` attributes (engine_index, engine_label, ...).
    engine_state : dict or None
        This rank's ``engine.state_dict()``; under MPI every rank's state is
        gathered (rank ``r > 0`` is stored under ``/state/engine/ranks/<r>``).
    info : dict
        ``parameters_yaml``, ``config``, ``overrides``, ``run``, ``provenance``.
    with_exit : bool
        Store the exit waves (``/state/exit``; same on every rank). Without
        them a resume restarts the exit waves from probe x object.
    """
    snap = collect_model(P, with_exit=with_exit)
    states = parallel.gather(engine_state) if parallel.size > 1 else [engine_state]
    if not parallel.master:
        return None
    tree = dict(states[0] or {})
    if parallel.size > 1:
        tree["ranks"] = {str(r): (s or {}) for r, s in enumerate(states) if r > 0}
    snap["history"] = list(P.runtime.history)
    snap["engines"] = engines
    snap["state"] = {"attrs": dict(state_attrs, mpi_size=parallel.size), "exit": snap.pop("exit"),
                     "engine": tree}
    snap.update(info)
    return write_reconstruction(path, snap, kind=kind)


def load_checkpoint(path):
    """Read a checkpoint (or result) for ``--resume``; usage errors (exit 2) when it cannot serve.

    The file is read whole (so that the run may replace it with its own
    checkpoints) and checked with :func:`check_checkpoint`.
    """
    refuse_special_file(path, "--resume", validation=True)
    if not os.path.exists(path):
        raise ConfigError("--resume %s: no such file" % path,
                          hint="give the checkpoint written by the interrupted run")
    try:
        rec = load_reconstruction(path, with_state=True)
    except DataError as exc:
        raise DataError("--resume %s: %s" % (path, exc.message), hint=exc.hint, validation=True) from None
    if rec.state is None:
        raise DataError("--resume %s: the file has no /state group to resume from" % path, validation=True)
    check_checkpoint(rec)
    return rec


def _damaged(rec, what):
    return DataError("--resume %s: the checkpoint is damaged: %s" % (rec.path, what),
                     hint="resume from another checkpoint or the result file, or start afresh without --resume",
                     validation=True)


def _count(rec, attrs, key, where="/state attribute"):
    """``attrs[key]`` as an int >= 0 (absent: 0); a damaged-checkpoint error otherwise."""
    value = attrs.get(key, 0)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer, float, np.floating)) or \
            not np.isfinite(value) or float(value) != int(value) or value < 0:
        raise _damaged(rec, "%s %s is %r, not a whole number >= 0" % (where, key, value))
    return int(value)


def _check_rng(rec, state, where):
    """The RNG state must be one numpy's bit generator accepts (as ``engine.load_state`` sets it)."""
    rng = (state or {}).get("rng")
    if rng is None:
        return
    try:
        name = rng["bit_generator"]
        generator = getattr(np.random, str(name))()
        generator.state = rng
    except Exception as exc:  # TypeError, ValueError, KeyError, AttributeError: all mean damage
        raise _damaged(rec, "%s/rng is not a random generator state (%s)" % (
            where, " ".join(str(exc).split()) or type(exc).__name__)) from None


def _check_arrays(rec, kind, arrays, ndim):
    for sid, arr in (arrays or {}).items():
        arr = np.asarray(arr)
        if arr.ndim != ndim or arr.dtype.kind not in "fc" or 0 in arr.shape:
            raise _damaged(rec, "%s %s has shape %s and type %s (expected %d axes of complex numbers)" % (
                kind, sid, arr.shape, arr.dtype, ndim))
        if not np.isfinite(arr).all():
            raise _damaged(rec, "%s %s holds NaN or infinite values" % (kind, sid))


def check_checkpoint(rec):
    """Check a checkpoint read for ``--resume`` before it is used.

    Parameters
    ----------
    rec : Reconstruction
        Read with its ``state``.

    Raises
    ------
    DataError
        (exit code 2) naming the damaged entry: a ``/state`` counter that is
        not a whole number >= 0 (or an engine iteration beyond the total), a
        probe, object or exit wave array of the wrong shape or with NaN/Inf,
        positions that are not finite or do not match their indices, exit
        waves whose layer map does not match them, or an RNG state that
        numpy does not accept.
    """
    attrs = rec.state.get("attrs") or {}
    counts = {k: _count(rec, attrs, k) for k in ("engine_index", "engine_iteration", "total_iterations")}
    if counts["engine_iteration"] > counts["total_iterations"] and "total_iterations" in attrs:
        raise _damaged(rec, "/state says engine iteration %d but only %d iterations in total" % (
            counts["engine_iteration"], counts["total_iterations"]))
    _check_arrays(rec, "object", rec.objects, 3)
    _check_arrays(rec, "probe", rec.probes, 3)
    if not rec.objects or not rec.probes:
        raise _damaged(rec, "it holds no %s" % ("object" if not rec.objects else "probe"))
    for label, sc in (rec.scans or {}).items():
        for key in ("positions", "positions_initial"):
            pos = sc.get(key)
            if pos is None:
                continue
            pos = np.asarray(pos)
            if pos.ndim != 2 or pos.shape[1:] != (2,) or pos.dtype.kind not in "iuf":
                raise _damaged(rec, "scan %s: %s has shape %s (expected N x 2 numbers)" % (label, key, pos.shape))
            if not np.isfinite(pos).all():
                raise _damaged(rec, "scan %s: %s holds NaN or infinite values" % (label, key))
        idx = sc.get("indices")
        if idx is not None and sc.get("positions") is not None and np.shape(idx) != (len(sc["positions"]),):
            raise _damaged(rec, "scan %s: %d indices for %d positions" % (label, np.size(idx), len(sc["positions"])))
    for sid, ex in (rec.state.get("exit") or {}).items():
        data = np.asarray(ex.get("data"))
        if data.ndim != 3 or data.dtype.kind != "c":
            raise _damaged(rec, "exit waves %s have shape %s and type %s (expected 3 axes of complex numbers)" % (
                sid, data.shape, data.dtype))
        if len(ex.get("layermap") or ()) != data.shape[0]:
            raise _damaged(rec, "exit waves %s: %d rows but a layer map of %d" % (
                sid, data.shape[0], len(ex.get("layermap") or ())))
    tree = rec.state.get("engine") or {}
    if not isinstance(tree, dict):
        raise _damaged(rec, "/state/engine is not a group")
    _check_rng(rec, tree, "/state/engine")
    for r, sub in (tree.get("ranks") or {}).items():
        _check_rng(rec, sub, "/state/engine/ranks/%s" % r)
    for key in ("iteration", "global_iteration"):
        if key in tree:
            _count(rec, tree, key, "/state/engine entry")


def engine_state_for_rank(tree):
    """This rank's engine state from a stored tree (see :func:`write_snapshot`)."""
    tree = dict(tree or {})
    ranks = tree.pop("ranks", None) or {}
    if parallel.rank > 0:
        mine = ranks.get(str(parallel.rank))
        if mine is not None:
            if "unmoved" in tree:  # kept once, by rank 0 (the probe and object are replicas)
                mine = dict(mine, unmoved=tree["unmoved"])
            return mine
    return tree


def plan_resume(chain, rec):
    """Where each engine of ``chain`` starts when resuming from ``rec``.

    Parameters
    ----------
    chain : list of (label, Param)
        The engines of the configuration, in run order.
    rec : Reconstruction
        The checkpoint (with ``state``).

    Returns
    -------
    list of int or None
        Per engine: None (skip: finished before the checkpoint's engine), or
        the number of its iterations already done (0 for engines after it).

    Raises
    ------
    ConfigError
        When the engines up to the checkpoint's engine differ from the
        configuration's (labels or engine names).
    """
    attrs = rec.state["attrs"]
    index = int(attrs.get("engine_index", 0))
    label = str(attrs.get("engine_label", ""))
    done = int(attrs.get("engine_iteration", 0))
    saved = [(e["label"], str(e.get("name", ""))) for e in rec.engines]
    if index >= len(chain):
        raise ConfigError("--resume %s: the checkpoint stopped in engine %d (%s) but the configuration has "
                          "only %d engine(s)" % (rec.path, index + 1, label, len(chain)),
                          hint="resume with the configuration that wrote the checkpoint")
    for i in range(index + 1):
        want_label, want = chain[i][0], str(chain[i][1].name)
        have_label, have = saved[i] if i < len(saved) else (label if i == index else "?", "?")
        if want_label != have_label or (have != "?" and have.lower() != want.lower()):
            raise ConfigError("--resume %s: engine %d is %s (%s) in the checkpoint but %s (%s) in the "
                              "configuration" % (rec.path, i + 1, have_label, have, want_label, want),
                              hint="resume with the engine chain that wrote the checkpoint")
    plan = []
    for i in range(len(chain)):
        if i < index:
            plan.append(None)
        elif i == index:
            plan.append(done)
        else:
            plan.append(0)
    return plan
