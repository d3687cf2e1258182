"""Invariants of the claim (claim.Broker) on the fake API server, in virtual time."""

from __future__ import annotations

import asyncio

import pytest

from codeexec import clock, podspec
from codeexec.claim import Broker, Claimed, NoPodInTime
from codeexec.controller import SWEEP_SECONDS
from codeexec.podcache import PodCache
from tests.fakeapi import vtime
from tests.fakeapi.client import FakeKube
from tests.fakeapi.operator import SANDBOX, TENANT, Replica
from tests.fakeapi.server import Call, status
from tests.fakeapi.world import World


def _warm_pod(w: World, name: str) -> None:
    from codeexec.api.models import SandboxPoolSpec

    spec = SandboxPoolSpec.model_validate({"language": "python", "image": "runner:test"})
    manifest = podspec.sandbox_pod("python", spec, SANDBOX)
    manifest["metadata"]["name"] = name
    w.api.create("pods", SANDBOX, manifest)


async def _cache(w: World, name: str) -> tuple[FakeKube, PodCache, Broker]:
    kube = FakeKube(w.api, name)
    cache = PodCache(kube, SANDBOX)
    asyncio.get_running_loop().create_task(cache.run())
    await cache.synced.wait()
    return kube, cache, Broker(kube, cache, SANDBOX)


def _template() -> str:
    from codeexec.api.models import SandboxPoolSpec

    spec = SandboxPoolSpec.model_validate({"language": "python", "image": "runner:test"})
    return podspec.template_hash(spec)


async def _claim(broker: Broker, uid: str, created: float, within: float) -> Claimed:
    return await broker.claim(
        "python",
        _template(),
        execution_uid=uid,
        execution_ref=f"team/{uid}",
        created=created,
        deadline=clock.time() + within,
        timeout_seconds=30,
        request_id=f"req-{uid}",
        attempt=1,
    )


def test_one_warm_pod_is_won_by_exactly_one_claimer() -> None:
    """Two brokers (two replicas' caches) see the same warm pod and both try to claim it.

    Catches a claim that is not conditioned on the pod's resourceVersion (double adoption from
    a stale cache). Caught: removing `"resourceVersion": resource_version` from
    podspec.claim_patch made both claimers win the pod and this test fail.
    """

    async def scenario() -> None:
        w = World(pool_size=0)
        _warm_pod(w, "python-only")
        _, cache_a, a = await _cache(w, "op-a")
        _, cache_b, b = await _cache(w, "op-b")
        await vtime.until(
            lambda: all(
                (c.pods.get("python-only") is not None and c.pods["python-only"].warm_ready)
                for c in (cache_a, cache_b)
            )
        )
        results = await asyncio.gather(
            _claim(a, "uid-a", 1.0, 5.0), _claim(b, "uid-b", 1.0, 5.0), return_exceptions=True
        )
        winners = [r for r in results if isinstance(r, Claimed)]
        assert len(winners) == 1, results
        assert sum(isinstance(r, NoPodInTime) for r in results) == 1, results
        pod = w.api.get("pods", SANDBOX, "python-only")
        assert pod["metadata"]["labels"][podspec.CLAIMED_BY_LABEL] == winners[0].pod.claimed_by

    vtime.run(scenario)


def test_a_cancelled_waiter_returns_its_pod() -> None:
    """A queued execution is deleted (its task cancelled) just after the broker handed it a pod
    and before it resumed: the pod must go back to the next waiter.

    Catches finding 3 (the pod name stayed in `reserved` forever: warm, counted, unclaimable).
    Caught: on main before the fix this test failed (the next claimer got NoPodInTime while the
    pod stayed warm); removing the `q.reserved.discard` in Broker.claim's cancellation path
    made it fail again.
    """

    async def scenario() -> None:
        w = World(pool_size=0)
        _, cache, broker = await _cache(w, "op-a")
        first = asyncio.get_running_loop().create_task(_claim(broker, "uid-a", 1.0, 600.0))
        await vtime.settle(1.0)
        assert broker.waiting("python") == 1
        # The pod turns warm in the API server while this replica's watch lags behind it.
        w.api.watch_lag = 1000.0
        _warm_pod(w, "python-only")
        await vtime.until(lambda: w.warm_ready() == 1)
        # The cache learns of it; before the first waiter runs again, a second execution
        # arrives (its broker call hands the pod to the first, the head of the line), and the
        # first is cancelled (its CodeExecution was deleted).
        cache.apply("MODIFIED", w.api.get("pods", SANDBOX, "python-only"))
        second = asyncio.get_running_loop().create_task(_claim(broker, "uid-b", 2.0, 30.0))
        await asyncio.sleep(0)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        claimed = await second
        assert claimed.pod.name == "python-only"

    vtime.run(scenario)


