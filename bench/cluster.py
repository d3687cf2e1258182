"""The cluster as the runs see it: connection, readiness, CRDs, watches, an API probe.

Isolation from the other installations on the cluster: our own sandbox namespace, our own
tenant namespaces (the operator serves only those), pools named `bench-*` and labelled
`codeexec.io/instance=bench` (the operator serves only those), our own metrics port. Everything
we create carries `codeexec.io/bench=true` and is deleted when the run ends (and, should a run
have been killed, when the next one starts).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import yaml

from bench.results import REPO, summarize
from codeexec.kube import config
from codeexec.kube.client import (
    CODE_EXECUTIONS,
    NAMESPACES,
    PODS,
    SANDBOX_POOLS,
    ApiError,
    Kube,
    Resource,
)
from codeexec.podcache import PodView
from codeexec.podcache import view as pod_view

log = logging.getLogger("bench")

CLUSTER_DIR = Path(os.environ.get("CLUSTER") or REPO / ".cluster")
KUBECONFIG = CLUSTER_DIR / "kubeconfig"
LOG_DIR = CLUSTER_DIR / "logs"

PYTHON_IMAGE = "codeexec.local/python-sandbox:dev"
NODEJS_IMAGE = "codeexec.local/nodejs-sandbox:dev"
IMAGES = {"python": PYTHON_IMAGE, "nodejs": NODEJS_IMAGE}


INSTANCE_LABEL, INSTANCE = "codeexec.io/instance", "bench"
BENCH_LABEL = "codeexec.io/bench"  # on everything we create: namespaces, pools, bare pods
CLAIMED_BY = "codeexec.io/claimed-by"

CRDS = Resource("apiextensions.k8s.io", "v1", "customresourcedefinitions", namespaced=False)
NODES = Resource("", "v1", "nodes", namespaced=False)
SERVICE_ACCOUNTS = Resource("", "v1", "serviceaccounts")
DEPLOYMENTS = Resource("apps", "v1", "deployments")

T = TypeVar("T")


class Abort(Exception):
    """The run cannot go on (no cluster, someone else in the way); the message says why."""


# ---- the cluster ---------------------------------------------------------------------------


def connect() -> Kube:
    conn = config.from_kubeconfig(str(KUBECONFIG))
    if conn is None:
        raise Abort(f"no kubeconfig at {KUBECONFIG}: bring the cluster up (make cluster-up)")
    return Kube(conn, pool_size=256)


async def raw_get(kube: Kube, path: str, timeout: float = 30) -> str:
    """A GET whose answer is text (metrics, logs)."""
    async with kube.session.get(
        kube.conn.server + path,
        headers=kube.headers({"Accept": "*/*"}),
        timeout=aiohttp.ClientTimeout(total=timeout),
    ) as resp:
        text = await resp.text()
        if resp.status >= 400:
            raise ApiError(resp.status, text)
        return text


async def wait_cluster(timeout: float = 900, interval: float = 30) -> Kube:
    """Until the kubeconfig exists, the API server is ready and a node is Ready."""
    deadline = time.monotonic() + timeout
    healthy = 0  # consecutive good looks: a cluster being (re)started flaps at first
    while True:
        problem = ""
        if KUBECONFIG.exists():
            kube = connect()
            try:
                if (await raw_get(kube, "/readyz", timeout=5)).strip() == "ok":
                    nodes = (await kube.list(NODES)).get("items", [])
                    if any(_node_ready(n) for n in nodes):
                        healthy += 1
                        if healthy >= 3:
                            return kube
                        await kube.close()
                        await asyncio.sleep(2)
                        continue
                    problem = "no Ready node"
                else:
                    problem = "API server not ready"
            except (OSError, ApiError, aiohttp.ClientError, TimeoutError) as err:
                problem = f"API server: {err!r}"
            await kube.close()
            healthy = 0
        else:
            problem = f"no {KUBECONFIG}"
        if time.monotonic() > deadline:
            raise Abort(f"cluster not usable after {timeout:.0f}s: {problem}")
        log.info("waiting for the cluster (%s); next look in %.0fs", problem, interval)
        await asyncio.sleep(interval)


async def whole(kube: Kube) -> bool:
    """The API server ready and every node Ready: the cluster after a fault is whole again."""
    try:
        if (await raw_get(kube, "/readyz", timeout=5)).strip() != "ok":
            return False
        nodes = (await kube.list(NODES)).get("items", [])
    except (OSError, ApiError, aiohttp.ClientError, TimeoutError):
        return False
    return bool(nodes) and all(_node_ready(n) for n in nodes)


def _node_ready(node: dict[str, Any]) -> bool:
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in node.get("status", {}).get("conditions", [])
    )


async def node_info(kube: Kube) -> dict[str, Any]:
    nodes = (await kube.list(NODES)).get("items", [])
    out: list[dict[str, Any]] = []
    for n in nodes:
        info = n.get("status", {}).get("nodeInfo", {})
        out.append(
            {
                "name": n["metadata"]["name"],
                "kubelet": info.get("kubeletVersion"),
                "runtime": info.get("containerRuntimeVersion"),
                "allocatable": n.get("status", {}).get("allocatable", {}),
            }
        )
    pods = (await kube.list(PODS)).get("items", [])
    running = sum(1 for p in pods if p.get("status", {}).get("phase") == "Running")
    return {"nodes": out, "pods_running_cluster_wide_at_start": running}


async def images_present(kube: Kube) -> dict[str, bool]:
    nodes = (await kube.list(NODES)).get("items", [])
    names = {
        name
        for n in nodes
        for entry in n.get("status", {}).get("images", [])
        for name in entry.get("names") or []
    }
    return {image: image in names for image in IMAGES.values()}


async def ensure_crds(kube: Kube) -> None:
    """Installs the CRDs only when absent (others on the cluster may be updating them)."""
    missing = False
    for name in (
        "codeexecutions.codeexec.io",
        "sandboxpools.codeexec.io",
        "sandboxpoolscales.codeexec.io",
    ):
        try:
            await kube.get(CRDS, name)
        except ApiError as err:
            if not err.not_found:
                raise
            missing = True
    if missing:
        for crd in sorted((REPO / "crds").glob("*.yaml")):
            for doc in yaml.safe_load_all(crd.read_text()):
                if doc:
                    with contextlib.suppress(ApiError):  # the other one may exist already
                        await kube.create(CRDS, doc)
        await poll(lambda: _crds_established(kube), timeout=60, what="CRDs established")
    # A CRD just (re)applied by someone answers 429 "storage is (re)initializing" a while.
    await poll(lambda: _crds_served(kube), timeout=120, interval=1, what="CRDs served")


async def _crds_served(kube: Kube) -> bool:
    try:
        await kube.list(SANDBOX_POOLS, label_selector=f"{BENCH_LABEL}=true")
        await kube.list(CODE_EXECUTIONS, "default")
        return True
    except ApiError as err:
        log.info("CRDs not served yet: %s", err)
        return False


async def _crds_established(kube: Kube) -> bool:
    for name in ("codeexecutions.codeexec.io", "sandboxpools.codeexec.io"):
        crd = await kube.get(CRDS, name)
        conds = (crd.get("status") or {}).get("conditions") or []
        if not any(c["type"] == "Established" and c["status"] == "True" for c in conds):
            return False
    return True


async def poll(
    probe: Callable[[], Awaitable[T]],
    *,
    timeout: float,
    interval: float = 0.5,
    what: str = "condition",
) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = await probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(interval)


# ---- watches -------------------------------------------------------------------------------

EventHandler = Callable[[str, dict[str, Any]], None]


class Informer:
    """List, then watch from the list's resourceVersion; re-list on 410; forever.

    `on_event(type, obj)` sees every object once as "ADDED" after each (re)list, then each
    event in order. Runs until cancelled.
    """

    def __init__(
        self,
        kube: Kube,
        res: Resource,
        namespace: str | None,
        on_event: EventHandler,
        *,
        label_selector: str | None = None,
    ) -> None:
        self.kube, self.res, self.namespace = kube, res, namespace
        self.on_event = on_event
        self.label_selector = label_selector
        self.synced = asyncio.Event()
        self.relists = 0

    async def run(self) -> None:
        backoff = 0.2
        while True:
            try:
                listing = await self.kube.list(
                    self.res, self.namespace, label_selector=self.label_selector
                )
                self.relists += 1
                for item in listing.get("items", []):
                    self.on_event("ADDED", item)
                rv = listing["metadata"]["resourceVersion"]
                self.synced.set()
                while True:
                    async for event in self.kube.watch(
                        self.res,
                        self.namespace,
                        resource_version=rv,
                        label_selector=self.label_selector,
                        timeout_seconds=240,
                    ):
                        obj = event["object"]
                        rv = obj.get("metadata", {}).get("resourceVersion", rv)
                        if event["type"] != "BOOKMARK":
                            self.on_event(event["type"], obj)
                    backoff = 0.2
            except asyncio.CancelledError:
                raise
            except ApiError as err:
                if not err.gone:
                    log.warning("watch %s in %s: %s", self.res.plural, self.namespace, err)
            except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as err:
                log.warning("watch %s in %s broke: %r", self.res.plural, self.namespace, err)
            await asyncio.sleep(backoff)
            backoff = min(5.0, backoff * 2)


def terminal_phase(obj: dict[str, Any]) -> bool:
    return (obj.get("status") or {}).get("phase") in ("Succeeded", "Failed")


class Waiters:
    """Futures keyed by object name, resolved by an Informer when the object turns terminal."""

    def __init__(self, terminal: Callable[[dict[str, Any]], bool] = terminal_phase) -> None:
        self.terminal = terminal
        self.futures: dict[str, asyncio.Future[tuple[float, dict[str, Any]]]] = {}
        self.events: dict[str, int] = {}
        # perf_counter() at which each phase was first seen, per name.
        self.phases: dict[str, dict[str, float]] = {}

    def expect(self, name: str) -> asyncio.Future[tuple[float, dict[str, Any]]]:
        fut: asyncio.Future[tuple[float, dict[str, Any]]] = (
            asyncio.get_running_loop().create_future()
        )
        self.futures[name] = fut
        self.events[name] = 0
        self.phases[name] = {}
        return fut

    def on_event(self, type_: str, obj: dict[str, Any]) -> None:
        name = obj.get("metadata", {}).get("name", "")
        fut = self.futures.get(name)
        if fut is None or fut.done():
            return
        self.events[name] += 1
        phase = (obj.get("status") or {}).get("phase")
        if phase:
            self.phases[name].setdefault(str(phase), time.perf_counter())
        if type_ == "DELETED":
            fut.set_exception(RuntimeError(f"{name} was deleted before it finished"))
        elif self.terminal(obj):
            fut.set_result((time.perf_counter(), obj))

    def forget(self, name: str) -> None:
        self.futures.pop(name, None)
        self.events.pop(name, None)
        self.phases.pop(name, None)


class ApiProbe:
    """How responsive the API server is while we measure: a cheap GET every `interval` s.

    Separates "the operator is slow" from "the API server (or the machine) is slow"."""

    def __init__(self, kube: Kube, interval: float = 0.5) -> None:
        self.kube, self.interval = kube, interval
        self.samples: list[tuple[float, float]] = []  # (monotonic, ms); ms < 0: failed
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            t0 = time.perf_counter()
            try:
                await self.kube.get(NAMESPACES, "default")
                self.samples.append((time.monotonic(), (time.perf_counter() - t0) * 1000))
            except (ApiError, aiohttp.ClientError, OSError, TimeoutError):
                self.samples.append((time.monotonic(), -1.0))
            await asyncio.sleep(self.interval)

    def mark(self) -> int:
        return len(self.samples)

    def summary(self, since: int = 0) -> dict[str, Any]:
        window = self.samples[since:]
        ok = [ms for _, ms in window if ms >= 0]
        out: dict[str, Any] = {"get_namespace_ms": summarize(ok)}
        out["failed"] = len(window) - len(ok)
        return out

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class SandboxPods:
    """The sandbox namespace's pods, seen as the operator's pod cache sees them."""

    def __init__(self) -> None:
        self.pods: dict[str, PodView] = {}

    def on_event(self, type_: str, obj: dict[str, Any]) -> None:
        name = obj.get("metadata", {}).get("name", "")
        if type_ == "DELETED":
            self.pods.pop(name, None)
        else:
            self.pods[name] = pod_view(obj)

    def warm_ready(self, pool: str) -> int:
        return sum(1 for p in self.pods.values() if p.pool == pool and p.warm_ready)
