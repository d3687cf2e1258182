"""The one list+watch: a resource's objects as one stream of events that outlives the API server.

`follow` lists (page by page, each object handed on as it arrives, so a list of 50,000 finished
executions is never held at once), then watches from the list's resourceVersion. A watch that
ends or breaks is resumed from the last resourceVersion seen; only a 410 (history compacted past
it) lists again, as client-go's reflector does. Failures wait on the shared backoff. The stream
marks each list with LISTING (what was known before may be gone) and LISTED (in sync again):

    async for kind, obj in follow(kube, PODS, ns, what="sandbox pods"):
        if kind == LISTING: fresh = {}
        elif kind == ITEM: fresh[name(obj)] = obj
        elif kind == LISTED: known = fresh
        else: apply(kind, obj)           # ADDED, MODIFIED, DELETED

An exception in the consumer's body ends its loop (the generator never sees it): background
loops are restarted by `supervise`. Many follows side by side may share a `listing` semaphore:
each holds it while it lists, and watches without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator
from typing import Any

from codeexec import backoff
from codeexec.kube.client import ApiError, Kube, Resource

log = logging.getLogger(__name__)

LISTING = "LISTING"
ITEM = "ITEM"
LISTED = "LISTED"
_CHANGES = ("ADDED", "MODIFIED", "DELETED")


async def follow(
    kube: Kube,
    res: Resource,
    namespace: str | None = None,
    *,
    what: str,
    label_selector: str | None = None,
    field_selector: str | None = None,
    page_size: int | None = None,
    listing: asyncio.Semaphore | None = None,
    base: float = 1.0,
    cap: float = 30.0,
) -> AsyncGenerator[tuple[str, dict[str, Any]], None]:
    failures = 0
    rv: str | None = None
    while True:
        try:
            if rv is None:
                yield LISTING, {}
                version: list[str] = []
                # A consumer that stops mid-list closes this generator (contextlib.aclosing),
                # which gives the turn back; a failed list gives it back before the backoff.
                async with listing or contextlib.nullcontext():
                    async for item in _items(
                        kube, res, namespace, label_selector, field_selector, page_size, version
                    ):
                        yield ITEM, item
                    item = {}  # not the last body, kept for as long as the watch runs
                rv = version[0] if version else ""
                yield LISTED, {}
                failures = 0
            async for event in kube.watch(
                res,
                namespace,
                resource_version=rv,
                label_selector=label_selector,
                field_selector=field_selector,
            ):
                failures = 0
                obj = event.get("object") or {}
                rv = (obj.get("metadata") or {}).get("resourceVersion") or rv
                if event.get("type") in _CHANGES:
                    yield event["type"], obj
        except asyncio.CancelledError:
            raise
        except Exception as err:  # the API server away, a broken stream: watch (or list) again
            if isinstance(err, ApiError) and err.gone:
                rv = None  # history compacted past our version: list again, at once
                continue
            failures += 1
            log.warning("watch of %s: %r", what, err)
            await backoff.sleep(failures, base=base, cap=cap)


async def _items(
    kube: Kube,
    res: Resource,
    namespace: str | None,
    label_selector: str | None,
    field_selector: str | None,
    limit: int | None,
    version: list[str],
) -> AsyncGenerator[dict[str, Any], None]:
    """A list's items, page by page; the first resourceVersion given goes into `version`.

    Its own generator so that no page outlives its list: a page bound in `follow`'s frame
    stayed referenced for as long as the watch after it ran (days). With a watch per namespace
    of finished executions, every listed body stayed in memory: 50,000 of them were most of a
    432.6 MB peak (docs/benchmarks.md)."""
    async for page in kube.pages(
        res, namespace, label_selector=label_selector, field_selector=field_selector, limit=limit
    ):
        listed_rv = str((page.get("metadata") or {}).get("resourceVersion") or "")
        if listed_rv and not version:
            version.append(listed_rv)
        for item in page.get("items") or []:
            yield item
