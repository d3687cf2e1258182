"""Virtual time: an event loop whose clock jumps to the next timer whenever nothing is ready.

Everything the fake API server and the operator's rooms do is in memory, so when no callback is
ready the loop would only sleep; instead it moves its clock to the earliest timer and goes on.
A 60-second lease expiry costs microseconds. The same clock is installed as the operator's
`codeexec.clock`, so wall time, monotonic time and sleeps agree.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from codeexec import clock

T = TypeVar("T")

# Wall-clock time at virtual zero: a fixed instant keeps timestamps in tests reproducible.
EPOCH = 1_795_687_200.0  # 2026-11-26T10:00:00Z


class Deadlock(RuntimeError):
    """Nothing is ready and no timer is due: in real time the process would hang forever."""


class VirtualClock:
    def __init__(self) -> None:
        self.now = 0.0

    def time(self) -> float:
        return EPOCH + self.now

    def monotonic(self) -> float:
        return self.now


class _Selector(selectors.DefaultSelector):
    """Polls real file descriptors (the loop's self-pipe) without blocking; waits are virtual."""

    def __init__(self, vclock: VirtualClock) -> None:
        super().__init__()
        self.vclock = vclock
        self.loop: VirtualLoop | None = None

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        events = super().select(0)
        if events or timeout == 0:
            return events
        if timeout is None:
            raise Deadlock("every task waits and no timer is due")
        assert self.loop is not None
        self.vclock.now = max(self.vclock.now + timeout, self.loop.next_timer())
        return []


class VirtualLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        self.vclock = VirtualClock()
        selector = _Selector(self.vclock)
        super().__init__(selector)
        selector.loop = self

    def time(self) -> float:
        return self.vclock.now

    def next_timer(self) -> float:
        scheduled: list[asyncio.TimerHandle] = getattr(self, "_scheduled", [])
        return scheduled[0].when() if scheduled else self.vclock.now


def run(main: Callable[[], Coroutine[Any, Any, T]], *, limit: float = 3600.0) -> T:
    """Runs `main()` on a fresh virtual-time loop with the operator's clock pointed at it.

    `limit` is virtual seconds: a test whose scenario has not ended by then fails (a wedge).
    """
    loop = VirtualLoop()
    previous = clock.use(loop.vclock)
    try:

        async def bounded() -> T:
            return await asyncio.wait_for(main(), limit)

        return loop.run_until_complete(bounded())
    finally:
        try:
            _cancel_all(loop)
        finally:
            loop.close()
            clock.use(previous)


def _cancel_all(loop: asyncio.AbstractEventLoop) -> None:
    # A cancellation can be swallowed (3.11's wait_for may lose it when its inner future
    # completes at the same moment), so ask again a few times, a virtual second apart.
    for _ in range(20):
        tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
        if not tasks:
            break
        for task in tasks:
            task.cancel()
        loop.run_until_complete(asyncio.wait(tasks, timeout=1.0))
    loop.run_until_complete(loop.shutdown_asyncgens())


async def until(
    predicate: Callable[[], bool], *, every: float = 0.05, limit: float = 600.0, what: str = ""
) -> None:
    """Polls `predicate` in virtual time; fails after `limit` virtual seconds."""
    waited = 0.0
    while not predicate():
        if waited >= limit:
            raise AssertionError(f"not within {limit} virtual seconds: {what or predicate}")
        await asyncio.sleep(every)
        waited += every


async def settle(seconds: float) -> None:
    """Lets the world run for `seconds` of virtual time."""
    await asyncio.sleep(seconds)


def later(delay: float, fn: Callable[[], Awaitable[None]]) -> asyncio.Task[None]:
    async def go() -> None:
        await asyncio.sleep(delay)
        await fn()

    return asyncio.get_running_loop().create_task(go())
