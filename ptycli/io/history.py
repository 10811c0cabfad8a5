"""The error history and the health reports in a reconstruction file (``/history``, ``/health``).

``/history`` holds one column per quantity (:data:`HISTORY_COLUMNS`), one
row per engine iteration; ``/health`` the health check of each engine
(:mod:`ptycli.engines.health`). See :mod:`ptycli.io.reconstruction` for the
whole layout.
"""

import json

import numpy as np

from ..measures import ERROR_MEASURES
from .h5text import fixed_texts
from .h5tree import get_attrs, json_default
from .reading import h5_text as _str

__all__ = ["ERROR_COLUMNS", "HISTORY_COLUMNS", "history_table", "write_history", "read_history",
           "health_reports", "write_health", "read_health", "attach_health"]

#: error columns of the history (the keys engines report per iteration)
ERROR_COLUMNS = ("fourier_error", "photon_error", "exit_change", "likelihood", "model_fourier_error",
                 "model_photon_error")
#: all history columns, in file order
HISTORY_COLUMNS = ("iteration", "engine_iteration", "engine", "engine_name") + ERROR_COLUMNS + ("time_s",)


def _num(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def history_table(history):
    """Columns (dict of numpy arrays, :data:`HISTORY_COLUMNS`) of a list of per-iteration records.

    Records are the engines' dicts (``engine``, ``name``, ``iteration`` over
    the chain, the error keys, ``time_s``, optionally ``engine_iteration``);
    missing iteration numbers are counted, missing errors become NaN.
    """
    rows = list(history or [])
    cols = {c: [] for c in HISTORY_COLUMNS}
    prev, count = None, 0
    for n, rec in enumerate(rows, 1):
        label = str(rec.get("engine") or "")
        count = count + 1 if label == prev else 1
        prev = label
        cols["iteration"].append(int(rec.get("iteration") or n))
        cols["engine_iteration"].append(int(rec.get("engine_iteration") or count))
        cols["engine"].append(str(rec.get("engine") or ""))
        cols["engine_name"].append(str(rec.get("engine_name") or rec.get("name") or ""))
        for c in ERROR_COLUMNS + ("time_s",):
            cols[c].append(_num(rec.get(c)))
    out = {}
    for c, values in cols.items():
        if c in ("iteration", "engine_iteration"):
            out[c] = np.asarray(values, dtype=np.int64)
        elif c in ("engine", "engine_name"):
            out[c] = np.asarray(values, dtype=object)
        else:
            out[c] = np.asarray(values, dtype=np.float64)
    return out


def write_history(f, history):
    """Store the per-iteration records as the columns of ``/history`` (see :data:`HISTORY_COLUMNS`)."""
    g = f.create_group("history")
    g.attrs["columns"] = list(HISTORY_COLUMNS)
    table = history_table(history)
    for c in HISTORY_COLUMNS:
        values = table[c]
        if values.dtype == object:
            ds = g.create_dataset(c, data=fixed_texts(values))
        else:
            ds = g.create_dataset(c, data=values)
        if c == "time_s":
            ds.attrs["units"] = "s"
        elif c in ERROR_MEASURES:  # what the number means (ptycli.measures defines them)
            ds.attrs["description"] = ERROR_MEASURES[c][1]
            if ERROR_MEASURES[c][0]:
                ds.attrs["units"] = ERROR_MEASURES[c][0]


def read_history(g):
    """History as a list of dicts (the engines' record layout plus ``engine_iteration``)."""
    if g is None:
        return []
    cols = {}
    for c in g.keys():
        values = g[c][()]
        if values.dtype.kind in "OS":
            values = [_str(v) for v in values]
        cols[c] = values
    n = len(next(iter(cols.values()))) if cols else 0
    out = []
    for i in range(n):
        rec = {}
        for c, values in cols.items():
            v = values[i]
            if isinstance(v, np.integer):
                v = int(v)
            elif isinstance(v, np.floating):
                v = None if np.isnan(v) else float(v)
            rec[c] = v
        rec["name"] = rec.get("engine_name")
        out.append(rec)
    return out


def health_reports(history):
    """``{engine label: {'iteration', 'engine_name', 'findings'}}`` from the records' ``health`` keys.

    The engines put their health check (:meth:`ptycli.engines.base.Engine.check_health`)
    into their last record; a later check of the same label (a resumed,
    extended engine) replaces an earlier one.
    """
    out = {}
    for rec in history or []:
        rep = rec.get("health")
        if not isinstance(rep, dict):
            continue
        label = str(rec.get("engine") or "")
        if not label:
            continue
        out[label] = dict(iteration=int(rep.get("iteration") or rec.get("iteration") or 0),
                          engine_name=str(rec.get("engine_name") or rec.get("name") or ""),
                          findings=[dict(f) for f in rep.get("findings") or []])
    return out


def write_health(f, history):
    """Store the engines' health reports (:func:`health_reports`) under ``/health`` (nothing when none)."""
    reports = health_reports(history)
    if not reports:
        return
    g = f.create_group("health")
    g.attrs["order"] = list(reports)
    for label, rep in reports.items():
        h = g.create_group(label)
        h.attrs["iteration"] = int(rep["iteration"])
        h.attrs["engine_name"] = rep["engine_name"]
        h.attrs["findings"] = len(rep["findings"])
        fs = rep["findings"]
        h.create_dataset("code", data=fixed_texts([x.get("code", "") for x in fs]))
        h.create_dataset("message", data=fixed_texts([x.get("message", "") for x in fs]))
        h.create_dataset("values", data=fixed_texts([json.dumps(x.get("values") or {}, sort_keys=True,
                                                                default=json_default) for x in fs]))


def read_health(g):
    """``{label: {'iteration', 'engine_name', 'findings': [dict]}}`` from ``/health`` (empty when absent)."""
    out = {}
    if g is None:
        return out
    order = [o for o in (get_attrs(g).get("order") or []) if o]
    for label in order + sorted(set(g.keys()) - set(order)):
        if label not in g:
            continue
        h = g[label]
        codes, messages, values = ([_str(v) for v in h[name][()]] if name in h else []
                                   for name in ("code", "message", "values"))
        findings = []
        for code, message, text in zip(codes, messages, values):
            try:
                vals = json.loads(text) if text else {}
            except ValueError:
                vals = {}
            findings.append(dict(code=code, message=message, values=vals))
        a = get_attrs(h)
        out[label] = dict(iteration=int(a.get("iteration", 0)), engine_name=str(a.get("engine_name", "")),
                          findings=findings)
    return out


def attach_health(history, health):
    """Put each engine's health report back into its record (the one at the checked iteration)."""
    for label, rep in health.items():
        for rec in reversed(history):
            if rec.get("engine") == label and int(rec.get("iteration") or 0) <= rep["iteration"]:
                rec["health"] = dict(iteration=rep["iteration"], findings=[dict(x) for x in rep["findings"]])
                break
