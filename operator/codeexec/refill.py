"""When a claimed pod's replacement starts: after the run it replaces, while another warm pod is
ready and nobody waits; at once otherwise. Pure: the pool keeper feeds it names and times.

Started at the claim, the replacement's creation (the API write, the scheduler, the kubelet,
containerd's sandbox and the runner's imports) shared the node's two CPUs with the run it
replaces: on the test bed its POST came 17 ms after the claim (p50) and the execution's
terminal write 55 ms after it (bench, pool full, 2026-12-01). Waiting for the claimed pod's
deletion (which follows the terminal write) moves that work off the run; a refill 50-100 ms
later is nothing against the 3.5 s a preloaded replacement takes to warm.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

# The longest a replacement waits for the run it replaces; a longer run gets its replacement
# then, so a pool is never short for longer than this because of the wait.
DEFER_SECONDS = 0.25


@dataclass
class Refill:
    """Claims in flight of one pool, by pod name: when the keeper first saw each one."""

    seen: dict[str, float] = field(default_factory=dict)

    def observe(self, claimed: Iterable[str], now: float) -> None:
        """The pool's pods claimed and not yet deleting or finished, as of `now`."""
        self.seen = {name: self.seen.get(name, now) for name in claimed}

    def hold(
        self, missing: int, *, ready: int, waiting: int, now: float
    ) -> tuple[int, float | None]:
        """How many of `missing` pods to start later, and when to look again.

        Nothing is held while an execution waits or no warm pod is ready (the next one would
        wait for it), nor for claims older than DEFER_SECONDS."""
        if missing <= 0 or waiting > 0 or ready <= 0:
            return 0, None
        young = [t + DEFER_SECONDS for t in self.seen.values() if now - t < DEFER_SECONDS]
        if not young:
            return 0, None
        return min(missing, len(young)), min(young)
