"""Keeps the operator's background loops running: a loop that crashes is logged and restarted.

Any exception counts, not only the API's: a network error that escaped a loop's own handling
must not end it for the life of the process (the TTL janitor once stopped for good on one).
Restarts back off (backoff.py) so a loop that fails at once does not spin.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from codeexec import backoff, clock

log = logging.getLogger(__name__)

# A loop that ran this long before failing starts again from the shortest delay.
HEALTHY_SECONDS = 60.0


async def supervise(name: str, loop: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Runs `loop()` again whenever it raises; returns when it returns, ends when cancelled."""
    failures = 0
    while True:
        started = clock.monotonic()
        try:
            await loop()
            return
        except asyncio.CancelledError:
            raise
        except Exception:
            failures = 1 if clock.monotonic() - started > HEALTHY_SECONDS else failures + 1
            log.exception("%s crashed (%d); restarting it", name, failures)
        await backoff.sleep(failures, base=0.5, cap=30.0)
