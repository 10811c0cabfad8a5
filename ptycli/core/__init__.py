"""The data model: containers, storages, views, pods, geometry, scan patterns.

``Ptycho`` builds a whole model from a parameter tree; the other classes can
be used on their own, as the tutorials do.
"""
from .base import Base  # noqa: F401
from .classes import Container, Storage, View, POD, DEFAULT_ACCESSRULE  # noqa: F401
from . import geometry, xy  # noqa: F401
from .geometry import Geo  # noqa: F401
from .ptycho import Ptycho  # noqa: F401
