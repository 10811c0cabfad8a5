"""The multislice (3PIE) frame step: a thick object as slices, near-field propagation between them.

A sample thicker than the depth of field of the reconstruction (about
``2 dx**2 / lam`` for object pixel ``dx`` and wavelength ``lam``) is not one
transmission function: the wave changes shape by diffraction inside it. The
multislice model cuts it into ``S`` thin slices ``O_1 .. O_S`` along the beam,
``dz`` apart (``scans.<label>.sample.slices`` and ``slice_distance_m``), each
a transmission function, and lets the wave propagate freely from one to the
next.

Forward model (one frame, probe modes ``P_k``)
----------------------------------------------
::

    phi_1 = P_k                                  (the wave incident on slice 1)
    psi_s = phi_s O_s                            (the wave leaving slice s)
    phi_{s+1} = Prop_dz(psi_s)                   s = 1 .. S-1
    I_model = sum_k |F[psi_S]|^2                 (the scan's propagator F)

``Prop_dz`` is the angular-spectrum propagator over ``dz`` on the frame
window (:class:`ptycli.core.propagation.NearfieldPropagator`: the transfer
function ``exp(i dz (k_z - k))`` with the sample pixel of the scan, unitary).
The probe lives in the plane of the first slice; with ``S = 1`` the model is
the usual thin-object one. The frame window is periodic for the slice
propagation (as for every FFT propagator): a probe that stays inside the frame
over the sample's thickness is assumed.

Update (3PIE)
-------------
Maiden, Humphry & Rodenburg, "Ptychographic transmission microscopy in three
dimensions using a multi-slice approach", JOSA A 29, 1606 (2012),
doi:10.1364/JOSAA.29.001606; Tsai, Usov, Diaz, Menzel & Guizar-Sicairos,
"X-ray ptychography with extended depth of field", Opt. Express 24, 29089
(2016), doi:10.1364/OE.24.029089. In words: the modulus constraint corrects
the exit wave of the last slice; that correction is then handed backwards
through the sample. At every slice the ePIE/rPIE pair of updates is applied
with the wave incident on that slice playing the part of the probe: the slice
moves by its incident wave's conjugate times the change of the wave leaving
it, and the incident wave moves by the slice's conjugate times the same
change. The change of the incident wave, propagated back by ``-dz``, is the
change of the wave leaving the slice before; at the first slice it is the
probe update. With ``dpsi_S = F^-1[modulus-corrected F[psi_S]] - psi_S``::

    for s = S .. 1:
        O_s     <- O_s + object_step sum_k conj(phi_sk) dpsi_sk / ((1 - a) sum_k|phi_sk|^2 + a max sum_k|phi_sk|^2)
        dphi_sk  = probe_step conj(O_s) dpsi_sk / ((1 - b) |O_s|^2 + b max |O_s|^2)
        s > 1:  dpsi_{s-1,k} = Prop_{-dz}(dphi_sk)
        s = 1:  P_k <- P_k + dphi_1k              (when the probe is updated)

both right-hand sides of a slice with ``O_s`` and ``phi_s`` from before its
update, ``b`` and the steps those of ePIE (1) or rPIE (``probe_alpha``;
:mod:`ptycli.engines.stochastic`) and ``a = 1`` for every engine: rPIE's
local normalisation of the slice update (``alpha < 1``) divides by the
incident intensity, which is small over much of an inner slice, and the
slices then absorb each other (3 slices 5 depths of field apart, correlation
per slice: rPIE's then default ``alpha`` 0.05 after 200 iterations 0.25 0.26 0.20;
after 100, ``alpha`` 0.3 0.92 0.80 0.92, ``alpha`` 1 0.94 0.85 0.95, as
ePIE). The incident waves of the inner slices are updated in every iteration (they carry the correction
backwards; ``probe_update_start`` only holds the probe itself). With
``probe_step = 0`` only the last slice would learn anything.

Supported: any number of probe modes (each propagates through the slices on
its own; their intensities add), one object mode (the parameters refuse
more), far- and near-field detectors, numpy only (no compiled kernels), ePIE
and rPIE (their block-parallel MPI variant included). DM, RAAR and ML refuse a
multislice object (one ConfigError line naming the engines that model it).

Cost: per frame ``2 (S - 1)`` more FFT pairs than the thin-object step (the
slice propagation forwards and the correction backwards), plus a few passes
per slice. Measured (2026-12-02, shared 2-core machine, median of 5 paired
alternating sweeps over 100 frames of 64 x 64, complex64, one probe mode, ePIE
with probe updates): 10.9 ms per sweep for one slice (the thin-object
:class:`~ptycli.engines.pie_step.FrameKernel`), 31.7 ms for 2 slices (2.9x),
41.0 ms for 3 (3.8x), 66.7 ms for 5 (6.1x): about 1.2 thin-object steps per
slice plus a fixed 0.6 (this generic numpy path).
"""

