"""`make soak`: hundreds of warm pods held idle for an hour, and an operator restart.

    .venv/bin/python -m bench.soak [--smoke] [--pods 200] [--idle 3600] [--sample 30]

The operator holds an attach session open to every warm pod ahead of its claim (preattach.py).
This run measures what that costs and whether it lasts:

- the operator's RSS with the pool at 0, then with every pod of a pool of P held (P warm
  Python pods without preloaded modules and with a small CPU and memory request, so that P fit
  on the test bed's node): the difference per pod is the cost of one held pod to the operator;
- every `--sample` seconds over `--idle` seconds: sessions held, pods ready, pods replaced (a
  warm pod that disappeared), the operator's RSS; none may be lost;
- an operator restart (SIGTERM, start again): seconds until every pod is held again, and that
  no pod was replaced across it.

The test bed's kubelet takes up to 250 pods (e2e/cluster/configs.sh), room for 200 of ours.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import statistics
import sys
import time
from typing import Any

from bench import report
from bench.command import (
    add_common_args,
    bench_main,
    fresh_start,
    on_cluster,
    smoke_defaults,
    teardown,
)
from bench.operator import Operator, read_proc
from bench.results import (
    MachineLoad,
    machine_info,
    md_table,
    results_paths,
    save_section,
    utcnow,
)
from bench.workload import create_namespace, create_pool, wait_namespaces_gone
from codeexec.kube.client import PODS, SANDBOX_POOLS, Kube

log = logging.getLogger("bench.soak")

SANDBOX_NS = "bench-soak-sandbox"
EXEC_NS = "bench-soak"
POOL = "bench-soak"
HELD = "codeexec_preattached_sessions"
# Small enough that 200 fit on two vCPUs and 24 GiB; the limit still bounds each sandbox.
RESOURCES = {
    "requests": {"cpu": "5m", "memory": "48Mi"},
    "limits": {"cpu": "500m", "memory": "128Mi"},
}


async def warm_pods(kube: Kube) -> dict[str, str]:
    """{name: uid} of the pool's pods that are ready and unclaimed."""
    listing = await kube.list(PODS, SANDBOX_NS)
    out = {}
    for pod in listing.get("items", []):
        meta, status = pod["metadata"], pod.get("status") or {}
        if meta.get("deletionTimestamp"):
            continue
        ready = any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in status.get("conditions") or []
        )
        if ready:
            out[meta["name"]] = meta["uid"]
    return out


async def held(op: Operator) -> int:
    try:
        return int((await op.metrics()).total(HELD))
    except Exception:  # a restarting operator: nothing held in this process yet
        return 0


def rss_mb(op: Operator) -> float | None:
    st = read_proc(op.pid) if op.alive() else None
    return None if st is None else round(st.rss_bytes / 2**20, 1)


async def steady_rss_mb(op: Operator, seconds: float) -> float | None:
    """The median of one RSS sample a second: the settled figure, not a start-up peak."""
    samples = []
    for _ in range(max(int(seconds), 1)):
        value = rss_mb(op)
        if value is not None:
            samples.append(value)
        await asyncio.sleep(1)
    return round(statistics.median(samples), 1) if samples else None