def test_a_pod_change_is_one_hand_out_however_many_wait() -> None:
    """100 executions wait for a pod of one pool; 50 changes of another pool's pod cost one
    hand-out pass each, not one per waiter; then the first in line gets the next warm pod.

    Caught: with each waiter waking at every change of the pod cache to look for itself, the
    50 changes made 2,800 passes (1,000 waiting executions kept a CPU core busy in
    `make scale --large`)."""

    async def scenario() -> None:
        w = World(pool_size=0)
        _, _cache_a, broker = await _cache(w, "op-a")
        passes = [0]
        pump = broker._pump

        def counted(pool: str, template: str) -> None:
            passes[0] += 1
            pump(pool, template)

        broker._pump = counted  # type: ignore[method-assign]
        loop = asyncio.get_running_loop()
        waiters = [
            loop.create_task(_claim(broker, f"uid-{i}", float(i), 600.0)) for i in range(100)
        ]
        await vtime.settle(1.0)
        assert broker.waiting("python") == 100
        _warm_pod(w, "elsewhere")
        w.api.patch(
            "pods",
            SANDBOX,
            "elsewhere",
            {"metadata": {"labels": {podspec.POOL_LABEL: "node"}}},
            "merge",
        )
        passes[0] = 0
        for i in range(50):
            w.api.patch(
                "pods", SANDBOX, "elsewhere", {"metadata": {"annotations": {"n": str(i)}}}, "merge"
            )
        await vtime.settle(1.0)  # under the waiters' own 5 s look
        assert 50 <= passes[0] <= 60, passes[0]
        _warm_pod(w, "python-only")
        first = await waiters[0]
        assert first.pod.name == "python-only"
        assert broker.waiting("python") == 99
        for task in waiters[1:]:
            task.cancel()
        await asyncio.gather(*waiters[1:], return_exceptions=True)

    vtime.run(scenario)


def _claim_write(call: Call) -> bool:
    body = call.body if isinstance(call.body, dict) else {}
    labels = (body.get("metadata") or {}).get("labels") or {}
    return call.verb == "patch" and call.plural == "pods" and podspec.CLAIMED_BY_LABEL in labels


def test_a_claim_cut_off_by_its_executions_deletion_never_keeps_its_pod() -> None:
    """The execution is deleted while its claim is on its way: the claim lands, its answer
    comes a second later and the pod watch lags, so when the deletion stops the road the
    cache does not know the pod is claimed. The pod is still freed within seconds, and the
    code never runs. (Kopf watches every execution here: the selective watch confirms a
    deletion with a read 5 s on, and the road goes on meanwhile, freeing the pod itself.)

    Caught: without the shielded write and the release once it is answered
    (Executions._release_after, Broker.settled), the pod stayed claimed until the sweep,
    60-120 s later, holding a place under maxSize and the namespace's cap meanwhile."""

    async def scenario() -> None:
        w = World(pool_size=1)
        w.api.selectable = {}  # a deletion reaches the road at once
        op = Replica(w.api)
        await op.start()
        await vtime.until(lambda: w.warm_ready() == 1)
        w.api.lag["pods"] = 0.6
        w.api.slow_answer(_claim_write, 1.0)
        ex = w.submit(1, sleep=30.0)
        name, uid = ex["metadata"]["name"], ex["metadata"]["uid"]
        await vtime.until(lambda: any(_claim_write(c) for c in w.api.calls), what="claim sent")
        w.api.delete("codeexecutions", TENANT, name)
        assert w.claimed_live(uid), "the claim landed"
        t0 = clock.monotonic()
        await vtime.until(lambda: not w.claimed_live(uid), limit=120, what="the pod freed")
        assert clock.monotonic() - t0 < SWEEP_SECONDS / 2
        assert w.kubelet.started_for(uid) == []

    vtime.run(scenario)


def test_a_lost_claims_second_look_never_brings_a_deleted_pod_back() -> None:
    """A claim loses its pod (409); the look at the pod that follows is answered late, after
    the pod was deleted and the watch said so. The cache holds no pod the API server has not.

    Caught: applying the late answer regardless put the deleted pod back in the cache, as
    warm, until the next full list (a claimed one would have held a namespace's slot)."""

    async def scenario() -> None:
        w = World(pool_size=1)
        op = Replica(w.api)
        rt = op.build()
        await op.start()
        await vtime.until(lambda: w.warm_ready() == 1)
        [pod] = [p["metadata"]["name"] for p in w.pods()]
        w.api.fail(_claim_write, status(409, "Conflict", "changed"), times=1)

        def look(call: Call) -> bool:
            return call.verb == "get" and call.plural == "pods" and call.name == pod

        w.api.slow_answer(look, 2.0)
        w.submit(1)
        await vtime.until(lambda: any(look(c) for c in w.api.calls), what="the second look")
        w.api.delete("pods", SANDBOX, pod)
        await vtime.settle(5)
        assert w.api.read("pods", SANDBOX, pod) is None
        assert pod not in rt.cache.pods

    vtime.run(scenario)
