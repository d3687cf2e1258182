"""Warm pools: keep each `SandboxPool`'s ready pods at its size (fixed, or autoscale.py's).

One keeper task per pool. It creates what is missing, replaces pods that are stale (template
changed), broken (finished while warm) or slow (not ready in time), and reports counts in the
pool's status. Failures to create are retried with backoff; the target never shrinks because of
them. Creations are tracked until the watch sees them (the Job controller's "expectations"), so a
lagging cache does not cause over-provisioning. Pods the scheduler cannot place are counted
and waited for, never replaced; while there are any, the pool grows by at most one pod per
backoff step.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from codeexec import autoscale, backoff, clock, informer, metrics, podspec, tenants
from codeexec.api.models import API_VERSION, SandboxPoolSpec
from codeexec.kube.client import NAMESPACES, PODS, SANDBOX_POOLS, ApiError, Kube
from codeexec.kube.events import Recorder
from codeexec.listeners import Listeners, Pulse
from codeexec.podcache import PodCache, PodView, Touched
from codeexec.poddelete import delete_pod
from codeexec.poolstatus import Counts, in_use_ratio, news, ready_condition, schedulable_condition
from codeexec.refill import Refill
from codeexec.settings import selector_matches
from codeexec.status import merge_conditions, timestamp

log = logging.getLogger(__name__)

CREATE_BURST = 8
MAX_NAME = podspec.MAX_LABEL_VALUE  # a pool's name is a label value on its pods
# A warm pod is replaced this long before it could no longer take the pool's longest execution:
# time for its successor to start and warm (images are cached; a start takes seconds).
RECYCLE_MARGIN_SECONDS = 300
# Each claim changes a pool's counts; writing every change would add two or three status
# writes per execution (claimed, replacement warming, ready again: 2.9 per execution measured
# in make bench's warm series at 1 s). Counts alone are written at most every 5 s, which is
# what an HPA (15 s sync) and `kubectl get` need; a change of anything else (desired size,
# scaling, generation, template, schedulability, a condition flipping) at most once a second.
# The gauges always move at once.
STATUS_INTERVAL_SECONDS = 1.0
COUNTS_INTERVAL_SECONDS = 5.0
# An autoscaled pool's keeper looks at its demand every second (in memory; the status is still
# written only when it changes): an execution arriving at an empty pool waits at most this
# long, plus the pod's warm-up, for its pod to be started.
AUTOSCALE_INTERVAL_SECONDS = 1.0
IDLE_INTERVAL_SECONDS = 5.0
# A keeper looks at most once in this long: one run's pod changes come in a burst (the claim's
# echo, the kubelet's observedGeneration 16-25 ms later, the finalizer's release, the deletion,
# the kubelet's stop reports; then the replacement's creation, binding and four status reports),
# and each look used to be one reconcile. A change that comes alone is looked at at once; its
# replacement starts at most this much later, against a warm-up of ~3.5 s.
GATHER_SECONDS = 0.05
# While pods of a pool cannot be scheduled, one more pod is tried after 5 s, doubling to 5 min.
UNSCHEDULABLE_BASE_SECONDS = 5.0
UNSCHEDULABLE_CAP_SECONDS = 300.0
# An execution naming a pool the API server has but the pool watch has not brought yet (both
# applied at once, or the watch retrying: its backoff is capped at 30 s) waits this long for
# it, instead of failing on a registry that lags.
REGISTRY_WAIT_SECONDS = 30.0


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
    uid: str = ""
    demand: autoscale.Demand = field(default_factory=autoscale.Demand)
    desired: int | None = None
    scale_reason: str = ""
    scale_time: str | None = None
    # Growth while pods are unschedulable: the next try and how many came before it.
    unschedulable_streak: int = 0
    grow_after: float = 0.0
    # Replacements held back until the run they replace has ended (refill.py).
    refill: Refill = field(default_factory=Refill)
    refill_due: float | None = None
    gauges: tuple[Counts, int] | None = None  # as last set on the pool's metrics

    def target(self) -> int:
        return self.spec.size if self.desired is None else self.desired


class PoolManager:
    def __init__(
        self,
        kube: Kube,
        cache: PodCache,
        namespace: str,
        selector: str = "",
        *,
        events: Recorder | None = None,
        events_namespace: str = "",
    ) -> None:
        self.kube = kube
        self.cache = cache
        self.namespace = namespace
        self.selector = selector
        self.pools: dict[str, Pool] = {}
        self.synced = asyncio.Event()
        self._registered = Pulse()  # fired at each pool upserted
        # Executions waiting for a pod of a pool (claim.Broker.waiting, wired at start-up).
        self.queue_depth: Callable[[str], int] = lambda _pool: 0
        # Called once a pool's status is written and recorded (scaletarget.ScaleTargets): its
        # watch event may come back before the write's answer, when `last_status` is still old.
        self._reported: Listeners[str] = Listeners("pool report")
        cache.listen(self._pods_changed)
        # Scale changes are Events on the SandboxPool, posted in the operator's own namespace
        # (a cluster-scoped object's Events would otherwise need rights in `default`).
        self.events = events
        self.events_namespace = events_namespace

    def on_report(self, listener: Callable[[str], None]) -> None:
        """`listener` is called with the pool's name after each pool status this manager writes
        and records."""
        self._reported.add(listener)

    # --- registry -----------------------------------------------------------------------------

    async def run(self, on_change: Callable[[], Awaitable[None]] | None = None) -> None:
        """Follows the served SandboxPools (informer.follow): each list replaces what was known.

        Our own watch, not Kopf's: Kopf starts no watch at all, cluster-scoped resources
        included, while no namespace matches its namespace globs (`team-*` before the first
        team exists), and pools created then were never served."""
        listed: set[str] = set()
        async for kind, obj in informer.follow(
            self.kube, SANDBOX_POOLS, what="SandboxPools", label_selector=self.selector or None
        ):
            if kind == informer.LISTING:
                listed = set()
                continue
            if kind == informer.ITEM:
                listed.add(obj["metadata"]["name"])
                self.upsert(obj)
                continue
            if kind == informer.LISTED:
                for gone in set(self.pools) - listed:  # deleted while no watch ran
                    await self.remove(gone)
                self.synced.set()
            elif kind == "DELETED":
                # Deleted, or relabelled out of this installation's selector.
                await self.remove(obj["metadata"]["name"])
            else:
                self.upsert(obj)
            if on_change is not None:
                await on_change()

    def serves(self, body: dict[str, Any]) -> bool:
        return selector_matches(self.selector, body["metadata"].get("labels"))

    def upsert(self, body: dict[str, Any]) -> None:
        name = body["metadata"]["name"]
        if len(name) > MAX_NAME:
            # The CRD refuses such names; one stored before that rule would make every pod
            # creation fail (the pool name is a label value on its pods).
            log.error("SandboxPool %s: name over %d characters; not served", name[:70], MAX_NAME)
            return
        if not self.serves(body):
            # Relabelled away from this installation: let go of it.
            if name in self.pools:
                asyncio.get_running_loop().create_task(self.remove(name))
            return
        spec = _parse_spec(body)
        if isinstance(spec, str):
            log.error("SandboxPool %s has an invalid spec: %s", name, spec)
            return
        pool = self.pools.get(name)
        if pool is None:
            pool = self.pools[name] = Pool(name=name, spec=spec)
            pool.conditions = list((body.get("status") or {}).get("conditions") or [])
        pool.spec = spec
        pool.uid = str(body["metadata"].get("uid") or "")
        pool.generation = int(body["metadata"].get("generation") or 0)
        pool.template = podspec.template_hash(spec)
        if pool.task is None or pool.task.done():
            pool.task = asyncio.create_task(self._keep(pool), name=f"pool-keeper/{name}")
        pool.wake.set()
        self._registered.fire()

    async def remove(self, name: str) -> None:
        pool = self.pools.pop(name, None)
        for gauge in metrics.POOL_GAUGES:
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
            if pool is None and await self._catch_up(language, name):
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
        defaults = self._defaults(language)
        if not defaults and await self._catch_up(language, None):
            defaults = self._defaults(language)
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

    def _defaults(self, language: str) -> list[Pool]:
        found = (p for p in self.pools.values() if _default_for(p.spec, language))
        return sorted(found, key=lambda p: p.name)

    async def _catch_up(self, language: str, name: str | None) -> bool:
        """Whether the registry now holds what the API server has for `name` (or, without a
        name, `language`'s default pools) that it lacked: read from the API server, then
        waited for through the pool watch (never taken from the read itself: an answer that
        comes after the watch's deletion would bring a deleted pool back to life)."""
        try:
            if name:
                found = [await self.kube.get(SANDBOX_POOLS, name)]
            else:
                listed = await self.kube.list(SANDBOX_POOLS, label_selector=self.selector or None)
                found = listed.get("items") or []
        except ApiError as err:
            if err.not_found:
                return False
            raise
        wanted = set()
        for body in found:
            spec = _parse_spec(body)
            servable = self.serves(body) and len(body["metadata"]["name"]) <= MAX_NAME
            if servable and not isinstance(spec, str) and (name or _default_for(spec, language)):
                wanted.add(body["metadata"]["name"])
        ends = clock.monotonic() + REGISTRY_WAIT_SECONDS
        while wanted - self.pools.keys():
            left = ends - clock.monotonic()
            if left <= 0:
                log.warning("SandboxPools %s exist but were not seen in time", sorted(wanted))
                return False
            await self._registered.wait(left)
        return bool(wanted)

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

    def demand(self, name: str) -> None:
        """An execution asks for a pod of pool `name`: counted, and the keeper woken (an empty
        pool starts a pod now, not at its next look)."""
        pool = self.pools.get(name)
        if pool is not None:
            pool.demand.arrived(clock.monotonic())
            pool.wake.set()

    async def stop(self) -> None:
        for pool in self.pools.values():
            if pool.task:
                pool.task.cancel()

    # --- keeper -------------------------------------------------------------------------------

    def counts(self, pool: Pool) -> Counts:
        ready = warming = claimed = unschedulable = 0
        for pod in self.cache.of_pool(pool.name):
            if pod.state == podspec.CLAIMED:
                claimed += 1
            elif pod.template == pool.template and not pod.deleting and not pod.finished:
                if pod.ready:
                    ready += 1
                else:
                    warming += 1
                    unschedulable += pod.unschedulable is not None
        return Counts(ready, warming, claimed, unschedulable, self.queue_depth(pool.name))

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
        if not pod.ready and pod.created is not None and pod.unschedulable is None:
            # An unschedulable pod is not replaced: a new one would wait for the same room
            # (the scheduler retries it by itself), and replacing it would churn every
            # readyTimeoutSeconds while the cluster is full.
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
        looked = -GATHER_SECONDS
        while True:
            since = clock.monotonic() - looked
            if since < GATHER_SECONDS:
                await asyncio.sleep(GATHER_SECONDS - since)  # the rest of the burst with it
            looked = clock.monotonic()
            pool.wake.clear()
            try:
                await self._reconcile(pool)
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as err:  # keep the pool alive through API hiccups
                failures += 1
                log.warning("pool %s: reconcile failed (%d): %r", pool.name, failures, err)
            idle = AUTOSCALE_INTERVAL_SECONDS if _autoscaled(pool) else IDLE_INTERVAL_SECONDS
            delay = idle if failures == 0 else backoff.delay(failures + 1, base=0.5, cap=30.0)
            if pool.report_due is not None:
                delay = max(0.05, min(delay, pool.report_due - clock.monotonic()))
            if pool.refill_due is not None:
                delay = max(0.01, min(delay, pool.refill_due - clock.monotonic()))
            # Woken by a change of its own pods (_pods_changed), its spec, its demand or a timer.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(pool.wake.wait(), delay)

    def _pods_changed(self, touched: Touched) -> None:
        """The pod cache changed: wake the keepers of the pools whose pods it touched (each
        keeper used to look at every change of every pool: with two pools, half of its
        reconciles, 12-20 % of the operator's CPU in make bench, found nothing of its own)."""
        for name, pool in self.pools.items():
            if touched is None or name in touched:
                pool.wake.set()

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
        self._observe_warmup(pool, now)
        counts = self.counts(pool)
        self._scale(pool, counts)
        target = pool.target()
        missing = target - counts.ready - counts.warming - len(pool.expected)
        if pool.spec.scaling is not None:
            # maxSize bounds every pod of the pool, the running ones too.
            room = pool.spec.scaling.max_size - counts.ready - counts.warming - counts.claimed
            missing = min(missing, room - len(pool.expected))
        missing = self._hold_while_unschedulable(pool, counts, missing)
        # At most CREATE_BURST pods whose placement is not known yet: a full cluster is
        # noticed (Unschedulable) before a burst has filled maxSize with pods that would wait.
        missing = min(missing, CREATE_BURST - self._unplaced(pool) - len(pool.expected))
        mono = clock.monotonic()
        pods = self.cache.of_pool(pool.name)
        pool.refill.observe((p.name for p in pods if p.state == podspec.CLAIMED and p.live), mono)
        held, pool.refill_due = pool.refill.hold(
            missing, ready=counts.ready, waiting=counts.queue, now=mono
        )
        for _ in range(max(0, min(missing - held, CREATE_BURST))):
            manifest = podspec.sandbox_pod(pool.name, pool.spec, self.namespace)
            name = manifest["metadata"]["name"]
            pool.expected[name] = now
            try:
                await self.kube.create(PODS, manifest, self.namespace)
            except ApiError:
                pool.expected.pop(name, None)
                raise
        # Surplus (the pool shrank): delete the unschedulable, then the not yet ready, then the
        # oldest warm pods (nearest their recycling) first, never claimed ones (a claim racing
        # the delete wins it: _delete_warm is conditioned on the pod's resourceVersion).
        surplus = counts.ready + counts.warming - target
        if surplus > 0:
            warm = sorted(
                (
                    p
                    for p in self.cache.of_pool(pool.name)
                    if p.state == podspec.WARM and not p.deleting and p.template == pool.template
                ),
                key=lambda p: (
                    p.unschedulable is None,
                    p.ready,
                    p.created or clock.now(),
                ),
            )
            for pod in warm[:surplus]:
                await self._delete_warm(pod)
        await self._report(pool, self.counts(pool))

    def _observe_warmup(self, pool: Pool, now: float) -> None:
        """Warm-up time samples: creation to ready, for pods this keeper saw warming."""
        demand = pool.demand
        live = set()
        for pod in self.cache.of_pool(pool.name):
            if pod.state != podspec.WARM or pod.deleting or pod.finished:
                continue
            live.add(pod.name)
            if not pod.ready:
                demand.warming.add(pod.name)
            elif pod.name in demand.warming and pod.created is not None:
                demand.warming.discard(pod.name)
                demand.warmed(now - pod.created.timestamp())
        demand.warming &= live

    def _scale(self, pool: Pool, counts: Counts) -> None:
        decision = pool.demand.target(pool.spec, clock.monotonic(), counts.queue)
        previous = pool.desired
        if previous == decision.desired:
            return
        pool.desired = decision.desired
        pool.scale_reason = decision.reason
        pool.scale_time = timestamp(clock.now())
        if previous is None:
            return  # the keeper's first look: no change to announce
        verb = "up" if decision.desired > previous else "down"
        message = (
            f"scaled {verb} from {previous} to {decision.desired} warm pods: {decision.reason}"
        )
        log.info("pool %s: %s", pool.name, message)
        if self.events is not None and self.events_namespace:
            ref = {
                "apiVersion": API_VERSION,
                "kind": "SandboxPool",
                "metadata": {
                    "name": pool.name,
                    "namespace": self.events_namespace,
                    "uid": pool.uid,
                },
            }
            self.events.record(ref, "ScaledUp" if verb == "up" else "ScaledDown", message)

    def _unplaced(self, pool: Pool) -> int:
        return sum(
            1
            for p in self.cache.of_pool(pool.name)
            if p.state == podspec.WARM and p.live and p.node is None and p.unschedulable is None
        )

    def _hold_while_unschedulable(self, pool: Pool, counts: Counts, missing: int) -> int:
        """While pods wait for room, grow by one pod per backoff step, not by `missing`:
        each would wait for the same room. The scheduler places the waiting ones when room
        appears (a node added, a pod gone)."""
        if not counts.unschedulable:
            pool.unschedulable_streak, pool.grow_after = 0, 0.0
            return missing
        if missing <= 0:
            return missing
        now = clock.monotonic()
        if now < pool.grow_after:
            return 0
        pool.unschedulable_streak += 1
        pool.grow_after = now + backoff.delay(
            pool.unschedulable_streak,
            base=UNSCHEDULABLE_BASE_SECONDS,
            cap=UNSCHEDULABLE_CAP_SECONDS,
        )
        return 1

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
        gauges = (counts, pool.target())
        if gauges != pool.gauges:  # the keeper looks at each change of its pods: most move none
            metrics.POOL_READY.labels(pool.name).set(counts.ready)
            metrics.POOL_WARMING.labels(pool.name).set(counts.warming)
            metrics.POOL_CLAIMED.labels(pool.name).set(counts.claimed)
            metrics.POOL_DESIRED.labels(pool.name).set(pool.target())
            metrics.POOL_UNSCHEDULABLE.labels(pool.name).set(counts.unschedulable)
            metrics.POOL_QUEUE_DEPTH.labels(pool.name).set(counts.queue)
            metrics.POOL_IN_USE_RATIO.labels(pool.name).set(in_use_ratio(counts))
            pool.gauges = gauges
        status = {
            "ready": counts.ready,
            "warming": counts.warming,
            "claimed": counts.claimed,
            "replicas": counts.ready + counts.warming,
            "desired": pool.target(),
            "unschedulable": counts.unschedulable,
            "queueDepth": counts.queue,
            "selector": f"{podspec.POOL_LABEL}={pool.name}",
            "lastScaleReason": pool.scale_reason,
            "lastScaleTime": pool.scale_time,
            "templateHash": pool.template,
            "observedGeneration": pool.generation,
        }
        if status == pool.last_status:
            pool.report_due = None
            return
        now = clock.monotonic()
        if now - pool.last_report < STATUS_INTERVAL_SECONDS:
            # Nothing may be written before then, news or not: the conditions (and their
            # timestamps) are worked out when it may.
            pool.report_due = pool.last_report + STATUS_INTERVAL_SECONDS
            return
        unplaced = next(
            (p.unschedulable for p in self.cache.of_pool(pool.name) if p.unschedulable), None
        )
        conditions = merge_conditions(
            pool.conditions,
            [ready_condition(pool, counts), schedulable_condition(pool, counts, unplaced)],
        )
        interval = (
            STATUS_INTERVAL_SECONDS
            if news(pool.last_status, status, pool.conditions, conditions)
            else COUNTS_INTERVAL_SECONDS
        )
        if now - pool.last_report < interval:
            pool.report_due = pool.last_report + interval
            return
        body = {**status, "conditions": conditions}
        try:
            await self.kube.patch_status(SANDBOX_POOLS, pool.name, body)
            pool.last_status = status
            pool.conditions = conditions
            pool.last_report, pool.report_due = now, None
            self._reported(pool.name)
        except ApiError as err:
            if not err.not_found:
                raise

    async def collect_orphans(self) -> None:
        """Warm pods of pools that no longer exist."""
        for pod in list(self.cache.pods.values()):
            if pod.pool not in self.pools and pod.state == podspec.WARM and not pod.deleting:
                await self._delete_warm(pod)


def _parse_spec(body: dict[str, Any]) -> SandboxPoolSpec | str:
    """The pool's spec, or why it is invalid."""
    try:
        return SandboxPoolSpec.model_validate(body.get("spec") or {})
    except ValueError as err:
        return str(err)


def _default_for(spec: SandboxPoolSpec, language: str) -> bool:
    return spec.default and spec.language == language


def _autoscaled(pool: Pool) -> bool:
    return pool.spec.scaling is not None and pool.spec.scaling.mode == "Builtin"