async def wait_all_held(op: Operator, kube: Kube, pods: int, timeout: float) -> float | None:
    """Seconds until `pods` warm pods are ready and every one is held; None on timeout."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if await held(op) >= pods and len(await warm_pods(kube)) >= pods:
            return round(time.monotonic() - t0, 1)
        await asyncio.sleep(0.5)
    return None


async def run(args: argparse.Namespace) -> int:
    return await on_cluster(args, run_on)


async def run_on(kube: Kube, args: argparse.Namespace) -> int:
    if not await fresh_start(kube, [SANDBOX_NS, EXEC_NS], timeout=300):
        return 2
    load = MachineLoad()
    result: dict[str, Any] = {
        "started": utcnow(),
        "smoke": args.smoke,
        "pods": args.pods,
        "idle_seconds": args.idle,
        "sample_seconds": args.sample,
        "pool_resources": RESOURCES,
        "machine": machine_info(),
    }
    op = Operator(sandbox_namespace=SANDBOX_NS, namespaces=[EXEC_NS], log_name="bench-soak")
    log_start = op.log_size()
    try:
        await create_namespace(kube, SANDBOX_NS, restricted=True)
        await create_namespace(kube, EXEC_NS)
        await create_pool(kube, POOL, "python", 0, preload=[], resources=RESOURCES)
        result["empty_ready_seconds"] = round(await op.start(), 2)
        result["rss_empty_mb"] = await steady_rss_mb(op, args.settle)

        await kube.patch(SANDBOX_POOLS, POOL, {"spec": {"size": args.pods}})
        log.info("pool of %d: waiting for every pod to be ready and held", args.pods)
        result["all_held_seconds"] = await wait_all_held(op, kube, args.pods, args.fill_timeout)
        if result["all_held_seconds"] is None:
            log.error("only %d of %d pods held", await held(op), args.pods)
            return 1
        result["rss_held_mb"] = await steady_rss_mb(op, args.settle)
        grown = (result["rss_held_mb"] or 0) - (result["rss_empty_mb"] or 0)
        result["rss_per_held_pod_kib"] = round(grown * 1024 / args.pods, 1)
        log.info(
            "all %d held after %.1fs; RSS %s -> %s MB (%.1f KiB per pod)",
            args.pods,
            result["all_held_seconds"],
            result["rss_empty_mb"],
            result["rss_held_mb"],
            result["rss_per_held_pod_kib"],
        )

        first = await warm_pods(kube)
        samples: list[dict[str, Any]] = []
        t0 = time.monotonic()
        while time.monotonic() - t0 < args.idle:
            await asyncio.sleep(min(args.sample, max(args.idle - (time.monotonic() - t0), 0)))
            now = await warm_pods(kube)
            samples.append(
                {
                    "at_seconds": round(time.monotonic() - t0),
                    "held": await held(op),
                    "ready": len(now),
                    "replaced": len(set(first.values()) - set(now.values())),
                    "rss_mb": rss_mb(op),
                }
            )
            log.info("idle %s", samples[-1])
        result["idle_samples"] = samples
        result["idle_min_held"] = min((s["held"] for s in samples), default=None)
        result["idle_pods_replaced"] = samples[-1]["replaced"] if samples else None
        rss = [s["rss_mb"] for s in samples if s["rss_mb"] is not None]
        result["idle_rss_first_last_mb"] = [rss[0], rss[-1]] if rss else None

        before = await warm_pods(kube)
        op.stop()
        t_restart = time.monotonic()
        op.spawn()
        result["restart_ready_seconds"] = round(await op.wait_ready(t_restart, timeout=300), 2)
        rehold = await wait_all_held(op, kube, args.pods, args.fill_timeout)
        result["rehold_seconds"] = (
            None if rehold is None else round(time.monotonic() - t_restart, 1)
        )
        after = await warm_pods(kube)
        result["restart_pods_replaced"] = len(set(before.values()) - set(after.values()))
        result["rss_after_restart_mb"] = await steady_rss_mb(op, args.settle)
        result["operator_log_warnings"] = op.log_warnings(log_start)[-10:]
    finally:
        await teardown(kube, [], [POOL], op, [SANDBOX_NS, EXEC_NS])
        result["machine_load"] = load.stop()
        result["finished_at"] = utcnow()
    complete = "rss_after_restart_mb" in result
    result["passed"] = ok = (
        complete
        and result["idle_min_held"] == args.pods
        and result["idle_pods_replaced"] == 0
        and result["rehold_seconds"] is not None
        and result["restart_pods_replaced"] == 0
    )
    if complete:
        path = save_section("soak", result, args.smoke)
        report.write_all(args.smoke)
        print(render(result))
        log.info("results in %s and %s", path, results_paths(args.smoke)[1])
    with contextlib.suppress(Exception):
        await wait_namespaces_gone(kube, [SANDBOX_NS, EXEC_NS], timeout=120)
    return 0 if ok else 1


# Issue 15's targets for held sessions.
TARGET_KIB_PER_POD = 100
TARGET_REHOLD_S = 30


def render(r: dict[str, Any]) -> str:
    def met(ok: bool) -> str:
        return "met" if ok else "**not met**"

    per_pod, rehold = r.get("rss_per_held_pod_kib"), r.get("rehold_seconds")
    rows: list[list[Any]] = [
        ["warm pods held (Python, no preload)", r.get("pods"), ""],
        ["all held after the pool was set to that size", f"{r.get('all_held_seconds')} s", ""],
        [
            "operator RSS: pool at 0 / all held / after the restart",
            " / ".join(
                str(r.get(k)) for k in ("rss_empty_mb", "rss_held_mb", "rss_after_restart_mb")
            )
            + " MB",
            "",
        ],
        [
            "operator memory per held pod",
            f"{per_pod} KiB",
            met(per_pod is not None and per_pod <= TARGET_KIB_PER_POD),
        ],
        [
            f"idle {r.get('idle_seconds'):g} s: fewest held / pods replaced",
            f"{r.get('idle_min_held')} / {r.get('idle_pods_replaced')}",
            met(r.get("idle_min_held") == r.get("pods") and r.get("idle_pods_replaced") == 0),
        ],
        ["RSS at the first / last idle sample", f"{r.get('idle_rss_first_last_mb')} MB", ""],
        [
            "all held again after an operator restart / pods replaced by it",
            f"{rehold} s / {r.get('restart_pods_replaced')}",
            met(
                rehold is not None
                and rehold <= TARGET_REHOLD_S
                and r.get("restart_pods_replaced") == 0
            ),
        ],
    ]
    head = f"## make soak ({r.get('started', '?')}{', smoke' if r.get('smoke') else ''})"
    return "\n".join([head, "", md_table(["", "value", "target"], rows), ""])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="10 pods, 20 s idle")
    p.add_argument("--pods", type=int, default=200)
    p.add_argument("--idle", type=float, default=3600, help="seconds held idle")
    p.add_argument("--sample", type=float, default=30, help="seconds between idle samples")
    p.add_argument("--settle", type=float, default=20, help="seconds of RSS samples per figure")
    p.add_argument("--fill-timeout", type=float, default=900, help="seconds for all to be held")
    add_common_args(p)
    smoke_defaults(p, argv, pods=10, idle=20, sample=5, settle=5, fill_timeout=300)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return bench_main(lambda _: args, run, argv, deadline_s=args.idle + 2 * args.fill_timeout)


if __name__ == "__main__":
    sys.exit(main())
