"""Shared test setup: keep it light (no heavy imports here)."""

import os

# Plots render off-screen: no display on CI, no windows popping up locally.
os.environ["MPLBACKEND"] = "Agg"


def pytest_collection_modifyitems(config, items):
    """Tests that start processes with ``mpirun`` (marker ``mpi``) are long ones too: mark them ``slow``.

    The quick selection (``-m "not slow"``) then stays under two minutes on 2 cores; CI runs all.
    """
    import pytest

    for item in items:
        if item.get_closest_marker("mpi") is not None and item.get_closest_marker("slow") is None:
            item.add_marker(pytest.mark.slow)
