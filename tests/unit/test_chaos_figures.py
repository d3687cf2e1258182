"""The chaos run's figures for a cluster fault (bench/scenario.py) say what they claim.

Cluster-free: a scenario's tracks and the fault's window are made up; `recovery()` and
`analyse()` only read them.
"""

from __future__ import annotations

import argparse
import random
from typing import Any, cast

import pytest
from bench.chaos import GROUPS, selected
from bench.evidence import PROGRAMS, ExecutionTrack, ExecutionTracker, PodRecorder
from bench.operator import Operator
from bench.scenario import STUCK_AFTER_S, Scenario, Window

from codeexec.kube.client import Kube

FAULT_START, FAULT_END = 1000.0, 1060.0


def scenario(*tracks: ExecutionTrack) -> Scenario:
    s = Scenario(
        "apiserver-stop",
        cast(Kube, object()),
        cast(Operator, object()),
        PodRecorder(),
        ExecutionTracker(),
        argparse.Namespace(inflight=8, wait_timeout=300),
        random.Random(1),
        len(tracks),
    )
    s.tracks = list(tracks)
    s.window = Window(FAULT_START, FAULT_END)
    return s


def track(i: int, submitted: float, terminal_at: float | None) -> ExecutionTrack:
    t = ExecutionTrack(f"e{i}", PROGRAMS[0], i, uid=f"uid-{i}", submitted=submitted)
    t.terminal_at = terminal_at
    if terminal_at is not None:
        status: dict[str, Any] = {"phase": "Succeeded", "reason": "Succeeded"}
        status["result"] = {"returnValue": i}
        t.terminal = {"status": status}
    return t


def test_an_execution_finished_later_than_two_minutes_after_recovery_is_stuck() -> None:
    """caught: comparing terminal_at with the fault's end alone (no STUCK_AFTER_S) made this
    fail (the execution that finished 30 s after recovery was counted stuck)."""
    s = scenario(
        track(0, 990.0, 1090.0),  # caught by the fault, finished 30 s after recovery
        track(1, 995.0, FAULT_END + STUCK_AFTER_S + 1),  # finished, but too late
        track(2, 1100.0, 1101.0),  # submitted after recovery, quick
    )
    r = s.recovery()
    assert r["stuck"] == 1
    assert r["stuck_names"] == ["e1"]
    assert r["caught_by_fault"] == 2
    assert r["recovery_seconds"] == STUCK_AFTER_S + 1


def test_an_execution_never_terminal_is_stuck_and_lost() -> None:
    """caught: dropping `t.terminal_at is None` from the stuck test made this fail."""
    s = scenario(track(0, 990.0, None), track(1, 1100.0, 1101.0))
    assert s.recovery()["stuck"] == 1
    assert s.recovery()["recovery_seconds"] is None  # never recovered
    figures = s.analyse(1.0, [], 0)
    assert figures["lost_results"] == 1
    assert figures["terminal"] == 1


def test_an_execution_finished_before_the_fault_was_not_caught_by_it() -> None:
    s = scenario(track(0, 900.0, 950.0), track(1, 1100.0, 1103.0))
    r = s.recovery()
    assert (r["caught_by_fault"], r["stuck"]) == (0, 0)
    assert r["recovery_seconds"] == 43.0  # the first execution finished after the fault


def test_scenario_groups_expand_and_unknown_names_are_refused() -> None:
    assert selected("all") == list(GROUPS["all"])
    assert selected("classic,etcd-restart,operator-kill") == [
        "operator-kill",
        "pod-delete",
        "etcd-restart",
    ]
    assert len(GROUPS["cluster"]) == 7
    with pytest.raises(SystemExit, match="unknown scenario"):
        selected("etcd-restart,nope")
