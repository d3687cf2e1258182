"""At most once across restarts: the claim record outlives the operator and the pod's deletion
(fake API server, virtual time; the kubelet's start log is the ground truth)."""

from __future__ import annotations

import asyncio

from codeexec import podspec
from tests.fakeapi import vtime
from tests.fakeapi.operator import SANDBOX, Replica
from tests.fakeapi.server import Call
from tests.fakeapi.world import World


def _claimed(w: World, uid: str) -> list[str]:
    return [p["metadata"]["name"] for p in w.claimed_live(uid)]


def _terminated(w: World, pod: str) -> bool:
    body = w.api.read("pods", SANDBOX, pod)
    statuses = ((body or {}).get("status") or {}).get("containerStatuses") or []
    return body is None or any("terminated" in (c.get("state") or {}) for c in statuses)


def test_code_never_runs_twice_when_the_operator_and_its_pod_go_down_together() -> None:
    """A drain: the operator dies while the code runs and the claimed pod is deleted at the
    same time. The successor must judge that pod (the code started there), never run the code
    on another one.

    Catches finding 2 (resume() skipped a Terminating pod and the road claimed a new one; a
    pod deleted fast vanished with its record). Caught: restoring resume()'s `pod.deleting` skip made this fail with
    two starts; so did removing the claim finalizer from podspec.claim_patch (the pod and its
    record vanished, and the execution ran on a second pod).
    """

    async def scenario() -> None:
        w = World(pool_size=2)
        a = Replica(w.api, "op-a")
        await a.start()
        await vtime.until(lambda: w.warm_ready() == 2)
        ex = w.submit(1, sleep=30.0)
        name, uid = ex["metadata"]["name"], ex["metadata"]["uid"]
        await vtime.until(lambda: len(w.kubelet.started_for(uid)) == 1, what="the code started")
        (pod,) = _claimed(w, uid)
        await a.crash()
        w.api.delete("pods", SANDBOX, pod, {"gracePeriodSeconds": 30})
        await vtime.until(lambda: _terminated(w, pod), what="the container stopped")
        b = Replica(w.api, "op-b")
        await b.start()
        await w.wait_finished(name)
        done = w.execution(name)
        assert done is not None
        assert len(w.kubelet.started_for(uid)) == 1, w.kubelet.started_for(uid)
        assert done["status"]["reason"] == "SandboxError", done["status"]
        assert done["status"]["result"]["started"] is True
        await vtime.until(lambda: w.api.read("pods", SANDBOX, pod) is None, what="pod gone")

    vtime.run(scenario)


def test_a_pod_deleted_before_the_send_is_proven_unused_and_the_code_runs_elsewhere() -> None:
    """The operator dies right after its claim landed (nothing sent) and the pod is deleted:
    the pod's own record proves the code never started there, so it runs on another pod,
    once.

    Catches the opposite error: treating every deleted claimed pod as used would fail
    executions that never ran. Caught: disabling Road._execute's NotStarted branch (a
    terminated pod with no start record and nothing delivered) made this end SandboxError,
    and fail.
    """

    async def scenario() -> None:
        w = World(pool_size=2)
        a = Replica(w.api, "op-a")
        await a.start()
        await vtime.until(lambda: w.warm_ready() == 2)

        async def never_answer(call: Call) -> None:
            labels = ((call.body or {}).get("metadata") or {}).get("labels") or {}
            if call.client == "op-a" and labels.get(podspec.STATE_LABEL) == podspec.CLAIMED:
                await asyncio.Event().wait()

        w.api.after_faults.append(never_answer)
        ex = w.submit(9)
        name, uid = ex["metadata"]["name"], ex["metadata"]["uid"]
        await vtime.until(lambda: bool(_claimed(w, uid)), what="the claim landed")
        (pod,) = _claimed(w, uid)
        await a.crash()
        w.api.delete("pods", SANDBOX, pod, {"gracePeriodSeconds": 30})
        await vtime.until(lambda: _terminated(w, pod), what="the container stopped")
        b = Replica(w.api, "op-b")
        await b.start()
        await w.wait_finished(name)
        done = w.execution(name)
        assert done is not None
        assert done["status"]["phase"] == "Succeeded", done["status"]
        assert done["status"]["result"]["returnValue"] == 9
        starts = w.kubelet.started_for(uid)
        assert len(starts) == 1 and starts[0].pod != pod, starts
        await vtime.until(lambda: w.api.read("pods", SANDBOX, pod) is None, what="pod gone")

    vtime.run(scenario)


def test_a_resumed_claim_never_starts_the_code_in_a_pod_being_deleted() -> None:
    """As above, but the successor starts while the deleted pod's container still runs (a
    long grace period): it must not send the request into the dying pod, but wait for its
    final record and run the code on another pod.

    Catches a resume that re-sends into a Terminating pod (the code then starts only to be
    killed: a SandboxError where a clean run was possible). Caught: removing the
    `view.deleting and not exchange.sent` return from deliver._deliver made the code start in
    the dying pod, and this test fail.
    """

    async def scenario() -> None:
        w = World(pool_size=2, stop_after=20.0)
        a = Replica(w.api, "op-a")
        await a.start()
        await vtime.until(lambda: w.warm_ready() == 2)

        async def never_answer(call: Call) -> None:
            labels = ((call.body or {}).get("metadata") or {}).get("labels") or {}
            if call.client == "op-a" and labels.get(podspec.STATE_LABEL) == podspec.CLAIMED:
                await asyncio.Event().wait()

        w.api.after_faults.append(never_answer)
        ex = w.submit(8)
        name, uid = ex["metadata"]["name"], ex["metadata"]["uid"]
        await vtime.until(lambda: bool(_claimed(w, uid)), what="the claim landed")
        (pod,) = _claimed(w, uid)
        await a.crash()
        w.api.delete("pods", SANDBOX, pod, {"gracePeriodSeconds": 30})
        b = Replica(w.api, "op-b")
        await b.start()
        await w.wait_finished(name)
        done = w.execution(name)
        assert done is not None
        assert done["status"]["phase"] == "Succeeded", done["status"]
        starts = w.kubelet.started_for(uid)
        assert len(starts) == 1 and starts[0].pod != pod, starts

    vtime.run(scenario)
