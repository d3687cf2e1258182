"""The report goes out once the kernel holds the worker's exit status, before its memory is freed.

The status is read from /proc (images/runner/exiting.py), never from the program; everything of
the user's is sent SIGKILL before the report, and the reap follows it. Runs under a spare uid,
as in a pod, so /proc shows the supervisor only what the kernel shows a peer.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from test_processes import FORGE_PY, requires_root, src


@requires_root
def test_a_result_goes_out_on_the_stored_exit_status_not_after_the_reap(run):
    big = "def main():\n    global b\n    b = bytearray(200 << 20)\n    b[::4096] = b'x' * (len(b) // 4096)\n    return 7\n"
    raises = "def main():\n    raise ValueError('no')\n"
    js = "module.exports = { main: () => ({ a: [1, 2] }) };"
    js_throws = "module.exports = { main: () => { throw new RangeError('no'); } };"
    py, py_err, node, node_err = run.gather(
        run.start("python", big, timeout_ms=20000),
        run.start("python", raises),
        run.start("nodejs", js),
        run.start("nodejs", js_throws),
    )
    assert (py.value, py.exit, py.exit_from) == (7, {"code": 0, "signal": None}, "proc")
    assert (py_err.error["type"], py_err.exit, py_err.exit_from) == (
        "ValueError",
        {"code": 1, "signal": None},
        "proc",
    ), py_err.describe()
    assert (node.value, node.exit_from) == ({"a": [1, 2]}, "proc")
    assert (node_err.error["type"], node_err.exit_from) == ("RangeError", "proc")
    for r in (py, py_err, node, node_err):
        usage = r.report["usage"]
        assert usage["cpuMs"] is not None and usage["cpuMs"] >= 0, r.describe()
        assert r.returncode == 0 and r.leftovers == [], r.describe()
    # The high-water mark as last read while the worker had its memory (at least at the start).
    assert all(r.report["usage"]["maxRssKb"] > 0 for r in (py, py_err, node, node_err))


@requires_root
def test_all_output_written_before_the_result_is_in_an_early_report(run):
    # More than a pipe holds (64 KiB), on both streams, right before the return.
    code = src("""
        import sys
        def main():
            sys.stdout.write("o" * 300000)
            sys.stderr.write("e" * 200000)
            return "done"
    """)
    js = src("""
        module.exports = { main: () => {
          process.stdout.write("o".repeat(300000));
          process.stderr.write("e".repeat(200000));
          return "done";
        } };
    """)
    for r in run.gather(
        run.start("python", code, keepBytes=1 << 20), run.start("nodejs", js, keepBytes=1 << 20)
    ):
        assert (r.value, r.exit_from) == ("done", "proc"), r.describe()
        assert r.report["stdout"]["bytes"] == 300000 and r.report["stderr"]["bytes"] == 200000
        assert r.report["stdout"]["text"] == "o" * 300000


@requires_root
def test_a_record_alone_never_ends_the_run(run):
    # A forged record while the program goes on: the worker is not exiting, so nothing is read
    # from /proc and the deadline ends it as any other runaway.
    code = FORGE_PY + src("""
        import time
        def main():
            os.write(_result_pipe(), b'{"kind":"returned","value":"forged"}\\n')
            time.sleep(60)
    """)
    r = run("python", code, timeout_ms=1000)
    assert r.report["timedOut"] is True, r.describe()
    assert (r.result, r.exit_from) == (None, "wait")


@requires_root
def test_a_record_followed_by_another_exit_waits_for_the_reap(run):
    forged = '{"kind":"returned","value":"forged"}\\n'
    kill = (
        FORGE_PY
        + f"import signal\ndef main():\n    os.write(_result_pipe(), b'{forged}')\n    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    exit3 = FORGE_PY + f"def main():\n    os.write(_result_pipe(), b'{forged}')\n    os._exit(3)\n"
    killed, exited = run.gather(run.start("python", kill), run.start("python", exit3))
    assert (killed.result, killed.exit, killed.exit_from) == (
        None,
        {"code": None, "signal": 9},
        "wait",
    ), killed.describe()
    assert (exited.result, exited.exit, exited.exit_from) == (
        None,
        {"code": 3, "signal": None},
        "wait",
    ), exited.describe()


@requires_root
def test_nothing_of_the_users_runs_on_after_an_early_report(run, tmp_path):
    # A daemon that escaped the worker's group and session writes the time as fast as it can;
    # its last write must come before the report was made.
    code = src("""
        import os, time
        def main():
            if os.fork() == 0:
                os.setsid()
                if os.fork() == 0:
                    fd = os.open("ticks", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                    while True:
                        os.pwrite(fd, repr(time.time()).encode().ljust(32), 0)
                os._exit(0)
            while not os.path.exists("ticks") or os.path.getsize("ticks") == 0:
                time.sleep(0.001)
            return "left a daemon"
    """)
    js = src("""
        const { spawn } = require('child_process');
        const fs = require('fs');
        module.exports = { main: async () => {
          spawn('python3', ['-c', 'import os, time\\nfd = os.open("ticks", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)\\nwhile True:\\n    os.pwrite(fd, repr(time.time()).encode().ljust(32), 0)'],
                { detached: true, stdio: 'ignore' }).unref();
          while (!fs.existsSync('ticks') || fs.statSync('ticks').size === 0) {
            await new Promise((r) => setTimeout(r, 1));
          }
          return 'left a daemon';
        } };
    """)
    for r in run.gather(run.start("python", code), run.start("nodejs", js)):
        assert (r.value, r.exit_from) == ("left a daemon", "proc"), r.describe()
        last_tick = float((r.workdir / "ticks").read_text().strip())
        assert last_tick <= r.report["timing"]["reportAt"], r.describe()
        assert r.leftovers == []


def test_exiting_reads_nothing_from_a_live_process_and_the_status_from_a_dying_one(tmp_path):
    import subprocess
    import sys

    runner = Path(__file__).resolve().parents[2] / "images" / "runner"
    sys.path.insert(0, str(runner))
    try:
        import exiting  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(runner))
    r, w = os.pipe()
    live = subprocess.Popen(
        [sys.executable, "-c", f"import os, time\nos.write({w}, b'x')\ntime.sleep(60)"],
        pass_fds=[w],
    )
    os.read(r, 1)  # running its own code: its memory is in place
    try:
        assert exiting.exit_status(live.pid) is None
        assert exiting.shows_exit_codes(live.pid) is True
        assert (exiting.cpu_ms(live.pid) or 0) >= 0
    finally:
        live.kill()
        live.wait()
    # Gone: nothing to read, never an exception.
    assert exiting.exit_status(live.pid) is None
    assert exiting.read_stat(live.pid) is None
    dying = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import os\nb = bytearray(300 << 20)\nb[::4096] = b'x' * (len(b) // 4096)\n"
            f"os.write({w}, b'x')\nos._exit(3)",
        ],
        pass_fds=[w],
    )
    os.close(w)
    os.read(r, 1)
    # Never reaped here, so the status stays readable (a zombie keeps it) until we have it.
    deadline = time.monotonic() + 60
    seen = None
    while seen is None and time.monotonic() < deadline:
        seen = exiting.exit_status(dying.pid)
    assert seen == 3 << 8
    assert dying.wait() == 3
