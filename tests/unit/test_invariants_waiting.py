"""Executions waiting for a pod (claim.Broker, fairness.FairQueue), on the fake API server in
virtual time: asking for one's place in line costs a census per change of the line, not a
count of the whole line per waiter."""

from __future__ import annotations

from typing import Any

from codeexec import claim
from tests.fakeapi import vtime
from tests.fakeapi.operator import Replica
from tests.fakeapi.world import World

WAITING = 200


def test_waiting_executions_asking_their_place_never_count_the_whole_line_each() -> None:
    """200 executions wait on an empty pool, each asking its place every few seconds (its
    Pending reason). The statuses still say how many are in line, and over 20 quiet seconds
    the line's items are looked at a few times per waiter, not once per waiter per waiter.

    Caught: with the counts taken afresh at each question (the census removed), 20 virtual
    seconds cost ~240,000 looks (200 * 300 / 5 a second)."""
    looks = [0]
    live = claim._Waiter.live

    def counted(self: Any) -> bool:
        looks[0] += 1
        return live(self)

    async def scenario() -> None:
        # Before the broker is built: each pool's line keeps the function it was given.
        claim._Waiter.live = counted  # type: ignore[method-assign]
        w = World(pool_size=0)
        op = Replica(w.api)
        op.build()
        await op.start()
        await vtime.settle(1)
        names = [w.submit(i)["metadata"]["name"] for i in range(WAITING)]
        await vtime.until(
            lambda: all(
                ((w.execution(n) or {}).get("status") or {}).get("reason") == "WaitingForPod"
                for n in names
            ),
            what="every execution says it waits for a pod",
        )
        message = (w.execution(names[-1]) or {})["status"]["message"]
        assert f"({WAITING} in line)" in message, message
        looks[0] = 0
        await vtime.settle(20)
        print(f"{looks[0]} looks at waiters in 20 s with {WAITING} waiting")
        assert 0 < looks[0] <= 20 * WAITING, looks[0]

    try:
        vtime.run(scenario)
    finally:
        claim._Waiter.live = live  # type: ignore[method-assign]
