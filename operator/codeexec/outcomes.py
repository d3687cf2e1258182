"""How an execution ended: the reasons, their seed-contract mapping, and `classify`.

Pure. A resource or access reason needs evidence the program cannot forge: the supervisor's
own deadline and output counters, the wait status (SIGSYS and SIGXFSZ reach the program only
from the kernel: its seccomp filter refuses to let it send them), and the kernel's counters in
the report's `evidence` (cgroup OOM kills, memory-limit hits and task peak, the network
namespace's IP packets, the sandbox's real file permissions); when the report is missing, the
container's `state.terminated` and the pod's status. The program's own error record (type,
errno, code, message) only says *which* limit, never *whether*: an error the program built
itself stays a UserException. Nothing here reads the user's stdout or stderr for meaning.
"""

from __future__ import annotations

import signal as _signal
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from codeexec.protocol import Report


class Reason(StrEnum):
    SUCCEEDED = "Succeeded"
    SYNTAX_ERROR = "SyntaxError"
    ENTRYPOINT_ERROR = "EntrypointError"
    USER_EXCEPTION = "UserException"
    RESULT_NOT_SERIALIZABLE = "ResultNotSerializable"
    NON_ZERO_EXIT = "NonZeroExit"
    SIGNALED = "Signaled"
    WALL_TIMEOUT = "WallTimeout"
    MEMORY_LIMIT = "MemoryLimit"
    OUTPUT_LIMIT = "OutputLimit"
    PROCESS_LIMIT = "ProcessLimit"
    ARTIFACT_LIMIT = "ArtifactLimit"
    PERMISSION_DENIED = "PermissionDenied"
    DISALLOWED_SYSCALL = "DisallowedSyscall"
    NETWORK_BLOCKED = "NetworkBlocked"
    INVALID_REQUEST = "InvalidRequest"
    POOL_EXHAUSTED = "PoolExhausted"
    SANDBOX_ERROR = "SandboxError"
    CANCELLED = "Cancelled"


@dataclass(frozen=True)
class SeedClass:
    """The original sandbox's vocabulary: `status` plus at most one sub-type."""

    status: str
    resource_limit_type: str | None = None
    unauthorized_access_type: str | None = None
    runtime_error_type: str | None = None
    detail: str | None = None


_PROGRAM_ERROR = SeedClass("program_error", runtime_error_type="nonzero_exit")

SEED: dict[Reason, SeedClass] = {
    Reason.SUCCEEDED: SeedClass("success"),
    Reason.SYNTAX_ERROR: _PROGRAM_ERROR,
    Reason.ENTRYPOINT_ERROR: _PROGRAM_ERROR,
    Reason.USER_EXCEPTION: _PROGRAM_ERROR,
    Reason.RESULT_NOT_SERIALIZABLE: _PROGRAM_ERROR,
    Reason.NON_ZERO_EXIT: _PROGRAM_ERROR,
    Reason.SIGNALED: SeedClass("runtime_error", runtime_error_type="signalled"),
    Reason.WALL_TIMEOUT: SeedClass("resource_limit_exceeded", resource_limit_type="time"),
    Reason.MEMORY_LIMIT: SeedClass("resource_limit_exceeded", resource_limit_type="memory"),
    Reason.OUTPUT_LIMIT: SeedClass("resource_limit_exceeded", resource_limit_type="output"),
    Reason.PROCESS_LIMIT: SeedClass("resource_limit_exceeded", resource_limit_type="processes"),
    Reason.ARTIFACT_LIMIT: SeedClass("resource_limit_exceeded", resource_limit_type="artifacts"),
    Reason.PERMISSION_DENIED: SeedClass(
        "unauthorized_access", unauthorized_access_type="file_access"
    ),
    Reason.DISALLOWED_SYSCALL: SeedClass(
        "unauthorized_access", unauthorized_access_type="disallowed_syscall"
    ),
    Reason.NETWORK_BLOCKED: SeedClass(
        "unauthorized_access", unauthorized_access_type="network_access"
    ),
    Reason.INVALID_REQUEST: SeedClass("program_runner_error", detail="invalid_request"),
    Reason.POOL_EXHAUSTED: SeedClass("program_runner_error", detail="no_available_container"),
    Reason.SANDBOX_ERROR: SeedClass("program_runner_error", detail="internal_error"),
    Reason.CANCELLED: SeedClass("program_runner_error", detail="cancelled"),
}

