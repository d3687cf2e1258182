"""`make bench`, runtimes: runc and gVisor pools side by side (warm latency, warm-up, throughput).

Part of `python -m bench` (bench/run.py calls `compare` with its operator and its watch on
the tenant namespace). For each runtime, pools of both languages that differ only in
`runtimeClassName`:

1. Warm-up: the pools are created empty-handed and filled; per pod, the time from its first
   watch event (created) to the first event that shows it Ready (the worker has imported
   everything), and the time until the whole pool is full.
2. Warm latency: sequential executions of the trivial program, alternating runtimes so both
   see the same machine load; each starts with its pool full.
3. Throughput: C clients for a fixed time on each runtime's Python pool, one runtime after
   the other.

Skipped (with the reason in the results) when the cluster has no RuntimeClass `gvisor`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

from bench.cluster import Informer, Waiters
from bench.command import smoke_defaults
from bench.operator import Operator
from bench.results import fmt_ms, md_table, summarize
from bench.workload import create_pool, wait_pools_full
from codeexec.api.models import Language
from codeexec.client import Client
from codeexec.kube.client import CODE_EXECUTIONS, PODS, SANDBOX_POOLS, ApiError, Kube, Resource

log = logging.getLogger("bench.runtimes")

RUNTIME_CLASSES = Resource("node.k8s.io", "v1", "runtimeclasses", namespaced=False)
GVISOR = "gvisor"
# Runtime name -> the pools' runtimeClassName (None: the node's default, runc).
RUNTIMES: dict[str, str | None] = {"runc": None, "gvisor": GVISOR}
LANGS: tuple[Language, ...] = ("python", "nodejs")
CODE = {
    "python": "def main():\n    return 42\n",
    "nodejs": "module.exports = () => 42;\n",
}
EXPECTED = 42


def pool_name(runtime: str, language: str) -> str:
    return f"bench-{language}-{runtime}"


def add_args(p: argparse.ArgumentParser, argv: list[str] | None) -> None:
    p.add_argument(
        "--runtimes",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="compare runc and gVisor pools (needs RuntimeClass gvisor)",
    )
    p.add_argument("--runtime-n", type=int, default=20, help="warm executions per language/runtime")
    p.add_argument("--runtime-pool-size", type=int, default=2)
    p.add_argument(
        "--runtime-duration", type=float, default=30, help="seconds of each runtime's throughput"
    )
    smoke_defaults(p, argv, runtime_n=3, runtime_duration=10)


@dataclass
class PodTimes:
    """perf_counter() of a sandbox pod's first watch event and of the first showing it Ready."""

    seen: float
    ready: float | None = None