import functools
import logging

import numpy as np

from .. import parallel
from ..core import fft
from ..core.propagation import NearfieldPropagator
from ..errors import EngineError
from .kernels import fourier_errors, model_amplitude, modulus_factor
from .pie_step import relaxed_fraction

log = logging.getLogger("ptycli.engines")

__all__ = ["MultisliceKernel", "slice_transfer", "multislice_exit", "write_exit_waves"]


def slice_transfer(group):
    """Angular-spectrum transfer function over the slice distance of ``group``'s object (model complex type).

    ``H = exp(i dz (k_z - k))`` on the frame grid (unshifted FFT order), with
    the group's wavelength, sample pixel and the object storage's
    ``slice_distance``.
    """
    prop = NearfieldPropagator(group.shape, group.geometry.lam, float(group.obj.slice_distance),
                               np.asarray(group.obj.psize, dtype=float))
    return prop.factors(group.ctype).pre


def multislice_exit(probe, slices, transfer, workers=1):
    """Exit waves of the last slice for probe modes ``probe`` (K, h, w) and ``slices`` (S, h, w).

    ``psi_1 = P O_1``, ``psi_{s+1} = IFFT(H FFT(psi_s)) O_{s+1}`` (``H`` =
    ``transfer``, the slice propagator); a new array (K, h, w).
    """
    psi = fft.empty(np.shape(probe), np.result_type(probe, slices))
    np.multiply(probe, slices[0], out=psi)
    for s in range(1, slices.shape[0]):
        fft.fft2_inplace(psi, workers)
        psi *= transfer
        fft.ifft2_inplace(psi, workers)
        psi *= slices[s]
    return psi


def write_exit_waves(group):
    """Set the exit waves of every pod of a multislice ``group`` to the wave leaving its last slice.

    The multislice form of ``exit = probe * object``
    (:meth:`ptycli.engines.base.Engine.reset_exit`): per frame
    :func:`multislice_exit` of the probe modes and the frame's window of all
    slices. Needs the regular pod layout of the scan models.
    """
    if not group.regular:
        raise EngineError("multislice group %s: the pods need the regular layout of the scan models" % group.label)
    H = slice_transfer(group)
    probe = group.probe.data[group.mode_pr]
    S = int(group.obj.slices)
    h, w = group.shape
    for f in range(group.n_frames):
        p0, p1 = int(group.pod_start[f]), int(group.pod_start[f + 1])
        layer, y, x = int(group.ob_layer[p0]), int(group.ob_y[p0]), int(group.ob_x[p0])
        group.write_exit(multislice_exit(probe, group.obj.data[layer:layer + S, y:y + h, x:x + w], H), p0, p1)


