"""Stochastic (sequential) engines: ePIE, rPIE and mPIE.

The engines visit the diffraction frames one at a time in a random order and
update the object and the probe right after each frame, so that the next
frame already sees the improved estimates. ePIE and rPIE differ only in the
weights of the two updates; mPIE is rPIE with momentum.

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
* **rPIE** (Maiden, Johnson & Li, Optica 4, 736 (2017),
  doi:10.1364/OPTICA.4.000736) regularises the
  object denominator with ``a = alpha`` (default 0.1; small values give
  large steps where the probe is weak, 1 gives the ePIE update). The probe
  update has the same form with its own constant ``b = probe_alpha``
  (default 1.0, the ePIE probe update; the paper's ``beta``). The paper's
  updates have unit step; ``object_step``/``probe_step`` scale them
  (default 1.0).
* **mPIE** (Maiden, Johnson & Li, Optica 4, 736 (2017),
  doi:10.1364/OPTICA.4.000736) is rPIE plus momentum. After every
  ``T = momentum_interval`` frame updates (counted across iterations) the
  change of the object since the previous momentum step is taken as a descent
  step and accelerated with a velocity ``v`` (zero at the start) and the
  friction ``eta``::

      v_O <- eta v_O + (O - O_T)      O <- O + eta v_O      O_T <- O

  where ``O_T`` is the object right after the previous momentum step; the
  probe likewise with its own ``eta`` (``probe_friction``). Both frictions 0
  give rPIE exactly. The step is :class:`~ptycli.engines.momentum.Momentum`
  (:mod:`ptycli.engines.momentum`), one numpy implementation called by the
  sweep (:mod:`ptycli.engines.pie_sweep`) for the numpy and the compiled frame
  kernels alike. The probe's velocity lives in the form the sweep updates
  (with the far-field phase factor folded in, see below), and when the probe
  modes are made orthogonal at the end of an iteration the velocities and
  anchors are mixed with the same unitary, so ``P - P_T`` stays the change of
  each mode. A variable probe's eigen-probes are handled likewise (see
  Modules below). The velocities, anchors and the frame counter are part of the
  engine state (:meth:`Engine.state_dict`), so a resumed run continues
  exactly as an uninterrupted one.

Scale: every step above is unchanged by ``P -> k P, O -> O / k``, so
nothing in a sweep fixes ``k`` and it drifts: ePIE from a plane-wave guess on
a near-field scan shrank the probe to 1e-15 of its power in 135 iterations
until the single-precision object overflowed. After each iteration that
updates the probe the probe power is pinned to the mean counts per frame and
the object scaled to match
(:meth:`~ptycli.engines.constraints.ConstraintsMixin.pin_scale`, as DM does;
mPIE's velocities and anchors are scaled alike; a variable probe's
eigen-probes; not for multislice objects). ``P O`` is unchanged to rounding.

Recentring (``probe_center_tol``: 2 px in ePIE, rPIE and mPIE): nor
does anything fix where in the frame the probe sits. Probe and object moved
together by whole pixels shift every exit wave alike, which the far-field
intensities barely see, and from a probe guess a defocused or zone-plate
probe can walk towards the frame edge, the object going the other way out of
the scanned field. After every iteration that updates the probe (after the
support, before the modes are orthogonalised and the scale pinned), a probe
whose intensity centre of mass lies more than ``probe_center_tol`` pixels
from the frame centre is rolled back by whole pixels together with the
object (:meth:`~ptycli.engines.constraints.ConstraintsMixin.recenter_probe`,
as in DM; mPIE's velocities and anchors are rolled with their arrays). Far
field only: a near-field probe fills the frame, and the tolerance is ignored
there. Measured on ``benchmarks/validate_zoo.py`` (150 iterations from the
automatic probe guess, all 27 cases): ``zoneplate_defocus9``, where the
probe walked 14.5 px off centre, went from 0.919 to 0.995 (ePIE) and 0.917
to 0.998 (rPIE) and 0.936 to 0.997 (mPIE); ``two_modes`` 0.941 to 0.992
(rPIE) and 0.957 to 0.995 (mPIE); no other case moved by more than 0.001.
(Measured with the probe guess before its curvature ladder; from today's
guess the zone-plate probe no longer walks there, and
``tests/test_engines_stochastic.py::test_epie_recentres_a_drifting_probe``
starts from the back-propagated mean pattern: 9.2 px off centre without
recentring, 1.6 px with it.)

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

Relaxed modulus constraint (``noise_bound``; 0 for ePIE, 0.7 for rPIE, 1
for mPIE): on counted data a frame's correction stops at the counting noise.
With ``b = noise_bound`` times the scan's counting-noise floor (the mean
``Var(sqrt N)`` per valid pixel, :mod:`ptycli.core.counting_noise`) times the
frame's valid pixels, a frame whose misfit ``e = sum mask (|F| - sqrt I)^2``
is at most ``b`` changes nothing, and the others move their amplitudes only
onto the boundary ``sqrt I + sqrt(b / e) (|F| - sqrt I)``: both updates are
scaled by ``1 - sqrt(b / e)`` (:func:`ptycli.engines.pie_step.relaxed_fraction`;
the power bound of the projection engines, Thibault & Guizar-Sicairos, New J.
Phys. 14, 063004 (2012), doi:10.1088/1367-2630/14/6/063004). Near
convergence every step is thus averaged over the noise instead of fitting it;
on uncounted data the floor is 0 and nothing changes. ``noise_bound_ramp``
(60 in rPIE and mPIE) grows the bound in: iteration ``n`` (0-based, counted in this
engine) uses ``min(1, (n + 1) / noise_bound_ramp)`` of it. Far from the
solution the whole bound leaves frames alone that a poor model explains only
as well as the noise does: mPIE 90 from the default start on
``lowdose_1e4`` (zoo seeds 12, 21-24) scored 0.85/0.59/0.87/0.64/0.35 with
the whole bound and 0.91/0.93/0.92/0.94/0.43 with the ramp (true probe
0.89-0.91 and 0.91-0.93); ``lowdose_1e5`` 0.96-0.97 to 0.98-0.99 (seed 24
fails either way from its probe guess, 0.37/0.38; DM + ML 0.98),
``lowdose_1e3`` mean 0.50 to 0.56; the quick zoo's other cases moved by at
most 0.02 (``rect_48x80_near`` 0.934 to 0.955, ``foreign_nearfield`` 0.995
to 0.984).

Masks are 0/1 (masked pixels keep the model's amplitude). The error metrics
of an iteration are summed over the frames as each frame is visited, i.e.
with the model just before that frame's update (see ``ptycli.engines.base``
for the normalisation). ePIE keeps no exit waves between frames: the exit
storage's memory is given back while it runs, and an engine that follows and
uses it rebuilds the exit waves as ``probe * object``.

Visiting order
--------------
``order: random`` (the default for one probe, ``auto``) visits the frames
in a fresh random permutation each iteration (below). ``scan`` visits them in
the order they were measured (global frame index) and ``alternate`` forth
and back in turn; ``auto`` chooses ``alternate`` for a scan with a variable
probe: its frames' probes change with time, and in acquisition order each
frame starts from the eigen-probes just corrected by the frames measured
before it, so that they follow a drift. Measured on the simulated fly scan
of ``benchmarks/validate_opr.py`` (ePIE 60, 3 eigen-probes): worst frame's
probe 0.77 / object 0.984 in random order, 0.96 / 0.993 in scan order,
0.965 / 0.997 alternating.

A random order is a fresh random permutation drawn from a
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

All ranks end every iteration with the same probe and object. mPIE's
momentum runs per rank during the sweep (each rank counts its own frames and
steps its own copies); at the merge each velocity and each anchor is averaged
with the weights of its array (illumination for the object, frames for the
probe), so all ranks continue from one momentum state. The merge is linear,
so the merged ``O - O_T`` is the weighted mean of the ranks' progress since
their last step, and the momentum built up so far is kept: resetting it at
every merge would restart the velocities each iteration, and with a few
``T`` per rank and iteration they would never build up.
With one process this is exactly the sequential algorithm above; with several ranks it
is a different algorithm (each rank's sweep sees only its own frames' updates,
so it needs more iterations for the same error), never a silently different
copy of the single-process result.

Modules
-------
A multislice object (``sample.slices > 1``) takes the 3PIE step of
:mod:`ptycli.engines.multislice_step` (formulas and references there). A
variable probe (``illumination.variable_modes > 0``: orthogonal probe
relaxation) gives every frame its own probe; the update of its weights and
eigen-probes is :mod:`ptycli.engines.variable_probe`, and after every
iteration that updates the probe the pair is brought back to its gauge
(principal components) before the probe constraints.

mPIE with a variable probe: the object momentum is unchanged. The probe
momentum steps the working eigen-probes ``U`` (all frames' probes
``P_f = sum_k w_fk U_k`` move with them) every ``T`` frames, like one
probe's modes. Two things move ``U`` besides the frame updates, and the
momentum state follows both so that ``U - U_T`` stays the progress of the
frame updates in the current basis:

* the least-squares refit at the end of a sweep (``U <- G^-1 B``) is a
  projection, not a descent step: the anchor moves with it
  (``U_T += U_fit - U_work``, :meth:`Momentum.follow`), the velocity is kept;
* the gauge (``W <- W T``, ``U <- T^-1 U``, a change of basis that reorders,
  rotates and rescales the eigen-probes) is applied to the velocities and
  anchors too (``v <- T^-1 v``, :meth:`Momentum.mix_modes`).

Both are linear, so the block-parallel MPI merge (which averages velocities
and anchors like the probe) and resume (the state holds velocities and
anchors in the current basis) stay as for one probe. Measured on the
simulated fly scan of ``benchmarks/validate_opr.py`` (3 eigen-probes, 1e6
photons, mPIE defaults; worst frame's probe correlation after 50 / 100
iterations, seed 3): 0.953 / 0.975 as here; the naive momentum (velocities
kept in the old basis, the refit accelerated) 0.796 / 0.890; velocities in
the new basis but the refit accelerated 0.885 / 0.966; probe momentum off
(``probe_friction: 0``) 0.950 / 0.975. Over seeds 3, 4, 5 every frame's
probe and the object reached 0.95 after 50 / 70 / 70 iterations (probe
momentum off: 60 / 60 / 80; ePIE: 60 / 50 / 80): the
consistent probe momentum is as good as none here, the naive one much worse,
so ``probe_friction`` keeps its meaning with a variable probe.

The frame step is :class:`~ptycli.engines.pie_step.FrameKernel`
(:mod:`ptycli.engines.pie_step`: numpy, and the compiled kernels of
:mod:`ptycli.engines.fused_pie` for one probe and one object mode; the
measured costs are there); the sweep over the frames of an address book is
:class:`~ptycli.engines.pie_sweep.PIESweep` (:mod:`ptycli.engines.pie_sweep`);
this module holds the engines and their MPI merge.

Defaults
--------
``rPIE.alpha = 0.1`` (formerly 0.05):
measured with rPIE 150 from the automatic probe guess over the 27 cases of
``benchmarks/validate_zoo.py`` (recentring on), 0.05 -> 0.1:
``strong_phase`` 0.365 -> 0.999 (as mPIE's ``alpha`` 0.1 did for it, see
below), ``lowdose_1e5`` 0.969 -> 0.978, ``two_modes`` 0.992 -> 0.995,
``defocused_large_random`` 0.994 -> 0.999; no case at or above 0.95 lost
more than 0.01 (``foreign_rectangular`` 0.992 -> 0.983, ``foreign_focused``
0.985 -> 0.978, on visiting-order seeds 0/1/2 means 0.988 -> 0.982 and
0.985 -> 0.978); the near-field cases and the low-dose ones rPIE fails
either way dropped a little (``rect_48x80_near`` 0.940 -> 0.934,
``near_diffuser_cxi`` 0.940 -> 0.933, ``lowdose_1e4`` 0.184 -> 0.165,
``lowdose_1e3`` 0.046 -> 0.038); median 0.992 -> 0.995, cases >= 0.95 21 ->
22. Earlier, on MoonFlower data (noiseless and 1e6 photons per frame), 0.05
converged and 0.01 stalled from the default probe guess.
``alpha: auto`` (rPIE and mPIE) is 0.1 in the far field (above and below)
and 0.3 when a scan of the run is near field. With 0.1 the near-field scans
lit by a flat-topped or wide beam diverged: mPIE or rPIE from the true
probe, held fixed, on an aperture (a flat disc of radius 20 px in 64 x 64
frames, ``benchmarks/zoo_sim.py``, noiseless too) brought the Fourier error
down for 10 iterations and then up tenfold by iteration 90, the object lost
(0.08); dropping the object update where ``|P|^2`` is below 0.05 or 0.3 of
its maximum gave 0.58 and 0.74, so the large relative steps that a small
``alpha`` gives the dim rim of the probe drive it (in the near field the
modulus correction is spread over the propagation blur, into that rim).
Switching 0.1 to 0.3 after 15 or 25 iterations recovered only part
(0.57 / 0.50 against 0.69 from the start), and no measure of the probe's
shape told the diverging scans apart (an aperture's flatness, the power-
weighted mean intensity over the peak, is 0.95, a defocused beam's 0.42,
a zone plate's 0.27-0.55), so the near field takes 0.3 throughout. mPIE
100, default start (with the near-field curvature guess of
:mod:`ptycli.core.probe_guess` and the near-field probe support 1.0 of
:meth:`~ptycli.engines.constraints.ConstraintsMixin.support_fraction_used`),
new simulations of 100 frames of 64 x 64 at Fresnel number 12 unless
stated, scored with shift, phase ramp and phase removed:

======================  ==========  ==========  ================
near-field probe        alpha 0.1   alpha 0.3   DM 200 + ML 100
======================  ==========  ==========  ================
aperture, radius 20 px  0.174       0.707       0.893
defocused, ring 24 px   0.175       0.975       0.987
zone plate, ring 18 px  0.953       0.914       0.986
zone plate, ring 12 px  0.961       0.931       0.993
defocused, ring 16 px   0.949       0.895       0.993
diffuser                0.972       0.946       0.992
diffuser, Fresnel 4     0.838       0.813       0.974
======================  ==========  ==========  ================

(the zoo's near-field diffuser scans, mPIE 100, 0.1 -> 0.3:
``rect_48x80_near`` 0.954 -> 0.939, ``near_diffuser_cxi`` 0.924 -> 0.904,
``foreign_nearfield`` 0.987 -> 0.994; rPIE 100 0.911 / 0.903 / 0.988 ->
0.900 / 0.870 / 0.990.) On the smooth near-field probes
the PIE family converges slowly at any ``alpha`` (ePIE 400 from the true
aperture probe, held fixed: 0.86; DM 800 0.94, ML 300 0.95).

``rPIE.probe_alpha = 1`` (the ePIE probe update): 0.05 fitted noiseless
MoonFlower data better, but diverged on Poisson-noisy data (1e6 and 1e4
photons per frame) where 1.0 converged.

``rPIE.noise_bound = 0.7``, ``noise_bound_ramp = 60`` (formerly no bound):
rPIE 100 from the default start over the 28 cases of
``benchmarks/validate_zoo.py`` (the zoo's own seeds / seed 21), mean
correlation 0.939 -> 0.970 / 0.939 -> 0.973 (shift and phase only 0.936
-> 0.967 / 0.937 -> 0.971): ``lowdose_1e3`` 0.11 -> 0.68 / 0.07 -> 0.71,
``lowdose_1e4`` 0.58 -> 0.92 / 0.60 -> 0.94 (ML 200: 0.68, 0.92, at its
true-probe ceiling); it costs the cases that are still converging at 100
iterations: ``foreign_focused`` 0.960 -> 0.927, ``sparse_overlap`` 0.994 ->
0.984, near field 0.005-0.017; no other case lower by more than 0.003.
Bound 1.0: mean 0.969; the ramp over 100 iterations lost ``lowdose_1e3``
again (0.33), over 30 it changed nothing else. ePIE with the same bound
(0.7, ramp 60): ``lowdose_1e3`` 0.24 -> 0.72 but 20 of the other 27 cases
lower by 0.001-0.03 (ePIE converges slowly and the bound slows it further):
ePIE keeps the published constraint.

mPIE (``alpha = 0.1``, ``noise_bound = 1``, ``probe_alpha = 1``, ``friction
= probe_friction = 0.5``, ``momentum_interval = 30``, steps 1). ``alpha`` and
``noise_bound`` were set together on the far-field cases of
``benchmarks/validate_zoo.py`` (mPIE 60 + ML 30 against DM 60 + ML 30 from
the same start, several simulation seeds per case; the numbers below are
default-start scores unless marked):

* ``alpha`` 0.5 to 0.1 (larger object steps where the probe is weak): the
  PIE family converged slowly from the default probe on ``strong_phase``
  (phase span 3 pi): mean of 8 seeds 0.52 (``alpha = 0.5``), 0.78 (0.2),
  0.86 (0.1); the case's own seed 0.62 to 1.00 (DM + ML 1.00). rPIE and
  ePIE alone behave alike, and PtyLab's mPIE (its defaults, 60 iterations,
  the same start) scored 0.67/0.63/0.55 on seeds 12-14 where ours had
  0.64/0.52/0.18 (true probe: all 0.997-0.999): a property of the
  algorithm from that start, not of this implementation.
  ``sparse_overlap`` 0.971 to 0.978 (rPIE's ``alpha = 0.05`` 0.989; DM + ML
  0.985), ``zoneplate_defocus9`` over 5 seeds 0.87 to 0.97 (both with
  ``noise_bound = 0.5``; DM + ML 0.81; its own seed 0.95 to 0.91),
  ``two_modes`` 0.87 to 0.93.
* ``noise_bound`` 0 to 1: ``lowdose_1e3`` 0.36 to 0.66 (DM + ML 0.67; seeds
  12-16 with ``alpha = 0.5``: 0.32 to 0.63, DM + ML 0.60). It also keeps
  the small ``alpha`` stable on noisy data: mPIE alone, 150 iterations on
  ``lowdose_1e3``, ``alpha = 0.1`` scored 0.26 with ``noise_bound = 0.5``
  (0.18 without ``momentum_error_stop``) and 0.66 with 1 (``alpha = 0.5``,
  ``noise_bound = 0.5``: 0.66; momentum off, ``alpha = 0.1``, bound 0.5: 0.48). The bound slows the last iterations a little at
  high dose (``defocused_large_random`` 0.984 to 0.982). On
  ``lowdose_1e4`` the default start is poor for some seeds (DM + ML scores
  0.08-0.44 on seeds 13, 15, 16); there mPIE + ML scores 0.49-0.90 with or
  without the bound.

Position refinement (``position_refinement``, :mod:`ptycli.engines.posref`)
is declared by mPIE (whole pixels; the sweep addresses the frames' windows
live, so moved frames are used from the next iteration on; ePIE and rPIE do
not declare it). Without it an mPIE + ML chain left the positions to ML's 30
iterations: zoo ``position_errors`` (1.5 px rms) scored 0.965-0.968 against
DM + ML's 0.983 (the positions ended equally good, 0.26 against 0.28 px rms,
but the object had been built on the wrong ones for 60 iterations); with
refinement from iteration 20, 0.989/0.983/0.994 on seeds 15/12/13 (DM + ML
0.983/0.986/0.978).

The earlier choice (``alpha = 0.5``, no bound) came from the seven far-field
quick cases of ``benchmarks/validate_zoo.py`` (mPIE alone, 60 iterations,
visiting-order seeds 0 and 1, mean-removed correlation with the truth).
Momentum is the gain: rPIE with the same ``alpha = 0.5`` scored a mean of
0.76 (minimum 0.02), mPIE 0.95 (minimum 0.87; rPIE's defaults 0.94, minimum
0.76); after 30 iterations 0.68 against 0.84. The paper's strong momentum
(``eta = 0.9``) was unstable there in every variant tried (means 0.43-0.85
with ``T`` = 30 and 120, ``alpha`` 0.05-0.5, steps 0.25-1, on the object alone
or on both; objects growing while the probe shrank, up to divergence): the object/probe scale is invisible to
the data, nothing pulls it back, and momentum amplifies any drift along it
``1 / (1 - eta)``-fold; ``eta = 0.7`` on both scored 0.95 after 60 iterations
but collapsed on the low-dose case after 120 (0.22). Friction 0.5 on both
kept the mean at 0.95 after 120 iterations (minimum 0.78, the low-dose case,
against rPIE's 0.89 with the same ``alpha``: momentum also speeds up fitting
the noise, which ML with the Poisson model corrects afterwards).

Two controls of the momentum (measured with mPIE 60 + ML 30 on zoo seeds
12, 14, 21, 22, default start):

* ``momentum_restart`` (off by default; adaptive restart, :mod:`ptycli.engines.momentum`):
  with friction 0.9 on both it lifts ``two_modes`` (seeds 14/21/22) from
  0.87/0.58/0.48 to 0.81/0.81/0.98 but makes ``lowdose_1e4`` diverge
  (0.29 on seed 22: the error grows a thousandfold); with friction 0.5 it
  changes little.
* ``momentum_error_stop`` (default 0.05): both frictions drop to 0 for the rest of the run
  once an iteration's ``fourier_error`` exceeds ``(1 + tol)`` times its lowest
  so far, watched from ``probe_update_start + 5`` on (the first probe
  updates raise the error). On ``lowdose_1e4`` the PIE error (with the model
  before each frame) falls to about 1.4 times the counting-noise floor by
  iteration 20 and then rises as momentum fits the noise; ``tol = 0.05``
  lifts seed 22 from 0.749 to 0.807 and leaves seeds 12/14/21 and the other
  quick far-field cases (two seeds each) unchanged but one (position_errors
  seed 21: 0.974 to 0.969). On ``lowdose_1e3`` (seeds 12/14/21) it lifts
  0.07/0.15/0.09 to 0.36/0.34/0.31 (DM 60 + ML 30 on seed 12: 0.67);
  ``lowdose_1e5``, ``sparse_overlap`` and ``strong_phase`` are unchanged.

``two_modes`` is not a mixed-state defect: the PIE family (ePIE, rPIE, mPIE,
with or without momentum) converges slowly on that partially coherent scan
from the default start whether the model has one, two or three probe modes
and whatever the extra mode's starting power (0.1-1); the extra mode stays
at 1-2 % of the power for 60 iterations (truth 23 %). mPIE 200 reaches
0.98-0.99 on seeds 21/22 (DM 60 + ML 30: 0.977/0.976).
"""

