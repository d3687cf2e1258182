"""Where a terminal status write's time goes at the API server (issue 15's 12-15 ms PATCH).

    .venv/bin/python -m bench.statuswrite [-n 200]

No operator runs. The same objects are created and given the operator's terminal status (one
JSON Patch on the status subresource, as `Kube.replace_status` sends it), one request at a
time, against: the real CRD; a copy of it in another group without any CEL rule; the copy
with the status given as a merge patch; and a one-field merge patch (the size of the write).
Client-side latency per request and the API server's own mean per group are reported
(`bench/results.json` section `statuswrite`).
"""

from __future__ import annotations

import argparse
import copy
import logging
import secrets
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import yaml

from bench.cluster import CRDS, ensure_crds, poll
from bench.command import add_common_args, bench_main, on_cluster, smoke_defaults
from bench.metrics import Metrics, apiserver_metrics, histogram_delta
from bench.results import machine_info, save_section, summarize, utcnow
from bench.scale import finished_status
from bench.workload import create_namespace
from codeexec.kube.client import CODE_EXECUTIONS, NAMESPACES, ApiError, Kube, Resource

log = logging.getLogger("bench.statuswrite")

COPY_GROUP = "statuswrite.bench.codeexec.io"
COPY = Resource(COPY_GROUP, CODE_EXECUTIONS.version, CODE_EXECUTIONS.plural)
CRD_FILE = Path(__file__).resolve().parents[1] / "crds" / "codeexec.io_codeexecutions.yaml"
CODE = "def main(n):\n    return n\n"


def without_cel(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: without_cel(v) for k, v in node.items() if k != "x-kubernetes-validations"}
    if isinstance(node, list):
        return [without_cel(v) for v in node]
    return node


def copy_crd(path: Path = CRD_FILE) -> dict[str, Any]:
    doc = copy.deepcopy(yaml.safe_load(path.read_text()))
    doc["spec"]["group"] = COPY_GROUP
    doc["metadata"] = {"name": f"{CODE_EXECUTIONS.plural}.{COPY_GROUP}"}
    doc["spec"]["versions"] = [without_cel(v) for v in doc["spec"]["versions"]]
    return dict(doc)


def body(res: Resource, name: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{res.group}/{res.version}",
        "kind": "CodeExecution",
        "metadata": {"name": name},
        "spec": {"language": "python", "code": CODE, "arguments": {"n": 1}},
    }


async def timed(call: Awaitable[Any]) -> float:
    t0 = time.perf_counter()
    await call
    return (time.perf_counter() - t0) * 1000.0


async def series(
    kube: Kube, ns: str, res: Resource, n: int, write: str, status: dict[str, Any]
) -> dict[str, Any]:
    """n objects: create each, then write its status the given way; both timed."""
    creates: list[float] = []
    writes: list[float] = []
    tag = secrets.token_hex(3)
    for i in range(n):
        name = f"sw-{write}-{tag}-{i:04d}"
        creates.append(await timed(kube.create(res, body(res, name), ns)))
        if write == "json":
            call = kube.replace_status(res, name, status, ns)
        elif write == "merge":
            call = kube.patch_status(res, name, status, ns)
        else:
            call = kube.patch_status(res, name, {"phase": "Running"}, ns)
        writes.append(await timed(call))
    return {"create_ms": summarize(creates), "status_write_ms": summarize(writes)}


def server_means(a0: Metrics, a1: Metrics, group: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for verb, sub in (("POST", ""), ("PATCH", "status")):
        h = histogram_delta(
            a0,
            a1,
            "apiserver_request_duration_seconds",
            verb=verb,
            group=group,
            resource="codeexecutions",
            subresource=sub,
        )
        if h["count"]:
            out[f"{verb} {sub or 'object'}"] = {"count": h["count"], "mean_ms": h["mean_ms"]}
    return out


async def run_on(kube: Kube, args: argparse.Namespace) -> int:
    ns = f"bench-statuswrite-{secrets.token_hex(2)}"
    crd = copy_crd()
    status = finished_status()
    result: dict[str, Any] = {
        "started": utcnow(),
        "smoke": args.smoke,
        "n": args.n,
        "machine": machine_info(),
        "status_bytes": len(yaml.safe_dump(status)),
    }
    await ensure_crds(kube)
    await create_namespace(kube, ns)
    try:
        try:
            await kube.create(CRDS, crd)
        except ApiError as err:
            if not err.conflict:
                raise
        await poll(lambda: served(kube, ns), timeout=120, interval=1, what="copy CRD served")
        variants = [
            ("real CRD, JSON Patch of the status (the operator's write)", CODE_EXECUTIONS, "json"),
            ("copy without CEL rules, JSON Patch", COPY, "json"),
            ("copy without CEL rules, merge patch", COPY, "merge"),
            ("real CRD, one-field merge patch", CODE_EXECUTIONS, "tiny"),
            ("real CRD, JSON Patch again (drift check)", CODE_EXECUTIONS, "json"),
        ]
        await series(kube, ns, CODE_EXECUTIONS, 5, "json", status)  # warm both paths
        await series(kube, ns, COPY, 5, "json", status)
        rows = []
        for label, res, write in variants:
            a0 = await apiserver_metrics(kube)
            out = await series(kube, ns, res, args.n, write, status)
            a1 = await apiserver_metrics(kube)
            out["apiserver"] = server_means(a0, a1, res.group)
            out["label"] = label
            rows.append(out)
            log.info(
                "%s: create p50 %.1f ms, status p50 %.1f ms",
                label,
                out["create_ms"]["p50"],
                out["status_write_ms"]["p50"],
            )
        result["variants"] = rows
    finally:
        await kube.delete(NAMESPACES, ns)
        await kube.delete(CRDS, crd["metadata"]["name"])
    result["finished"] = utcnow()
    save_section("statuswrite", result, args.smoke)
    for row in result["variants"]:
        print(
            f"{row['label']}: create p50 {row['create_ms']['p50']} ms, status write p50 "
            f"{row['status_write_ms']['p50']} / p99 {row['status_write_ms']['p99']} ms; "
            f"server {row['apiserver']}"
        )
    return 0


async def served(kube: Kube, ns: str) -> bool:
    try:
        await kube.list(COPY, ns)
    except ApiError:
        return False
    return True


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.statuswrite", description=__doc__)
    p.add_argument("--smoke", action="store_true", help="n=10")
    p.add_argument("-n", type=int, default=200, help="objects per variant")
    add_common_args(p)
    smoke_defaults(p, argv, n=10)
    return p.parse_args(argv)


async def run(args: argparse.Namespace) -> int:
    return await on_cluster(args, run_on)


def main(argv: list[str] | None = None) -> int:
    return bench_main(parse_args, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
