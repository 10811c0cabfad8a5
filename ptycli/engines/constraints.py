"""Constraints on probe and object shared by the engines: support, mode orthogonality, recentring, clipping.

:class:`ConstraintsMixin` gives :class:`~ptycli.engines.base.Engine` its
constraint methods (``apply_probe_constraints``, ``probe_supports``,
``orthogonalize_probe``, ``apply_object_constraints``, ``recenter_probe``, ``pin_scale``,
``fix_phase_ramp``);
they read the engine's parameters (``probe_support``, ``probe_center_tol``,
``clip_object``), its address book and ``self.supports``. The array
operations behind them are functions that engines with their own update
order (ML) call directly: :func:`circular_support`,
:func:`clip_object_amplitude`.
"""

import logging

import numpy as np

from .. import parallel
from ..errors import ConfigError
from ..params.tree import engine_sequence
from ..utils.array_utils import smooth_step
from . import health
from .phase_ramp import (MAX_EDGE_POWER, MIN_CONCENTRATION, apply_phase_ramp, beam_is_off_centre, edge_power,
                         object_ramp, spectrum_centroid, spectrum_symmetry_centre)

__all__ = ["ConstraintsMixin", "circular_support", "clip_object_amplitude"]

log = logging.getLogger("ptycli.engines")


#: ``probe_support: auto`` while positions are refined or a variable probe is fitted, and for the engines
#: whose measured gain from the larger support is nil (:meth:`ConstraintsMixin.support_fraction_used`)
AUTO_SUPPORT_MOVING = 0.8

#: ``probe_support: auto`` of every engine on a near-field scan (positions fixed, one probe for all frames):
#: the ellipse inscribed in the frame (:meth:`ConstraintsMixin.probe_supports`)
NEAR_FIELD_SUPPORT = 1.0


