"""Invariants of autoscaled pools (autoscale.py through pool.PoolManager) on the fake API server,
in virtual time: bursts, steady load, scale from zero, the scale subresource's size, full nodes."""

from __future__ import annotations

import asyncio
import random
from typing import Any

from tests.fakeapi import vtime
from tests.fakeapi.operator import SANDBOX, Replica
from tests.fakeapi.server import JSON
from tests.fakeapi.world import World

POOL = "python"


def _scaling(w: World, **scaling: Any) -> None:
    def change(p: JSON) -> None:
        p["spec"]["scaling"] = scaling

    w.api.put("sandboxpools", "", POOL, change)


def _resize(w: World, size: int) -> None:
    """What `kubectl scale sandboxpool python --replicas=N` writes through the subresource."""

    def change(p: JSON) -> None:
        p["spec"]["size"] = size

    w.api.put("sandboxpools", "", POOL, change)


def _live(w: World) -> list[JSON]:
    """Pods counted against maxSize: every claimed pod, and warm pods not being deleted."""
    return [
        p
        for p in w.pods()
        if p["metadata"]["labels"].get("codeexec.io/state") == "claimed"
        or not p["metadata"].get("deletionTimestamp")
    ]


def _warm(w: World) -> int:
    return sum(
        1
        for p in w.pods()
        if p["metadata"]["labels"].get("codeexec.io/state") == "warm"
        and not p["metadata"].get("deletionTimestamp")
    )


def _status(w: World) -> JSON:
    return (w.api.read("sandboxpools", "", POOL) or {}).get("status") or {}


class Watch:
    """Samples the pool every 100 ms of virtual time: the most pods ever, and the fewest warm
    pods once the pool first reached its minimum."""

    def __init__(self, w: World) -> None:
        self.w = w
        self.peak = 0
        self.sizes: list[tuple[float, int]] = []
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self.peak = max(self.peak, len(_live(self.w)))
            self.sizes.append((loop.time(), int(_status(self.w).get("desired") or 0)))
            await asyncio.sleep(0.1)


def _claimed_pods_are_never_deleted_under_a_running_execution(w: World) -> list[str]:
    """Records every deletion of a pod whose execution had not ended yet."""
    wrongs: list[str] = []

    def hook(type_: str, obj: JSON) -> None:
        meta = obj["metadata"]
        if obj.get("kind", "Pod") != "Pod" or meta.get("namespace") != SANDBOX:
            return
        uid = (meta.get("labels") or {}).get("codeexec.io/claimed-by")
        if not uid or not (meta.get("deletionTimestamp") or type_ == "DELETED"):
            return
        for ex in w.api.of("codeexecutions", "team"):
            phase = (ex.get("status") or {}).get("phase")
            if ex["metadata"]["uid"] == uid and phase not in ("Succeeded", "Failed"):
                wrongs.append(meta["name"])

    w.api.hooks.append(hook)
    return wrongs


