"""The real cluster's faults for `make chaos`: a component stopped or restarted, the operator
cut off from the API server, the leader paused past its lease, the node drained.

Components are stopped and started by e2e/cluster/component.sh (the test bed's own start
functions, PID files and health checks), never by killing processes from here. Each fault
restores what it broke in a `finally`, and returns only once the cluster is whole again (the API
server ready, the node Ready): that moment ends its window (scenario.Window).

The partition drops, in the kernel, every packet the operator's processes send to the API
server's port (iptables `-m cgroup --path`, the operator started in a cgroup v2 of its own):
its connections hang as on a real network partition (no reset, no error until its own
timeouts), new connections get no answer, and nothing else on the machine (the cluster, the
bench's own watches) is cut off. A local forwarder we could pause would also isolate the
operator, but its connections would end at the forwarder, whose kernel keeps acknowledging
them: the operator would see a live peer, not a dead network. Matching by uid would need the
operator to run as another user (its own copy of the kubeconfig and of the checkout).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from bench.cluster import CLUSTER_DIR, DEPLOYMENTS, INSTANCE, NODES, poll, whole
from bench.operator import Operator
from bench.results import REPO
from bench.scenario import POOLS, SANDBOX_NS, TENANT_NS, Fault, Window
from bench.workload import create_namespace
from codeexec.kube.client import LEASES, NAMESPACES, ApiError, Kube

log = logging.getLogger("bench.chaos")

COMPONENT_SH = REPO / "e2e" / "cluster" / "component.sh"
CHART = REPO / "charts" / "codeexec-operator"
RELEASE, RELEASE_NS = "bench-chaos", "bench-chaos-system"
LEASE_NAME = "bench-chaos-leader"
# The cgroup v2 the bench's operator runs in (below the cgroup v2 root).
OPERATOR_CGROUP = "codeexec-bench-operator"
NETWORK_ERRORS = (aiohttp.ClientError, OSError, TimeoutError)


@dataclass
class Stage:
    """What every fault works with: the cluster, the bench's own operator, the options."""

    kube: Kube
    op: Operator
    args: argparse.Namespace


# ---- tools ---------------------------------------------------------------------------------


async def run_tool(*argv: str, timeout: float = 300, check: bool = True) -> str:
    """Runs a command (output logged at debug level); its combined output."""
    env = {**os.environ, "CLUSTER": str(CLUSTER_DIR), "KUBECONFIG": str(CLUSTER_DIR / "kubeconfig")}
    proc = await asyncio.create_subprocess_exec(
        *argv,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,  # a Ctrl-C of the bench must not stop a half-started component
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise RuntimeError(f"{' '.join(argv)}: no answer in {timeout:.0f} s") from None
    text = out.decode(errors="replace")
    log.debug("%s:\n%s", " ".join(argv), text)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}: {text[-1500:]}")
    return text


async def component(action: str, what: str) -> None:
    """e2e/cluster/component.sh ACTION WHAT (stop|start|restart a component, cut|mend a cgroup)."""
    await run_tool("bash", str(COMPONENT_SH), action, what)


def k8s_tool(name: str) -> str:
    """kubectl of the pinned version (e2e/cluster/versions.env), else the one on PATH."""
    pins = dict(
        line.split("=", 1)
        for line in (REPO / "e2e" / "cluster" / "versions.env").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )
    cache = Path(os.environ.get("CODEEXEC_CACHE") or Path.home() / ".cache" / "codeexec")
    pinned = cache / "bin" / f"kubernetes-{pins.get('K8S_VERSION', '')}" / name
    found = str(pinned) if pinned.exists() else shutil.which(name)
    if not found:
        raise RuntimeError(f"{name} not found (make cluster-up builds it)")
    return found


async def helm() -> str:
    """helm, built by e2e/tools.sh on first use (it prints the path)."""
    return (await run_tool("bash", str(REPO / "e2e" / "tools.sh"), timeout=900)).split()[-1]


