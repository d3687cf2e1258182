"""The runner/v1 request line (docs/runner-protocol.md): its fields, bounds and validation."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import reporting
import workfiles

PROTOCOL = "codeexec.io/runner/v1"
MAX_REQUEST_BYTES = 4 * 1024 * 1024
DEFAULT_MAX_RESULT_BYTES = 1024 * 1024
ID_RE = re.compile(r"[A-Za-z0-9-]{16,64}")


class ProtocolError(Exception):
    """The request is not a valid runner/v1 request; the message goes into the report."""


@dataclass
class Request:
    id: str
    code: str
    arguments: dict[str, Any]
    timeout_ms: int
    max_output_bytes: int
    keep_bytes: int
    max_result_bytes: int
    max_result_depth: int = reporting.DEFAULT_MAX_RESULT_DEPTH
    # Input files ({path, b64}) and the artifact limits; no limits: artifacts are not read.
    files: list[dict[str, Any]] = field(default_factory=list)
    artifacts: Any = None


def _positive_int(obj: dict[str, Any], key: str, default: int | None = None) -> int:
    value = obj.get(key, default)
    if type(value) is not int or value <= 0:
        raise ProtocolError(f"{key} must be a positive integer")
    return value


def parse_request(line: bytes, language: str) -> tuple[Request | None, str | None, str | None]:
    """Returns (request, None, None) or (None, id-if-recognisable, error message)."""
    try:
        obj = json.loads(line.decode("utf-8"), parse_constant=reporting.reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        return None, None, f"request is not a JSON line: {str(exc)[:200]}"
    if not isinstance(obj, dict):
        return None, None, "request is not a JSON object"
    raw_id = obj.get("id")
    rid = raw_id if isinstance(raw_id, str) and ID_RE.fullmatch(raw_id) else None
    try:
        if obj.get("protocol") != PROTOCOL:
            raise ProtocolError(f"protocol must be {PROTOCOL!r}")
        if rid is None:
            raise ProtocolError("id must be 16-64 characters of [A-Za-z0-9-]")
        if obj.get("language") != language:
            raise ProtocolError(f"language must be {language!r} for this runner")
        code = obj.get("code")
        if not isinstance(code, str):
            raise ProtocolError("code must be a string")
        arguments = obj.get("arguments")
        if not isinstance(arguments, dict):
            raise ProtocolError("arguments must be an object")
        files = obj.get("files", [])
        if not isinstance(files, list):
            raise ProtocolError("files must be an array")
        for entry in files:
            try:
                workfiles.path_parts(entry.get("path") if isinstance(entry, dict) else None)
            except workfiles.FileError as exc:
                raise ProtocolError(str(exc)) from exc
        request = Request(
            id=rid,
            code=code,
            arguments=arguments,
            timeout_ms=_positive_int(obj, "timeoutMs"),
            max_output_bytes=_positive_int(obj, "maxOutputBytes"),
            keep_bytes=_positive_int(obj, "keepBytes"),
            max_result_bytes=_positive_int(obj, "maxResultBytes", DEFAULT_MAX_RESULT_BYTES),
            max_result_depth=_positive_int(
                obj, "maxResultDepth", reporting.DEFAULT_MAX_RESULT_DEPTH
            ),
            files=files,
            artifacts=workfiles.Limits.parse(obj.get("artifacts")),
        )
    except ProtocolError as exc:
        return None, rid, str(exc)
    return request, None, None
