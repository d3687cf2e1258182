"""Per-pool egress NetworkPolicies, kept in step with the pools and the cluster's own addresses.

A network-enabled pool gets one policy (podspec.egress_policy). Its internet rule excepts the
cluster's addresses, and those move: nodes join and leave, the API server's endpoint can change.
So the addresses are read again every REFRESH_SECONDS and the policies rewritten when they differ.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from typing import Any

from codeexec import backoff, podspec
from codeexec.api.models import SandboxPoolSpec
from codeexec.kube.client import ENDPOINT_SLICES, NETWORK_POLICIES, NODES, ApiError, Kube

log = logging.getLogger(__name__)

# A node that joins is exposed to network pools for at most this long (it is also inside RFC
# 1918 on most clusters, so already blocked there); one list of nodes a minute is cheap.
REFRESH_SECONDS = 60.0
NODE_ADDRESS_TYPES = ("InternalIP", "ExternalIP")


class EgressPolicies:
    def __init__(self, kube: Kube, namespace: str, cluster_cidrs: tuple[str, ...] = ()) -> None:
        self.kube = kube
        self.namespace = namespace
        self.cluster_cidrs = cluster_cidrs
        self.blocked: list[str] = podspec.blocked_ranges(cluster_cidrs)
        # What each pool's policy was last written as (None: no policy).
        self.applied: dict[str, dict[str, Any] | None] = {}
        self._lock = asyncio.Lock()
        self._retry = asyncio.Event()  # a failed sync outside the loop: the loop tries at once

    async def cluster_addresses(self) -> list[str]:
        """Node addresses and the API server's endpoints (its Service IP is DNAT'd to them)."""
        found: list[str] = []
        nodes = await self.kube.list(NODES)
        for node in nodes.get("items", []):
            for addr in node.get("status", {}).get("addresses") or []:
                if addr.get("type") in NODE_ADDRESS_TYPES and addr.get("address"):
                    found.append(addr["address"])
        try:
            api = await self.kube.get(ENDPOINT_SLICES, "kubernetes", "default")
        except ApiError as err:
            if not err.not_found:
                raise
            api = {}
        for endpoint in api.get("endpoints") or []:
            found.extend(endpoint.get("addresses") or [])
        return found

    async def refresh(self) -> bool:
        """Re-reads the cluster's addresses; True when the blocked ranges changed."""
        blocked = podspec.blocked_ranges([*self.cluster_cidrs, *await self.cluster_addresses()])
        changed = blocked != self.blocked
        self.blocked = blocked
        return changed

    async def sync(self, pools: Mapping[str, SandboxPoolSpec]) -> None:
        """Each served pool gets the policy its spec asks for; pools gone or closed lose theirs."""
        async with self._lock:
            for name, spec in pools.items():
                want = (
                    podspec.egress_policy(name, spec, self.namespace, self.blocked)
                    if spec.allow_network
                    else None
                )
                if name in self.applied and self.applied[name] == want:
                    continue
                await self._write(name, want)
                self.applied[name] = want
            for name in [n for n in self.applied if n not in pools]:
                await self._write(name, None)
                del self.applied[name]

    async def _write(self, pool: str, policy: dict[str, Any] | None) -> None:
        name = podspec.EGRESS_POLICY_PREFIX + pool
        if policy is None:
            await self.kube.delete(NETWORK_POLICIES, name, self.namespace)
            return
        try:
            await self.kube.create(NETWORK_POLICIES, policy, self.namespace)
        except ApiError as err:
            if not err.conflict:
                raise
            # A merge patch would keep `except` entries and rules that are gone: replace.
            await self.kube.patch(
                NETWORK_POLICIES,
                name,
                [{"op": "replace", "path": "/spec", "value": policy["spec"]}],
                self.namespace,
                patch_type="json",
            )
        log.info("egress policy %s written (%d rules)", name, len(policy["spec"]["egress"]))

    async def run(self, pools: Callable[[], Mapping[str, SandboxPoolSpec]]) -> None:
        """Keeps the policies in step with the cluster's addresses and the served pools."""
        failures = 0
        while True:
            try:
                if await self.refresh():
                    self.applied.clear()
                await self.sync(pools())
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as err:  # the policies must outlive any hiccup of the API server
                failures += 1
                log.warning("egress policies (%d): %r", failures, err)
                self.applied.clear()
                await backoff.sleep(failures, base=1.0, cap=30.0)
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._retry.wait(), REFRESH_SECONDS)
            self._retry.clear()

    async def pools_changed(self, pools: Mapping[str, SandboxPoolSpec]) -> None:
        """A pool changed: its policy is written now. Were that refused, the loop above tries
        again at once and then with its backoff, not a minute later; until then the pool's pods
        have only the deny-all policy (closed, never open)."""
        try:
            await self.sync(pools)
        except ApiError as err:
            log.warning("egress policies after a pool changed: %s", err)
            self.applied.clear()
            self._retry.set()
