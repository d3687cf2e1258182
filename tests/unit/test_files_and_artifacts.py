"""Input-file bounds and paths (files.py); artifact records on the stream (protocol.py);
the ArtifactLimit outcome (outcomes.py)."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest

from codeexec import files
from codeexec.api.models import InputFile, KeyRef
from codeexec.artifacts import listed
from codeexec.outcomes import Evidence, Reason, classify
from codeexec.protocol import Report, ReportReader, Request


@pytest.mark.parametrize(
    "path", ["../x", "/etc/passwd", "a/../../b", "a//b", "./a", "a\\b", "", "artifacts/x"]
)
def test_a_path_that_leaves_the_working_directory_is_refused(path: str) -> None:
    """caught: without the '..' check in path_problem, '../x' passed."""
    assert files.path_problem(path) is not None


@pytest.mark.parametrize("path", ["data.csv", "in/rows.json", "a.b/c-d_e.txt"])
def test_plain_relative_paths_are_accepted(path: str) -> None:
    assert files.path_problem(path) is None


def test_a_reference_to_another_namespace_is_refused_before_anything_is_read() -> None:
    """caught: dropping the namespace comparison in static_problem let it through."""
    ref = KeyRef(name="s", key="k", namespace="other")
    problem = files.static_problem([InputFile(path="x", secret_key_ref=ref)], "mine")
    assert problem is not None and "only this execution's namespace" in problem
    same = KeyRef(name="s", key="k", namespace="mine")
    assert files.static_problem([InputFile(path="x", secret_key_ref=same)], "mine") is None


def test_too_many_or_duplicate_files_are_refused() -> None:
    many = [InputFile(path=f"f{i}", content="x") for i in range(files.MAX_FILES + 1)]
    assert "limit" in (files.static_problem(many, "ns") or "")
    twice = [InputFile(path="a", content="x"), InputFile(path="a", content="y")]
    assert "twice" in (files.static_problem(twice, "ns") or "")


async def test_inline_files_over_the_size_bounds_are_refused() -> None:
    big = "x" * (files.MAX_FILE_BYTES + 1)
    with pytest.raises(files.FileProblem, match="per file"):
        await files.resolve(None, [InputFile(path="a", content=big)], "ns", secrets_allowed=False)  # type: ignore[arg-type]
    half = "x" * files.MAX_FILE_BYTES
    parts = [InputFile(path=f"f{i}", content=half) for i in range(3)]
    with pytest.raises(files.FileProblem, match="in all"):
        await files.resolve(None, parts, "ns", secrets_allowed=False)  # type: ignore[arg-type]


def _record(request_id: str, name: str, data: bytes, digest: str | None = None) -> bytes:
    doc = {
        "id": request_id,
        "name": name,
        "size": len(data),
        "sha256": digest or hashlib.sha256(data).hexdigest(),
        "b64": base64.b64encode(data).decode(),
    }
    return b"CXA1 " + json.dumps(doc).encode() + b"\n"


def test_artifact_records_must_carry_our_id_and_a_matching_digest() -> None:
    """caught: accepting records without checking the digest kept a corrupted file."""
    reader = ReportReader("r" * 32, max_line_bytes=1 << 20)
    stream = (
        _record("r" * 32, "good.png", b"png")
        + _record("x" * 32, "other.png", b"png")
        + _record("r" * 32, "bad.png", b"png", digest="0" * 64)
    )
    assert reader.feed(stream) is None
    assert [a.name for a in reader.artifacts] == ["good.png"]


def test_only_listed_artifacts_are_kept() -> None:
    reader = ReportReader("r" * 32)
    reader.feed(_record("r" * 32, "a", b"1") + _record("r" * 32, "b", b"2"))
    listing = ({"name": "b", "size": 1, "sha256": hashlib.sha256(b"2").hexdigest()},)
    assert [a.name for a in listed(reader.artifacts, listing)] == ["b"]


def test_the_request_line_carries_files_and_limits_and_allows_long_artifact_lines() -> None:
    req = Request(
        id="r" * 32,
        language="python",
        code="x",
        arguments={},
        timeout_ms=1000,
        max_output_bytes=1024,
        keep_bytes=1024,
        files=({"path": "a", "b64": "eA=="},),
        artifacts={"maxFiles": 1, "maxFileBytes": 30 << 20, "maxTotalBytes": 30 << 20},
    )
    line = json.loads(req.encode())
    assert line["files"] == [{"path": "a", "b64": "eA=="}] and line["artifacts"]["maxFiles"] == 1
    assert req.max_line_bytes() > 40 << 20


def _report(**extra: object) -> Report:
    doc = {
        "started": True,
        "exit": {"code": 0},
        "result": {"kind": "returned", "value": 1},
        **extra,
    }
    return Report.from_json(doc)


def test_an_artifact_limit_ends_a_successful_run_with_artifactlimit() -> None:
    limit = {"kind": "totalSize", "skipped": ["b"], "skippedCount": 1, "maxTotalBytes": 10}
    outcome = classify(Evidence(report=_report(artifactLimit=limit)))
    assert outcome.reason is Reason.ARTIFACT_LIMIT
    assert "more than 10 bytes in all" in outcome.message
    assert classify(Evidence(report=_report())).reason is Reason.SUCCEEDED


def test_a_failure_says_more_than_an_artifact_limit() -> None:
    limit = {"kind": "count", "skipped": ["x"], "skippedCount": 1}
    outcome = classify(Evidence(report=_report(artifactLimit=limit, timedOut=True)))
    assert outcome.reason is Reason.WALL_TIMEOUT


class _Store:
    kind = "fake"

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.put_names: list[str] = []

    async def put(self, owner: object, records: list[object]) -> list[object]:
        if self.fail:
            raise OSError("store down")
        self.put_names = [r.name for r in records]  # type: ignore[attr-defined]
        return ["stored"] * len(records)


async def test_a_failing_store_costs_the_artifacts_never_the_outcome() -> None:
    from codeexec.artifacts import Owner
    from codeexec.artifacts.stores import keep
    from codeexec.outcomes import Outcome

    reader = ReportReader("r" * 32)
    reader.feed(_record("r" * 32, "a.png", b"1") + _record("r" * 32, "b.png", b"2"))
    listing = [
        {"name": n, "size": 1, "sha256": hashlib.sha256(d).hexdigest()}
        for n, d in (("a.png", b"1"), ("b.png", b"2"), ("lost.png", b"3"))
    ]
    report = _report(artifacts=listing)
    owner = Owner("ns", "cx", "uid")
    ok = Outcome(Reason.SUCCEEDED, "main returned")
    store = _Store()
    outcome, stored = await keep(store, owner, ok, report, tuple(reader.artifacts))  # type: ignore[arg-type]
    assert store.put_names == ["a.png", "b.png"] and len(stored) == 2
    assert (
        outcome.reason is Reason.SUCCEEDED and "1 artifacts did not arrive whole" in outcome.message
    )
    outcome, stored = await keep(_Store(fail=True), owner, ok, report, tuple(reader.artifacts))  # type: ignore[arg-type]
    assert stored == [] and outcome.reason is Reason.SUCCEEDED
    assert "could not be stored (store down)" in outcome.message
