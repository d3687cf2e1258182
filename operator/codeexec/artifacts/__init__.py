"""Artifact stores: where the files a run left in ./artifacts/ are kept, and their limits.

The bytes arrive from the runner over the attach stream (`protocol.ArtifactRecord`); a store
keeps them somewhere the execution's owner can fetch them and the status names only where.
Every store's objects go when the CodeExecution goes (TTL included).
"""

from __future__ import annotations

import mimetypes
from dataclasses import dataclass
from typing import Any, Protocol

from codeexec.api.models import ArtifactInfo, ArtifactRef
from codeexec.protocol import ArtifactRecord

# RAGFlow's executor keeps at most 10 artifacts of at most 10 MiB each.
MAX_FILES = 10


@dataclass(frozen=True)
class Limits:
    """What the runner reads at most (enforced in the sandbox, as the files are read)."""

    max_files: int
    max_file_bytes: int
    max_total_bytes: int

    def wire(self) -> dict[str, int]:
        return {
            "maxFiles": self.max_files,
            "maxFileBytes": self.max_file_bytes,
            "maxTotalBytes": self.max_total_bytes,
        }


@dataclass(frozen=True)
class Owner:
    """The CodeExecution the artifacts belong to."""

    namespace: str
    name: str
    uid: str


class Store(Protocol):
    kind: str
    limits: Limits

    async def put(self, owner: Owner, records: list[ArtifactRecord]) -> list[ArtifactInfo]:
        """Keeps the bytes; returns what the status lists."""
        ...

    async def read(self, info: ArtifactInfo, namespace: str) -> bytes:
        """The bytes of one stored artifact."""
        ...

    async def delete(self, owner: Owner) -> None:
        """Removes everything kept for `owner` (a no-op where ownership does it)."""
        ...


def content_type(name: str) -> str:
    guessed, _ = mimetypes.guess_type(name, strict=False)
    return guessed or "application/octet-stream"


def describe(record: ArtifactRecord, store: str, ref: ArtifactRef) -> ArtifactInfo:
    """What the status lists for one stored artifact (never its bytes)."""
    return ArtifactInfo(
        name=record.name,
        size=len(record.data),
        content_type=content_type(record.name),
        sha256=record.sha256,
        store=store,
        ref=ref,
    )


def listed(
    records: list[ArtifactRecord], listing: tuple[dict[str, Any], ...]
) -> list[ArtifactRecord]:
    """The records the report lists (name and digest), once each, in the report's order."""
    by_key = {(r.name, r.sha256): r for r in records}
    out = []
    for item in listing:
        record = by_key.pop((item["name"], item["sha256"]), None)
        if record is not None:
            out.append(record)
    return out
