"""What goes into `CodeExecution.status`: built from plain data, capped to fit in etcd.

Pure. The lifecycle decides *when* to write; this module decides *what*.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from codeexec import clock, jsonbounds
from codeexec.api.models import ArtifactInfo, ErrorInfo, ExecutionResult, Phase, ValueOmitted
from codeexec.outcomes import Outcome, Reason, signal_name
from codeexec.protocol import Report, public_id

# etcd refuses objects over 1.5 MiB; code (128 KiB) + arguments (256 KiB) + two streams +
# return value + traceback must stay well below that.
MAX_RETURN_VALUE_BYTES = jsonbounds.MAX_RETURN_VALUE_BYTES
MAX_TRACEBACK_CHARS = 16 * 1024
MAX_MESSAGE_CHARS = 4 * 1024


def now() -> datetime:
    return clock.now()


def timestamp(at: datetime) -> str:
    if at.tzinfo is not None:
        at = at.astimezone(UTC)
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_timestamp(value: str | None) -> datetime | None:
    """An RFC 3339 time as the API server writes it; ValueError without a zone. Read on every
    pod event: fromisoformat takes 0.2 us where strptime took 4.3 us on this VM (strptime was
    1.8 % of the operator's samples in the warm series, py-spy, 2026-12-01)."""
    if not value:
        return None
    at = datetime.fromisoformat(value)
    if at.tzinfo is None:
        raise ValueError(f"time without a zone: {value!r}")
    return at.astimezone(UTC)


def condition(
    type_: str,
    status: bool,
    reason: str,
    message: str = "",
    *,
    generation: int | None = None,
    since: datetime | None = None,
) -> dict[str, Any]:
    """One condition as the API conventions describe it. `since` is when the status became
    what it is (default now): derived from the facts (creation, claim, completion), it stays the
    same however often the status is rewritten."""
    cond: dict[str, Any] = {
        "type": type_,
        "status": "True" if status else "False",
        "reason": reason,
        "message": message[:MAX_MESSAGE_CHARS],
        "lastTransitionTime": timestamp(since or now()),
    }
    if generation is not None:
        cond["observedGeneration"] = generation
    return cond


def merge_conditions(
    previous: list[dict[str, Any]] | None, current: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """`current` on top of `previous`: a condition whose status did not flip keeps its
    lastTransitionTime; conditions not in `current` stay as they were."""
    before = {c.get("type"): c for c in previous or []}
    merged = dict(before)
    for cond in current:
        old = before.get(cond["type"])
        if old is not None and old.get("status") == cond["status"]:
            cond = {**cond, "lastTransitionTime": old.get("lastTransitionTime")}
        merged[cond["type"]] = cond
    return list(merged.values())


def pending(reason: str, message: str, generation: int | None) -> dict[str, Any]:
    return {
        "phase": Phase.PENDING.value,
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
        "conditions": [condition("Claimed", False, reason, message, generation=generation)],
    }


@dataclass(frozen=True)
class Sandbox:
    """The pod an execution runs in. `request_id` is the runner's nonce while the road holds
    it; the status shows only its public_id, so one read back from a status is that digest."""

    pool: str
    pod: str
    pod_uid: str
    node: str | None
    request_id: str
    claimed_at: datetime
    attempts: int = 1

    def dump(self) -> dict[str, Any]:
        return without_nones(
            {
                "pool": self.pool,
                "pod": self.pod,
                "podUID": self.pod_uid,
                "node": self.node,
                "requestId": public_id(self.request_id),
                "claimedAt": timestamp(self.claimed_at),
                "attempts": self.attempts,
            }
        )

    @classmethod
    def load(cls, raw: dict[str, Any] | None) -> Sandbox | None:
        if not raw or not raw.get("pod") or not raw.get("requestId"):
            return None
        return cls(
            pool=raw.get("pool", ""),
            pod=raw["pod"],
            pod_uid=raw.get("podUID", ""),
            node=raw.get("node"),
            request_id=raw["requestId"],
            claimed_at=parse_timestamp(raw.get("claimedAt")) or now(),
            attempts=int(raw.get("attempts") or 1),
        )


def placement(sandbox: Sandbox, created_at: datetime | None) -> dict[str, Any]:
    """Where and since when an execution runs, and how long it waited for that."""
    where: dict[str, Any] = {"sandbox": sandbox.dump(), "startTime": timestamp(sandbox.claimed_at)}
    if created_at is not None:
        queued = (sandbox.claimed_at - created_at).total_seconds()
        where["queuedMs"] = int(max(0.0, queued) * 1000)
    return where


def running(sandbox: Sandbox, created_at: datetime, generation: int | None) -> dict[str, Any]:
    return {
        "phase": Phase.RUNNING.value,
        "reason": "Running",
        "message": f"running in pod {sandbox.pod}",
        "observedGeneration": generation,
        **placement(sandbox, created_at),
        "conditions": [claimed(sandbox, generation)],
    }


def claimed(sandbox: Sandbox, generation: int | None) -> dict[str, Any]:
    """True since the claim: rewriting it (Running, then the terminal write) never moves it."""
    message = f"claimed pod {sandbox.pod}"
    return condition(
        "Claimed", True, "PodClaimed", message, generation=generation, since=sandbox.claimed_at
    )


def _error(record: dict[str, Any] | None) -> ErrorInfo | None:
    if not record or record.get("kind") != "error":
        return None
    traceback = record.get("traceback")
    return ErrorInfo(
        type=str(record.get("type") or "Error"),
        message=str(record.get("message") or "")[:MAX_MESSAGE_CHARS],
        traceback=str(traceback)[-MAX_TRACEBACK_CHARS:] if traceback else None,
        line=record.get("line") if isinstance(record.get("line"), int) else None,
        column=record.get("column") if isinstance(record.get("column"), int) else None,
        code=record.get("code") if isinstance(record.get("code"), str) else None,
    )


def result(
    outcome: Outcome,
    report: Report | None,
    *,
    exit_code: int | None = None,
    signal: int | None = None,
    started: bool | None = None,
    artifacts: list[ArtifactInfo] | None = None,
) -> ExecutionResult:
    seed = outcome.seed
    res = ExecutionResult(
        status=seed.status,
        resource_limit_type=seed.resource_limit_type,
        unauthorized_access_type=seed.unauthorized_access_type,
        runtime_error_type=seed.runtime_error_type,
        detail=seed.detail,
        started=bool(started if started is not None else report and report.started),
        exit_code=exit_code,
        signal=signal,
        signal_name=signal_name(signal),
    )
    if report is None:
        return res
    res.exit_code = report.exit_code
    res.signal = report.signal
    res.signal_name = signal_name(report.signal)
    res.error = _error(report.result)
    res.stdout, res.stdout_bytes = report.stdout.text, report.stdout.bytes
    res.stderr, res.stderr_bytes = report.stderr.text, report.stderr.bytes
    res.stdout_truncated = report.stdout.truncated
    res.stderr_truncated = report.stderr.truncated
    res.wall_ms, res.cpu_ms = report.wall_ms, report.cpu_ms
    peak = report.cgroup_peak_bytes or (report.max_rss_kb * 1024 if report.max_rss_kb else None)
    res.peak_memory_bytes = peak
    res.artifacts = list(artifacts or [])
    if report.artifact_limit is not None:
        skipped = report.artifact_limit.get("skipped")
        names = skipped[:50] if isinstance(skipped, list) else []
        res.artifacts_skipped = [str(n)[:255] for n in names]
        count = report.artifact_limit.get("skippedCount")
        res.artifacts_skipped_count = count if isinstance(count, int) else None
    if report.result and report.result.get("kind") == "returned":
        _return_value(res, report.result)
    return res


def _return_value(res: ExecutionResult, returned: dict[str, Any]) -> None:
    """Stores what main returned exactly, or says plainly why it is not stored.

    A value the API server would change (2**64, 10**400, 1.0, -0.0) is kept as its exact JSON
    text in returnValueJSON; one too large or too deep to keep is omitted and flagged, with its
    size when known. Never an error of the program's: it returned.
    """
    omitted = returned.get("omitted")
    size = returned.get("bytes")
    res.return_value_bytes = size if isinstance(size, int) and not isinstance(size, bool) else None
    if omitted is not None:
        known = {v.value for v in ValueOmitted}
        res.return_value_omitted = omitted if omitted in known else ValueOmitted.NOT_REPORTED.value
        res.return_value_truncated = True
        return
    value = returned.get("value")
    if jsonbounds.depth(value, stop_above=jsonbounds.MAX_RETURN_VALUE_DEPTH) > (
        jsonbounds.MAX_RETURN_VALUE_DEPTH
    ):
        res.return_value_omitted = ValueOmitted.TOO_DEEP.value
        res.return_value_truncated = True
        return
    res.return_value_bytes = jsonbounds.compact_size(value)
    if res.return_value_bytes > MAX_RETURN_VALUE_BYTES:
        res.return_value_omitted = ValueOmitted.TOO_LARGE.value
        res.return_value_truncated = True
    elif jsonbounds.storable_exactly(value):
        res.return_value = value
    else:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=True)
        if len(text) > MAX_RETURN_VALUE_BYTES:
            res.return_value_omitted = ValueOmitted.TOO_LARGE.value
            res.return_value_truncated = True
        else:
            res.return_value_json = text


def omission_note(res: ExecutionResult) -> str:
    """A sentence for the status message when the return value is not stored, else ''."""
    why = res.return_value_omitted
    if why is None:
        return ""
    size = f" ({res.return_value_bytes} bytes of JSON)" if res.return_value_bytes else ""
    if why == ValueOmitted.TOO_LARGE.value:
        return (
            f"; the return value{size} is over the {MAX_RETURN_VALUE_BYTES}-byte limit "
            "and was not stored"
        )
    if why == ValueOmitted.TOO_DEEP.value:
        return (
            f"; the return value is nested more than {jsonbounds.MAX_RETURN_VALUE_DEPTH} "
            "levels deep (the limit) and was not stored"
        )
    return f"; the return value{size} did not reach the operator and was not stored"


def finished(
    outcome: Outcome,
    res: ExecutionResult,
    *,
    created_at: datetime | None,
    generation: int | None,
    sandbox: Sandbox | None = None,
) -> dict[str, Any]:
    completed = now()
    duration = (completed - created_at).total_seconds() if created_at else None
    body = res.dump()
    if returned_null(res):
        body["returnValue"] = None  # written by JSON Patch, so the null is kept
    message = (outcome.message + omission_note(res))[:MAX_MESSAGE_CHARS]
    # A run quick enough to skip the Running write still says where it ran.
    where = placement(sandbox, created_at) if sandbox is not None else {}
    return without_nones(
        {
            **where,
            "phase": (Phase.SUCCEEDED if outcome.succeeded else Phase.FAILED).value,
            "reason": outcome.reason.value,
            "message": message,
            "observedGeneration": generation,
            "completionTime": timestamp(completed),
            "duration": f"{duration:.2f}s" if duration is not None else None,
            "result": body,
            "conditions": [
                *([claimed(sandbox, generation)] if sandbox is not None else []),
                condition(
                    "Complete" if outcome.succeeded else "Failed",
                    True,
                    outcome.reason.value,
                    message,
                    generation=generation,
                    since=completed,
                ),
            ],
        }
    )


def failed_before_start(
    reason: Reason, message: str, generation: int | None, created_at: datetime | None
) -> dict[str, Any]:
    outcome = Outcome(reason, message)
    return finished(
        outcome, result(outcome, None, started=False), created_at=created_at, generation=generation
    )


def returned_null(res: ExecutionResult) -> bool:
    """main returned None/null/undefined (as opposed to no value stored)."""
    return (
        res.return_value is None
        and res.return_value_json is None
        and not res.return_value_truncated
        and res.return_value_bytes is not None
    )


def without_nones(body: dict[str, Any]) -> dict[str, Any]:
    """Top-level members that are None left out: a schema field is not nullable."""
    return {k: v for k, v in body.items() if v is not None}


def reduced(body: dict[str, Any], refusal: str) -> dict[str, Any]:
    """The terminal status again, without the result's bulky parts, after the API server
    refused the full one (too large, not representable): the outcome and reason are kept."""
    small = dict(body)
    result = dict(body.get("result") or {})
    for bulky in ("returnValue", "returnValueJSON", "stdout", "stderr", "error"):
        result.pop(bulky, None)
    if "returnValueBytes" in result:
        result["returnValueTruncated"] = True
        result["returnValueOmitted"] = ValueOmitted.NOT_STORABLE.value
    result["stdoutTruncated"] = bool(result.get("stdoutBytes"))
    result["stderrTruncated"] = bool(result.get("stderrBytes"))
    small["result"] = result
    note = f"; the full result could not be stored ({refusal[:200]})"
    small["message"] = (str(body.get("message") or "") + note)[:MAX_MESSAGE_CHARS]
    small["conditions"] = [
        {**c, "message": small["message"]} if c.get("type") in ("Complete", "Failed") else c
        for c in body.get("conditions") or []
    ]
    return small


def minimal(body: dict[str, Any], refusal: str) -> dict[str, Any]:
    """Phase, reason and why: the last resort when even the reduced status was refused."""
    keep = ("phase", "reason", "observedGeneration", "completionTime", "duration", "sandbox")
    small = {k: body[k] for k in keep if k in body}
    note = f"; no result could be stored ({refusal[:200]})"
    small["message"] = (str(body.get("message") or "") + note)[:MAX_MESSAGE_CHARS]
    result = body.get("result") or {}
    small["result"] = {k: result[k] for k in ("status", "started") if k in result}
    return small
