"""Helpers that run the real supervisor with the real Python and Node.js workers (no container).

Most runs drop to a fresh unprivileged uid, as in a pod: root ignores RLIMIT_NPROC and may
read any file, and a uid of its own lets a test prove that nothing it started survived.
Stdin stays open for the whole run: the runner must act on the newline, never on EOF.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]


RUNNER_FILES = (
    "runner/supervisor.py",
    "runner/confine.py",
    "runner/evidence.py",
    "runner/workfiles.py",
    "runner/reporting.py",
    "runner/exiting.py",
    "runner/fds.py",
    "runner/processes.py",
    "runner/requestline.py",
    "runner/settings.py",
    "python/worker.py",
    "nodejs/worker.js",
)


def _installed_runner() -> Path:
    """The runner files laid out world-readable, as in the image's /opt/codeexec.

    The checkout may sit under a directory other uids cannot enter (a mode-0700 temp dir or
    /root), and the hostile tests run the runner under an unprivileged uid.
    """
    target = Path(tempfile.mkdtemp(prefix="codeexec-runner-files-"))
    target.chmod(0o755)
    for source in RUNNER_FILES:
        dest = target / Path(source).name
        shutil.copyfile(REPO / "images" / source, dest)
        dest.chmod(0o644)
    atexit.register(shutil.rmtree, target, True)
    return target


RUNNER_DIR = _installed_runner()
SUPERVISOR = RUNNER_DIR / "supervisor.py"
WORKERS = {
    "python": RUNNER_DIR / "worker.py",
    "nodejs": RUNNER_DIR / "worker.js",
}
PROTOCOL = "codeexec.io/runner/v1"
SAFETY_TIMEOUT_S = 60.0  # a bound against hangs, never an assertion about speed

_uids = itertools.count(61000 + random.randrange(0, 3000))


def system_python() -> str:
    # The venv's interpreter may live under /root (mode 0700): unusable for another uid.
    return "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable


NODE = shutil.which("node")
IS_ROOT = os.geteuid() == 0


def processes_of(uid: int) -> list[int]:
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status") as f:
                for line in f:
                    if line.startswith("Uid:"):
                        if int(line.split()[1]) == uid:
                            pids.append(int(name))
                        break
        except (OSError, ValueError):
            continue
    return pids


@dataclass
class Run:
    """What one supervisor run produced."""

    report: dict[str, Any]
    raw_stdout: bytes
    raw_stderr: bytes
    returncode: int
    termination_log: str | None
    workdir: Path
    uid: int | None
    leftovers: list[int] = field(default_factory=list)

    @property
    def result(self) -> dict[str, Any] | None:
        return self.report["result"]

    @property
    def error(self) -> dict[str, Any]:
        result = self.report["result"]
        assert result is not None, f"no result record: {self.describe()}"
        assert result["kind"] == "error", f"not an error: {self.describe()}"
        return result

    @property
    def value(self) -> Any:
        result = self.report["result"]
        assert result is not None and result["kind"] == "returned", self.describe()
        return result["value"]

    @property
    def stdout(self) -> str:
        return self.report["stdout"]["text"]

    @property
    def stderr(self) -> str:
        return self.report["stderr"]["text"]

    @property
    def exit(self) -> dict[str, Any] | None:
        """The wait status (code, signal); `exit_from` says how it was read."""
        exit_ = self.report["exit"]
        return None if exit_ is None else {k: v for k, v in exit_.items() if k != "from"}

    @property
    def exit_from(self) -> str | None:
        exit_ = self.report["exit"]
        return None if exit_ is None else exit_.get("from")

    def describe(self) -> str:
        return json.dumps(self.report, indent=1)[:6000]


def make_request(
    language: str,
    code: str,
    arguments: dict[str, Any] | None = None,
    *,
    request_id: str | None = None,
    timeout_ms: int = 20_000,
    max_output_bytes: int = 1 << 20,
    keep_bytes: int = 64 * 1024,
    **extra: Any,
) -> dict[str, Any]:
    return {
        "protocol": PROTOCOL,
        "id": request_id or f"test-{random.getrandbits(64):016x}",
        "language": language,
        "code": code,
        "arguments": {} if arguments is None else arguments,
        "timeoutMs": timeout_ms,
        "maxOutputBytes": max_output_bytes,
        "keepBytes": keep_bytes,
        **extra,
    }


class Runner:
    """Starts the supervisor; one instance per test (its temporary dirs are removed after)."""

    def __init__(self) -> None:
        self._dirs: list[str] = []
        self._started: list[Pending] = []

    def cleanup(self) -> None:
        # A test that failed half-way through a gather leaves supervisors nobody waited for.
        for pending in self._started:
            pending.abandon()
        for path in self._dirs:
            shutil.rmtree(path, ignore_errors=True)

    def workdir(self, uid: int | None) -> Path:
        path = tempfile.mkdtemp(prefix="codeexec-runner-")
        self._dirs.append(path)
        if uid is not None:
            os.chown(path, uid, uid)
        return Path(path)

    def __call__(
        self, language: str, code: str = "", arguments: dict[str, Any] | None = None, **options: Any
    ) -> Run:
        return self.start(language, code, arguments, **options).finish()

    @staticmethod
    def gather(*pending: Pending) -> list[Run]:
        """Waits for supervisors started side by side with start() (the suite is mostly process
        start-up time, so independent cases of one test run concurrently)."""
        return [p.finish() for p in pending]

    def start(
        self,
        language: str,
        code: str = "",
        arguments: dict[str, Any] | None = None,
        *,
        request: dict[str, Any] | None = None,
        raw_line: bytes | None = None,
        close_stdin: bool = False,
        as_root: bool = False,
        env: dict[str, str] | None = None,
        cgroup: Callable[[Path], None] | None = None,
        max_processes: int | None = None,
        rlimit_as: int | None = None,
        before: Callable[[Path, int | None], None] | None = None,
        worker: str | None = None,
        interpreter: str | None = None,
        pid_namespace: bool = False,
        **request_fields: Any,
    ) -> Pending:
        if language == "nodejs" and NODE is None:
            pytest.skip("node is not installed")
        uid = None if as_root or not IS_ROOT else next(_uids)
        workdir = self.workdir(uid)
        cgroup_root = workdir / "cgroup"
        cgroup_root.mkdir()
        if cgroup is not None:
            cgroup(cgroup_root)
        if uid is not None:
            for p in [cgroup_root, *cgroup_root.rglob("*")]:
                os.chown(p, uid, uid)
        if before is not None:
            before(workdir, uid)
        termination_log = workdir / "termination-log"
        full_env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": "C.UTF-8",
            "HOME": str(workdir),
            "CODEEXEC_PRELOAD": "",
            "CODEEXEC_TERMINATION_LOG": str(termination_log),
            "CODEEXEC_CGROUP_ROOT": str(cgroup_root),
        }
        if max_processes is not None:
            full_env["CODEEXEC_MAX_PROCESSES"] = str(max_processes)
        full_env.update(env or {})
        python = system_python() if uid is not None else sys.executable
        argv = [python, str(SUPERVISOR), "--language", language]
        argv += ["--worker", worker or str(WORKERS[language])]
        if interpreter is not None:
            argv += ["--interpreter", interpreter]
        kwargs: dict[str, Any] = {}
        if pid_namespace:
            # The production shape: the supervisor is PID 1 of its own PID namespace.
            assert uid is not None, "pid_namespace needs root"
            drop = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
            argv = ["unshare", "--pid", "--fork", "--kill-child", *drop, *argv]
        elif uid is not None:
            kwargs.update(user=uid, group=uid, extra_groups=[])

        def preexec() -> None:
            if rlimit_as is not None:
                resource.setrlimit(resource.RLIMIT_AS, (rlimit_as, rlimit_as))

        proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=workdir,
            env=full_env,
            preexec_fn=preexec if rlimit_as is not None else None,
            **kwargs,
        )
        pending = Pending(proc, uid, workdir, termination_log)
        self._started.append(pending)
        try:
            assert proc.stdin is not None
            if raw_line is not None:
                proc.stdin.write(raw_line)
            elif not close_stdin:
                req = request or make_request(language, code, arguments, **request_fields)
                proc.stdin.write(json.dumps(req).encode() + b"\n")
            proc.stdin.flush()
            if close_stdin:
                proc.stdin.close()
        except BrokenPipeError:
            pass  # the supervisor already gave up (a worker that died at startup)
        return pending


class Pending:
    """A started supervisor; stdin stays open until it has exited."""

    def __init__(
        self, proc: subprocess.Popen[bytes], uid: int | None, workdir: Path, termination_log: Path
    ) -> None:
        self.proc, self.uid, self.workdir, self.termination_log = (
            proc,
            uid,
            workdir,
            termination_log,
        )
        self._out: list[bytes] = []
        self._err: list[bytes] = []
        self._readers = [
            threading.Thread(target=self._read, args=(proc.stdout, self._out), daemon=True),
            threading.Thread(target=self._read, args=(proc.stderr, self._err), daemon=True),
        ]
        for t in self._readers:
            t.start()

    @staticmethod
    def _read(stream: Any, sink: list[bytes]) -> None:
        sink.append(stream.read())

    def abandon(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.uid is not None:
            _kill_all(self.uid)

    def finish(self) -> Run:
        proc, uid = self.proc, self.uid
        try:
            returncode = proc.wait(timeout=SAFETY_TIMEOUT_S)
        except BaseException:
            proc.kill()
            proc.wait()
            if uid is not None:
                _kill_all(uid)
            raise
        finally:
            for t in self._readers:
                t.join(timeout=10)
            if proc.stdin is not None and not proc.stdin.closed:
                with contextlib.suppress(BrokenPipeError):
                    proc.stdin.close()
        leftovers = _wait_gone(uid) if uid is not None else []
        assert not leftovers, f"processes of uid {uid} survived the supervisor: {leftovers}"
        stdout = self._out[0] if self._out else b""
        stderr = self._err[0] if self._err else b""
        lines = [line for line in stdout.split(b"\n") if line.startswith(b"CXR1 ")]
        assert len(lines) == 1, f"expected one CXR1 line, got {stdout[:2000]!r} / {stderr!r}"
        report = json.loads(lines[0][5:])
        tl = self.termination_log.read_text() if self.termination_log.exists() else None
        return Run(report, stdout, stderr, returncode, tl, self.workdir, uid, leftovers)


def _kill_all(uid: int) -> None:
    for pid in processes_of(uid):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def _wait_gone(uid: int) -> list[int]:
    """Processes of `uid` still alive after the supervisor exited (killed afterwards)."""
    end = time.monotonic() + 5.0
    left = processes_of(uid)
    while left and time.monotonic() < end:
        time.sleep(0.05)
        left = processes_of(uid)
    _kill_all(uid)
    return left


@pytest.fixture
def run() -> Iterator[Runner]:
    runner = Runner()
    yield runner
    runner.cleanup()
