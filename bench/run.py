"""`make bench`: the warm path against the cold baseline, throughput against raw pod churn,
and what the operator costs, all in one run on the local cluster.

    .venv/bin/python -m bench [--smoke] [-n N] [--cold-n N] [-c C] [--duration S]

1. Warm: N sequential `CodeExecution`s of a trivial `main` per language; latency from the
   client's create call to the terminal status arriving on the client's watch. Before each one
   the pool is let refill, so each measures the warm path and not a starved pool (that is
   what 3 measures). The operator's own breakdown comes from its /metrics, scraped around.
2. Cold: the same program, one bare pod per execution (the pool's image and hardened spec,
   image already on the node): create, watch until it terminates, read its log.
3. Throughput: C concurrent clients for a fixed time, then C workers churning bare pods
   (create, run to completion, delete) for the same time; completions per second of each.
4. Cost: CPU seconds per execution and peak RSS of the operator process (/proc, sampled).
5. Runtimes: runc and gVisor pools side by side (bench/runtimes.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import secrets
import time
from dataclasses import dataclass
from typing import Any

from bench import audit, profiling, report, runtimes, throughput
from bench.breakdown import (
    apiserver_breakdown,
    kubelet_breakdown,
    operator_breakdown,
    per_execution,
)
from bench.cluster import ApiProbe, Informer, SandboxPods, Waiters, node_info, raw_get
from bench.command import (
    add_common_args,
    bench_main,
    fresh_start,
    on_cluster,
    smoke_defaults,
    teardown,
)
from bench.metrics import (
    apiserver_metrics,
    counter_delta,
    kubelet_metrics,
)
from bench.operator import Operator
from bench.results import (
    MachineLoad,
    machine_info,
    results_paths,
    save_section,
    summarize,
    utcnow,
)
from bench.workload import (
    bare_pod,
    create_namespace,
    create_pool,
    wait_namespaces_gone,
    wait_no_foreign_operator,
    wait_pools_full,
)
from codeexec.api.models import Language
from codeexec.client import Client
from codeexec.kube.client import CODE_EXECUTIONS, PODS, ApiError, Kube

log = logging.getLogger("bench")

SANDBOX_NS = "bench-sandbox"
TENANT_NS = "bench-tenant"
COLD_NS = "bench-cold"
POOLS = {"python": "bench-python", "nodejs": "bench-nodejs"}
LANGS: tuple[Language, ...] = ("python", "nodejs")

# The trivial program, the same for both paths.
WARM_CODE = {
    "python": "def main():\n    return 42\n",
    "nodejs": "function main() {\n  return 42;\n}\nmodule.exports = { main };\n",
}
# The cold pod runs it directly with the image's interpreter (no supervisor, no warm
# worker): the cheapest way a bare pod can run it, so the baseline is not handicapped.
COLD_COMMAND = {
    "python": [
        "python3",
        "-c",
        WARM_CODE["python"] + "import json, sys\nsys.stdout.write(json.dumps(main()))\n",
    ],
    "nodejs": [
        "node",
        "-e",
        "const m = { exports: {} };\n(function (module, exports) {\n"
        + WARM_CODE["nodejs"]
        + "})(m, m.exports);\nprocess.stdout.write(JSON.stringify(m.exports.main()));\n",
    ],
}
EXPECTED = 42


@dataclass
class Sample:
    ok: bool
    total_ms: float
    create_ms: float
    detail: str = ""
    to_running_ms: float | None = None
    queued_ms: float | None = None
    run_ms: float | None = None
    watch_events: int = 0


class Bench:
    def __init__(self, kube: Kube, op: Operator, args: argparse.Namespace) -> None:
        self.kube, self.op, self.args = kube, op, args
        self.client = Client(kube, TENANT_NS)
        self.cx_waiters = Waiters()
        self.pod_waiters = Waiters()
        self.token = secrets.token_hex(2)
        self.seq = 0
        self.probe = ApiProbe(kube)
        self.audit = audit.AuditLog()
        self.sandbox_pods = SandboxPods()

    def name(self, prefix: str) -> str:
        self.seq += 1
        return f"{prefix}-{self.token}-{self.seq:05d}"

    # ---- one execution / one bare pod --------------------------------------------------

    async def warm_one(self, language: Language, timeout: float = 120) -> Sample:
        name = self.name("w" + language[:2])
        fut = self.cx_waiters.expect(name)
        body = self.client.manifest(
            WARM_CODE[language], language=language, pool=POOLS[language], name=name
        )
        t0 = time.perf_counter()
        try:
            await self.kube.create(CODE_EXECUTIONS, body, TENANT_NS)
            t_created = time.perf_counter()
            t_done, obj = await asyncio.wait_for(fut, timeout)
        except (ApiError, TimeoutError, RuntimeError) as err:
            self.cx_waiters.forget(name)
            return Sample(False, (time.perf_counter() - t0) * 1000, 0, f"{name}: {err!r}")
        phases = self.cx_waiters.phases.get(name, {})
        events = self.cx_waiters.events.get(name, 0)
        self.cx_waiters.forget(name)
        status = obj.get("status") or {}
        result = status.get("result") or {}
        pool = (status.get("sandbox") or {}).get("pool")
        ok = status.get("reason") == "Succeeded" and result.get("returnValue") == EXPECTED
        detail = "" if ok else f"{name}: {status.get('reason')} {status.get('message')!r}"
        if pool is not None and pool != POOLS[language]:
            ok, detail = False, f"{name}: ran in foreign pool {pool!r} (another operator?)"
        running = phases.get("Running")
        return Sample(
            ok,
            (t_done - t0) * 1000,
            (t_created - t0) * 1000,
            detail,
            to_running_ms=(running - t0) * 1000 if running else None,
            queued_ms=status.get("queuedMs"),
            run_ms=result.get("wallMs"),
            watch_events=events,
        )

    async def cold_one(self, language: str, *, delete: bool = True, timeout: float = 120) -> Sample:
        name = self.name("c" + language[:2])
        fut = self.pod_waiters.expect(name)
        pod = bare_pod(name, language, COLD_NS, COLD_COMMAND[language], {"bench-run": self.token})
        t0 = time.perf_counter()
        try:
            await self.kube.create(PODS, pod, COLD_NS)
            t_created = time.perf_counter()
            t_term, obj = await asyncio.wait_for(fut, timeout)
            output = await raw_get(self.kube, f"/api/v1/namespaces/{COLD_NS}/pods/{name}/log")
            t_done = time.perf_counter()
        except (ApiError, TimeoutError, RuntimeError) as err:
            self.pod_waiters.forget(name)
            await self.kube.delete(PODS, name, COLD_NS, grace_period=0)
            return Sample(False, (time.perf_counter() - t0) * 1000, 0, f"{name}: {err!r}")
        self.pod_waiters.forget(name)
        phase = (obj.get("status") or {}).get("phase")
        ok = phase == "Succeeded" and output.strip() == json.dumps(EXPECTED)
        if delete:
            await self.kube.delete(PODS, name, COLD_NS, grace_period=0)
        return Sample(
            ok,
            (t_done - t0) * 1000,
            (t_created - t0) * 1000,
            "" if ok else f"{name}: {phase} output {output[:200]!r}",
            to_running_ms=(t_term - t0) * 1000,  # here: until the pod is seen terminated
        )

    # ---- phases ----------------------------------------------------------------------

    async def ready_pods(self, language: str) -> int:
        # Our own watch of the sandbox pods, judged as the operator's pod cache judges them:
        # not the pool's status (written every 5 s while only its counts move), not the
        # operator's gauge (scraping /metrics 5 times a second cost the operator 11-18 % of
        # its CPU in the warm series, py-spy, 2026-11-30).
        return self.sandbox_pods.warm_ready(POOLS[language])

    async def settle(self, language: str, want: int, timeout: float = 60) -> tuple[float, int]:
        """Waits until the pool has `want` ready pods; returns (seconds waited, ready now)."""
        t0 = time.monotonic()
        deadline = t0 + timeout
        while (ready := await self.ready_pods(language)) < want:
            if time.monotonic() > deadline:
                log.warning("pool %s: %d ready after %.0fs", POOLS[language], ready, timeout)
                break
            await asyncio.sleep(0.05)
        return time.monotonic() - t0, ready

    async def warm_series(
        self, language: Language, n: int, size: int, settle: str
    ) -> dict[str, Any]:
        """Sequential executions, each started when the pool has a ready pod (`one`: no
        queueing, replacements may still be warming up beside it) or is full again (`full`:
        nothing else starting on the node)."""
        want = size if settle == "full" else 1
        for _ in range(self.args.warmup):  # not measured: first-use costs of both sides
            await self.settle(language, size)
            await self.warm_one(language)
        await self.settle(language, size)
        m0, a0 = await self.op.metrics(), await apiserver_metrics(self.kube)
        cpu0 = self.op.sampler.cpu_seconds()
        audit0 = self.audit.mark()
        profiler = (
            profiling.start(self.op.pid, f"warm-{language}-{settle}") if self.args.profile else None
        )
        mark = self.probe.mark()
        samples: list[Sample] = []
        full: list[bool] = []
        settle_s = 0.0
        t0 = time.monotonic()
        for i in range(n):
            ready = size
            if i:
                waited, ready = await self.settle(language, want)
                settle_s += waited
            full.append(ready >= size)
            samples.append(await self.warm_one(language))
        busy_s = time.monotonic() - t0 - settle_s
        # The last replacement's start is part of the last execution's cost.
        await self.settle(language, size)
        cpu1 = self.op.sampler.cpu_seconds()
        writes = self.audit.writes_since(audit0)
        profile = profiling.stop(profiler)
        m1, a1 = await self.op.metrics(), await apiserver_metrics(self.kube)
        out = self.summarize_samples(samples)
        out["settle"] = settle
        out["latency_ms_pool_full"] = summarize(
            [x.total_ms for x, f in zip(samples, full, strict=True) if x.ok and f]
        )
        out["latency_ms_pool_refilling"] = summarize(
            [x.total_ms for x, f in zip(samples, full, strict=True) if x.ok and not f]
        )
        out["api_probe"] = self.probe.summary(mark)
        out["operator_breakdown"] = operator_breakdown(m0, m1, language)
        out["operator_api_requests_per_execution"] = per_execution(
            counter_delta(m0, m1, "bench_operator_api_requests_total", ("verb", "resource")), n
        )
        out["apiserver"] = apiserver_breakdown(a0, a1)
        out["cluster_writes_per_execution"] = audit.per_execution(writes, n)
        out["operator_cpu_seconds"] = round(cpu1 - cpu0, 3)
        # Every execution must have been finished by our operator, not another one.
        processed = counter_delta(m0, m1, "codeexec_executions_total", ("reason",))
        out["finished_by_our_operator"] = int(sum(processed.values()))
        out["pool_refill_wait_seconds_total"] = round(settle_s, 2)
        out["wall_seconds_excluding_refill"] = round(busy_s, 2)
        if profile:
            out["profile"] = profile
        return out

    async def cold_series(self, language: str, n: int) -> dict[str, Any]:
        for _ in range(self.args.warmup):
            await self.cold_one(language)
        k0 = await kubelet_metrics(self.kube)
        a0 = await apiserver_metrics(self.kube)
        mark = self.probe.mark()
        samples = [await self.cold_one(language) for _ in range(n)]
        k1 = await kubelet_metrics(self.kube)
        a1 = await apiserver_metrics(self.kube)
        out = self.summarize_samples(samples, running_key="until_terminated_seen_ms")
        out["api_probe"] = self.probe.summary(mark)
        if k0 is not None and k1 is not None:
            out["kubelet"] = kubelet_breakdown(k0, k1)
        out["apiserver"] = apiserver_breakdown(a0, a1)
        return out

    def summarize_samples(
        self, samples: list[Sample], running_key: str = "to_running_seen_ms"
    ) -> dict[str, Any]:
        good = [s for s in samples if s.ok]
        out: dict[str, Any] = {
            "n": len(samples),
            "failed": len(samples) - len(good),
            "failures": [s.detail for s in samples if not s.ok][:10],
            "latency_ms": summarize([s.total_ms for s in good]),
            "create_call_ms": summarize([s.create_ms for s in good]),
            running_key: summarize([s.to_running_ms for s in good if s.to_running_ms is not None]),
            "samples_ms": [round(s.total_ms, 1) for s in good],
        }
        queued = [float(s.queued_ms) for s in good if s.queued_ms is not None]
        if queued:
            out["status_queued_ms"] = summarize(queued)
        run = [float(s.run_ms) for s in good if s.run_ms is not None]
        if run:
            out["runner_wall_ms"] = summarize(run)
        events = [float(s.watch_events) for s in good]
        if any(events):
            out["watch_events_per_execution"] = round(sum(events) / len(events), 2)
        return out


# ---- the run --------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> int:
    return await on_cluster(args, run_on)


async def run_on(kube: Kube, args: argparse.Namespace) -> int:
    if not await fresh_start(kube, [SANDBOX_NS, TENANT_NS, COLD_NS]):
        return 2
    machine = machine_info()
    load = MachineLoad()
    result: dict[str, Any] = {
        "started": utcnow(),
        "smoke": args.smoke,
        "parameters": {
            "n": args.n,
            "cold_n": args.cold_n,
            "warmup": args.warmup,
            "clients": args.clients,
            "duration_seconds": args.duration,
            "pool_size": args.pool_size,
            "profile": args.profile,
        },
        "machine": machine,
        "cluster": await node_info(kube),
    }
    op = Operator(sandbox_namespace=SANDBOX_NS, namespaces=[TENANT_NS], log_name="bench-operator")
    tasks: list[asyncio.Task[None]] = []
    bench: Bench | None = None
    log_start = op.log_size()
    try:
        await create_namespace(kube, SANDBOX_NS, restricted=True)
        await create_namespace(kube, TENANT_NS)
        await create_namespace(kube, COLD_NS, restricted=True)
        await wait_no_foreign_operator(kube, TENANT_NS, args.foreign_wait)
        sizes = {POOLS[lang]: args.pool_size for lang in LANGS}
        for lang in LANGS:
            await create_pool(kube, POOLS[lang], lang, args.pool_size)
        result["operator_ready_seconds"] = round(await op.start(), 2)
        result["pools_full_seconds"] = round(await wait_pools_full(kube, sizes), 2)
        bench = Bench(kube, op, args)
        informers = [
            Informer(kube, CODE_EXECUTIONS, TENANT_NS, bench.cx_waiters.on_event),
            Informer(kube, PODS, COLD_NS, bench.pod_waiters.on_event),
            Informer(kube, PODS, SANDBOX_NS, bench.sandbox_pods.on_event),
        ]
        tasks = [asyncio.create_task(i.run()) for i in informers]
        for i in informers:
            await asyncio.wait_for(i.synced.wait(), 30)
        bench.probe.start()

        warm: dict[str, Any] = {}
        for lang in LANGS:
            settle = "full" if args.settle == "full" else "one"
            log.info("warm %s: %d sequential executions, settle %s", lang, args.n, settle)
            warm[lang] = await bench.warm_series(lang, args.n, args.pool_size, settle)
            log.info("warm %s: %s", lang, warm[lang]["latency_ms"])
        if args.settle == "both":  # the same with nothing warming beside each one
            result["warm_pool_full"] = {}
            for lang in LANGS:
                log.info("warm %s: %d sequential executions, settle full", lang, args.n)
                full = await bench.warm_series(lang, args.n, args.pool_size, "full")
                result["warm_pool_full"][lang] = full
                log.info("warm %s, pool full: %s", lang, full["latency_ms"])
        cold: dict[str, Any] = {}
        for lang in LANGS:
            log.info("cold %s: %d sequential bare pods", lang, args.cold_n)
            idle0 = op.sampler.cpu_seconds()
            t_idle = time.monotonic()
            cold[lang] = await bench.cold_series(lang, args.cold_n)
            cold[lang]["operator_idle_cpu_per_second"] = round(
                (op.sampler.cpu_seconds() - idle0) / (time.monotonic() - t_idle), 4
            )
            log.info("cold %s: %s", lang, cold[lang]["latency_ms"])
        result["warm"], result["cold"] = warm, cold
        result["warm_vs_cold"] = {
            lang: {
                q: report.speedup(cold[lang]["latency_ms"].get(q), warm[lang]["latency_ms"].get(q))
                for q in ("p50", "p99")
            }
            for lang in LANGS
        }
        size = max(args.pool_size, args.clients)
        result["throughput"] = await throughput.compare(
            bench, POOLS["python"], size, args.clients, args.duration
        )
        tp, lean = result["throughput"]["operator"], result["throughput"]["operator_no_preload"]
        runs = (tp, lean)
        executions = sum(warm[lang]["n"] for lang in LANGS) + sum(
            t["executions_total"] for t in runs
        )
        cpu = sum(warm[lang]["operator_cpu_seconds"] for lang in LANGS) + sum(
            t["operator_cpu_seconds"] for t in runs
        )
        result["operator_cost"] = {
            "executions": executions,
            "cpu_seconds": round(cpu, 2),
            "cpu_ms_per_execution": round(1000 * cpu / executions, 1) if executions else None,
            "cpu_ms_per_execution_warm_sequential": {
                lang: round(1000 * warm[lang]["operator_cpu_seconds"] / warm[lang]["n"], 1)
                for lang in LANGS
                if warm[lang]["n"]
            },
            "cpu_ms_per_execution_throughput": round(
                1000
                * sum(t["operator_cpu_seconds"] for t in runs)
                / sum(t["executions_total"] for t in runs),
                1,
            )
            if any(t["executions_total"] for t in runs)
            else None,
            "idle_cpu_per_second": cold["python"]["operator_idle_cpu_per_second"],
            "peak_rss_mb": round(op.sampler.peak_rss() / 2**20, 1),
            "total_cpu_seconds_whole_run": round(op.sampler.cpu_seconds(), 2),
        }
        result["runtimes"] = await runtimes.compare(
            kube, op, SANDBOX_NS, TENANT_NS, bench.cx_waiters, args
        )
        result["operator_log_warnings"] = op.log_warnings(log_start)[-20:]
    finally:
        if bench is not None:
            await bench.probe.stop()
        await teardown(
            kube, tasks, [POOLS[lang] for lang in LANGS], op, [SANDBOX_NS, TENANT_NS, COLD_NS]
        )
        result["machine_load"] = load.stop()
        result["finished"] = utcnow()
    complete = "operator_cost" in result
    if complete:
        path = save_section("bench", result, args.smoke)
        report.write_all(args.smoke)
        print(report.render_bench(result))
        log.info("results in %s and %s", path, results_paths(args.smoke)[1])
        with contextlib.suppress(Exception):
            await wait_namespaces_gone(kube, [SANDBOX_NS, TENANT_NS, COLD_NS], timeout=60)
    return 0 if complete else 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="N=5, cold N=5, C=2 for 10 s")
    p.add_argument("-n", type=int, default=60, help="warm executions per language")
    p.add_argument("--cold-n", type=int, default=30, help="bare pods per language")
    p.add_argument("--warmup", type=int, default=3, help="unmeasured runs before each series")
    p.add_argument("-c", "--clients", type=int, default=4, help="concurrent clients")
    p.add_argument("--duration", type=float, default=60, help="seconds of each throughput run")
    p.add_argument("--pool-size", type=int, default=3)
    p.add_argument(
        "--settle",
        choices=("one", "full", "both"),
        default="both",
        help="start each warm execution when the pool has one ready pod (back to back), or "
        "when it is full; both: a series of each, back to back first",
    )
    p.add_argument(
        "--profile",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="py-spy the operator during the warm series",
    )
    add_common_args(p)
    runtimes.add_args(p, argv)
    smoke_defaults(p, argv, n=5, cold_n=5, warmup=1, clients=2, duration=10)
    args = p.parse_args(argv)
    if args.n < 1 or args.cold_n < 1 or args.clients < 1:
        p.error("n, cold-n and clients must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    return bench_main(parse_args, run, argv)
