"""Finished executions cost the operator nothing: they leave its watch without being mistaken
for deletions, a restart never touches them, and what a deletion must clean up is still
cleaned up (fake API server, virtual time)."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

from codeexec import controller, finished
from codeexec.kube.client import ApiError
from tests.fakeapi import vtime
from tests.fakeapi.client import FakeKube
from tests.fakeapi.operator import TENANT, Replica
from tests.fakeapi.server import FakeApi
from tests.fakeapi.world import TERMINAL, World


def _spy_forget(rep: Replica) -> list[str]:
    """The uids whose artifacts the replica deletes (artifacts/stores.forget)."""
    assert rep.executions is not None
    forgotten: list[str] = []

    async def forget(body: dict[str, Any], pools: Any) -> None:
        forgotten.append(body["metadata"]["uid"])

    rep.executions.road.stores.forget = forget  # type: ignore[method-assign]
    return forgotten


def _spy_observed(rep: Replica) -> list[str | None]:
    """The phases of the bodies Kopf's watch hands to the operator."""
    seen: list[str | None] = []
    handle = rep._execution_event

    def observe(type_: str | None, body: dict[str, Any]) -> None:
        seen.append((body.get("status") or {}).get("phase"))
        handle(type_, body)

    rep._execution_event = observe  # type: ignore[method-assign]
    return seen


def _reads(w: World, client: str) -> int:
    return sum(
        1
        for c in w.api.calls
        if c.client == client and c.plural == "codeexecutions" and c.verb == "get"
    )


def test_finishing_is_not_a_deletion() -> None:
    """The terminal status takes an execution out of the operator's watch: the API server sends
    DELETED for it. That must delete no artifact, ask the API server nothing, and leave no
    claimed pod behind.

    Caught: handling that DELETED as a deletion (dropping the `selective` branch of
    Executions.observe) deleted the artifacts of all 5."""

    async def scenario() -> None:
        w = World(pool_size=2)
        a = Replica(w.api, "op-a")
        a.build()
        forgotten = _spy_forget(a)
        await a.start()
        assert a.executions is not None and a.executions.selective
        names = [w.submit(i)["metadata"]["name"] for i in range(5)]
        await w.wait_finished(*names)
        await vtime.settle(controller.LEAVING_SECONDS + 5)
        assert forgotten == []
        assert _reads(w, "op-a") == 0, "finishing cost a GET"
        assert w.claimed_live() == []
        assert a.executions.tasks == {}
        assert [w.phase(n) for n in names] == ["Succeeded"] * 5

    vtime.run(scenario)


def test_deleting_a_finished_execution_still_deletes_its_artifacts() -> None:
    """A finished execution is no longer in Kopf's watch; its deletion still reaches the
    operator (the watch of finished ones) and its S3 objects go with it, once.

    Caught: ignoring DELETED in Executions.observe_finished left them."""

    async def scenario() -> None:
        w = World(pool_size=1)
        a = Replica(w.api, "op-a")
        a.build()
        forgotten = _spy_forget(a)
        await a.start()
        ex = w.submit(1)
        name, uid = ex["metadata"]["name"], ex["metadata"]["uid"]
        await w.wait_finished(name)
        await vtime.settle(1.0)
        w.api.delete("codeexecutions", TENANT, name)
        await vtime.until(lambda: forgotten == [uid], what="its artifacts deleted")
        await vtime.settle(controller.LEAVING_SECONDS + 5)
        assert forgotten == [uid]

    vtime.run(scenario)


def test_deleting_a_running_execution_stops_it_and_frees_its_pod() -> None:
    """A deletion of a running execution looks the same as finishing on the selective watch;
    one GET tells them apart: its road is stopped, its pod freed, its artifacts deleted, and
    nothing is written to it.

    Caught: returning on every DELETED of the selective watch kept the pod claimed until the
    code ended (30 s)."""

    async def scenario() -> None:
        w = World(pool_size=1)
        a = Replica(w.api, "op-a")
        a.build()
        forgotten = _spy_forget(a)
        await a.start()
        await vtime.until(lambda: w.warm_ready() == 1)
        ex = w.submit(1, sleep=30.0)
        name, uid = ex["metadata"]["name"], ex["metadata"]["uid"]
        await vtime.until(lambda: len(w.kubelet.started_for(uid)) == 1, what="the code started")
        w.api.delete("codeexecutions", TENANT, name)
        await vtime.until(
            lambda: not w.claimed_live(uid), limit=controller.LEAVING_SECONDS + 5, what="pod freed"
        )
        assert forgotten == [uid]
        assert a.executions is not None and uid not in a.executions.tasks
        assert len(w.kubelet.started_for(uid)) == 1

    vtime.run(scenario)


