"""When a claimed pod's replacement starts (refill.py, wired in pool.PoolManager._reconcile), on
the fake API server in virtual time: after the run it replaces while another warm pod is ready,
never later than DEFER_SECONDS after the claim, and at once when the next execution would wait."""

from __future__ import annotations

import asyncio

from codeexec import refill
from tests.fakeapi import vtime
from tests.fakeapi.operator import Replica
from tests.fakeapi.server import Call
from tests.fakeapi.world import World


def _record(w: World) -> dict[str, list[float]]:
    """Virtual times of claims (the first PATCH of a pod), pod creations and pod deletions."""
    loop = asyncio.get_running_loop()
    seen: dict[str, list[float]] = {"claim": [], "create": [], "delete": []}
    patched: set[str] = set()

    async def look(call: Call) -> None:
        if call.plural != "pods" or call.sub:
            return
        if call.verb == "patch" and call.name not in patched:
            patched.add(call.name)
            seen["claim"].append(loop.time())
        elif call.verb in ("create", "delete"):
            seen[call.verb].append(loop.time())

    w.api.faults.append(look)
    return seen


async def _one_run(pool_size: int, sleep: float) -> dict[str, list[float]]:
    w = World(pool_size=pool_size, ready_after=2.0)
    op = Replica(w.api)
    await op.start()
    await vtime.until(lambda: w.warm_ready() == pool_size, what="pool full")
    await vtime.settle(1)
    seen = _record(w)
    name = w.submit(1, sleep=sleep)["metadata"]["name"]
    await w.wait_finished(name)
    await vtime.until(lambda: w.warm_ready() == pool_size, what="pool full again")
    return seen


def test_a_replacement_starts_after_the_run_it_replaces_when_another_pod_is_ready() -> None:
    """A short run on a pool of 3: the replacement is created after the claimed pod's
    deletion (which follows the terminal status), not beside the run.

    Caught: without the hold in _reconcile the replacement was created at the claim, before
    the pod's deletion, and this failed."""

    async def scenario() -> None:
        seen = await _one_run(pool_size=3, sleep=0.05)
        assert len(seen["claim"]) == 1 and len(seen["create"]) == 1, seen
        assert seen["delete"], "the claimed pod was never deleted"
        claim, create, delete = seen["claim"][0], seen["create"][0], seen["delete"][0]
        assert delete <= create <= claim + refill.DEFER_SECONDS + 0.1, seen

    vtime.run(scenario)


def test_a_replacement_waits_no_longer_than_the_deferral_for_a_long_run() -> None:
    """A 5 s run: the replacement starts DEFER_SECONDS after the claim, not after the run."""

    async def scenario() -> None:
        seen = await _one_run(pool_size=3, sleep=5.0)
        claim, create = seen["claim"][0], seen["create"][0]
        assert claim + refill.DEFER_SECONDS - 0.01 <= create <= claim + refill.DEFER_SECONDS + 0.1
        assert create < seen["delete"][0] - 4, seen

    vtime.run(scenario)


def test_the_last_warm_pod_is_replaced_at_once() -> None:
    """A pool of 1: once its pod is claimed no warm pod is left, so the next execution would
    wait for the replacement; it is created at the claim, beside the run."""

    async def scenario() -> None:
        seen = await _one_run(pool_size=1, sleep=5.0)
        claim, create = seen["claim"][0], seen["create"][0]
        assert create - claim < refill.DEFER_SECONDS / 2, seen

    vtime.run(scenario)


def test_nothing_is_held_while_an_execution_waits_or_for_an_old_claim() -> None:
    r = refill.Refill()
    r.observe(["a", "b"], now=10.0)
    assert r.hold(2, ready=1, waiting=0, now=10.1) == (2, 10.0 + refill.DEFER_SECONDS)
    assert r.hold(2, ready=1, waiting=1, now=10.1) == (0, None)
    assert r.hold(2, ready=0, waiting=0, now=10.1) == (0, None)
    assert r.hold(0, ready=1, waiting=0, now=10.1) == (0, None)
    assert r.hold(2, ready=1, waiting=0, now=10.0 + refill.DEFER_SECONDS) == (0, None)
    r.observe(["b", "c"], now=10.2)  # a is gone; b keeps its first sighting
    assert r.seen == {"b": 10.0, "c": 10.2}
    assert r.hold(5, ready=2, waiting=0, now=10.3) == (1, 10.2 + refill.DEFER_SECONDS)
