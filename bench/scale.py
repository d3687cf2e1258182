"""`make scale`: restart the operator with thousands of executions in the cluster.

    .venv/bin/python -m bench.scale [--smoke | --large] [--finished 5000] [--pending 200]
                                    [--namespaces 20] [--ttl SECONDS]

With the operator stopped, F finished executions (created, then given a terminal status
through the status subresource, as the operator would have written it) and P pending ones
are spread over K namespaces. Then the operator starts and we measure:

- time from process start to /readyz answering 200, and until every pending one is terminal;
- peak RSS (sampled from /proc, and the kernel's high-water mark);
- the API requests it made until ready and until the pending ones were done, counted by the
  operator process itself (bench/opwrap.py wraps its HTTP client), with the API server's
  cluster-wide `apiserver_request_total` delta beside it (other clients included);
- that nothing finished was processed again: every finished object's resourceVersion is the
  same after the run, and the operator finished exactly P executions.

`--large` is issue 15's size: 50,000 finished + 1,000 pending in 100 namespaces (populating
alone takes ~10 min). `--ttl` gives the finished ones a `ttlSecondsAfterFinished` (a day, say)
so that the TTL janitor's own cost is in the figure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
import time
from typing import Any

from bench import report
from bench.cluster import ApiProbe, Informer, raw_get
from bench.command import (
    add_common_args,
    bench_main,
    fresh_start,
    on_cluster,
    smoke_defaults,
    teardown,
)
from bench.metrics import Metrics, counter_delta, only
from bench.operator import Operator
from bench.results import MachineLoad, machine_info, results_paths, save_section, summarize, utcnow
from bench.workload import (
    create_namespace,
    create_pool,
    wait_namespaces_gone,
    wait_no_foreign_operator,
    wait_pools_full,
)
from codeexec import finished as fin
from codeexec import status as st
from codeexec.api.models import ExecutionResult
from codeexec.client import Client
from codeexec.kube.client import CODE_EXECUTIONS, ApiError, Kube
from codeexec.outcomes import Outcome, Reason

log = logging.getLogger("bench.scale")

SANDBOX_NS = "bench-sandbox"
POOL = "bench-python"
MARKER = "bench-scale synthetic terminal status"
CODE = "def main(n):\n    return n\n"


def namespaces(k: int) -> list[str]:
    return [f"bench-scale-{i:02d}" for i in range(k)]


def finished_status() -> dict[str, Any]:
    outcome = Outcome(Reason.SUCCEEDED, MARKER)
    res = ExecutionResult(
        status="success",
        started=True,
        exit_code=0,
        return_value=1,
        return_value_bytes=1,
        stdout="ran 1\n",
        stdout_bytes=6,
        wall_ms=3.2,
        cpu_ms=2.9,
        peak_memory_bytes=9_000_000,
    )
    return st.finished(outcome, res, created_at=None, generation=1)


async def bounded(n: int, limit: int, fn: Any) -> None:
    """fn(i) for i in range(n), `limit` at a time, in order of i."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)

    async def worker() -> None:
        while True:
            try:
                i = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            await fn(i)

    await asyncio.gather(*(worker() for _ in range(limit)))


async def with_retries(what: str, call: Any) -> Any:
    for attempt in range(8):
        try:
            return await call()
        except ApiError as err:
            if err.conflict or attempt == 7:
                raise
            log.warning("%s: %s; retrying", what, err)
            await asyncio.sleep(0.2 * 2**attempt)
    return None


