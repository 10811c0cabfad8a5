"""Shared test setup: keep it light (no heavy imports here)."""

import os

# Plots render off-screen: no display on CI, no windows popping up locally.
os.environ["MPLBACKEND"] = "Agg"

# Under pytest-xdist (``-n auto``, pyproject.toml) every core runs its own worker: one thread
# each, instead of each worker's engines starting a thread per core on shared cores.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("PTYCLI_FFT_WORKERS", "1")


def pytest_collection_modifyitems(config, items):
    """Tests that start processes with ``mpirun`` (marker ``mpi``) are long ones too: mark them ``slow``.

    The quick selection (``-m "not slow"``) then stays under two minutes on 2 cores; CI runs all.
    """
    import pytest

    for item in items:
        if item.get_closest_marker("mpi") is not None and item.get_closest_marker("slow") is None:
            item.add_marker(pytest.mark.slow)


import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _position_check_only_where_tested(request):
    """Model builds in this process skip the position-convention check, except in its own tests.

    The check runs four short trial reconstructions per scan (ptycli/core/position_check.py): about
    20 s over the quick selection's hundreds of model builds. tests/test_position_check.py tests it;
    commands run as subprocesses (the CLI tests) still do it. (Patched by hand, not with the
    ``monkeypatch`` fixture, so that other fixtures' teardown order stays as it was.)
    """
    if request.module.__name__.rsplit(".", 1)[-1] == "test_position_check":
        yield
        return
    from ptycli.core.manager import ScanModel

    original = ScanModel.check_position_convention
    ScanModel.check_position_convention = lambda self, probe: None
    try:
        yield
    finally:
        ScanModel.check_position_convention = original
