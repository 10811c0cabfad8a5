"""LSQ-ML with a multislice object: least-squares directions for every slice of a thick sample.

References: Odstrčil, Menzel & Guizar-Sicairos, Opt. Express 26, 3108
(2018), doi:10.1364/OE.26.003108 (LSQ-ML); Tsai, Usov, Diaz, Menzel &
Guizar-Sicairos, "X-ray ptychography with extended depth of field",
Opt. Express 24, 29089 (2016), doi:10.1364/OE.24.029089 (multislice
ptychography). The model (slices as the object storage's layers, the
angular-spectrum slice propagator ``Prop_dz`` of
:func:`ptycli.engines.multislice_step.slice_transfer`, the probe in the plane
of the first slice) is the one of :mod:`ptycli.engines.multislice_step`.

One frame ``j`` of a batch (probe modes ``k``, slices ``s = 1 .. S``)
--------------------------------------------------------------------
Forward::

    phi_1 = P_k,   psi_s = phi_s O_s[window_j],   phi_{s+1} = Prop_dz(psi_s)

and the exit-wave step of :mod:`ptycli.engines.lsqml.steps` at the detector
on ``psi_S`` gives ``chi_S`` (back in the plane of the last slice). Backward,
``s = S .. 1``: slice ``s`` is a thin object lit by the incident waves
``phi_s`` with the exit-wave change ``chi_s``, so it gets the batch's
least-squares direction of :mod:`ptycli.engines.lsqml.engine` with
``phi_s`` in place of the probe::

    dO_s = sum_j sum_k conj(phi_s,jk) chi_s,jk / (sum_j sum_k |phi_s,jk|^2 + delta_O)

and the change is handed to the slice before as the change of its exit
wave, the ePIE form of the incident-wave correction propagated back (as the
PIE family's 3PIE step does)::

    chi_{s-1} = Prop_{-dz}(conj(O_s) chi_s / max |O_s[window_j]|^2)

At ``s = 1`` the probe direction of the engine follows from ``chi_1`` and
``O_1``. Step lengths per frame: slice 1 with the probe takes the engine's
2 x 2 system (``u = P dO_1``, ``v = O_1 dP`` against ``chi_1``), every other
slice its own 1 x 1 system (``u_s = phi_s dO_s`` against ``chi_s``; the
engine's :func:`~ptycli.engines.lsqml.steps.frame_steps` without the probe,
the Tikhonov term from the batch mean of ``<u_s, u_s>`` over all MPI
ranks, :func:`slice_steps`). All slices of a batch move together, each by
its per-frame steps, with the directions of the slices before the update.

Regularisation (measured, ``benchmarks/validate_multislice.py``, 3 slices 8
depths of field apart, 1e6 photons per frame, from the true probe): with the
thin object's ``delta_O`` of then, 0.1 of the batch's largest ``sum |phi|^2``,
the slices reach correlations 0.93 / 0.84 / 0.92 after 20 epochs and then
decline while the Fourier error keeps falling (0.85 / 0.71 / 0.84 after 100,
with the probe held fixed too: the slices fit the noise where the diffracted
waves lighting the inner slices are dark); with 1.0 of it they rise to 0.97 /
0.93 / 0.97 after 100 epochs. So a multislice object's directions use
``delta_O = max(r, SLICE_OBJECT_REG) max sum |phi|^2``, ``r`` the thin
object's fraction of the batch maximum (``object_reg`` in units of the probe's
mean intensity, :mod:`.engine`; :data:`SLICE_OBJECT_REG` = 1; the per-frame
steps grow to make up for it, about 3.5 on average).

Supported: one object mode (the parameters refuse more), any probe modes,
far and near field; numpy passes only (an engine whose ``kernels`` would
choose the compiled passes runs the groups of a multislice object with
:class:`MultisliceGroupBatch`, logged). The LSQML position correction does
not move the frames of a multislice object (logged).

Cost: per frame ``2 (S - 1)`` more FFT pairs than the thin object (the slice
propagation forwards and the correction backwards) and the direction and
step passes once per slice.
"""

import numpy as np

from ... import parallel
from ...core import fft
from ..multislice_step import slice_transfer
from .batch import GroupBatch, _rdot_rows, work_array
from .steps import frame_steps

