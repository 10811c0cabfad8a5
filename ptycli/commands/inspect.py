"""``ptycli inspect``: summarise a data file (ptycli HDF5, CXI, .ptyd) or a reconstruction file."""

import json
import os

import click
import h5py
import numpy as np

from .. import parallel
from ..errors import DataError
from ..io.atomic import file_kind
from ..io.cxi import read_cxi_meta
from ..io.h5guard import check_structure
from ..io.history import read_health
from ..io.ptyd import read_ptyd_meta
from ..io.reading import DAMAGED_HINT, reading
from ..io.reading import h5_text as _str
from ..log import get_logger
from ..scans.detect import detect_loader
from ..utils.nominal_geometry import is_nominal

logger = get_logger(__name__)

__all__ = ["inspect", "identify", "summarise", "hdf5_tree", "positions_moved", "json_safe", "to_json"]

KINDS = {
    "reconstruction": "ptycli reconstruction",
    "data": "ptycli data file",
    "cxi-result": "CXI reconstruction",
    "cxi": "CXI data file",
    "ptyd": "PtyPy prepared data (.ptyd)",
    "hdf5": "HDF5 file (unknown layout)",
}



def _plain(v):
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, np.ndarray):
        if v.dtype.kind in "OS":
            return [_str(x) for x in v.ravel()]
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def json_safe(value):
    """``value`` (after :func:`_plain`) with NaN and infinities as None: valid JSON (RFC 8259)."""
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def to_json(value):
    """One JSON document of ``value``: numpy values made plain, NaN/Infinity written as null."""
    return json.dumps(json_safe(_plain(value)), default=str, allow_nan=False)


def _open(path):
    """Check that ``path`` is a readable HDF5 file before anything is read (usage error otherwise)."""
    kind = file_kind(path)  # a FIFO would block the reads below; a symlink loop fails os.path.exists
    if kind:
        raise DataError("%s is %s, not a file" % (path, kind), hint="give an HDF5 file (.h5, .cxi, .ptyd)",
                        validation=True)
    if not os.path.exists(path):
        raise DataError("file %s does not exist" % path, hint="check the path", validation=True)
    if os.path.isdir(path):
        raise DataError("%s is a folder; give an HDF5 file (.h5, .cxi, .ptyd)" % path, validation=True)
    try:
        ok = h5py.is_hdf5(path)
    except OSError as exc:
        raise DataError("cannot read %s: %s" % (path, exc), validation=True) from None
    if not ok:
        raise DataError("%s is not an HDF5 file" % path,
                        hint="ptycli inspect reads ptycli results and data files, CXI and .ptyd files",
                        validation=True)

    check_structure(path, validation=True)  # a hang or crash of libhdf5 becomes a DataError
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise DataError("cannot open %s as HDF5 (%s)" % (path, " ".join(str(exc).split())),
                        hint=DAMAGED_HINT, validation=True) from exc


def identify(path):
    """The kind of file: one of :data:`KINDS`' keys."""
    with _open(path) as f:
        fmt = _str(f.attrs.get("format", ""))
        if fmt == "ptycli-reconstruction":
            return "reconstruction"
        if fmt == "ptycli-data":
            return "data"
        entry = f.get("entry_1")
        if isinstance(entry, h5py.Group):
            if any(k.startswith("image_") for k in entry.keys()):
                return "cxi-result"
            return "cxi"
        if "chunks" in f or "meta" in f and "info" in f:
            return "ptyd"
        if path.endswith(".ptyd") and "meta" in f:
            return "ptyd"
        return "hdf5"


# -- summaries ---------------------------------------------------------------------------------

def _array_info(ds):
    info = dict(shape=[int(s) for s in ds.shape], dtype=str(ds.dtype))
    for key in ("psize", "center", "origin"):
        if key in ds.attrs:
            info[key] = _plain(np.asarray(ds.attrs[key]))
    if int(ds.attrs.get("slices", 1)) > 1:  # a multislice object: its layers are the slices
        info["slices"] = int(ds.attrs["slices"])
        info["slice_distance_m"] = float(ds.attrs.get("slice_distance", float("nan")))
    if int(ds.attrs.get("variable_modes", 0)) > 0:  # a variable probe: its layers are the eigen-probes
        info["variable_modes"] = int(ds.attrs["variable_modes"])
    return info