import logging

import numpy as np

from .. import parallel
from .._lazy import lazy_module
from ..errors import ConfigError
from ..params.declare import Parameter
from .background_sums import BackgroundSums
from .base import Engine, register
from .constraints import auto_or_nonnegative
from .momentum import Momentum
from .pie_step import EPS, THREADED_FFT_PIXELS, FrameKernel  # noqa: F401  (names of this module before the split)
from .pie_sweep import PIESweep, visiting_order
from .posref import POSREF_PARAMS
from .variable_probe import refactor_book

#: the compiled kernels, imported (with numba) at first use
fused = lazy_module("ptycli.engines.fused")

__all__ = ["EPIE", "RPIE", "MPIE", "PIEBase", "PIESweep", "FrameKernel", "visiting_order"]


def _noise_bound(default, ramp):
    """The ``noise_bound`` and ``noise_bound_ramp`` parameters of the PIE engines with their defaults."""
    return [Parameter("noise_bound", default, "float",
                      "relaxed modulus constraint on counted data: a frame whose mean squared amplitude misfit "
                      "(photons per valid pixel) is within noise_bound times the counting-noise floor is not "
                      "corrected, the others only onto that bound (0: the plain modulus constraint)",
                      low=0.0, high=100.0),
            Parameter("noise_bound_ramp", ramp, "int",
                      "engine iterations over which the noise bound grows in: iteration n (0-based) uses "
                      "min(1, (n + 1) / noise_bound_ramp) times it (0: the whole bound from the start)",
                      low=0, high=100000)]


