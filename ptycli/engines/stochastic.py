"""Stochastic (sequential) engines: ePIE and rPIE.

Both engines visit the diffraction frames one at a time in a random order and
update the object and the probe right after each frame, so that the next
frame already sees the improved estimates. They differ only in the weights of
the two updates.

Algorithm (one frame, one probe and one object mode)
----------------------------------------------------
With the probe ``P``, the object patch ``O`` under this frame's view, the
propagator ``F`` and the measured intensity ``I``:

1. exit wave ``psi = P O`` and its far-field (or near-field) image ``F[psi]``;
2. Fourier modulus constraint ``psi' = F^-1[ F[psi] sqrt(I) / |F[psi]| ]``
   on the valid (mask) pixels; masked pixels keep their model value;
3. with ``dpsi = psi' - psi``::

       O <- O + object_step * conj(P) dpsi / ((1 - a) |P|^2 + a max|P|^2)
       P <- P + probe_step  * conj(O) dpsi / ((1 - b) |O|^2 + b max|O|^2)

   both right-hand sides evaluated with the estimates from before this frame
   (``max`` over the frame's pixels; ``|O|`` of this frame's object patch).

* **ePIE** (Maiden & Rodenburg, Ultramicroscopy 109, 1256 (2009)) is the case
  ``a = b = 1``: the object moves by ``object_step conj(P)/max|P|^2 dpsi`` and
  the probe by ``probe_step conj(O)/max|O|^2 dpsi``. The published step
  sizes ``alpha`` (object) and ``beta`` (probe) are ``object_step`` and
  ``probe_step`` here (both 1.0 by default, as in the paper).
* **rPIE** (Maiden, Johnson & Li, Optica 4, 736 (2017)) regularises the
  object denominator with ``a = alpha`` (default 0.05; small values give
  large steps where the probe is weak, 1 gives the ePIE update). The probe
  update has the same form with its own constant ``b = probe_alpha``
  (default 1.0, the ePIE probe update; the paper's ``beta``). The paper's
  updates have unit step; ``object_step``/``probe_step`` scale them
  (default 1.0).

Mixed states (Thibault & Menzel, Nature 494, 68 (2013)): with probe modes
``P_k`` and object modes ``O_l`` a frame has exit waves ``psi_kl = P_k O_l``
whose intensities add incoherently, ``I_model = sum_kl |F[psi_kl]|^2``. All
modes of a frame share one modulus correction ``sqrt(I) / sqrt(I_model)``;
the updates sum over the other index and use the incoherent sums in the
denominators::

    O_l <- O_l + object_step sum_k conj(P_k) dpsi_kl / ((1-a) sum_k|P_k|^2 + a max sum_k|P_k|^2)
    P_k <- P_k + probe_step  sum_l conj(O_l) dpsi_kl / ((1-b) sum_l|O_l|^2 + b max sum_l|O_l|^2)

After every iteration (one pass over all frames) in which the probe was
updated, the probe support and the recentring of the common engine parameters
(``probe_support``, ``probe_center_tol``) are applied and the probe modes are
made orthogonal and ordered by power (``Engine.orthogonalize_probe``, built on
:func:`ptycli.core.illumination.orthogonalize_modes`); then the object
amplitude is clipped (``clip_object``). Probe updates begin at this engine's
iteration ``probe_update_start`` (0-based); before it only the object moves
and the probe stays bit-for-bit unchanged.

Masks are 0/1 (masked pixels keep the model's amplitude). The error metrics
of an iteration are summed over the frames as each frame is visited, i.e.
with the model just before that frame's update (see ``ptycli.engines.base``
for the normalisation). ePIE keeps no exit waves between frames; when the
engine finishes, the exit waves are set to ``probe * object`` for the engines
that follow.

Visiting order
--------------
Each iteration visits the frames in a fresh random permutation drawn from a
``numpy.random.Generator`` seeded with ``(seed, MPI rank)``. It is the
engine's ``rng``, whose state :meth:`Engine.state_dict` saves and
:meth:`Engine.load_state` restores, so a resumed run continues with the same
sequence. The same seed gives the same result; a different seed a different
order (``PIEBase.last_order`` holds the last one).

MPI
---
ePIE is sequential over frames and cannot be split exactly. With more than
one MPI rank (``ptycli.parallel.size > 1``) the engines run
**block-parallel ePIE/rPIE**: each rank sweeps its own frames, in its own
random order, against its own copy of probe and object (all ranks start from
rank 0's probe and object, and every iteration starts from identical copies);
at the end of the iteration the copies are merged with
:func:`ptycli.parallel.allreduce`:

* object: per pixel, ``O = sum_r w_r O_r / sum_r w_r`` with the weight
  ``w_r = sum over rank r's frames covering the pixel of
  (sum_k |P_k|^2 + 1e-4 max sum_k |P_k|^2)`` (probe at the start of the
  iteration; the small floor makes every pixel a rank may have changed
  count). Pixels under no rank's frames keep their (identical) value;
* probe (only in iterations that update it): ``P = sum_r n_r P_r / sum_r n_r``
  with ``n_r`` the rank's number of frames.

All ranks end every iteration with the same probe and object. With one
process this is exactly the sequential algorithm above; with several ranks it
is a different algorithm (each rank's sweep sees only its own frames' updates,
so it needs more iterations for the same error), never a silently different
copy of the single-process result.

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

Defaults
--------
``rPIE.alpha = 0.05``: converged on noiseless and Poisson-noisy MoonFlower
data (1e6 photons per frame); 0.01 stalled from the default probe guess.
``rPIE.probe_alpha = 1`` (the ePIE probe update): 0.05 fitted noiseless
MoonFlower data better, but diverged on Poisson-noisy data (1e6 and 1e4
photons per frame) where 1.0 converged.

Public helpers
--------------
:func:`pie_weights`, :func:`modulus_constraint`, :func:`pie_step`: plain,
readable array functions of the published formulas (the reference the fast
kernel is tested against); :class:`FrameKernel`: the in-place per-frame
step; :func:`visiting_order`.
"""