def _summary_reconstruction(f):
    out = dict(format="%s v%s" % (_str(f.attrs.get("format")), _plain(f.attrs.get("format_version"))),
               kind_of_file=_str(f.attrs.get("kind", "result")), created=_str(f.attrs.get("created", "")),
               creator=_str(f.attrs.get("creator", "")), run=_str(f.attrs.get("run", "")))
    engines = []
    eg = f.get("engines")
    if eg is not None:
        order = [o for o in _plain(eg.attrs.get("order", [])) if o]
        for label in order:
            if label in eg:
                engines.append(dict(label=label, **{k: _plain(v) for k, v in eg[label].attrs.items()}))
    out["engines"] = engines
    hist = f.get("history")
    out["iterations"] = int(hist["iteration"].shape[0]) if hist is not None and "iteration" in hist else 0
    final = {}
    if out["iterations"]:
        for col in ("fourier_error", "photon_error", "exit_change", "likelihood", "model_fourier_error"):
            if col in hist:
                v = float(hist[col][-1])
                final[col] = None if np.isnan(v) else v
    out["final_errors"] = final
    _model_errors(hist, engines)

    out["health"] = read_health(f.get("health"))
    out["objects"] = {sid: _array_info(ds) for sid, ds in (f.get("reconstruction/object") or {}).items()}
    out["probes"] = {sid: _array_info(ds) for sid, ds in (f.get("reconstruction/probe") or {}).items()}
    scans = {}
    for label, g in (f.get("scans") or {}).items():
        sc = {k: _plain(v) for k, v in g.attrs.items()}
        if "positions" in g:
            sc["frames"] = int(g["positions"].shape[0])
            sc["scan_extent_m"] = _positions_extent(g["positions"][()])
            if "positions_initial" in g:
                sc["positions_moved"] = positions_moved(g["positions_initial"][()], g["positions"][()],
                                                        sc.get("resolution"))
        if "background" in g:
            sc["background"] = _background_info(g["background"][()])
        if "probe_weights" in g:
            sc["probe_weights"] = _weights_info(g["probe_weights"][()])
        scans[label] = sc
    out["scans"] = scans
    out["provenance"] = {k: _plain(v) for k, v in (f["provenance"].attrs.items() if "provenance" in f else [])}
    st = f.get("state")
    out["resume"] = None if st is None else {k: _plain(v) for k, v in st.attrs.items()}
    return out


def _background_info(B):
    """Summary of a fitted background: mean, largest and smallest counts per pixel and frame, the frame shape."""
    B = np.asarray(B, dtype=np.float64)
    finite = B[np.isfinite(B)]
    if not finite.size:
        return dict(shape=list(B.shape), mean=None, max=None, min=None)
    return dict(shape=list(B.shape), mean=float(finite.mean()), max=float(finite.max()), min=float(finite.min()))


def _weights_info(W):
    """Summary of a variable probe's weights (frames, K): per eigen-probe the rms and range of ``|w|`` over frames."""
    A = np.abs(np.asarray(W, dtype=np.complex128))
    if A.ndim != 2 or not A.size:
        return dict(shape=list(np.shape(W)))
    return dict(shape=list(A.shape), rms=[float(v) for v in np.sqrt(np.mean(A ** 2, axis=0))],
                min=[float(v) for v in A.min(axis=0)], max=[float(v) for v in A.max(axis=0)])


