"""Sub-pixel scan positions: each frame's probe shifted by the sub-pixel remainder of its position.

Views address whole pixels: the object window of a frame starts at the pixel
``d`` nearest to the exact position ``x = d + s`` (``|s| <= 1/2`` pixel per
axis, ``View.sp``). Without a correction the model uses ``d`` for ``x``; a
scan whose positions lie off the grid is reconstructed with position errors
of up to half a pixel.

Model
-----
With the shift operator ``(S_s P)(r) = P(r - s)``, applied as a Fourier phase
ramp (Bracewell, *The Fourier Transform and its Applications*, shift theorem)::

    S_s P = IFFT( FFT(P) exp(-2 pi i q.s) ),   q = fftfreq (cycles per pixel)

the exit wave of a frame, ``e(r) = P(r) O(r + x)``, satisfies
``e(r - s) = (S_s P)(r) O(r + d)``: the product of the *shifted probe* and
the whole-pixel object window is the true exit wave translated by ``s``. A
translation changes only the phase of the far-field pattern, so the model
predicts the intensities of the frame at its exact position (exactly for a
probe that is band-limited and vanishes at the frame edge: the shift is
circular). Near field a translation moves the pattern too, so the model is
not used there (:func:`choose`).

Shift classes
-------------
Remainders are quantised to ``1 / resolution`` pixel; frames with the same
quantised remainder share one shifted probe (a *class*; at most
``(2K + 1)**2`` with ``K = ceil(resolution / 2)``). The engines work on an
*expanded probe* with one layer per class and probe mode, ``layer = class *
modes + mode``; the pods' probe rows in the compiled kernels' addresses point
at their class's layer, so every kernel runs unchanged on it. Probe-shaped
sums gathered per layer (probe-update numerators, ML probe gradients) return
to the probe through the adjoint ``S_s^H = S_{-s}`` (:meth:`SubpixelShifts.collapse`):
with unitary FFTs and unit-modulus ramps, :meth:`~SubpixelShifts.expand`
and :meth:`~SubpixelShifts.collapse` are exactly adjoint. The class of zero
shift is copied, not transformed: a frame on the grid is computed as before.

Cost: per change of the probe one FFT per mode and one inverse FFT per used
class and mode; per collapse one FFT per used class and mode and one inverse
FFT per mode. The quantisation error is uniform in ``[-1/(2 res), 1/(2 res)]``
per axis: ``0.41 / resolution`` pixel rms in 2D (0.41 for rounding to whole
pixels).
"""

import logging

import numpy as np

from . import fft

__all__ = ["SubpixelShifts", "choose", "auto_resolution", "shift_ramps", "fourier_shift", "MODES"]

log = logging.getLogger("ptycli.core")

#: values of ``scans.<label>.subpixel``
MODES = ("auto", "on", "off")


def auto_resolution(n_frames):
    """Default quantisation (steps per pixel) for a scan of ``n_frames`` frames.

    The cost of the model grows with the number of shift classes, at most
    ``(resolution + 1)**2``: 8 (81 classes, 0.05 pixel rms) from 320 frames,
    else 4 (25 classes, 0.10 pixel rms).
    """
    return 8 if int(n_frames) >= 320 else 4


def shift_ramps(n, shifts):
    """1D phase ramps ``exp(-2 pi i q s)`` of length ``n`` for each shift in ``shifts`` (pixels): (len, n) complex128."""
    q = np.fft.fftfreq(int(n))
    return np.exp(-2j * np.pi * np.outer(np.asarray(shifts, dtype=float), q))


def fourier_shift(x, shift):
    """``x(r - shift)`` of a 2D (or stacked, last two axes) array by a Fourier phase ramp (a new array).

    The reference operator (float64 maths); :class:`SubpixelShifts` applies
    the same ramps in the model's type.
    """
    x = np.asarray(x)
    H, W = x.shape[-2:]
    ry = shift_ramps(H, [shift[0]])[0]
    rx = shift_ramps(W, [shift[1]])[0]
    out = np.fft.ifft2(np.fft.fft2(x) * (ry[:, None] * rx[None, :]))
    return out.astype(np.result_type(x.dtype, np.complex64))


