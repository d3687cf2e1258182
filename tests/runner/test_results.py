"""What `main` returned or raised reaches the report as the worker's result record.

Independent cases of one test run side by side (`run.start` + `run.gather`): the suite's time
is mostly interpreter start-up.
"""

from __future__ import annotations

import os
import socket
import textwrap
from pathlib import Path

import pytest

requires_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to use a spare uid")


def src(code: str) -> str:
    return textwrap.dedent(code).lstrip("\n")


# ---------------------------------------------------------------------------------------------
# success


@pytest.mark.parametrize("as_root", [False, True], ids=["unprivileged", "root"])
def test_python_main_doubles_its_argument(run, as_root):
    r = run("python", "def main(x): return x * 2", {"x": 5}, as_root=as_root)
    assert r.report["started"] is True
    assert r.report["protocolError"] is None
    assert r.exit == {"code": 0, "signal": None}
    assert r.result == {"kind": "returned", "value": 10}
    assert r.report["timedOut"] is False
    assert r.report["outputLimited"] is False
    assert r.report["oomKilled"] is False
    assert r.raw_stderr == b""  # the supervisor itself says nothing


NODE_EXPORT_STYLES = {
    "sync, module.exports = main": "module.exports = function main(args) { return args.x * 2; };",
    "async arrow": "module.exports = async (args) => { await null; return args.x * 2; };",
    "module.exports = { main }": "function main({ x }) { return x * 2; }\nmodule.exports = { main };",
    "exports.main, promise": (
        "exports.main = (args) => new Promise((ok) => setTimeout(() => ok(args.x * 2), 5));"
    ),
}


@pytest.mark.parametrize("as_root", [False, True], ids=["unprivileged", "root"])
def test_node_main_in_every_export_style(run, as_root):
    styles = list(NODE_EXPORT_STYLES.items())
    runs = run.gather(*(run.start("nodejs", code, {"x": 5}, as_root=as_root) for _, code in styles))
    for (style, _), r in zip(styles, runs, strict=True):
        assert r.result == {"kind": "returned", "value": 10}, (style, r.describe())
        assert r.exit == {"code": 0, "signal": None}, style


def test_python_async_main_is_awaited(run):
    code = src("""
        import asyncio
        async def main(x):
            await asyncio.sleep(0.01)
            return {"doubled": x * 2, "items": [1, "a", None, True, 1.5]}
    """)
    r = run("python", code, {"x": 4})
    assert r.value == {"doubled": 8, "items": [1, "a", None, True, 1.5]}


def test_python_none_and_node_undefined_are_null(run):
    py, js = run.gather(
        run.start("python", "def main(): print('x')"),
        run.start("nodejs", "module.exports = () => { console.log('x'); };"),
    )
    assert py.value is None
    assert js.value is None


def test_stdout_without_trailing_newline_is_kept(run):
    for r in run.gather(
        run.start("python", "def main():\n    print('no newline', end='')\n    return 1"),
        run.start(
            "nodejs", "module.exports = () => { process.stdout.write('no newline'); return 1; };"
        ),
    ):
        assert (r.stdout, r.report["stdout"]["bytes"], r.value) == ("no newline", 10, 1)


def test_stderr_is_captured_separately(run):
    for r in run.gather(
        run.start(
            "python", "import sys\ndef main():\n    print('out')\n    print('err', file=sys.stderr)"
        ),
        run.start(
            "nodejs", "module.exports = () => { console.log('out'); console.error('err'); };"
        ),
    ):
        assert (r.stdout, r.stderr) == ("out\n", "err\n")


def test_main_guard_of_a_script_does_not_run(run):
    # As in the seed's runner (`from main import main`), the code is module `main`.
    code = src("""
        def main():
            return __name__
        if __name__ == "__main__":
            raise SystemExit(9)
    """)
    py, js = run.gather(
        run.start("python", code),
        run.start("nodejs", "module.exports = () => require.main === module;"),
    )
    assert py.value == "main"
    assert js.value is False


def test_user_code_reading_stdin_gets_eof_not_the_request(run):
    for r in run.gather(
        run.start("python", "import sys\ndef main():\n    return sys.stdin.read()"),
        run.start("nodejs", "module.exports = () => require('fs').readFileSync(0, 'utf8');"),
    ):
        assert r.value == ""


def _node_module(name: str, source: str):
    def add(workdir: Path, uid: int | None) -> None:
        lib = workdir / "lib" / name
        lib.mkdir(parents=True)
        (lib / "index.js").write_text(source)

    return add