class WarmupWatch:
    """Fed by an Informer on the sandbox namespace: when each pod of our pools was created and
    when it turned Ready. Pods already there at the first list are not counted."""

    def __init__(self) -> None:
        self.pods: dict[str, tuple[str, PodTimes]] = {}  # name -> (pool, times)
        self.listed = False

    def on_event(self, type_: str, obj: dict[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        name, pool = meta.get("name", ""), (meta.get("labels") or {}).get("codeexec.io/pool", "")
        now = time.perf_counter()
        if name not in self.pods:
            if type_ != "ADDED" or not self.listed:
                return
            self.pods[name] = (pool, PodTimes(now))
        times = self.pods[name][1]
        conditions = (obj.get("status") or {}).get("conditions") or []
        ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
        if ready and times.ready is None:
            times.ready = now

    def warmup_ms(self, pool: str) -> list[float]:
        return [
            (t.ready - t.seen) * 1000
            for p, t in self.pods.values()
            if p == pool and t.ready is not None
        ]


async def has_runtime_class(kube: Kube, name: str) -> bool:
    try:
        await kube.get(RUNTIME_CLASSES, name)
    except ApiError as err:
        if err.not_found:
            return False
        raise
    return True


class Runtimes:
    def __init__(
        self, kube: Kube, op: Operator, tenant_ns: str, cx_waiters: Waiters, args: Any
    ) -> None:
        self.kube, self.op, self.tenant_ns, self.waiters = kube, op, tenant_ns, cx_waiters
        self.args = args
        self.client = Client(kube, tenant_ns)
        self.seq = 0

    async def one(self, runtime: str, language: Language, timeout: float = 120) -> float | str:
        """One execution; its latency in ms (create call to terminal status), or what failed."""
        self.seq += 1
        name = f"rt-{runtime[:2]}-{language[:2]}-{self.seq:05d}"
        pool = pool_name(runtime, language)
        fut = self.waiters.expect(name)
        body = self.client.manifest(CODE[language], language=language, pool=pool, name=name)
        t0 = time.perf_counter()
        try:
            await self.kube.create(CODE_EXECUTIONS, body, self.tenant_ns)
            t_done, obj = await asyncio.wait_for(fut, timeout)
        except (ApiError, TimeoutError, RuntimeError) as err:
            return f"{name}: {err!r}"
        finally:
            self.waiters.forget(name)
        status = obj.get("status") or {}
        ran_in = (status.get("sandbox") or {}).get("pool")
        if (
            status.get("reason") != "Succeeded"
            or (status.get("result") or {}).get("returnValue") != EXPECTED
        ):
            return f"{name}: {status.get('reason')} {status.get('message')!r}"
        if ran_in != pool:
            return f"{name}: ran in pool {ran_in!r}"
        return (t_done - t0) * 1000

    async def settle(self, runtime: str, language: str, timeout: float = 120) -> None:
        pool, want = pool_name(runtime, language), self.args.runtime_pool_size
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            metrics = await self.op.metrics()
            if metrics.total("codeexec_pool_ready_pods", pool=pool) >= want:
                return
            await asyncio.sleep(0.2)
        log.warning("pool %s not full after %.0fs", pool, timeout)

    async def warmup(self, runtime: str, watch: WarmupWatch) -> dict[str, Any]:
        size = self.args.runtime_pool_size
        pools = {pool_name(runtime, lang): size for lang in LANGS}
        for lang in LANGS:
            spec: dict[str, Any] = {"default": False}
            if RUNTIMES[runtime]:
                spec["runtimeClassName"] = RUNTIMES[runtime]
            await create_pool(self.kube, pool_name(runtime, lang), lang, size, **spec)
        fill_s = await wait_pools_full(self.kube, pools, timeout=300)
        return {
            "pools_full_seconds": round(fill_s, 2),
            "pod_warmup_ms": {
                lang: summarize(watch.warmup_ms(pool_name(runtime, lang))) for lang in LANGS
            },
        }

    async def warm(self, language: Language) -> dict[str, Any]:
        lat: dict[str, list[float]] = {r: [] for r in RUNTIMES}
        failures: list[str] = []
        for _ in range(self.args.runtime_n):
            for runtime in RUNTIMES:  # alternating: the same machine load for both
                await self.settle(runtime, language)
                got = await self.one(runtime, language)
                if isinstance(got, str):
                    failures.append(got)
                else:
                    lat[runtime].append(got)
        return {
            "latency_ms": {r: summarize(v) for r, v in lat.items()},
            "failures": failures[:10],
            "failed": len(failures),
        }

    async def throughput(self, runtime: str) -> dict[str, Any]:
        clients, duration = self.args.clients, self.args.runtime_duration
        await self.settle(runtime, "python")
        start = time.perf_counter()
        stop_at = start + duration
        done: list[tuple[float, float | str]] = []

        async def client() -> None:
            while time.perf_counter() < stop_at:
                got = await self.one(runtime, "python", timeout=duration + 120)
                done.append((time.perf_counter() - start, got))

        await asyncio.gather(*(client() for _ in range(clients)))
        ok = [got for t, got in done if not isinstance(got, str) and t <= duration]
        return {
            "clients": clients,
            "pool_size": self.args.runtime_pool_size,
            "duration_seconds": duration,
            "completed_in_window": len(ok),
            "per_second": round(len(ok) / duration, 3),
            "latency_ms": summarize(ok),
            "failures": [got for _, got in done if isinstance(got, str)][:10],
        }


async def compare(
    kube: Kube, op: Operator, sandbox_ns: str, tenant_ns: str, cx_waiters: Waiters, args: Any
) -> dict[str, Any]:
    """The runtimes section of the bench results; its pools are gone when it returns."""
    if not args.runtimes:
        return {"skipped": "--no-runtimes"}
    if not await has_runtime_class(kube, GVISOR):
        return {"skipped": f"the cluster has no RuntimeClass {GVISOR}"}
    rt = Runtimes(kube, op, tenant_ns, cx_waiters, args)
    watch = WarmupWatch()
    informer = Informer(kube, PODS, sandbox_ns, watch.on_event)
    task = asyncio.create_task(informer.run())
    out: dict[str, Any] = {"pool_size": args.runtime_pool_size, "n": args.runtime_n}
    try:
        await asyncio.wait_for(informer.synced.wait(), 30)
        watch.listed = True
        out["warmup"] = {}
        for runtime in RUNTIMES:  # one runtime at a time: each fills on a quiet node
            log.info("runtimes: warm-up of %s pools", runtime)
            out["warmup"][runtime] = await rt.warmup(runtime, watch)
        out["warm"] = {}
        for lang in LANGS:
            log.info("runtimes: %d warm %s executions per runtime", args.runtime_n, lang)
            out["warm"][lang] = await rt.warm(lang)
        out["throughput"] = {}
        for runtime in RUNTIMES:
            log.info("runtimes: %s throughput, %.0fs", runtime, args.runtime_duration)
            out["throughput"][runtime] = await rt.throughput(runtime)
    finally:
        task.cancel()
        for runtime in RUNTIMES:
            for lang in LANGS:
                try:
                    await kube.delete(SANDBOX_POOLS, pool_name(runtime, lang))
                except ApiError as err:
                    if not err.not_found:
                        log.warning("deleting pool %s: %s", pool_name(runtime, lang), err)
    return out


def render(r: dict[str, Any]) -> str:
    """The runtimes section of results.md."""
    if "skipped" in r:
        return f"## Runtimes: runc and gVisor\n\nSkipped: {r['skipped']}.\n"

    def q(d: dict[str, Any], key: str) -> str:
        return fmt_ms(d.get(key))

    rows: list[list[Any]] = []
    for lang, w in r.get("warm", {}).items():
        for runtime, s in w["latency_ms"].items():
            up = r["warmup"][runtime]["pod_warmup_ms"][lang]
            rows.append([lang, runtime, s.get("n", 0), q(s, "p50"), q(s, "p95"), q(s, "p99"),
                         q(up, "p50"), q(up, "max")])  # fmt: skip
    tp_rows = [
        [runtime, t["clients"], t["per_second"], q(t["latency_ms"], "p50"), len(t["failures"])]
        for runtime, t in r.get("throughput", {}).items()
    ]
    return "\n".join(
        [
            "## Runtimes: runc and gVisor",
            "",
            f"Pools of {r['pool_size']} per language and runtime; {r['n']} warm executions each, "
            "alternating runtimes. Warm-up: a pod's creation to Ready (worker imported).",
            "",
            md_table(
                ["language", "runtime", "n", "warm p50 ms", "p95", "p99", "warm-up p50 ms", "max"],
                rows,
            ),
            "",
            md_table(["runtime", "clients", "executions/s", "p50 ms", "failures"], tp_rows),
            "",
        ]
    )
