"""What a `CodeExecution` asks for: parsed once from the resource and checked beyond its schema."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from codeexec import clock, jsonbounds
from codeexec import status as st
from codeexec.api.models import MAX_CODE_BYTES, CodeExecutionSpec, Phase
from codeexec.files import Resolved, static_problem


class Invalid(Exception):
    """What the CRD schema could not express: ends the execution with InvalidRequest."""


@dataclass
class Execution:
    """The plain data the road needs, parsed once from the resource."""

    body: dict[str, Any]
    namespace: str
    name: str
    uid: str
    generation: int | None
    created: float
    spec: CodeExecutionSpec
    code: str
    status: dict[str, Any] = field(default_factory=dict)
    files: tuple[Resolved, ...] = ()

    @property
    def created_at(self) -> datetime:
        return datetime.fromtimestamp(self.created, UTC)

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"


def decode_code(spec: CodeExecutionSpec) -> str:
    if spec.code is not None:
        return spec.code
    try:
        raw = base64.b64decode(spec.code_b64 or "", validate=True)
    except (binascii.Error, ValueError) as err:
        raise Invalid(f"spec.codeB64 is not valid base64: {err}") from err
    if len(raw) > MAX_CODE_BYTES:
        raise Invalid(f"decoded code is {len(raw)} bytes; the limit is {MAX_CODE_BYTES}")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise Invalid(f"decoded spec.codeB64 is not UTF-8 text: {err}") from err


def creation_time(body: dict[str, Any], seen_at: float | None = None) -> float:
    """When the resource was created, as sharp as we can tell.

    creationTimestamp has one-second resolution; a watch event that arrives within that
    second pins the creation down to the millisecond (the watch lags the write by a few ms).
    """
    stamp = st.parse_timestamp(body["metadata"].get("creationTimestamp"))
    if stamp is None:
        return seen_at or clock.time()
    created = stamp.timestamp()
    if seen_at is not None and 0.0 <= seen_at - created < 1.0:
        return seen_at
    return created


def parse(body: dict[str, Any], seen_at: float | None = None) -> Execution:
    meta = body["metadata"]
    base = {
        "body": body,
        "namespace": meta["namespace"],
        "name": meta["name"],
        "uid": meta["uid"],
        "generation": meta.get("generation"),
        "created": creation_time(body, seen_at),
        "status": body.get("status") or {},
    }
    try:
        spec = CodeExecutionSpec.model_validate(body.get("spec") or {})
    except ValidationError as err:
        raise Invalid(f"invalid spec: {err.errors()[0].get('msg')}") from err
    problem = jsonbounds.arguments_problem(spec.arguments)
    if problem is not None:
        raise Invalid(problem)
    code = decode_code(spec)
    if len(code.encode()) > MAX_CODE_BYTES:
        raise Invalid(f"code is over the {MAX_CODE_BYTES}-byte limit")
    problem = static_problem(spec.files, meta["namespace"])
    if problem is not None:
        raise Invalid(problem)
    return Execution(spec=spec, code=code, **base)


def is_terminal(body: dict[str, Any]) -> bool:
    phase = (body.get("status") or {}).get("phase")
    return phase in (Phase.SUCCEEDED.value, Phase.FAILED.value)
