"""PoolManager.resolve: a pool's tenants are checked before any claim, with a clear reason."""

from __future__ import annotations

from typing import Any, cast

from codeexec.api.models import SandboxPoolSpec
from codeexec.kube.client import ApiError, Kube, Resource
from codeexec.podcache import PodCache
from codeexec.pool import Pool, PoolManager


class FakeKube:
    def __init__(self, labels: dict[str, dict[str, str]]) -> None:
        self.labels = labels
        self.reads: list[str] = []

    async def get(self, res: Resource, name: str, namespace: str | None = None) -> dict[str, Any]:
        self.reads.append(name)
        if name not in self.labels:
            raise ApiError(404, {"reason": "NotFound", "message": "gone"})
        return {"metadata": {"name": name, "labels": self.labels[name]}}


def manager(kube: FakeKube, **pools: dict[str, Any]) -> PoolManager:
    mgr = PoolManager(cast(Kube, kube), PodCache(cast(Kube, kube), "sbx"), "sbx")
    for name, spec in pools.items():
        mgr.pools[name] = Pool(
            name, SandboxPoolSpec.model_validate({"language": "python", "image": "i", **spec})
        )
    return mgr


NET = {"allowNetwork": True, "tenants": {"namespaceSelector": {"matchLabels": {"net": "yes"}}}}


async def test_a_namespace_the_pool_does_not_admit_is_refused_naming_the_pool() -> None:
    """caught: resolve without the tenants check handed the pool to every namespace."""
    kube = FakeKube({"team-b": {}})
    found = await manager(kube, net=NET).resolve("python", "net", "team-b")
    assert isinstance(found, str)
    assert "'net'" in found and "'team-b'" in found and "tenants" in found


async def test_labels_are_read_at_the_decision_so_a_removed_label_revokes_access() -> None:
    kube = FakeKube({"team-a": {"net": "yes"}})
    mgr = manager(kube, net=NET)
    assert isinstance(await mgr.resolve("python", "net", "team-a"), Pool)
    kube.labels["team-a"] = {}
    assert isinstance(await mgr.resolve("python", "net", "team-a"), str)
    assert kube.reads == ["team-a", "team-a"]


async def test_open_and_listed_pools_need_no_read() -> None:
    kube = FakeKube({})
    listed = {"tenants": {"namespaces": ["team-a"], "namespaceSelector": {}}}
    mgr = manager(kube, open={}, listed=listed)
    assert isinstance(await mgr.resolve("python", "open", "anyone"), Pool)
    assert isinstance(await mgr.resolve("python", "listed", "team-a"), Pool)
    assert kube.reads == []


async def test_a_vanished_namespace_is_admitted_by_no_selector() -> None:
    found = await manager(FakeKube({}), net=NET).resolve("python", "net", "gone")
    assert isinstance(found, str)


async def test_without_spec_pool_the_first_default_that_admits_the_namespace_wins() -> None:
    kube = FakeKube({"team-b": {}})
    mgr = manager(kube, a={**NET, "default": True}, b={"default": True})
    found = await mgr.resolve("python", None, "team-b")
    assert isinstance(found, Pool) and found.name == "b"
    only_net = manager(kube, a={**NET, "default": True})
    refused = await only_net.resolve("python", None, "team-b")
    assert isinstance(refused, str) and "'a'" in refused