def test_preloaded_modules_are_imported_before_the_request(run):
    py, js = run.gather(
        run.start(
            "python",
            "import sys\ndef main():\n    return 'fractions' in sys.modules",
            env={"CODEEXEC_PRELOAD": "fractions, no_such_module_anywhere"},
        ),
        run.start(
            "nodejs",
            "module.exports = () => [globalThis.preloadedAt, require('preloaded-thing')];",
            before=_node_module(
                "preloaded-thing", "globalThis.preloadedAt = 'warm-up';\nmodule.exports = 7;\n"
            ),
            env={"CODEEXEC_PRELOAD": "preloaded-thing,no-such-module", "NODE_PATH": "lib"},
        ),
    )
    assert py.value is True
    assert js.value == ["warm-up", 7], js.describe()


def test_timeout_counts_from_a_ready_worker(run):
    # The preload takes 1.5 s, longer than timeoutMs: a deadline counted from the delivery of
    # the request (made at once) would fire before the code had a chance to run.
    r = run(
        "nodejs",
        "module.exports = () => 'in time';",
        before=_node_module(
            "slow", "Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 1500);\n"
        ),
        env={"CODEEXEC_PRELOAD": "slow", "NODE_PATH": "lib"},
        timeout_ms=1000,
    )
    assert r.value == "in time", r.describe()
    assert r.report["runner"]["warmMs"] >= 1500


def test_usage_and_timing_fields_are_present_and_positive(run):
    runs = run.gather(
        run.start(
            "python",
            "def main():\n    n = 0\n    for i in range(300000):\n        n += i\n    return n",
        ),
        run.start(
            "nodejs",
            "module.exports = () => { let n = 0; for (let i = 0; i < 3e6; i++) n += i; return n; };",
        ),
    )
    for language, r in zip(["python", "nodejs"], runs, strict=True):
        usage = r.report["usage"]
        assert usage["wallMs"] > 0
        assert usage["cpuMs"] > 0
        assert usage["maxRssKb"] > 0
        assert usage["cgroupPeakBytes"] is None  # the test's fake cgroup has no files
        runner = r.report["runner"]
        assert (runner["version"], runner["language"]) == ("1", language)
        assert runner["warmMs"] > 0


# ---------------------------------------------------------------------------------------------
# compile and entrypoint errors


def test_syntax_errors_have_line_and_column(run):
    py, js, esm = run.gather(
        run.start("python", "x = 1\ndef main(:\n    return 1\n"),
        run.start("nodejs", "module.exports = (x) => {\n  return x +;\n};\n"),
        run.start("nodejs", "import fs from 'fs';\nexport default () => 1;\n"),
    )
    err = py.error
    assert (err["phase"], err["type"], err["line"]) == ("compile", "SyntaxError", 2)
    assert err["column"] >= 1
    assert "def main(:" in err["traceback"]
    assert py.exit == {"code": 1, "signal": None}

    err = js.error
    assert (err["phase"], err["type"], err["line"], err["column"]) == (
        "compile",
        "SyntaxError",
        2,
        13,
    )
    assert "Unexpected token" in err["message"]
    assert "main.js:2" in err["traceback"]

    err = esm.error  # an ES module is not CommonJS: refused before anything runs
    assert (err["phase"], err["type"], err["line"]) == ("compile", "SyntaxError", 1)


def test_missing_main_is_an_entrypoint_error(run):
    cases = [
        ("python", "def helper():\n    return 1\n"),
        ("python", "main = 42\n"),
        ("nodejs", "module.exports = { helper() { return 1; } };"),
        ("nodejs", "const main = () => 1;"),
    ]
    for case, r in zip(cases, run.gather(*(run.start(*c) for c in cases)), strict=True):
        err = r.error
        assert (err["phase"], err["type"]) == ("entrypoint", "MainNotFound"), case


def test_arguments_that_do_not_bind_are_an_entrypoint_error(run):
    bad, inside = run.gather(
        run.start("python", "def main(x, *, y=1):\n    return x", {"z": 3}),
        run.start("python", "def main(**kw):\n    return len(5)", {"a": 1}),
    )
    err = bad.error
    assert (err["phase"], err["type"]) == ("entrypoint", "TypeError")
    assert "main(x, *, y=1)" in err["message"]
    # A TypeError raised inside main is the program's, not a binding problem.
    assert (inside.error["phase"], inside.error["type"]) == ("run", "TypeError")


