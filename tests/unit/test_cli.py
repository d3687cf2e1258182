"""The `codeexec` CLI: argument parsing, --arg typing, output and exit codes (no cluster)."""

from __future__ import annotations

import io
import subprocess
import sys
from typing import Any

import pytest

from codeexec import cli
from codeexec.api.models import CodeExecution


def execution(status: dict[str, Any] | None = None, **spec: Any) -> CodeExecution:
    return CodeExecution.from_body(
        {
            "metadata": {"name": "cx-abc", "namespace": "team", "uid": "u1"},
            "spec": {"language": "python", "code": "def main(): pass", **spec},
            "status": status or {},
        }
    )


SUCCEEDED: dict[str, Any] = {
    "phase": "Succeeded",
    "reason": "Succeeded",
    "duration": "0.31s",
    "result": {"status": "success", "returnValue": 10, "stdout": "hi\n", "stderr": "warn\n"},
}
FAILED: dict[str, Any] = {
    "phase": "Failed",
    "reason": "UserException",
    "message": "the program raised ZeroDivisionError",
    "duration": "0.40s",
    "result": {
        "status": "program_error",
        "error": {
            "type": "ZeroDivisionError",
            "message": "division by zero",
            "traceback": 'Traceback (most recent call last):\n  File "main.py", line 2\n',
        },
    },
}


# --- --arg typing ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("5", 5),
        ("-2.5", -2.5),
        ("true", True),
        ("null", None),
        ("[1, 2]", [1, 2]),
        ('{"a": 1}', {"a": 1}),
        ('"5"', "5"),  # quoted JSON: the way to pass a string that looks like a number
        ("hello", "hello"),  # not JSON: a plain string
        ("1.2.3", "1.2.3"),
        ("", ""),
        ("x=y", "x=y"),
    ],
)
def test_arg_values_are_json_when_they_parse_else_strings(text: str, value: Any) -> None:
    assert cli.parse_value(text) == value
    assert type(cli.parse_value(text)) is type(value)


def test_args_split_on_the_first_equals_sign() -> None:
    assert cli.parse_arguments(["q=a=b", "n=3"], None) == {"q": "a=b", "n": 3}


def test_arg_overrides_args_json() -> None:
    merged = cli.parse_arguments(["x=5"], '{"x": 1, "y": [true]}')
    assert merged == {"x": 5, "y": [True]}


@pytest.mark.parametrize("pair", ["novalue", "=5"])
def test_malformed_arg_is_a_usage_error(pair: str) -> None:
    with pytest.raises(cli.UsageError, match="key=value"):
        cli.parse_arguments([pair], None)


@pytest.mark.parametrize(("text", "why"), [("{not json", "not valid JSON"), ("[1]", "object")])
def test_args_json_must_be_a_json_object(text: str, why: str) -> None:
    with pytest.raises(cli.UsageError, match=why):
        cli.parse_arguments([], text)


# --- language -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "language"),
    [("a.py", "python"), ("dir/b.js", "nodejs"), ("c.mjs", "nodejs"), ("D.PY", "python")],
)
def test_language_is_inferred_from_the_suffix(path: str, language: str) -> None:
    assert cli.infer_language(path, None) == language


def test_explicit_language_wins_over_the_suffix() -> None:
    assert cli.infer_language("script.py", "nodejs") == "nodejs"


def test_unknown_suffix_without_language_is_a_usage_error() -> None:
    with pytest.raises(cli.UsageError, match="--language"):
        cli.infer_language("notes.txt", None)


# --- the parser -----------------------------------------------------------------------------


def test_run_parses_every_option() -> None:
    args = cli.build_parser().parse_args(
        [
            "run",
            "f.py",
            "--language",
            "python",
            "--arg",
            "x=5",
            "--arg",
            "y=z",
            "--args-json",
            "{}",
            "--timeout",
            "30",
            "--pool",
            "fast",
            "-n",
            "team",
            "--keep",
            "-q",
        ]
    )
    assert (args.file, args.language, args.arg, args.args_json) == (
        "f.py",
        "python",
        ["x=5", "y=z"],
        "{}",
    )
    assert (args.timeout, args.pool, args.namespace, args.keep, args.quiet) == (
        30,
        "fast",
        "team",
        True,
        True,
    )


def test_run_defaults_leave_everything_to_the_server() -> None:
    args = cli.build_parser().parse_args(["run", "f.js"])
    assert args.language is None and args.timeout is None and args.pool is None
    assert args.namespace is None and args.keep is False and args.arg is None


def test_get_and_list_parse() -> None:
    get = cli.build_parser().parse_args(["get", "cx-1", "-n", "team", "-o", "yaml"])
    assert (get.names, get.namespace, get.output) == (["cx-1"], "team", "yaml")
    ls = cli.build_parser().parse_args(["list", "-n", "team"])
    assert ls.namespace == "team"


