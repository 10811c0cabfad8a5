"""Maximum-likelihood refinement (engine ``ML``): conjugate gradients on (object, probe).

The package, one concept per module:

:mod:`.engine`
    :class:`ML`: the algorithm (cost and gradients, Polak-Ribiere
    directions, the line search's safeguard, records, checkpoints, MPI).
:mod:`.noise_models`
    The noise models of ``ML_type`` (Gaussian, Poisson, Euclid), one class
    each: cost, derivatives, floating intensity scale, line-search
    coefficients.
:mod:`.line_search`
    The cost polynomial along a search line and its minimiser.
:mod:`.regularisers`
    The del^2 smoothness prior on the object.
:mod:`.passes`, :mod:`.compiled_passes`
    The block passes over the data behind one interface: numpy, and the
    compiled kernels of :mod:`ptycli.engines.fused_ml`.
:mod:`.sums`
    Reproducible float64 sums of float32 buffers.

Pure helpers (used by the engine and the tests): :func:`noise_terms`,
:func:`floating_scale`, :func:`line_intensity_terms`,
:func:`gaussian_line_coefficients`, :func:`newton_line_coefficients`,
:func:`poly_argmin`, :func:`del2_cost`, :func:`del2_gradient`,
:func:`del2_line_coefficients`.
"""

from .engine import ML
from .line_search import gaussian_line_coefficients, line_intensity_terms, newton_line_coefficients, poly_argmin
from .noise_models import ML_TYPES, floating_scale, noise_terms
from .regularisers import del2_cost, del2_gradient, del2_line_coefficients

__all__ = [
    "ML",
    "ML_TYPES",
    "noise_terms",
    "floating_scale",
    "line_intensity_terms",
    "gaussian_line_coefficients",
    "newton_line_coefficients",
    "poly_argmin",
    "del2_cost",
    "del2_gradient",
    "del2_line_coefficients",
]
