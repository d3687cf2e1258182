"""At most once, exactly one result, no leaks: the operator is SIGKILLed at each step of the
road and restarted. Whether the code started is read from the pods' own records (the
supervisor's termination message), collected by watching the sandbox namespace."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from e2e.fixtures import Cluster, wait_for

from codeexec import failpoints
from codeexec.client import Client
from codeexec.kube.client import CODE_EXECUTIONS, PODS, ApiError, Kube, Resource

from .conftest import SANDBOX_NS, OperatorProcess, sandbox_pods

pytestmark = pytest.mark.cluster

TERMINAL = ("Succeeded", "Failed")

PROGRAM = (
    "import time\ndef main(n):\n    print('ran', n, flush=True)\n    time.sleep(2)\n    return n\n"
)


class Watcher:
    """A list+watch kept in a task whose death fails the test (`check`), never silently."""

    def __init__(self, kube: Kube, res: Resource, namespace: str, selector: str) -> None:
        self.kube, self.res, self.namespace, self.selector = kube, res, namespace, selector
        self.task: asyncio.Task[None] | None = None
        self.listed = asyncio.Event()

    def start(self) -> Watcher:
        self.task = asyncio.get_running_loop().create_task(self.run())
        return self

    async def running(self, timeout: float = 30.0) -> None:
        """Returns once the first list is in: from here on no change escapes the evidence. A
        test that blocks the loop before this point may find its pods already gone."""
        waiter = asyncio.ensure_future(self.listed.wait())
        assert self.task is not None, "the evidence collector never started"
        await asyncio.wait({waiter, self.task}, timeout=timeout, return_when="FIRST_COMPLETED")
        waiter.cancel()
        self.check()
        assert self.listed.is_set(), "the evidence collector never listed"

    def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()

    def check(self) -> None:
        """The evidence is whole only while the collector lives."""
        assert self.task is not None, "the evidence collector never started"
        if self.task.done():
            raise AssertionError(f"the evidence collector died: {self.task!r}")

    def seen(self, obj: dict[str, Any], deleted: bool = False) -> None:
        raise NotImplementedError

    async def run(self) -> None:
        listing = await self.kube.list(self.res, self.namespace, label_selector=self.selector)
        for obj in listing["items"]:
            self.seen(obj)
        rv = listing["metadata"]["resourceVersion"]
        self.listed.set()
        while True:
            # Only an expired version is survivable (relist); anything else ends the task, and
            # check() fails the test.
            try:
                async for ev in self.kube.watch(
                    self.res,
                    self.namespace,
                    resource_version=rv,
                    label_selector=self.selector,
                    timeout_seconds=60,
                ):
                    obj = ev["object"]
                    rv = obj["metadata"].get("resourceVersion", rv)
                    if ev["type"] != "BOOKMARK":
                        self.seen(obj, ev["type"] == "DELETED")
            except ApiError as err:
                if not err.gone:
                    raise
                listing = await self.kube.list(
                    self.res, self.namespace, label_selector=self.selector
                )
                for obj in listing["items"]:
                    self.seen(obj)
                rv = listing["metadata"]["resourceVersion"]


class PodRecords(Watcher):
    """Every sandbox pod claimed for one execution, with its last known state. The claim
    finalizer keeps a claimed pod until the operator has judged it, so its container's final
    record (the supervisor's termination message) is always seen before the pod goes."""

    def __init__(self, kube: Kube, uid: str) -> None:
        super().__init__(kube, PODS, SANDBOX_NS, f"codeexec.io/claimed-by={uid}")
        self.pods: dict[str, dict[str, Any]] = {}
        self.deleted: set[str] = set()

    def seen(self, obj: dict[str, Any], deleted: bool = False) -> None:
        self.pods[obj["metadata"]["uid"]] = obj
        if deleted:
            self.deleted.add(obj["metadata"]["uid"])

    @staticmethod
    def record(pod: dict[str, Any]) -> str | None:
        """'started', 'unused' (ended with no start record), or None (no final record seen)."""
        for cs in pod.get("status", {}).get("containerStatuses") or []:
            terminated = (cs.get("state") or {}).get("terminated")
            if terminated is None:
                continue
            msg = (terminated.get("message") or "").strip()
            prefix, _, doc = msg.partition(" ")
            if prefix in ("CXS1", "CXR1"):
                # A record that does not parse is a broken proof, not a missing start.
                return "started" if json.loads(doc).get("started") else "unused"
            return "unused"
        return None

    def starts(self) -> int:
        """Pods whose supervisor recorded that it started the code (CXS1 or CXR1)."""
        self.check()
        unproven = [p["metadata"]["name"] for p in self.pods.values() if self.record(p) is None]
        assert not unproven, f"claimed pods without a final record: {unproven}"
        return sum(self.record(p) == "started" for p in self.pods.values())

    async def all_gone(self, timeout: float = 60.0) -> None:
        """Waits until the watch has delivered the deletion of every pod claimed for the
        execution (and at least one was claimed): their final records are then all in."""
        for _ in range(int(timeout * 10)):
            self.check()
            if self.pods and set(self.pods) <= self.deleted:
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"claimed pods still there: {set(self.pods) - self.deleted}")


