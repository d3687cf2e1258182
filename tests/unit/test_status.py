"""status: what a finished execution writes, and that it fits in etcd."""

from __future__ import annotations

import json

import pytest

from codeexec import status as st
from codeexec.outcomes import Outcome, Reason
from codeexec.protocol import Report, Stream


def test_status_fits_in_etcd() -> None:
    big = "x" * 64 * 1024
    report = Report(
        started=True,
        exit_code=0,
        result={"kind": "returned", "value": "y" * (10 * 1024 * 1024)},
        stdout=Stream(big, 50_000_000, True),
        stderr=Stream(big, 70_000, True),
    )
    outcome = Outcome(Reason.SUCCEEDED, "main returned")
    body = st.finished(outcome, st.result(outcome, report), created_at=None, generation=1)
    size = len(json.dumps(body))
    assert size < 512 * 1024
    result = body["result"]
    assert result["returnValueTruncated"] is True and "returnValue" not in result
    assert result["stdoutTruncated"] is True and result["stdoutBytes"] == 50_000_000


def test_seed_fields_in_result() -> None:
    outcome = Outcome(Reason.WALL_TIMEOUT, "too slow")
    report = Report(started=True, signal=9, timed_out=True, stdout=Stream("partial", 7))
    body = st.finished(outcome, st.result(outcome, report), created_at=None, generation=1)
    assert body["phase"] == "Failed" and body["reason"] == "WallTimeout"
    res = body["result"]
    assert res["status"] == "resource_limit_exceeded" and res["resourceLimitType"] == "time"
    assert res["stdout"] == "partial" and res["signalName"] == "SIGKILL"


def test_return_value_kept() -> None:
    outcome = Outcome(Reason.SUCCEEDED, "ok")
    report = Report(started=True, exit_code=0, result={"kind": "returned", "value": {"a": [1]}})
    res = st.finished(outcome, st.result(outcome, report), created_at=None, generation=1)["result"]
    assert res["returnValue"] == {"a": [1]} and res["status"] == "success"


def test_the_status_never_shows_the_runners_nonce() -> None:
    """Issue 10: status.sandbox.requestId published the nonce that makes a report line the
    supervisor's (caught: with dump() writing self.request_id this failed)."""
    from datetime import UTC, datetime

    from codeexec.protocol import new_request_id, public_id
    from codeexec.status import Sandbox, placement

    nonce = new_request_id()
    box = Sandbox("python", "p-1", "uid", "node", nonce, datetime.now(UTC))
    shown = json.dumps(placement(box, None))
    assert nonce not in shown
    assert public_id(nonce) in shown


def test_timestamps_are_read_as_utc_and_a_time_without_a_zone_is_refused() -> None:
    from datetime import UTC, datetime

    from codeexec.status import parse_timestamp

    assert parse_timestamp("2026-12-01T03:22:41Z") == datetime(2026, 12, 1, 3, 22, 41, tzinfo=UTC)
    assert parse_timestamp("2026-12-01T04:22:41+01:00") == datetime(
        2026, 12, 1, 3, 22, 41, tzinfo=UTC
    )
    assert parse_timestamp(None) is None and parse_timestamp("") is None
    with pytest.raises(ValueError):
        parse_timestamp("2026-12-01T03:22:41")
