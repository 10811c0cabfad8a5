"""Address books: the pods of a model compiled once into integer arrays.

(Over 600 lines: one concept, :class:`PodGroup`'s addresses with the gathers
and scatters every engine's numpy path runs on them.)

Engines never loop over :class:`~ptycli.core.classes.POD` objects in their hot
loops. At initialisation they build an :class:`AddressBook`, which groups the
active pods into :class:`PodGroup` s (pods sharing the same probe, object,
exit, diffraction and mask storages: normally one group per scan) and stores,
for every pod, where its views point:

=================  ==========================================================
``pr_layer``       buffer row of the probe mode in the probe storage
``ob_layer``       buffer row of the object mode in the object storage
``ob_y, ob_x``     top-left pixel (row, col) of the object window
``ex_layer``       buffer row of the exit wave in the exit storage
``di_layer``       buffer row of the frame in the diffraction storage
``ma_layer``       buffer row of the frame in the mask storage (-1: no mask)
``frame``          index of the pod's frame inside the group (0 .. n_frames-1)
=================  ==========================================================

All arrays are ``int64`` of length ``n_pods``. Pods are sorted by frame
(diffraction row) and then by exit row, so the pods of frames ``f0 .. f1-1``
are the contiguous pod range ``pod_start[f0] .. pod_start[f1]``.

Live buffers
------------
A group keeps references to the *storages*, never copies: ``group.probe``,
``group.obj``, ``group.exit``, ``group.diff``, ``group.mask`` are
:class:`~ptycli.core.classes.Storage` objects and ``group.probe.data`` etc.
the live ndarrays. Engines update these arrays *in place* (``data[...] =``,
``+=``, ``out=``), so views, pods and the result writer see the result.
Never rebind ``storage.data`` inside an engine.

Regular layout (fast path)
--------------------------
When every frame has the same number ``modes`` of pods, all frames use the
same sequence of probe/object layers (``mode_pr``, ``mode_ob``), the object
window of a frame is the same for all its modes and the exit rows are exactly
``0 .. n_pods-1`` in pod order, the group is *regular*
(``group.regular``): the exit buffer reshapes without a copy to
``(n_frames, modes, H, W)`` (:meth:`PodGroup.exit_frames`) and a pod array of
a frame block reshapes to ``(frames, modes, H, W)`` (:meth:`PodGroup.as4d`),
where the probe modes broadcast as ``probe.data[mode_pr]`` of shape
``(modes, H, W)``. This is what :class:`~ptycli.core.manager.ScanModel`
builds. Other layouts work through the general path (index arrays, copies).
Helpers that hide the difference:

* :meth:`PodGroup.blocks` - frame/pod ranges of at most ``max_frames`` frames
* :meth:`PodGroup.exit_index` / :meth:`PodGroup.read_exit` /
  :meth:`PodGroup.write_exit` - exit waves of a pod range (a view in the
  regular layout)
* :meth:`PodGroup.probe_for` - the probe of each pod of a range, as an array
  that broadcasts against ``as4d`` of a pod array (regular) or per pod
* :meth:`PodGroup.gather_object` - object windows of a pod range;
  :meth:`PodGroup.gather_product` - ``probe * object`` of a pod range in one pass
* :meth:`PodGroup.scatter_object` / :meth:`PodGroup.scatter_object_const` /
  :meth:`PodGroup.scatter_probe_product` - overlap sums into an object-shaped
  accumulator (object update numerator and denominator)
* :meth:`PodGroup.accumulate_probe` - probe update numerator and denominator
* :meth:`PodGroup.sum_modes` / :meth:`PodGroup.to_pods` - frame <-> pod
  arrays (incoherent sums over modes, and broadcasting a frame quantity back)
* :meth:`PodGroup.fmag` - ``sqrt(I)`` of the frames (float, cached);
  :meth:`PodGroup.photon_weight` - ``1 / (I + 1)`` (cached)
* :attr:`PodGroup.factors` - the propagator's cached phase factors in the
  model's complex type; :attr:`PodGroup.farfield` tells whether the far-field
  fast path (``FFT(pre * w)``, post factor skipped) applies.

Moving frames
-------------
Position refinement (:mod:`ptycli.engines.posref`) moves frames during a run
with :meth:`PodGroup.shift_frames`, which changes ``ob_y``/``ob_x`` and
``frame_y``/``frame_x`` *in place*. Engines that keep copies of window
addresses refresh them in :meth:`~ptycli.engines.base.Engine.positions_changed`.

Sub-pixel positions
-------------------
For scans that chose the sub-pixel model (:mod:`ptycli.core.subpixel`),
:meth:`AddressBook.enable_subpixel` (called by engines that support it: DM,
RAAR, ML) gives the group ``sub``, a :class:`~ptycli.core.subpixel.SubpixelShifts`
holding each frame's remainder; ``addresses`` then carries ``sub.layer`` in
place of ``pr_layer``: the pods address the *expanded probe*
:meth:`PodGroup.model_probe` (the probe shifted per shift class), and every
helper above that takes probe rows (``gather_product``, ``probe_for``,
``scatter_object_const``, ``scatter_probe_product``, ``accumulate_probe``)
works on expanded rows. ``pr_layer`` keeps the probe storage's layer.

Memory: the book itself holds a few integers per pod; :meth:`PodGroup.fmag`
and :meth:`PodGroup.photon_weight`
each hold one float array of the data's size, built on first use.

Example
-------
>>> book = AddressBook(P)                      # doctest: +SKIP
>>> for g in book.groups:                     # doctest: +SKIP
...     for f0, f1, p0, p1 in g.blocks(64):
...         obj = g.gather_object(g.obj.data, p0, p1)     # (p1-p0, H, W)
...         pr = g.probe_for(g.probe.data, p0, p1)
...         pw = g.as4d(obj, f0, f1) * pr if g.regular else obj * pr
"""

