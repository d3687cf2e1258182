"""Work is never abandoned, never wedged, never rewritten: the road and its loops on the fake
API server, through API errors, lagging watches and slow writes (virtual time)."""

from __future__ import annotations

import aiohttp
import pytest

from codeexec import podspec
from tests.fakeapi import vtime
from tests.fakeapi.operator import Replica
from tests.fakeapi.server import Call, status
from tests.fakeapi.world import World


def _status_write(c: Call) -> bool:
    return c.plural == "codeexecutions" and c.sub == "status"


def test_work_is_never_abandoned_while_the_api_errors() -> None:
    """Every status write fails (503) for five minutes, then the API server recovers: the
    execution still ends, exactly once, with its result.

    Catches finding 6 (_drive gave up after seven attempts, ~48 s, and the execution sat
    Running until a restart). Caught: restoring a bound of seven attempts in Executions._drive
    made this fail (never terminal).
    """

    async def scenario() -> None:
        w = World(pool_size=2)
        op = Replica(w.api)
        await op.start()
        await vtime.until(lambda: w.warm_ready() == 2)
        outage = w.api.fail(_status_write, status(503, "ServiceUnavailable", "etcd is away"))
        ex = w.submit(11)
        name, uid = ex["metadata"]["name"], ex["metadata"]["uid"]
        await vtime.settle(300.0)
        assert w.phase(name) is None
        w.api.heal(outage)
        await w.wait_finished(name)
        done = w.execution(name)
        assert done is not None
        assert done["status"]["phase"] == "Succeeded", done["status"]
        assert done["status"]["result"]["returnValue"] == 11
        assert len(w.kubelet.started_for(uid)) == 1
        await vtime.until(lambda: not w.claimed_live(uid), what="the pod deleted")

    vtime.run(scenario)


def test_a_write_the_api_server_keeps_refusing_ends_the_execution() -> None:
    """The terminal status is refused (422) in every form, three road attempts in a row: the
    execution ends Failed/SandboxError saying so, and its pod is deleted, never a wedge.

    Catches a permanent refusal retried forever (or given up on silently). Caught: removing
    the `refusals >= REFUSALS_BEFORE_GIVING_UP` branch from Executions._drive made this end
    Succeeded on the fourth attempt instead, and this test failed.
    """

    async def scenario() -> None:
        w = World(pool_size=1)
        op = Replica(w.api)
        await op.start()
        await vtime.until(lambda: w.warm_ready() == 1)

        def terminal(c: Call) -> bool:
            if not _status_write(c):
                return False
            if isinstance(c.body, list):  # a JSON Patch setting the whole status
                status = c.body[0].get("value") or {}
            else:
                status = (c.body or {}).get("status") or {}
            return status.get("phase") in ("Succeeded", "Failed")

        w.api.fail(terminal, status(422, "Invalid", "status is invalid"), times=9)
        ex = w.submit(5)
        name, uid = ex["metadata"]["name"], ex["metadata"]["uid"]
        await w.wait_finished(name)
        done = w.execution(name)
        assert done is not None
        assert done["status"]["reason"] == "SandboxError", done["status"]
        assert "refused" in done["status"]["message"]
        assert len(w.kubelet.started_for(uid)) == 1
        await vtime.until(lambda: not w.claimed_live(uid), what="the pod deleted")

    vtime.run(scenario)


def test_the_ttl_janitor_outlives_a_network_error() -> None:
    """One TTL delete breaks on the network (not an API error): that execution and every later
    one are still deleted when their time comes.

    Catches finding 6's janitor (it caught only ApiError, so one network error ended it until a
    restart). Caught: narrowing the janitor's `except Exception` back to
    `except ApiError` (the loop is then restarted by supervise, but the failed entry is lost)
    made this fail.
    """

    async def scenario() -> None:
        w = World(pool_size=2)
        op = Replica(w.api)
        await op.start()
        await vtime.until(lambda: w.warm_ready() == 2)

        def ttl_delete(c: Call) -> bool:
            return c.plural == "codeexecutions" and c.verb == "delete"

        w.api.fail(ttl_delete, aiohttp.ClientConnectionError("connection reset"), times=1)
        first = w.submit(1, ttlSecondsAfterFinished=5)["metadata"]["name"]
        await w.wait_finished(first)
        await vtime.settle(30.0)
        later = w.submit(2, ttlSecondsAfterFinished=5)["metadata"]["name"]
        await vtime.until(
            lambda: w.execution(first) is None and w.execution(later) is None,
            limit=300.0,
            what="both deleted after their TTL",
        )

    vtime.run(scenario)


