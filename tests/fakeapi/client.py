"""`FakeKube`: the operator's own `Kube` client class, answered by a `FakeApi` instead of HTTP.

Only the transport is replaced: `Kube.request` (every verb but watch goes through it, so the
real client still builds the paths, patch content types and delete options) and `Kube.watch`,
plus the aiohttp session's `ws_connect` that attach uses. Each client has a name, so a fault
can hit one replica (a partition) while another keeps talking.
"""

from __future__ import annotations

import asyncio
import copy
import json
import ssl
from collections.abc import AsyncIterator, Mapping
from typing import Any
from urllib.parse import unquote, urlparse

import aiohttp

from codeexec.kube.client import JSON, ApiError, Kube, Resource
from codeexec.kube.config import Connection

from .server import Call, FakeApi

SERVER = "https://fake-api"

_KINDS = {
    "application/merge-patch+json": "merge",
    "application/strategic-merge-patch+json": "merge",
    "application/json-patch+json": "json",
}


def split(path: str) -> tuple[str, str, str, str]:
    """(plural, namespace, name, sub) of an API path."""
    parts = [unquote(p) for p in path.strip("/").split("/")]
    rest = parts[2:] if parts[0] == "api" else parts[3:]
    namespace = ""
    if len(rest) >= 3 and rest[0] == "namespaces":
        namespace, rest = rest[1], rest[2:]
    plural = rest[0]
    name = rest[1] if len(rest) > 1 else ""
    sub = rest[2] if len(rest) > 2 else ""
    return plural, namespace, name, sub


class Partitioned(aiohttp.ClientConnectionError):
    """This client cannot reach the API server."""


class FakeKube(Kube):
    def __init__(self, api: FakeApi, name: str = "operator") -> None:
        super().__init__(Connection(server=SERVER, ssl_context=ssl.create_default_context()))
        self.api = api
        self.name = name
        self.cut = False  # a partition: every call fails at once
        self.frozen = False  # a paused process's view: every call hangs
        self._fake_session = _Session(self)

    @property
    def session(self) -> aiohttp.ClientSession:
        return self._fake_session  # type: ignore[return-value]

    @property
    def streams(self) -> aiohttp.ClientSession:
        return self._fake_session  # type: ignore[return-value]

    async def close(self) -> None:
        return None

    async def _gate(self, call: Call) -> None:
        if self.frozen:
            await asyncio.Event().wait()
        if self.cut:
            raise Partitioned(f"{self.name}: cannot reach the API server")
        await self.api.before(call)
        await asyncio.sleep(0)  # every call yields, as a real one does

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | int] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        timeout: float = 30.0,
        verb: str | None = None,
        answer: bool = True,
    ) -> JSON:
        plural, ns, name, sub = split(path)
        # The body crosses a wire: the server never shares objects with its clients.
        body = json.loads(json.dumps(body)) if body is not None else None
        params = dict(params or {})
        verb = {
            "GET": "get" if name else "list",
            "POST": "create",
            "PATCH": "patch",
            "DELETE": "delete",
            "PUT": "update",
        }[method]
        call = Call(verb, plural, ns, name, sub, body, self.name)
        try:
            await asyncio.wait_for(self._gate(call), timeout)
        except TimeoutError as err:
            raise aiohttp.ServerTimeoutError(f"{method} {path} timed out") from err
        api = self.api
        if verb == "get":
            out = api.get(plural, ns, name)
        elif verb == "list":
            out = api.list(
                plural,
                ns,
                str(params.get("labelSelector") or ""),
                str(params.get("fieldSelector") or ""),
                int(params.get("limit") or 0),
                str(params.get("continue") or ""),
            )
        elif verb == "create":
            out = api.create(plural, ns, body)
        elif verb == "patch":
            out = api.patch(plural, ns, name, body, _KINDS[content_type], sub)
        elif verb == "delete":
            out = api.delete(plural, ns, name, body)
        else:
            raise ApiError(405, {"message": f"{method} is not served by the fake"})
        await api.after(call)
        return copy.deepcopy(out) if answer else {}

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
        await self._gate(Call("watch", res.plural, namespace or "", ""))
        stream = self.api.watch(
            res.plural,
            namespace or "",
            resource_version,
            label_selector or "",
            timeout_seconds,
            field_selector or "",
        )
        async for event in stream:
            if self.cut:
                raise Partitioned(f"{self.name}: the watch broke")
            if self.frozen:
                await asyncio.Event().wait()
            yield event


class _Session:
    """The part of aiohttp.ClientSession that attach uses."""

    def __init__(self, kube: FakeKube) -> None:
        self.kube = kube
        self.closed = False

    async def ws_connect(self, url: str, **_: Any) -> Any:
        plural, ns, name, sub = split(urlparse(url).path)
        await self.kube._gate(Call("attach", plural, ns, name, sub))
        if self.kube.api.attach is None:
            raise _refused(url, 404, "no kubelet")
        return self.kube.api.attach(ns, name, url, self.kube.name)


def _refused(url: str, status: int, message: str) -> aiohttp.WSServerHandshakeError:
    from multidict import CIMultiDict, CIMultiDictProxy
    from yarl import URL

    info = aiohttp.RequestInfo(URL(url), "GET", CIMultiDictProxy(CIMultiDict()), URL(url))
    return aiohttp.WSServerHandshakeError(info, (), status=status, message=message)


refused = _refused
