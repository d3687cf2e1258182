"""An in-memory view of the sandbox namespace's pods, kept by one list+watch.

It tells the pool keepers what exists and wakes the claimers when a pod turns ready. It is a
hint, never an authority: claims are decided by a resourceVersion-conditioned patch against the
API server, so a stale entry can cost a retry but never a double claim.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from codeexec import informer, podspec
from codeexec.kube.client import PODS, Kube, older
from codeexec.listeners import Listeners, Pulse
from codeexec.outcomes import Terminated

log = logging.getLogger(__name__)

# The pools whose pods a change touched; None for all of them (a new list).
Touched = frozenset[str] | None


@dataclass(frozen=True)
class PodView:
    name: str
    uid: str
    resource_version: str
    pool: str
    template: str
    state: str
    claimed_by: str | None
    phase: str
    ready: bool
    running: bool
    deleting: bool
    created: datetime | None
    start_time: str | None
    node: str | None
    reason: str | None
    message: str | None
    terminated: Terminated | None
    waiting_reason: str | None
    request_id: str | None = None
    execution: str | None = None
    claimed_at: datetime | None = None
    attempt: int = 1
    held: bool = False  # carries the claim finalizer: it stays until the operator lets go
    # The scheduler's message while it cannot place the pod (PodScheduled False, Unschedulable).
    unschedulable: str | None = None

    @property
    def finished(self) -> bool:
        return self.phase in ("Succeeded", "Failed") or self.terminated is not None

    @property
    def live(self) -> bool:
        return not self.deleting and not self.finished

    @property
    def warm_ready(self) -> bool:
        return self.state == podspec.WARM and self.ready and not self.deleting and not self.finished


def _ts(value: str | None) -> datetime | None:
    from codeexec.status import parse_timestamp

    return parse_timestamp(value)


def terminated_state(pod: dict[str, Any]) -> Terminated | None:
    for cs in pod.get("status", {}).get("containerStatuses") or []:
        if cs.get("name") != podspec.CONTAINER:
            continue
        t = (cs.get("state") or {}).get("terminated")
        if t:
            return Terminated(
                exit_code=t.get("exitCode"),
                signal=t.get("signal"),
                reason=t.get("reason"),
                message=t.get("message"),
            )
    return None


def view(pod: dict[str, Any]) -> PodView:
    meta, status = pod["metadata"], pod.get("status", {})
    labels = meta.get("labels") or {}
    notes = meta.get("annotations") or {}
    conditions = {c["type"]: c["status"] for c in status.get("conditions") or []}
    unschedulable = next(
        (
            str(c.get("message") or "unschedulable")
            for c in status.get("conditions") or []
            if c.get("type") == "PodScheduled"
            and c.get("status") == "False"
            and c.get("reason") == "Unschedulable"
        ),
        None,
    )
    waiting = None
    running = False
    for cs in status.get("containerStatuses") or []:
        state = cs.get("state") or {}
        running = running or "running" in state
        if "waiting" in state:
            waiting = state["waiting"].get("reason")
    return PodView(
        name=meta["name"],
        uid=meta.get("uid", ""),
        resource_version=meta.get("resourceVersion", ""),
        pool=labels.get(podspec.POOL_LABEL, ""),
        template=labels.get(podspec.TEMPLATE_LABEL, ""),
        state=labels.get(podspec.STATE_LABEL, ""),
        claimed_by=labels.get(podspec.CLAIMED_BY_LABEL),
        phase=status.get("phase", "Pending"),
        ready=conditions.get("Ready") == "True" and running,
        running=running,
        deleting=bool(meta.get("deletionTimestamp")),
        held=podspec.CLAIM_FINALIZER in (meta.get("finalizers") or []),
        created=_ts(meta.get("creationTimestamp")),
        start_time=status.get("startTime"),
        node=pod.get("spec", {}).get("nodeName"),
        reason=status.get("reason"),
        message=status.get("message"),
        terminated=terminated_state(pod),
        waiting_reason=waiting,
        request_id=notes.get(podspec.REQUEST_ANNOTATION),
        execution=notes.get(podspec.EXECUTION_ANNOTATION),
        claimed_at=_ts(notes.get(podspec.CLAIMED_AT_ANNOTATION)),
        attempt=_attempt(notes.get(podspec.ATTEMPT_ANNOTATION)),
        unschedulable=unschedulable,
    )


def _attempt(value: str | None) -> int:
    return int(value) if value and value.isdigit() else 1


class PodCache:
    def __init__(self, kube: Kube, namespace: str) -> None:
        self.kube = kube
        self.namespace = namespace
        self.pods: dict[str, PodView] = {}
        self.synced = asyncio.Event()
        self._changed = Pulse()
        self._listeners: Listeners[Touched] = Listeners("pod cache")

    def listen(self, listener: Callable[[Touched], None]) -> None:
        """`listener` is called at each change with the pools whose pods it touched, once however
        many tasks wait for one (the claim broker hands out pods there, not in each waiting
        execution)."""
        self._listeners.add(listener)

    def notify(self, touched: Touched = None) -> None:
        self._changed.fire()
        self._listeners(touched)

    async def wait_changed(self, timeout: float) -> None:
        await self._changed.wait(timeout)

    def of_pool(self, pool: str) -> Iterable[PodView]:
        return (p for p in self.pods.values() if p.pool == pool)

    def claimed_for(self, execution_uid: str) -> list[PodView]:
        """Pods claimed for one execution, latest attempt first."""
        pods = [p for p in self.pods.values() if p.claimed_by == execution_uid]
        return sorted(
            pods,
            key=lambda p: (p.attempt, p.claimed_at is not None, p.claimed_at),
            reverse=True,
        )

    def apply(self, event_type: str, pod: dict[str, Any]) -> None:
        name = pod["metadata"]["name"]
        labels = pod["metadata"].get("labels") or {}
        old = self.pods.get(name)
        touched = frozenset({labels.get(podspec.POOL_LABEL, ""), old.pool if old else ""})
        if event_type == "DELETED":
            self.pods.pop(name, None)
        else:
            new = view(pod)
            # Our own writes land here before the watch echoes them: never let a late event
            # roll a pod back to an older version (a claimed pod would look warm again).
            if (
                old is not None
                and old.uid == new.uid
                and older(new.resource_version, old.resource_version)
            ):
                return
            self.pods[name] = new
        self.notify(touched)

    async def run(self) -> None:
        """Follows the operator's sandbox pods (informer.follow): each list replaces the cache."""
        selector = f"{podspec.MANAGED_BY}={podspec.OPERATOR}"
        fresh: dict[str, PodView] = {}
        async for kind, obj in informer.follow(
            self.kube,
            PODS,
            self.namespace,
            what="sandbox pods",
            label_selector=selector,
            base=0.2,
            cap=5.0,
        ):
            if kind == informer.LISTING:
                fresh = {}
            elif kind == informer.ITEM:
                pod = view(obj)
                fresh[pod.name] = pod
            elif kind == informer.LISTED:
                self.pods = fresh
                self.synced.set()
                self.notify()
            else:
                self.apply(kind, obj)
