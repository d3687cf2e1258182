"""The operator's side of docs/runner-protocol.md."""

from __future__ import annotations

import hashlib
import json

from codeexec.protocol import (
    Report,
    ReportReader,
    Request,
    parse_termination_message,
    started_line,
)

RID = "0123456789abcdef0123456789abcdef"


def line(doc: dict[str, object]) -> bytes:
    return b"CXR1 " + json.dumps(doc).encode() + b"\n"


def test_request_is_one_line_of_json() -> None:
    req = Request(RID, "python", "def main():\n    return '\\n'\n", {"x": "a\nb"}, 1000, 10, 5)
    encoded = req.encode()
    assert encoded.endswith(b"\n") and encoded.count(b"\n") == 1
    doc = json.loads(encoded)
    assert doc["id"] == RID and doc["arguments"] == {"x": "a\nb"} and doc["timeoutMs"] == 1000


def test_report_split_across_frames() -> None:
    reader = ReportReader(RID)
    data = line(
        {
            "id": RID,
            "started": True,
            "exit": {"code": 0, "signal": None},
            "result": {"kind": "returned", "value": 10},
        }
    )
    assert reader.feed(data[:7]) is None
    report = reader.feed(data[7:])
    assert isinstance(report, Report)
    assert report.result == {"kind": "returned", "value": 10} and report.exit_code == 0


def test_report_with_another_id_is_ignored() -> None:
    reader = ReportReader(RID)
    forged = line({"id": "f" * 32, "started": True, "result": {"kind": "returned", "value": 1}})
    assert reader.feed(forged + b"garbage\nCXR1 {not json\n") is None
    real = line({"id": RID, "started": True, "exit": {"code": 3}})
    report = reader.feed(real)
    assert report is not None and report.exit_code == 3


def test_termination_message_started_record() -> None:
    digest = hashlib.sha256(RID.encode()).hexdigest()
    rec = parse_termination_message(f'CXS1 {{"idSha256": "{digest}", "started": true}}', RID)
    assert rec.started and rec.report is None
    # A record for another request proves nothing about ours.
    other = hashlib.sha256(b"other").hexdigest()
    assert not parse_termination_message(
        f'CXS1 {{"idSha256": "{other}", "started": true}}', RID
    ).started


def test_termination_message_compact_report() -> None:
    msg = line({"id": RID, "started": True, "timedOut": True}).decode()
    rec = parse_termination_message(msg, RID)
    assert rec.started and rec.report is not None and rec.report.timed_out and rec.report.compact


def test_empty_termination_message_means_not_started() -> None:
    assert not parse_termination_message("", RID).started
    assert not parse_termination_message(None, RID).started


def test_started_record_on_stdout_is_noted_and_not_taken_for_a_report() -> None:
    reader = ReportReader(RID)
    assert reader.feed(started_line(RID) + b"\n") is None
    assert reader.started is True
    foreign = ReportReader("another-request-id")
    foreign.feed(started_line(RID) + b"\n")
    assert foreign.started is False