_ORDER = Parameter("order", "auto", "str",
                   "frame visiting order: random (a fresh permutation each iteration), scan (the order of "
                   "measurement), alternate (scan order forth and back); auto: alternate for a scan with a "
                   "variable probe, else random", choices=["auto", "random", "scan", "alternate"])

#: the PIE engines' own default of the common ``probe_center_tol`` (2 px; the common declaration's is None)
_RECENTRE = Parameter("probe_center_tol", 2.0, "float",
                      "recentre probe, object and exit waves after an iteration whose probe update left the "
                      "probe's centre of mass more than this many pixels off the frame centre (null: never); "
                      "far field only, ignored in the near field (the probe fills the frame)",
                      low=0.0, nullable=True, unit="pixel")

_STEP_PARAMS = [
    Parameter("object_step", 1.0, "float",
              "object step size (ePIE's alpha): the object moves by object_step * conj(P) dpsi / "
              "max|P|^2 (rPIE: over the regularised denominator)", low=0.0, high=2.0),
    Parameter("probe_step", 1.0, "float",
              "probe step size (ePIE's beta): the probe moves by probe_step * conj(O) dpsi / max|O|^2 "
              "(rPIE: over the regularised denominator)", low=0.0, high=2.0),
    Parameter("seed", 0, "int", "seed of the random frame visiting order (same seed, same result)", low=0),
    _ORDER,
]

