"""Gradient position correction of LSQ-ML: per-frame shifts from the object's gradient and ``chi``.

Odstrčil, Menzel & Guizar-Sicairos, Opt. Express 26, 3108 (2018),
doi:10.1364/OE.26.003108 (section on position correction): a frame whose
object window is off by a small shift ``s`` has exit waves
``P O(r + s) ~ P O + s . P grad O``, so the part of the exit-wave update
``chi`` explained by a shift is, per axis, the least-squares projection::

    s_y = Re<P dO/dy, chi> / <P dO/dy, P dO/dy>      (likewise s_x)

summed over the frame's pods (probe and object modes) and pixels
(:meth:`~ptycli.engines.lsqml.batch.GroupBatch.position_shifts`).

Bookkeeping
-----------
Every frame keeps a *float* position ``pos`` (pixels of the object storage,
the top-left corner of its window). At the first update it is the current
window plus the sub-pixel remainder of the reported position. After each
batch a frame of the batch moves by ``step * s`` (``s`` from the object and
probe that made ``chi``, before the batch's updates), each axis clipped to
``max_step`` pixels, and ``pos`` is kept within ``max_shift`` pixels
(Euclidean) of the reported position and inside the object storage. The
model addresses whole pixels, so the window follows ``round(pos)``: when that
differs from the current window the frame is moved
(:func:`ptycli.engines.posref.move_frames`: address book and object views);
the fractional part stays in ``pos`` (:attr:`GradientPositions.fraction`
returns it, for a future sub-pixel model) and is saved in checkpoints.

Parameters (``engines.<label>.position_correction.*``): ``start`` (epoch,
0-based, null: off), ``stop``, ``step`` (1.0), ``max_step`` (0.5 pixel per
update), ``max_shift`` (4 pixels).

Each rank corrects its own frames (no communication but the statistics).
"""

import numpy as np

from .. import posref
from ..posref import move_frames
from ...errors import ConfigError
from ...params.declare import Parameter, ParamSet

__all__ = ["POSITION_PARAMS", "GradientPositions"]


def _check(values, path):
    if values.get("start") is not None and values.get("stop") is not None and values.stop <= values.start:
        raise ConfigError("%s: stop (%d) must be greater than start (%d)" % (path, values.stop, values.start),
                          hint="raise stop, or set it to null (until the engine ends)")


#: Declarations of ``engines.<label>.position_correction`` (LSQML).
POSITION_PARAMS = ParamSet("position_correction", [
    Parameter("start", None, "int",
              "epoch (0-based) from which positions are corrected from the object gradient (null: never)",
              low=0, nullable=True),
    Parameter("stop", None, "int", "no position correction from this epoch on (null: until the engine ends)",
              low=0, nullable=True),
    Parameter("step", 1.0, "float", "fraction of the estimated shift applied per update", low=0.0, high=2.0),
    Parameter("max_step", 0.5, "float", "largest move per update and axis", low=0.0, unit="pixel"),
    Parameter("max_shift", 4.0, "float",
              "largest distance (Euclidean) of a frame from its reported position", low=0.0, unit="pixel"),
], doc="gradient position correction (LSQ-ML): per-frame shifts from the object gradient and the exit-wave update",
   check=_check)


class GradientPositions:
    """Float positions per frame and their whole-pixel windows (see the module docstring).

    Parameters
    ----------
    book : AddressBook
        The engine's address book (windows are moved in place).
    pars : Param
        Validated ``position_correction`` parameters.
    """

    def __init__(self, book, pars):
        self.book = book
        self.start = None if pars.get("start") is None else int(pars.start)
        self.stop = None if pars.get("stop") is None else int(pars.stop)
        self.step = float(pars.step)
        self.max_step = float(pars.max_step)
        self.max_shift = float(pars.max_shift)
        self.states = []
        self.pos = []
        self.pos0 = []
        for g in book.groups:
            st = posref._GroupState(g)  # initial windows (reported positions) and storage limits
            self.states.append(st)
            exact = self._reported(g, st)
            self.pos0.append(exact)
            frac = exact - np.rint(exact)
            self.pos.append(st.current().astype(np.float64) + frac)

    @staticmethod
    def _reported(g, st):
        """Reported positions as float window corners (pixels), (frames, 2)."""
        S = g.obj
        first = g.pod_start[:-1]
        coords = posref._initial_coords([g.pods[int(p)] for p in first])
        half = np.array([g.shape[0] // 2, g.shape[1] // 2], float)
        if not len(coords):
            return np.zeros((0, 2))
        c = np.array(coords, float).reshape(-1, 2)
        return (c - np.asarray(S.origin, float)) / np.asarray(S.psize, float) - half

    def due(self, epoch):
        """Whether positions are corrected in engine epoch ``epoch`` (0-based)."""
        if self.start is None or epoch < self.start:
            return False
        return self.stop is None or epoch < self.stop

    def fraction(self, gi):
        """Sub-pixel remainder ``pos - window`` of group ``gi``'s frames, (frames, 2) pixels."""
        return self.pos[gi] - self.states[gi].current()

    def update(self, gi, frames, shifts):
        """Move ``frames`` of group ``gi`` by the estimated ``shifts`` (frames, 2); return the frames moved."""
        st = self.states[gi]
        g = st.g
        d = np.clip(self.step * np.asarray(shifts, float), -self.max_step, self.max_step)
        p = self.pos[gi][frames] + d
        off = p - self.pos0[gi][frames]
        r = np.sqrt(np.sum(off * off, axis=1))
        far = r > self.max_shift
        if np.any(far):
            p[far] = self.pos0[gi][frames][far] + off[far] * (self.max_shift / r[far])[:, None]
        p = np.clip(p, st.lo[frames], st.hi[frames])
        self.pos[gi][frames] = p
        target = np.rint(p).astype(np.int64)
        delta = target - st.current()[frames]
        move = np.any(delta != 0, axis=1)
        if np.any(move):
            move_frames(g, np.asarray(frames)[move], delta[move])
        return np.asarray(frames)[move]

    def windows_moved(self, moved):
        """Another refiner moved frames (``{group index: frames}``): their positions follow the windows."""
        for gi, frames in moved.items():
            cur = self.states[gi].current()[frames]
            self.pos[gi][frames] = cur.astype(np.float64)

    def rms_shift(self):
        """``(sum |pos - reported|^2, frames)`` over this rank's frames."""
        s = 0.0
        n = 0
        for p, p0 in zip(self.pos, self.pos0):
            s += float(np.sum((p - p0) ** 2))
            n += len(p)
        return s, n

    def state(self):
        """The float positions of all groups, concatenated ((frames, 2))."""
        return np.concatenate(self.pos) if self.pos else np.zeros((0, 2))

    def load(self, arr):
        """Restore :meth:`state`; windows follow ``round(pos)``."""
        arr = np.asarray(arr, float).reshape(-1, 2)
        if arr.shape[0] != sum(len(p) for p in self.pos):
            return False
        k = 0
        for gi, st in enumerate(self.states):
            n = len(self.pos[gi])
            self.pos[gi][...] = arr[k:k + n]
            k += n
            delta = np.rint(self.pos[gi]).astype(np.int64) - st.current()
            move = np.flatnonzero(np.any(delta != 0, axis=1))
            if len(move):
                move_frames(st.g, move, delta[move])
        return True