@pytest.mark.parametrize(
    "argv", [["run"], ["run", "f.py", "--language", "ruby"], ["get", "x", "-o", "table"]]
)
def test_bad_command_lines_exit_2(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.build_parser().parse_args(argv)
    assert exc.value.code == cli.EXIT_USAGE


def test_usage_errors_exit_2_before_any_api_call(capsys: pytest.CaptureFixture[str]) -> None:
    # No kubeconfig is needed to find out that the arguments are wrong.
    with pytest.raises(SystemExit) as exc:
        cli.main(["run", "notes.txt"])
    assert exc.value.code == cli.EXIT_USAGE
    assert "--language" in capsys.readouterr().err


def test_missing_file_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["run", "/nonexistent/x.py"])
    assert exc.value.code == cli.EXIT_USAGE
    assert "cannot read" in capsys.readouterr().err


def test_the_cli_does_not_import_kopf() -> None:
    # Kopf (and the operator's handlers) load only for `codeexec operator`.
    code = (
        "import sys, codeexec.cli as c; c.build_parser('run'); c.build_parser('list'); "
        "import codeexec.client; print('kopf' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --- results and exit codes -----------------------------------------------------------------


def test_success_prints_output_then_the_return_value_and_exits_0() -> None:
    out, err = io.StringIO(), io.StringIO()
    assert cli.report(execution(SUCCEEDED), out, err) == cli.EXIT_OK
    assert out.getvalue() == "hi\n10\n"
    assert err.getvalue() == "warn\n"


def test_success_returning_none_prints_null() -> None:
    out = io.StringIO()
    done = execution({**SUCCEEDED, "result": {"status": "success"}})
    assert cli.report(done, out, io.StringIO()) == cli.EXIT_OK
    assert out.getvalue() == "null\n"


def test_failure_exits_1_with_reason_and_traceback_on_stderr() -> None:
    out, err = io.StringIO(), io.StringIO()
    assert cli.report(execution(FAILED), out, err) == cli.EXIT_FAILED
    assert out.getvalue() == ""
    lines = err.getvalue().splitlines()
    assert lines[0] == "codeexec: failed: UserException: ZeroDivisionError: division by zero"
    assert lines[1] == "Traceback (most recent call last):"


def test_failure_without_error_details_shows_the_status_message() -> None:
    err = io.StringIO()
    timeout = {"phase": "Failed", "reason": "WallTimeout", "message": "ran over 2s"}
    assert cli.report(execution(timeout), io.StringIO(), err) == cli.EXIT_FAILED
    assert "codeexec: failed: WallTimeout: ran over 2s" in err.getvalue()


@pytest.mark.parametrize(
    ("status", "code"),
    [(SUCCEEDED, 0), (FAILED, 1), ({"phase": "Failed", "reason": "PoolExhausted"}, 1)],
)
def test_exit_code_is_0_only_for_succeeded(status: dict[str, Any], code: int) -> None:
    assert cli.exit_code(execution(status)) == code


def test_truncated_return_value_is_reported_not_printed() -> None:
    out, err = io.StringIO(), io.StringIO()
    result = {"status": "success", "returnValueTruncated": True, "returnValueBytes": 9_000_000}
    big = {**SUCCEEDED, "result": result}
    assert cli.report(execution(big), out, err) == cli.EXIT_OK
    assert out.getvalue() == ""
    assert "9000000 bytes" in err.getvalue()


def test_progress_prints_each_stage_once() -> None:
    err = io.StringIO()
    progress = cli.Progress(err)
    progress(execution())
    progress(execution({"phase": "Pending", "message": "waiting for a warm pod"}))
    running = {"phase": "Running", "queuedMs": 12, "sandbox": {"pod": "python-1a2b"}}
    progress(execution(running))
    progress(execution(running))
    progress(execution(SUCCEEDED))
    assert err.getvalue().splitlines() == [
        "codeexec: cx-abc: queued: waiting for the operator",
        "codeexec: cx-abc: running: in sandbox pod python-1a2b, queued 12 ms",
        "codeexec: cx-abc: done: Succeeded in 0.31s",
    ]


def test_quiet_progress_prints_nothing() -> None:
    err = io.StringIO()
    progress = cli.Progress(err, quiet=True)
    progress(execution(SUCCEEDED))
    assert err.getvalue() == ""


def test_list_rows_show_outcome_and_result() -> None:
    rows = [
        cli.LIST_HEADER,
        cli.summary_row(execution(SUCCEEDED)),
        cli.summary_row(execution(FAILED)),
        cli.summary_row(execution({"phase": "Running"})),
    ]
    lines = cli.table(rows).splitlines()
    assert lines[0].split() == cli.LIST_HEADER
    assert lines[1].split() == ["cx-abc", "python", "Succeeded", "Succeeded", "10", "0.31s"]
    assert "UserException" in lines[2] and "ZeroDivisionError: division by zero" in lines[2]
    assert lines[3].split() == ["cx-abc", "python", "Running", "Running"]
