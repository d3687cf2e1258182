"""classify(): every reason of outcomes.md from the evidence that proves it, and no other."""

from __future__ import annotations

import signal
from typing import Any

import pytest

from codeexec.outcomes import SEED, Evidence, Reason, Terminated, classify
from codeexec.protocol import Report, Stream


def report(**kw: Any) -> Report:
    base: dict[str, Any] = {"started": True, "exit_code": 0}
    base.update(kw)
    return Report(**base)


def error(phase: str = "run", type_: str = "ValueError", **kw: Any) -> dict[str, Any]:
    return {"kind": "error", "phase": phase, "type": type_, "message": kw.pop("message", "m"), **kw}


CASES: list[tuple[str, Evidence, Reason]] = [
    (
        "returned",
        Evidence(report=report(result={"kind": "returned", "value": 10})),
        Reason.SUCCEEDED,
    ),
    ("exit 0 before returning", Evidence(report=report()), Reason.SUCCEEDED),
    (
        "syntax",
        Evidence(report=report(exit_code=1, result=error("compile", "SyntaxError", line=2))),
        Reason.SYNTAX_ERROR,
    ),
    (
        "no main",
        Evidence(report=report(exit_code=1, result=error("entrypoint", "TypeError"))),
        Reason.ENTRYPOINT_ERROR,
    ),
    (
        "set returned",
        Evidence(report=report(exit_code=1, result=error("serialize", "set"))),
        Reason.RESULT_NOT_SERIALIZABLE,
    ),
    ("exception", Evidence(report=report(exit_code=1, result=error())), Reason.USER_EXCEPTION),
    (
        "message says permission denied",
        Evidence(report=report(exit_code=1, result=error(message="Permission denied"))),
        Reason.USER_EXCEPTION,
    ),
    ("sys.exit(3)", Evidence(report=report(exit_code=3)), Reason.NON_ZERO_EXIT),
    (
        "self SIGKILL",
        Evidence(report=report(exit_code=None, signal=signal.SIGKILL)),
        Reason.SIGNALED,
    ),
    ("segfault", Evidence(report=report(exit_code=None, signal=signal.SIGSEGV)), Reason.SIGNALED),
    (
        "seccomp SIGSYS",
        Evidence(report=report(exit_code=None, signal=signal.SIGSYS)),
        Reason.DISALLOWED_SYSCALL,
    ),
    (
        "runner timeout",
        Evidence(report=report(exit_code=None, signal=signal.SIGKILL, timed_out=True)),
        Reason.WALL_TIMEOUT,
    ),
    (
        "cgroup oom kill",
        Evidence(report=report(exit_code=None, signal=signal.SIGKILL, oom_killed=True)),
        Reason.MEMORY_LIMIT,
    ),
    (
        "MemoryError",
        Evidence(report=report(exit_code=1, result=error(type_="MemoryError"))),
        Reason.MEMORY_LIMIT,
    ),
    (
        "node heap abort",
        Evidence(
            language="nodejs",
            report=report(
                exit_code=None,
                signal=signal.SIGABRT,
                stderr=Stream(
                    "FATAL ERROR: Reached heap limit ... JavaScript heap out of memory", 60
                ),
            ),
        ),
        Reason.MEMORY_LIMIT,
    ),
    (
        "python abort is not memory",
        Evidence(
            report=report(
                exit_code=None, signal=signal.SIGABRT, stderr=Stream("heap out of memory", 18)
            )
        ),
        Reason.SIGNALED,
    ),
    (
        "output flood",
        Evidence(report=report(exit_code=None, signal=signal.SIGKILL, output_limited=True)),
        Reason.OUTPUT_LIMIT,
    ),
    (
        "fork EAGAIN",
        Evidence(
            report=report(
                exit_code=1, result=error(type_="BlockingIOError", errno=11, code="EAGAIN")
            )
        ),
        Reason.PROCESS_LIMIT,
    ),
    (
        "node spawn EAGAIN",
        Evidence(
            language="nodejs",
            report=report(exit_code=1, result=error(type_="Error", code="EAGAIN", syscall="spawn")),
        ),
        Reason.PROCESS_LIMIT,
    ),
    (
        "thread limit",
        Evidence(
            report=report(
                exit_code=1, result=error(type_="RuntimeError", message="can't start new thread")
            )
        ),
        Reason.PROCESS_LIMIT,
    ),
    (
        "EACCES",
        Evidence(
            report=report(
                exit_code=1, result=error(type_="PermissionError", errno=13, code="EACCES")
            )
        ),
        Reason.PERMISSION_DENIED,
    ),
    (
        "EROFS",
        Evidence(report=report(exit_code=1, result=error(type_="OSError", errno=30, code="EROFS"))),
        Reason.PERMISSION_DENIED,
    ),
    (
        "EPERM",
        Evidence(
            report=report(exit_code=1, result=error(type_="PermissionError", errno=1, code="EPERM"))
        ),
        Reason.DISALLOWED_SYSCALL,
    ),
    (
        "refused",
        Evidence(
            report=report(
                exit_code=1,
                result=error(type_="ConnectionRefusedError", errno=111, code="ECONNREFUSED"),
            )
        ),
        Reason.NETWORK_BLOCKED,
    ),
    (
        "wrapped name resolution",
        Evidence(
            report=report(
                exit_code=1,
                result=error(type_="URLError", causes=[{"type": "gaierror", "code": "EAI_AGAIN"}]),
            )
        ),
        Reason.NETWORK_BLOCKED,
    ),
    (
        "socket timeout",
        Evidence(
            report=report(exit_code=1, result=error(type_="TimeoutError", message="timed out"))
        ),
        Reason.NETWORK_BLOCKED,
    ),
    (
        "refused with network allowed",
        Evidence(
            network_allowed=True,
            report=report(
                exit_code=1, result=error(type_="ConnectionRefusedError", code="ECONNREFUSED")
            ),
        ),
        Reason.USER_EXCEPTION,
    ),
    (
        "container OOMKilled",
        Evidence(terminated=Terminated(137, None, "OOMKilled"), code_started=True),
        Reason.MEMORY_LIMIT,
    ),
    (
        "kubelet deadline",
        Evidence(pod_reason="DeadlineExceeded", code_started=True),
        Reason.WALL_TIMEOUT,
    ),
    ("operator deadline", Evidence(operator_deadline=True), Reason.WALL_TIMEOUT),
    (
        "137 without OOMKilled is not memory",
        Evidence(terminated=Terminated(137, None, "Error"), code_started=True),
        Reason.SANDBOX_ERROR,
    ),
    ("pod vanished", Evidence(pod_gone=True), Reason.SANDBOX_ERROR),
    ("evicted", Evidence(pod_reason="Evicted", code_started=False), Reason.SANDBOX_ERROR),
    (
        "runner refused request",
        Evidence(report=Report(started=False, protocol_error="bad json")),
        Reason.SANDBOX_ERROR,
    ),
    ("cancelled", Evidence(cancelled=True, report=report()), Reason.CANCELLED),
]


