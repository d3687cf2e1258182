"""In-pod supervisor of a codeexec sandbox (PID 1 of the container; stdlib only).

Starts the warm language worker, waits for exactly one framed request on stdin, forwards it,
watches the run (deadline, output cap, result pipe, wait status, cgroup OOM counter) and writes
one ``CXR1 <json>`` report on stdout and a compact copy to the termination log. The wire
contract is docs/runner-protocol.md; this file is the only writer of the container's stdout.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import resource
import select
import signal
import sys
import time
from typing import Any

# `python -I` leaves this file's directory off sys.path; the runner's modules live beside it.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import confine
import exiting
import processes
import reporting
import workfiles
from fds import ensure_std_fds, read_ready, write_all
from requestline import (
    DEFAULT_MAX_RESULT_BYTES,
    MAX_REQUEST_BYTES,
    PROTOCOL,
    Request,
    parse_request,
)
from settings import Config, parse_args

import evidence

__all__ = ["PROTOCOL", "Request", "Supervisor", "main", "parse_request"]

RUNNER_VERSION = "1"
# Room for the record's envelope and an error record's message/traceback/causes.
RESULT_SLACK_BYTES = 64 * 1024
STARTUP_DIAG_BYTES = 2048

KILL_GRACE_S = 0.5  # SIGTERM -> SIGKILL on timeout
UNKILLABLE_S = 5.0  # after SIGKILL, stop waiting for a worker stuck in the kernel
DRAIN_GRACE_S = 1.0  # after the worker is gone, stop reading pipes held by strays
STARTUP_ALLOWANCE_S = 30.0  # for a request that arrives while the worker is still importing
TICK_S = 0.01  # poll tick when pidfd_open is unavailable (e.g. some gVisor versions)
ORPHAN_TICK_S = 0.1  # orphans' deaths wake nobody (no SIGCHLD handler): reap them this often
# With the result record in, how often /proc is read for the worker's stored exit status: it
# comes microseconds after the record, the freeing of its memory (what it saves) 5-45 ms later.
EXIT_PEEK_S = 0.001


def _now() -> float:
    return time.monotonic()


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


class Supervisor:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.pid = 0
        self.pidfd: int | None = None
        self.spawned_at = 0.0
        self.req_fd: int | None = None
        self.req_buf = b""
        self.out = reporting.Stream(None, 0)
        self.err = reporting.Stream(None, STARTUP_DIAG_BYTES)
        self.res_fd: int | None = None
        self.res_buf = bytearray()
        self.res_limit = DEFAULT_MAX_RESULT_BYTES + RESULT_SLACK_BYTES
        self.res_overflow = False
        self.ready_at: float | None = None
        self.ready_state: bool | None = None  # None until the worker's first line
        self.ready_cpu_ms = 0.0
        self.request_id: str | None = None
        self.started = False
        self.exited_at: float | None = None
        self.status: int | None = None
        self.rusage: resource.struct_rusage | None = None
        self.stdin_buf = bytearray()
        self.stdin_open = True
        self.watch: Any = None  # evidence.Watch while the code runs
        # Wall-clock marks of the request's road through the pod (epoch seconds): the operator
        # sets them against its own to split a run's time into frame out, in-pod and report
        # back (one node's clock on both sides in the test bed; docs/benchmarks.md).
        self.marks: dict[str, float] = {}
        # Whether /proc shows us the worker's exit status (exiting.py), checked once it is warm;
        # the record's exit status, once a record is in; the reap deferred past the report.
        self.peek = exiting.Peek(0, visible=False)
        self.reap_after_report = False

    # -- process management ------------------------------------------------------------------

    def spawn(self) -> None:
        r0, w0 = os.pipe()
        r1, w1 = os.pipe()
        r2, w2 = os.pipe()
        r3, w3 = os.pipe()
        env = dict(os.environ)
        self.spawned_at = _now()
        pid = os.fork()
        if pid == 0:  # child: never returns
            self._exec_worker([r0, w1, w2, w3], env)
        self.pid = pid
        for fd in (r0, w1, w2, w3):
            os.close(fd)
        for fd in (w0, r1, r2, r3):
            os.set_blocking(fd, False)
        self.req_fd, self.out.fd, self.err.fd, self.res_fd = w0, r1, r2, r3
        try:
            self.pidfd = os.pidfd_open(pid)
        except (OSError, AttributeError):
            self.pidfd = None

    def _exec_worker(self, ends: list[int], env: dict[str, str]) -> None:
        try:
            os.setsid()
            # Ignored signals survive exec; the user's programs should see the defaults.
            for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT):
                signal.signal(sig, signal.SIG_DFL)
            # Move the ends out of the way first: one of them may already sit on 0-3.
            high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in ends]
            for target, fd in enumerate(high):
                os.dup2(fd, target)
            os.closerange(4, 65536)
            # Raising is always allowed: the OOM killer then picks user code, never us.
            with contextlib.suppress(OSError), open("/proc/self/oom_score_adj", "w") as f:
                f.write("1000")
            # Last: rlimits and the seccomp filter (confine.py). A worker that cannot be
            # confined never starts; the report then says why (started: false).
            confine.confine(
                self.config.max_processes, self.config.max_file_bytes, self.config.write_roots
            )
            os.execve(self.config.argv[0], self.config.argv, env)
        except BaseException as exc:
            with contextlib.suppress(BaseException):
                os.write(2, f"codeexec: cannot start the worker: {exc!r}\n".encode())
        finally:
            os._exit(127)

    def _poll_exit(self) -> bool:
        """True once the worker has exited; it stays a zombie (its pgid reserved) until reap()."""
        if self.exited_at is not None:
            return True
        try:
            info = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            info = None
            self.exited_at = _now()
            return True
        if info is None or info.si_pid == 0:
            return False
        self.exited_at = _now()
        return True

    def signal_worker(self, sig: int) -> None:
        """Signals the worker's process group, and the worker itself: right after fork() it may
        not have called setsid() yet, and then the group does not exist."""
        processes.killpg(self.pid, sig)
        if self.exited_at is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(self.pid, sig)

    def reap(self) -> None:
        # Kill the group while the zombie still pins the pgid, so it cannot name someone else.
        self.signal_worker(signal.SIGKILL)
        try:
            _, status, usage = os.wait4(self.pid, 0)
            self.status, self.rusage = status, usage
        except ChildProcessError:
            pass
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None

    # -- the poll loop -----------------------------------------------------------------------

    def pump(self, timeout_s: float | None, want_stdin: bool) -> None:
        """One round: read whatever is ready, write pending request bytes, note an exit."""
        poller = select.poll()
        watched = False
        for fd in (self.out.fd, self.err.fd, self.res_fd):
            if fd is not None:
                poller.register(fd, select.POLLIN)
                watched = True
        if self.req_fd is not None and self.req_buf:
            poller.register(self.req_fd, select.POLLOUT)
        if want_stdin and self.stdin_open:
            poller.register(0, select.POLLIN)
        if self.pidfd is not None and self.exited_at is None:
            poller.register(self.pidfd, select.POLLIN)
            tick = ORPHAN_TICK_S
        elif self.exited_at is None or not watched:
            tick = TICK_S
        else:
            tick = ORPHAN_TICK_S
        timeout_s = tick if timeout_s is None else min(timeout_s, tick)
        timeout_ms = None if timeout_s is None else max(0, int(timeout_s * 1000 + 0.999))
        try:
            events = poller.poll(timeout_ms)
        except InterruptedError:
            events = []
        self._dispatch(events)
        self._poll_exit()
        if self.watch is not None:
            # Before reaping: a fork bomb's exited members stay counted as zombies until then,
            # so the count reads at its limit for as long as the bomb pushes against it.
            self.watch.sample()
            self.peek.sample()
        self._reap_orphans()

    def _dispatch(self, events: list[tuple[int, int]]) -> None:
        for fd, ev in events:
            if fd == self.out.fd:
                self._read_stream(self.out)
            elif fd == self.err.fd:
                self._read_stream(self.err)
            elif fd == self.res_fd:
                self._read_result()
            elif fd == self.req_fd:
                self._write_request(ev)
            elif fd == 0:
                self._read_stdin(ev)

    def _take_what_is_there(self) -> None:
        """Reads what the three pipes hold now, without waiting for their writers to go: what
        the worker wrote before its record is all in them (its harness flushes first)."""
        end = _now() + DRAIN_GRACE_S
        while _now() < end:
            poller = select.poll()
            for fd in (self.out.fd, self.err.fd, self.res_fd):
                if fd is not None:
                    poller.register(fd, select.POLLIN)
            events = poller.poll(0)
            if not events:
                return
            self._dispatch(events)

    def _reap_orphans(self) -> None:
        # Orphaned descendants are re-parented to us (as init, or as subreaper); reaping them as
        # they die keeps zombies from piling up against the pids limit. The worker waits for
        # reap(), which needs its rusage.
        while True:
            try:
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return
            if info is None or info.si_pid in (0, self.pid):
                return
            with contextlib.suppress(ChildProcessError):
                os.waitpid(info.si_pid, 0)

    def _read_stream(self, stream: reporting.Stream) -> None:
        assert stream.fd is not None
        data = read_ready(stream.fd)
        if data is None:
            return
        if data:
            stream.feed(data)
        else:
            os.close(stream.fd)
            stream.fd = None

    def _read_result(self) -> None:
        assert self.res_fd is not None
        data = read_ready(self.res_fd)
        if data is None:
            return
        if not data:
            os.close(self.res_fd)
            self.res_fd = None
            return
        if len(self.res_buf) + len(data) > self.res_limit:
            self.res_overflow = True  # keep draining so the writer never blocks
        else:
            self.res_buf += data
        if self.started and "resultAt" not in self.marks and data.endswith(b"\n"):
            self.marks["resultAt"] = time.time()
        if self.ready_state is None and b"\n" in self.res_buf:
            first = reporting.parse_record(bytes(self.res_buf.split(b"\n", 1)[0])) or {}
            self.ready_state = first.get("kind") == "ready"
            if self.ready_state:
                self.ready_at = _now()
                cpu = first.get("cpuMs")
                if isinstance(cpu, int | float) and cpu >= 0:
                    self.ready_cpu_ms = float(cpu)
                self._touch_ready_file()

    def _touch_ready_file(self) -> None:
        if self.config.ready_file:
            with contextlib.suppress(OSError), open(self.config.ready_file, "w") as f:
                f.write("ready\n")

    def _write_request(self, ev: int) -> None:
        assert self.req_fd is not None
        try:
            n = os.write(self.req_fd, self.req_buf)
            self.req_buf = self.req_buf[n:]
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # EPIPE: the worker is gone; its exit tells the rest
            self.req_buf = b""
        if not self.req_buf:
            # Closing gives the user's code EOF on stdin instead of a read that never returns.
            os.close(self.req_fd)
            self.req_fd = None

    def _read_stdin(self, ev: int) -> None:
        if ev & select.POLLNVAL:
            self.stdin_open = False
            return
        data = read_ready(0)
        if data is None:
            return
        if not data:
            self.stdin_open = False
        else:
            self.stdin_buf += data

    def request_line(self) -> bytes | None:
        nl = self.stdin_buf.find(b"\n")
        if nl < 0:
            return None
        return bytes(self.stdin_buf[:nl])

    # -- the run -------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        self.spawn()
        # Wait for the request, draining the warming worker; it may die here (bad image).
        while True:
            line = self.request_line()
            if line is not None:
                break
            if len(self.stdin_buf) > MAX_REQUEST_BYTES:
                return self.not_started(None, f"request line longer than {MAX_REQUEST_BYTES} bytes")
            if not self.stdin_open:
                return self.not_started(None, "stdin closed before a request arrived")
            if self.exited_at is not None:
                return self.not_started(None, self._startup_failure())
            self.pump(None, want_stdin=True)
        if len(line) > MAX_REQUEST_BYTES:
            return self.not_started(None, f"request line longer than {MAX_REQUEST_BYTES} bytes")
        self.marks["receivedAt"] = time.time()
        request, rid, problem = parse_request(line, self.config.language)
        if request is None:
            return self.not_started(rid, problem or "invalid request")
        # Hand the code only to a warm worker: until then nothing has run, and a worker that
        # dies or hangs while importing leaves a report that says so (started: false).
        ready_by = _now() + STARTUP_ALLOWANCE_S
        while not self.ready_state:
            if self.exited_at is not None:
                return self.not_started(request.id, self._startup_failure())
            if self.ready_state is False:
                return self.not_started(request.id, "worker sent no ready record")
            if _now() >= ready_by:
                return self.not_started(
                    request.id, f"worker not ready within {STARTUP_ALLOWANCE_S:g} s"
                )
            self.pump(ready_by - _now(), want_stdin=False)
        self.peek = exiting.Peek(self.pid, visible=exiting.shows_exit_codes(self.pid))
        return self.execute(request)

    def _startup_failure(self) -> str:
        self.reap()
        processes.kill_leftovers()
        code, sig = processes.decode_status(self.status)
        how = f"exit code {code}" if code is not None else f"signal {sig}"
        diag = self.err.summary()["text"].strip()
        return f"worker exited before the request ({how})" + (f": {diag}" if diag else "")

    def execute(self, request: Request) -> dict[str, Any]:
        # The input files go in before the code can run; a file that cannot be written means
        # the code never started (the operator validated the paths: this is a broken pod).
        try:
            workfiles.place_files(os.getcwd(), request.files)
        except workfiles.FileError as exc:
            return self.not_started(request.id, f"input files: {exc}")
        oom_before = self.config.cgroup.oom_kills()
        self.out.restart(request.keep_bytes)
        self.err.restart(request.keep_bytes)
        self.res_limit = request.max_result_bytes + RESULT_SLACK_BYTES
        worker_request = {
            "code": request.code,
            "arguments": request.arguments,
            "language": self.config.language,
            "maxResultBytes": request.max_result_bytes,
            "maxResultDepth": request.max_result_depth,
        }
        self.req_buf = json.dumps(worker_request, ensure_ascii=True).encode() + b"\n"
        # The pod's own record that the code was handed over, written before it can run.
        # Only a digest of the id: the user's code can read the termination log.
        digest = hashlib.sha256(request.id.encode()).hexdigest()
        started = "CXS1 " + json.dumps({"idSha256": digest, "started": True})
        self.write_termination_log(started)
        # The same record on stdout tells the operator its request arrived, over whichever
        # attach session carried it.
        write_all(1, started.encode("ascii") + b"\n", timeout_s=2.0)
        self.request_id, self.started = request.id, True
        self.marks["startedAt"] = time.time()
        self.watch = evidence.Watch(
            evidence.Kernel(self.config.cgroup.root, self.config.proc_net),
            process_limit=self.config.max_processes,
            scratch=self.config.scratch,
            cwd=os.getcwd(),
            write_roots=self.config.write_roots if self.config.landlock else None,
            file_limit=self.config.max_file_bytes,
            files=[os.getcwd(), "/dev/shm", self.config.termination_log],
        )
        self.watch.begin()
        self.peek.sample()
        start = _now()
        deadline = start + request.timeout_ms / 1000.0
        timed_out = output_limited = False
        term_sent_at: float | None = None
        kill_sent_at: float | None = None
        early: int | None = None  # the worker's stored exit status, read before its reap
        while True:
            ours = term_sent_at is not None or kill_sent_at is not None  # we ended it
            within = self.out.total + self.err.total <= request.max_output_bytes
            if not ours and within:
                early = self._exit_before_reap(request)
                if early is not None:
                    break
            if self._poll_exit():
                # A worker already gone is read the same way as one still freeing its memory:
                # its record may still sit in the pipe.
                self._take_what_is_there()
                if not ours and self.out.total + self.err.total <= request.max_output_bytes:
                    early = self._exit_before_reap(request)
                break
            now = _now()
            if not output_limited and self.out.total + self.err.total > request.max_output_bytes:
                output_limited = True
                self.signal_worker(signal.SIGKILL)
                kill_sent_at = kill_sent_at or now
            if term_sent_at is None and kill_sent_at is None and now >= deadline:
                timed_out = True
                term_sent_at = now
                self.signal_worker(signal.SIGTERM)
            if (
                term_sent_at is not None
                and kill_sent_at is None
                and now >= term_sent_at + KILL_GRACE_S
            ):
                kill_sent_at = now
                self.signal_worker(signal.SIGKILL)
            if kill_sent_at is not None and now >= kill_sent_at + UNKILLABLE_S:
                break
            if kill_sent_at is not None:
                wait = kill_sent_at + UNKILLABLE_S - now
            elif term_sent_at is not None:
                wait = term_sent_at + KILL_GRACE_S - now
            else:
                wait = deadline - now
            if self.peek.waiting:
                wait = min(wait, EXIT_PEEK_S)
            self.pump(max(wait, 0.0), want_stdin=False)
        cpu_ms = max_rss = None
        if early is not None:
            # Report now, reap after the report (main): the freeing of the worker's memory
            # is all that is left of it. Nothing of the user's may run on meanwhile.
            ended = self.exited_at if self.exited_at is not None else _now()
            self.marks["exitedAt"] = time.time() - (_now() - ended)
            self.status, self.reap_after_report = early, True
            total_cpu = exiting.cpu_ms(self.pid)
            if total_cpu is not None:
                cpu_ms = round(max(total_cpu - self.ready_cpu_ms, 0.0), 3)
            max_rss = self.peek.rss_kb
            processes.kill_everything(self.pid)
            if request.artifacts is not None:
                # Artifacts are read once no process of the user's can write: the worker is
                # past its exit already, the rest must be gone (a zombie writes nothing).
                processes.wait_gone(self.pid)
            self._take_what_is_there()
        else:
            ended = self.exited_at if self.exited_at is not None else _now()
            if self.exited_at is not None:
                self.marks["exitedAt"] = time.time() - (_now() - self.exited_at)
                self.reap()
            else:
                self.signal_worker(signal.SIGKILL)
            processes.kill_leftovers()
            self.drain()
            if self.rusage is not None:
                total_cpu = (self.rusage.ru_utime + self.rusage.ru_stime) * 1000.0
                cpu_ms = round(max(total_cpu - self.ready_cpu_ms, 0.0), 3)
                max_rss = int(self.rusage.ru_maxrss)
        if self.out.total + self.err.total > request.max_output_bytes:
            output_limited = True
        code, sig = processes.decode_status(self.status)
        result, _ = reporting.interpret_result(
            bytes(self.res_buf), self.res_overflow, code, request.max_result_depth
        )
        error = result if result is not None and result.get("kind") == "error" else None
        seen = self.watch.end(error)
        self.watch = None
        oom_after = self.config.cgroup.oom_kills()
        artifacts = self.send_artifacts(request)
        exit_from = "proc" if early is not None else "wait"
        return self.report(
            request.id,
            started=True,
            exit={"code": code, "signal": sig, "from": exit_from}
            if self.status is not None
            else None,
            timedOut=timed_out,
            outputLimited=output_limited,
            oomKilled=oom_before is not None and oom_after is not None and oom_after > oom_before,
            result=result,
            stdout=self.out.summary(),
            stderr=self.err.summary(),
            usage={
                "wallMs": _ms(ended - start),
                "cpuMs": cpu_ms,
                "maxRssKb": max_rss,
                "cgroupPeakBytes": self.config.cgroup.peak_bytes(),
            },
            evidence=seen,
            **artifacts,
        )

    def _exit_before_reap(self, request: Request) -> int | None:
        """The worker's stored exit status, when the report may go out before the reap
        (exiting.Peek)."""
        return self.peek.status(self.res_buf, self.res_overflow)

    def after_report(self) -> None:
        """The reap a report sent before it left for later (`_exit_before_reap`)."""
        if self.reap_after_report:
            self.reap()
            processes.kill_leftovers()
            self.drain()

    def send_artifacts(self, request: Request) -> dict[str, Any]:
        """Reads ./artifacts/ (every process of the user's code is gone by now, whatever way
        it ended) and writes one `CXA1` record per file on stdout, ahead of the report."""
        limits = request.artifacts
        if limits is None:
            return {}
        got = workfiles.collect(os.getcwd(), limits)
        for artifact in got.artifacts:
            line = b"CXA1 " + reporting.dumps(artifact.record(request.id)).encode("ascii") + b"\n"
            write_all(1, line, timeout_s=60.0)
        return {
            "artifacts": [a.listing() for a in got.artifacts],
            "artifactLimit": got.limit_record(limits),
            "artifactProblem": got.problem,
        }

    def drain(self) -> None:
        end = _now() + DRAIN_GRACE_S
        while _now() < end and any(
            fd is not None for fd in (self.out.fd, self.err.fd, self.res_fd)
        ):
            self.pump(max(end - _now(), 0.0), want_stdin=False)
        for fd in (self.out.fd, self.err.fd, self.res_fd, self.req_fd):
            if fd is not None:
                os.close(fd)
        self.out.fd = self.err.fd = self.res_fd = self.req_fd = None

    def not_started(self, rid: str | None, problem: str) -> dict[str, Any]:
        if self.exited_at is None:
            self.signal_worker(signal.SIGKILL)
            end = _now() + UNKILLABLE_S
            while not self._poll_exit() and _now() < end:
                time.sleep(0.005)
            if self.exited_at is not None:
                self.reap()
            processes.kill_leftovers()
        return self.report_without_run(rid, False, problem)

    def report_without_run(self, rid: str | None, started: bool, problem: str) -> dict[str, Any]:
        """A report with no run to describe: the code never started, or we failed around it."""
        return self.report(
            rid,
            started=started,
            protocolError=problem[:2000],
            exit=None,
            timedOut=False,
            outputLimited=False,
            oomKilled=False,
            result=None,
            stdout=None,
            stderr=None,
            usage=None,
            evidence=None,
        )

    def report(self, rid: str | None, **fields: Any) -> dict[str, Any]:
        warm = None if self.ready_at is None else _ms(self.ready_at - self.spawned_at)
        rep: dict[str, Any] = {"protocol": PROTOCOL, "id": rid, "started": False}
        rep["protocolError"] = None
        rep.update(fields)
        rep["runner"] = {
            "version": RUNNER_VERSION,
            "language": self.config.language,
            "warmMs": warm,
            "landlock": self.config.landlock,
        }
        if self.marks:
            self.marks["reportAt"] = time.time()
            rep["timing"] = {k: round(v, 6) for k, v in self.marks.items()}
        return rep

    # -- output --------------------------------------------------------------------------------

    def write_termination_log(self, text: str) -> None:
        path = self.config.termination_log
        if not path:
            return
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        except OSError:
            return
        try:
            write_all(fd, text.encode("ascii", errors="replace"), timeout_s=2.0)
        finally:
            os.close(fd)


def main(argv: list[str] | None = None) -> int:
    # No handlers: as PID 1 of a PID namespace this makes us immune to signals from inside.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    processes.prctl(processes.PR_SET_DUMPABLE, 0)
    if os.getpid() != 1:
        processes.prctl(processes.PR_SET_CHILD_SUBREAPER, 1)
    ensure_std_fds()
    config = parse_args(sys.argv[1:] if argv is None else argv)
    supervisor = Supervisor(config)
    try:
        report = supervisor.run()
    except Exception as exc:  # a bug of ours must still end in a report, never a hang
        if supervisor.pid:
            processes.killpg(supervisor.pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            processes.kill_leftovers()
        report = supervisor.report_without_run(
            supervisor.request_id, supervisor.started, f"supervisor failure: {exc!r}"
        )
    try:
        line = "CXR1 " + reporting.dumps(report)
    except (TypeError, ValueError, RecursionError):
        report["result"] = None
        line = "CXR1 " + reporting.dumps(report)
    write_all(1, line.encode("ascii") + b"\n")
    supervisor.write_termination_log(reporting.compact(report))
    with contextlib.suppress(Exception):
        supervisor.after_report()
    return 0


if __name__ == "__main__":
    sys.exit(main())
