"""The framed request and report exchanged with the in-pod runner (docs/runner-protocol.md).

Pure: bytes in, plain data out. The report is trusted only when its id equals the nonce we sent,
so nothing the user's code prints can pass for it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import itertools
import json
import secrets
from dataclasses import dataclass, field
from typing import Any

from codeexec import jsonbounds

PROTOCOL = "codeexec.io/runner/v1"
REPORT_PREFIX = b"CXR1 "
ARTIFACT_PREFIX = b"CXA1 "
STARTED_PREFIX = "CXS1 "
# The supervisor's report holds a return value of at most maxResultBytes (256 KiB, the status
# cap) plus 64 KiB of record, and two stream heads of keepBytes (64 KiB each, at most 6 bytes
# of escaped JSON per byte): ~1.1 MiB. Anything longer on the stream is not a report.
MAX_REPORT_BYTES = 2 * 1024 * 1024


def new_request_id() -> str:
    return secrets.token_hex(16)


@dataclass(frozen=True)
class Request:
    id: str
    language: str
    code: str
    arguments: dict[str, Any]
    timeout_ms: int
    max_output_bytes: int
    keep_bytes: int
    # The runner omits (and flags) a return value larger or deeper than these: what the status
    # can keep is all that is worth sending back.
    max_result_bytes: int = jsonbounds.MAX_RETURN_VALUE_BYTES
    max_result_depth: int = jsonbounds.MAX_RETURN_VALUE_DEPTH
    # Input files as {path, b64}; the artifact limits ({maxFiles, maxFileBytes,
    # maxTotalBytes}), without which the runner sends no artifacts.
    files: tuple[dict[str, str], ...] = ()
    artifacts: dict[str, int] | None = None

    def max_line_bytes(self) -> int:
        """The longest line the runner may send for this request: the report, or one
        artifact record (base64 is 4/3 of the file, plus its envelope)."""
        per_file = (self.artifacts or {}).get("maxFileBytes", 0)
        return max(MAX_REPORT_BYTES, per_file * 4 // 3 + 64 * 1024)

    def encode(self) -> bytes:
        extra: dict[str, Any] = {}
        if self.files:
            extra["files"] = list(self.files)
        if self.artifacts is not None:
            extra["artifacts"] = self.artifacts
        line = json.dumps(
            {
                "protocol": PROTOCOL,
                "id": self.id,
                "language": self.language,
                "code": self.code,
                "arguments": self.arguments,
                "timeoutMs": self.timeout_ms,
                "maxOutputBytes": self.max_output_bytes,
                "keepBytes": self.keep_bytes,
                "maxResultBytes": self.max_result_bytes,
                "maxResultDepth": self.max_result_depth,
                **extra,
            },
            separators=(",", ":"),
            ensure_ascii=False,
        )
        return line.encode() + b"\n"


@dataclass(frozen=True)
class Stream:
    text: str = ""
    bytes: int = 0
    truncated: bool = False

    @classmethod
    def parse(cls, raw: Any) -> Stream:
        if not isinstance(raw, dict):
            return cls()
        return cls(
            text=str(raw.get("text") or ""),
            bytes=int(raw.get("bytes") or 0),
            truncated=bool(raw.get("truncated")),
        )


@dataclass(frozen=True)
class Report:
    """What the supervisor saw; classification happens elsewhere."""

    started: bool
    protocol_error: str | None = None
    exit_code: int | None = None
    signal: int | None = None
    # Where the supervisor read the exit status: "proc" (stored, before the reap) or "wait".
    exit_from: str | None = None
    timed_out: bool = False
    output_limited: bool = False
    oom_killed: bool = False
    result: dict[str, Any] | None = None
    stdout: Stream = field(default_factory=Stream)
    stderr: Stream = field(default_factory=Stream)
    wall_ms: float | None = None
    cpu_ms: float | None = None
    max_rss_kb: int | None = None
    cgroup_peak_bytes: int | None = None
    # What the kernel saw (the supervisor's `evidence`): the only grounds for a resource or
    # access reason besides the supervisor's own flags and the wait status.
    tasks_peak: int | None = None
    process_limit: int | None = None
    memory_limit_hits: int | None = None
    ip_packets_sent: int | None = None
    scratch_full: bool = False
    file_at_limit: bool = False
    access_denied: bool = False
    # The artifacts the runner sent ({name, size, sha256}) and the limit it met, if any.
    artifacts: tuple[dict[str, Any], ...] = ()
    artifact_limit: dict[str, Any] | None = None
    artifact_problem: str | None = None
    compact: bool = False
    # The supervisor's wall-clock marks (epoch seconds): see road_parts.
    timing: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_json(cls, doc: dict[str, Any], *, compact: bool = False) -> Report:
        exit_ = doc.get("exit") or {}
        usage = doc.get("usage") or {}
        seen = doc.get("evidence")
        seen = seen if isinstance(seen, dict) else {}
        result = doc.get("result")
        return cls(
            started=bool(doc.get("started")),
            protocol_error=doc.get("protocolError"),
            exit_code=_int_or_none(exit_.get("code")),
            signal=_int_or_none(exit_.get("signal")),
            exit_from=exit_.get("from") if exit_.get("from") in EXIT_READS else None,
            timed_out=bool(doc.get("timedOut")),
            output_limited=bool(doc.get("outputLimited")),
            oom_killed=bool(doc.get("oomKilled")),
            result=result if isinstance(result, dict) else None,
            stdout=Stream.parse(doc.get("stdout")),
            stderr=Stream.parse(doc.get("stderr")),
            wall_ms=_float_or_none(usage.get("wallMs")),
            cpu_ms=_float_or_none(usage.get("cpuMs")),
            max_rss_kb=_int_or_none(usage.get("maxRssKb")),
            cgroup_peak_bytes=_int_or_none(usage.get("cgroupPeakBytes")),
            tasks_peak=_int_or_none(seen.get("tasksPeak")),
            process_limit=_int_or_none(seen.get("processLimit")),
            memory_limit_hits=_int_or_none(seen.get("memoryLimitHits")),
            ip_packets_sent=_int_or_none(seen.get("ipPacketsSent")),
            scratch_full=seen.get("scratchFull") is True,
            file_at_limit=seen.get("fileAtLimit") is True,
            access_denied=seen.get("accessDenied") is True,
            artifacts=_listing(doc.get("artifacts")),
            artifact_limit=doc.get("artifactLimit")
            if isinstance(doc.get("artifactLimit"), dict)
            else None,
            artifact_problem=str(doc["artifactProblem"])[:500]
            if doc.get("artifactProblem")
            else None,
            compact=compact,
            timing=_timing(doc.get("timing")),
        )


EXIT_READS = ("proc", "wait")
TIMING_MARKS = ("receivedAt", "startedAt", "resultAt", "exitedAt", "reportAt")
ROAD_PARTS = ("frame_out", "start", "run", "exit", "wrap_up", "report_back")


def _timing(raw: Any) -> dict[str, float]:
    if not isinstance(raw, dict):
        return {}
    return {
        k: float(v)
        for k, v in raw.items()
        if k in TIMING_MARKS and isinstance(v, int | float) and not isinstance(v, bool)
    }


# Marks further apart than this, or out of order by more than the clocks' disagreement, are
# not a measurement (a pod on another node with a skewed clock, a resumed delivery).
_ROAD_MAX_SECONDS = 3600.0
_ROAD_SKEW_SECONDS = 0.005


def road_parts(sent_at: float, seen_at: float, timing: dict[str, float]) -> dict[str, float]:
    """One delivery's time, in seconds, split by where it went: `frame_out` (our send to the
    supervisor holding the request line), `start` (to the code handed over), `run` (to the
    result record), `exit` (to the worker's exit), `wrap_up` (evidence, artifacts, the
    report) and `report_back` (the report's line to us). The two crossings compare our clock
    with the pod's: they are left out when the marks disagree with our own."""
    marks = [("sent", sent_at)]
    marks += [(k, timing[k]) for k in TIMING_MARKS if k in timing]
    marks.append(("seen", seen_at))
    names = {
        ("sent", "receivedAt"): "frame_out",
        ("receivedAt", "startedAt"): "start",
        ("startedAt", "resultAt"): "run",
        ("resultAt", "exitedAt"): "exit",
        ("reportAt", "seen"): "report_back",
    }
    parts: dict[str, float] = {}
    for (a, ta), (b, tb) in itertools.pairwise(marks):
        d = tb - ta
        if d < -_ROAD_SKEW_SECONDS or d > _ROAD_MAX_SECONDS:
            return {}
        part = names.get((a, b), "wrap_up" if b == "reportAt" else None)
        if part is not None:
            parts[part] = parts.get(part, 0.0) + max(d, 0.0)
    return parts


def _listing(raw: Any) -> tuple[dict[str, Any], ...]:
    if not isinstance(raw, list):
        return ()
    out = []
    for item in raw[:1000]:
        if (
            isinstance(item, dict)
            and isinstance(item.get("name"), str)
            and isinstance(item.get("sha256"), str)
            and _int_or_none(item.get("size")) is not None
        ):
            out.append({"name": item["name"], "size": item["size"], "sha256": item["sha256"]})
    return tuple(out)


@dataclass(frozen=True)
class ArtifactRecord:
    """One file the runner read from ./artifacts/, as it arrived on the stream."""

    name: str
    data: bytes
    sha256: str


def parse_artifact_line(line: bytes, request_id: str) -> ArtifactRecord | None:
    """A `CXA1 {...}` line for our request whose bytes match its digest, else None."""
    line = line.strip()
    if not line.startswith(ARTIFACT_PREFIX):
        return None
    try:
        doc = json.loads(line[len(ARTIFACT_PREFIX) :])
    except ValueError:
        return None
    if not isinstance(doc, dict) or doc.get("id") != request_id:
        return None
    name, b64 = doc.get("name"), doc.get("b64")
    if not isinstance(name, str) or not isinstance(b64, str):
        return None
    try:
        data = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        return None
    digest = hashlib.sha256(data).hexdigest()
    if digest != doc.get("sha256"):
        return None
    return ArtifactRecord(name=name, data=data, sha256=digest)


def _int_or_none(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _float_or_none(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def parse_report_line(line: bytes, request_id: str, *, compact: bool = False) -> Report | None:
    """A `CXR1 {...}` line carrying our id, or None for anything else."""
    line = line.strip()
    if not line.startswith(REPORT_PREFIX):
        return None
    try:
        doc = jsonbounds.loads(line[len(REPORT_PREFIX) :])
    except ValueError:
        return None
    if not isinstance(doc, dict) or doc.get("id") != request_id:
        return None
    return Report.from_json(doc, compact=compact)


class ReportReader:
    """Feeds stdout chunks from the attach stream; yields the report once its line completes."""

    def __init__(self, request_id: str, max_line_bytes: int = MAX_REPORT_BYTES) -> None:
        self.request_id = request_id
        self.started = False
        self.artifacts: list[ArtifactRecord] = []
        self._started_line = started_line(request_id)
        self._max_line = max_line_bytes
        self._buffer = bytearray()

    def feed(self, chunk: bytes) -> Report | None:
        self._buffer += chunk
        if b"\n" not in chunk:
            if len(self._buffer) > self._max_line:
                # Only the supervisor writes here and its line is bounded; drop runaway garbage.
                self._buffer.clear()
            return None
        lines = bytes(self._buffer).split(b"\n")
        self._buffer = bytearray(lines.pop())
        for line in lines:
            if line.strip() == self._started_line:
                self.started = True
                continue
            if line.startswith(ARTIFACT_PREFIX):
                record = parse_artifact_line(line, self.request_id)
                if record is not None:
                    self.artifacts.append(record)
                continue
            report = parse_report_line(line, self.request_id)
            if report is not None:
                return report
        return None


def id_digest(request_id: str) -> str:
    return hashlib.sha256(request_id.encode()).hexdigest()


def public_id(request_id: str) -> str:
    """What may be shown of a request id (status, logs): a digest, never the nonce itself,
    which is what makes a report line the supervisor's (the pod's claim annotation keeps it,
    out of tenants' and the user's code's reach)."""
    return id_digest(request_id)[:32]


def started_line(request_id: str) -> bytes:
    """The supervisor's `CXS1` record for this request, byte for byte as it writes it."""
    doc = json.dumps({"idSha256": id_digest(request_id), "started": True})
    return (STARTED_PREFIX + doc).encode()


@dataclass(frozen=True)
class PodRecord:
    """What the container's termination message says about the request."""

    started: bool
    report: Report | None


def parse_termination_message(message: str | None, request_id: str) -> PodRecord:
    if not message:
        return PodRecord(started=False, report=None)
    text = message.strip()
    report = parse_report_line(text.encode(), request_id, compact=True)
    if report is not None:
        return PodRecord(started=report.started, report=report)
    if text.startswith(STARTED_PREFIX):
        try:
            doc = jsonbounds.loads(text[len(STARTED_PREFIX) :])
        except ValueError:
            doc = {}
        # The started record names the request by digest: the user's code can read the
        # termination log while it runs, and must not learn the nonce from it.
        if isinstance(doc, dict) and doc.get("idSha256") == id_digest(request_id):
            return PodRecord(started=bool(doc.get("started", True)), report=None)
    return PodRecord(started=False, report=None)
