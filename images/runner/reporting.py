"""What the runner reports: the result record checked, output heads, the CXR1 line that fits."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

# Deepest return value passed on (the operator sends its own limit as maxResultDepth).
DEFAULT_MAX_RESULT_DEPTH = 64
OMITTED_REASONS = frozenset({"TooLarge", "TooDeep"})
TERMINATION_LOG_LIMIT = 4000
ERROR_PHASES = {"compile", "entrypoint", "run", "serialize"}


# ---------------------------------------------------------------------------------------------
# output streams


@dataclass
class Stream:
    """One of the worker's output pipes: the head up to keep_bytes and the total read."""

    fd: int | None
    keep_bytes: int
    head: bytearray = field(default_factory=bytearray)
    total: int = 0

    def feed(self, data: bytes) -> None:
        self.total += len(data)
        room = self.keep_bytes - len(self.head)
        if room > 0:
            self.head += data[:room]

    def restart(self, keep_bytes: int) -> None:
        self.keep_bytes = keep_bytes
        self.head = bytearray()
        self.total = 0

    def summary(self) -> dict[str, Any]:
        head = bytes(self.head)
        truncated = self.total > len(head)
        if truncated:
            head = cut_utf8(head)
        return {
            "text": head.decode("utf-8", errors="replace"),
            "bytes": self.total,
            "truncated": truncated,
        }


def cut_utf8(data: bytes) -> bytes:
    """Drops a multi-byte character split by the cut (at most 3 trailing bytes)."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 == 0x80:
            continue  # continuation byte: keep looking for the lead byte
        if byte & 0x80 == 0:
            return data  # ASCII: nothing split
        need = 2 if byte & 0xE0 == 0xC0 else 3 if byte & 0xF0 == 0xE0 else 4
        return data if back >= need else data[:-back]
    return data


# ---------------------------------------------------------------------------------------------
# the worker's result record


def _clip(value: Any, limit: int) -> str | None:
    if not isinstance(value, str):
        return None
    return value if len(value) <= limit else value[:limit] + "…"


def _small_int(value: Any) -> int | None:
    return value if type(value) is int and -(1 << 31) <= value < (1 << 31) else None


def _sanitize_error(rec: dict[str, Any]) -> dict[str, Any] | None:
    if rec.get("phase") not in ERROR_PHASES or not isinstance(rec.get("type"), str):
        return None
    out: dict[str, Any] = {
        "kind": "error",
        "phase": rec["phase"],
        "type": _clip(rec["type"], 200),
        "message": _clip(rec.get("message"), 8192) or "",
        "traceback": _clip(rec.get("traceback"), 32768),
    }
    for key in ("errno", "line", "column"):
        out[key] = _small_int(rec.get(key))
    for key in ("code", "syscall", "filename"):
        out[key] = _clip(rec.get(key), 200)
    causes = []
    raw_causes = rec.get("causes")
    for cause in raw_causes if isinstance(raw_causes, list) else []:
        if isinstance(cause, dict) and isinstance(cause.get("type"), str):
            causes.append(
                {
                    "type": _clip(cause["type"], 200),
                    "message": _clip(cause.get("message"), 1024) or "",
                    "errno": _small_int(cause.get("errno")),
                    "code": _clip(cause.get("code"), 200),
                }
            )
        if len(causes) >= 8:
            break
    out["causes"] = causes
    return out


def value_depth(value: Any) -> int:
    """Nesting of a decoded value ({} is 1); iterative."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            deepest = max(deepest, level + 1)
            stack.extend((child, level + 1) for child in item)
    return deepest


def _returned(rec: dict[str, Any], max_depth: int) -> dict[str, Any]:
    """A "returned" record as passed on: the value, or why it is left out and its size."""
    size = _small_int(rec.get("bytes"))
    if rec.get("omitted") in OMITTED_REASONS:
        return {"kind": "returned", "value": None, "omitted": rec["omitted"], "bytes": size}
    value = rec.get("value")
    if value_depth(value) > max_depth:  # the worker checks too; this holds whatever it wrote
        return {"kind": "returned", "value": None, "omitted": "TooDeep", "bytes": None}
    return {"kind": "returned", "value": value}


