"""The ePIE/rPIE frame step: one frame's exit wave, modulus constraint and object/probe updates, in place.

:class:`FrameKernel` computes the step of :mod:`ptycli.engines.stochastic`
(the formulas are in its docstring) for one frame shape, mode count and
propagator, with buffers of its own: :meth:`FrameKernel.step` in numpy (one
step for any mode counts; with one probe or one object mode its mode sums
collapse to single broadcast calls, so one probe and one object mode take the
fewest numpy calls), :meth:`FrameKernel.step_compiled` with the kernels of
:mod:`ptycli.engines.fused_pie` (one probe and one object mode, complex64,
far field with the phase factor folded into the probe). The tests check it
against the published formulas written plainly (``tests/pie_reference.py``).

Performance
-----------
The per-frame work is dominated by two FFTs; the rest is a handful of passes
over the frame with preallocated buffers and in-place ufuncs
(:class:`FrameKernel`). In the far field the sample-plane phase factor of the
propagator is folded into a scratch copy of the probe for the duration of a
sweep (``P~ = pre P``, written back as ``conj(pre) P~``), and the
detector-plane factor, a pure phase, cancels in the modulus constraint: each
frame costs exactly one forward and one inverse FFT (in place, with
transforms bound to the kernel's buffer: :func:`ptycli.core.fft.bound_pair`). Single precision stays single precision (a
``TypeError`` rather than a silent upcast). Single frames are transformed with
one FFT thread below 512 x 512 pixels (thread start-up costs more than it
saves there) and with :func:`ptycli.core.fft.get_workers` threads above.

Measured on the shared 2-core development machine (minimum over repeats, a
busy machine, hence ranges), time per frame over the batched forward+inverse
FFT of the same stack with 2 threads: 128 x 128 frames, the kernel 1.1x with
the probe fixed and 1.4-1.6x with probe updates (whole iterations 1.1-2x);
64 x 64 frames 1.8-2.9x and 2.5-5x: there the batched two-thread FFT is
already 1.2-1.7x faster than any per-frame transform pair, and numpy's call
overhead (about 25 calls of ~0.7 us per frame) dominates. PtyPy 0.9 runs
ePIE at 10.9x (128 x 128).
"""

import numpy as np

from ..core import fft

__all__ = ["FrameKernel", "EPS", "THREADED_FFT_PIXELS", "relaxed_fraction"]

#: Added to model amplitudes before dividing (single precision safe).
EPS = 1e-10

#: Frames (pixels x modes) at or above this size use several FFT threads.
THREADED_FFT_PIXELS = 512 * 512


def relaxed_fraction(fourier, bound):
    """Share of the modulus correction kept under a power bound: ``max(0, 1 - sqrt(bound / fourier))``.

    The relaxed modulus constraint (Thibault & Guizar-Sicairos, New J. Phys.
    14, 063004 (2012), doi:10.1088/1367-2630/14/6/063004; the power bound of
    :mod:`ptycli.engines.projectional`) moves a frame's amplitudes from
    ``|F|`` only onto the boundary of the set
    ``sum mask (A - sqrt I)^2 <= bound``, to ``sqrt I + r (|F| - sqrt I)``
    with ``r = sqrt(bound / fourier)``, and leaves frames inside it alone.
    The exit-wave change of that move is ``(1 - r)`` times the full
    projection's (the detector-plane change ``g (A / |F| - 1)`` is linear in
    ``A - |F|``), so a PIE step scales its updates by this fraction.

    Parameters
    ----------
    fourier : float
        The frame's ``sum mask (|F| - sqrt I)^2`` (photons).
    bound : float
        The bound for the frame (photons; 0: none, the fraction is 1).

    Returns
    -------
    float
        1 without a bound, 0 for a frame within it, else ``1 - sqrt(bound / fourier)``.
    """
    if bound <= 0.0:
        return 1.0
    if fourier <= bound:
        return 0.0
    return 1.0 - float(np.sqrt(bound / fourier))


