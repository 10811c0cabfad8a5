"""Installed versions of the libraries ptycli runs with (light: no numpy import).

Used by ``ptycli info`` (:func:`ptycli.cli.collect_info`) and by the
provenance recorded in every result (:func:`ptycli.runner.provenance`).
"""

from importlib import metadata

__all__ = ["dist_version"]


def dist_version(name):
    """Installed version of the distribution ``name``, or None when it is missing."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None
