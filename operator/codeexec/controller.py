"""Which executions are in flight in this process, and when finished ones expire.

Fed by Kopf's watch of `CodeExecution`s still to finish and by the watch of finished ones
(finished.py): a non-terminal resource gets one task running its road (never two), a deleted
one has its task cancelled and its pod released, a finished one with `ttlSecondsAfterFinished`
is deleted when its time comes. Claimed pods whose execution ended or vanished while no operator
was running are swept up.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
from typing import Any

from codeexec import backoff, clock, metrics
from codeexec import status as st
from codeexec.execution import is_terminal
from codeexec.kube.client import CODE_EXECUTIONS, ApiError
from codeexec.kube.lease import NotLeading
from codeexec.lifecycle import Road, Runtime
from codeexec.outcomes import Reason
from codeexec.poddelete import delete_pod

log = logging.getLogger(__name__)

# Failures retry the road from the top, for as long as it takes (an API server away for an
# hour is waited out): 0.5 s doubling to at most 30 s between attempts.
RETRY_BASE_SECONDS, RETRY_CAP_SECONDS = 0.5, 30.0
# The same refusal (400/413/422: the API server will never take the write) this many times in a
# row ends the execution with a terminal status that says so, instead of retrying forever.
REFUSALS_BEFORE_GIVING_UP = 3
# How often claimed pods are checked for an execution that no longer needs them.
SWEEP_SECONDS = 60.0
# An execution leaves Kopf's watch (a DELETED event, as for a deletion) once its terminal status
# lands; its road then has two or three short calls left (the pod's finalizer and delete, an
# Event: ~10-30 ms). Waited for this long before asking the API server whether it is gone.
LEAVING_SECONDS = 5.0


class _Gone(Exception):
    """The resource no longer exists."""


class Executions:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.road = Road(rt)
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.janitor = Janitor(rt)
        # Uids this process finished: a late watch event still showing them Running must not
        # start their road again. Bounded; a restart re-lists and sees the terminal status.
        self._finished: dict[str, None] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._foreign: set[str] = set()  # pools of another installation, warned about once
        # Kopf's watch leaves finished executions out (finished.ACTIVE): a DELETED event from it
        # may then mean "finished" as well as "deleted", and the API server is asked which.
        self.selective = False

    def observe(self, event_type: str | None, body: dict[str, Any]) -> None:
        uid = body["metadata"]["uid"]
        if event_type == "DELETED":
            if not self.selective:
                self._gone(body)
            elif uid not in self._finished:  # ended here: it left the watch
                self._spawn(self._confirm_gone(body), f"gone/{uid}")
            return
        if body["metadata"].get("deletionTimestamp"):
            return
        self._check_foreign(body)
        if is_terminal(body):
            self._seen_finished(body)
            return
        if uid in self._finished:
            return
        task = self.tasks.get(uid)
        if task is None or task.done():
            self.tasks[uid] = asyncio.create_task(
                self._drive(body, clock.time()), name=f"execution/{uid}"
            )

    def observe_finished(self, event_type: str | None, body: dict[str, Any]) -> None:
        """From the watch of finished executions (finished.FinishedWatch). A DELETED event there
        is a deletion: an execution leaves that watch only if its status stops being terminal,
        which no write of the operator does and tenants cannot do."""
        if event_type == "DELETED":
            self._gone(body)
        elif is_terminal(body) and not body["metadata"].get("deletionTimestamp"):
            self._check_foreign(body)
            self._seen_finished(body)

    def _seen_finished(self, body: dict[str, Any]) -> None:
        uid = body["metadata"]["uid"]
        self.janitor.track(body)
        if uid not in self._finished and uid not in self.tasks:
            # Finished by an earlier process that may have died before deleting its pod.
            self._release(uid)

    def _gone(self, body: dict[str, Any]) -> None:
        """The execution was deleted: stop its road, free its pods, delete its S3 objects."""
        uid = body["metadata"]["uid"]
        task = self.tasks.pop(uid, None)
        if task is not None and not task.done():
            task.cancel()
            self._spawn(self._release_after(uid, task), f"release-after/{uid}")
        self.janitor.forget(uid)
        self._release(uid)
        self._spawn(self._forget_artifacts(body), f"artifacts/{uid}")

    async def _confirm_gone(self, body: dict[str, Any]) -> None:
        """A DELETED event from the selective watch: deleted, or finished (its terminal status
        took it out of the selection; the API server sends the object as it was before, so the
        event cannot tell). Its own road ending here says finished; otherwise one GET does."""
        uid = body["metadata"]["uid"]
        task = self.tasks.get(uid)
        if task is not None and not task.done():
            await asyncio.wait({task}, timeout=LEAVING_SECONDS)
        attempt = 0
        while uid not in self._finished:
            try:
                now = await self._reload(body)
            except _Gone:
                self._gone(body)
                return
            except Exception as err:  # the API server is away: ask again later
                attempt += 1
                log.debug("execution %s: is it gone? %r", uid, err)
                await backoff.sleep(attempt, base=RETRY_BASE_SECONDS, cap=RETRY_CAP_SECONDS)
                continue
            if now["metadata"].get("uid") != uid:  # deleted, and its name taken again
                self._gone(body)
            return

    def _check_foreign(self, body: dict[str, Any]) -> None:
        """An execution placed on a pool this installation does not serve was run by another
        operator watching the same namespaces: both race on every execution. Say so, once per
        pool, in the log and as a Warning Event on the execution."""
        pool = ((body.get("status") or {}).get("sandbox") or {}).get("pool")
        if not pool or pool in self.rt.pools.pools or pool in self._foreign:
            return
        if not self.rt.pools.synced.is_set():
            return
        self._foreign.add(pool)
        message = (
            f"placed on SandboxPool {pool}, which this installation does not serve: another "
            "codeexec operator watches the same namespaces and races this one on every "
            "execution (give each installation its own namespaces)"
        )
        log.warning(
            "execution %s/%s %s",
            body["metadata"].get("namespace"),
            body["metadata"].get("name"),
            message,
        )
        metrics.FOREIGN_OPERATOR.inc()
        self.rt.events.record(body, "AnotherOperator", message, warning=True)

    async def _drive(self, body: dict[str, Any], seen_at: float) -> None:
        uid = body["metadata"]["uid"]
        metrics.IN_FLIGHT.inc()
        attempt = refusals = 0
        last: Exception | None = None
        stale = False
        try:
            while True:
                if stale:
                    # After a failure the road runs only on a fresh read: its last write may
                    # have landed with the answer lost (an API server going down), and running
                    # on the old view would send, collect and write the terminal status again.
                    try:
                        body = await self._reload(body)
                    except _Gone:
                        self._release(uid)
                        return
                    except Exception as err:  # the API server is still away: try again later
                        attempt += 1
                        log.debug("execution %s: reload failed: %r", uid, err)
                        await backoff.sleep(attempt, base=RETRY_BASE_SECONDS, cap=RETRY_CAP_SECONDS)
                        continue
                    stale = False
                    if is_terminal(body):  # its end landed (answer lost): free its pod now
                        self._remember(uid)
                        self._release(uid)
                        return
                # Cancelled (deleted resource, operator shutdown): the claimed pod stays as it
                # is; a deletion releases it, a successor resumes it.
                try:
                    if last is not None and refusals >= REFUSALS_BEFORE_GIVING_UP:
                        await self._give_up(body, last)
                    else:
                        await self.road.run(body, seen_at)
                    self._remember(uid)
                    return
                except NotLeading:
                    return  # deposed: the new leader drives it
                except Exception as err:
                    attempt += 1
                    refused = isinstance(err, ApiError) and err.status in (400, 413, 422)
                    refusals = refusals + 1 if refused else 0
                    last = err
                    log.warning("execution %s: attempt %d failed: %r", uid, attempt, err)
                await backoff.sleep(attempt, base=RETRY_BASE_SECONDS, cap=RETRY_CAP_SECONDS)
                stale = True
        finally:
            metrics.IN_FLIGHT.dec()
            self.tasks.pop(uid, None)

    async def _give_up(self, body: dict[str, Any], err: Exception) -> None:
        """The API server keeps refusing what the road writes: end the execution saying so, and
        free its pods (the code may have run; it is never run again)."""
        log.error(
            "execution %s: refused by the API server, ending it: %r", body["metadata"]["uid"], err
        )
        status = err.status if isinstance(err, ApiError) else "?"
        await self.road.finish_early(
            body,
            Reason.SANDBOX_ERROR,
            f"the API server refused the operator's writes for this execution ({status})",
        )
        self._release(body["metadata"]["uid"])

    def _remember(self, uid: str) -> None:
        self._finished[uid] = None
        while len(self._finished) > 10_000:
            self._finished.pop(next(iter(self._finished)))

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _forget_artifacts(self, body: dict[str, Any]) -> None:
        """The S3 objects of a deleted execution go with it (Secrets go by ownership)."""
        try:
            await self.road.stores.forget(body, self.rt.pools.pools)
        except Exception as err:  # a store that is down leaves objects, never the operator
            log.warning("artifacts of %s not deleted: %r", body["metadata"].get("name"), err)

    async def _reload(self, body: dict[str, Any]) -> dict[str, Any]:
        """The execution as the API server has it now; any failure to read it raises."""
        meta = body["metadata"]
        try:
            return await self.rt.kube.get(CODE_EXECUTIONS, meta["name"], meta["namespace"])
        except ApiError as err:
            if err.not_found:
                raise _Gone() from err
            raise

    async def _release_after(self, uid: str, road: asyncio.Task[None]) -> None:
        """A claim the road sent just before it was cancelled still lands: its pod is freed
        once the road has stopped and its claim writes are answered."""
        await asyncio.wait({road})
        await self.rt.broker.settled(uid)
        self._release(uid)

    def _release(self, uid: str) -> None:
        """Nobody will read this execution's result: free the pods claimed for it."""
        for pod in self.rt.cache.claimed_for(uid):
            if not pod.deleting or pod.held:
                self._spawn_delete(pod.name)

    def _spawn_delete(self, pod: str) -> None:
        task = asyncio.create_task(self._delete_pod(pod), name=f"release/{pod}")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _delete_pod(self, pod: str) -> None:
        ns = self.rt.settings.sandbox_namespace
        try:
            await delete_pod(self.rt.kube, ns, pod)
        except Exception as err:  # the sweep tries again
            log.warning("could not delete sandbox pod %s: %r", pod, err)

    async def sweep(self) -> None:
        """Claimed pods nobody will collect: their execution ended or vanished while no
        operator was watching (the road deletes its pod itself, so this only mops up)."""
        while True:
            await asyncio.sleep(SWEEP_SECONDS)
            now = clock.time()
            for pod in list(self.rt.cache.pods.values()):
                if pod.claimed_by is None or (pod.deleting and not pod.held):
                    continue
                if pod.claimed_by in self.tasks:
                    continue
                claimed = pod.claimed_at.timestamp() if pod.claimed_at else 0.0
                if now - claimed < SWEEP_SECONDS:
                    continue  # its road may not have been handed to us yet
                if await self._execution_is_over(pod.claimed_by, pod.execution):
                    log.info("deleting sandbox pod %s left over by a finished execution", pod.name)
                    await self._delete_pod(pod.name)

    async def _execution_is_over(self, uid: str, ref: str | None) -> bool:
        if uid in self._finished:
            return True
        if not ref or "/" not in ref:
            return False
        ns, name = ref.split("/", 1)
        try:
            body = await self.rt.kube.get(CODE_EXECUTIONS, name, ns)
        except ApiError as err:
            return bool(err.not_found)
        except Exception:
            return False
        return body["metadata"].get("uid") != uid or is_terminal(body)

    async def stop(self, timeout: float = 10.0) -> None:
        """Cancels every road and waits for them to let go (claimed pods stay for a successor)."""
        tasks = [t for t in self.tasks.values() if not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)


