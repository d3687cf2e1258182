"""The custom resources as typed models: what users write (spec) and what we report (status)."""

from codeexec.api.models import (
    GROUP,
    VERSION,
    CodeExecutionSpec,
    ErrorInfo,
    ExecutionResult,
    Language,
    Phase,
    SandboxPoolSpec,
)

__all__ = [
    "GROUP",
    "VERSION",
    "CodeExecutionSpec",
    "ErrorInfo",
    "ExecutionResult",
    "Language",
    "Phase",
    "SandboxPoolSpec",
]
