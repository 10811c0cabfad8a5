"""The momentum step of mPIE: a velocity per array, applied every ``interval`` frame updates.

mPIE (Maiden, Johnson & Li, "Further improvements to the ptychographical
iterative engine", Optica 4, 736 (2017), doi:10.1364/OPTICA.4.000736) runs
the rPIE frame updates and, after every ``T`` of them, treats the change of
the object (and of the probe) since the previous momentum step as a gradient
step and accelerates it, as momentum (heavy-ball / Nesterov-style) methods do
in gradient descent. For an array ``X`` (the object or the probe) with the
velocity ``v`` (zero at the start) and the anchor ``X_T`` (``X`` right after
the previous momentum step, or at the start)::

    v   <- eta v + (X - X_T)       # friction eta in [0, 1): memory of past steps
    X   <- X + eta v               # move on along the velocity
    X_T <- X

With ``eta = 0`` the step leaves ``X`` unchanged (``X + 0 v``): mPIE is rPIE.

Adaptive restart (``restart=True``, the mPIE parameter ``momentum_restart``;
the gradient scheme of O'Donoghue & Candes, "Adaptive restart for accelerated
gradient schemes", Found. Comput. Math. 15, 715 (2015),
doi:10.1007/s10208-013-9150-3): when the new step ``d = X - X_T`` points
against the velocity, ``Re <v, d> < 0`` (summed over the whole array), the
velocity is set to zero before the update, so that step is ``v = d``,
``X <- X + eta d``. It lets a strong friction run without the overshoot
building up. With ``eta = 0`` no restart is tested (``X`` is unchanged anyway).
Measured on the zoo (mPIE 60 + ML 30, seeds 14/21/22, see
:mod:`ptycli.engines.stochastic`): ``eta = 0.9`` with restart lifts
``two_modes`` from a mean 0.65 to 0.87 but drops ``lowdose_1e4`` from 0.84 to
0.62, so it is off by default.

:class:`Momentum` holds the frame counter, velocities and anchors of named
arrays (the object storages, and the probe storages in the working form the
PIE sweep updates: see :mod:`ptycli.engines.pie_sweep`) and applies the step
in numpy for both the numpy and the compiled sweeps (every ``T`` frames six
passes over each array, in its own precision, with no temporaries).
"""

import numpy as np

__all__ = ["Momentum"]


