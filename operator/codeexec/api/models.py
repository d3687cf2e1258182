"""Pydantic models of `CodeExecution` and `SandboxPool`, matching `crds/*.yaml`.

The CRD schema rejects what it can at admission; these models parse what was admitted at the
edge of the operator (and serve the Python client), so the inside works on typed data.
"""

from __future__ import annotations

import contextlib
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from codeexec import jsonbounds

GROUP = "codeexec.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

Language = Literal["python", "nodejs"]

MAX_CODE_BYTES = 128 * 1024


class Phase(StrEnum):
    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"

    @property
    def terminal(self) -> bool:
        return self in (Phase.SUCCEEDED, Phase.FAILED)


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    def dump(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class KeyRef(_Model):
    """A key of a ConfigMap or Secret in the execution's own namespace. `namespace` exists
    only so that naming another namespace is refused loudly (InvalidRequest), not dropped."""

    name: str
    key: str
    namespace: str | None = None


class InputFile(_Model):
    """A file placed in the code's working directory before main runs: one source of four."""

    path: str
    content: str | None = None
    content_b64: str | None = Field(default=None, alias="contentB64")
    config_map_key_ref: KeyRef | None = Field(default=None, alias="configMapKeyRef")
    secret_key_ref: KeyRef | None = Field(default=None, alias="secretKeyRef")


class CodeExecutionSpec(_Model):
    language: Language
    code: str | None = None
    code_b64: str | None = Field(default=None, alias="codeB64")
    arguments: dict[str, Any] = Field(default_factory=dict)
    timeout_seconds: int = Field(default=10, ge=1)
    pool: str | None = None
    ttl_seconds_after_finished: int | None = Field(default=None, ge=0)
    max_output_bytes: int | None = Field(default=None, ge=1024)
    files: list[InputFile] = Field(default_factory=list)


class ErrorInfo(_Model):
    type: str
    message: str = ""
    traceback: str | None = None
    line: int | None = None
    column: int | None = None
    code: str | None = None


class ValueOmitted(StrEnum):
    """Why `status.result.returnValue` is not stored (`returnValueOmitted`)."""

    TOO_LARGE = "TooLarge"  # over 256 KiB of JSON
    TOO_DEEP = "TooDeep"  # nested more than 64 levels
    NOT_REPORTED = "NotReported"  # the report that reached the operator did not carry it
    NOT_STORABLE = "NotStorable"  # the API server refused the status that held it


class ArtifactRef(_Model):
    """Where an artifact's bytes are kept: a key of an owned ConfigMap, or an S3 object."""

    config_map: str | None = Field(default=None, alias="configMap")
    key: str | None = None
    bucket: str | None = None
    object: str | None = None
    endpoint: str | None = None


class ArtifactInfo(_Model):
    """One file the code left in ./artifacts/ (never its bytes)."""

    name: str
    size: int
    content_type: str = "application/octet-stream"
    sha256: str
    store: str
    ref: ArtifactRef


class ExecutionResult(_Model):
    """Everything `outcomes.md` asks a finished execution to report."""

    status: str
    resource_limit_type: str | None = None
    unauthorized_access_type: str | None = None
    runtime_error_type: str | None = None
    detail: str | None = None
    started: bool = False
    exit_code: int | None = None
    signal: int | None = None
    signal_name: str | None = None
    return_value: Any = None
    # The exact JSON text, instead of returnValue, when the API server would change the value
    # (integers beyond int64, integral floats, -0.0): `value()` decodes it.
    return_value_json: str | None = Field(default=None, alias="returnValueJSON")
    return_value_bytes: int | None = None
    return_value_truncated: bool = False
    return_value_omitted: str | None = None
    error: ErrorInfo | None = None
    stdout: str = ""
    stderr: str = ""
    stdout_bytes: int = 0
    stderr_bytes: int = 0
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    wall_ms: float | None = None
    cpu_ms: float | None = None
    peak_memory_bytes: int | None = None
    artifacts: list[ArtifactInfo] = Field(default_factory=list)
    # Files left out by an artifact limit (the first names) and how many.
    artifacts_skipped: list[str] = Field(default_factory=list)
    artifacts_skipped_count: int | None = None

    def why_not_stored(self) -> str:
        """Why the return value is not here, for people ('' when it is)."""
        if not self.return_value_truncated:
            return ""
        size = f"{self.return_value_bytes} bytes" if self.return_value_bytes else "size unknown"
        limit = jsonbounds.MAX_RETURN_VALUE_BYTES
        why: dict[str, str] = {
            ValueOmitted.TOO_LARGE.value: f"{size}, over the {limit}-byte limit",
            ValueOmitted.TOO_DEEP.value: (
                f"nested more than {jsonbounds.MAX_RETURN_VALUE_DEPTH} levels"
            ),
            ValueOmitted.NOT_REPORTED.value: f"{size}, not carried by the pod's record",
            ValueOmitted.NOT_STORABLE.value: f"{size}, refused by the API server",
        }
        return why.get(self.return_value_omitted or "", size)

    @model_validator(mode="after")
    def _decode_exact_text(self) -> ExecutionResult:
        # Readers get the exact value in return_value whichever way it was stored.
        if self.return_value is None and self.return_value_json is not None:
            with contextlib.suppress(ValueError):
                self.return_value = jsonbounds.loads(self.return_value_json)
        return self


class PoolResources(_Model):
    requests: dict[str, str] = Field(default_factory=dict)
    limits: dict[str, str] = Field(default_factory=dict)


class S3Location(_Model):
    endpoint: str
    bucket: str
    region: str = "us-east-1"
    prefix: str = "codeexec/"


class PoolArtifacts(_Model):
    s3: S3Location | None = None
    max_files: int | None = None
    max_file_bytes: int | None = None
    max_total_bytes: int | None = None


class LabelRequirement(_Model):
    key: str
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: list[str] = Field(default_factory=list)


class LabelSelector(_Model):
    match_labels: dict[str, str] = Field(default_factory=dict)
    match_expressions: list[LabelRequirement] = Field(default_factory=list)


class PoolTenants(_Model):
    """Namespaces allowed to use a pool: listed, or selected by their labels (either suffices)."""

    namespaces: list[str] = Field(default_factory=list)
    namespace_selector: LabelSelector | None = None


class EgressPort(_Model):
    port: int = Field(ge=1, le=65535)
    end_port: int | None = Field(default=None, ge=1, le=65535)
    protocol: Literal["TCP", "UDP", "SCTP"] = "TCP"


class EgressRule(_Model):
    cidr: str
    ports: list[EgressPort] = Field(default_factory=list)


class PoolEgress(_Model):
    internet: bool = True
    dns: bool = False
    allow: list[EgressRule] = Field(default_factory=list)


class PoolFairness(_Model):
    """How a pool is shared between namespaces (docs/capacity.md, Fair sharing)."""

    max_running_per_namespace: int | None = Field(default=None, ge=1)


class PoolScaling(_Model):
    """Bounds within which a pool's size follows demand (`spec.scaling`); unset: fixed `size`.

    Builtin: the operator's autoscaler (autoscale.py) picks the size. External: `spec.size`,
    written by `kubectl scale`, an HPA or KEDA through the scale subresource, is followed,
    clamped to the bounds.
    """

    mode: Literal["Builtin", "External"] = "Builtin"
    min_ready: int = Field(default=1, ge=0)
    max_size: int = Field(default=10, ge=1)
    cooldown_seconds: int = Field(default=300, ge=0)
    headroom: int = Field(default=1, ge=0)


class SandboxPoolSpec(_Model):
    language: Language
    image: str
    image_pull_policy: str = "IfNotPresent"
    size: int = Field(default=2, ge=0)
    default: bool = False
    max_timeout_seconds: int = Field(default=300, ge=1)
    resources: PoolResources = Field(default_factory=PoolResources)
    runtime_class_name: str | None = None
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[dict[str, Any]] = Field(default_factory=list)
    allow_network: bool = False
    egress: PoolEgress = Field(default_factory=PoolEgress)
    tenants: PoolTenants | None = None
    scratch_size_limit: str = "64Mi"
    max_processes: int = Field(default=64, ge=1)
    ready_timeout_seconds: int = Field(default=120, ge=5)
    queue_timeout_seconds: int = Field(default=120, ge=1)
    preload: list[str] | None = None
    artifacts: PoolArtifacts | None = None
    fairness: PoolFairness = Field(default_factory=PoolFairness)
    scaling: PoolScaling | None = None


class SandboxRef(_Model):
    pool: str | None = None
    pod: str | None = None
    pod_uid: str | None = Field(default=None, alias="podUID")
    node: str | None = None
    attempts: int | None = None


class CodeExecutionStatus(_Model):
    phase: Phase | None = None
    reason: str | None = None
    message: str | None = None
    queued_ms: int | None = None
    start_time: str | None = None
    completion_time: str | None = None
    duration: str | None = None
    sandbox: SandboxRef | None = None
    result: ExecutionResult | None = None


class CodeExecution(_Model):
    """A whole resource as the client sees it."""

    name: str
    namespace: str
    uid: str
    spec: CodeExecutionSpec
    status: CodeExecutionStatus = Field(default_factory=CodeExecutionStatus)

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> CodeExecution:
        meta = body["metadata"]
        return cls(
            name=meta["name"],
            namespace=meta["namespace"],
            uid=meta.get("uid", ""),
            spec=CodeExecutionSpec.model_validate(body.get("spec") or {}),
            status=CodeExecutionStatus.model_validate(body.get("status") or {}),
        )

    @property
    def finished(self) -> bool:
        return self.status.phase is not None and self.status.phase.terminal
