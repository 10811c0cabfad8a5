"""The data model: containers, storages, views, pods, geometry, scan patterns."""
from .base import Base  # noqa: F401
from .classes import Container, Storage, View, POD, DEFAULT_ACCESSRULE  # noqa: F401