class Momentum:
    """Velocities and anchors of named arrays, and the frame counter of the momentum steps.

    Parameters
    ----------
    friction : float
        ``eta`` in ``[0, 1)`` of the object: the share of the velocity kept
        at each step (and the share of the velocity added to the array).
    interval : int
        ``T``: frame updates between two momentum steps (counted over the
        sweeps, so the steps fall every ``T`` frames whatever the number of
        frames per iteration).
    probe_friction : float, optional
        ``eta`` of the probe (default: ``friction``).
    restart : bool, optional
        Adaptive restart (module docstring): zero an array's velocity when
        its new step points against it (default False).

    Attributes
    ----------
    count : int
        Frame updates since the last momentum step.
    restarts : dict
        ``kind -> number of restarts`` so far (diagnostics; not in the checkpoint).
    velocity, anchor : dict
        ``kind -> {name -> ndarray}`` for the kinds ``"obj"`` and ``"probe"``.
    """

    KINDS = ("obj", "probe")

    def __init__(self, friction, interval, probe_friction=None, restart=False):
        self.restart = bool(restart)
        self.restarts = {k: 0 for k in self.KINDS}
        self.friction = {"obj": float(friction),
                         "probe": float(friction if probe_friction is None else probe_friction)}
        self.interval = int(interval)
        for eta in self.friction.values():
            if not 0.0 <= eta < 1.0:
                raise ValueError("momentum friction must lie in [0, 1), got %r" % eta)
        if self.interval < 1:
            raise ValueError("momentum interval must be at least 1, got %r" % interval)
        self.count = 0
        self.velocity = {k: {} for k in self.KINDS}
        self.anchor = {k: {} for k in self.KINDS}

    def reset(self, kind, arrays):
        """Start the momentum of ``arrays`` (name -> ndarray): zero velocity, anchors at the current values."""
        self.velocity[kind] = {n: np.zeros_like(a) for n, a in arrays.items()}
        self.anchor[kind] = {n: np.array(a, copy=True) for n, a in arrays.items()}

    def frame_done(self, objects, probes=None):
        """Count one frame update; every ``interval``-th one apply :meth:`step`.

        Returns True when a step was applied (the probe may have moved).
        """
        self.count += 1
        if self.count < self.interval:
            return False
        self.count = 0
        self.step("obj", objects)
        if probes is not None:
            self.step("probe", probes)
        return True

    def step(self, kind, arrays):
        """The momentum step on ``arrays`` (name -> ndarray, updated in place); see the module docstring."""
        eta = self.friction[kind]
        vel, anc = self.velocity[kind], self.anchor[kind]
        for name, x in arrays.items():
            v, a = vel[name], anc[name]
            e = v.dtype.type(eta)
            if self.restart and eta > 0 and _opposed(v, x, a):
                v[...] = 0              # the new step turns against the velocity: restart
                self.restarts[kind] += 1
            v *= e
            v += x
            v -= a                      # v = eta v + (X - X_T)
            np.multiply(v, e, out=a)    # the anchor buffer holds eta v for a moment
            x += a                      # X = X + eta v
            a[...] = x                  # X_T = X

    def mix_modes(self, kind, rotations):
        """Mix the modes of velocities and anchors as the arrays' modes were mixed.

        ``rotations``: name -> ``V`` (modes x modes) with the new modes
        ``X'_k = sum_j V_jk X_j`` (as
        :meth:`~ptycli.engines.constraints.ConstraintsMixin.orthogonalize_probe`
        returns them), so that ``X - X_T`` stays the change of each mode.
        """
        for name, V in rotations.items():
            for arr in (self.velocity[kind].get(name), self.anchor[kind].get(name)):
                if arr is None:
                    continue
                flat = arr.reshape(arr.shape[0], -1)
                flat[...] = np.asarray(V).astype(arr.dtype).T @ flat

    def rescale(self, kind, factor):
        """The arrays of ``kind`` were multiplied by ``factor`` (a gauge change): velocities and anchors too."""
        for name, v in self.velocity[kind].items():
            v *= v.dtype.type(factor)
            self.anchor[kind][name] *= v.dtype.type(factor)

    def follow(self, kind, name, change):
        """The array ``name`` was changed by ``change`` outside the frame updates: move its anchor along.

        The next step then sees only the frame updates' progress ``X - X_T``;
        the velocity is kept. mPIE's variable probe calls it when the
        eigen-probes are refit at the end of a sweep (:mod:`ptycli.engines.stochastic`).
        """
        a = self.anchor[kind].get(name)
        if a is not None:
            a += change

    # -- checkpoints --------------------------------------------------------
    def state(self):
        """Flat dict of arrays for a checkpoint (names ``mpie_<v|a>_<kind>_<name>``, ``mpie_count``)."""
        out = {"mpie_count": np.array([self.count], dtype=np.int64)}
        for kind in self.KINDS:
            for name, v in self.velocity[kind].items():
                out["mpie_v_%s_%s" % (kind, name)] = v
                out["mpie_a_%s_%s" % (kind, name)] = self.anchor[kind][name]
        return out

    def load(self, state):
        """Restore :meth:`state`; arrays missing or of another shape keep their reset values.

        Returns True when everything was restored.
        """
        complete = "mpie_count" in state
        if complete:
            self.count = int(np.asarray(state["mpie_count"]).ravel()[0])
        for kind in self.KINDS:
            for name, v in self.velocity[kind].items():
                sv, sa = state.get("mpie_v_%s_%s" % (kind, name)), state.get("mpie_a_%s_%s" % (kind, name))
                if sv is None or sa is None or np.shape(sv) != v.shape or np.shape(sa) != v.shape:
                    complete = False
                    continue
                v[...] = sv
                self.anchor[kind][name][...] = sa
        return complete


def _opposed(v, x, a):
    """Whether the step ``x - a`` points against the velocity ``v``: ``Re <v, x - a> < 0``."""
    vf, xf, af = v.reshape(-1), x.reshape(-1), a.reshape(-1)
    return float(np.vdot(vf, xf).real - np.vdot(vf, af).real) < 0.0
