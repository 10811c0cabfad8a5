"""Scan patterns: sample positions ``(y, x)`` in metres.

:func:`from_pars` builds a pattern from a parameter tree::

    >>> from ptycli.core import xy
    >>> pos = xy.from_pars({'model': 'round', 'spacing': 4.15625e-4,
    ...                     'extent': 4.9875e-3})
    >>> pos.shape
    (116, 2)

Parameters (``pars`` keys, all optional except as noted)
---------------------------------------------------------
model : 'round', 'raster', 'spiral', 'custom', None or array-like
    Pattern type. ``None``/``'custom'`` take ``positions``; an array-like
    ``model`` is itself the list of positions.
spacing, steps, extent : scalar or pair (y, x)
    Step (m), number of steps, and field size (m). Any two determine the
    third (see :func:`complete`). Not needed for custom positions; a given
    ``extent`` still clips them.
offset : scalar or pair (y, x)
    Added to every position (m), before the extent cut.
jitter : None, scalar or pair (y, x)
    Standard deviation (m) of Gaussian noise added to every position
    before the offset and the cut; reproducible through ``seed``.
seed : int
    Seed of the jitter generator (default 0).
count : None or int
    Keep only the first ``count`` (>= 1) positions (None = all; more than
    available keeps all).
positions : array-like (N, 2)
    Explicit positions for the custom model.

Order of operations: generate the pattern centred on the origin, add
jitter, add ``offset``, keep points with ``|y| <= extent_y / 2`` and
``|x| <= extent_x / 2`` (window centred on the origin, bounds inclusive with
a relative tolerance of ``1e-9``), then cut to ``count``.
"""

import numpy as np

from ..utils.array_utils import checked_pair
from ..utils.param_tree import Param

__all__ = [
    "DEFAULT",
    "MODELS",
    "from_pars",
    "complete",
    "round_scan",
    "raster_scan",
    "spiral_scan",
]

#: Valid model names (``None`` is accepted too and means 'custom').
MODELS = ("round", "raster", "spiral", "custom")

#: Declared defaults of the scan-pattern parameters.
DEFAULT = Param(
    model="round",
    spacing=None,
    steps=None,
    extent=None,
    offset=0.0,
    jitter=None,
    seed=0,
    count=None,
    positions=None,
)

#: Relative tolerance under which ``extent / spacing`` is taken as an integer.
STEPS_RTOL = 1e-6

#: Relative tolerance of the inclusive extent cut ``|coord| <= extent / 2``.
EXTENT_RTOL = 1e-9

#: Median nearest-neighbour distance of a Vogel sunflower spiral
#: ``r = c sqrt(k + 1/2)``, ``theta = k * golden angle``, in units of ``c``
#: (measured numerically: 1.689 for large point counts, ~1.68 near the centre).
_SPIRAL_NN = 1.69

_GOLDEN_ANGLE = np.pi * (3.0 - np.sqrt(5.0))


def _pair(value, name, positive=True):
    """A scalar or pair as a float ndarray of 2 (:func:`~ptycli.utils.array_utils.checked_pair`), or None."""
    if value is None:
        return None
    return checked_pair(value, name, positive=positive)


def _steps_from_ratio(ratio):
    """Integer steps from ``extent / spacing`` (float ndarray of 2).

    The nearest integer is taken when the ratio is within ``STEPS_RTOL``
    (relative) of it, so floating-point noise such as 11.999999999999998
    gives 12; otherwise the ratio is floored, so the pattern never needs
    more than ``extent``.
    """
    near = np.rint(ratio)
    close = np.abs(ratio - near) <= STEPS_RTOL * np.maximum(np.abs(ratio), 1.0)
    return np.where(close, near, np.floor(ratio)).astype(int)


def complete(extent=None, steps=None, spacing=None):
    """Complete two of ``extent``, ``steps``, ``spacing`` with the third.

    Parameters
    ----------
    extent : None, float or pair
        Field size (m, > 0).
    steps : None, int or pair
        Number of steps (> 0, integer valued).
    spacing : None, float or pair
        Step size (m, > 0).

    Returns
    -------
    extent, steps, spacing : ndarray of 2 each (float, int, float)
        ``steps = extent / spacing`` (rounded as in :func:`_steps_from_ratio`),
        ``spacing = extent / steps`` or ``extent = steps * spacing``.

    Raises
    ------
    ValueError
        Fewer than two given, non-positive or non-integer values, or all
        three given and ``steps`` differs from the one ``extent / spacing``
        implies.
    """
    extent = _pair(extent, "extent")
    spacing = _pair(spacing, "spacing")
    if steps is not None:
        st = _pair(steps, "steps")
        ist = np.rint(st)
        if np.any(np.abs(st - ist) > STEPS_RTOL * np.maximum(st, 1.0)):
            raise ValueError("steps must be integer, got %r" % (steps,))
        steps = ist.astype(int)
    given = sum(v is not None for v in (extent, steps, spacing))
    if given < 2:
        raise ValueError("two of extent, steps and spacing are needed to build a scan "
                         "pattern (got extent=%r, steps=%r, spacing=%r)"
                         % (extent, steps, spacing))
    if steps is None:
        steps = _steps_from_ratio(extent / spacing)
        if np.any(steps < 1):
            raise ValueError("extent %r is smaller than one spacing %r" % (extent, spacing))
    elif spacing is None:
        spacing = extent / steps
    elif extent is None:
        extent = steps * spacing
    else:
        implied = _steps_from_ratio(extent / spacing)
        if np.any(implied != steps):
            raise ValueError("extent, steps and spacing disagree: extent / spacing gives "
                             "steps %s, but steps=%s was given; give only two of them"
                             % (implied.tolist(), steps.tolist()))
    return extent, steps, spacing


