"""A delivered run's time split by where it went (protocol.road_parts)."""

from __future__ import annotations

import pytest

from codeexec.protocol import road_parts

MARKS = {
    "receivedAt": 100.002,
    "startedAt": 100.003,
    "resultAt": 100.013,
    "exitedAt": 100.018,
    "reportAt": 100.019,
}


def test_every_part_of_the_road_is_named_and_they_add_up():
    parts = road_parts(100.0, 100.021, MARKS)
    assert parts == pytest.approx(
        {
            "frame_out": 0.002,
            "start": 0.001,
            "run": 0.010,
            "exit": 0.005,
            "wrap_up": 0.001,
            "report_back": 0.002,
        }
    )
    assert sum(parts.values()) == pytest.approx(0.021)


def test_a_pod_clock_that_disagrees_with_ours_yields_no_parts():
    # A pod on a node whose clock is 1 s ahead: its marks are not a measurement of the road.
    assert road_parts(99.0 + 1.1, 100.021, MARKS) == {}


def test_a_worker_that_died_without_a_result_puts_its_time_in_no_run_part():
    marks = {k: v for k, v in MARKS.items() if k != "resultAt"}
    parts = road_parts(100.0, 100.021, marks)
    assert "run" not in parts and "exit" not in parts
    assert parts["frame_out"] == pytest.approx(0.002)
