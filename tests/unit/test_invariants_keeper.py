"""When a pool's keeper looks (pool.PoolManager._keep), on the fake API server in virtual
time: at once for a change of its own pods, never for another pool's."""

from __future__ import annotations

from typing import Any

from codeexec import clock, podspec
from codeexec.pool import IDLE_INTERVAL_SECONDS, Pool, PoolManager
from tests.fakeapi import vtime
from tests.fakeapi.operator import SANDBOX, Replica
from tests.fakeapi.world import World


def _count_reconciles(pools: PoolManager) -> dict[str, int]:
    counted: dict[str, int] = {}
    reconcile = pools._reconcile

    async def counting(pool: Pool) -> None:
        counted[pool.name] = counted.get(pool.name, 0) + 1
        await reconcile(pool)

    pools._reconcile = counting  # type: ignore[method-assign]
    return counted


def _of_pool(w: World, pool: str) -> list[dict[str, Any]]:
    return [p for p in w.pods() if p["metadata"]["labels"].get(podspec.POOL_LABEL) == pool]


def test_a_keeper_never_looks_at_another_pools_pod_changes() -> None:
    """Twenty executions on pool `python` (each a claim, a deletion, a replacement: a dozen
    pod changes) beside an idle pool `other`: `other`'s keeper looks only at its own timer
    (every IDLE_INTERVAL_SECONDS), while `python`'s looks at its changes.

    Caught: with every keeper woken at every change of the cache, `other` reconciled as often
    as `python` (158 times in 8 virtual seconds against 3 for its timer alone)."""

    async def scenario() -> None:
        w = World(pool_size=2)
        w.pool("other", size=1, default=False)
        op = Replica(w.api)
        rt = op.build()
        counted = _count_reconciles(rt.pools)
        await op.start()
        await vtime.until(lambda: w.warm_ready() == 3)
        await vtime.settle(2)
        counted.clear()
        t0 = clock.monotonic()
        names = [w.submit(i)["metadata"]["name"] for i in range(20)]
        await w.wait_finished(*names)
        await vtime.until(lambda: w.warm_ready() == 3, what="refilled")
        elapsed = clock.monotonic() - t0
        timer_only = int(elapsed / IDLE_INTERVAL_SECONDS) + 2
        print(f"{elapsed:.1f}s: reconciles {counted}, timer alone {timer_only}")
        assert counted.get("python", 0) > 2 * timer_only, counted  # it did look at its own
        assert counted.get("other", 0) <= timer_only, counted

    vtime.run(scenario)


def test_a_keeper_replaces_its_own_deleted_pod_without_waiting_for_its_timer() -> None:
    """Someone deletes a warm pod of `other`: its keeper starts a replacement at once (the
    change wakes it), well before its next timed look."""

    async def scenario() -> None:
        w = World(pool_size=1)
        w.pool("other", size=1, default=False)
        op = Replica(w.api)
        await op.start()
        await vtime.until(lambda: w.warm_ready() == 2)
        await vtime.settle(1)
        [victim] = [p["metadata"]["name"] for p in _of_pool(w, "other")]
        t0 = clock.monotonic()
        w.api.delete("pods", SANDBOX, victim)
        await vtime.until(
            lambda: any(p["metadata"]["name"] != victim for p in _of_pool(w, "other")),
            what="a replacement created",
        )
        assert clock.monotonic() - t0 < IDLE_INTERVAL_SECONDS / 2

    vtime.run(scenario)
