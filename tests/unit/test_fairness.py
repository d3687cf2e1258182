"""The pure rules of fair sharing (fairness.py): turns across namespaces, FIFO within one, the
per-namespace cap and what a waiting execution is told."""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest

from codeexec import fairness
from codeexec.fairness import Cap, FairQueue
from codeexec.podcache import PodView


@dataclass(eq=False)
class W:
    name: str
    alive: bool = True


def _queue() -> FairQueue[W]:
    return FairQueue(lambda w: w.alive)


def _drain(q: FairQueue[W]) -> list[str]:
    out = []
    while (w := q.pop()) is not None:
        out.append(w.name)
    return out


def test_a_namespace_that_queued_first_does_not_starve_a_later_one() -> None:
    q = _queue()
    for i in range(100):
        q.push("a", 1.0 + i, i, W(f"a{i}"))
    for i in range(3):
        q.push("b", 500.0 + i, 100 + i, W(f"b{i}"))
    order = _drain(q)
    # Caught: serving the oldest waiter of the pool first put b0 at position 100.
    assert order[:6] == ["a0", "b0", "a1", "b1", "a2", "b2"]
    assert order[6:] == [f"a{i}" for i in range(3, 100)]


def test_within_a_namespace_the_oldest_goes_first_whatever_the_arrival_order() -> None:
    q = _queue()
    q.push("a", 5.0, 0, W("late"))
    q.push("a", 1.0, 1, W("early"))
    q.push("a", 1.0, 2, W("early-second"))
    assert _drain(q) == ["early", "early-second", "late"]


def test_three_namespaces_take_turns_and_an_emptied_one_leaves_the_rotation() -> None:
    q = _queue()
    for ns, n in (("a", 3), ("b", 1), ("c", 2)):
        for i in range(n):
            q.push(ns, float(i), i, W(f"{ns}{i}"))
    assert _drain(q) == ["a0", "b0", "c0", "a1", "c1", "a2"]
    assert q.namespaces() == []


def test_a_newcomer_joins_the_end_of_the_turn_order() -> None:
    q = _queue()
    q.push("a", 0.0, 0, W("a0"))
    q.push("a", 1.0, 1, W("a1"))
    q.push("b", 2.0, 2, W("b0"))
    assert q.pop() is not None  # a0: a goes to the end, behind b
    q.push("c", 3.0, 3, W("c0"))
    assert _drain(q) == ["b0", "a1", "c0"]


def test_cancelled_waiters_are_skipped_and_not_counted() -> None:
    q = _queue()
    gone = W("a0", alive=False)
    q.push("a", 0.0, 0, gone)
    q.push("a", 1.0, 1, W("a1"))
    q.push("b", 2.0, 2, W("b0", alive=False))
    assert q.waiting() == 1
    assert _drain(q) == ["a1"]
    assert q.namespaces() == []


def test_a_namespace_refused_by_admit_keeps_its_place_and_others_go_ahead() -> None:
    q = _queue()
    for i in range(3):
        q.push("a", float(i), i, W(f"a{i}"))
    q.push("b", 9.0, 9, W("b0"))
    assert getattr(q.pop(lambda ns, _w: ns != "a"), "name", None) == "b0"
    assert q.pop(lambda ns, _w: ns != "a") is None
    assert _drain(q) == ["a0", "a1", "a2"]


def test_a_waiter_given_back_after_a_lost_claim_goes_next() -> None:
    q = _queue()
    a0, b0 = W("a0"), W("b0")
    q.push("a", 0.0, 0, a0)
    q.push("a", 1.0, 1, W("a1"))
    q.push("b", 2.0, 2, b0)
    assert q.pop() is a0
    q.give_back("a", 0.0, 0, a0)  # its pod went to another replica's claimer (409)
    assert _drain(q) == ["a0", "b0", "a1"]


def test_ahead_counts_only_live_waiters_of_the_same_namespace() -> None:
    q = _queue()
    ws = [W(f"a{i}") for i in range(4)]
    for i, w in enumerate(ws):
        q.push("a", float(i), i, w)
    q.push("b", 0.5, 9, W("b0"))
    ws[1].alive = False
    assert [q.ahead("a", w) for w in ws] == [0, 1, 1, 2]  # a1 (cancelled) not counted for a2
    assert q.ahead("b", ws[0]) is None


