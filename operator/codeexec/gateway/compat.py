"""The original sandbox's result JSON, built from a finished `CodeExecution`.

Pure. Keeps the original's conventions that its clients read: the `status` vocabulary and
sub-types, `main`'s return value printed at the end of `stdout` (as the original's runner
printed it), negative exit codes for runner-side outcomes, the `detail` words, an empty
`stdout` on failure, and a non-empty `stderr` on every failure. docs/gateway.md has the table.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from codeexec.api.models import ArtifactInfo, CodeExecution, ExecutionResult
from codeexec.outcomes import Reason

STATUSES = frozenset(
    {
        "success",
        "program_error",
        "resource_limit_exceeded",
        "unauthorized_access",
        "runtime_error",
        "program_runner_error",
    }
)
RESOURCE_LIMIT_TYPES = frozenset({"time", "memory", "output"})
UNAUTHORIZED_ACCESS_TYPES = frozenset({"disallowed_syscall", "file_access", "network_access"})
RUNTIME_ERROR_TYPES = frozenset({"signalled", "nonzero_exit"})

# The original's own negative codes (the runner's, not the program's).
EXIT_TIMEOUT = -124
EXIT_MEMORY = -137
EXIT_TOO_MANY_REQUESTS = -429
EXIT_REJECTED = -999
EXIT_POOL_BUSY = -10
EXIT_INTERNAL = -3
# The original never reported an output limit. -153 follows the derivation of -137
# (minus the shell's 128 + signal): SIGXFSZ (25) is the kernel's signal for a size limit.
EXIT_OUTPUT = -153
# The original left files over its limits out silently. -413 is HTTP's "content too large",
# after the original's own -429 for "too many requests".
EXIT_ARTIFACT_LIMIT = -413

TOO_MANY_REQUESTS = "Too many requests, please try again later"
CODE_IS_UNSAFE = "Code is unsafe"
NO_AVAILABLE_CONTAINER = "no_available_container"
INTERNAL_ERROR = "internal_error"
UNHANDLED_EXCEPTION = "unhandled_exception"
CANCELLED = "cancelled"
PROCESS_LIMIT = "process_limit"
ARTIFACT_LIMIT = "artifact_limit"

# What the original wrote to stderr for the outcomes it detected itself.
_RUNNER_WORDS: dict[Reason, str] = {
    Reason.WALL_TIMEOUT: "Execution timeout",
    Reason.MEMORY_LIMIT: "Memory limit exceeded (killed by OOM)",
    Reason.OUTPUT_LIMIT: "Output limit exceeded",
    Reason.POOL_EXHAUSTED: "Container pool is busy",
}
_RUNNER_EXIT: dict[Reason, int] = {
    Reason.WALL_TIMEOUT: EXIT_TIMEOUT,
    Reason.MEMORY_LIMIT: EXIT_MEMORY,
    Reason.OUTPUT_LIMIT: EXIT_OUTPUT,
    Reason.ARTIFACT_LIMIT: EXIT_ARTIFACT_LIMIT,
    Reason.POOL_EXHAUSTED: EXIT_POOL_BUSY,
    Reason.SANDBOX_ERROR: EXIT_INTERNAL,
    Reason.INVALID_REQUEST: EXIT_REJECTED,
    Reason.CANCELLED: EXIT_REJECTED,
}


@dataclass(frozen=True)
class OriginalResult:
    """The original's `CodeExecutionResult`, fields in its order (clients may compare dumps)."""

    status: str
    stdout: str = ""
    stderr: str = ""
    exit_code: int = 0
    detail: str | None = None
    time_used_ms: float | None = None
    memory_used_kb: float | None = None
    resource_limit_type: str | None = None
    unauthorized_access_type: str | None = None
    runtime_error_type: str | None = None
    # What a current RAGFlow reads besides: the files the code left in ./artifacts/
    # ({name, mime_type, size, content_b64}) and main's return value as
    # {present, value, type}. Appended after the original fields, whose order is kept.
    artifacts: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    result: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FIELDS = tuple(f.name for f in dataclasses.fields(OriginalResult))


def structured_result(res: ExecutionResult | None) -> dict[str, Any] | None:
    """`{present, value, type}`: present only when main returned and its value was kept."""
    if res is None or (res.status != "success" and res.resource_limit_type != "artifacts"):
        return None
    kept = not res.return_value_truncated and (
        res.return_value is not None or res.return_value_bytes is not None
    )
    if not kept:
        return {"present": False, "value": None, "type": "json"}
    return {"present": True, "value": res.return_value, "type": "json"}


def artifact_items(files: Sequence[tuple[ArtifactInfo, bytes]]) -> list[dict[str, Any]]:
    """RAGFlow's `artifacts[]`: name, mime_type, size and the bytes as base64."""
    return [
        {
            "name": info.name,
            "mime_type": info.content_type,
            "size": len(data),
            "content_b64": base64.b64encode(data).decode("ascii"),
        }
        for info, data in files
    ]


