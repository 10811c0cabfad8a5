"""Sums and views on real and complex buffers used by the ML engine.

Global quantities are accumulated in float64 from float32 partial sums
(``numpy.einsum``: no threaded BLAS in the reductions, so a run is
reproducible). :func:`cdot` takes one compiled pass
(:func:`ptycli.engines.fused_ml.real_dot`) when asked to.
"""

import numpy as np

from ..._lazy import lazy_module

# imported at first use: listing the parameters (ptycli params) needs no numba
fused_ml = lazy_module("ptycli.engines.fused_ml")

__all__ = ["fdot", "fsum", "cdot", "pairs", "pair_add", "same_buffer"]


def fdot(a, b):
    """``sum a * b`` of two real arrays as a Python float (no BLAS; float32 partial sums)."""
    return float(np.einsum("i,i->", a.reshape(-1), b.reshape(-1)))


def fsum(a):
    """``sum a`` of a real array as a Python float (pairwise summation)."""
    return float(np.add.reduce(a.reshape(-1)))


def _flat_real(a):
    """A complex array's (contiguous) buffer as a flat real array (re, im interleaved)."""
    a = np.ascontiguousarray(a)
    return a.reshape(-1).view(a.real.dtype)


def cdot(a, b, compiled=False):
    """``Re sum conj(a) b`` of two complex arrays, accumulated in float64 (one compiled pass if ``compiled``)."""
    af, bf = _flat_real(a), _flat_real(b)
    if compiled and af.dtype == np.float32:
        return float(fused_ml.real_dot(af, bf))
    out = 0.0
    step = 1 << 16
    for i in range(0, af.size, step):
        out += float(np.einsum("i,i->", af[i:i + step], bf[i:i + step]))
    return out


def pairs(c):
    """Complex array ``(..., W)`` as its real buffer ``(..., 2W)`` (no copy)."""
    return c.view(c.real.dtype)


def same_buffer(a, b):
    """Whether two arrays are the same memory with the same layout (an in-place result)."""
    return (a.__array_interface__["data"][0] == b.__array_interface__["data"][0]
            and a.shape == b.shape and a.strides == b.strides)


def pair_add(x, out):
    """``out = x[..., 0::2] + x[..., 1::2]``: the real part of a product formed on pairs."""
    return np.add(x[..., 0::2], x[..., 1::2], out=out)
