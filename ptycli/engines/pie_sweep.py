"""The ePIE/rPIE sweep: per pod group a plan (frame kernel, mode rows, frame arrays), frames visited in order.

:class:`PIESweep` runs one pass over all local frames of an address book
in a given order (:func:`visiting_order`), the probe's far-field phase factor
folded into a scratch copy for the pass (see :mod:`ptycli.engines.stochastic`).
Groups whose object has several slices get the 3PIE step of
:mod:`ptycli.engines.multislice_step` instead (same interface; their object
windows span all slices). Groups with a variable probe
(:mod:`ptycli.engines.variable_probe`) give each frame's step the frame's own
probe, built from the eigen-probes and the frame's weights; the updated
probes give new weights and eigen-probes at the end of the sweep.
"""

import numpy as np

from .. import parallel
from ..errors import EngineError
from .multislice_step import MultisliceKernel
from .pie_step import FrameKernel
from .variable_probe import FrameProbes

__all__ = ["PIESweep", "visiting_order"]


def visiting_order(rng, n):
    """A random permutation of ``range(n)`` drawn from generator ``rng``."""
    return rng.permutation(n)


class _GroupPlan:
    """Per pod group: its kernel, probe/object rows and the frame arrays (live views)."""

    def __init__(self, group, kernel, pr_rows, ob_rows, noise_bound=0.0):
        self.group = group
        self.kernel = kernel
        self.pr0, self.pr1 = pr_rows
        self.ob0, self.ob1 = ob_rows
        self.intensity = group.diff_frames()
        #: one frame's measured amplitude ``sqrt(max(I, 0))``, made when the frame is visited (:meth:`amplitude`):
        #: no data-sized array beside the intensities
        self._amplitude = np.empty(group.shape, dtype=group.ftype)
        self.mask = group.mask_frames()  # None when all pixels are valid
        #: per frame: the power bound in photons (noise_bound times its valid pixels; 0: none)
        valid = (np.full(group.n_frames, float(np.prod(group.shape))) if self.mask is None
                 else np.sum(self.mask, axis=(1, 2), dtype=np.float64))
        self.full_bound = (float(noise_bound) * valid).tolist()
        self.bound = list(self.full_bound)  # in force: full_bound times PIESweep.scale_bound's share
        self.obj_data = group.obj.data   # the live object buffer (compiled kernels address windows in it)
        self.frame_y = group.frame_y     # live: position refinement may move frames
        self.frame_x = group.frame_x
        #: the per-frame probes of a variable probe (None: one probe for all frames)
        self.variable = FrameProbes(group) if getattr(group, "probe_weights", None) is not None else None

    def amplitude(self, f):
        """``sqrt(max(I, 0))`` of frame ``f`` (the numbers of :meth:`PodGroup.fmag`), in a buffer reused per frame."""
        out = self._amplitude
        np.maximum(self.intensity[f], 0, out=out)
        return np.sqrt(out, out=out)

    def object_views(self):
        """Live object windows (nob, H, W) of every frame of the group."""
        data = self.group.obj.data
        H, W = self.group.shape
        o0, o1 = self.ob0, self.ob1
        return [data[o0:o1, y:y + H, x:x + W]
                for y, x in zip(self.group.frame_y.tolist(), self.group.frame_x.tolist())]


def _mode_rows(group):
    """Probe and object row ranges of a regular group in probe-major mode order, or raise."""
    if not group.regular:
        raise EngineError("ePIE/rPIE need the regular pod layout of the scan models (every frame with "
                          "each probe mode and object mode once); group %s is not" % group.label)
    pr = np.unique(group.mode_pr)
    ob = np.unique(group.mode_ob)
    npr, nob = len(pr), len(ob)
    ok = (npr * nob == group.modes and np.array_equal(pr, np.arange(pr[0], pr[0] + npr))
          and np.array_equal(ob, np.arange(ob[0], ob[0] + nob))
          and np.array_equal(group.mode_pr, np.repeat(pr, nob))
          and np.array_equal(group.mode_ob, np.tile(ob, npr)))
    if not ok:
        raise EngineError("ePIE/rPIE: group %s pairs probe rows %s with object rows %s; expected every "
                          "probe mode with every object mode (probe-major order)"
                          % (group.label, group.mode_pr.tolist(), group.mode_ob.tolist()))
    return (int(pr[0]), int(pr[0]) + npr), (int(ob[0]), int(ob[0]) + nob)


