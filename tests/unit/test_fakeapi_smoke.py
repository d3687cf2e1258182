"""The fake API server behaves like the real one where the operator depends on it."""

from __future__ import annotations

from tests.fakeapi import vtime
from tests.fakeapi.operator import Replica
from tests.fakeapi.world import World


def test_an_execution_runs_once_and_succeeds_on_the_fake_cluster() -> None:
    async def scenario() -> None:
        w = World(pool_size=2)
        op = Replica(w.api)
        await op.start()
        await vtime.until(lambda: w.warm_ready() == 2, what="pool warm")
        ex = w.submit(7)
        await w.wait_finished(ex["metadata"]["name"])
        done = w.execution(ex["metadata"]["name"])
        assert done is not None
        assert done["status"]["phase"] == "Succeeded", done["status"]
        assert done["status"]["result"]["returnValue"] == 7
        assert len(w.kubelet.started_for(ex["metadata"]["uid"])) == 1
        await op.stop()

    vtime.run(scenario)