def test_a_restart_touches_no_finished_execution_and_their_ttls_still_run() -> None:
    """A new operator with finished executions in the cluster: Kopf's watch hands it none of
    them, it writes to none of them, and the TTL janitor (fed by the watch of finished ones)
    still deletes those with a TTL when it is due, and only those.

    Caught: without the field selector on the fake Kopf feed, the 12 finished ones reached
    Executions.observe."""

    async def scenario() -> None:
        w = World(pool_size=2)
        a = Replica(w.api, "op-a")
        await a.start()
        ttl = [w.submit(i, ttlSecondsAfterFinished=600)["metadata"]["name"] for i in range(8)]
        keep = [w.submit(i)["metadata"]["name"] for i in range(4)]
        await w.wait_finished(*ttl, *keep)
        await a.crash()
        before = {n: w.execution(n)["metadata"]["resourceVersion"] for n in keep}  # type: ignore[index]
        b = Replica(w.api, "op-b")
        b.build()
        observed = _spy_observed(b)
        await b.start()
        pending = w.submit(99)["metadata"]["name"]
        await w.wait_finished(pending)
        await vtime.settle(5.0)
        assert not [p for p in observed if p in TERMINAL]
        writes = [
            c
            for c in w.api.calls
            if c.client == "op-b"
            and c.plural == "codeexecutions"
            and c.verb in ("patch", "delete")
            and c.name != pending
        ]
        assert writes == []
        await vtime.settle(700.0)
        assert [w.execution(n) for n in ttl] == [None] * 8
        after = {n: w.execution(n)["metadata"]["resourceVersion"] for n in keep}  # type: ignore[index]
        assert after == before

    vtime.run(scenario)


def test_an_api_server_without_selectable_fields_is_served_as_before() -> None:
    """Kubernetes 1.29-1.30 cannot select executions by phase (the probe gets a 400): the
    operator watches every execution as before, and a deletion is acted on at once.

    Caught: skipping the probe (always selective) made the watch fail with 400 and nothing ran."""

    async def scenario() -> None:
        w = World(pool_size=1)
        w.api.selectable = {}
        a = Replica(w.api, "op-a")
        a.build()
        forgotten = _spy_forget(a)
        await a.start()
        assert a.executions is not None and not a.executions.selective
        done = w.submit(1)["metadata"]["name"]
        await w.wait_finished(done)
        await vtime.settle(2.0)
        assert forgotten == []
        ex = w.submit(2, sleep=30.0)
        name, uid = ex["metadata"]["name"], ex["metadata"]["uid"]
        await vtime.until(lambda: len(w.kubelet.started_for(uid)) == 1, what="the code started")
        w.api.delete("codeexecutions", TENANT, name)
        await vtime.until(lambda: not w.claimed_live(uid), limit=2.0, what="pod freed at once")
        assert forgotten == [uid]

    vtime.run(scenario)


def test_the_finished_watch_hands_on_each_one_once_page_by_page_and_after_a_410() -> None:
    """1,200 finished executions are listed 500 at a time (no page of bodies kept), each handed
    to the janitor once; an expired watch (410) lists again, and a deletion after it still
    arrives. Only the served namespaces' are handed on (globs).

    Caught: stopping after the first page left 700 without their TTL timer."""

    async def scenario() -> None:
        api = FakeApi()
        for ns in ("team-a", "other"):
            api.create("namespaces", "", {"metadata": {"name": ns}})
        for i in range(1_200):
            ns = "team-a" if i % 4 else "other"
            api.create("codeexecutions", ns, {"metadata": {"name": f"x-{i}"}, "spec": {}})
            api.patch(
                "codeexecutions", ns, f"x-{i}", {"status": {"phase": "Failed"}}, "merge", "status"
            )
        api.create("codeexecutions", "team-a", {"metadata": {"name": "live"}, "spec": {}})
        seen: list[tuple[str | None, str]] = []
        watch = finished.FinishedWatch(
            FakeKube(api, "op"), ("team-*",), lambda t, b: seen.append((t, b["metadata"]["name"]))
        )
        task = asyncio.get_running_loop().create_task(watch.run())
        await vtime.until(watch.synced.is_set, what="listed")
        lists = [c for c in api.calls if c.verb == "list"]
        assert len(lists) == 3  # 1,201 objects in pages of 500
        assert sorted(n for _, n in seen) == sorted(f"x-{i}" for i in range(1_200) if i % 4)
        api.close_watches()
        api.create("namespaces", "", {"metadata": {"name": "later"}})  # history moves on
        api.compact()  # the watch from before is 410 Gone now
        relisted = lambda: len([c for c in api.calls if c.verb == "list"]) == 6  # noqa: E731
        await vtime.until(relisted, what="listed again after the 410")
        api.delete("codeexecutions", "team-a", "x-1")
        await vtime.until(lambda: ("DELETED", "x-1") in seen, what="the deletion after a 410")
        task.cancel()

    vtime.run(scenario)