def cgroup2_root() -> Path | None:
    """Where the cgroup v2 hierarchy is mounted (unified, or the hybrid layout's `unified`)."""
    for root in (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified")):
        if (root / "cgroup.procs").exists() and (root / "cgroup.subtree_control").exists():
            return root
    return None


def operator_cgroup() -> Path | None:
    """A cgroup of its own for the bench's operator, when we may make one (root, cgroup v2)."""
    root = cgroup2_root()
    if root is None or os.geteuid() != 0:
        return None
    path = root / OPERATOR_CGROUP
    try:
        path.mkdir(exist_ok=True)
    except OSError as err:
        log.warning("no cgroup for the operator (%s): the partition scenario cannot run", err)
        return None
    return path


def remove_cgroup(path: Path | None) -> None:
    if path is not None:
        with contextlib.suppress(OSError):  # still in use: a later run reuses it
            path.rmdir()


async def wait_whole(kube: Kube, timeout: float = 300) -> float:
    """Until the API server is ready and the node Ready; the seconds it took."""
    t0 = time.monotonic()
    await poll(lambda: whole(kube), timeout=timeout, interval=0.5, what="cluster whole")
    return time.monotonic() - t0


# ---- faults --------------------------------------------------------------------------------


class SingleOperatorFault:
    """A fault served by the bench's one operator process (restarted only if it died)."""

    name = ""

    def __init__(self, stage: Stage) -> None:
        self.stage = stage

    async def setup(self) -> None:
        await self.stage.op.ensure_ready()

    async def ensure_operator(self) -> None:
        await self.stage.op.ensure_ready()

    async def teardown(self) -> None:
        pass


class ComponentOutage(SingleOperatorFault):
    """A cluster component stopped (SIGTERM), `down_s` seconds later started again."""

    def __init__(self, stage: Stage, name: str, what: str, down_s: float) -> None:
        super().__init__(stage)
        self.name, self.what, self.down_s = name, what, down_s

    async def inject(self) -> Window:
        starts = self.stage.op.starts
        start = time.monotonic()
        try:
            await component("stop", self.what)
            stopped = time.monotonic() - start
            await asyncio.sleep(self.down_s)
        finally:
            t_start = time.monotonic()
            await component("start", self.what)
            started = time.monotonic() - t_start
        await wait_whole(self.stage.kube)
        end = time.monotonic()
        return Window(
            start,
            end,
            {
                "component": self.what,
                "stop_seconds": round(stopped, 1),
                "down_seconds": round(t_start - start, 1),
                "start_seconds": round(started, 1),
                "whole_after_start_seconds": round(end - t_start - started, 1),
                "operator_alive_after": self.stage.op.alive(),
                "operator_restarted_by_bench": self.stage.op.starts - starts,
            },
        )


class Partition(SingleOperatorFault):
    """Every packet from the operator to the API server dropped for `cut_s` seconds."""

    name = "api-partition"

    def __init__(self, stage: Stage, cut_s: float) -> None:
        super().__init__(stage)
        self.cut_s = cut_s

    async def setup(self) -> None:
        if self.stage.op.cgroup is None:
            raise RuntimeError("the operator runs in no cgroup of its own (needs root, cgroup v2)")
        await super().setup()

    async def inject(self) -> Window:
        cgroup = self.stage.op.cgroup
        assert cgroup is not None
        rel = str(cgroup.relative_to(cgroup2_root() or cgroup.parent))
        start = time.monotonic()
        try:
            await component("cut", rel)
            await asyncio.sleep(self.cut_s)
            # A cut that something took away mid-window partitioned nothing for part of it:
            # the scenario would pass on a fault that never fully happened.
            said = await run_tool("bash", str(COMPONENT_SH), "held", rel, check=False)
            held = said.split()[-1:] == ["held"]
        finally:
            await component("mend", rel)
        end = time.monotonic()
        if not held:
            raise RuntimeError(f"the cut of cgroup {rel} was gone before {self.cut_s:.0f} s")
        return Window(
            start,
            end,
            {"cut_seconds": round(end - start, 1), "operator_alive_after": self.stage.op.alive()},
        )


class LeaderPause(SingleOperatorFault):
    """Two replicas with leader election; the leader is SIGSTOPped until its lease has run out
    and the standby leads, plus `extra_s`; then SIGCONT."""

    name = "leader-pause"

    def __init__(self, stage: Stage, extra_s: float) -> None:
        super().__init__(stage)
        self.extra_s = extra_s
        self.replicas = [self._replica(x, i) for i, x in enumerate("ab")]

    def _replica(self, suffix: str, i: int) -> Operator:
        op = self.stage.op
        return Operator(
            sandbox_namespace=op.sandbox_namespace,
            namespaces=op.namespaces,
            log_name=f"bench-chaos-operator-{suffix}",
            port=op.port + 1 + i,
            env={
                "CODEEXEC_LEADER_ELECTION": "true",
                "CODEEXEC_LEASE_NAMESPACE": TENANT_NS,
                "CODEEXEC_LEASE_NAME": LEASE_NAME,
                "POD_NAME": f"bench-replica-{suffix}",
            },
        )

    async def holder(self) -> str:
        """Who holds the Lease ("" if nobody, or the API does not answer)."""
        try:
            lease = await self.stage.kube.get(LEASES, LEASE_NAME, TENANT_NS)
        except (ApiError, *NETWORK_ERRORS):
            return ""
        return str((lease.get("spec") or {}).get("holderIdentity") or "")

    async def setup(self) -> None:
        self.stage.op.stop()
        a, b = self.replicas
        await a.start()  # the first leads

        async def a_leads() -> bool:
            return await self.holder() == a.extra_env["POD_NAME"]

        await poll(a_leads, timeout=60, interval=0.2, what="the first replica leading")
        b.spawn()
        # A standby is ready too (a drain must be able to evict the leader): /readyz tells
        # nothing about leading, the Lease does.
        await poll(b.ready, timeout=90, interval=0.2, what="standby replica ready")

    async def ensure_operator(self) -> None:
        async def leader_ready() -> bool:
            holder = await self.holder()
            for r in self.replicas:
                if r.alive() and r.extra_env["POD_NAME"] == holder and await r.ready():
                    return True
            return False

        if not any(r.alive() for r in self.replicas):
            self.replicas[0].spawn()
        await poll(leader_ready, timeout=120, interval=0.2, what="a replica leading")

    async def inject(self) -> Window:
        kube = self.stage.kube
        lease = await kube.get(LEASES, LEASE_NAME, TENANT_NS)
        holder = (lease.get("spec") or {}).get("holderIdentity", "")
        duration = float((lease.get("spec") or {}).get("leaseDurationSeconds") or 15)
        leader = next(r for r in self.replicas if r.extra_env["POD_NAME"] == holder)
        standby = next(r for r in self.replicas if r is not leader)
        notes: dict[str, Any] = {"lease_seconds": duration, "leader": holder}

        async def standby_leads() -> bool:
            return await self.holder() == standby.extra_env["POD_NAME"]

        start = time.monotonic()
        leader.pause()
        try:
            await poll(standby_leads, timeout=3 * duration + 60, interval=0.2, what="takeover")
            notes["takeover_seconds"] = round(time.monotonic() - start, 1)
            await asyncio.sleep(max(0.0, start + duration + self.extra_s - time.monotonic()))
        finally:
            leader.resume()
        end = time.monotonic()
        notes["paused_seconds"] = round(end - start, 1)

        # What the old leader does once it runs again: it must stop acting (exit, or stand by).
        async def exited() -> bool:
            return not leader.alive()

        with contextlib.suppress(TimeoutError):
            await poll(exited, timeout=20, interval=0.1, what="the old leader's exit")
        notes["old_leader_exited"] = not leader.alive()
        if not leader.alive():
            notes["old_leader_exit_seconds_after_resume"] = round(time.monotonic() - end, 1)
        return Window(start, end, notes)

    async def teardown(self) -> None:
        for r in self.replicas:
            await r.close()
        with contextlib.suppress(ApiError):
            await self.stage.kube.delete(LEASES, LEASE_NAME, TENANT_NS)
        await self.stage.op.ensure_ready()


class NodeDrain:
    """The operator installed by the chart, its sandbox pods on the only node; `kubectl drain`
    evicts them all together, the node stays cordoned `drained_s` seconds, then uncordon."""

    name = "node-drain"

    def __init__(self, stage: Stage, drained_s: float, image_tag: str, timeout: float) -> None:
        self.stage, self.drained_s, self.image_tag = stage, drained_s, image_tag
        self.drain_timeout = timeout
        self.helm = ""
        self.deployment = RELEASE  # fullnameOverride

    async def setup(self) -> None:
        self.helm = await helm()
        self.stage.op.stop()
        await create_namespace(self.stage.kube, RELEASE_NS)
        await run_tool(
            self.helm, "uninstall", RELEASE, "-n", RELEASE_NS, "--ignore-not-found", "--wait"
        )
        values = {
            "fullnameOverride": RELEASE,
            "image": {"tag": self.image_tag},
            "operator": {"instance": INSTANCE, "watchNamespaces": [TENANT_NS]},
            "sandbox": {"namespace": {"name": SANDBOX_NS, "create": False}},
            # The bench's own pools (labelled for this instance) stay; the chart adds none.
            "pools": {lang: {"enabled": False} for lang in POOLS},
        }
        values_file = CLUSTER_DIR / "logs" / "bench-chaos-chart-values.yaml"
        values_file.write_text(yaml.safe_dump(values))
        await run_tool(
            self.helm,
            "install",
            RELEASE,
            str(CHART),
            "-n",
            RELEASE_NS,
            "-f",
            str(values_file),
            "--wait",
            "--timeout",
            "5m",
            timeout=400,
        )
        await self.ensure_operator()

    async def ensure_operator(self) -> None:
        async def available() -> bool:
            try:
                dep = await self.stage.kube.get(DEPLOYMENTS, self.deployment, RELEASE_NS)
            except ApiError:
                return False
            return int((dep.get("status") or {}).get("readyReplicas") or 0) >= 1

        await poll(available, timeout=300, interval=0.5, what="the chart's operator ready")

    async def inject(self) -> Window:
        kubectl = k8s_tool("kubectl")
        node = (await self.stage.kube.list(NODES))["items"][0]["metadata"]["name"]
        notes: dict[str, Any] = {"node": node, "image_tag": self.image_tag}
        start = time.monotonic()
        evicted: list[str] = []
        try:
            out = await run_tool(
                kubectl,
                "drain",
                node,
                "--ignore-daemonsets",
                "--delete-emptydir-data",
                "--force",
                f"--timeout={self.drain_timeout:.0f}s",
                timeout=self.drain_timeout + 60,
                check=False,
            )
            notes["drain_seconds"] = round(time.monotonic() - start, 1)
            evicted = re.findall(rf"evicting pod {SANDBOX_NS}/(\S+)", out)
            notes["evicted_sandbox_pods"] = len(evicted)
            notes["evicted_pods"] = len(re.findall(r"evicting pod ", out))
            # A drain that cannot finish (a pod that does not go: on one node, a claimed pod
            # whose claim finalizer only the evicted operator could remove) is recorded, not a
            # failure of the run: the node is uncordoned as an administrator would, and the
            # figures say whether anything was lost.
            blocked = sorted(set(re.findall(r'waiting for pod "([^"]+)"', out)))
            notes["drain_completed"] = "unable to drain" not in out and not blocked
            if blocked:
                notes["drain_blocked_by"] = blocked
                log.warning("node-drain: the drain did not finish: %s held on", blocked)
            await asyncio.sleep(self.drained_s)
        finally:
            await run_tool(kubectl, "uncordon", node)
        await wait_whole(self.stage.kube)
        end = time.monotonic()
        return Window(start, end, notes, disturbed_pods=evicted)

    async def teardown(self) -> None:
        kubectl = k8s_tool("kubectl")
        with contextlib.suppress(Exception):
            logs = await run_tool(
                kubectl, "-n", RELEASE_NS, "logs", f"deploy/{self.deployment}", check=False
            )
            (CLUSTER_DIR / "logs" / "bench-chaos-chart-operator.log").write_text(logs)
        if self.helm:
            await run_tool(self.helm, "uninstall", RELEASE, "-n", RELEASE_NS, "--wait", check=False)
        with contextlib.suppress(ApiError):
            await self.stage.kube.delete(NAMESPACES, RELEASE_NS)
        await self.stage.op.ensure_ready()


FAULTS = (
    "apiserver-stop",
    "etcd-restart",
    "kubelet-restart",
    "containerd-restart",
    "api-partition",
    "leader-pause",
    "node-drain",
)


def make_fault(name: str, stage: Stage) -> Fault:
    """The fault called `name`, with its durations from the options."""
    a = stage.args
    if name == "apiserver-stop":
        return ComponentOutage(stage, name, "apiserver", a.apiserver_down)
    if name in ("etcd-restart", "kubelet-restart", "containerd-restart"):
        return ComponentOutage(stage, name, name.split("-")[0], 0.0)
    if name == "api-partition":
        return Partition(stage, a.partition)
    if name == "leader-pause":
        return LeaderPause(stage, a.pause_extra)
    if name == "node-drain":
        return NodeDrain(stage, a.drained, a.operator_tag, a.drain_timeout)
    raise ValueError(f"unknown fault {name}")