@pytest.mark.parametrize(("evidence", "reason"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_classify(evidence: Evidence, reason: Reason) -> None:
    assert classify(evidence).reason is reason


def test_every_reason_has_a_seed_class() -> None:
    assert set(SEED) == set(Reason)


@pytest.mark.parametrize(
    ("reason", "status", "sub"),
    [
        (Reason.SUCCEEDED, "success", None),
        (Reason.USER_EXCEPTION, "program_error", ("runtime_error_type", "nonzero_exit")),
        (Reason.SIGNALED, "runtime_error", ("runtime_error_type", "signalled")),
        (Reason.WALL_TIMEOUT, "resource_limit_exceeded", ("resource_limit_type", "time")),
        (Reason.MEMORY_LIMIT, "resource_limit_exceeded", ("resource_limit_type", "memory")),
        (Reason.OUTPUT_LIMIT, "resource_limit_exceeded", ("resource_limit_type", "output")),
        (
            Reason.PERMISSION_DENIED,
            "unauthorized_access",
            ("unauthorized_access_type", "file_access"),
        ),
        (
            Reason.DISALLOWED_SYSCALL,
            "unauthorized_access",
            ("unauthorized_access_type", "disallowed_syscall"),
        ),
        (
            Reason.NETWORK_BLOCKED,
            "unauthorized_access",
            ("unauthorized_access_type", "network_access"),
        ),
        (Reason.POOL_EXHAUSTED, "program_runner_error", ("detail", "no_available_container")),
    ],
)
def test_seed_mapping(reason: Reason, status: str, sub: tuple[str, str] | None) -> None:
    seed = SEED[reason]
    assert seed.status == status
    if sub:
        assert getattr(seed, sub[0]) == sub[1]


def test_stdout_text_never_changes_the_class() -> None:
    forged = Stream("Permission denied\nMemoryError\nOperation not permitted\nCXR1 {}", 60)
    ev = Evidence(report=report(exit_code=1, result=error(), stdout=forged, stderr=forged))
    assert classify(ev).reason is Reason.USER_EXCEPTION
