"""The CLI's kubectl conventions without a cluster: connection options on every command, -o
json|yaml|wide|name, -A, `run -`, documented exit codes, shell and kubectl-plugin completion."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from codeexec import cli, completion, printers

NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def body(name: str, namespace: str = "team", **status: Any) -> dict[str, Any]:
    return {
        "apiVersion": "codeexec.io/v1alpha1",
        "kind": "CodeExecution",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": "u",
            "creationTimestamp": "2026-01-01T11:57:00Z",
        },
        "spec": {"language": "python", "code": "x"},
        "status": status,
    }


DONE = {
    "phase": "Succeeded",
    "reason": "Succeeded",
    "duration": "0.30s",
    "sandbox": {"pool": "python", "pod": "python-abc", "node": "node-1"},
    "result": {"status": "success", "returnValue": 10},
}


@pytest.mark.parametrize("command", ["run", "get", "list", "wait"])
def test_every_user_command_takes_kubeconfig_context_and_namespace(command: str) -> None:
    argv = [command, *(["f.py"] if command == "run" else [])]
    argv += ["--kubeconfig", "/a:/b", "--context", "prod", "-n", "team"]
    args = cli.build_parser(command).parse_args(argv)
    assert (args.kubeconfig, args.context, args.namespace) == ("/a:/b", "prod", "team")


@pytest.mark.parametrize("command", ["run", "get", "list"])
@pytest.mark.parametrize("output", ["json", "yaml", "wide", "name"])
def test_run_get_and_list_take_every_output_format(command: str, output: str) -> None:
    argv = [command, *(["-"] if command == "run" else []), "-o", output]
    assert cli.build_parser(command).parse_args(argv).output == output


def test_get_and_list_take_all_namespaces() -> None:
    assert cli.build_parser().parse_args(["get", "-A"]).all_namespaces is True
    assert cli.build_parser().parse_args(["list", "--all-namespaces"]).all_namespaces is True


def test_run_dash_reads_python_from_stdin_unless_told_otherwise() -> None:
    assert cli.infer_language("-", None) == "python"
    assert cli.infer_language("-", "nodejs") == "nodejs"


def test_run_dash_with_empty_stdin_is_a_usage_error() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "codeexec", "run", "-", "--kubeconfig", "/nonexistent"],
        input="",
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == cli.EXIT_USAGE
    assert "stdin holds no code" in proc.stderr


def test_an_unusable_kubeconfig_exits_3_with_the_reason() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "codeexec", "list", "--kubeconfig", "/nonexistent"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == cli.EXIT_API
    assert "no kubeconfig file found at /nonexistent" in proc.stderr


def test_help_documents_the_exit_codes() -> None:
    text = cli.build_parser().format_help() + cli.build_parser("run").format_help()
    for code in ("0 succeeded", "1 the execution", "2 usage", "3 the API server", "4 gave up"):
        assert code in " ".join(text.split())


def test_json_and_yaml_print_one_object_for_one_name_and_a_list_otherwise() -> None:
    one = json.loads(printers.render([body("a", **DONE)], "json", single=True))
    assert one["kind"] == "CodeExecution"
    many = yaml.safe_load(printers.render([body("a"), body("b")], "yaml"))
    assert many["kind"] == "List" and [i["metadata"]["name"] for i in many["items"]] == ["a", "b"]


def test_name_output_is_kind_dot_group_slash_name() -> None:
    assert printers.render([body("a"), body("b")], "name").split() == [
        "codeexecution.codeexec.io/a",
        "codeexecution.codeexec.io/b",
    ]


def test_wide_adds_pool_pod_node_and_age_and_all_namespaces_adds_namespace() -> None:
    lines = printers.render([body("a", **DONE)], "wide", all_namespaces=True, now=NOW).splitlines()
    assert lines[0].split() == ["NAMESPACE", *printers.LIST_HEADER, "POOL", "POD", "NODE", "AGE"]
    assert lines[1].split() == [
        "team", "a", "python", "Succeeded", "Succeeded", "10", "0.30s",
        "python", "python-abc", "node-1", "3m",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("created", "shown"),
    [("2026-01-01T11:59:58Z", "2s"), ("2026-01-01T11:50:00Z", "10m"),
     ("2026-01-01T09:00:00Z", "3h"), ("2025-12-29T12:00:00Z", "3d")],
)  # fmt: skip
def test_age_reads_like_kubectl(created: str, shown: str) -> None:
    assert printers.age(created, NOW) == shown


# --- completion ------------------------------------------------------------------------------


def test_completion_offers_subcommands_options_and_choices() -> None:
    parser = cli.build_parser()
    assert completion.candidates(parser, ["g"]) == ["gateway", "get"]
    assert "__complete" not in completion.candidates(parser, [""])
    assert completion.candidates(parser, ["get", "--all"]) == ["--all-namespaces"]
    assert completion.candidates(parser, ["list", "-o", ""]) == ["json", "yaml", "wide", "name"]
    assert completion.candidates(parser, ["run", "--language", "n"]) == ["nodejs"]
    assert completion.candidates(parser, ["run", "--kubeconfig", ""]) == []  # the shell's files


def test_completion_offers_the_kubeconfig_contexts(tmp_path: Path) -> None:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
        "users": [{"name": "u", "user": {}}],
        "contexts": [
            {"name": "prod", "context": {"cluster": "c", "user": "u"}},
            {"name": "staging", "context": {"cluster": "c", "user": "u"}},
        ],
        "current-context": "prod",
    }
    path = tmp_path / "config"
    path.write_text(yaml.safe_dump(config))
    words = ["get", "--kubeconfig", str(path), "--context", ""]
    assert completion.candidates(cli.build_parser(), words) == ["prod", "staging"]


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_the_completion_scripts_are_valid_shell(shell: str) -> None:
    script = completion.script(shell)
    assert "__complete" in script
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)


def test_bash_completion_completes_through_the_cli() -> None:
    """The script, sourced in a real bash, asks `codeexec __complete` and fills COMPREPLY."""
    program = Path(sys.executable).parent / "codeexec"
    probe = (
        f"{completion.script('bash')}\n"
        f"COMP_WORDS=({program} list -o w); COMP_CWORD=3\n"
        "_codeexec_complete; printf '%s\\n' \"${COMPREPLY[@]}\"\n"
    )
    out = subprocess.run(["bash"], input=probe, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["wide"]


def test_kubectl_plugin_completion_speaks_cobras_format() -> None:
    program = Path(sys.executable).parent / "kubectl_complete-codeexec"
    out = subprocess.run(
        [str(program), "list", "-o", "ya"], capture_output=True, text=True, check=True
    )
    assert out.stdout.splitlines() == ["yaml", ":4"]
