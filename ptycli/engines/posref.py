"""Position refinement: an annealed search of whole-pixel trial shifts per frame.

Reported scan positions are often off by a few pixels. Engines that declare
:data:`POSREF_PARAMS` (DM, RAAR, ML and mPIE; ePIE and rPIE do not, so
``position_refinement`` is an unknown parameter there) correct them while
they run (mPIE on whole pixels: it has no sub-pixel model)::

    engines:
      dm:
        name: DM
        numiter: 200
        position_refinement: {start: 20, interval: 2, nshifts: 4, amplitude: 2, max_shift: 4}

Parameters (``engines.<label>.position_refinement.*``; shifts in *pixels* of
the object storage):

=================== ========= ===============================================
``start``           null      engine iteration (0-based) of the first round;
                              null: refinement off
``stop``            null      no rounds from this engine iteration on (null:
                              until the engine ends)
``interval``        2         iterations between rounds
``nshifts``         4         random trial shifts per frame and round
``amplitude``       2.0       trial-shift size of the first round (pixels):
                              each axis uniform in ``[-a, a]``, rounded
``amplitude_decay`` 0.9       ``a`` is multiplied by this after every round
                              (never below 1 pixel)
``max_shift``       4.0       largest distance (pixels, Euclidean) of a
                              frame's window from its initial one (at the
                              reported position)
``seed``            0         seed of the trial shifts
``subpixel_step``   0.5       with the sub-pixel model: trial offset (pixels)
                              of the sub-pixel stage (0: whole pixels only)
=================== ========= ===============================================

Algorithm
---------
A round runs after the engine's update of every ``interval``-th iteration
from ``start`` (before ``stop``). For round ``r`` the amplitude is
``a_r = max(1, amplitude * amplitude_decay**r)`` pixels. For every local
frame ``nshifts`` trial shifts are drawn, each axis uniform in
``[-a_r, a_r]`` and rounded to whole pixels (a shift that rounds to zero is
replaced by a random one of the 8 neighbouring pixels). Trials that would put
the frame more than ``max_shift`` pixels (Euclidean) from its initial
position, or any of its windows outside the object storage, are dropped.
The frame's Fourier error ``sum mask (|F| - sqrt(I))^2`` (``|F|`` the model
amplitude of the current probe and object, modes summed incoherently, plus
the scan's fitted background where it has one) is
computed at the current position and at every remaining trial; the frame
moves to the trial with the lowest error when that is lower than the error
at the current position. All modes (pods) of a frame move together.

The trial exit waves of a block of frames (all trials of all frames of the
block, about 4 MB) are formed with one fancy index on a sliding-window view
of the object and transformed with one batched FFT (far field: the
propagator's sample-plane phase factor folded into the probe, the
detector-plane factor skipped since only amplitudes count).

Without the sub-pixel model shifts are whole pixels (views address whole
pixels): a frame that moved gets the position of the centre pixel of its new
window (the position the model actually uses; the sub-pixel remainder of the
reported position is dropped); frames that never move keep their reported
positions.

Sub-pixel stage
---------------
With the sub-pixel model (``scans.<label>.subpixel``, :mod:`ptycli.core.subpixel`)
whole-pixel moves keep each frame's remainder, and rounds whose whole-pixel
search has settled (it moved at most :data:`SUBPIXEL_SETTLED` of the frames,
all ranks) add a sub-pixel stage: for every frame the search did not just
move, the Fourier error at its exact position and at ``+-subpixel_step``
along each axis (probe shifted exactly, :func:`~ptycli.core.subpixel.shift_ramps`)
gives a parabola per axis; where it is convex the frame goes to its vertex
(at most ``subpixel_step`` per axis) when it stays within ``max_shift``
(Euclidean, exact positions) and inside the object storage (the error at the
vertex is not checked: measured against the object of the current position it
favours that position; with the check the zoo's ``position_errors`` ended at
0.27 px rms, without at 0.23). The object view gets the exact coordinate;
its ``dlow`` (the window) and ``sp`` (the remainder) move the frame in the
address book and the sub-pixel model. Frames whose window or shift class
changed are reported as moved. Cost: 5 forward and 5 inverse FFTs per
frame in such rounds (twice a whole-pixel round of ``nshifts = 4``).
Measured: zoo ``position_errors`` (144 frames, truth + 1.5 px rms, DM 200 +
ML 100) 1.44 -> 0.23 px rms (whole pixels: 0.71), object 0.986 (0.951);
MoonFlower, 80 frames, 2 px rms per axis, DM 60: 0.14 px rms (whole pixels
0.72). The object
storage is *not* grown: trials that would leave it are dropped (a frame at
the edge of the scanned area cannot move outwards), so the object extent
stays the same on all MPI ranks, in checkpoints and on resume.

What a move updates
-------------------
* the address book: ``ob_y``/``ob_x`` of the frame's pods and
  ``frame_y``/``frame_x`` of its group
  (:meth:`~ptycli.engines.addressing.PodGroup.shift_frames`);
* the object views: ``coord`` (metres) becomes the centre pixel of the new
  window and the view is re-placed (``dlow``, ``dhigh``, slice), so pods,
  checkpoints and the result file's ``/scans/<label>/positions`` (read from
  the object views' ``coord``) follow; ``positions_initial`` is unchanged;
* the engine, through :meth:`~ptycli.engines.base.Engine.positions_changed`
  (DM/RAAR recompute their overlap denominators and reset the moved frames'
  exit waves, ML re-evaluates and restarts its conjugate gradients).

Initial positions (the ``max_shift`` bound) are those of the scan model
(``ScanModel.positions_m()``, the reported ones), so a chain of refining
engines and a resumed run share the bound; pods without a scan model use the
position they had when a refiner first saw them.

Determinism and MPI
-------------------
The trials of frame ``f`` in round ``r`` are a counter-based hash of
``(seed, r, crc32(group label), global frame index of f)`` (no generator
state): the result does not depend on the MPI split, the block size or the
engine's own generator (``engine.rng`` is not touched), and a resumed run
draws the same trials. Each rank refines its own frames; only
the statistics are summed over the ranks (one small allreduce per round).

Statistics
----------
:meth:`PositionRefiner.refine` returns the record extras ``posref_moved``
(frames moved in this round, all ranks), ``posref_rms_shift`` (RMS distance
of all frames from their initial positions, pixels) and
``posref_amplitude`` (``a_r``); the engine adds them to the iteration's
record (``ptycho.runtime.history``; the result file's history table keeps
its fixed columns).

Cost and accuracy
-----------------
A round costs ``1 + nshifts`` forward FFTs of every frame plus about six
elementwise passes over them, i.e. about ``(1 + nshifts) / 2`` times the FFT
work of a DM iteration. Measured on the shared 2-core machine (busy, so
ranges), 80 frames, ``nshifts = 4``: 64 x 64 frames 25-38 ms per round
against 13-18 ms per DM iteration; 128 x 128 frames about 75 ms against
about 70 ms. Hence the default ``interval`` of 2.

The search cannot tell a frame's error from a distortion of the object the
frame alone illuminates: frames at the edge of the scan, with little overlap,
are the last to be corrected (or stay where they are); the more overlap, the
better. On noiseless MoonFlower scans (80 frames of 64 x 64, 2 pixels rms
position error per axis, error measured after removing the mean offset):
DM 60 iterations with refinement from iteration 5 takes the rms error from
2.8-3.0 to 0.5-0.9 pixels at ``density: 0.1`` (0.9-1.2 at ``0.15``; at
the default ``0.2`` about 1.7 after 100 iterations, the outermost ring of
frames barely moving); 20 DM iterations then 40 ML iterations
refining every other one give 1.0-1.35 pixels at ``density: 0.1``.
"""