_FILE_ACCESS_CODES = frozenset({"EACCES", "EROFS"})
_NETWORK_CODES = frozenset(
    {
        "ECONNREFUSED",
        "ENETUNREACH",
        "EHOSTUNREACH",
        "ENETDOWN",
        "ETIMEDOUT",
        "ENOTFOUND",
        "EAI_AGAIN",
        "EAI_NONAME",
        "EAI_FAIL",
        "EAI_NODATA",
    }
)
_PROCESS_CODES = frozenset({"EAGAIN"})


@dataclass(frozen=True)
class Terminated:
    """A container's `state.terminated`, as the kubelet reported it."""

    exit_code: int | None
    signal: int | None
    reason: str | None
    message: str | None = None


@dataclass(frozen=True)
class Evidence:
    report: Report | None = None
    # Read from the pod only when the report is missing.
    terminated: Terminated | None = None
    pod_reason: str | None = None
    pod_message: str | None = None
    pod_gone: bool = False
    # metadata.deletionTimestamp was set: someone deleted the pod while it ran.
    pod_deleting: bool = False
    code_started: bool | None = None
    # The pod ran under a user-space kernel (gVisor): the host's OOM killer then ends the
    # whole sandbox, runner included, so a memory overrun leaves no report, only the
    # container's exit (128 or 137), and the kubelet may or may not call it OOMKilled.
    oom_ends_sandbox: bool = False
    # Our own side of the story.
    operator_deadline: bool = False
    cancelled: bool = False
    network_allowed: bool = False
    language: str = "python"


@dataclass(frozen=True)
class Outcome:
    reason: Reason
    message: str

    @property
    def succeeded(self) -> bool:
        return self.reason is Reason.SUCCEEDED

    @property
    def seed(self) -> SeedClass:
        return SEED[self.reason]


def signal_name(number: int | None) -> str | None:
    if number is None:
        return None
    try:
        return _signal.Signals(number).name
    except ValueError:
        return f"SIG{number}"


def classify(ev: Evidence) -> Outcome:
    if ev.cancelled:
        return Outcome(Reason.CANCELLED, "the execution was cancelled before it finished")
    if ev.report is not None and ev.report.started:
        return _from_report(ev.report, ev)
    if ev.report is not None and ev.report.protocol_error:
        return Outcome(
            Reason.SANDBOX_ERROR, f"the runner refused the request: {ev.report.protocol_error}"
        )
    return _from_pod(ev)


def _from_report(r: Report, ev: Evidence) -> Outcome:
    outcome = _from_run(r, ev)
    # A limit on what it left behind matters only to a program that otherwise succeeded: the
    # way it failed says more than a missing file.
    if outcome.succeeded and r.artifact_limit is not None:
        return Outcome(Reason.ARTIFACT_LIMIT, artifact_limit_message(r.artifact_limit))
    return outcome


def artifact_limit_message(limit: dict[str, Any]) -> str:
    """What the runner's `artifactLimit` record says, in words."""
    kind = limit.get("kind")
    what = {
        "count": f"more than {limit.get('maxFiles')} files",
        "fileSize": f"a file over {limit.get('maxFileBytes')} bytes",
        "totalSize": f"more than {limit.get('maxTotalBytes')} bytes in all",
    }.get(str(kind), "over a limit")
    skipped = limit.get("skippedCount")
    return f"the artifacts were {what}; {skipped} left out, the rest kept"