import numpy as np

from ..core.subpixel import SubpixelShifts
from ..core.variable_probe import frame_probes
from ..errors import EngineError

__all__ = ["AddressBook", "PodGroup", "compile_pods"]


def _rows(view):
    """(dlayer, dlow_y, dlow_x) of a view, checked."""
    if view.dlayer is None:
        raise EngineError("view %s addresses layer %d that storage %s does not hold; reformat the "
                          "container before starting an engine" % (view.ID, view.layer, view.storageID))
    return int(view.dlayer), int(view.dlow[0]), int(view.dlow[1])


class PodGroup:
    """Pods sharing probe, object, exit, diffraction and mask storages.

    Parameters
    ----------
    pods : list of POD
        Active pods of one storage combination.
    ctype, ftype : numpy dtype
        The model's complex and real types (``P.CType``, ``P.FType``).

    Attributes
    ----------
    probe, obj, exit, diff, mask : Storage
        The live storages (``mask`` is None when the pods have no mask view).
    label : str
        ``exit`` storage ID without its 'S' (the scan label for scan models).
    shape : (int, int)
        Frame shape (H, W) in pixels.
    n_pods, n_frames, modes : int
        Pods, frames and pods per frame (``modes`` is 0 when frames differ).
    pr_layer, ob_layer, ob_y, ob_x, ex_layer, di_layer, ma_layer, frame : ndarray of int64
        Per-pod addresses (see the module docstring).
    addresses : tuple of ndarray
        ``(ob_layer, ob_y, ob_x, pr_layer)``: the object windows and probe rows in one argument
        for the compiled kernels (:mod:`ptycli.engines.fused`).
    frame_di, frame_ma : ndarray of int64
        Diffraction/mask row of each frame.
    pod_start : ndarray of int64 (n_frames + 1,)
        Pods of frame ``f`` are ``pod_start[f] .. pod_start[f+1]-1``.
    regular : bool
        The fast-path layout (see the module docstring).
    mode_pr, mode_ob : ndarray of int64 (modes,)
        Probe/object rows of the modes of every frame (regular layout only).
    geometry, propagator
        The pods' geometry and its propagator.
    farfield : bool
        Whether the propagator is far-field (the post factor may be skipped
        in Fourier-modulus projections).
    factors
        ``propagator.factors(ctype)``: ``pre, post, pre_bw, post_bw``.
    mask_trivial : bool
        True when every mask value is 1 (mask multiplications can be skipped).
    background : ndarray (H, W) or None
        The scan's incoherent background (the scan model's live array), None when it is not fitted.
    probe_weights : ndarray (frames, K) complex128 or None
        A variable probe's weights (the scan model's live array; row = diffraction row), else None.
    beam_centre_px : ndarray (2,) or None
        Where the undiffracted beam meets the detector, as the scan's mean pattern shows it
        (:attr:`ptycli.core.manager.ScanModel.beam_centre_px`), or None.
    pods : list of POD
        The pods, in book order.
    """

    def __init__(self, pods, ctype=np.complex64, ftype=np.float32):
        self.ctype = np.dtype(ctype)
        self.ftype = np.dtype(ftype)
        first = pods[0]
        self.geometry = first.geometry
        self.propagator = first.geometry.propagator
        self.probe = first.pr_view.storage
        self.obj = first.ob_view.storage
        self.exit = first.ex_view.storage
        self.diff = first.di_view.storage
        self.mask = first.ma_view.storage if first.ma_view is not None else None
        #: the scan's incoherent background (H, W), live (:mod:`ptycli.core.background`), or None
        self.background = getattr(getattr(first, "model", None), "background", None)
        #: a variable probe's per-frame weights (the scan model's live (frames, K) array, rows = diffraction
        #: rows), or None (:mod:`ptycli.core.variable_probe`)
        self.probe_weights = getattr(getattr(first, "model", None), "probe_weights", None)
        self.beam_centre_px = getattr(getattr(first, "model", None), "beam_centre_px", None)
        self.label = str(self.exit.ID)[1:] if str(self.exit.ID).startswith("S") else str(self.exit.ID)
        self.shape = tuple(int(s) for s in first.pr_view.shape)
        H, W = self.shape
        rows = []
        for pod in pods:
            if tuple(int(s) for s in pod.ob_view.shape) != self.shape or \
                    tuple(int(s) for s in pod.ex_view.shape) != self.shape:
                raise EngineError("pod %s: probe, object and exit views must share the frame shape %s"
                                  % (pod.ID, self.shape))
            pl = _rows(pod.pr_view)[0]
            ol, oy, ox = _rows(pod.ob_view)
            el = _rows(pod.ex_view)[0]
            dl = _rows(pod.di_view)[0]
            ml = _rows(pod.ma_view)[0] if pod.ma_view is not None else -1
            rows.append((dl, el, pl, ol, oy, ox, ml))
        arr = np.array(rows, dtype=np.int64).reshape(-1, 7)
        order = np.lexsort((arr[:, 1], arr[:, 0]))
        arr = arr[order]
        self.pods = [pods[i] for i in order]
        (self.di_layer, self.ex_layer, self.pr_layer, self.ob_layer, self.ob_y, self.ob_x,
         self.ma_layer) = [np.ascontiguousarray(arr[:, k]) for k in range(7)]
        #: the window addresses packed for the compiled kernels: ``(ob_layer, ob_y, ob_x, pr_layer)``
        #: (the same live arrays: position refinement moves ``ob_y``/``ob_x`` in place)
        self.addresses = (self.ob_layer, self.ob_y, self.ob_x, self.pr_layer)
        self.n_pods = len(self.pods)
        # bounds of the object windows
        Ho, Wo = self.obj.data.shape[-2:]
        if self.n_pods and (self.ob_y.min() < 0 or self.ob_x.min() < 0 or self.ob_y.max() + H > Ho
                            or self.ob_x.max() + W > Wo):
            raise EngineError("object storage %s (%d x %d) does not contain all views of its pods; "
                              "reformat the object container" % (self.obj.ID, Ho, Wo))
        # frames
        change = np.ones(self.n_pods, dtype=bool)
        change[1:] = self.di_layer[1:] != self.di_layer[:-1]
        starts = np.flatnonzero(change)
        self.pod_start = np.append(starts, self.n_pods).astype(np.int64)
        self.n_frames = len(starts)
        self.frame = np.repeat(np.arange(self.n_frames, dtype=np.int64), np.diff(self.pod_start))
        self.frame_di = self.di_layer[starts].copy()
        self.frame_ma = self.ma_layer[starts].copy()
        counts = np.diff(self.pod_start)
        self.modes = int(counts[0]) if self.n_frames and np.all(counts == counts[0]) else 0
        # regular layout?
        self.mode_pr = self.mode_ob = None
        reg = self.modes > 0
        if reg:
            m = self.modes
            pr = self.pr_layer.reshape(-1, m)
            ob = self.ob_layer.reshape(-1, m)
            reg = (np.all(pr == pr[:1]) and np.all(ob == ob[:1])
                   and np.all(self.ob_y.reshape(-1, m) == self.ob_y.reshape(-1, m)[:, :1])
                   and np.all(self.ob_x.reshape(-1, m) == self.ob_x.reshape(-1, m)[:, :1])
                   and self.exit.data.shape[0] == self.n_pods
                   and np.array_equal(self.ex_layer, np.arange(self.n_pods)))
            if reg:
                self.mode_pr = pr[0].copy()
                self.mode_ob = ob[0].copy()
        self.regular = bool(reg)
        self.single_probe_layer = bool(self.n_pods) and bool(np.all(self.pr_layer == self.pr_layer[0]))
        # per-frame object window (regular) for quick access
        self.frame_y = self.ob_y[self.pod_start[:-1]].copy()
        self.frame_x = self.ob_x[self.pod_start[:-1]].copy()
        # contiguity of diff / mask rows
        self._di_contig = bool(self.n_frames) and np.array_equal(
            self.frame_di, np.arange(self.frame_di[0], self.frame_di[0] + self.n_frames))
        self._ma_contig = self.mask is not None and bool(self.n_frames) and np.array_equal(
            self.frame_ma, np.arange(self.frame_ma[0], self.frame_ma[0] + self.n_frames))
        self._ex_contig = np.array_equal(self.ex_layer, np.arange(self.ex_layer[0], self.ex_layer[0] + self.n_pods)) \
            if self.n_pods else True
        self.farfield = getattr(self.propagator, "kind", None) == "farfield"
        self.factors = self.propagator.factors(self.ctype)
        self._fmag = None
        self._pweight = None
        self.mask_trivial = self.mask is None or bool(np.all(self.frames_of(self.mask.data, self.frame_ma) == 1))
        #: the sub-pixel model (:class:`~ptycli.core.subpixel.SubpixelShifts`), or None (whole-pixel windows)
        self.sub = None
        #: whether the pods address every frame's own probe of a variable probe (:meth:`set_frame_probes`)
        self.frame_probes = False
        self._fp_cache = self._fp_key = None

    # -- sub-pixel positions ------------------------------------------------
    def set_subpixel(self, sub):
        """Use the sub-pixel model ``sub`` (None: whole pixels): the pods' probe rows become expanded-probe layers.

        :attr:`addresses` then carries ``sub.layer`` (a live array the model
        updates in place) in place of ``pr_layer``, so the compiled kernels and
        the window helpers read the probe of a pod from :meth:`model_probe`.
        """
        self.sub = sub
        self.addresses = (self.ob_layer, self.ob_y, self.ob_x, self.pr_layer if sub is None else sub.layer)

    def set_frame_probes(self, on=True):
        """Address every frame's own probe of a variable probe (:mod:`ptycli.core.variable_probe`), or not.

        On, :meth:`model_probe` returns one layer per frame, ``sum_k w_fk U_k``
        (the eigen-probes ``U`` of the probe storage mixed with the frame's
        ``probe_weights``), and :attr:`addresses` carries the pods' frame
        index in place of ``pr_layer``, so that the window helpers and the
        passes of an engine (DM, RAAR) see each frame's probe. Not with the
        sub-pixel model.
        """
        if on and (self.probe_weights is None or self.sub is not None):
            raise EngineError("group %s: frame probes need a variable probe and whole-pixel windows" % self.label)
        self.frame_probes = bool(on)
        self._fp_cache = self._fp_key = None
        self.single_probe_layer = not on and bool(self.n_pods) and bool(np.all(self.pr_layer == self.pr_layer[0]))
        self.addresses = (self.ob_layer, self.ob_y, self.ob_x, self.frame if on else self.pr_layer)

    def frame_weights(self, frames=None):
        """A variable probe's weights of frames ``frames`` (default: all), rows of ``probe_weights``: (n, K)."""
        rows = self.frame_di if frames is None else self.frame_di[frames]
        return self.probe_weights[rows]

    def model_probe(self, probe_data=None):
        """The probe rows the pods address: the probe storage's data, its shifted layers or the frames' probes.

        ``probe_data`` (default the live probe) must have the probe storage's shape.
        With :meth:`set_frame_probes` the frames' probes of the live probe are
        kept while eigen-probes and weights do not change (a new array when they do).
        """
        probe_data = self.probe.data if probe_data is None else probe_data
        if self.frame_probes:
            if probe_data is not self.probe.data:
                return frame_probes(probe_data, self.frame_weights())
            key = self._fp_key
            if key is None or not (np.array_equal(key[0], probe_data) and np.array_equal(key[1], self.probe_weights)):
                self._fp_cache = frame_probes(probe_data, self.frame_weights())
                self._fp_key = (probe_data.copy(), self.probe_weights.copy())
            return self._fp_cache
        if self.sub is None:
            return probe_data
        if probe_data is self.probe.data:
            return self.sub.model_probe(probe_data)
        return self.sub.expand(probe_data)

    @property
    def pod_probe_rows(self):
        """Probe row of every pod in the arrays :meth:`model_probe` returns (``pr_layer`` or the expanded layers)."""
        return self.addresses[3]

    # -- frames and pods ----------------------------------------------------
    def __repr__(self):
        return "PodGroup(%s: %d pods, %d frames, modes=%d, regular=%s)" % (
            self.label, self.n_pods, self.n_frames, self.modes, self.regular)

    def blocks(self, max_frames=None):
        """Frame blocks ``(f0, f1, p0, p1)`` of at most ``max_frames`` frames (None: one block).

        The pods of frames ``f0 .. f1-1`` are ``p0 .. p1-1``.
        """
        n = self.n_frames
        step = n if not max_frames else max(1, int(max_frames))
        out = []
        for f0 in range(0, n, max(step, 1)):
            f1 = min(n, f0 + step)
            out.append((f0, f1, int(self.pod_start[f0]), int(self.pod_start[f1])))
        return out

    @staticmethod
    def frames_of(data, rows):
        """Rows ``rows`` of a buffer: a view when they are contiguous, else a copy."""
        if len(rows) and np.array_equal(rows, np.arange(rows[0], rows[0] + len(rows))):
            return data[int(rows[0]):int(rows[0]) + len(rows)]
        return data[rows]

    def diff_frames(self, f0=0, f1=None):
        """Measured intensities of frames ``f0 .. f1-1`` (a live view when the rows are contiguous)."""
        return self._frame_rows(self.diff.data, self.frame_di, self._di_contig, f0, f1)

    def mask_frames(self, f0=0, f1=None):
        """Mask of frames ``f0 .. f1-1``, or None when the mask is trivial (all ones)."""
        if self.mask_trivial:
            return None
        return self._frame_rows(self.mask.data, self.frame_ma, self._ma_contig, f0, f1)

    def _frame_rows(self, data, rows, contiguous, f0, f1):
        """Rows ``rows[f0:f1]`` of a per-frame buffer (f1 None: all frames): a live view when ``contiguous``."""
        f1 = self.n_frames if f1 is None else f1
        if contiguous:
            s = int(rows[0])
            return data[s + f0:s + f1]
        return data[rows[f0:f1]]

    def fmag(self, f0=0, f1=None):
        """``sqrt(max(I, 0))`` of frames ``f0 .. f1-1`` in the real type (cached for the whole group).

        The cache is one float array of the data's size; :meth:`drop_caches` frees it.
        """
        if self._fmag is None:
            d = self.diff_frames()
            fmag = np.maximum(d, 0, dtype=self.ftype)
            self._fmag = np.sqrt(fmag, out=fmag)  # in place: no second data-sized array
        f1 = self.n_frames if f1 is None else f1
        return self._fmag[f0:f1]

    def photon_weight(self, f0=0, f1=None):
        """``1 / (I + 1)`` of frames ``f0 .. f1-1`` in the real type (cached; for the photon error)."""
        if self._pweight is None:
            d = self.diff_frames()
            w = np.maximum(d, 0, dtype=self.ftype)
            w += 1
            self._pweight = np.reciprocal(w, out=w)
        f1 = self.n_frames if f1 is None else f1
        return self._pweight[f0:f1]

    def drop_caches(self):
        """Free cached derived arrays (``fmag``, ``photon_weight``)."""
        self._fmag = None
        self._pweight = None

    def exit_index(self, p0=0, p1=None):
        """Index of the exit rows of pods ``p0 .. p1-1``: a slice when contiguous, else an int array."""
        p1 = self.n_pods if p1 is None else p1
        if self._ex_contig:
            s = int(self.ex_layer[0])
            return slice(s + p0, s + p1)
        return self.ex_layer[p0:p1]

    def read_exit(self, p0=0, p1=None):
        """Exit waves of pods ``p0 .. p1-1``, shape (p1-p0, H, W): a live view when contiguous, else a copy."""
        return self.exit.data[self.exit_index(p0, p1)]

    def write_exit(self, values, p0=0, p1=None):
        """Store exit waves of pods ``p0 .. p1-1`` (nothing to do when ``values`` is the live view)."""
        idx = self.exit_index(p0, p1)
        if isinstance(idx, slice):
            target = self.exit.data[idx]
            if np.shares_memory(target, values):
                return
            target[...] = values
        else:
            self.exit.data[idx] = values

    def exit_frames(self):
        """The live exit buffer as ``(n_frames, modes, H, W)`` (regular layout only)."""
        if not self.regular:
            raise EngineError("group %s is not in the regular layout" % self.label)
        return self.exit.data.reshape((self.n_frames, self.modes) + self.shape)

    def as4d(self, pods_array, f0, f1):
        """Reshape a pod array of frames ``f0 .. f1-1`` to (frames, modes, H, W) (regular layout, no copy)."""
        return pods_array.reshape((f1 - f0, self.modes) + pods_array.shape[-2:])

    def probe_for(self, probe_data, p0=0, p1=None):
        """The probe of each pod of ``p0 .. p1-1``.

        Regular layout: ``probe_data[mode_pr]`` of shape (modes, H, W), to
        broadcast against :meth:`as4d` arrays (for one probe mode the
        (1, H, W) array also broadcasts against plain pod arrays).
        General layout: ``probe_data[pr_layer[p0:p1]]``, one per pod (a copy),
        or the single layer (1, H, W) when all pods use the same one.
        """
        p1 = self.n_pods if p1 is None else p1
        if self.frame_probes or self.sub is not None:  # frames' probes or expanded probe: one row per pod
            rows = probe_data[self.addresses[3][p0:p1]]
            if self.regular and self.modes > 1:
                return rows.reshape((-1, self.modes) + rows.shape[-2:])
            return rows
        if self.regular:
            if self.modes == 1:
                k = int(self.mode_pr[0])
                return probe_data[k:k + 1]
            return probe_data[self.mode_pr]
        if self.single_probe_layer:
            k = int(self.pr_layer[0])
            return probe_data[k:k + 1]
        return probe_data[self.pr_layer[p0:p1]]

    def sum_modes(self, pods_array, f0, f1, out=None):
        """Sum a pod array of frames ``f0 .. f1-1`` over the pods of each frame: (f1-f0, H, W)."""
        p0, p1 = int(self.pod_start[f0]), int(self.pod_start[f1])
        if self.regular:
            a = self.as4d(pods_array, f0, f1)
            if self.modes == 1:
                if out is None:
                    return a[:, 0]
                out[...] = a[:, 0]
                return out
            return np.sum(a, axis=1, out=out)
        starts = self.pod_start[f0:f1] - p0
        res = np.add.reduceat(pods_array[: p1 - p0], starts, axis=0)
        if out is not None:
            out[...] = res
            return out
        return res

    def to_pods(self, frames_array, f0, f1):
        """Broadcast a frame array (f1-f0, ...) back to the pods of those frames.

        Regular layout: ``frames_array[:, None]`` (to broadcast against
        :meth:`as4d` arrays); general layout: a gathered copy per pod.
        """
        if self.regular:
            return frames_array[:, None]
        p0, p1 = int(self.pod_start[f0]), int(self.pod_start[f1])
        return frames_array[self.frame[p0:p1] - f0]

    def shift_frames(self, frames, delta):
        """Move the object windows of ``frames`` by ``delta`` pixels ((n, 2) rows, cols), in place.

        All pods of a frame move together; ``ob_y``/``ob_x`` and
        ``frame_y``/``frame_x`` are updated (the views are the caller's
        business). The new windows must lie inside the object storage.
        """
        frames = np.asarray(frames, dtype=np.int64).reshape(-1)
        delta = np.asarray(delta, dtype=np.int64).reshape(-1, 2)
        H, W = self.shape
        Ho, Wo = self.obj.data.shape[-2:]
        for f, (dy, dx) in zip(frames.tolist(), delta.tolist()):
            p0, p1 = int(self.pod_start[f]), int(self.pod_start[f + 1])
            ny, nx = self.ob_y[p0:p1] + dy, self.ob_x[p0:p1] + dx
            if ny.min() < 0 or nx.min() < 0 or ny.max() + H > Ho or nx.max() + W > Wo:
                raise EngineError("group %s: frame %d moved by (%d, %d) leaves the object storage %s"
                                  % (self.label, f, dy, dx, self.obj.ID))
            self.ob_y[p0:p1] = ny
            self.ob_x[p0:p1] = nx
            self.frame_y[f] = ny[0]
            self.frame_x[f] = nx[0]

    # -- object windows -------------------------------------------------------
    def gather_object(self, obj_data, p0=0, p1=None, out=None):
        """Object windows of pods ``p0 .. p1-1`` stacked to (p1-p0, H, W) (a copy).

        ``obj_data`` is an array of the object storage's shape (the live
        object or any same-shaped array such as ``|object|**2``).
        A loop of slice copies over pods; measured faster than a fancy index
        on a sliding-window view.
        """
        p1 = self.n_pods if p1 is None else p1
        H, W = self.shape
        if out is None:
            out = np.empty((p1 - p0, H, W), dtype=obj_data.dtype)
        ol, oy, ox = self.ob_layer, self.ob_y, self.ob_x
        for k, i in enumerate(range(p0, p1)):
            y, x = oy[i], ox[i]
            out[k] = obj_data[ol[i], y:y + H, x:x + W]
        return out

    def gather_product(self, obj_data, probe_data, p0=0, p1=None, out=None):
        """``probe[pr_layer[i]] * object window(i)`` for pods ``p0 .. p1-1``, (p1-p0, H, W).

        With the sub-pixel model ``probe_data`` is the expanded probe (:meth:`model_probe`).

        The gather and the product in one pass (window by window), so each
        exit-wave-sized element is written once: the ``probe * object``
        stack of every engine.
        """
        p1 = self.n_pods if p1 is None else p1
        H, W = self.shape
        if out is None:
            out = np.empty((p1 - p0, H, W), dtype=np.result_type(obj_data, probe_data))
        ol, oy, ox, pl = self.addresses
        for k, i in enumerate(range(p0, p1)):
            y, x = oy[i], ox[i]
            np.multiply(obj_data[ol[i], y:y + H, x:x + W], probe_data[pl[i]], out=out[k])
        return out

    def gather_frames_object(self, obj_data, f0, f1, out=None):
        """Object windows per frame and object mode (regular layout): (f1-f0, n_obmodes, H, W).

        ``n_obmodes`` is the number of distinct object rows among the modes;
        returns the windows and ``ob_index`` (modes,) mapping each mode to its
        window along axis 1.
        """
        uniq, inv = np.unique(self.mode_ob, return_inverse=True)
        H, W = self.shape
        if out is None:
            out = np.empty((f1 - f0, len(uniq), H, W), dtype=obj_data.dtype)
        fy, fx = self.frame_y, self.frame_x
        for k, f in enumerate(range(f0, f1)):
            y, x = fy[f], fx[f]
            out[k] = obj_data[uniq, y:y + H, x:x + W]
        return out, inv

    def scatter_object(self, target, values, p0=0, p1=None, conj_factor=None):
        """Add per-pod windows into an object-shaped accumulator.

        ``target[ob_layer[i], y:y+H, x:x+W] += values[i - p0]`` for pods
        ``i = p0 .. p1-1``; with ``conj_factor`` (broadcastable per pod as
        from :meth:`probe_for` in the general layout, or (H, W)), adds
        ``conj(conj_factor) * values`` computed window by window (no stack
        temporary).
        """
        p1 = self.n_pods if p1 is None else p1
        H, W = self.shape
        ol, oy, ox = self.ob_layer, self.ob_y, self.ob_x
        if conj_factor is None:
            for k, i in enumerate(range(p0, p1)):
                y, x = oy[i], ox[i]
                target[ol[i], y:y + H, x:x + W] += values[k]
            return target
        cf = np.conj(conj_factor)
        per_pod = cf.ndim == 3 and cf.shape[0] == p1 - p0 and p1 - p0 > 1
        if cf.ndim == 3 and not per_pod:
            cf = cf[0]
        tmp = np.empty((H, W), dtype=np.result_type(cf, values))
        for k, i in enumerate(range(p0, p1)):
            y, x = oy[i], ox[i]
            np.multiply(cf[k] if per_pod else cf, values[k], out=tmp)
            target[ol[i], y:y + H, x:x + W] += tmp
        return target

    def scatter_object_const(self, target, const, p0=0, p1=None):
        """``target[ob_layer[i], window(i)] += const[pr_layer[i]]`` for pods ``p0 .. p1-1``.

        ``const`` has one (H, W) frame per probe row (e.g. ``|probe|**2``
        of every mode), so the denominator of the object update is built
        without a stack temporary.
        """
        for k, lo, rows, cols, q in self._windows(p0, p1):
            target[lo, rows, cols] += const[q]
        return target

    def scatter_probe_product(self, target, values, probe_rows, p0=0, p1=None, tmp=None):
        """``target[ob_layer[i], window(i)] += probe_rows[pr_layer[i]] * values[i - p0]``.

        The object-update numerator: pass ``probe_rows = conj(probe)`` and the
        exit waves as ``values``. The products are formed window by window in
        a small (cache-resident) scratch frame ``tmp``.
        """
        if tmp is None:
            tmp = np.empty(self.shape, dtype=np.result_type(probe_rows, values))
        for k, lo, rows, cols, q in self._windows(p0, p1):
            np.multiply(probe_rows[q], values[k], out=tmp)
            target[lo, rows, cols] += tmp
        return target

    def accumulate_probe(self, num, den, obj_rows, obj_weight, values, p0=0, p1=None, tmp=None):
        """Probe-update sums over pods ``p0 .. p1-1``.

        ``num[pr_layer[i]] += obj_rows[ob_layer[i], window(i)] * values[i - p0]``
        and, when ``den`` is not None,
        ``den[pr_layer[i]] += obj_weight[ob_layer[i], window(i)]``. Pass
        ``obj_rows = conj(object)``, ``obj_weight = |object|**2`` and the
        exit waves as ``values``.
        """
        if tmp is None:
            tmp = np.empty(self.shape, dtype=np.result_type(obj_rows, values))
        for k, lo, rows, cols, q in self._windows(p0, p1):
            np.multiply(obj_rows[lo, rows, cols], values[k], out=tmp)
            num[q] += tmp
            if den is not None:
                den[q] += obj_weight[lo, rows, cols]
        return num, den

    def _windows(self, p0, p1):
        """``(k, ob_layer, window rows, window cols, pr_layer)`` of pods ``i = p0 + k .. p1-1`` (p1 None: all)."""
        p1 = self.n_pods if p1 is None else p1
        H, W = self.shape
        ol, oy, ox, pl = self.addresses
        for k, i in enumerate(range(p0, p1)):
            y, x = oy[i], ox[i]
            yield k, ol[i], slice(y, y + H), slice(x, x + W), pl[i]

    def coverage(self, dtype=np.float32):
        """Number of windows covering each pixel of the object storage (float array)."""
        cov = np.zeros(self.obj.data.shape, dtype=dtype)
        rows = int(self.addresses[3].max()) + 1 if self.n_pods else 1
        one = np.ones((rows,) + self.shape, dtype=dtype)
        return self.scatter_object_const(cov, one)

    # -- propagation ----------------------------------------------------------
    def fw(self, w):
        """Full propagation (with all phase factors) of a stack to the detector."""
        return self.propagator.fw(w)

    def bw(self, w):
        """Full back-propagation of a stack to the sample plane."""
        return self.propagator.bw(w)


