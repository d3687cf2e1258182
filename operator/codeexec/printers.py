"""How the CLI shows CodeExecutions: tables (plain and wide), json, yaml, name. Pure."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from codeexec.api.models import GROUP, CodeExecution

OUTPUTS = ("json", "yaml", "wide", "name")
LIST_HEADER = ["NAME", "LANGUAGE", "PHASE", "REASON", "RESULT", "DURATION"]
WIDE_EXTRA = ["POOL", "POD", "NODE", "AGE"]


def render_value(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def shorten(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def failure_summary(execution: CodeExecution) -> str:
    """One line: why an execution did not succeed."""
    status = execution.status
    parts = [status.reason or str(status.phase or "Unknown")]
    error = status.result.error if status.result else None
    if error is not None:
        parts.append(f"{error.type}: {error.message}" if error.message else error.type)
    elif status.message:
        parts.append(status.message)
    return ": ".join(parts)


def summary_row(execution: CodeExecution) -> list[str]:
    status = execution.status
    result = status.result
    outcome = status.reason or str(status.phase or "Pending")
    if result is None or status.phase is None or not status.phase.terminal:
        value = ""
    elif result.return_value_truncated:
        value = f"<not stored: {result.why_not_stored()}>"
    elif status.reason == "Succeeded":
        value = shorten(render_value(result.return_value), 40)
    elif result.error is not None:
        value = shorten(f"{result.error.type}: {result.error.message}", 40)
    else:
        value = ""
    return [
        execution.name,
        execution.spec.language,
        str(status.phase or "Pending"),
        outcome,
        value,
        status.duration or "",
    ]


def age(created: str | None, now: datetime) -> str:
    """kubectl's short age: 42s, 5m, 3h, 2d."""
    if not created:
        return "<unknown>"
    then = datetime.strptime(created, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    seconds = max(0, int((now - then).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= 2 * size or (unit == "m" and seconds >= size):
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def wide_row(body: dict[str, Any], now: datetime) -> list[str]:
    execution = CodeExecution.from_body(body)
    sandbox = execution.status.sandbox
    return [
        *summary_row(execution),
        (sandbox.pool if sandbox else None) or execution.spec.pool or "",
        (sandbox.pod if sandbox else None) or "",
        (sandbox.node if sandbox else None) or "",
        age(body.get("metadata", {}).get("creationTimestamp"), now),
    ]


def resource_name(body: dict[str, Any]) -> str:
    """As `kubectl get -o name` prints it."""
    return f"codeexecution.{GROUP}/{body['metadata']['name']}"


def render(
    bodies: Sequence[dict[str, Any]],
    output: str | None,
    *,
    single: bool = False,
    all_namespaces: bool = False,
    now: datetime | None = None,
) -> str:
    """The text for `-o OUTPUT` (None: the plain table); `single` prints one object, not a
    List, for json and yaml (as kubectl does for `get NAME`)."""
    if output in ("json", "yaml"):
        doc: Any = (
            bodies[0]
            if single and len(bodies) == 1
            else {"apiVersion": "v1", "kind": "List", "metadata": {}, "items": list(bodies)}
        )
        if output == "json":
            return json.dumps(doc, indent=2, ensure_ascii=False)
        import yaml

        return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True).rstrip("\n")
    if output == "name":
        return "\n".join(resource_name(b) for b in bodies)
    now = now or datetime.now(UTC)
    header = LIST_HEADER + (WIDE_EXTRA if output == "wide" else [])
    rows = []
    for body in bodies:
        row = (
            wide_row(body, now) if output == "wide" else summary_row(CodeExecution.from_body(body))
        )
        if all_namespaces:
            row = [body["metadata"].get("namespace", ""), *row]
        rows.append(row)
    if all_namespaces:
        header = ["NAMESPACE", *header]
    return table([header, *rows])
