"""Notices a dead watcher or background loop: the process stops being live and ready, then
stops so that its Deployment (or whoever runs it) starts a fresh one.

A Kopf watcher that raises is logged and gone: with it, no execution of any tenant is seen
any more, while the process looked healthy. Kopf names its tasks ("watcher for
codeexecutions.v1alpha1.codeexec.io@team-a", "multidimensional multitasker"); the watchdog
follows those and the operator's own background tasks, and treats any of them ending with an
error (or the orchestrator ending at all) as death. A watcher cancelled by Kopf (its namespace
went away) is not.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Iterable

log = logging.getLogger(__name__)

# Kopf 1.45's task names (kopf/_core/reactor/orchestration.py, running.py).
KOPF_WATCHER_PREFIX = "watcher for "
KOPF_ORCHESTRATOR = "multidimensional multitasker"
# Which of Kopf's watchers are ours to guard.
OUR_RESOURCES = ("codeexecutions.", "sandboxpools.")
# How often tasks are looked at; a dead watcher is noticed within this.
PERIOD_SECONDS = 2.0
# Kopf's guard logs a failed task as "<Name> has failed: <error>" (kopf/_cogs/aiokits/
# aiotasks.py) the moment it fails: heard through logging, a death cannot slip between two
# looks at the task list (a watcher that fails on its first list, then the orchestrator).
KOPF_LOGGER = "kopf._core.reactor"
_KOPF_FAILURE = re.compile(
    r"^(Watcher for (codeexecutions|sandboxpools)\.|Multidimensional multitasker).* has failed"
)


class Watchdog:
    def __init__(
        self,
        own: Callable[[], Iterable[asyncio.Task[None]]],
        on_death: Callable[[str], None],
        *,
        period: float = PERIOD_SECONDS,
    ) -> None:
        self._own = own
        self._on_death = on_death
        self._period = period
        self._seen: dict[str, asyncio.Task[object]] = {}
        self.death: str | None = None

    @property
    def alive(self) -> bool:
        return self.death is None

    def check(self) -> str | None:
        """What died, or None. Remembers Kopf's tasks it saw: a failed one leaves the loop's
        task list, so it is found through the reference kept here."""
        for task in asyncio.all_tasks():
            name = task.get_name()
            if name == KOPF_ORCHESTRATOR or (
                name.startswith(KOPF_WATCHER_PREFIX)
                and name[len(KOPF_WATCHER_PREFIX) :].startswith(OUR_RESOURCES)
            ):
                self._seen[name] = task
        for name, task in list(self._seen.items()):
            if not task.done():
                continue
            del self._seen[name]
            if name == KOPF_ORCHESTRATOR and not task.cancelled():
                return f"Kopf's orchestrator ended: {_failure(task)}"
            if not task.cancelled() and task.exception() is not None:
                return f"Kopf's {name} failed: {_failure(task)}"
        for task in self._own():
            if task.done() and not task.cancelled():
                return f"background task {task.get_name()} ended: {_failure(task)}"
        return None

    def listen_to_kopf(self) -> logging.Handler:
        """Trips on Kopf's own report of a failed watcher or orchestrator."""
        handler = _KopfFailures(self)
        logging.getLogger(KOPF_LOGGER).addHandler(handler)
        return handler

    def trip(self, why: str) -> None:
        if self.death is None:
            self.death = why
            log.error("watchdog: %s; no longer live or ready, stopping", why)
            self._on_death(why)

    async def run(self) -> None:
        while self.death is None:
            problem = self.check()
            if problem is not None:
                self.trip(problem)
                return
            await asyncio.sleep(self._period)


class _KopfFailures(logging.Handler):
    def __init__(self, dog: Watchdog) -> None:
        super().__init__(logging.ERROR)
        self.dog = dog

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if _KOPF_FAILURE.match(message):
            self.dog.trip(f"Kopf reported: {message[:500]}")


def _failure(task: asyncio.Task[object]) -> str:
    exc = task.exception()
    return "returned" if exc is None else f"{type(exc).__name__}: {exc}"[:500]
