"""Pools that follow demand on the real cluster: an HPA aimed at a pool's scale subresource,
and a pool that starts from zero and goes back to zero (seconds each)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from e2e.fixtures import Cluster, wait_for

from codeexec.client import Client

from .conftest import OperatorProcess, pool_manifest, sandbox_pods

pytestmark = pytest.mark.cluster


def _status(cluster: Cluster, name: str) -> dict[str, int | str]:
    return dict(cluster.get_json("sandboxpool", name).get("status") or {})


def _pods_of(cluster: Cluster, name: str) -> list[str]:
    return [
        p["metadata"]["name"]
        for p in sandbox_pods(cluster)
        if p["metadata"]["labels"].get("codeexec.io/pool") == name
        and not p["metadata"].get("deletionTimestamp")
    ]


@pytest.fixture
def scaled_pool(
    request: pytest.FixtureRequest, operator: OperatorProcess, cluster: Cluster
) -> Iterator[str]:
    """A pool named after the test, with no preloads (it warms in seconds); removed after."""
    name, spec = request.param
    cluster.apply(pool_manifest(name, "python", preload=[], **spec))
    yield name
    cluster.kubectl("delete", "sandboxpool", name, "--ignore-not-found", check=False)
    wait_for(lambda: not _pods_of(cluster, name), timeout=60, what=f"{name}'s pods gone")


@pytest.mark.parametrize(
    "scaled_pool",
    [("scale-hpa", {"size": 1, "scaling": {"mode": "External", "minReady": 0, "maxSize": 2}})],
    indirect=True,
)
def test_an_hpa_is_accepted_but_cannot_reach_a_cluster_scoped_pool(
    cluster: Cluster, scaled_pool: str, namespace: str
) -> None:
    """The HPA object naming a SandboxPool is accepted, but the HPA controller looks its
    target up in the HPA's own namespace (…/namespaces/NS/sandboxpools/NAME/scale): a
    cluster-scoped SandboxPool is not found there, so the controller reports AbleToScale
    False (FailedGetScale). The same holds for KEDA's ScaledObject. docs/capacity.md says
    so; `kubectl scale` is the scale path that works. (The test bed also runs no
    metrics server: even a reachable target would get no metric.)"""
    name = scaled_pool
    hpa = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": name},
        "spec": {
            "scaleTargetRef": {
                "apiVersion": "codeexec.io/v1alpha1",
                "kind": "SandboxPool",
                "name": name,
            },
            "minReplicas": 1,
            "maxReplicas": 2,
            "metrics": [
                {
                    "type": "External",
                    "external": {
                        "metric": {
                            "name": "codeexec_pool_in_use_ratio",
                            "selector": {"matchLabels": {"pool": name}},
                        },
                        "target": {"type": "Value", "value": "700m"},
                    },
                }
            ],
        },
    }
    cluster.apply(hpa, namespace)

    def able_to_scale() -> dict[str, str] | None:
        got = cluster.get_json("hpa", name, "-n", namespace)
        conditions = {c["type"]: c for c in (got.get("status") or {}).get("conditions") or []}
        return conditions.get("AbleToScale")

    condition = wait_for(able_to_scale, timeout=60, what="the HPA's AbleToScale condition")
    assert condition["status"] == "False" and condition["reason"] == "FailedGetScale", condition
    assert _status(cluster, name).get("desired") == 1  # untouched


@pytest.mark.parametrize(
    "scaled_pool",
    [("scale-zero", {"scaling": {"minReady": 0, "maxSize": 2, "cooldownSeconds": 5}})],
    indirect=True,
)
async def test_an_empty_pool_runs_an_execution_and_returns_to_zero(
    cx: Client, cluster: Cluster, scaled_pool: str
) -> None:
    name = scaled_pool
    wait_for(lambda: _status(cluster, name).get("desired") == 0, timeout=30, what="desired 0")
    assert not _pods_of(cluster, name)
    started = time.monotonic()
    done = await cx.run("def main(n):\n    return n + 1\n", arguments={"n": 41}, pool=name)
    cold = time.monotonic() - started
    assert done.status.phase == "Succeeded", done.status
    assert done.status.result and done.status.result.return_value == 42
    print(f"cold start on an empty pool: {cold:.2f}s end to end")
    wait_for(lambda: not _pods_of(cluster, name), timeout=60, what="back to zero")
    # The status is written at most once a second: it may trail the pods by that much.
    wait_for(lambda: _status(cluster, name).get("desired") == 0, timeout=10, what="desired 0")
