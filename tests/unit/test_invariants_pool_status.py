"""How often a pool writes its status (pool.PoolManager._report), on the fake API server in
virtual time: counts alone move it at most every 5 s; news reaches it within a second; the
status always ends up telling the truth."""

from __future__ import annotations

import asyncio
import itertools

from tests.fakeapi import vtime
from tests.fakeapi.operator import Replica
from tests.fakeapi.server import JSON, Call
from tests.fakeapi.world import World

POOL = "python"


def _status(w: World) -> JSON:
    return (w.api.read("sandboxpools", "", POOL) or {}).get("status") or {}


def _status_writes(w: World) -> list[float]:
    """The virtual time of every status write to the pool (a fault that only looks)."""
    loop = asyncio.get_running_loop()
    times: list[float] = []

    async def look(call: Call) -> None:
        if call.verb == "patch" and call.plural == "sandboxpools" and call.sub == "status":
            times.append(loop.time())

    w.api.faults.append(look)
    return times


def test_a_pool_whose_counts_alone_move_writes_its_status_at_most_every_five_seconds() -> None:
    """Sixty executions, one a second, on a pool of 3: every claim moves the counts (claimed,
    then a replacement warming, then ready). The status is written no more often than every
    5 s apart from the first report, and when the load stops it shows the pool as it is.

    Caught: with counts written at STATUS_INTERVAL_SECONDS (the old rule) the pool wrote 59
    times for the 60 executions, 1 s apart, and this failed; now 11.
    """

    async def scenario() -> None:
        w = World(pool_size=3, ready_after=2.0)
        op = Replica(w.api)
        await op.start()
        await vtime.until(lambda: w.warm_ready() == 3, what="pool full")
        writes = _status_writes(w)
        names = []
        for i in range(60):
            names.append(w.submit(i)["metadata"]["name"])
            await asyncio.sleep(1.0)
        await w.wait_finished(*names)
        assert len(writes) >= 5, "the pool wrote no status while its counts moved"
        gaps = [b - a for a, b in itertools.pairwise(writes)]
        assert min(gaps) >= 4.99, gaps
        assert len(writes) <= 60 / 5 + 3, len(writes)
        await vtime.until(lambda: w.warm_ready() == 3, what="pool full again")
        await vtime.settle(6)
        status = _status(w)
        assert (status["ready"], status["claimed"], status["warming"]) == (3, 0, 0), status

    vtime.run(scenario)


def test_a_new_size_reaches_the_pool_status_within_a_second() -> None:
    """A resize is news: it does not wait behind the counts' 5 s."""

    async def scenario() -> None:
        w = World(pool_size=2, ready_after=2.0)
        op = Replica(w.api)
        await op.start()
        await vtime.until(lambda: w.warm_ready() == 2, what="pool full")
        name = w.submit(1)["metadata"]["name"]
        await w.wait_finished(name)
        await vtime.settle(0.5)  # a count-only report was just made or is due

        def resize(p: JSON) -> None:
            p["spec"]["size"] = 4

        w.api.put("sandboxpools", "", POOL, resize)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await vtime.until(lambda: _status(w).get("desired") == 4, limit=5, what="new size")
        assert loop.time() - t0 <= 1.2

    vtime.run(scenario)
