"""How the worker process ended: exits, signals, limits, and code that fights the supervisor.

Every run under a spare uid also proves (in conftest) that no process of that uid survived.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest

requires_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to use a spare uid")


def src(code: str) -> str:
    return textwrap.dedent(code).lstrip("\n")


def assert_not_ours(r, *, timed_out=False, output_limited=False):
    """Nothing on the supervisor's side ended the run (or exactly what the test expects)."""
    assert r.report["timedOut"] is timed_out, r.describe()
    assert r.report["outputLimited"] is output_limited, r.describe()
    assert r.report["oomKilled"] is False, r.describe()


# ---------------------------------------------------------------------------------------------
# exits and signals


def test_exit_codes_are_reported_without_a_result(run):
    py3, js2, py0, os0, js0, message = run.gather(
        run.start("python", "import sys\ndef main():\n    print('bye')\n    sys.exit(3)"),
        run.start("nodejs", "module.exports = () => { console.log('bye'); process.exit(2); };"),
        run.start("python", "import sys\ndef main():\n    sys.exit()"),
        run.start("python", "import os\ndef main():\n    os._exit(0)"),
        run.start("nodejs", "module.exports = () => process.exit(0);"),
        run.start("python", "import sys\ndef main():\n    sys.exit('fatal: no input')"),
    )
    assert (py3.exit, py3.result, py3.stdout) == ({"code": 3, "signal": None}, None, "bye\n")
    assert (js2.exit, js2.result, js2.stdout) == ({"code": 2, "signal": None}, None, "bye\n")
    # Exit status 0 and no record: the program left before main returned.
    for r in (py0, os0, js0):
        assert (r.exit, r.result) == ({"code": 0, "signal": None}, None)
    assert (message.exit, message.stderr) == ({"code": 1, "signal": None}, "fatal: no input\n")
    for r in (py3, js2, py0, os0, js0, message):
        assert_not_ours(r)


def test_self_inflicted_signals_are_reported_as_signals(run):
    kill_py, kill_js, segv_py, segv_js, abort_py = run.gather(
        run.start(
            "python",
            "import os, signal\ndef main():\n    print('going', flush=True)\n    os.kill(os.getpid(), signal.SIGKILL)",
        ),
        run.start(
            "nodejs",
            "module.exports = () => { console.log('going'); process.kill(process.pid, 'SIGKILL'); };",
        ),
        run.start("python", "import ctypes\ndef main():\n    return ctypes.string_at(0)"),
        run.start("nodejs", "module.exports = () => { process.kill(process.pid, 'SIGSEGV'); };"),
        run.start("python", "import os\ndef main():\n    os.abort()"),
    )
    # A SIGKILL that neither the deadline, the output cap nor the OOM killer sent.
    for r in (kill_py, kill_js):
        assert (r.exit, r.result, r.stdout) == ({"code": None, "signal": 9}, None, "going\n")
        assert_not_ours(r)
    for r in (segv_py, segv_js):
        assert (r.exit, r.result) == ({"code": None, "signal": 11}, None), r.describe()
        assert_not_ours(r)
    assert abort_py.exit == {"code": None, "signal": 6}


# ---------------------------------------------------------------------------------------------
# the deadline


# The loops sleep a little: they must not end, not burn the test machine's CPU.
LOOP_PRINTING = """
import itertools, time
def main():
    for i in itertools.count():
        print("tick", i)
        time.sleep(0.001)
"""
LOOP_IGNORING_SIGTERM_PY = """
import signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
def main():
    print("partial output", flush=True)
    while True:
        time.sleep(0.01)
"""
LOOP_IGNORING_SIGTERM_JS = """
process.on('SIGTERM', () => {});
module.exports = () => {
  console.log('partial output');
  const cell = new Int32Array(new SharedArrayBuffer(4));
  for (;;) Atomics.wait(cell, 0, 0, 10);  // a synchronous loop: the event loop never runs
};
"""
STOPS_ITSELF = """
import os, signal
def main():
    print("stopping", flush=True)
    os.kill(os.getpid(), signal.SIGSTOP)
"""