# ---- results the gateway answers by itself ----------------------------------------------


def too_many_requests() -> OriginalResult:
    return OriginalResult(
        status="program_runner_error",
        stderr=TOO_MANY_REQUESTS,
        exit_code=EXIT_TOO_MANY_REQUESTS,
        detail=TOO_MANY_REQUESTS,
    )


def unsafe_code(issues: Sequence[tuple[str, int]]) -> OriginalResult:
    """`issues` are (description, line) pairs, as the original listed them."""
    return OriginalResult(
        status="program_runner_error",
        stderr="\n".join(f"Line {line}: {what}" for what, line in issues),
        exit_code=EXIT_REJECTED,
        detail=CODE_IS_UNSAFE,
    )


def internal_error(message: str) -> OriginalResult:
    return OriginalResult(
        status="program_runner_error",
        stderr=message,
        exit_code=EXIT_INTERNAL,
        detail=INTERNAL_ERROR,
    )


def unhandled(message: str) -> OriginalResult:
    return OriginalResult(
        status="program_runner_error",
        stderr=message,
        exit_code=EXIT_REJECTED,
        detail=UNHANDLED_EXCEPTION,
    )


def cancelled(message: str) -> OriginalResult:
    return OriginalResult(
        status="program_runner_error", stderr=message, exit_code=EXIT_REJECTED, detail=CANCELLED
    )


# ---- a finished CodeExecution -------------------------------------------------------------


def from_execution(
    done: CodeExecution,
    *,
    keep_failure_stdout: bool = False,
    files: Sequence[tuple[ArtifactInfo, bytes]] = (),
) -> OriginalResult:
    """The answer for a terminal `CodeExecution`: the original's fields, then the current
    contract's `artifacts` and `result`."""
    base = _original(done, keep_failure_stdout=keep_failure_stdout)
    return dataclasses.replace(
        base, artifacts=artifact_items(files), result=structured_result(done.status.result)
    )


def _original(done: CodeExecution, *, keep_failure_stdout: bool) -> OriginalResult:
    res = done.status.result
    message = done.status.message or ""
    if res is None:
        return internal_error(message or "the execution finished without a result")
    reason = _reason(done.status.reason)
    status = res.status if res.status in STATUSES else "program_runner_error"
    time_used_ms = round(res.wall_ms, 3) if res.wall_ms is not None else None
    memory_used_kb = res.peak_memory_bytes / 1024 if res.peak_memory_bytes is not None else None
    if status == "success":
        stdout = res.stdout
        printed = printed_return_value(res.return_value, done.spec.language)
        if printed is not None:
            stdout += printed
        return OriginalResult(
            status=status,
            stdout=stdout,
            stderr=_join(res.stderr, *_notes(res)),
            exit_code=0,
            time_used_ms=time_used_ms,
            memory_used_kb=memory_used_kb,
        )
    limit, access, runtime = _subtypes(res)
    detail = res.detail
    if res.resource_limit_type == "processes":
        # The original had no word for it: keep the class, say which limit in `detail`.
        detail = detail or PROCESS_LIMIT
    if res.resource_limit_type == "artifacts":
        detail = detail or ARTIFACT_LIMIT
    return OriginalResult(
        status=status,
        # The original emptied stdout on every failure; its clients take a non-empty stdout
        # as the program's answer (RAGFlow reads stdout first and ignores `status`).
        stdout=res.stdout if keep_failure_stdout else "",
        stderr=_join(res.stderr, _evidence(reason, res, message), *_notes(res)),
        exit_code=_exit_code(reason, res),
        detail=detail,
        resource_limit_type=limit,
        unauthorized_access_type=access,
        runtime_error_type=runtime,
        time_used_ms=time_used_ms,
        memory_used_kb=memory_used_kb,
    )


def _reason(value: str | None) -> Reason | None:
    try:
        return Reason(value or "")
    except ValueError:
        return None


def _subtypes(res: ExecutionResult) -> tuple[str | None, str | None, str | None]:
    # Only the original's values: its clients validate them against closed enums.
    def keep(value: str | None, allowed: frozenset[str]) -> str | None:
        return value if value in allowed else None

    return (
        keep(res.resource_limit_type, RESOURCE_LIMIT_TYPES),
        keep(res.unauthorized_access_type, UNAUTHORIZED_ACCESS_TYPES),
        keep(res.runtime_error_type, RUNTIME_ERROR_TYPES),
    )


def _is_memory_error(res: ExecutionResult) -> bool:
    # An allocation failure surfaced as an exception: the original saw the program exit 1
    # with "MemoryError" on stderr and kept the program's exit code.
    return res.error is not None and res.error.type == "MemoryError"


