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
Remainders are quantised to ``1 / resolution`` pixel
(``scans.<label>.subpixel_resolution``, default 4); frames with the same
quantised remainder share one shifted probe (a *class*; at most
``(2K + 1)**2`` with ``K = ceil(resolution / 2)``: 25 at the default). The
engines work on an *expanded probe* with one layer per used class and probe
mode, ``layer = k * modes + mode`` for the ``k``-th used class (the class of
zero shift first); the pods' probe rows in the kernels' addresses
(:meth:`PodGroup.set_subpixel <ptycli.engines.addressing.PodGroup.set_subpixel>`)
point at their class's layer, so every kernel, numpy or compiled, runs
unchanged on it. Probe-shaped sums gathered per layer (the ML probe gradient,
the DM probe-update numerator) return to the probe through the adjoint
``S_s^H = S_{-s}`` (:meth:`SubpixelShifts.collapse`): with unitary FFTs and
unit-modulus ramps, :meth:`~SubpixelShifts.expand` and
:meth:`~SubpixelShifts.collapse` are exactly adjoint, so ML's gradients stay
exact. The class of zero shift is copied, not transformed, and a scan whose
frames all lie on the grid does not use the model at all (``auto``): its
numbers are those of whole-pixel windows, bit for bit.

The quantisation error is uniform in ``[-1/(2 res), 1/(2 res)]`` per axis:
``0.41 / resolution`` pixel rms in 2D (0.41 for rounding to whole pixels).
On the zoo's ``subpixel_spiral`` (120 frames, DM 200 + ML 100, default
probe) the object scored 0.981 with rounded positions, 0.991 at resolution 4
and 0.992 at 8 and 16, against 0.997 for the scan's twin on the grid.

Far field: ptycli's propagator multiplies the exit wave by a sample-plane
phase ``pre`` before the FFT: its linear (centring) part commutes with the
translation; its Fresnel curvature ``exp(i pi r^2 / (lambda z))`` does not,
which moves the pattern by ``s dx / p`` detector pixels (``dx``, ``p``: the
sample and detector pixel sizes): 4e-4 pixel at ``s = 1/2`` in the default
MoonFlower geometry (6.2 keV, 7 m, 172 um, 64 pixels).

Cost
----
Per change of the probe one FFT per mode and one inverse FFT per used class
and mode (one thread: the stacks are small); per collapse one FFT per used
class and mode and one inverse FFT per mode; the kernels read the probe of
a pod from its class's layer. Paired A/B runs (``benchmarks/bench_subpixel.py``,
CPU time, shared 2-core machine): DM 1.18x and ML 1.20x at 120 frames of
64 x 64 (22 classes), DM 1.12x and ML 1.12x at 400 frames of 128 x 128 (25
classes).
"""

import logging

import numpy as np

from . import fft

__all__ = ["SubpixelShifts", "choose", "shift_ramps", "fourier_shift", "MODES"]

log = logging.getLogger("ptycli.core")

#: values of ``scans.<label>.subpixel``
MODES = ("auto", "on", "off")


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
    used : ndarray of int
        The classes some frame uses, in layer order: the class of zero shift
        first (when used), then the others ascending. Class ``used[k]`` has
        the layers ``k * n_rows .. (k + 1) * n_rows - 1``.
    n_active : int
        Layers in use, ``len(used) * n_rows``.
    n_layers : int
        Capacity of the engines' expanded accumulators: every class times
        ``n_rows`` (so that refined positions never need larger buffers);
        layers from ``n_active`` on are unused.
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
        classes = np.unique(self.frame_class)
        moving = classes[classes != self.zero_class]
        self._z = int(len(classes) - len(moving))  # 1 when the class of zero shift is used
        self.used = np.concatenate([[self.zero_class] if self._z else [], moving]).astype(np.int64)
        slot = np.full(self.n_classes, -1, np.int64)
        slot[self.used] = np.arange(len(self.used))
        self.layer[...] = slot[self.frame_class[self._pod_frame]] * self.n_rows + self._pod_row
        self.n_active = len(self.used) * self.n_rows
        iy, ix = np.divmod(moving, self.side)
        # the ramps of the moving classes, (n_moving, 1, H, W) in the model's type
        self._ramps = (self._ry[iy][:, :, None] * self._rx[ix][:, None, :]).astype(self.ctype)[:, None]
        self._cache_key = None

    @property
    def trivial(self):
        """True when every frame is in the class of zero shift."""
        return len(self.used) == self._z

    # -- the operators ----------------------------------------------------------------------
    def expand(self, probe, out=None):
        """The expanded probe: layers ``k * n_rows + r`` hold ``S_{s_k} probe[r]`` for the used classes.

        ``out`` (at least :attr:`n_active` layers; the others are left as
        they are) or a new array of :attr:`n_active` layers.
        """
        probe = np.asarray(probe)
        H, W = self.shape
        if out is None:
            out = fft.empty((self.n_active, H, W), np.result_type(probe.dtype, self.ctype))
        nr, z = self.n_rows, self._z
        if z:
            out[:nr] = probe
        if len(self._ramps):
            fp = fft.empty(probe.shape, out.dtype)
            fp[...] = probe
            fft.fft2_inplace(fp, 1)
            region = out[z * nr:self.n_active]
            np.multiply(fp[None], self._ramps, out=region.reshape((-1, nr, H, W)))
            fft.ifft2_inplace(region, 1)
        return out

    def collapse(self, x, out, real=False):
        """Add the adjoint of :meth:`expand` applied to ``x`` (layers as :meth:`expand`) to ``out`` (n_rows, H, W).

        ``out[r] += sum_k S_{-s_k} x[k * n_rows + r]`` over the used
        classes. With ``real`` the real part of the sum is added.
        """
        H, W = self.shape
        nr, z = self.n_rows, self._z
        if z:
            out += x[:nr] if not real else x[:nr].real
        if not len(self._ramps):
            return out
        stack = fft.empty((self.n_active - z * nr, H, W), self.ctype)
        stack[...] = x[z * nr:self.n_active]
        fft.fft2_inplace(stack, 1)
        s4 = stack.reshape((-1, nr, H, W))
        s4 *= np.conj(self._ramps)
        acc = fft.empty((nr, H, W), self.ctype)
        np.sum(s4, axis=0, out=acc)
        fft.ifft2_inplace(acc, 1)
        out += acc.real if real else acc
        return out

    def sum_layers(self, x, out):
        """Add the used layers of ``x`` to ``out`` (n_rows, H, W) per probe row, unshifted (:meth:`collapse` without the shifts)."""
        H, W = self.shape
        out += np.sum(np.asarray(x)[:self.n_active].reshape((-1, self.n_rows, H, W)), axis=0)
        return out

    def model_probe(self, probe):
        """:meth:`expand` of ``probe`` kept while ``probe`` does not change (the storage's probe)."""
        if self._cache is not None and self._cache_key is not None and self._cache.shape[0] == self.n_active \
                and np.array_equal(self._cache_key, probe):
            return self._cache
        self._cache = self.expand(probe)
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