def test_deadline_ends_runaway_code_and_keeps_partial_output(run):
    # timeoutMs leaves the code ample time to print first; no assertion is about speed.
    printing, ignoring_py, ignoring_js, stopped = run.gather(
        run.start(
            "python", LOOP_PRINTING, timeout_ms=1000, max_output_bytes=1 << 30, keep_bytes=200
        ),
        run.start("python", LOOP_IGNORING_SIGTERM_PY, timeout_ms=1500),
        run.start("nodejs", LOOP_IGNORING_SIGTERM_JS, timeout_ms=1500),
        run.start("python", STOPS_ITSELF, timeout_ms=1000),
    )
    assert printing.report["timedOut"] is True
    assert printing.report["outputLimited"] is False
    assert printing.exit == {"code": None, "signal": 15}  # SIGTERM was enough
    assert printing.result is None
    assert printing.stdout.startswith("tick 0\ntick 1\n")
    assert printing.report["stdout"]["truncated"] is True
    assert printing.report["usage"]["wallMs"] >= 1000

    for r in (ignoring_py, ignoring_js):
        assert r.report["timedOut"] is True, r.describe()
        assert r.exit == {"code": None, "signal": 9}  # SIGKILL after the grace period
        assert (r.result, r.stdout) == (None, "partial output\n")

    # SIGTERM stays pending on a stopped process; SIGKILL is what ends it.
    assert stopped.report["timedOut"] is True
    assert (stopped.exit, stopped.stdout) == ({"code": None, "signal": 9}, "stopping\n")


def test_child_that_leaves_its_process_group_cannot_outlive_the_run(run):
    # setsid() escapes the worker's process group; the supervisor still ends it (as a
    # subreaper here, with kill(-1) as PID 1) and does not wait for the pipe it holds open.
    code = src("""
        import subprocess
        def main():
            subprocess.Popen(["sleep", "300"], start_new_session=True)
            return "left a child behind"
    """)
    r = run("python", code)
    assert r.value == "left a child behind"
    assert r.exit == {"code": 0, "signal": None}


def test_double_forked_daemon_that_keeps_writing_is_ended(run):
    code = src("""
        import os, time
        def main():
            if os.fork() == 0:
                os.setsid()
                if os.fork() == 0:
                    while True:
                        print("daemon", flush=True)
                        time.sleep(0.01)
                os._exit(0)
            os.wait()
            time.sleep(0.1)
            return "parent done"
    """)
    r = run("python", code, timeout_ms=5000)
    assert r.value == "parent done"
    assert r.report["timedOut"] is False


def _can_unshare_pid() -> bool:
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("setpriv"):
        return False
    probe = subprocess.run(["unshare", "--pid", "--fork", "--kill-child", "true"], timeout=30)
    return probe.returncode == 0


def test_orphans_are_reaped_while_the_code_runs(run):
    # Orphans re-parent to the supervisor; unreaped, their zombies would count against the
    # process limit for the rest of the run. The code waits until each one is gone.
    code = src("""
        import os, time
        def main():
            reaped = []
            for _ in range(3):
                r, w = os.pipe()
                if os.fork() == 0:
                    pid = os.fork()
                    if pid == 0:
                        os._exit(0)
                    os.write(w, str(pid).encode())
                    os._exit(0)
                os.close(w)
                orphan = int(os.read(r, 32))
                os.wait()
                for _ in range(1000):
                    try:
                        os.kill(orphan, 0)
                    except ProcessLookupError:
                        reaped.append(True)
                        break
                    time.sleep(0.01)
                else:
                    reaped.append(False)
            return reaped
    """)
    assert run("python", code, timeout_ms=30_000).value == [True, True, True]