def test_a_busy_api_server_at_start_up_does_not_cost_the_selector() -> None:
    """Right after the CRD is applied the API server answers 429 "storage is (re)initializing"
    for a moment: the probe asks again, and the operator still leaves finished ones out.

    Caught: a CI run's operator took its first 429 for "cannot select" and watched everything."""

    async def scenario() -> None:
        w = World(pool_size=1)
        busy = ApiError(429, {"message": "storage is (re)initializing"})
        w.api.fail(
            lambda call: call.verb == "list" and call.plural == "codeexecutions", busy, times=3
        )
        a = Replica(w.api, "op-a")
        a.build()
        await a.start()
        assert a.executions is not None and a.executions.selective
        done = w.submit(1)["metadata"]["name"]
        await w.wait_finished(done)

    vtime.run(scenario)


def _finished_in_namespaces(namespaces: int, each: int) -> tuple[FakeApi, tuple[str, ...]]:
    """A fake API server with `each` finished executions in each of `namespaces` namespaces."""
    api = FakeApi()
    names = tuple(f"team-{n}" for n in range(namespaces))
    for ns in names:
        api.create("namespaces", "", {"metadata": {"name": ns}})
        for i in range(each):
            api.create("codeexecutions", ns, {"metadata": {"name": f"f-{i}"}, "spec": {}})
            api.patch(
                "codeexecutions",
                ns,
                f"f-{i}",
                {"status": {"phase": "Succeeded"}},
                "merge",
                "status",
            )
    return api, names


def _watched(api: FakeApi, namespaces: tuple[str, ...]) -> bool:
    """Every namespace's watch of finished executions is open."""
    watching = {c.namespace for c in api.calls if c.verb == "watch"}
    return watching >= set(namespaces)


def test_many_namespaces_list_their_finished_ones_a_few_at_a_time() -> None:
    """With a watch per served namespace, at most LISTS_AT_ONCE lists run at once (each list's
    pages are the operator's largest allocation); the watches then run side by side. Two lists
    fail on the way (a dying API server): each gives its turn back, and every namespace is still
    listed and watched.

    Caught: without the turn, 20 of 20 lists were in flight at once; with the turn taken outside
    `async with`, the two failed lists kept theirs and no other namespace was ever listed."""

    async def scenario() -> None:
        api, names = _finished_in_namespaces(20, 30)
        in_flight, most = [0], [0]

        async def slow_list(call: Any) -> None:
            if call.verb == "list" and call.plural == "codeexecutions":
                in_flight[0] += 1
                most[0] = max(most[0], in_flight[0])
                try:
                    await asyncio.sleep(1.0)
                finally:
                    in_flight[0] -= 1

        api.faults.append(slow_list)
        api.fail(
            lambda call: call.verb == "list" and call.plural == "codeexecutions",
            ApiError(500, {"message": "etcd leader changed"}),
            times=2,
        )
        seen: list[tuple[str, str]] = []
        watch = finished.FinishedWatch(
            FakeKube(api, "op"),
            names,
            lambda t, b: seen.append((b["metadata"]["namespace"], b["metadata"]["name"])),
        )
        task = asyncio.get_running_loop().create_task(watch.run())
        await vtime.until(watch.synced.is_set, limit=120, what="all listed")
        await vtime.until(lambda: _watched(api, names), what="all watched")
        assert most[0] == finished.LISTS_AT_ONCE
        assert len(set(seen)) == 20 * 30
        failed = [c for c in api.calls if c.verb == "list" and c.plural == "codeexecutions"]
        assert len(failed) == 20 + 2  # the two failed ones listed again
        task.cancel()

    vtime.run(scenario)


def test_a_listed_page_is_not_kept_for_the_life_of_the_watch() -> None:
    """Once every finished execution is handed on and its namespace watched, none of the listed
    bodies is still referenced: nothing is kept per finished execution.

    Caught: with each page read in `informer.follow`'s own loop, its last page stayed bound in
    the generator's frame while the watch ran; with one page per namespace, 600 of the 600
    bodies were still alive (the 432.6 MB peak of `make scale --large`)."""

    async def scenario() -> None:
        api, names = _finished_in_namespaces(20, 30)
        handed: dict[int, str] = {}  # by id: a freed body's id may be reused by a later one
        names_handed: set[tuple[str, str]] = set()

        def handle(_type: str | None, body: dict[str, Any]) -> None:
            meta = body["metadata"]
            handed[id(body)] = meta["name"]
            names_handed.add((meta["namespace"], meta["name"]))

        watch = finished.FinishedWatch(FakeKube(api, "op"), names, handle)
        task = asyncio.get_running_loop().create_task(watch.run())
        await vtime.until(watch.synced.is_set, what="all listed")
        await vtime.until(lambda: _watched(api, names), what="all watched")
        assert len(names_handed) == 20 * 30
        gc.collect()
        alive = [
            o
            for o in gc.get_objects()
            if isinstance(o, dict)
            and id(o) in handed
            and (o.get("metadata") or {}).get("name") == handed[id(o)]
        ]
        assert alive == [], f"{len(alive)} of {len(names_handed)} listed bodies still referenced"
        task.cancel()

    vtime.run(scenario)