# ---------------------------------------------------------------------------------------------
# run errors


def test_uncaught_exception_traceback_is_trimmed_to_user_frames(run):
    py_code = src("""
        import json

        def parse(text):
            return json.loads(text)

        def main():
            print("before")
            return parse("{not json")
    """)
    js_code = src("""
        function parse(text) {
          return JSON.parse(text);
        }
        module.exports = function main() {
          return parse('{not json');
        };
    """)
    py, js = run.gather(run.start("python", py_code), run.start("nodejs", js_code))

    err = py.error
    assert (err["phase"], err["type"]) == ("run", "json.decoder.JSONDecodeError")
    assert err["message"].startswith("Expecting property name")
    frames = [line for line in err["traceback"].splitlines() if line.startswith("  File ")]
    assert frames == ['  File "main.py", line 8, in main', '  File "main.py", line 4, in parse']
    assert "return json.loads(text)" in err["traceback"]
    assert "worker.py" not in err["traceback"]
    assert "json/decoder.py" not in err["traceback"]
    assert py.stdout == "before\n"
    assert py.exit == {"code": 1, "signal": None}

    err = js.error
    assert (err["phase"], err["type"]) == ("run", "SyntaxError")
    at_lines = [line.strip() for line in err["traceback"].splitlines() if "    at " in line]
    assert at_lines == ["at parse (main.js:2:15)", "at main (main.js:5:10)"]
    assert "worker.js" not in err["traceback"]
    assert js.exit == {"code": 1, "signal": None}


def test_user_defined_exception_types_keep_their_names(run):
    py, js = run.gather(
        run.start("python", "class Boom(Exception):\n    pass\ndef main():\n    raise Boom('x')"),
        run.start(
            "nodejs",
            "class Boom extends Error {}\nmodule.exports = () => { throw new Boom('x'); };",
        ),
    )
    assert py.error["type"] == "Boom"
    assert js.error["type"] == "Boom"


def test_node_thrown_non_errors_are_named_by_their_type(run):
    cases = [
        ("throw 'plain text';", "string", "plain text"),
        ("throw 42;", "number", "42"),
        ("throw { code: 7 };", "object", "{ code: 7 }"),
        ("throw null;", "null", "null"),
    ]
    runs = run.gather(
        *(run.start("nodejs", f"module.exports = () => {{ {c[0]} }};") for c in cases)
    )
    for (_, type_, message), r in zip(cases, runs, strict=True):
        err = r.error
        assert (err["phase"], err["type"], err["message"]) == ("run", type_, message)


def test_message_saying_permission_denied_is_still_its_own_type(run):
    py, js = run.gather(
        run.start("python", "def main():\n    raise ValueError('Permission denied: /etc/shadow')"),
        run.start(
            "nodejs", "module.exports = () => { throw new Error('EACCES: permission denied'); };"
        ),
    )
    err = py.error
    assert (err["type"], err["message"]) == ("ValueError", "Permission denied: /etc/shadow")
    assert (err["errno"], err["code"]) == (None, None)
    err = js.error
    assert (err["type"], err["errno"], err["code"]) == ("Error", None, None)


def _root_only_file(workdir: Path, uid: int | None) -> None:
    secret = workdir / "secret.txt"
    secret.write_text("top secret")
    secret.chmod(0o600)
    os.chown(secret, 0, 0)


@requires_root
def test_real_permission_error_carries_errno_and_code(run):
    py, js = run.gather(
        run.start(
            "python", "def main():\n    return open('secret.txt').read()", before=_root_only_file
        ),
        run.start(
            "nodejs",
            "module.exports = () => require('fs').readFileSync('secret.txt', 'utf8');",
            before=_root_only_file,
        ),
    )
    err = py.error
    assert (err["type"], err["errno"], err["code"]) == ("PermissionError", 13, "EACCES")
    assert err["filename"] == "secret.txt"
    err = js.error
    assert (err["type"], err["errno"], err["code"], err["syscall"]) == (
        "Error",
        13,
        "EACCES",
        "open",
    )
    assert err["filename"] == "secret.txt"


