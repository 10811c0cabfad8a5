"""The ePIE/rPIE frame step: one frame's exit wave, modulus constraint and object/probe updates, in place.

:class:`FrameKernel` computes the step of :mod:`ptycli.engines.stochastic`
(the formulas are in its docstring) for one frame shape, mode count and
propagator, with buffers of its own: :meth:`FrameKernel.step` in numpy (a
special path for one probe and one object mode with the fewest numpy calls),
:meth:`FrameKernel.step_compiled` with the kernels of
:mod:`ptycli.engines.fused_pie` (one probe and one object mode, complex64,
far field with the phase factor folded into the probe). The tests check it
against the published formulas written plainly (``tests/pie_reference.py``).

Performance
-----------
The per-frame work is dominated by two FFTs; the rest is a handful of passes
over the frame with preallocated buffers and in-place ufuncs
(:class:`FrameKernel`; a special path for one probe and one object mode with
the fewest numpy calls). In the far field the sample-plane phase factor of the
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

__all__ = ["FrameKernel", "EPS", "THREADED_FFT_PIXELS"]

#: Added to model amplitudes before dividing (single precision safe).
EPS = 1e-10

#: Frames (pixels x modes) at or above this size use several FFT threads.
THREADED_FFT_PIXELS = 512 * 512


class FrameKernel:
    """In-place mixed-state ePIE/rPIE step on one frame, with its own buffers.

    One kernel serves all frames of one frame shape, mode count and
    propagator. It computes the published step (to rounding), but writes the
    object patch and the probe in place and allocates nothing per frame.

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
        self.ex_flat = self.ex.reshape(-1)
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
        # single-mode fast path: 2D views of the buffers, the raw FFT when usable
        self._single = self.M == 1 and self.transfer is None
        self.w_obj2 = self.w_obj[0]
        self.t_obj2 = self.t_obj[0]
        self.t_pr2 = self.t_pr[0]
        self.c_obj2 = self.c_obj[0]
        self._fw, self._bw = fft.bound_pair(self.ex3, self.workers)  # in-place transforms of ex3
        # compiled single-mode step (ptycli.engines.fused_pie): complex64, far field with pre folded
        self.compiled = bool(compiled) and self._single and self.pre is None and self.ctype == np.complex64

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
        changed otherwise (the sweep does at its start).
        """
        self._check(probe, self.npr)
        s = self._abs2_sum(probe, self.r1, self.r2)
        smax = float(s.max())
        a = self.object_alpha
        np.conjugate(probe, out=self.w_obj)
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

    # -- propagation -------------------------------------------------------
    def _forward(self, ex):
        """Detector waves of the exit stack ``ex`` (M, h, w), in place where possible."""
        if self.pre is not None:
            np.multiply(ex, self.pre, out=ex)
        g = fft.fft2_inplace(ex, self.workers)
        if self.transfer is not None:
            g *= self.transfer
            g = fft.ifft2_inplace(g, self.workers)
        return g

    def _backward(self, g):
        """Sample-plane waves of the detector stack ``g``, in place where possible."""
        if self.transfer is not None:
            g = fft.fft2_inplace(g, self.workers)
            g *= self.transfer_c
        g = fft.ifft2_inplace(g, self.workers)
        if self.pre_c is not None:
            np.multiply(g, self.pre_c, out=g)
        return g

    # -- the step ----------------------------------------------------------
    def step(self, probe, obj, sqrt_i, mask=None, intensity=None, update_probe=False):
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

        Returns
        -------
        (fourier, photon, exit_change) : floats
            ``sum mask (|F| - sqrt I)^2``, ``sum mask (|F|^2 - I)^2 / (I + 1)``
            (0 when not computed) and ``sum |psi' - psi|^2`` of this frame.
        """
        if obj.dtype != self.ctype or probe.dtype != self.ctype:
            self._check(obj, self.nob)
            self._check(probe, self.npr)
        if self._single:
            return self._step_single(probe[0], obj[0], sqrt_i, mask, intensity, update_probe)
        if update_probe or not self._weight_fresh:
            self.set_probe(probe)  # the probe (maybe shared with other kernels) may have changed
        ex = self.ex
        # 1. exit waves psi_kl = P_k O_l
        if self.M == 1:
            np.multiply(probe[0], obj[0], out=self.ex2)
        else:
            np.multiply(probe[:, None], obj[None, :], out=ex)
        g = self._forward(self.ex3)
        # 2. modulus constraint; g becomes the detector-plane change g (sqrt_i / |g| - 1)
        fourier, photon, change = self._modulus(g, sqrt_i, mask, intensity)
        dpsi = self._backward(g).reshape(ex.shape)  # (npr, nob, h, w)
        # 3. probe increment from the object before its update
        if update_probe:
            cobj = self.c_obj
            np.conjugate(obj, out=cobj)
            if self.nob == 1:
                np.multiply(cobj[0], dpsi[:, 0], out=self.t_pr)
            else:
                np.multiply(cobj[None, :], dpsi, out=self.tmp4)
                np.sum(self.tmp4, axis=1, out=self.t_pr)
            wp = self._probe_weight(obj, cobj)
            if isinstance(wp, float):
                self.t_pr *= self.ctype.type(wp)
            else:
                np.multiply(self.t_pr, wp, out=self.t_pr)
        # 4. object update with the probe before its update
        wo = self.w_obj
        if self.npr == 1:
            np.multiply(wo[0], dpsi[0], out=self.t_obj)
        else:
            np.multiply(wo[:, None], dpsi, out=self.tmp4)
            np.sum(self.tmp4, axis=0, out=self.t_obj)
        np.add(obj, self.t_obj, out=obj)
        # 5. probe update
        if update_probe:
            np.add(probe, self.t_pr, out=probe)
        return fourier, photon, change

    def _step_single(self, P, O, sqrt_i, mask, intensity, update_probe):
        """:meth:`step` for one probe and one object mode (2D ``P``, ``O``), fewest calls."""
        mul = np.multiply
        ex2, ex3 = self.ex2, self.ex3
        # object weight from the current probe
        if update_probe or not self._weight_fresh:
            if self.object_alpha >= 1.0:
                r = self.r1
                np.abs(P, out=r)
                m = float(r.max())
                np.conjugate(P, out=self.w_obj2)
                mul(self.w_obj2, self.ctype.type(self.object_step / max(m * m, self.tiny)), out=self.w_obj2)
                self._weight_fresh = True
            else:
                self.set_probe(P[None])
        # exit wave, forward transform
        mul(P, O, out=ex2)
        pre = self.pre
        if pre is not None:
            mul(ex2, pre, out=ex2)
        self._fw()
        # modulus constraint
        amp, d = self.amp, self.d
        np.abs(ex2, out=amp)
        np.subtract(sqrt_i, amp, out=d)
        if mask is not None:
            mul(d, mask, out=d)
        dflat = self.d_flat
        fourier = np.dot(dflat, dflat)
        photon = 0.0
        if intensity is not None and self.photon_error:
            photon = self._photon(sqrt_i, intensity)
        np.add(amp, self.eps, out=amp)
        np.divide(d, amp, out=d)
        mul(ex2, d, out=ex2)
        # back to the sample plane: dpsi
        self._bw()
        if pre is not None:
            mul(ex2, self.pre_c, out=ex2)
        if update_probe:
            cobj = self.c_obj2
            np.conjugate(O, out=cobj)
            t_pr = self.t_pr2
            mul(cobj, ex2, out=t_pr)
            if self.probe_alpha >= 1.0:  # ePIE form: scalar 1 / max|O|^2
                r = self.r1
                np.abs(cobj, out=r)
                m = float(r.max())
                mul(t_pr, self.ctype.type(self.probe_step / max(m * m, self.tiny)), out=t_pr)
            else:
                mul(t_pr, self._probe_weight(O[None], cobj[None]), out=t_pr)
        t_obj = self.t_obj2
        mul(self.w_obj2, ex2, out=t_obj)
        np.add(O, t_obj, out=O)
        if update_probe:
            np.add(P, self.t_pr2, out=P)
        return fourier, photon, fourier  # exit change == Fourier error sum (see _modulus)

    def step_compiled(self, probe, obj, layer, y0, x0, sqrt_i, mask=None, intensity=None, update_probe=False):
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
        self._bw()
        fused_pie.update(P, obj, layer, y0, x0, ex3[0], max_p2, max_o2, self.object_step, self.probe_step,
                         self.object_alpha, self.probe_alpha, update_probe, self.tiny)
        return fourier, photon_sum, fourier  # exit change == Fourier error sum (see _modulus)

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

    def _modulus(self, g, sqrt_i, mask, intensity):
        """Fourier modulus constraint on detector waves ``g`` (M, h, w), in place.

        Leaves ``g * (sqrt_i / |F| - 1)`` (zero on masked pixels) in ``g``;
        returns the frame's (fourier, photon, exit change) sums. The exit
        change ``sum |psi' - psi|^2`` needs no extra pass: the propagator is
        unitary and the modulus projection moves every valid detector pixel
        by exactly ``|sqrt(I) - |F||`` (all modes together), so it equals the
        Fourier error sum (with 0/1 masks).
        """
        amp, d = self.amp, self.d
        if self.M == 1:
            np.abs(g[0], out=amp)
        else:
            self._abs2_sum(g, amp, self.r2)
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
        # sum |dpsi|^2 = sum_det |g (sqrt I / |F| - 1)|^2 (unitary propagation)
        #              = sum mask (sqrt I - |F|)^2: the exit change is the Fourier error sum
        return fourier, photon, fourier
