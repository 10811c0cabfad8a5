"""The LSQML engine: mini-batch least-squares maximum likelihood (LSQ-ML).

Odstrčil, Menzel & Guizar-Sicairos, "Iterative least-squares solver for
generalized maximum-likelihood ptychography", Opt. Express 26, 3108 (2018),
doi:10.1364/OE.26.003108.

Algorithm
---------
One engine iteration is an *epoch*: all frames, visited in mini-batches of
about ``batch_size`` frames. For every batch, with the current probe ``P``
and object ``O`` (pods ``j`` = frame, probe mode ``k``, object mode ``l``;
``psi_j = P_k O_l[window_j]``, ``Psi_j = fw(psi_j)``, ``I = sum_modes |Psi|^2``):

1. **Exit-wave update** (detector plane, per frame ``m``): a step along the
   negative gradient of the noise model's cost ``l(I)``,
   ``Psi'_j = Psi_j (1 - a_m l'(I_m))``, with ``a_m`` the closed-form step of
   :func:`~ptycli.engines.lsqml.steps.exit_step` (``gaussian``: ``a = 1``, the
   modulus projection; ``poisson``: Newton steps on the frame's cost);
   ``chi_j = bw(Psi'_j - Psi_j)``.
2. **Update directions** (least squares over the batch ``B``)::

       dO_l = sum_{j in B} conj(P_k) chi_j / (sum_{j in B} |P_k|^2 + delta_O)
       dP_k = sum_{j in B} conj(O_l,j) chi_j / (sum_{j in B} |O_l,j|^2 + delta_P)

   ``delta_O = object_reg * (mean |P|^2 / max |P|^2) * max(sum |P|^2)`` (the
   probe's mean intensity over its array, times the batch's overlap: its
   largest ``sum |P|^2`` over the probe's largest ``|P|^2``; see
   Regularisation below), ``delta_P = probe_reg * max(sum |O|^2)``
   (per storage, over the batch); ``dP`` is multiplied by the probe support.
3. **Step lengths per frame**: the 2 x 2 least-squares system of
   :func:`~ptycli.engines.lsqml.steps.frame_steps` for ``(a_O,m, a_P,m)``
   (``chi ~ a_O P dO + a_P O dP`` on frame ``m``, Tikhonov ``step_reg``
   times the batch means of the diagonal).
4. **Update**: every frame's object contribution moves with its own step,
   the probe with the batch mean of the probe steps::

       O_l <- O_l + object_step * sum_{j in B} a_O,m(j) conj(P_k) chi_j / (sum_{j in B} |P_k|^2 + delta_O)
       P_k <- P_k + probe_step  * mean_m(a_P,m) * dP_k

   (frames of a batch that do not overlap get exactly their own
   least-squares update; the paper's motivation for sparse batches).
5. **Position correction** (``position_correction``, from its start epoch):
   per-frame shifts from the object gradient and ``chi``
   (:mod:`ptycli.engines.lsqml.positions`), of the object and probe that made
   ``chi`` (estimated before step 4's updates, applied after them).
6. **Momentum** (after every epoch; ``probe_momentum``, ``object_momentum``):
   a heavy-ball step along the velocity of the epochs' changes (below).

A variable probe (every frame its own probe from eigen-probes and weights)
and multislice objects are :mod:`ptycli.engines.lsqml.variable` and
:mod:`ptycli.engines.lsqml.multislice` (their own numpy group passes, hooked
in here at three places each).

After every epoch the momentum step (6.), then the probe constraints
(support, recentring, mode orthogonalisation) and the object clipping of
the common engine parameters are applied. Before ``probe_update_start`` only the object moves
(``a_P = 0``, the 1 x 1 system). LSQML keeps no exit waves between batches:
the exit storage's memory is given back while it runs, and an engine that
follows and uses it rebuilds the exit waves as ``probe * object``.

Noise models (``noise_model``): ``gaussian`` is the paper's Gaussian model of
the *amplitudes*, ``sum mask (sqrt(I) - sqrt(n))^2`` (ML's ``euclid`` cost);
``poisson`` is ``sum mask (I - n log I)``. Both are the classes of
:mod:`ptycli.engines.ml.noise_models` (cost, ``l'``, ``l''``); ML's
``gaussian`` (intensities weighted by ``1 / (n + 1)``) is not offered: the
paper's exit-wave step is derived for the two above.

Incoherent background: a scan that fits one (``scans.<label>.background``,
:mod:`ptycli.core.background`) has ``I = sum_modes |Psi|^2 + B`` in the
exit-wave step (only the coherent part moves with the step), and after
every epoch ``B <- B sum_j m_j u_j^2 / sum_j m_j`` from the frames' factors
``u`` (:mod:`ptycli.engines.background_sums`; per-thread sums added in a
fixed order, then over the MPI ranks). Multislice groups use ``B`` as it is.

Records: ``fourier_error``, ``photon_error`` (of the model of each batch
just before its update, like ePIE), ``exit_change`` (``sum |Psi' - Psi|^2 /
sum I``), ``likelihood`` (the noise model's cost per valid pixel, with the
Poisson constant, as ML), and the extras ``lsqml_exit_step``,
``lsqml_object_step``, ``lsqml_probe_step`` (batch-frame means of ``a``,
``a_O``, ``a_P``) and, while positions are corrected, ``posc_moved``
(frames whose window moved in the epoch) and ``posc_rms_shift`` (RMS
distance from the reported positions, pixels).

Batches, randomness and MPI
---------------------------
Frames are numbered globally (scan label, then diffraction layer) on every
rank. Every epoch draws its batches from the engine's generator ``rng``
(``numpy.random.default_rng(seed)``, the same on every rank; its state is
saved with the engine state, so a resumed run draws the same batches):
``ceil(N / batch_size)`` batches of nearly equal size, either random
(``batch_mode: random``) or spread over the scan (``sparse``, the default:
the scan is cut once into compact segments of neighbouring frames and a
batch takes one frame of each, :meth:`LSQML.draw_batches`). Each rank
processes its own members of every batch; the batch's sums (the direction
numerators and denominators, the object update, the means of the step
system) are summed over ranks with :func:`ptycli.parallel.allreduce` before
the update, so every rank applies the same update and the algorithm does not
depend on the number of ranks (the results agree to rounding: 1e-12 after 8
epochs in double precision, ``tests/test_engines_lsqml.py``).

Defaults (measured on the validation zoo, ``benchmarks/validate_zoo.py``,
90 epochs from the default probe guess): small batches converge from a poor
start in fewer epochs (a diffuser probe: correlation 0.52 with batches of 16
of 100 frames, 0.96 with 4, 0.99 with 2), large ones average the counting
noise (1e4 photons per frame, ``gaussian``: 0.906 with batches of 16 of 150
frames, 0.916 with 50, 0.923 with 50 and ``delta_O`` the batch maximum, in
today's units about ``object_reg`` 50). ``batch_size: null``
makes about 25 batches per epoch; for noisy data, a second LSQML engine with
large batches and ``object_reg: 50`` refines the result (README).

Regularisation
--------------
``delta_O`` damps the object direction where the batch lights the object
dimly (``sum |P|^2`` small against ``delta_O``). It was a fraction of the
batch's largest ``sum |P|^2`` (0.1, then 0.3), and no one fraction served
every probe (full zoo, LSQML 100 after the DM warm-up, from the default
probe guess; 0.1 / 0.3 / 1.0 of the batch maximum): a batch lights an
annular (zone-plate) probe's object patchily and small values let the noise
in (foreign_zoneplate 0.922 / 0.940 / 0.969, 3.0: 0.967), while a focused
probe's object lives in the probe's dim wings, which large values hold back
(foreign_focused 0.983 / 0.966 / 0.948, 0.03: 0.991). The two want values
about 30 times apart. The probe's mean intensity over its array, as a
fraction of its largest (:func:`~ptycli.engines.lsqml.steps.mean_illumination_fraction`),
sets them apart by about that much: a focused spot in its array 0.005
(foreign_focused's true probe; focused_raster 0.003), an annular or
defocused probe that fills it 0.02-0.15 (foreign_zoneplate 0.15,
zoneplate_defocus9 0.02, foreign_nearfield 0.04, aperture_raster 0.10).
Other typical values did not: the intensity-weighted mean ``sum I^2 /
sum I`` (0.56 and 0.37 of the largest for the zone-plate and focused probes;
1.0 of it: foreign_zoneplate 0.944, foreign_focused 0.959) and the mean over
the pixels above 1 % of the largest (0.24 and 0.12; 2.0 of it: 0.948,
0.968). So ``delta_O = object_reg`` times the probe's mean intensity (of the
current probe, per batch), times the batch's overlap (its largest ``sum
|P|^2`` over the probe's largest ``|P|^2``, 1 where a sparse batch's windows
do not overlap). Swept on the cases that disagreed (LSQML 100; the old 0.3 of
the batch maximum in brackets)::

    object_reg          5      10     20     30     (old)
    foreign_zoneplate   0.954  0.968  0.968  0.968  (0.940)
    foreign_focused     0.991  0.988  0.980  0.974  (0.963)
    foreign_nearfield   -      0.979  0.980  0.981  (0.978)
    lowdose_1e3         0.655  0.672  0.681  -      (0.672)
    lowdose_1e4         -      0.913  -      0.914  (0.913)

``object_reg`` 10 (default): full zoo against the old 0.3 of the batch
maximum (same main, same run conditions), mean 0.968 -> 0.970, median 0.985
-> 0.988, 23 -> 24 of 27 cases >= 0.95; foreign_zoneplate 0.940 -> 0.968,
foreign_focused 0.963 -> 0.988, defocused_large_random 0.968 -> 0.978,
foreign_nearfield 0.978 -> 0.979, low dose 1e3 / 1e4 / 1e5 0.672 / 0.913 /
0.981 -> 0.672 / 0.913 / 0.982; largest drop foreign_rectangular 0.978 ->
0.973 (its probe's fraction 0.06: the regulariser rose from 0.3 to about 0.6
of the batch maximum), every other case within 0.002 (measured again on the
main with the compiled passes' unscaled transforms: the same scores, case by
case). DM 200 + ML 100 from
the same start: foreign_zoneplate 0.985, foreign_focused 0.989,
foreign_nearfield 0.988, foreign_rectangular 0.985, lowdose_1e4 0.909.

Probe support (measured; ``probe_support: auto`` takes 1.0 now, 0.8 with
position correction or a variable probe): 0.8 of half the frame cuts the
zoo's probes that reach past it, and
LSQML below DM 200 + ML 100 on the foreign scans is mostly that. Full zoo,
LSQML 100, 0.8 -> null: mean 0.970 -> 0.976, median 0.988 -> 0.996;
foreign_zoneplate 0.968 -> 0.996, foreign_nearfield 0.979 -> 0.997,
foreign_rectangular 0.973 -> 0.979, two_modes 0.974 -> 0.997,
defocused_large_random 0.978 -> 0.995, largest drop subpixel_spiral 0.985 ->
0.981 (the foreign scans with 0.9 / 1.0: 0.991 / 0.995, 0.992 / 0.996, 0.979
/ 0.979; the full zoo with 1.0: mean 0.975, median 0.995, 23 of 27 >= 0.95,
against 0.970, 0.988 and 24 measured again with 0.8: diffuser_farfield 1.000
-> 0.983, near_diffuser_cxi 0.928 -> 0.923, rect_48x80_near 0.951 -> 0.949).
DM 200 + ML 100 without a support: foreign_zoneplate 0.985 -> 0.996,
foreign_rectangular 0.985 -> 0.989, foreign_nearfield 0.988 -> 0.388
(diverged). Not the default yet: without it the gradient position correction
test (``tests/test_engines_lsqml.py``) ends at 1.51 px rms instead of 0.11
(1.0: 0.74, 0.9: 0.11; the probe drifts to the frame's edge, 54 % of its
energy there, and wraps around) and the fly scan's worst per-frame probe
(``tests/test_engines_lsqml_opr_multislice.py``) falls to 0.929 (1.0:
0.876). With the support, on the three foreign scans (0.968 / 0.979 /
0.973): 200 and 300 epochs 0.963 / 0.980 / 0.979 and 0.950 / 0.980 / 0.980,
batches of 4 and 32 0.972 / 0.979 / 0.974 and 0.964 / 0.982 / 0.967,
``noise_model: poisson`` 0.968 / 0.979 / 0.974, from the true probe 0.967 /
0.988 / 0.972.

From the default (``auto``) probe guess the update of the paper alone
(``probe_momentum: 0``) can stall on a plateau that DM leaves: on the
foreign near-field scan the Fourier error falls by about 1 % per 10 epochs
(0.375 after 100 epochs, 0.51 after 120; DM 60 + ML 30 0.907); on
two_modes 0.237 (DM + ML 0.944). The probe is the slow variable there (with
the true probe LSQML reaches 0.979 and 0.980 in 100 epochs). Tried
and measured against it (100 epochs, default batches): ``a_O`` capped at 1
(0.23 / 0.10 on two_modes / near field), ``object_step`` 0.7 (0.18),
smaller ``step_reg``, ``probe_reg``, larger ``probe_step`` (0.19-0.34),
``probe_update_start`` 0 or 10 (no change), ``delta_O`` 0.01 of the batch maximum (0.73 /
0.32; two_modes seed 21: 0.27 -> 0.96, also with the momentum below, but
seed 14 with it 0.57), an object momentum (0.22-0.31 / 0.22-0.37).
Pty-Chi's LSQML (2.2.0, CPU, its defaults, batches of 5, ptycli's ``auto``
probe, 100 epochs) stalls on two_modes too: 0.16, and 0.16 with its
``momentum_acceleration_gain: 0.5`` (from the true probe 0.97 after 20).

**Momentum** (step 6 of the algorithm; the accelerated LSQ-ML that
PtychoShelves and Pty-Chi offer, here the heavy-ball step of
:class:`~ptycli.engines.momentum.Momentum` once per epoch): after the
epoch's batches and before its constraints, with the probe's change since
the previous momentum step ``d`` (the batches' updates and the previous
epoch's constraints) and its
velocity ``v`` (zero at the start and until ``probe_update_start``),
``v <- eta v + d``, ``P <- P + eta v`` (``eta = probe_momentum``; the
velocities follow the mode orthogonalisation; a variable probe's
eigen-probes, refactored every epoch, get none; ``object_momentum`` does the
same for the object, off by default; ``momentum_restart`` zeroes a velocity
whose new step points against it). With ``probe_momentum: 0.7`` (default)
the quick zoo, LSQML 90 epochs from the default guess (before: 0 ->
after; ``benchmarks/validate_zoo.py --quick --engines LSQML:90``), moves:
foreign near field 0.328 -> 0.971, two_modes 0.220 -> 0.666,
rect_48x80_near 0.852 -> 0.906, zoneplate_defocus9 0.951 -> 0.961,
diffuser_farfield 0.963 -> 0.994, subpixel_spiral 0.959 -> 0.982,
position_errors 0.990 -> 0.993 (0.16 px rms, as without the momentum on
the same main: 0.991, 0.16 px after 100 epochs), lowdose_1e4 0.905
both, foreign_zoneplate 0.931 -> 0.928, focused_raster and rect_48x80_far
unchanged (0.999, 0.992-0.993). Other realisations (100 / 90 epochs):
rect_48x80_near seed 31 0.893 -> 0.925, lowdose_1e4 seed 31 0.919 both,
subpixel_spiral seed 31 0.29 -> 0.66 (DM 60 + ML 30 0.98), two_modes seeds
21 and 22 0.27 -> 0.30 and 0.32 -> 0.33 (DM + ML 0.98 both: still stalled),
foreign_focused 0.974 -> 0.972, foreign_rectangular 0.952 -> 0.961. The
friction was chosen on the same cases: 0.5 leaves the near-field plateau
only at about epoch 85 (0.879 after 90 epochs, 0.973 after 100); 0.7
(momentum step after the constraints) at about epoch 75 and was at least
as good as 0.5 on every quick case; 0.8 and 0.9 with restart 0.908 and
0.97 after 100; batches of 2 frames with 0.5 leave it at epoch 40 (0.965)
at 2.4 times the cost per epoch. two_modes moves between 0.67 and 0.85
with small changes (order of the step, friction): it sits at the edge of
the plateau. The step costs 0.02 % of an epoch (100 frames of 64 x 64).
At the time of DM 60 + ML 30 (about LSQML 30 on these cases: 45 s against
48 s for the quick zoo) LSQML from the default guess has not arrived
(median 0.894 against 0.944; foreign near field 0.11, diffuser_farfield
0.64, subpixel_spiral 0.26); from the true probe it has (median 0.984).

Passes and cost
---------------
The passes over a group's frames are :class:`~ptycli.engines.lsqml.batch.GroupBatch`
(numpy) or :class:`~ptycli.engines.lsqml.compiled.CompiledGroupBatch` (numba
window passes), chosen once by ``kernels`` as in the other engines (``auto``:
compiled for jobs of at least 2**22 exit-wave pixels). A batch is cut into
one part per thread (:class:`~ptycli.engines.threads.BlockPool`), each with
its own work arrays, kept between batches
(:func:`~ptycli.engines.lsqml.batch.work_array`); the object-shaped sums and
the object update are added in row bands of the object, one per thread
(every pixel by one thread, the pods in a fixed order: no per-thread object
accumulators to merge), the probe sums into accumulators of each thread
(numpy: in the part's exit-wave pass; compiled: in the band's object sums,
one pass over ``chi``). The object-shaped sums are touched on the batch's
windows only, so a batch costs in proportion to its frames. Per epoch: one
forward and one inverse FFT of every pod plus five compiled passes over the
pods (exit waves, amplitude step, direction sums, step sums, update; numpy:
about 40 elementwise passes). Measured (400 frames of
128 x 128, batches of 16, ``benchmarks/bench_engines.py``, shared 2-core
machine): before the row bands 5.2 times the FFT floor in wall time, 5.0 in
CPU time (DM 2.1 / 2.0, ML 3.6 / 3.6 in the same run; 3.9-7.1 in wall time
at other loads). The row bands (no serial merges) and forming ``conj(P) chi``
in the object passes took 15-25 % of the CPU time of an epoch off: paired
A/B runs on the loaded machine (8 pairs, medians) 7.3 -> 5.9 times the floor
in wall time, 7.5 -> 6.0 in CPU time (325 -> 250 ms per epoch); 1000 frames
of 256 x 256 (2 pairs) 4.2 -> 3.5 and 3.8 -> 3.2. The compiled passes then
divide by ``denO + delta_O`` once per pixel (``object_direction``, on the
union of the batch's windows) instead of once per pod in the step sums and
again in the update, leave the object-shaped sums marked instead of zeroing
them (the next batch's ``object_sums`` starts a marked pixel anew; 15 ms of
an epoch), take the batch maximum of ``denO`` while summing it and read the
detector data of the batch's frames in place: paired A/B runs (12 pairs at
two loads, medians of the per-pair ratios) 0.85-0.94 of the CPU time, at
400 x 128 x 128 5.9 -> 5.2 and 5.6 -> 5.1 times the floor in CPU time
(7.1 -> 6.1 and 5.8 -> 5.3 in wall time), about 225 ms per epoch. Where an
epoch of about 250 ms goes (CPU time summed over both threads, ms): FFTs 47,
step sums 33, object sums 30, update 21, probe sums 20, exit waves 17,
object direction 12, amplitude step 10, the rest (Python, numpy glue,
thread hand-offs) 64; 1000 x 256 x 256 (2 pairs) 3.5 -> 2.9 and 4.0 -> 3.1 in CPU time,
3.5 -> 3.1 and 4.0 -> 3.3 in wall time. Then the compiled kernels read the
rows of complex arrays as real arrays of (real, imaginary) pairs, so that
their loops vectorise; the probe sums joined the object sums' band pass (one
pass over ``chi``); the object direction's own pass went (the step sums and
the update divide per pod pixel, the update marks the sums for the next
batch); the pool's calling thread runs thread 0's items: paired A/B runs
(9 pairs, medians) at 400 x 128 x 128 5.7 -> 3.8 times the floor in CPU
time (0.70 of the CPU time per pair, 217 -> 170 ms per epoch), 4.9 -> 3.7
in wall time; 1000 x 256 x 256 (2 pairs) 3.1 -> 2.3 in CPU time, 3.2 -> 2.4
in wall time. An epoch at 400 x 128 x 128 now (CPU ms over both threads,
two runs; before in brackets): FFTs 37-41 (40), object and probe sums 31-39
(41), step sums 18-20 (32), update 11-12 (19-21), exit waves 7-9 (14),
amplitude step 8-9 (9), object direction - (9), the rest 32-38 (53-58). The
window passes are bound by memory: a sparse batch's windows lie apart in
the object, out of the cache (object and probe sums of one thread: 1.7 ns
per pod pixel on windows in the cache, 8.5 on others).
Per epoch the passes transform every pod once forward and once back, the
least the algorithm needs (the exit-wave step needs ``Psi``, the directions
``chi``). Then (issue 16) the far-field transforms were left unscaled and
their unitary factors applied in the compiled amplitude step (two passes over
the stack fewer per epoch; the same numbers bit for bit for frames of
2^k x 2^k pixels), the window passes prefetch the object rows two rows
ahead, and the probe sums' per-thread accumulators are kept between
batches (no fresh pages per batch): paired A/B runs at 400 x 128 x 128 on
the shared machine at load 2-12 (8 pairs, medians) 4.56 -> 4.31 times the
floor in CPU time (0.95 per pair; the 2 pairs at load 3: 4.38, 4.61 -> 4.06,
4.08), 4.71 -> 4.55 in wall time (0.95 per pair); 1000 x 256 x 256 (1 pair)
2.73 -> 2.69 in CPU time. CPU time of an
epoch (400 x 128 x 128, ms over both threads, load 6-8): FFTs 42-48 (floor
47-54), object and probe sums 38-43, step sums 30-34, amplitude step 16-19,
update 14-16, exit waves 11-12, the rest (Python, numpy glue, hand-offs)
about 35; the calling thread runs the serial steps between the passes
(142 against 94 ms of thread CPU time per epoch under cProfile, which adds
to the calling thread's).
"""

