"""Hand each waiting execution its own warm pod, fairly between namespaces.

Waiters queue per pool, in creation order within their namespace; the namespaces take turns
(fairness.py), and a pool's per-namespace cap holds back a namespace that runs its fill. When a
ready pod is in view, the next waiter gets it as a candidate and claims it with a patch
conditioned on the pod's resourceVersion: exactly one claimer can win a pod, whatever any cache
said. A loser (409) or a vanished pod puts the waiter back at the head of its line.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from codeexec import clock, fairness, metrics, podspec
from codeexec.kube.client import PODS, ApiError, Kube
from codeexec.kube.lease import Fence, unfenced
from codeexec.podcache import PodCache, PodView, Touched, view
from codeexec.status import timestamp

log = logging.getLogger(__name__)


class NoPodInTime(Exception):
    """The provisioning deadline passed with no warm pod for this execution."""

    def __init__(self, held: fairness.Hold | None = None) -> None:
        super().__init__(held.message if held else "no warm pod in time")
        # Set when the namespace's cap, not a lack of pods, kept it waiting at the end.
        self.held = held if held is not None and held.reason == fairness.QUOTA_REASON else None


@dataclass(eq=False)
class _Waiter:
    namespace: str
    uid: str
    future: asyncio.Future[PodView]

    def live(self) -> bool:
        return not self.future.done()


@dataclass(frozen=True)
class Claimed:
    pod: PodView
    claimed_at: datetime


@dataclass
class _PoolQueue:
    line: fairness.FairQueue[_Waiter] = field(
        default_factory=lambda: fairness.FairQueue(_Waiter.live)
    )
    # Pods handed to a waiter whose claim is not yet written, and the waiter's namespace.
    reserved: dict[str, str] = field(default_factory=dict)
    waiters: dict[str, _Waiter] = field(default_factory=dict)  # by execution uid
    cap: int | None = None  # the pool's maxRunningPerNamespace, as the last claimer saw it

    def cap_of(self, holders: dict[str, set[str]], namespace: str) -> fairness.Cap:
        reserved = sum(1 for ns in self.reserved.values() if ns == namespace)
        return fairness.Cap(self.cap, frozenset(holders.get(namespace, ())), reserved)


class Broker:
    def __init__(
        self, kube: Kube, cache: PodCache, namespace: str, fence: Fence = unfenced
    ) -> None:
        self.kube = kube
        self.fence = fence
        self.cache = cache
        self.namespace = namespace
        self._queues: dict[str, _PoolQueue] = {}
        self._seq = itertools.count()
        # Executions waiting, by (pool, template): each pod change runs one hand-out for each
        # pair (the waiters do not record their template, so it is counted here). With each
        # waiter looking for itself, 1,000 waiting meant 1,000 wake-ups per pod change: 22 % of
        # a CPU at ~500 waiting (make scale --large, docs/benchmarks.md).
        self._wanted: dict[tuple[str, str], int] = {}
        self._writing: dict[str, set[asyncio.Future[dict[str, Any]]]] = {}  # claims on their way
        cache.listen(self._pump_wanted)

    def waiting(self, pool: str) -> int:
        q = self._queues.get(pool)
        return q.line.waiting() if q else 0

    def demand(self, pool: str) -> int:
        """Waiters of `pool` that more warm pods would serve now (fairness.servable)."""
        q = self._queues.get(pool)
        if q is None:
            return 0
        if q.cap is None:
            return q.line.waiting()
        holders = fairness.holding(self.cache.of_pool(pool))
        return fairness.servable(q.line.waiting_by_namespace(), lambda ns: q.cap_of(holders, ns))

    def hold(self, pool: str, execution_uid: str) -> fairness.Hold | None:
        """Why this execution still waits (a pod, or its namespace's cap); None once it has a
        pod or is not waiting here."""
        q = self._queues.get(pool)
        waiter = q.waiters.get(execution_uid) if q else None
        if q is None or waiter is None or not waiter.live():
            return None
        ahead = q.line.ahead(waiter.namespace, waiter) or 0
        cap = q.cap_of(fairness.holding(self.cache.of_pool(pool)), waiter.namespace)
        return fairness.hold(pool, cap, execution_uid, ahead, q.line.waiting())

    def _pump_wanted(self, _touched: Touched) -> None:
        # Every pool waited for, whatever the change touched: a pod of another pool going
        # away may free a tenant's quota (fairness.hold) for a waiter here.
        for pool, template in list(self._wanted):
            self._pump(pool, template)

    def _pump(self, pool: str, template: str) -> None:
        q = self._queues.setdefault(pool, _PoolQueue())
        free = sorted(
            (
                p
                for p in self.cache.of_pool(pool)
                if p.warm_ready and p.template == template and p.name not in q.reserved
            ),
            key=lambda p: p.created.timestamp() if p.created else 0.0,
        )
        if not free:
            return
        holders = fairness.holding(self.cache.of_pool(pool))
        while free:
            waiter = q.line.pop(lambda ns, w: q.cap_of(holders, ns).admits(w.uid))
            if waiter is None:
                return
            pod = free.pop(0)
            q.reserved[pod.name] = waiter.namespace
            waiter.future.set_result(pod)

    async def claim(
        self,
        pool: str,
        template: str,
        *,
        execution_uid: str,
        execution_ref: str,
        created: float,
        deadline: float,
        timeout_seconds: int,
        request_id: str,
        attempt: int,
        on_wait: asyncio.Event | None = None,
        namespace_cap: int | None = None,
    ) -> Claimed:
        """Wait in line for a pod of `pool` and claim it, or raise NoPodInTime at `deadline`.

        `namespace_cap`: at most this many of the pool's pods claimed for executions of one
        namespace (the execution's, from `execution_ref`) at a time; None, no cap.
        """
        q = self._queues.setdefault(pool, _PoolQueue())
        q.cap = namespace_cap
        namespace = fairness.namespace_of(execution_ref) or ""
        seq = next(self._seq)
        enqueue = q.line.push
        wanted = (pool, template)
        self._wanted[wanted] = self._wanted.get(wanted, 0) + 1
        try:
            while True:
                loop = asyncio.get_running_loop()
                waiter = _Waiter(namespace, execution_uid, loop.create_future())
                enqueue(namespace, created, seq, waiter)
                q.waiters[execution_uid] = waiter
                self._pump(pool, template)
                if not waiter.future.done() and on_wait is not None:
                    on_wait.set()
                try:
                    pod = await self._next_candidate(pool, template, waiter, deadline)
                except BaseException:
                    # Cancelled (the execution was deleted) or out of time, possibly just after
                    # another claimer's pump handed this waiter a pod: give the pod back.
                    self._abandon(q, waiter)
                    self._pump(pool, template)
                    raise
                try:
                    claimed = await self._try_claim(
                        pod, execution_uid, execution_ref, timeout_seconds, request_id, attempt
                    )
                finally:
                    q.reserved.pop(pod.name, None)
                if claimed is not None:
                    # Let the next waiter look at the rest of the pods straight away.
                    self._pump(pool, template)
                    return claimed
                enqueue = q.line.give_back  # the lost pod did not use up this namespace's turn
        finally:
            q.waiters.pop(execution_uid, None)
            self._wanted[wanted] -= 1
            if not self._wanted[wanted]:
                del self._wanted[wanted]

    @staticmethod
    def _abandon(q: _PoolQueue, waiter: _Waiter) -> None:
        fut = waiter.future
        if not fut.done():
            fut.cancel()
            q.line.changed()  # it is no longer counted in line
        elif not fut.cancelled() and fut.exception() is None:
            q.reserved.pop(fut.result().name, None)

    async def _next_candidate(
        self, pool: str, template: str, waiter: _Waiter, deadline: float
    ) -> PodView:
        while not waiter.future.done():
            remaining = deadline - clock.time()
            if remaining <= 0:
                raise NoPodInTime(self.hold(pool, waiter.uid))
            # Woken by its own pod (handed out by `_pump_wanted` at each pod change), by its
            # deadline, or every 5 s for a look of its own.
            await asyncio.wait({waiter.future}, timeout=min(remaining, 5.0))
            if not waiter.future.done():
                self._pump(pool, template)
        return waiter.future.result()

    async def _try_claim(
        self,
        pod: PodView,
        execution_uid: str,
        execution_ref: str,
        timeout_seconds: int,
        request_id: str,
        attempt: int,
    ) -> Claimed | None:
        now = clock.now()
        # The kubelet counts activeDeadlineSeconds from the pod's start and it may only be
        # lowered. Too low kills the code early; too high only delays the kubelet's backstop
        # (the runner enforces the timeout itself). So round up, and never guess the start.
        deadline = podspec.WARM_DEADLINE_SECONDS
        if pod.start_time:
            started = datetime.fromisoformat(pod.start_time.replace("Z", "+00:00"))
            age = max(0, int((now - started).total_seconds()) + 1)
            deadline = min(deadline, age + timeout_seconds + podspec.DEADLINE_SLACK_SECONDS)
        term = self.fence()  # a deposed leader claims nothing
        patch = podspec.claim_patch(
            execution_uid,
            execution_ref,
            pod.resource_version,
            deadline,
            request_id=request_id,
            claimed_at=timestamp(now),
            attempt=attempt,
            term=term,
        )
        # Shielded: the execution's deletion cancels its road, maybe with this write on its way;
        # the claim may land all the same, and its answer must still reach the cache, where
        # the deletion's release (settled) finds the pod (else it waited for the sweep, ~60 s).
        write = asyncio.ensure_future(self._write_claim(pod.name, patch))
        writes = self._writing.setdefault(execution_uid, set())
        writes.add(write)
        write.add_done_callback(lambda done: _forget_write(self._writing, execution_uid, done))
        try:
            body = await asyncio.shield(write)
        except ApiError as err:
            if err.conflict or err.not_found or err.status == 422:
                metrics.CLAIM_CONFLICTS.inc()
                log.debug("claim of %s lost (%s); trying another pod", pod.name, err.status)
                await self._refresh(pod.name)
                return None
            raise
        return Claimed(pod=view(body), claimed_at=now)

    async def _write_claim(self, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        body = await self.kube.patch(PODS, name, patch, self.namespace)
        self.cache.apply("MODIFIED", body)
        return body

    async def settled(self, execution_uid: str) -> None:
        """Once every claim write for this execution has been answered (and what it claimed
        is in the cache), whatever became of the road that sent it."""
        writes = self._writing.get(execution_uid)
        if writes:
            await asyncio.wait(set(writes))

    async def _refresh(self, name: str) -> None:
        """After a lost claim, look at the pod as the API server has it now."""
        try:
            body = await self.kube.get(PODS, name, self.namespace)
        except ApiError as err:
            if err.not_found:
                self.cache.pods.pop(name, None)
                return
            raise
        if name in self.cache.pods:  # else its deletion came through the watch meanwhile
            self.cache.apply("MODIFIED", body)


def _forget_write(
    writing: dict[str, set[asyncio.Future[dict[str, Any]]]],
    uid: str,
    done: asyncio.Future[dict[str, Any]],
) -> None:
    writes = writing.get(uid, set())
    writes.discard(done)
    if not writes:
        writing.pop(uid, None)
    if not done.cancelled():
        done.exception()  # retrieved: a failed write nobody awaited any more is not an error