#: rPIE's bound (0.7 of the floor, grown in over 60 iterations; measured in the module docstring)
RPIE_NOISE_BOUND = 0.7

#: ``alpha: auto`` of rPIE and mPIE: far field, and near field (any scan of the run); module docstring, Defaults
FAR_FIELD_ALPHA = 0.1
NEAR_FIELD_ALPHA = 0.3


def object_alpha(value, path):
    """``engines.<label>.alpha`` (rPIE, mPIE) checked: ``'auto'`` or a number in [0, 1]."""
    expected = "auto or a number in [0, 1]"
    hint = "auto is %g in the far field, %g in the near field; 1 gives ePIE's object update" % (
        FAR_FIELD_ALPHA, NEAR_FIELD_ALPHA)
    checked = auto_or_nonnegative(value, path, expected, hint)
    if checked != "auto" and checked > 1.0:
        raise ConfigError("%s: %r is above the upper limit 1 (%s)" % (path, value, expected), hint=hint)
    return checked


def _alpha_parameter(doc):
    return Parameter("alpha", "auto", "any",
                     "object regularisation: denominator (1 - alpha) |P|^2 + alpha max|P|^2 (1: ePIE; Maiden, "
                     "Johnson & Li, Optica 4, 736 (2017), doi:10.1364/OPTICA.4.000736); auto: %g in the far "
                     "field, %g when a scan is near field (0.1 diverged there on aperture and wide defocused "
                     "beams; measured in ptycli.engines.stochastic)%s"
                     % (FAR_FIELD_ALPHA, NEAR_FIELD_ALPHA, doc), check=object_alpha)