__all__ = ["MultisliceGroupBatch", "slice_steps", "SLICE_OBJECT_REG"]

#: the smallest ``delta_O`` a multislice object's directions take, as a fraction of the batch's largest
#: ``sum |phi|^2`` (module docstring)
SLICE_OBJECT_REG = 1.0


class MultisliceGroupBatch(GroupBatch):
    """:class:`~ptycli.engines.lsqml.batch.GroupBatch` for a group whose object has several slices (module docstring).

    The state of a part (:meth:`exit_update`) holds the first slice's arrays
    under the keys of the thin object (``ob`` = ``O_1``, ``pr`` = the probe,
    ``chi`` = ``chi_1``), so the engine's step system and object update of
    slice 1 are the thin object's; ``slices`` holds every slice's.
    """

    def __init__(self, g, noise, eps):
        super().__init__(g, noise, eps)
        self.S = int(g.obj.slices)
        self.far_pre = self.pre                      # the last slice's sample-plane factor (far field)
        self.far_pre_c = None if self.pre is None else np.conj(self.pre)
        self.pre = None                              # the probe stays in its own plane (the first slice's)
        self.H = slice_transfer(g)
        self.H_c = np.conj(self.H)

    # -- propagation ----------------------------------------------------------------------
    def _propagate(self, x, workers, inverse=False):
        """Detector propagation of the last slice's exit waves (far field: with its sample-plane factor)."""
        if self.far_pre is None:
            return super()._propagate(x, workers, inverse)
        if inverse:
            fft.ifft2_inplace(x, workers)
            x *= self.far_pre_c
        else:
            x *= self.far_pre
            fft.fft2_inplace(x, workers)
        return x

    def _slice_step(self, x, workers, back=False):
        """``Prop_dz`` (``back``: ``Prop_-dz``) in place on (pods, H, W)."""
        fft.fft2_inplace(x, workers)
        x *= self.H_c if back else self.H
        fft.ifft2_inplace(x, workers)
        return x

    # -- passes ---------------------------------------------------------------------------
    def exit_update(self, frames, obj, probe, acc, errors, workers=1, buffers=None):
        """Forward through the slices, the exit-wave step, and every slice's direction sums backwards."""
        H, W = self.g.shape
        S = self.S
        frames = np.asarray(frames, np.int64)
        pods, starts = self.pods_of(frames)
        n = len(pods)
        pr = self.probe_rows(probe, pods)
        obs = [self.windows(obj[s:], pods) for s in range(S)]       # copies of every slice's windows
        phis = [pr]
        F = work_array(buffers, "F", (n, H, W), self.ctype)
        np.multiply(pr, obs[0], out=F)
        for s in range(1, S):
            self._slice_step(F, workers)
            phis.append(F.copy())
            F *= obs[s]
        self._propagate(F, workers)
        a = self.detector_step(F, frames, starts, errors)
        chi = self._propagate(F, workers, inverse=True)            # chi_S
        chis = [None] * S
        pcs = [None] * S
        for s in range(S - 1, -1, -1):
            chis[s] = chi
            pcs[s] = self.object_values(phis[s], chi)
            if s == 0:
                self.probe_sums(acc, obs[0], chi, pods)
                break
            o2 = obs[s].real * obs[s].real + obs[s].imag * obs[s].imag
            scale = 1.0 / np.maximum(o2.reshape(n, -1).max(axis=1), np.finfo(self.ftype).tiny)
            chi = np.conj(obs[s]) * chi
            chi *= scale.astype(self.ftype)[:, None, None]
            self._slice_step(chi, workers, back=True)             # chi_{s-1}
        c = dict(frames=frames, pods=pods, starts=starts, obj=obj, ob=obs[0], pr=pr, chi=chis[0], pc=pcs[0],
                 slices=dict(ob=obs, phi=phis, chi=chis, pc=pcs))
        return a, c

    def scatter_object_sums(self, c, numO, denO, r0=0, r1=2**62, acc=None):
        """Every slice's sums: ``conj(phi_s) chi_s`` and ``|phi_s|^2`` into slice ``s``, object rows ``r0:r1``
        (``acc``: not read, as :meth:`GroupBatch.scatter_object_sums`)."""
        sl = c["slices"]
        for s in range(self.S):
            self._scatter(numO[s:], sl["pc"][s], c["pods"], r0, r1)
            self._scatter_abs2(denO[s:], sl["phi"][s], c["pods"], r0, r1)

    def window_list(self, c):
        """The windows of the part's pods in every slice: (S pods, 5) rows ``layer, y, x, H, W``."""
        one = super().window_list(c)
        out = np.concatenate([one + np.array([s, 0, 0, 0, 0], np.int64) for s in range(self.S)])
        return out

    def step_sums(self, c, numO, denO, regO, dP):
        """Slice 1's sums of the engine's 2 x 2 system (returned); slices ``2 .. S``: ``<u_s,u_s>``, ``Re<u_s,chi_s>``.

        The regulariser ``regO`` is at least :data:`SLICE_OBJECT_REG` times
        the batch's largest ``sum |phi|^2`` (the engine's ``_object_reg``;
        module docstring).

        The latter are kept in the state (``slice_sums``, (S - 1, 2, frames)) for :func:`slice_steps`.
        """
        out = super().step_sums(c, numO, denO, regO, dP)
        sl = c["slices"]
        pods, starts = c["pods"], c["starts"]
        sums = np.zeros((self.S - 1, 2, len(c["frames"])))
        sl["den"] = [c["den"]]
        for s in range(1, self.S):
            u = self.windows(numO[s:], pods)
            d = self.windows(denO[s:], pods)
            d += regO
            u /= d
            u *= sl["phi"][s]
            sl["den"].append(d)
            sums[s - 1, 0] = self.per_frame(_rdot_rows(u, u), starts)
            sums[s - 1, 1] = self.per_frame(_rdot_rows(u, sl["chi"][s]), starts)
        c["slice_sums"] = sums
        return out

    def object_update_values(self, c, a_obj, beta):
        """Slice 1 as the thin object (steps ``a_obj``), slices ``2 .. S`` with the steps of :func:`slice_steps`."""
        super().object_update_values(c, a_obj, beta)
        sl = c["slices"]
        cnt = self.npod[c["frames"]]
        c["slice_upd"] = []
        for s in range(1, self.S):
            w = np.repeat(np.asarray(c["slice_steps"][s - 1], self.ftype) * self.ftype.type(beta), cnt)
            vals = sl["pc"][s] * w[:, None, None]
            vals /= sl["den"][s]
            c["slice_upd"].append(vals)

    def scatter_object_update(self, c, target, r0=0, r1=2**62):
        super().scatter_object_update(c, target, r0, r1)
        for s, vals in enumerate(c["slice_upd"], start=1):
            self._scatter(target[s:], vals, c["pods"], r0, r1)

    def position_shifts(self, c):
        """No position estimate for a multislice object (zeros; the engine logs it)."""
        return np.zeros((len(c["frames"]), 2))


