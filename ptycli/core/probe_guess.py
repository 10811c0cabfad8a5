"""The data-driven probe guess (the ``auto`` illumination model): :func:`probe_from_data`.

Several candidate guesses (the wavefront-curvature guess for defocused and
zone-plate probes, the back-propagated mean pattern for focused probes and
near-field illumination, a support-constrained guess for plain apertures, a
flat wave in near field) each start a short trial reconstruction on the
frames nearest the scan centre (:mod:`ptycli.core.probe_trial`); the one
whose model explains the data best is kept, scaled to the measured photon
count. :func:`mean_measured_pattern` is also the noise floor's mean pattern.
:func:`ptycli.core.illumination.init_probe` calls it for ``model: auto``.
"""

import logging

import numpy as np

from .. import parallel
from ..errors import DataError
from ..utils.array_utils import bilinear, gaussian_wrap, smooth_step
from .probe_trial import HOLDOUT_FRACTION, trial_errors

__all__ = ["probe_from_data", "mean_measured_pattern", "central_frames", "valid_pixels",
           "pick_for_local_engine"]

log = logging.getLogger("ptycli")


def probe_from_data(intensities, mask, propagator, iterations=50, positions=None, info=None, noise_floor=0.0,
                    local_engine=False):
    """Probe guess from the measured data (the ``auto`` illumination model).

    **Candidates and the trial.** Up to four candidates are made:

    * ``curvature`` (far field, with positions): described below; suits
      defocused, zone-plate (ring) and curved-aperture probes.
      ``curvature_2``, the same from a second local maximum of the
      curvature score when it reaches :data:`RIVAL_FRACTION` of the best
      and refines to another curvature (the true curvature of a rectangular
      foreign scan was the rival: 0.98 where the best peak gave 0.06).
    * ``curvature_ladder`` (far field, with positions, at least
      :data:`TRIAL_MIN_FRAMES` frames and one count per pixel or more):
      isotropic curved guesses with ``|a|`` from the shift search's limit
      down by factors of ``sqrt(2)``, signed by the shift score computed
      without the patterns that do not move; the one the trial ranks best
      (:func:`_ladder_curvature`) is offered when no shift-score curvature
      lies within a rung of it. It catches a shift score pulled towards
      ``a = 0``: on the zoo's strong-phase, fine-textured and two-mode
      zone-plate scans (probe 0.079 rad/pixel^2 by its phase) the score
      peaked at 0.000-0.012, the guess was ``support`` or a flat curvature
      (correlation with the true probe 0.15-0.31), and LSQML 100 from it
      scored 0.09-0.88, ePIE 150 0.26-0.44; with the ladder the guess
      correlates 0.79-0.84 and those runs score 0.97-0.999 (issue 16).
    * ``mean_pattern``: the square root of the mean pattern propagated back
      with a flat phase (PtyPy's ``stxm`` recipe); suits focused probes,
      whose pattern is the image of the pupil, and near-field illumination,
      whose mean intensity is that of the propagated probe.
    * ``curvature_ladder`` in near field (with positions, at least
      :data:`TRIAL_MIN_FRAMES` frames and one count per pixel or more): a
      beam with a curved wavefront (``exp(i a r^2)``: a zone-plate or
      defocused beam, ``a`` in rad per pixel squared) reaches the detector
      magnified by ``1 + F a / pi`` (``F = lam z / dx^2``: its local
      frequency ``a r / pi`` moves by ``F a r / pi`` pixels), so the
      flat-phase guess has neither its phase nor its size. No feature shifts
      measure ``a`` there (the patterns are holograms of the object, not of
      the probe's far field), so the trial does: first the sign, from the two
      guesses ``a = +-a_mid`` (the ladder's middle rung), then the size, from
      :data:`LADDER_STEPS` magnitudes down from ``2 pi / N`` (the local
      frequency at Nyquist a quarter frame from the centre) by factors of
      ``sqrt(2)`` (:func:`_near_field_rungs`), each a curved guess
      (:func:`_curved_probe` with the near-field magnification) whose trial
      error is compared; the best rung is offered when it separates
      (:data:`LADDER_CONTRAST`). Measured on new near-field simulations
      (``benchmarks/zoo_sim.py``, 100 frames of 64 x 64, Fresnel number 12,
      default start, by shift, ramp and phase; flat-phase guess -> ladder):
      defocused beam of ring radius 16 px (``a`` 0.036, picked 0.035) DM 200
      0.797 -> 0.987 (true probe 0.987), RAAR 200 0.475 -> 0.923, LSQML 100
      0.763 -> 0.943, DM 200 + ML 100 0.963 -> 0.992; zone plate ring 18 px
      (0.032, picked 0.035) RAAR 0.847 -> 0.943, LSQML 0.900 -> 0.958; ring
      24 px (0.025, picked 0.025) RAAR 0.910 -> 0.967; diffusers (the ladder
      does not separate) and plain apertures (the smallest rung, or the mean
      pattern) unchanged. The ladder costs :data:`LADDER_STEPS` + 2 trials.
    * ``support`` (far field): error reduction on the mean pattern in a
      support sized from its autocorrelation (described at the end); suits
      plain apertures. In near field ``flat`` (a plane wave) takes its place.

    With positions and at least :data:`TRIAL_MIN_FRAMES` frames, each
    candidate starts a 10-iteration difference-map trial on the
    :data:`TRIAL_FRAMES` frames nearest the scan centre
    (:func:`ptycli.core.probe_trial.trial_errors`) and the candidate with the
    lowest model Fourier error after it is kept (the first listed among
    equals). Without positions the curvature guess is unavailable and
    ``support`` (far field) or ``mean_pattern`` (near field) is taken.
    The trial's modulus constraint keeps the power bound ``noise_floor``
    (the counting noise; :mod:`ptycli.core.counting_noise`), so that at low
    dose it does not rank candidates by how well they fit the noise. On
    counted data with ``LOW_COUNTS[0]`` to ``LOW_COUNTS[1]`` counts per pixel
    that is not enough: a wrong, strongly curved candidate lights more of
    the object and fits the counting noise of the trial frames better than
    the right one (zone-plate probe near focus, 1e4 photons per 64 x 64 frame: the
    curvature candidate won on 5 of 7 simulation seeds and DM 200 + ML 100
    then scored 0.06-0.53 where the true probe gives 0.92). There the trial
    leaves :data:`~ptycli.core.probe_trial.HOLDOUT_FRACTION` of the pixels
    out of its modulus constraint and scores the candidates on those pixels
    only (cross-validation: a model that fits the noise does not predict
    pixels it never saw); 7 of 7 seeds then scored 0.91-0.93. Below one
    count per pixel the held-out pixels' own counting noise decides (1e3
    photons per frame, 8 seeds: mean 0.52 with the held-out score, 0.57
    without, true probe 0.69), so the plain score stays; what fails there is
    the curvature measured on 40 frames' noise, and the frames it analyses
    become :data:`VERY_LOW_COUNT_FRAMES` (7 seeds: mean 0.53 -> 0.71, the
    worst 0.13 -> 0.68). In near field the
    held-out score is used at any count: there the plain score hardly
    separates ``mean_pattern`` from ``flat`` (0.0194 against 0.0193 on a
    rectangular near-field scan where ``flat`` then gave 0.739 and
    ``mean_pattern`` 0.962 after DM 200 + ML 100; held out: 0.050 against
    0.057, and margins of 9-20 % on 7 near-field scans, each then within
    0.015 of its true-probe score). Far-field data with more counts keep
    the plain score: in 10 iterations held-out pixels separate their
    candidates less (a noiseless defocused ring: curvature 0.017 against
    support 0.026 on all pixels, 0.038 against 0.037 on 20 % held out).
    ``benchmarks/validate_zoo.py`` measures the choice on 26 scans written
    outside ptycli (the closing notes of issue 12 have the table).

    **Engines with local probe updates** (``local_engine``: the chain starts
    with ePIE, rPIE, mPIE or LSQML, whose probe moves frame by frame or
    batch by batch). The trial's verdict suits the difference map, which
    moves the probe from all frames at once and recovers from a small
    ``support`` guess (on the zone-plate cases a spot with 90 % of its power
    within 2-3 pixels of the centre, where the true probe needs 11-15). The local engines stall there:
    ``zoneplate_defocus14`` (zoo seed 104) and ``two_modes`` (seed 114) picked
    ``support``, and mPIE 100 then scored 0.23 / 0.28, LSQML 100 0.20 / 0.31,
    where DM 200 + ML 100 scored 0.99 / 0.98; their Fourier error after 10
    iterations was the lower one from ``support`` (5.4 against 9.6 from
    ``curvature``) and after 100 the higher (4.2 against 0.33): no short
    trial of any engine ranks by that (rPIE trials of 60 sweeps on 24 frames
    and of 10 on 40 still preferred ``support``). What tells them apart is
    whether the model predicts frames it was not fitted to. So for these engines (far
    field, at least :data:`HELD_MIN_FRAMES` central frames) a second trial
    fits the ``TRIAL_FRAMES + HELD_FRAMES`` frames nearest the centre but
    every fifth by distance (from the third) and scores the candidates on those left out
    (:func:`~ptycli.core.probe_trial.trial_errors` with ``held_frames``).
    When the first trial's pick scores more than :data:`HELD_MARGIN` times
    the best held-out score, the best one is taken instead. The margin
    matters: on ``subpixel_spiral`` (seed 19) the held-out score prefers
    ``curvature`` by 1.66x, yet from it every engine does worse (mPIE 0.89,
    LSQML 0.05, DM + ML 0.94 against 0.98 / 0.98 / 0.99 from ``support``);
    the picks it changes had 2.1-5.1x (the table is in the report of this
    change: ``zoneplate_defocus14`` seed 104 mPIE 0.23 -> 0.99, LSQML 0.20 ->
    0.98; ``two_modes`` seed 114 0.28 -> 0.92, 0.31 -> 0.93). DM-first chains
    keep the first trial's pick (the held-out pick made DM + ML worse on
    ``lowdose_1e4`` seed 112, 0.94 -> 0.72). The second trial costs as much
    as the first. In near field these engines are not offered ``flat``: from a
    plane wave the probe's structure goes into the object and stays there
    (``foreign_nearfield``, ``rect_48x80_near``, ``near_diffuser_cxi`` from
    ``flat`` / ``mean_pattern``: mPIE 100 0.03 / 0.97, 0.17 / 0.96,
    0.15 / 0.92; ePIE 150 0.03 / 1.00, 0.10 / 0.88, 0.08 / 0.85; LSQML 100
    0.97 / 0.97, 0.17 / 0.91, 0.12 / 0.92). A near-field chain that starts
    with DM or RAAR from a model probe starts with their mPIE warm-up
    (``warmup: auto``, :mod:`ptycli.engines.projectional`), so it gets this
    guess too; with ``warmup: 0`` DM keeps ``flat`` (DM + ML on
    ``foreign_nearfield``: 0.986 from it, 0.988 from ``mean_pattern``).

    **The curvature candidate** (far field, with positions). Two properties
    of the data are used:

    1. *Wavefront curvature from how the patterns move.* Write the probe as
       an envelope times a quadratic phase, ``A(y, x) exp(i (a_y y^2 +
       a_x x^2))`` (sample pixels from the propagator's origin). A strongly
       curved (defocused) probe makes each diffraction pattern a magnified
       in-line hologram of the illuminated object: the far field of
       ``exp(i a r^2) g(r)`` at detector pixel ``k`` is the Fresnel transform
       of ``g`` at ``r = pi k / (N a)``. Moving the object by ``d`` sample
       pixels between two frames therefore moves the features of the pattern
       by ``s = -N a d / pi`` detector pixels (per axis, ``N`` the frame
       size; the sign follows ptycli's convention that a frame at position
       ``d`` sees the object at ``r + d``). For up to 40 frames nearest the
       scan centre and each one's 4 nearest neighbours (ties included), the
       cross-correlation of the two frames' contrast maps
       ``(I - c <I>) / sqrt(<I>)`` (``c``: the frame's counts over the mean
       pattern's; smoothed on counted data with few counts per pixel, see
       :data:`LOW_COUNTS`) is read at the predicted shift; the curvature
       maximising the mean over all pairs is taken, first with ``a_y = a_x``
       on a grid up to the value that moves the pattern by a third of the
       frame for the median step, then refined per axis (astigmatism).
       A probe with a flat wavefront gives ``a ~ 0``. Patterns that do not
       move also correlate at zero shift: an object with a strong, slowly
       varying phase deflects whole patterns alike in neighbouring frames,
       and the balance of bright and dark field follows the local
       transmission; that peak at ``a ~ 0`` can outscore the true one (see
       ``curvature_ladder`` above, which takes its sign from a score with
       the fixed patterns removed: :func:`_without_fixed_patterns`,
       :func:`_without_common_correlation`). This fixes the *sign*
       of the curvature, which no single pattern (nor their mean) can: a
       probe and its complex-conjugate twin give the same patterns, and only
       the known scan positions tell them apart.
    2. *Envelope from the mean pattern.* In the same geometric-optics regime
       the mean pattern ``<I>`` is a magnified image of the probe intensity:
       ``|A(r)|^2 ~ <I>(k = N a r / pi)``. The start is that image (bilinear
       interpolation) times the phase ``exp(i (a_y y^2 + a_x x^2))``; it is
       then refined by ``iterations`` rounds of error reduction on the mean
       pattern (keep the measured far-field modulus ``sqrt(<I>)``; in the
       sample plane keep the quadratic phase, take the envelope as the
       non-negative real part, and zero a 3-pixel margin at the frame edge).
       This corrects the envelope where diffraction blurs the geometric
       image (weakly curved probes, a plain aperture with ``a ~ 0``).

    Limits: astigmatism is modelled along the frame axes only (no ``x y``
    phase term); curvature is searched up to the value that moves patterns
    by a third of the frame between neighbouring positions; with no
    measurable curvature (a plain aperture) the envelope comes from the error
    reduction alone and is about as good as the support guess below. DM
    (150 iterations, 100 frames of 64 x 64, noiseless) converged from this
    guess to object correlations of 0.994-0.999 for the MoonFlower moon and
    defocused ring probes and for synthetic apertures with curvatures from
    -0.026 to 0.028 rad/pixel^2, flat, or astigmatic; 0.987 for a small flat
    aperture (a third of the frame wide).

    **The support candidate**: the square root of the mean pattern propagated back, refined
    by ``iterations`` rounds of error reduction inside a soft circular
    support whose diameter is half that of the pattern's autocorrelation (a
    probe of diameter ``D`` has an autocorrelation ``2 D`` wide). This suits
    probes with little curvature; a strongly defocused probe has a narrow
    autocorrelation, so its size is underestimated.

    Only sums over frames and the frames nearest the scan centre (gathered to
    every process) are used, so the guess is the same on every MPI rank and
    for any split of the frames (the trial's verdict is also reduced over the
    ranks). The curvature costs a few tens of 2D FFTs of the frame size per
    analysed frame pair (twice: with and without the fixed patterns), the
    trial 30 transforms of 24 frames per candidate and per ladder rung
    (:data:`LADDER_STEPS`).

    Parameters
    ----------
    intensities : ndarray (n, rows, cols)
        Measured, centred intensities of this process's frames.
    mask : ndarray (n, rows, cols) of bool
        Valid pixels.
    propagator : object with ``fw`` and ``bw``
        Sample-to-detector propagator (``origin``, ``center`` and ``kind``
        are used when present).
    iterations : int
        Error-reduction rounds (0 keeps the unrefined start).
    positions : ndarray (n, 2), optional
        This process's scan positions (y, x) in sample pixels (any common
        offset), same order as ``intensities``.
    noise_floor : float
        Counting-noise floor of the amplitudes (mean squared deviation per
        valid pixel; :meth:`ptycli.core.manager.ScanModel.measure_noise`),
        the trial's power bound.
    local_engine : bool
        The first engine moves the probe by local steps (see above: the pick
        is checked on held-out frames; in near field ``flat`` is not offered).
    info : dict, optional
        Filled with diagnostics: ``method`` (the chosen candidate's name),
        ``trial`` (candidate name -> trial Fourier error, or None without a
        trial), ``curvature`` (a_y, a_x) in rad per sample pixel squared or
        None, ``score`` (mean pair correlation at that curvature), ``pairs``,
        ``holdout`` (the share of pixels the trial scored on; 0: all),
        ``held_frames`` (candidate name -> error on the held-out frames, or
        None without that trial), ``trial_pick`` (the first trial's pick) and,
        when the ladder ran, ``ladder`` (curvature -> trial error per rung).

    Returns
    -------
    probe : ndarray complex128 (rows, cols)
        Scaled so that ``sum |probe|^2`` equals the mean number of counts per
        frame.
    """
    intensities = np.asarray(intensities)
    shape = tuple(intensities.shape[-2:])
    valid = valid_pixels(intensities, mask)
    mean_pattern, counts = mean_measured_pattern(intensities, mask)
    measured = counts > 0
    amplitude = np.sqrt(np.clip(mean_pattern, 0, None))
    photons = float(np.sum(mean_pattern))
    info = {} if info is None else info
    info.update(method="support", curvature=None, score=None, pairs=0, trial=None, holdout=0.0, held_frames=None,
                trial_pick=None)
    farfield = getattr(propagator, "kind", "farfield") == "farfield"

    # counted data with few counts per pixel (None: not counted)
    per_pixel = photons / max(float(np.count_nonzero(measured)), 1.0) if noise_floor > 0 else None
    very_low = per_pixel is not None and per_pixel < LOW_COUNTS[0]
    central = None
    if positions is not None:
        central = central_frames(intensities, valid, positions,
                                 max_frames=VERY_LOW_COUNT_FRAMES if very_low else CENTRAL_FRAMES)
    # the candidates, most trusted first (the order breaks near-ties of the trial)
    candidates = {}
    if central is not None and farfield:
        smooth = 0.0
        if per_pixel is not None:
            # low counts per pixel hide the contrast of each pattern in counting noise;
            # smoothing the contrast maps keeps the broad hologram features
            smooth = 2.0 if per_pixel < LOW_COUNTS[0] else (1.0 if per_pixel < LOW_COUNTS[1] else 0.0)
        found = _curvature_from_shifts(*central, mean_pattern, smooth=smooth)
        for rank, (curvature, score, npairs) in enumerate(found):
            if rank == 0:
                info.update(curvature=(float(curvature[0]), float(curvature[1])), score=float(score),
                            pairs=int(npairs))
            candidates["curvature" if rank == 0 else "curvature_%d" % (rank + 1)] = _curved_probe(
                mean_pattern, amplitude, measured, propagator, curvature, iterations)
        # (not below LOW_COUNTS[0] counts per pixel: there the trial ranks the ladder by the counting noise,
        # lowdose_1e3 took a = 0.013 where the probe has 0.07 and the shift score 0.055)
        if central[0].shape[0] >= TRIAL_MIN_FRAMES and not very_low:
            # the sign from the score without the patterns that do not move (their zero-shift peak
            # can outscore the true curvature's; the plain score found 0.008 where the probe has 0.07)
            signed = _curvature_from_shifts(*central, mean_pattern, smooth=smooth, fixed_patterns=True) or found
        else:
            signed = []
        if signed:
            ladder = _ladder_curvature(signed[0][0], central, mean_pattern, amplitude, measured, propagator,
                                       iterations, photons, noise_floor, per_pixel, farfield)
            # a shift-score curvature within a rung of the ladder's pick is the finer measurement of it
            # (the trial's minimum is shallow: a rung 25 % off can win by a little and guess worse)
            agrees = ladder is not None and any(
                ladder[0] * np.mean(c) > 0 and 2 ** -0.5 <= np.mean(c) / ladder[0] <= 2 ** 0.5 for c, _, _ in found)
            if ladder is not None:
                info["ladder"] = ladder[1]
            if ladder is not None and not agrees:
                candidates["curvature_ladder"] = _curved_probe(mean_pattern, amplitude, measured, propagator,
                                                               (ladder[0], ladder[0]), iterations)
        if found and per_pixel is not None and LOW_COUNTS[0] <= per_pixel < LOW_COUNTS[1]:
            measured_curvature = np.asarray(found[0][0], dtype=np.float64)
            for factor in LOW_COUNT_CURVATURE_FACTORS:
                candidates["curvature_x%g" % factor] = _curved_probe(mean_pattern, amplitude, measured, propagator,
                                                                    tuple(factor * measured_curvature), iterations)
    candidates["mean_pattern"] = np.asarray(propagator.bw(amplitude.astype(np.complex128)), dtype=np.complex128)
    if central is not None and not farfield and central[0].shape[0] >= TRIAL_MIN_FRAMES and not very_low:
        # near field: no feature shifts give the curvature; the trial picks its sign, then a ladder its size
        rungs = _near_field_rungs(shape)
        sign = _best_rung([rungs[LADDER_STEPS // 2], -rungs[LADDER_STEPS // 2]], central, mean_pattern, amplitude,
                          measured, propagator, iterations, photons, noise_floor, per_pixel, farfield, contrast=1.0)
        ladder = None if sign is None else _best_rung(
            np.sign(sign[0]) * rungs, central, mean_pattern, amplitude, measured, propagator,
            iterations, photons, noise_floor, per_pixel, farfield)
        if ladder is not None:
            info["ladder"] = ladder[1]
            candidates["curvature_ladder"] = _curved_probe(mean_pattern, amplitude, measured, propagator,
                                                           (ladder[0], ladder[0]), iterations)
    if farfield:
        # (the support comes from the autocorrelation of the exit waves: a far-field notion)
        candidates["support"] = _support_probe(mean_pattern, amplitude, measured, propagator, iterations)
    elif not local_engine:
        # (no plane wave for engines with local probe updates: from it the object takes up the probe's structure)
        candidates["flat"] = np.ones(shape, dtype=np.complex128)
    for name, probe in candidates.items():
        power = float(np.sum(np.abs(probe) ** 2))
        if power > 0 and photons > 0:
            candidates[name] = probe * np.sqrt(photons / power)

    chosen = "curvature" if "curvature" in candidates else ("mean_pattern" if not farfield else "support")
    if central is not None and central[0].shape[0] >= TRIAL_MIN_FRAMES:
        frames, frame_valid, frame_pos = central
        near = np.sort(np.argsort(np.hypot(*(frame_pos - frame_pos.mean(axis=0)).T), kind="stable")[:TRIAL_FRAMES])
        # at low counts the trial's own fit ranks the candidates by how well they fit the noise, and in
        # near field its fit hardly tells them apart: score them on pixels the trial leaves out instead
        holdout = _trial_holdout(per_pixel, farfield)
        info["holdout"] = holdout
        errors = trial_errors(candidates, frames[near], frame_valid[near], frame_pos[near], propagator,
                              power_bound=noise_floor, holdout=holdout)
        values = np.array([errors[name] for name in candidates], dtype=np.float64)
        values[~np.isfinite(values)] = np.finfo(np.float64).max
        parallel.allreduce(values, op="max")  # one verdict on every rank, whatever the rounding
        chosen = list(candidates)[int(np.argmin(values))]  # the first of equals
        info["trial"] = {name: float(v) for name, v in zip(candidates, values)}
        info["trial_pick"] = chosen
        log.info("probe guess from the data: %s (trial Fourier error%s %s)", chosen,
                 " on %d %% held-out pixels" % round(100 * holdout) if holdout else "",
                 ", ".join("%s %.4g" % (n, v) for n, v in zip(candidates, values)))
        if local_engine and farfield and frames.shape[0] >= HELD_MIN_FRAMES:
            held_errors = _held_frame_errors(candidates, frames, frame_valid, frame_pos, propagator, noise_floor)
            info["held_frames"] = held_errors
            chosen = pick_for_local_engine(chosen, held_errors)
            log.info("probe guess for local probe updates: %s (Fourier error on held-out frames %s)", chosen,
                     ", ".join("%s %.4g" % kv for kv in held_errors.items()))
    info["method"] = chosen
    if chosen == "curvature":
        log.info("probe guess: wavefront curvature (%.4g, %.4g) rad/pixel^2 from %d frame pairs (score %.3f)",
                 info["curvature"][0], info["curvature"][1], info["pairs"], info["score"])
    return candidates[chosen]


#: A second local maximum of the curvature score at least this fraction of the best is tried too.
RIVAL_FRACTION = 0.5

#: Mean counts per measured pixel below which (counted data only) the curvature's contrast maps are
#: smoothed by a Gaussian of 2 pixels (below the first) or 1 pixel (below the second).
LOW_COUNTS = (1.0, 50.0)

#: Between ``LOW_COUNTS[0]`` and ``LOW_COUNTS[1]`` counts per pixel the pattern shifts read the curvature short
#: (lowdose_1e4, 2.4 counts per pixel: 0.012-0.029 rad/pixel^2 where 0.045-0.06 wins the trial), so the trial
#: also gets the measured curvature times these factors.
LOW_COUNT_CURVATURE_FACTORS = (1.5, 2.0, 3.0)

#: Frames nearest the scan centre whose patterns the curvature and the trial analyse.
CENTRAL_FRAMES = 40

#: Frames analysed below ``LOW_COUNTS[0]`` counts per pixel (counted data; at most ``2**22`` pixels).
#: Their pairs' correlation maps are mostly counting noise there: on the zoo's ``lowdose_1e3``
#: (zone-plate probe, 1e3 photons per 64 x 64 frame, 150 frames) the curvature from the 40 central
#: frames ranged 0.010-0.057 rad/pixel^2 over 7 simulation seeds (probe 0.051) and DM 200 + ML 100
#: scored 0.13-0.73 (mean 0.53); from all 150 frames 0.028-0.041 and 0.68-0.73 (mean 0.71; from the
#: true probe 0.71-0.73 on the three seeds measured). Above it 40 frames did as well (lowdose_1e4,
#: 5 seeds: mean 0.925 from 40, 0.923 from 150).
VERY_LOW_COUNT_FRAMES = 160

#: Fewest frames for a trial of the candidate probes (fewer: the most trusted candidate is taken).
TRIAL_MIN_FRAMES = 6

#: Frames (those nearest the scan centre) the trial of the candidate probes runs on.
TRIAL_FRAMES = 24


#: Frames the held-out-frame trial adds to :data:`TRIAL_FRAMES` (every fifth of them by distance is held out).
HELD_FRAMES = 6

#: Fewest central frames for the held-out-frame trial (engines with local probe updates).
HELD_MIN_FRAMES = 10

#: The first trial's pick stays unless its held-out-frame error is more than this times the best one.
HELD_MARGIN = 2.0


#: Steps of the curvature ladder: ``|a|`` from the search limit down by factors of ``sqrt(2)``.
LADDER_STEPS = 9


#: The ladder's pick counts only when its trial error is at most this share of the worst rung's. On
#: the zoo's zone-plate, defocused and aperture scans the share was 0.01-0.25; on a fly scan whose
#: probe changes from frame to frame (``benchmarks/sim_flyscan.py``) the errors were flat (0.67) and
#: the pick, a = 0.10 where the shift score gave 0.01, made mPIE and LSQML recover the frames'
#: probes worse (0.80 / 0.79 worst frame against >= 0.95).
LADDER_CONTRAST = 0.5


def _trial_holdout(per_pixel, farfield):
    """Share of the pixels the trial scores on (0: all; see :func:`probe_from_data`)."""
    low_counts = per_pixel is not None and LOW_COUNTS[0] <= per_pixel < LOW_COUNTS[1]
    return HOLDOUT_FRACTION if low_counts or not farfield else 0.0


def _ladder_curvature(found, central, mean_pattern, amplitude, measured, propagator, iterations, photons,
                      noise_floor, per_pixel, farfield):
    """The isotropic curvature whose curved guess the trial ranks best, from a ladder of magnitudes.

    The feature-shift score fixes the sign of the curvature reliably but not
    always its size: where the hologram features decorrelate quickly between
    neighbouring frames (fine or strongly scattering objects: a phase span of
    3 pi with 2-pixel features), what is left of the patterns that do not move
    still pulls the peak towards ``a = 0`` (0.012 found where the probe has
    0.07 rad/pixel^2). A short trial reconstruction, on the other hand,
    separates curvatures clearly: on that scan its Fourier error fell from
    0.11 (``a = 0.005-0.035``) to 0.024 at ``a = 0.06``, the ladder step whose
    guess was closest to the true probe. So curved guesses with ``|a|`` from
    the shift search's limit (:func:`_curvature_limit`) down by factors of
    ``sqrt(2)`` (:data:`LADDER_STEPS` of them), all with the sign of the
    shift score's best ``a_y + a_x``, each start the trial of
    :func:`~ptycli.core.probe_trial.trial_errors` on the central frames, and
    the best is offered to the candidates' trial as ``curvature_ladder``
    (the shift score's own, astigmatic, curvature stays a candidate). The
    ladder costs :data:`LADDER_STEPS` trials. (Refining the best rung a
    quarter octave either side lowered the trial error on the zoo's
    ``strong_phase`` seed 113, a 0.075 -> 0.063 where the probe has 0.079,
    and LSQML 100 from it scored 0.83 instead of 0.999: the trial's minimum
    is shallow near the truth and not a finer judge than the rungs.)

    Returns
    -------
    (a, errors) or None
        ``a`` in rad per sample pixel squared and the trial error per ladder
        step (``{a: error}``); None when the shift score gives no sign or
        the best rung's error is above :data:`LADDER_CONTRAST` times the
        worst's (the trial does not separate the curvatures).
    """
    sign = np.sign(float(found[0]) + float(found[1]))
    frames, frame_valid, frame_pos = central
    limit = _curvature_limit(frame_pos)
    if sign == 0 or limit is None:
        return None
    return _best_rung(sign * limit * 2.0 ** (-0.5 * np.arange(LADDER_STEPS)), central, mean_pattern, amplitude,
                      measured, propagator, iterations, photons, noise_floor, per_pixel, farfield)


def _best_rung(values, central, mean_pattern, amplitude, measured, propagator, iterations, photons, noise_floor,
               per_pixel, farfield, contrast=LADDER_CONTRAST):
    """The curvature among ``values`` (isotropic) whose curved guess the trial ranks best (see
    :func:`_ladder_curvature`); None when the trial does not separate them."""
    frames, frame_valid, frame_pos = central
    near = np.sort(np.argsort(np.hypot(*(frame_pos - frame_pos.mean(axis=0)).T), kind="stable")[:TRIAL_FRAMES])
    holdout = _trial_holdout(per_pixel, farfield)

    def rank(values):
        ladder = {}
        for n, a in enumerate(values):
            probe = _curved_probe(mean_pattern, amplitude, measured, propagator, (a, a), iterations)
            power = float(np.sum(np.abs(probe) ** 2))
            if power > 0 and photons > 0:
                probe = probe * np.sqrt(photons / power)
            ladder["a%d" % n] = probe
        errors = trial_errors(ladder, frames[near], frame_valid[near], frame_pos[near], propagator,
                              power_bound=noise_floor, holdout=holdout)
        errs = np.array([errors["a%d" % n] for n in range(len(values))], dtype=np.float64)
        errs[~np.isfinite(errs)] = np.finfo(np.float64).max
        parallel.allreduce(errs, op="max")  # one verdict on every rank
        return errs

    values = np.asarray(values, dtype=np.float64)
    errs = rank(values)
    best = int(np.argmin(errs))
    log.info("probe guess: curvature ladder %s",
             ", ".join("%.4g: %.4g" % (a, e) for a, e in zip(values, errs)))
    if not errs[best] <= contrast * errs.max():
        return None  # the trial does not tell the curvatures apart: its pick would be chance
    return float(values[best]), {float(a): float(e) for a, e in zip(values, errs)}


def _near_field_rungs(shape):
    """Curvatures (rad per pixel squared) the near-field ladder tries: ``|a|`` from ``2 pi / N`` (the local
    frequency ``a r / pi`` reaches Nyquist a quarter frame from the centre, ``r = N / 4``) down by factors
    of ``sqrt(2)``, :data:`LADDER_STEPS` of them (``N`` the shorter side)."""
    return 2 * np.pi / float(min(shape)) * 2.0 ** (-0.5 * np.arange(LADDER_STEPS))


def pick_for_local_engine(chosen, held_errors, margin=HELD_MARGIN):
    """The candidate for an engine with local probe updates, from the trial's pick and the held-out-frame errors.

    Parameters
    ----------
    chosen : str
        The first trial's pick.
    held_errors : dict of str -> float
        Each candidate's Fourier error on the held-out frames (lower is
        better; in the candidates' order, which breaks ties).
    margin : float
        ``chosen`` stays unless its error exceeds ``margin`` times the lowest.

    Returns
    -------
    str
    """
    names = list(held_errors)
    values = np.array([held_errors[n] for n in names], dtype=np.float64)
    values[~np.isfinite(values)] = np.finfo(np.float64).max
    best = names[int(np.argmin(values))]
    if not np.isfinite(held_errors.get(chosen, np.inf)) or held_errors[chosen] > margin * float(values.min()):
        return best
    return chosen


def _held_frame_errors(candidates, frames, frame_valid, frame_pos, propagator, noise_floor):
    """Each candidate's Fourier error on central frames left out of a trial on their neighbours (same on every rank)."""
    dist = np.hypot(*(frame_pos - frame_pos.mean(axis=0)).T)
    order = np.argsort(dist, kind="stable")[:TRIAL_FRAMES + HELD_FRAMES]
    held = np.zeros(frames.shape[0], dtype=bool)
    held[order[2::5]] = True  # every fifth by distance, from the third: inside the fitted frames' area
    near = np.sort(order)
    errors = trial_errors(candidates, frames[near], frame_valid[near], frame_pos[near], propagator,
                          power_bound=noise_floor, held_frames=held[near])
    values = np.array([errors[name] for name in candidates], dtype=np.float64)
    values[~np.isfinite(values)] = np.finfo(np.float64).max
    parallel.allreduce(values, op="max")  # one verdict on every rank
    return {name: float(v) for name, v in zip(candidates, values)}


def central_frames(intensities, valid, positions, max_frames=CENTRAL_FRAMES):
    """The frames nearest the scan centre, gathered to every process.

    Parameters
    ----------
    intensities, valid : ndarray (n, rows, cols)
        This process's frames and valid pixels.
    positions : ndarray (n, 2)
        This process's scan positions (y, x) in sample pixels.
    max_frames : int
        Most frames to take (fewer for large frames: at most ``2**22`` pixels).

    Returns
    -------
    (frames, valid, positions) or None
        float32 frames, bool valid pixels and positions (n', 2) of the chosen
        frames in frame-index order, identical on every process; None when
        there are fewer than 3 frames or a position is not finite.
    """
    shape = tuple(intensities.shape[-2:])
    pos = np.asarray(positions, dtype=float).reshape(-1, 2)
    if pos.shape[0] != intensities.shape[0]:
        raise DataError("probe guess: %d positions for %d frames" % (pos.shape[0], intensities.shape[0]))
    parts = parallel.allgather(pos)
    first = int(sum(len(p) for p in parts[:parallel.rank]))
    allpos = np.concatenate(parts, axis=0) if parts else pos
    total = allpos.shape[0]
    if total < 3 or not np.all(np.isfinite(allpos)):
        return None
    budget = max(8, (1 << 22) // max(shape[0] * shape[1], 1))
    k = int(min(total, max_frames, budget))
    # ties by frame index, so that the choice does not depend on the split over processes
    dist = np.hypot(*(allpos - allpos.mean(axis=0)).T)
    chosen = np.sort(np.lexsort((allpos[:, 1], allpos[:, 0], dist))[:k])
    frames = np.zeros((2, k) + shape, dtype=np.float32)
    for slot, index in enumerate(chosen):
        local = index - first
        if 0 <= local < intensities.shape[0]:
            frames[0, slot] = intensities[local]
            frames[1, slot] = valid[local]
    parallel.allreduce(frames)  # each frame comes from exactly one rank: the sum is exact
    return frames[0], frames[1] > 0, allpos[chosen]


def valid_pixels(intensities, mask):
    """Boolean valid-pixel array of the frames' shape (all valid without a mask)."""
    if mask is None:
        return np.ones(intensities.shape, dtype=bool)
    return np.broadcast_to(np.asarray(mask, dtype=bool), intensities.shape)


def mean_measured_pattern(intensities, mask):
    """Mean pattern over all processes' frames, each pixel over the frames where it is valid (collective).

    Parameters
    ----------
    intensities : ndarray (n, rows, cols)
        This process's measured frames.
    mask : ndarray (n, rows, cols) of bool, optional
        Valid pixels (None: all).

    Returns
    -------
    mean_pattern : ndarray float64 (rows, cols)
        0 where no frame measured the pixel.
    counts : ndarray float64 (rows, cols)
        Number of frames (of all processes) in which each pixel is valid.
    """
    intensities = np.asarray(intensities)
    sums = np.zeros((2,) + tuple(intensities.shape[-2:]))  # float64: float32 sums overflow
    # frame by frame (the order of numpy's reduction over the first axis): no data-sized temporaries
    for f in range(intensities.shape[0]):
        if mask is None:
            sums[0] += intensities[f]
            sums[1] += 1.0
        else:
            valid = np.asarray(mask[f] if np.ndim(mask) == intensities.ndim else mask, dtype=bool)
            sums[0] += np.where(valid, intensities[f], 0)
            sums[1] += valid
    parallel.allreduce(sums)
    return np.where(sums[1] > 0, sums[0] / np.maximum(sums[1], 1), 0.0), sums[1]


def _axis_coords(shape, centre):
    """Pixel offsets ``(y, x)`` (1D each) of a frame from ``centre``."""
    return (np.arange(shape[0]) - float(centre[0]), np.arange(shape[1]) - float(centre[1]))


def _centre(propagator, attr, shape):
    value = getattr(propagator, attr, None)
    if value is None:
        return np.array(shape, dtype=float) // 2
    return np.broadcast_to(np.asarray(value, dtype=float), (2,))


def _support_probe(mean_pattern, amplitude, measured, propagator, iterations):
    """Error reduction on the mean pattern in a support from its autocorrelation (no positions)."""
    probe = np.asarray(propagator.bw(amplitude.astype(np.complex128)), dtype=np.complex128)
    if iterations <= 0:
        return probe
    shape = probe.shape
    # autocorrelation of the exit waves: inverse transform of the mean intensity
    auto = np.abs(np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(mean_pattern))))
    yy, xx = np.indices(shape)
    r = np.hypot(yy - shape[0] // 2, xx - shape[1] // 2)
    inside = auto > 0.05 * auto.max()
    auto_radius = np.percentile(r[inside], 95) if np.any(inside) else min(shape) / 4
    radius = float(np.clip(auto_radius / 2, 2.0, min(shape) / 2 - 1))
    support = smooth_step(radius - r, 2.0)
    guess = support.astype(np.complex128)
    for _ in range(int(iterations)):
        far = propagator.fw(guess)
        far = np.where(measured, amplitude * np.exp(1j * np.angle(far)), far)
        guess = propagator.bw(far) * support
    return guess


def _curved_probe(mean_pattern, amplitude, measured, propagator, curvature, iterations):
    """Envelope = the mean pattern mapped back geometrically, phase = the curvature; then ER."""
    shape = mean_pattern.shape
    origin = _centre(propagator, "origin", shape)
    centre = _centre(propagator, "center", shape)
    y, x = _axis_coords(shape, origin)
    ay, ax = float(curvature[0]), float(curvature[1])
    if getattr(propagator, "kind", "farfield") == "farfield":
        # sample pixel r -> detector pixel N a r / pi (local phase gradient 2 a r, in cycles N a r / pi)
        ky = centre[0] + shape[0] * ay * y / np.pi
        kx = centre[1] + shape[1] * ax * x / np.pi
    else:
        # near field: the local frequency a r / pi (cycles per pixel) moves by F a r / pi pixels on the way,
        # F = lam z / dx^2: the beam is magnified by 1 + F a / pi
        fresnel = propagator.lam * propagator.distance / np.asarray(propagator.psize_sam, dtype=float) ** 2
        ky = centre[0] + (1.0 + fresnel[0] * ay / np.pi) * y
        kx = centre[1] + (1.0 + fresnel[1] * ax / np.pi) * x
    kyy, kxx = np.meshgrid(ky, kx, indexing="ij")
    image = bilinear(mean_pattern, kyy, kxx)
    envelope = np.sqrt(np.clip(image, 0, None))
    chirp = np.exp(1j * np.add.outer(ay * y ** 2, ax * x ** 2))
    # keep clear of the frame edge (3 pixels, soft)
    edge = [np.minimum(np.arange(n), n - 1 - np.arange(n)) - 3.0 for n in shape]
    support = np.multiply.outer(smooth_step(edge[0], 2.0), smooth_step(edge[1], 2.0))
    guess = envelope * support * chirp
    if not np.any(envelope > 0):
        guess = support * chirp
    for _ in range(int(iterations)):
        far = propagator.fw(guess)
        far = np.where(measured, amplitude * np.exp(1j * np.angle(far)), far)
        near = propagator.bw(far)
        guess = np.clip(np.real(near * np.conj(chirp)), 0, None) * support * chirp
    return guess


def _curvature_from_shifts(frames, frame_valid, sub, mean_pattern, neighbours=4, smooth=0.0, fixed_patterns=False):
    """Wavefront curvatures ``(a_y, a_x)`` from the shift of patterns between neighbouring frames.

    ``frames``, ``frame_valid`` and ``sub`` (positions in sample pixels) are
    the central frames of :func:`central_frames`; ``smooth`` (pixels) is the
    width of a Gaussian applied to the contrast maps (low counts); with
    ``fixed_patterns`` what does not move with the object is taken out first
    (:func:`_without_fixed_patterns`, :func:`_without_common_correlation`).
    Returns a list of
    ``(curvature, score, number_of_pairs)``, the best first, then a rival
    local maximum of the score when there is one (see the code); empty when
    the frames cannot be paired (all at one position) or no curvature gives a
    positive correlation. Identical on every rank.
    """
    shape = tuple(frames.shape[-2:])
    k = frames.shape[0]
    pairs = _neighbour_pairs(sub, neighbours)
    if not pairs:
        return []
    steps = np.array([sub[j] - sub[i] for i, j in pairs])
    # contrast maps, unit Poisson noise: (I - c <I>) / sqrt(<I>), c the frame's counts over the
    # mean pattern's (unscaled, a frame's overall brightness correlates at zero shift and buried
    # the true curvature's peak: 0.007-0.016 found for a zone-plate probe of 0.050 rad/pixel^2)
    mean = mean_pattern.astype(np.float32)
    floor = np.float32(max(1e-3 * float(mean.max()), 1e-30))
    scale = (np.sum(np.where(frame_valid, frames, 0), axis=(1, 2), dtype=np.float64)
             / np.maximum(np.sum(np.where(frame_valid, mean, 0), axis=(1, 2), dtype=np.float64), 1e-30))
    contrast = np.where(frame_valid, (frames - scale[:, None, None].astype(np.float32) * mean)
                        / np.sqrt(mean + floor), 0).astype(np.float32)
    if smooth > 0:
        contrast = gaussian_wrap(contrast, smooth).astype(np.float32)
    if fixed_patterns:
        contrast = _without_fixed_patterns(contrast)
    spectra = np.fft.rfft2(contrast)
    norms = np.sqrt(np.sum(contrast.astype(np.float64) ** 2, axis=(1, 2)))
    maps = np.empty((len(pairs),) + shape, dtype=np.float32)
    for n, (i, j) in enumerate(pairs):
        # maps[n](s) = sum_q c_i(q) c_j(q + s) / (|c_i| |c_j|)
        maps[n] = np.fft.irfft2(np.conj(spectra[i]) * spectra[j], s=shape) / max(norms[i] * norms[j], 1e-30)
    if fixed_patterns:
        maps = _without_common_correlation(maps)
    score = _ShiftScore(maps, steps, shape)
    # isotropic scan: the shift of a typical (median) step must stay within a
    # third of the frame, the local frequency below Nyquist 2 pixels off the
    # axis (the longest step made the range too short for strongly curved
    # probes on sparse scans: 0.050 rad/pixel^2 where the probe had 0.054)
    span = np.abs(steps).max(axis=0)
    limit = _curvature_limit(sub, neighbours)
    grid = np.linspace(-limit, limit, 401)
    values = score(grid, grid)
    step = float(grid[1] - grid[0])
    # the isotropic score's local maxima, strongest first: the best and, when it comes close
    # (a second peak of at least RIVAL_FRACTION of the best), a rival for the trial to judge
    # (pairs of frames share features that correlate best at zero shift, a peak at a ~ 0 that
    # can outscore the true curvature's)
    inner = values[1:-1]
    peaks = 1 + np.nonzero((inner >= values[:-2]) & (inner > values[2:]))[0]
    peaks = peaks[np.argsort(values[peaks], kind="stable")[::-1]]
    peaks = [int(i) for i in peaks if values[i] > 0 and values[i] >= RIVAL_FRACTION * values[peaks[0]]][:2]
    found = []
    for i in peaks:
        a0 = float(grid[i])
        ay = ax = a0
        # per-axis refinement (astigmatism) where both axes have steps: a 2D
        # search about the isotropic value, +-60 % wide, then two finer ones
        if span.min() > 0.5:
            width = 0.6 * abs(a0) + 8 * step
            for _ in range(3):
                offs = np.linspace(-width, width, 21)
                gy, gx = np.meshgrid(ay + offs, ax + offs, indexing="ij")
                vals = score(gy.ravel(), gx.ravel())
                m = int(np.argmax(vals))
                ay, ax = float(gy.ravel()[m]), float(gx.ravel()[m])
                width = 2 * (offs[1] - offs[0])
        value = float(score(np.array([ay]), np.array([ax]))[0])
        # a rival that refined onto the best (within 4 grid steps per axis) would only repeat it
        if value > 0 and not any(np.all(np.abs(np.array([ay, ax]) - c) <= 4 * step) for c, _, _ in found):
            found.append((np.array([ay, ax]), value, len(pairs)))
    return found


def _neighbour_pairs(sub, neighbours=4):
    """Pairs ``(i, j)``, ``i < j``: every frame with its nearest neighbours.

    Not at the same position (0.5 pixels apart at least); all those as near
    as the ``neighbours``-th, so that the frame order does not matter.
    """
    pairs = set()
    for i in range(sub.shape[0]):
        d = np.hypot(*(sub - sub[i]).T)
        others = np.sort(d[d > 0.5])
        if others.size == 0:
            continue
        reach = others[min(neighbours, others.size) - 1] * (1 + 1e-6)
        pairs.update((min(i, j), max(i, j)) for j in np.nonzero((d > 0.5) & (d <= reach))[0])
    return sorted(pairs)


def _curvature_limit(sub, neighbours=4):
    """Largest curvature searched (rad per sample pixel squared), None without pairs.

    The shift of a typical (median) step between neighbours must stay within
    a third of the frame, and the local frequency below Nyquist 2 pixels off
    the axis (``pi / 4``).
    """
    pairs = _neighbour_pairs(np.asarray(sub, dtype=float), neighbours)
    if not pairs:
        return None
    steps = np.array([sub[j] - sub[i] for i, j in pairs])
    typical = float(np.median(np.abs(steps).max(axis=1)))
    return min(np.pi / 3 / typical, np.pi / 4)


#: Principal components of the central frames' contrast maps removed before the curvature's correlations.
FIXED_PATTERNS = 3


def _without_fixed_patterns(contrast, components=FIXED_PATTERNS):
    """The contrast maps less their strongest principal components across frames (patterns that do not move).

    Features that move with the object (the hologram of a curved probe)
    appear at a different detector place in every frame and spread over
    many components; what every frame shows at the same place (the bright
    field of the pupil and the dark-field halo, whose balance changes with
    the local transmission and scattering power of the object; the edges of
    an annular pupil) varies from frame to frame by a few amplitudes only
    and fills the first components. Left in, it correlates at zero shift for
    every pair and outscored the true curvature's peak (zoo zone-plate
    probes of 0.079 rad/pixel^2: 0.000-0.012 found on strong-phase,
    fine-textured and two-mode scans). At most a quarter of the frames'
    components are removed. Used for the sign of the curvature ladder only
    (:func:`_ladder_curvature`): it also takes some moving content, and the
    per-axis values it gave were less accurate where the plain score was
    right (an astigmatic aperture of (0.02, 0.01): (0.021, 0.012) against
    (0.018, 0.010)).

    Parameters
    ----------
    contrast : ndarray (frames, rows, cols)
    components : int

    Returns
    -------
    ndarray float32, the shape of ``contrast``
    """
    count = int(min(components, contrast.shape[0] // 4))
    if count <= 0:
        return contrast
    flat = contrast.reshape(contrast.shape[0], -1).astype(np.float64)
    u, sv, vt = np.linalg.svd(flat, full_matrices=False)
    flat -= (u[:, :count] * sv[:count]) @ vt[:count]
    return flat.reshape(contrast.shape).astype(np.float32)


def _without_common_correlation(maps):
    """Pair correlation maps less their median over all pairs, each pair counted both ways round.

    A pattern shift that follows the scan step lands at a different place
    for pairs stepping in different directions (the maps of ``(i, j)`` and
    ``(j, i)`` are mirrored: steps ``d`` and ``-d``), so it is never the
    median; what all pairs share (the correlation at and about zero shift
    of what the principal components left of the fixed patterns) is, and
    it is removed. A probe with a flat wavefront then scores near zero
    everywhere, and the curvature candidate is a weak guess that the trial
    judges.

    Parameters
    ----------
    maps : ndarray (pairs, rows, cols)
        ``maps[n](s) = sum_q c_i(q) c_j(q + s)`` (normalised).

    Returns
    -------
    ndarray float32, the shape of ``maps``
    """
    mirrored = np.roll(maps[:, ::-1, ::-1], 1, axis=(1, 2))  # (j, i): s -> -s
    common = np.median(np.concatenate([maps, mirrored]), axis=0)
    return (maps - common).astype(np.float32)


class _ShiftScore:
    """Mean correlation of frame pairs at the pattern shifts predicted by curvatures ``(a_y, a_x)``."""

    def __init__(self, maps, steps, shape):
        self.maps, self.steps, self.shape = maps, steps, shape

    def __call__(self, ay, ax):
        ay = np.asarray(ay, dtype=float)
        ax = np.asarray(ax, dtype=float)
        h, w = self.shape
        total = np.zeros(ay.shape)
        for cmap, (dy, dx) in zip(self.maps, self.steps):
            sy = np.mod(-h * ay * dy / np.pi, h)
            sx = np.mod(-w * ax * dx / np.pi, w)
            total += bilinear(cmap, sy, sx, wrap=True)
        return total / len(self.maps)
