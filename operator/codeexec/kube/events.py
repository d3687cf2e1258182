"""Kubernetes Events for the milestones of an execution, posted without blocking the road."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from codeexec import clock
from codeexec.kube.client import EVENTS, ApiError, Kube

log = logging.getLogger(__name__)


class Recorder:
    def __init__(self, kube: Kube, component: str = "codeexec-operator") -> None:
        self.kube = kube
        self.component = component
        self._tasks: set[asyncio.Task[None]] = set()

    def record(
        self, obj: dict[str, Any], reason: str, message: str, *, warning: bool = False
    ) -> None:
        task = asyncio.create_task(self._post(obj, reason, message, warning))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _post(self, obj: dict[str, Any], reason: str, message: str, warning: bool) -> None:
        meta = obj["metadata"]
        now = clock.now().strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": obj.get("apiVersion"),
                "kind": obj.get("kind"),
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid"),
            },
            "reason": reason,
            "message": message[:1024],
            "type": "Warning" if warning else "Normal",
            "source": {"component": self.component},
            "reportingComponent": self.component,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            await self.kube.create(EVENTS, event, meta["namespace"])
        except (ApiError, OSError) as err:
            log.debug("could not post event %s for %s: %s", reason, meta["name"], err)

    async def drain(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
