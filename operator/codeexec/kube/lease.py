"""Lease-based leader election that stays safe when clocks disagree: one actor at a time.

Three rules (client-go's, plus a fence):
- A standby judges expiry only by how long *it* has seen the lease record unchanged, on its own
  monotonic clock; the holder's renewTime is never compared with a local wall clock (a standby
  11 s ahead would depose a healthy leader).
- The leader counts its leadership from the moment it *sent* its last successful renewal and
  holds it RENEW_DEADLINE_SECONDS (< the lease duration) at most, even while a renewal call hangs:
  any standby must see the record unchanged for the full duration after the renewal landed.
- The fence: every claim and every send asks `fence()` first, which refuses the moment renewal is
  overdue (a paused or partitioned leader wakes up deposed and acts no more), and returns the
  term (`identity#leaseTransitions`) the claim writes onto the pod.
A leader that loses the lease calls `on_lost` (the operator exits and restarts as a standby).

What the API server itself can fence: a pod patch cannot be conditioned on a Lease, only on the
pod's own resourceVersion. So a claim sent just before the deadline may still land after a
successor leads; it then wins at most a pod nobody else holds, its sender's fence refuses to
send into it, and the successor resumes it or the sweep frees it: the code still runs once.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from codeexec import clock
from codeexec.kube.client import LEASES, ApiError, Kube

log = logging.getLogger(__name__)

LEASE_SECONDS = 15
# A leader acts at most this long after sending its last successful renewal: 5 s less than
# the lease, for a standby's observation lag and the two processes' monotonic clock drift.
RENEW_DEADLINE_SECONDS = 10.0
RETRY_SECONDS = 2.0


class NotLeading(Exception):
    """This replica does not hold the lease (any more): it must not claim or send."""


# Asked before every claim and send: the leader's term, or NotLeading. Without election (one
# replica by construction, e.g. a developer's run) the term is empty and nothing is refused.
Fence = Callable[[], str]


def unfenced() -> str:
    return ""


def _micro(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _exit() -> None:
    os._exit(1)


class LeaderElector:
    def __init__(
        self,
        kube: Kube,
        namespace: str,
        name: str,
        identity: str,
        *,
        lease_seconds: int = LEASE_SECONDS,
        renew_deadline: float = RENEW_DEADLINE_SECONDS,
        retry: float = RETRY_SECONDS,
        on_lost: Callable[[], None] = _exit,
    ) -> None:
        assert renew_deadline < lease_seconds
        self.kube, self.namespace, self.name, self.identity = kube, namespace, name, identity
        self.lease_seconds, self.renew_deadline, self.retry = lease_seconds, renew_deadline, retry
        self.on_lost = on_lost
        self.term: str | None = None
        self._valid_until = float("-inf")
        self._observed: tuple[Any, ...] | None = None
        self._observed_at = 0.0

    # --- the fence -------------------------------------------------------------------------------

    def leading(self) -> bool:
        return self.term is not None and clock.monotonic() < self._valid_until

    def fence(self) -> str:
        """The current term, or NotLeading once the renewal is overdue."""
        if self.term is None or clock.monotonic() >= self._valid_until:
            raise NotLeading(f"{self.identity} does not hold the lease {self.name}")
        return self.term

    # --- one round -------------------------------------------------------------------------------

    def _observe(self, spec: dict[str, Any]) -> float:
        """Seconds this replica has seen the record unchanged (its own monotonic clock)."""
        record = (
            spec.get("holderIdentity"),
            spec.get("renewTime"),
            spec.get("leaseTransitions"),
            spec.get("acquireTime"),
        )
        now = clock.monotonic()
        if record != self._observed:
            self._observed, self._observed_at = record, now
        return now - self._observed_at

    async def _try(self) -> bool:
        sent = clock.monotonic()
        wall = _micro(clock.time())
        try:
            lease = await self.kube.get(LEASES, self.name, self.namespace)
        except ApiError as err:
            if not err.not_found:
                raise
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": {
                    "holderIdentity": self.identity,
                    "leaseDurationSeconds": self.lease_seconds,
                    "acquireTime": wall,
                    "renewTime": wall,
                    "leaseTransitions": 0,
                },
            }
            try:
                created = await self.kube.create(LEASES, body, self.namespace)
            except ApiError as err2:
                if err2.conflict:
                    return False
                raise
            self._won(created, sent)
            return True
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        unchanged_for = self._observe(spec)
        duration = int(spec.get("leaseDurationSeconds") or self.lease_seconds)
        transitions_now = int(spec.get("leaseTransitions") or 0)
        # Our own term still: the same holder *and* no transition since we took it (another
        # process with our identity, a restarted container of this pod, took it meanwhile).
        renewing = self.term == f"{holder}#{transitions_now}" and holder == self.identity
        if not renewing and holder and unchanged_for < duration:
            return False  # someone holds it (or a predecessor of ours may still act)
        transitions = transitions_now + (0 if renewing else 1)
        new: dict[str, Any] = {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": self.lease_seconds,
            "renewTime": wall,
            "leaseTransitions": transitions,
        }
        if not renewing:
            new["acquireTime"] = wall
        patch = {"metadata": {"resourceVersion": lease["metadata"]["resourceVersion"]}, "spec": new}
        try:
            written = await self.kube.patch(LEASES, self.name, patch, self.namespace)
        except ApiError as err:
            if err.conflict:
                return False
            raise
        self._won(written, sent)
        return True

    def _won(self, lease: dict[str, Any], sent: float) -> None:
        spec = lease.get("spec") or {}
        self._observe(spec)
        self.term = f"{self.identity}#{int(spec.get('leaseTransitions') or 0)}"
        self._valid_until = sent + self.renew_deadline

    # --- the loops -------------------------------------------------------------------------------

    async def acquire(self) -> None:
        log.info("waiting to lead as %s (lease %s/%s)", self.identity, self.namespace, self.name)
        while True:
            try:
                if await asyncio.wait_for(self._try(), self.renew_deadline):
                    break
            except Exception as err:  # the API server may be away; keep asking
                log.warning("lease %s: %r", self.name, err)
            await asyncio.sleep(self.retry)
        log.info("leading as %s (term %s)", self.identity, self.term)

    async def keep(self) -> None:
        """Renews every `retry` seconds; gives up the moment the renew deadline passes."""
        while True:
            await asyncio.sleep(self.retry)
            left = self._valid_until - clock.monotonic()
            if left > 0:
                try:
                    if await asyncio.wait_for(self._try(), left):
                        continue
                    log.error("lost the lease %s to another replica", self.name)
                except TimeoutError:
                    log.error("lease %s: renewal still pending at its deadline", self.name)
                except Exception as err:  # renewal errors count against the deadline
                    log.warning("lease renewal failed: %r", err)
                    if self._valid_until > clock.monotonic():
                        continue
            self.term = None
            log.error("no longer leading (lease %s); stopping", self.name)
            self.on_lost()
            return

    async def release(self) -> None:
        """Hands the lease back on a clean shutdown, so a standby need not wait for it to expire.

        Conditioned on the resourceVersion read: a lease someone else took meanwhile is theirs.
        """
        leading, self.term = self.leading(), None
        if not leading:
            return
        try:
            lease = await self.kube.get(LEASES, self.name, self.namespace)
            if (lease.get("spec") or {}).get("holderIdentity") != self.identity:
                return
            patch = {
                "metadata": {"resourceVersion": lease["metadata"]["resourceVersion"]},
                "spec": {
                    "holderIdentity": "",
                    "leaseDurationSeconds": 1,
                    "renewTime": _micro(clock.time()),
                },
            }
            await self.kube.patch(LEASES, self.name, patch, self.namespace)
            log.info("released the lease")
        except (ApiError, OSError, TimeoutError) as err:
            log.warning("could not release the lease: %s", err)