import logging

import numpy as np

from .. import parallel
from ..core import fft
from .._lazy import lazy_module
from ..params.declare import Parameter
from .base import Engine, register

#: the compiled kernels, imported (with numba) at first use
fused = lazy_module("ptycli.engines.fused")

__all__ = [
    "EPIE",
    "RPIE",
    "PIEBase",
    "PIESweep",
    "pie_weights",
    "modulus_constraint",
    "pie_step",
    "FrameKernel",
    "visiting_order",
]

#: Added to model amplitudes before dividing (single precision safe).
EPS = 1e-10

#: Frames (pixels x modes) at or above this size use several FFT threads.
THREADED_FFT_PIXELS = 512 * 512


# --------------------------------------------------------------------------
# reference formulas (plain numpy; clear rather than fast)
# --------------------------------------------------------------------------

def pie_weights(other, step, alpha):
    """Update weight of a PIE object (or probe) update.

    Parameters
    ----------
    other : ndarray (modes, rows, cols)
        The *other* factor of the exit wave: the probe modes for the object
        update, the object patch modes for the probe update.
    step : float
        Step size (``object_step`` or ``probe_step``).
    alpha : float
        Regularisation in [0, 1]: 1 gives ePIE (``1 / max sum|other|^2``),
        smaller values the rPIE denominator.

    Returns
    -------
    ndarray (modes, rows, cols)
        ``step * conj(other) / ((1 - alpha) s + alpha max s)``, ``s = sum_modes |other|^2``.
    """
    s = np.sum(np.abs(other) ** 2, axis=0)
    denom = (1.0 - alpha) * s + alpha * s.max()
    denom = np.maximum(denom, np.finfo(s.dtype).tiny)
    return (step * np.conj(other) / denom).astype(other.dtype)