async def populate(
    kube: Kube, nss: list[str], finished: int, pending: int, conc: int, ttl: int | None = None
) -> float:
    client = Client(kube, nss[0])
    status = finished_status()
    t0 = time.monotonic()
    done = 0

    async def make_finished(i: int) -> None:
        nonlocal done
        ns, name = nss[i % len(nss)], f"done-{i:06d}"
        body = client.manifest(
            CODE,
            arguments={"n": i},
            pool=POOL,
            name=name,
            labels={"bench-kind": "finished"},
            ttl_seconds_after_finished=ttl,
        )
        await with_retries(name, lambda: kube.create(CODE_EXECUTIONS, body, ns))
        await with_retries(name, lambda: kube.patch_status(CODE_EXECUTIONS, name, status, ns))
        done += 1
        if done % 1000 == 0:
            log.info(
                "finished executions: %d/%d (%.0f/s)",
                done,
                finished,
                done / (time.monotonic() - t0),
            )

    async def make_pending(i: int) -> None:
        ns, name = nss[i % len(nss)], f"pending-{i:04d}"
        body = client.manifest(
            CODE, arguments={"n": i}, pool=POOL, name=name, labels={"bench-kind": "pending"}
        )
        await with_retries(name, lambda: kube.create(CODE_EXECUTIONS, body, ns))

    await bounded(finished, conc, make_finished)
    await bounded(pending, conc, make_pending)
    return time.monotonic() - t0


async def snapshot(kube: Kube, nss: list[str]) -> dict[str, dict[str, Any]]:
    """{ns/name: {rv, phase, message}} of every execution in our namespaces."""
    out: dict[str, dict[str, Any]] = {}
    for ns in nss:
        listing = await kube.list(CODE_EXECUTIONS, ns)
        for item in listing.get("items", []):
            meta, status = item["metadata"], item.get("status") or {}
            out[f"{ns}/{meta['name']}"] = {
                "rv": meta["resourceVersion"],
                "phase": status.get("phase"),
                "message": status.get("message"),
                "kind": (meta.get("labels") or {}).get("bench-kind"),
            }
    return out


def apiserver_delta(raw0: str, raw1: str) -> dict[str, float]:
    a0, a1 = (Metrics.parse(only(t, ("apiserver_request_total",))) for t in (raw0, raw1))
    return counter_delta(a0, a1, "apiserver_request_total", ("verb", "resource", "subresource"))


def totals(counts: dict[str, float]) -> dict[str, Any]:
    return {"total": int(sum(counts.values())), **{k: int(v) for k, v in counts.items()}}


async def run(args: argparse.Namespace) -> int:
    return await on_cluster(args, run_on)


