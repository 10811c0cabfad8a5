"""Projection engines: Difference Map (DM) and RAAR as one generalised update.

Update rule
-----------
With ``pw = probe * object`` (the exit waves the current probe and object
predict: the overlap projection of the previous exit waves) and ``P_F`` the
(power-bound relaxed) Fourier-modulus projection, every iteration does::

    psi <- psi + beta * [P_F((1 + alpha) pw - alpha psi) - pw] + (1 - beta) (pw - psi)

followed by the overlap update (probe and object from the new ``psi``).

* **DM** (Elser's difference map in the form used in ptychography):
  ``beta = 1``: ``psi <- psi + P_F((1 + alpha) pw - alpha psi) - pw``;
  ``alpha = 1`` gives the classic ``psi + P_F(2 pw - psi) - pw``.
* **RAAR** (Luke, Inverse Problems 21, 37 (2005), doi:10.1088/0266-5611/21/1/004):
  ``x <- [beta/2 (R_F R_O + I) + (1 - beta) P_O] x`` with reflectors
  ``R = 2P - I``. Expanding,
  ``beta/2 (R_F R_O x + x) = beta/2 (2 P_F(2 P_O x - x) - (2 P_O x - x) + x)
  = beta [P_F(2 pw - psi) - pw + psi]``; adding ``(1 - beta) pw`` gives
  ``beta psi + beta [P_F(2 pw - psi) - pw] + (1 - beta) pw``, which is the
  rule above with ``alpha = 1`` (``psi - (1 - beta) psi = beta psi``).

One Fourier projection (one forward and one inverse FFT of all exit waves)
per iteration.

Fourier projection with power bound
-----------------------------------
``|F| = sqrt(sum_modes |F_k|^2)`` (modes of a frame add incoherently). For
each frame the mean squared amplitude deviation over valid pixels
``err = sum mask (|F| - sqrt(I))^2 / sum mask`` is compared with
``pbound = fourier_relax_factor**2 * mean_power / 4`` (``mean_power``: mean
measured counts per valid pixel). Frames with ``err <= pbound`` are left
unchanged (they already lie in the relaxed constraint set); the others get
the amplitude ``sqrt(I) + r (|F| - sqrt(I))`` with ``r = sqrt(pbound / err)``,
i.e. they are moved onto the boundary of the set, not onto the measurement.
The factor multiplies every mode of the frame; masked pixels are left
unchanged. With ``fourier_relax_factor = 0`` this is the plain modulus
projection.

``fourier_relax_factor: auto`` (DM and RAAR) is 0, or 0.05 (PtyPy's
default) while an engine of the run refines positions or a scan fits a
variable probe. The bound stops DM short of the data: frames inside it are
left as they are, and on bright data DM alone plateaus (DM 100 / 200 / 400
on the foreign focused-probe scan: 0.841 / 0.845 / 0.846, the foreign
rectangular scan 0.896 / 0.881 / 0.870). DM 100, 13 zoo cases, ``--no-true``,
0.05 -> 0: mean 0.947 -> 0.963, foreign focused 0.841 -> 0.944, foreign
rectangular 0.896 -> 0.990, sparse overlap 0.966 -> 0.994; near field 0.919 ->
0.918, 0.924 -> 0.918, foreign near field 0.979 -> 0.965; low dose unchanged (the
counting-noise floor is the bound there). 0.02 and 0.035 are worse than both
for position refinement and for the agreement of MPI ranks (the bound's
per-frame switch turns small differences into large ones): DM's sub-pixel
position stage ends at 1.07 px rms with 0.02, 0.40 with 0, 0.15 with 0.05,
hence 0.05 with refinement. DM 200 + ML 100, full zoo: mean 0.9790 ->
0.9801, median 0.996 -> 0.997. RAAR alone, the same 13 cases, 0.05 -> 0:
RAAR 100 mean 0.938 -> 0.950, RAAR 200 0.941 -> 0.955 (foreign focused
0.812 -> 0.882, foreign rectangular 0.888 -> 0.965, near-field diffuser
0.904 -> 0.929, foreign near field 0.984 -> 0.971); RAAR 50, still mostly
DM on its ``beta_ramp``, 0.891 -> 0.880 (foreign near field 0.50 -> 0.34,
foreign focused 0.86 -> 0.94).

On counted data (``noise_power_bound``) ``pbound`` is at least the
counting-noise floor: the mean over pixels of ``Var(sqrt(N))`` for Poisson
counts of the mean pattern (:mod:`ptycli.core.counting_noise`; about 1/4 on
well-lit pixels). A model closer to the data than that fits the noise. At
1e4 photons per 64 x 64 frame the relaxed bound was 0.0015 and the floor
0.072; DM 200 + Poisson ML 100 from the true probe went from an object
correlation of 0.32 to 0.91 (DM alone 0.18 to 0.88), at 1e3 photons from
0.28 to 0.66, at 1e5 from 0.94 to 0.98. At 1e6 photons and more the relaxed
bound is the larger one and nothing changes.

The bound is ``noise_bound_fraction`` (0.7) of that floor: at the whole
floor every frame within the expected Poisson deviation is left, also where
the model is still wrong by that much (the floor is one number for all
frames and pixels; a focused beam's frames hold most of their counts in a
few pixels). Full zoo (28 cases, the default start; mean correlation, the
ramp removed), 1.0 -> 0.7 of the floor, the cases' own seeds / seed 21 /
seed 22 for all: DM 200 alone 0.968 / 0.972 / 0.964 -> 0.974 / 0.975 /
0.972 (``lowdose_1e4`` 0.873 / 0.899 / 0.842 -> 0.907 / 0.928 / 0.912, the
foreign focused scan 0.945 -> 0.964; the bright cases 0.001-0.007 lower);
DM 200 + ML 100 0.9825 / 0.9848 / 0.9826 -> 0.9821 / 0.9846 / 0.9830. Own
seeds: RAAR 200 0.959 -> 0.966 (no case lower), DM 100 0.964 -> 0.969,
LSQML 100 (after its DM warm-up) 0.9786 -> 0.9785; DM 200 at 0.5, 0.6,
0.7, 0.8 of the floor 0.9694, 0.9722, 0.9740, 0.9735, without the bound
0.893.

In the far field the projection is computed as
``conj(pre) * IFFT(m * FFT(pre * w))``: the propagator's post-FFT phase
factor cancels for the real factor ``m`` and is skipped.

Incoherent background
---------------------
For a scan with ``background: true`` the model amplitude of the projection
is ``A = sqrt(sum_modes |F_k|^2 + B)`` (``B`` the scan's fitted background,
:mod:`ptycli.core.background`): the power bound judges ``A`` and the factor
``f = A' / A`` multiplies the modes as above (Marchesini et al.'s augmented
projection, doi:10.1088/0266-5611/29/11/115009). After the Fourier pass the
background takes the mean over frames of its projected share,
``B <- B sum_j m_j f_j^2 / sum_j m_j`` (sums over MPI ranks), smoothed by
``background_smoothing``; the model errors include ``B``.

Overlap update
--------------
Object (per object mode; sums over pods and MPI ranks)::

    O = (sum conj(P) psi + c_o O_old + w) / (sum |P|^2 + c_o + w),
    c_o = object_inertia * mean_power * modes,
    w = c_w^2 / (sum |P|^2 + c_w),
    c_w = min(object_weak_floor * max sum_modes |P|^2,
              WEAK_FLOOR_NOISE_MULTIPLE * max(noise_floor, misfit))

The inertia ``c_o`` leaves the fixed point unchanged. The weak-illumination
prior ``w`` pulls pixels that are barely lit by any frame (``sum |P|^2`` below
``c_w``, a fraction of the probe's peak intensity) towards 1, the initial
object; where the coverage exceeds ``c_w`` it fades as ``(c_w / sum |P|^2)^2``
(a bias of 1e-4 where a frame's centre passes). Without it, exit-wave noise
divided by a tiny ``sum |P|^2`` drove 10 % of a low-dose scan's object pixels
(1e4 photons per frame; all where the coverage is below 1e-4 of its peak) to
3-3000 times the lit amplitude. A prior of constant weight ``c_w`` stopped that
too, but biased the well-lit object (MoonFlower, DM 150: correlation 0.989
against 0.997).

On counted data ``c_w`` is at most :data:`WEAK_FLOOR_NOISE_MULTIPLE` (200)
times the larger of the scan's counting-noise floor (``noise_floor``, the
mean ``Var(sqrt N)`` per valid pixel, about 0.25 photons) and the
iteration's misfit (its ``fourier_error``, the mean squared amplitude
deviation per valid pixel, computed before the overlap update): the exit
waves' error per pixel (counting noise or model error) divided by the
coverage ``sum |P|^2`` is the squared error of a pixel's object estimate,
so where the coverage is 200 times that error the estimate is good to
1/sqrt(200), about 7 % of a unit amplitude. A
fraction of the peak is no measure of what the data tell at high dose: on
the foreign focused scan (5e6 photons per frame in a spot) 24 % of the scored
pixels lie in the probe's tails below 1 % of its peak, with 20-2000 photons
of coverage, and the prior held them near 1. The misfit term keeps the prior
strong while the model is still far from the data: capped by the noise
floor alone, DM blew up 0.5 % of a MoonFlower scan's lit pixels to 20 x
within two iterations of the start (``tests/test_mpi.py``).

Measured (2026-12-06), object correlation without -> with the cap: full zoo
(``--no-true``), RAAR 100 mean 0.9719 -> 0.9759 (foreign_focused 0.893 ->
0.990, foreign_rectangular 0.979 -> 0.987, no case lower), DM 100 0.9720 ->
0.9724 (foreign_focused 0.964 -> 0.974, no other case changed; DM's misfit,
that of its projection input, stays far above the noise, so the cap seldom
binds); DM 200 + ML 100 0.9822 -> 0.9822 (foreign_focused 0.993 -> 0.995,
no other case changed). Independent simulations (the far-field model of
``tests/test_nearfield.py``, focused probes from a soft and from a hard-edged pupil, 64-81
frames, 5e6-1e7 photons, two seeds each, default start, scored over the
central halves of the frames where lit by 50 photons or more): soft pupil
RAAR 100 +0.018 to +0.035, DM 100 and DM 200 + ML 100 unchanged; hard pupil
unchanged. A cap by the noise floor alone (no misfit term) had gained more
on the foreign focused scan with DM 100 (0.996) but lost 0.005-0.04 with DM
alone on the hard pupil and blew up the MoonFlower pixels above.

Probe (per probe mode)::

    P = (sum conj(O) psi + c_p P_old) / (sum |O|^2 + c_p),   c_p = probe_inertia * n_frames * <|O|^2>

(``<|O|^2>``: mean object intensity over the object storage; ``n_frames``: all
frames of all ranks, the scale of ``sum |O|^2`` for a transmission object.)
With the sub-pixel model (:mod:`ptycli.core.subpixel`) ``P`` of a frame is
its class's shifted probe ``S_b P``: the object update uses it as it is; the
probe update is one Jacobi step of the least squares
``sum_b S_b^H (D_b S_b P) = sum_b S_b^H N_b`` (:meth:`ProjectionEngine._collapse_probe_sums`),
which has the exact fixed point (dividing the shifted-back numerator by the
plain denominator left DM alone at 0.981 against 0.983 on the zoo's
``subpixel_spiral``; shifting the denominator too rings below zero and
diverged from the default probe).

The two updates alternate (object first when ``update_object_first``) until
the relative change of the constrained probe ``sqrt(sum |dP|^2 / sum |P|^2)`` falls below
``overlap_converge_factor`` or ``overlap_max_iterations`` rounds are done;
before ``probe_update_start`` only the object is updated, once. After each
probe update the probe constraints of the base class apply (support, mode
orthogonalisation and power ordering, recentring). Numerators and
denominators are summed over MPI ranks with in-place ``allreduce`` on numpy
buffers, so any number of ranks gives the same result. ``sum |P|^2`` over the
object is recomputed only when the probe changed.

Variable probe
--------------
With ``illumination.variable_modes: K`` (orthogonal probe relaxation,
:mod:`ptycli.core.variable_probe`) the pods of the scan address every
frame's own probe ``P_j = sum_k w_jk U_k``
(:meth:`~ptycli.engines.addressing.PodGroup.set_frame_probes`), so the
Fourier step, the exit-wave update and the object update above use it;
the probe update of the overlap loop is the least-squares step of
:mod:`ptycli.engines.projection_variable` (eigen-probes: a ``K x K``
system per pixel; weights: one per frame), its change that of the frames'
probes; after the overlap update the gauge makes the eigen-probes
orthogonal, ordered by power. Numpy passes (logged when ``kernels`` would
choose the compiled ones); the sub-pixel model is off for such a scan.

Position refinement
-------------------
``position_refinement`` (:mod:`ptycli.engines.posref`) runs after the overlap
update of the scheduled iterations. When frames moved, ``sum |P|^2`` over the
object is recomputed and the exit waves of the moved frames are reset to
``probe * object`` at their new windows (their old exit waves belong to the
old windows).

Near-field warm-up
------------------
From a model probe in near field (the automatic guess: often a plane wave
or the back-propagated mean pattern) DM leaves its start slowly: the
probe's structure sits in the object for tens of iterations, and on the
foreign near-field scan (``benchmarks/validate_zoo.py``) DM alone scored
0.07 / 0.17 / 0.24 / 0.57 / 0.97 after 10 / 30 / 50 / 70 / 100 iterations
(20 from the true probe: 0.99). The PIE family, whose probe moves frame by
frame, leaves it in a few sweeps. So ``warmup: auto`` runs
:data:`NEAR_FIELD_WARMUP_SWEEPS` mPIE sweeps (its defaults: rPIE's
regularised steps with momentum, Maiden, Johnson & Li, Optica 4, 736
(2017), doi:10.1364/OPTICA.4.000736; :mod:`ptycli.engines.stochastic`)
before a first DM or RAAR engine when a scan is near field and its probe
starts from the automatic guess (``illumination.model: auto``;
:func:`ptycli.params.tree.engine_sequence`; a DM warm-up before ML or LSQML
gets its own); with a PIE engine first the guess is the one made for local
engines (no plane wave). From a plane wave (``model: flat``) the PIE
engines put the probe's structure into the object, so no warm-up runs
there (foreign_nearfield, DM 50 + ML 50 from ``flat``: 0.649 without, 0.029
with an ePIE warm-up). Near-field cases of the zoo (``rect_48x80_near`` /
``near_diffuser_cxi`` / ``foreign_nearfield``, ``--no-true``), ``warmup``
0 -> 10 -> 30 ePIE sweeps (the warm-up engine until 2026-12-06):

============== ===================== ===================== =====================
chain          0                     10                    30
============== ===================== ===================== =====================
DM 50 + ML 50  0.897 / 0.869 / 0.649 0.913 / 0.913 / 0.992 0.937 / 0.941 / 0.997
DM 100 + ML 50 0.971 / 0.957 / 0.995 0.968 / 0.971 / 0.994 0.970 / 0.973 / 0.996
DM 200 + ML100 0.989 / 0.977 / 0.997 0.991 / 0.976 / 0.991 0.993 / 0.976 / 0.997
DM 100         0.918 / 0.918 / 0.965 0.916 / 0.958 / 0.933 0.925 / 0.967 / 0.948
RAAR 50        0.794 / 0.759 / 0.342 0.838 / 0.822 / 0.936 0.878 / 0.896 / 0.932
RAAR 100       0.934 / 0.906 / 0.935 0.939 / 0.931 / 0.981 0.955 / 0.949 / 0.983
============== ===================== ===================== =====================

20 sweeps fell between 10 and 30 in every chain but RAAR 50's
foreign_nearfield (0.930); 50 gained more on DM 50 + ML 50 (0.953 /
0.963 / 0.997) and lost on DM 100 (0.916 / 0.972 / 0.939). ML 50 alone
runs DM 100 + ML 50 (its DM warm-up first); LSQML 100 (after its DM 50)
0.948 / 0.921 / 0.992 -> 0.953 / 0.939 / 0.990 -> 0.965 / 0.950 / 0.995. In far
field 10 ePIE sweeps before DM 90 + ML 50 moved the 10 far-field cases by
at most 0.008 against DM 100 + ML 50 (6 unchanged), so ``auto`` is 0
there.

mPIE instead of ePIE sweeps (30, 2026-12-06). Scans of a near-field
diffuser at large Fresnel numbers (``lam z / dx**2`` 100-200: a pixel's
wave spreads over most of a 64-pixel frame), simulated with
``benchmarks/zoo_sim.py`` (150 frames, 1e7-1e9 photons), showed DM after
the ePIE warm-up stalling far below the true probe's result (Fresnel number
200, 1e8 photons: DM 200 + ML 100 0.944, true probe 0.993); after mPIE
sweeps 0.985. Object correlation, ePIE -> mPIE warm-up, ``--no-true``:

* zoo, the three near-field cases above: DM 200 + ML 100 0.988 / 0.980 /
  0.991 -> 0.990 / 0.982 / 0.994; DM 100 0.915 / 0.969 / 0.934 -> 0.960 /
  0.977 / 0.977; RAAR 100 0.953 / 0.952 / 0.991 -> 0.959 / 0.965 / 0.993;
  LSQML 100 0.952 / 0.952 / 0.990 -> 0.977 / 0.974 / 0.993;
* Fresnel number 200, 1e8 / 1e7 photons: DM 200 + ML 100 0.944 / 0.973 ->
  0.985 / 0.973; DM 100 0.888 / 0.972 -> 0.984 / 0.971; RAAR 100 0.958 ->
  0.983;
* Fresnel number 150 / 400, 1e8 photons: DM 200 + ML 100 0.980 / 0.993 ->
  0.991 / 0.993; DM 100 0.961 / 0.993 -> 0.964 / 0.993; LSQML 100 0.984 /
  0.993 -> 0.992 / 0.993;
* Fresnel number 100, 1e8 photons, three scans: DM 200 + ML 100 0.997 /
  0.992 / 0.995 -> 0.993 / 0.988 / 0.997; DM 100 0.980 / 0.967 / 0.973 ->
  0.950 / 0.936 / 0.997;
* Fresnel number 100 at 1e9 photons, 12, 30 and 50 at 1e8: DM 200 + ML 100
  unchanged (0.991 / 0.993 / 0.995 / 0.999); DM 100 0.896 / 0.983 / 0.967 /
  0.999 -> 0.895 / 0.990 / 0.974 / 0.999.

Nineteen further near-field scans at Fresnel number 12 (apertures,
zone plates, defocused beams, diffusers, rectangular frames, two modes,
position errors, low dose; DM 200 + ML 100 and DM 100): within 0.01 of the
ePIE warm-up's scores except a diffuser at 1e4 photons (0.579 -> 0.621,
DM 100 0.575 -> 0.611), another diffuser under DM 100 alone (0.963 ->
0.983) and an aperture at 1e5 photons under DM 100 alone
(0.634 -> 0.614). Under MPI the warm-up is block-parallel mPIE
(:mod:`ptycli.engines.stochastic`), whose result depends on the number of
ranks; ``warmup: 0`` keeps a near-field DM chain independent of it.

Performance
-----------
Frames are processed in blocks of ``block_frames`` (about 2 MB of complex
data per block by default), so that the elementwise passes run in cache and
the temporaries stay small; each block does one batched in-place forward and
one inverse FFT over all its frames and modes (:mod:`ptycli.core.fft`: FFTW,
else pocketfft; on the compiled path one thread per block, the unitary
scaling applied by the kernel that reads the transform,
:func:`~ptycli.core.fft.fft2_deferred`). In the far field the work is done on
``pre * psi`` so the FFT needs no phase passes (the exit storage always holds
the true exit waves). The first object update's numerator is accumulated in
the Fourier loop, and ``sum |P|^2`` over the object only when the probe
changed. Single precision throughout.

The work over the exit waves (the Fourier pass, the model errors, the
object and probe sums) goes through the passes of
:mod:`ptycli.engines.projection_passes`, in two implementations that compute
the same numbers, chosen once per run from ``kernels`` (see
:func:`ptycli.engines.fused.use_compiled`): numpy, and the fused compiled
kernels of :mod:`ptycli.engines.fused` on the engine's thread pool. Figures:
``benchmarks/bench_engines.py``.
"""

