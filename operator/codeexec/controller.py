"""Which executions are in flight in this process, and when finished ones expire.

Fed by the watch of `CodeExecution`s: a non-terminal resource gets one task running its road
(never two), a deleted one has its task cancelled and its pod released, a finished one with
`ttlSecondsAfterFinished` is deleted when its time comes.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import time
from typing import Any

from codeexec import metrics
from codeexec import status as st
from codeexec.kube.client import CODE_EXECUTIONS, PODS, ApiError
from codeexec.lifecycle import Road, Runtime, is_terminal

log = logging.getLogger(__name__)

# Transient failures (API server restarts, network blips) retry the road from the top.
RETRY_DELAYS = (0.5, 1, 2, 5, 10, 30)


class Executions:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.road = Road(rt)
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.janitor = Janitor(rt)
        # Uids this process finished: a late watch event still showing them Running must not
        # start their road again. Bounded; a restart re-lists and sees the terminal status.
        self._finished: dict[str, None] = {}

    def observe(self, event_type: str | None, body: dict[str, Any]) -> None:
        uid = body["metadata"]["uid"]
        if event_type == "DELETED":
            task = self.tasks.pop(uid, None)
            if task is not None and not task.done():
                task.cancel()
            self.janitor.forget(uid)
            return
        if body["metadata"].get("deletionTimestamp"):
            return
        if is_terminal(body):
            self.janitor.track(body)
            return
        if uid in self._finished:
            return
        task = self.tasks.get(uid)
        if task is None or task.done():
            self.tasks[uid] = asyncio.create_task(self._drive(body), name=f"execution/{uid}")

    async def _drive(self, body: dict[str, Any]) -> None:
        uid = body["metadata"]["uid"]
        metrics.IN_FLIGHT.inc()
        try:
            for attempt, delay in enumerate((*RETRY_DELAYS, None)):
                try:
                    await self.road.run(body)
                    self._remember(uid)
                    return
                except asyncio.CancelledError:
                    await self._release(body)
                    raise
                except Exception as err:
                    if delay is None:
                        log.exception("giving up on %s", uid)
                        return
                    log.warning("execution %s: attempt %d failed: %r", uid, attempt + 1, err)
                    await asyncio.sleep(delay)
                    body = await self._reload(body) or body
                    if is_terminal(body):
                        return
        finally:
            metrics.IN_FLIGHT.dec()
            self.tasks.pop(uid, None)

    def _remember(self, uid: str) -> None:
        self._finished[uid] = None
        while len(self._finished) > 10_000:
            self._finished.pop(next(iter(self._finished)))

    async def _reload(self, body: dict[str, Any]) -> dict[str, Any] | None:
        meta = body["metadata"]
        try:
            return await self.rt.kube.get(CODE_EXECUTIONS, meta["name"], meta["namespace"])
        except ApiError as err:
            if err.not_found:
                raise asyncio.CancelledError() from err
            return None

    async def _release(self, body: dict[str, Any]) -> None:
        """The resource is gone: nobody will read a result; free the pod it may hold."""
        ns = self.rt.settings.sandbox_namespace
        selector = f"codeexec.io/claimed-by={body['metadata']['uid']}"
        try:
            pods = await self.rt.kube.list(PODS, ns, label_selector=selector)
            for pod in pods.get("items", []):
                await self.rt.kube.delete(PODS, pod["metadata"]["name"], ns, grace_period=0)
        except Exception as err:  # best effort; the pod's deadline reaps it anyway
            log.warning("could not release the pod of a deleted execution: %r", err)

    async def stop(self) -> None:
        for task in self.tasks.values():
            task.cancel()


class Janitor:
    """Deletes finished executions after their TTL; one timer heap for all of them."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self._heap: list[tuple[float, str, str, str]] = []
        self._known: set[str] = set()
        self._wake = asyncio.Event()

    def track(self, body: dict[str, Any]) -> None:
        meta, spec = body["metadata"], body.get("spec") or {}
        ttl = spec.get("ttlSecondsAfterFinished")
        if ttl is None or meta["uid"] in self._known:
            return
        done = st.parse_timestamp((body.get("status") or {}).get("completionTime"))
        due = (done.timestamp() if done else time.time()) + int(ttl)
        self._known.add(meta["uid"])
        heapq.heappush(self._heap, (due, meta["namespace"], meta["name"], meta["uid"]))
        self._wake.set()

    def forget(self, uid: str) -> None:
        self._known.discard(uid)

    async def run(self) -> None:
        while True:
            self._wake.clear()
            now = time.time()
            while self._heap and self._heap[0][0] <= now:
                _, ns, name, uid = heapq.heappop(self._heap)
                if uid not in self._known:
                    continue
                try:
                    await self.rt.kube.request(
                        "DELETE",
                        CODE_EXECUTIONS.path(ns, name),
                        body={"preconditions": {"uid": uid}},
                    )
                except ApiError as err:
                    if not (err.not_found or err.conflict):
                        log.warning("TTL delete of %s/%s failed: %s", ns, name, err)
                self._known.discard(uid)
            delay = (self._heap[0][0] - time.time()) if self._heap else 60.0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=max(0.05, min(delay, 60.0)))
