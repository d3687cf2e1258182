"""Warm pools: keep each `SandboxPool`'s ready pods at its size.

One keeper task per pool. It creates what is missing, replaces pods that are stale (template
changed), broken (finished while warm) or slow (not ready in time), and reports counts in the
pool's status. Failures to create are retried with backoff; the target never shrinks because of
them. Creations are tracked until the watch sees them (the Job controller's "expectations"), so a
lagging cache does not cause over-provisioning.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

from codeexec import backoff, clock, metrics, podspec, tenants
from codeexec.api.models import SandboxPoolSpec
from codeexec.kube.client import NAMESPACES, PODS, SANDBOX_POOLS, ApiError, Kube
from codeexec.podcache import PodCache, PodView
from codeexec.poddelete import delete_pod
from codeexec.settings import selector_matches
from codeexec.status import condition, merge_conditions

log = logging.getLogger(__name__)

CREATE_BURST = 8
# A warm pod is replaced this long before it could no longer take the pool's longest execution:
# time for its successor to start and warm (images are cached; a start takes seconds).
RECYCLE_MARGIN_SECONDS = 300
# Each claim changes a pool's counts; writing every change would add a status write per
# execution. Counts are written at most once a second (the gauges always move at once).
STATUS_INTERVAL_SECONDS = 1.0


@dataclass
class Pool:
    name: str
    spec: SandboxPoolSpec
    generation: int = 0
    template: str = ""
    expected: dict[str, float] = field(default_factory=dict)
    task: asyncio.Task[None] | None = None
    last_status: dict[str, Any] = field(default_factory=dict)
    last_report: float = 0.0
    report_due: float | None = None
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    # As last written (or found at start): a condition keeps its transition time until it flips.
    conditions: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class Counts:
    ready: int
    warming: int
    claimed: int


def ready_condition(pool: Pool, counts: Counts) -> dict[str, Any]:
    """Ready means serving: a pool that hands out pods is Ready while it refills (health tools
    such as Argo CD and kstatus read Ready=False as unhealthy). False only until its first pod
    is ready, or while it has neither a ready nor a claimed pod and never served."""
    size = pool.spec.size
    message = f"{counts.ready}/{size} warm pods ready, {counts.warming} warming"
    message += f", {counts.claimed} running" if counts.claimed else ""
    served = any(c.get("type") == "Ready" and c.get("status") == "True" for c in pool.conditions)
    if counts.ready >= size:
        return condition("Ready", True, "Full", message, generation=pool.generation)
    if counts.ready or counts.claimed or served:
        return condition("Ready", True, "Refilling", message, generation=pool.generation)
    return condition("Ready", False, "Warming", message, generation=pool.generation)


class PoolManager:
    def __init__(self, kube: Kube, cache: PodCache, namespace: str, selector: str = "") -> None:
        self.kube = kube
        self.cache = cache
        self.namespace = namespace
        self.selector = selector
        self.pools: dict[str, Pool] = {}
        self.synced = asyncio.Event()

    # --- registry -----------------------------------------------------------------------------

    async def initial_sync(self) -> None:
        listing = await self.kube.list(SANDBOX_POOLS, label_selector=self.selector or None)
        for item in listing.get("items", []):
            self.upsert(item)
        self.synced.set()

    def serves(self, body: dict[str, Any]) -> bool:
        return selector_matches(self.selector, body["metadata"].get("labels"))

    def upsert(self, body: dict[str, Any]) -> None:
        name = body["metadata"]["name"]
        if len(name) > podspec.MAX_LABEL_VALUE:
            # The CRD refuses such names; one stored before that rule would make every pod
            # creation fail (the pool name is a label value on its pods).
            log.error(
                "SandboxPool %s: name over %d characters; not served",
                name[:70],
                podspec.MAX_LABEL_VALUE,
            )
            return
        if not self.serves(body):
            # Relabelled away from this installation: let go of it.
            if name in self.pools:
                asyncio.get_running_loop().create_task(self.remove(name))
            return
        try:
            spec = SandboxPoolSpec.model_validate(body.get("spec") or {})
        except ValueError as err:
            log.error("SandboxPool %s has an invalid spec: %s", name, err)
            return
        pool = self.pools.get(name)
        if pool is None:
            pool = self.pools[name] = Pool(name=name, spec=spec)
            pool.conditions = list((body.get("status") or {}).get("conditions") or [])
        pool.spec = spec
        pool.generation = int(body["metadata"].get("generation") or 0)
        pool.template = podspec.template_hash(spec)
        if pool.task is None or pool.task.done():
            pool.task = asyncio.create_task(self._keep(pool), name=f"pool-keeper/{name}")
        pool.wake.set()

    async def remove(self, name: str) -> None:
        pool = self.pools.pop(name, None)
        for gauge in (metrics.POOL_READY, metrics.POOL_WARMING, metrics.POOL_CLAIMED):
            with contextlib.suppress(KeyError):
                gauge.remove(name)
        if pool and pool.task:
            pool.task.cancel()
        for pod in list(self.cache.of_pool(name)):
            if pod.state == podspec.WARM:
                await self._delete_warm(pod)

    async def resolve(self, language: str, name: str | None, namespace: str) -> Pool | str:
        """The pool for an execution in `namespace`, or why there is none.

        Checked before any claim: a namespace a pool's `spec.tenants` does not admit never gets
        its network, limits, runtime or nodes.
        """
        if name:
            pool = self.pools.get(name)
            if pool is None:
                return f"SandboxPool {name!r} does not exist"
            if pool.spec.language != language:
                return f"SandboxPool {name!r} runs {pool.spec.language}, not {language}"
            if not await self.admits(pool, namespace):
                return (
                    f"namespace {namespace!r} may not use SandboxPool {name!r} "
                    "(not among the pool's spec.tenants)"
                )
            return pool
        defaults = sorted(
            (p for p in self.pools.values() if p.spec.language == language and p.spec.default),
            key=lambda p: p.name,
        )
        if not defaults:
            return f"no default SandboxPool for {language}; set spec.pool"
        for pool in defaults:
            if await self.admits(pool, namespace):
                return pool
        names = ", ".join(repr(p.name) for p in defaults)
        return (
            f"namespace {namespace!r} may use no default SandboxPool for {language} "
            f"(not among the spec.tenants of {names}); set spec.pool"
        )

    async def admits(self, pool: Pool, namespace: str) -> bool:
        """Reads the namespace's labels only when the pool selects tenants by label.

        Read at the moment of the decision, not from a cache: a label taken away revokes access
        for the next execution. A namespace that is gone is admitted by nothing but a list.
        """
        labels: dict[str, str] | None = None
        if tenants.needs_labels(pool.spec.tenants, namespace):
            try:
                ns = await self.kube.get(NAMESPACES, namespace)
                labels = ns["metadata"].get("labels") or {}
            except ApiError as err:
                if not err.not_found:
                    raise
        return tenants.admits(pool.spec.tenants, namespace, labels)

    async def stop(self) -> None:
        for pool in self.pools.values():
            if pool.task:
                pool.task.cancel()

    # --- keeper -------------------------------------------------------------------------------

    def counts(self, pool: Pool) -> Counts:
        ready = warming = claimed = 0
        for pod in self.cache.of_pool(pool.name):
            if pod.state == podspec.CLAIMED:
                claimed += 1
            elif pod.template == pool.template and not pod.deleting and not pod.finished:
                if pod.ready:
                    ready += 1
                else:
                    warming += 1
        return Counts(ready, warming, claimed)

    def _doomed(self, pool: Pool, pod: PodView, now: float) -> str | None:
        """Why a warm pod must go, if it must."""
        if pod.deleting or pod.state != podspec.WARM:
            return None
        if pod.template != pool.template:
            return "template changed"
        if pod.finished:
            return f"ended while warm ({pod.phase}, {pod.reason or 'no reason'})"
        if pod.created is not None and now - pod.created.timestamp() > self._lifetime(pool):
            # The kubelet kills every pod at its activeDeadlineSeconds (counted from its start,
            # only ever lowered by a claim): a late claim would be cut off mid-run.
            return "too old to run the pool's longest execution before its deadline"
        if not pod.ready and pod.created is not None:
            age = now - pod.created.timestamp()
            if age > pool.spec.ready_timeout_seconds:
                return f"not ready after {int(age)}s ({pod.waiting_reason or pod.phase})"
        return None

    @staticmethod
    def _lifetime(pool: Pool) -> float:
        """How long a warm pod may wait for a claim: its deadline minus the longest execution
        the pool allows, the runner's slack and a margin for the replacement to warm up."""
        return podspec.WARM_DEADLINE_SECONDS - (
            pool.spec.max_timeout_seconds + podspec.DEADLINE_SLACK_SECONDS + RECYCLE_MARGIN_SECONDS
        )

    async def _keep(self, pool: Pool) -> None:
        await self.cache.synced.wait()
        failures = 0
        while True:
            pool.wake.clear()
            try:
                await self._reconcile(pool)
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as err:  # keep the pool alive through API hiccups
                failures += 1
                log.warning("pool %s: reconcile failed (%d): %r", pool.name, failures, err)
            delay = 5.0 if failures == 0 else backoff.delay(failures + 1, base=0.5, cap=30.0)
            if pool.report_due is not None:
                delay = max(0.05, min(delay, pool.report_due - clock.monotonic()))
            wait_cache = asyncio.ensure_future(self.cache.wait_changed(delay))
            wait_wake = asyncio.ensure_future(pool.wake.wait())
            try:
                await asyncio.wait(
                    {wait_cache, wait_wake}, timeout=delay, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                wait_cache.cancel()
                wait_wake.cancel()

    async def _reconcile(self, pool: Pool) -> None:
        now = clock.time()
        seen = {p.name for p in self.cache.of_pool(pool.name)}
        # Forget expectations the watch has confirmed, or that are too old to still arrive.
        pool.expected = {n: t for n, t in pool.expected.items() if n not in seen and now - t < 60}
        for pod in list(self.cache.of_pool(pool.name)):
            why = self._doomed(pool, pod, now)
            if why:
                log.info("pool %s: replacing pod %s: %s", pool.name, pod.name, why)
                await self._delete_warm(pod)
        counts = self.counts(pool)
        missing = pool.spec.size - counts.ready - counts.warming - len(pool.expected)
        for _ in range(max(0, min(missing, CREATE_BURST))):
            manifest = podspec.sandbox_pod(pool.name, pool.spec, self.namespace)
            name = manifest["metadata"]["name"]
            pool.expected[name] = now
            try:
                await self.kube.create(PODS, manifest, self.namespace)
            except ApiError:
                pool.expected.pop(name, None)
                raise
        # Surplus (the pool shrank): delete the newest warm pods first, never claimed ones.
        surplus = counts.ready + counts.warming - pool.spec.size
        if surplus > 0:
            warm = sorted(
                (
                    p
                    for p in self.cache.of_pool(pool.name)
                    if p.state == podspec.WARM and not p.deleting and p.template == pool.template
                ),
                key=lambda p: (p.ready, p.created or clock.now()),
            )
            for pod in warm[:surplus]:
                await self._delete_warm(pod)
        await self._report(pool, self.counts(pool))

    async def _delete_warm(self, pod: PodView) -> None:
        """Only if it is still the warm pod we saw: a claim in the meantime wins (409)."""
        try:
            await delete_pod(
                self.kube, self.namespace, pod.name, resource_version=pod.resource_version
            )
        except ApiError as err:
            if not err.conflict:
                raise
            log.debug("pod %s changed since we looked; not deleting it", pod.name)

    async def _report(self, pool: Pool, counts: Counts) -> None:
        metrics.POOL_READY.labels(pool.name).set(counts.ready)
        metrics.POOL_WARMING.labels(pool.name).set(counts.warming)
        metrics.POOL_CLAIMED.labels(pool.name).set(counts.claimed)
        status = {
            "ready": counts.ready,
            "warming": counts.warming,
            "claimed": counts.claimed,
            "templateHash": pool.template,
            "observedGeneration": pool.generation,
        }
        if status == pool.last_status:
            pool.report_due = None
            return
        now = clock.monotonic()
        if now - pool.last_report < STATUS_INTERVAL_SECONDS:
            pool.report_due = pool.last_report + STATUS_INTERVAL_SECONDS
            return
        conditions = merge_conditions(pool.conditions, [ready_condition(pool, counts)])
        body = {**status, "conditions": conditions}
        try:
            await self.kube.patch_status(SANDBOX_POOLS, pool.name, body)
            pool.last_status = status
            pool.conditions = conditions
            pool.last_report, pool.report_due = now, None
        except ApiError as err:
            if not err.not_found:
                raise

    async def collect_orphans(self) -> None:
        """Warm pods of pools that no longer exist."""
        for pod in list(self.cache.pods.values()):
            if pod.pool not in self.pools and pod.state == podspec.WARM and not pod.deleting:
                await self._delete_warm(pod)
