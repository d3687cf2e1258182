"""The body of `POST /run`, checked as the original checked it, before anything is created.

Pure. Problems are reported all at once in FastAPI's 422 shape (the original was a FastAPI
app): `{"detail": [{"type", "loc", "msg"}]}`; the input itself is never echoed (it is code).
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any, cast

from codeexec import jsonbounds
from codeexec.api.models import MAX_CODE_BYTES, Language

LANGUAGES: tuple[Language, ...] = ("python", "nodejs")


@dataclass(frozen=True)
class Problem:
    type: str
    loc: tuple[str, ...]
    msg: str

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "loc": list(self.loc), "msg": self.msg}


class Invalid(Exception):
    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{'.'.join(p.loc)}: {p.msg}" for p in problems))

    def to_json(self) -> dict[str, Any]:
        return {"detail": [p.to_json() for p in self.problems]}


@dataclass(frozen=True)
class RunRequest:
    code: str
    language: Language
    arguments: dict[str, Any]

    @property
    def code_bytes(self) -> int:
        return len(self.code.encode())


def _no_constants(name: str) -> Any:
    # NaN and Infinity are not JSON: the API server would refuse the arguments later.
    raise ValueError(f"{name} is not valid JSON")


def parse_run_request(body: bytes) -> RunRequest:
    """The request, or `Invalid` with every problem found."""
    try:
        # Bounded: a body nested 10,000 deep is cut (and refused below), never a RecursionError.
        doc = jsonbounds.loads(body, parse_constant=_no_constants)
    except (ValueError, RecursionError) as err:
        raise Invalid([Problem("json_invalid", ("body",), f"JSON decode error: {err}")]) from None
    if not isinstance(doc, dict):
        raise Invalid(
            [
                Problem(
                    "model_attributes_type",
                    ("body",),
                    "Input should be a valid dictionary or object to extract fields from",
                )
            ]
        )
    problems: list[Problem] = []
    code = _code(doc, problems)
    language = doc.get("language", "python")
    if language not in LANGUAGES:
        problems.append(
            Problem("enum", ("body", "language"), "Input should be 'python' or 'nodejs'")
        )
    arguments = doc.get("arguments")
    if arguments is None:
        arguments = {}  # the original's `Optional[dict] = {}` took null as no arguments
    elif not isinstance(arguments, dict):
        problems.append(
            Problem("dict_type", ("body", "arguments"), "Input should be a valid dictionary")
        )
    else:
        # The operator's own limits, checked here so that the request never waits for a
        # slot and an InvalidRequest: the answer is at once.
        bound = jsonbounds.arguments_problem(arguments)
        if bound is not None:
            problems.append(Problem("value_error", ("body", "arguments"), f"Value error, {bound}"))
    if problems:
        raise Invalid(problems)
    assert code is not None
    return RunRequest(code=code, language=cast(Language, language), arguments=arguments)


def _code(doc: dict[str, Any], problems: list[Problem]) -> str | None:
    loc = ("body", "code_b64")
    if "code_b64" not in doc:
        problems.append(Problem("missing", loc, "Field required"))
        return None
    raw = doc["code_b64"]
    if not isinstance(raw, str):
        problems.append(Problem("string_type", loc, "Input should be a valid string"))
        return None
    try:
        # The original's own check: strict alphabet and padding, no whitespace.
        data = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError) as err:
        problems.append(Problem("value_error", loc, f"Value error, Invalid base64 encoding: {err}"))
        return None
    if not data:
        problems.append(Problem("value_error", loc, "Value error, code_b64 holds no code"))
        return None
    if len(data) > MAX_CODE_BYTES:
        problems.append(
            Problem(
                "value_error",
                loc,
                f"Value error, the code is {len(data)} bytes; at most {MAX_CODE_BYTES} are allowed",
            )
        )
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        problems.append(Problem("value_error", loc, f"Value error, the code is not UTF-8: {err}"))
        return None