class MultisliceKernel:
    """In-place 3PIE step on one frame (the interface of :class:`~ptycli.engines.pie_step.FrameKernel`).

    Parameters
    ----------
    shape : (int, int)
        Frame shape.
    nprobe : int
        Probe modes.
    nobj : int
        Object modes: must be 1 (a multislice object has one mode).
    dtype : numpy complex dtype
        ``complex64`` or ``complex128`` (probe and slices must have it).
    pre : ndarray (rows, cols), optional
        Far field: the sample-plane factor multiplied onto the exit wave of
        the last slice before the FFT (it cannot be folded into the probe).
    transfer : ndarray (rows, cols), optional
        Near-field detector: its angular-spectrum kernel.
    workers : int, optional
        FFT threads per transform (default 1).
    object_step, probe_step, object_alpha, probe_alpha : float
        As for ePIE/rPIE (module docstring).
    photon_error : bool
        Report the photon error.
    compiled : bool
        Ignored (numpy only); :attr:`compiled` is always False.
    slices : int
        Number of slices ``S`` (the object patch passed to :meth:`step` is
        (S, h, w)).
    slice_transfer : ndarray (rows, cols)
        The slice propagator ``H`` (:func:`slice_transfer`).
    """

    def __init__(self, shape, nprobe, nobj, dtype=np.complex64, pre=None, transfer=None, workers=None,
                 object_step=1.0, probe_step=1.0, object_alpha=1.0, probe_alpha=1.0, photon_error=True,
                 compiled=False, *, slices=1, slice_transfer=None):
        if int(nobj) != 1:
            raise ValueError("a multislice object has one object mode, got %d" % nobj)
        self.shape = tuple(int(s) for s in shape)
        self.npr = int(nprobe)
        self.nob = 1
        self.slices = int(slices)
        self.ctype = np.dtype(dtype)
        if self.ctype.kind != "c":
            raise TypeError("MultisliceKernel needs a complex dtype, got %s" % self.ctype)
        self.ftype = np.finfo(self.ctype).dtype
        self.workers = 1 if workers is None else int(workers)
        c = self.ctype
        cast = (lambda a: None if a is None else np.ascontiguousarray(a, dtype=c))
        self.pre, self.transfer = cast(pre), cast(transfer)
        self.pre_c = None if pre is None else np.conj(self.pre)
        self.transfer_c = None if transfer is None else np.conj(self.transfer)
        if self.slices > 1 and slice_transfer is None:
            raise ValueError("a multislice kernel needs the slice propagator (slice_transfer)")
        self.H = cast(slice_transfer)
        self.H_c = None if slice_transfer is None else np.conj(self.H)
        self.object_step, self.probe_step = float(object_step), float(probe_step)
        # the slices keep ePIE's normalisation: rPIE's local one (alpha < 1) divides by the incident
        # intensity, which is small over much of an inner slice, and the slices then absorb each
        # other (module docstring: 3 slices 5 DOF apart, rPIE 200: 0.25 per slice, 0.94/0.85/0.95 here)
        if float(object_alpha) < 1.0 and parallel.master:
            log.info("multislice: the slices are updated with ePIE's normalisation (alpha 1, not %g)",
                     float(object_alpha))
        self.object_alpha, self.probe_alpha = 1.0, float(probe_alpha)
        self.photon_error = bool(photon_error)
        self.compiled = False
        self._weight_fresh = False  # the sweep's flag for FrameKernel; nothing is cached here
        h, w = self.shape
        self.wave = fft.empty((self.npr, h, w), c)          # the travelling wave / its change
        self._fw, self._bw = fft.bound_pair(self.wave, self.workers)
        self.inc = np.empty((max(self.slices - 1, 0), self.npr, h, w), c)  # waves incident on slices 2..S
        self.t_obj = np.empty((h, w), c)
        self.c_obj = np.empty((h, w), c)
        self.tmp = np.empty((self.npr, h, w), c)
        self.r1 = np.empty((h, w), self.ftype)   # the incident-wave weight
        self.r2 = np.empty((h, w), self.ftype)   # the slice weight
        self.af = np.empty((1, h, w), self.ftype)
        self.fdev = np.empty((1, h, w), self.ftype)
        self.scratch = np.empty((1, h, w), self.ftype)
        self.zero = np.zeros(1)
        self.tiny = float(np.finfo(self.ftype).tiny)

    @classmethod
    def for_group(cls, group):
        """A constructor with FrameKernel's arguments for the frames of ``group`` (its slices and propagator)."""
        return functools.partial(cls, slices=int(group.obj.slices), slice_transfer=slice_transfer(group))

    # -- propagation, in place on self.wave --------------------------------------------
    def _slice_forward(self):
        self._fw()
        self.wave *= self.H
        self._bw()

    def _slice_backward(self):
        self._fw()
        self.wave *= self.H_c
        self._bw()

    def _to_detector(self):
        if self.pre is not None:
            self.wave *= self.pre
        self._fw()
        if self.transfer is not None:
            self.wave *= self.transfer
            self._bw()

    def _from_detector(self):
        if self.transfer is not None:
            self._fw()
            self.wave *= self.transfer_c
        self._bw()
        if self.pre_c is not None:
            self.wave *= self.pre_c

    # -- the step -------------------------------------------------------------------
    def step(self, probe, obj, sqrt_i, mask=None, intensity=None, update_probe=False, bound=0.0):
        """Update the slices ``obj`` (and ``probe``) in place from one frame.

        Parameters
        ----------
        probe : ndarray (npr, h, w)
            Probe modes in the plane of the first slice; updated in place when
            ``update_probe``.
        obj : ndarray (S, h, w)
            The frame's window of every slice (live views into the object buffer).
        sqrt_i, mask, intensity, update_probe, bound
            As for :meth:`ptycli.engines.pie_step.FrameKernel.step`.

        Returns
        -------
        (fourier, photon, exit_change) : floats
            ``sum mask (|F| - sqrt I)^2``, ``sum mask (|F|^2 - I)^2 / (I + 1)``
            (0 without ``photon_error``) and ``sum |psi_S' - psi_S|^2`` (equal to
            the first by the propagator's unitarity, 0/1 masks).
        """
        S = self.slices
        if obj.shape != (S,) + self.shape or probe.shape != (self.npr,) + self.shape:
            raise ValueError("expected slices %s and probe %s, got %s and %s" % (
                (S,) + self.shape, (self.npr,) + self.shape, obj.shape, probe.shape))
        if obj.dtype != self.ctype or probe.dtype != self.ctype:
            raise TypeError("expected %s arrays, got %s and %s (no silent precision changes)"
                            % (self.ctype, obj.dtype, probe.dtype))
        wave = self.wave
        # forward through the slices, keeping the incident waves
        np.multiply(probe, obj[0], out=wave)
        for s in range(1, S):
            self._slice_forward()
            self.inc[s - 1][...] = wave
            wave *= obj[s]
        # modulus constraint on the exit wave of the last slice
        self._to_detector()
        af = model_amplitude(wave, self.npr, self.af, self.scratch)
        ferr, photon, _ = fourier_errors(af, sqrt_i[None], None if mask is None else mask[None],
                                         None if intensity is None else intensity[None],
                                         fdev=self.fdev, tmp=self.scratch)
        fourier = float(ferr[0])
        keep = relaxed_fraction(fourier, bound)
        if keep == 0.0:
            return fourier, (float(photon) if self.photon_error else 0.0), 0.0  # within the power bound
        factor = modulus_factor(self.fdev, af, self.zero, out=self.fdev)  # sqrt(I) / |F| on valid pixels
        factor -= 1
        if keep != 1.0:
            factor *= self.ftype.type(keep)
        wave *= factor                                   # the detector-plane change
        self._from_detector()                            # wave = dpsi_S
        # backwards through the slices
        for s in range(S - 1, -1, -1):
            phi = probe if s == 0 else self.inc[s - 1]
            O = obj[s]
            np.conjugate(O, out=self.c_obj)
            need_dphi = s > 0 or update_probe
            if need_dphi:
                wb = self._weight(O, self.probe_alpha, self.probe_step)
            # slice update from the incident wave before this step
            np.conjugate(phi, out=self.tmp)
            self.tmp *= wave
            np.sum(self.tmp, axis=0, out=self.t_obj)
            self.t_obj *= self._incident_weight(phi)
            # incident-wave change from the slice before its update: conj(O) dpsi / denominator
            if need_dphi:
                wave *= self.c_obj
                wave *= wb
            O += self.t_obj
            if s > 0:
                self._slice_backward()                   # wave = dpsi_{s-1}
            elif update_probe:
                probe += wave
        return fourier, (float(photon) if self.photon_error else 0.0), keep * keep * fourier

    def _weight(self, O, alpha, step):
        """``step / ((1 - alpha)|O|^2 + alpha max|O|^2)``: a scalar (alpha = 1) or a (h, w) array."""
        r = self.r1
        np.abs(O, out=r)
        r *= r
        smax = float(r.max())
        if alpha >= 1.0:
            return self.ctype.type(step / max(smax, self.tiny))
        r *= self.ftype.type(1.0 - alpha)
        r += self.ftype.type(alpha * smax)
        np.maximum(r, self.tiny, out=r)
        return np.divide(self.ftype.type(step), r, out=r)

    def _incident_weight(self, phi):
        """The slice update's denominator from the incident modes ``phi`` (K, h, w) (object_alpha, object_step)."""
        r = self.r2
        np.abs(phi[0], out=r)
        r *= r
        for k in range(1, phi.shape[0]):
            r += np.abs(phi[k]) ** 2
        smax = float(r.max())
        a = self.object_alpha
        if a >= 1.0:
            return self.ctype.type(self.object_step / max(smax, self.tiny))
        r *= self.ftype.type(1.0 - a)
        r += self.ftype.type(a * smax)
        np.maximum(r, self.tiny, out=r)
        return np.divide(self.ftype.type(self.object_step), r, out=r)