@pytest.mark.skipif(not _can_unshare_pid(), reason="needs root and unshare --pid")
def test_supervisor_as_pid_1_cleans_up_with_kill_minus_one(run):
    code = src("""
        import os, subprocess
        def main():
            subprocess.Popen(["sleep", "300"], start_new_session=True)
            if os.fork() == 0:
                os.setsid()
                os.execvp("sleep", ["sleep", "300"])
            return os.getpid()
    """)
    r = run("python", code, pid_namespace=True)
    assert r.value == 2  # the worker is the first child of PID 1
    assert r.returncode == 0


# ---------------------------------------------------------------------------------------------
# the output cap


def test_output_flood_is_cut_keeping_the_head(run):
    limit = 1 << 20
    flood_py, flood_js, flood_err = run.gather(
        run.start(
            "python",
            "import sys\ndef main():\n    while True:\n        sys.stdout.write('x' * 65536)",
            max_output_bytes=limit,
            keep_bytes=1000,
        ),
        run.start(
            "nodejs",
            "module.exports = () => { const s = 'x'.repeat(65536); for (;;) process.stdout.write(s); };",
            max_output_bytes=limit,
            keep_bytes=1000,
        ),
        run.start(
            "python",
            "import sys\ndef main():\n    print('head')\n    while True:\n        sys.stderr.write('e' * 4096)",
            max_output_bytes=100_000,
            keep_bytes=10,
        ),
    )
    for r in (flood_py, flood_js):
        assert r.report["outputLimited"] is True, r.describe()
        assert r.report["timedOut"] is False
        assert r.exit == {"code": None, "signal": 9}
        assert r.result is None
        out = r.report["stdout"]
        assert (out["text"], out["truncated"]) == ("x" * 1000, True)
        assert out["bytes"] > limit  # everything read is counted, the head is kept
    # Both streams count towards one cap.
    assert flood_err.report["outputLimited"] is True
    assert flood_err.stdout == "head\n"
    assert flood_err.report["stdout"]["bytes"] + flood_err.report["stderr"]["bytes"] > 100_000


def test_output_cap_and_head_edge_cases(run):
    over_at_exit, utf8_cut, bad_py, bad_js = run.gather(
        run.start(
            "python",
            "import sys\ndef main():\n    sys.stdout.write('y' * 2000 + '\\n')",
            max_output_bytes=1000,
        ),
        run.start("python", "def main():\n    print('é' * 10)", keep_bytes=5),
        run.start(
            "python", "import sys\ndef main():\n    sys.stdout.buffer.write(b'ok\\xff\\xfe\\n')"
        ),
        run.start(
            "nodejs",
            "module.exports = () => { process.stdout.write(Buffer.from([0x6f, 0x6b, 0xff, 0xfe, 0x0a])); };",
        ),
    )
    # Over the cap is over the cap, whether the worker was still running when it was read.
    assert over_at_exit.report["outputLimited"] is True
    assert over_at_exit.report["stdout"]["bytes"] == 2001
    # The head is cut on a character boundary, never inside "é".
    assert utf8_cut.report["stdout"] == {"text": "éé", "bytes": 21, "truncated": True}
    # Invalid UTF-8 is replaced, not fatal.
    for r in (bad_py, bad_js):
        assert r.report["stdout"] == {"text": "ok\ufffd\ufffd\n", "bytes": 5, "truncated": False}
        assert r.value is None


# ---------------------------------------------------------------------------------------------
# process and memory limits


@requires_root
def test_python_fork_bomb_is_contained(run):
    code = src("""
        import os
        def main():
            while True:
                os.fork()
    """)
    r = run("python", code, max_processes=24, timeout_ms=20_000, max_output_bytes=1 << 24)
    err = r.error
    assert (err["phase"], err["type"], err["errno"], err["code"]) == (
        "run",
        "BlockingIOError",
        11,
        "EAGAIN",
    )
    assert r.report["timedOut"] is False
    # conftest then checks that not one process of the bomb's uid is left