def _model_errors(hist, engines):
    """Add ``final_model_fourier_error`` (the Fourier error of probe x object, DM/RAAR) to the engines' dicts.

    Taken from the history: the engine's last row where it was computed.
    """
    if hist is None or "model_fourier_error" not in hist or "engine" not in hist:
        return
    values = np.asarray(hist["model_fourier_error"][()], dtype=float)
    labels = [_str(v) for v in hist["engine"][()]]
    for e in engines:
        rows = [i for i, lab in enumerate(labels) if lab == e["label"] and np.isfinite(values[i])]
        if rows and e.get("final_model_fourier_error") is None:
            e["final_model_fourier_error"] = float(values[rows[-1]])


def positions_moved(initial, final, resolution=None):
    """How far refinement moved the positions: rms and largest displacement, in m and sample pixels.

    Parameters
    ----------
    initial, final : array_like (N, 2)
        (y, x) positions in metres, before and after refinement.
    resolution : array_like (2,), optional
        The sample pixel (y, x) in metres; without it the pixel values are None.

    Returns
    -------
    dict or None
        ``rms_m``, ``max_m``, ``rms_pixel``, ``max_pixel`` (None when the arrays do not match).
    """
    a = np.asarray(initial, dtype=float).reshape(-1, 2)
    b = np.asarray(final, dtype=float).reshape(-1, 2)
    if a.shape != b.shape or not len(a):
        return None
    d = b - a
    dist = np.hypot(d[:, 0], d[:, 1])
    out = dict(rms_m=float(np.sqrt(np.mean(dist ** 2))), max_m=float(dist.max()), rms_pixel=None,
               max_pixel=None)
    if resolution is not None:
        res = np.broadcast_to(np.asarray(resolution, dtype=float).reshape(-1), (2,))
        if np.all(res > 0):
            px = np.hypot(d[:, 0] / res[0], d[:, 1] / res[1])
            out.update(rms_pixel=float(np.sqrt(np.mean(px ** 2))), max_pixel=float(px.max()))
    return out


def _checkpoint_of(path):
    """``{'path', 'size_bytes'}`` of the checkpoint a run writing ``path`` keeps next to it, or None."""
    ck = os.path.splitext(path)[0] + ".checkpoint.h5"
    if os.path.abspath(ck) != os.path.abspath(path) and os.path.isfile(ck):
        return dict(path=ck, size_bytes=os.path.getsize(ck))
    return None


def _positions_extent(pos):
    pos = np.asarray(pos, dtype=float).reshape(-1, 2)
    if not len(pos):
        return None
    return [float(pos[:, 0].max() - pos[:, 0].min()), float(pos[:, 1].max() - pos[:, 1].min())]


def _summary_data(f):
    d = f["data/intensities"] if "data/intensities" in f else None
    out = dict(format="ptycli-data v%s" % _plain(f.attrs.get("format_version")),
               created=_str(f.attrs.get("created", "")), creator=_str(f.attrs.get("creator", "")))
    if d is not None:
        out["frames"] = int(d.shape[0])
        out["frame_shape"] = [int(s) for s in d.shape[1:]]
        out["dtype"] = str(d.dtype)
    geo = f.get("geometry")
    if geo is not None:
        for key, name in (("energy", "energy_kev"), ("distance", "distance_m")):
            if key in geo:
                out[name] = float(geo[key][()])
        if "psize" in geo:
            out["psize_m"] = _plain(np.asarray(geo["psize"][()], float))
        out["propagation"] = _str(geo.attrs.get("propagation", "farfield"))
    if "data/positions" in f:
        pds = f["data/positions"]
        out["positions_unit"] = _str(pds.attrs.get("units", "m"))
        out["scan_extent"] = _positions_extent(pds[()])
    if "meta/label" in f:
        out["label"] = _str(f["meta/label"][()])
    gt = f.get("ground_truth")
    out["ground_truth"] = sorted(gt.keys()) if gt is not None else []
    return out


