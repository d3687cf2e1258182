"""Finished executions out of the operator's memory: the field selectors that split the
CodeExecution watch in two, and the cheap list+watch of finished ones behind the TTL janitor.

The CRD makes `.status.phase` selectable (crds/, `selectableFields`). Kopf's watch asks only for
executions not yet finished; a finished one costs Kopf nothing (no per-object worker, no
memory). Only the operator writes the status subresource (tenants' `edit` has no
`codeexecutions/status`), so a tenant cannot move an execution from one watch to the other.

Finished ones are listed page by page and watched here, and each body is handed on and dropped:
the janitor keeps a timer per execution with a TTL, nothing else is kept. API servers before
Kubernetes 1.31 have no selectable fields for CRDs (a 400): then Kopf watches everything, as
before, and this watch does not run.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import logging
from collections.abc import Callable
from typing import Any

from codeexec import backoff, informer
from codeexec.kube.client import CODE_EXECUTIONS, ApiError, Kube

log = logging.getLogger(__name__)

# Kopf's watch: what still needs the operator. `status.phase` is an enum (Pending, Running,
# Succeeded, Failed) and absent until the first status write; an absent field selects as "".
ACTIVE = "status.phase!=Succeeded,status.phase!=Failed"
# Its exact complement (field selectors have no set terms): every object is in one of the two.
FINISHED = "status.phase!=,status.phase!=Pending,status.phase!=Running"
# Bodies decoded at once while listing: 500 finished ones are ~2.5 MB of JSON, ~10 MB as Python
# objects, freed before the next page (a whole 50,000 listing at once would be ~1 GB).
PAGE = 500
# Namespaces listed at once; the watches still run side by side. Measured with 100 namespaces
# of 100 finished each, in one process: RSS 88.2 MB two at a time against 96.4 MB all at once
# (84.9 MB with none), the pages in flight being the difference.
LISTS_AT_ONCE = 2
# Transient answers to the start-up probe before it settles for watching everything (with the
# shared backoff capped at 5 s: about a minute and a half).
PROBE_ATTEMPTS = 20

Handle = Callable[[str | None, dict[str, Any]], None]


def _globs(namespaces: tuple[str, ...]) -> bool:
    return any(ch in "".join(namespaces) for ch in "*?[!")


def where(namespaces: tuple[str, ...]) -> list[str | None]:
    """Where to list and watch: each named namespace (RoleBindings there only), else the
    whole cluster (all namespaces, or globs: both need a ClusterRoleBinding)."""
    if namespaces and not _globs(namespaces):
        return list(namespaces)
    return [None]


def serves(namespaces: tuple[str, ...]) -> Callable[[str], bool]:
    if not _globs(namespaces):
        return lambda ns: True
    return lambda ns: any(fnmatch.fnmatchcase(ns, p) for p in namespaces)


async def selectable(kube: Kube, namespaces: tuple[str, ...]) -> bool:
    """Whether the API server selects executions by `status.phase` (one LIST of one item).
    A refusal (400 "field label not supported": before 1.31, or an old CRD; any other 4xx)
    answers no: watching everything is always correct, only dearer. A transient failure is
    asked again: right after the CRD is applied the API server answers 429 "storage is
    (re)initializing" for a moment (seen on the test bed), which is no answer at all."""
    attempt = 0
    while True:
        try:
            await kube.request(
                "GET",
                CODE_EXECUTIONS.path(where(namespaces)[0]),
                params={"fieldSelector": ACTIVE, "limit": 1},
                verb="list",
            )
            return True
        except asyncio.CancelledError:
            raise
        except Exception as err:
            transient = not isinstance(err, ApiError) or err.status == 429 or err.status >= 500
            if transient and attempt < PROBE_ATTEMPTS:
                attempt += 1
                log.info("asking whether executions select by phase again: %r", err)
                await backoff.sleep(attempt, base=0.5, cap=5.0)
                continue
            log.warning(
                "the API server cannot select executions by phase (%r): finished executions "
                "stay in the operator's watch and memory; apply the current CRDs "
                "(Kubernetes 1.31+)",
                err,
            )
            return False


class FinishedWatch:
    """List+watch of finished executions in every served namespace; `handle(type, body)` gets
    each (type None while listing) and keeps what it needs."""

    def __init__(self, kube: Kube, namespaces: tuple[str, ...], handle: Handle) -> None:
        self.kube = kube
        self.where = where(namespaces)
        self.serves = serves(namespaces)
        self.handle = handle
        self.synced = asyncio.Event()
        self._listed: set[str | None] = set()
        self._turn = asyncio.Semaphore(LISTS_AT_ONCE)

    async def run(self) -> None:
        await asyncio.gather(*(self._follow(ns) for ns in self.where))

    async def _follow(self, namespace: str | None) -> None:
        """One namespace (or all): listed page by page, each item handed on and dropped."""
        stream = informer.follow(
            self.kube,
            CODE_EXECUTIONS,
            namespace,
            what=f"finished executions in {namespace or '*'}",
            field_selector=FINISHED,
            page_size=PAGE,
            listing=self._turn,
        )
        # Closed at once if the handler raises mid-list: the listing turn goes back with it.
        async with contextlib.aclosing(stream):
            async for kind, obj in stream:
                if kind == informer.ITEM:
                    self._hand(None, obj)
                elif kind == informer.LISTED:
                    self._listed.add(namespace)
                    if len(self._listed) == len(self.where):
                        self.synced.set()
                elif kind != informer.LISTING:  # after a 410 the janitor takes each one once
                    self._hand(kind, obj)

    def _hand(self, type_: str | None, body: dict[str, Any]) -> None:
        if self.serves(str((body.get("metadata") or {}).get("namespace") or "")):
            self.handle(type_, body)
