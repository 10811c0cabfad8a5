"""The background sums of the engines that project frames onto their measured moduli (DM, RAAR, the PIE family).

The augmented modulus projection (:mod:`ptycli.core.background`) scales every
component of a frame, its coherent modes and its share of the scan's
incoherent background ``B``, by the same factor ``f_j`` per pixel. Over a
pass the engine adds ``m_j f_j^2`` of every frame into one detector-sized
sum per scan (:attr:`BackgroundSums._bg_sums`, float64); after the pass
:meth:`BackgroundSums.background_update` sums it over the MPI ranks and
moves ``B`` to the mean over the frames,
``B <- B * sum_j m_j f_j^2 / sum_j m_j`` (smoothed,
:func:`ptycli.core.background.projection_update`).
"""

import numpy as np

from .. import parallel
from ..core import background
from ..core.background import frame_sums

__all__ = ["BackgroundSums"]


class BackgroundSums:
    """Per-scan sums and constants of the augmented projection's background update (a mixin of engines)."""

    def init_background_sums(self, groups=None):
        """Constants of the update (``sum_j m_j``, the statistical weights, the smoothing) and zeroed sums.

        For the ``groups`` (default: all) whose scan fits a background; only
        their backgrounds are updated (a group left out keeps its ``B`` as it
        is). Collective (the constants are summed over the ranks).
        """
        self._bg_sums, self._bg_const = {}, {}
        for g in (self.book.groups if groups is None else groups):
            if g.background is None:
                continue
            const = frame_sums(g.diff_frames(), g.mask_frames())
            for a in const.values():
                parallel.allreduce(a)
            model = self.ptycho.scans.get(g.label)
            const["sigma"] = model.background_sigma if model is not None else 0.0
            self._bg_const[g.label] = const
            self._bg_sums[g.label] = np.zeros(g.shape, np.float64)

    def zero_background_sums(self):
        """Start a pass: every scan's sum at 0."""
        for a in self._bg_sums.values():
            a.fill(0)

    def background_update(self):
        """The augmented projection's background update of every scan that fits one (sums over all ranks)."""
        for g in self.book.groups:
            if g.label not in self._bg_sums:
                continue
            s = self._bg_sums[g.label]
            parallel.allreduce(s)
            c = self._bg_const[g.label]
            background.projection_update(g.background, s, c["m"], c["w"], c["sigma"])