def slice_steps(groups, items, states, lam, max_slices):
    """The per-frame steps of slices ``2 ..`` of every multislice part (into ``state['slice_steps']``); collective.

    Parameters
    ----------
    groups : list of GroupBatch
        The engine's group passes.
    items, states : lists
        The batch's work items ``(group index, frames)`` and their states.
    lam : float
        The engine's ``step_reg``.
    max_slices : int
        The largest slice count of the model's object storages (the same on every rank: the length of the
        reduced means).
    """
    n = max(int(max_slices) - 1, 0)
    tot = np.zeros((n, 2))  # per slice index: sum <u,u>, frames
    for (gi, _), c in zip(items, states):
        if isinstance(groups[gi], MultisliceGroupBatch):
            s = c["slice_sums"]
            tot[:s.shape[0], 0] += s[:, 0].sum(axis=1)
            tot[:s.shape[0], 1] += s.shape[2]
    if parallel.size > 1:
        parallel.allreduce(tot)
    mean = tot[:, 0] / np.maximum(tot[:, 1], 1.0)
    for (gi, _), c in zip(items, states):
        if isinstance(groups[gi], MultisliceGroupBatch):
            s = c["slice_sums"]
            zero = np.zeros(s.shape[2])
            c["slice_steps"] = [frame_steps(s[k, 0], zero, zero, s[k, 1], zero, lam, False, mean[k])[0]
                                for k in range(s.shape[0])]