class PIEBase(BackgroundSums, Engine):
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
    PARAMS = Engine.PARAMS.extended("PIE", _STEP_PARAMS + _noise_bound(0.0, 0), doc="stochastic PIE engine")
    MULTISLICE = True  # multislice objects: the 3PIE step of ptycli.engines.multislice_step
    VARIABLE_PROBE = True  # a probe per frame from eigen-probes: ptycli.engines.variable_probe
    USES_EXIT_STORAGE = False  # exit waves live per frame in the step's buffers
    #: the incoherent background in the model amplitude, its update after every sweep (ptycli.engines.background_sums)
    FITS_BACKGROUND = True
    LOCAL_PROBE_UPDATES = True  # a probe step per frame: the probe guess checks its pick for it

    def __init__(self, ptycho, pars=None, label=None):
        super().__init__(ptycho, pars, label)
        self.rng = np.random.default_rng([int(self.p.seed), int(parallel.rank)])
        self.sweeper = None
        self.last_order = None
        self.momentum = None  # mPIE: a ptycli.engines.momentum.Momentum

    def alphas(self):
        """``(object_alpha, probe_alpha)`` regularisation of the update denominators."""
        return 1.0, 1.0

    def resolved_alpha(self):
        """The ``alpha`` parameter as a number: ``auto`` is :data:`NEAR_FIELD_ALPHA` on a near-field scan
        (:meth:`~ptycli.engines.constraints.ConstraintsMixin.near_field`), else :data:`FAR_FIELD_ALPHA`."""
        alpha = self.p.alpha
        if alpha != "auto":
            return float(alpha)
        return NEAR_FIELD_ALPHA if self.near_field() else FAR_FIELD_ALPHA

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
        self.init_background_sums([g for g in self.book.groups if g.obj.slices == 1])  # 3PIE: B as it is
        self.sweeper = PIESweep(self.book, object_step=self.p.object_step, probe_step=self.p.probe_step,
                                object_alpha=oa, probe_alpha=pa, compiled=self._compiled,
                                noise_bound=self.noise_bound(), background_sums=self._bg_sums)
        for g in self.book.groups:
            if g.background is not None and g.obj.slices > 1 and parallel.master:
                logging.getLogger("ptycli").warning(
                    "%s (%s): the multislice step leaves scan %s's background as it is", self.label, self.NAME,
                    g.label)

    def noise_bound(self):
        """Power bound per valid pixel: ``noise_bound`` times the scans' largest counting-noise floor (photons).

        0 on data that are not counts (:mod:`ptycli.core.counting_noise`) or with ``noise_bound: 0``.
        """
        factor = float(self.p.noise_bound)
        if factor <= 0.0:
            return 0.0
        return factor * self.noise_floor()

    def noise_bound_share(self):
        """Share of the noise bound in force this iteration: ``min(1, (n + 1) / noise_bound_ramp)`` (1 without a ramp)."""
        ramp = int(self.p.get("noise_bound_ramp") or 0)
        return 1.0 if ramp <= 0 else min(1.0, (self.iteration + 1) / ramp)

    def visiting_order(self):
        """This iteration's order of the local frames (parameter ``order``; see the module docstring)."""
        kind = str(self.p.get("order") or "auto")
        if kind == "auto":
            variable = any(getattr(g, "probe_weights", None) is not None for g in self.book.groups)
            kind = "alternate" if variable else "random"
        if kind == "random":
            return self.rng.permutation(self.sweeper.n_frames)
        seq = self.sweeper.acquisition_order()
        return seq[::-1].copy() if kind == "alternate" and self.iteration % 2 else seq

    def engine_iterate(self, n):
        out = []
        for _ in range(int(n)):
            update_probe = self.probe_update_due()
            order = self.visiting_order()
            self.last_order = order
            weights = self._merge_weights() if parallel.size > 1 else None
            self.sweeper.scale_bound(self.noise_bound_share())
            self.zero_background_sums()
            sums = self.sweeper.sweep(order, update_probe, self.momentum)
            self.background_update()
            if weights is not None:
                self._merge(weights, update_probe)
            if update_probe:
                changes = refactor_book(self.book, reduce=parallel.allreduce if parallel.size > 1 else None)
                if self.momentum is not None and changes:
                    # the eigen-probes' gauge U' = T^-1 U: velocities and anchors take the same basis
                    self.momentum.mix_modes("probe", {sid: np.linalg.inv(T).T for sid, T in changes.items()})
                # support and recentring; the modes are orthogonalised without touching the
                # exit waves (ePIE keeps none between iterations; finalize() rebuilds them)
                self.apply_probe_constraints(orthogonalize=False)
                rotations = self.orthogonalize_probe(rotate_exit=False)
                if self.momentum is not None:
                    self.momentum.mix_modes("probe", rotations)  # velocities follow the modes
                k = self.pin_scale()  # probe power to the counts, object to match (P O unchanged)
                if k is not None and self.momentum is not None:
                    self.momentum.rescale("probe", k)
                    self.momentum.rescale("obj", 1.0 / k)
            self.apply_object_constraints()
            acc = self.new_error_sums()
            acc.add(fourier=sums["fourier"], photon=sums["photon"], valid=self.sweeper.valid,
                    exit_change=sums["exit_change"])
            out.append(acc.reduce())
            self.iteration_done(out[-1])
        return out

    def recenter_probe(self):
        """:meth:`ConstraintsMixin.recenter_probe`; mPIE's velocities and anchors move with the arrays.

        The object's are rolled as the object; the probe's live in the
        working form ``pre * P`` of the sweep, so they are unfolded, rolled
        and folded again (``pre`` has unit modulus), and ``X - X_T`` stays
        the progress of the frame updates.
        """
        shifts = super().recenter_probe()
        m = self.momentum
        if not shifts or m is None or self.sweeper is None:
            return shifts
        for sid, s in shifts.items():
            shift = tuple(int(v) for v in s)
            pre = self.sweeper.fold.get(sid)
            for arr in (m.velocity["probe"].get(sid), m.anchor["probe"].get(sid)):
                if arr is None:
                    continue
                if pre is None:
                    arr[...] = np.roll(arr, shift, axis=(-2, -1))
                else:
                    arr[...] = pre * np.roll(np.conj(pre) * arr, shift, axis=(-2, -1))
            oids = {g.obj.ID for g in self.book.groups if g.probe.ID == sid}
            for oid in oids:
                for arr in (m.velocity["obj"].get(oid), m.anchor["obj"].get(oid)):
                    if arr is not None:
                        arr[...] = np.roll(arr, shift, axis=(-2, -1))
        return shifts

    def iteration_done(self, record):
        """Called after each iteration with its error record (:meth:`ErrorSums.reduce`); nothing here."""

    def engine_finalize(self):
        # the exit storage stays released: an engine that follows and uses it rebuilds probe * object
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
            if g.obj.slices > 1:  # the pods view the first slice; the others follow its weight
                acc[1:] = acc[:1]
        return w

    def _merge(self, weights, update_probe):
        """Illumination-weighted object average and frame-weighted probe average over the ranks.

        Arrays that :meth:`_merged_with` names for a storage are averaged
        with the same weights (mPIE's velocities and anchors).
        """
        P = self.ptycho
        for sid in sorted(P.obj.S):
            S = P.obj.S[sid]
            w = weights.get(sid)
            if w is None:
                w = np.zeros(S.data.shape, dtype=self.ftype)
            arrays = [S.data] + self._merged_with("obj", sid)
            nums = [a * w for a in arrays]
            for num in nums:
                parallel.allreduce(num)
            parallel.allreduce(w)
            for a, num in zip(arrays, nums):
                np.divide(num, w, out=a, where=w > 0)  # pixels no rank touched keep their value
        if update_probe:
            counts = {}
            for g in self.book.groups:
                counts[g.probe.ID] = counts.get(g.probe.ID, 0.0) + g.n_frames
            for sid in sorted(P.probe.S):
                c = np.array([float(counts.get(sid, 0.0))])
                arrays = [P.probe.S[sid].data] + self._merged_with("probe", sid)
                for a in arrays:
                    a *= self.ftype.type(c[0])
                    parallel.allreduce(a)
                parallel.allreduce(c)
                if c[0] > 0:
                    for a in arrays:
                        a /= self.ftype.type(c[0])

    def _merged_with(self, kind, sid):
        """Further arrays merged like storage ``sid`` of ``kind`` (``"obj"``/``"probe"``); none here."""
        return []

    # -- resume ---------------------------------------------------------------
    def engine_state(self):
        return {} if self.last_order is None else {"last_order": self.last_order}