import logging
import math

import numpy as np

from .. import parallel
from ..core import fft
from .._lazy import lazy_module
from ..errors import ConfigError
from ..params.declare import Parameter
from .background_sums import BackgroundSums
from .base import Engine, register
from .constraints import auto_or_nonnegative
from .posref import POSREF_PARAMS
from .projection_passes import CompiledProjectionPasses, NumpyProjectionPasses
from .projection_variable import probe_step
from .variable_probe import refactor_book

__all__ = ["ProjectionEngine", "DM", "RAAR"]

log = logging.getLogger("ptycli.engines")

#: ``fourier_relax_factor: auto`` (DM, RAAR) while positions are refined or a variable probe is fitted (PtyPy's default)
AUTO_RELAX_MOVING = 0.05


def relax_factor(value, path):
    """``engines.<label>.fourier_relax_factor`` checked: ``'auto'`` or a number >= 0."""
    return auto_or_nonnegative(value, path, "auto or a number >= 0",
                               "0 is the plain modulus projection, 0.05 PtyPy's default")

#: ``warmup: auto`` (DM, RAAR): mPIE sweeps before the engine when a scan is near field (module docstring)
NEAR_FIELD_WARMUP_SWEEPS = 30


def warmup_sweeps(value, path):
    """``engines.<label>.warmup`` (DM, RAAR) checked: ``'auto'`` or a whole number >= 0."""
    expected = "auto or a whole number >= 0"
    hint = "0 runs no warm-up; auto is %d in near field" % NEAR_FIELD_WARMUP_SWEEPS
    value = auto_or_nonnegative(value, path, expected, hint)
    if value == "auto":
        return value
    if value != int(value):
        raise ConfigError("%s: expected %s, got %r" % (path, expected, value), hint=hint)
    return int(value)

