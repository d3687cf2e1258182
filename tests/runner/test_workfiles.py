"""Input files and artifacts through the real supervisor and workers (images/runner/workfiles.py)."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from tests.runner.conftest import Runner

LIMITS = {"maxFiles": 3, "maxFileBytes": 1000, "maxTotalBytes": 1500}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _artifact_records(stdout: bytes) -> list[dict[str, Any]]:
    return [json.loads(line[5:]) for line in stdout.split(b"\n") if line.startswith(b"CXA1 ")]


def test_input_files_are_readable_by_relative_path(run: Runner) -> None:
    code = (
        "def main():\n"
        "    with open('data.csv') as f:\n"
        "        rows = f.read().split()\n"
        "    with open('conf/x.bin', 'rb') as f:\n"
        "        blob = f.read()\n"
        "    import os\n"
        "    return [rows, list(blob), os.path.isdir('artifacts')]\n"
    )
    files = [
        {"path": "data.csv", "b64": _b64(b"a,b\n1,2\n")},
        {"path": "conf/x.bin", "b64": _b64(bytes([0, 255, 7]))},
    ]
    result = run("python", code, files=files)
    assert result.value == [["a,b", "1,2"], [0, 255, 7], True]


def test_node_reads_input_files_too(run: Runner) -> None:
    code = "module.exports = () => require('fs').readFileSync('in.txt', 'utf8');"
    result = run("nodejs", code, files=[{"path": "in.txt", "b64": _b64(b"hello")}])
    assert result.value == "hello"


def test_an_escaping_input_path_is_a_protocol_error(run: Runner) -> None:
    """Checked twice (parse_request, then place_files). caught: removing the checks in
    workfiles.path_parts made this run the code."""
    for bad in ("../x", "/etc/x", "a/../../x", ""):
        result = run("python", "def main(): return 1", files=[{"path": bad, "b64": ""}])
        assert result.report["started"] is False, bad
        assert "file path" in (result.report["protocolError"] or ""), bad


def test_artifacts_come_back_byte_identical_on_the_stream(run: Runner) -> None:
    code = (
        "def main():\n"
        "    open('artifacts/a.bin', 'wb').write(bytes(range(256)))\n"
        "    open('artifacts/b.txt', 'w').write('hi')\n"
        "    return 1\n"
    )
    result = run("python", code, artifacts=LIMITS)
    records = _artifact_records(result.raw_stdout)
    assert [r["name"] for r in records] == ["a.bin", "b.txt"]
    assert base64.b64decode(records[0]["b64"]) == bytes(range(256))
    listing = result.report["artifacts"]
    assert listing[0]["sha256"] == hashlib.sha256(bytes(range(256))).hexdigest()
    assert result.report["artifactLimit"] is None


def test_artifacts_are_collected_after_a_timeout(run: Runner) -> None:
    code = (
        "import time\n"
        "def main():\n"
        "    open('artifacts/partial.txt', 'w').write('so far')\n"
        "    time.sleep(60)\n"
    )
    result = run("python", code, artifacts=LIMITS, timeout_ms=1000)
    assert result.report["timedOut"] is True
    assert [a["name"] for a in result.report["artifacts"]] == ["partial.txt"]


def test_each_artifact_limit_keeps_what_fits(run: Runner) -> None:
    many = "def main():\n    for i in range(5):\n        open(f'artifacts/f{i}', 'w').write('x')\n"
    big = (
        "def main():\n"
        "    open('artifacts/a-big', 'w').write('x' * 1001)\n"
        "    open('artifacts/b-ok', 'w').write('x' * 10)\n"
    )
    total = (
        "def main():\n"
        "    open('artifacts/a', 'w').write('x' * 900)\n"
        "    open('artifacts/b', 'w').write('x' * 900)\n"
        "    open('artifacts/c', 'w').write('x' * 100)\n"
    )
    runs = Runner.gather(
        run.start("python", many, artifacts=LIMITS),
        run.start("python", big, artifacts=LIMITS),
        run.start("python", total, artifacts=LIMITS),
    )
    expected = [
        ("count", ["f0", "f1", "f2"], ["f3", "f4"]),
        ("fileSize", ["b-ok"], ["a-big"]),
        ("totalSize", ["a", "c"], ["b"]),
    ]
    for result, (kind, kept, skipped) in zip(runs, expected, strict=True):
        assert result.report["artifactLimit"]["kind"] == kind, result.describe()
        assert [a["name"] for a in result.report["artifacts"]] == kept
        assert result.report["artifactLimit"]["skipped"] == skipped
        assert [r["name"] for r in _artifact_records(result.raw_stdout)] == kept


def test_planted_symlinks_and_fifos_are_never_followed(run: Runner) -> None:
    """caught: opening artifacts without O_NOFOLLOW returned the target's bytes."""
    code = (
        "import os\n"
        "def main():\n"
        "    open('secret.txt', 'w').write('not an artifact')\n"
        "    os.symlink('../secret.txt', 'artifacts/link.txt')\n"
        "    os.symlink('/etc/passwd', 'artifacts/passwd')\n"
        "    os.mkfifo('artifacts/fifo')\n"
        "    open('artifacts/real.txt', 'w').write('ok')\n"
    )
    result = run("python", code, artifacts=LIMITS)
    assert [a["name"] for a in result.report["artifacts"]] == ["real.txt"]
    assert b"not an artifact" not in result.raw_stdout


def test_an_artifacts_symlink_to_elsewhere_is_refused(run: Runner) -> None:
    code = (
        "import os\n"
        "def main():\n"
        "    os.rmdir('artifacts')\n"
        "    os.mkdir('elsewhere')\n"
        "    open('elsewhere/x', 'w').write('x')\n"
        "    os.symlink('elsewhere', 'artifacts')\n"
    )
    result = run("python", code, artifacts=LIMITS)
    assert result.report["artifacts"] == []
    assert "not a directory" in result.report["artifactProblem"]


def test_artifacts_of_an_early_report_are_read_after_every_writer_is_gone(run: Runner) -> None:
    """The report goes out before the worker's reap (exit.from proc) even with artifacts, but
    only once every other process of the user's is dead: a daemon appending to an artifact as
    fast as it can has written its last byte before the artifact is read, so what was sent is
    what the file holds afterwards. (Without processes.wait_gone this still passed here: the
    SIGKILL lands before the read; the wait bounds the in-flight write it cannot see.)"""
    code = (
        "import os, time\n"
        "def main():\n"
        "    if os.fork() == 0:\n"
        "        os.setsid()\n"
        "        fd = os.open('artifacts/log.txt', os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)\n"
        "        while True:\n"
        "            os.write(fd, b'x' * 100)\n"
        "    while not os.path.exists('artifacts/log.txt') or os.path.getsize('artifacts/log.txt') < 1000:\n"
        "        time.sleep(0.001)\n"
        "    return 1\n"
    )
    result = run(
        "python", code, artifacts={**LIMITS, "maxFileBytes": 1 << 30, "maxTotalBytes": 1 << 30}
    )
    assert result.exit_from == "proc", result.describe()
    records = _artifact_records(result.raw_stdout)
    sent = base64.b64decode(records[0]["b64"])
    assert len(sent) >= 1000
    assert sent == (result.workdir / "artifacts" / "log.txt").read_bytes()