def test_a_burst_grows_the_pool_to_max_and_it_returns_to_min_after_the_cooldown() -> None:
    """60 executions at once on minReady 1 / maxSize 12: all succeed on their first pod, the
    pool reaches 12 pods and never more, reports why, and is back at 1 once the burst has
    left the rate window (180 s) and the cooldown (60 s) has passed.

    Caught: dropping the maxSize `room` bound in PoolManager._reconcile let the keeper keep
    12 warm pods beside the running ones (peak 20) and this failed.
    """

    async def scenario() -> None:
        w = World(pool_size=0)
        _scaling(w, minReady=1, maxSize=12, cooldownSeconds=60)
        op = Replica(w.api)
        await op.start()
        await vtime.until(lambda: w.warm_ready() == 1, what="minReady warm")
        wrongs = _claimed_pods_are_never_deleted_under_a_running_execution(w)
        watch = Watch(w)
        names = [w.submit(i, sleep=2.0)["metadata"]["name"] for i in range(60)]
        await vtime.until(lambda: _status(w).get("desired") == 12, limit=10, what="scaled up")
        status = _status(w)
        assert "waiting" in status["lastScaleReason"], status
        await w.wait_finished(*names, limit=600)
        for name in names:
            ex = w.execution(name) or {}
            assert ex["status"]["phase"] == "Succeeded", ex["status"]
            assert ex["status"]["sandbox"]["attempts"] == 1
        assert watch.peak == 12, watch.peak
        assert wrongs == []
        # Back to the minimum only after the cooldown, not before.
        await vtime.settle(30)
        assert _status(w).get("desired", 0) > 1
        await vtime.until(lambda: _status(w).get("desired") == 1, limit=300, what="back to min")
        await vtime.until(lambda: len(_live(w)) == 1, limit=30, what="one pod left")
        assert watch.peak == 12
        assert min(d for _, d in watch.sizes if d) >= 1
        reasons = [
            e["reason"]
            for e in w.api.of("events", "codeexec-system")
            if e["involvedObject"]["kind"] == "SandboxPool"
        ]
        assert "ScaledUp" in reasons and "ScaledDown" in reasons, reasons
        watch.task.cancel()

    vtime.run(scenario)


def test_a_steady_rate_settles_within_one_pod_and_nothing_is_exhausted() -> None:
    """Random (Poisson) arrivals at one per 1.5 s, 1 s of work each, on pods that take 5 s
    to warm, for ten minutes: once the rate window (180 s) and the cooldown (120 s) have
    passed, the pool's size moves by at most one pod, and no execution ends PoolExhausted.

    Caught: a 60 s rate window (autoscale.RATE_WINDOW_SECONDS) made the estimate follow the
    noise of the arrivals: the size moved between 9 and 11 and this failed.
    """

    async def scenario() -> None:
        w = World(pool_size=0, ready_after=5.0)
        arrivals = random.Random(13)
        _scaling(w, minReady=1, maxSize=12, cooldownSeconds=120)
        op = Replica(w.api)
        await op.start()
        await vtime.until(lambda: w.warm_ready() == 1)
        watch = Watch(w)
        loop = asyncio.get_running_loop()
        start = loop.time()
        names = []
        while loop.time() - start < 600:
            names.append(w.submit(1, sleep=1.0)["metadata"]["name"])
            await asyncio.sleep(arrivals.expovariate(1 / 1.5))
        await w.wait_finished(*names)
        reasons = {(w.execution(n) or {})["status"].get("reason") for n in names}
        assert "PoolExhausted" not in reasons, reasons
        settled = [d for t, d in watch.sizes if start + 300 <= t <= start + 600]
        assert max(settled) - min(settled) <= 1, sorted(set(settled))
        watch.task.cancel()

    vtime.run(scenario)


def test_an_execution_on_an_empty_pool_starts_a_pod_and_the_pool_returns_to_zero() -> None:
    """minReady 0: no pod while idle; an execution arriving then runs on a pod started for
    it (not PoolExhausted), and the pool is empty again after the cooldown.

    Caught: without PoolManager.demand in Road.claim the empty pool started no pod and the
    execution ended PoolExhausted.
    """

    async def scenario() -> None:
        w = World(pool_size=0)
        _scaling(w, minReady=0, maxSize=3, cooldownSeconds=20)
        op = Replica(w.api)
        await op.start()
        await vtime.settle(10)
        assert w.pods() == []
        name = w.submit(7)["metadata"]["name"]
        await w.wait_finished(name, limit=30)
        ex = w.execution(name) or {}
        assert ex["status"]["phase"] == "Succeeded", ex["status"]
        assert ex["status"]["result"]["returnValue"] == 7
        await vtime.until(lambda: w.pods() == [], limit=60, what="pool back to zero")
        assert _status(w)["desired"] == 0

    vtime.run(scenario)


