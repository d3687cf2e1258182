"""Pools and installations: bad names and neighbours never break the operator quietly."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml

from tests.fakeapi import vtime
from tests.fakeapi.operator import Replica
from tests.fakeapi.world import World

ROOT = Path(__file__).resolve().parents[2]


def test_a_pool_name_too_long_for_a_label_never_reaches_the_keeper() -> None:
    """A SandboxPool named with 64 characters (stored before the CRD's rule existed): the
    operator does not serve it (no pod creation the API server refuses, again and again) and
    the other pools warm as usual.

    Catches finding 8 (the pool name is a label value on its pods: over 63 characters every
    creation failed). Caught: removing the length check from PoolManager.upsert made the
    keeper send refused creations, and this test failed.
    """

    async def scenario() -> None:
        w = World(pool_size=1)
        long = "p" * 64
        w.pool(long, size=1, default=False)
        op = Replica(w.api)
        await op.start()
        await vtime.until(lambda: w.warm_ready() == 1)
        await vtime.settle(30.0)
        refused = [
            c
            for c in w.api.calls
            if c.verb == "create" and c.plural == "pods" and long in str(c.body)
        ]
        assert not refused

    vtime.run(scenario)


def test_the_crd_refuses_a_pool_name_over_63_characters() -> None:
    """A pool's name becomes a label value on its pods (63 characters at most): the CRD refuses
    a longer name at admission. Caught: with the CRD's length rule removed, the assertion failed."""
    crd = yaml.safe_load((ROOT / "crds" / "codeexec.io_sandboxpools.yaml").read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    rules = [v["rule"] for v in schema.get("x-kubernetes-validations") or []]
    assert "self.metadata.name.size() <= 63" in rules


def test_two_installations_on_the_same_namespaces_are_reported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Two installations (different pool selectors) watch the same tenant namespace: each
    warns, in its log and with a Warning Event on the execution, that another operator runs
    executions it watches.

    Catches finding 8's silent race. Caught: removing the `_check_foreign` call from
    Executions.observe made this fail (no warning, no Event).
    """

    async def scenario() -> None:
        w = World(pool_size=0)
        for name, instance in (("py-a", "a"), ("py-b", "b")):
            body = w.pool(name, size=1)
            w.api.put("sandboxpools", "", body["metadata"]["name"],
                      lambda p, i=instance: p["metadata"].setdefault("labels", {}).update(
                          {"codeexec.io/instance": i}))  # fmt: skip
        a = Replica(w.api, "op-a", pool_selector="codeexec.io/instance=a")
        b = Replica(w.api, "op-b", pool_selector="codeexec.io/instance=b")
        await a.start()
        await b.start()
        await vtime.until(lambda: w.warm_ready() >= 2)
        names = [w.submit(i)["metadata"]["name"] for i in range(3)]
        await w.wait_finished(*names)
        await vtime.settle(5.0)
        events = [e for e in w.api.of("events", "team") if e.get("reason") == "AnotherOperator"]
        assert events, "no Warning Event"

    with caplog.at_level(logging.WARNING, logger="codeexec.controller"):
        vtime.run(scenario)
    assert any("another codeexec operator" in r.getMessage() for r in caplog.records)
