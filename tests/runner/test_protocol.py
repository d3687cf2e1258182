"""The wire contract around the run: request framing and validation, the single report line,
the pod's own record in the termination log, and a worker that never gets going."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from codeexec.protocol import ReportReader, started_line

SUPERVISOR = Path(__file__).resolve().parents[2] / "images" / "runner" / "supervisor.py"

NOT_STARTED_NULLS = ("exit", "result", "stdout", "stderr", "usage")


def load_supervisor() -> Any:
    spec = importlib.util.spec_from_file_location("codeexec_supervisor", SUPERVISOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


supervisor = load_supervisor()


def assert_not_started(r, problem: str, *request_ids: str | None) -> None:
    rep = r.report
    assert rep["started"] is False, r.describe()
    assert problem in rep["protocolError"], rep["protocolError"]
    assert rep["id"] in (request_ids or (None,))
    for key in NOT_STARTED_NULLS:
        assert rep[key] is None, key
    assert (rep["timedOut"], rep["outputLimited"], rep["oomKilled"]) == (False, False, False)
    assert r.returncode == 0
    assert r.termination_log is not None and r.termination_log.startswith("CXR1 ")
    assert json.loads(r.termination_log[5:]) == rep


# ---------------------------------------------------------------------------------------------
# request framing and validation


def test_stdin_eof_before_a_request_ends_without_running_anything(run):
    r = run("python", "def main(): return 1", close_stdin=True)
    assert_not_started(r, "stdin closed before a request arrived")


def test_partial_line_then_eof_is_not_a_request(run):
    req = json.dumps(make_request("python", "def main(): return 1")).encode()
    r = run("python", raw_line=req[:-5], close_stdin=True)
    assert_not_started(r, "stdin closed before a request arrived")


def make_request(
    language: str, code: str, request_id: str = "abcdefghijklmnop-1234"
) -> dict[str, Any]:
    return {
        "protocol": "codeexec.io/runner/v1",
        "id": request_id,
        "language": language,
        "code": code,
        "arguments": {},
        "timeoutMs": 10_000,
        "maxOutputBytes": 1 << 20,
        "keepBytes": 1 << 16,
    }


def _line(language: str = "python", **changes: Any) -> bytes:
    req = make_request(language, "def main(): return 1")
    for key, value in changes.items():
        if value is ...:
            del req[key]
        else:
            req[key] = value
    return json.dumps(req).encode() + b"\n"


BAD_REQUESTS = [
    (b"this is not json\n", "not a JSON line", None),
    (b"[1, 2, 3]\n", "not a JSON object", None),
    (b"\xff\xfe{}\n", "not a JSON line", None),
    (_line(protocol="codeexec.io/runner/v0"), "protocol must be", "abcdefghijklmnop-1234"),
    (_line(id="short"), "id must be", None),
    (_line(id="has spaces in it, sixteen+"), "id must be", None),
    (_line(language="nodejs"), "language must be 'python'", "abcdefghijklmnop-1234"),
    (_line(code=...), "code must be a string", "abcdefghijklmnop-1234"),
    (_line(arguments=[1]), "arguments must be an object", "abcdefghijklmnop-1234"),
    (_line(timeoutMs=0), "timeoutMs must be a positive integer", "abcdefghijklmnop-1234"),
    (_line(timeoutMs=True), "timeoutMs must be a positive integer", "abcdefghijklmnop-1234"),
    (_line(maxOutputBytes=1.5), "maxOutputBytes must be", "abcdefghijklmnop-1234"),
    (_line(keepBytes=...), "keepBytes must be", "abcdefghijklmnop-1234"),
    (_line(maxResultBytes=-1), "maxResultBytes must be", "abcdefghijklmnop-1234"),
    (b'{"timeoutMs": NaN}\n', "not a JSON line", None),
]


@pytest.mark.parametrize(("line", "problem", "rid"), BAD_REQUESTS)
def test_request_validation(line, problem, rid):
    request, got_id, message = supervisor.parse_request(line.rstrip(b"\n"), "python")
    assert request is None
    assert problem in message
    assert got_id == rid


def test_valid_request_parses_with_defaults():
    request, _, message = supervisor.parse_request(_line().rstrip(b"\n"), "python")
    assert message is None
    assert (request.id, request.timeout_ms, request.max_result_bytes) == (
        "abcdefghijklmnop-1234",
        10_000,
        1024 * 1024,
    )


def test_malformed_requests_are_refused_without_running_anything(run):
    # stdin stays open: the line alone decides, and the pod ends itself after the refusal.
    cases = [BAD_REQUESTS[0], BAD_REQUESTS[3], BAD_REQUESTS[9]]
    runs = run.gather(*(run.start("python", raw_line=line) for line, _, _ in cases))
    for (line, problem, rid), r in zip(cases, runs, strict=True):
        assert_not_started(r, problem, rid)
        assert r.termination_log is not None and not r.termination_log.startswith("CXS1"), line


def test_request_line_over_the_size_limit_is_refused(run):
    line = b'{"code": "' + b"x" * (4 * 1024 * 1024 + 10) + b'"}\n'
    r = run("python", raw_line=line)
    assert_not_started(r, "longer than")


def test_request_may_arrive_in_pieces_and_stdin_is_never_waited_on(run):
    req = make_request("python", "def main(x): return x")
    req["arguments"] = {"x": "é" * 50_000}
    req = json.dumps(req)
    r = run("python", raw_line=req.encode() + b"\n" + b"trailing bytes are ignored")
    assert r.value == "é" * 50_000


# ---------------------------------------------------------------------------------------------
# the report


def test_forged_report_line_in_user_output_is_just_output(run):
    forged = 'CXR1 {"protocol":"codeexec.io/runner/v1","id":"0000000000000000","started":true}'
    code = f"import sys\ndef main():\n    print({forged!r})\n    print({forged!r}, file=sys.stderr)\n    return 'real'"
    js_code = f"module.exports = () => {{ console.log({forged!r}); return 'real'; }};"
    py, js = run.gather(
        run.start("python", code, request_id="real-request-id-1234"),
        run.start("nodejs", js_code, request_id="real-request-id-5678"),
    )
    for r, rid in ((py, "real-request-id-1234"), (js, "real-request-id-5678")):
        assert r.report["id"] == rid
        assert r.value == "real"
        assert r.stdout == forged + "\n"
        # The supervisor's own stdout: exactly two lines, the started record and the real
        # report (which quotes the user's output, escaped, inside its JSON).
        lines = r.raw_stdout.split(b"\n")
        assert len(lines) == 3 and lines[2] == b""
        assert lines[0] == started_line(rid)
        assert lines[1].startswith(b"CXR1 ")
    assert py.stderr == forged + "\n"


def test_started_record_on_stdout_is_what_the_operator_recognises(run):
    # The operator's reader and the supervisor's writer must agree byte for byte: the record
    # is how a session opened ahead of the claim learns that its request arrived.
    r = run("python", "def main():\n    return 1", request_id="started-record-id-42")
    reader = ReportReader("started-record-id-42")
    report = reader.feed(r.raw_stdout)
    assert reader.started is True
    assert report is not None and report.started is True
    other = ReportReader("someone-elses-id-000")
    assert other.feed(r.raw_stdout) is None
    assert other.started is False


def test_termination_log_records_the_start_then_the_compact_report(run):
    # The user's code reads the termination log while it runs: it holds CXS1 then, with a
    # digest of the id only (the id would let a program forge a CXR1 record there).
    code = "def main():\n    return open('termination-log').read()"
    r = run("python", code, request_id="the-real-request-id-42", keep_bytes=1 << 20)
    during = r.value
    assert during.startswith("CXS1 ")
    record = json.loads(during[5:])
    assert record == {
        "idSha256": hashlib.sha256(b"the-real-request-id-42").hexdigest(),
        "started": True,
    }
    assert "the-real-request-id-42" not in during
    assert r.termination_log is not None
    assert r.termination_log.startswith("CXR1 ")
    assert json.loads(r.termination_log[5:]) == r.report


def test_termination_log_report_is_shortened_to_fit(run):
    code = "def main():\n    print('o' * 100000)\n    raise ValueError('m' * 20000)"
    r = run("python", code, keep_bytes=1 << 20)
    assert r.report["stdout"]["text"] == "o" * 100000 + "\n"
    tl = r.termination_log
    assert tl is not None and len(tl.encode()) <= 4000
    compact = json.loads(tl[5:])
    assert compact["id"] == r.report["id"]
    assert compact["stdout"]["truncated"] is True
    assert compact["stdout"]["bytes"] == 100001
    assert compact["result"]["type"] == "ValueError"
    assert compact["exit"] == r.report["exit"]


def test_ready_file_appears_when_the_worker_is_warm(run):
    r = run(
        "python",
        "import os\ndef main():\n    return os.path.exists('ready')",
        env={"CODEEXEC_READY_FILE": "ready"},
    )
    assert r.value is True
    assert (r.workdir / "ready").read_text() == "ready\n"


# ---------------------------------------------------------------------------------------------
# a worker that never gets going


def _crashing_worker(workdir: Path, uid: int | None) -> None:
    (workdir / "crash.py").write_text(
        "import sys\nsys.stderr.write('ImportError: the image is broken\\n')\nsys.exit(3)\n"
    )


def test_worker_that_never_gets_ready_is_reported_not_waited_for(run):
    # Whether the request arrived before the worker died or not, the code never ran; the
    # id is echoed when the request had been read.
    rid = "request-for-a-broken-pod"
    crashed, missing = run.gather(
        run.start(
            "python",
            "def main(): return 1",
            before=_crashing_worker,
            worker="crash.py",
            request_id=rid,
        ),
        run.start(
            "python", "def main(): return 1", interpreter="/nonexistent/python3", request_id=rid
        ),
    )
    assert_not_started(crashed, "worker exited before the request (exit code 3)", None, rid)
    assert "the image is broken" in crashed.report["protocolError"]
    assert_not_started(missing, "exit code 127", None, rid)
    assert "cannot start the worker" in missing.report["protocolError"]


# ---------------------------------------------------------------------------------------------
# the supervisor's pure parts


def test_compact_report_always_fits_and_stays_json():
    report = {
        "protocol": supervisor.PROTOCOL,
        "id": "x" * 64,
        "started": True,
        "protocolError": None,
        "exit": {"code": 1, "signal": None},
        "timedOut": False,
        "outputLimited": True,
        "oomKilled": False,
        "result": {
            "kind": "error",
            "phase": "run",
            "type": "T" * 200,
            "message": "\u2603" * 8192,
            "traceback": "t" * 32768,
            "errno": None,
            "line": None,
            "column": None,
            "code": "C" * 200,
            "syscall": "S" * 200,
            "filename": "F" * 200,
            "causes": [{"type": "X" * 200, "message": "m" * 1024, "errno": 1, "code": "E"}] * 8,
        },
        "stdout": {"text": "\u00e9" * 50000, "bytes": 100000, "truncated": True},
        "stderr": {"text": "\u0000" * 50000, "bytes": 50000, "truncated": False},
        "usage": {"wallMs": 1.0, "cpuMs": 1.0, "maxRssKb": 1, "cgroupPeakBytes": 1},
        "runner": {"version": "1", "language": "python", "warmMs": 1.0},
    }
    line = supervisor.reporting.compact(report)
    assert len(line.encode()) <= 4000
    small = json.loads(line[5:])
    assert small["result"]["type"] == "T" * 200
    assert small["stderr"]["truncated"] is True

    report["result"] = {"kind": "returned", "value": list(range(5000))}
    small = json.loads(supervisor.reporting.compact(report)[5:])
    # Flagged with its size: never readable as `return None` (issue 11, 4b).
    assert small["result"] == {
        "kind": "returned",
        "value": None,
        "omitted": "NotReported",
        "bytes": len(json.dumps(list(range(5000)), separators=(",", ":"))),
    }

    report["stdout"] = report["stderr"] = None
    report["result"] = {"kind": "returned", "value": 10}
    assert json.loads(supervisor.reporting.compact(report)[5:]) == report


@pytest.mark.parametrize(
    ("data", "exit_code", "expected"),
    [
        (b'{"kind":"ready"}\n{"kind":"returned","value":1}\n', 0, {"kind": "returned", "value": 1}),
        (b'{"kind":"ready"}\n{"kind":"returned","value":1}\n', 1, None),
        (b'{"kind":"ready"}\n{"kind":"returned","value":1}\n', None, None),
        (b'{"kind":"ready"}\n{"kind":"returned","value":1}', 0, None),
        (
            b'{"kind":"ready"}\n{"kind":"returned","value":1}\n{"kind":"returned","value":2}\n',
            0,
            None,
        ),
        (b'{"kind":"ready"}\n{"kind":"error","phase":"run","type":"E"}\n', 0, None),
        (b'{"kind":"ready"}\n{"kind":"error","phase":"nope","type":"E"}\n', 1, None),
        (b'{"kind":"ready"}\n{"kind":"returned","value":NaN}\n', 0, None),
        (b'{"kind":"ready"}\n', 0, None),
        (b"", 0, None),
        (b'{"kind":"ready"}\n\xff\n', 0, None),
    ],
)
def test_result_record_is_cross_checked_with_the_exit(data, exit_code, expected):
    result, _ = supervisor.reporting.interpret_result(data, False, exit_code)
    assert result == expected


def test_error_record_is_sanitized():
    data = (
        b'{"kind":"ready"}\n{"kind":"error","phase":"run","type":"E","message":"m",'
        b'"errno":"13","code":13,"extra":"dropped","causes":[{"type":"C"},"junk"]}\n'
    )
    result, ready = supervisor.reporting.interpret_result(data, False, 1)
    assert ready is True
    assert result["errno"] is None and result["code"] is None
    assert "extra" not in result
    assert result["causes"] == [{"type": "C", "message": "", "errno": None, "code": None}]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"abc", b"abc"),
        ("a\u00e9".encode(), "a\u00e9".encode()),
        ("a\u00e9".encode()[:2], b"a"),
        ("\u2603".encode()[:2], b""),
        ("x\U0001f600".encode()[:4], b"x"),
        ("x\U0001f600".encode(), "x\U0001f600".encode()),
    ],
)
def test_head_is_cut_between_characters(data, expected):
    assert supervisor.reporting.cut_utf8(data) == expected


def test_only_the_first_request_line_ever_runs(run):
    # Pods keep stdin open across attach sessions, so a resent or foreign second line can
    # reach the supervisor: it must be neither run nor visible to the user's code.
    first = make_request("python", "import sys\ndef main():\n    return sys.stdin.read()")
    second = make_request("python", "def main():\n    return 'second'")
    lines = json.dumps(first).encode() + b"\n" + json.dumps(second).encode() + b"\n"
    r = run("python", raw_line=lines + json.dumps(first).encode() + b"\n")
    assert r.report["id"] == first["id"]
    assert r.value == ""
    assert r.raw_stdout.count(b"CXR1 ") == 1


def test_the_supervisor_passes_on_a_value_no_deeper_than_the_request_allows() -> None:
    """Whatever the worker wrote (it runs the user's code in its own process), the report
    carries no value deeper than maxResultDepth, and an omitted value keeps its reason and size.

    caught: without the supervisor's own depth check, the 100-deep record went through.
    """
    deep: Any = []
    for _ in range(99):
        deep = [deep]
    line = json.dumps({"kind": "returned", "value": deep}).encode()
    result, _ = supervisor.reporting.interpret_result(
        b'{"kind":"ready"}\n' + line + b"\n", False, 0, 64
    )
    assert result == {"kind": "returned", "value": None, "omitted": "TooDeep", "bytes": None}
    line = b'{"kind":"returned","value":null,"omitted":"TooLarge","bytes":5000}'
    result, _ = supervisor.reporting.interpret_result(
        b'{"kind":"ready"}\n' + line + b"\n", False, 0
    )
    assert result == {"kind": "returned", "value": None, "omitted": "TooLarge", "bytes": 5000}
    line = b'{"kind":"returned","value":7,"omitted":"Whatever","bytes":5000}'
    result, _ = supervisor.reporting.interpret_result(
        b'{"kind":"ready"}\n' + line + b"\n", False, 0
    )
    assert result == {"kind": "returned", "value": 7}


def test_the_request_carries_the_result_limits_to_the_runner() -> None:
    """The operator's maxResultBytes/maxResultDepth reach the supervisor (issue 11, 8).

    caught: without maxResultBytes on the request line the runner fell back to 1 MiB.
    """
    from codeexec.protocol import Request

    line = Request("abcdefghijklmnop-1234", "python", "x", {}, 1000, 1 << 20, 65536).encode()
    request, _, problem = supervisor.parse_request(line.strip(), "python")
    assert problem is None and request is not None
    assert (request.max_result_bytes, request.max_result_depth) == (256 * 1024, 64)


def test_the_report_marks_each_part_of_the_road_in_order(run):
    # The operator splits a run's time with these marks (protocol.road_parts): a mark taken out
    # of order would put time in the wrong part, and a missing one would hide the worker's exit.
    code = "import time\ndef main():\n    time.sleep(0.05)\n    return 1"
    r = run("python", code, request_id="road-marks-00000001")
    marks = ReportReader("road-marks-00000001").feed(r.raw_stdout)
    assert marks is not None and marks.started, r.describe()
    timing = marks.timing
    order = ["receivedAt", "startedAt", "resultAt", "exitedAt", "reportAt"]
    assert list(timing) == order, timing
    assert [timing[k] for k in order] == sorted(timing[k] for k in order)
    assert timing["resultAt"] - timing["startedAt"] >= 0.05  # the sleep is in the run part