def test_running_record_never_lands_after_the_terminal_status() -> None:
    """The Running write is slow (3 s on the wire) and the code is done first: the last status
    the API server stores is the terminal one, and no Running write is applied after it.

    Catches an abandoned Running write landing after the end (the status would go back to
    Running). Caught: replacing `await asyncio.shield(running)` in Road.execute with nothing
    made a Running write land after Succeeded, and this test failed.
    """

    async def scenario() -> None:
        w = World(pool_size=1)
        op = Replica(w.api)
        await op.start()
        await vtime.until(lambda: w.warm_ready() == 1)
        phases: list[str] = []

        def record(type_: str, obj: dict) -> None:  # type: ignore[type-arg]
            if obj.get("kind") == "CodeExecution":
                phase = (obj.get("status") or {}).get("phase")
                if phase and (not phases or phases[-1] != phase):
                    phases.append(phase)

        w.api.hooks.append(record)

        def running_write(c: Call) -> bool:
            body = c.body if isinstance(c.body, dict) else {}
            return _status_write(c) and (body.get("status") or {}).get("phase") == "Running"

        w.api.fail(running_write, latency=3.0)
        name = w.submit(3, sleep=0.5)["metadata"]["name"]
        await w.wait_finished(name)
        await vtime.settle(10.0)
        assert phases[-1] == "Succeeded", phases
        assert phases.count("Succeeded") == 1, phases

    vtime.run(scenario)


def test_pool_never_creates_past_its_size_while_the_cache_lags() -> None:
    """The operator's watch lags the API server by 5 s: the keeper must not create a pod for
    a slot whose pod it created already but has not yet seen.

    Catches over-provisioning from a stale cache. Caught: removing `pool.expected[name] = now`
    from PoolManager._reconcile made the pool overshoot its size, and this test failed.
    """

    async def scenario() -> None:
        w = World(pool_size=3)
        w.api.watch_lag = 5.0
        most = [0]

        def count(type_: str, obj: dict) -> None:  # type: ignore[type-arg]
            live = [
                p
                for p in w.api.of("pods", "sbx")
                if not p["metadata"].get("deletionTimestamp")
                and p["metadata"]["labels"].get("codeexec.io/state") == "warm"
            ]
            most[0] = max(most[0], len(live))

        w.api.hooks.append(count)
        op = Replica(w.api)
        await op.start()
        await vtime.settle(60.0)
        names = [w.submit(i)["metadata"]["name"] for i in range(4)]
        await w.wait_finished(*names)
        await vtime.settle(60.0)
        assert w.warm_ready() == 3
        assert most[0] <= 3, most

    vtime.run(scenario)


