"""Param: a dict tree with attribute access (minimal version, to be extended)."""

import copy as _copy

__all__ = ["Param"]


class Param(dict):
    """A dict whose keys are also attributes."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name, value):
        self[name] = value

    def __delattr__(self, name):
        try:
            del self[name]
        except KeyError:
            raise AttributeError(name) from None

    def copy(self, depth=-1):
        return _copy.deepcopy(self)