def _summary_cxi(path):
    m = read_cxi_meta(path)
    out = dict(format="CXI v%s" % m.get("cxi_version"), frames=m["num_frames"],
               frame_shape=list(m["frame_shape"]), dtype=m["dtype"], energy_kev=m["energy_kev"],
               distance_m=m["distance_m"], psize_m=_plain(m["psize_m"]), has_mask=m["has_mask"],
               data_path=m["data_path"], translation_path=m["translation_path"])
    if m["num_frames"]:
        with h5py.File(path, "r") as f:
            t = f[m["translation_path"]][()]
        out["scan_extent"] = _positions_extent(np.stack([t[:, 1], t[:, 0]], axis=1))
    return out


def _summary_cxi_result(f):
    ent = f["entry_1"]
    images = []
    for name in sorted((k for k in ent if k.startswith("image_")), key=lambda k: int(k[6:]) if k[6:].isdigit() else 0):
        img = ent[name]
        info = dict(name=name, data_type=_str(img["data_type"][()]) if "data_type" in img else None)
        if "data" in img:
            info.update(shape=[int(s) for s in img["data"].shape], dtype=str(img["data"].dtype))
        if "x_pixel_size" in img and "y_pixel_size" in img:
            info["psize_m"] = [float(img["y_pixel_size"][()]), float(img["x_pixel_size"][()])]
        proc = img.get("process_1")
        if proc is not None:
            for key in ("program", "version", "date"):
                if key in proc:
                    info[key] = _str(proc[key][()])
        images.append(info)
    return dict(format="CXI result v%s" % (_plain(f["cxi_version"][()]) if "cxi_version" in f else "?"),
                program=_str(ent["program_name"][()]) if "program_name" in ent else None, images=images)


def _summary_ptyd(path):
    m = read_ptyd_meta(path, with_info=False)
    out = dict(format="PtyPy .ptyd (version %s)" % m.get("version"), frames=m["num_frames"],
               frame_shape=list(m["frame_shape"]), dtype=m["dtype"], energy_kev=m["energy_kev"],
               distance_m=m["distance_m"], psize_m=_plain(m["psize_m"]), label=m["label"],
               chunks=len(m["chunks"]), has_weights=m["has_weights"])
    if m.get("propagation") is not None:  # /meta/propagation: written by ptycli, not by PtyPy
        out["propagation"] = m["propagation"]
    out["scan_extent"] = _ptyd_extent(path, m)
    return out


def _ptyd_extent(path, meta):
    """The (y, x) extent of a .ptyd's positions in metres (None when it holds none)."""
    parts = []
    with h5py.File(path, "r") as f:
        for name, _start, _stop in meta["chunks"]:
            ds = f.get("chunks/%s/positions" % name)
            if ds is None or ds.ndim != 2 or ds.shape[1] != 2:
                return None
            parts.append(np.asarray(ds[()], dtype=float))
    return _positions_extent(np.concatenate(parts)) if parts else None


def summarise(path):
    """A JSON-able summary of ``path`` (``kind`` plus what that kind of file holds)."""
    kind = identify(path)
    out = dict(file=path, kind=kind, description=KINDS[kind], size_bytes=os.path.getsize(path))
    if kind in ("cxi", "ptyd", "data", "hdf5"):
        out["loader"] = detect_loader(path)[0]
    if kind == "cxi":
        out.update(_summary_cxi(path))
        return out
    if kind == "ptyd":
        out.update(_summary_ptyd(path))
        return out
    with _open(path) as f:
        if kind == "reconstruction":
            out.update(_summary_reconstruction(f))
            out["checkpoint"] = _checkpoint_of(path) if out.get("kind_of_file") != "checkpoint" else None
        elif kind == "data":
            out.update(_summary_data(f))
        elif kind == "cxi-result":
            out.update(_summary_cxi_result(f))
        else:
            out["top_level"] = sorted(f.keys())
    return out


# -- text ---------------------------------------------------------------------------------------

def _g(v, unit=""):
    if v is None:
        return "-"
    if isinstance(v, (list, tuple)):
        return "(" + ", ".join(_g(x) for x in v) + ")" + (" " + unit if unit else "")
    if isinstance(v, float):
        return ("%.4g" % v) + (" " + unit if unit else "")
    return str(v) + (" " + unit if unit else "")


