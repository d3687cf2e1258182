"""The one retry backoff: capped exponential delays with jitter, for every loop that retries."""

from __future__ import annotations

import asyncio
import random


def delay(attempt: int, *, base: float = 0.2, cap: float = 30.0) -> float:
    """Seconds to wait before retry number `attempt` (1 = the first retry): base * 2^(n-1),
    at most `cap`, with up to 20 % taken off at random so that many waiters do not retry in
    lockstep after the API server comes back."""
    exact = min(cap, base * 2.0 ** max(0, min(attempt - 1, 30)))
    return exact * (1.0 - 0.2 * random.random())


async def sleep(attempt: int, *, base: float = 0.2, cap: float = 30.0) -> None:
    await asyncio.sleep(delay(attempt, base=base, cap=cap))
