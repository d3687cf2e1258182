"""A dead watcher or background loop is noticed: liveness and readiness go false and the
process is told to stop, so that its Deployment starts a fresh one (issue 10, 1)."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import aiohttp
from kopf._cogs.aiokits import aiotasks

from codeexec import web
from codeexec.watchdog import KOPF_ORCHESTRATOR, Watchdog

SAFETY_SECONDS = 60.0  # a bound against a hang, not a claim about speed
WATCHER = "watcher for codeexecutions.v1alpha1.codeexec.io@team-a"


async def _forever() -> None:
    await asyncio.Event().wait()


async def _explodes(go: asyncio.Event) -> None:
    await go.wait()  # it lists and watches for a while, then meets the deep object
    raise RecursionError("maximum recursion depth exceeded while decoding a JSON array")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _status(port: int, path: str) -> int:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}{path}") as resp,
    ):
        return resp.status


async def test_a_failed_kopf_watcher_makes_the_process_dead_and_stops_it() -> None:
    """The watcher task is made the way Kopf makes it (a guarded task with Kopf's name).

    caught: with the watcher check removed from Watchdog.check, /healthz stayed 200 and no
    stop was requested.
    """
    deaths: list[str] = []
    dog = Watchdog(lambda: [], deaths.append, period=0.01)
    orchestrator = asyncio.create_task(_forever(), name=KOPF_ORCHESTRATOR)
    go = asyncio.Event()
    watcher = aiotasks.create_guarded_task(_explodes(go), name=WATCHER, cancellable=True)
    port = _free_port()
    runner = await web.start(port, lambda: dog.alive, lambda: dog.alive)
    try:
        assert dog.check() is None  # seen while it runs
        assert await _status(port, "/healthz") == 200
        go.set()
        await asyncio.wait([watcher])
        await asyncio.wait_for(dog.run(), SAFETY_SECONDS)  # returns once it tripped
        assert deaths and "RecursionError" in deaths[0] and WATCHER in deaths[0]
        assert await _status(port, "/healthz") == 503
        assert await _status(port, "/readyz") == 503
    finally:
        orchestrator.cancel()
        await runner.cleanup()


async def test_a_watcher_kopf_cancels_is_not_a_death() -> None:
    """Kopf cancels a namespace's watcher when the namespace goes away: that is no failure."""
    dog = Watchdog(lambda: [], lambda why: None)
    watcher = asyncio.create_task(_forever(), name=WATCHER)
    assert dog.check() is None
    watcher.cancel()
    await asyncio.wait([watcher])
    assert dog.check() is None and dog.alive


async def test_the_orchestrator_ending_or_an_own_loop_failing_is_a_death() -> None:
    orchestrator = asyncio.create_task(asyncio.sleep(0), name=KOPF_ORCHESTRATOR)
    dog = Watchdog(lambda: [], lambda why: None)
    assert dog.check() is None
    await orchestrator
    assert "orchestrator ended" in (dog.check() or "")

    async def broken() -> None:
        raise ValueError("boom")

    own: list[asyncio.Task[Any]] = [asyncio.create_task(broken(), name="sandbox-pod-watch")]
    await asyncio.wait(own)
    dog = Watchdog(lambda: own, lambda why: None)
    assert "sandbox-pod-watch" in (dog.check() or "")


def test_kopfs_task_names_are_the_ones_the_watchdog_follows() -> None:
    """A Kopf upgrade that renames its tasks would blind the watchdog: fail here instead."""
    import inspect

    from kopf._core.reactor import orchestration, running

    from codeexec.watchdog import KOPF_WATCHER_PREFIX

    assert f'name=f"{KOPF_WATCHER_PREFIX}{{what}}"' in inspect.getsource(
        orchestration.spawn_missing_watchers
    )
    assert f'name="{KOPF_ORCHESTRATOR}"' in inspect.getsource(running.spawn_tasks)


async def test_kopfs_own_failure_report_trips_it_at_once() -> None:
    """A watcher that fails before the first look at the task list (and the orchestrator it
    takes down) is still a death: Kopf's guard reports it through logging.

    caught: on the cluster, without this, a watcher failing right after start was missed,
    Kopf ran the cleanup and hung in its shutdown: the process stayed up, deaf
    (tests/integration/test_hostile_input.py::test_a_dead_watcher_stops_the_operator_...).
    """
    import logging

    deaths: list[str] = []
    dog = Watchdog(lambda: [], deaths.append)
    handler = dog.listen_to_kopf()
    go = asyncio.Event()
    go.set()
    try:
        watcher = aiotasks.create_guarded_task(
            _explodes(go),
            name=WATCHER,
            cancellable=True,
            logger=logging.getLogger("kopf._core.reactor.orchestration"),
        )
        await asyncio.wait([watcher])
        assert deaths and "has failed" in deaths[0] and not dog.alive
    finally:
        logging.getLogger("kopf._core.reactor").removeHandler(handler)
