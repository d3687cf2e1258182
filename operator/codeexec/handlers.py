"""Kopf wiring, and nothing else: decorators that hand events to the rooms that own them.

`CodeExecution`s arrive through `@kopf.on.event`: the road keeps its own state in the
resource's status (see lifecycle), so Kopf's per-handler progress, retries and finalizers would
only add writes to the hot path without adding safety. SandboxPools come from the pool room's
own watch (`PoolManager.run`), started here.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from typing import Any

import kopf

from codeexec import finished, metrics, podspec, watchdog, web
from codeexec.api.models import GROUP, VERSION, SandboxPoolSpec
from codeexec.claim import Broker
from codeexec.controller import Executions
from codeexec.egress import EgressPolicies
from codeexec.kube import config, kopfjson
from codeexec.kube.client import (
    NAMESPACES,
    NETWORK_POLICIES,
    ApiError,
    Kube,
    new_session,
    small_tls_buffers,
)
from codeexec.kube.events import Recorder
from codeexec.kube.lease import Fence, LeaderElector, unfenced
from codeexec.lifecycle import Runtime
from codeexec.podcache import PodCache
from codeexec.pool import PoolManager
from codeexec.preattach import Preattacher
from codeexec.scaletarget import ScaleTargets
from codeexec.settings import Settings
from codeexec.supervise import supervise

log = logging.getLogger(__name__)


class State:
    """The process-wide objects, created at startup."""

    rt: Runtime
    executions: Executions
    egress: EgressPolicies
    scales: ScaleTargets
    elector: LeaderElector | None
    tasks: list[asyncio.Task[None]]
    web: Any
    watchdog: watchdog.Watchdog | None = None
    watchdog_task: asyncio.Task[None] | None = None
    closing: list[Kube]


STATE = State()
# Set to stop Kopf (passed to kopf.operator as its stop flag) once the watchdog saw a death.
STOP = asyncio.Event()
# A stop that does not finish by then ends the process anyway: after its watcher failed, Kopf
# 1.45 was seen to run the cleanup and then hang in its own shutdown (an assertion in a stream
# callback), leaving a process up, deaf and no longer serving /healthz.
HARD_EXIT_SECONDS = 30.0
EXIT_WATCHDOG = 3
_exit_timer: list[threading.Timer] = []


def _exit_later() -> None:
    """Whatever stops the operator, the process is gone HARD_EXIT_SECONDS later."""
    if _exit_timer:
        return
    timer = threading.Timer(HARD_EXIT_SECONDS, lambda: os._exit(EXIT_WATCHDOG if died() else 0))
    timer.daemon = True
    timer.start()
    _exit_timer.append(timer)


def _stop(why: str) -> None:
    STOP.set()
    _exit_later()


def died() -> str | None:
    """Why the watchdog stopped this process, if it did (the CLI turns it into an exit code)."""
    return STATE.watchdog.death if STATE.watchdog is not None else None


@kopf.on.login()
async def login(**_: Any) -> kopf.AiohttpSession:
    """Kopf gets a session made like ours: same credentials, proxy and User-Agent. It calls
    this again when the credential expires or the API server answers 401."""
    conn = config.load()
    authorization = await conn.authorization()
    session = new_session(
        conn,
        limit=0,
        component="operator",
        headers={"Authorization": authorization} if authorization else None,
    )
    return kopf.AiohttpSession(
        server=conn.server,
        aiohttp_session=session,
        default_namespace=conn.namespace,
        expiration=conn.credentials.expiry,
    )


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.posting.level = logging.WARNING
    # Every watch event runs a handler; "succeeded" lines for each would drown the log.
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    settings.queueing.idle_timeout = 60.0
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    # Scanning lets Kopf follow namespace globs (`team-*`); exact names and cluster-wide
    # watching need no namespace list permission, so skip it then.
    cfg = Settings()
    settings.scanning.disabled = not any(ch in "".join(cfg.namespaces) for ch in "*?[!")

    # Before Kopf's first list: a deeply nested object must not kill its watchers.
    kopfjson.install()
    # Before any connection: each held attach session costs 66 KiB instead of 292 KiB.
    small_tls_buffers()
    kube = Kube(config.load(), component="operator", observe=metrics.api_request)
    STATE.tasks = []
    STATE.closing = []
    dog = watchdog.Watchdog(lambda: STATE.tasks, _stop)
    dog.listen_to_kopf()
    STATE.watchdog = dog
    # Serve /healthz and /readyz from the start.
    ready, standing_by = asyncio.Event(), asyncio.Event()
    # Ready means doing its part: the leader once synced, a standby while it waits on the
    # Lease. (A PodDisruptionBudget counts ready replicas: were standbys never ready, a drain
    # could never evict the leader.) A dead watcher or loop makes it neither live nor ready.
    STATE.web = await web.start(
        cfg.metrics_port,
        lambda: (ready.is_set() or standing_by.is_set()) and dog.alive,
        lambda: dog.alive,
    )
    leadership: list[asyncio.Task[None]] = []
    STATE.elector = None
    fence: Fence = unfenced
    if cfg.leader_election:
        elector = LeaderElector(kube, cfg.lease_namespace, cfg.lease_name, cfg.identity)
        standing_by.set()
        await elector.acquire()
        standing_by.clear()
        STATE.elector = elector
        fence = elector.fence
        leadership.append(asyncio.create_task(elector.keep(), name="leader-lease"))
    ns = cfg.sandbox_namespace
    try:
        await kube.get(NAMESPACES, ns)
    except ApiError as err:
        raise kopf.PermanentError(f"sandbox namespace {ns!r} is not usable: {err}") from err
    await ensure_network_policies(kube, ns)
    egress = EgressPolicies(kube, ns, cfg.cluster_cidrs)
    try:
        # Before any pool's policy is written: its internet rule must except the nodes.
        await egress.refresh()
    except ApiError as err:
        raise kopf.PermanentError(f"cannot read the cluster's node addresses: {err}") from err
    STATE.egress = egress
    cache = PodCache(kube, ns)
    events = Recorder(kube)
    pools = PoolManager(
        kube, cache, ns, cfg.pool_selector, events=events, events_namespace=cfg.lease_namespace
    )
    preattach = Preattacher(kube, cache, ns, serves=lambda pod: pod.pool in pools.pools)
    broker = Broker(kube, cache, ns, fence=fence)
    pools.queue_depth = broker.demand
    rt = Runtime(cfg, kube, cache, pools, broker, events, preattach, fence=fence)
    STATE.rt = rt
    STATE.executions = Executions(rt)
    scales = STATE.scales = ScaleTargets(kube, pools, ns)
    # Each loop restarts itself after a crash (supervise.py); the watchdog is the last resort.
    loops = {
        "sandbox-pod-watch": cache.run,
        "preattach": preattach.run,
        "ttl-janitor": STATE.executions.janitor.run,
        "claimed-pod-sweep": STATE.executions.sweep,
        "egress-policies": lambda: egress.run(lambda: _served_specs(pools)),
        "sandboxpool-watch": lambda: pools.run(_pools_changed),
        "scale-targets": scales.run,
    }
    STATE.tasks = [
        *leadership,
        *(asyncio.create_task(supervise(n, loop), name=n) for n, loop in loops.items()),
    ]
    # Not in STATE.tasks: it watches them.
    STATE.watchdog_task = asyncio.create_task(dog.run(), name="watchdog")
    await asyncio.wait_for(pools.synced.wait(), timeout=60)  # the pool watch's first list
    await asyncio.wait_for(cache.synced.wait(), timeout=60)
    await pools.collect_orphans()
    await _leave_finished_out(settings, cfg, kube)
    ready.set()


async def _leave_finished_out(settings: kopf.OperatorSettings, cfg: Settings, kube: Kube) -> None:
    """Kopf watches only executions still to finish; finished ones come from a watch of their
    own (finished.py), on a session of its own: one long request per served namespace must not
    take the connections the road's calls need."""
    if not await finished.selectable(kube, cfg.namespaces):
        return
    settings.watching.field_selectors[GROUP, "codeexecutions"] = finished.ACTIVE
    STATE.executions.selective = True
    own = Kube(config.load(), pool_size=0, component="operator", observe=metrics.api_request)
    STATE.closing.append(own)
    watch = finished.FinishedWatch(own, cfg.namespaces, STATE.executions.observe_finished)
    name = "finished-executions"
    STATE.tasks.append(asyncio.create_task(supervise(name, watch.run), name=name))


