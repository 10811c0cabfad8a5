"""The data model: containers, storages, views, pods, geometry, scan patterns."""
from .base import Base  # noqa: F401
