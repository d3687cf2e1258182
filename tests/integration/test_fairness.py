"""Fair sharing on the real cluster: namespaces take turns for a pool's pods, and a pool's
per-namespace cap holds (evidence: a watch of the pool's pods, independent of the operator)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from e2e.fixtures import Cluster, wait_for

from codeexec import fairness, podspec
from codeexec.client import Client
from codeexec.kube.client import PODS

from .conftest import SANDBOX_NS, pool_manifest, wait_pool_full

pytestmark = pytest.mark.cluster

POOL, SIZE = "fair", 2
CODE = "import time\n\ndef main(i):\n    time.sleep(0.5)\n    return i\n"


@dataclass
class Claims:
    """Claimed pods of the pool per namespace, after every watch event; claims in order."""

    holding: dict[str, set[str]] = field(default_factory=dict)
    peaks: dict[str, int] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)
    events: int = 0
    _seen: set[str] = field(default_factory=set)

    def see(self, type_: str, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        name = meta["name"]
        for pods in self.holding.values():
            pods.discard(name)
        ns = fairness.namespace_of((meta.get("annotations") or {}).get("codeexec.io/execution"))
        claimed = (meta.get("labels") or {}).get(podspec.CLAIMED_BY_LABEL)
        if type_ != "DELETED" and ns and claimed and not meta.get("deletionTimestamp"):
            self.holding.setdefault(ns, set()).add(name)
            if name not in self._seen:
                self._seen.add(name)
                self.order.append(ns)
        self.events += 1
        for key, pods in self.holding.items():
            self.peaks[key] = max(self.peaks.get(key, 0), len(pods))


@contextlib.asynccontextmanager
async def watching(cx: Client) -> AsyncIterator[Claims]:
    claims = Claims()
    selector = f"{podspec.POOL_LABEL}={POOL}"

    async def run() -> None:
        listing = await cx.kube.list(PODS, SANDBOX_NS, label_selector=selector)
        for pod in listing.get("items", []):
            claims.see("ADDED", pod)
        rv = listing["metadata"]["resourceVersion"]
        while True:
            async for ev in cx.kube.watch(
                PODS, SANDBOX_NS, resource_version=rv, label_selector=selector
            ):
                rv = ev["object"]["metadata"].get("resourceVersion", rv)
                if ev["type"] != "BOOKMARK":
                    claims.see(ev["type"], ev["object"])

    task = asyncio.get_running_loop().create_task(run())
    await asyncio.sleep(0.5)  # the listing is in before anything is submitted
    try:
        yield claims
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


async def _submit(cx: Client, namespace: str, count: int) -> list[str]:
    other = Client(cx.kube, namespace)
    made = [await other.submit(CODE, arguments={"i": i}, pool=POOL) for i in range(count)]
    return [m.name for m in made]


async def _ended(cx: Client, namespace: str, names: list[str], ends: list[str]) -> None:
    other = Client(cx.kube, namespace)

    async def one(name: str) -> None:
        done = await other.wait(name, timeout=240)
        assert done.status.reason == "Succeeded", done.status
        ends.append(namespace)

    await asyncio.gather(*(one(n) for n in names))


async def test_namespaces_take_turns_and_the_cap_holds(
    cx: Client, cluster: Cluster, namespace: str
) -> None:
    """Pool of 2. A submits 12, then B submits 2: B's two get pods within the next four claims
    and end before A's 7th (at most 2 + 1 of A's claimed before B is in line, one between
    B's two, and 2 overtaking B's second while running). Then maxRunningPerNamespace 1: A
    submits 4 and B 2, and A never holds more than one pod."""
    b_ns = f"{namespace}-b"
    cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": b_ns}})
    wait_for(
        lambda: cluster.kubectl("-n", b_ns, "get", "sa", "default", check=False).returncode == 0,
        timeout=30,
        what=f"ServiceAccount default in {b_ns}",
    )
    # No preload: pods warm in about a second, so the pool refills while the line is long.
    cluster.apply(pool_manifest(POOL, "python", size=SIZE, preload=[], queueTimeoutSeconds=300))
    try:
        wait_pool_full(cluster, POOL, SIZE)
        ends: list[str] = []
        async with watching(cx) as claims:
            a = await _submit(cx, namespace, 12)
            b = await _submit(cx, b_ns, 2)
            await asyncio.gather(_ended(cx, namespace, a, ends), _ended(cx, b_ns, b, ends))
        order = "".join("b" if ns == b_ns else "a" for ns in claims.order)
        a_before = ends[: max(i for i, ns in enumerate(ends) if ns == b_ns)].count(namespace)
        print(f"claims {order}; A's ended before B's second: {a_before}")
        assert len(order) == 14, order
        first_b = order.index("b")
        assert order[first_b : order.rindex("b") + 1] in ("b", "bb", "bab"), order
        assert first_b <= SIZE + 2, order
        assert a_before <= 2 * SIZE + 2, ends

        cap = {"fairness": {"maxRunningPerNamespace": 1}}
        cluster.apply(
            pool_manifest(POOL, "python", size=SIZE, preload=[], queueTimeoutSeconds=300, **cap)
        )
        wait_pool_full(cluster, POOL, SIZE)
        async with watching(cx) as claims:
            a = await _submit(cx, namespace, 4)
            b = await _submit(cx, b_ns, 2)
            await asyncio.gather(_ended(cx, namespace, a, []), _ended(cx, b_ns, b, []))
        print(f"capped: peaks {claims.peaks}, {claims.events} pod events")
        assert claims.events > 10, "the watch recorded nothing"
        assert claims.peaks[namespace] == 1, claims.peaks
        assert claims.peaks[b_ns] >= 1, claims.peaks
    finally:
        cluster.kubectl("delete", "sandboxpool", POOL, "--wait=false")
        cluster.kubectl("delete", "namespace", b_ns, "--wait=false", check=False)
