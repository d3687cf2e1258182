"""A Python client for programs and controllers: submit code, await the classified result.

    async with Client() as cx:
        done = await cx.run("def main(x):\n    return x * 2\n", arguments={"x": 5})
        done.status.result.return_value  # 10

`run_sync` does the same for code that is not async.
"""

from __future__ import annotations

import asyncio
import base64
import builtins
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from codeexec.api.models import API_VERSION, ArtifactInfo, CodeExecution, Language
from codeexec.kube import config
from codeexec.kube.client import CODE_EXECUTIONS, CONFIG_MAPS, ApiError, Kube


class ArtifactError(Exception):
    """An artifact cannot be fetched, or its bytes do not match its SHA-256."""


@dataclass
class Artifact:
    """A file the code left in ./artifacts/: what the status lists, and its bytes on demand."""

    info: ArtifactInfo
    namespace: str
    kube: Kube

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def size(self) -> int:
        return self.info.size

    @property
    def content_type(self) -> str:
        return self.info.content_type

    @property
    def sha256(self) -> str:
        return self.info.sha256

    async def read(self) -> bytes:
        """The bytes, checked against the SHA-256 the runner computed in the sandbox."""
        ref = self.info.ref
        if self.info.store == "configmap" and ref.config_map and ref.key:
            body = await self.kube.get(CONFIG_MAPS, ref.config_map, self.namespace)
            raw = (body.get("binaryData") or {}).get(ref.key)
            if not isinstance(raw, str):
                raise ArtifactError(f"{self.name}: key {ref.key} is missing from {ref.config_map}")
            data = base64.b64decode(raw)
        elif self.info.store == "s3" and ref.endpoint and ref.bucket and ref.object:
            data = await _read_s3(ref.endpoint, ref.bucket, ref.object, self.name)
        else:
            raise ArtifactError(f"{self.name}: unknown store {self.info.store!r}")
        if hashlib.sha256(data).hexdigest() != self.sha256:
            raise ArtifactError(f"{self.name}: the stored bytes do not match their SHA-256")
        return data

    async def save(self, directory: str | Path) -> Path:
        """Writes the bytes to directory/name (the name is a plain file name: never a path)."""
        name = PurePosixPath(self.name).name
        if name in ("", ".", "..") or name != self.name:
            raise ArtifactError(f"refusing to save an artifact named {self.name!r}")
        target = Path(directory) / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(await self.read())
        return target


async def _read_s3(endpoint: str, bucket: str, key: str, name: str) -> bytes:
    """An S3 artifact, read with the reader's own credentials (the standard AWS_ACCESS_KEY_ID,
    AWS_SECRET_ACCESS_KEY and AWS_REGION variables): the status never carries any."""
    import os

    from codeexec.artifacts.s3 import S3, Credentials, S3Error

    access, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
    if not access or not secret:
        raise ArtifactError(
            f"{name} is in S3 ({bucket}/{key}): set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
        )
    region = os.environ.get("AWS_REGION", "us-east-1")
    try:
        return await S3(endpoint, bucket, Credentials(access, secret), region).get(key)
    except S3Error as err:
        raise ArtifactError(f"{name}: {err}") from err


def input_file(path: str, data: bytes | str) -> dict[str, str]:
    """A `spec.files` entry with inline content (text as `content`, bytes as `contentB64`)."""
    if isinstance(data, str):
        return {"path": path, "content": data}
    return {"path": path, "contentB64": base64.b64encode(data).decode("ascii")}


class WaitTimeout(TimeoutError):
    """The execution did not finish within the client's own wait limit."""