def _program_exit(res: ExecutionResult) -> int | None:
    if res.exit_code:
        return res.exit_code
    if res.signal:
        return 128 + res.signal  # what `timeout` and `docker exec` reported for a signal
    return None


def _exit_code(reason: Reason | None, res: ExecutionResult) -> int:
    if reason is Reason.MEMORY_LIMIT and _is_memory_error(res):
        return _program_exit(res) or 1
    if reason in _RUNNER_EXIT:
        return _RUNNER_EXIT[reason]
    if reason is None and res.status == "program_runner_error":
        return EXIT_REJECTED
    # The program failed by itself: the original only got here with a non-zero exit.
    return _program_exit(res) or 1


def _evidence(reason: Reason | None, res: ExecutionResult, message: str) -> str | None:
    """What stderr must add so that every failure explains itself."""
    if reason is Reason.NON_ZERO_EXIT:
        # The program chose its exit code: its own stderr tells why, unless it said nothing,
        # and a silent failure would pass for an empty success with the original's clients.
        return None if res.stderr.strip() else message or f"exit code {res.exit_code}"
    err = res.error
    if err is not None and err.traceback:
        return err.traceback
    if _is_memory_error(res):
        return "MemoryError"  # the last line of Python's own report, which the original kept
    if reason in _RUNNER_WORDS:
        return _RUNNER_WORDS[reason]
    if message:
        return message
    if err is not None:
        return f"{err.type}: {err.message}" if err.message else err.type
    return None


def _notes(res: ExecutionResult) -> list[str]:
    notes = []
    for name, text, total, truncated in (
        ("stdout", res.stdout, res.stdout_bytes, res.stdout_truncated),
        ("stderr", res.stderr, res.stderr_bytes, res.stderr_truncated),
    ):
        if truncated:
            kept = len(text.encode())
            notes.append(f"[codeexec] {name} truncated: kept the first {kept} of {total} bytes")
    if res.return_value_truncated:
        notes.append(
            f"[codeexec] main's return value was not kept ({res.why_not_stored()}) "
            "and is not printed"
        )
    return notes


def _join(base: str, *extra: str | None) -> str:
    out = base
    for part in extra:
        if not part or part.strip() in out:
            continue
        if out and not out.endswith("\n"):
            out += "\n"
        out += part
    return out


# ---- main's return value, printed as the original's runners printed it --------------------


def printed_return_value(value: Any, language: str) -> str | None:
    """The line the original's runner appended to stdout, or None when it printed nothing.

    Python: `if result is not None: print(result)`, i.e. `str(value)` and a newline; the
    JSON value round-trips to the same Python objects except tuples (lists here), non-string
    dict keys (strings here) and whole floats (Kubernetes stores 2.0 as 2).
    Node.js: strings are printed raw, as `console.log` did; every other value as
    `JSON.stringify` writes it, where the original's `console.log` wrote Node's inspect
    format that no client could parse. `null` and `undefined` print nothing.
    """
    if value is None:
        return None
    if language == "nodejs":
        return (value if isinstance(value, str) else js_json(value)) + "\n"
    return f"{value}\n"


def js_json(value: Any) -> str:
    """`JSON.stringify(value)` for a JSON value (numbers as JavaScript prints them)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return js_number(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list | tuple):
        return "[" + ",".join(js_json(v) for v in value) + "]"
    if isinstance(value, dict):
        items = (f"{json.dumps(str(k), ensure_ascii=False)}:{js_json(v)}" for k, v in value.items())
        return "{" + ",".join(items) + "}"
    return json.dumps(str(value), ensure_ascii=False)


def js_number(value: int | float) -> str:
    """ECMAScript `Number::toString` (radix 10): shortest round-trip digits, JS exponent rules."""
    if isinstance(value, int) and abs(value) < 10**21:
        return str(value)
    number = float(value)
    if math.isnan(number) or math.isinf(number):
        return "null"  # what JSON.stringify writes for them
    if number == 0:
        return "0"
    sign = "-" if number < 0 else ""
    # repr gives the shortest digits that round-trip, as ECMAScript requires.
    _, digit_tuple, exponent = Decimal(repr(abs(number))).as_tuple()
    digits = "".join(map(str, digit_tuple)).rstrip("0") or "0"
    assert isinstance(exponent, int)
    k = len(digits)
    n = exponent + len(digit_tuple)  # the decimal point sits after n digits
    if k <= n <= 21:
        text = digits + "0" * (n - k)
    elif 0 < n <= 21:
        text = f"{digits[:n]}.{digits[n:]}"
    elif -6 < n <= 0:
        text = "0." + "0" * (-n) + digits
    else:
        e = n - 1
        mantissa = digits if k == 1 else f"{digits[0]}.{digits[1:]}"
        text = f"{mantissa}e{'+' if e >= 0 else '-'}{abs(e)}"
    return sign + text
