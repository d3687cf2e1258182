"""Lease-based leader election, so that of several operator replicas exactly one acts.

Kopf's peering only pauses peers by priority; it does not promise a single actor. A replica
that cannot renew its lease in time exits: the Deployment restarts it as a follower, and the
claims it may have made are safe anyway (resourceVersion-conditioned, recorded in statuses).
"""

from __future__ import annotations

import asyncio
import logging
import os
from datetime import UTC, datetime, timedelta

from codeexec.kube.client import LEASES, ApiError, Kube

log = logging.getLogger(__name__)

LEASE_SECONDS = 15
RENEW_EVERY = 5.0


def _micro(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.strptime(value.replace("Z", "+0000"), "%Y-%m-%dT%H:%M:%S.%f%z")


class LeaderElector:
    def __init__(self, kube: Kube, namespace: str, name: str, identity: str) -> None:
        self.kube, self.namespace, self.name, self.identity = kube, namespace, name, identity

    async def _try(self) -> bool:
        now = datetime.now(UTC)
        spec = {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": LEASE_SECONDS,
            "renewTime": _micro(now),
        }
        try:
            lease = await self.kube.get(LEASES, self.name, self.namespace)
        except ApiError as err:
            if not err.not_found:
                raise
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": {**spec, "acquireTime": _micro(now), "leaseTransitions": 0},
            }
            try:
                await self.kube.create(LEASES, body, self.namespace)
                return True
            except ApiError as err2:
                if err2.conflict:
                    return False
                raise
        current = lease.get("spec", {})
        holder = current.get("holderIdentity")
        renewed = _parse(current.get("renewTime"))
        duration = int(current.get("leaseDurationSeconds") or LEASE_SECONDS)
        expired = renewed is None or renewed + timedelta(seconds=duration) < now
        if holder not in (self.identity, None, "") and not expired:
            return False
        if holder != self.identity:
            spec["acquireTime"] = _micro(now)
            spec["leaseTransitions"] = int(current.get("leaseTransitions") or 0) + 1
        patch = {
            "metadata": {"resourceVersion": lease["metadata"]["resourceVersion"]},
            "spec": spec,
        }
        try:
            await self.kube.patch(LEASES, self.name, patch, self.namespace)
            return True
        except ApiError as err:
            if err.conflict:
                return False
            raise

    async def acquire(self) -> None:
        log.info("waiting to lead as %s (lease %s/%s)", self.identity, self.namespace, self.name)
        while True:
            if await self._try():
                break
            # Polling is the protocol: the holder renews on its own clock, nobody notifies us.
            await asyncio.sleep(RENEW_EVERY / 2)
        log.info("leading as %s", self.identity)

    async def release(self) -> None:
        """Hands the lease back on a clean shutdown, so a standby need not wait for it to expire.

        Conditioned on the resourceVersion read: a lease someone else took meanwhile is theirs.
        """
        try:
            lease = await self.kube.get(LEASES, self.name, self.namespace)
            if (lease.get("spec") or {}).get("holderIdentity") != self.identity:
                return
            now = _micro(datetime.now(UTC))
            patch = {
                "metadata": {"resourceVersion": lease["metadata"]["resourceVersion"]},
                "spec": {"holderIdentity": "", "leaseDurationSeconds": 1, "renewTime": now},
            }
            await self.kube.patch(LEASES, self.name, patch, self.namespace)
            log.info("released the lease")
        except ApiError as err:
            log.warning("could not release the lease: %s", err)

    async def keep(self) -> None:
        last_ok = asyncio.get_running_loop().time()
        while True:
            await asyncio.sleep(RENEW_EVERY)
            try:
                if await self._try():
                    last_ok = asyncio.get_running_loop().time()
                    continue
                log.error("lost the lease to another replica; exiting")
            except Exception as err:  # renewal errors count against the lease
                log.warning("lease renewal failed: %r", err)
                if asyncio.get_running_loop().time() - last_ok < LEASE_SECONDS - RENEW_EVERY:
                    continue
                log.error("could not renew the lease in time; exiting")
            os._exit(1)