def round_scan(spacing, nshells, nth=5, bullseye=True):
    """Concentric shells.

    Parameters
    ----------
    spacing : float or pair (dy, dx)
        Radial step (m); shell ``k`` has radius ``k * spacing`` (a pair gives
        ellipses with semi-axes ``k * dy``, ``k * dx``).
    nshells : int
        Number of shells, ``k = 1 ... nshells``.
    nth : int
        Points on the first shell; shell ``k`` holds ``nth * k`` points at
        angles ``2 pi i / (nth * k)``.
    bullseye : bool
        Start with the origin.

    Returns
    -------
    ndarray (N, 2)
        ``(r sin(theta), r cos(theta))`` per point, shell by shell.
    """
    d = _pair(spacing, "spacing")
    out = [np.zeros((1, 2))] if bullseye else []
    for k in range(1, int(nshells) + 1):
        n = int(nth) * k
        theta = 2 * np.pi * np.arange(n) / n
        ry = k * d[0]
        rx = k * d[1]
        out.append(np.stack([ry * np.sin(theta), rx * np.cos(theta)], axis=1))
    if not out:
        return np.zeros((0, 2))
    return np.concatenate(out, axis=0)


def raster_scan(ny, nx, dy, dx=None):
    """Rectangular grid centred on the origin, ``x`` the fast axis.

    Parameters
    ----------
    ny, nx : int
        Number of rows and columns.
    dy, dx : float
        Grid spacing (m); ``dx`` defaults to ``dy``.

    Returns
    -------
    ndarray (ny * nx, 2)
        ``((i - (ny - 1) / 2) * dy, (j - (nx - 1) / 2) * dx)``, row by row.
    """
    dx = dy if dx is None else dx
    yy = (np.arange(int(ny)) - (int(ny) - 1) / 2.0) * dy
    xx = (np.arange(int(nx)) - (int(nx) - 1) / 2.0) * dx
    Y, X = np.meshgrid(yy, xx, indexing="ij")
    return np.stack([Y.ravel(), X.ravel()], axis=1)


def spiral_scan(dr, r, maxpts=None):
    """Fermat (Vogel sunflower) spiral with nearest-neighbour step ~ ``dr``.

    Point ``k`` sits at radius ``c sqrt(k + 1/2)`` and angle ``k`` times the
    golden angle; ``c = dr / 1.69`` makes the median nearest-neighbour
    distance ``dr`` (within a few per cent everywhere, about 0.9 ``dr`` for
    the innermost pair).

    Parameters
    ----------
    dr : float or pair (dy, dx)
        Nearest-neighbour step (m); a pair scales the axes separately.
    r : float or pair (ry, rx)
        Outer radius (m), inclusive; a pair gives an ellipse.
    maxpts : int, optional
        At most this many points.

    Returns
    -------
    ndarray (N, 2)
        Positions ``(y, x)`` ordered from the centre outwards.
    """
    d = _pair(dr, "dr")
    rr = _pair(r, "r")
    # in units where the step is 1 on both axes, the region is an ellipse
    # with semi-axes rr / d; points with (u/a)^2 + (v/b)^2 <= 1 are kept
    a, b = rr / d
    c = 1.0 / _SPIRAL_NN
    # radius c sqrt(k + 1/2) <= max(a, b) bounds the number of candidates
    kmax = int(np.ceil((max(a, b) / c) ** 2)) + 1
    k = np.arange(kmax, dtype=float)
    rad = c * np.sqrt(k + 0.5)
    th = k * _GOLDEN_ANGLE
    u = rad * np.sin(th)
    v = rad * np.cos(th)
    keep = (u / a) ** 2 + (v / b) ** 2 <= 1.0 + EXTENT_RTOL
    pos = np.stack([u[keep] * d[0], v[keep] * d[1]], axis=1)
    if maxpts is not None:
        pos = pos[: int(maxpts)]
    return pos