#: the compiled kernels, imported (with numba) at first use
fused = lazy_module("ptycli.engines.fused")

#: ``noise_bound_fraction``'s default (see the module docstring, "On counted data")
NOISE_BOUND_FRACTION = 0.7

#: on counted data the weak-illumination prior's weight ``c_w`` is at most this many times the larger of the
#: counting-noise floor and the iteration's misfit (the module docstring, "Overlap update")
WEAK_FLOOR_NOISE_MULTIPLE = 200.0

_PROJECTION_PARAMS = [
    Parameter("fourier_relax_factor", "auto", "any",
              "power bound: frames whose rms amplitude deviation is below half this fraction of the rms "
              "measured amplitude are not corrected; auto: 0 (the plain modulus projection; on counted "
              "data the counting-noise floor still bounds it, noise_power_bound), or %g while an engine of "
              "the run refines positions or a variable probe is fitted" % AUTO_RELAX_MOVING,
              check=relax_factor),
    Parameter("noise_power_bound", True, "bool",
              "on counted data (whole numbers), raise the power bound to noise_bound_fraction of the "
              "counting-noise floor, so that frames already within the Poisson noise of the data are not "
              "corrected"),
    Parameter("noise_bound_fraction", NOISE_BOUND_FRACTION, "float",
              "the power bound on counted data (noise_power_bound) as a fraction of the counting-noise floor, "
              "the mean squared amplitude deviation that Poisson noise alone gives: 1 leaves every frame "
              "within it uncorrected, lower values correct frames on towards the data", low=0.0, high=1.0),
    Parameter("object_inertia", 1e-4, "float",
              "weight of the previous object in the object update, relative to the mean probe power", low=0.0),
    Parameter("object_weak_floor", 1e-2, "float",
              "weight of a prior that pulls barely lit object pixels to 1, as a fraction of the probe's peak "
              "intensity, on counted data at most %g times the larger of the counting-noise floor and the "
              "iteration's misfit per pixel (keeps them from blowing up; 0: off)" % WEAK_FLOOR_NOISE_MULTIPLE,
              low=0.0),
    Parameter("probe_inertia", 1e-9, "float",
              "weight of the previous probe in the probe update, relative to the frames' object power",
              low=0.0),
    Parameter("overlap_converge_factor", 0.05, "float",
              "stop the object/probe inner loop when the relative probe change falls below this", low=0.0),
    Parameter("overlap_max_iterations", 10, "int", "most object/probe rounds per iteration", low=1),
    Parameter("update_object_first", True, "bool", "update the object before the probe in each round"),
    Parameter("warmup", "auto", "any",
              "sweeps of mPIE run before this engine when it is the first engine and a scan's probe starts from a "
              "model (illumination.model auto, flat, aperture, ...; not a file); auto: %d when a scan is near "
              "field and its probe the automatic guess (model auto; the difference map leaves it slowly there), "
              "else 0; 0: none"
              % NEAR_FIELD_WARMUP_SWEEPS, check=warmup_sweeps),
    Parameter("block_frames", None, "int",
              "frames processed together (null: about 2 MB of exit waves per block)", low=1, nullable=True),
    POSREF_PARAMS,
]