class FrameKernel:
    """In-place mixed-state ePIE/rPIE step on one frame, with its own buffers.

    One kernel serves all frames of one frame shape, mode count and
    propagator. It computes the published step (to rounding), but writes the
    object patch and the probe in place and allocates nothing per frame.
    The numpy step is written once for any mode counts: with one probe mode
    (or one object mode) the mode sums collapse to single elementwise calls
    on the ``(modes, h, w)`` stacks (broadcasting, no temporaries), so one
    probe and one object mode take the fewest numpy calls.

    Parameters
    ----------
    shape : (int, int)
        Frame shape.
    nprobe, nobj : int
        Probe and object modes per frame.
    dtype : numpy complex dtype
        ``complex64`` or ``complex128``; probe and object patch passed to
        :meth:`step` must have it (checked: a ``TypeError`` rather than a
        silent change of precision), the amplitudes the matching real type.
    pre : ndarray (rows, cols), optional
        Far field: sample-plane factor multiplied before the FFT (and its
        conjugate after the inverse FFT). ``None`` when it has been folded
        into the probe (``P~ = pre P``) or for a plain FFT.
    transfer : ndarray (rows, cols), optional
        Near field: the angular-spectrum kernel ``H``; the detector wave is
        then ``IFFT(H FFT(psi))`` (four FFTs per frame).
    workers : int, optional
        FFT threads for one frame (default: 1 below :data:`THREADED_FFT_PIXELS`).
    object_step, probe_step, object_alpha, probe_alpha : float
        Update parameters (see the module docstring; 1 for an alpha selects
        the ePIE form with a scalar denominator).
    photon_error : bool
        Also accumulate the photon error ``sum mask (|F|^2 - I)^2 / (I + 1)``.
    compiled : bool
        Allow :meth:`step_compiled` (sets ``self.compiled`` where it applies).
    """

    def __init__(self, shape, nprobe, nobj, dtype=np.complex64, pre=None, transfer=None, workers=None,
                 object_step=1.0, probe_step=1.0, object_alpha=1.0, probe_alpha=1.0, photon_error=True,
                 compiled=False):
        self.shape = tuple(int(s) for s in shape)
        self.npr, self.nob = int(nprobe), int(nobj)
        self.M = self.npr * self.nob
        self.ctype = np.dtype(dtype)
        if self.ctype.kind != "c":
            raise TypeError("FrameKernel needs a complex dtype, got %s" % self.ctype)
        self.ftype = np.finfo(self.ctype).dtype
        h, w = self.shape
        if workers is None:
            workers = fft.get_workers() if h * w * self.M >= THREADED_FFT_PIXELS else 1
        self.workers = int(workers)
        self.pre = None if pre is None else np.ascontiguousarray(pre, dtype=self.ctype)
        self.pre_c = None if pre is None else np.conj(self.pre)
        self.transfer = None if transfer is None else np.ascontiguousarray(transfer, dtype=self.ctype)
        self.transfer_c = None if transfer is None else np.conj(self.transfer)
        self.object_step = float(object_step)
        self.probe_step = float(probe_step)
        self.object_alpha = float(object_alpha)
        self.probe_alpha = float(probe_alpha)
        if not (0.0 <= self.object_alpha <= 1.0 and 0.0 <= self.probe_alpha <= 1.0):
            raise ValueError("object_alpha and probe_alpha must lie in [0, 1]")
        self.photon_error = bool(photon_error)
        c, f = self.ctype, self.ftype
        self.ex = fft.empty((self.npr, self.nob, h, w), c)  # exit waves -> detector waves -> dpsi (aligned)
        self.ex3 = self.ex.reshape((self.M, h, w))
        self.ex2 = self.ex3[0]
        # the stack the elementwise passes work on: one frame (h, w) for one mode, else (M, h, w)
        self.ex_m = self.ex2 if self.M == 1 else self.ex3
        self.tmp4 = np.empty((self.npr, self.nob, h, w), c) if self.M > 1 else None
        self.t_obj = np.empty((self.nob, h, w), c)           # object increment
        self.t_pr = np.empty((self.npr, h, w), c)            # probe increment
        self.c_obj = np.empty((self.nob, h, w), c)           # conj(object patch)
        self.w_obj = np.empty((self.npr, h, w), c)           # object update weight
        self.amp = np.empty((h, w), f)
        self.d = np.empty((h, w), f)
        self.d_flat = self.d.reshape(-1)
        self.r1 = np.empty((h, w), f)
        self.r1_flat = self.r1.reshape(-1)
        self.r2 = np.empty((h, w), f)
        self.ones_flat = np.ones(h * w, f)
        self.eps = f.type(EPS)
        self.tiny = float(np.finfo(f).tiny)
        self._weight_fresh = False
        self._fw, self._bw = fft.bound_pair(self.ex3, self.workers)  # in-place transforms of ex3
        # compiled step (ptycli.engines.fused_pie): one mode, complex64, far field with pre folded
        self.compiled = (bool(compiled) and self.M == 1 and self.transfer is None and self.pre is None
                         and self.ctype == np.complex64)

    # -- helpers --------------------------------------------------------------
    def _abs2_sum(self, modes, out, tmp):
        """``out = sum_modes |modes|^2`` (float)."""
        np.abs(modes[0], out=out)
        np.multiply(out, out, out=out)
        for m in range(1, modes.shape[0]):
            np.abs(modes[m], out=tmp)
            np.multiply(tmp, tmp, out=tmp)
            out += tmp
        return out

    def _check(self, a, n):
        if a.dtype != self.ctype:
            raise TypeError("expected %s arrays, got %s (no silent precision changes)" % (self.ctype, a.dtype))
        if a.shape != (n,) + self.shape:
            raise ValueError("expected shape %s, got %s" % ((n,) + self.shape, a.shape))

    def set_probe(self, probe):
        """Compute the object-update weight ``w_obj`` from the current probe.

        :meth:`step` calls it on its first frame and, while it updates the
        probe, on every frame; set ``_weight_fresh = False`` when the probe
        changed otherwise (the sweep does at its start). The ePIE form of a
        one-mode kernel takes ``max|P|^2`` as ``(max|P|)^2`` in double
        precision (as the probe weight does for one object mode); mode sums
        take the maximum of the summed squares.
        """
        self._check(probe, self.npr)
        self._weight(probe)

    def _weight(self, probe):
        """:meth:`set_probe` without the checks (``probe`` as :meth:`step` takes it)."""
        a = self.object_alpha
        np.conjugate(probe, out=self.w_obj)
        if a >= 1.0 and self.M == 1:  # ePIE form, one mode: (max |P|)^2, no squares
            np.abs(probe[0], out=self.r1)
            m = float(self.r1.max())
            self.w_obj *= self.ctype.type(self.object_step / max(m * m, self.tiny))
            self._weight_fresh = True
            return
        s = self._abs2_sum(probe, self.r1, self.r2)
        smax = float(s.max())
        if a >= 1.0:
            self.w_obj *= self.ctype.type(self.object_step / max(smax, self.tiny))
        else:
            s *= self.ftype.type(1.0 - a)
            s += self.ftype.type(a * smax)
            np.maximum(s, self.tiny, out=s)
            np.divide(self.ftype.type(self.object_step), s, out=s)
            np.multiply(self.w_obj, s, out=self.w_obj)
        self._weight_fresh = True

    def _probe_weight(self, obj, cobj):
        """Scalar (ePIE form) or per-pixel real array (rPIE form) multiplying ``conj(O) dpsi``."""
        b = self.probe_alpha
        if self.nob == 1 and b >= 1.0:
            np.abs(cobj[0], out=self.r1)
            m = float(self.r1.max())
            return self.probe_step / max(m * m, self.tiny)
        s = self._abs2_sum(obj, self.r1, self.r2)
        smax = float(s.max())
        if b >= 1.0:
            return self.probe_step / max(smax, self.tiny)
        s *= self.ftype.type(1.0 - b)
        s += self.ftype.type(b * smax)
        np.maximum(s, self.tiny, out=s)
        np.divide(self.ftype.type(self.probe_step), s, out=s)
        return s

    # -- propagation (in place on ex3) ------------------------------------------
    def _forward(self):
        """Exit waves in ``ex3`` -> detector waves, in place."""
        ex = self.ex_m
        if self.pre is not None:
            np.multiply(ex, self.pre, out=ex)
        self._fw()
        if self.transfer is not None:
            np.multiply(ex, self.transfer, out=ex)
            self._bw()

    def _backward(self):
        """Detector waves in ``ex3`` -> sample-plane waves, in place."""
        ex = self.ex_m
        if self.transfer is not None:
            self._fw()
            np.multiply(ex, self.transfer_c, out=ex)
        self._bw()
        if self.pre_c is not None:
            np.multiply(ex, self.pre_c, out=ex)

    # -- the step ----------------------------------------------------------
    def step(self, probe, obj, sqrt_i, mask=None, intensity=None, update_probe=False, bound=0.0, background=None,
             ratio=None):
        """Update ``obj`` (and ``probe``) in place from one frame.

        Parameters
        ----------
        probe : ndarray (npr, h, w)
            Probe modes (with the far-field pre factor folded in when the
            kernel has ``pre=None``); updated in place when ``update_probe``.
        obj : ndarray (nob, h, w)
            The frame's object patch (a live view into the object buffer).
        sqrt_i : ndarray (h, w), real
            Measured amplitude.
        mask : ndarray (h, w), real 0/1, optional
            Valid pixels; ``None`` when all are valid.
        intensity : ndarray (h, w), optional
            Measured ``I`` for the photon error (skipped when ``None`` or
            when the kernel was made with ``photon_error=False``).
        update_probe : bool
            Whether this frame also updates the probe.
        bound : float
            Power bound of this frame (photons, :func:`relaxed_fraction`): the
            updates are scaled by ``relaxed_fraction(fourier, bound)``, and a
            frame within the bound changes nothing (0: the plain modulus
            constraint).
        background : ndarray (h, w), real, optional
            The scan's incoherent background ``B`` (:mod:`ptycli.core.background`):
            the model amplitude is ``A = sqrt(sum_modes |F|^2 + B)`` and the
            modes take the augmented projection's factor ``f = 1 + keep (sqrt(I) / A - 1)``.
        ratio : ndarray (h, w), float64, optional
            With ``background``: the frame's ``mask f^2`` is added here (the
            background's share of the projection, :mod:`ptycli.engines.background_sums`).

        Returns
        -------
        (fourier, photon, exit_change) : floats
            ``sum mask (|F| - sqrt I)^2``, ``sum mask (|F|^2 - I)^2 / (I + 1)``
            (0 when not computed) and ``sum |psi' - psi|^2`` of this frame.
        """
        if obj.dtype != self.ctype or probe.dtype != self.ctype:
            self._check(obj, self.nob)
            self._check(probe, self.npr)
        if update_probe or not self._weight_fresh:
            self._weight(probe)  # the probe (maybe shared with other kernels) may have changed
        mul = np.multiply
        ex3 = self.ex3
        one_pr, one_ob = self.npr == 1, self.nob == 1
        # 1. exit waves psi_kl = P_k O_l (one mode on either side: a broadcast product)
        if one_pr or one_ob:
            mul(probe, obj, out=ex3)
        else:
            mul(probe[:, None], obj[None, :], out=self.ex)
        self._forward()
        # 2. modulus constraint; ex3 becomes the detector-plane change g (sqrt_i / |g| - 1)
        fourier, photon, change = self._modulus(sqrt_i, mask, intensity, background)
        keep = 1.0
        if bound > 0.0:
            keep = relaxed_fraction(fourier, bound)
            if keep == 0.0:  # within the bound: nothing moves
                if ratio is not None:
                    ratio += 1.0 if mask is None else mask
                return fourier, photon, 0.0
            np.multiply(self.ex_m, self.ctype.type(keep), out=self.ex_m)
            change *= keep * keep
        if ratio is not None:
            self._add_ratio(ratio, keep, mask)
        self._backward()  # ex3 = dpsi
        # 3. probe increment from the object before its update
        if update_probe:
            cobj = self.c_obj
            np.conjugate(obj, out=cobj)
            if one_ob:
                mul(cobj, ex3, out=self.t_pr)
            else:
                mul(cobj[None, :], self.ex, out=self.tmp4)
                np.sum(self.tmp4, axis=1, out=self.t_pr)
            wp = self._probe_weight(obj, cobj)
            if isinstance(wp, float):
                mul(self.t_pr, self.ctype.type(wp), out=self.t_pr)
            else:
                mul(self.t_pr, wp, out=self.t_pr)
        # 4. object update with the probe before its update
        if one_pr:
            mul(self.w_obj, ex3, out=self.t_obj)
        else:
            mul(self.w_obj[:, None], self.ex, out=self.tmp4)
            np.sum(self.tmp4, axis=0, out=self.t_obj)
        np.add(obj, self.t_obj, out=obj)
        # 5. probe update
        if update_probe:
            np.add(probe, self.t_pr, out=probe)
        return fourier, photon, change

    def step_compiled(self, probe, obj, layer, y0, x0, sqrt_i, mask=None, intensity=None, update_probe=False,
                      bound=0.0):
        """:meth:`step` with the kernels of :mod:`ptycli.engines.fused_pie` (one probe and one object mode).

        The frame's object window is ``obj[layer, y0:y0+h, x0:x0+w]`` of the
        object buffer ``obj``; ``probe`` is (1, h, w). Only when
        ``self.compiled`` (complex64, far field with the pre factor folded).
        """
        from . import fused_pie  # numba, imported at first use

        ex3 = self.ex3
        P = probe[0]
        max_p2, max_o2 = fused_pie.exit_wave(ex3[0], P, obj, layer, y0, x0)
        self._fw()
        photon = intensity is not None and self.photon_error
        fourier, photon_sum = fused_pie.modulus(ex3[0], sqrt_i, sqrt_i if mask is None else mask, mask is not None,
                                                intensity if photon else sqrt_i, photon, float(self.eps))
        keep = relaxed_fraction(fourier, bound)  # the power bound scales both steps (dpsi is linear in it)
        if keep == 0.0:
            return fourier, photon_sum, 0.0
        self._bw()
        fused_pie.update(P, obj, layer, y0, x0, ex3[0], max_p2, max_o2, keep * self.object_step,
                         keep * self.probe_step, self.object_alpha, self.probe_alpha, update_probe, self.tiny)
        return fourier, photon_sum, keep * keep * fourier  # exit change: the Fourier error sum (see _modulus)

    def _photon(self, sqrt_i, intensity):
        """``sum mask (I - |F|^2)^2 / (I + 1)`` from ``d = mask (sqrt I - |F|)`` (in ``self.d``, ``self.amp``).

        Uses ``I - |F|^2 = (sqrt I - |F|)(sqrt I + |F|)``, so the mask comes
        with ``d`` (0/1 masks).
        """
        r1, r2 = self.r1, self.r2
        np.add(sqrt_i, self.amp, out=r1)
        r1 *= self.d
        r1 *= r1
        np.add(intensity, 1, out=r2)
        r1 /= r2
        return np.dot(self.r1_flat, self.ones_flat)

    def _modulus(self, sqrt_i, mask, intensity, background=None):
        """Fourier modulus constraint on the detector waves in ``ex3``, in place.

        Leaves ``g * (sqrt_i / |F| - 1)`` (zero on masked pixels) there, and
        ``(sqrt_i - |F|) / |F|`` in ``self.d``; returns the frame's (fourier,
        photon, exit change) sums. The exit change ``sum |psi' - psi|^2``
        needs no extra pass: the propagator is unitary and the modulus
        projection moves every valid detector pixel by exactly
        ``|sqrt(I) - |F||`` (all modes together), so it equals the Fourier
        error sum (with 0/1 masks). With a ``background`` ``|F|`` stands for
        the model amplitude ``A = sqrt(sum_modes |g|^2 + B)``, and the exit
        waves move by ``sum |g|^2 ((sqrt_i - A) / A)^2`` (the rest is the
        background's share).
        """
        amp, d, g = self.amp, self.d, self.ex_m
        coherent = None
        if self.M == 1 and background is None:
            np.abs(g, out=amp)
        else:
            if self.M == 1:
                np.abs(g, out=amp)
                np.multiply(amp, amp, out=amp)
            else:
                self._abs2_sum(g, amp, self.r2)
            if background is not None:
                coherent = self._coherent_buffer()
                np.copyto(coherent, amp)
                amp += background
            np.sqrt(amp, out=amp)
        np.subtract(sqrt_i, amp, out=d)
        if mask is not None:
            d *= mask
        fourier = np.dot(self.d_flat, self.d_flat)
        photon = 0.0
        if intensity is not None and self.photon_error:
            photon = self._photon(sqrt_i, intensity)
        amp += self.eps
        np.divide(d, amp, out=d)
        np.multiply(g, d, out=g)
        if coherent is not None:
            coherent *= d
            coherent *= d
            return fourier, photon, float(np.sum(coherent, dtype=np.float64))
        # sum |dpsi|^2 = sum_det |g (sqrt I / |F| - 1)|^2 (unitary propagation)
        #              = sum mask (sqrt I - |F|)^2: the exit change is the Fourier error sum
        return fourier, photon, fourier

    def _coherent_buffer(self):
        """A frame-sized real buffer for the coherent power (made at the first frame with a background)."""
        buf = getattr(self, "_coherent", None)
        if buf is None:
            buf = self._coherent = np.empty_like(self.amp)
        return buf

    def _add_ratio(self, ratio, keep, mask):
        """``ratio += mask f^2`` with the frame's factor ``f = 1 + keep (sqrt_i - A) / A`` (``self.d`` holds the quotient)."""
        f = self.r1
        np.multiply(self.d, self.amp.dtype.type(keep), out=f)
        f += 1
        f *= f
        if mask is not None:
            f *= mask
        ratio += f
