"""`make chaos`: at most once, exactly one result and no leaks, under fire.

    .venv/bin/python -m bench.chaos [--smoke] [-n 100] [--inflight 8]

Two scenarios, each with N executions of mixed outcomes (success, exception, timeout,
memory limit; Python and Node.js), M in flight at a time:

- operator-kill: the operator is SIGKILLed every few seconds and started again;
- pod-delete: random sandbox pods (mostly ones running an execution) are deleted mid-run.

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
  the pools' sizes are a surplus.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import random
import secrets
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from bench import report
from bench.cluster import CLAIMED_BY, ApiProbe, Informer
from bench.command import (
    add_common_args,
    bench_main,
    fresh_start,
    on_cluster,
    smoke_defaults,
    teardown,
)
from bench.operator import Operator
from bench.results import MachineLoad, machine_info, results_paths, save_section, utcnow
from bench.workload import (
    create_namespace,
    create_pool,
    wait_namespaces_gone,
    wait_no_foreign_operator,
    wait_pools_full,
)
from codeexec.api.models import Language
from codeexec.client import Client
from codeexec.kube.client import CODE_EXECUTIONS, PODS, ApiError, Kube
from codeexec.protocol import parse_termination_message

log = logging.getLogger("bench.chaos")

SANDBOX_NS = "bench-sandbox"
TENANT_NS = "bench-chaos"
POOLS = {"python": "bench-python", "nodejs": "bench-nodejs"}
POOL_SIZES = {"python": 4, "nodejs": 2}


@dataclass(frozen=True)
class Program:
    id: str
    language: Language
    code: str
    expected: str
    timeout: int = 10
    weight: int = 1


PROGRAMS = [
    Program(
        "py-ok",
        "python",
        "def main(n):\n    print('ran', n, flush=True)\n    return n\n",
        "Succeeded",
        weight=25,
    ),
    Program(
        "py-slow-ok",
        "python",
        "import time\ndef main(n):\n    print('ran', n, flush=True)\n    time.sleep(2)\n"
        "    return n\n",
        "Succeeded",
        weight=15,
    ),
    Program(
        "py-exception",
        "python",
        "def main(n):\n    print('ran', n, flush=True)\n    raise ValueError(f'boom {n}')\n",
        "UserException",
        weight=15,
    ),
    Program(
        "py-timeout",
        "python",
        "def main(n):\n    print('ran', n, flush=True)\n    while True:\n        pass\n",
        "WallTimeout",
        timeout=2,
        weight=10,
    ),
    Program(
        "py-memory",
        "python",
        "def main(n):\n    print('ran', n, flush=True)\n    blocks = []\n    while True:\n"
        "        blocks.append(bytearray(16 * 1024 * 1024))\n",
        "MemoryLimit",
        timeout=30,
        weight=5,
    ),
    Program(
        "js-ok",
        "nodejs",
        "module.exports = ({ n }) => { console.log('ran', n); return n; };\n",
        "Succeeded",
        weight=15,
    ),
    Program(
        "js-exception",
        "nodejs",
        "module.exports = ({ n }) => { console.log('ran', n); throw new Error('boom ' + n); };\n",
        "UserException",
        weight=8,
    ),
    Program(
        "js-timeout",
        "nodejs",
        "module.exports = ({ n }) => { console.log('ran', n); for (;;) {} };\n",
        "WallTimeout",
        timeout=2,
        weight=7,
    ),
]


# ---- evidence -------------------------------------------------------------------------------


@dataclass
class PodEvidence:
    name: str
    execution_uid: str = ""
    started: bool = False  # a CXS1/CXR1 record with started=true was seen
    reported: bool = False  # a CXR1 record (the run's whole outcome) was seen
    record_seen: bool = False  # the container's terminated state (with message) was seen
    deleted: bool = False
    deleted_by_chaos: bool = False
    deleting: bool = False
    phase: str = ""


class PodRecorder:
    """Every pod of the sandbox namespace, by uid, with what it recorded about itself."""

    def __init__(self) -> None:
        self.pods: dict[str, PodEvidence] = {}

    def on_event(self, type_: str, pod: dict[str, Any]) -> None:
        meta = pod.get("metadata", {})
        uid = meta.get("uid", "")
        ev = self.pods.setdefault(uid, PodEvidence(meta.get("name", "")))
        claimed = (meta.get("labels") or {}).get(CLAIMED_BY)
        if claimed:
            ev.execution_uid = claimed
        ev.phase = (pod.get("status") or {}).get("phase", "")
        ev.deleting = bool(meta.get("deletionTimestamp"))
        if type_ == "DELETED":
            ev.deleted = True
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            term = (cs.get("state") or {}).get("terminated")
            if not term:
                continue
            ev.record_seen = True
            msg = term.get("message") or ""
            record = parse_termination_message(msg, _record_id(msg))
            ev.started = ev.started or record.started
            ev.reported = ev.reported or (record.report is not None and record.report.started)

    def of_execution(self, uid: str) -> list[PodEvidence]:
        return [p for p in self.pods.values() if p.execution_uid == uid]

    def live(self) -> list[PodEvidence]:
        return [p for p in self.pods.values() if not p.deleted and not p.deleting]


def _record_id(message: str) -> str:
    # Any id the pod recorded: what matters is whether it started, not which request.
    with contextlib.suppress(ValueError, IndexError, KeyError, TypeError):
        return str(json.loads(message.strip().split(" ", 1)[1])["id"])
    return ""


@dataclass
class ExecutionTrack:
    name: str
    program: Program
    n: int
    uid: str = ""
    submitted: float = 0.0
    status_pods: list[str] = field(default_factory=list)
    terminal: dict[str, Any] | None = None
    terminal_rewrites: int = 0
    done: asyncio.Event = field(default_factory=asyncio.Event)


class ExecutionTracker:
    def __init__(self) -> None:
        self.tracks: dict[str, ExecutionTrack] = {}

    def on_event(self, type_: str, obj: dict[str, Any]) -> None:
        t = self.tracks.get(obj.get("metadata", {}).get("name", ""))
        if t is None or type_ == "DELETED":
            return
        t.uid = obj["metadata"].get("uid", t.uid)
        status = obj.get("status") or {}
        pod = (status.get("sandbox") or {}).get("pod")
        if pod and pod not in t.status_pods:
            t.status_pods.append(pod)
        if status.get("phase") in ("Succeeded", "Failed"):
            key = (status.get("reason"), status.get("completionTime"))
            if t.terminal is None:
                t.terminal = obj
                t.done.set()
            else:
                old = t.terminal.get("status") or {}
                if (old.get("reason"), old.get("completionTime")) != key:
                    t.terminal_rewrites += 1
                    t.terminal = obj


# ---- one scenario ---------------------------------------------------------------------------


class Scenario:
    def __init__(
        self,
        name: str,
        kube: Kube,
        op: Operator,
        pods: PodRecorder,
        tracker: ExecutionTracker,
        args: argparse.Namespace,
        rng: random.Random,
    ) -> None:
        self.name, self.kube, self.op, self.pods, self.tracker = name, kube, op, pods, tracker
        self.args, self.rng = args, rng
        self.client = Client(kube, TENANT_NS)
        self.token = secrets.token_hex(2)
        self.tracks: list[ExecutionTrack] = []
        self.actions = 0
        self.action_log: list[str] = []
        self.stop = asyncio.Event()
        self.chaos_deleted_uids: set[str] = set()
        self.operator_down_seconds = 0.0

    async def submit_all(self) -> None:
        slots = asyncio.Semaphore(self.args.inflight)
        weights = [p.weight for p in PROGRAMS]

        async def one(i: int) -> None:
            program = self.rng.choices(PROGRAMS, weights)[0]
            name = f"{self.name[:4]}-{self.token}-{i:04d}-{program.id}"
            track = ExecutionTrack(name, program, i)
            self.tracker.tracks[name] = track
            self.tracks.append(track)
            body = self.client.manifest(
                program.code,
                language=program.language,
                arguments={"n": i},
                timeout_seconds=program.timeout,
                pool=POOLS[program.language],
                name=name,
            )
            for attempt in range(30):
                try:
                    created = await self.kube.create(CODE_EXECUTIONS, body, TENANT_NS)
                    track.uid = created["metadata"]["uid"]
                    break
                except ApiError as err:
                    log.warning("create %s failed (%s); retrying", name, err)
                    await asyncio.sleep(min(5, 0.2 * 2**attempt))
            track.submitted = time.monotonic()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(track.done.wait(), self.args.wait_timeout)

        async def gated(i: int) -> None:
            async with slots:
                await one(i)

        await asyncio.gather(*(gated(i) for i in range(self.args.n)))

    # -- chaos -----------------------------------------------------------------------------

    async def kill_operator_repeatedly(self) -> None:
        while not self.stop.is_set():
            await self._sleep(self.rng.uniform(self.args.kill_min, self.args.kill_max))
            if self.stop.is_set():
                break
            self.op.kill()
            self.actions += 1
            t_down = time.monotonic()
            await self._sleep(self.rng.uniform(0.0, 1.0))
            await self.ensure_operator()
            self.operator_down_seconds += time.monotonic() - t_down

    async def ensure_operator(self) -> None:
        for _ in range(5):
            if not self.op.alive():
                self.op.spawn()
            try:
                await self.op.wait_ready(timeout=90)
                return
            except (RuntimeError, TimeoutError) as err:
                log.error("operator did not become ready: %s\n%s", err, self.op.log_tail(20))
                self.op.kill()
        raise RuntimeError("operator does not start; see its log")

    async def delete_pods_repeatedly(self) -> None:
        while not self.stop.is_set():
            await self._sleep(self.rng.uniform(self.args.delete_min, self.args.delete_max))
            if self.stop.is_set():
                break
            ours = {t.uid for t in self.tracks if t.uid and t.terminal is None}
            live = self.pods.live()
            running = [p for p in live if p.execution_uid in ours]
            warm = [p for p in live if not p.execution_uid]
            pick_running = running and (self.rng.random() < 0.8 or not warm)
            candidates = running if pick_running else warm
            if not candidates:
                continue
            victim = self.rng.choice(candidates)
            try:
                # A grace second: the kubelet reports the container's end (and its record)
                # before the object goes.
                await self.kube.request(
                    "DELETE",
                    PODS.path(SANDBOX_NS, victim.name),
                    body={"gracePeriodSeconds": 1},
                )
            except ApiError as err:
                if not err.not_found:
                    log.warning("delete %s: %s", victim.name, err)
                continue
            victim.deleted_by_chaos = True
            if victim.execution_uid:
                self.chaos_deleted_uids.add(victim.execution_uid)
            self.actions += 1
            what = f"running {victim.execution_uid}" if victim.execution_uid else "warm"
            self.action_log.append(f"deleted {victim.name} ({what})")

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), seconds)

    # -- the run ---------------------------------------------------------------------------

    async def run(self, chaos: str) -> dict[str, Any]:
        t0 = time.monotonic()
        monkey = asyncio.create_task(
            self.kill_operator_repeatedly() if chaos == "kill" else self.delete_pods_repeatedly()
        )
        try:
            await self.submit_all()
        finally:
            self.stop.set()
            with contextlib.suppress(asyncio.CancelledError):
                await monkey
        await self.ensure_operator()
        # Stragglers (those whose wait timed out while the monkey was busy) get a last chance.
        pending = [t for t in self.tracks if t.terminal is None]
        if pending:
            log.info("%s: %d not terminal yet; waiting", self.name, len(pending))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    asyncio.gather(*(t.done.wait() for t in pending)), self.args.wait_timeout
                )
        # Anything late (a rewrite of a terminal status) shows up within a few seconds.
        await asyncio.sleep(5)
        leaks, surplus = await self.leaks()
        return self.analyse(time.monotonic() - t0, leaks, surplus)

    async def leaks(self, timeout: float = 120) -> tuple[list[str], int]:
        """Pods still claimed for our finished executions, after the operator had time."""
        ours = {t.uid for t in self.tracks if t.uid}
        deadline = time.monotonic() + timeout
        while True:
            listing = await self.kube.list(PODS, SANDBOX_NS)
            items = [p for p in listing["items"] if not p["metadata"].get("deletionTimestamp")]
            by_uid = {t.uid: t for t in self.tracks if t.uid}
            leaked = [
                self.describe_leak(p, by_uid[(p["metadata"].get("labels") or {})[CLAIMED_BY]])
                for p in items
                if (p["metadata"].get("labels") or {}).get(CLAIMED_BY) in ours
            ]
            unclaimed = [
                p for p in items if not (p["metadata"].get("labels") or {}).get(CLAIMED_BY)
            ]
            surplus = max(0, len(unclaimed) - sum(POOL_SIZES.values()))
            if (not leaked and not surplus) or time.monotonic() > deadline:
                return leaked, surplus
            await asyncio.sleep(2)

    @staticmethod
    def describe_leak(pod: dict[str, Any], track: ExecutionTrack) -> str:
        st = pod.get("status") or {}
        cs = (st.get("containerStatuses") or [{}])[0].get("state") or {}
        term = cs.get("terminated") or {}
        ex = (track.terminal or {}).get("status") or {}
        return (
            f"{pod['metadata']['name']}: pod {st.get('phase')} {st.get('reason') or ''} "
            f"container {next(iter(cs), '?')} {term.get('reason') or ''} "
            f"created {pod['metadata'].get('creationTimestamp')}; claimed by {track.name}, "
            f"which is {ex.get('reason')} since {ex.get('completionTime')}, status named "
            f"{track.status_pods}"
        )

    def analyse(self, seconds: float, leaks: list[str], surplus: int) -> dict[str, Any]:
        classification: Counter[str] = Counter()
        unexpected: Counter[str] = Counter()
        examples: list[str] = []
        duplicates: list[str] = []
        lost: list[str] = []
        unproven: list[str] = []
        multi = 0
        released_before_delivery = 0
        disturbed = 0
        rewrites = 0
        stdout_twice = 0
        foreign: list[str] = []
        never_ran: list[str] = []
        killed_by_chaos = 0
        for t in self.tracks:
            pods = self.pods.of_execution(t.uid) if t.uid else []
            starts = sum(1 for p in pods if p.started)
            if starts >= 2:
                duplicates.append(f"{t.name}: {[p.name for p in pods if p.started]}")
            if len(pods) >= 2:
                multi += 1
                final = t.status_pods[-1] if t.status_pods else None
                for p in pods:
                    if p.name == final or p.record_seen:
                        continue
                    if p.name in t.status_pods:
                        unproven.append(f"{t.name}: pod {p.name} named in status, no record")
                    else:
                        released_before_delivery += 1
            was_disturbed = t.uid in self.chaos_deleted_uids
            disturbed += was_disturbed
            rewrites += t.terminal_rewrites
            if t.terminal is None:
                lost.append(f"{t.name}: never terminal")
                classification["(not terminal)"] += 1
                continue
            status = t.terminal.get("status") or {}
            reason = str(status.get("reason"))
            classification[reason] += 1
            pool = (status.get("sandbox") or {}).get("pool")
            if reason == "InvalidRequest" or (pool and pool not in POOLS.values()):
                # Another operator on the cluster that watches every namespace took it.
                foreign.append(f"{t.name}: {reason} pool={pool} {status.get('message')!r}")
            result = status.get("result") or {}
            if str(result.get("stdout", "")).count(f"ran {t.n}") > 1:
                stdout_twice += 1
                duplicates.append(f"{t.name}: stdout shows two runs")
            if reason != t.program.expected:
                unexpected[
                    f"{t.program.expected} -> {reason}{' (disturbed)' if was_disturbed else ''}"
                ] += 1
                reported = any(p.reported for p in pods)
                evidence = (
                    f"pods {len(pods)}, started in {starts}, report recorded {reported}, "
                    f"records seen {sum(p.record_seen for p in pods)}"
                )
                if len(examples) < 20:
                    examples.append(
                        f"{t.name}: {reason}: {str(status.get('message'))[:240]} ({evidence})"
                        f"{' [a pod of it was deleted by chaos]' if was_disturbed else ''}"
                    )
                if reported and reason in ("SandboxError", "Signaled"):
                    # The runner recorded the whole outcome, and the status does not have it.
                    lost.append(f"{t.name}: {reason} although a pod recorded its report")
                elif starts and not was_disturbed and reason == "SandboxError":
                    lost.append(f"{t.name}: SandboxError after its code started, undisturbed")
                elif not starts and reason == "SandboxError":
                    never_ran.append(f"{t.name}: {str(status.get('message'))[:200]}")
                elif starts and was_disturbed:
                    killed_by_chaos += 1
            elif reason == "Succeeded" and result.get("returnValue") != t.n:
                lost.append(f"{t.name}: Succeeded without its return value")
        return {
            "executions": len(self.tracks),
            "terminal": sum(1 for t in self.tracks if t.terminal is not None),
            "duplicates": len(duplicates),
            "duplicate_details": duplicates[:20],
            "leaked_pods": len(leaks),
            "leaked_pod_names": leaks[:20],
            "warm_surplus_pods": surplus,
            "lost_results": len(lost),
            "lost_details": lost[:20],
            # Failed (SandboxError) although no pod ever recorded that the code started: safe
            # for at-most-once, but the user's program did not run.
            "failed_without_running": len(never_ran),
            "failed_without_running_details": never_ran[:20],
            "started_then_killed_by_chaos": killed_by_chaos,
            "terminal_rewrites": rewrites,
            "multi_pod_executions": multi,
            "released_before_delivery": released_before_delivery,
            "unproven": len(unproven),
            "unproven_details": unproven[:20],
            "disturbed": disturbed,
            "chaos_actions": self.actions,
            "chaos_action_examples": self.action_log[:10],
            "operator_down_seconds": round(self.operator_down_seconds, 1),
            "classification": dict(classification),
            "expected": dict(Counter(t.program.expected for t in self.tracks)),
            "unexpected_classification": dict(unexpected),
            "unexpected_examples": examples,
            "foreign_operator_suspected": len(foreign),
            "foreign_operator_examples": foreign[:5],
            "seconds": round(seconds, 1),
        }


# ---- the run --------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> int:
    return await on_cluster(args, run_on)


async def run_on(kube: Kube, args: argparse.Namespace) -> int:
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
    op = Operator(
        sandbox_namespace=SANDBOX_NS, namespaces=[TENANT_NS], log_name="bench-chaos-operator"
    )
    rng = random.Random(args.seed)
    pods, tracker = PodRecorder(), ExecutionTracker()
    tasks: list[asyncio.Task[None]] = []
    log_start = op.log_size()
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
        await wait_pools_full(kube, {POOLS[lang]: s for lang, s in POOL_SIZES.items()})
        probe = ApiProbe(kube)
        probe.start()
        for name, chaos in (("operator-kill", "kill"), ("pod-delete", "delete")):
            mark = probe.mark()
            log.info("scenario %s: %d executions, %d in flight", name, args.n, args.inflight)
            scenario = Scenario(name, kube, op, pods, tracker, args, rng)
            result["scenarios"][name] = await scenario.run(chaos)
            s = result["scenarios"][name]
            s["api_probe"] = probe.summary(mark)
            log.info(
                "%s: terminal %d/%d, duplicates %d, leaks %d, lost %d, %s",
                name,
                s["terminal"],
                s["executions"],
                s["duplicates"],
                s["leaked_pods"],
                s["lost_results"],
                s["classification"],
            )
            await wait_pools_full(kube, {POOLS[lang]: s for lang, s in POOL_SIZES.items()}, 180)
        await probe.stop()
        result["operator_starts"] = op.starts
        result["operator_kills"] = op.kills
        warnings = op.log_warnings(log_start)
        result["operator_log_warning_lines"] = len(warnings)
        result["operator_log_warning_examples"] = _distinct(warnings, 15)
        result["operator_log"] = str(op.log_path)
    finally:
        await teardown(kube, tasks, POOLS.values(), op, [SANDBOX_NS, TENANT_NS])
        result["machine_load"] = load.stop()
        result["finished"] = utcnow()
    complete = len(result["scenarios"]) == 2
    ok = complete and all(
        s["duplicates"] == 0
        and s["leaked_pods"] == 0
        and s["lost_results"] == 0
        and s["terminal"] == s["executions"]
        for s in result["scenarios"].values()
    )
    result["passed"] = ok
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
    import re

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
    p.add_argument("--smoke", action="store_true", help="10 executions per scenario")
    p.add_argument("-n", type=int, default=100, help="executions per scenario (two scenarios)")
    p.add_argument("--inflight", type=int, default=8, help="executions in flight at a time")
    p.add_argument("--kill-min", type=float, default=2.0, help="seconds up before a kill, min")
    p.add_argument("--kill-max", type=float, default=6.0, help="seconds up before a kill, max")
    p.add_argument("--delete-min", type=float, default=0.5, help="seconds between deletions")
    p.add_argument("--delete-max", type=float, default=2.5)
    p.add_argument("--wait-timeout", type=float, default=300, help="per execution, seconds")
    p.add_argument("--seed", type=int, default=5)
    add_common_args(p)
    smoke_defaults(p, argv, n=10)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return bench_main(parse_args, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
