"""Conditions as the Kubernetes API conventions describe them: the transition time moves only
when the status flips, each condition names the generation it was set for, and a pool that
serves is Ready while it refills."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from codeexec import status as st
from codeexec.api.models import SandboxPoolSpec
from codeexec.outcomes import Outcome, Reason
from codeexec.pool import Pool
from codeexec.poolstatus import Counts, ready_condition

CREATED = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def by_type(conditions: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in conditions}


def test_a_rewrite_without_a_flip_keeps_the_transition_time() -> None:
    """caught: merge_conditions copying the new lastTransitionTime made this fail."""
    first = [st.condition("Ready", True, "Full", since=CREATED)]
    later = st.condition("Ready", True, "Refilling", since=CREATED + timedelta(hours=1))
    merged = st.merge_conditions(first, [later])
    assert merged == [{**later, "lastTransitionTime": "2026-01-01T12:00:00Z"}]


def test_a_flip_moves_the_transition_time_and_other_conditions_stay() -> None:
    other = st.condition("Degraded", False, "AllGood", since=CREATED)
    first = [st.condition("Ready", False, "Warming", since=CREATED), other]
    flipped = st.condition("Ready", True, "Full", since=CREATED + timedelta(minutes=2))
    merged = by_type(st.merge_conditions(first, [flipped]))
    assert merged["Ready"]["lastTransitionTime"] == "2026-01-01T12:02:00Z"
    assert merged["Degraded"] == other


def test_the_claimed_condition_keeps_its_claim_time_through_running_and_the_end() -> None:
    """caught: running() stamping the Claimed condition with now() made this fail."""
    sandbox = st.Sandbox("python", "p-1", "uid", "node-1", "rid", CREATED + timedelta(seconds=3))
    running = st.running(sandbox, CREATED, generation=1)
    outcome = Outcome(Reason.SUCCEEDED, "")
    done = st.finished(
        outcome, st.result(outcome, None), created_at=CREATED, generation=1, sandbox=sandbox
    )
    claimed_then = by_type(running["conditions"])["Claimed"]
    claimed_at_end = by_type(done["conditions"])["Claimed"]
    assert claimed_then == claimed_at_end
    assert claimed_then["lastTransitionTime"] == "2026-01-01T12:00:03Z"
    assert by_type(done["conditions"])["Complete"]["status"] == "True"
    assert done["sandbox"]["node"] == "node-1"  # `kubectl get cx -o wide` shows it


def test_every_condition_names_the_generation_it_was_set_for() -> None:
    sandbox = st.Sandbox("python", "p-1", "uid", "node-1", "rid", CREATED)
    outcome = Outcome(Reason.SUCCEEDED, "")
    writes = [
        st.pending("WaitingForPod", "queued", 4),
        st.running(sandbox, CREATED, 4),
        st.finished(outcome, st.result(outcome, None), created_at=CREATED, generation=4),
        st.failed_before_start(Reason.INVALID_REQUEST, "bad", 4, CREATED),
    ]
    for write in writes:
        assert write["conditions"]
        assert all(c["observedGeneration"] == 4 for c in write["conditions"])


def pool(conditions: list[dict[str, Any]] | None = None, size: int = 3) -> Pool:
    spec = SandboxPoolSpec(language="python", image="img", size=size)
    return Pool(name="python", spec=spec, generation=2, conditions=conditions or [])


def test_a_serving_pool_is_ready_while_it_refills() -> None:
    """caught: Ready = (ready >= size), as before, made this fail."""
    cond = ready_condition(pool(), Counts(ready=1, warming=1, claimed=1))
    assert (cond["status"], cond["reason"], cond["observedGeneration"]) == ("True", "Refilling", 2)
    busy = ready_condition(pool(), Counts(ready=0, warming=0, claimed=3))
    assert busy["status"] == "True"


def test_a_pool_that_served_stays_ready_while_its_pods_warm_again() -> None:
    served = [st.condition("Ready", True, "Full", since=CREATED)]
    cond = ready_condition(pool(served), Counts(ready=0, warming=3, claimed=0))
    assert cond["status"] == "True"


def test_a_new_pool_is_not_ready_until_a_pod_is() -> None:
    cond = ready_condition(pool(), Counts(ready=0, warming=3, claimed=0))
    assert (cond["status"], cond["reason"]) == ("False", "Warming")
    full = ready_condition(pool(), Counts(ready=3, warming=0, claimed=0))
    assert (full["status"], full["reason"]) == ("True", "Full")
