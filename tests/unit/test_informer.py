"""The one list+watch (informer.follow) on the fake API server in virtual time: a broken watch
resumes where it stood, only a 410 lists again, and every list is framed so a consumer can
forget what is gone."""

from __future__ import annotations

import asyncio
from typing import Any

from codeexec import informer
from codeexec.kube.client import CODE_EXECUTIONS, Kube
from tests.fakeapi import vtime
from tests.fakeapi.client import FakeKube
from tests.fakeapi.server import FakeApi

NS = "team-a"


def _api(n: int) -> FakeApi:
    api = FakeApi()
    api.create("namespaces", "", {"metadata": {"name": NS}})
    for i in range(n):
        api.create("codeexecutions", NS, {"metadata": {"name": f"x-{i}"}, "spec": {}})
    return api


class Recorder:
    """What the consumer saw: (kind, name) in order, and what it believes exists."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []
        self.known: set[str] = set()
        self._fresh: set[str] = set()

    async def consume(self, kube: Kube, page_size: int | None = None) -> None:
        async for kind, obj in informer.follow(
            kube, CODE_EXECUTIONS, NS, what="test objects", page_size=page_size
        ):
            name = str((obj.get("metadata") or {}).get("name") or "")
            self.seen.append((kind, name))
            if kind == informer.LISTING:
                self._fresh = set()
            elif kind == informer.ITEM:
                self._fresh.add(name)
            elif kind == informer.LISTED:
                self.known = self._fresh
            elif kind == "DELETED":
                self.known.discard(name)
            else:
                self.known.add(name)

    def count(self, kind: str) -> int:
        return sum(1 for k, _ in self.seen if k == kind)


def _lists(api: FakeApi) -> int:
    return len([c for c in api.calls if c.verb == "list"])


def test_a_broken_watch_resumes_from_its_version_without_listing_again() -> None:
    """A watch the server ends, and one that fails outright, are both resumed from the last
    resourceVersion seen: nothing is listed again, nothing missed, nothing handed on twice.

    Caught: resuming with a fresh list (as the three loops this replaced did) listed twice more;
    resuming from the list's own version instead of the last event's handed x-3 on twice."""

    async def scenario() -> None:
        api = _api(3)
        rec = Recorder()
        task = asyncio.get_running_loop().create_task(rec.consume(FakeKube(api, "op")))
        await vtime.until(lambda: rec.count(informer.LISTED) == 1, what="listed")
        api.create("codeexecutions", NS, {"metadata": {"name": "x-3"}, "spec": {}})
        await vtime.until(lambda: ("ADDED", "x-3") in rec.seen, what="x-3 added")
        api.close_watches()  # an API server restart, a proxy's timeout
        api.fail(lambda c: c.verb == "watch", TimeoutError("watch broke"), times=2)
        api.create("codeexecutions", NS, {"metadata": {"name": "x-4"}, "spec": {}})
        api.delete("codeexecutions", NS, "x-0")
        await vtime.until(lambda: ("DELETED", "x-0") in rec.seen, what="x-0 deleted")
        task.cancel()
        assert _lists(api) == 1
        assert rec.count(informer.LISTING) == 1
        assert rec.seen.count(("ADDED", "x-3")) == 1 and rec.seen.count(("ADDED", "x-4")) == 1
        assert rec.known == {"x-1", "x-2", "x-3", "x-4"}

    vtime.run(scenario)


def test_an_expired_watch_lists_again_and_the_consumer_forgets_what_went() -> None:
    """After a 410 (history compacted past the watch's version) the stream lists again inside
    LISTING..LISTED: an object deleted meanwhile, whose DELETED event is gone for good, drops
    out of what the consumer knows.

    Caught: without the LISTING mark the consumer kept x-1 forever (a pool deleted while no
    watch ran stayed served)."""

    async def scenario() -> None:
        api = _api(3)
        rec = Recorder()
        task = asyncio.get_running_loop().create_task(rec.consume(FakeKube(api, "op")))
        await vtime.until(lambda: rec.count(informer.LISTED) == 1, what="listed")
        # Fail the watches until the history is gone, so the deletion is never streamed.
        broken = api.fail(lambda c: c.verb == "watch", TimeoutError("partitioned"))
        api.close_watches()
        api.delete("codeexecutions", NS, "x-1")
        api.compact()
        api.heal(broken)
        await vtime.until(lambda: rec.count(informer.LISTED) == 2, what="listed again")
        task.cancel()
        assert _lists(api) == 2
        assert ("DELETED", "x-1") not in rec.seen
        assert rec.known == {"x-0", "x-2"}

    vtime.run(scenario)


def test_a_list_that_breaks_half_way_starts_over_and_hands_every_page_on() -> None:
    """Items are handed on page by page (never a whole list held); a list that fails after its
    first page starts over with LISTING, so a consumer never takes half a list for the whole.

    Caught: without the fresh LISTING mark the second attempt's items were added to the first
    attempt's half list (x-0..x-4 counted twice in ITEMs between one LISTING and LISTED)."""

    async def scenario() -> None:
        api = _api(12)
        pages = [0]

        async def second_page_fails_once(call: Any) -> None:
            if call.verb == "list":
                pages[0] += 1
                if pages[0] == 2:
                    raise TimeoutError("the second page was lost")

        api.faults.append(second_page_fails_once)
        rec = Recorder()
        task = asyncio.get_running_loop().create_task(rec.consume(FakeKube(api, "op"), 5))
        await vtime.until(lambda: rec.count(informer.LISTED) == 1, what="listed")
        task.cancel()
        kinds = [k for k, _ in rec.seen]
        assert kinds[:6] == [informer.LISTING] + [informer.ITEM] * 5
        last = len(kinds) - 1 - kinds[::-1].index(informer.LISTING)
        assert kinds[last + 1 :] == [informer.ITEM] * 12 + [informer.LISTED]
        assert rec.count(informer.LISTING) == 2
        assert rec.known == {f"x-{i}" for i in range(12)}

    vtime.run(scenario)
