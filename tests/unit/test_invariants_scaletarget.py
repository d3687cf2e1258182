"""An External pool's namespaced scale target (SandboxPoolScale), on the fake API server in
virtual time: what an HPA writes to it reaches the pool once, within the pool's bounds, and
only External pools have one."""

from __future__ import annotations

from typing import Any

from codeexec.podspec import MANAGED_BY, OPERATOR
from tests.fakeapi import vtime
from tests.fakeapi.operator import SANDBOX, Replica
from tests.fakeapi.server import JSON, Call
from tests.fakeapi.world import World

POOL = "python"
HANDLES = "sandboxpoolscales"


def _scaling(w: World, **scaling: Any) -> None:
    def change(p: JSON) -> None:
        p["spec"]["scaling"] = scaling

    w.api.put("sandboxpools", "", POOL, change)


def _handle(w: World) -> JSON | None:
    return w.api.read(HANDLES, SANDBOX, POOL)


def _pool(w: World) -> JSON:
    pool = w.api.read("sandboxpools", "", POOL)
    assert pool is not None
    return pool


def _hpa_writes(w: World, replicas: int) -> None:
    """What the HPA controller does: an update of the handle's scale subresource."""
    w.api.patch(HANDLES, SANDBOX, POOL, {"spec": {"replicas": replicas}}, "merge", "scale")


async def _external_pool_with_its_handle() -> tuple[World, Replica]:
    """A pool of 2 in External mode (1..6) served by a running replica that made its handle."""
    w = World(pool_size=2)
    _scaling(w, mode="External", minReady=1, maxSize=6)
    op = Replica(w.api)
    await op.start()
    await vtime.until(lambda: _handle(w) is not None, what="the handle is made")
    return w, op


def _forwards(w: World) -> int:
    return len([c for c in w.api.calls if c.plural == "sandboxpools" and c.sub == "scale"])


def _caught_up(w: World) -> bool:
    handle = _handle(w) or {}
    status = handle.get("status") or {}
    return status.get("observedGeneration") == handle["metadata"]["generation"]