@requires_root
def test_forbidden_operation_is_eperm(run):
    # Giving a file away needs CAP_CHOWN. (Node.js's process.setuid() is no use here: builds
    # that may use io_uring refuse it before any syscall, CVE-2024-22017.)
    chown_py = "import os\ndef main():\n    open('mine', 'w').close()\n    os.chown('mine', 0, 0)"
    chown_js = src("""
        const fs = require('fs');
        module.exports = () => { fs.writeFileSync('mine', ''); fs.chownSync('mine', 0, 0); };
    """)
    py, setuid, js = run.gather(
        run.start("python", chown_py),
        run.start("python", "import os\ndef main():\n    os.setuid(0)"),
        run.start("nodejs", chown_js),
    )
    # Python maps EPERM to PermissionError too: `code` is what tells it from EACCES.
    err = py.error
    assert (err["type"], err["errno"], err["code"]) == ("PermissionError", 1, "EPERM")
    # set*id is on the supervisor's seccomp kill list: the kernel's SIGSYS, not an errno the
    # program could have raised itself (caught: without confine.install_seccomp this was EPERM).
    assert setuid.exit == {"code": None, "signal": 31}
    assert setuid.report["result"] is None
    err = js.error
    assert (err["type"], err["errno"], err["code"], err["syscall"]) == (
        "Error",
        1,
        "EPERM",
        "chown",
    )


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_connection_refused_is_reported_with_its_code(run):
    port = _closed_port()
    py_code = src(f"""
        import socket
        def main():
            socket.create_connection(("127.0.0.1", {port}), timeout=5)
    """)
    js_code = src(f"""
        const net = require('net');
        module.exports = () => new Promise((ok, fail) => {{
          net.connect({port}, '127.0.0.1', ok).on('error', fail);
        }});
    """)
    py, js = run.gather(run.start("python", py_code), run.start("nodejs", js_code))
    err = py.error
    assert (err["type"], err["errno"], err["code"]) == (
        "ConnectionRefusedError",
        111,
        "ECONNREFUSED",
    )
    err = js.error
    assert (err["type"], err["errno"], err["code"], err["syscall"]) == (
        "Error",
        111,
        "ECONNREFUSED",
        "connect",
    )


def test_wrapped_errors_keep_their_root_cause(run):
    port = _closed_port()
    url_code = src(f"""
        import urllib.request
        def main():
            urllib.request.urlopen("http://127.0.0.1:{port}/", timeout=5)
    """)
    chain_code = src("""
        def main():
            try:
                open("/nonexistent/config.toml")
            except OSError as exc:
                raise RuntimeError("could not load the config") from exc
    """)
    js_code = src(f"""
        const net = require('net');
        module.exports = async () => {{
          try {{
            await new Promise((ok, fail) => net.connect({port}, '127.0.0.1', ok).on('error', fail));
          }} catch (e) {{
            throw new Error('could not reach the service', {{ cause: e }});
          }}
        }};
    """)
    url, chain, js = run.gather(
        run.start("python", url_code), run.start("python", chain_code), run.start("nodejs", js_code)
    )
    err = url.error
    assert err["type"] == "urllib.error.URLError"
    root = {"type": "ConnectionRefusedError", "errno": 111, "code": "ECONNREFUSED"}
    assert root.items() <= err["causes"][0].items()

    err = chain.error
    assert (err["type"], err["errno"]) == ("RuntimeError", None)
    assert err["causes"] == [
        {
            "type": "FileNotFoundError",
            "message": "[Errno 2] No such file or directory: '/nonexistent/config.toml'",
            "errno": 2,
            "code": "ENOENT",
        }
    ]
    assert "The above exception was the direct cause" in err["traceback"]

    err = js.error
    assert (err["type"], err["message"], err["code"]) == (
        "Error",
        "could not reach the service",
        None,
    )
    assert err["causes"] == [
        {
            "type": "Error",
            "message": f"connect ECONNREFUSED 127.0.0.1:{port}",
            "errno": 111,
            "code": "ECONNREFUSED",
        }
    ]


def test_name_resolution_failure_is_reported_with_its_code(run):
    py, js = run.gather(
        run.start(
            "python",
            "import socket\ndef main():\n    socket.getaddrinfo('no-such-host.invalid', 80)",
        ),
        run.start(
            "nodejs",
            "module.exports = () => require('dns').promises.lookup('no-such-host.invalid');",
        ),
    )
    err = py.error
    assert err["type"] == "socket.gaierror"
    assert err["code"] in ("EAI_NONAME", "EAI_AGAIN", "EAI_FAIL", "EAI_NODATA")
    assert err["errno"] < 0
    err = js.error
    assert err["code"] in ("ENOTFOUND", "EAI_AGAIN", "EAI_FAIL")
    assert err["syscall"] == "getaddrinfo"