class Janitor:
    """Deletes finished executions after their TTL; one timer heap for all of them."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self._heap: list[tuple[float, str, str, str]] = []
        self._known: set[str] = set()
        self._failures: dict[str, int] = {}
        self._wake = asyncio.Event()

    def track(self, body: dict[str, Any]) -> None:
        meta, spec = body["metadata"], body.get("spec") or {}
        ttl = spec.get("ttlSecondsAfterFinished")
        if ttl is None or meta["uid"] in self._known:
            return
        done = st.parse_timestamp((body.get("status") or {}).get("completionTime"))
        due = (done.timestamp() if done else clock.time()) + int(ttl)
        self._known.add(meta["uid"])
        heapq.heappush(self._heap, (due, meta["namespace"], meta["name"], meta["uid"]))
        self._wake.set()

    def forget(self, uid: str) -> None:
        self._known.discard(uid)

    async def run(self) -> None:
        while True:
            self._wake.clear()
            now = clock.time()
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
                except Exception as err:  # any failure, the network's too, is tried again
                    if not (isinstance(err, ApiError) and (err.not_found or err.conflict)):
                        failed = self._failures[uid] = self._failures.get(uid, 0) + 1
                        log.warning("TTL delete of %s/%s failed (%d): %r", ns, name, failed, err)
                        due = clock.time() + backoff.delay(failed, base=1.0, cap=60.0)
                        heapq.heappush(self._heap, (due, ns, name, uid))
                        continue
                self._known.discard(uid)
                self._failures.pop(uid, None)
            delay = (self._heap[0][0] - clock.time()) if self._heap else 60.0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=max(0.05, min(delay, 60.0)))
