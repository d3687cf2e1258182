"""At most once, exactly one result, no leaks: the operator is SIGKILLed at each step of the
road and restarted. Whether the code started is read from the pods' own records (the
supervisor's termination message), collected by watching the sandbox namespace."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import pytest
from e2e.fixtures import Cluster, wait_for

from codeexec import failpoints
from codeexec.client import Client
from codeexec.kube.client import PODS, ApiError, Kube

from .conftest import SANDBOX_NS, OperatorProcess, sandbox_pods

pytestmark = pytest.mark.cluster

PROGRAM = (
    "import time\ndef main(n):\n    print('ran', n, flush=True)\n    time.sleep(2)\n    return n\n"
)


class PodRecords:
    """Every sandbox pod claimed for one execution, with its last known state."""

    def __init__(self, kube: Kube, uid: str) -> None:
        self.kube, self.uid = kube, uid
        self.pods: dict[str, dict[str, Any]] = {}

    async def run(self) -> None:
        selector = f"codeexec.io/claimed-by={self.uid}"
        listing = await self.kube.list(PODS, SANDBOX_NS, label_selector=selector)
        for p in listing["items"]:
            self.pods[p["metadata"]["uid"]] = p
        rv = listing["metadata"]["resourceVersion"]
        while True:
            with contextlib.suppress(ApiError):
                async for ev in self.kube.watch(
                    PODS,
                    SANDBOX_NS,
                    resource_version=rv,
                    label_selector=selector,
                    timeout_seconds=60,
                ):
                    obj = ev["object"]
                    rv = obj["metadata"].get("resourceVersion", rv)
                    if ev["type"] != "BOOKMARK":
                        self.pods[obj["metadata"]["uid"]] = obj

    def starts(self) -> int:
        """Pods whose supervisor recorded that it started the code (CXS1 or CXR1)."""
        count = 0
        for pod in self.pods.values():
            for cs in pod.get("status", {}).get("containerStatuses") or []:
                msg = ((cs.get("state") or {}).get("terminated") or {}).get("message") or ""
                prefix, _, doc = msg.partition(" ")
                if prefix in ("CXS1", "CXR1"):
                    with contextlib.suppress(ValueError):
                        count += bool(json.loads(doc).get("started"))
        return count


@pytest.mark.parametrize(
    "point",
    [
        failpoints.AFTER_CLAIM,
        failpoints.AFTER_RECORD,
        failpoints.AFTER_DELIVERY,
        failpoints.BEFORE_STATUS,
        failpoints.AFTER_STATUS,
    ],
)
async def test_crash_at_each_step(
    point: str, operator: OperatorProcess, cx: Client, cluster: Cluster
) -> None:
    operator.restart(failpoints=point)
    created = await cx.submit(PROGRAM, arguments={"n": 7}, timeout_seconds=30)
    records = PodRecords(cx.kube, created.uid)
    watcher = asyncio.create_task(records.run())
    terminal_phases: list[str] = []

    def track(ex: Any) -> None:
        if ex.finished:
            terminal_phases.append(ex.status.reason)

    try:
        await asyncio.to_thread(operator.wait_dead, 120)  # the failpoint fired
        operator.start()
        done = await cx.wait(created.name, timeout=180, on_update=track)
        assert done.status.reason == "Succeeded", done.status
        assert done.status.result and done.status.result.return_value == 7
        # Exactly one terminal status, never rewritten.
        await asyncio.sleep(3)
        again = await cx.get(created.name)
        assert again.status.completion_time == done.status.completion_time
        assert again.status.reason == "Succeeded"
        # The code started at most once, by the pods' own account.
        await asyncio.sleep(1)
        assert records.starts() <= 1, records.pods.keys()
        assert done.status.result.stdout.count("ran 7") == 1
        # No pod left behind for this execution.
        wait_for(
            lambda: (
                not [
                    p
                    for p in sandbox_pods(cluster)
                    if p["metadata"]["labels"].get("codeexec.io/claimed-by") == created.uid
                    and not p["metadata"].get("deletionTimestamp")
                ]
            ),
            timeout=60,
            what="no leaked pod",
        )
    finally:
        watcher.cancel()
        if operator.proc is None or operator.proc.poll() is not None:
            operator.start()


async def test_claimed_pod_deleted_before_delivery_runs_on_another(
    operator: OperatorProcess, cx: Client, cluster: Cluster
) -> None:
    # Someone (an admin, an eviction) deletes the pod between the claim and the first byte of
    # the request: nothing ran, so the execution must claim another pod rather than fail.
    operator.restart(failpoints=f"{failpoints.AFTER_CLAIM}=6")
    try:
        created = await cx.submit(PROGRAM, arguments={"n": 3}, timeout_seconds=30)
        records = PodRecords(cx.kube, created.uid)
        watcher = asyncio.create_task(records.run())

        def claimed() -> str | None:
            for p in sandbox_pods(cluster):
                if p["metadata"]["labels"].get("codeexec.io/claimed-by") == created.uid:
                    return str(p["metadata"]["name"])
            return None

        first = wait_for(claimed, timeout=120, what="a pod claimed for the execution")
        cluster.kubectl("delete", "pod", "-n", SANDBOX_NS, first, "--grace-period=0", "--force")
        done = await cx.wait(created.name, timeout=180)
        watcher.cancel()
        assert done.status.reason == "Succeeded", done.status
        assert done.status.result and done.status.result.return_value == 3
        assert done.status.sandbox and done.status.sandbox.pod != first
        assert done.status.sandbox.attempts == 2
        assert records.starts() <= 1
    finally:
        operator.restart()


async def test_graceful_shutdown_leaves_running_code_to_the_successor(
    operator: OperatorProcess, cx: Client, cluster: Cluster
) -> None:
    # A rolling update SIGTERMs the operator while code runs: the pod must be left for the
    # next operator to resume, not released (which would lose the run).
    created = await cx.submit(PROGRAM, arguments={"n": 5}, timeout_seconds=30)
    records = PodRecords(cx.kube, created.uid)
    watcher = asyncio.create_task(records.run())
    try:

        def claimed() -> str | None:
            for p in sandbox_pods(cluster):
                if p["metadata"]["labels"].get("codeexec.io/claimed-by") == created.uid:
                    return str(p["metadata"]["name"])
            return None

        pod = wait_for(claimed, timeout=120, what="a pod claimed for the execution")
        operator.stop()
        operator.start()
        done = await cx.wait(created.name, timeout=180)
        assert done.status.reason == "Succeeded", done.status
        assert done.status.result and done.status.result.return_value == 5
        assert done.status.sandbox and done.status.sandbox.pod == pod
        assert records.starts() <= 1
    finally:
        watcher.cancel()
        if operator.proc is None or operator.proc.poll() is not None:
            operator.start()


async def test_pod_deleted_while_code_runs_is_a_sandbox_error_after_the_start(
    cx: Client, cluster: Cluster
) -> None:
    # The pod's own record goes with it; the start the runner announced on the stream is what
    # tells "after the code started" from "before".
    created = await cx.submit("import time\ndef main():\n    time.sleep(60)\n", timeout_seconds=120)
    for _ in range(600):
        ex = await cx.get(created.name)
        if ex.status.phase == "Running" and ex.status.sandbox and ex.status.sandbox.pod:
            break
        await asyncio.sleep(0.1)
    else:
        pytest.fail("never Running")
    cluster.kubectl(
        "delete", "pod", "-n", SANDBOX_NS, ex.status.sandbox.pod, "--grace-period=0", "--force"
    )
    done = await cx.wait(created.name, timeout=120)
    assert done.status.reason == "SandboxError", done.status
    assert "after the code started" in (done.status.message or "")
    assert done.status.result and done.status.result.started is True
