"""What a pool's status says: counts, Ready and Schedulable, news or counts only, in-use ratio."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from codeexec.status import condition

if TYPE_CHECKING:
    from codeexec.pool import Pool

# Status fields whose change is news, not just a count moving.
_NEWS = (
    "desired",
    "unschedulable",
    "selector",
    "lastScaleReason",
    "lastScaleTime",
    "templateHash",
    "observedGeneration",
)


@dataclass(frozen=True)
class Counts:
    ready: int
    warming: int
    claimed: int
    unschedulable: int = 0
    queue: int = 0


def ready_condition(pool: Pool, counts: Counts) -> dict[str, Any]:
    """Ready means serving: a pool that hands out pods is Ready while it refills (health tools
    such as Argo CD and kstatus read Ready=False as unhealthy). False only until its first pod
    is ready, or while it has neither a ready nor a claimed pod and never served."""
    size = pool.target()
    message = f"{counts.ready}/{size} warm pods ready, {counts.warming} warming"
    message += f", {counts.claimed} running" if counts.claimed else ""
    served = any(c.get("type") == "Ready" and c.get("status") == "True" for c in pool.conditions)
    if counts.ready >= size:
        return condition("Ready", True, "Full", message, generation=pool.generation)
    if counts.ready or counts.claimed or served:
        return condition("Ready", True, "Refilling", message, generation=pool.generation)
    return condition("Ready", False, "Warming", message, generation=pool.generation)


def schedulable_condition(pool: Pool, counts: Counts, message: str | None) -> dict[str, Any]:
    """False while any pod of the pool waits for room on a node."""
    if counts.unschedulable:
        text = f"{counts.unschedulable} pod(s) cannot be scheduled: {message or 'no room'}"
        return condition("Schedulable", False, "Unschedulable", text, generation=pool.generation)
    return condition(
        "Schedulable", True, "Scheduled", "every pod found a node", generation=pool.generation
    )


def news(
    before: dict[str, Any],
    after: dict[str, Any],
    conditions_before: list[dict[str, Any]],
    conditions_after: list[dict[str, Any]],
) -> bool:
    """Whether a pool's new status says more than that its counts moved."""
    if any(before.get(k) != after.get(k) for k in _NEWS):
        return True
    flips = {c.get("type"): c.get("status") for c in conditions_before}
    return any(flips.get(c.get("type")) != c.get("status") for c in conditions_after)


def in_use_ratio(counts: Counts) -> float:
    """Running pods over running and ready ones, 1.0 when executions wait: the share of warm
    capacity in use, the signal an HPA or KEDA scales on (docs/capacity.md)."""
    if counts.queue:
        return 1.0
    busy = counts.claimed + counts.ready
    return counts.claimed / busy if busy else 0.0
