"""The fake API server's field selectors behave as the real API server's watch cache: the
operator's split of the CodeExecution watch (finished.py) is only tested as well as these are."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from codeexec import finished
from codeexec.kube.client import ApiError
from tests.fakeapi import vtime
from tests.fakeapi.server import FakeApi


def _execution(api: FakeApi, name: str) -> dict[str, Any]:
    body = {"metadata": {"name": name}, "spec": {"language": "python"}}
    return api.create("codeexecutions", "team", body)


def _phase(api: FakeApi, name: str, phase: str) -> None:
    api.patch("codeexecutions", "team", name, {"status": {"phase": phase}}, "merge", "status")


def _names(listing: dict[str, Any]) -> list[str]:
    return sorted(o["metadata"]["name"] for o in listing["items"])


def test_an_absent_phase_selects_as_empty_and_the_two_selectors_split_every_object() -> None:
    """Every execution is in exactly one of the operator's two selections, from creation on.

    Caught: reading an absent field as None instead of "" put a new execution (no status yet)
    in the finished selection too."""
    api = FakeApi()
    for name, phase in (("new", None), ("p", "Pending"), ("r", "Running"), ("s", "Succeeded")):
        _execution(api, name)
        if phase:
            _phase(api, name, phase)
    _execution(api, "f")
    _phase(api, "f", "Failed")
    active = _names(api.list("codeexecutions", "team", fields=finished.ACTIVE))
    done = _names(api.list("codeexecutions", "team", fields=finished.FINISHED))
    assert active == ["new", "p", "r"]
    assert done == ["f", "s"]


def test_a_field_the_resource_does_not_select_is_refused() -> None:
    """A field the CRD does not make selectable, or any on an API server without selectable
    fields for CRDs (before 1.31), is a 400, as the real one answers: the operator's probe
    relies on it."""
    api = FakeApi()
    with pytest.raises(ApiError) as err:
        api.list("codeexecutions", "team", fields="spec.language=python")
    assert err.value.status == 400
    api.selectable = {}
    with pytest.raises(ApiError) as err:
        api.list("codeexecutions", "team", fields=finished.ACTIVE)
    assert err.value.status == 400
    api.list("codeexecutions", "team", fields="metadata.name=x")  # always selectable


def test_leaving_a_selection_is_a_deleted_event_with_the_object_as_it_was() -> None:
    """A watch with a selector gets DELETED, carrying the object before the change at the new
    resourceVersion, when a change takes an object out of its selection; ADDED when one brings
    it in; nothing for changes outside it. A watch started from an older version replays the
    same (from the history).

    Caught: delivering the raw MODIFIED to the watch that lost the object (or nothing at all)."""

    async def scenario() -> None:
        api = FakeApi()
        since = str(api.rv)
        _execution(api, "a")
        _phase(api, "a", "Running")
        _phase(api, "a", "Succeeded")
        rv = api.read("codeexecutions", "team", "a")["metadata"]["resourceVersion"]  # type: ignore[index]

        async def events(fields: str) -> list[tuple[str, str | None, str]]:
            got: list[tuple[str, str | None, str]] = []

            async def take() -> None:
                async for ev in api.watch("codeexecutions", "team", since, "", 5.0, fields):
                    obj = ev["object"]
                    phase = (obj.get("status") or {}).get("phase")
                    got.append((ev["type"], phase, obj["metadata"]["resourceVersion"]))

            await asyncio.wait_for(take(), 10.0)
            return got

        active = await events(finished.ACTIVE)
        assert [(t, p) for t, p, _ in active] == [
            ("ADDED", None),
            ("MODIFIED", "Running"),
            ("DELETED", "Running"),  # as it was before, not the Succeeded one
        ]
        assert active[-1][2] == rv
        done = await events(finished.FINISHED)
        assert [(t, p) for t, p, _ in done] == [("ADDED", "Succeeded")]
        api.delete("codeexecutions", "team", "a")
        gone = await events(finished.FINISHED)
        assert [(t, p) for t, p, _ in gone] == [("ADDED", "Succeeded"), ("DELETED", "Succeeded")]

    vtime.run(scenario)