def test_more_run_errors(run):
    interrupt, py_top, js_top, rejected = run.gather(
        run.start(
            "python",
            "import os, signal, time\ndef main():\n    os.kill(os.getpid(), signal.SIGINT)\n    time.sleep(5)",
        ),
        run.start("python", "raise LookupError('at import')\ndef main():\n    return 1"),
        run.start("nodejs", "throw new RangeError('at load');\nmodule.exports = () => 1;"),
        run.start(
            "nodejs", "module.exports = async () => { throw new URIError('async failure'); };"
        ),
    )
    assert (interrupt.error["phase"], interrupt.error["type"]) == ("run", "KeyboardInterrupt")
    assert (py_top.error["phase"], py_top.error["type"]) == ("run", "LookupError")
    assert (js_top.error["phase"], js_top.error["type"]) == ("run", "RangeError")
    err = rejected.error
    assert (err["phase"], err["type"], err["message"]) == ("run", "URIError", "async failure")


def test_node_asynchronous_failures_while_main_is_pending(run):
    rejection_code = src("""
        module.exports = async () => {
          Promise.reject(new RangeError('nobody caught me'));
          await new Promise((ok) => setTimeout(ok, 30000));
        };
    """)
    callback_code = src("""
        module.exports = () => new Promise((ok) => {
          setTimeout(() => { throw new TypeError('late failure'); }, 1);
          setTimeout(ok, 30000);
        });
    """)
    never_code = "module.exports = () => new Promise(() => {});"
    rejection, callback, never = run.gather(
        run.start("nodejs", rejection_code),
        run.start("nodejs", callback_code),
        run.start("nodejs", never_code),
    )
    err = rejection.error
    assert (err["phase"], err["type"], err["message"]) == ("run", "RangeError", "nobody caught me")
    err = callback.error
    assert (err["phase"], err["type"], err["message"]) == ("run", "TypeError", "late failure")
    assert "main.js:2" in err["traceback"]
    err = never.error
    assert (err["phase"], err["type"]) == ("run", "PromiseNeverSettled")
    assert never.report["timedOut"] is False


def test_node_harness_survives_what_user_code_does_to_the_globals(run):
    timers = "module.exports = () => { setInterval(() => {}, 1000); setTimeout(() => {}, 60000); return 'done'; };"
    overrides = src("""
        process.exit = () => {};
        process.reallyExit = () => {};
        JSON.stringify = () => '"forged"';
        module.exports = () => ({ answer: 42 });
    """)
    timers_run, overrides_run = run.gather(
        run.start("nodejs", timers), run.start("nodejs", overrides)
    )
    assert (timers_run.value, timers_run.report["timedOut"]) == ("done", False)
    assert overrides_run.value == {"answer": 42}


# ---------------------------------------------------------------------------------------------
# serialization

PY_UNSERIALIZABLE = [
    ("return {1, 2}", "set", "$"),
    ("return {'data': b'raw'}", "bytes", "$['data']"),
    ("import datetime\n    return [datetime.datetime(2024, 1, 1)]", "datetime", "$[0]"),
    ("return {'x': float('nan')}", "NaN", "$['x']"),
    ("return [1, float('inf')]", "Infinity", "$[1]"),
    ("a = []\n    a.append(a)\n    return a", "cycle", "$[0]"),
    ("return {(1, 2): 'tuple key'}", "tuple", "$ (a key)"),
    ("return main", "function", "$"),
]


def test_python_unserializable_return_names_the_type(run):
    runs = run.gather(*(run.start("python", f"def main():\n    {c[0]}") for c in PY_UNSERIALIZABLE))
    for (body, type_, where), r in zip(PY_UNSERIALIZABLE, runs, strict=True):
        err = r.error
        assert (err["phase"], err["type"]) == ("serialize", type_), body
        assert f"at {where} " in err["message"], (body, err["message"])
        assert r.exit == {"code": 1, "signal": None}


NODE_UNSERIALIZABLE = [
    ("10n", "bigint", "$"),
    ("({ n: [1, 2n] })", "bigint", '$["n"][1]'),
    ("(() => { const a = {}; a.self = a; return a; })()", "cycle", '$["self"]'),
    ("() => 1", "function", "$"),
    ("[1, undefined]", "undefined", "$[1]"),
    ("({ v: NaN })", "NaN", '$["v"]'),
    ("[-Infinity]", "-Infinity", "$[0]"),
    ("new Map([[1, 2]])", "Map", "$"),
    ("[Symbol('s')]", "symbol", "$[0]"),
]