def _from_run(r: Report, ev: Evidence) -> Outcome:
    error = r.result if r.result and r.result.get("kind") == "error" else None
    # The supervisor's deadline fired while the program ran: whatever it raised or how it died
    # afterwards (a SIGTERM handler raising MemoryError) is not evidence of anything else.
    if r.timed_out:
        return Outcome(Reason.WALL_TIMEOUT, "the program ran past its time limit and was stopped")
    if r.oom_killed:
        return Outcome(Reason.MEMORY_LIMIT, "the program ran out of memory")
    if r.output_limited:
        return Outcome(
            Reason.OUTPUT_LIMIT, "the program's output passed the limit and it was stopped"
        )
    if r.signal is not None:
        if r.signal == _signal.SIGSYS:
            return Outcome(Reason.DISALLOWED_SYSCALL, "the program made a forbidden system call")
        if r.signal == _signal.SIGXFSZ:
            return Outcome(
                Reason.OUTPUT_LIMIT, "a file the program wrote reached the sandbox's size limit"
            )
        if r.signal == _signal.SIGABRT and ev.language == "nodejs" and _memory_full(r):
            # V8 aborts at its heap limit; the abort counts only if the cgroup was at its limit.
            return Outcome(Reason.MEMORY_LIMIT, "the program ran out of memory")
        return Outcome(Reason.SIGNALED, f"the program was killed by {signal_name(r.signal)}")
    if r.result and r.result.get("kind") == "returned":
        if r.exit_code in (0, None):
            return Outcome(Reason.SUCCEEDED, "main returned")
        return Outcome(Reason.NON_ZERO_EXIT, f"the program exited with code {r.exit_code}")
    if error is not None:
        return _from_error(error, ev)
    if r.exit_code:
        return Outcome(Reason.NON_ZERO_EXIT, f"the program exited with code {r.exit_code}")
    return Outcome(Reason.SUCCEEDED, "the program exited with code 0 before main returned")


def _error_codes(error: dict[str, Any]) -> list[tuple[str | None, str | None, str | None]]:
    """(type, code, syscall) of the error and each error it was raised from."""
    chain = [error, *[c for c in error.get("causes") or [] if isinstance(c, dict)]]
    return [(c.get("type"), _code(c), c.get("syscall")) for c in chain]


def _code(err: dict[str, Any]) -> str | None:
    code = err.get("code")
    # Python's socket timeouts carry no errno: TimeoutError("timed out") is connect's ETIMEDOUT.
    if (
        code is None
        and err.get("type") in ("TimeoutError", "timeout")
        and (err.get("message") == "timed out")
    ):
        return "ETIMEDOUT"
    return code if isinstance(code, str) else None


def _memory_full(r: Report) -> bool:
    """The cgroup's usage hit its limit during the run (counted by the kernel)."""
    return bool(r.memory_limit_hits)


# A refused fork is the process limit's doing only if the uid's tasks plus the forks in flight
# exceeded RLIMIT_NPROC. The kernel counts a fork against the uid before it checks the limit, and
# every concurrently forking task holds one such transient count; the pod's pause process runs as
# the sandbox uid outside the container the supervisor counts. So a refusal at limit L means
# 1 + tasks + in-flight > L with in-flight <= tasks: the container held at least L/2 tasks.
# Measured on the test bed (2 CPUs, limit 16): peaks of 15 and 14 when the bomb was refused; a
# program that raises EAGAIN itself with few tasks stays a UserException.
_TASKS_OUTSIDE_THE_CONTAINER = 1


def _at_process_limit(r: Report) -> bool:
    """The sandbox's task count (the cgroup's peak or the supervisor's samples of it) was high
    enough that the kernel could have refused a fork at the process limit."""
    return (
        r.tasks_peak is not None
        and r.process_limit is not None
        and 2 * r.tasks_peak + _TASKS_OUTSIDE_THE_CONTAINER > r.process_limit
    )


