"""Error sums of one iteration: Fourier, photon and exit-change errors over blocks, groups and MPI ranks.

The definitions of the record's error fields are in :mod:`ptycli.engines.base`
(section "History records").
"""

import numpy as np

from .. import parallel
from .kernels import fourier_errors

__all__ = ["ErrorSums"]


class ErrorSums:
    """Accumulates the error metrics of one iteration over groups, blocks and MPI ranks.

    Parameters
    ----------
    total_counts : float
        ``sum mask I`` over all ranks (normalises ``exit_change``).

    Notes
    -----
    Sums are kept in float64: ``[fourier, photon, valid pixels, exit change, likelihood]``.
    :meth:`reduce` allreduces them once (one small MPI call per iteration) and
    returns the normalised record fields.
    """

    def __init__(self, total_counts):
        self.total_counts = float(total_counts)
        self.sums = np.zeros(5)
        self.has_likelihood = False

    def add(self, fourier=0.0, photon=0.0, valid=0.0, exit_change=0.0, likelihood=None):
        """Add raw sums (see the class notes)."""
        s = self.sums
        s[0] += fourier
        s[1] += photon
        s[2] += valid
        s[3] += exit_change
        if likelihood is not None:
            s[4] += likelihood
            self.has_likelihood = True

    def add_fourier(self, af, fmag, mask=None, intensity=None, per_frame=False):
        """Add the Fourier and photon errors of a frame block.

        Parameters
        ----------
        af : ndarray (frames, H, W), real
            Model amplitudes ``sqrt(sum_modes |F|^2)``.
        fmag : ndarray (frames, H, W), real
            Measured amplitudes ``sqrt(I)``.
        mask : ndarray or None
            Valid-pixel weights (None: all valid).
        intensity : ndarray, optional
            Measured ``I`` (default ``fmag**2``).
        per_frame : bool
            Also return the per-frame mean squared amplitude deviation.

        Returns
        -------
        ndarray (frames,) or None
            ``sum mask (af - fmag)^2 / sum mask`` per frame when ``per_frame``.
        """
        ferr, psum, valid = fourier_errors(af, fmag, mask, intensity)
        self.add(fourier=float(ferr.sum()), photon=psum, valid=float(valid.sum()))
        if per_frame:
            return ferr / np.maximum(valid, 1)
        return None

    def add_exit_change(self, value):
        """Add ``sum |delta psi|^2`` of a block."""
        self.sums[3] += float(value)

    def reduce(self):
        """Allreduce and normalise: a dict with the record's error fields."""
        s = self.sums.copy()
        parallel.allreduce(s)
        nvalid = max(s[2], 1.0)
        return dict(fourier_error=float(s[0] / nvalid), photon_error=float(s[1] / nvalid),
                    exit_change=float(s[3] / max(self.total_counts, 1e-30)),
                    likelihood=float(s[4]) if self.has_likelihood else None)
