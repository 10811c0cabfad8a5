"""The batch passes of LSQ-ML over one pod group (numpy).

:class:`GroupBatch` holds the constant arrays of one
:class:`~ptycli.engines.addressing.PodGroup` (counts, mask, ``sqrt(I)``) and
runs the per-batch passes of :mod:`ptycli.engines.lsqml.engine` on the
group's frames of the current batch (any subset of its frames, in any order):

:meth:`GroupBatch.exit_update`
    Exit waves ``P O`` of the batch's pods, their transforms, the errors and
    the noise model's cost, the exit-wave update ``chi`` (detector-plane
    step along the likelihood gradient, :func:`~ptycli.engines.lsqml.steps.exit_step`,
    back-propagated), ``conj(P) chi`` per pod, and the probe direction sums
    ``sum conj(O) chi`` and ``sum |O|^2`` per probe row.
:meth:`GroupBatch.scatter_object_sums`
    The object direction sums ``sum conj(P) chi`` and ``sum |P|^2`` into
    object-shaped accumulators (in a row band of the object).
:meth:`GroupBatch.step_sums`
    The per-frame sums of the 2 x 2 step system for given directions.
:meth:`GroupBatch.object_update_values`, :meth:`GroupBatch.scatter_object_update`
    ``sum_j a_O,j conj(P) chi_j / (denO + regO)`` into the object (or an object-shaped sum).
:meth:`GroupBatch.position_shifts`
    The per-frame position estimate from the object's gradient.

Far field: the propagator's sample-plane factor ``pre`` (unit modulus) is
folded into the probe (``P_eff = pre P``) and the detector-plane factor
dropped (the updates only scale each detector pixel by a real factor), so
the transform is one FFT per pod. Then ``chi_eff = pre chi``; the object
sums ``conj(P_eff) chi_eff = conj(P) chi`` need no correction, the probe
sums are multiplied by ``conj(pre)`` to return to the probe's own plane.
Near field: the propagator's ``fw``/``bw`` (``P_eff = P``).

The batch's pods are gathered with one fancy index on a sliding-window view
of the object; sums over a batch's windows are Python loops over its pods
(windows of the same batch may overlap). The object-shaped sums
(:meth:`GroupBatch.scatter_object_sums`, :meth:`GroupBatch.scatter_object_update`)
and the window operations take a row band ``r0:r1`` of the object, so that
threads can add a batch's pods in disjoint bands at once.
"""

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ...core import fft
from ..ml.sums import pairs
from .steps import exit_factor, exit_step

__all__ = ["GroupBatch", "add_on_windows", "finish_windows", "windows_max", "work_array", "zero_windows"]


def work_array(store, key, shape, dtype):
    """A work array of ``shape`` and ``dtype`` kept in the dict ``store`` between batches (None: a new one).

    The array is a view of the front of a flat, aligned buffer
    (:func:`ptycli.core.fft.empty`) that grows when a larger one is asked
    for, so successive batches reuse memory that is already mapped instead
    of touching fresh pages every time (at 128 x 128 frames the first touch
    of new exit-wave arrays cost about a tenth of an epoch).
    """
    dtype = np.dtype(dtype)
    count = int(np.prod(shape, dtype=np.int64))
    if store is None:
        return fft.empty(shape, dtype)
    name = (key, dtype.str)
    buf = store.get(name)
    if buf is None or buf.size < count:
        buf = fft.empty((count,), dtype)
        store[name] = buf
    return buf[:count].reshape(shape)


def _rows(y, h, r0, r1):
    """The rows of a window starting at ``y`` of height ``h`` inside the band ``r0:r1`` (a slice)."""
    return slice(max(y, r0), min(y + h, r1))


def windows_max(arr, windows, r0=0, r1=2**62):
    """Largest value of ``arr`` over the windows (rows ``layer, y, x, H, W``) in rows ``r0:r1``; 0 without windows."""
    best = 0.0
    for l, y, x, h, w in windows.tolist():
        part = arr[l, _rows(y, h, r0, r1), x:x + w]
        if part.size:
            best = max(best, float(part.max()))
    return best