def _bytes(n):
    if n is None:
        return "-"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return "%.3g %s" % (n / scale, unit)
    return "%d bytes" % n


def _moved(moved, which, with_pixels, with_metres=True):
    metres = "%.3g m" % moved[which + "_m"]
    if not with_pixels:
        return metres
    pixels = "%.3g pixel" % moved[which + "_pixel"]
    return "%s (%s)" % (pixels, metres) if with_metres else pixels


def _nominal_geometry(scan):
    """Whether a scan ran with NpzScan's nominal geometry (positions in pixels, object pixel 1)."""
    return is_nominal(scan.get("energy"), scan.get("distance"))


def _shape(info):
    text = "%s %s" % ("x".join(str(s) for s in info["shape"]), info["dtype"])
    if "psize" in info:
        text += ", pixel %s m" % _g(info["psize"])
    if info.get("slices"):
        text += ", %d slices %s m apart" % (info["slices"], _g(info["slice_distance_m"]))
    if info.get("variable_modes"):
        text += ", %d eigen-probes (variable probe; weights in /scans/<label>/probe_weights)" % info["variable_modes"]
    return text


def _text(s):
    lines = ["%s: %s" % (s["file"], s["description"])]
    kind = s["kind"]
    add = lines.append
    if s.get("loader"):
        add("  loader:      %s (scans.<label>.data.name; chosen from the file when left out)" % s["loader"])
    if kind == "reconstruction":
        add("  kind:        %s, %s, written %s by %s" % (s["kind_of_file"], s["format"], s["created"], s["creator"]))
        if s.get("run"):
            add("  run:         %s" % s["run"])
        add("  iterations:  %d" % s["iterations"])
        for e in s["engines"]:
            errs = ", ".join("%s %s" % (k[len("final_"):], _g(v)) for k, v in e.items()
                             if k.startswith("final_") and v is not None and not
                             (isinstance(v, float) and np.isnan(v)))
            add("  engine %-8s %-6s %s/%s iterations%s, %s s%s" % (
                e["label"], e.get("name", "?"), e.get("iterations", "?"), e.get("numiter", "?"),
                "" if e.get("finished", True) else " (unfinished)", _g(e.get("time_s")),
                ": " + errs if errs else ""))
        health = s.get("health") or {}
        if health:
            quiet = [label for label, rep in health.items() if not rep.get("findings")]
            if quiet:
                add("  health:      no warnings after %s" % ", ".join(quiet))
            for label, rep in health.items():
                for x in rep.get("findings") or []:
                    add("  WARNING:     %s: %s [%s]" % (label, x.get("message", ""), x.get("code", "")))
        for sid, info in s["objects"].items():
            add("  object %-8s %s" % (sid, _shape(info)))
        for sid, info in s["probes"].items():
            add("  probe  %-8s %s" % (sid, _shape(info)))
        for label, sc in s["scans"].items():
            if _nominal_geometry(sc):
                geometry = "positions in pixels (nominal geometry: lengths in object pixels)"
            else:
                geometry = "%s keV, %s m" % (_g(sc.get("energy")), _g(sc.get("distance")))
            add("  scan   %-8s %s frames of %s, %s, loader %s" % (
                label, sc.get("frames", "?"), "x".join(str(int(v)) for v in sc.get("shape", [])) or "?",
                geometry, sc.get("loader", "?")))
            unit = sc.get("intensity_scale")
            if unit is not None and float(unit) != 1.0:
                add("  units  %-8s frames divided by %s as they loaded (photon counts, or a common unit; the probe "
                    "is in its square root)" % (label, _g(unit)))
            bg = sc.get("background")
            if bg and bg.get("mean") is not None:
                add("  backgr %-8s fitted: mean %s, min %s, max %s counts per pixel and frame" % (
                    label, _g(bg["mean"]), _g(bg["min"]), _g(bg["max"])))
            pw = sc.get("probe_weights")
            if pw and pw.get("rms") is not None:
                add("  weights %-7s variable probe: %d frames x %d eigen-probes, |w| range %s" % (
                    label, pw["shape"][0], pw["shape"][1],
                    ", ".join("%s-%s" % (_g(a), _g(b)) for a, b in zip(pw["min"], pw["max"]))))
            moved = sc.get("positions_moved")
            if moved and moved["max_m"] > 0:
                px = moved.get("rms_pixel") is not None
                metres = not _nominal_geometry(sc)  # lengths in object pixels (NpzScan, pixel positions)
                add("  moved  %-8s positions refined: rms %s, max %s" % (
                    label, _moved(moved, "rms", px, metres), _moved(moved, "max", px, metres)))
        add("  size:        %s%s" % (_bytes(s.get("size_bytes")), "; checkpoint %s: %s" % (
            s["checkpoint"]["path"], _bytes(s["checkpoint"]["size_bytes"])) if s.get("checkpoint") else ""))
        prov = s.get("provenance") or {}
        if prov:
            add("  versions:    ptycli %s, numpy %s, scipy %s, h5py %s, python %s" % tuple(
                prov.get(k, "?") for k in ("ptycli", "numpy", "scipy", "h5py", "python")))
            add("  run on:      %s, %s MPI process(es), %s .. %s (%s s)" % (
                prov.get("host", "?"), prov.get("mpi_size", "?"), prov.get("start_time", "?"),
                prov.get("end_time", "?"), _g(prov.get("duration_s"))))
        st = s.get("resume")
        if st:
            add("  resume:      engine %s at iteration %s%s" % (
                st.get("engine_label"), st.get("engine_iteration"),
                " (chain finished)" if st.get("finished") else ""))
            if st.get("status") == "failed":
                add("  FAILED:      %s" % st.get("error", "the run failed; this is its last good state"))
    elif kind in ("data", "cxi", "ptyd"):
        add("  format:      %s" % s.get("format"))
        add("  frames:      %s of %s (%s)" % (s.get("frames"), "x".join(str(v) for v in s.get("frame_shape", [])),
                                             s.get("dtype")))
        add("  energy:      %s" % _g(s.get("energy_kev"), "keV"))
        add("  distance:    %s" % _g(s.get("distance_m"), "m"))
        add("  pixel:       %s" % _g(s.get("psize_m"), "m"))
        if s.get("scan_extent") is not None:
            add("  scan extent: %s (y, x)%s" % (_g(s["scan_extent"]),
                                                " pixel" if s.get("positions_unit") == "pixel" else " m"))
        for key in ("label", "propagation", "has_mask", "has_weights", "chunks"):
            if s.get(key) not in (None, ""):
                add("  %-12s %s" % (key.replace("_", " ") + ":", s[key]))
        if s.get("ground_truth"):
            add("  ground truth: %s" % ", ".join(s["ground_truth"]))
    elif kind == "cxi-result":
        add("  format:      %s (%s)" % (s["format"], s.get("program")))
        for im in s["images"]:
            add("  %-8s %-7s %s %s%s" % (im["name"], im.get("data_type"), "x".join(str(v) for v in im.get("shape", [])),
                                         im.get("dtype", ""),
                                         ", pixel %s m" % _g(im["psize_m"]) if im.get("psize_m") else ""))
    else:
        add("  top level:   %s" % ", ".join(s.get("top_level", [])))
        add("  (not a layout ptycli knows; 'ptycli inspect --tree %s' lists its contents)" % s["file"])
    return "\n".join(lines)