def _from_error(error: dict[str, Any], ev: Evidence) -> Outcome:
    phase = error.get("phase")
    err_type = error.get("type") or "Error"
    message = str(error.get("message") or "")
    described = f"{err_type}: {message}" if message else err_type
    if phase == "compile":
        where = f" at line {error['line']}" if error.get("line") else ""
        return Outcome(Reason.SYNTAX_ERROR, f"the code does not compile{where}: {message}")
    if phase == "entrypoint":
        return Outcome(Reason.ENTRYPOINT_ERROR, message or "no callable main")
    if phase == "serialize":
        return Outcome(
            Reason.RESULT_NOT_SERIALIZABLE, f"main returned a value that is not JSON ({err_type})"
        )
    r = ev.report
    assert r is not None
    for t, code, _ in _error_codes(error):
        if t == "MemoryError" and _memory_full(r):
            return Outcome(Reason.MEMORY_LIMIT, "the program ran out of memory")
        if _at_process_limit(r) and (
            code in _PROCESS_CODES or (t == "RuntimeError" and "can't start new thread" in message)
        ):
            return Outcome(Reason.PROCESS_LIMIT, f"process limit reached: {described}")
        if code == "ENOSPC" and r.scratch_full:
            return Outcome(Reason.OUTPUT_LIMIT, f"the scratch space is full: {described}")
        if code == "EFBIG" and r.file_at_limit:
            return Outcome(
                Reason.OUTPUT_LIMIT, f"a file reached the sandbox's size limit: {described}"
            )
        # The supervisor checked the named path: this uid really may not use it.
        if code in _FILE_ACCESS_CODES and r.access_denied:
            return Outcome(Reason.PERMISSION_DENIED, f"file access denied: {described}")
        # The sandbox really sent (or failed to route) IP packets while it had no network.
        if code in _NETWORK_CODES and not ev.network_allowed and r.ip_packets_sent:
            return Outcome(Reason.NETWORK_BLOCKED, f"network access blocked: {described}")
    return Outcome(Reason.USER_EXCEPTION, described)


# How the container of a killed gVisor sandbox ends: 137 (SIGKILL), or 128, the status gVisor's
# containerd shim reports when `runsc wait` fails because the sandbox is gone (measured on the
# test bed: OOMKilled with exit code 128).
_SANDBOX_KILLED_CODES = frozenset({128, 128 + _signal.SIGKILL})


def _sandbox_killed(t: Terminated) -> bool:
    return t.exit_code in _SANDBOX_KILLED_CODES or t.signal == _signal.SIGKILL


def _from_pod(ev: Evidence) -> Outcome:
    t = ev.terminated
    if t is not None and t.reason == "OOMKilled":
        return Outcome(Reason.MEMORY_LIMIT, "the sandbox container was OOM-killed")
    if ev.pod_reason == "DeadlineExceeded" or ev.operator_deadline:
        return Outcome(
            Reason.WALL_TIMEOUT, "the program ran past its time limit and the sandbox was stopped"
        )
    started = {True: "after", False: "before", None: "possibly after"}[ev.code_started]
    if ev.pod_gone:
        return Outcome(Reason.SANDBOX_ERROR, f"the sandbox pod vanished {started} the code started")
    if ev.pod_reason == "Evicted":
        return Outcome(
            Reason.SANDBOX_ERROR,
            f"the sandbox pod was evicted {started} the code started: {ev.pod_message or ''}",
        )
    if ev.pod_deleting:
        return Outcome(
            Reason.SANDBOX_ERROR, f"the sandbox pod was deleted {started} the code started"
        )
    if t is not None and ev.oom_ends_sandbox and ev.code_started and _sandbox_killed(t):
        # Nothing else kills a user-space kernel's sandbox with the pod still there: the code
        # cannot signal the runner (PID 1 of its namespace), and the kubelet's deadline,
        # eviction and deletion are ruled out above.
        return Outcome(
            Reason.MEMORY_LIMIT,
            f"the program ran out of memory: the gVisor sandbox was killed (exit code "
            f"{t.exit_code}) while the code ran, as it is when the pod exceeds its memory limit",
        )
    if t is not None:
        return Outcome(
            Reason.SANDBOX_ERROR,
            f"the sandbox runner ended {started} the code started without a report "
            f"(exit code {t.exit_code}, {t.reason or 'no reason'})",
        )
    return Outcome(Reason.SANDBOX_ERROR, f"the sandbox failed {started} the code started")