def add_on_windows(obj, upd, windows, r0=0, r1=2**62):
    """``obj += upd`` on the union of the windows in rows ``r0:r1``, every pixel once (``upd`` is zeroed there).

    Each window adds its pixels and zeroes ``upd`` there, so a pixel under
    several windows is added by the first and left alone by the others: the
    result does not depend on the order of the windows. Disjoint row bands
    ``r0:r1`` can run on threads at once.
    """
    for l, y, x, h, w in windows.tolist():
        sl = (l, _rows(y, h, r0, r1), slice(x, x + w))
        obj[sl] += upd[sl]
        upd[sl] = 0


def finish_windows(obj, upd, num, den, windows, r0=0, r1=2**62):
    """The batch's last window pass: :func:`add_on_windows` of ``upd``, then ``num`` and ``den`` zeroed there."""
    add_on_windows(obj, upd, windows, r0, r1)
    zero_windows((num, den), windows, r0, r1)


def zero_windows(arrays, windows, r0=0, r1=2**62):
    """Zero every array of ``arrays`` (object-shaped) on the windows in rows ``r0:r1``."""
    for l, y, x, h, w in windows.tolist():
        for a in arrays:
            a[l, _rows(y, h, r0, r1), x:x + w] = 0


def _rdot_rows(a, b):
    """``Re sum conj(a_i) b_i`` per row ``i`` of two complex stacks, float64 (rows,)."""
    n = a.shape[0]
    ra = pairs(np.ascontiguousarray(a)).reshape(n, -1)
    rb = pairs(np.ascontiguousarray(b)).reshape(n, -1)
    return np.einsum("ij,ij->i", ra, rb).astype(np.float64)