class ExecutionRecords(Watcher):
    """Every revision of one execution's status as the API server served it."""

    def __init__(self, kube: Kube, namespace: str, name: str) -> None:
        super().__init__(kube, CODE_EXECUTIONS, namespace, "")
        self.name = name
        self.terminal: list[tuple[str, str]] = []
        self.version = 0

    def seen(self, obj: dict[str, Any], deleted: bool = False) -> None:
        status = obj.get("status") or {}
        if obj["metadata"]["name"] == self.name:
            self.version = max(self.version, int(obj["metadata"]["resourceVersion"]))
        if obj["metadata"]["name"] == self.name and status.get("phase") in TERMINAL:
            self.terminal.append((status.get("reason"), status.get("completionTime")))

    async def caught_up(self, version: str) -> None:
        """Waits until the watch has delivered this revision of the execution."""
        while self.version < int(version):
            self.check()
            await asyncio.sleep(0.1)

    def one_terminal_status(self) -> tuple[str, str]:
        """The terminal status, asserting that it was written once and never changed."""
        self.check()
        assert self.terminal, "no terminal status seen"
        assert len(set(self.terminal)) == 1, self.terminal
        return self.terminal[0]


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
    pods = PodRecords(cx.kube, created.uid).start()
    statuses = ExecutionRecords(cx.kube, cx.namespace, created.name).start()
    await pods.running()
    await statuses.running()
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
        assert terminal_phases and set(terminal_phases) == {"Succeeded"}, terminal_phases
        # The road deletes the execution's pods only after its terminal status: once they are
        # all gone (the claim finalizer kept each until then), the road is over.
        await pods.all_gone()
        # Every revision up to now is on the watch: exactly one terminal status, unchanged.
        now = await cx.kube.get(CODE_EXECUTIONS, created.name, cx.namespace)
        await statuses.caught_up(now["metadata"]["resourceVersion"])
        assert statuses.one_terminal_status()[0] == "Succeeded"
        # The code started exactly once, by the pods' own account (a success with no start
        # record would be a broken proof, not a pass).
        assert pods.starts() == 1, pods.pods.keys()
        assert done.status.result.stdout.count("ran 7") == 1
    finally:
        pods.stop()
        statuses.stop()
        if operator.proc is None or operator.proc.poll() is not None:
            operator.start()


async def test_claimed_pod_deleted_before_delivery_runs_on_another(
    operator: OperatorProcess, cx: Client, cluster: Cluster
) -> None:
    # Someone (an admin, an eviction) deletes the pod between the claim and the first byte of
    # the request: nothing ran, so the execution must claim another pod rather than fail.
    operator.restart(failpoints=f"{failpoints.AFTER_CLAIM}=6")
    records: PodRecords | None = None
    try:
        created = await cx.submit(PROGRAM, arguments={"n": 3}, timeout_seconds=30)
        records = PodRecords(cx.kube, created.uid).start()
        await records.running()

        def claimed() -> str | None:
            for p in sandbox_pods(cluster):
                if p["metadata"]["labels"].get("codeexec.io/claimed-by") == created.uid:
                    return str(p["metadata"]["name"])
            return None

        # In a thread: the watch must keep reading while the test waits.
        first = await asyncio.to_thread(
            wait_for, claimed, timeout=120, what="a pod claimed for the execution"
        )
        cluster.kubectl("delete", "pod", "-n", SANDBOX_NS, first, "--grace-period=0", "--force")
        done = await cx.wait(created.name, timeout=180)
        assert done.status.reason == "Succeeded", done.status
        assert done.status.result and done.status.result.return_value == 3
        assert done.status.sandbox and done.status.sandbox.pod != first
        assert done.status.sandbox.attempts == 2
        await records.all_gone()
        assert records.starts() == 1
    finally:
        if records is not None:
            records.stop()
        operator.restart()


async def test_graceful_shutdown_leaves_running_code_to_the_successor(
    operator: OperatorProcess, cx: Client, cluster: Cluster
) -> None:
    # A rolling update SIGTERMs the operator while code runs: the pod must be left for the
    # next operator to resume, not released (which would lose the run).
    created = await cx.submit(PROGRAM, arguments={"n": 5}, timeout_seconds=30)
    records = PodRecords(cx.kube, created.uid).start()
    try:
        # Caught: without this the watch first listed after the blocking waits below, when the
        # run had ended and its pod was gone (a CI run saw no pod at all).
        await records.running()

        def claimed() -> str | None:
            for p in sandbox_pods(cluster):
                if p["metadata"]["labels"].get("codeexec.io/claimed-by") == created.uid:
                    return str(p["metadata"]["name"])
            return None

        # In threads: the watch must keep reading while the test waits and restarts.
        pod = await asyncio.to_thread(
            wait_for, claimed, timeout=120, what="a pod claimed for the execution"
        )
        await asyncio.to_thread(operator.stop)
        await asyncio.to_thread(operator.start)
        done = await cx.wait(created.name, timeout=180)
        assert done.status.reason == "Succeeded", done.status
        assert done.status.result and done.status.result.return_value == 5
        assert done.status.sandbox and done.status.sandbox.pod == pod
        await records.all_gone()
        assert records.starts() == 1
    finally:
        records.stop()
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