import logging
import zlib

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .. import parallel
from ..core import fft
from ..core.subpixel import shift_ramps
from ..errors import ConfigError, EngineError
from ..params.declare import Parameter, ParamSet


__all__ = ["POSREF_PARAMS", "PositionRefiner", "make_refiner", "move_frames", "trial_shifts"]

log = logging.getLogger("ptycli.engines")

#: Declarations of ``engines.<label>.position_refinement``.
POSREF_PARAMS = ParamSet("position_refinement", [
    Parameter("start", None, "int",
              "engine iteration (0-based) of the first position-refinement round (null: no refinement)",
              low=0, nullable=True),
    Parameter("stop", None, "int",
              "no refinement rounds from this engine iteration on (null: until the engine ends)",
              low=0, nullable=True),
    Parameter("interval", 2, "int", "iterations between refinement rounds", low=1),
    Parameter("nshifts", 4, "int", "random trial shifts per frame and round", low=1),
    Parameter("amplitude", 2.0, "float",
              "trial-shift size of the first round: each axis uniform in [-amplitude, amplitude], rounded to "
              "whole pixels", low=0.0, unit="pixel"),
    Parameter("amplitude_decay", 0.9, "float",
              "the amplitude is multiplied by this after every round (at least 1 pixel is always tried)",
              low=0.0, high=1.0),
    Parameter("max_shift", 4.0, "float",
              "largest distance (Euclidean, whole object pixels) of a frame's window from its initial one (the "
              "reported position)", low=0.0, unit="pixel"),
    Parameter("seed", 0, "int", "seed of the random trial shifts (same seed, same result)", low=0),
    Parameter("subpixel_step", 0.5, "float",
              "with the sub-pixel model (scans.<label>.subpixel): offset of the trials of the sub-pixel stage, "
              "which fits a parabola to the Fourier error per axis (0: whole pixels only)",
              low=0.0, high=1.0, unit="pixel"),
], doc="position refinement: annealed search of whole-pixel trial shifts, kept when the Fourier error drops",
   check=lambda v, path: _check_window(v, path))


