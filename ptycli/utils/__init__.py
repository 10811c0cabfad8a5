"""Utilities: parameter trees, array helpers and (optional) plotting.

Importing this package never imports matplotlib; :func:`plot_storage`
imports it on first use.
"""
from .param_tree import Param
from . import array_utils
from .array_utils import *  # noqa: F401,F403 - the array helpers, listed in array_utils.__all__
from .plot_utils import plot_storage, complex2rgb

__all__ = ["Param"] + list(array_utils.__all__) + ["plot_storage", "complex2rgb"]
