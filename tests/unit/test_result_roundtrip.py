"""Results round-trip exactly, or say plainly what was not stored; a terminal status the API
server refuses still ends the execution (issue 11, findings 4, 5 and 8).

The fake API server applies patches as the real one does: a merge patch by RFC 7386 (null
deletes a member), a JSON Patch by RFC 6902, numbers only as int64/float64 (an integer beyond
int64 is refused, as 10**400 is; the real server turns 2**64 into a float, which is worse).
"""

from __future__ import annotations

import copy
import json
from types import SimpleNamespace
from typing import Any

import jsonpatch
import pytest

from codeexec import status as st
from codeexec.api.models import ExecutionResult
from codeexec.kube.client import ApiError
from codeexec.lifecycle import Road
from codeexec.outcomes import Outcome, Reason
from codeexec.protocol import Report, Stream, parse_termination_message

OK = Outcome(Reason.SUCCEEDED, "main returned")


def merge(target: Any, patch: Any) -> Any:
    """RFC 7386."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge(out.get(key), value)
    return out


def _int64_only(value: Any) -> None:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, int) and not isinstance(item, bool) and not -(2**63) <= item < 2**63:
            raise ApiError(422, {"reason": "Invalid", "message": f"number {item} out of range"})
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


class FakeApiServer:
    def __init__(self, status: dict[str, Any] | None = None, refuse: int = 0) -> None:
        self.obj: dict[str, Any] = {"metadata": {"name": "ex", "namespace": "ns"}, "spec": {}}
        if status is not None:
            self.obj["status"] = status
        self.refuse = refuse  # this many status writes are refused as too large
        self.writes: list[dict[str, Any]] = []

    def _store(self, new: dict[str, Any]) -> dict[str, Any]:
        _int64_only(new)
        if self.refuse:
            self.refuse -= 1
            raise ApiError(422, {"reason": "RequestEntityTooLarge", "message": "too large"})
        # What the real server stores is what its JSON encoding reads back as.
        self.obj = json.loads(json.dumps(new))
        self.writes.append(copy.deepcopy(self.obj.get("status") or {}))
        return self.obj

    async def patch_status(self, res: Any, name: str, status: Any, ns: Any = None) -> Any:
        return self._store(merge(self.obj, {"status": status}))

    async def replace_status(self, res: Any, name: str, status: Any, ns: Any = None) -> Any:
        ops = [{"op": "add", "path": "/status", "value": status}]
        return self._store(jsonpatch.apply_patch(self.obj, ops))


async def end_with(value: Any, server: FakeApiServer, known: dict[str, Any] | None = None) -> Any:
    report = Report(started=True, exit_code=0, result={"kind": "returned", "value": value})
    body = st.finished(OK, st.result(OK, report), created_at=None, generation=1)
    road = Road(SimpleNamespace(kube=server))  # type: ignore[arg-type]
    await road.write_terminal("ex", "ns", known or {}, body)
    return server.obj["status"]


def read_back(status: dict[str, Any]) -> Any:
    """What a client reads: the model takes returnValueJSON when that is what was stored."""
    return ExecutionResult.model_validate(status["result"]).return_value


async def test_nulls_in_a_return_value_survive_the_terminal_write() -> None:
    """caught: with the old merge patch (kube.patch_status) in write_terminal, this came back
    as {"n": 1, "rows": [{"b": 1}]}."""
    value = {"error": None, "rows": [{"a": None, "b": 1}], "n": 1}
    running = st.running(st.Sandbox("python", "pod-a", "uid", None, "rid", st.now()), st.now(), 1)
    status = await end_with(value, FakeApiServer(running), known=running)
    assert status["result"]["returnValue"] == value
    assert status["phase"] == "Succeeded" and status["sandbox"]["pod"] == "pod-a"


async def test_main_returning_none_is_stored_as_null_not_as_nothing() -> None:
    status = await end_with(None, FakeApiServer())
    result = status["result"]
    assert "returnValue" in result and result["returnValue"] is None
    assert result["returnValueBytes"] == 4 and result["returnValueTruncated"] is False


@pytest.mark.parametrize(
    "value",
    [
        2**64,
        10**400,
        -(2**63) - 1,
        {"big": [2**64, {"n": -(10**30)}], "ok": 1},
        1.0,
        -0.0,
        [1.5, 0.0],
        "lone \ud800 surrogate",
    ],
    ids=["2**64", "10**400", "below-int64", "nested", "1.0", "-0.0", "0.0", "surrogate"],
)
async def test_values_the_api_server_would_change_round_trip_exactly(value: Any) -> None:
    """caught: without the storable_exactly check, 10**400 was refused by the server (and
    before the fallback existed, wedged the execution) and 2**64 lost its last digits."""
    status = await end_with(value, FakeApiServer())
    result = status["result"]
    assert "returnValue" not in result and isinstance(result["returnValueJSON"], str)
    back = read_back(status)
    assert back == value and type(back) is type(value)
    if isinstance(value, float):
        assert str(back) == str(value)  # -0.0 keeps its sign


@pytest.mark.parametrize(
    "value",
    [2**63 - 1, -(2**63), 1.5, 1e21, -1e-7, "héllo ☃ 😀", {"k": [True, False, None, ""]}],
)
async def test_values_the_api_server_keeps_are_stored_as_json(value: Any) -> None:
    status = await end_with(value, FakeApiServer())
    assert status["result"]["returnValue"] == value and "returnValueJSON" not in status["result"]
    assert type(read_back(status)) is type(value)


async def test_a_value_too_large_to_store_is_a_success_flagged_as_such() -> None:
    """caught: the old workers' ResultTooLarge error made this ResultNotSerializable."""
    value = "x" * (5 * 1024 * 1024)
    status = await end_with(value, FakeApiServer())
    assert (status["phase"], status["reason"]) == ("Succeeded", "Succeeded")
    result = status["result"]
    assert result["returnValueTruncated"] is True and result["returnValueOmitted"] == "TooLarge"
    assert result["returnValueBytes"] == len(value) + 2 and "returnValue" not in result
    assert "262144-byte limit" in status["message"]