def interpret_result(
    data: bytes,
    overflowed: bool,
    exit_code: int | None,
    max_depth: int = DEFAULT_MAX_RESULT_DEPTH,
) -> tuple[dict[str, Any] | None, bool]:
    """Parses fd 3 (ready line, then at most one record) and cross-checks it with the exit.

    Returns (result or None, whether the worker reported ready). A record only counts if the
    worker then exited the way its harness does after writing it (0 after "returned", 1 after
    "error"): a crash, kill or a stray write from the user's code leaves result null.
    """
    rec, ready = _the_record(data, overflowed)
    if rec is None or exit_code is None or harness_exit_code(rec) != exit_code:
        return None, ready
    if rec["kind"] == "returned":
        return _returned(rec, max_depth), ready
    return _sanitize_error(rec), ready


def harness_exit_code(rec: dict[str, Any] | None) -> int | None:
    """The exit code the harness leaves with after writing `rec` (None: not a harness record)."""
    if rec is None:
        return None
    if rec.get("kind") == "returned" and "value" in rec:
        return 0
    return 1 if rec.get("kind") == "error" else None


def record_in(data: bytes, overflowed: bool) -> dict[str, Any] | None:
    """The one complete record after the ready line, or None while there is not exactly one."""
    return _the_record(data, overflowed)[0]


def _the_record(data: bytes, overflowed: bool) -> tuple[dict[str, Any] | None, bool]:
    lines = data.split(b"\n")
    ready = (parse_record(lines[0]) or {}).get("kind") == "ready"
    if ready:
        lines = lines[1:]
    if overflowed:
        return None, ready
    records = [line for line in lines if line]
    if len(records) != 1 or not data.endswith(b"\n"):
        return None, ready
    return parse_record(records[0]), ready


def parse_record(line: bytes) -> dict[str, Any] | None:
    try:
        rec = json.loads(line.decode("utf-8"), parse_constant=reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    return rec if isinstance(rec, dict) else None


def reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=True, allow_nan=False, separators=(",", ":"))


def compact(report: dict[str, Any], limit: int = TERMINATION_LOG_LIMIT) -> str:
    """The report as one `CXR1 ...` line of at most `limit` bytes, shortening the bulky parts."""
    line = "CXR1 " + dumps(report)
    if len(line) <= limit:
        return line
    rep = json.loads(line[5:])  # a deep copy we may cut
    # The artifacts' bytes travel only on the stream; their listing is the first to go.
    if isinstance(rep.get("artifactLimit"), dict):
        rep["artifactLimit"]["skipped"] = []
    rep.pop("artifacts", None)
    result = rep.get("result")
    returned = isinstance(result, dict) and result.get("kind") == "returned"
    size = len(dumps(result.get("value"))) if returned else 0
    if returned and size > limit // 4:
        # Flagged with its size: the operator must not read this as `return None`.
        rep["result"] = result = {
            "kind": "returned",
            "value": None,
            "omitted": "NotReported",
            "bytes": size,
        }
    for budget in (2048, 1024, 512, 256, 128, 64, 0):
        for name in ("stdout", "stderr"):
            stream = rep.get(name)
            if isinstance(stream, dict) and len(stream.get("text") or "") > budget:
                stream["text"] = stream["text"][:budget]
                stream["truncated"] = True
        if isinstance(result, dict) and result.get("kind") == "error":
            result["traceback"] = _clip(result.get("traceback"), budget * 2) if budget else None
            result["message"] = _clip(result.get("message"), budget) or ""
            result["causes"] = (result.get("causes") or [])[: budget // 256]
        if isinstance(rep.get("protocolError"), str):
            rep["protocolError"] = rep["protocolError"][: max(budget, 64)]
        line = "CXR1 " + dumps(rep)
        if len(line) <= limit:
            return line
    # Only fixed-size fields are left; this is unreachable with the limits above.
    rep["result"] = None
    return "CXR1 " + dumps(rep)