# -- tree ---------------------------------------------------------------------------------------

def _attrs(node):
    out = {}
    for key in node.attrs.keys():
        try:
            value = _plain(node.attrs[key])
        except (OSError, TypeError):  # unreadable attribute types
            value = "?"
        if isinstance(value, list) and len(value) > 8:
            value = "[%d values]" % len(value)
        elif isinstance(value, str) and (len(value) > 60 or "\n" in value):
            value = value[:57].replace("\n", " ") + "..."
        out[key] = value
    return out


def hdf5_tree(path):
    """Every node of ``path``: dicts with ``path``, ``kind`` (group/dataset/link) and shape/dtype/target."""
    out = []

    def walk(group, prefix):
        for name in group.keys():
            full = prefix + "/" + name
            link = group.get(name, getlink=True)
            if isinstance(link, (h5py.SoftLink, h5py.ExternalLink)):
                target = link.path if isinstance(link, h5py.SoftLink) else "%s:%s" % (link.filename, link.path)
                out.append(dict(path=full, kind="link", target=target))
                continue
            node = group.get(name)
            if isinstance(node, h5py.Group):
                out.append(dict(path=full + "/", kind="group", attrs=_attrs(node)))
                walk(node, full)
            elif isinstance(node, h5py.Dataset):
                entry = dict(path=full, kind="dataset", shape=list(node.shape) if node.shape is not None else None,
                             dtype=str(node.dtype), attrs=_attrs(node))
                if node.shape == () and node.dtype.kind in "OSUbiuf":
                    value = _plain(node[()])
                    if not isinstance(value, str) or len(value) <= 60 and "\n" not in value:
                        entry["value"] = value
                out.append(entry)

    with _open(path) as f:
        out.append(dict(path="/", kind="group", attrs=_attrs(f)))
        walk(f, "")
    return out