@register
class EPIE(PIEBase):
    """ePIE (Maiden & Rodenburg 2009) with mixed states; see the module docstring."""

    NAME = "ePIE"
    PARAMS = Engine.PARAMS.extended("ePIE", _STEP_PARAMS + _noise_bound(0.0, 0) + [_RECENTRE],
                                    doc="extended ptychographic iterative engine")


@register
class RPIE(PIEBase):
    """rPIE (Maiden, Johnson & Li 2017) with mixed states; see the module docstring."""

    NAME = "rPIE"
    PARAMS = Engine.PARAMS.extended("rPIE", _STEP_PARAMS + _noise_bound(RPIE_NOISE_BOUND, 60) + [
        _alpha_parameter(""),
        Parameter("probe_alpha", 1.0, "float",
                  "probe regularisation: denominator (1 - probe_alpha) |O|^2 + probe_alpha max|O|^2 "
                  "(1: the ePIE probe update)", low=0.0, high=1.0),
        _RECENTRE,
    ], doc="regularised ptychographic iterative engine")

    def alphas(self):
        return self.resolved_alpha(), float(self.p.probe_alpha)


@register
class MPIE(PIEBase):
    """mPIE (Maiden, Johnson & Li 2017): rPIE with momentum; see the module docstring."""

    NAME = "mPIE"
    PARAMS = Engine.PARAMS.extended("mPIE", [
        Parameter("object_step", 1.0, "float",
                  "object step size (the paper's gamma_obj): the object moves by object_step * conj(P) dpsi "
                  "over the regularised denominator", low=0.0, high=2.0),
        Parameter("probe_step", 1.0, "float",
                  "probe step size (the paper's gamma_prb): the probe moves by probe_step * conj(O) dpsi "
                  "over the regularised denominator", low=0.0, high=2.0),
        _alpha_parameter("; small values with momentum need the noise bound on noisy data"),
        Parameter("probe_alpha", 1.0, "float",
                  "probe regularisation: denominator (1 - probe_alpha) |O|^2 + probe_alpha max|O|^2 "
                  "(1: the ePIE probe update)", low=0.0, high=1.0),
        Parameter("friction", 0.5, "float",
                  "object momentum friction eta: v <- eta v + (O - O_T), O <- O + eta v every "
                  "momentum_interval frames (0: no object momentum)", low=0.0, high=0.99),
        Parameter("probe_friction", 0.5, "float",
                  "probe momentum friction, as friction for the probe (0: no probe momentum; friction and "
                  "probe_friction both 0: rPIE)", low=0.0, high=0.99),
        Parameter("momentum_interval", 30, "int",
                  "frame updates T between two momentum steps (counted across iterations)", low=1,
                  high=100000),
        Parameter("momentum_restart", False, "bool",
                  "restart: set an array's velocity to zero when its new step points against it "
                  "(Re <v, X - X_T> < 0) before the momentum step (adaptive restart, ptycli.engines.momentum)"),
        Parameter("momentum_error_stop", 0.05, "float",
                  "stop the momentum (both frictions 0 from then on) once an iteration's fourier_error "
                  "exceeds (1 + momentum_error_stop) times the lowest so far in this engine run: the "
                  "momentum then drives the fit away (noise, overshoot); 0: never", low=0.0, high=100.0),
        *_noise_bound(1.0, 60),
        Parameter("seed", 0, "int", "seed of the random frame visiting order (same seed, same result)", low=0),
        _ORDER,
        POSREF_PARAMS,
        _RECENTRE,
    ], doc="momentum-accelerated ptychographic iterative engine")

    #: iterations after ``probe_update_start`` before ``momentum_error_stop`` watches the error
    ERROR_STOP_SETTLE = 5

    def alphas(self):
        return self.resolved_alpha(), float(self.p.probe_alpha)

    def engine_initialize(self):
        super().engine_initialize()
        self._best_error = None
        self.momentum = Momentum(self.p.friction, self.p.momentum_interval, self.p.probe_friction,
                                 restart=self.p.momentum_restart)
        self.momentum.reset("obj", {sid: S.data for sid, S in self.book.obj_storages.items()})
        self.momentum.reset("probe", self.sweeper.working_probes())

    def iteration_done(self, record):
        """Stop the momentum once the error rises above its lowest value (``momentum_error_stop``)."""
        tol = float(self.p.momentum_error_stop)
        m = self.momentum
        err = record.get("fourier_error")
        if m is None or tol <= 0 or err is None or not any(m.friction.values()):
            return
        if self.iteration < int(self.p.probe_update_start) + self.ERROR_STOP_SETTLE:
            return  # the first probe updates raise the error for a while
        best = getattr(self, "_best_error", None)
        if best is not None and err > (1.0 + tol) * best:
            m.friction = {k: 0.0 for k in m.friction}
            logging.getLogger("ptycli").info(
                "%s: fourier error %.4g above (1 + %.3g) x its lowest %.4g at iteration %d: momentum stopped",
                self.label, err, tol, best, self.iteration)
        self._best_error = err if best is None else min(best, err)

    def _merged_with(self, kind, sid):
        """The velocity and the anchor of storage ``sid``: merged as the storage (module docstring)."""
        m = self.momentum
        if m is None or sid not in m.velocity[kind]:
            return []
        return [m.velocity[kind][sid], m.anchor[kind][sid]]

    def engine_state(self):
        out = dict(super().engine_state())
        if self.momentum is not None:
            out.update(self.momentum.state())
            # momentum_error_stop: whether the momentum was stopped, and the lowest error so far
            out["mpie_stopped"] = np.array([0 if any(self.momentum.friction.values()) else 1], dtype=np.int64)
            out["mpie_best_error"] = np.array([np.nan if self._best_error is None else self._best_error])
        return out

    def engine_load_state(self, state):
        """Continue with the saved velocities (a fresh momentum start when the state lacks them)."""
        if self.momentum is not None and not self.momentum.load(state or {}):
            logging.getLogger("ptycli").info("%s: no momentum state to resume; the velocities start at zero",
                                             self.label)
        state = state or {}
        if self.momentum is not None and "mpie_stopped" in state:
            if int(np.asarray(state["mpie_stopped"]).ravel()[0]):
                self.momentum.friction = {k: 0.0 for k in self.momentum.friction}
            best = float(np.asarray(state.get("mpie_best_error", [np.nan])).ravel()[0])
            self._best_error = None if np.isnan(best) else best
