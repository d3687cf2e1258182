"""Fair sharing on the fake API server, in virtual time: no tenant starves another, and a pool's
per-namespace cap holds, through deletions and an operator restart. The evidence is recorded at
the API server (every pod and execution change), independent of what the operator believes."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest

from codeexec import clock, fairness, podspec
from codeexec.claim import Broker, NoPodInTime
from codeexec.podcache import PodCache
from tests.fakeapi import vtime
from tests.fakeapi.client import FakeKube
from tests.fakeapi.operator import SANDBOX, Replica
from tests.fakeapi.server import JSON
from tests.fakeapi.world import TERMINAL, World

A, B = "tenant-a", "tenant-b"


@dataclass
class Record:
    """What the API server saw: claimed pods per namespace after every change, executions in
    the order they ended, and every waiting message written."""

    claimed: dict[str, set[str]] = field(default_factory=dict)  # namespace -> pod names
    peaks: dict[str, int] = field(default_factory=dict)
    samples: int = 0
    ended: list[tuple[str, str]] = field(default_factory=list)
    waiting: list[tuple[str, str, str]] = field(default_factory=list)  # ns, reason, message
    claims: list[str] = field(default_factory=list)  # the namespace of each claim, in order
    _seen: set[str] = field(default_factory=set)

    def __call__(self, type_: str, obj: JSON) -> None:
        meta = obj["metadata"]
        kind = obj.get("kind", "Pod")
        if kind == "CodeExecution":
            status = obj.get("status") or {}
            key = (meta["namespace"], meta["name"])
            if status.get("phase") in TERMINAL and key not in self.ended:
                self.ended.append(key)
            if status.get("phase") == "Pending":
                self.waiting.append((meta["namespace"], status["reason"], status["message"]))
            return
        if meta.get("namespace") != SANDBOX or "containers" not in (obj.get("spec") or {}):
            return
        for pods in self.claimed.values():
            pods.discard(meta["name"])
        ns = fairness.namespace_of((meta.get("annotations") or {}).get("codeexec.io/execution"))
        claimed = (meta.get("labels") or {}).get(podspec.CLAIMED_BY_LABEL)
        # A pod counts from the claim until its deletion begins (the operator's own deletions
        # are the only ones in these tests): the window in which the code may run.
        if type_ != "DELETED" and ns and claimed and not meta.get("deletionTimestamp"):
            self.claimed.setdefault(ns, set()).add(meta["name"])
            if meta["name"] not in self._seen:
                self._seen.add(meta["name"])
                self.claims.append(ns)
        self.samples += 1
        for ns, pods in self.claimed.items():
            self.peaks[ns] = max(self.peaks.get(ns, 0), len(pods))

    def running(self, ns: str) -> int:
        return len(self.claimed.get(ns, ()))


def _world(size: int, **pool: Any) -> tuple[World, Record]:
    w = World(pool_size=size, pool_spec={"queueTimeoutSeconds": 3600, **pool})
    for ns in (A, B):
        w.api.create("namespaces", "", {"metadata": {"name": ns}})
    record = Record()
    w.api.hooks.append(record)
    return w, record


def _submit(w: World, ns: str, count: int, prefix: str, **kw: Any) -> list[str]:
    return [
        w.submit(i, namespace=ns, name=f"{prefix}-{i:03d}", **kw)["metadata"]["name"]
        for i in range(count)
    ]


async def _all_ended(w: World, ns: str, names: list[str], limit: float = 1800.0) -> None:
    await vtime.until(
        lambda: all(w.phase(n, ns) in TERMINAL for n in names),
        every=0.5,
        limit=limit,
        what=f"{len(names)} executions of {ns} ended",
    )
    assert {w.phase(n, ns) for n in names} == {"Succeeded"}


POOL = 4


def test_a_tenant_cannot_starve_another_b_ends_before_a_s_13th() -> None:
    """Tenant A submits 200 executions, then tenant B submits 5, on a pool of 4 warm pods.

    The rule, exactly: once B is in line, the claims alternate between A and B until B's five
    have a pod. The bound it gives end to end: B's five end before A's 13th does (at most a
    pod-full, 4, of A's claimed before B is in line plus one handed out at that moment, 4 more
    between B's five claims, and at most 3 claimed after B's fifth that overtake it while
    running: 2 x 4 + 4 = 12). Measured: 10. First in, first out ended B's five after all 200
    of A's.

    Caught: putting every waiter in one line (Broker.claim's namespace fixed to "": first in,
    first out across namespaces) made B's first claim the 201st and this failed.
    """

    async def scenario() -> None:
        w, record = _world(POOL)
        op = Replica(w.api)
        await op.start()
        await vtime.until(lambda: w.warm_ready() == POOL)
        a = _submit(w, A, 200, "a")
        b = _submit(w, B, 5, "b")
        await _all_ended(w, B, b)
        await _all_ended(w, A, a)
        assert len(record.ended) == 205 and len(record.claims) == 205
        claims = "".join("b" if ns == B else "a" for ns in record.claims)
        first_b, last_b = claims.index("b"), claims.rindex("b")
        assert first_b <= POOL + 1, claims[:20]
        assert "aa" not in claims[first_b : last_b + 1], claims[:20]
        order = [ns for ns, _ in record.ended]
        a_before = order[: max(i for i, ns in enumerate(order) if ns == B)].count(A)
        print(f"claims {claims[:16]}...; A's ended before B's fifth: {a_before}")
        assert a_before <= 2 * POOL + 4, a_before

    vtime.run(scenario)


def test_a_namespace_never_runs_more_than_its_cap() -> None:
    """maxRunningPerNamespace 2 on a pool of 4: A submits 40, B 10. A never holds more than
    2 pods at any change the API server saw, B uses the pods A may not, and A's waiters say
    why they wait.

    Caught: with Cap.admits always True, A held 4 pods at once and this failed.
    """

    async def scenario() -> None:
        w, record = _world(POOL, fairness={"maxRunningPerNamespace": 2})
        op = Replica(w.api)
        await op.start()
        await vtime.until(lambda: w.warm_ready() == POOL)
        a = _submit(w, A, 40, "a", sleep=2.0)
        b = _submit(w, B, 10, "b", sleep=2.0)
        await _all_ended(w, A, a)
        await _all_ended(w, B, b)
        assert record.samples > 100, "nothing recorded: the evidence is empty"
        assert record.peaks[A] == 2, record.peaks
        assert record.peaks[B] == 2, record.peaks
        quota = [m for ns, r, m in record.waiting if ns == A and r == "WaitingForQuota"]
        assert quota, record.waiting[:5]
        assert quota[0].startswith("waiting: namespace quota, 2 running"), quota[0]

    vtime.run(scenario)


def test_deleted_executions_leak_no_slot() -> None:
    """Cap 1. A's first execution runs (long); two more wait. The waiting one is deleted, then
    the running one: the third runs at once (within seconds, not after the sweep's minute).

    Caught: without Executions._release on a DELETED event, the deleted run's pod kept its
    claim until the sweep, and the third waited over 60 s.
    """

    async def scenario() -> None:
        w, record = _world(POOL, fairness={"maxRunningPerNamespace": 1})
        op = Replica(w.api)
        await op.start()
        await vtime.until(lambda: w.warm_ready() == POOL)
        first, second, third = _submit(w, A, 3, "a", sleep=600.0)
        await vtime.until(lambda: record.running(A) == 1, what="the first runs")
        await vtime.settle(10.0)
        assert w.phase(second, A) == "Pending" and w.phase(third, A) == "Pending"
        w.api.delete("codeexecutions", A, second)
        await vtime.settle(2.0)
        w.api.delete("codeexecutions", A, first)
        deleted_at = clock.monotonic()
        await vtime.until(lambda: w.phase(third, A) == "Running", limit=20.0, what="the third runs")
        assert clock.monotonic() - deleted_at < 10.0
        assert record.peaks[A] == 1, record.peaks
        assert op.rt is not None
        assert op.rt.broker.waiting("python") == 0

    vtime.run(scenario)


def test_a_restarted_operator_keeps_the_count() -> None:
    """Cap 2. Two of A's executions run when the operator dies; its successor finds them by
    their claimed pods, resumes them, and holds back A's next ones until they end.

    Caught: counting only this process's own reservations (Cap without holders in
    _PoolQueue.cap_of) let the successor run four at once and this failed.
    """

    async def scenario() -> None:
        w, record = _world(POOL, fairness={"maxRunningPerNamespace": 2})
        op = Replica(w.api, "op-a")
        await op.start()
        await vtime.until(lambda: w.warm_ready() == POOL)
        running = _submit(w, A, 2, "a", sleep=60.0)
        await vtime.until(lambda: record.running(A) == 2, what="two run")
        await op.crash()
        more = _submit(w, A, 3, "more", sleep=1.0)
        successor = Replica(w.api, "op-b")
        await successor.start()
        await vtime.settle(30.0)
        assert record.peaks[A] == 2, record.peaks
        assert all(w.phase(n, A) == "Pending" for n in more), [w.phase(n, A) for n in more]
        await _all_ended(w, A, running + more)
        assert record.peaks[A] == 2, record.peaks

    vtime.run(scenario)


def test_a_cancelled_waiter_gives_back_its_namespace_s_slot() -> None:
    """Cap 1 at the broker: a waiter is handed a pod and cancelled (its execution deleted)
    before its claim is written. The pod and the namespace's slot go to the next waiter.

    Caught: without `q.reserved.pop` in Broker._abandon the reservation counted against the
    namespace for ever and the second waiter got NoPodInTime.
    """

    async def scenario() -> None:
        w = World(pool_size=0)
        kube = FakeKube(w.api, "op-a")
        cache = PodCache(kube, SANDBOX)
        asyncio.get_running_loop().create_task(cache.run())
        await cache.synced.wait()
        broker = Broker(kube, cache, SANDBOX)
        from codeexec.api.models import SandboxPoolSpec

        spec = SandboxPoolSpec.model_validate({"language": "python", "image": "runner:test"})
        template = podspec.template_hash(spec)

        def claim(uid: str, created: float) -> asyncio.Task[Any]:
            return asyncio.get_running_loop().create_task(
                broker.claim(
                    "python",
                    template,
                    execution_uid=uid,
                    execution_ref=f"{A}/{uid}",
                    created=created,
                    deadline=clock.time() + 30.0,
                    timeout_seconds=30,
                    request_id=f"req-{uid}",
                    attempt=1,
                    namespace_cap=1,
                )
            )

        first = claim("uid-1", 1.0)
        await vtime.settle(1.0)
        w.api.watch_lag = 1000.0
        manifest = podspec.sandbox_pod("python", spec, SANDBOX)
        manifest["metadata"]["name"] = "python-only"
        w.api.create("pods", SANDBOX, manifest)
        await vtime.until(lambda: w.warm_ready() == 1)
        cache.apply("MODIFIED", w.api.get("pods", SANDBOX, "python-only"))
        second = claim("uid-2", 2.0)
        await asyncio.sleep(0)  # the second's pump hands the pod to the first, the head
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        try:
            claimed = await second
        except NoPodInTime as err:
            raise AssertionError("the cancelled waiter kept its namespace's slot") from err
        assert claimed.pod.name == "python-only"

    vtime.run(scenario)


def test_executions_held_by_the_cap_do_not_grow_an_autoscaled_pool() -> None:
    """An autoscaled pool (1..12) with a cap of 2: A submits 30 long executions. Only two can
    run, so the queue the autoscaler sees holds none of the others and the pool stays small;
    every pod it added for them would sit warm and idle for the whole run.

    Caught: with the queue depth wired to Broker.waiting (every waiter, capped or not), the
    pool grew to its maximum, 12 pods, and this failed.
    """

    async def scenario() -> None:
        w, record = _world(1, fairness={"maxRunningPerNamespace": 2})

        def scaled(p: JSON) -> None:
            p["spec"]["scaling"] = {"minReady": 1, "maxSize": 12, "cooldownSeconds": 60}

        w.api.put("sandboxpools", "", "python", scaled)
        op = Replica(w.api)
        await op.start()
        await vtime.until(lambda: w.warm_ready() >= 1)
        peak = 0

        def pods() -> int:
            return sum(1 for p in w.pods() if not p["metadata"].get("deletionTimestamp"))

        a = _submit(w, A, 30, "a", sleep=20.0)
        for _ in range(600):  # a minute, sampled every 100 ms
            await asyncio.sleep(0.1)
            peak = max(peak, pods())
        status = (w.api.read("sandboxpools", "", "python") or {}).get("status") or {}
        print(f"capped tenant of 30: peak {peak} pods, queueDepth {status.get('queueDepth')}")
        assert record.peaks[A] == 2, record.peaks
        assert status.get("queueDepth") == 0, status
        assert peak <= 2 + 1 + 2, peak  # A's two, the minimum, headroom and a warming spare
        await _all_ended(w, A, a)

    vtime.run(scenario)
