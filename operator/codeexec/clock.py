"""The one clock the operator's rooms read (wall and monotonic time); tests install virtual time.

Sleeping and timeouts go through the event loop (asyncio.sleep, wait_for), so a test that runs
the rooms on a loop with virtual time and installs a matching clock here moves every deadline,
backoff and lease of the operator together, without waiting for real seconds.
"""

from __future__ import annotations

import time as _time
from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    def time(self) -> float: ...

    def monotonic(self) -> float: ...


class SystemClock:
    def time(self) -> float:
        return _time.time()

    def monotonic(self) -> float:
        return _time.monotonic()


_current: Clock = SystemClock()


def use(clock: Clock) -> Clock:
    """Installs `clock` and returns the one it replaces (tests put it back)."""
    global _current
    previous, _current = _current, clock
    return previous


def time() -> float:
    """Wall-clock seconds since the epoch."""
    return _current.time()


def monotonic() -> float:
    """Seconds on a clock that never jumps; only differences mean anything."""
    return _current.monotonic()


def now() -> datetime:
    """Wall-clock time as an aware UTC datetime."""
    return datetime.fromtimestamp(_current.time(), UTC)
