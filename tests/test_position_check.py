"""The position-convention check: frames fitted with the positions flipped or swapped (core/position_check.py)."""

import logging
import os
import sys

import pytest

from ptycli.core.position_check import RATIO
from ptycli.core.ptycho import Ptycho

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
if BENCHMARKS not in sys.path:
    sys.path.insert(0, BENCHMARKS)

import validate_zoo  # noqa: E402
import zoo_sim  # noqa: E402

SPEC = zoo_sim.CaseSpec("check_focused", layout="ptyd", probe="focused", probe_size_px=2.5, frame_shape=(32, 32),
                        scan="raster", frames=64, photons=1e7, seed=101)


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    return zoo_sim.build_case(SPEC, str(tmp_path_factory.mktemp("check")))


def model(case, **data):
    section = dict(case["data_section"], **{k: v for k, v in data.items() if k != "position_check"})
    cfg = validate_zoo.natural_config(section, "farfield", dm_iterations=0, ml_iterations=0)
    cfg["verbose_level"] = "warning"
    if "position_check" in data:
        cfg["scans"]["zoo"]["position_check"] = data["position_check"]
    return list(Ptycho(cfg, level=2).scans.values())[0]


def warnings_of(caplog):
    return [r.getMessage() for r in caplog.records if "convention" in r.getMessage()]


def test_right_convention_fits_best_and_is_quiet(case, caplog):
    with caplog.at_level(logging.WARNING, logger="ptycli"):
        m = model(case)
    errors = m.position_check
    assert set(errors) == {"as given", "flipped", "swapped", "swapped and flipped"}
    assert min(v for k, v in errors.items() if k != "as given") > 2 * errors["as given"], errors
    assert warnings_of(caplog) == []


def test_flipped_positions_are_reported_not_changed(case, caplog):
    with caplog.at_level(logging.WARNING, logger="ptycli"):
        m = model(case, positions_flip=[False, True])
    errors = m.position_check
    assert errors["flipped"] < RATIO * errors["as given"], errors
    (message,) = warnings_of(caplog)
    assert message.startswith("scan zoo: the frames fit the positions flipped in x (or y) far better than as given")
    assert "data.positions_flip" in message


def test_the_check_can_be_switched_off(case, caplog):
    with caplog.at_level(logging.WARNING, logger="ptycli"):
        m = model(case, positions_flip=[False, True], position_check=False)
    assert m.position_check == {} and warnings_of(caplog) == []
