"""Utilities: parameter trees, array helpers and (optional) plotting.

Importing this package never imports matplotlib; :func:`plot_storage`
imports it on first use.
"""
from .parameters import Param
from .array_utils import (
    expect2,
    grids,
    abs2,
    norm2,
    norm,
    smooth_step,
    crop_pad,
    crop_pad_symmetric_2d,
    zoom,
    rebin,
    mass_center,
    keV2m,
    m2keV,
    clean_path,
)
from .plot_utils import plot_storage, complex2rgb

__all__ = [
    "Param",
    "expect2",
    "grids",
    "abs2",
    "norm2",
    "norm",
    "smooth_step",
    "crop_pad",
    "crop_pad_symmetric_2d",
    "zoom",
    "rebin",
    "mass_center",
    "keV2m",
    "m2keV",
    "clean_path",
    "plot_storage",
    "complex2rgb",
]