def test_a_claim_never_lands_on_a_pod_without_enough_life_left(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Warm pods die at their activeDeadlineSeconds (24 h; 600 s here). An execution that
    arrives late in a pod's life must still get a pod that outlives its timeout.

    Catches finding 7 (the oldest warm pod was claimed first and killed mid-run, reported as
    WallTimeout). Caught: removing the age check from PoolManager._doomed made this execution
    end Failed (killed at the pod's deadline), and this test failed.
    """
    monkeypatch.setattr(podspec, "WARM_DEADLINE_SECONDS", 600)

    async def scenario() -> None:
        w = World(pool_size=1)
        w.api.put("sandboxpools", "", "python", lambda p: p["spec"].update(maxTimeoutSeconds=60))
        op = Replica(w.api)
        await op.start()
        await vtime.until(lambda: w.warm_ready() == 1)
        await vtime.settle(575.0)
        name = w.submit(4, sleep=50.0, timeoutSeconds=60)["metadata"]["name"]
        await w.wait_finished(name)
        done = w.execution(name)
        assert done is not None
        assert done["status"]["phase"] == "Succeeded", done["status"]

    vtime.run(scenario)


def test_a_stale_held_session_never_loses_or_repeats_the_run() -> None:
    """Every session pre-attached to a warm pod has gone stale (bytes sent on it vanish): the
    request is sent again on a fresh session, and the code runs exactly once.

    Catches a held session trusted blindly (the request lost, the execution waiting out its
    deadline). Caught: setting deliver.CONFIRM_SECONDS to None (wait forever for the start
    record on a held session) made this execution end without a result, and fail.
    """

    async def scenario() -> None:
        w = World(pool_size=2)
        w.kubelet.stale_warm_sessions = True
        op = Replica(w.api)
        await op.start()
        await vtime.until(lambda: w.warm_ready() == 2)
        await vtime.settle(5.0)  # the pre-attached sessions are open (and stale)
        ex = w.submit(6)
        await w.wait_finished(ex["metadata"]["name"])
        done = w.execution(ex["metadata"]["name"])
        assert done is not None
        assert done["status"]["phase"] == "Succeeded", done["status"]
        assert len(w.kubelet.started_for(ex["metadata"]["uid"])) == 1

    vtime.run(scenario)


def test_dropped_and_expired_watches_never_lose_or_repeat_an_execution() -> None:
    """Every watch stream is cut every 2.5 s, reconnects take 2 s and the history they would
    resume from is compacted meanwhile (410 Gone), while executions come and go: each ends
    once, with its result.

    Catches a cache or feed that trusts one watch stream (events lost across a reconnect, a
    410 never answered by a re-list). Caught: making PodCache.run answer a 410 by watching again
    from the same version instead of listing again made this fail (never terminal).
    """

    async def scenario() -> None:
        w = World(pool_size=2)
        op = Replica(w.api)
        await op.start()
        await vtime.until(lambda: w.warm_ready() == 2)
        names = []
        for i in range(12):
            names.append(w.submit(i)["metadata"]["name"])
            # The streams end; reconnecting takes 2 s, during which the world moves on and
            # the history the reconnects would resume from is compacted away.
            slow = w.api.fail(lambda c: c.verb == "watch", latency=2.0)
            w.api.close_watches()
            await vtime.settle(1.0)
            w.api.compact()
            await vtime.settle(1.5)
            w.api.heal(slow)
        await w.wait_finished(*names)
        for name in names:
            ex = w.execution(name)
            assert ex is not None
            assert ex["status"]["phase"] == "Succeeded", (name, ex["status"])
            assert len(w.kubelet.started_for(ex["metadata"]["uid"])) == 1

    vtime.run(scenario)


def test_a_background_loop_that_crashes_is_restarted() -> None:
    """Any exception (here a plain RuntimeError) ends one run of a supervised loop, never the
    loop: it is logged and started again.

    Caught: narrowing supervise's `except Exception` to `except ConnectionError` made this fail.
    """
    from codeexec.supervise import supervise

    runs: list[int] = []

    async def loop() -> None:
        runs.append(len(runs))
        if len(runs) < 3:
            raise RuntimeError("boom")

    async def scenario() -> None:
        await supervise("test-loop", loop)

    vtime.run(scenario)
    assert runs == [0, 1, 2]


def test_a_terminal_status_whose_answer_was_lost_is_never_written_again() -> None:
    """The terminal write lands but its answer is lost (an API server going down), and the
    reads that follow fail for a while: the road must not run again on its stale view of the
    execution, which would send, collect and write the terminal status a second time; the pod
    is still deleted.

    Found by the API-server-stop chaos scenario (3 terminal rewrites in 60 executions).
    Caught: with Executions._drive running the road when its reload had failed (the code before
    this test), the terminal status was written twice and this test failed.
    """

    def terminal(c: Call) -> bool:
        if not _status_write(c) or c.verb != "patch":
            return False
        value = c.body[0].get("value") if isinstance(c.body, list) else (c.body or {}).get("status")
        return (value or {}).get("phase") in ("Succeeded", "Failed")

    def read(c: Call) -> bool:
        return c.plural == "codeexecutions" and c.verb == "get"

    async def scenario() -> None:
        w = World(pool_size=2)
        op = Replica(w.api)
        await op.start()
        await vtime.until(lambda: w.warm_ready() == 2)
        w.api.lose_answer(terminal, times=1)
        w.api.fail(read, status(503, "ServiceUnavailable", "shutting down"), times=4)
        ex = w.submit(7)
        name, uid = ex["metadata"]["name"], ex["metadata"]["uid"]
        await w.wait_finished(name)
        await vtime.until(lambda: not w.claimed_live(uid), what="the pod deleted")
        await vtime.settle(120.0)
        writes = [c for c in w.api.calls if terminal(c)]
        assert len(writes) == 1, f"{len(writes)} terminal writes"
        done = w.execution(name)
        assert done is not None and done["status"]["result"]["returnValue"] == 7

    vtime.run(scenario)