class AddressBook:
    """The active pods of a model compiled into :class:`PodGroup` s.

    Parameters
    ----------
    ptycho : Ptycho
        The model (its ``pods``, ``CType``, ``FType``).
    pods : iterable of POD, optional
        Pods to compile (default all of ``ptycho.pods``); inactive ones are
        skipped.

    Attributes
    ----------
    groups : list of PodGroup
        One per storage combination, in order of first appearance.
    probe_storages, obj_storages : dict
        Storage ID -> Storage of the probes/objects to update: all storages
        of the model's containers when the book holds all pods (so every MPI
        rank reduces the same buffers, even one without frames), else those
        of the groups (shared storages appear once).
    n_pods, n_frames : int
        Totals over the groups (this MPI rank only).
    """

    def __init__(self, ptycho, pods=None):
        self.ptycho = ptycho
        ctype = np.dtype(getattr(ptycho, "CType", np.complex64))
        ftype = np.dtype(getattr(ptycho, "FType", np.float32))
        all_pods = pods is None
        pods = list(ptycho.pods.values()) if pods is None else list(pods)
        by_key = {}
        for pod in pods:
            if not pod.active:
                continue
            key = (id(pod.pr_view.storage), id(pod.ob_view.storage), id(pod.ex_view.storage),
                   id(pod.di_view.storage), id(pod.ma_view.storage) if pod.ma_view is not None else None,
                   id(pod.geometry))
            by_key.setdefault(key, []).append(pod)
        self.groups = [PodGroup(v, ctype, ftype) for v in by_key.values()]
        self.probe_storages = {}
        self.obj_storages = {}
        if all_pods:
            # every storage of the model, in the containers' order, so that all MPI ranks
            # (also one without frames) reduce the same buffers in the same order
            self.probe_storages.update(ptycho.probe.S)
            self.obj_storages.update(ptycho.obj.S)
        for g in self.groups:
            self.probe_storages.setdefault(g.probe.ID, g.probe)
            self.obj_storages.setdefault(g.obj.ID, g.obj)
        self.n_pods = sum(g.n_pods for g in self.groups)
        self.n_frames = sum(g.n_frames for g in self.groups)

    def enable_subpixel(self):
        """Give the groups whose scan chose the sub-pixel model (``model.subpixel['on']``) their shifts.

        The remainders are the object views' ``sp`` (of each frame's first
        pod). Returns the groups that use it.
        """
        out = []
        for g in self.groups:
            info = getattr(g.pods[0].model, "subpixel", None) or {} if g.n_pods else {}
            if not info.get("on") or int(getattr(g.obj, "slices", 1)) > 1:  # multislice: whole pixels (not modelled)
                continue
            shifts = np.array([g.pods[int(p)].ob_view.sp for p in g.pod_start[:-1]], dtype=float).reshape(-1, 2)
            g.set_subpixel(SubpixelShifts(g.probe.data.shape[0], g.shape, g.ctype, int(info["resolution"]), shifts,
                                          g.frame, g.pr_layer))
            out.append(g)
        return out

    def __iter__(self):
        return iter(self.groups)

    def __len__(self):
        return len(self.groups)

    def __repr__(self):
        return "AddressBook(%s)" % ", ".join(repr(g) for g in self.groups)


def compile_pods(ptycho, pods=None):
    """Shortcut for :class:`AddressBook` ``(ptycho, pods)``."""
    return AddressBook(ptycho, pods)
