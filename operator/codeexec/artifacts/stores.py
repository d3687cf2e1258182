"""Which store keeps a pool's artifacts, keeping a run's artifacts there, and removing a
deleted execution's S3 objects."""

from __future__ import annotations

import logging
from typing import Any

from codeexec.api.models import ArtifactInfo
from codeexec.artifacts import Limits, Owner, Store, listed
from codeexec.artifacts.configmapstore import ConfigMapStore
from codeexec.artifacts.s3 import S3, Credentials
from codeexec.artifacts.s3store import LIMITS as S3_LIMITS
from codeexec.artifacts.s3store import S3Store
from codeexec.kube.client import Kube
from codeexec.outcomes import Outcome
from codeexec.pool import Pool
from codeexec.protocol import ArtifactRecord, Report

log = logging.getLogger(__name__)


async def keep(
    store: Store,
    owner: Owner,
    outcome: Outcome,
    report: Report,
    records: tuple[ArtifactRecord, ...],
) -> tuple[Outcome, list[ArtifactInfo]]:
    """Stores the artifacts the report lists; a store that fails costs the artifacts (said in
    the outcome's message), never the outcome."""
    kept = listed(list(records), report.artifacts)
    note = ""
    if len(kept) < len(report.artifacts):
        note = f"; {len(report.artifacts) - len(kept)} artifacts did not arrive whole"
    if report.artifact_problem:
        note += f"; artifacts: {report.artifact_problem}"
    stored: list[ArtifactInfo] = []
    if kept:
        try:
            stored = await store.put(owner, kept)
        except Exception as err:  # any store failure is reported, not raised
            log.warning("%s/%s: artifacts not stored: %r", owner.namespace, owner.name, err)
            note += f"; the artifacts could not be stored ({str(err)[:200]})"
    if note:
        outcome = Outcome(outcome.reason, outcome.message + note)
    return outcome, stored


class Stores:
    def __init__(self, kube: Kube, s3_credentials: Credentials | None = None) -> None:
        self.kube = kube
        # The operator's own (CODEEXEC_S3_ACCESS_KEY_ID / _SECRET_ACCESS_KEY, which the chart
        # fills from a Secret through the kubelet): the operator needs no right on Secrets.
        self.s3_credentials = s3_credentials
        self.default: Store = ConfigMapStore(kube)
        # By (endpoint, bucket): where a deleted execution's objects are removed.
        self._s3: dict[tuple[str, str], S3Store] = {}

    async def for_pool(self, pool: Pool) -> Store:
        config = pool.spec.artifacts
        if config is None or config.s3 is None:
            return self.default
        limits = Limits(
            max_files=config.max_files or S3_LIMITS.max_files,
            max_file_bytes=config.max_file_bytes or S3_LIMITS.max_file_bytes,
            max_total_bytes=config.max_total_bytes or S3_LIMITS.max_total_bytes,
        )
        if self.s3_credentials is None:
            raise RuntimeError(
                f"pool {pool.name} stores artifacts in S3, but the operator has no S3 "
                "credentials (CODEEXEC_S3_ACCESS_KEY_ID, CODEEXEC_S3_SECRET_ACCESS_KEY)"
            )
        location = config.s3
        client = S3(location.endpoint, location.bucket, self.s3_credentials, location.region)
        store = S3Store(client, location, limits)
        self._s3[(store.client.endpoint, config.s3.bucket)] = store
        return store

    async def forget(self, body: dict[str, Any], pools: dict[str, Pool]) -> None:
        """Deletes the S3 objects of a deleted CodeExecution (Secrets go by ownership)."""
        listed = ((body.get("status") or {}).get("result") or {}).get("artifacts") or []
        places = set()
        for raw in listed:
            try:
                info = ArtifactInfo.model_validate(raw)
            except ValueError:
                continue
            if info.store == "s3" and info.ref.endpoint and info.ref.bucket:
                places.add((info.ref.endpoint, info.ref.bucket))
        meta = body["metadata"]
        owner = Owner(meta["namespace"], meta["name"], meta["uid"])
        for place in places:
            store = self._s3.get(place) or await self._from_pools(place, pools)
            if store is None:
                log.warning(
                    "no pool stores artifacts at %s/%s: objects of %s/%s are left",
                    *place,
                    owner.namespace,
                    owner.name,
                )
                continue
            await store.delete(owner)

    async def _from_pools(self, place: tuple[str, str], pools: dict[str, Pool]) -> S3Store | None:
        for pool in pools.values():
            config = pool.spec.artifacts
            if config is not None and config.s3 is not None:
                endpoint = config.s3.endpoint.rstrip("/")
                if (endpoint, config.s3.bucket) == place:
                    store = await self.for_pool(pool)
                    assert isinstance(store, S3Store)
                    return store
        return None
