"""One operator replica on the fake API server, wired as handlers.py wires it under Kopf.

Kopf itself is not run: a list+watch of `CodeExecution`s and `SandboxPool`s hands every event to
the same rooms (Executions.observe, PoolManager.upsert/remove) the Kopf handlers call. Crashing
a replica freezes its client (every call hangs, as for a SIGKILLed process whose requests are
either applied or not) and cancels its tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import replace
from typing import Any

from codeexec import finished
from codeexec.claim import Broker
from codeexec.controller import Executions
from codeexec.kube.client import CODE_EXECUTIONS, ApiError, Resource
from codeexec.kube.events import Recorder
from codeexec.kube.lease import LeaderElector, unfenced
from codeexec.lifecycle import Runtime
from codeexec.podcache import PodCache
from codeexec.pool import PoolManager
from codeexec.preattach import Preattacher
from codeexec.scaletarget import ScaleTargets
from codeexec.settings import Settings
from codeexec.supervise import supervise

from .client import FakeKube
from .server import FakeApi

SANDBOX = "sbx"
TENANT = "team"

SETTINGS = Settings(
    sandbox_namespace=SANDBOX,
    namespaces=(),
    pool_selector="",
    keep_bytes=65536,
    max_output_bytes=1 << 20,
    max_attempts=3,
    grace_seconds=15.0,
    metrics_port=0,
    leader_election=False,
    lease_namespace="codeexec-system",
    lease_name="codeexec-operator",
    identity="op-a",
)


class Replica:
    def __init__(
        self, api: FakeApi, name: str = "op-a", *, elect: bool = False, **settings: Any
    ) -> None:
        self.api = api
        self.elector: LeaderElector | None = None
        if elect:
            self.elector = LeaderElector(
                FakeKube(api, name),
                "codeexec-system",
                "codeexec-operator",
                name,
                on_lost=self.lost,
            )
        self.deposed = False
        self.exit_on_loss = True
        self.name = name
        self.kube = FakeKube(api, name)
        self.settings = replace(SETTINGS, identity=name, **settings)
        self.tasks: list[asyncio.Task[None]] = []
        self.rt: Runtime | None = None
        self.executions: Executions | None = None
        self.finished: finished.FinishedWatch | None = None
        self.scales: ScaleTargets | None = None

    def build(self) -> Runtime:
        kube, s = self.kube, self.settings
        cache = PodCache(kube, s.sandbox_namespace)
        events = Recorder(kube)
        pools = PoolManager(
            kube,
            cache,
            s.sandbox_namespace,
            s.pool_selector,
            events=events,
            events_namespace=s.lease_namespace,
        )
        pre = Preattacher(kube, cache, s.sandbox_namespace, serves=lambda p: p.pool in pools.pools)
        fence = self.elector.fence if self.elector else unfenced
        broker = Broker(kube, cache, s.sandbox_namespace, fence=fence)
        pools.queue_depth = broker.demand
        self.rt = Runtime(s, kube, cache, pools, broker, events, pre, fence=fence)
        self.executions = Executions(self.rt)
        self.scales = ScaleTargets(kube, pools, s.sandbox_namespace)
        return self.rt

    async def _pools_changed(self) -> None:
        assert self.scales is not None
        self.scales.changed()

    def lost(self) -> None:
        """The lease is gone: exit, as the real process does (unless a test keeps it alive
        to show that the fence alone stops it)."""
        self.deposed = True
        if self.exit_on_loss:
            asyncio.get_running_loop().create_task(self.crash())

    async def start(self) -> None:
        if self.elector is not None:
            await self.elector.acquire()
        rt = self.rt or self.build()
        assert self.executions is not None and self.scales is not None
        spawn = asyncio.get_running_loop().create_task
        lease = [spawn(self.elector.keep(), name=f"{self.name}/lease")] if self.elector else []
        loops = {
            "pod-watch": rt.cache.run,
            "preattach": rt.preattach.run,
            "janitor": self.executions.janitor.run,
            "sweep": self.executions.sweep,
            "pools": lambda: rt.pools.run(self._pools_changed),
            "scale-targets": self.scales.run,
        }
        self.tasks = [
            *lease,
            *(spawn(supervise(n, loop), name=f"{self.name}/{n}") for n, loop in loops.items()),
        ]
        await rt.pools.synced.wait()
        await rt.cache.synced.wait()
        await rt.pools.collect_orphans()
        # As handlers._leave_finished_out: Kopf's watch without the finished ones, and theirs.
        selector = ""
        if await finished.selectable(self.kube, self.settings.namespaces):
            selector = finished.ACTIVE
            self.executions.selective = True
            self.finished = finished.FinishedWatch(
                self.kube, self.settings.namespaces, self.executions.observe_finished
            )
            self.tasks.append(
                spawn(supervise("finished", self.finished.run), name=f"{self.name}/finished")
            )
        self.tasks += [
            spawn(
                self._feed(CODE_EXECUTIONS, self._execution_event, selector),
                name=f"{self.name}/ex",
            ),
        ]

    def _execution_event(self, type_: str | None, body: dict[str, Any]) -> None:
        assert self.executions is not None
        self.executions.observe(type_, body)

    async def _feed(self, res: Resource, handle: Any, fields: str = "") -> None:
        """What Kopf does for an @on.event handler: list, then watch, re-listing on 410."""
        while True:
            try:
                listing = await self.kube.list(res, field_selector=fields)
                for item in listing["items"]:
                    handle(None, item)
                rv = listing["metadata"]["resourceVersion"]
                while True:
                    async for ev in self.kube.watch(
                        res, resource_version=rv, field_selector=fields
                    ):
                        rv = ev["object"]["metadata"]["resourceVersion"]
                        handle(ev["type"], ev["object"])
            except asyncio.CancelledError:
                raise
            except (ApiError, Exception):
                await asyncio.sleep(1.0)

    async def stop(self) -> None:
        """A graceful shutdown, as handlers.cleanup does it."""
        assert self.executions is not None and self.rt is not None
        await self.executions.stop()
        await self.rt.pools.stop()
        await self.cancel()
        if self.elector is not None:
            await self.elector.release()

    async def cancel(self) -> None:
        for t in self.tasks:
            t.cancel()
        for t in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t

    async def crash(self) -> None:
        """SIGKILL: nothing this process has in flight is answered, nothing more is sent."""
        self.kube.frozen = True
        if self.elector is not None:
            assert isinstance(self.elector.kube, FakeKube)
            self.elector.kube.frozen = True
        assert self.executions is not None
        tasks = [*self.tasks, *self.executions.tasks.values()]
        for t in tasks:
            t.cancel()
        await asyncio.sleep(0)