class SubpixelShifts:
    """The sub-pixel model of one pod group (see the module docstring).

    Parameters
    ----------
    n_rows : int
        Layers of the probe storage.
    shape : (int, int)
        Frame shape (H, W).
    ctype : dtype
        The model's complex type.
    resolution : int
        Quantisation steps per pixel.
    shifts : ndarray (n_frames, 2)
        Exact remainders ``pcoord - dcoord`` of the frames (pixels).
    pod_frame, pod_row : ndarray of int (n_pods,)
        Frame index and probe layer of every pod.

    Attributes
    ----------
    layer : ndarray of int64 (n_pods,)
        Expanded-probe layer of every pod (updated in place by :meth:`set_shifts`).
    n_layers : int
        Layers of the expanded probe (all classes times ``n_rows``).
    used : ndarray of int
        Classes some frame uses, sorted.
    shifts : ndarray (n_frames, 2)
        The exact remainders.
    """

    def __init__(self, n_rows, shape, ctype, resolution, shifts, pod_frame, pod_row):
        self.n_rows = int(n_rows)
        self.shape = tuple(int(s) for s in shape)
        self.ctype = np.dtype(ctype)
        self.resolution = max(1, int(resolution))
        self.K = (self.resolution + 1) // 2
        self.side = 2 * self.K + 1
        self.n_classes = self.side * self.side
        self.n_layers = self.n_classes * self.n_rows
        self.zero_class = self.K * self.side + self.K
        k = np.arange(-self.K, self.K + 1) / float(self.resolution)
        H, W = self.shape
        self._ry = shift_ramps(H, k)
        self._rx = shift_ramps(W, k)
        self._pod_frame = np.asarray(pod_frame, dtype=np.int64)
        self._pod_row = np.asarray(pod_row, dtype=np.int64)
        self.layer = np.zeros(len(self._pod_frame), dtype=np.int64)
        self._ramps = {}
        self._cache_key = None
        self._cache = None
        self.set_shifts(shifts)

    # -- classes ----------------------------------------------------------------------------
    def quantise(self, shifts):
        """Class index of each remainder ``(n, 2)`` (pixels; clipped to half a pixel)."""
        s = np.clip(np.asarray(shifts, dtype=float).reshape(-1, 2), -0.5, 0.5)
        k = np.clip(np.rint(s * self.resolution).astype(np.int64), -self.K, self.K) + self.K
        return k[:, 0] * self.side + k[:, 1]

    def class_shift(self, c):
        """The shift (pixels, (2,)) of class ``c``."""
        c = int(c)
        return np.array([c // self.side - self.K, c % self.side - self.K], dtype=float) / self.resolution

    def set_shifts(self, shifts):
        """New exact remainders of all frames ``(n_frames, 2)``; the pods' layers follow (in place)."""
        self.shifts = np.array(shifts, dtype=float).reshape(-1, 2)
        self.frame_class = self.quantise(self.shifts)
        self.layer[...] = self.frame_class[self._pod_frame] * self.n_rows + self._pod_row
        self.used = np.unique(self.frame_class)
        self._moving = self.used[self.used != self.zero_class]
        self._cache_key = None

    @property
    def trivial(self):
        """True when every frame is in the class of zero shift."""
        return len(self._moving) == 0

    def ramp(self, c):
        """The 2D ramp of class ``c`` in the model's type (cached)."""
        r = self._ramps.get(c)
        if r is None:
            iy, ix = divmod(int(c), self.side)
            r = (self._ry[iy][:, None] * self._rx[ix][None, :]).astype(self.ctype)
            self._ramps[c] = r
        return r

    # -- the operators ----------------------------------------------------------------------
    def expand(self, probe, out=None):
        """The expanded probe: layer ``c * n_rows + r`` is ``S_{s_c} probe[r]`` for the used classes ``c``.

        Layers of unused classes are zero (when ``out`` is None) or left as they are.
        """
        probe = np.asarray(probe)
        H, W = self.shape
        if out is None:
            out = np.zeros((self.n_layers, H, W), dtype=np.result_type(probe.dtype, self.ctype))
        o4 = out.reshape(self.n_classes, self.n_rows, H, W)
        if self.zero_class in self.used:
            o4[self.zero_class] = probe
        moving = self._moving
        if len(moving):
            Fp = fft.empty(probe.shape, out.dtype)
            Fp[...] = probe
            fft.fft2_inplace(Fp)
            stack = fft.empty((len(moving), self.n_rows, H, W), out.dtype)
            for j, c in enumerate(moving.tolist()):
                np.multiply(Fp, self.ramp(c), out=stack[j])
            fft.ifft2_inplace(stack.reshape(-1, H, W))
            o4[moving] = stack
        return out

    def collapse(self, x, out, real=False):
        """Add the adjoint of :meth:`expand` applied to ``x`` (n_layers, H, W) to ``out`` (n_rows, H, W).

        ``out[r] += sum_c S_{-s_c} x[c * n_rows + r]`` over the used classes.
        With ``real`` the real part of the sum is added (for real sums such
        as the probe-update denominators).
        """
        H, W = self.shape
        x4 = np.asarray(x).reshape(self.n_classes, self.n_rows, H, W)
        moving = self._moving
        if self.zero_class in self.used:
            out += x4[self.zero_class] if not real else x4[self.zero_class].real
        if not len(moving):
            return out
        stack = fft.empty((len(moving), self.n_rows, H, W), self.ctype)
        stack[...] = x4[moving]
        fft.fft2_inplace(stack.reshape(-1, H, W))
        for j, c in enumerate(moving.tolist()):
            stack[j] *= np.conj(self.ramp(c))
        acc = fft.empty((self.n_rows, H, W), self.ctype)
        np.sum(stack, axis=0, out=acc)
        fft.ifft2_inplace(acc)
        out += acc.real if real else acc
        return out

    def sum_layers(self, x, out):
        """Add the layers of ``x`` (n_layers, H, W) of every used class to ``out`` (n_rows, H, W), unshifted.

        For the probe-update denominators ``sum |O|^2``: shifted back they
        ring below zero where nothing is lit, which a division cannot take.
        """
        H, W = self.shape
        x4 = np.asarray(x).reshape(self.n_classes, self.n_rows, H, W)
        for c in self.used.tolist():
            out += x4[c]
        return out

    def model_probe(self, probe):
        """:meth:`expand` of ``probe`` kept while ``probe`` does not change (the storage's probe)."""
        if self._cache is not None and self._cache_key is not None and np.array_equal(self._cache_key, probe):
            return self._cache
        if self._cache is None or self._cache.dtype != np.result_type(probe.dtype, self.ctype):
            self._cache = np.zeros((self.n_layers,) + self.shape, dtype=np.result_type(probe.dtype, self.ctype))
        self.expand(probe, out=self._cache)
        self._cache_key = np.array(probe, copy=True)
        return self._cache


def choose(mode, rms, off_grid, resolution, farfield):
    """Whether a scan uses the sub-pixel model, and why.

    Parameters
    ----------
    mode : {'auto', 'on', 'off'}
        ``scans.<label>.subpixel``.
    rms : float
        Root mean square of the frames' sub-pixel remainders (pixels, 2D).
    off_grid : bool
        Whether some frame's remainder is at least half a quantisation step.
    resolution : int
        Quantisation steps per pixel.
    farfield : bool
        Far-field propagation (the model is used only there).

    Returns
    -------
    dict
        ``on`` (bool), ``mode``, ``reason`` (one line), ``resolution``,
        ``rms_remainder`` (pixels).
    """
    res = max(1, int(resolution))
    if mode == "off":
        on, reason = False, "off (set)"
    elif not farfield:
        on, reason = False, "off (near field: a shift of the exit wave moves the pattern; not modelled)"
    elif mode == "on":
        on, reason = True, "on (set; rms remainder %.3g px)" % rms
    elif off_grid:
        on, reason = True, "on (auto: positions off the grid, rms remainder %.3g px)" % rms
    else:
        on, reason = False, "off (auto: positions on the grid to 1/%d px)" % res
    return dict(on=on, mode=str(mode), reason=reason, resolution=res, rms_remainder=float(rms))