@requires_root
def test_node_process_bomb_is_contained(run):
    code = src("""
        const { spawn } = require('child_process');
        module.exports = async () => {
          for (let n = 0; ; n++) {
            await new Promise((ok, fail) => {
              const child = spawn('sleep', ['300']);
              child.once('spawn', ok);
              child.once('error', fail);
            });
          }
        };
    """)
    err = run("nodejs", code, max_processes=32, timeout_ms=20_000).error
    assert (err["phase"], err["errno"], err["code"], err["syscall"]) == (
        "run",
        11,
        "EAGAIN",
        "spawn sleep",
    )


def test_python_memory_error_under_an_address_space_limit(run):
    code = src("""
        def main():
            hog = []
            while True:
                hog.append(bytes(16 * 1024 * 1024))  # calloc'ed: address space, no page faults
    """)
    r = run("python", code, rlimit_as=384 * 1024 * 1024)
    err = r.error
    assert (err["phase"], err["type"]) == ("run", "MemoryError")
    assert r.exit == {"code": 1, "signal": None}


def _cgroup_v1(root: Path) -> None:
    (root / "memory").mkdir()
    (root / "memory" / "memory.oom_control").write_text(
        "oom_kill_disable 0\nunder_oom 0\noom_kill 4\n"
    )
    (root / "memory" / "memory.max_usage_in_bytes").write_text("123456789\n")
    (root / "memory" / "memory.limit_in_bytes").write_text("268435456\n")


