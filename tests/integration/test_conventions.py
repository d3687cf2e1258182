"""What a kubectl user sees: `kubectl get codeexec` lists CodeExecutions only, `-o wide` shows
pool, pod and node; the CLI's -A and -o; conditions that follow the API conventions; the
operator's build and API-request metrics."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from e2e.fixtures import Cluster

from codeexec import __version__
from codeexec.client import Client
from tests.integration.conftest import metric

pytestmark = pytest.mark.cluster

BIN = Path(sys.executable).parent


def codeexec(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    return subprocess.run(
        [str(BIN / "codeexec"), *args, "--kubeconfig", str(cluster.kubeconfig)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )


async def test_kubectl_get_codeexec_lists_executions_only_and_wide_shows_placement(
    cx: Client, cluster: Cluster, namespace: str
) -> None:
    done = await cx.run("def main():\n    return 1\n", name="wide", wait_timeout=120)
    assert done.status.sandbox is not None and done.status.sandbox.node
    listed = cluster.get_json("codeexec", "-n", namespace)["items"]
    assert {item["kind"] for item in listed} == {"CodeExecution"}
    table = cluster.kubectl("get", "codeexecutions", "-n", namespace, "-o", "wide").stdout
    header, row = table.splitlines()[0].split(), table.splitlines()[1].split()
    assert header[-3:] == ["POOL", "POD", "NODE"]
    sandbox = done.status.sandbox
    assert row[-3:] == [sandbox.pool, sandbox.pod, sandbox.node]
    # Both kinds are still one word away.
    kinds = {i["kind"] for i in cluster.get_json("codeexec-all", "-A")["items"]}
    assert kinds == {"CodeExecution", "SandboxPool"}


async def test_the_cli_prints_like_kubectl(cx: Client, cluster: Cluster, namespace: str) -> None:
    done = await cx.run("def main():\n    return 'ok'\n", name="printed", wait_timeout=120)
    assert done.status.sandbox is not None
    wide = codeexec(cluster, "get", "-n", namespace, "-o", "wide")
    assert wide.returncode == 0, wide.stderr
    header, row = wide.stdout.splitlines()[0].split(), wide.stdout.splitlines()[1].split()
    assert header[-4:] == ["POOL", "POD", "NODE", "AGE"]
    assert row[-4:-1] == [
        done.status.sandbox.pool,
        done.status.sandbox.pod,
        done.status.sandbox.node,
    ]
    names = codeexec(cluster, "list", "-n", namespace, "-o", "name")
    assert names.stdout.split() == ["codeexecution.codeexec.io/printed"]
    one = json.loads(codeexec(cluster, "get", "printed", "-n", namespace, "-o", "json").stdout)
    assert one["kind"] == "CodeExecution" and one["status"]["phase"] == "Succeeded"
    many = yaml.safe_load(codeexec(cluster, "list", "-n", namespace, "-o", "yaml").stdout)
    assert many["kind"] == "List" and len(many["items"]) == 1
    everywhere = codeexec(cluster, "list", "-A")
    assert everywhere.stdout.splitlines()[0].split()[0] == "NAMESPACE"
    assert any(ln.split()[:2] == [namespace, "printed"] for ln in everywhere.stdout.splitlines())
    ran = await asyncio.to_thread(
        subprocess.run,
        [
            str(BIN / "codeexec"),
            "run",
            "-",
            "-n",
            namespace,
            "-o",
            "name",
            "--keep",
            "-q",
            "--kubeconfig",
            str(cluster.kubeconfig),
        ],
        input="def main():\n    return 3\n",
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert ran.returncode == 0 and ran.stdout.startswith("codeexecution.codeexec.io/cx-")


def test_a_missing_execution_exits_3(cluster: Cluster, namespace: str) -> None:
    proc = codeexec(cluster, "get", "nothing-here", "-n", namespace)
    assert proc.returncode == 3 and "NotFound" in proc.stderr


async def test_a_pool_stays_ready_with_the_same_transition_time_while_it_serves(
    cx: Client, cluster: Cluster
) -> None:
    """Runs consume warm pods and the pool refills: Ready stays True and its
    lastTransitionTime does not move (it used to be rewritten with every count)."""

    def ready() -> dict[str, str]:
        pool = cluster.get_json("sandboxpool", "python")
        conds = {c["type"]: c for c in pool["status"].get("conditions", [])}
        return conds["Ready"]

    before = ready()
    assert before["status"] == "True"
    for n in range(3):
        done = await cx.run("def main(n):\n    return n\n", arguments={"n": n}, wait_timeout=120)
        assert done.status.reason == "Succeeded"
    after = ready()
    assert after["status"] == "True"
    assert after["lastTransitionTime"] == before["lastTransitionTime"]
    assert (
        after["observedGeneration"]
        == cluster.get_json("sandboxpool", "python")["metadata"]["generation"]
    )


async def test_execution_conditions_carry_the_generation(
    cx: Client, cluster: Cluster, namespace: str
) -> None:
    done = await cx.run("def main():\n    return 1\n", name="conds", wait_timeout=120)
    body = cluster.get_json("codeexecution", "conds", "-n", namespace)
    conds = {c["type"]: c for c in body["status"]["conditions"]}
    assert conds["Complete"]["status"] == "True"
    assert conds["Claimed"]["status"] == "True"
    assert all(c["observedGeneration"] == body["metadata"]["generation"] for c in conds.values())
    assert done.status.sandbox is not None


async def test_the_operator_exposes_build_info_and_api_requests_by_verb_and_code(
    cx: Client,
) -> None:
    await cx.run("def main():\n    return 1\n", wait_timeout=120)
    assert metric("codeexec_build_info", version=__version__) == 1
    assert metric("codeexec_api_requests_total", verb="patch", code="200") > 0
    assert metric("codeexec_api_requests_total", verb="list", code="200") > 0