def _custom_positions(positions):
    if positions is None:
        raise ValueError("model None/'custom' needs explicit 'positions' (N, 2) (y, x) "
                         "in metres; or choose a model from %s" % (MODELS,))
    pos = np.array(positions, dtype=float)
    if pos.ndim == 1 and pos.size == 2:
        pos = pos.reshape(1, 2)
    if pos.ndim != 2 or pos.shape[1] != 2:
        raise ValueError("positions must have shape (N, 2), got %s" % (pos.shape,))
    if not np.all(np.isfinite(pos)):
        raise ValueError("positions must be finite")
    return pos


def from_pars(pars=None, **kwargs):
    """Scan positions from parameters (see the module docstring).

    Parameters
    ----------
    pars : dict, Param or None
        Merged over :data:`DEFAULT`; ``kwargs`` override it.

    Returns
    -------
    ndarray (N, 2) of float
        Positions ``(y, x)`` in metres.

    Raises
    ------
    ValueError
        Unknown model (the valid ones are listed), missing or inconsistent
        extent/steps/spacing, non-positive values, bad ``count``/``positions``.

    Notes
    -----
    * ``round``: the origin plus shells ``k = 1 ... max(steps) // 2 + 1`` at
      radius ``k * spacing`` (:func:`round_scan`; the outermost shell lies
      beyond ``extent / 2`` and is clipped by the cut).
    * ``raster``: ``steps_y`` by ``steps_x`` points centred on the origin
      (:func:`raster_scan`).
    * ``spiral``: :func:`spiral_scan` out to ``extent / 2`` (a disk, or an
      ellipse for unequal extents).

    The extent cut is inclusive with a relative tolerance ``EXTENT_RTOL``
    (1e-9): a point is kept when ``|y| <= (extent_y / 2) * (1 + 1e-9)``.
    Shell points that lie exactly on the boundary (e.g. ``theta = 0`` of the
    shell whose radius equals ``extent / 2``) are therefore kept, also when
    the radius ``k * spacing`` comes out one ulp above ``extent / 2`` or
    ``sin(pi)`` is 1.2e-16 instead of 0. In the seed example (spacing
    ``fsize / 8``, extent ``1.5 fsize``, steps 12) shell 6 has radius exactly
    ``extent / 2``; its two points on the x axis stay, giving 116 positions
    (a strict ``<`` would give 114). The nearest points of shell 7 lie at
    ``6.009 * spacing``, far outside the tolerance.
    """
    p = Param()
    for key, val in DEFAULT.items():
        p[key] = val
    user = {}
    if pars is not None:
        if not hasattr(pars, "items"):
            # a bare array-like is taken as explicit positions
            user["model"] = pars
        else:
            user.update(dict(pars))
    user.update(kwargs)
    unknown = sorted(k for k in user if k not in DEFAULT)
    if unknown:
        raise ValueError("unknown scan-pattern parameter(s) %s; known: %s"
                         % (unknown, sorted(DEFAULT)))
    for key, val in user.items():
        p[key] = val

    model = p.model
    extent = _pair(p.extent, "extent")
    if model is not None and not isinstance(model, str):
        pos = _custom_positions(model)
    elif model is None or model == "custom":
        pos = _custom_positions(p.positions)
    elif model in ("round", "raster", "spiral"):
        extent, steps, spacing = complete(p.extent, p.steps, p.spacing)
        if model == "round":
            pos = round_scan(spacing, int(steps.max()) // 2 + 1)
        elif model == "raster":
            pos = raster_scan(steps[0], steps[1], spacing[0], spacing[1])
        else:
            pos = spiral_scan(spacing, extent / 2.0)
    else:
        raise ValueError("unknown scan model %r; valid models: %s (or None with "
                         "explicit positions, or an array-like of positions)"
                         % (model, ", ".join(repr(m) for m in MODELS)))

    pos = np.array(pos, dtype=float).reshape(-1, 2)

    if p.jitter is not None:
        jit = _pair(p.jitter, "jitter", positive=False)
        if np.any(jit < 0):
            raise ValueError("jitter must be >= 0, got %r" % (p.jitter,))
        rng = np.random.default_rng(p.seed)
        pos = pos + rng.standard_normal(pos.shape) * jit

    if p.offset is not None:
        pos = pos + _pair(p.offset, "offset", positive=False)

    if extent is not None:
        half = extent / 2.0 * (1.0 + EXTENT_RTOL)
        keep = (np.abs(pos[:, 0]) <= half[0]) & (np.abs(pos[:, 1]) <= half[1])
        pos = pos[keep]

    if p.count is not None:
        count = p.count
        if isinstance(count, bool) or int(count) != count or count < 1:
            raise ValueError("count must be None (all) or a positive integer, got %r"
                             % (count,))
        pos = pos[: int(count)]

    return np.ascontiguousarray(pos, dtype=float)
