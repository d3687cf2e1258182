"""The default artifact store: one Secret per execution, owned by it (garbage-collected with it).

No infrastructure, and readable by whoever may read Secrets in the execution's namespace. A
Secret holds at most 1 MiB (the API server's limit), so this store's limits are small.
"""

from __future__ import annotations

import base64
import re

from codeexec.api.models import API_VERSION, ArtifactInfo, ArtifactRef
from codeexec.artifacts import MAX_FILES, Limits, Owner, content_type
from codeexec.kube.client import SECRETS, ApiError, Kube
from codeexec.protocol import ArtifactRecord

# 1 MiB is the API server's cap on a Secret's data; 768 KiB leaves room for keys and metadata.
MAX_TOTAL_BYTES = 768 * 1024
LIMITS = Limits(
    max_files=MAX_FILES, max_file_bytes=MAX_TOTAL_BYTES, max_total_bytes=MAX_TOTAL_BYTES
)
OWNER_LABEL = "codeexec.io/artifacts-of"
_KEY_UNSAFE = re.compile(r"[^-._a-zA-Z0-9]")


def secret_name(owner: Owner) -> str:
    return f"codeexec-artifacts-{owner.uid}"


def secret_key(index: int, name: str) -> str:
    return f"{index:02d}-{_KEY_UNSAFE.sub('_', name)[:200]}"


class SecretStore:
    kind = "secret"

    def __init__(self, kube: Kube, limits: Limits = LIMITS) -> None:
        self.kube = kube
        self.limits = limits

    async def put(self, owner: Owner, records: list[ArtifactRecord]) -> list[ArtifactInfo]:
        if not records:
            return []
        name = secret_name(owner)
        data: dict[str, str] = {}
        infos: list[ArtifactInfo] = []
        for i, record in enumerate(records):
            key = secret_key(i, record.name)
            data[key] = base64.b64encode(record.data).decode("ascii")
            infos.append(
                ArtifactInfo(
                    name=record.name,
                    size=len(record.data),
                    content_type=content_type(record.name),
                    sha256=record.sha256,
                    store=self.kind,
                    ref=ArtifactRef(secret=name, key=key),
                )
            )
        body = {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "Opaque",
            "metadata": {
                "name": name,
                "labels": {OWNER_LABEL: owner.uid, "app.kubernetes.io/managed-by": "codeexec"},
                # Deleting the CodeExecution (by hand or by its TTL) deletes this Secret.
                "ownerReferences": [
                    {
                        "apiVersion": API_VERSION,
                        "kind": "CodeExecution",
                        "name": owner.name,
                        "uid": owner.uid,
                        "controller": True,
                        "blockOwnerDeletion": False,
                    }
                ],
            },
            "data": data,
        }
        try:
            await self.kube.create(SECRETS, body, owner.namespace)
        except ApiError as err:
            if not err.conflict:
                raise
            # A resumed road stored them already: the same run's bytes, so keep that copy.
        return infos

    async def read(self, info: ArtifactInfo, namespace: str) -> bytes:
        assert info.ref.secret and info.ref.key
        body = await self.kube.get(SECRETS, info.ref.secret, namespace)
        return base64.b64decode((body.get("data") or {})[info.ref.key])

    async def delete(self, owner: Owner) -> None:
        return None  # the ownerReference does it
