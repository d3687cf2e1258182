"""A small async REST client for the few verbs the operator uses.

Kopf watches our custom resources; everything the road from a `CodeExecution` to its status does
on its own (claims, pod lifecycle, status writes, events) goes through here, on one aiohttp
session with keep-alive, so the hot path pays no connection setup.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote

import aiohttp

from codeexec.kube.config import Connection

JSON = dict[str, Any]
PatchType = Literal["merge", "strategic", "json"]
_PATCH_CONTENT_TYPES = {
    "merge": "application/merge-patch+json",
    "strategic": "application/strategic-merge-patch+json",
    "json": "application/json-patch+json",
}


class ApiError(Exception):
    """A non-2xx answer from the API server, with its Status object when it sent one."""

    def __init__(self, status: int, body: Any) -> None:
        self.status = status
        self.body = body if isinstance(body, dict) else {"message": str(body)}
        self.reason = self.body.get("reason", "")
        super().__init__(f"{status} {self.reason}: {self.body.get('message', '')}")

    @property
    def conflict(self) -> bool:
        return self.status == 409

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def gone(self) -> bool:
        return self.status == 410


@dataclass(frozen=True)
class Resource:
    group: str
    version: str
    plural: str
    namespaced: bool = True

    def path(self, namespace: str | None = None, name: str | None = None, sub: str = "") -> str:
        base = f"/api/{self.version}" if not self.group else f"/apis/{self.group}/{self.version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{quote(namespace)}"
        base += f"/{self.plural}"
        if name:
            base += f"/{quote(name)}"
        if sub:
            base += f"/{sub}"
        return base


PODS = Resource("", "v1", "pods")
EVENTS = Resource("", "v1", "events")
NAMESPACES = Resource("", "v1", "namespaces", namespaced=False)
NETWORK_POLICIES = Resource("networking.k8s.io", "v1", "networkpolicies")
LEASES = Resource("coordination.k8s.io", "v1", "leases")
CODE_EXECUTIONS = Resource("codeexec.io", "v1alpha1", "codeexecutions")
SANDBOX_POOLS = Resource("codeexec.io", "v1alpha1", "sandboxpools", namespaced=False)


class Kube:
    def __init__(self, conn: Connection, *, pool_size: int = 64) -> None:
        self.conn = conn
        self._pool_size = pool_size
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(ssl=self.conn.ssl_context, limit=self._pool_size)
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=None, connect=10)
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def headers(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        token = self.conn.bearer()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if extra:
            headers.update(extra)
        return headers

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | int] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        timeout: float = 30.0,
    ) -> JSON:
        data = None if body is None else json.dumps(body)
        async with self.session.request(
            method,
            self.conn.server + path,
            params=params,
            data=data,
            headers=self.headers({"Content-Type": content_type} if data else None),
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as resp:
            text = await resp.text()
            try:
                payload: Any = json.loads(text) if text else {}
            except ValueError:
                payload = {"message": text}
            if resp.status >= 400:
                raise ApiError(resp.status, payload)
            return payload if isinstance(payload, dict) else {"items": payload}

    async def get(self, res: Resource, name: str, namespace: str | None = None) -> JSON:
        return await self.request("GET", res.path(namespace, name))

    async def list(
        self,
        res: Resource,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> JSON:
        params: dict[str, str | int] = {}
        if label_selector:
            params["labelSelector"] = label_selector
        if field_selector:
            params["fieldSelector"] = field_selector
        return await self.request("GET", res.path(namespace), params=params)

    async def create(self, res: Resource, body: JSON, namespace: str | None = None) -> JSON:
        return await self.request("POST", res.path(namespace), body=body)

    async def patch(
        self,
        res: Resource,
        name: str,
        body: Any,
        namespace: str | None = None,
        *,
        sub: str = "",
        patch_type: PatchType = "merge",
    ) -> JSON:
        return await self.request(
            "PATCH",
            res.path(namespace, name, sub),
            body=body,
            content_type=_PATCH_CONTENT_TYPES[patch_type],
        )

    async def patch_status(
        self, res: Resource, name: str, status: JSON, namespace: str | None = None
    ) -> JSON:
        return await self.patch(res, name, {"status": status}, namespace, sub="status")

    async def delete(
        self,
        res: Resource,
        name: str,
        namespace: str | None = None,
        *,
        grace_period: int | None = None,
        resource_version: str | None = None,
        missing_ok: bool = True,
    ) -> None:
        """With `resource_version`, the delete happens only if nobody changed the object since."""
        body: JSON = {}
        if grace_period is not None:
            body["gracePeriodSeconds"] = grace_period
        if resource_version is not None:
            body["preconditions"] = {"resourceVersion": resource_version}
        try:
            await self.request("DELETE", res.path(namespace, name), body=body or None)
        except ApiError as err:
            if not (missing_ok and err.not_found):
                raise

    async def watch(
        self,
        res: Resource,
        namespace: str | None = None,
        *,
        resource_version: str,
        label_selector: str | None = None,
        field_selector: str | None = None,
        timeout_seconds: int = 300,
    ) -> AsyncIterator[JSON]:
        """Yield raw watch events until the server ends the stream; raises ApiError on 410."""
        params: dict[str, str | int] = {
            "watch": "true",
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": timeout_seconds,
        }
        if label_selector:
            params["labelSelector"] = label_selector
        if field_selector:
            params["fieldSelector"] = field_selector
        async with self.session.get(
            self.conn.server + res.path(namespace),
            params=params,
            headers=self.headers(),
            timeout=aiohttp.ClientTimeout(
                total=timeout_seconds + 30, sock_read=timeout_seconds + 30
            ),
        ) as resp:
            if resp.status >= 400:
                raise ApiError(resp.status, await resp.text())
            async for line in resp.content:
                if not line.strip():
                    continue
                event = json.loads(line)
                if event.get("type") == "ERROR":
                    status = event.get("object", {})
                    raise ApiError(int(status.get("code", 500)), status)
                yield event


async def sleep_backoff(attempt: int, *, base: float = 0.2, cap: float = 5.0) -> None:
    await asyncio.sleep(min(cap, base * 2**attempt))