def auto_or_nonnegative(value, path, expected, hint):
    """An engine parameter that is ``'auto'`` or a finite number >= 0, checked (ConfigError naming ``path``)."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value) or value < 0:
        raise ConfigError("%s: expected %s, got %r" % (path, expected, value), hint=hint)
    return float(value)


def support_fraction(value, path):
    """``engines.<label>.probe_support`` checked: ``'auto'`` or a fraction >= 0 (null is handled before)."""
    return auto_or_nonnegative(value, path, "auto, null or a fraction >= 0 of half the frame's sides",
                               "1.0 is the ellipse inscribed in the frame")


def refines_positions(engine_pars):
    """Whether an engine's parameters switch on position refinement or LSQML's position correction."""
    return any(engine_pars.get(name) and engine_pars.get(name).get("start") is not None
               for name in ("position_refinement", "position_correction"))


def circular_support(shape, fraction, edge_px=2.0, dtype=np.float32):
    """Soft elliptical mask with semi-axes ``fraction * (rows / 2, cols / 2)`` centred at ``shape // 2``.

    Circular on square frames. On rectangular frames it follows the frame's
    aspect: a circle sized by the short side cut probes that fill the long
    axis (a near-field reconstruction of 48 x 80 frames reached an object
    correlation of 0.86 with it, 0.99 with the ellipse; a wide far-field probe
    0.97 against 0.995).

    Parameters
    ----------
    shape : (int, int)
        Frame shape (pixels).
    fraction : float
        Semi-axes as a fraction of half the frame's sides.
    edge_px : float
        Width of the soft edge (pixels along the shorter side).

    Returns
    -------
    ndarray of ``dtype``, values in [0, 1]
    """
    h, w = (int(s) for s in shape)
    short = min(h, w)
    y = (np.arange(h) - h // 2) * (short / h)
    x = (np.arange(w) - w // 2) * (short / w)
    r = np.sqrt(y[:, None] ** 2 + x[None, :] ** 2)  # pixels of the shorter side
    radius = float(fraction) * short / 2.0
    # fully transmitting inside the radius, a soft edge of edge_px just outside
    return np.asarray(smooth_step(radius + edge_px - r, edge_px), dtype=dtype)


def clip_object_amplitude(data, clip):
    """Clip the amplitude of the complex array ``data`` to ``clip = [min, max]``, in place (phase kept).

    Pixels of amplitude 0 stay 0. Returns True when any pixel was outside
    the range (``data`` is left untouched otherwise).
    """
    lo, hi = float(clip[0]), float(clip[1])
    a = np.abs(data)
    if not (a.size and (a.min() < lo or a.max() > hi)):
        return False
    scale = np.clip(a, lo, hi)
    np.divide(scale, a, out=scale, where=a > 0)
    scale[a == 0] = 1.0
    data *= scale
    return True


#: ``phase_ramp`` rules as numbers (the MPI ranks compare their plans in one reduction)
_RULE_CODES = {"none": 0, "probe": 1, "object": 2}


def _stamp(groups):
    """A few samples of the probe and object storages of ``groups`` (which moved ramp they carry)."""
    storages = [groups[0].obj] + list({id(g.probe): g.probe for g in groups}.values())
    return [S.data.ravel()[:: max(1, S.data.size // 64)].copy() for S in storages]


def _same_stamp(a, b):
    return a is not None and len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


class ConstraintsMixin:
    """The probe and object constraints of :class:`~ptycli.engines.base.Engine` (see the module docstring)."""

    #: what ``probe_support: auto`` means for this engine when no position is refined and no variable probe
    #: is fitted (fraction of half the frame's sides; see :meth:`support_fraction_used`)
    AUTO_PROBE_SUPPORT = AUTO_SUPPORT_MOVING

    def apply_probe_constraints(self, storages=None, orthogonalize=True):
        """Support, mode orthogonalisation and recentring of the probe(s), in place.

        Call after every probe update. ``storages``: probe storage IDs
        (default all). ``orthogonalize=False`` skips the mode
        orthogonalisation (an engine that updates the probe several times
        per iteration may orthogonalise once at the end, see
        :meth:`orthogonalize_probe`).
        """
        for sid, S in self.book.probe_storages.items():
            if storages is not None and sid not in storages:
                continue
            sup = self.supports.get(sid)
            if sup is not None:
                before = float(np.vdot(S.data, S.data).real)
                S.data *= sup
                # the fraction of the probe's energy the support removed (the health check reads it)
                self.support_cut[sid] = 1.0 - float(np.vdot(S.data, S.data).real) / before if before > 0 else 0.0
        if orthogonalize:
            self.orthogonalize_probe(storages)
        if self.p.get("probe_center_tol") is not None:
            self.recenter_probe()

    def pin_scale(self):
        """Fix the scale ambiguity: probe power to the mean counts per frame, object to match.

        ``P O`` (so the exit waves and every error) is unchanged by ``P -> k P,
        O -> O / k``, and the engines' updates are too (ePIE's and DM's steps
        scale with the arrays), so nothing in an iteration fixes ``k``: left
        free, it drifts. The median lit object amplitude of a near-field scan
        went from 1.6 to 2.3 in 200 DM iterations (4.1 with the
        weak-illumination prior); ePIE from a plane-wave guess on a near-field
        scan shrank the probe by 1e-15 in 135 iterations until the single
        precision object overflowed. Pinned, the object keeps the scale of a
        transmission (about 1 where the probe carries the counts).

        A variable probe's eigen-probes are scaled (every frame's probe with
        them; the weights keep their gauge).

        Returns ``k``, or None where nothing was scaled: no power, or a
        multislice object (``P O_1 O_2 ...`` fixes no single object's scale).
        """
        if any(int(getattr(g.obj, "slices", 1)) > 1 for g in self.book.groups):
            return None
        probes = list(self.book.probe_storages.values())
        power = sum(float(np.vdot(S.data, S.data).real) for S in probes)
        target = len(probes) * self.total_counts / max(float(self.n_frames_total), 1.0)
        if not (power > 0 and target > 0 and np.isfinite(power)):
            return None
        k = np.sqrt(target / power)
        for S in probes:
            S.data *= self.ftype.type(k)
        for S in self.book.obj_storages.values():
            S.data *= self.ftype.type(1.0 / k)
        return float(k)

    def fix_phase_ramp(self):
        """Put the linear phase ramp that probe and object share where ``phase_ramp`` says (collective).

        See :mod:`ptycli.engines.phase_ramp` for the rules (``auto``, ``probe``,
        ``object``, ``none``). One ramp per object storage: ``probe`` takes the
        power-weighted mean of the far-field symmetry centres of the probes that light
        it, ``object`` the ramp of the object's best plane-wave fit over its
        coverage (summed over all ranks' frames;
        :func:`~ptycli.engines.phase_ramp.object_ramp`). Left alone: a
        multislice object (the ramp of ``P O_1 O_2 ...`` is not the first
        slice's alone), a probe storage that lights more than one object
        storage, and (``auto``) a far-field probe whose spectrum is spread.
        Run by :meth:`finalize` of the chain's last engine only.

        The probe and object are moved in place (:meth:`move_phase_ramp`); the
        exit waves follow when an engine next starts on this model
        (:meth:`catch_up_exit_phase_ramp`). Until then they belong with the
        probe and object as they were, which :meth:`state_dict` keeps
        (``unmoved``): a result resumed with more iterations goes on from that
        state, bit for bit as one longer run.

        Returns
        -------
        dict
            ``{object storage ID: f}``: the ramp moved (cycles per pixel; the
            probe got ``exp(-2 pi i f.n)``, the object ``exp(2 pi i f.N)``);
            added to ``self.phase_ramp_moved``.
        """
        rule = self.p.get("phase_ramp") or "none"
        if rule == "none" or self.book is None:
            return {}
        self.sync()
        lit_by, by_object = {}, {}
        for g in self.book.groups:
            lit_by.setdefault(id(g.probe), set()).add(id(g.obj))
            by_object.setdefault(g.obj.ID, []).append(g)
        # per object storage (the same list on every MPI rank): [the rule, f_y, f_x] from this rank's groups
        plans = np.zeros((len(self.book.obj_storages), 3))
        for k, (sid, obj) in enumerate(self.book.obj_storages.items()):
            groups = by_object.get(sid)
            if not groups:
                plans[k, 0] = -1  # no frame of it here: no MPI rank moves it (the replicas stay equal)
                continue
            probes = {id(g.probe): g for g in groups}  # one group (its propagator) per probe storage
            if int(getattr(obj, "slices", 1)) > 1 or any(len(lit_by[i]) > 1 for i in probes):
                continue
            weights = [float(np.vdot(g.probe.data, g.probe.data).real) for g in probes.values()]
            if not sum(weights) > 0:
                continue
            concentrations = [spectrum_centroid(g.probe.data, g.propagator)[1] for g in probes.values()]
            farfield = all(g.farfield for g in groups)
            compact = all(np.all(conc >= MIN_CONCENTRATION) for conc in concentrations)
            fills = any(edge_power(g.probe.data) > MAX_EDGE_POWER for g in probes.values())
            use = rule if rule != "auto" else ("probe" if farfield and compact and not fills else
                                              "object" if not farfield or compact else "none")
            plans[k, 0] = _RULE_CODES.get(use, 0)
            if use == "probe":
                centres = [spectrum_symmetry_centre(g.probe.data, g.propagator,
                                                    g.beam_centre_px if beam_is_off_centre(g) else None)
                           for g in probes.values()]
                plans[k, 1:] = sum(w * c for w, c in zip(weights, centres)) / sum(weights)
        if parallel.size > 1:  # every rank computed the same from replicas; a rank without frames vetoes
            plans = parallel.allreduce(np.where(plans[:, :1] < 0, -1.0, plans), op="min")
        coverage = None
        moved = {}
        for (sid, obj), (code, fy, fx) in zip(self.book.obj_storages.items(), plans):
            if code == _RULE_CODES["object"]:
                if coverage is None:  # collective, on every rank alike (the plans agree)
                    coverage = health.coverage(self.book)
                gradient = object_ramp(obj.data, coverage[sid])
                if gradient is None:
                    continue
                f = -gradient
            elif code == _RULE_CODES["probe"]:
                f = np.array([fy, fx])
            else:
                continue
            if not np.all(np.isfinite(f)) or not np.any(f != 0):
                continue
            groups = by_object[sid]
            unmoved = self.phase_ramp_unmoved  # the first state (a second move keeps it)
            unmoved.setdefault("obj", {}).setdefault(sid, obj.data.copy())
            for g in groups:
                unmoved.setdefault("probe", {}).setdefault(g.probe.ID, g.probe.data.copy())
            self.move_phase_ramp(groups, f)
            moved[sid] = np.asarray(f, dtype=np.float64)
            self.phase_ramp_moved[sid] = self.phase_ramp_moved.get(sid, 0) + moved[sid]
            if parallel.master:
                off_centre = any(beam_is_off_centre(g) for g in groups)
                beam = "the measured beam's place" if off_centre else "the detector centre"
                why = ("the object's best plane-wave fit made flat" if code == _RULE_CODES["object"]
                       else "the probe's far-field intensity made symmetric about %s" % beam)
                log.info("%s: phase ramp (%.5f, %.5f) cycles per pixel moved from the probe to the object (%s)",
                         self.label, f[0], f[1], why)
        return moved

    @staticmethod
    def move_phase_ramp(groups, f):
        """Trade the ramp ``f`` (cycles per pixel) from the probe to the object.

        The probe is multiplied by ``exp(-2 pi i f.n)`` over its pixels, the
        object by ``exp(2 pi i f.N)`` over its own; ``probe * object`` of
        the frame whose window starts at ``d`` turns by ``exp(2 pi i f.d)``
        (exact for whole-pixel windows; the sub-pixel model's fraction is
        left), which the exit waves of ``groups`` are marked to catch up
        (:meth:`catch_up_exit_phase_ramp`).

        Parameters
        ----------
        groups : list of PodGroup
            The groups of one object storage (its probes are the groups' probe storages).
        f : pair of float
            ``(f_y, f_x)``.
        """
        obj = groups[0].obj
        for probe in {id(g.probe): g.probe for g in groups}.values():
            apply_phase_ramp(probe.data, -np.asarray(f))
        apply_phase_ramp(obj.data, f)
        stamp = _stamp(groups)
        for exit_storage in {id(g.exit): g.exit for g in groups}.values():
            pending = getattr(exit_storage, "phase_ramp_pending", None) or {}
            before = pending.get(obj.ID, (0, None))[0]
            pending[obj.ID] = (before + np.asarray(f, dtype=np.float64), stamp)
            exit_storage.phase_ramp_pending = pending

    def catch_up_exit_phase_ramp(self):
        """Turn each exit wave by the constant phase that turned its ``probe * object`` since it was made.

        :meth:`move_phase_ramp` marks the exit storages (``phase_ramp_pending``:
        object storage ID -> the ramp and a stamp of the moved probe and
        object); an engine starting on the model calls this
        (:meth:`initialize`), so that ``exit = probe * object`` holds again
        frame by frame (in place; released storages are rebuilt from
        ``probe * object`` anyway). A mark whose stamp no longer matches (the
        probe or object were written since, by a restore or a load) is dropped.
        """
        marked, stamps = set(), {}
        for g in self.book.groups:
            stamps.setdefault(id(g.obj), []).append(g)
        for g in self.book.groups:
            pending = getattr(g.exit, "phase_ramp_pending", None)
            if not pending:
                continue
            marked.add(g.exit)
            f, stamp = pending.get(g.obj.ID, (None, None))
            if f is None or g.exit.released or not _same_stamp(stamp, _stamp(stamps[id(g.obj)])):
                continue  # the probe or object were set otherwise since (restored, loaded): nothing to follow
            turns = np.exp(2j * np.pi * (f[0] * g.ob_y + f[1] * g.ob_x)).astype(g.exit.data.dtype)
            for layer, factor in zip(g.ex_layer, turns):  # frame by frame (no exit-sized copy)
                g.exit.data[layer] *= factor
        for S in marked:
            S.phase_ramp_pending = None

    def support_fraction_used(self):
        """``probe_support`` as a number (None: no support), ``auto`` resolved for this engine and model.

        ``auto`` is the engine class's ``AUTO_PROBE_SUPPORT`` (1.0, the ellipse
        inscribed in the frame, for DM, RAAR, ML and LSQML; 0.8 for the PIE
        family, where 1.0 gained nothing on the zoo and lost on low-dose mPIE),
        :data:`NEAR_FIELD_SUPPORT` (1.0) for every engine on a near-field scan,
        or :data:`AUTO_SUPPORT_MOVING` when this engine or any engine of the
        run's chain refines positions (:func:`refines_positions`) or a scan
        fits a variable probe: there the larger support let the probe drift,
        and absorb position errors before a later engine refines them
        (measurements in :meth:`probe_supports`).
        """
        fraction = self.p.get("probe_support")
        if fraction != "auto":
            return fraction
        if self.probe_or_positions_drift():
            return AUTO_SUPPORT_MOVING
        return NEAR_FIELD_SUPPORT if self.near_field() else self.AUTO_PROBE_SUPPORT

    def near_field(self):
        """Whether any pod group of this engine propagates to the near field (before :meth:`initialize`: any
        scan of the model); the same answer on every rank."""
        if getattr(self, "book", None) is not None:
            near = any(not g.farfield for g in self.book.groups)
        else:
            near = any(getattr(s.geometry, "propagation", "farfield") == "nearfield"
                       for s in self.ptycho.scans.values() if s.geometry is not None)
        if parallel.size > 1:  # a rank without frames agrees with the others
            near = bool(parallel.allreduce(np.array([float(near)]), op="max")[0])
        return near

    def probe_or_positions_drift(self):
        """Whether this engine or any engine of the run's chain refines positions
        (:func:`refines_positions`), or a scan fits a variable probe: the cases
        where the ``auto`` defaults stay conservative."""
        chain = [pars for _, pars in engine_sequence(getattr(self.ptycho, "p", None))]
        moving = any(refines_positions(pars) for pars in [self.p] + chain)
        return moving or any(getattr(S, "variable_modes", 0) for S in self.ptycho.probe.S.values())

    def probe_supports(self):
        """Probe storage ID -> support mask (:func:`circular_support`); empty for ``probe_support: null``.

        Why ``auto`` (zoo, ``--no-true``, object correlation): 1.0 against the
        former default 0.8 lifts DM 200 + ML 100 (mean / median 0.976 / 0.990
        -> 0.979 / 0.996, foreign_zoneplate 0.985 -> 0.996) and LSQML 100
        (0.970 / 0.988 -> 0.975 / 0.995), leaves rPIE, mPIE and ePIE
        within 0.001 in mean, but position refinement and the variable probe
        lose with it: the zoo's position_errors 0.28 px rms instead of 0.22
        (DM + ML), LSQML's position correction 0.74 px instead of 0.11, the
        LSQML fly scan's worst per-frame probe 0.876 instead of 0.982 (0.9 fails
        the same tests), so ``auto`` keeps 0.8 there. With ``auto`` the default
        chain's zoo reads mean 0.9790, median 0.996 (position_errors 0.985).

        RAAR measured again after its beta ramp and noise bound (RAAR 200 alone,
        full zoo of 28 cases, 0.8 -> 1.0): mean 0.9663 -> 0.9719 on the cases'
        own seeds, 0.9693 -> 0.9763 on seed 21 (foreign_zoneplate 0.955 ->
        0.995, defocused_large_random 0.97 -> 0.996, two_modes 0.97 -> 0.99;
        lower: foreign_focused 0.892 -> 0.885, the far-field diffuser 0.997 ->
        0.987 and 0.994 -> 0.991), and a defocused probe that fills most of a
        64 x 64 frame (ring radius 20-26 px, four scans) 0.73-0.95 -> 0.99: its
        ``auto`` is 1.0 since.

        Near field, 0.8 -> 1.0 for the PIE family (:data:`NEAR_FIELD_SUPPORT`;
        new simulations, 100 frames of 64 x 64 at Fresnel number 12, default
        start, 100 iterations): a near-field probe is not a compact spot, and
        0.8 cut zone-plate and defocused beams (with their Fresnel fringes):
        mPIE / ePIE on a defocused beam of ring radius 24 px 0.159 / 0.310 ->
        0.975 / 0.933, 16 px 0.628 / 0.682 -> 0.895 / 0.795, zone plate 18 px
        0.725 / 0.738 -> 0.914 / 0.831, 12 px 0.867 / 0.826 -> 0.931 / 0.873;
        apertures and the zoo's diffusers within 0.002; a diffuser scan 0.957
        -> 0.946 (mPIE). DM + ML (its ePIE warm-up) within 0.004 on all of
        them; LSQML 100 (its DM warm-up's ePIE warm-up) +0.001-0.009, the zoo's
        ``rect_48x80_near`` 0.964 -> 0.952.
        """
        fraction = self.support_fraction_used()
        if fraction is None:
            return {}
        return {sid: circular_support(S.data.shape[-2:], fraction, dtype=self.ftype)
                for sid, S in self.book.probe_storages.items()}

    def orthogonalize_probe(self, storages=None, rotate_exit=True):
        """Make the probe modes orthogonal and order them by power, in place.

        The modes are replaced by ``P'_k = sum_j V_jk P_j`` with ``V`` the
        eigenvectors (strongest first) of the mode overlap matrix
        ``M_ij = <P_i, P_j>``; the incoherent sum ``sum_k |P_k|^2`` and the
        density matrix are unchanged. With ``rotate_exit`` the exit waves of
        the pods using each probe get the same unitary mixing over probe
        modes, so ``exit_k = P_k O`` relations stay consistent (needed by
        engines that keep exit waves between iterations, such as DM).

        Returns
        -------
        dict
            Storage ID -> ``V`` (modes x modes) for each storage with more than one mode.
        """
        out = {}
        for sid, S in self.book.probe_storages.items():
            if storages is not None and sid not in storages:
                continue
            m = S.data.shape[0]
            if m < 2 or getattr(S, "variable_modes", 0):
                continue  # a variable probe's eigen-probes are ordered with their weights (core.variable_probe)
            flat = S.data.reshape(m, -1)
            overlap = (flat.conj() @ flat.T).astype(np.complex128)
            evals, evecs = np.linalg.eigh(overlap)
            V = evecs[:, np.argsort(evals)[::-1]]
            Vc = V.astype(S.data.dtype)
            flat[...] = Vc.T @ flat
            out[sid] = V
            if rotate_exit:
                self._rotate_exit_modes(S, Vc)
        return out

    def _rotate_exit_modes(self, S, V):
        """Mix the exit waves of pods using probe storage ``S`` over probe modes with ``V``."""
        for g in self.book.groups:
            if g.probe is not S:
                continue
            if not g.regular:
                log.debug("group %s: exit waves not rotated with the probe modes (irregular layout)", g.label)
                continue
            m = S.data.shape[0]
            # exit rows of one frame: modes in order (probe mode, object mode)
            mp = g.mode_pr
            ex = g.exit_frames()
            H, W = g.shape
            for om in np.unique(g.mode_ob):
                idx = np.flatnonzero(g.mode_ob == om)
                rows = mp[idx]
                if len(idx) != m or len(set(rows.tolist())) != m:
                    continue
                order = idx[np.argsort(rows)]  # exit slot of probe row 0, 1, ...
                for f0 in range(0, g.n_frames, 256):
                    f1 = min(g.n_frames, f0 + 256)
                    block = ex[f0:f1][:, order].reshape(f1 - f0, m, H * W)
                    new = np.matmul(V.T[None], block)
                    ex[f0:f1, order] = new.reshape(f1 - f0, m, H, W)

    def apply_object_constraints(self):
        """Clip the object amplitude to ``clip_object`` (in place), when set (:func:`clip_object_amplitude`).

        Returns True when it changed anything (ML restarts its conjugate directions then).
        """
        c = self.p.get("clip_object")
        if c is None:
            return False
        changed = False
        for S in self.book.obj_storages.values():
            changed |= clip_object_amplitude(S.data, c)
        return changed

    def recenter_probe(self):
        """Shift probe, object and exit waves by whole pixels when the probe's mass centre drifts.

        The shift moves all three together, so ``exit = probe * object`` stays
        consistent; the object's coordinate frame moves by the same amount.
        Each object and exit storage moves once, however many pod groups
        share it. Far field only: a probe storage used by a near-field group
        is left alone (the tolerance is ignored there): a near-field probe
        fills the frame, and its centre of mass says nothing about a drift.
        Returns the applied shift per probe storage.
        """
        tol = self.p.get("probe_center_tol")
        shifts = {}
        if tol is None:
            return shifts
        for sid, S in self.book.probe_storages.items():
            users = [g for g in self.book.groups if g.probe is S]
            if not users or not all(getattr(g, "farfield", False) for g in users):
                continue  # near field: recentring is meaningless (see above)
            inten = np.sum(np.abs(S.data) ** 2, axis=0)
            tot = inten.sum()
            if not tot > 0:
                continue
            h, w = inten.shape
            cy = float(np.dot(np.arange(h), inten.sum(axis=1)) / tot)
            cx = float(np.dot(np.arange(w), inten.sum(axis=0)) / tot)
            d = np.array([h // 2 - cy, w // 2 - cx])
            if np.hypot(*d) <= float(tol):
                continue
            s = np.round(d).astype(int)
            self.sync()  # the true exit waves (an engine's working form need not commute with the shift)
            S.data[...] = np.roll(S.data, tuple(s), axis=(-2, -1))
            shifts[sid] = s
            moved = set()  # storages shared by several groups move once
            for g in users:
                for st in (g.obj, g.exit):
                    if id(st) in moved or (st is g.exit and st.released):
                        continue  # a released exit storage holds nothing to move
                    moved.add(id(st))
                    st.data[...] = np.roll(st.data, tuple(s), axis=(-2, -1))
            log.info("%s: probe %s recentred by %s pixels", self.label, sid, tuple(int(v) for v in s))
        return shifts
