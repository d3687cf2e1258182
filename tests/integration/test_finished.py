"""Finished executions leave the operator's watch on the real API server (finished.py): the
CRD's selectable `.status.phase`, the two complementary selectors, and the DELETED event a
finishing execution causes (seconds)."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import pytest
from e2e.fixtures import Cluster

from codeexec import finished
from codeexec.client import Client
from codeexec.kube.client import CODE_EXECUTIONS

from .conftest import OperatorProcess

pytestmark = pytest.mark.cluster

TERMINAL = ("Succeeded", "Failed")


def _names(listing: dict[str, Any]) -> list[str]:
    return sorted(o["metadata"]["name"] for o in listing.get("items") or [])


async def test_an_execution_without_status_is_selected_as_active(
    cx: Client, cluster: Cluster
) -> None:
    """In a namespace no operator serves, a new execution has no status: the API server reads
    the absent phase as "", so it is in the operator's watch and not in the finished one."""
    kube = cx.kube
    other = f"finished-probe-{secrets.token_hex(3)}"
    cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": other}})
    try:
        body = Client(kube, other).manifest("def main():\n    return 1\n", name="idle")
        await kube.create(CODE_EXECUTIONS, body, other)
        active = await kube.list(CODE_EXECUTIONS, other, field_selector=finished.ACTIVE)
        done = await kube.list(CODE_EXECUTIONS, other, field_selector=finished.FINISHED)
        assert (_names(active), _names(done)) == (["idle"], [])
    finally:
        cluster.kubectl("delete", "namespace", other, "--wait=false", check=False)


async def test_a_finished_execution_leaves_the_watch_and_is_not_taken_for_deleted(
    cx: Client, namespace: str, operator: OperatorProcess
) -> None:
    """Its terminal status takes it out of the operator's selection: the watch gets DELETED
    with the object as it was before. It stays in the cluster, in the finished selection
    only, and the operator runs with the selector (no fallback in its log)."""
    kube = cx.kube
    listing = await kube.list(CODE_EXECUTIONS, namespace, field_selector=finished.ACTIVE)
    rv = listing["metadata"]["resourceVersion"]
    events: list[dict[str, Any]] = []

    async def follow() -> None:
        async for ev in kube.watch(
            CODE_EXECUTIONS,
            namespace,
            resource_version=rv,
            field_selector=finished.ACTIVE,
            timeout_seconds=60,
        ):
            events.append(ev)
            if ev["type"] == "DELETED":
                return

    task = asyncio.create_task(follow())
    done = await cx.run("def main():\n    return 1\n", wait_timeout=120)
    assert done.status.phase == "Succeeded"
    await asyncio.wait_for(task, 30)
    last = events[-1]
    assert last["type"] == "DELETED" and last["object"]["metadata"]["name"] == done.name
    assert (last["object"].get("status") or {}).get("phase") not in TERMINAL
    await asyncio.sleep(1.0)
    assert (await cx.get(done.name)).status.phase == "Succeeded"
    active = await kube.list(CODE_EXECUTIONS, namespace, field_selector=finished.ACTIVE)
    left = await kube.list(CODE_EXECUTIONS, namespace, field_selector=finished.FINISHED)
    assert (_names(active), _names(left)) == ([], [done.name])
    assert "cannot select executions by phase" not in operator.log_path.read_text()
