"""The default artifact store: one ConfigMap per execution (binaryData), owned by it and
garbage-collected with it.

No infrastructure, and the same audience as the execution's status: whoever may read
ConfigMaps in the namespace (the `view` role) may read the artifacts, as they may read the
program's stdout in the status. Neither the operator nor the gateway needs any right on
Secrets for it. A ConfigMap holds at most 1 MiB (the API server's limit), so this store's
limits are small.
"""

from __future__ import annotations

import base64
import re

from codeexec.api.models import API_VERSION, ArtifactInfo, ArtifactRef
from codeexec.artifacts import MAX_FILES, Limits, Owner, describe
from codeexec.kube.client import CONFIG_MAPS, ApiError, Kube
from codeexec.protocol import ArtifactRecord

# 1 MiB is the API server's cap on a ConfigMap's data; 768 KiB leaves room for the keys,
# the metadata and the base64 of binaryData within etcd's request limit.
MAX_TOTAL_BYTES = 768 * 1024
LIMITS = Limits(
    max_files=MAX_FILES, max_file_bytes=MAX_TOTAL_BYTES, max_total_bytes=MAX_TOTAL_BYTES
)
OWNER_LABEL = "codeexec.io/artifacts-of"
_KEY_UNSAFE = re.compile(r"[^-._a-zA-Z0-9]")


def object_name(owner: Owner) -> str:
    return f"codeexec-artifacts-{owner.uid}"


def object_key(index: int, name: str) -> str:
    return f"{index:02d}-{_KEY_UNSAFE.sub('_', name)[:200]}"


class ConfigMapStore:
    kind = "configmap"

    def __init__(self, kube: Kube, limits: Limits = LIMITS) -> None:
        self.kube = kube
        self.limits = limits

    async def put(self, owner: Owner, records: list[ArtifactRecord]) -> list[ArtifactInfo]:
        if not records:
            return []
        name = object_name(owner)
        data: dict[str, str] = {}
        infos: list[ArtifactInfo] = []
        for i, record in enumerate(records):
            key = object_key(i, record.name)
            data[key] = base64.b64encode(record.data).decode("ascii")
            infos.append(describe(record, self.kind, ArtifactRef(config_map=name, key=key)))
        body = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": name,
                "labels": {OWNER_LABEL: owner.uid, "app.kubernetes.io/managed-by": "codeexec"},
                # Deleting the CodeExecution (by hand or by its TTL) deletes this ConfigMap.
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
            "binaryData": data,
        }
        try:
            await self.kube.create(CONFIG_MAPS, body, owner.namespace)
        except ApiError as err:
            if not err.conflict:
                raise
            # A resumed road stored them already: the same run's bytes, so keep that copy.
        return infos

    async def read(self, info: ArtifactInfo, namespace: str) -> bytes:
        assert info.ref.config_map and info.ref.key
        body = await self.kube.get(CONFIG_MAPS, info.ref.config_map, namespace)
        return base64.b64decode((body.get("binaryData") or {})[info.ref.key])

    async def delete(self, owner: Owner) -> None:
        return None  # the ownerReference does it
