"""A namespaced scale target per External pool: HPAs and KEDA look theirs up in their own namespace.

A SandboxPool is cluster-scoped (the platform team's object), and an HPA or a KEDA
ScaledObject asks for `/namespaces/NS/<resource>/NAME/scale`: they can never reach a pool. So
each served pool with `spec.scaling.mode: External` gets a `SandboxPoolScale` of its own name
in the sandbox namespace (where tenants have no rights), owned by the pool. Its scale
subresource is what an HPA drives: a write of `spec.replicas` (a new generation) is passed on
once to the pool's own scale subresource, which clamps it to `minReady..maxSize`; its status
shows the pool's warm pods, desired size and selector. A `kubectl scale sandboxpool` still
works and lasts until the handle is written again (as a Deployment under an HPA).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from codeexec import backoff, informer, podspec
from codeexec.api.models import API_VERSION
from codeexec.kube.client import SANDBOX_POOL_SCALES, SANDBOX_POOLS, ApiError, Kube, older
from codeexec.pool import Pool, PoolManager

log = logging.getLogger(__name__)

KIND = "SandboxPoolScale"


def external(pool: Pool) -> bool:
    return pool.spec.scaling is not None and pool.spec.scaling.mode == "External"


def handle_body(pool: Pool) -> dict[str, Any]:
    """A new handle: it asks for what the pool has, so creating it changes nothing."""
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": pool.name,
            "labels": {podspec.POOL_LABEL: pool.name, podspec.MANAGED_BY: podspec.OPERATOR},
            # The garbage collector deletes it with its pool (a namespaced dependent may have
            # a cluster-scoped owner).
            "ownerReferences": [
                {
                    "apiVersion": API_VERSION,
                    "kind": "SandboxPool",
                    "name": pool.name,
                    "uid": pool.uid,
                    "blockOwnerDeletion": False,
                }
            ],
        },
        "spec": {"replicas": pool.spec.size},
    }


def handle_status(pool: Pool, generation: int) -> dict[str, Any]:
    """What the handle reports: the pool's own figures, and the generation passed on."""
    return {
        "observedGeneration": generation,
        "replicas": int(pool.last_status.get("replicas") or 0),
        "desired": pool.target(),
        "selector": f"{podspec.POOL_LABEL}={pool.name}",
    }


class ScaleTargets:
    def __init__(self, kube: Kube, pools: PoolManager, namespace: str) -> None:
        self.kube = kube
        self.pools = pools
        self.namespace = namespace
        self.handles: dict[str, dict[str, Any]] = {}
        # The size last passed on to each pool: the pool in memory may not show it yet (its
        # watch lags), and a second write asking for the old size back must not look done.
        self._passed: dict[str, int] = {}
        self.synced = asyncio.Event()
        self.wake = asyncio.Event()
        # The handle shows `Pool.last_status`: woken when it is recorded, not only by the
        # pool's watch event, which can arrive before the write's answer (CI saw a handle stuck
        # at 1 beside a pool of 2).
        pools.on_report(self.changed)

    def changed(self, _pool: str = "") -> None:
        """A pool changed (its spec, or the status it reported): every handle is looked at."""
        self.wake.set()

    async def run(self) -> None:
        await asyncio.gather(self._follow(), self._keep())

    async def _follow(self) -> None:
        fresh: dict[str, dict[str, Any]] = {}
        async for kind, obj in informer.follow(
            self.kube, SANDBOX_POOL_SCALES, self.namespace, what="SandboxPoolScales"
        ):
            name = str((obj.get("metadata") or {}).get("name") or "")
            if kind == informer.LISTING:
                fresh = {}
                continue
            if kind == informer.ITEM:
                fresh[name] = obj
                continue
            if kind == informer.LISTED:
                self.handles = fresh
                self.synced.set()
            elif kind == "DELETED":
                self.handles.pop(name, None)
            else:
                self._store(obj)
            self.wake.set()

    def _store(self, obj: dict[str, Any]) -> None:
        """Keeps the newer of what we hold and `obj` (our own writes come back before the
        watch echoes them; a late event must not roll a handle back)."""
        name = obj["metadata"]["name"]
        held = self.handles.get(name)
        if held is not None and older(_rv(obj), _rv(held)):
            return
        self.handles[name] = obj

    async def _keep(self) -> None:
        failures = 0
        while True:
            await self.wake.wait()
            self.wake.clear()
            if not (self.synced.is_set() and self.pools.synced.is_set()):
                continue
            try:
                await self.sync()
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as err:  # the API server away: try again, woken or not
                failures += 1
                log.warning("scale targets: %r", err)
                await backoff.sleep(failures, base=1.0, cap=30.0)
                self.wake.set()

    async def sync(self) -> None:
        served = self.pools.pools
        wanted = {n: p for n, p in served.items() if external(p)}
        for name, handle in list(self.handles.items()):
            # A served pool that left External mode. Handles of pools this installation does not
            # serve are another's (same sandbox namespace); a deleted pool's goes with it (the
            # garbage collector follows its owner reference).
            if name in served and name not in wanted and _ours(handle):
                with contextlib.suppress(ApiError):  # gone, or changed: the next round decides
                    await self.kube.delete(
                        SANDBOX_POOL_SCALES,
                        name,
                        self.namespace,
                        resource_version=handle["metadata"]["resourceVersion"],
                    )
                self.handles.pop(name, None)
                self._passed.pop(name, None)
        for name, pool in wanted.items():
            held = self.handles.get(name)
            if held is None:
                try:
                    self._store(
                        await self.kube.create(
                            SANDBOX_POOL_SCALES, handle_body(pool), self.namespace
                        )
                    )
                except ApiError as err:
                    if err.status != 409:  # already there: the watch brings it
                        raise
                continue
            await self._step(pool, held)

    async def _step(self, pool: Pool, handle: dict[str, Any]) -> None:
        meta = handle["metadata"]
        generation = int(meta.get("generation") or 1)
        status = handle.get("status") or {}
        if status.get("observedGeneration") != generation:
            asked = int((handle.get("spec") or {}).get("replicas") or 0)
            if asked != pool.spec.size or asked != self._passed.get(pool.name, asked):
                # Once per generation: the pool's own scale subresource, bounds applied there.
                size = {"spec": {"replicas": asked}}
                await self.kube.patch(SANDBOX_POOLS, pool.name, size, sub="scale")
                self._passed[pool.name] = asked
                log.info("SandboxPool %s: size %d from its %s", pool.name, asked, KIND)
        want = handle_status(pool, generation)
        if {k: status.get(k) for k in want} != want:
            with contextlib.suppress(ApiError):  # deleted meanwhile: recreated next round
                self._store(
                    await self.kube.patch_status(
                        SANDBOX_POOL_SCALES, pool.name, want, self.namespace
                    )
                )


def _ours(handle: dict[str, Any]) -> bool:
    labels = (handle.get("metadata") or {}).get("labels") or {}
    return labels.get(podspec.MANAGED_BY) == podspec.OPERATOR


def _rv(obj: dict[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion") or "")
