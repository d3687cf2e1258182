"""The one way a room tells others its state changed: callbacks called once per change, and a
pulse that wakes every task waiting for the next one."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


class Listeners(Generic[T]):
    """Callbacks run in the caller's task, in the order added, each given what changed. One that
    raises is logged and skipped: another room's bug must not stop the pod cache or a pool's
    keeper."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._listeners: list[Callable[[T], None]] = []

    def add(self, listener: Callable[[T], None]) -> None:
        self._listeners.append(listener)

    def __call__(self, change: T) -> None:
        for listener in self._listeners:
            try:
                listener(change)
            except Exception:
                log.exception("%s listener %r", self.what, listener)


class Pulse:
    """An edge, not a level: `fire` wakes every task waiting at that moment and none after it.

    An `asyncio.Event` that is set and cleared again would leave a waiter that had not yet run
    asleep (it wakes to find the flag cleared); here each fire sets the event the waiters hold
    and gives later waiters a fresh one.
    """

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def fire(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self, timeout: float) -> bool:
        """True if fired within `timeout` seconds."""
        event = self._event
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)
        return event.is_set()