def _check_window(values, path):
    """stop after start (checked with the configuration, before any data is read)."""
    if values.get("start") is not None and values.get("stop") is not None and values.stop <= values.start:
        raise ConfigError("%s: stop (%d) must be greater than start (%d)" % (path, values.stop, values.start),
                          hint="raise stop, or set it to null (until the engine ends)")

#: The sub-pixel stage runs in rounds whose whole-pixel search moved at most this fraction of the frames.
SUBPIXEL_SETTLED = 0.25

#: Bytes of complex trial exit waves transformed together.
BLOCK_BYTES = 4 << 20

#: The 8 neighbouring pixels (a trial that rounds to no shift becomes one of these).
_NEIGHBOURS = np.array([(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)], dtype=np.int64)


def _mix(x):
    """A 64-bit integer mixer (splitmix64 finaliser) applied elementwise to a uint64 array."""
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _uniforms(keys, count):
    """``count`` uniform numbers in [0, 1) per row of the uint64 key array ``keys`` (n, k): (n, count).

    Counter-based: each number is a hash of the keys and its index, so any
    subset of rows (frames) draws the same numbers in any order or split.
    """
    keys = np.asarray(keys, dtype=np.uint64)
    h = np.zeros(keys.shape[0], np.uint64)
    for j in range(keys.shape[1]):
        h = _mix(h ^ keys[:, j])
    z = _mix(h[:, None] ^ (np.arange(count, dtype=np.uint64)[None, :] + np.uint64(1)))
    return (z >> np.uint64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)


def trial_shifts(seed, round_index, label, frame_indices, nshifts, amplitude):
    """Integer trial shifts (pixels) of frames in one round, ``(frames, nshifts, 2)``.

    Each axis uniform in ``[-amplitude, amplitude]``, rounded; a zero shift is
    replaced by a random neighbouring pixel. The numbers are a hash of
    ``(seed, round_index, crc32(label), frame index)``, so a frame gets the
    same trials whatever the MPI split or the order of evaluation.
    """
    fi = np.atleast_1d(np.asarray(frame_indices, dtype=np.int64))
    n, k = len(fi), int(nshifts)
    keys = np.empty((n, 4), np.uint64)
    keys[:, 0] = np.uint64(int(seed) & 0xFFFFFFFFFFFFFFFF)
    keys[:, 1] = np.uint64(int(round_index) & 0xFFFFFFFFFFFFFFFF)
    keys[:, 2] = np.uint64(zlib.crc32(str(label).encode()))
    keys[:, 3] = fi.astype(np.uint64)
    u = _uniforms(keys, 3 * k).reshape(n, k, 3)
    a = float(amplitude)
    s = np.rint((2.0 * u[..., :2] - 1.0) * a).astype(np.int64)
    nb = _NEIGHBOURS[np.minimum((u[..., 2] * len(_NEIGHBOURS)).astype(np.int64), len(_NEIGHBOURS) - 1)]
    zero = ~np.any(s, axis=2)
    s[zero] = nb[zero]
    return s