def modulus_constraint(waves, sqrt_i, mask=None, eps=EPS):
    """Replace the modulus of far-field waves by the measured one.

    Parameters
    ----------
    waves : ndarray (modes, rows, cols)
        Detector-plane waves of one frame (all modes).
    sqrt_i : ndarray (rows, cols)
        Measured amplitude ``sqrt(I)``.
    mask : ndarray (rows, cols), optional
        1 for valid pixels, 0 for masked ones (kept unchanged).

    Returns
    -------
    new_waves : ndarray
        ``waves * sqrt_i / sqrt(sum_modes |waves|^2)`` on valid pixels.
    fourier_error : float
        ``sum mask (|F| - sqrt_i)^2`` with ``|F| = sqrt(sum_modes |waves|^2)``.
    """
    amp = np.sqrt(np.sum(np.abs(waves) ** 2, axis=0))
    m = np.ones_like(amp) if mask is None else (np.asarray(mask) > 0).astype(amp.dtype)
    factor = m * sqrt_i / (amp + eps) + (1 - m)
    err = float(np.sum(m * (amp - sqrt_i) ** 2, dtype=np.float64))
    return (waves * factor).astype(waves.dtype), err


def pie_step(probe, obj, sqrt_i, fw, bw, mask=None, object_step=1.0, probe_step=1.0,
             object_alpha=1.0, probe_alpha=1.0, update_probe=True):
    """One frame of mixed-state ePIE/rPIE, written as in the papers.

    Parameters
    ----------
    probe : ndarray (npr, rows, cols)
        Probe modes.
    obj : ndarray (nob, rows, cols)
        Object modes under this frame's view.
    sqrt_i : ndarray (rows, cols)
        Measured amplitude.
    fw, bw : callable
        Propagation to the detector and back (stacks of frames).
    mask : ndarray, optional
        Valid-pixel mask.
    object_step, probe_step, object_alpha, probe_alpha : float
        See the module docstring (ePIE: both alphas 1).
    update_probe : bool
        Whether to update the probe.

    Returns
    -------
    new_probe, new_obj : ndarray
        Updated copies.
    errors : dict
        ``fourier`` (``sum mask (|F| - sqrt I)^2``), ``photon``
        (``sum mask (|F|^2 - I)^2 / (I + 1)`` with ``I = sqrt_i^2``),
        ``exit_change`` (``sum |dpsi|^2``).
    """
    npr, nob = probe.shape[0], obj.shape[0]
    psi = probe[:, None] * obj[None, :]  # (npr, nob, rows, cols)
    far = fw(psi.reshape((npr * nob,) + psi.shape[-2:]))
    new_far, ferr = modulus_constraint(far, sqrt_i, mask)
    dpsi = bw(new_far).reshape(psi.shape) - psi
    wo = pie_weights(probe, object_step, object_alpha)  # (npr, r, c)
    new_obj = obj + np.sum(wo[:, None] * dpsi, axis=0)
    new_probe = probe.copy()
    if update_probe:
        wp = pie_weights(obj, probe_step, probe_alpha)  # (nob, r, c)
        new_probe = probe + np.sum(wp[None, :] * dpsi, axis=1)
    change = float(np.sum(np.abs(dpsi) ** 2, dtype=np.float64))
    amp2 = np.sum(np.abs(far) ** 2, axis=0)
    intensity = np.asarray(sqrt_i, dtype=np.float64) ** 2
    m = 1.0 if mask is None else (np.asarray(mask) > 0)
    photon = float(np.sum(m * (amp2 - intensity) ** 2 / (intensity + 1)))
    return (new_probe.astype(probe.dtype), new_obj.astype(obj.dtype),
            dict(fourier=ferr, photon=photon, exit_change=change))


def visiting_order(rng, n):
    """A random permutation of ``range(n)`` drawn from generator ``rng``."""
    return rng.permutation(n)


# --------------------------------------------------------------------------
# the fast per-frame kernel
# --------------------------------------------------------------------------