def _served_specs(pools: PoolManager) -> dict[str, SandboxPoolSpec]:
    return {name: pool.spec for name, pool in pools.pools.items()}


async def ensure_network_policies(kube: Kube, namespace: str) -> None:
    # Older versions opened all egress to every network pool with one policy: it must go
    # before anything else, or it would keep adding to the per-pool policies.
    await kube.delete(NETWORK_POLICIES, podspec.LEGACY_ALLOW_EGRESS, namespace)
    for policy in podspec.network_policies(namespace):
        name = policy["metadata"]["name"]
        try:
            await kube.create(NETWORK_POLICIES, policy, namespace)
        except ApiError as err:
            if not err.conflict:
                raise
            await kube.patch(NETWORK_POLICIES, name, {"spec": policy["spec"]}, namespace)


@kopf.on.cleanup()
async def cleanup(**_: Any) -> None:
    # Kopf also comes here when its own orchestrator failed (a dead watcher): that is a death,
    # and this stop must end the process even if Kopf's shutdown then hangs.
    if STATE.watchdog is not None:
        problem = STATE.watchdog.check()
        if problem is not None:
            STATE.watchdog.trip(problem)
    _exit_later()
    if STATE.watchdog_task is not None:
        STATE.watchdog_task.cancel()
    await STATE.executions.stop()
    await STATE.rt.pools.stop()
    for task in STATE.tasks:
        task.cancel()
    # Only once nothing of ours acts any more may a successor start.
    await asyncio.wait(STATE.tasks, timeout=10)
    if STATE.elector is not None:
        await STATE.elector.release()
    await STATE.rt.events.drain()
    await STATE.web.cleanup()
    await STATE.rt.kube.close()
    for kube in STATE.closing:
        await kube.close()


async def _pools_changed() -> None:
    STATE.scales.changed()
    await STATE.egress.pools_changed(_served_specs(STATE.rt.pools))


@kopf.on.event(GROUP, VERSION, "codeexecutions")
async def execution_event(type: str | None, body: kopf.Body, **_: Any) -> None:
    STATE.executions.observe(type, _plain(body))


def _plain(body: kopf.Body) -> dict[str, Any]:
    # Kopf's Body is a live view; the road keeps the snapshot it was started with. Bodies are
    # decoded at most jsonbounds.MAX_DECODE_DEPTH deep (kopfjson), so the copy cannot recurse
    # past the interpreter's limit.
    import copy

    return copy.deepcopy(dict(body))
