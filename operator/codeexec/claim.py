"""Hand each waiting execution its own warm pod, first come first served.

Waiters queue per pool in creation order. When a ready pod is in view, the head of the queue
gets it as a candidate and claims it with a patch conditioned on the pod's resourceVersion:
exactly one claimer can win a pod, whatever any cache said. A loser (409) or a vanished pod
puts the waiter back at the head of the queue.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from codeexec import clock, metrics, podspec
from codeexec.kube.client import PODS, ApiError, Kube
from codeexec.kube.lease import Fence, unfenced
from codeexec.podcache import PodCache, PodView, view
from codeexec.status import timestamp

log = logging.getLogger(__name__)


class NoPodInTime(Exception):
    """The provisioning deadline passed with no warm pod for this execution."""


@dataclass(order=True)
class _Waiter:
    created: float
    seq: int
    uid: str = field(compare=False)
    future: asyncio.Future[PodView] = field(compare=False)


@dataclass(frozen=True)
class Claimed:
    pod: PodView
    claimed_at: datetime


@dataclass
class _PoolQueue:
    heap: list[_Waiter] = field(default_factory=list)
    reserved: set[str] = field(default_factory=set)


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

    def waiting(self, pool: str) -> int:
        q = self._queues.get(pool)
        return sum(1 for w in q.heap if not w.future.done()) if q else 0

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
        while q.heap and free:
            waiter = heapq.heappop(q.heap)
            if waiter.future.done():
                continue
            pod = free.pop(0)
            q.reserved.add(pod.name)
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
    ) -> Claimed:
        """Wait in line for a pod of `pool` and claim it, or raise NoPodInTime at `deadline`."""
        q = self._queues.setdefault(pool, _PoolQueue())
        seq = next(self._seq)
        while True:
            loop = asyncio.get_running_loop()
            waiter = _Waiter(created, seq, execution_uid, loop.create_future())
            heapq.heappush(q.heap, waiter)
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
                q.reserved.discard(pod.name)
            if claimed is not None:
                # Let the next waiter look at the rest of the pods straight away.
                self._pump(pool, template)
                return claimed

    @staticmethod
    def _abandon(q: _PoolQueue, waiter: _Waiter) -> None:
        fut = waiter.future
        if not fut.done():
            fut.cancel()
        elif not fut.cancelled() and fut.exception() is None:
            q.reserved.discard(fut.result().name)

    async def _next_candidate(
        self, pool: str, template: str, waiter: _Waiter, deadline: float
    ) -> PodView:
        while not waiter.future.done():
            remaining = deadline - clock.time()
            if remaining <= 0:
                raise NoPodInTime()
            changed: asyncio.Future[Any] = asyncio.ensure_future(
                self.cache.wait_changed(min(remaining, 5.0))
            )
            assigned: asyncio.Future[Any] = waiter.future
            try:
                await asyncio.wait([changed, assigned], return_when=asyncio.FIRST_COMPLETED)
            finally:
                changed.cancel()
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
        try:
            body = await self.kube.patch(PODS, pod.name, patch, self.namespace)
        except ApiError as err:
            if err.conflict or err.not_found or err.status == 422:
                metrics.CLAIM_CONFLICTS.inc()
                log.debug("claim of %s lost (%s); trying another pod", pod.name, err.status)
                await self._refresh(pod.name)
                return None
            raise
        self.cache.apply("MODIFIED", body)
        return Claimed(pod=view(body), claimed_at=now)

    async def _refresh(self, name: str) -> None:
        """After a lost claim, look at the pod as the API server has it now."""
        try:
            body = await self.kube.get(PODS, name, self.namespace)
        except ApiError as err:
            if err.not_found:
                self.cache.pods.pop(name, None)
                return
            raise
        self.cache.apply("MODIFIED", body)
