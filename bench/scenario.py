"""One chaos scenario: N mixed executions under a fault, and what the evidence says about them.

Two kinds: a continuous fault for the whole run (the operator killed every few seconds, sandbox
pods deleted), or one fault of the cluster (bench/faults.py) injected once a third of the
executions are submitted, with its window (from the fault until the cluster is whole again)
recorded so that recovery time and executions stuck after it can be measured.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import random
import secrets
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp

from bench.cluster import CLAIMED_BY
from bench.evidence import PROGRAMS, ExecutionTrack, ExecutionTracker, PodRecorder
from bench.operator import Operator
from codeexec.client import Client
from codeexec.kube.client import CODE_EXECUTIONS, PODS, ApiError, Kube
from codeexec.podspec import CLAIM_FINALIZER

log = logging.getLogger("bench.chaos")

SANDBOX_NS = "bench-sandbox"
TENANT_NS = "bench-chaos"
POOLS = {"python": "bench-python", "nodejs": "bench-nodejs"}
POOL_SIZES = {"python": 4, "nodejs": 2}

# "Stuck": not terminal this long after the cluster was whole again (or after its submission,
# if later). The slowest program takes ~30 s (its timeout); the operator's own give-up is
# timeout + 15 s grace; two minutes leaves room for a relist and a pod's restart.
STUCK_AFTER_S = 120.0

NETWORK_ERRORS = (aiohttp.ClientError, OSError, TimeoutError)


@dataclass
class Window:
    """One fault's timeline, time.monotonic(): `end` is when the cluster was whole again (the
    component answered its health check, traffic flowed, the process ran, the node took pods)."""

    start: float
    end: float
    notes: dict[str, Any] = field(default_factory=dict)
    # Sandbox pods the fault itself deleted (a drain's evictions): their executions count as
    # disturbed, as those of pod-delete do.
    disturbed_pods: list[str] = field(default_factory=list)


class Fault(Protocol):
    """A fault of the real cluster, injected once (bench/faults.py)."""

    name: str

    async def setup(self) -> None:
        """Arranges the operator(s) the fault needs (a second replica, the chart's)."""

    async def inject(self) -> Window:
        """Breaks something, waits, restores it; returns when the cluster is whole again."""

    async def ensure_operator(self) -> None:
        """Until the operator serving the executions is ready."""

    async def teardown(self) -> None:
        """Back to the one bench operator of the other scenarios."""


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
        n: int,
    ) -> None:
        self.name, self.kube, self.op, self.pods, self.tracker = name, kube, op, pods, tracker
        self.args, self.rng, self.n = args, rng, n
        self.client = Client(kube, TENANT_NS)
        self.token = secrets.token_hex(2)
        self.tracks: list[ExecutionTrack] = []
        self.actions = 0
        self.action_log: list[str] = []
        self.stop = asyncio.Event()
        self.chaos_deleted_uids: set[str] = set()
        self.operator_down_seconds = 0.0
        self.submitted = 0
        self.window: Window | None = None
        self.fault_error = ""
        self.running_at_fault = 0
        # Set STUCK_AFTER_S after the fault's end: nobody waits longer for an execution.
        self.give_up = asyncio.Event()
        self.trigger, self.triggered = self.n, asyncio.Event()
        self._ensure: Callable[[], Awaitable[None]] | None = None

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
            for attempt in range(40):  # ~3 min: an API server stopped for 60 s comes back
                try:
                    created = await self.kube.create(CODE_EXECUTIONS, body, TENANT_NS)
                    track.uid = created["metadata"]["uid"]
                    break
                except ApiError as err:
                    if err.conflict:  # an earlier attempt's answer was lost, not its create
                        with contextlib.suppress(ApiError, *NETWORK_ERRORS):
                            got = await self.kube.get(CODE_EXECUTIONS, name, TENANT_NS)
                            track.uid = got["metadata"]["uid"]
                            break
                    log.warning("create %s failed (%s); retrying", name, err)
                except NETWORK_ERRORS as err:
                    log.warning("create %s failed (%r); retrying", name, err)
                await asyncio.sleep(min(5, 0.2 * 2**attempt))
            track.submitted = time.monotonic()
            self.submitted += 1
            if self.submitted >= self.trigger:
                self.triggered.set()
            await self._wait_done(track)

        async def gated(i: int) -> None:
            async with slots:
                await one(i)

        await asyncio.gather(*(gated(i) for i in range(self.n)))

    async def _wait_done(self, track: ExecutionTrack) -> None:
        """Until the execution is terminal, the wait timeout passes, or we gave up on all."""
        done = asyncio.create_task(track.done.wait())
        give_up = asyncio.create_task(self.give_up.wait())
        try:
            await asyncio.wait(
                {done, give_up}, timeout=self.args.wait_timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            done.cancel()
            give_up.cancel()

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
        if self._ensure is not None:
            await self._ensure()
        else:
            await self.op.ensure_ready()

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

    async def run_fault(self, fault: Fault) -> dict[str, Any]:
        """The executions, with `fault` injected once a third of them are submitted."""
        t0 = time.monotonic()
        self._ensure = fault.ensure_operator
        self.trigger = max(1, self.n // 3)

        async def inject() -> None:
            await self.triggered.wait()
            # The fault must catch executions mid-run: some with a claimed pod, not finished.
            for _ in range(100):
                if len(self.running()) >= 2:
                    break
                await asyncio.sleep(0.1)
            log.info(
                "%s: injecting the fault (%d submitted, %d running)",
                self.name,
                self.submitted,
                len(self.running()),
            )
            self.running_at_fault = len(self.running())
            try:
                self.window = await fault.inject()
            except Exception as err:
                # Recorded, and the scenario fails: a fault that did not happen proves nothing.
                log.exception("%s: the fault failed", self.name)
                self.fault_error = repr(err)
                now = time.monotonic()
                self.window = Window(now, now)
            gone = set(self.window.disturbed_pods)
            for ev in self.pods.pods.values():
                if ev.name in gone:
                    ev.deleted_by_chaos = True
                    if ev.execution_uid:
                        self.chaos_deleted_uids.add(ev.execution_uid)
            log.info(
                "%s: the cluster is whole again (%.1f s after the fault began)",
                self.name,
                self.window.end - self.window.start,
            )
            loop = asyncio.get_running_loop()
            loop.call_at(loop.time() + STUCK_AFTER_S, self.give_up.set)

        monkey = asyncio.create_task(inject())
        try:
            await self.submit_all()
        finally:
            if not self.triggered.is_set():
                monkey.cancel()  # the submissions failed before the fault began
            # A fault that began always runs to its end: it restores what it broke.
            with contextlib.suppress(asyncio.CancelledError):
                await monkey
        await self.ensure_operator()
        pending = [t for t in self.tracks if t.terminal is None]
        if pending and not self.give_up.is_set():
            log.info(
                "%s: %d not terminal yet; waiting up to %.0f s after recovery",
                self.name,
                len(pending),
                STUCK_AFTER_S,
            )
            waiters = [asyncio.create_task(t.done.wait()) for t in pending]
            waiters.append(asyncio.create_task(self.give_up.wait()))
            all_done = asyncio.create_task(asyncio.wait(waiters[:-1]))
            await asyncio.wait({all_done, waiters[-1]}, return_when=asyncio.FIRST_COMPLETED)
            all_done.cancel()
            for w in waiters:
                w.cancel()
        await asyncio.sleep(5)  # a late rewrite of a terminal status shows up within seconds
        leaks, surplus = await self.leaks()
        out = self.analyse(time.monotonic() - t0, leaks, surplus)
        out.update(self.recovery())
        if self.fault_error:
            out["fault_error"] = self.fault_error
        return out

    def running(self) -> list[ExecutionTrack]:
        """Executions not terminal whose claimed pod is alive: running, or about to."""
        claimed = {p.execution_uid for p in self.pods.live() if p.execution_uid}
        return [t for t in self.tracks if t.terminal is None and t.uid in claimed]

    def recovery(self) -> dict[str, Any]:
        """Stuck executions and recovery time, measured from the fault's window."""
        w = self.window
        if w is None:
            return {"stuck": 0}
        stuck = [
            t.name
            for t in self.tracks
            if t.terminal_at is None or t.terminal_at > max(w.end, t.submitted) + STUCK_AFTER_S
        ]
        # Caught by the fault: submitted before its end, not terminal before its start.
        caught = [
            t
            for t in self.tracks
            if t.submitted and t.submitted < w.end and (t.terminal_at or math.inf) > w.start
        ]
        settled = max(((t.terminal_at or math.inf) - w.end for t in caught), default=0.0)
        after = [
            t.terminal_at - w.end
            for t in self.tracks
            if t.terminal_at is not None and t.submitted >= w.end
        ]
        first_after = min(after, default=math.inf)
        # Negative when service came back before the fault ended (a standby took over): 0.
        recovered = max(0.0, settled, first_after if after else 0.0)
        return {
            "stuck": len(stuck),
            "stuck_names": stuck[:20],
            "fault_seconds": round(w.end - w.start, 1),
            "caught_by_fault": len(caught),
            "running_at_fault": self.running_at_fault,
            # From the cluster being whole again until every execution caught by the fault was
            # terminal and one submitted after it had finished: the user's view of recovery.
            "recovery_seconds": round(recovered, 1) if math.isfinite(recovered) else None,
            "caught_settled_seconds": round(settled, 1) if math.isfinite(settled) else None,
            "first_finished_after_seconds": (
                round(first_after, 1) if math.isfinite(first_after) else None
            ),
            "fault": w.notes,
        }

    async def leaks(self, timeout: float = 120) -> tuple[list[str], int]:
        """Pods still claimed for our finished executions, after the operator had time."""
        ours = {t.uid for t in self.tracks if t.uid}
        deadline = time.monotonic() + timeout
        while True:
            listing = await self.kube.list(PODS, SANDBOX_NS)
            items = [p for p in listing["items"] if not p["metadata"].get("deletionTimestamp")]
            # A pod being deleted but held by the claim finalizer stays until the operator lets
            # go: still a leak if it never does.
            held = [
                p
                for p in listing["items"]
                if p["metadata"].get("deletionTimestamp")
                and CLAIM_FINALIZER in (p["metadata"].get("finalizers") or [])
            ]
            by_uid = {t.uid: t for t in self.tracks if t.uid}
            leaked = [
                self.describe_leak(p, by_uid[(p["metadata"].get("labels") or {})[CLAIMED_BY]])
                for p in items + held
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