import logging

import numpy as np

from ... import parallel
from ...core import fft
from ...params.declare import Parameter
from ..background_sums import BackgroundSums
from ..base import Engine, register
from ..._lazy import lazy_module
from ..ml.noise_models import noise_model
from ..momentum import Momentum
from ..posref import POSREF_PARAMS
from ..threads import BlockPool
from . import batch as numpy_passes
from .batch import GroupBatch
from .positions import POSITION_PARAMS, GradientPositions
from .steps import frame_steps, mean_illumination_fraction
from .multislice import SLICE_OBJECT_REG, MultisliceGroupBatch, slice_steps
from .variable import VariableGroupBatch, refactor_book, update_weights

# imported at first use: listing the parameters (ptycli params) needs no numba
fused = lazy_module("ptycli.engines.fused")
compiled_passes = lazy_module("ptycli.engines.lsqml.compiled")

__all__ = ["LSQML", "NOISE_MODELS"]

log = logging.getLogger("ptycli.engines")

#: ``batch_size: null`` makes about this many batches per epoch
AUTO_BATCHES = 25

#: ``noise_model`` -> the model of :mod:`ptycli.engines.ml.noise_models`
NOISE_MODELS = {"gaussian": "euclid", "poisson": "poisson"}


def sparse_segments(positions, labels, nseg):
    """Cut frames into ``nseg`` compact segments of nearly equal size (arrays of frame indices).

    Frames are ordered along a boustrophedon path through their positions
    (``positions`` (N, 2) rows, cols; ``labels`` their scan labels, scans
    kept apart): rows of about ``sqrt(N / nseg)``-frame bands by the first
    coordinate, alternately by increasing and decreasing second coordinate;
    the path is cut into ``nseg`` consecutive parts. Neighbours on the path
    are neighbours in the scan, so frames of different segments lie apart.
    """
    n = len(positions)
    nseg = max(1, min(int(nseg), n)) if n else 1
    if n == 0:
        return []
    lab = np.unique(np.asarray(labels), return_inverse=True)[1]
    y, x = positions[:, 0], positions[:, 1]
    per = max(1, n // nseg)
    nbands = max(1, int(round(np.sqrt(n / per))))
    span = max(float(y.max() - y.min()), 1.0)
    band = np.minimum(((y - y.min()) / span * nbands).astype(np.int64), nbands - 1)
    key_x = np.where(band % 2 == 0, x, -x)
    order = np.lexsort((key_x, band, lab))
    return [np.asarray(part, np.int64) for part in np.array_split(order, nseg)]


@register
class LSQML(BackgroundSums, Engine):
    """Least-squares maximum-likelihood ptychography in mini-batches (see the module docstring)."""

    NAME = "LSQML"
    AUTO_PROBE_SUPPORT = 1.0  # probe_support: auto (measured: ConstraintsMixin.probe_supports)
    #: the incoherent background in the model intensity, its update after every epoch (module docstring)
    FITS_BACKGROUND = True
    WARMUP_ENGINE = "DM"  # engines.<label>.warmup DM iterations first (the parameter's doc)
    VARIABLE_PROBE = True  # a probe per frame from eigen-probes: ptycli.engines.lsqml.variable
    MULTISLICE = True  # multislice objects: ptycli.engines.lsqml.multislice
    USES_EXIT_STORAGE = False  # exit waves live per batch in its buffers
    LOCAL_PROBE_UPDATES = True  # a probe step per mini-batch: the probe guess checks its pick for it
    PARAMS = Engine.PARAMS.extended("LSQML", [
        Parameter("batch_size", None, "int",
                  "frames per mini-batch (null: ceil(frames / %d), about %d batches per epoch); smaller batches "
                  "converge faster from a poor start, larger ones average the noise" % (AUTO_BATCHES, AUTO_BATCHES),
                  low=1, nullable=True),
        Parameter("batch_mode", "sparse", "str",
                  "sparse: the frames of a batch lie far apart (one from each compact segment of the scan); "
                  "random: random frames", choices=("sparse", "random")),
        Parameter("noise_model", "gaussian", "str",
                  "likelihood: gaussian (on amplitudes: the exit-wave step is the modulus projection) or "
                  "poisson (Newton step per frame)", choices=list(NOISE_MODELS)),
        Parameter("object_reg", 10.0, "float",
                  "object direction regulariser delta_O in units of the probe's mean intensity over its array "
                  "(times the batch's overlap, its largest sum |P|^2 over the probe's largest |P|^2; a multislice "
                  "object's slices: at least the batch's largest sum |P|^2)",
                  low=0.0),
        Parameter("probe_reg", 0.1, "float",
                  "probe direction regulariser delta_P as a fraction of the batch's largest sum |O|^2", low=0.0),
        Parameter("step_reg", 0.1, "float",
                  "Tikhonov factor of the per-frame 2 x 2 step system, times the batch means of its diagonal",
                  low=0.0),
        Parameter("object_step", 1.0, "float", "factor on the optimal object steps", low=0.0, high=2.0),
        Parameter("probe_step", 1.0, "float", "factor on the optimal probe step", low=0.0, high=2.0),
        Parameter("probe_momentum", 0.7, "float",
                  "friction eta of the probe's momentum: after every epoch v <- eta v + (change of the epoch), "
                  "P <- P + eta v (0: off; module docstring)", low=0.0, high=0.99),
        Parameter("object_momentum", 0.0, "float", "friction eta of the object's momentum, as probe_momentum",
                  low=0.0, high=0.99),
        Parameter("momentum_restart", False, "bool",
                  "zero a velocity when the epoch's change points against it (adaptive restart)"),
        Parameter("seed", 0, "int", "seed of the batch draws (same seed, same result)", low=0),
        Parameter("warmup", 50, "int",
                  "DM iterations run before LSQML when LSQML is the first engine and a scan's probe starts from "
                  "a model (illumination.model auto, flat, aperture, ...; not a file) and no scan is multislice or "
                  "has a variable probe: LSQML's local probe steps can lock onto a poor curvature guess; 0: none", low=0),
        POSITION_PARAMS,
        POSREF_PARAMS,
    ], doc="least-squares maximum likelihood in mini-batches (Odstrcil et al. 2018)")

    def __init__(self, ptycho, pars=None, label=None):
        super().__init__(ptycho, pars, label)
        self.rng = np.random.default_rng(int(self.p.seed))
        self.groups = []
        self.positions = None
        self.last_batches = None
        self._acc = None
        self._probe_acc = None  # (probe shapes, per thread numP and denP): see _accumulators
        self._pool = None
        self._buffers = []  # per work item of a batch: work arrays kept between batches
        self.momentum = None

    # -- life cycle -----------------------------------------------------------------
    def engine_initialize(self):
        p = self.p
        self.noise = noise_model(NOISE_MODELS[str(p.noise_model).lower()])
        self.eps = self.noise.eps(self.mean_power)
        n_pixels = sum(g.n_pods * g.shape[0] * g.shape[1] for g in self.book.groups)
        # the compiled passes leave the object-shaped sums marked between batches (compiled.scatter_update),
        # which the numpy passes of a variable probe or a multislice object do not read: all groups or none
        special = [g.label for g in self.book.groups if g.probe_weights is not None or int(g.obj.slices) > 1]
        self._compiled = fused.use_compiled(p.kernels, n_pixels, True)
        if self._compiled and special:
            if parallel.master:
                log.info("%s: scans %s have a variable probe or a multislice object; the LSQML passes are numpy",
                         self.label, ", ".join(map(str, special)))
            self._compiled = False
        kind = compiled_passes.CompiledGroupBatch if self._compiled else GroupBatch
        self._ops = compiled_passes if self._compiled else numpy_passes  # the window operations
        self.groups = [self._group_passes(g, kind) for g in self.book.groups]
        self.init_background_sums([G.g for G in self.groups if not isinstance(G, MultisliceGroupBatch)])
        self._bg_parts = None  # per-thread background sums, made at the first epoch (_background_parts)
        self._variable = any(isinstance(G, VariableGroupBatch) for G in self.groups)
        self._slices = max([int(getattr(S, "slices", 1)) for S in self.ptycho.obj.S.values()] + [1])  # same on every rank
        self._cost_const = self.noise.cost_constant((G.n, G.mask) for G in self.groups)
        P = self.ptycho
        self.obj_ids = sorted(P.obj.S)
        self.probe_ids = sorted(P.probe.S)
        # the probes lighting each object storage (on any rank): the scale of its regulariser
        self._obj_probes = {sid: set() for sid in self.obj_ids}
        for part in parallel.allgather([(g.obj.ID, g.probe.ID) for g in self.book.groups]):
            for oid, pid in part:
                self._obj_probes[oid].add(pid)
        self._obj_probes = {sid: sorted(v) for sid, v in self._obj_probes.items()}
        # the global frame numbering: (scan label, diffraction layer) of every frame of every rank,
        # with the frame's window (for the sparse batches)
        local = []
        for gi, g in enumerate(self.book.groups):
            lm = np.asarray(g.diff.layermap, dtype=np.int64)
            for f, layer in enumerate(lm[g.frame_di].tolist() if g.n_frames else []):
                local.append((str(g.label), int(layer), int(g.frame_y[f]), int(g.frame_x[f]), gi, f))
        every = {}
        for part in parallel.allgather([x[:4] for x in local]):
            for label, layer, y, x in part:
                every[(label, layer)] = (y, x)
        keys = sorted(every)
        index = {k: i for i, k in enumerate(keys)}
        self.n_global = len(keys)
        self._owner_group = np.full(self.n_global, -1, np.int64)
        self._owner_frame = np.full(self.n_global, -1, np.int64)
        for label, layer, y, x, gi, f in local:
            i = index[(label, layer)]
            self._owner_group[i] = gi
            self._owner_frame[i] = f
        bs = p.get("batch_size")
        self.batch_size = max(1, -(-self.n_global // AUTO_BATCHES)) if bs is None else int(bs)
        nb = -(-self.n_global // self.batch_size)  # batches per epoch
        self._segments = sparse_segments(np.array([every[k] for k in keys], float).reshape(-1, 2),
                                         [k[0] for k in keys], -(-self.n_global // max(nb, 1)))
        pc = p.get("position_correction")
        self.positions = GradientPositions(self.book, pc) if pc and pc.get("start") is not None else None
        if float(p.probe_momentum) > 0 or float(p.object_momentum) > 0:
            self.momentum = Momentum(float(p.object_momentum), 1, float(p.probe_momentum), bool(p.momentum_restart))
            self.momentum.reset("obj", {sid: P.obj.S[sid].data for sid in self.obj_ids})
            # a variable probe's eigen-probes are refactored every epoch (ptycli.core.variable_probe): no momentum
            self._momentum_probes = [sid for sid in self.probe_ids if not getattr(P.probe.S[sid], "variable_modes", 0)]
            self.momentum.reset("probe", {sid: P.probe.S[sid].data for sid in self._momentum_probes})
        workers = max(1, int(fft.get_workers()))
        self._pool = BlockPool(workers)  # batch parts on the threads; single-threaded FFTs then
        self._fft_workers = max(1, workers // self._pool.n)

    def _group_passes(self, g, kind):
        """The passes over group ``g``: ``kind``, or the numpy passes of a variable probe or a multislice object.

        Both are numpy only (:meth:`engine_initialize` then chooses the numpy passes for every group, logged);
        position correction does not move the frames of a multislice object (logged).
        """
        multi = int(g.obj.slices) > 1
        if g.probe_weights is None and not multi:
            return kind(g, self.noise, self.eps)
        pc = self.p.get("position_correction")
        if multi and pc and pc.get("start") is not None and parallel.master:
            log.warning("%s: position correction does not move the frames of scan %s (a multislice object)",
                        self.label, g.label)
        if multi:
            return MultisliceGroupBatch(g, self.noise, self.eps)
        return VariableGroupBatch(g, self.noise, self.eps)

    def engine_finalize(self):
        # the exit storage stays released: an engine that follows and uses it rebuilds probe * object
        self.groups = []
        self._acc = None
        self._probe_acc = None
        self._buffers = []
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def positions_changed(self, moved):
        if self.positions is not None:
            self.positions.windows_moved(moved)

    # -- batches -----------------------------------------------------------------------
    def draw_batches(self):
        """This epoch's batches: a list of arrays of global frame indices (same on every rank).

        Both modes make ``nb = ceil(N / batch_size)`` batches of nearly equal
        size. ``random``: one permutation of all frames cut into ``nb`` parts.
        ``sparse``: the frames are cut once into ``ceil(N / nb)`` compact
        segments of ``nb`` (or ``nb - 1``) neighbouring frames
        (:func:`sparse_segments`); every epoch each segment is permuted and
        batch ``k`` takes the ``k``-th frame of every segment (the batches in a
        random order), so the frames of a batch lie far apart.
        """
        n = self.n_global
        if n == 0:
            return []
        if str(self.p.batch_mode) == "random":
            perm = self.rng.permutation(n)
            nb = -(-n // self.batch_size)
            return np.array_split(perm, nb)
        segs = [seg[self.rng.permutation(len(seg))] for seg in self._segments]
        nb = max(len(seg) for seg in segs)
        order = self.rng.permutation(nb)
        return [np.array([seg[k] for seg in segs if k < len(seg)], np.int64) for k in order]

    def _local(self, batch):
        """``{group index: sorted local frames}`` of a batch's members on this rank."""
        gi = self._owner_group[batch]
        fr = self._owner_frame[batch]
        out = {}
        for k in np.unique(gi[gi >= 0]).tolist():
            out[k] = np.sort(fr[gi == k])
        return out

    # -- one epoch --------------------------------------------------------------------
    def engine_iterate(self, n):
        out = []
        for _ in range(int(n)):
            out.append(self._epoch())
        return out

    def _epoch(self):
        probe_on = self.probe_update_due()
        pos_on = self.positions is not None and self.positions.due(self.iteration)
        errors = self.new_error_sums()
        batches = self.draw_batches()
        self.last_batches = batches
        stats = np.zeros(8)  # sum a, sum a_O, sum a_P, frames, frames moved
        for sums in self._background_parts():
            for a in sums.values():
                a.fill(0)
        for batch in batches:
            stats += self._batch(self._local(batch), probe_on, pos_on, errors)
        if self._bg_sums:  # the epoch's background factors, thread by thread in a fixed order
            self.zero_background_sums()
            for sums in self._background_parts():
                for label, a in sums.items():
                    self._bg_sums[label] += a
            self.background_update()
        self._momentum_step(probe_on)  # before the constraints: the epoch ends with them
        if probe_on:
            if self._variable:  # the eigen-probes' gauge (ptycli.engines.lsqml.variable)
                refactor_book(self.book, reduce=parallel.allreduce if parallel.size > 1 else None)
            self.apply_probe_constraints(orthogonalize=False)
            rotations = self.orthogonalize_probe(rotate_exit=False)
            if self.momentum is not None:
                self.momentum.mix_modes("probe", rotations)  # velocities follow the modes
        self.apply_object_constraints()
        errors.sums[4] += self._cost_const
        errors.has_likelihood = True
        rec = errors.reduce()
        rec["likelihood"] = rec["likelihood"] / max(self.total_valid, 1.0)
        parallel.allreduce(stats)
        nfr = max(stats[3], 1.0)
        rec.update(lsqml_exit_step=float(stats[0] / nfr), lsqml_object_step=float(stats[1] / nfr),
                   lsqml_probe_step=float(stats[2] / nfr))
        if pos_on:
            s = np.array(self.positions.rms_shift(), float)
            parallel.allreduce(s)
            rec.update(posc_moved=int(round(stats[4])), posc_rms_shift=float(np.sqrt(s[0] / max(s[1], 1.0))))
        return rec

    def _momentum_step(self, probe_on):
        """The epoch's momentum step of the object and (while it is updated) the probe (module docstring)."""
        m = self.momentum
        if m is None:
            return
        P = self.ptycho
        if m.friction["obj"] > 0:
            m.step("obj", {sid: P.obj.S[sid].data for sid in self.obj_ids})
        if m.friction["probe"] > 0:
            probes = {sid: P.probe.S[sid].data for sid in self._momentum_probes}
            if probe_on:
                m.step("probe", probes)
            else:  # no probe update yet: the velocity stays zero, the anchor follows the probe
                m.reset("probe", probes)

    def _background_parts(self):
        """Per thread, scan label -> the ``sum mask u^2`` of the frames it stepped this epoch (scans with a
        background whose passes take them: not multislice ones, which use ``B`` as it is)."""
        if self._bg_parts is None:
            self._bg_parts = [{label: np.zeros(a.shape) for label, a in self._bg_sums.items()}
                              for _ in range(self._pool.n)]
        return self._bg_parts

    def _accumulators(self):
        """The object-shaped sums ``numO``, ``denO``, ``upd`` (one set, kept zero between batches outside the
        windows), and per thread the probe sums ``numP``, ``denP`` (zero; kept between batches: new arrays
        would touch fresh pages in the kernels every batch)."""
        P = self.ptycho
        if self._acc is None:
            self._acc = dict(numO={}, denO={}, upd={})
            for sid in self.obj_ids:
                S = P.obj.S[sid]
                self._acc["numO"][sid] = np.zeros_like(S.data)
                self._acc["denO"][sid] = np.zeros(S.data.shape, self.ftype)
                if parallel.size > 1:  # the object update's sum over MPI ranks
                    self._acc["upd"][sid] = np.zeros_like(S.data)
        shapes = [P.probe.S[sid].data.shape for sid in self.probe_ids]
        if self._probe_acc is None or self._probe_acc[0] != shapes:
            self._probe_acc = (shapes, [
                dict(numP={sid: np.zeros_like(P.probe.S[sid].data) for sid in self.probe_ids},
                     denP={sid: np.zeros(P.probe.S[sid].data.shape, self.ftype) for sid in self.probe_ids})
                for _ in range(self._pool.n)])
        else:
            for a in self._probe_acc[1]:
                for part in a.values():
                    for x in part.values():
                        x.fill(0)
        return self._acc, self._probe_acc[1]

    def _parts(self, local):
        """Work items ``(group index, frames)``: each group's batch frames cut into one part per thread."""
        T = self._pool.n
        items = []
        for gi, frames in local.items():
            for part in np.array_split(frames, min(T, len(frames))):
                items.append((gi, part))
        return items

    def _windows_of(self, items, states):
        """Object storage ID -> the windows (rows ``layer, y, x, H, W``) of the items' pods."""
        wins = {sid: [] for sid in self.obj_ids}
        for (gi, _), st in zip(items, states):
            G = self.groups[gi]
            wins[G.g.obj.ID].append(G.window_list(st))
        return {sid: np.concatenate(w) if w else np.zeros((0, 5), np.int64) for sid, w in wins.items()}

    def _bands(self, fn, thread=False):
        """``fn(r0, r1)`` on row bands ``r0:r1`` of the object storages, one band per thread; the bands' results
        (``fn(k, r0, r1)`` with ``thread``: ``k`` the band's thread, for its own accumulators).

        The window operations of a band touch its rows only, so the bands run
        at once and every pixel sees the same operations in the same order as
        in one serial pass over the parts (:meth:`_parts`, in order: the pods
        of one pass over the batch's frames), whatever the thread count.
        """
        arrays = [self.ptycho.obj.S[sid].data for sid in self.obj_ids]

        def band(k, sl):
            r = (sl.start or 0, 2**62 if sl.stop is None else sl.stop)
            return fn(k, *r) if thread else fn(*r)

        return self._pool.rows(band, arrays)

    def _object_reg(self, sid):
        """``delta_O`` of object ``sid`` as a fraction of the batch's largest ``sum |P|^2`` (module docstring).

        ``object_reg`` times the mean-to-largest ratio of the probes lighting
        the object (:func:`~ptycli.engines.lsqml.steps.mean_illumination_fraction`,
        of the current probes, the same on every MPI rank); a multislice
        object's at least :data:`~ptycli.engines.lsqml.multislice.SLICE_OBJECT_REG`.
        """
        S = self.ptycho.obj.S[sid]
        frac = mean_illumination_fraction([self.ptycho.probe.S[q].data for q in self._obj_probes[sid]])
        reg = float(self.p.object_reg) * frac
        return max(reg, SLICE_OBJECT_REG) if int(getattr(S, "slices", 1)) > 1 else reg

    def _batch(self, local, probe_on, pos_on, errors):
        """One mini-batch (collective under MPI); returns the step statistics (see :meth:`_epoch`).

        The batch's frames are cut into one part per thread (:meth:`_parts`;
        item ``i`` runs on thread ``i % T``). The per-pod passes (exit waves,
        transforms, probe sums into that thread's accumulators, step sums)
        run by part; the object-shaped sums and the object update are added in
        row bands of the object, one per thread (:meth:`_bands`), every part's
        pods in a fixed order, so the result does not depend on timing and the
        object sums not on the thread count. The object-shaped sums are
        touched on the batch's windows only (they are zero elsewhere and
        zeroed again on the windows at the end), so a batch costs in
        proportion to its frames, not to the object.
        """
        P = self.ptycho
        a0, acc = self._accumulators()
        errs = [self.new_error_sums() for _ in acc]
        items = self._parts(local)
        workers = self._fft_workers

        while len(self._buffers) < len(items):
            self._buffers.append({})

        ratios = self._background_parts()

        def exit_pass(k, i):
            gi, frames = items[i]
            G = self.groups[gi]
            g = G.g
            sub = {key: acc[k][key][g.probe.ID] for key in ("numP", "denP")}
            if g.label in ratios[k]:
                return G.exit_update(frames, g.obj.data, g.probe.data, sub, errs[k], workers, self._buffers[i],
                                     ratios[k][g.label])
            return G.exit_update(frames, g.obj.data, g.probe.data, sub, errs[k], workers, self._buffers[i])

        res = self._pool.map(exit_pass, range(len(items)))
        exit_steps = [r[0] for r in res]
        states = [r[1] for r in res]
        for e in errs:
            errors.sums += e.sums
        reduce = parallel.size > 1
        # the batch's windows, for the window operations (the compiled passes of one process need none)
        wins = self._windows_of(items, states) if reduce or not self._compiled else None
        if reduce:
            every = parallel.allgather(wins)
            wins = {sid: np.concatenate([part[sid] for part in every]) for sid in self.obj_ids}

        # the object sums in row bands on the threads, with their batch maximum (the regulariser); the compiled
        # passes add the probe sums there too, into the band's accumulators
        def object_sums(k, r0, r1):
            top = {sid: 0.0 for sid in self.obj_ids}
            for (gi, _), st in zip(items, states):
                G = self.groups[gi]
                sid = G.g.obj.ID
                sub = {key: acc[k][key][G.g.probe.ID] for key in ("numP", "denP")}
                m = G.scatter_object_sums(st, a0["numO"][sid], a0["denO"][sid], r0, r1, sub)
                if m is not None:  # the compiled passes: the largest sum written
                    top[sid] = max(top[sid], float(m))
            if not reduce:
                return [top[sid] for sid in self.obj_ids] if self._compiled else windows_max(r0, r1)

        def windows_max(r0, r1):
            return [self._ops.windows_max(a0["denO"][sid], wins[sid], r0, r1) for sid in self.obj_ids]

        best = self._bands(object_sums, thread=True)
        for a in acc[1:]:
            for key in ("numP", "denP"):
                for sid in self.probe_ids:
                    acc[0][key][sid] += a[key][sid]
        if reduce:
            for sid in self.obj_ids:
                parallel.allreduce(a0["numO"][sid])
                parallel.allreduce(a0["denO"][sid])
            best = self._bands(windows_max)
        best = np.max(best, axis=0)
        regO = {sid: max(self._object_reg(sid) * float(m), 1e-30) for sid, m in zip(self.obj_ids, best)}
        # the probe's directions in full
        dP = {}
        if probe_on:
            for sid in self.probe_ids:
                num, den = acc[0]["numP"][sid], acc[0]["denP"][sid]
                if reduce:
                    parallel.allreduce(num)
                    parallel.allreduce(den)
                reg = float(self.p.probe_reg) * float(den.max()) if den.size else 0.0
                d = num / (den + self.ftype.type(max(reg, 1e-30)))
                sup = self.supports.get(sid)
                if sup is not None:
                    d *= sup
                dP[sid] = d

        # per-frame step systems
        def sums_pass(k, i):
            gi = items[i][0]
            G = self.groups[gi]
            sid = G.g.obj.ID
            return G.step_sums(states[i], a0["numO"][sid], a0["denO"][sid], self.ftype.type(regO[sid]),
                               dP.get(G.g.probe.ID) if probe_on else None)

        sums = self._pool.map(sums_pass, range(len(items)))
        tot = np.zeros(3)
        for s in sums:
            tot += (s[0].sum(), s[1].sum(), s.shape[1])
        if reduce:
            parallel.allreduce(tot)
        nb = max(tot[2], 1.0)
        lam = float(self.p.step_reg)
        steps = [frame_steps(s[0], s[1], s[2], s[3], s[4], lam, probe_on, tot[0] / nb, tot[1] / nb) for s in sums]
        if self._slices > 1:  # the other slices' steps (ptycli.engines.lsqml.multislice)
            slice_steps(self.groups, items, states, lam, self._slices)
        beta = float(self.p.object_step)

        # the frames' shifts from the object and probe that made chi (before this batch's updates: the compiled
        # passes update the object in place, where the numpy passes' gathered windows keep the old values)
        shifts = self._pool.map(lambda k, i: self.groups[items[i][0]].position_shifts(states[i]),
                                range(len(items))) if pos_on else None
        prepare = lambda k, i: self.groups[items[i][0]].object_update_values(states[i], steps[i][0], beta)  # noqa: E731
        if self._compiled:  # the compiled passes only note the pods' weights: no hand-off to the threads
            for i in range(len(items)):
                prepare(0, i)
        else:
            self._pool.map(prepare, range(len(items)))
        stats = np.zeros(8)
        aP_sum = np.zeros(2)
        for i, (aO, aP) in enumerate(steps):
            aP_sum += (aP.sum(), len(aP))
            stats[:4] += (exit_steps[i].sum(), aO.sum(), aP.sum(), len(aO))
        # updates in row bands on the threads: every part's object update added in the order of the parts
        # (as the pods of one serial pass: the result does not depend on the thread count), straight into the
        # object (under MPI into a sum over the ranks first); then the sums zeroed on the windows
        def scatter(target, r0, r1):
            for (gi, _), st in zip(items, states):
                G = self.groups[gi]
                G.scatter_object_update(st, target[G.g.obj.ID], r0, r1)

        def finish(r0, r1):
            for sid in self.obj_ids:
                self._ops.finish_windows(P.obj.S[sid].data, a0["upd"][sid], a0["numO"][sid], a0["denO"][sid],
                                         wins[sid], r0, r1)

        if reduce:
            self._bands(lambda r0, r1: scatter(a0["upd"], r0, r1))
            for sid in self.obj_ids:
                parallel.allreduce(a0["upd"][sid])
            self._bands(finish)
        else:
            objs = {sid: P.obj.S[sid].data for sid in self.obj_ids}

            def update(r0, r1):
                scatter(objs, r0, r1)
                if not self._compiled:  # the compiled update leaves the sums marked (compiled.scatter_update)
                    for sid in self.obj_ids:
                        self._ops.zero_windows((a0["numO"][sid], a0["denO"][sid]), wins[sid], r0, r1)

            self._bands(update)
        if probe_on:
            if reduce:
                parallel.allreduce(aP_sum)
            mean_aP = aP_sum[0] / max(aP_sum[1], 1.0)
            step = self.ftype.type(float(self.p.probe_step) * mean_aP)
            if self._variable:  # the frames' weights, from the eigen-probes before this update
                update_weights(self._pool, self.groups, items, states, {s: P.probe.S[s].data for s in dP}, dP,
                               float(step), float(self.p.probe_step))
            for sid in self.probe_ids:
                P.probe.S[sid].data += step * dP[sid]
        if pos_on:
            for (gi, frames), sh in zip(items, shifts):
                stats[4] += len(self.positions.update(gi, frames, sh))
        return stats

    # -- resume ----------------------------------------------------------------------------
    def engine_state(self):
        out = {}
        if self.positions is not None:
            out["lsqml_positions"] = self.positions.state()
        if self.momentum is not None:
            out.update({"lsqml_" + k: v for k, v in self.momentum.state().items()})
        return out

    def engine_load_state(self, state):
        state = state or {}
        if self.positions is not None and "lsqml_positions" in state:
            self.positions.load(state["lsqml_positions"])
        if self.momentum is not None:
            saved = {k[len("lsqml_"):]: v for k, v in state.items() if k.startswith("lsqml_mpie_")}
            if not self.momentum.load(saved):
                log.info("%s: no momentum state to resume; the velocities start at zero", self.label)