@pytest.mark.parametrize(
    ("record", "omitted", "size"),
    [
        (
            {"kind": "returned", "value": None, "omitted": "TooLarge", "bytes": 9000},
            "TooLarge",
            9000,
        ),
        ({"kind": "returned", "value": None, "omitted": "TooDeep", "bytes": None}, "TooDeep", None),
        (
            {"kind": "returned", "value": None, "omitted": "NotReported", "bytes": 7},
            "NotReported",
            7,
        ),
    ],
)
def test_a_value_the_runner_did_not_send_is_flagged_never_read_as_none(
    record: dict[str, Any], omitted: str, size: int | None
) -> None:
    report = Report(started=True, exit_code=0, result=record)
    body = st.finished(OK, st.result(OK, report), created_at=None, generation=1)
    result = body["result"]
    assert result["returnValueTruncated"] is True and result["returnValueOmitted"] == omitted
    assert result.get("returnValueBytes") == size and "returnValue" not in result
    assert body["phase"] == "Succeeded" and "was not stored" in body["message"]


def test_the_termination_log_fallback_flags_a_value_it_could_not_carry() -> None:
    """The supervisor's compact record (docs/runner-protocol.md) read back by the operator.

    caught: the old record ({"value": null, "valueOmitted": true}) became "Succeeded,
    returnValueBytes 4, returnValueTruncated false": indistinguishable from `return None`.
    """
    rid = "abcdefghijklmnop-1234"
    line = (
        'CXR1 {"id":"' + rid + '","started":true,"exit":{"code":0,"signal":null},'
        '"result":{"kind":"returned","value":null,"omitted":"NotReported","bytes":5000}}'
    )
    record = parse_termination_message(line, rid)
    assert record.report is not None
    result = st.finished(OK, st.result(OK, record.report), created_at=None, generation=1)["result"]
    assert result["returnValueTruncated"] is True and result["returnValueBytes"] == 5000
    assert result["returnValueOmitted"] == "NotReported"


def test_a_value_deeper_than_the_limit_is_omitted_by_the_operator_too() -> None:
    deep: Any = 1
    for _ in range(65):
        deep = [deep]
    report = Report(started=True, exit_code=0, result={"kind": "returned", "value": deep})
    result = st.result(OK, report)
    assert result.return_value is None and result.return_value_omitted == "TooDeep"


async def test_a_refused_terminal_status_is_written_smaller_and_still_ends_it() -> None:
    """caught: without the fallback in write_terminal the ApiError escaped, the road retried
    the same write forever and the execution stayed Running with its pod."""
    report = Report(
        started=True,
        exit_code=0,
        result={"kind": "returned", "value": {"rows": list(range(100))}},
        stdout=Stream("out", 3),
    )
    body = st.finished(OK, st.result(OK, report), created_at=None, generation=1)
    road = Road(SimpleNamespace(kube=(server := FakeApiServer(refuse=1))))  # type: ignore[arg-type]
    await road.write_terminal("ex", "ns", {}, body)
    status = server.obj["status"]
    assert (status["phase"], status["reason"]) == ("Succeeded", "Succeeded")
    assert status["result"]["returnValueOmitted"] == "NotStorable"
    assert "returnValue" not in status["result"] and "stdout" not in status["result"]
    assert "could not be stored" in status["message"] and "422" in status["message"]

    road = Road(SimpleNamespace(kube=(server := FakeApiServer(refuse=2))))  # type: ignore[arg-type]
    await road.write_terminal("ex", "ns", {}, body)
    status = server.obj["status"]
    assert (status["phase"], status["reason"]) == ("Succeeded", "Succeeded")
    assert "no result could be stored" in status["message"]


async def test_a_transient_error_is_not_mistaken_for_a_refusal() -> None:
    class Flaky(FakeApiServer):
        async def replace_status(self, res: Any, name: str, status: Any, ns: Any = None) -> Any:
            raise ApiError(503, {"reason": "ServiceUnavailable"})

    body = st.finished(OK, st.result(OK, None), created_at=None, generation=1)
    with pytest.raises(ApiError):
        await Road(SimpleNamespace(kube=Flaky())).write_terminal("ex", "ns", {}, body)  # type: ignore[arg-type]
