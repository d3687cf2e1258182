"""The one way a room tells others its state changed: callbacks, each called once per change."""

from __future__ import annotations

import logging
from collections.abc import Callable

log = logging.getLogger(__name__)


class Listeners:
    """Callbacks run in the caller's task, in the order added. One that raises is logged and
    skipped: another room's bug must not stop the pod cache or a pool's keeper."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._listeners: list[Callable[[], None]] = []

    def add(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def __call__(self) -> None:
        for listener in self._listeners:
            try:
                listener()
            except Exception:
                log.exception("%s listener %r", self.what, listener)
