"""`python -m bench.fairness`: one tenant's flood must not starve another (issue 13, point 4).

    .venv/bin/python -m bench.fairness [--smoke] [-a 200] [-b 5] [--pool-size 4] [--cap 2]

1. Turns: tenant A submits A executions, then tenant B submits B, on a pool of P pods. Recorded
   from the client's own watches: the order in which the pods were claimed (per namespace) and
   the order in which the executions ended; the result is how many of A's ended before B's last.
2. Cap: the pool gets `fairness.maxRunningPerNamespace` C, A submits --cap-a executions and B
   B: the most pods ever claimed for A's executions at once, from a watch of the pool's pods,
   must be C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import time
from typing import Any

from bench.cluster import Informer
from bench.command import (
    add_common_args,
    bench_main,
    fresh_start,
    on_cluster,
    smoke_defaults,
    teardown,
)
from bench.operator import Operator
from bench.results import results_paths, save_section, utcnow
from bench.workload import create_namespace, create_pool, wait_no_foreign_operator, wait_pools_full
from codeexec import fairness, podspec
from codeexec.client import Client
from codeexec.kube.client import CODE_EXECUTIONS, PODS, Kube

log = logging.getLogger("bench.fairness")

SANDBOX_NS = "bench-sandbox"
# Each round has namespaces of its own: the first round's ended executions stay out of the
# second's record.
ROUNDS = (("bench-fair-a", "bench-fair-b"), ("bench-fair-a2", "bench-fair-b2"))
NAMESPACES = [ns for pair in ROUNDS for ns in pair]
POOL = "bench-python"
CODE = "def main(n):\n    return n\n"


class Record:
    """Claims per namespace (from the pool's pods) and ends (from the executions)."""

    def __init__(self) -> None:
        self.holding: dict[str, set[str]] = {}
        self.peaks: dict[str, int] = {}
        self.claims: list[str] = []
        self.ends: list[str] = []
        self.pod_events = 0
        self.expected = 0
        self.all_ended = asyncio.Event()
        self._claimed: set[str] = set()
        self._ended: set[str] = set()

    def pod(self, type_: str, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        for pods in self.holding.values():
            pods.discard(meta["name"])
        ns = fairness.namespace_of((meta.get("annotations") or {}).get("codeexec.io/execution"))
        claimed = (meta.get("labels") or {}).get(podspec.CLAIMED_BY_LABEL)
        if type_ != "DELETED" and ns and claimed and not meta.get("deletionTimestamp"):
            self.holding.setdefault(ns, set()).add(meta["name"])
            if meta["name"] not in self._claimed:
                self._claimed.add(meta["name"])
                self.claims.append(ns)
        self.pod_events += 1
        for key, pods in self.holding.items():
            self.peaks[key] = max(self.peaks.get(key, 0), len(pods))

    def execution(self, _type: str, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        key = f"{meta['namespace']}/{meta['name']}"
        phase = (obj.get("status") or {}).get("phase")
        if phase in ("Succeeded", "Failed") and key not in self._ended:
            self._ended.add(key)
            self.ends.append(meta["namespace"])
            if len(self.ends) >= self.expected:
                self.all_ended.set()


async def _round(
    kube: Kube, names: tuple[str, str], n_a: int, n_b: int, timeout: float
) -> tuple[Record, float]:
    record = Record()
    record.expected = n_a + n_b
    A, B = names
    selector = f"{podspec.POOL_LABEL}={POOL}"
    informers = [Informer(kube, PODS, SANDBOX_NS, record.pod, label_selector=selector)]
    informers += [Informer(kube, CODE_EXECUTIONS, ns, record.execution) for ns in (A, B)]
    tasks = [asyncio.create_task(i.run()) for i in informers]
    try:
        for i in informers:
            await asyncio.wait_for(i.synced.wait(), 60)
        t0 = time.monotonic()
        for ns, count in ((A, n_a), (B, n_b)):
            client = Client(kube, ns)
            for n in range(count):
                await kube.create(CODE_EXECUTIONS, client.manifest(CODE, arguments={"n": n}), ns)
        log.info("submitted %d (A) then %d (B) in %.1fs", n_a, n_b, time.monotonic() - t0)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(record.all_ended.wait(), timeout)
        return record, time.monotonic() - t0
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def run(args: argparse.Namespace) -> int:
    return await on_cluster(args, run_on)


async def run_on(kube: Kube, args: argparse.Namespace) -> int:
    if not await fresh_start(kube, [SANDBOX_NS, *NAMESPACES], timeout=300):
        return 2
    result: dict[str, Any] = {
        "started": utcnow(),
        "smoke": args.smoke,
        "a": args.a,
        "b": args.b,
        "pool_size": args.pool_size,
        "cap": args.cap,
        "cap_round_a": args.cap_a,
    }
    op = Operator(sandbox_namespace=SANDBOX_NS, namespaces=NAMESPACES, log_name="bench-fairness")
    try:
        await create_namespace(kube, SANDBOX_NS, restricted=True)
        for ns in NAMESPACES:
            await create_namespace(kube, ns)
        await wait_no_foreign_operator(kube, NAMESPACES[0], args.foreign_wait)
        # No preload: pods warm in about a second, so the flood is served at the pool's pace.
        spec: dict[str, Any] = {"queueTimeoutSeconds": 3600, "preload": []}
        await create_pool(kube, POOL, "python", args.pool_size, **spec)
        await op.start()
        await wait_pools_full(kube, {POOL: args.pool_size})

        A, B = ROUNDS[0]
        record, seconds = await _round(kube, ROUNDS[0], args.a, args.b, args.timeout)
        claims = "".join("b" if ns == B else "a" for ns in record.claims)
        last_b = max((i for i, ns in enumerate(record.ends) if ns == B), default=None)
        result["turns"] = {
            "seconds": round(seconds, 1),
            "ended": len(record.ends),
            "claims_head": claims[:40],
            "a_claimed_before_b_first": claims.find("b"),
            "a_claimed_before_b_last": claims[: claims.rfind("b")].count("a"),
            "a_ended_before_b_last": (
                record.ends[:last_b].count(A) if last_b is not None else None
            ),
        }
        log.info("turns: %s", result["turns"])

        capped = {"maxRunningPerNamespace": args.cap}
        await create_pool(kube, POOL, "python", args.pool_size, **spec, fairness=capped)
        await wait_pools_full(kube, {POOL: args.pool_size})
        A, B = ROUNDS[1]
        record, seconds = await _round(kube, ROUNDS[1], args.cap_a, args.b, args.timeout)
        result["cap_round"] = {
            "seconds": round(seconds, 1),
            "ended": len(record.ends),
            "pod_events": record.pod_events,
            "peak_claimed": {("a" if k == A else "b"): v for k, v in record.peaks.items()},
        }
        log.info("cap: %s", result["cap_round"])
    finally:
        await teardown(kube, [], [POOL], op, [SANDBOX_NS, *NAMESPACES])
        result["finished_at"] = utcnow()
    turns, cap = result.get("turns") or {}, result.get("cap_round") or {}
    ok = (
        turns.get("ended") == args.a + args.b
        and cap.get("ended") == args.cap_a + args.b
        and (turns.get("a_ended_before_b_last") or 0) < 29  # B's five before A's 30th
        and cap.get("peak_claimed", {}).get("a") == args.cap
    )
    result["passed"] = ok
    path = save_section("fairness", result, args.smoke)
    log.info("results in %s (%s)", path, results_paths(args.smoke)[0])
    print(result)
    return 0 if ok else 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.fairness", description=__doc__.splitlines()[0]
    )
    p.add_argument("--smoke", action="store_true", help="A 30, B 5")
    p.add_argument("-a", type=int, default=200, help="tenant A's executions")
    p.add_argument("-b", type=int, default=5, help="tenant B's executions, submitted after A's")
    p.add_argument("--pool-size", type=int, default=4)
    p.add_argument("--cap", type=int, default=2, help="maxRunningPerNamespace of the cap round")
    p.add_argument("--cap-a", type=int, default=200, help="tenant A's executions in the cap round")
    p.add_argument("--timeout", type=float, default=1200, help="seconds per round")
    add_common_args(p)
    smoke_defaults(p, argv, a=30, cap_a=30, timeout=300)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return bench_main(parse_args, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