def test_the_counts_follow_every_change_of_the_line() -> None:
    """The counts come from a census taken once per change: a push, a pop, a waiter given back,
    or `changed()` from whoever made a waiter give up.
    caught: with `changed()` not counting again, the gone waiter was still counted (3, not 2)."""
    q = _queue()
    ws = [W(f"a{i}") for i in range(3)]
    for i, w in enumerate(ws):
        q.push("a", float(i), i, w)
    assert (q.waiting(), q.ahead("a", ws[2])) == (3, 2)
    ws[1].alive = False
    q.changed()
    assert (q.waiting(), q.ahead("a", ws[2])) == (2, 1)
    assert q.pop() is ws[0]
    assert (q.waiting(), q.ahead("a", ws[2]), q.ahead("a", ws[0])) == (1, 0, None)
    q.give_back("a", 0.0, 0, ws[0])
    assert (q.waiting(), q.ahead("a", ws[2]), q.waiting_by_namespace()) == (2, 1, {"a": 2})
    q.push("b", 5.0, 5, W("b0"))
    assert q.waiting_by_namespace() == {"a": 2, "b": 1}


# --- counting what a namespace runs, from the claimed pods -----------------------------------

BASE = PodView(
    name="p",
    uid="u",
    resource_version="1",
    pool="python",
    template="t",
    state="claimed",
    claimed_by=None,
    phase="Running",
    ready=True,
    running=True,
    deleting=False,
    created=None,
    start_time=None,
    node=None,
    reason=None,
    message=None,
    terminated=None,
    waiting_reason=None,
    held=True,
)


def _pod(name: str, uid: str | None, ref: str | None, **kw: object) -> PodView:
    return replace(BASE, name=name, claimed_by=uid, execution=ref, **kw)  # type: ignore[arg-type]


def test_holding_counts_executions_not_pods_and_frees_a_slot_the_operator_let_go() -> None:
    pods = [
        _pod("p1", "x1", "a/one"),
        _pod("p2", "x1", "a/one"),  # a retry on a second pod: still one execution
        _pod("p3", "x2", "a/two", deleting=True, held=True),  # drained: its run is resumed
        _pod("p4", "x3", "a/three", deleting=True, held=False),  # released by the operator
        _pod("p5", "y1", "b/one"),
        _pod("p6", None, None, state="warm"),
    ]
    assert fairness.holding(pods) == {"a": {"x1", "x2"}, "b": {"y1"}}


@pytest.mark.parametrize(
    ("limit", "holders", "reserved", "uid", "admits"),
    [
        (None, {"x1", "x2", "x3"}, 5, "x9", True),
        (2, {"x1"}, 0, "x9", True),
        (2, {"x1"}, 1, "x9", False),  # a pod already handed to another waiter of the namespace
        (2, {"x1", "x2"}, 0, "x9", False),
        (2, {"x1", "x2"}, 0, "x2", True),  # its own slot: retrying after a pod that never started
    ],
)
def test_the_cap_admits_up_to_its_limit(
    limit: int | None, holders: set[str], reserved: int, uid: str, admits: bool
) -> None:
    assert Cap(limit, frozenset(holders), reserved).admits(uid) is admits


def test_a_waiter_behind_the_cap_is_told_the_quota_and_the_head_is_told_the_pod() -> None:
    cap = Cap(3, frozenset({"x1", "x2"}))
    head = fairness.hold("python", cap, "x9", ahead=0, in_line=7)
    behind = fairness.hold("python", cap, "x8", ahead=1, in_line=7)
    assert head.reason == "WaitingForPod"
    assert head.message == "waiting for a warm pod of pool python (7 in line)"
    assert behind.reason == "WaitingForQuota"
    assert behind.message.startswith("waiting: namespace quota, 2 running")
    uncapped = fairness.hold("python", Cap(None, frozenset({"x1"})), "x8", ahead=50, in_line=60)
    assert uncapped.reason == "WaitingForPod"


def test_namespace_of_reads_the_claim_record() -> None:
    assert fairness.namespace_of("team-a/run-1") == "team-a"
    assert fairness.namespace_of("") is None
    assert fairness.namespace_of(None) is None
    assert fairness.namespace_of("noslash") is None


def test_the_queue_depth_leaves_out_waiters_the_cap_holds_back() -> None:
    caps = {
        "a": Cap(2, frozenset({"x1", "x2"})),  # at its cap: none of its 30 would use a new pod
        "b": Cap(2, frozenset({"y1"})),  # one slot left
        "c": Cap(None),
    }
    assert fairness.servable({"a": 30, "b": 5, "c": 3}, caps.__getitem__) == 0 + 1 + 3
    q = _queue()
    for i in range(3):
        q.push("a", float(i), i, W(f"a{i}", alive=i != 1))
    q.push("b", 0.0, 9, W("b0"))
    assert q.waiting_by_namespace() == {"a": 2, "b": 1}
