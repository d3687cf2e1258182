"""The S3 artifact store: a pool's bucket on any S3-compatible server (spec.artifacts.s3).

Objects are named <prefix><namespace>/<uid>/<nn>-<name>; the operator deletes every object
under <prefix><namespace>/<uid>/ when it sees the CodeExecution deleted (by hand or by its
TTL). Credentials come from a Secret in the sandbox namespace, out of tenants' reach; only
the operator talks to the server, never the sandbox.
"""

from __future__ import annotations

from codeexec.api.models import ArtifactInfo, ArtifactRef, S3Location
from codeexec.artifacts import MAX_FILES, Limits, Owner, describe
from codeexec.artifacts.s3 import S3
from codeexec.protocol import ArtifactRecord

# RAGFlow's executor keeps files of up to 10 MiB; 32 MiB in all keeps one run's records (held
# in the operator's memory until stored) well below its memory limit.
LIMITS = Limits(max_files=MAX_FILES, max_file_bytes=10 * 1024 * 1024, max_total_bytes=32 << 20)


class S3Store:
    kind = "s3"

    def __init__(self, client: S3, location: S3Location, limits: Limits = LIMITS) -> None:
        self.client = client
        self.location = location
        self.limits = limits

    def folder(self, namespace: str, uid: str) -> str:
        return f"{self.location.prefix}{namespace}/{uid}/"

    async def put(self, owner: Owner, records: list[ArtifactRecord]) -> list[ArtifactInfo]:
        infos = []
        for i, record in enumerate(records):
            key = f"{self.folder(owner.namespace, owner.uid)}{i:02d}-{record.name}"
            await self.client.put(key, record.data)
            ref = ArtifactRef(bucket=self.client.bucket, object=key, endpoint=self.client.endpoint)
            infos.append(describe(record, self.kind, ref))
        return infos

    async def read(self, info: ArtifactInfo, namespace: str) -> bytes:
        assert info.ref.object
        return await self.client.get(info.ref.object)

    async def delete(self, owner: Owner) -> None:
        await self.client.delete_prefix(self.folder(owner.namespace, owner.uid))
