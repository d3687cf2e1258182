"""Which pool an execution gets, on the fake API server in virtual time: the pool registry
follows its own watch, which may lag behind what the API server already holds."""

from __future__ import annotations

from codeexec import clock
from codeexec.pool import REGISTRY_WAIT_SECONDS
from tests.fakeapi import vtime
from tests.fakeapi.operator import Replica
from tests.fakeapi.world import World

# The pool watch's events arrive this late (an API server's watch cache behind etcd, or a
# watch being re-established after an error).
POOL_WATCH_LAG = 3.0


async def _lagging_pools() -> World:
    w = World(pool_size=1)
    op = Replica(w.api)
    await op.start()
    await vtime.until(lambda: w.warm_ready() == 1)
    w.api.lag["sandboxpools"] = POOL_WATCH_LAG
    return w


def test_an_execution_applied_with_its_pool_runs_on_it_though_the_pool_watch_lags() -> None:
    """`kubectl apply -f pool.yaml -f execution.yaml`: the execution names a pool that the API
    server holds but the pool watch has not brought yet. It runs on that pool and succeeds.

    Caught: without PoolManager._catch_up it ended Failed/InvalidRequest ("SandboxPool 'fresh'
    does not exist"), a terminal verdict on a registry that was only behind."""

    async def scenario() -> None:
        w = await _lagging_pools()
        w.pool("fresh", size=1, default=False)
        name = w.submit(7, pool="fresh")["metadata"]["name"]
        await w.wait_finished(name)
        done = w.execution(name)
        assert done is not None
        assert done["status"]["phase"] == "Succeeded", done["status"]
        assert done["status"]["result"]["returnValue"] == 7
        assert done["status"]["sandbox"]["pool"] == "fresh"

    vtime.run(scenario)


def test_an_execution_applied_with_the_first_default_pool_of_its_language_runs_on_it() -> None:
    """The same for a language whose only default pool arrives with the execution."""

    async def scenario() -> None:
        w = await _lagging_pools()
        w.pool("js", size=1, language="nodejs")
        name = w.submit(3, language="nodejs")["metadata"]["name"]
        await w.wait_finished(name)
        done = w.execution(name)
        assert done is not None
        assert done["status"]["phase"] == "Succeeded", done["status"]
        assert done["status"]["sandbox"]["pool"] == "js"

    vtime.run(scenario)


def test_a_pool_that_does_not_exist_still_fails_the_execution_without_waiting() -> None:
    """The catching up reads the API server once: a missing pool is refused at once, and a
    language without a default pool too, each with its reason."""

    async def scenario() -> None:
        w = await _lagging_pools()
        t0 = clock.monotonic()
        missing = w.submit(1, pool="nowhere")["metadata"]["name"]
        no_default = w.submit(1, language="nodejs")["metadata"]["name"]
        await w.wait_finished(missing, no_default)
        assert clock.monotonic() - t0 < REGISTRY_WAIT_SECONDS
        for name, why in ((missing, "'nowhere' does not exist"), (no_default, "no default")):
            done = w.execution(name)
            assert done is not None
            assert (done["status"]["phase"], done["status"]["reason"]) == (
                "Failed",
                "InvalidRequest",
            )
            assert why in done["status"]["message"], done["status"]

    vtime.run(scenario)
