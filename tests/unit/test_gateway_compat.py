"""gateway.compat: every reason maps to the original's values; main's return value is printed
as the original's runners printed it; runner-side outcomes get the original's negative codes.

Executions are built the way the operator builds them (status.result / status.finished from a
runner report) and read back through JSON, as the gateway reads them from the API server.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pytest

from codeexec import status as st
from codeexec.api.models import CodeExecution
from codeexec.gateway import compat
from codeexec.outcomes import Outcome, Reason
from codeexec.protocol import Report

ORIGINAL_FIELDS = [
    "status",
    "stdout",
    "stderr",
    "exit_code",
    "detail",
    "time_used_ms",
    "memory_used_kb",
    "resource_limit_type",
    "unauthorized_access_type",
    "runtime_error_type",
]
PY_TRACEBACK = (
    'Traceback (most recent call last):\n  File "main.py", line 2, in main\nValueError: boom\n'
)


def finished(
    reason: Reason,
    message: str = "",
    report: dict[str, Any] | None = None,
    *,
    language: str = "python",
) -> CodeExecution:
    outcome = Outcome(reason, message or f"message of {reason.value}")
    rep = Report.from_json(report) if report is not None else None
    result = st.result(outcome, rep, started=rep.started if rep else False)
    status = st.finished(outcome, result, created_at=None, generation=1)
    body = {
        "metadata": {"name": "gw-test", "namespace": "ns", "uid": "u"},
        "spec": {"language": language, "code": "x"},
        "status": status,
    }
    return CodeExecution.from_body(json.loads(json.dumps(body)))


def run(
    *,
    exit_code: int | None = 1,
    signal: int | None = None,
    result: dict[str, Any] | None = None,
    stdout: str = "",
    stderr: str = "",
    **flags: Any,
) -> dict[str, Any]:
    """A runner report of a program that started."""
    return {
        "started": True,
        "exit": {"code": exit_code, "signal": signal},
        "result": result,
        "stdout": {"text": stdout, "bytes": len(stdout.encode())},
        "stderr": {"text": stderr, "bytes": len(stderr.encode())},
        "usage": {"wallMs": 12.5, "cgroupPeakBytes": 4 * 1024 * 1024},
        **flags,
    }


def error(
    phase: str, type_: str, message: str = "", traceback: str | None = None, **kw: Any
) -> dict[str, Any]:
    return {
        "kind": "error",
        "phase": phase,
        "type": type_,
        "message": message,
        "traceback": traceback,
        **kw,
    }


@dataclass(frozen=True)
class Case:
    id: str
    reason: Reason
    report: dict[str, Any] | None
    expect: dict[str, Any]
    message: str = ""
    language: str = "python"
    stderr_has: list[str] = field(default_factory=list)


PROGRAM_ERROR = {"status": "program_error", "runtime_error_type": "nonzero_exit"}
CASES = [
    Case(
        "succeeded",
        Reason.SUCCEEDED,
        run(exit_code=0, result={"kind": "returned", "value": 10}),
        {"status": "success", "stdout": "10\n", "stderr": "", "exit_code": 0, "detail": None},
    ),
    Case(
        "syntax-error",
        Reason.SYNTAX_ERROR,
        run(
            result=error(
                "compile",
                "SyntaxError",
                "invalid syntax",
                '  File "main.py", line 1\nSyntaxError: invalid syntax\n',
                line=1,
            )
        ),
        {**PROGRAM_ERROR, "stdout": "", "exit_code": 1},
        stderr_has=["SyntaxError: invalid syntax"],
    ),
    Case(
        "entrypoint-error",
        Reason.ENTRYPOINT_ERROR,
        run(result=error("entrypoint", "MainNotFound", "the code defines no `main`")),
        {**PROGRAM_ERROR, "exit_code": 1, "stderr": "the code defines no `main`"},
        message="the code defines no `main`",
    ),
    Case(
        "user-exception",
        Reason.USER_EXCEPTION,
        run(
            stdout="partial\n",
            stderr="warn\n",
            result=error("run", "ValueError", "boom", PY_TRACEBACK),
        ),
        {**PROGRAM_ERROR, "exit_code": 1, "stdout": "", "stderr": "warn\n" + PY_TRACEBACK},
    ),
    Case(
        "result-not-serializable",
        Reason.RESULT_NOT_SERIALIZABLE,
        run(result=error("serialize", "set", "the return value at main() is a set")),
        {**PROGRAM_ERROR, "exit_code": 1, "stderr": "main returned a value that is not JSON (set)"},
        message="main returned a value that is not JSON (set)",
    ),
    Case(
        "non-zero-exit",
        Reason.NON_ZERO_EXIT,
        run(exit_code=3),
        {**PROGRAM_ERROR, "exit_code": 3, "stdout": "", "stderr": "the program exited with code 3"},
        message="the program exited with code 3",
    ),
    Case(
        "signaled",
        Reason.SIGNALED,
        run(exit_code=None, signal=11),
        {"status": "runtime_error", "runtime_error_type": "signalled", "exit_code": 139},
        message="the program was killed by SIGSEGV",
        stderr_has=["SIGSEGV"],
    ),
    Case(
        "wall-timeout",
        Reason.WALL_TIMEOUT,
        run(exit_code=None, signal=9, stdout="started\n", timedOut=True),
        {
            "status": "resource_limit_exceeded",
            "resource_limit_type": "time",
            "exit_code": -124,
            "stdout": "",
            "stderr": "Execution timeout",
        },
    ),
    Case(
        "memory-oom-killed",
        Reason.MEMORY_LIMIT,
        run(exit_code=None, signal=9, oomKilled=True),
        {
            "status": "resource_limit_exceeded",
            "resource_limit_type": "memory",
            "exit_code": -137,
            "stderr": "Memory limit exceeded (killed by OOM)",
        },
    ),
    Case(
        "output-limit",
        Reason.OUTPUT_LIMIT,
        run(exit_code=None, signal=9, stdout="x" * 100, outputLimited=True),
        {
            "status": "resource_limit_exceeded",
            "resource_limit_type": "output",
            "exit_code": -153,
            "stdout": "",
            "stderr": "Output limit exceeded",
        },
    ),
    Case(
        "artifact-limit",
        Reason.ARTIFACT_LIMIT,
        run(
            exit_code=0,
            stdout="done",
            result={"kind": "returned", "value": 1},
            artifactLimit={"kind": "count", "skipped": ["x"], "skippedCount": 1, "maxFiles": 10},
        ),
        {
            "status": "resource_limit_exceeded",
            "detail": "artifact_limit",
            "exit_code": -413,
            "stdout": "",
        },
        message="the artifacts were more than 10 files; 1 left out, the rest kept",
        stderr_has=["more than 10 files"],
    ),
    Case(
        "process-limit",
        Reason.PROCESS_LIMIT,
        run(
            result=error(
                "run",
                "BlockingIOError",
                "Resource temporarily unavailable",
                code="EAGAIN",
                syscall="fork",
            )
        ),
        {
            "status": "resource_limit_exceeded",
            "resource_limit_type": None,
            "detail": "process_limit",
            "exit_code": 1,
        },
        message="process limit reached: BlockingIOError: Resource temporarily unavailable",
    ),
    Case(
        "permission-denied",
        Reason.PERMISSION_DENIED,
        run(
            result=error(
                "run",
                "PermissionError",
                "[Errno 13] Permission denied: '/owned'",
                "PermissionError: [Errno 13] Permission denied: '/owned'\n",
                code="EACCES",
            )
        ),
        {
            "status": "unauthorized_access",
            "unauthorized_access_type": "file_access",
            "exit_code": 1,
        },
        stderr_has=["Permission denied"],
    ),
    Case(
        "disallowed-syscall",
        Reason.DISALLOWED_SYSCALL,
        run(
            result=error(
                "run",
                "PermissionError",
                "[Errno 1] Operation not permitted",
                "PermissionError: [Errno 1] Operation not permitted\n",
                code="EPERM",
            )
        ),
        {
            "status": "unauthorized_access",
            "unauthorized_access_type": "disallowed_syscall",
            "exit_code": 1,
        },
        stderr_has=["Operation not permitted"],
    ),
    Case(
        "network-blocked",
        Reason.NETWORK_BLOCKED,
        run(
            result=error(
                "run",
                "ConnectionRefusedError",
                "[Errno 111] Connection refused",
                "ConnectionRefusedError: [Errno 111] Connection refused\n",
                code="ECONNREFUSED",
            )
        ),
        {
            "status": "unauthorized_access",
            "unauthorized_access_type": "network_access",
            "exit_code": 1,
        },
        stderr_has=["Connection refused"],
    ),
    Case(
        "invalid-request",
        Reason.INVALID_REQUEST,
        None,
        {
            "status": "program_runner_error",
            "detail": "invalid_request",
            "exit_code": -999,
            "stderr": "pool nope does not exist",
        },
        message="pool nope does not exist",
    ),
    Case(
        "pool-exhausted",
        Reason.POOL_EXHAUSTED,
        None,
        {
            "status": "program_runner_error",
            "detail": "no_available_container",
            "exit_code": -10,
            "stdout": "",
            "stderr": "Container pool is busy",
            "time_used_ms": None,
            "memory_used_kb": None,
        },
    ),
    Case(
        "sandbox-error",
        Reason.SANDBOX_ERROR,
        None,
        {
            "status": "program_runner_error",
            "detail": "internal_error",
            "exit_code": -3,
            "stderr": "the sandbox pod was evicted",
        },
        message="the sandbox pod was evicted",
    ),
    Case(
        "cancelled",
        Reason.CANCELLED,
        None,
        {"status": "program_runner_error", "detail": "cancelled", "exit_code": -999},
        message="the execution was cancelled before it finished",
        stderr_has=["cancelled"],
    ),
]


def test_every_reason_has_a_case() -> None:
    assert {c.reason for c in CASES} == set(Reason)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_reason_maps_to_the_originals_values(case: Case) -> None:
    got = compat.from_execution(
        finished(case.reason, case.message, case.report, language=case.language)
    ).to_json()
    for key, value in case.expect.items():
        assert got[key] == value, f"{key}: {got}"
    for text in case.stderr_has:
        assert text in got["stderr"], got
    # Sub-types the case does not name stay unset, as the original left them.
    for key in ("resource_limit_type", "unauthorized_access_type", "runtime_error_type"):
        if key not in case.expect:
            assert got[key] is None, f"{key}: {got}"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_result_uses_only_the_originals_vocabulary(case: Case) -> None:
    got = compat.from_execution(finished(case.reason, case.message, case.report)).to_json()
    # The original's fields in its order, then a current RAGFlow's.
    assert list(got) == [*ORIGINAL_FIELDS, "artifacts", "result"]
    assert got["status"] in compat.STATUSES
    assert got["resource_limit_type"] in (None, *compat.RESOURCE_LIMIT_TYPES)
    assert got["unauthorized_access_type"] in (None, *compat.UNAUTHORIZED_ACCESS_TYPES)
    assert got["runtime_error_type"] in (None, *compat.RUNTIME_ERROR_TYPES)


@pytest.mark.parametrize(
    "case", [c for c in CASES if c.reason is not Reason.SUCCEEDED], ids=lambda c: c.id
)
def test_every_failure_explains_itself_on_stderr_with_empty_stdout(case: Case) -> None:
    # Clients of the original (RAGFlow) take stdout as the answer and stderr as the error.
    got = compat.from_execution(finished(case.reason, case.message, case.report))
    assert got.stdout == "" and got.stderr.strip()


def test_failure_stdout_can_be_kept() -> None:
    done = finished(
        Reason.WALL_TIMEOUT, report=run(exit_code=None, signal=9, stdout="started\n", timedOut=True)
    )
    got = compat.from_execution(done, keep_failure_stdout=True)
    assert got.stdout == "started\n" and got.stderr == "Execution timeout"


def test_timeout_keeps_the_programs_stderr_before_the_originals_word() -> None:
    done = finished(
        Reason.WALL_TIMEOUT, report=run(exit_code=None, signal=9, stderr="working", timedOut=True)
    )
    assert compat.from_execution(done).stderr == "working\nExecution timeout"


def test_memory_error_keeps_the_programs_exit_code_as_the_original_did() -> None:
    report = run(result=error("run", "MemoryError"))
    got = compat.from_execution(finished(Reason.MEMORY_LIMIT, report=report))
    assert (got.status, got.resource_limit_type, got.exit_code) == (
        "resource_limit_exceeded",
        "memory",
        1,
    )
    assert got.stderr == "MemoryError"


def test_seccomp_kill_reports_the_shells_exit_code() -> None:
    got = compat.from_execution(
        finished(Reason.DISALLOWED_SYSCALL, "forbidden system call", run(exit_code=None, signal=31))
    )
    assert got.exit_code == 128 + 31 and got.unauthorized_access_type == "disallowed_syscall"


def test_usage_is_reported_in_the_originals_units() -> None:
    got = compat.from_execution(
        finished(Reason.SUCCEEDED, report=run(exit_code=0, result={"kind": "returned", "value": 1}))
    )
    assert got.time_used_ms == 12.5 and got.memory_used_kb == 4096.0


def test_program_output_precedes_the_printed_return_value() -> None:
    report = run(
        exit_code=0, stdout="partial", stderr="note\n", result={"kind": "returned", "value": 10}
    )
    got = compat.from_execution(finished(Reason.SUCCEEDED, report=report))
    assert got.stdout == "partial10\n" and got.stderr == "note\n"


def test_none_returned_prints_nothing() -> None:
    report = run(exit_code=0, stdout="hi\n", result={"kind": "returned", "value": None})
    assert compat.from_execution(finished(Reason.SUCCEEDED, report=report)).stdout == "hi\n"


def test_exit_zero_before_main_returned_prints_nothing() -> None:
    report = run(exit_code=0, stdout="bye\n", result=None)
    got = compat.from_execution(finished(Reason.SUCCEEDED, report=report))
    assert (got.status, got.stdout, got.exit_code) == ("success", "bye\n", 0)


def test_return_value_too_large_to_keep_is_noted_on_stderr() -> None:
    report = run(
        exit_code=0, result={"kind": "returned", "value": "y" * (st.MAX_RETURN_VALUE_BYTES + 1)}
    )
    got = compat.from_execution(finished(Reason.SUCCEEDED, report=report))
    assert got.status == "success" and got.stdout == ""
    assert "return value" in got.stderr and "not printed" in got.stderr


def test_truncated_stream_is_noted_on_stderr() -> None:
    report = run(exit_code=0, stdout="head", result=None)
    report["stdout"] = {"text": "head", "bytes": 100_000, "truncated": True}
    got = compat.from_execution(finished(Reason.SUCCEEDED, report=report))
    assert (
        got.stdout == "head" and "stdout truncated: kept the first 4 of 100000 bytes" in got.stderr
    )


# ---- the return value, printed --------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "printed"),
    [
        (10, "10\n"),
        ("hello", "hello\n"),
        ("", "\n"),
        (0, "0\n"),
        (False, "False\n"),
        (True, "True\n"),
        (1.5, "1.5\n"),
        ([], "[]\n"),
        ([1, "a", None, True], "[1, 'a', None, True]\n"),
        ({"a": 1, "b": {"c": [2.5]}}, "{'a': 1, 'b': {'c': [2.5]}}\n"),
        (["it's"], '["it\'s"]\n'),
        ("héllo\nworld", "héllo\nworld\n"),
        (None, None),
    ],
)
def test_python_prints_str_of_the_value(value: Any, printed: str | None) -> None:
    assert compat.printed_return_value(value, "python") == printed


def test_python_printed_value_parses_back_as_the_original_clients_parse_it() -> None:
    import ast

    value = {"result": [1, 2.5, "x", None, True], "nested": {"k": "v"}}
    printed = compat.printed_return_value(value, "python")
    assert printed is not None and ast.literal_eval(printed.strip()) == value


@pytest.mark.parametrize(
    ("value", "printed"),
    [
        ("hi", "hi\n"),  # console.log prints strings raw
        ("", "\n"),
        (42, "42\n"),
        (0, "0\n"),
        (False, "false\n"),
        (2.5, "2.5\n"),
        ({"a": "b"}, '{"a":"b"}\n'),
        ([1, 2.5, None, True, "x"], '[1,2.5,null,true,"x"]\n'),
        ({"s": 'q"\n\u00e9'}, '{"s":"q\\"\\n\u00e9"}\n'),
        (None, None),
    ],
)
def test_nodejs_prints_strings_raw_and_other_values_as_json(
    value: Any, printed: str | None
) -> None:
    assert compat.printed_return_value(value, "nodejs") == printed


@pytest.mark.parametrize(
    ("number", "text"),
    [
        (1e21, "1e+21"),
        (1.5e22, "1.5e+22"),
        (1e16, "10000000000000000"),
        (123456789012345680000.0, "123456789012345680000"),
        (1e-7, "1e-7"),
        (1.25e-7, "1.25e-7"),
        (0.000001, "0.000001"),
        (0.1, "0.1"),
        (-1.5, "-1.5"),
        (100.0, "100"),
        (0.0, "0"),
        (10**21, "1e+21"),
        (-(10**3), "-1000"),
    ],
)
def test_js_number_follows_ecmascript_number_to_string(number: float, text: str) -> None:
    assert compat.js_number(number) == text


def test_nodejs_nested_numbers_use_javascript_formatting() -> None:
    assert (
        compat.printed_return_value({"small": 1e-7, "big": 1e21}, "nodejs")
        == '{"small":1e-7,"big":1e+21}\n'
    )


# ---- answers the gateway gives by itself ----------------------------------------------------


def test_too_many_requests_is_the_originals_answer() -> None:
    assert compat.too_many_requests().to_json() == {
        "status": "program_runner_error",
        "stdout": "",
        "stderr": "Too many requests, please try again later",
        "exit_code": -429,
        "detail": "Too many requests, please try again later",
        "time_used_ms": None,
        "memory_used_kb": None,
        "resource_limit_type": None,
        "unauthorized_access_type": None,
        "runtime_error_type": None,
        "artifacts": [],
        "result": None,
    }


def test_unsafe_code_is_the_originals_answer() -> None:
    got = compat.unsafe_code([("Import: os", 1), ("Call: eval", 3)]).to_json()
    assert got["status"] == "program_runner_error" and got["exit_code"] == -999
    assert got["detail"] == "Code is unsafe"
    assert got["stderr"] == "Line 1: Import: os\nLine 3: Call: eval" and got["stdout"] == ""


@pytest.mark.parametrize(
    ("result", "exit_code", "detail"),
    [
        (compat.internal_error("api down"), -3, "internal_error"),
        (compat.unhandled("bug"), -999, "unhandled_exception"),
        (compat.cancelled("deleted"), -999, "cancelled"),
    ],
)
def test_gateway_side_failures_use_runner_codes(
    result: compat.OriginalResult, exit_code: int, detail: str
) -> None:
    assert (result.status, result.exit_code, result.detail) == (
        "program_runner_error",
        exit_code,
        detail,
    )
    assert result.stderr


def test_execution_without_result_is_an_internal_error() -> None:
    body = {
        "metadata": {"name": "gw-x", "namespace": "ns", "uid": "u"},
        "spec": {"language": "python", "code": "x"},
        "status": {"phase": "Failed", "reason": "SandboxError", "message": "lost"},
    }
    got = compat.from_execution(CodeExecution.from_body(body))
    assert (got.status, got.exit_code, got.detail, got.stderr) == (
        "program_runner_error",
        -3,
        "internal_error",
        "lost",
    )


def test_non_zero_exit_keeps_the_programs_own_words_alone() -> None:
    report = run(exit_code=2, stderr="usage: tool [-h]\n")
    got = compat.from_execution(finished(Reason.NON_ZERO_EXIT, "exited with code 2", report))
    assert (got.exit_code, got.stderr) == (2, "usage: tool [-h]\n")


def test_the_status_vocabulary_is_exactly_the_originals() -> None:
    """The seed contract's words, stated here, not taken from the implementation: a word the
    original never sent would break its clients. Caught: adding a seventh status word to
    compat.STATUSES made this fail."""
    assert {
        "success",
        "program_error",
        "resource_limit_exceeded",
        "unauthorized_access",
        "runtime_error",
        "program_runner_error",
    } == compat.STATUSES
    assert {"time", "memory", "output"} == compat.RESOURCE_LIMIT_TYPES
    assert {
        "disallowed_syscall",
        "file_access",
        "network_access",
    } == compat.UNAUTHORIZED_ACCESS_TYPES
    assert {"signalled", "nonzero_exit"} == compat.RUNTIME_ERROR_TYPES