def _cgroup_v2(root: Path) -> None:
    (root / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 4\n")
    (root / "memory.peak").write_text("123456789\n")
    (root / "memory.max").write_text("268435456\n")


# The cgroup is a fake directory: the "kernel" here is the user's code, which raises the
# counter and kills itself the way the OOM killer would.
OOM_BY_HAND = {
    "v1": ("memory/memory.oom_control", "oom_kill_disable 0\\nunder_oom 1\\noom_kill 5\\n"),
    "v2": ("memory.events", "low 0\\nhigh 0\\nmax 9\\noom 2\\noom_kill 5\\n"),
}


@pytest.mark.parametrize("layout", ["v1", "v2"])
def test_oom_kill_counter_rise_is_reported(run, layout):
    path, text = OOM_BY_HAND[layout]
    oom_code = src(f"""
        import os, signal
        def main():
            with open("cgroup/{path}", "w") as f:
                f.write("{text}")
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    layout_files = _cgroup_v1 if layout == "v1" else _cgroup_v2
    oom, steady = run.gather(
        run.start("python", oom_code, cgroup=layout_files),
        run.start("python", "def main():\n    return 1", cgroup=layout_files),
    )
    assert oom.report["oomKilled"] is True
    assert oom.exit == {"code": None, "signal": 9}
    assert oom.report["usage"]["cgroupPeakBytes"] == 123456789
    # Only a rise during the run counts, not OOM kills from before it.
    assert steady.report["oomKilled"] is False
    assert steady.report["usage"]["cgroupPeakBytes"] == 123456789


def test_node_heap_limit_is_set_above_the_container_limit(run):
    # V8 then never aborts first: running out of memory ends in the kernel's (counted) OOM kill.
    limited, unlimited = run.gather(
        run.start("nodejs", "module.exports = () => process.execArgv;", cgroup=_cgroup_v2),
        run.start("nodejs", "module.exports = () => process.execArgv;"),
    )
    assert limited.value == ["--max-old-space-size=512"]
    assert unlimited.value == []


# ---------------------------------------------------------------------------------------------
# user code that goes after the plumbing


def test_closing_stdout_and_stderr_does_not_lose_the_result(run):
    code = "import os\ndef main():\n    print('before', flush=True)\n    os.close(1)\n    os.close(2)\n    return 5"
    r = run("python", code)
    assert (r.value, r.stdout) == (5, "before\n")


def test_dup2_over_stdout_does_not_confuse_the_supervisor(run):
    code = src("""
        import os
        def main():
            print("visible", flush=True)
            os.dup2(os.open("/dev/null", os.O_WRONLY), 1)
            print("invisible", flush=True)
            with open("/proc/self/fd/2", "w") as err:
                err.write("via /proc\\n")
            return "ok"
    """)
    r = run("python", code)
    assert (r.value, r.stdout, r.stderr) == ("ok", "visible\n", "via /proc\n")


def test_result_pipe_is_not_fd_3_and_not_inherited(run):
    py_code = src("""
        import os, subprocess
        def main():
            with open("scratch.txt", "w") as f:
                first_fd = f.fileno()
            inherited = subprocess.run(["ls", "/proc/self/fd"], capture_output=True, text=True,
                                       close_fds=False).stdout.split()
            return [first_fd, sorted(int(fd) for fd in inherited)]
    """)
    js_code = src("""
        const { execFileSync } = require('child_process');
        module.exports = () => {
          const fds = execFileSync('ls', ['/proc/self/fd']).toString().split(/\\s+/).filter(Boolean);
          return fds.map(Number).sort();
        };
    """)
    py_run, js_run = run.gather(run.start("python", py_code), run.start("nodejs", js_code))
    first_fd, child_fds = py_run.value
    assert first_fd == 3  # the user's first file takes 3: fd 3 is no longer our pipe
    # A child sees stdio and `ls`'s own directory handle (3), nothing of the harness.
    assert child_fds == [0, 1, 2, 3]
    assert js_run.value == [0, 1, 2, 3]


FORGE_PY = """
import os
def _result_pipe():
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
        if fd >= 10 and target.startswith("pipe:"):
            return fd
"""


def test_garbage_written_to_the_result_pipe_voids_the_result(run):
    code = FORGE_PY + "def main():\n    os.write(_result_pipe(), b'garbage\\n')\n    return 1\n"
    r = run("python", code)
    assert (r.result, r.exit) == (None, {"code": 0, "signal": None})


def test_forged_record_must_match_the_exit_status(run):
    forged = '{"kind":"returned","value":"forged"}\\n'
    code = FORGE_PY + f"def main():\n    os.write(_result_pipe(), b'{forged}')\n    os._exit(1)\n"
    r = run("python", code)
    assert (r.result, r.exit) == (None, {"code": 1, "signal": None})


def test_huge_write_to_the_result_pipe_is_drained_and_dropped(run):
    code = (
        FORGE_PY
        + "def main():\n    fd = _result_pipe()\n    for _ in range(80):\n        os.write(fd, b'x' * 65536)\n    return 1\n"
    )
    r = run("python", code, maxResultBytes=65536)
    assert (r.result, r.exit) == (None, {"code": 0, "signal": None})


def test_forked_children_do_not_write_records(run):
    returns = src("""
        import os
        def main():
            pid = os.fork()
            if pid == 0:
                return "from the child"
            os.waitpid(pid, 0)
            return "from the worker"
    """)
    raises = src("""
        import os
        def main():
            pid = os.fork()
            if pid == 0:
                raise RuntimeError("child failed")
            _, status = os.waitpid(pid, 0)
            return os.waitstatus_to_exitcode(status)
    """)
    returned, raised = run.gather(run.start("python", returns), run.start("python", raises))
    assert returned.value == "from the worker"
    # The child behaves like any Python process: traceback on stderr, exit status 1.
    assert raised.value == 1
    assert "RuntimeError: child failed" in raised.stderr


def test_threads_left_running_do_not_hold_the_result(run):
    code = src("""
        import threading, time
        def spin():
            while True:
                time.sleep(0.01)
        def main():
            threading.Thread(target=spin).start()
            return "returned"
    """)
    r = run("python", code, timeout_ms=5000)
    assert (r.value, r.report["timedOut"]) == ("returned", False)
