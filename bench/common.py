"""What the three runs share: the cluster, an operator process of our own, watches, metrics.

Isolation from the other installations on the cluster: our own sandbox namespace, our own
tenant namespaces (the operator serves only those), pools named `bench-*` and labelled
`codeexec.io/instance=bench` (the operator serves only those), our own metrics port. Everything
we create carries `codeexec.io/bench=true` and is deleted when the run ends (and, should a run
have been killed, when the next one starts).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import json
import logging
import math
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import yaml
from prometheus_client.parser import text_string_to_metric_families

from codeexec.api.models import SandboxPoolSpec
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
from codeexec.podspec import sandbox_pod

log = logging.getLogger("bench")

REPO = Path(__file__).resolve().parent.parent
BENCH_DIR = REPO / "bench"
CLUSTER_DIR = Path(os.environ.get("CLUSTER") or REPO / ".cluster")
KUBECONFIG = CLUSTER_DIR / "kubeconfig"
LOG_DIR = CLUSTER_DIR / "logs"

PYTHON_IMAGE = "codeexec.local/python-sandbox:dev"
NODEJS_IMAGE = "codeexec.local/nodejs-sandbox:dev"
IMAGES = {"python": PYTHON_IMAGE, "nodejs": NODEJS_IMAGE}

INSTANCE_LABEL, INSTANCE = "codeexec.io/instance", "bench"
BENCH_LABEL = "codeexec.io/bench"  # on everything we create: namespaces, pools, bare pods
METRICS_PORT = int(os.environ.get("BENCH_METRICS_PORT", "18090"))
CLAIMED_BY = "codeexec.io/claimed-by"

CRDS = Resource("apiextensions.k8s.io", "v1", "customresourcedefinitions", namespaced=False)
NODES = Resource("", "v1", "nodes", namespaced=False)
SERVICE_ACCOUNTS = Resource("", "v1", "serviceaccounts")

T = TypeVar("T")


class Abort(Exception):
    """The run cannot go on (no cluster, someone else in the way); the message says why."""


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname).1s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    logging.getLogger("aiohttp").setLevel(logging.WARNING)


def utcnow() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---- statistics --------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), q in [0, 100]."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def summarize(values: list[float]) -> dict[str, float | int]:
    """n, min, mean, p50, p95, p99, max of a list of milliseconds (rounded to 0.1 ms)."""
    if not values:
        return {"n": 0}
    out: dict[str, float | int] = {"n": len(values)}
    out["min"] = min(values)
    out["mean"] = sum(values) / len(values)
    for q in (50, 95, 99):
        out[f"p{q}"] = percentile(values, q)
    out["max"] = max(values)
    return {k: (round(v, 1) if isinstance(v, float) else v) for k, v in out.items()}


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0 or math.isnan(a) or math.isnan(b):
        return None
    return round(a / b, 2)


# ---- the machine ---------------------------------------------------------------------------


def _cpu_times() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs, from /proc/stat."""
    fields = [float(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)
    total = sum(fields[:8])
    return total - idle, total


class MachineLoad:
    """How busy the whole machine was between `start` and `stop` (other engineers included)."""

    def __init__(self) -> None:
        self._start = _cpu_times()
        self._load_start = os.getloadavg()
        self._t0 = time.monotonic()

    def stop(self) -> dict[str, Any]:
        busy1, total1 = _cpu_times()
        busy0, total0 = self._start
        util = (busy1 - busy0) / (total1 - total0) if total1 > total0 else math.nan
        return {
            "seconds": round(time.monotonic() - self._t0, 1),
            "cpu_busy_percent": round(100 * util, 1),
            "loadavg_start": [round(x, 2) for x in self._load_start],
            "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        }


def machine_info() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem_kb = int(Path("/proc/meminfo").read_text().splitlines()[0].split()[1])
    return {
        "hostname": platform.node(),
        "cpu_model": model,
        "cpus": os.cpu_count(),
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


# ---- results files ------------------------------------------------------------------------


def results_paths(smoke: bool) -> tuple[Path, Path]:
    """results.json and results.md; a smoke run writes *.tmp files (ignored by git)."""
    if smoke:
        return BENCH_DIR / "results.smoke.json.tmp", BENCH_DIR / "results.smoke.md.tmp"
    return BENCH_DIR / "results.json", BENCH_DIR / "results.md"


def save_section(section: str, data: dict[str, Any], smoke: bool) -> Path:
    """Each command owns one section of results.json; the others are kept as they were."""
    path, _ = results_paths(smoke)
    doc: dict[str, Any] = {}
    if path.exists():
        with contextlib.suppress(ValueError):
            doc = json.loads(path.read_text())
    doc[section] = data
    path.write_text(json.dumps(doc, indent=2, sort_keys=False, default=str) + "\n")
    return path


def load_results(smoke: bool) -> dict[str, Any]:
    path, _ = results_paths(smoke)
    if not path.exists():
        return {}
    try:
        doc: dict[str, Any] = json.loads(path.read_text())
    except ValueError:
        return {}
    return doc


@contextlib.contextmanager
def run_lock() -> Iterator[None]:
    """One bench command at a time on this checkout: they share names and the metrics port."""
    path = BENCH_DIR / "run.lock.tmp"
    with path.open("w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SystemExit("another bench command is running (bench/run.lock.tmp)") from None
        yield


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
    for name in ("codeexecutions.codeexec.io", "sandboxpools.codeexec.io"):
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


# ---- what we create ------------------------------------------------------------------------


def namespace_manifest(name: str, *, restricted: bool = False) -> dict[str, Any]:
    labels = {BENCH_LABEL: "true"}
    if restricted:
        labels["pod-security.kubernetes.io/enforce"] = "restricted"
        labels["pod-security.kubernetes.io/enforce-version"] = "latest"
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


async def create_namespace(kube: Kube, name: str, *, restricted: bool = False) -> None:
    for _ in range(120):
        try:
            await kube.create(NAMESPACES, namespace_manifest(name, restricted=restricted))
            break
        except ApiError as err:
            if not err.conflict:
                raise
            try:
                ns = await kube.get(NAMESPACES, name)
            except ApiError as gone:
                if gone.not_found:
                    continue
                raise
            if ns.get("metadata", {}).get("deletionTimestamp"):
                await asyncio.sleep(1)  # a namespace of an earlier run is still going away
                continue
            if ns.get("metadata", {}).get("labels", {}).get(BENCH_LABEL) != "true":
                raise Abort(f"namespace {name} exists and is not ours") from err
            break
    else:
        raise TimeoutError(f"namespace {name} still terminating after 120s")

    async def has_sa() -> bool:
        try:
            await kube.get(SERVICE_ACCOUNTS, "default", name)
            return True
        except ApiError:
            return False

    await poll(has_sa, timeout=60, what=f"ServiceAccount default in {name}")


def pool_manifest(name: str, language: str, size: int, **spec: Any) -> dict[str, Any]:
    if not name.startswith("bench-"):
        raise ValueError("bench pools are named bench-*")
    return {
        "apiVersion": "codeexec.io/v1alpha1",
        "kind": "SandboxPool",
        "metadata": {"name": name, "labels": {INSTANCE_LABEL: INSTANCE, BENCH_LABEL: "true"}},
        "spec": {
            "language": language,
            "image": IMAGES[language],
            "size": size,
            "default": True,
            "resources": {"limits": {"cpu": "1", "memory": "256Mi"}},
            **spec,
        },
    }


async def create_pool(kube: Kube, name: str, language: str, size: int, **spec: Any) -> None:
    body = pool_manifest(name, language, size, **spec)
    try:
        await kube.create(SANDBOX_POOLS, body)
    except ApiError as err:
        if not err.conflict:
            raise
        await kube.patch(SANDBOX_POOLS, name, {"spec": body["spec"]})


async def pool_ready(kube: Kube, name: str) -> int:
    pool = await kube.get(SANDBOX_POOLS, name)
    return int(pool.get("status", {}).get("ready") or 0)


async def wait_pools_full(kube: Kube, sizes: dict[str, int], timeout: float = 240) -> float:
    t0 = time.monotonic()

    async def full() -> bool:
        for name, size in sizes.items():
            if await pool_ready(kube, name) < size:
                return False
        return True

    await poll(full, timeout=timeout, interval=0.25, what=f"pools full {sizes}")
    return time.monotonic() - t0


async def cleanup(kube: Kube, namespaces: list[str] | None = None) -> None:
    """Deletes our pools, then our namespaces' pods (no grace), then the namespaces.

    With `namespaces` None: everything labelled as ours (leftovers of a killed run).
    """
    pools = await kube.list(SANDBOX_POOLS, label_selector=f"{BENCH_LABEL}=true")
    for p in pools.get("items", []):
        name = p["metadata"]["name"]
        if name.startswith("bench-") and p["metadata"]["labels"].get(INSTANCE_LABEL) == INSTANCE:
            await kube.delete(SANDBOX_POOLS, name)
    if namespaces is None:
        listing = await kube.list(NAMESPACES, label_selector=f"{BENCH_LABEL}=true")
        namespaces = [n["metadata"]["name"] for n in listing.get("items", [])]
    for ns in namespaces:
        with contextlib.suppress(ApiError):
            ns_obj = await kube.get(NAMESPACES, ns)
            if ns_obj.get("metadata", {}).get("labels", {}).get(BENCH_LABEL) != "true":
                continue
            for pod in (await kube.list(PODS, ns)).get("items", []):
                await kube.delete(PODS, pod["metadata"]["name"], ns, grace_period=0)
            await kube.delete(NAMESPACES, ns)


async def wait_namespaces_gone(kube: Kube, names: list[str], timeout: float = 120) -> None:
    async def gone() -> bool:
        for ns in names:
            try:
                await kube.get(NAMESPACES, ns)
                return False
            except ApiError as err:
                if not err.not_found:
                    raise
        return True

    with contextlib.suppress(TimeoutError):
        await poll(gone, timeout=timeout, interval=1, what="namespaces gone")


def bare_pod(
    name: str, language: str, namespace: str, command: list[str], labels: dict[str, str]
) -> dict[str, Any]:
    """The hardened sandbox pod spec of a pool, running `command` instead of the runner.

    The same image, security context, limits and memory /tmp as a warm pod, so the cold
    baseline differs only in that the pod is made for the one execution.
    """
    spec = SandboxPoolSpec.model_validate(
        {
            "language": language,
            "image": IMAGES[language],
            "resources": {"limits": {"cpu": "1", "memory": "256Mi"}},
        }
    )
    pod = sandbox_pod("bench-cold", spec, namespace)
    pod["metadata"] = {
        "name": name,
        "namespace": namespace,
        "labels": {BENCH_LABEL: "true", **labels},
    }
    pod["spec"]["activeDeadlineSeconds"] = 120
    container = pod["spec"]["containers"][0]
    container["stdin"] = False
    container["stdinOnce"] = False
    container["command"] = command
    container["args"] = []
    return pod


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


# ---- our operator process ------------------------------------------------------------------


@dataclass
class ProcStats:
    cpu_seconds: float = 0.0
    rss_bytes: int = 0
    hwm_bytes: int = 0


def read_proc(pid: int) -> ProcStats | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    # Fields after the command name (which may hold spaces) start at state (field 3).
    fields = stat.rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    values: dict[str, int] = {}
    for line in status.splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) * 1024
    return ProcStats(cpu, values.get("VmRSS", 0), values.get("VmHWM", 0))


@dataclass
class Sampler:
    """Samples CPU time and RSS of the operator's processes (one per (re)start)."""

    interval: float = 0.1
    per_pid: dict[int, ProcStats] = field(default_factory=dict)
    series: list[tuple[float, int, float, int]] = field(default_factory=list)
    _pids: list[int] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _t0: float = field(default_factory=time.monotonic)

    def watch(self, pid: int) -> None:
        self._pids.append(pid)
        self.per_pid.setdefault(pid, ProcStats())
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="proc-sampler", daemon=True)
            self._thread.start()

    def sample(self, pid: int) -> None:
        st = read_proc(pid)
        if st is None:
            return
        known = self.per_pid[pid]
        known.cpu_seconds = max(known.cpu_seconds, st.cpu_seconds)
        known.rss_bytes = max(known.rss_bytes, st.rss_bytes)
        known.hwm_bytes = max(known.hwm_bytes, st.hwm_bytes)
        self.series.append((time.monotonic() - self._t0, pid, st.cpu_seconds, st.rss_bytes))
        if len(self.series) > 200_000:
            del self.series[: len(self.series) // 2]

    def _loop(self) -> None:
        while not self._stop.is_set():
            for pid in list(self._pids[-1:]):
                self.sample(pid)
            self._stop.wait(self.interval)

    def cpu_seconds(self) -> float:
        for pid in self._pids[-1:]:
            self.sample(pid)
        return sum(s.cpu_seconds for s in self.per_pid.values())

    def peak_rss(self) -> int:
        for pid in self._pids[-1:]:
            self.sample(pid)
        return max([max(s.rss_bytes, s.hwm_bytes) for s in self.per_pid.values()] or [0])

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)


class Operator:
    """`python -m bench.opwrap operator` (the operator, with its API requests counted)."""

    def __init__(
        self,
        *,
        sandbox_namespace: str,
        namespaces: list[str],
        log_name: str,
        env: dict[str, str] | None = None,
    ) -> None:
        self.sandbox_namespace = sandbox_namespace
        self.namespaces = namespaces
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        self.log_path = LOG_DIR / f"{log_name}.log"
        self.extra_env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.sampler = Sampler()
        self.starts = 0
        self.kills = 0
        self._http: aiohttp.ClientSession | None = None

    @property
    def port(self) -> int:
        return METRICS_PORT

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def spawn(self) -> float:
        """Starts the process; returns time.monotonic() of the start."""
        if self.alive():
            raise RuntimeError("operator already running")
        env = {
            **os.environ,
            "KUBECONFIG": str(KUBECONFIG),
            "CODEEXEC_SANDBOX_NAMESPACE": self.sandbox_namespace,
            "CODEEXEC_NAMESPACES": ",".join(self.namespaces),
            "CODEEXEC_POOL_SELECTOR": f"{INSTANCE_LABEL}={INSTANCE}",
            "CODEEXEC_METRICS_PORT": str(self.port),
            "CODEEXEC_LEADER_ELECTION": "false",
            "PYTHONUNBUFFERED": "1",
            **self.extra_env,
        }
        env.pop("CODEEXEC_FAILPOINTS", None)
        with self.log_path.open("ab") as fh:
            fh.write(f"\n=== {utcnow()} bench operator start #{self.starts + 1} ===\n".encode())
        log_fh = self.log_path.open("ab")
        t0 = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.opwrap", "operator"]
            + (["-v"] if os.environ.get("BENCH_OPERATOR_VERBOSE") else []),
            env=env,
            stdout=log_fh,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            start_new_session=True,  # a Ctrl-C of make is ours to handle, not the child's
        )
        log_fh.close()
        self.starts += 1
        self.sampler.watch(self.proc.pid)
        return t0

    async def http(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
        return self._http

    async def ready(self) -> bool:
        if not self.alive():
            raise RuntimeError(
                f"operator exited ({self.proc and self.proc.returncode}); see {self.log_path}"
            )
        try:
            session = await self.http()
            async with session.get(f"http://127.0.0.1:{self.port}/readyz") as resp:
                return resp.status == 200
        except (aiohttp.ClientError, OSError, TimeoutError):
            return False

    async def wait_ready(self, t0: float | None = None, timeout: float = 120) -> float:
        start = time.monotonic() if t0 is None else t0
        await poll(self.ready, timeout=timeout, interval=0.05, what="operator /readyz")
        return time.monotonic() - start

    async def start(self, timeout: float = 120) -> float:
        """Spawns and waits for /readyz; returns the seconds it took."""
        t0 = self.spawn()
        return await self.wait_ready(t0, timeout)

    async def metrics(self) -> Metrics:
        session = await self.http()
        async with session.get(f"http://127.0.0.1:{self.port}/metrics") as resp:
            return Metrics.parse(await resp.text())

    def kill(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.sampler.sample(self.proc.pid)
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)
            self.kills += 1

    def stop(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.sampler.sample(self.proc.pid)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()

    async def close(self) -> None:
        self.stop()
        self.sampler.stop()
        if self._http is not None:
            await self._http.close()

    def log_tail(self, lines: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def log_warnings(self, since_bytes: int = 0) -> list[str]:
        """WARNING/ERROR lines of the operator's log (after `since_bytes`)."""
        try:
            with self.log_path.open("rb") as fh:
                fh.seek(since_bytes)
                text = fh.read().decode(errors="replace")
        except OSError:
            return []
        return [
            line
            for line in text.splitlines()
            if " WARNING " in line or " ERROR " in line or "Traceback" in line
        ]

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0


# ---- Prometheus text ------------------------------------------------------------------------

LabelKey = tuple[tuple[str, str], ...]


@dataclass
class Metrics:
    """Samples of one scrape: {sample name: {sorted labels: value}}."""

    samples: dict[str, dict[LabelKey, float]]

    @classmethod
    def parse(cls, text: str) -> Metrics:
        samples: dict[str, dict[LabelKey, float]] = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                key = tuple(sorted(s.labels.items()))
                samples.setdefault(s.name, {})[key] = float(s.value)
        return cls(samples)

    def total(self, name: str, **match: str) -> float:
        return sum(
            v
            for k, v in self.samples.get(name, {}).items()
            if all(dict(k).get(mk) == mv for mk, mv in match.items())
        )

    def by(self, name: str, label_names: tuple[str, ...], **match: str) -> dict[str, float]:
        out: dict[str, float] = {}
        for k, v in self.samples.get(name, {}).items():
            labels = dict(k)
            if all(labels.get(mk) == mv for mk, mv in match.items()):
                key = " ".join(labels.get(n, "") for n in label_names)
                out[key] = out.get(key, 0.0) + v
        return out


def counter_delta(
    before: Metrics, after: Metrics, name: str, label_names: tuple[str, ...], **match: str
) -> dict[str, float]:
    a, b = after.by(name, label_names, **match), before.by(name, label_names, **match)
    out = {k: v - b.get(k, 0.0) for k, v in a.items()}
    return {k: v for k, v in sorted(out.items(), key=lambda kv: -kv[1]) if v}


def histogram_delta(before: Metrics, after: Metrics, name: str, **match: str) -> dict[str, Any]:
    """count, mean and bucket-interpolated p50/p95/p99 (ms) of a histogram between scrapes."""

    def buckets(m: Metrics) -> dict[float, float]:
        out: dict[float, float] = {}
        for k, v in m.samples.get(f"{name}_bucket", {}).items():
            labels = dict(k)
            if all(labels.get(mk) == mv for mk, mv in match.items()):
                le = float(labels["le"])
                out[le] = out.get(le, 0.0) + v
        return out

    b_after, b_before = buckets(after), buckets(before)
    cum = sorted((le, b_after[le] - b_before.get(le, 0.0)) for le in b_after)
    count = after.total(f"{name}_count", **match) - before.total(f"{name}_count", **match)
    total = after.total(f"{name}_sum", **match) - before.total(f"{name}_sum", **match)
    out: dict[str, Any] = {"count": int(count)}
    if count <= 0:
        return out
    out["mean_ms"] = round(1000 * total / count, 1)
    for q in (50, 95, 99):
        out[f"p{q}_ms"] = _bucket_quantile(cum, count, q / 100)
    return out


def _bucket_quantile(cum: list[tuple[float, float]], count: float, q: float) -> float | None:
    rank = q * count
    prev_le, prev_c = 0.0, 0.0
    for le, c in cum:
        if c >= rank:
            if math.isinf(le):
                return None  # above the highest finite bucket
            if c == prev_c:
                return round(1000 * le, 1)
            return round(1000 * (prev_le + (le - prev_le) * (rank - prev_c) / (c - prev_c)), 1)
        prev_le, prev_c = le, c
    return None


def only(text: str, prefixes: tuple[str, ...]) -> str:
    """The lines of a Prometheus text page that belong to metrics named `prefixes*`.

    The API server's page is megabytes; parsing all of it in Python blocks our event loop for
    seconds (and so delays every timestamp we take), so we keep what we read first."""
    keep = []
    for line in text.splitlines():
        name = line.split(" ", 3)[2] if line.startswith("# ") and line.count(" ") >= 2 else line
        if name.startswith(prefixes):
            keep.append(line)
    return "\n".join(keep) + "\n"


APISERVER_METRICS = ("apiserver_request_total", "apiserver_request_duration_seconds")
KUBELET_METRICS = (
    "kubelet_pod_start_sli_duration_seconds",
    "kubelet_pod_start_duration_seconds",
    "kubelet_pod_worker_duration_seconds",
    "kubelet_runtime_operations_duration_seconds",
)


async def apiserver_metrics(kube: Kube) -> Metrics:
    return Metrics.parse(only(await raw_get(kube, "/metrics", timeout=60), APISERVER_METRICS))


async def kubelet_metrics(kube: Kube) -> Metrics | None:
    nodes = (await kube.list(NODES)).get("items", [])
    if not nodes:
        return None
    name = nodes[0]["metadata"]["name"]
    try:
        text = await raw_get(kube, f"/api/v1/nodes/{name}/proxy/metrics", 60)
        return Metrics.parse(only(text, KUBELET_METRICS))
    except (ApiError, aiohttp.ClientError, OSError, TimeoutError) as err:
        log.warning("kubelet metrics unavailable: %r", err)
        return None


# ---- running a whole command ----------------------------------------------------------------


def run_main(coro: Awaitable[int], *, deadline_s: float) -> int:
    """asyncio.run with an overall deadline and SIGTERM/SIGINT turned into cancellation
    (so every `finally` cleans up)."""

    async def guarded() -> int:
        task = asyncio.ensure_future(coro)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        done, _ = await asyncio.wait({task}, timeout=deadline_s)
        if not done:
            log.error("run did not finish within %.0fs: stopping it", deadline_s)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task  # its finally blocks clean up
            return 3
        try:
            return task.result()
        except Abort as err:
            log.error("%s", err)
            return 4
        except asyncio.CancelledError:
            log.error("interrupted")
            return 130
        except TimeoutError as err:
            log.error("gave up: %s", err)
            return 3

    return asyncio.run(guarded())


def fmt_ms(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.0f}" if v >= 100 else f"{v:.1f}"


def md_table(headers: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(str(c) for c in row) + " |")
    return "\n".join(lines)


# ---- other operators on the cluster ---------------------------------------------------------


async def foreign_operator(kube: Kube, namespace: str, *, watch_s: float = 6) -> str | None:
    """Whether another operator serves `namespace` (one started without CODEEXEC_NAMESPACES
    watches every namespace): a canary execution must stay untouched while ours is not running.
    Returns what touched it, or None."""
    name = f"canary-{os.getpid()}-{int(time.time())}"
    body = {
        "apiVersion": "codeexec.io/v1alpha1",
        "kind": "CodeExecution",
        "metadata": {"name": name, "labels": {BENCH_LABEL: "canary"}},
        "spec": {"language": "python", "code": "def main():\n    return 0\n", "pool": "bench-none"},
    }
    await kube.create(CODE_EXECUTIONS, body, namespace)
    try:
        deadline = time.monotonic() + watch_s
        while time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            status = (await kube.get(CODE_EXECUTIONS, name, namespace)).get("status") or {}
            if status:
                return f"{status.get('phase')} {status.get('reason')}: {status.get('message')}"
        return None
    finally:
        await kube.delete(CODE_EXECUTIONS, name, namespace)


async def wait_no_foreign_operator(kube: Kube, namespace: str, timeout: float) -> None:
    """Waits (bounded) until no other operator serves our tenant namespace; else exits."""
    deadline = time.monotonic() + timeout
    while True:
        seen = await foreign_operator(kube, namespace)
        if seen is None:
            return
        if time.monotonic() > deadline:
            raise Abort(
                f"another codeexec operator serves namespace {namespace} (it wrote {seen!r} "
                "on our canary): it would race ours for every execution. Stop it, or start it "
                "with CODEEXEC_NAMESPACES set to its own namespaces, and run again."
            )
        log.warning(
            "another operator serves %s (%s); waiting for it to stop (up to %.0fs more)",
            namespace,
            seen,
            deadline - time.monotonic(),
        )
        await asyncio.sleep(30)


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


async def on_cluster(args: Any, body: Callable[[Kube, Any], Awaitable[int]]) -> int:
    """Runs one benchmark against the reachable cluster and closes the connection after."""
    kube = await wait_cluster(timeout=args.cluster_timeout)
    try:
        return await body(kube, args)
    finally:
        await kube.close()


async def fresh_start(kube: Kube, namespaces: list[str], timeout: float = 120) -> bool:
    """CRDs present, images on the node, no leftovers of a killed run in `namespaces`."""
    await ensure_crds(kube)
    present = await images_present(kube)
    if not all(present.values()):
        log.error("sandbox images missing on the node: %s (run make images)", present)
        return False
    await cleanup(kube)
    await wait_namespaces_gone(kube, namespaces, timeout=timeout)
    return True


async def teardown(
    kube: Kube,
    tasks: list[asyncio.Task[None]],
    pools: Iterable[str],
    op: Any,
    namespaces: list[str],
) -> None:
    """Stops a run's helpers, its pools (while the operator can still see them), the operator,
    then removes the run's namespaces."""
    for t in tasks:
        t.cancel()
    for t in tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await t
    with contextlib.suppress(Exception):
        for pool in pools:
            await kube.delete(SANDBOX_POOLS, pool)
        await asyncio.sleep(1)
    await op.close()
    with contextlib.suppress(Exception):
        await cleanup(kube, namespaces)


def bench_main(
    parse: Callable[[list[str] | None], Any],
    run: Callable[[Any], Awaitable[int]],
    argv: list[str] | None = None,
) -> int:
    args = parse(argv)
    setup_logging(args.verbose)
    deadline = (1200 if args.smoke else 3600) + args.cluster_timeout
    with run_lock():
        return run_main(run(args), deadline_s=deadline)


def add_common_args(p: argparse.ArgumentParser) -> None:
    """The options every benchmark command takes."""
    p.add_argument("--cluster-timeout", type=float, default=900)
    p.add_argument(
        "--foreign-wait",
        type=float,
        default=600,
        help="seconds to wait for another operator serving every namespace to go away",
    )
    p.add_argument("-v", "--verbose", action="store_true")


def smoke_defaults(p: argparse.ArgumentParser, argv: list[str] | None, **defaults: Any) -> None:
    """With --smoke, smaller defaults; options given explicitly still win."""
    if "--smoke" in (sys.argv[1:] if argv is None else argv):
        p.set_defaults(**defaults)