def test_external_mode_follows_the_scale_subresource_within_the_bounds() -> None:
    """External: spec.size (what `kubectl scale` writes) sets the pool, clamped to
    minReady..maxSize; a shrink under running executions never deletes a claimed pod.

    Caught: ignoring the bounds (using spec.size as it is) kept 9 warm pods and this failed.
    """

    async def scenario() -> None:
        w = World(pool_size=2)
        _scaling(w, mode="External", minReady=1, maxSize=6)
        op = Replica(w.api)
        await op.start()
        await vtime.until(lambda: w.warm_ready() == 2)
        _resize(w, 5)
        await vtime.until(lambda: w.warm_ready() == 5, what="scaled to 5")
        wrongs = _claimed_pods_are_never_deleted_under_a_running_execution(w)
        names = [w.submit(i, sleep=3.0)["metadata"]["name"] for i in range(4)]
        _resize(w, 0)  # below minReady: held at 1
        await w.wait_finished(*names)
        assert all(w.phase(n) == "Succeeded" for n in names)
        assert wrongs == []
        await vtime.until(lambda: _warm(w) == 1 and len(_live(w)) == 1, what="held at 1")
        _resize(w, 9)  # above maxSize: held at 6
        await vtime.settle(20)
        assert _warm(w) == 6
        assert _status(w)["desired"] == 6 and _status(w)["replicas"] == 6

    vtime.run(scenario)


def test_unschedulable_pods_are_counted_reported_and_not_replaced() -> None:
    """A node with room for 2 pods, a fixed pool of 4: the other 2 stay Pending
    (Unschedulable). They are counted in the status and a Schedulable=False condition, and
    are not replaced at readyTimeoutSeconds (no churn); once room appears they run.

    Caught: without the `pod.unschedulable is None` test in PoolManager._doomed the keeper
    replaced them every 120 s (8 creations in 5 minutes) and this failed.
    """

    async def scenario() -> None:
        w = World(pool_size=4, capacity=2)
        op = Replica(w.api)
        await op.start()
        await vtime.until(lambda: w.warm_ready() == 2)
        await vtime.until(lambda: _status(w).get("unschedulable") == 2, what="counted")
        await vtime.settle(300)
        creations = [c for c in w.api.calls if c.plural == "pods" and c.verb == "create"]
        assert len(creations) == 4, len(creations)
        conditions = {c["type"]: c for c in _status(w)["conditions"]}
        assert conditions["Schedulable"]["status"] == "False"
        assert "Insufficient memory" in conditions["Schedulable"]["message"]
        w.kubelet.capacity = 4
        await vtime.until(lambda: w.warm_ready() == 4, what="placed once room appears")
        await vtime.until(lambda: _status(w).get("unschedulable") == 0)
        conditions = {c["type"]: c for c in _status(w)["conditions"]}
        assert conditions["Schedulable"]["status"] == "True"

    vtime.run(scenario)


def _pending(w: World) -> int:
    return sum(
        1
        for p in w.pods()
        if any(
            c.get("reason") == "Unschedulable"
            for c in (p.get("status") or {}).get("conditions", [])
        )
    )


def test_a_full_cluster_slows_growth_to_one_pod_per_backoff_step() -> None:
    """Builtin pool with maxSize 40 on a node with room for 3 pods, a burst of 60: once pods
    are seen unschedulable the pool adds one pod per backoff step (5 s doubling) instead of
    filling its maxSize with pods that would all wait for the same room.

    Caught: without PoolManager._hold_while_unschedulable 37 pods waited Pending at once and
    this failed.
    """

    async def scenario() -> None:
        w = World(pool_size=0, capacity=3)
        _scaling(w, minReady=1, maxSize=40, cooldownSeconds=60)
        op = Replica(w.api)
        await op.start()
        await vtime.until(lambda: w.warm_ready() == 1)
        names = [w.submit(i, sleep=5.0)["metadata"]["name"] for i in range(60)]
        peak = 0
        for _ in range(600):
            await asyncio.sleep(0.1)
            peak = max(peak, _pending(w))
        # The first look creates a burst of 8 before anything is known to be unschedulable.
        assert 0 < peak <= 12, peak
        await w.wait_finished(*names, limit=900)

    vtime.run(scenario)
