"""The classic import path of :class:`~ptycli.utils.param_tree.Param` (``ptycli.utils.parameters.Param``).

The tree type lives in :mod:`ptycli.utils.param_tree`; the parameter
declarations in :mod:`ptycli.params`. This module only keeps the import path of
the seed tutorials and of scripts written against the classic data model.
"""
from .param_tree import Param, _id_token  # noqa: F401

__all__ = ["Param"]