class GroupBatch:
    """LSQ-ML passes over the frames of one pod group (see the module docstring).

    Parameters
    ----------
    g : PodGroup
        The group.
    noise : NoiseModel
        ``Euclid`` (the paper's Gaussian) or ``Poisson``.
    eps : float
        The noise model's dark-pixel regularisation.

    The passes keep no state between calls: :meth:`exit_update` returns the
    batch part's arrays (pods, frames, gathered windows, probes, ``chi``) as a
    dict that the other passes take, so parts of a batch can run on several
    threads at once.
    """

    #: whether the window passes are compiled (:class:`~ptycli.engines.lsqml.compiled.CompiledGroupBatch`)
    compiled = False

    def __init__(self, g, noise, eps):
        self.g = g
        self.noise = noise
        self.eps = float(eps)
        self.ctype, self.ftype = g.ctype, g.ftype
        self.pre = g.factors.pre if g.farfield else None
        self.n = np.asarray(g.diff_frames(), dtype=self.ftype)
        m = g.mask_frames()
        self.mask = None if m is None else np.asarray(m, dtype=self.ftype)
        self.fmag = np.asarray(g.fmag(), dtype=self.ftype)
        self.npod = np.diff(g.pod_start)
        #: the scan's incoherent background (live, :mod:`ptycli.core.background`), or None
        self.background = g.background

    # -- helpers -------------------------------------------------------------------
    def pods_of(self, frames):
        """Pods of ``frames`` (in that order) and the batch offsets of each frame's first pod."""
        g = self.g
        cnt = self.npod[frames]
        starts = np.cumsum(cnt) - cnt
        first = g.pod_start[frames]
        pods = np.repeat(first - starts, cnt) + np.arange(int(cnt.sum()))
        return pods, starts

    def windows(self, data, pods):
        """Windows of an object-shaped array at ``pods``: (pods, H, W) (a copy)."""
        g = self.g
        sw = sliding_window_view(data, g.shape, axis=(1, 2))
        return sw[g.ob_layer[pods], g.ob_y[pods], g.ob_x[pods]]

    def per_frame(self, x, starts):
        """Sum a per-pod array over the pods of each frame (pods are frame-major)."""
        if len(starts) == x.shape[0]:
            return x
        return np.add.reduceat(x, starts, axis=0)

    def _propagate(self, x, workers, inverse=False):
        if self.pre is not None:
            out = (fft.ifft2_inplace if inverse else fft.fft2_inplace)(x, workers)
        else:
            prop = self.g.propagator
            out = prop.bw(x) if inverse else prop.fw(x)
        if out is not x:
            x[...] = out
        return x

    def probe_eff(self, probe):
        """The probe as the transform sees it (``pre P`` in the far field)."""
        return probe * self.pre if self.pre is not None else probe

    def probe_rows(self, probe_eff, pods):
        """The probe of every pod: (pods, H, W), or (1, H, W) to broadcast when all pods use one layer."""
        g = self.g
        if g.single_probe_layer:
            k = int(g.pr_layer[0])
            return probe_eff[k:k + 1]
        return probe_eff[g.pr_layer[pods]]

    def _scatter(self, target, values, pods, r0=0, r1=2**62):
        """``target[window] += values`` per pod, in the object rows ``r0:r1`` only (a row band)."""
        g = self.g
        H, W = g.shape
        ol, oy, ox = g.ob_layer, g.ob_y, g.ob_x
        one = values.shape[0] == 1  # the same values for every pod
        for k, i in enumerate(pods.tolist()):
            y, x = int(oy[i]), int(ox[i])
            a, b = max(y, r0), min(y + H, r1)
            if a < b:
                target[ol[i], a:b, x:x + W] += values[0 if one else k][a - y:b - y]

    def _scatter_abs2(self, target, values, pods, r0=0, r1=2**62):
        self._scatter(target, values.real * values.real + values.imag * values.imag, pods, r0, r1)

    # -- passes ---------------------------------------------------------------------
    def exit_update(self, frames, obj, probe, acc, errors, workers=1, buffers=None, ratio=None):
        """Exit-wave update of ``frames`` and the direction sums (module docstring).

        Parameters
        ----------
        frames : ndarray of int
            The group's frames of this batch.
        obj, probe : ndarray
            The live object and probe storages' data.
        acc : dict
            Accumulators ``numP``, ``denP`` (probe-shaped complex/real), added
            to (the object sums: :meth:`scatter_object_sums`).
        errors : ErrorSums
            Receives the Fourier/photon errors, the exit change and the cost.
        workers : int
            FFT threads.
        buffers : dict, optional
            Work arrays kept between batches (:func:`work_array`); the
            returned state holds views of them until the next call with the
            same dict.
        ratio : ndarray (H, W) float64, optional
            With a background: receives ``sum_frames mask u^2``, the
            background's factors (:mod:`ptycli.engines.background_sums`).

        Returns
        -------
        a : ndarray float64 (frames,)
            The exit-wave steps ``a_j``.
        state : dict
            The part's arrays for the other passes.
        """
        H, W = self.g.shape
        frames = np.asarray(frames, np.int64)
        pods, starts = self.pods_of(frames)
        pr = self.probe_rows(self.probe_eff(probe), pods)
        F = work_array(buffers, "F", (len(pods), H, W), self.ctype)
        ob = self.exit_waves(F, obj, pr, pods)
        a = self.detector_pass(F, frames, starts, errors, workers, ratio)
        chi = F
        pc = self.direction_sums(acc, obj, ob, pr, chi, pods, buffers)
        return a, dict(frames=frames, pods=pods, starts=starts, obj=obj, ob=ob, pr=pr, chi=chi, pc=pc)

    def exit_waves(self, F, obj, pr, pods):
        """``F = P O[window]`` for the pods; returns the gathered windows (None where a pass reads the object)."""
        ob = self.windows(obj, pods)
        np.multiply(pr, ob, out=F)
        return ob

    def direction_sums(self, acc, obj, ob, pr, chi, pods, buffers=None):
        """``conj(P) chi`` (returned, (pods, H, W)) for the object sums, and ``conj(O) chi``, ``|O|^2`` into the probe's.

        The probe sums are taken back to the probe's plane (``conj(pre)``,
        far field). The object sums are added by :meth:`scatter_object_sums`.
        """
        pc = self.object_values(pr, chi, buffers)
        self.probe_sums(acc, ob, chi, pods)
        return pc

    def object_values(self, pr, chi, buffers=None):
        """``conj(P) chi`` (pods, H, W), the object direction's numerator per pod."""
        return np.multiply(np.conj(pr), chi, out=work_array(buffers, "pc", chi.shape, chi.dtype))

    def scatter_object_sums(self, c, numO, denO, r0=0, r1=2**62, acc=None):
        """``numO += conj(P) chi``, ``denO += |P|^2`` on the part's windows, in the object rows ``r0:r1``
        (``acc`` is not read: the numpy passes add the probe sums in :meth:`exit_update`)."""
        self._scatter(numO, c["pc"], c["pods"], r0, r1)
        self._scatter_abs2(denO, c["pr"], c["pods"], r0, r1)

    def probe_sums(self, acc, ob, chi, pods):
        """``numP += conj(O) chi`` (in the probe's plane), ``denP += |O|^2`` per probe row of the pods."""
        g = self.g
        po = np.conj(ob) * chi
        o2 = ob.real * ob.real + ob.imag * ob.imag
        rows = g.pr_layer[pods]
        for q in np.unique(rows).tolist():
            sel = rows == q
            s = po[sel].sum(axis=0)
            if self.pre is not None:
                s *= np.conj(self.pre)
            acc["numP"][q] += s
            acc["denP"][q] += o2[sel].sum(axis=0)

    def detector_pass(self, F, frames, starts, errors, workers=1, ratio=None):
        """Exit waves to ``chi`` in place: the transform, :meth:`detector_step`, the inverse; returns the steps."""
        self._propagate(F, workers)
        a = self.detector_step(F, frames, starts, errors, ratio)
        self._propagate(F, workers, inverse=True)
        return a

    def detector_step(self, F, frames, starts, errors, ratio=None):
        """The detector-plane update in place: ``F <- (u - 1) F`` with the frames' steps; returns the steps.

        Adds the frames' Fourier/photon errors, cost and exit change to ``errors``. With a background
        the model intensity is ``sum_modes |F|^2 + B`` and ``ratio`` receives ``sum_frames mask u^2``.
        """
        nf = len(frames)
        a2 = F.real * F.real
        a2 += F.imag * F.imag
        I = self.per_frame(a2, starts)
        B = self.background
        if B is not None:
            I += B
        n = self.n[frames]
        mask = None if self.mask is None else self.mask[frames]
        fmag = self.fmag[frames]
        errors.add_fourier(np.sqrt(I), fmag, mask, intensity=n)
        mn = self.noise.masked_counts(n, mask)
        lp = np.empty_like(I)
        scratch = [np.empty_like(I) for _ in range(5 if self.noise.name == "poisson" else 4)]
        cost = self.noise.cost_terms(I, n, mask, fmag, mn, self.eps, lp, scratch[0], scratch[1], scratch[2],
                                     scratch[3], second=False)
        a = exit_step(self.noise, I, n, mask, mn, self.eps, lp, scratch, B)
        factor = exit_factor(self.noise, a, lp, I, n, self.eps)
        if B is not None and ratio is not None:
            u2 = factor + 1
            u2 *= u2
            if mask is not None:
                u2 *= mask
            ratio += u2.sum(axis=0, dtype=np.float64)
        if F.shape[0] != nf:
            factor = factor[np.repeat(np.arange(nf), self.npod[frames])]
        F *= factor  # dPsi = (u - 1) Psi, u = 1 - a l' (safeguarded)
        dF2 = float(np.einsum("i,i->", pairs(F).reshape(-1), pairs(F).reshape(-1)))
        errors.add(exit_change=dF2, likelihood=cost)
        return a

    def window_list(self, c):
        """The object windows of a part's pods: (pods, 5) int64 rows ``layer, y, x, H, W``."""
        g = self.g
        pods = c["pods"]
        out = np.empty((len(pods), 5), np.int64)
        out[:, 0], out[:, 1], out[:, 2] = g.ob_layer[pods], g.ob_y[pods], g.ob_x[pods]
        out[:, 3], out[:, 4] = g.shape
        return out

    def step_sums(self, c, numO, denO, regO, dP):
        """Per-frame sums ``<u,u>, <v,v>, Re<u,v>, Re<u,chi>, Re<v,chi>`` (float64, shape (5, frames)).

        ``u = P dO`` with ``dO = numO / (denO + regO)`` evaluated on the
        batch's windows (``numO``, ``denO`` object-shaped accumulators,
        ``regO`` the scalar regulariser); ``dP`` probe-shaped (its own plane)
        or None (no probe update: the ``v`` sums are 0).
        """
        pods, starts, pr, ob, chi = c["pods"], c["starts"], c["pr"], c["ob"], c["chi"]
        u = self.windows(numO, pods)
        d = self.windows(denO, pods)
        d += regO
        u /= d
        u *= pr
        c["den"] = d
        out = np.zeros((5, len(c["frames"])))
        out[0] = self.per_frame(_rdot_rows(u, u), starts)
        out[3] = self.per_frame(_rdot_rows(u, chi), starts)
        if dP is not None:
            v = self.probe_rows(self.probe_eff(dP), pods) * ob
            out[1] = self.per_frame(_rdot_rows(v, v), starts)
            out[2] = self.per_frame(_rdot_rows(u, v), starts)
            out[4] = self.per_frame(_rdot_rows(v, chi), starts)
        return out

    def object_update_values(self, c, a_obj, beta):
        """Prepare the part's object update ``beta a_O,j conj(P) chi_j / (denO + regO)`` per pod (in place of ``pc``).

        ``a_obj``: the steps per frame; the denominator is the one of the
        last :meth:`step_sums` (the batch's full sum, the same for every pod
        over a pixel, so the sum of the quotients is the quotient of the sum).
        """
        w = np.repeat(np.asarray(a_obj, self.ftype) * self.ftype.type(beta), self.npod[c["frames"]])
        vals = c.pop("pc")  # conj(P) chi, kept from exit_update
        vals *= w[:, None, None]
        vals /= c["den"]
        c["upd"] = vals

    def scatter_object_update(self, c, target, r0=0, r1=2**62):
        """``target += `` the values of :meth:`object_update_values` on the part's windows, object rows ``r0:r1``."""
        self._scatter(target, c["upd"], c["pods"], r0, r1)

    def position_shifts(self, c):
        """Per-frame shift estimates (rows, cols; pixels, float64 (frames, 2)) of the current batch.

        ``s = Re<P dO/dy, chi> / <P dO/dy, P dO/dy>`` per axis (central
        differences of the object window, one-sided at its edges): the shift
        of the window that best explains the exit-wave update to first order.
        Frames without gradient signal get 0. ``O`` and ``P`` are the ones that
        made ``chi``: called before the batch's updates (the compiled passes
        update the object in place, which the windows here are read from).
        """
        pods, starts, pr, ob, chi = c["pods"], c["starts"], c["pr"], c["ob"], c["chi"]
        if ob is None:
            ob = self.windows(c["obj"], pods)
        out = np.zeros((len(c["frames"]), 2))
        for k, axis in enumerate((1, 2)):
            d = np.gradient(ob, axis=axis)
            d *= pr
            num = self.per_frame(_rdot_rows(d, chi), starts)
            den = self.per_frame(_rdot_rows(d, d), starts)
            out[:, k] = np.divide(num, den, out=np.zeros_like(num), where=den > 0)
        return out