class FrameKernel:
    """In-place mixed-state ePIE/rPIE step on one frame, with its own buffers.

    One kernel serves all frames of one frame shape, mode count and
    propagator. It computes :func:`pie_step` (to rounding), but writes the
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
        from . import fused_pie

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


# --------------------------------------------------------------------------
# the sweep over all frames of an address book
# --------------------------------------------------------------------------

class _GroupPlan:
    """Per pod group: its kernel, probe/object rows and the frame arrays (live views)."""

    def __init__(self, group, kernel, pr_rows, ob_rows):
        self.group = group
        self.kernel = kernel
        self.pr0, self.pr1 = pr_rows
        self.ob0, self.ob1 = ob_rows
        self.fmag = group.fmag()
        self.intensity = group.diff_frames()
        self.mask = group.mask_frames()  # None when all pixels are valid
        self.obj_data = group.obj.data   # the live object buffer (compiled kernels address windows in it)
        self.frame_y = group.frame_y     # live: position refinement may move frames
        self.frame_x = group.frame_x

    def object_views(self):
        """Live object windows (nob, H, W) of every frame of the group."""
        data = self.group.obj.data
        H, W = self.group.shape
        o0, o1 = self.ob0, self.ob1
        return [data[o0:o1, y:y + H, x:x + W]
                for y, x in zip(self.group.frame_y.tolist(), self.group.frame_x.tolist())]


def _mode_rows(group):
    """Probe and object row ranges of a regular group in probe-major mode order, or raise."""
    from ..errors import EngineError

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
                 photon_error=True, compiled=False):
        self.book = book
        self.plans = []
        self.fold = {}
        pres = {}
        for g in book.groups:
            if g.probe.data.dtype != g.ctype or g.obj.data.dtype != g.ctype:
                raise TypeError("probe/object buffers are %s/%s, the model type is %s"
                                % (g.probe.data.dtype, g.obj.data.dtype, g.ctype))
            pres.setdefault(g.probe.ID, []).append(g.factors.pre if g.farfield else None)
        for sid, lst in pres.items():
            first = lst[0]
            same = first is not None and all(p is not None and np.array_equal(p, first) for p in lst)
            self.fold[sid] = first if same else None
        self._fold_c = {sid: np.conj(f) for sid, f in self.fold.items() if f is not None}
        self._work = {}
        for g in book.groups:
            pr_rows, ob_rows = _mode_rows(g)
            folded = self.fold[g.probe.ID] is not None
            kernel = FrameKernel(
                g.shape, pr_rows[1] - pr_rows[0], ob_rows[1] - ob_rows[0], g.ctype,
                pre=None if (folded or not g.farfield) else g.factors.pre,
                transfer=None if g.farfield else g.factors.pre,
                object_step=object_step, probe_step=probe_step, object_alpha=object_alpha,
                probe_alpha=probe_alpha, photon_error=photon_error, compiled=compiled)
            self.plans.append(_GroupPlan(g, kernel, pr_rows, ob_rows))
        n = [p.group.n_frames for p in self.plans]
        self.n_frames = int(sum(n))
        self._gidx = np.repeat(np.arange(len(n), dtype=np.int64), n)
        self._fidx = np.concatenate([np.arange(k, dtype=np.int64) for k in n]) if n else np.zeros(0, np.int64)
        self.valid = float(sum(p.group.n_frames * float(np.prod(p.group.shape)) if p.mask is None
                               else float(np.sum(p.mask, dtype=np.float64)) for p in self.plans))

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

    def sweep(self, order, update_probe):
        """Visit the frames in ``order`` (indices into all local frames), updating in place.

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
        for gi, f in zip(self._gidx[order].tolist(), self._fidx[order].tolist()):
            p = plans[gi]
            if p.kernel.compiled:
                fe, pe, ch = p.kernel.step_compiled(probes[gi], p.obj_data, p.ob0, p.frame_y[f], p.frame_x[f],
                                                    p.fmag[f], None if p.mask is None else p.mask[f],
                                                    p.intensity[f], update_probe)
            else:
                fe, pe, ch = p.kernel.step(probes[gi], views[gi][f], p.fmag[f],
                                           None if p.mask is None else p.mask[f], p.intensity[f],
                                           update_probe)
            fourier += fe
            photon += pe
            change += ch
        if update_probe:
            self.unfold_probes(work)
        return dict(fourier=float(fourier), photon=float(photon), exit_change=float(change),
                    frames=int(len(order)))


