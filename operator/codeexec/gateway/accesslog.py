"""Structured logs: one JSON object per line, and one access record per request.

An access record says who asked what and how it ended, never what was run: no code, no
argument values, no output. Only sizes, the language, the names of our own objects and the
outcome.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

ACCESS_LOGGER = "codeexec.gateway.access"

# What a handler may add to a request's access record; anything else is dropped, so a
# careless caller cannot put user data into the log.
ACCESS_FIELDS = frozenset(
    {
        "language",
        "code_bytes",
        "argument_count",
        "execution",
        "reason",
        "result_status",
        "exit_code",
        "detail",
        "error",
    }
)


def access_record(
    *,
    request_id: str,
    method: str,
    path: str,
    http_status: int,
    duration_ms: float,
    remote: str | None,
    bytes_in: int | None,
    user_agent: str | None,
    fields: dict[str, Any],
) -> dict[str, Any]:
    record: dict[str, Any] = {
        "event": "access",
        "request_id": request_id,
        "method": method,
        "path": path,
        "http_status": http_status,
        "duration_ms": round(duration_ms, 1),
        "remote": remote,
        "bytes_in": bytes_in,
        "user_agent": user_agent,
    }
    record.update({k: v for k, v in fields.items() if k in ACCESS_FIELDS})
    return record


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            doc.update(fields)
        else:
            doc["msg"] = record.getMessage()
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False, default=str)


def log_access(record: dict[str, Any]) -> None:
    logging.getLogger(ACCESS_LOGGER).info("access", extra={"fields": record})


def configure(level: int = logging.INFO) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