class PIESweep:
    """ePIE/rPIE passes over all local frames of an :class:`~ptycli.engines.addressing.AddressBook`.

    The engine classes own one; it also works on its own (tests, benchmarks).

    Parameters
    ----------
    book : AddressBook
        The compiled pods (regular layout, as the scan models build).
    object_step, probe_step, object_alpha, probe_alpha : float
        Update parameters (module docstring; ePIE has both alphas 1).
    photon_error : bool
        Compute the photon error (a few passes per frame).
    noise_bound : float
        Power bound per valid pixel (mean squared amplitude deviation, photons;
        0: none): a frame whose ``sum mask (|F| - sqrt I)^2`` lies within
        ``noise_bound`` times its valid pixels is left alone, the others are
        moved only onto that bound (:func:`ptycli.engines.pie_step.relaxed_fraction`).
    background_sums : dict, optional
        Scan label -> the detector-sized float64 sum of the augmented
        projection's background factors (:mod:`ptycli.engines.background_sums`)
        for the scans that fit a background: their frames take the numpy step
        with the background in the model amplitude (the compiled kernels have
        none). Multislice groups leave the background alone.

    Attributes
    ----------
    n_frames : int
        Local frames (all groups); :meth:`sweep` takes a permutation of them.
    valid : float
        ``sum mask`` over all local frames.
    fold : dict
        Probe storage ID -> the far-field ``pre`` factor folded into that
        probe during a sweep (None: not folded; the kernel applies it). The
        folded probe lives in a scratch buffer during the sweep.
    """

    def __init__(self, book, object_step=1.0, probe_step=1.0, object_alpha=1.0, probe_alpha=1.0,
                 photon_error=True, compiled=False, noise_bound=0.0, background_sums=None):
        self.book = book
        self.plans = []
        self.fold = {}
        pres = {}
        for g in book.groups:
            if g.probe.data.dtype != g.ctype or g.obj.data.dtype != g.ctype:
                raise TypeError("probe/object buffers are %s/%s, the model type is %s"
                                % (g.probe.data.dtype, g.obj.data.dtype, g.ctype))
            # a multislice object needs the far-field factor on its exit wave, not folded into the probe
            pres.setdefault(g.probe.ID, []).append(g.factors.pre if g.farfield and g.obj.slices == 1 else None)
        for sid, lst in pres.items():
            first = lst[0]
            same = first is not None and all(p is not None and np.array_equal(p, first) for p in lst)
            self.fold[sid] = first if same else None
        self._fold_c = {sid: np.conj(f) for sid, f in self.fold.items() if f is not None}
        self._work = {}
        background_sums = background_sums or {}
        for g in book.groups:
            pr_rows, ob_rows = _mode_rows(g)
            folded = self.fold[g.probe.ID] is not None
            fits = g.background is not None and g.label in background_sums and g.obj.slices == 1
            make = FrameKernel if g.obj.slices == 1 else MultisliceKernel.for_group(g)
            kernel = make(
                g.shape, pr_rows[1] - pr_rows[0], ob_rows[1] - ob_rows[0], g.ctype,
                pre=None if (folded or not g.farfield) else g.factors.pre,
                transfer=None if g.farfield else g.factors.pre,
                object_step=object_step, probe_step=probe_step, object_alpha=object_alpha,
                probe_alpha=probe_alpha, photon_error=photon_error, compiled=compiled and not fits)
            plan = _GroupPlan(g, kernel, pr_rows, (ob_rows[0], ob_rows[1] + g.obj.slices - 1), noise_bound)
            plan.background = g.background if fits else None
            plan.ratio = background_sums[g.label] if fits else None
            self.plans.append(plan)
        n = [p.group.n_frames for p in self.plans]
        self.n_frames = int(sum(n))
        self._gidx = np.repeat(np.arange(len(n), dtype=np.int64), n)
        self._fidx = np.concatenate([np.arange(k, dtype=np.int64) for k in n]) if n else np.zeros(0, np.int64)
        self.valid = float(sum(p.group.n_frames * float(np.prod(p.group.shape)) if p.mask is None
                               else float(np.sum(p.mask, dtype=np.float64)) for p in self.plans))

    def acquisition_order(self):
        """All local frames in the order they were measured: by group, then by global frame index."""
        keys = np.concatenate([np.asarray(p.group.diff.layermap, dtype=np.int64)[p.group.frame_di]
                               for p in self.plans]) if self.plans else np.zeros(0, np.int64)
        return np.lexsort((keys, self._gidx)).astype(np.int64)

    def fold_probes(self):
        """Working probes for a sweep: ``pre * P`` in scratch buffers for the folded storages.

        Returns a dict storage ID -> the array the kernels update (the
        scratch buffer, or the live probe when not folded). The live probe is
        only written back by :meth:`unfold_probes`, so a sweep without probe
        updates leaves it bit-for-bit unchanged.
        """
        work = {}
        for sid, f in self.fold.items():
            S = self.book.probe_storages[sid]
            if f is None:
                work[sid] = S.data
                continue
            buf = self._work.get(sid)
            if buf is None or buf.shape != S.data.shape:
                buf = self._work[sid] = np.empty_like(S.data)
            np.multiply(S.data, f, out=buf)
            work[sid] = buf
        return work

    def unfold_probes(self, work):
        """Write the working probes of :meth:`fold_probes` back (``conj(pre) * P~``)."""
        for sid, f in self.fold.items():
            if f is not None:
                np.multiply(work[sid], self._fold_c[sid], out=self.book.probe_storages[sid].data)

    def working_probes(self):
        """Copies of the probes in the form a sweep updates (``pre * P`` for the folded storages)."""
        out = {}
        for sid, S in self.book.probe_storages.items():
            f = self.fold.get(sid)
            out[sid] = S.data * f if f is not None else S.data.copy()
        return out

    def scale_bound(self, share):
        """Put ``share`` (0 to 1) of every frame's noise bound in force for the next sweeps."""
        for p in self.plans:
            p.bound = [share * b for b in p.full_bound]

    def sweep(self, order, update_probe, momentum=None):
        """Visit the frames in ``order`` (indices into all local frames), updating in place.

        ``momentum`` (a :class:`~ptycli.engines.momentum.Momentum`, mPIE) is
        told of every frame update and steps the object storages, and with
        ``update_probe`` the working probes, every ``momentum.interval`` frames.

        Returns
        -------
        dict
            Sums over the visited frames: ``fourier`` (``sum mask (|F| - sqrt I)^2``),
            ``photon`` (``sum mask (|F|^2 - I)^2 / (I + 1)``), ``exit_change``
            (``sum |psi' - psi|^2``), and ``frames``.
        """
        order = np.asarray(order, dtype=np.int64)
        fourier = photon = change = 0.0
        work = self.fold_probes()
        views = [p.object_views() for p in self.plans]
        probes = [work[p.group.probe.ID][p.pr0:p.pr1] for p in self.plans]
        for p in self.plans:
            p.kernel._weight_fresh = False
        plans = self.plans
        for p in plans:
            if p.variable is not None:
                p.variable.begin(work[p.group.probe.ID])
        objects = {sid: S.data for sid, S in self.book.obj_storages.items()}
        for gi, f in zip(self._gidx[order].tolist(), self._fidx[order].tolist()):
            p = plans[gi]
            probe = probes[gi]
            if p.variable is not None:  # this frame's own probe
                probe = p.variable.load(f)
                p.kernel._weight_fresh = False
            if p.kernel.compiled:
                fe, pe, ch = p.kernel.step_compiled(probe, p.obj_data, p.ob0, p.frame_y[f], p.frame_x[f],
                                                    p.amplitude(f), None if p.mask is None else p.mask[f],
                                                    p.intensity[f], update_probe, p.bound[f])
            elif p.background is not None:
                fe, pe, ch = p.kernel.step(probe, views[gi][f], p.amplitude(f),
                                           None if p.mask is None else p.mask[f], p.intensity[f],
                                           update_probe, p.bound[f], p.background, p.ratio)
            else:
                fe, pe, ch = p.kernel.step(probe, views[gi][f], p.amplitude(f),
                                           None if p.mask is None else p.mask[f], p.intensity[f],
                                           update_probe, p.bound[f])
            if update_probe and p.variable is not None:
                p.variable.feed(f)
            fourier += fe
            photon += pe
            change += ch
            if momentum is not None:
                momentum.frame_done(objects, work if update_probe else None)
        if update_probe:
            for p in plans:  # a variable probe: the weights and eigen-probes the frames ask for (collective)
                if p.variable is not None:
                    sid = p.group.probe.ID
                    follow = momentum is not None and sid in momentum.anchor["probe"]
                    before = work[sid].copy() if follow else None
                    p.variable.finish(parallel.allreduce if parallel.size > 1 else None)
                    if follow:  # mPIE: the refit is no frame update; the momentum does not accelerate it
                        momentum.follow("probe", sid, work[sid] - before)
            self.unfold_probes(work)
        return dict(fourier=float(fourier), photon=float(photon), exit_change=float(change),
                    frames=int(len(order)))