def _balanced_blocks(g, max_frames):
    """Frame blocks of group ``g`` of at most ``max_frames`` frames, as equal as possible, their number a
    multiple of the FFT workers (so the threads of the compiled path get equal shares).

    Returns ``[(f0, f1, p0, p1)]`` as :meth:`~ptycli.engines.addressing.PodGroup.blocks`.
    """
    n = g.n_frames
    T = max(1, int(fft.get_workers()))
    count = -(-n // max(1, int(max_frames)))
    count = max(1, min(n, -(-count // T) * T))
    edges = np.unique(np.round(np.linspace(0, n, count + 1)).astype(np.int64))
    return [(int(f0), int(f1), int(g.pod_start[f0]), int(g.pod_start[f1])) for f0, f1 in zip(edges[:-1], edges[1:])]


class ProjectionEngine(BackgroundSums, Engine):
    """Generalised projection update (see the module docstring).

    Subclasses set :attr:`alpha` and :attr:`beta` from their parameters in
    :meth:`engine_initialize`.
    """

    NAME = "Projection"
    PARAMS = Engine.PARAMS.extended("Projection", _PROJECTION_PARAMS, doc="generalised projection engine")

    alpha = 1.0
    beta = 1.0
    #: the recorded errors are those of the projection input: add the model's own (:meth:`model_errors`)
    MODEL_ERRORS = True
    SUBPIXEL = True
    #: reset the exit waves of frames moved by position refinement to ``probe * object``
    RESET_MOVED_EXIT = True
    #: the incoherent background of a scan that has one is part of the model (:mod:`ptycli.core.background`)
    FITS_BACKGROUND = True
    KEEPS_EXIT_WAVES = True
    VARIABLE_PROBE = True  # every frame's probe from eigen-probes: ptycli.engines.projection_variable
    WARMUP_ENGINE = "mPIE"  # engines.<label>.warmup mPIE sweeps first (the module docstring)
    AUTO_WARMUP_NEAR_FIELD = NEAR_FIELD_WARMUP_SWEEPS

    # -- variable probes ---------------------------------------------------
    def reset_exit(self):
        """As the base's, with every frame's own probe where the probe is variable (:meth:`_frame_probes_on`)."""
        self._frame_probes_on()
        super().reset_exit()

    def _frame_probes_on(self):
        """Let the pods of scans with a variable probe address every frame's probe (once per run).

        The sub-pixel model is not combined with it: such a scan runs on whole pixels (logged).
        """
        for g in self.book.groups:
            if g.probe_weights is None or g.frame_probes:
                continue
            if g.sub is not None:
                if parallel.master:
                    log.warning("%s: scan %s has a variable probe; the sub-pixel model is off (whole pixels)",
                                self.label, g.label)
                g.set_subpixel(None)
            g.set_frame_probes(True)

    # -- set-up ------------------------------------------------------------
    def relax_factor_used(self):
        """``fourier_relax_factor`` as a number, ``auto`` resolved (the module docstring)."""
        factor = self.p.fourier_relax_factor
        if factor == "auto":
            return AUTO_RELAX_MOVING if self.probe_or_positions_drift() else 0.0
        return float(factor)

    def set_coefficients(self):
        """Set ``self.alpha`` and ``self.beta`` from the parameters (override)."""

    def update_coefficients(self, iteration):
        """Change ``self.alpha`` / ``self.beta`` for ``iteration`` (counted from the engine's start; override)."""

    def engine_initialize(self):
        self.set_coefficients()
        self._misfit = None  # the last iteration's fourier_error (the weak-illumination prior, c_weak)
        self.pbound = self.relax_factor_used() ** 2 * self.mean_power / 4.0
        if self.p.noise_power_bound:
            self.pbound = max(self.pbound, self.p.noise_bound_fraction * self.noise_floor())
        ctype, ftype = self.ctype, self.ftype
        # block sizes and scratch buffers (shared by all groups)
        max_pods = max_frames = 1
        self._blocks = {}
        for g in self.book.groups:
            H, W = g.shape
            if self.p.get("block_frames"):
                blocks = g.blocks(int(self.p.block_frames))
            else:
                per_frame = max(1, (g.n_pods // max(g.n_frames, 1))) * H * W * np.dtype(ctype).itemsize
                blocks = _balanced_blocks(g, max(1, int(2 * 2 ** 20 // per_frame)))
            self._blocks[id(g)] = blocks
            for f0, f1, p0, p1 in blocks:
                max_pods = max(max_pods, p1 - p0)
                max_frames = max(max_frames, f1 - f0)
        shapes = {g.shape for g in self.book.groups}
        self._scratch = {}
        for shape in shapes:
            self._scratch[shape] = dict(
                buf=fft.empty((max_pods,) + shape, dtype=ctype),  # transformed: aligned for the FFT library
                pw=fft.empty((max_pods,) + shape, dtype=ctype),
                af=np.empty((max_frames,) + shape, dtype=ftype),
                fdev=np.empty((max_frames,) + shape, dtype=ftype),
                tmp=np.empty((max_frames,) + shape, dtype=ftype),
                frame=np.empty(shape, dtype=ctype),
                frame_stack=np.empty((max_pods,) + shape, dtype=ctype) if self.p.get("beta", 1.0) != 1.0 else None,
            )
        # overlap-update accumulators, one per storage
        self._ob_num = {sid: np.empty_like(S.data) for sid, S in self.book.obj_storages.items()}
        self._ob_den = {sid: np.empty(S.data.shape, dtype=ftype) for sid, S in self.book.obj_storages.items()}
        # the weak-illumination prior's share of the object (see projection_passes.weak_divisor); unused when it is off
        self._ob_prior = {sid: np.empty(S.data.shape if self.p.object_weak_floor > 0 else (1, 1, 1), dtype=ftype)
                          for sid, S in self.book.obj_storages.items()}
        self._pr_num = {sid: np.empty_like(S.data) for sid, S in self.book.probe_storages.items()}
        self._pr_den = {sid: np.empty(S.data.shape, dtype=ftype) for sid, S in self.book.probe_storages.items()}
        # sub-pixel groups gather their probe sums per expanded layer (shift class and mode), collapsed after
        for g in self.book.groups:
            if g.sub is not None:
                key = self.probe_key(g)
                self._pr_num[key] = np.zeros((g.sub.n_layers,) + g.shape, dtype=ctype)
                self._pr_den[key] = np.zeros((g.sub.n_layers,) + g.shape, dtype=ftype)
        self._den_valid = False
        self._fuse_object = False
        nmodes = max((S.data.shape[0] for S in self.book.probe_storages.values()), default=1)
        self.c_obj = float(self.p.object_inertia) * self.mean_power * nmodes
        n_pixels = sum(g.n_pods * g.shape[0] * g.shape[1] for g in self.book.groups)
        self._compiled = fused.use_compiled(self.p.kernels, n_pixels, self.ctype == np.complex64)
        self._frame_probes_on()
        variable = [g.label for g in self.book.groups if g.frame_probes]
        if self._compiled and variable:
            if parallel.master:
                log.info("%s: scans %s have a variable probe; the %s passes are numpy", self.label,
                         ", ".join(map(str, variable)), self.NAME)
            self._compiled = False
        #: variable probe storage ID -> this process's groups that use it (none on a rank without its frames:
        #: the storages are those of every rank, so all ranks join the probe step's sums)
        self._variable = {sid: [g for g in self.book.groups if g.frame_probes and g.probe.ID == sid]
                          for sid, S in self.book.probe_storages.items() if getattr(S, "variable_modes", 0)}
        self.passes = CompiledProjectionPasses(self, shapes, max_pods) if self._compiled \
            else NumpyProjectionPasses(self)
        self.init_background_sums()

    def engine_release(self):
        """Free the passes, scratch, accumulators and threads (before the health check; safe to call twice)."""
        if getattr(self, "_pool", None) is not None:
            self._pool.close()
        for name in ("passes", "_scratch", "_ob_num", "_ob_den", "_ob_prior", "_pr_num", "_pr_den", "_blocks", "_pool"):
            if hasattr(self, name):
                delattr(self, name)

    def engine_finalize(self):
        self.engine_release()

    @staticmethod
    def probe_key(g):
        """Key of group ``g``'s probe-update sums: its probe storage's ID, or its own (sub-pixel model)."""
        return g.probe.ID if g.sub is None else ("subpixel", id(g))

    # -- iteration -----------------------------------------------------------
    def engine_iterate(self, n):
        out = []
        for k in range(n):
            self.update_coefficients(self.iteration + k)
            acc = self.new_error_sums()
            self._obj_power = None  # sum |O|^2 as left by the last object update, if nothing changed O since
            self._fuse_object = bool(self.p.update_object_first) or not self.probe_update_due()
            if self._fuse_object:
                self._init_object_numerator()
            self.zero_background_sums()
            self.passes.fourier_pass(acc)
            record = acc.reduce()  # collective: this iteration's misfit sets the weak-illumination prior
            self._misfit = record["fourier_error"]
            self.background_update()
            self.overlap_update()
            out.append(record)
        return out

    # -- the model's own errors ------------------------------------------------------------
    def model_errors(self):
        """Errors of the model's exit waves ``probe * object`` against the data (nothing is updated).

        The record's ``fourier_error`` of DM/RAAR is that of the projection
        input ``(1 + alpha) P O - alpha psi``, which can rise while the
        reconstruction improves (the iterate ``psi`` moves away from
        ``P O`` before the two meet); this is the error of ``P O`` itself,
        with the same normalisation (:class:`~ptycli.engines.base.ErrorSums`).
        One product pass, one forward FFT and one error pass over all frames
        (summed over MPI ranks). Called by the base at scheduled iterations
        (:meth:`~ptycli.engines.base.Engine.model_error_due`).

        Returns
        -------
        dict
            ``model_fourier_error``, ``model_photon_error``.
        """
        acc = self.new_error_sums()
        self.passes.model_errors(acc)
        r = acc.reduce()
        return dict(model_fourier_error=r["fourier_error"], model_photon_error=r["photon_error"])

    # -- overlap update ------------------------------------------------------------
    def overlap_update(self):
        """Alternate object and probe updates (see the module docstring)."""
        update_probe = self.probe_update_due()
        rounds = int(self.p.overlap_max_iterations) if update_probe else 1
        self.last_overlap_rounds = 0
        for k in range(rounds):
            self.last_overlap_rounds = k + 1
            if not update_probe or self.p.update_object_first or k > 0:
                self.object_update()
            if not update_probe:
                break
            change = self.probe_update()
            if change < float(self.p.overlap_converge_factor):
                break
        if update_probe:
            if self._variable:  # the eigen-probes' gauge (every frame's probe unchanged)
                refactor_book(self.book, reduce=parallel.allreduce if parallel.size > 1 else None)
            # orthogonalise the modes once per iteration, mixing the exit waves alike
            self.orthogonalize_probe(rotate_exit=True)
            self.pin_scale()

    def pin_scale(self):
        """:meth:`~ptycli.engines.constraints.ConstraintsMixin.pin_scale`; the object sums it scales go stale."""
        k = super().pin_scale()
        if k is not None:
            self._den_valid = False
            self._obj_power = None
        return k

    @property
    def c_weak(self):
        """Weight of the weak-illumination prior: ``object_weak_floor`` times the probe's peak intensity,
        on counted data at most :data:`WEAK_FLOOR_NOISE_MULTIPLE` times the larger of the counting-noise floor
        and the last misfit (the module docstring, "Overlap update")."""
        floor = float(self.p.object_weak_floor)
        if floor <= 0:
            return 0.0
        weight = floor * max((float(np.max(np.sum(S.data.real ** 2 + S.data.imag ** 2, axis=0)))
                              for S in self.book.probe_storages.values()), default=0.0)
        noise = self.noise_floor()
        if noise <= 0:
            return weight
        misfit = self._misfit if self._misfit is not None and np.isfinite(self._misfit) else np.inf
        return min(weight, WEAK_FLOOR_NOISE_MULTIPLE * max(noise, misfit))

    def _init_object_numerator(self):
        c = self.ctype.type(self.c_obj)
        for sid, S in self.book.obj_storages.items():
            num = self._ob_num[sid]

            def work(k, rows, S=S, num=num):
                if parallel.master:  # the inertia term enters the MPI sum once
                    np.multiply(S.data[..., rows, :], c, out=num[..., rows, :])
                else:
                    num[..., rows, :] = 0

            self._row_work(work, [num])

    def object_update(self):
        """``O = (sum conj(P) psi + c_o O + w) / (sum |P|^2 + c_o + w)`` for every object storage.

        The numerator comes from the Fourier step when it was accumulated
        there (first object update of an iteration), else it is summed here.
        """
        recompute_den = not self._den_valid
        accumulated = self._fuse_object
        self._fuse_object = False
        if not accumulated:
            self._init_object_numerator()
            self.passes.object_numerator()
        self.passes.object_divide(recompute_den)
        self._den_valid = True
        self.apply_object_constraints()

    def probe_update(self):
        """``P = (sum conj(O) psi + c_p P) / (sum |O|^2 + c_p)``; returns the relative change."""
        num_change = 0.0
        norm = 0.0
        # c_p from the object power
        cps = {}
        sums = np.zeros(2)
        known, self._obj_power = getattr(self, "_obj_power", None) or {}, None
        for sid, S in self.book.obj_storages.items():
            sums[0] += known[sid] if sid in known else float(np.vdot(S.data, S.data).real)
            sums[1] += S.data.size
        mean_obj = sums[0] / max(sums[1], 1.0)
        cp = float(self.p.probe_inertia) * self.n_frames_total * max(mean_obj, 1e-30)
        for sid, S in self.book.probe_storages.items():
            if parallel.master:  # the inertia term enters the MPI sum once
                np.multiply(S.data, self.ctype.type(cp), out=self._pr_num[sid])
            else:
                self._pr_num[sid].fill(0)
            self._pr_den[sid].fill(0)
            cps[sid] = cp
        subs = [g for g in self.book.groups if g.sub is not None]
        for g in subs:
            self._pr_num[self.probe_key(g)].fill(0)
            self._pr_den[self.probe_key(g)].fill(0)
        self.passes.probe_sums()
        for g in subs:
            self._collapse_probe_sums(g)
        before = {}
        for sid, S in self.book.probe_storages.items():
            if sid in self._variable:
                continue
            num = self._pr_num[sid]
            den = self._pr_den[sid]
            parallel.allreduce(num)
            parallel.allreduce(den)
            den += self.ftype.type(cps[sid])
            np.divide(num, den, out=num)
            before[sid] = S.data.copy()
            S.data[...] = num
        if self._variable:  # eigen-probes and weights (ptycli.engines.projection_variable)
            vs = np.zeros(2)
            for sid, groups in self._variable.items():
                vs += probe_step(groups, self._blocks, self.book.probe_storages[sid].data, cp,
                                 reduce=parallel.allreduce if parallel.size > 1 else None)
            parallel.allreduce(vs)
            num_change, norm = float(vs[0]), float(vs[1])
        self.apply_probe_constraints(orthogonalize=False)
        # the change of the constrained probe: measured before the support, the power the support
        # cuts again each round (in the frame corners, where the object is barely lit) never settles
        # (a variable probe: the change of every frame's probe, before the constraints)
        for sid, S in self.book.probe_storages.items():
            if sid in self._variable:
                continue
            d = S.data - before[sid]
            num_change += float(np.vdot(d, d).real)
            norm += float(np.vdot(S.data, S.data).real)
        self._den_valid = False
        return float(np.sqrt(num_change / max(norm, 1e-30)))

    def _collapse_probe_sums(self, g):
        """Fold the per-shift-class probe sums of a sub-pixel group into its probe storage's sums.

        The probe that fits ``S_b P O = psi`` best over the frames solves
        ``sum_b S_b^H (D_b S_b P) = sum_b S_b^H N_b`` (``N_b``, ``D_b``: the
        class's ``sum conj(O) psi`` and ``sum |O|^2``). One Jacobi step from
        the current probe, ``P + R / (D + c_p)`` with the residual
        ``R = sum_b S_b^H (N_b - D_b S_b P)`` and ``D = sum_b D_b``, is the
        usual quotient ``(num + c_p P) / (den + c_p)`` with ``num = R + D P``
        and ``den = D``; its fixed point is the exact least-squares probe
        (dividing the shifted-back sums by each other is not: the fixed point
        of ``sum S_b^H N_b / sum D_b`` is biased), at the cost of one
        transform back per class as for ``N_b`` alone.
        """
        key = self.probe_key(g)
        n = g.sub.n_active
        num_x, den_x = self._pr_num[key][:n], self._pr_den[key][:n]
        num_x -= den_x * g.model_probe()  # N_b - D_b S_b P
        D = g.sub.sum_layers(den_x, np.zeros_like(self._pr_den[g.probe.ID]))
        g.sub.collapse(num_x, self._pr_num[g.probe.ID])
        self._pr_num[g.probe.ID] += D * g.probe.data
        self._pr_den[g.probe.ID] += D

    # -- position refinement ---------------------------------------------------------------
    def positions_changed(self, moved):
        """Frames moved: recompute ``sum |P|^2`` over the object; moved frames restart from ``P O``.

        The exit waves of a moved frame belong to its old window; they are
        replaced by ``probe * object`` at the new one (the iterate restarts
        there, as after an overlap projection).
        """
        self._den_valid = False
        if not self.RESET_MOVED_EXIT:
            return
        for gi, frames in moved.items():
            g = self.book.groups[gi]
            pr, ob = g.model_probe(), g.obj.data
            for f in np.asarray(frames).tolist():
                p0, p1 = int(g.pod_start[f]), int(g.pod_start[f + 1])
                g.write_exit(g.gather_product(ob, pr, p0, p1), p0, p1)

    # -- state ------------------------------------------------------------------------
    def engine_load_state(self, state):
        self._den_valid = False


@register
class DM(ProjectionEngine):
    """Difference Map: ``psi <- psi + P_F((1 + alpha) pw - alpha psi) - pw``."""

    NAME = "DM"
    AUTO_PROBE_SUPPORT = 1.0  # probe_support: auto (measured: ConstraintsMixin.probe_supports)
    PARAMS = ProjectionEngine.PARAMS.extended("DM", [
        Parameter("alpha", 1.0, "float", "difference-map mixing parameter (1: classic DM)", low=0.0),
    ], doc="difference map")

    def set_coefficients(self):
        self.alpha = float(self.p.alpha)
        self.beta = 1.0


@register
class RAAR(ProjectionEngine):
    """Relaxed averaged alternating reflections: the update with ``alpha = 1`` and ``beta``.

    ``beta`` starts at 1 (the difference map) and relaxes to the parameter
    ``beta`` over about ``beta_ramp`` iterations,
    ``beta_n = beta + (1 - beta) exp(-(n / beta_ramp)^3)`` (the cubic-exponential
    form of Luke's schedule, run the other way). From the default probe guess,
    RAAR with ``beta = 0.75`` from the first iteration stalls where DM does
    not; measured, RAAR 150 iterations, correlation with the true object
    (``benchmarks/validate_zoo.py``), constant beta -> ``beta_ramp: 80``:
    foreign near field 0.039 -> 0.974, two probe modes 0.252 -> 0.934, a
    diffuser probe 0.583 -> 0.989, a zone plate 0.738 -> 0.922, near-field
    diffuser 0.777 -> 0.893, 1e4 photons per frame 0.844 -> 0.880, 1e5
    photons 0.528 -> 0.970, a sub-pixel spiral scan 0.573 -> 0.987; focused
    probe and strong phase object unchanged (0.998 / 0.997), three cases
    within 0.003 (integer spiral 0.994 -> 0.991). Over the 26 cases: median
    0.953 -> 0.977, 14 -> 18 cases >= 0.95.
    """

    NAME = "RAAR"
    AUTO_PROBE_SUPPORT = 1.0  # probe_support: auto (measured: ConstraintsMixin.probe_supports)
    PARAMS = ProjectionEngine.PARAMS.extended("RAAR", [
        Parameter("beta", 0.75, "float", "RAAR relaxation (1: DM with alpha = 1)", low=0.0, high=1.0),
        Parameter("beta_ramp", 80, "int", "iterations over which beta relaxes from 1 (DM) to beta: "
                  "beta_n = beta + (1 - beta) exp(-(n / beta_ramp)^3); 0: beta from the first iteration", low=0),
    ], doc="relaxed averaged alternating reflections")

    def set_coefficients(self):
        self.alpha = 1.0
        self.update_coefficients(0)

    def update_coefficients(self, iteration):
        beta, ramp = float(self.p.beta), int(self.p.beta_ramp)
        self.beta = beta if ramp <= 0 else beta + (1.0 - beta) * math.exp(-(iteration / ramp) ** 3)
