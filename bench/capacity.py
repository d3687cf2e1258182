"""`make bench`, capacity: autoscaled pools under a burst, from zero, and under steady load.

    .venv/bin/python -m bench.capacity [--smoke] [--burst 60] [--steady-seconds 300]

1. Burst: a pool with minReady 1 / maxSize 12 gets `--burst` executions at once (1 s of work
   each). Reported: all correct, time from the submissions to the first scale-up, the peak
   number of pods, queue wait p50/p99 (the operator's `status.queuedMs`), how long after the
   last one finished the pool was back at its minimum, and the pod-seconds spent from the
   submissions until then. The same burst then runs on a fixed pool of 12 (filled first):
   its queue wait, and its pod-seconds over the same window (12 idle pods after its burst).
2. From zero: a pool with minReady 0 gets one execution while empty (the cold path: a pod
   started for it) and the time until the pool is empty again, `--zero-n` times; then, with
   minReady raised to 1, as many executions on a warm pod of the same pool: end-to-end latency
   of each.
3. Steady: Poisson arrivals at `--steady-rate` per second for `--steady-seconds` on a pool
   with minReady 1 / maxSize 12 and the default cooldown (`--steady-cooldown` 300 s): the
   pool's desired size over time, its range once the rate window has filled (or after half
   the run, if shorter), PoolExhausted count, queue wait.

Pod-seconds are counted from the sandbox pods' watch events: creation to deletion event.
Its own section of bench/results.json ("capacity"); `make bench` runs it after `python -m bench`.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Any

from bench import report
from bench.cluster import Informer, Waiters, poll
from bench.command import (
    add_common_args,
    bench_main,
    fresh_start,
    on_cluster,
    smoke_defaults,
    teardown,
)
from bench.operator import Operator
from bench.results import (
    fmt_ms,
    md_table,
    results_paths,
    save_section,
    summarize,
    utcnow,
)
from bench.workload import create_namespace, create_pool, wait_no_foreign_operator
from codeexec.autoscale import RATE_WINDOW_SECONDS
from codeexec.client import Client
from codeexec.kube.client import CODE_EXECUTIONS, PODS, SANDBOX_POOLS, ApiError, Kube

log = logging.getLogger("bench.capacity")

SANDBOX_NS = "bench-sandbox"
TENANT_NS = "bench-capacity"
BURST_POOL, FIXED_POOL, ZERO_POOL, STEADY_POOL = (
    "bench-burst",
    "bench-fixed",
    "bench-zero",
    "bench-steady",
)
POOLS = (BURST_POOL, FIXED_POOL, ZERO_POOL, STEADY_POOL)
CODE = "import time\n\ndef main(n, work):\n    time.sleep(work)\n    return n * 2\n"


@dataclass
class PodLedger:
    """perf_counter() of each sandbox pod's first and last watch event, by pool."""

    born: dict[str, tuple[str, float]] = field(default_factory=dict)
    gone: dict[str, float] = field(default_factory=dict)

    def on_event(self, type_: str, obj: dict[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        name, pool = meta.get("name", ""), (meta.get("labels") or {}).get("codeexec.io/pool", "")
        now = time.perf_counter()
        self.born.setdefault(name, (pool, now))
        if type_ == "DELETED":
            self.gone.setdefault(name, now)

    def live(self, pool: str) -> int:
        return sum(1 for n, (p, _) in self.born.items() if p == pool and n not in self.gone)

    def pod_seconds(self, pool: str, t0: float, t1: float) -> float:
        total = 0.0
        for name, (p, born) in self.born.items():
            if p == pool:
                total += max(0.0, min(self.gone.get(name, t1), t1) - max(born, t0))
        return total


@dataclass
class PoolTrace:
    """Each SandboxPool status seen on the watch: (perf_counter, status)."""

    seen: dict[str, list[tuple[float, dict[str, Any]]]] = field(default_factory=dict)

    def on_event(self, _type: str, obj: dict[str, Any]) -> None:
        name = (obj.get("metadata") or {}).get("name", "")
        self.seen.setdefault(name, []).append((time.perf_counter(), obj.get("status") or {}))

    def last(self, pool: str) -> dict[str, Any]:
        got = self.seen.get(pool)
        return got[-1][1] if got else {}

    def desired(self, pool: str, since: float) -> list[tuple[float, int]]:
        return [
            (t, int(s["desired"]))
            for t, s in self.seen.get(pool, [])
            if t >= since and s.get("desired") is not None
        ]


class Capacity:
    def __init__(self, kube: Kube, args: Any) -> None:
        self.kube, self.args = kube, args
        self.client = Client(kube, TENANT_NS)
        self.waiters = Waiters()
        self.ledger = PodLedger()
        self.trace = PoolTrace()
        self.seq = 0

    async def submit(self, pool: str, n: int, work: float) -> tuple[str, Any]:
        self.seq += 1
        name = f"cap-{self.seq:05d}"
        fut = self.waiters.expect(name)
        body = self.client.manifest(CODE, pool=pool, name=name, arguments={"n": n, "work": work})
        await self.kube.create(CODE_EXECUTIONS, body, TENANT_NS)
        return name, fut

    async def outcome(self, name: str, fut: Any, n: int, timeout: float = 600) -> dict[str, Any]:
        try:
            t_done, obj = await asyncio.wait_for(fut, timeout)
        except (TimeoutError, RuntimeError) as err:
            return {"name": name, "ok": False, "why": repr(err)}
        finally:
            self.waiters.forget(name)
        status = obj.get("status") or {}
        value = (status.get("result") or {}).get("returnValue")
        return {
            "name": name,
            "ok": status.get("reason") == "Succeeded" and value == n * 2,
            "reason": status.get("reason"),
            "queued_ms": status.get("queuedMs"),
            "done": t_done,
        }

    async def until(self, what: str, check: Any, timeout: float) -> float:
        t0 = time.perf_counter()

        async def ok() -> bool:
            return bool(check())

        await poll(ok, timeout=timeout, interval=0.25, what=what)
        return time.perf_counter() - t0

    async def burst(self, pool: str, spec: dict[str, Any], floor: int) -> dict[str, Any]:
        n, work = self.args.burst, self.args.work
        await create_pool(self.kube, pool, "python", spec.pop("size", 1), default=False, **spec)
        await self.until(
            f"{pool} ready", lambda: int(self.trace.last(pool).get("ready") or 0) >= floor, 300
        )
        t0 = time.perf_counter()
        sent = await asyncio.gather(*(self.submit(pool, i, work) for i in range(n)))
        t_sent = time.perf_counter() - t0
        results = await asyncio.gather(
            *(self.outcome(name, fut, i) for i, (name, fut) in enumerate(sent))
        )
        t_done = max((r.get("done") or time.perf_counter()) for r in results)
        ups = [t for t, d in self.trace.desired(pool, t0) if d > floor]
        peak = 0
        for p, born in self.ledger.born.values():
            if p == pool:
                live_at_birth = sum(
                    1
                    for m, (q, b) in self.ledger.born.items()
                    if q == pool and b <= born and self.ledger.gone.get(m, float("inf")) > born
                )
                peak = max(peak, live_at_birth)
        waits = [float(r["queued_ms"]) for r in results if r.get("queued_ms") is not None]
        return {
            "pool": pool,
            "spec": spec,
            "executions": n,
            "work_seconds": work,
            "submitted_in_seconds": round(t_sent, 2),
            "correct": sum(1 for r in results if r["ok"]),
            "failures": [r for r in results if not r["ok"]][:5],
            "first_scale_up_seconds": round(ups[0] - t0, 2) if ups else None,
            "peak_pods": peak,
            "queue_wait_ms": summarize(waits),
            "burst_seconds": round(t_done - t0, 2),
            "t0": t0,
            "t_done": t_done,
        }

    async def back_to(self, pool: str, floor: int, timeout: float) -> float:
        """Waits until the pool wants `floor` pods and has exactly that many."""

        def at_floor() -> bool:
            s = self.trace.last(pool)
            return s.get("desired") == floor and self.ledger.live(pool) == floor

        return await self.until(f"{pool} back to {floor}", at_floor, timeout)

    async def burst_vs_fixed(self) -> dict[str, Any]:
        cooldown = self.args.cooldown
        scaled = await self.burst(
            BURST_POOL,
            {"scaling": {"minReady": 1, "maxSize": 12, "cooldownSeconds": cooldown}},
            floor=1,
        )
        log.info(
            "capacity: burst done in %.1fs; waiting for the pool to shrink", scaled["burst_seconds"]
        )
        limit = RATE_WINDOW_SECONDS + cooldown + 120
        await self.back_to(BURST_POOL, 1, limit)
        t_end = time.perf_counter()
        scaled["back_to_min_after_seconds"] = round(t_end - scaled["t_done"], 1)
        window = t_end - scaled["t0"]
        scaled["window_seconds"] = round(window, 1)
        scaled["pod_seconds"] = round(self.ledger.pod_seconds(BURST_POOL, scaled["t0"], t_end), 1)
        await self.kube.delete(SANDBOX_POOLS, BURST_POOL)
        fixed = await self.burst(FIXED_POOL, {"size": 12}, floor=12)
        # After its burst a fixed pool holds its 12 pods: the rest of the window is 12 x time.
        t_fixed = fixed["t_done"] + 10.0
        await asyncio.sleep(max(0.0, t_fixed - time.perf_counter()))
        spent = self.ledger.pod_seconds(FIXED_POOL, fixed["t0"], t_fixed)
        rest = max(0.0, window - (t_fixed - fixed["t0"]))
        fixed["window_seconds"] = round(window, 1)
        fixed["pod_seconds"] = round(spent + 12 * rest, 1)
        await self.kube.delete(SANDBOX_POOLS, FIXED_POOL)
        for r in (scaled, fixed):
            r.pop("t0"), r.pop("t_done")
        return {
            "autoscaled": scaled,
            "fixed_12": fixed,
            "pod_seconds_ratio": report.safe_ratio(scaled["pod_seconds"], fixed["pod_seconds"]),
        }

    async def from_zero(self) -> dict[str, Any]:
        spec = {"scaling": {"minReady": 0, "maxSize": 2, "cooldownSeconds": 10}}
        await create_pool(self.kube, ZERO_POOL, "python", 0, default=False, **spec)
        cold: list[float] = []
        warm: list[float] = []
        empty_again: list[float] = []
        failures: list[dict[str, Any]] = []
        for i in range(self.args.zero_n):
            # Cold: the pool is empty; the execution waits for a pod started for it.
            await self.back_to(ZERO_POOL, 0, RATE_WINDOW_SECONDS + 120)
            t0 = time.perf_counter()
            name, fut = await self.submit(ZERO_POOL, i, 0.0)
            got = await self.outcome(name, fut, i, timeout=300)
            if got["ok"]:
                cold.append((got["done"] - t0) * 1000)
            else:
                failures.append(got)
            t_last = time.perf_counter()
            await self.back_to(ZERO_POOL, 0, RATE_WINDOW_SECONDS + 120)
            empty_again.append(time.perf_counter() - t_last)
        # Warm, on the same pool: minReady 1 keeps a pod ready (a lone execution on a pool of
        # minReady 0 leaves none behind: it is no steady demand), and each run takes it.
        await self.kube.patch(SANDBOX_POOLS, ZERO_POOL, {"spec": {"scaling": {"minReady": 1}}})
        for i in range(self.args.zero_n):
            await asyncio.sleep(2.0)  # the status is written at most once a second

            def one_ready() -> bool:
                s = self.trace.last(ZERO_POOL)
                return int(s.get("ready") or 0) >= 1 and not s.get("claimed")

            await self.until("a warm pod", one_ready, 120)
            t0 = time.perf_counter()
            name, fut = await self.submit(ZERO_POOL, self.args.zero_n + i, 0.0)
            got = await self.outcome(name, fut, self.args.zero_n + i, timeout=300)
            if got["ok"]:
                warm.append((got["done"] - t0) * 1000)
            else:
                failures.append(got)
        await self.kube.delete(SANDBOX_POOLS, ZERO_POOL)
        return {
            "n": self.args.zero_n,
            "cold_ms": summarize(cold),
            "warm_ms": summarize(warm),
            "empty_again_seconds": summarize(empty_again),
            "failures": failures[:5],
        }

    async def steady(self) -> dict[str, Any]:
        rate, seconds, cooldown = (
            self.args.steady_rate,
            self.args.steady_seconds,
            self.args.steady_cooldown,
        )
        spec = {"scaling": {"minReady": 1, "maxSize": 12, "cooldownSeconds": cooldown}}
        await create_pool(self.kube, STEADY_POOL, "python", 1, default=False, **spec)
        await self.until(
            "steady pool ready",
            lambda: int(self.trace.last(STEADY_POOL).get("ready") or 0) >= 1,
            300,
        )
        rng = random.Random(11)
        t0 = time.perf_counter()
        pending = []
        i = 0
        while time.perf_counter() - t0 < seconds:
            name, fut = await self.submit(STEADY_POOL, i, self.args.work)
            pending.append(asyncio.create_task(self.outcome(name, fut, i)))
            i += 1
            await asyncio.sleep(rng.expovariate(rate))
        t_end = time.perf_counter()
        results = await asyncio.gather(*pending)
        sizes = self.trace.desired(STEADY_POOL, t0)
        settle = min(seconds / 2, RATE_WINDOW_SECONDS)
        late = [d for t, d in sizes if t0 + settle <= t <= t_end]
        changes = sum(1 for a, b in itertools.pairwise(late) if a != b)
        waits = [float(r["queued_ms"]) for r in results if r.get("queued_ms") is not None]
        await self.kube.delete(SANDBOX_POOLS, STEADY_POOL)
        return {
            "rate_per_second": rate,
            "cooldown_seconds": cooldown,
            "seconds": seconds,
            "executions": len(results),
            "correct": sum(1 for r in results if r["ok"]),
            "pool_exhausted": sum(1 for r in results if r.get("reason") == "PoolExhausted"),
            "queue_wait_ms": summarize(waits),
            "settled_after_seconds": settle,
            "desired_min": min(late) if late else None,
            "desired_max": max(late) if late else None,
            "desired_changes_after_settling": changes,
            "desired_timeline": [(round(t - t0, 1), d) for t, d in sizes][:400],
        }


async def run(args: argparse.Namespace) -> int:
    return await on_cluster(args, run_on)


async def run_on(kube: Kube, args: argparse.Namespace) -> int:
    if not await fresh_start(kube, [SANDBOX_NS, TENANT_NS]):
        return 2
    result: dict[str, Any] = {"started": utcnow(), "smoke": args.smoke, "parameters": vars(args)}
    op = Operator(sandbox_namespace=SANDBOX_NS, namespaces=[TENANT_NS], log_name="bench-capacity")
    cap = Capacity(kube, args)
    tasks: list[asyncio.Task[None]] = []
    try:
        await create_namespace(kube, SANDBOX_NS, restricted=True)
        await create_namespace(kube, TENANT_NS)
        await wait_no_foreign_operator(kube, TENANT_NS, args.foreign_wait)
        informers = [
            Informer(kube, CODE_EXECUTIONS, TENANT_NS, cap.waiters.on_event),
            Informer(kube, PODS, SANDBOX_NS, cap.ledger.on_event),
            Informer(kube, SANDBOX_POOLS, None, cap.trace.on_event),
        ]
        tasks = [asyncio.create_task(i.run()) for i in informers]
        for i in informers:
            await asyncio.wait_for(i.synced.wait(), 30)
        result["operator_ready_seconds"] = round(await op.start(), 2)
        if args.burst:
            log.info("capacity: burst of %d", args.burst)
            result["burst"] = await cap.burst_vs_fixed()
        if args.zero_n:
            log.info("capacity: from zero, %d", args.zero_n)
            result["from_zero"] = await cap.from_zero()
        if args.steady_seconds:
            log.info("capacity: steady %.1f/s for %.0fs", args.steady_rate, args.steady_seconds)
            result["steady"] = await cap.steady()
        result["operator_log_warnings"] = op.log_warnings()[-20:]
    except ApiError as err:
        log.error("capacity: %s", err)
    finally:
        await teardown(kube, tasks, POOLS, op, [SANDBOX_NS, TENANT_NS])
        result["finished"] = utcnow()
    complete = "operator_log_warnings" in result
    if complete:
        path = save_section("capacity", result, args.smoke)
        report.write_all(args.smoke)
        print(render(result))
        log.info("results in %s and %s", path, results_paths(args.smoke)[1])
    return 0 if complete else 1


def render(r: dict[str, Any]) -> str:
    """The capacity section of results.md."""
    out = ["## Capacity: autoscaled pools", ""]
    b = r.get("burst")
    if b:
        a, f = b["autoscaled"], b["fixed_12"]
        rows = [
            [
                label,
                f"{x['correct']}/{x['executions']}",
                x.get("first_scale_up_seconds") or "—",
                x["peak_pods"],
                fmt_ms(x["queue_wait_ms"].get("p50")),
                fmt_ms(x["queue_wait_ms"].get("p99")),
                x["burst_seconds"],
                x.get("back_to_min_after_seconds") or "—",
                x["pod_seconds"],
            ]
            for label, x in (("minReady 1, maxSize 12", a), ("fixed 12", f))
        ]
        out += [
            f"Burst of {a['executions']} executions at once ({a['work_seconds']} s of work "
            f"each); pod-seconds over the same {a['window_seconds']} s window "
            f"(ratio {b['pod_seconds_ratio']}).",
            "",
            md_table(
                [
                    "pool",
                    "correct",
                    "first scale-up s",
                    "peak pods",
                    "queue wait p50 ms",
                    "p99",
                    "burst s",
                    "back to min s",
                    "pod-seconds",
                ],
                rows,
            ),
            "",
        ]
    z = r.get("from_zero")
    if z:
        out += [
            f"From zero ({z['n']} runs): cold p50 {fmt_ms(z['cold_ms'].get('p50'))} ms "
            f"(max {fmt_ms(z['cold_ms'].get('max'))}), warm p50 {fmt_ms(z['warm_ms'].get('p50'))}"
            f" ms; empty again after {z['empty_again_seconds'].get('p50')} s (p50).",
            "",
        ]
    s = r.get("steady")
    if s:
        out += [
            f"Steady {s['rate_per_second']}/s for {s['seconds']} s: {s['correct']}/"
            f"{s['executions']} correct, PoolExhausted {s['pool_exhausted']}; desired size "
            f"{s['desired_min']}..{s['desired_max']} after {s['settled_after_seconds']} s "
            f"({s['desired_changes_after_settling']} changes); queue wait p50 "
            f"{fmt_ms(s['queue_wait_ms'].get('p50'))} ms, "
            f"p99 {fmt_ms(s['queue_wait_ms'].get('p99'))} ms.",
            "",
        ]
    return "\n".join(out)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.capacity", description=__doc__.splitlines()[0]
    )
    p.add_argument("--smoke", action="store_true", help="burst 12, one run from zero, 60 s steady")
    p.add_argument("--burst", type=int, default=60, help="executions at once (0: skip)")
    p.add_argument("--work", type=float, default=1.0, help="seconds each execution sleeps")
    p.add_argument("--cooldown", type=int, default=60, help="cooldownSeconds of the burst's pools")
    p.add_argument(
        "--steady-cooldown",
        type=int,
        default=300,
        help="cooldownSeconds of the steady pool (the CRD's default: the window that keeps a "
        "steady rate on one size)",
    )
    p.add_argument("--zero-n", type=int, default=3, help="cold runs on an empty pool (0: skip)")
    # 0.5/s: two vCPUs warm about that many pods preloading numpy and pandas (3.5 CPU-seconds
    # each); at 1.0/s the node's CPU, not the pool, sets the warm-up time and the size follows it.
    p.add_argument("--steady-rate", type=float, default=0.5, help="arrivals per second")
    # The rate window (180 s) fills, then 5 minutes of steady load are judged.
    p.add_argument("--steady-seconds", type=float, default=480, help="0: skip")
    add_common_args(p)
    smoke_defaults(p, argv, burst=12, zero_n=1, steady_seconds=60, cooldown=20, steady_cooldown=20)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return bench_main(parse_args, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