def _initial_coords(pods):
    """Initial object-view coordinate (m) of each pod: the scan model's position, else the first seen.

    The coordinate is remembered on the view (``posref_coord0``) so that later
    refiners (the next engine of a chain) share the bound.
    """
    cache = {}
    out = []
    for pod in pods:
        v = pod.ob_view
        c0 = getattr(v, "posref_coord0", None)
        if c0 is None:
            model = pod.model
            pos = None
            if model is not None and hasattr(model, "positions_m") and getattr(model, "pods", None):
                key = id(model)
                if key not in cache:
                    try:
                        modes = max(1, int(model.modes))
                        cache[key] = (np.asarray(model.positions_m(), float).reshape(-1, 2), modes,
                                      {id(p): i for i, p in enumerate(model.pods)})
                    except (AttributeError, TypeError, ValueError):  # no usable positions: use the view
                        cache[key] = None
                entry = cache[key]
                if entry is not None:
                    positions, modes, where = entry
                    i = where.get(id(pod))
                    if i is not None and i // modes < len(positions):
                        pos = positions[i // modes]
            c0 = np.array(v.coord if pos is None else pos, dtype=float)
            v.posref_coord0 = c0.copy()
        out.append(np.asarray(c0, dtype=float))
    return out


class _GroupState:
    """Refinement bookkeeping of one pod group."""

    def __init__(self, g):
        self.g = g
        H, W = g.shape
        nf = g.n_frames
        first = g.pod_start[:-1]
        S = g.obj
        Ho, Wo = S.data.shape[-2:]
        # per pod: offset relative to the frame's first pod (constant under moves)
        rel_y = g.ob_y - np.repeat(g.ob_y[first], np.diff(g.pod_start))
        rel_x = g.ob_x - np.repeat(g.ob_x[first], np.diff(g.pod_start))
        # per frame: range of the first pod's window offset that keeps every window in the storage
        if nf:
            self.lo = np.stack([-np.minimum.reduceat(rel_y, first), -np.minimum.reduceat(rel_x, first)], axis=1)
            self.hi = np.stack([(Ho - H) - np.maximum.reduceat(rel_y, first),
                                (Wo - W) - np.maximum.reduceat(rel_x, first)], axis=1)
        else:
            self.lo = self.hi = np.zeros((0, 2), np.int64)
        # initial window offset of each frame (first pod), from the initial coordinates
        coords0 = _initial_coords([g.pods[int(p)] for p in first])
        origin, psize = S.origin, S.psize
        d0 = np.zeros((nf, 2), np.int64)
        half = np.array([H // 2, W // 2])
        for f, c0 in enumerate(coords0):
            d0[f] = np.round((c0 - origin) / psize + 1e-5).astype(np.int64) - half  # as View._place
        self.d0 = d0
        # exact initial window offsets (pixels): the bound of the sub-pixel stage
        self.x0 = np.array([(c0 - origin) / psize for c0 in coords0], dtype=float).reshape(-1, 2) - half
        # global frame index (diffraction layer) of every frame: keys the trial generator
        lm = np.asarray(g.diff.layermap, dtype=np.int64)
        self.gidx = lm[g.frame_di] if nf else np.zeros(0, np.int64)
        # trial entries per block, sized for BLOCK_BYTES
        itemsize = np.dtype(g.ctype).itemsize
        self.per_entry = max(1, nf and int(np.max(np.diff(g.pod_start))))
        self.max_entries = max(1, BLOCK_BYTES // (self.per_entry * H * W * itemsize))

    def current(self):
        """Window offset of every frame's first pod, (n_frames, 2)."""
        first = self.g.pod_start[:-1]
        return np.stack([self.g.ob_y[first], self.g.ob_x[first]], axis=1)


class PositionRefiner:
    """Position refinement for one engine (see the module docstring).

    Parameters
    ----------
    engine : Engine
        An initialised engine (its address book is used and updated).
    pars : Param
        Validated ``position_refinement`` parameters (``start`` not None).

    Attributes
    ----------
    rounds : int
        Rounds done by this refiner.
    last_stats : dict or None
        The record extras of the last round.
    time_s : float
        Wall time spent in the rounds (this rank).
    groups : list
        Per pod group: the bookkeeping (``current()`` window offsets, ``d0``
        initial ones, ``lo``/``hi`` storage limits).
    """

    def __init__(self, engine, pars):
        self.engine = engine
        self.p = pars
        self.start = int(pars.start)
        self.stop = None if pars.get("stop") is None else int(pars.stop)
        self.interval = max(1, int(pars.get("interval", 2) or 1))
        self.nshifts = int(pars.nshifts)
        self.amplitude0 = float(pars.amplitude)
        self.decay = float(pars.amplitude_decay)
        self.max_shift = float(pars.max_shift)
        self.seed = int(pars.get("seed", 0) or 0)
        self.subpixel_step = float(pars.get("subpixel_step", 0.0) or 0.0)
        self.rounds = 0
        self.last_stats = None
        self.time_s = 0.0
        self.groups = [_GroupState(g) for g in engine.book.groups]
        for st in self.groups:
            if st.g.obj.data.dtype != st.g.ctype:
                raise EngineError("position refinement: object storage %s is %s, the model type %s"
                                  % (st.g.obj.ID, st.g.obj.data.dtype, st.g.ctype))

    # -- schedule -------------------------------------------------------------------
    def due(self, iteration):
        """Whether a round follows engine iteration ``iteration`` (0-based)."""
        it = int(iteration)
        if it < self.start or (self.stop is not None and it >= self.stop):
            return False
        return (it - self.start) % self.interval == 0

    def round_index(self, iteration):
        """Index of the round that follows engine iteration ``iteration`` (0 for the first)."""
        return (int(iteration) - self.start) // self.interval

    def amplitude(self, round_index):
        """Trial-shift amplitude (pixels) of round ``round_index``: never below 1 pixel."""
        return max(1.0, self.amplitude0 * self.decay ** int(round_index))

    # -- one round -------------------------------------------------------------------
    def refine(self, iteration):
        """Run the round following engine iteration ``iteration``.

        Collective under MPI (one allreduce of the statistics). Returns
        ``(stats, moved)``: the record extras and ``{group index: frames moved}``.
        """
        import time

        t0 = time.perf_counter()
        r = self.round_index(iteration)
        amp = self.amplitude(r)
        moved = {}
        sums = np.zeros(4)  # moved frames, sum |shift from initial|^2, frames, error decrease
        whole = [list(self._refine_group(st, r, amp)) for st in self.groups]
        if self._subpixel_due(whole):
            for st, res in zip(self.groups, whole):
                if st.g.sub is not None and st.g.n_frames:
                    fs, dec_s = self._refine_subpixel(st, self.subpixel_step, skip=res[0])
                    res[0], res[1] = np.union1d(res[0], fs).astype(np.int64), res[1] + dec_s
        for gi, (st, (fr, dec)) in enumerate(zip(self.groups, whole)):
            if len(fr):
                moved[gi] = fr
            if st.g.sub is not None:
                d = st.current() + st.g.sub.shifts - st.x0
            else:
                d = (st.current() - st.d0).astype(float)
            sums += (len(fr), float(np.sum(d * d)), st.g.n_frames, dec)
        parallel.allreduce(sums)
        self.rounds += 1
        self.time_s += time.perf_counter() - t0
        stats = dict(posref_moved=int(round(sums[0])),
                     posref_rms_shift=float(np.sqrt(sums[1] / max(sums[2], 1.0))),
                     posref_amplitude=float(amp))
        self.last_stats = stats
        log.debug("%s: position refinement round %d (amplitude %.2g px): %d frames moved, rms shift %.3g px, "
                  "%.3g s", self.engine.label, r, amp, stats["posref_moved"], stats["posref_rms_shift"],
                  time.perf_counter() - t0)
        return stats, moved

    def _subpixel_due(self, whole):
        """Whether the sub-pixel stage runs this round: some group has the sub-pixel model and the
        whole-pixel search has settled (it moved at most :data:`SUBPIXEL_SETTLED` of the frames, all ranks).

        While many frames still jump by whole pixels the object is too rough for the parabola fits: on
        a MoonFlower scan with 2 pixels rms of error per axis (80 frames, DM 60) fitting from the first
        round left 1.3 pixels rms, waiting until at most half the frames move 1.0, a quarter 0.13, a
        tenth 0.12; on the zoo's ``position_errors`` (DM 200 + ML 100) the same gates gave 0.25, 0.25,
        0.31 and 0.32 (steps of 0.25 pixel; 0.23 with the default 0.5 at a quarter).
        """
        # the same answer on every rank (a rank without frames has no groups): from the scans' choice
        scans = getattr(self.engine.ptycho, "scans", None) or {}
        if self.subpixel_step <= 0 or not any((getattr(m, "subpixel", None) or {}).get("on") for m in scans.values()):
            return False
        counts = np.array([float(sum(len(fr) for fr, _ in whole)), float(sum(st.g.n_frames for st in self.groups))])
        parallel.allreduce(counts)
        return counts[0] <= SUBPIXEL_SETTLED * max(counts[1], 1.0)

    def _trials(self, st, r, amp):
        """Candidate entries of all frames: ``(frame, y, x)`` with the current positions first."""
        g = st.g
        nf = g.n_frames
        cur = st.current()
        ent_f = [np.arange(nf, dtype=np.int64)]
        ent_yx = [cur]
        cand = cur[:, None, :] + trial_shifts(self.seed, r, g.label, st.gidx, self.nshifts, amp)
        dist = cand - st.d0[:, None, :]
        ok = np.sum(dist.astype(float) ** 2, axis=2) <= self.max_shift ** 2 + 1e-9
        ok &= np.all(cand >= st.lo[:, None, :], axis=2) & np.all(cand <= st.hi[:, None, :], axis=2)
        # duplicates of another trial of the same frame are evaluated once
        fidx = np.broadcast_to(np.arange(nf)[:, None], ok.shape)
        keys = np.stack([fidx[ok], cand[ok][:, 0], cand[ok][:, 1]], axis=1)
        if len(keys):
            keys = np.unique(keys, axis=0)
        ent_f.append(keys[:, 0] if len(keys) else np.zeros(0, np.int64))
        ent_yx.append(keys[:, 1:] if len(keys) else np.zeros((0, 2), np.int64))
        ef = np.concatenate(ent_f)
        eyx = np.concatenate(ent_yx)
        order = np.argsort(ef, kind="stable")  # frame-major: current position first within a frame
        return ef[order], eyx[order]

    def _refine_group(self, st, r, amp):
        g = st.g
        nf = g.n_frames
        if nf == 0:
            return np.zeros(0, np.int64), 0.0
        ef, eyx = self._trials(st, r, amp)
        err = self._errors(st, ef, eyx)
        # best entry per frame (the current position is the first entry of its frame)
        starts = np.flatnonzero(np.r_[True, ef[1:] != ef[:-1]])
        cur_err = err[starts]
        best = np.minimum.reduceat(err, starts)
        better = best < cur_err * (1.0 - 1e-7)
        moved = np.flatnonzero(better)
        if len(moved) == 0:
            return moved, 0.0
        # first entry with the lowest error, per frame (the entries of a frame are contiguous)
        seg = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, len(ef)]))
        pos = np.where(err == best[seg], np.arange(len(ef)), len(ef))
        first_best = np.minimum.reduceat(pos, starts)
        new = eyx[first_best[moved]]
        if g.sub is not None:  # whole-pixel moves keep the frames' sub-pixel remainders
            self._place(st, moved, new + g.sub.shifts[moved])
        else:
            self._move(st, moved, new - st.current()[moved])
        return moved, float(np.sum(cur_err[moved] - best[moved]))

    def _errors(self, st, ef, eyx, shifts=None):
        """``sum mask (|F| - sqrt(I))^2`` of every entry (frame ``ef`` with its first window at ``eyx``).

        With ``shifts`` ((entries, 2) pixels) the probe of an entry is the
        probe shifted exactly by its shift (:func:`ptycli.core.subpixel.shift_ramps`),
        else the model's (the expanded probe of the frame's shift class with
        the sub-pixel model).
        """
        g = st.g
        H, W = g.shape
        far = g.farfield
        ctype = g.ctype
        if shifts is None:
            probe = g.model_probe()  # expanded (one layer per shift class) with the sub-pixel model
            probe = probe * g.factors.pre if far else probe
            rows = g.pod_probe_rows
        else:
            fp = fft.empty(g.probe.data.shape, ctype)
            fp[...] = g.probe.data
            fft.fft2_inplace(fp)
        sw = sliding_window_view(g.obj.data, (H, W), axis=(1, 2))
        fmag = g.fmag()
        mask = g.mask_frames()
        cur = st.current()
        npod = np.diff(g.pod_start)
        single = g.single_probe_layer and g.sub is None
        out = np.empty(len(ef), np.float64)
        workers = fft.get_workers()
        step = st.max_entries
        for e0 in range(0, len(ef), step):
            e1 = min(len(ef), e0 + step)
            fe = ef[e0:e1]
            cnt = npod[fe]
            # pods of every entry: frame pods with the entry's shift
            first = np.cumsum(cnt) - cnt
            ent = np.repeat(np.arange(e1 - e0), cnt)
            pod = g.pod_start[fe][ent] + (np.arange(len(ent)) - first[ent])
            dy = (eyx[e0:e1, 0] - cur[fe, 0])[ent]
            dx = (eyx[e0:e1, 1] - cur[fe, 1])[ent]
            stack = fft.empty((len(pod), H, W), ctype)  # aligned: the same FFT algorithm every round
            if shifts is not None:  # exactly shifted probes: FFT(P) ramp -> IFFT, times the windows
                sh = shifts[e0:e1][ent]
                ry = shift_ramps(H, sh[:, 0]).astype(ctype)
                rx = shift_ramps(W, sh[:, 1]).astype(ctype)
                np.multiply(fp[g.pr_layer[pod]], ry[:, :, None], out=stack)
                stack *= rx[:, None, :]
                fft.ifft2_inplace(stack, workers)
                if far:
                    stack *= g.factors.pre
                stack *= sw[g.ob_layer[pod], g.ob_y[pod] + dy, g.ob_x[pod] + dx]
            else:
                stack[...] = sw[g.ob_layer[pod], g.ob_y[pod] + dy, g.ob_x[pod] + dx]
                if single:
                    k = int(g.pr_layer[0])
                    stack *= probe[k:k + 1]
                else:
                    stack *= probe[rows[pod]]
            if far:
                F = fft.fft2_inplace(stack, workers)
            else:
                F = g.propagator.fw(stack)
            af = np.abs(F)
            if len(pod) != e1 - e0:  # modes add incoherently
                af *= af
                af = np.add.reduceat(af, first, axis=0)
                np.sqrt(af, out=af)
            if g.background is not None:  # the model amplitude includes the fitted background
                af *= af
                af += g.background
                np.sqrt(af, out=af)
            af -= fmag[fe]
            if mask is not None:
                af *= mask[fe]  # 0/1 masks: mask^2 = mask
            flat = af.reshape(e1 - e0, -1)
            out[e0:e1] = np.einsum("ij,ij->i", flat, flat)
        return out

    def _refine_subpixel(self, st, h, skip=()):
        """The sub-pixel stage: a parabola through the Fourier errors at ``-h, 0, +h`` pixels per axis.

        For every frame the error is computed at its exact position and at
        offsets of ``h`` along each axis (probe shifted exactly). Where an
        axis's three errors are convex the frame moves to the vertex,
        clipped to ``[-h, h]``, when it stays within ``max_shift`` of its
        initial position and inside the object storage. Whole pixels of the
        new position go to the window, the remainder to the sub-pixel model.
        Returns ``(frames whose model changed, error decrease the parabolas predict)``.
        """
        g = st.g
        sub = g.sub
        nf = g.n_frames
        cur = st.current()
        frames = np.arange(nf, dtype=np.int64)
        offs = np.array([(0.0, 0.0), (-h, 0.0), (h, 0.0), (0.0, -h), (0.0, h)])
        ef = np.repeat(frames, len(offs))
        eyx = np.repeat(cur, len(offs), axis=0)
        esh = (sub.shifts[:, None, :] + offs[None, :, :]).reshape(-1, 2)
        err = self._errors(st, ef, eyx, esh).reshape(nf, len(offs))
        e0 = err[:, 0]
        step = np.zeros((nf, 2))
        gain = np.zeros(nf)  # the decrease the parabolas predict
        for axis, (lo, hi) in enumerate(((1, 2), (3, 4))):
            em, ep = err[:, lo], err[:, hi]
            curv = em - 2.0 * e0 + ep
            ok = curv > 0
            t = np.clip(0.5 * h * (em[ok] - ep[ok]) / curv[ok], -h, h)
            step[ok, axis] = t
            gain[ok] -= (ep[ok] - em[ok]) / (2.0 * h) * t + curv[ok] / (2.0 * h * h) * t * t
        want = cur + sub.shifts + step  # exact window offsets
        dist = want - st.x0
        inside = np.sum(dist * dist, axis=1) <= self.max_shift ** 2 + 1e-9
        win = np.floor(want + 0.5).astype(np.int64)
        inside &= np.all(win >= st.lo, axis=1) & np.all(win <= st.hi, axis=1)
        inside[np.asarray(skip, dtype=np.int64)] = False  # frames the whole-pixel search just moved
        cand = np.flatnonzero(inside & np.any(step != 0, axis=1))
        if len(cand) == 0:
            return np.zeros(0, np.int64), 0.0
        # no check of the error at the vertex: it is measured against the object of the current position,
        # which favours that position (with the check: 0.27 px rms on the zoo's position_errors, without 0.23)
        keep = cand
        dec = float(np.sum(gain[keep]))
        old_class = sub.frame_class.copy()
        before = cur[keep].copy()
        self._place(st, keep, want[keep])
        jump = np.any(st.current()[keep] != before, axis=1)
        changed = keep[jump | (sub.frame_class[keep] != old_class[keep])]
        return changed, dec

    def _place(self, st, frames, exact):
        """Put ``frames`` at the exact window offsets ``exact`` ((n, 2) pixels; sub-pixel model).

        The object views get the coordinates; their whole-pixel windows
        (``dlow``) move the frames in the address book and their remainders
        (``sp``) become the frames' shifts in the sub-pixel model, so views,
        address book and model agree by construction.
        """
        g = st.g
        S = g.obj
        psize = np.asarray(S.psize, float)
        shifts = g.sub.shifts.copy()
        cur = st.current()
        delta = np.zeros((len(frames), 2), np.int64)
        for k, f in enumerate(np.asarray(frames).tolist()):
            p0, p1 = int(g.pod_start[f]), int(g.pod_start[f + 1])
            first = None
            for p in range(p0, p1):
                v = g.pods[p].ob_view
                v.coord = S.origin + (np.asarray(exact[k], float) + np.asarray(v.shape) // 2) * psize
                S.update_views(v)
                if first is None:
                    first = v
            delta[k] = np.asarray(first.dlow, np.int64) - cur[f]
            shifts[f] = first.sp
        g.sub.set_shifts(shifts)
        jump = np.any(delta != 0, axis=1)
        if np.any(jump):
            g.shift_frames(np.asarray(frames)[jump], delta[jump])

    def _move(self, st, frames, delta):
        """Move ``frames`` of group ``st`` by ``delta`` (pixels, (n, 2)): address book and object views."""
        move_frames(st.g, frames, delta)


def move_frames(g, frames, delta):
    """Move ``frames`` of pod group ``g`` by whole pixels ``delta`` ((n, 2) rows, cols): windows and views.

    The address book follows (:meth:`~ptycli.engines.addressing.PodGroup.shift_frames`)
    and each moved object view gets the coordinate of the centre pixel of its
    new window (see "What a move updates" in the module docstring). Shared
    by this module's search and the gradient position correction of LSQ-ML
    (:mod:`ptycli.engines.lsqml.positions`).
    """
    S = g.obj
    psize = np.asarray(S.psize, float)
    g.shift_frames(frames, delta)
    for f in np.asarray(frames, dtype=np.int64).reshape(-1).tolist():
        p0, p1 = int(g.pod_start[f]), int(g.pod_start[f + 1])
        done = set()
        for p in range(p0, p1):
            v = g.pods[p].ob_view
            if id(v) in done:
                continue
            done.add(id(v))
            # the refined position is the centre pixel of the window the model uses
            want = np.array([g.ob_y[p], g.ob_x[p]])
            v.coord = S.origin + (want + np.asarray(v.shape) // 2).astype(float) * psize
            S.update_views(v)
            if not np.array_equal(v.dlow, want):
                raise EngineError("position refinement: view %s did not follow its pod (%s != %s)"
                                  % (v.ID, v.dlow, want))


def make_refiner(engine):
    """The engine's :class:`PositionRefiner`, or None when refinement is off (or not declared)."""
    pars = engine.p.get("position_refinement")
    if not pars or pars.get("start") is None:
        return None
    if pars.get("stop") is not None and int(pars.stop) <= int(pars.start):
        raise ConfigError("engines.%s.position_refinement: stop (%d) must be greater than start (%d)"
                          % (engine.label, int(pars.stop), int(pars.start)))
    return PositionRefiner(engine, pars)
