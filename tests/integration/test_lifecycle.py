"""The road end to end: single-use pods, queueing, empty and broken pools, invalid input,
TTL, events and printer columns, on the real cluster with the operator as a real process."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import pytest
from e2e.fixtures import Cluster, KubectlError, wait_for

from codeexec.client import Client
from codeexec.kube.client import CODE_EXECUTIONS, ApiError

from .conftest import (
    GVISOR,
    RUNTIMES,
    SANDBOX_NS,
    OperatorProcess,
    metric,
    pool_manifest,
    sandbox_pods,
    wait_pool_full,
)

pytestmark = pytest.mark.cluster


async def test_python_double_example(cx: Client, cluster: Cluster, namespace: str) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "examples/python-double.yaml")
    done = await cx.wait("python-double", timeout=120)
    assert done.status.phase == "Succeeded" and done.status.reason == "Succeeded"
    assert done.status.result is not None and done.status.result.return_value == 10
    assert done.status.result.status == "success"
    pod = done.status.sandbox.pod if done.status.sandbox else None
    assert pod
    wait_for(
        lambda: all(p["metadata"]["name"] != pod for p in sandbox_pods(cluster)),
        timeout=60,
        what="the used pod to be deleted",
    )
    wait_pool_full(cluster, "python", 3)


@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_warm_deliveries_use_sessions_held_open_before_the_claim(
    cx: Client, cluster: Cluster, runtime_pools: dict[str, str]
) -> None:
    pool = runtime_pools["python"]
    wait_pool_full(cluster, pool, 3)
    # Every ready pod of the suite's pools has its session open (5 = python 3 + nodejs 2).
    wait_for(lambda: metric("codeexec_preattached_sessions") >= 5, timeout=60, what="held sessions")
    held, new = (
        metric("codeexec_deliveries_total", session="held"),
        metric("codeexec_deliveries_total", session="new"),
    )
    for n in range(3):
        done = await cx.run("def main(n):\n    return n * 2\n", arguments={"n": n}, pool=pool)
        assert done.status.result and done.status.result.return_value == n * 2
    assert metric("codeexec_deliveries_total", session="held") == held + 3
    assert metric("codeexec_deliveries_total", session="new") == new


@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_a_run_is_reported_on_the_exit_status_the_kernel_stored_before_the_reap(
    cx: Client, runtime_pools: dict[str, str], runtime: str
) -> None:
    """Under runc the supervisor (PID 1, the sandbox's uid, the runtime's AppArmor profile)
    can read its worker's stored exit status in /proc, and reports on it instead of waiting
    for ~68 MiB of numpy and pandas to be freed (docs/runner-protocol.md, "Exit before the
    reap"). Under gVisor /proc shows no exit status: it waits for the reap, as before.
    caught: with `exit_visible` forced off in the supervisor the runc runs counted `wait`."""
    expected = "proc" if runtime == "runc" else "wait"
    before = {read: metric("codeexec_worker_exits_total", read=read) for read in ("proc", "wait")}
    py = await cx.run("def main():\n    return 1\n", pool=runtime_pools["python"])
    js = await cx.run(
        "module.exports = { main: () => { throw new RangeError('no'); } };",
        language="nodejs",
        pool=runtime_pools["nodejs"],
    )
    assert py.status.result is not None and py.status.result.return_value == 1
    assert js.status.reason == "UserException", js.status
    after = {read: metric("codeexec_worker_exits_total", read=read) for read in ("proc", "wait")}
    assert after[expected] == before[expected] + 2, (before, after)


async def test_printer_columns_and_events(cx: Client, cluster: Cluster, namespace: str) -> None:
    done = await cx.run("def main():\n    return 'hi'\n", name="columns", wait_timeout=120)
    assert done.status.reason == "Succeeded"
    table = cluster.kubectl("get", "cx", "-n", namespace).stdout
    header = table.splitlines()[0].split()
    assert header == ["NAME", "LANGUAGE", "PHASE", "REASON", "EXIT", "DURATION", "AGE"]
    row = table.splitlines()[1].split()
    assert row[:5] == ["columns", "python", "Succeeded", "Succeeded", "0"]

    failed = await cx.run("def main():\n    raise KeyError('k')\n", name="fails", wait_timeout=120)
    assert failed.status.reason == "UserException"

    def reasons(name: str) -> set[str]:
        items = cluster.get_json("events", "-n", namespace).get("items", [])
        return {e["reason"] for e in items if e["involvedObject"]["name"] == name}

    # One Event per failed outcome (plus WaitingForPod if it had to wait); a success gets
    # none by default (operator.successEvents): its status says it all. The claimed pod is in
    # the status, not in an Event of its own.
    found = wait_for(
        lambda: reasons("fails") if "UserException" in reasons("fails") else None,
        timeout=30,
        what="a UserException event",
    )
    assert found - {"WaitingForPod"} == {"UserException"}
    assert reasons("columns") - {"WaitingForPod"} == set()


async def test_ttl_deletes_finished_execution(cx: Client, namespace: str) -> None:
    done = await cx.run(
        "def main():\n    return 1\n", ttl_seconds_after_finished=1, wait_timeout=120
    )
    assert done.status.phase == "Succeeded"

    async def gone() -> bool:
        try:
            await cx.get(done.name)
        except ApiError as err:
            return err.not_found
        return False

    for _ in range(120):
        if await gone():
            return
        await asyncio.sleep(0.5)
    pytest.fail("the execution outlived its TTL")


async def test_nodejs_export_styles(cx: Client) -> None:
    codes = {
        "module.exports = main": "function main(a) { return a.n + 1; }\nmodule.exports = main;\n",
        "module.exports = { main }": "async function main(a) { return a.n + 2; }\nmodule.exports = { main };\n",
    }
    for style, code in codes.items():
        done = await cx.run(code, language="nodejs", arguments={"n": 1}, wait_timeout=120)
        assert done.status.reason == "Succeeded", (style, done.status)
        assert done.status.result and done.status.result.return_value in (2, 3), style


@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_code_in_the_pod_sees_the_sandbox(cx: Client, runtime_pools: dict[str, str]) -> None:
    code = """
import os, socket
def main():
    checks = {"uid": os.getuid()}
    checks["token"] = os.path.exists("/var/run/secrets/kubernetes.io/serviceaccount/token")
    try:
        open("/probe", "w")
        checks["root_writable"] = True
    except OSError:
        checks["root_writable"] = False
    open("/tmp/scratch", "w").write("ok")
    checks["tmp_writable"] = True
    try:
        socket.create_connection(("10.96.0.1", 443), timeout=2)
        checks["network"] = True
    except OSError:
        checks["network"] = False
    checks["env_has_k8s"] = any(k.startswith("KUBERNETES_") for k in os.environ)
    with open("/proc/self/status") as f:
        caps = [line.split()[1] for line in f if line.startswith("CapEff")]
    checks["cap_eff"] = caps[0]
    return checks
"""
    done = await cx.run(code, timeout_seconds=20, wait_timeout=120, pool=runtime_pools["python"])
    assert done.status.reason == "Succeeded", done.status
    checks: dict[str, Any] = done.status.result.return_value  # type: ignore[union-attr]
    assert checks["uid"] >= 100000
    assert checks["token"] is False
    assert checks["root_writable"] is False
    assert checks["tmp_writable"] is True
    assert checks["network"] is False
    assert checks["cap_eff"] == "0000000000000000"


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_sandbox_pod_spec_is_hardened(
    operator: OperatorProcess, cluster: Cluster, runtime: str, runtime_pools: dict[str, str]
) -> None:
    pods = [
        p
        for p in sandbox_pods(cluster)
        if p["metadata"]["labels"].get("codeexec.io/pool") == runtime_pools["python"]
    ]
    assert pods
    spec = pods[0]["spec"]
    assert spec.get("runtimeClassName") == (GVISOR if runtime == "gvisor" else None)
    c = spec["containers"][0]
    assert spec["automountServiceAccountToken"] is False
    assert spec["enableServiceLinks"] is False
    assert spec["restartPolicy"] == "Never"
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert c["resources"]["limits"]["memory"] == "256Mi"
    assert any(v.get("emptyDir", {}).get("sizeLimit") for v in spec["volumes"])
    assert not any(v.get("projected") or v.get("secret") for v in spec["volumes"])
    policies = cluster.get_json("networkpolicy", "-n", SANDBOX_NS)["items"]
    deny = [p for p in policies if p["metadata"]["name"] == "codeexec-sandbox-deny-all"]
    assert deny and set(deny[0]["spec"]["policyTypes"]) == {"Ingress", "Egress"}


async def test_fifty_at_once_on_a_pool_of_three(cx: Client, cluster: Cluster) -> None:
    cluster.apply(pool_manifest("burst", "python", size=3, queueTimeoutSeconds=600))
    wait_pool_full(cluster, "burst", 3)
    seen_pending: set[str] = set()

    def track(ex: Any) -> None:
        if ex.status.phase == "Pending" and ex.status.reason == "WaitingForPod":
            seen_pending.add(ex.name)

    async def one(i: int) -> Any:
        created = await cx.submit(f"def main():\n    return {i}\n", pool="burst")
        return await cx.wait(created.name, timeout=900, on_update=track)

    try:
        results = await asyncio.gather(*(one(i) for i in range(50)))
        assert [r.status.reason for r in results] == ["Succeeded"] * 50
        assert [r.status.result.return_value for r in results] == list(range(50))
        pods = [r.status.sandbox.pod_uid for r in results]
        assert len(set(pods)) == 50, "a pod ran more than one execution"
        assert seen_pending, "no execution was seen waiting in line"
    finally:
        cluster.kubectl("delete", "sandboxpool", "burst", "--wait=false")


async def test_empty_pool_fails_with_pool_exhausted(cx: Client, cluster: Cluster) -> None:
    cluster.apply(pool_manifest("empty", "python", size=0, queueTimeoutSeconds=3))
    try:
        done = await cx.run("def main():\n    return 1\n", pool="empty", wait_timeout=120)
        assert done.status.reason == "PoolExhausted", done.status
        assert done.status.result and done.status.result.status == "program_runner_error"
        assert done.status.result.detail == "no_available_container"
    finally:
        cluster.kubectl("delete", "sandboxpool", "empty", "--wait=false")


async def test_broken_pool_fails_and_never_shrinks(cx: Client, cluster: Cluster) -> None:
    broken = pool_manifest(
        "broken",
        "python",
        size=2,
        queueTimeoutSeconds=5,
        readyTimeoutSeconds=5,
        imagePullPolicy="Never",
    )
    broken["spec"]["image"] = "codeexec.local/does-not-exist:dev"
    cluster.apply(broken)
    try:
        done = await cx.run("def main():\n    return 1\n", pool="broken", wait_timeout=120)
        assert done.status.reason in ("PoolExhausted", "SandboxError"), done.status
        # Replaced, not abandoned: the pool keeps trying to hold its size.
        first = {
            p["metadata"]["uid"]
            for p in sandbox_pods(cluster)
            if p["metadata"]["labels"].get("codeexec.io/pool") == "broken"
        }

        def replaced() -> bool:
            now = {
                p["metadata"]["uid"]
                for p in sandbox_pods(cluster)
                if p["metadata"]["labels"].get("codeexec.io/pool") == "broken"
                and not p["metadata"].get("deletionTimestamp")
            }
            return len(now) >= 2 and not (now & first)

        wait_for(replaced, timeout=120, what="broken pods to be replaced, keeping the size")
    finally:
        cluster.kubectl("delete", "sandboxpool", "broken", "--wait=false")


INVALID = {
    "unknown language": ({"language": "ruby", "code": "x"}, "Unsupported value"),
    "both code fields": (
        {"language": "python", "code": "x", "codeB64": "eA=="},
        "exactly one of spec.code or spec.codeB64",
    ),
    "neither code field": ({"language": "python"}, "exactly one of spec.code or spec.codeB64"),
    "invalid base64": ({"language": "python", "codeB64": "not base64!"}, "codeB64"),
    "code over the limit": ({"language": "python", "code": "x" * 140_000}, "Too long"),
    "negative timeout": (
        {"language": "python", "code": "x", "timeoutSeconds": -1},
        "timeoutSeconds",
    ),
    "arguments not an object": (
        {"language": "python", "code": "x", "arguments": [1, 2]},
        "arguments",
    ),
}


@pytest.mark.parametrize("spec,message", INVALID.values(), ids=list(INVALID))
def test_api_server_refuses_invalid(
    cluster: Cluster, namespace: str, spec: dict[str, Any], message: str, operator: OperatorProcess
) -> None:
    manifest = {
        "apiVersion": "codeexec.io/v1alpha1",
        "kind": "CodeExecution",
        "metadata": {"name": "invalid"},
        "spec": spec,
    }
    with pytest.raises(KubectlError) as err:
        cluster.apply(manifest, namespace)
    assert message in err.value.stderr


async def test_spec_is_immutable(cx: Client, cluster: Cluster, namespace: str) -> None:
    done = await cx.run("def main():\n    return 1\n", name="frozen", wait_timeout=120)
    assert done.status.phase == "Succeeded"
    with pytest.raises(ApiError) as err:
        await cx.kube.patch(CODE_EXECUTIONS, "frozen", {"spec": {"timeoutSeconds": 20}}, namespace)
    assert err.value.status == 422 and "immutable" in str(err.value)


async def test_what_the_schema_cannot_express_is_invalid_request(cx: Client) -> None:
    not_utf8 = base64.b64encode(b"\xff\xfe\xfd def main(): pass").decode()
    body = cx.manifest("x", language="python")
    del body["spec"]["code"]
    body["spec"]["codeB64"] = not_utf8
    created = await cx.kube.create(CODE_EXECUTIONS, body, cx.namespace)
    bad_utf8 = await cx.wait(created["metadata"]["name"], timeout=60)
    no_pool = await cx.run("def main():\n    return 1\n", pool="no-such-pool", wait_timeout=60)
    too_long = await cx.run("def main():\n    return 1\n", timeout_seconds=3000, wait_timeout=60)
    for done in (bad_utf8, no_pool, too_long):
        assert done.status.phase == "Failed" and done.status.reason == "InvalidRequest", done.status
        assert done.status.result and done.status.result.status == "program_runner_error"
        assert done.status.result.started is False
    # ...and the operator keeps serving.
    ok = await cx.run("def main():\n    return 'still here'\n", wait_timeout=120)
    assert ok.status.reason == "Succeeded"


async def test_deleting_a_running_execution_frees_its_pod(cx: Client, cluster: Cluster) -> None:
    created = await cx.submit("import time\ndef main():\n    time.sleep(60)\n", timeout_seconds=120)

    async def running() -> Any:
        for _ in range(240):
            ex = await cx.get(created.name)
            if ex.status.phase == "Running":
                return ex
            await asyncio.sleep(0.25)
        pytest.fail("never Running")

    ex = await running()
    pod = ex.status.sandbox.pod
    await cx.delete(created.name)
    wait_for(
        lambda: all(
            p["metadata"]["name"] != pod or p["metadata"].get("deletionTimestamp")
            for p in sandbox_pods(cluster)
        ),
        timeout=60,
        what="pod released",
    )


def test_pool_status_reports_counts(operator: OperatorProcess, cluster: Cluster) -> None:
    wait_pool_full(cluster, "python", 3)
    pool = cluster.get_json("sandboxpool", "python")
    assert pool["status"]["ready"] == 3 and pool["status"]["templateHash"]
    assert any(c["type"] == "Ready" for c in pool["status"]["conditions"])