class Client:
    """`kubeconfig` (a path, or several joined by os.pathsep) and `context` choose the cluster
    as kubectl's --kubeconfig and --context do; by default $KUBECONFIG, in-cluster, then
    ~/.kube/config."""

    def __init__(
        self,
        kube: Kube | None = None,
        namespace: str | None = None,
        *,
        kubeconfig: str | None = None,
        context: str | None = None,
        component: str = "client",
    ) -> None:
        self.kube = kube or Kube(config.load(kubeconfig, context), component=component)
        self.namespace = namespace or self.kube.conn.namespace or "default"

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.kube.close()

    def manifest(
        self,
        code: str,
        *,
        language: Language = "python",
        arguments: dict[str, Any] | None = None,
        timeout_seconds: int | None = None,
        pool: str | None = None,
        name: str | None = None,
        ttl_seconds_after_finished: int | None = None,
        max_output_bytes: int | None = None,
        labels: dict[str, str] | None = None,
        files: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        spec: dict[str, Any] = {"language": language, "code": code, "arguments": arguments or {}}
        if files:
            spec["files"] = files
        optional = {
            "timeoutSeconds": timeout_seconds,
            "pool": pool,
            "ttlSecondsAfterFinished": ttl_seconds_after_finished,
            "maxOutputBytes": max_output_bytes,
        }
        spec.update({k: v for k, v in optional.items() if v is not None})
        meta: dict[str, Any] = {"name": name} if name else {"generateName": "cx-"}
        if labels:
            meta["labels"] = labels
        return {"apiVersion": API_VERSION, "kind": "CodeExecution", "metadata": meta, "spec": spec}

    async def submit(self, code: str, **kwargs: Any) -> CodeExecution:
        body = await self.kube.create(
            CODE_EXECUTIONS, self.manifest(code, **kwargs), self.namespace
        )
        return CodeExecution.from_body(body)

    async def get(self, name: str) -> CodeExecution:
        return CodeExecution.from_body(await self.kube.get(CODE_EXECUTIONS, name, self.namespace))

    async def list(
        self, label_selector: str | None = None, *, all_namespaces: bool = False
    ) -> list[CodeExecution]:
        listing = await self.kube.list(
            CODE_EXECUTIONS,
            None if all_namespaces else self.namespace,
            label_selector=label_selector,
        )
        return [CodeExecution.from_body(item) for item in listing.get("items", [])]

    def artifacts(self, done: CodeExecution) -> builtins.list[Artifact]:
        """The artifacts a finished execution lists, each readable with read() / save()."""
        result = done.status.result
        infos = result.artifacts if result is not None else []
        return [Artifact(info, done.namespace, self.kube) for info in infos]

    async def delete(self, name: str) -> None:
        await self.kube.delete(CODE_EXECUTIONS, name, self.namespace)

    async def wait(
        self,
        name: str,
        *,
        timeout: float | None = None,
        on_update: Callable[[CodeExecution], None] | None = None,
    ) -> CodeExecution:
        """Watch (not poll) until the execution is terminal."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            body = await self.kube.get(CODE_EXECUTIONS, name, self.namespace)
            current = CodeExecution.from_body(body)
            if on_update:
                on_update(current)
            if current.finished:
                return current
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise WaitTimeout(f"{self.namespace}/{name} still {current.status.phase}")
            try:
                found = await asyncio.wait_for(
                    self._watch_until_finished(name, body, on_update), timeout=remaining
                )
            except TimeoutError as err:
                raise WaitTimeout(f"{self.namespace}/{name} did not finish in time") from err
            if found is not None:
                return found

    async def _watch_until_finished(
        self,
        name: str,
        body: dict[str, Any],
        on_update: Callable[[CodeExecution], None] | None,
    ) -> CodeExecution | None:
        rv = body["metadata"]["resourceVersion"]
        try:
            async for event in self.kube.watch(
                CODE_EXECUTIONS,
                self.namespace,
                resource_version=rv,
                field_selector=f"metadata.name={name}",
                timeout_seconds=60,
            ):
                if event["type"] in ("ADDED", "MODIFIED"):
                    current = CodeExecution.from_body(event["object"])
                    if on_update:
                        on_update(current)
                    if current.finished:
                        return current
                elif event["type"] == "DELETED":
                    raise ApiError(404, {"message": f"{name} was deleted", "reason": "NotFound"})
        except ApiError as err:
            if not err.gone:
                raise
        return None  # the watch ended or expired: re-read and watch again

    async def run(
        self, code: str, *, wait_timeout: float | None = None, **kwargs: Any
    ) -> CodeExecution:
        created = await self.submit(code, **kwargs)
        return await self.wait(created.name, timeout=wait_timeout)


def run_sync(code: str, *, namespace: str | None = None, **kwargs: Any) -> CodeExecution:
    async def _run() -> CodeExecution:
        async with Client(namespace=namespace) as cx:
            return await cx.run(code, **kwargs)

    return asyncio.run(_run())
