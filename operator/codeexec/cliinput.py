"""What a user hands the `codeexec` command: the code's file, `--arg`/`--args-json` arguments and
`--file` input files, read and checked before anything reaches the API server."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

LANGUAGE_BY_SUFFIX = {".py": "python", ".js": "nodejs", ".cjs": "nodejs", ".mjs": "nodejs"}


class UsageError(Exception):
    """A mistake in the command line that argparse cannot catch."""


def infer_language(path: str, explicit: str | None) -> str:
    if explicit:
        return explicit
    if path == "-":
        return "python"  # stdin has no suffix; --language nodejs for JavaScript
    language = LANGUAGE_BY_SUFFIX.get(Path(path).suffix.lower())
    if language is None:
        known = ", ".join(sorted(LANGUAGE_BY_SUFFIX))
        raise UsageError(f"cannot tell the language of {path!r} (known: {known}); use --language")
    return language


def parse_value(text: str) -> Any:
    """`--arg` values are JSON when they parse as JSON (5, true, [1,2], {"a":1}, "quoted"),
    and plain strings otherwise (hello, 1.2.3): what a shell user means in either case."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_arguments(pairs: Sequence[str], args_json: str | None) -> dict[str, Any]:
    """`--args-json` first, then each `--arg k=v` on top of it (later wins)."""
    arguments: dict[str, Any] = {}
    if args_json is not None:
        try:
            loaded = json.loads(args_json)
        except ValueError as err:
            raise UsageError(f"--args-json is not valid JSON: {err}") from err
        if not isinstance(loaded, dict):
            raise UsageError("--args-json must be a JSON object (main receives keyword arguments)")
        arguments.update(loaded)
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--arg {pair!r} is not of the form key=value")
        arguments[key] = parse_value(value)
    return arguments


def read_code(path: str) -> str:
    try:
        if path == "-":
            return sys.stdin.read()
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(f"cannot read {path}: {error}") from error


def read_input_files(specs: Sequence[str]) -> list[dict[str, Any]]:
    """`--file LOCAL[:NAME]`: each local file inline in spec.files, under NAME (default: its
    base name) in the code's working directory."""
    from codeexec.client import input_file
    from codeexec.files import path_problem

    files = []
    for spec in specs:
        local, sep, name = spec.partition(":")
        name = name if sep else Path(local).name
        problem = path_problem(name)
        if problem is not None:
            raise UsageError(f"--file {spec}: {problem}")
        try:
            data = Path(local).read_bytes()
        except OSError as error:
            raise UsageError(f"cannot read {local}: {error}") from error
        try:
            files.append(input_file(name, data.decode("utf-8")))
        except UnicodeDecodeError:
            files.append(input_file(name, data))
    return files