def test_what_an_hpa_writes_to_the_handle_reaches_the_pool_within_its_bounds() -> None:
    """The operator makes the handle (same name, the sandbox namespace, owned by the pool,
    asking for the pool's size: no change). An HPA's write of 5 scales the pool to 5 warm
    pods and the handle reports them; 9 is held at maxSize 6 (status.desired says so). A
    `kubectl scale` of the pool itself still works and is not undone until the handle is
    written again.

    Caught: without the pass-on in ScaleTargets._step the pool stayed at 2 and this failed;
    passing on whenever the sizes differed (not once per generation) undid the kubectl scale."""

    async def scenario() -> None:
        w, _op = await _external_pool_with_its_handle()  # the replica keeps running
        handle = _handle(w)
        assert handle is not None
        assert handle["spec"]["replicas"] == 2
        [owner] = handle["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["uid"]) == ("SandboxPool", _pool(w)["metadata"]["uid"])
        await vtime.until(lambda: w.warm_ready() == 2)
        _hpa_writes(w, 5)
        await vtime.until(lambda: w.warm_ready() == 5, what="scaled to 5 by the handle")
        await vtime.until(
            lambda: ((_handle(w) or {}).get("status") or {}).get("replicas") == 5,
            what="the handle reports 5",
        )
        assert _caught_up(w)
        status = (_handle(w) or {})["status"]
        assert status["selector"] == f"codeexec.io/pool={POOL}" and status["desired"] == 5
        _hpa_writes(w, 9)  # past maxSize
        await vtime.until(lambda: _pool(w)["spec"]["size"] == 9, what="passed on")
        await vtime.settle(20)
        assert w.warm_ready() == 6
        assert ((_handle(w) or {})["status"])["desired"] == 6
        # `kubectl scale sandboxpool python --replicas=3`, the pool's own subresource.
        w.api.patch("sandboxpools", "", POOL, {"spec": {"replicas": 3}}, "merge", "scale")
        await vtime.settle(20)
        assert w.warm_ready() == 3
        assert (_handle(w) or {})["spec"]["replicas"] == 9  # the HPA's, not overwritten
        _hpa_writes(w, 4)
        await vtime.until(lambda: w.warm_ready() == 4, what="the handle's next write wins")

    vtime.run(scenario)


def test_a_write_is_passed_on_once_even_across_a_restart() -> None:
    """Each generation of the handle is passed on once: a restarted operator finds it
    observed and writes nothing to the pool, and an HPA that writes the size it already
    asked for (no new generation) changes nothing.

    Caught: passing on whenever spec.replicas differed from the pool (no observedGeneration)
    made the restarted operator scale the pool back from 3 to 5."""

    async def scenario() -> None:
        w, op = await _external_pool_with_its_handle()
        _hpa_writes(w, 5)
        await vtime.until(lambda: _pool(w)["spec"]["size"] == 5 and _caught_up(w))
        assert _forwards(w) == 1
        await op.crash()
        w.api.patch("sandboxpools", "", POOL, {"spec": {"replicas": 3}}, "merge", "scale")
        again = Replica(w.api, "op-b")
        await again.start()
        _hpa_writes(w, 5)  # the same size: the handle's generation does not move
        await vtime.settle(30)
        assert _pool(w)["spec"]["size"] == 3
        assert _forwards(w) == 1  # one pass-on in all
        assert w.warm_ready() == 3

    vtime.run(scenario)


def test_the_handle_reports_the_pools_figures_even_when_the_watch_is_faster_than_the_answer() -> (
    None
):
    """The handle shows what the pool reported, even when the pool's status write comes back
    through the watch before its own answer does (a busy API server; CI once saw a handle stuck
    at 1 replica beside a pool of 2). Every answer to a pool status write here arrives 2 s
    late, after its watch event.

    Caught: with the handle woken only by the pool's watch events, it read the figures the
    keeper had not yet recorded, and nothing woke it again: the handle kept 2 beside a pool
    of 5 and this failed."""

    def pool_status(call: Call) -> bool:
        return call.plural == "sandboxpools" and call.sub == "status"

    async def scenario() -> None:
        w, _op = await _external_pool_with_its_handle()
        await vtime.until(lambda: w.warm_ready() == 2)
        await vtime.settle(10)
        w.api.slow_answer(pool_status, 2.0)
        _hpa_writes(w, 5)
        await vtime.until(lambda: w.warm_ready() == 5, what="scaled to 5 by the handle")
        await vtime.settle(30)
        reported = _pool(w)["status"]
        assert reported["replicas"] == 5
        status = (_handle(w) or {})["status"]
        assert (status["replicas"], status["desired"]) == (5, 5), status

    vtime.run(scenario)


def test_only_external_pools_have_a_handle() -> None:
    """A fixed pool gets none; switched to External it gets one; switched to Builtin its
    handle is deleted (an HPA aimed at it then reports FailedGetScale, as it should). The
    handle of a pool this installation does not serve (another installation sharing the
    sandbox namespace) is left alone.

    Caught: without the deletion in ScaleTargets.sync a Builtin pool kept a handle through
    which an HPA would have fought the built-in autoscaler; without the `name in served` test
    the other installation's handle was deleted."""

    async def scenario() -> None:
        w = World(pool_size=2)
        theirs = {"metadata": {"name": "theirs", "labels": {MANAGED_BY: OPERATOR}}}
        w.api.create(HANDLES, SANDBOX, {**theirs, "spec": {"replicas": 3}})
        op = Replica(w.api)
        await op.start()
        await vtime.settle(10)
        assert _handle(w) is None
        assert w.api.read(HANDLES, SANDBOX, "theirs") is not None
        _scaling(w, mode="External", minReady=1, maxSize=6)
        await vtime.until(lambda: _handle(w) is not None, what="made for External")
        _scaling(w, mode="Builtin", minReady=1, maxSize=6)
        await vtime.until(lambda: _handle(w) is None, what="deleted for Builtin")
        assert w.api.read(HANDLES, SANDBOX, "theirs") is not None

    vtime.run(scenario)


def test_a_second_write_asking_for_the_old_size_back_is_not_lost_while_the_pool_watch_lags() -> (
    None
):
    """An HPA scales up to 5, then, before the pool's watch has shown the 5, back to 2 (the
    size the operator still has in memory): the pool ends at 2, each write passed on once.

    Caught: comparing the handle with the pool in memory alone took the second write for
    done; the pool stayed at 5 beside a handle asking for 2, with observedGeneration saying
    it had been seen."""

    async def scenario() -> None:
        w, _op = await _external_pool_with_its_handle()
        await vtime.until(lambda: w.warm_ready() == 2)
        w.api.lag["sandboxpools"] = 0.5
        _hpa_writes(w, 5)
        await vtime.until(lambda: _forwards(w) == 1, what="the first write passed on")
        _hpa_writes(w, 2)
        await vtime.until(lambda: _caught_up(w) and _forwards(w) == 2, what="the second one")
        await vtime.settle(30)
        assert _pool(w)["spec"]["size"] == 2
        assert _forwards(w) == 2
        assert w.warm_ready() == 2

    vtime.run(scenario)
