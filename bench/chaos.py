"""`make chaos`: at most once, exactly one result, no leaks and no wedged execution, under fire.

    .venv/bin/python -m bench.chaos [--smoke] [--scenarios all|classic|cluster|NAME,...]
                                    [-n 100] [--fault-n 60] [--inflight 8] [--keep]

Each scenario runs N executions of mixed outcomes (success, exception, timeout, memory limit;
Python and Node.js; fast and slow), M in flight at a time. Two scenarios fire all the time
("classic"):

- operator-kill: the operator is SIGKILLed every few seconds and started again;
- pod-delete: random sandbox pods (mostly ones running an execution) are deleted mid-run.

Seven inject one fault of the real cluster once a third of the executions are submitted
("cluster", bench/faults.py, through e2e/cluster/component.sh):

- apiserver-stop: kube-apiserver stopped for 60 s, then started;
- etcd-restart, kubelet-restart, containerd-restart: the component stopped and started again;
- api-partition: every packet from the operator to the API server dropped for 30 s;
- leader-pause: two replicas with leader election; the leader SIGSTOPped past its lease until
  the standby leads, then SIGCONT;
- node-drain: the operator installed by the chart; `kubectl drain` of the (only) node evicts it
  and the sandbox pods together; uncordon 10 s later.

Evidence, gathered by watching, never by asking the operator:
- the sandbox namespace is watched for the whole run: every pod claimed for an execution
  (`codeexec.io/claimed-by`) and the supervisor's own records in its termination message
  (`CXS1` = the code started, `CXR1` = the report). An execution whose code started in two
  pods is a duplicate. A pod deleted with no grace disappears before the kubelet reports its
  container's end, so its record can be missing: such a pod is then judged by whether the
  operator ever recorded it in the execution's status (code is only ever sent to a pod
  recorded there, and every status revision is seen on the watch). What is left is reported
  as unproven.
- the executions are watched: the terminal status, whether it was ever rewritten, and every
  pod the status named.
- after each scenario: pods still claimed for a finished execution are leaks; warm pods beyond
  the pools' sizes are a surplus. For a cluster fault: executions not terminal 2 minutes after
  the cluster was whole again are stuck; recovery time is from then until every execution
  caught by the fault is terminal and one submitted after it has finished.

Disruptive: the cluster scenarios stop components every user of the cluster depends on. On a
shared test bed, run them only while nobody else uses the cluster.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import random
import re
from typing import Any

from bench import report
from bench.cluster import ApiProbe, Informer
from bench.command import (
    add_common_args,
    bench_main,
    fresh_start,
    on_cluster,
    smoke_defaults,
    teardown,
)
from bench.evidence import ExecutionTracker, PodRecorder
from bench.faults import FAULTS, Stage, make_fault, operator_cgroup, remove_cgroup, wait_whole
from bench.operator import Operator
from bench.results import (
    MachineLoad,
    load_results,
    machine_info,
    results_paths,
    save_section,
    utcnow,
)
from bench.scenario import POOL_SIZES, POOLS, SANDBOX_NS, TENANT_NS, Scenario
from bench.workload import (
    create_namespace,
    create_pool,
    wait_namespaces_gone,
    wait_no_foreign_operator,
    wait_pools_full,
)
from codeexec.kube.client import CODE_EXECUTIONS, PODS, Kube

log = logging.getLogger("bench.chaos")

CLASSIC = ("operator-kill", "pod-delete")
GROUPS = {"classic": CLASSIC, "cluster": FAULTS, "all": CLASSIC + FAULTS}


async def run(args: argparse.Namespace) -> int:
    return await on_cluster(args, run_on)


def selected(spec: str) -> list[str]:
    names: list[str] = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        for name in GROUPS.get(part, (part,)):
            if name not in GROUPS["all"]:
                raise SystemExit(f"unknown scenario {name!r}; known: {', '.join(GROUPS['all'])}")
            if name not in names:
                names.append(name)
    return names


def scenario_passed(s: dict[str, Any]) -> bool:
    return bool(
        s["duplicates"] == 0
        and s["leaked_pods"] == 0
        and s["lost_results"] == 0
        and s["terminal"] == s["executions"]
        and s.get("stuck", 0) == 0
        and not s.get("fault_error")
    )


async def run_on(kube: Kube, args: argparse.Namespace) -> int:
    names = selected(args.scenarios)
    if not await fresh_start(kube, [SANDBOX_NS, TENANT_NS]):
        return 2
    load = MachineLoad()
    result: dict[str, Any] = {
        "started": utcnow(),
        "smoke": args.smoke,
        "parameters": {k: v for k, v in vars(args).items() if k not in ("verbose",)},
        "machine": machine_info(),
        "scenarios": {},
    }
    if args.keep:
        # Scenarios of earlier runs (the full set run in pieces) stay, each with its own time,
        # until this run replaces them (a run stopped half-way loses nothing).
        result["scenarios"] = dict(load_results(args.smoke).get("chaos", {}).get("scenarios", {}))
    cgroup = operator_cgroup()
    op = Operator(
        sandbox_namespace=SANDBOX_NS,
        namespaces=[TENANT_NS],
        log_name="bench-chaos-operator",
        cgroup=cgroup,
    )
    rng = random.Random(args.seed)
    pods, tracker = PodRecorder(), ExecutionTracker()
    tasks: list[asyncio.Task[None]] = []
    log_start = op.log_size()
    sizes = {POOLS[lang]: s for lang, s in POOL_SIZES.items()}
    ran: list[str] = []
    try:
        await create_namespace(kube, SANDBOX_NS, restricted=True)
        await create_namespace(kube, TENANT_NS)
        await wait_no_foreign_operator(kube, TENANT_NS, args.foreign_wait)
        for lang, size in POOL_SIZES.items():
            await create_pool(kube, POOLS[lang], lang, size)
        informers = [
            Informer(kube, PODS, SANDBOX_NS, pods.on_event),
            Informer(kube, CODE_EXECUTIONS, TENANT_NS, tracker.on_event),
        ]
        tasks = [asyncio.create_task(i.run()) for i in informers]
        for i in informers:
            await asyncio.wait_for(i.synced.wait(), 30)
        await op.start()
        await wait_pools_full(kube, sizes)
        probe = ApiProbe(kube)
        probe.start()
        stage = Stage(kube, op, args)
        for name in names:
            mark = probe.mark()
            n = args.n if name in CLASSIC else args.fault_n
            log.info("scenario %s: %d executions, %d in flight", name, n, args.inflight)
            scenario = Scenario(name, kube, op, pods, tracker, args, rng, n)
            if name in CLASSIC:
                s = await scenario.run("kill" if name == "operator-kill" else "delete")
            else:
                fault = make_fault(name, stage)
                try:
                    await fault.setup()
                    s = await scenario.run_fault(fault)
                finally:
                    await fault.teardown()
            s["started"] = utcnow()
            s["api_probe"] = probe.summary(mark)
            s["passed"] = scenario_passed(s)
            result["scenarios"][name] = s
            ran.append(name)
            if args.keep:  # each scenario's figures kept at once: a later one may be stopped
                result["passed"] = all(scenario_passed(x) for x in result["scenarios"].values())
                save_section("chaos", result, args.smoke)
            log.info(
                "%s: terminal %d/%d, started twice %d, leaks %d, lost %d, stuck %s, "
                "recovery %s s, %s",
                name,
                s["terminal"],
                s["executions"],
                s["duplicates"],
                s["leaked_pods"],
                s["lost_results"],
                s.get("stuck", "-"),
                s.get("recovery_seconds", "-"),
                s["classification"],
            )
            await wait_whole(kube)
            await wait_pools_full(kube, sizes, 180)
        await probe.stop()
        result["operator_starts"] = op.starts
        result["operator_kills"] = op.kills
        warnings = op.log_warnings(log_start)
        result["operator_log_warning_lines"] = len(warnings)
        result["operator_log_warning_examples"] = _distinct(warnings, 15)
        result["operator_log"] = str(op.log_path)
    finally:
        await teardown(kube, tasks, POOLS.values(), op, [SANDBOX_NS, TENANT_NS])
        remove_cgroup(cgroup)
        result["machine_load"] = load.stop()
        result["finished"] = utcnow()
    complete = ran == names
    ok = complete and all(scenario_passed(result["scenarios"][n]) for n in names)
    result["passed"] = ok and all(scenario_passed(s) for s in result["scenarios"].values())
    if complete:
        path = save_section("chaos", result, args.smoke)
        report.write_all(args.smoke)
        print(report.render_chaos(result))
        log.info("results in %s and %s", path, results_paths(args.smoke)[1])
    with contextlib.suppress(Exception):
        await wait_namespaces_gone(kube, [SANDBOX_NS, TENANT_NS], timeout=60)
    return 0 if ok else 1


def _distinct(lines: list[str], limit: int) -> list[str]:
    """One example per kind of line (timestamps and names stripped for the comparison)."""
    seen: set[str] = set()
    out: list[str] = []
    for line in lines:
        key = re.sub(r"[0-9a-f]{6,}|\d+", "#", line.split(" ", 2)[-1])[:120]
        if key not in seen:
            seen.add(key)
            out.append(line[:400])
        if len(out) >= limit:
            break
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="short forms (results in bench/*.tmp)")
    p.add_argument(
        "--scenarios",
        default="all",
        help="comma-separated scenario names or groups: classic, cluster, all (default)",
    )
    p.add_argument(
        "--keep",
        action="store_true",
        help="keep the other scenarios of earlier runs (a set run in pieces)",
    )
    p.add_argument("-n", type=int, default=100, help="executions per classic scenario")
    p.add_argument("--fault-n", type=int, default=60, help="executions per cluster fault")
    p.add_argument("--inflight", type=int, default=8, help="executions in flight at a time")
    p.add_argument("--kill-min", type=float, default=2.0, help="seconds up before a kill, min")
    p.add_argument("--kill-max", type=float, default=6.0, help="seconds up before a kill, max")
    p.add_argument("--delete-min", type=float, default=0.5, help="seconds between deletions")
    p.add_argument("--delete-max", type=float, default=2.5)
    p.add_argument(
        "--apiserver-down", type=float, default=60, help="seconds the API server is down"
    )
    p.add_argument("--partition", type=float, default=30, help="seconds the operator is cut off")
    p.add_argument(
        "--pause-extra",
        type=float,
        default=10,
        help="seconds the leader stays paused past its lease",
    )
    p.add_argument("--drained", type=float, default=10, help="seconds the node stays cordoned")
    p.add_argument(
        "--drain-timeout",
        type=float,
        default=90,
        help="kubectl drain --timeout (the operator's grace is 30 s; sandbox pods have none)",
    )
    p.add_argument(
        "--operator-tag",
        default=os.environ.get("IMAGE_TAG", "dev"),
        help="the operator image's tag for the chart (node-drain)",
    )
    p.add_argument("--wait-timeout", type=float, default=300, help="per execution, seconds")
    p.add_argument("--seed", type=int, default=5)
    add_common_args(p)
    smoke_defaults(
        p, argv, n=10, fault_n=12, apiserver_down=20, partition=15, drained=5, drain_timeout=60
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return bench_main(parse_args, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