async def run_on(kube: Kube, args: argparse.Namespace) -> int:
    nss = namespaces(args.namespaces)
    if not await fresh_start(kube, [SANDBOX_NS, *nss], timeout=300):
        return 2
    load = MachineLoad()
    result: dict[str, Any] = {
        "started": utcnow(),
        "smoke": args.smoke,
        "finished": args.finished,
        "pending": args.pending,
        "namespaces": args.namespaces,
        "ttl_seconds_after_finished": args.ttl,
        "pool_size": args.pool_size,
        "queue_timeout_seconds": args.queue_timeout,
        "machine": machine_info(),
    }
    op = Operator(sandbox_namespace=SANDBOX_NS, namespaces=nss, log_name="bench-scale-operator")
    tasks: list[asyncio.Task[None]] = []
    log_start = op.log_size()
    try:
        await create_namespace(kube, SANDBOX_NS, restricted=True)
        for ns in nss:
            await create_namespace(kube, ns)
        await wait_no_foreign_operator(kube, nss[0], args.foreign_wait)
        # Pending executions wait for a pod from their creation on; with a small pool the
        # default 120 s would turn most of them into PoolExhausted before they get one.
        await create_pool(
            kube, POOL, "python", args.pool_size, queueTimeoutSeconds=args.queue_timeout
        )
        # A first start with nothing to do: the baseline, and a full pool to start from.
        result["empty_ready_seconds"] = round(await op.start(), 2)
        await wait_pools_full(kube, {POOL: args.pool_size})
        result["empty_rss_mb"] = round(op.sampler.peak_rss() / 2**20, 1)
        op.stop()
        log.info(
            "operator stopped; creating %d finished and %d pending executions in %d namespaces",
            args.finished,
            args.pending,
            args.namespaces,
        )
        result["populate_seconds"] = round(
            await populate(kube, nss, args.finished, args.pending, args.concurrency, args.ttl), 1
        )
        # Whether the API server lets the operator leave finished executions out of its watch
        # (Kubernetes 1.31+ with the CRD's selectableFields applied); the operator asks the same.
        result["finished_left_out_of_the_watch"] = await fin.selectable(kube, tuple(nss))
        before = await snapshot(kube, nss)
        foreign = [
            k for k, v in before.items() if v["kind"] == "finished" and v["message"] != MARKER
        ]
        foreign += [k for k, v in before.items() if v["kind"] == "pending" and v["phase"]]
        result["touched_by_another_operator_before_start"] = len(foreign)
        if foreign:
            log.error(
                "%d of our executions were processed by another operator on the cluster "
                "(one watching all namespaces?), e.g. %s",
                len(foreign),
                foreign[:3],
            )

        # The restart under test. Our watches are up before the process starts.
        pending_names = {k for k, v in before.items() if v["kind"] == "pending"}
        pending_done: dict[str, float] = {}
        picked_up: dict[str, float] = {}  # first status write on a pending one, per namespace
        first_status: dict[str, float] = {}  # per pending execution: its first status write
        running: dict[str, float] = {}  # ... and when it was seen Running (claim recorded)
        all_done = asyncio.Event()
        t0 = time.monotonic()

        def on_event(type_: str, obj: dict[str, Any]) -> None:
            ns, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
            key = f"{ns}/{name}"
            phase = (obj.get("status") or {}).get("phase")
            if key not in pending_names or not phase:
                return
            picked_up.setdefault(ns, time.monotonic() - t0)
            first_status.setdefault(key, time.monotonic() - t0)
            if phase == "Running":
                running.setdefault(key, time.monotonic() - t0)
            if phase in ("Succeeded", "Failed") and key not in pending_done:
                pending_done[key] = time.monotonic() - t0
                if len(pending_done) == len(pending_names):
                    all_done.set()

        informers = [Informer(kube, CODE_EXECUTIONS, ns, on_event) for ns in nss]
        tasks = [asyncio.create_task(i.run()) for i in informers]
        for i in informers:
            await asyncio.wait_for(i.synced.wait(), 60)
        # Raw pages only while measuring: parsing them would stall our clock (see `only`).
        a0 = await raw_get(kube, "/metrics", 60)
        sampler_mark = len(op.sampler.per_pid)
        probe = ApiProbe(kube)
        probe.start()
        t0 = op.spawn()
        ready_s = await op.wait_ready(t0, timeout=300)
        m_ready = await op.metrics()
        a_ready = await raw_get(kube, "/metrics", 60)
        rss_at_ready = op.sampler.peak_rss()
        result["ready_seconds"] = round(ready_s, 2)
        log.info("ready %.2fs after start", ready_s)
        if not pending_names:
            all_done.set()
        try:
            await asyncio.wait_for(all_done.wait(), args.pending_timeout)
            result["pending_done_seconds"] = round(time.monotonic() - t0, 1)
        except TimeoutError:
            result["pending_done_seconds"] = None
            log.error(
                "only %d/%d pending executions terminal after %.0fs",
                len(pending_done),
                len(pending_names),
                args.pending_timeout,
            )
        result["pending_terminal"] = len(pending_done)
        await probe.stop()
        result["api_probe_during_restart"] = probe.summary()
        ms = 1000.0
        result["pending_first_status_write_ms"] = summarize([v * ms for v in first_status.values()])
        result["pending_seen_running_ms"] = summarize([v * ms for v in running.values()])
        result["pending_terminal_ms"] = summarize([v * ms for v in pending_done.values()])
        with_pending = {k.split("/")[0] for k in pending_names}
        result["first_pending_picked_up_seconds"] = (
            round(min(picked_up.values()), 2) if picked_up else None
        )
        result["every_namespace_picked_up_seconds"] = (
            round(max(picked_up.values()), 2)
            if picked_up and len(picked_up) == len(with_pending)
            else None
        )
        m_done = await op.metrics()
        a_done = await raw_get(kube, "/metrics", 60)
        await asyncio.sleep(args.settle)
        after = await snapshot(kube, nss)
        m_end = await op.metrics()
        changed = [
            k
            for k, v in before.items()
            if v["kind"] == "finished" and (k not in after or after[k]["rv"] != v["rv"])
        ]
        result["finished_changed"] = len(changed)
        result["finished_changed_examples"] = changed[:10]
        pids = list(op.sampler.per_pid)[sampler_mark:]
        peak = max(
            (max(op.sampler.per_pid[p].rss_bytes, op.sampler.per_pid[p].hwm_bytes) for p in pids),
            default=0,
        )
        result["peak_rss_mb"] = round(peak / 2**20, 1)
        result["rss_at_ready_mb"] = round(rss_at_ready / 2**20, 1)
        result["cpu_seconds_until_done"] = round(
            sum(op.sampler.per_pid[p].cpu_seconds for p in pids), 2
        )
        empty = Metrics({})
        result["api_requests_until_ready"] = totals(
            counter_delta(empty, m_ready, "bench_operator_api_requests_total", ("verb", "resource"))
        )
        result["api_requests_until_done"] = totals(
            counter_delta(empty, m_done, "bench_operator_api_requests_total", ("verb", "resource"))
        )
        result["apiserver_requests_cluster_wide_until_ready"] = totals(apiserver_delta(a0, a_ready))
        result["apiserver_requests_cluster_wide_until_done"] = totals(apiserver_delta(a0, a_done))
        executed = counter_delta(empty, m_end, "codeexec_executions_total", ("reason",))
        result["executions_finished_by_operator"] = {k: int(v) for k, v in executed.items()}
        result["executions_finished_by_operator_total"] = int(sum(executed.values()))
        result["operator_log_warnings"] = op.log_warnings(log_start)[-10:]
    finally:
        await teardown(kube, tasks, [POOL], op, [SANDBOX_NS, *nss])
        result["machine_load"] = load.stop()
        result["finished_at"] = utcnow()
    complete = "finished_changed" in result
    ok = (
        complete
        and result["finished_changed"] == 0
        and result["pending_terminal"] == args.pending
        and result["executions_finished_by_operator_total"] == args.pending
    )
    result["passed"] = ok
    if complete:
        path = save_section("scale", result, args.smoke)
        report.write_all(args.smoke)
        print(report.render_scale(result))
        log.info("results in %s and %s", path, results_paths(args.smoke)[1])
    with contextlib.suppress(Exception):
        await wait_namespaces_gone(kube, [SANDBOX_NS, *nss], timeout=120)
    return 0 if ok else 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="200 finished, 20 pending, 4 namespaces")
    p.add_argument(
        "--large",
        action="store_true",
        help="50,000 finished, 1,000 pending, 100 namespaces (issue 15's size), pool of 10",
    )
    p.add_argument("--finished", type=int, default=5000)
    p.add_argument("--pending", type=int, default=200)
    p.add_argument("--namespaces", type=int, default=20)
    p.add_argument("--pool-size", type=int, default=4)
    p.add_argument("--concurrency", type=int, default=16, help="parallel API calls to populate")
    p.add_argument("--queue-timeout", type=int, default=900, help="the pool's queueTimeoutSeconds")
    p.add_argument("--pending-timeout", type=float, default=900)
    p.add_argument("--settle", type=float, default=10, help="seconds before the final check")
    p.add_argument("--ttl", type=int, default=None, help="ttlSecondsAfterFinished of each one")
    add_common_args(p)
    smoke_defaults(p, argv, finished=200, pending=20, namespaces=4, pending_timeout=300, settle=5)
    if "--large" in (argv if argv is not None else sys.argv[1:]):
        p.set_defaults(
            finished=50_000,
            pending=1_000,
            namespaces=100,
            pool_size=10,
            concurrency=48,
            pending_timeout=3600,
            # 1,000 on a pool of 10 drained at ~0.7/s on the test bed: with the default 900 s,
            # 365 of the first run ended PoolExhausted (2026-12-01), by design but not the point.
            queue_timeout=3600,
        )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return bench_main(parse_args, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