def _tree_text(nodes, with_attrs=False):
    lines = []
    for n in nodes:
        if n["kind"] == "group":
            lines.append(n["path"])
        elif n["kind"] == "link":
            lines.append("%s -> %s" % (n["path"], n["target"]))
        else:
            shape = "scalar" if n["shape"] == [] else ("empty" if n["shape"] is None else
                                                         str(tuple(n["shape"])))
            text = "%-50s %-18s %s" % (n["path"], shape, n["dtype"])
            if "value" in n:
                text += "  = %s" % (n["value"],)
            lines.append(text.rstrip())
        if with_attrs:
            for key, value in (n.get("attrs") or {}).items():
                lines.append("    @%s = %s" % (key, value))
    return "\n".join(lines)


@click.command()
@click.argument("file", metavar="FILE")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of text.")
@click.option("--tree", is_flag=True, help="List every group and dataset with shape and dtype.")
@click.option("--attrs", is_flag=True, help="With --tree: also list the attributes (units, pixel sizes, ...).")
def inspect(file, as_json, tree, attrs):
    """Summarise FILE: a reconstruction, a ptycli data file, a CXI or a .ptyd file.

    For a reconstruction: engines run, iterations, final errors (for DM/RAAR
    also model_fourier_error, the error of probe x object itself), the health
    check after each engine (one WARNING line per likely problem), object and
    probe shapes and pixel sizes, versions and the resume point. For data:
    frames, frame shape and geometry (energy, distance, pixel size, scan
    extent). Also how far refined positions moved (rms and largest, in
    sample pixels and metres) and the sizes of the file and its checkpoint.
    --tree lists the HDF5 contents instead. With --json, values that are not
    numbers (NaN, infinities) are written as null.

    \b
    Examples:
      ptycli inspect out/recon.h5
      ptycli inspect out/recon.h5 --json | jq '.engines[] | {label, final_fourier_error}'
      ptycli inspect sample_data/moonflower.h5
      ptycli inspect scan.cxi --tree
      ptycli inspect out/recon.h5 --tree --attrs
    """
    with reading(file):  # a damaged file gives a one-line error naming it
        result = hdf5_tree(file) if tree else summarise(file)
    if tree:
        nodes = result
        if not parallel.master:
            return
        if as_json:
            click.echo(to_json(dict(file=file, nodes=nodes)))
        else:
            click.echo(_tree_text(nodes, with_attrs=attrs))
        return
    summary = result
    if not parallel.master:
        return
    if as_json:
        click.echo(to_json(summary))
    else:
        click.echo(_text(summary))
