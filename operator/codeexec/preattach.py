"""Attach to warm pods before they are claimed, so delivering a request is a single frame.

Opening an attach session costs a round trip through the API server, the kubelet and the
container runtime's streaming server: about as long as the rest of a warm execution. The keeper
opens one session per warm pod as soon as its container runs and holds it; a claim takes the
session over. Sessions are a speed-up, never a requirement: a pod without one (still connecting,
dropped, adopted after a restart) is attached the ordinary way.

Holding a session open uses up nothing in the pod: its stdin stays open across sessions and the
runner reads exactly one request in its life (podspec, docs/runner-protocol.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from codeexec import backoff, clock, metrics, podspec
from codeexec.kube.attach import AttachError, AttachSession, open_attach
from codeexec.kube.client import Kube
from codeexec.podcache import PodCache, PodView

log = logging.getLogger(__name__)

# A claim that lands while its pod's session is still opening waits this long for it; past
# that, an ordinary attach is no slower.
TAKE_WAIT_SECONDS = 0.5
LONG_LIVED_SECONDS = 60.0


@dataclass
class _Held:
    task: asyncio.Task[None] | None = None
    session: AttachSession | None = None
    opened: asyncio.Event = field(default_factory=asyncio.Event)
    taken: bool = False


class Preattacher:
    def __init__(
        self,
        kube: Kube,
        cache: PodCache,
        namespace: str,
        serves: Callable[[PodView], bool] = lambda _: True,
    ) -> None:
        self.kube = kube
        self.cache = cache
        self.namespace = namespace
        self.serves = serves
        self._held: dict[str, _Held] = {}

    def holding(self) -> int:
        return sum(1 for h in self._held.values() if h.session and not h.session.closed)

    async def run(self) -> None:
        metrics.PREATTACHED.set_function(self.holding)
        await self.cache.synced.wait()
        try:
            while True:
                self.reconcile()
                await self.cache.wait_changed(5.0)
        finally:
            self.stop()

    def reconcile(self) -> None:
        for pod in list(self.cache.pods.values()):
            if (
                pod.name not in self._held
                and pod.state == podspec.WARM
                and pod.running
                and pod.live
                and self.serves(pod)
            ):
                held = self._held[pod.name] = _Held()
                held.task = asyncio.create_task(
                    self._hold(pod.name, held), name=f"preattach/{pod.name}"
                )
        for name, held in list(self._held.items()):
            current = self.cache.pods.get(name)
            # A claimed pod keeps its session until its claimer takes it; once the pod ends,
            # is deleted or is gone, the session has nothing left to carry.
            if current is None or not current.live:
                self._drop(name, held)

    async def take(self, pod: str) -> AttachSession | None:
        """The pod's open session, now owned (and closed) by the caller; None if there is none."""
        held = self._held.get(pod)
        if held is None:
            return None
        if held.session is None or held.session.closed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(held.opened.wait(), TAKE_WAIT_SECONDS)
        if self._held.get(pod) is not held or held.session is None or held.session.closed:
            return None
        held.taken = True
        self._drop(pod, held)
        return held.session

    def stop(self) -> None:
        for name, held in list(self._held.items()):
            self._drop(name, held)

    def _drop(self, name: str, held: _Held) -> None:
        if self._held.get(name) is held:
            del self._held[name]
        if held.task is not None:
            held.task.cancel()

    async def _hold(self, name: str, held: _Held) -> None:
        failures = 0
        try:
            while True:
                pod = self.cache.pods.get(name)
                if pod is None or not pod.live or pod.state != podspec.WARM:
                    return
                try:
                    session = await open_attach(
                        self.kube, self.namespace, name, podspec.CONTAINER, stdin=True
                    )
                except AttachError as err:
                    failures += 1
                    log.debug("pre-attach to %s failed (%d): %s", name, failures, err)
                else:
                    held.session = session
                    held.opened.set()
                    opened_at = clock.monotonic()
                    await session.wait_closed()
                    held.opened.clear()
                    held.session = None
                    # A session that lived long ended of old age (idle timeouts), not a fault.
                    failures = (
                        1 if clock.monotonic() - opened_at > LONG_LIVED_SECONDS else failures + 1
                    )
                    log.debug("pre-attached session to %s ended", name)
                # Dropped sessions are reopened while the pod stays warm; back off so a pod
                # the runtime refuses does not become a busy loop.
                await backoff.sleep(failures + 1, base=0.2, cap=10.0)
        finally:
            if not held.taken and held.session is not None:
                await held.session.close()
            if self._held.get(name) is held:
                del self._held[name]