# --------------------------------------------------------------------------
# engines
# --------------------------------------------------------------------------

_STEP_PARAMS = [
    Parameter("object_step", 1.0, "float",
              "object step size (ePIE's alpha): the object moves by object_step * conj(P) dpsi / "
              "max|P|^2 (rPIE: over the regularised denominator)", low=0.0, high=2.0),
    Parameter("probe_step", 1.0, "float",
              "probe step size (ePIE's beta): the probe moves by probe_step * conj(O) dpsi / max|O|^2 "
              "(rPIE: over the regularised denominator)", low=0.0, high=2.0),
    Parameter("seed", 0, "int", "seed of the random frame visiting order (same seed, same result)", low=0),
]


class PIEBase(Engine):
    """Shared machinery of ePIE and rPIE (see the module docstring).

    Subclasses set :meth:`alphas` (the denominators' regularisation; 1, 1
    for ePIE).

    Attributes
    ----------
    sweeper : PIESweep
        Per-frame kernels and frame arrays (after :meth:`initialize`).
    rng : numpy.random.Generator
        Visiting-order generator, seeded with ``(seed, MPI rank)``; its
        state is saved by :meth:`~ptycli.engines.base.Engine.state_dict`.
    last_order : ndarray
        Visiting order of the last iteration (local frame indices).
    """

    NAME = "PIE"
    PARAMS = Engine.PARAMS.extended("PIE", _STEP_PARAMS, doc="stochastic PIE engine")

    def __init__(self, ptycho, pars=None, label=None):
        super().__init__(ptycho, pars, label)
        self.rng = np.random.default_rng([int(self.p.seed), int(parallel.rank)])
        self.sweeper = None
        self.last_order = None

    def alphas(self):
        """``(object_alpha, probe_alpha)`` regularisation of the update denominators."""
        return 1.0, 1.0

    def engine_initialize(self):
        if parallel.size > 1:
            # every rank must start from the same probe and object
            for S in self._shared_storages():
                parallel.bcast_array(S.data, root=0)
            if parallel.master:
                logging.getLogger("ptycli").info(
                    "%s on %d MPI processes: block-parallel variant (each process sweeps its own frames, "
                    "then object and probe are averaged); it converges more slowly than one process",
                    self.NAME, parallel.size)
        for S in list(self.book.probe_storages.values()) + list(self.book.obj_storages.values()):
            if S.data.dtype != self.ctype:
                raise TypeError("storage %s is %s, the model type %s" % (S.ID, S.data.dtype, self.ctype))
        oa, pa = self.alphas()
        n_pixels = sum(g.n_pods * g.shape[0] * g.shape[1] for g in self.book.groups)
        self._compiled = fused.use_compiled(self.p.kernels, n_pixels, self.ctype == np.complex64)
        self.sweeper = PIESweep(self.book, object_step=self.p.object_step, probe_step=self.p.probe_step,
                                object_alpha=oa, probe_alpha=pa, compiled=self._compiled)

    def engine_iterate(self, n):
        out = []
        for _ in range(int(n)):
            update_probe = self.probe_update_due()
            order = self.rng.permutation(self.sweeper.n_frames)
            self.last_order = order
            weights = self._merge_weights() if parallel.size > 1 else None
            sums = self.sweeper.sweep(order, update_probe)
            if weights is not None:
                self._merge(weights, update_probe)
            if update_probe:
                # support and recentring; the modes are orthogonalised without touching the
                # exit waves (ePIE keeps none between iterations; finalize() rebuilds them)
                self.apply_probe_constraints(orthogonalize=False)
                self.orthogonalize_probe(rotate_exit=False)
            self.apply_object_constraints()
            acc = self.new_error_sums()
            acc.add(fourier=sums["fourier"], photon=sums["photon"], valid=self.sweeper.valid,
                    exit_change=sums["exit_change"])
            out.append(acc.reduce())
        return out

    def engine_finalize(self):
        self.reset_exit()  # exit waves = probe * object, for engines that follow
        self.sweeper = None

    # -- block-parallel merge (MPI) ---------------------------------------------
    def _shared_storages(self):
        """Probe and object storages of the model in an order every rank agrees on.

        Taken from the containers, not the address book, so that a rank
        without frames still joins every collective call.
        """
        P = self.ptycho
        return [P.probe.S[k] for k in sorted(P.probe.S)] + [P.obj.S[k] for k in sorted(P.obj.S)]

    def _merge_weights(self):
        """Per object storage: this rank's illumination weights (start of the iteration).

        ``sum over the rank's frames of (sum_k |P_k|^2 + eps)`` with ``eps =
        1e-4 max sum_k |P_k|^2``: the floor makes every pixel under one of the
        rank's windows count (the probe may grow there during the sweep), so
        all ranks end with the same object.
        """
        w = {}
        for g in self.book.groups:
            acc = w.get(g.obj.ID)
            if acc is None:
                acc = w[g.obj.ID] = np.zeros(g.obj.data.shape, dtype=self.ftype)
            p2 = (np.abs(g.probe.data) ** 2).astype(self.ftype)
            p2 += self.ftype.type(1e-4 * float(p2.sum(axis=0).max()) / p2.shape[0])
            g.scatter_object_const(acc, p2)
        return w

    def _merge(self, weights, update_probe):
        """Illumination-weighted object average and frame-weighted probe average over the ranks."""
        P = self.ptycho
        for sid in sorted(P.obj.S):
            S = P.obj.S[sid]
            w = weights.get(sid)
            if w is None:
                w = np.zeros(S.data.shape, dtype=self.ftype)
            num = S.data * w
            parallel.allreduce(num)
            parallel.allreduce(w)
            np.divide(num, w, out=S.data, where=w > 0)  # pixels no rank touched keep their value
        if update_probe:
            counts = {}
            for g in self.book.groups:
                counts[g.probe.ID] = counts.get(g.probe.ID, 0.0) + g.n_frames
            for sid in sorted(P.probe.S):
                S = P.probe.S[sid]
                c = np.array([float(counts.get(sid, 0.0))])
                S.data *= self.ftype.type(c[0])
                parallel.allreduce(S.data)
                parallel.allreduce(c)
                if c[0] > 0:
                    S.data /= self.ftype.type(c[0])

    # -- resume ---------------------------------------------------------------
    def engine_state(self):
        return {} if self.last_order is None else {"last_order": self.last_order}


@register
class EPIE(PIEBase):
    """ePIE (Maiden & Rodenburg 2009) with mixed states; see the module docstring."""

    NAME = "ePIE"
    PARAMS = Engine.PARAMS.extended("ePIE", _STEP_PARAMS, doc="extended ptychographic iterative engine")


@register
class RPIE(PIEBase):
    """rPIE (Maiden, Johnson & Li 2017) with mixed states; see the module docstring."""

    NAME = "rPIE"
    PARAMS = Engine.PARAMS.extended("rPIE", _STEP_PARAMS + [
        Parameter("alpha", 0.05, "float",
                  "object regularisation: denominator (1 - alpha) |P|^2 + alpha max|P|^2 (1: ePIE)",
                  low=0.0, high=1.0),
        Parameter("probe_alpha", 1.0, "float",
                  "probe regularisation: denominator (1 - probe_alpha) |O|^2 + probe_alpha max|O|^2 "
                  "(1: the ePIE probe update)", low=0.0, high=1.0),
    ], doc="regularised ptychographic iterative engine")

    def alphas(self):
        return float(self.p.alpha), float(self.p.probe_alpha)
