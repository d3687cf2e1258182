"""What the supervisor's confinement (confine.py) stops, and verdicts a program cannot choose.

Issue 10, findings 2 and 5, without a cluster: the real supervisor and workers, the real kernel.
The verdict tests run the report through the operator's own `classify`; their cgroup and
/proc/net are fake, constant directories, so the kernel "saw" nothing the program claims.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import textwrap
from pathlib import Path
from typing import Any

import pytest

from codeexec.outcomes import Evidence, Reason, classify
from codeexec.protocol import Report

RUNNER_DIR = Path(__file__).resolve().parents[2] / "images" / "runner"


def src(code: str) -> str:
    return textwrap.dedent(code).lstrip("\n")


def _confine_module() -> Any:
    spec = importlib.util.spec_from_file_location("confine_for_tests", RUNNER_DIR / "confine.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


HAS_LANDLOCK = _confine_module().landlock_abi() is not None


def reason_of(r: Any, language: str = "python") -> Reason:
    report = Report.from_json(r.report)
    return classify(Evidence(report=report, language=language)).reason


def _quiet_kernel(root: Path) -> None:
    """A cgroup whose counters never move during the run (nothing was really hit)."""
    (root / "memory").mkdir()
    (root / "memory" / "memory.failcnt").write_text("0\n")
    (root / "pids").mkdir()
    (root / "pids" / "pids.current").write_text("2\n")


def _quiet_net(workdir: Path, uid: int | None) -> None:
    net = workdir / "net"
    net.mkdir()
    (net / "snmp").write_text(
        "Ip: Forwarding DefaultTTL InReceives OutRequests OutNoRoutes\nIp: 1 64 10 20 0\n"
    )
    (net / "snmp6").write_text("Ip6OutRequests 5\nIp6OutNoRoutes 0\n")


def quiet(run: Any, language: str, code: str, **options: Any) -> Any:
    return run.start(
        language,
        code,
        cgroup=_quiet_kernel,
        before=_quiet_net,
        env={"CODEEXEC_PROC_NET": "net"},
        **options,
    )


# ---------------------------------------------------------------------------------------------
# node protection


def test_fallocate_cannot_allocate_past_the_file_size_limit(run):
    """caught: without the seccomp rule, fallocate(KEEP_SIZE) allocated the full 256 MiB
    (RLIMIT_FSIZE does not see it), and without RLIMIT_FSIZE posix_fallocate did too."""
    code = src("""
        import ctypes, errno, os
        def main():
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open('keep', os.O_CREAT | os.O_WRONLY, 0o600)
            rc = libc.fallocate(fd, 1, ctypes.c_long(0), ctypes.c_long(256 << 20))  # KEEP_SIZE
            print(rc, ctypes.get_errno() == errno.EOPNOTSUPP, flush=True)
            grow = os.open('grow', os.O_CREAT | os.O_WRONLY, 0o600)
            os.posix_fallocate(grow, 0, 256 << 20)  # glibc falls back to writing: SIGXFSZ
            return 'allocated'
    """)
    r = run("python", code, env={"CODEEXEC_MAX_FILE_BYTES": str(1 << 20)})
    assert r.stdout == "-1 True\n", r.describe()
    assert r.exit == {"code": None, "signal": int(signal.SIGXFSZ)}, r.describe()
    assert reason_of(r) is Reason.OUTPUT_LIMIT
    for name in ("keep", "grow"):
        assert os.stat(r.workdir / name).st_blocks * 512 <= 1 << 20


def test_a_file_stops_growing_at_the_limit_in_node_too(run):
    code = src("""
        const fs = require('fs');
        module.exports = () => {
          const fd = fs.openSync('big', 'w');
          const chunk = Buffer.alloc(1 << 16, 120);
          for (;;) fs.writeSync(fd, chunk);
        };
    """)
    r = run("nodejs", code, env={"CODEEXEC_MAX_FILE_BYTES": str(1 << 20)})
    # Node.js ignores SIGXFSZ: EFBIG, and the supervisor finds the file at the limit.
    assert r.error["code"] == "EFBIG", r.describe()
    assert r.report["evidence"]["fileAtLimit"] is True
    assert reason_of(r, "nodejs") is Reason.OUTPUT_LIMIT
    assert os.stat(r.workdir / "big").st_size <= 1 << 20


@pytest.mark.skipif(not HAS_LANDLOCK, reason="the kernel has no Landlock")
def test_the_code_gets_no_writable_path_to_the_termination_log(run):
    """The kubelet's /dev/termination-log is mode 0666 on the node's disk: the worker may
    write only beneath its scratch (caught: without install_landlock this wrote 1 MiB)."""

    def layout(workdir: Path, uid: int | None) -> None:
        (workdir / "scratch").mkdir()
        if uid is not None:
            os.chown(workdir / "scratch", uid, uid)

    code = src("""
        import os
        def main():
            with open('scratch/ok', 'w') as f:
                f.write('scratch is writable')
            with open(os.environ['CODEEXEC_TERMINATION_LOG'], 'a') as log:
                log.write('x' * (1 << 20))
    """)
    r = run("python", code, before=layout, env={"CODEEXEC_SCRATCH_DIR": "scratch"})
    assert r.report["runner"]["landlock"], r.describe()
    err = r.error
    assert (err["type"], err["code"]) == ("PermissionError", "EACCES"), r.describe()
    assert (r.workdir / "scratch" / "ok").read_text() == "scratch is writable"
    assert reason_of(r) is Reason.PERMISSION_DENIED  # the supervisor checked the path


def test_privileged_calls_end_in_the_kernels_sigsys(run):
    """caught: without the seccomp kill list these were EPERM errors, which a program can
    also raise by itself."""
    unshare = "import ctypes\ndef main():\n    ctypes.CDLL(None).unshare(0x10000000)\n"
    ptrace = "import ctypes\ndef main():\n    ctypes.CDLL(None).ptrace(0, 0, 0, 0)\n"
    for r in run.gather(run.start("python", unshare), run.start("python", ptrace)):
        assert r.exit == {"code": None, "signal": int(signal.SIGSYS)}, r.describe()
        assert reason_of(r) is Reason.DISALLOWED_SYSCALL


def test_core_dumps_never_reach_a_handler_on_the_node(run):
    """RLIMIT_CORE 0 does not stop a piped core_pattern (apport, systemd-coredump write to the
    node's disk); the kernel refuses piped dumps at exactly 1 (caught: main set 0)."""
    code = "import resource\ndef main():\n    return resource.getrlimit(resource.RLIMIT_CORE)\n"
    assert run("python", code).value == [1, 1]


def test_io_uring_is_not_available(run):
    """io_uring operations bypass seccomp (an IORING_OP_FALLOCATE would); caught: without the
    rule io_uring_setup returned a ring."""
    code = src("""
        import ctypes, errno
        def main():
            libc = ctypes.CDLL(None, use_errno=True)
            params = ctypes.create_string_buffer(120)
            rc = libc.syscall(425, 4, params)
            return [rc, errno.errorcode.get(ctypes.get_errno())]
    """)
    assert run("python", code).value == [-1, "ENOSYS"]


# ---------------------------------------------------------------------------------------------
# verdicts the program cannot choose


def test_signals_the_kernel_sends_cannot_be_sent_by_the_program(run):
    """caught: without the kill-family rule the program died 'of' SIGSYS (DisallowedSyscall)."""
    code = src("""
        import os, signal
        def main(sig):
            os.kill(os.getpid(), sig)
    """)
    js = "module.exports = ({ sig }) => process.kill(process.pid, sig);\n"
    runs = run.gather(
        quiet(run, "python", code, arguments={"sig": int(signal.SIGSYS)}),
        quiet(run, "python", code, arguments={"sig": int(signal.SIGXFSZ)}),
        quiet(run, "nodejs", js, arguments={"sig": "SIGSYS"}),
    )
    for r, lang in zip(runs, ("python", "python", "nodejs"), strict=True):
        assert r.error["code"] == "EPERM", r.describe()
        assert reason_of(r, lang) is Reason.USER_EXCEPTION


def test_a_sigterm_handler_raising_memory_error_stays_a_timeout(run):
    """caught: the classifier put MemoryError before the supervisor's deadline."""
    code = src("""
        import signal, time
        def main():
            def handler(*_):
                raise MemoryError('out of memory, honestly')
            signal.signal(signal.SIGTERM, handler)
            while True:
                time.sleep(0.01)
    """)
    r = quiet(run, "python", code, timeout_ms=300).finish()
    assert r.report["timedOut"] is True
    assert r.error["type"] == "MemoryError"  # the record is there; it is just not evidence
    assert reason_of(r) is Reason.WALL_TIMEOUT


FORGED_PY = {
    "memory": "def main():\n    raise MemoryError()\n",
    "eagain": "import errno\ndef main():\n"
    "    raise BlockingIOError(errno.EAGAIN, 'Resource temporarily unavailable')\n",
    "thread": 'def main():\n    raise RuntimeError("can\'t start new thread")\n',
    "refused": "import errno\ndef main():\n"
    "    raise ConnectionRefusedError(errno.ECONNREFUSED, 'Connection refused')\n",
    "refused-bare": "def main():\n    raise ConnectionRefusedError()\n",
    "eacces": "import errno\ndef main():\n"
    "    open('mine', 'w').close()\n"
    "    raise PermissionError(errno.EACCES, 'Permission denied', 'mine')\n",
    "eperm": "import errno\ndef main():\n    raise PermissionError(errno.EPERM, 'nope')\n",
    "timeout": "def main():\n    raise TimeoutError('timed out')\n",
}
FORGED_JS = {
    "refused": "module.exports = () => { const e = new Error('connect ECONNREFUSED 10.0.0.1:80');"
    " e.code = 'ECONNREFUSED'; e.errno = -111; e.syscall = 'connect'; throw e; };\n",
    "eagain": "module.exports = () => { const e = new Error('spawn EAGAIN');"
    " e.code = 'EAGAIN'; e.syscall = 'spawn'; throw e; };\n",
    "eacces": "module.exports = () => { const e = new Error('EACCES: permission denied');"
    " e.code = 'EACCES'; e.path = 'mine'; require('fs').writeFileSync('mine', ''); throw e; };\n",
}


def test_errors_the_program_builds_itself_stay_user_exceptions(run):
    """Issue 10, finding 5: each of these was ProcessLimit / NetworkBlocked / PermissionDenied
    / DisallowedSyscall / MemoryLimit on the classifier that read errno and type (caught)."""
    cases = [("python", name, code) for name, code in FORGED_PY.items()]
    cases += [("nodejs", name, code) for name, code in FORGED_JS.items()]
    runs = run.gather(*(quiet(run, lang, code) for lang, _, code in cases))
    for (lang, name, _), r in zip(cases, runs, strict=True):
        outcome = classify(Evidence(report=Report.from_json(r.report), language=lang))
        assert outcome.reason is Reason.USER_EXCEPTION, (lang, name, r.describe())
        assert outcome.message.startswith(r.error["type"]), (lang, name, outcome)


def test_printing_heap_out_of_memory_and_aborting_is_not_a_memory_limit(run):
    """caught: the classifier read V8's words from stderr."""
    code = src("""
        module.exports = () => {
          process.stderr.write('FATAL ERROR: Reached heap limit Allocation failed - ' +
            'JavaScript heap out of memory\\n');
          process.abort();
        };
    """)
    r = quiet(run, "nodejs", code).finish()
    assert r.exit == {"code": None, "signal": int(signal.SIGABRT)}, r.describe()
    assert reason_of(r, "nodejs") is Reason.SIGNALED


def test_the_report_carries_the_kernels_readings(run):
    r = quiet(run, "python", "def main():\n    return 1\n").finish()
    seen = r.report["evidence"]
    assert seen["memoryLimitHits"] == 0 and seen["ipPacketsSent"] == 0, json.dumps(seen)
    assert seen["tasksPeak"] == 2 and seen["processLimit"] >= 1