def test_node_unserializable_return_names_the_type(run):
    runs = run.gather(
        *(run.start("nodejs", f"module.exports = () => {c[0]};") for c in NODE_UNSERIALIZABLE)
    )
    for (expr, type_, where), r in zip(NODE_UNSERIALIZABLE, runs, strict=True):
        err = r.error
        assert (err["phase"], err["type"]) == ("serialize", type_), expr
        assert f"at {where} " in err["message"], (expr, err["message"])


def test_what_json_can_hold_is_returned(run):
    shared = "def main():\n    x = [1]\n    return {'a': x, 'b': x, 'c': (1, 2)}"
    lossless = (
        "module.exports = () => ({ d: new Date(0), skip: undefined, f() {}, s: new String('x') });"
    )
    py, js = run.gather(run.start("python", shared), run.start("nodejs", lossless))
    assert py.value == {"a": [1], "b": [1], "c": [1, 2]}  # shared, not cyclic
    assert js.value == {"d": "1970-01-01T00:00:00.000Z", "s": "x"}  # JSON.stringify's rules


def test_an_oversized_return_value_is_omitted_and_flagged_never_an_error(run):
    """A value too large to keep is main returning, not a program error (issue 11, 4c).

    caught: with the workers of main before this change (ResultTooLarge serialize error) this
    failed.
    """
    too_big_py, too_big_js, fits = run.gather(
        run.start("python", "def main():\n    return 'x' * 5000", maxResultBytes=4096),
        run.start("nodejs", "module.exports = () => 'x'.repeat(5000);", maxResultBytes=4096),
        run.start("python", "def main():\n    return 'x' * 4000", maxResultBytes=4096),
    )
    for r in (too_big_py, too_big_js):
        assert r.report["exit"]["code"] == 0
        assert r.result == {"kind": "returned", "value": None, "omitted": "TooLarge", "bytes": 5002}
    assert fits.value == "x" * 4000


DEEP_PY = "def main():\n    v = []\n    for _ in range({n}):\n        v = [v]\n    return v"
DEEP_JS = (
    "module.exports = () => {{ let v = []; for (let i = 0; i < {n}; i++) v = [v]; return v; }};"
)


def test_a_return_value_deeper_than_the_limit_is_omitted_and_flagged(run):
    """Nested 10,000 deep (or just past maxResultDepth) is omitted as TooDeep, exit 0; one
    within the limit comes back whole.

    caught: with the workers of main before this change (500-level walker, ResultTooLarge and
    NestingTooDeep as serialize errors) this failed.
    """
    runs = run.gather(
        run.start("python", DEEP_PY.format(n=9_999)),
        run.start("nodejs", DEEP_JS.format(n=9_999)),
        run.start("python", DEEP_PY.format(n=64)),
        run.start("nodejs", DEEP_JS.format(n=64)),
        run.start("python", DEEP_PY.format(n=63)),
        run.start("nodejs", DEEP_JS.format(n=63)),
    )
    for r in runs[:4]:
        assert r.report["exit"]["code"] == 0, r.report
        assert r.result is not None
        assert (r.result["omitted"], r.result["value"]) == ("TooDeep", None)
    for r in runs[4:]:
        value, levels = r.value, 0
        while isinstance(value, list):
            value, levels = (value[0] if value else None), levels + 1
        assert levels == 64


def test_a_node_tojson_cannot_smuggle_a_deeper_value_past_the_check(run):
    """Three checks hold it (checkJson follows toJSON and counts levels, the worker counts the
    JSON text, the supervisor counts again). caught: with all three removed it came back whole;
    with any one left it is omitted."""
    code = (
        "module.exports = () => ({ toJSON() { let v = []; "
        "for (let i = 0; i < 200; i++) v = [v]; return v; } });"
    )
    (r,) = run.gather(run.start("nodejs", code))
    assert r.result is not None and r.result.get("omitted") == "TooDeep"


def test_the_operator_limits_reach_the_worker(run):
    """maxResultDepth from the request is what the worker enforces."""
    py, js = run.gather(
        run.start("python", DEEP_PY.format(n=5), maxResultDepth=3),
        run.start("nodejs", DEEP_JS.format(n=5), maxResultDepth=3),
    )
    for r in (py, js):
        assert r.result is not None and r.result.get("omitted") == "TooDeep"
