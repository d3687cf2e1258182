"""A small async REST client for the few verbs the operator uses.

Kopf watches our custom resources; everything the road from a `CodeExecution` to its status does
on its own (claims, pod lifecycle, status writes, events) goes through here, on one aiohttp
session with keep-alive, so the hot path pays no connection setup.
"""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import json
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote, urlsplit
from urllib.request import getproxies, proxy_bypass

import aiohttp

from codeexec import __version__, backoff, jsonbounds
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


_VERBS = {"GET": "get", "POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}
# Items per list page: a list of 5,000 finished executions (each up to ~1 MiB of status)
# in one answer would hold the API server's and our memory at once.
LIST_PAGE_SIZE = 500


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


def _typed(path: str) -> bool:
    """The core group's kinds (pods, events, namespaces): their numbers are int32/int64, so the
    fast decoder reads them exactly (jsonbounds.loads). Most of what the operator decodes is
    pod watch events, ~20 of ~7 KB per execution (make bench)."""
    return path.startswith("/api/")


PODS = Resource("", "v1", "pods")
EVENTS = Resource("", "v1", "events")
NAMESPACES = Resource("", "v1", "namespaces", namespaced=False)
NODES = Resource("", "v1", "nodes", namespaced=False)
ENDPOINT_SLICES = Resource("discovery.k8s.io", "v1", "endpointslices")
NETWORK_POLICIES = Resource("networking.k8s.io", "v1", "networkpolicies")
LEASES = Resource("coordination.k8s.io", "v1", "leases")
SECRETS = Resource("", "v1", "secrets")
CONFIG_MAPS = Resource("", "v1", "configmaps")
CODE_EXECUTIONS = Resource("codeexec.io", "v1alpha1", "codeexecutions")
SANDBOX_POOLS = Resource("codeexec.io", "v1alpha1", "sandboxpools", namespaced=False)
SANDBOX_POOL_SCALES = Resource("codeexec.io", "v1alpha1", "sandboxpoolscales")


def user_agent(component: str) -> str:
    """`codeexec-operator/<version> (<component>)`: audit logs and API Priority and Fairness
    can tell our requests (and which part of us sent them) from everyone else's."""
    return f"codeexec-operator/{__version__} ({component})"


# Every TLS connection asyncio opens holds a read buffer of `SSLProtocol.max_size` (256 KiB in
# Python 3.11-3.13), allocated and zeroed when it connects: with one attach session held per
# warm pod that buffer was most of a session's memory. Measured (2-vCPU VM, 200 idle TLS client
# connections to a local server): 292 KiB RSS each at 256 KiB, 100 at 64 KiB, 66 at 32 KiB. A
# TLS record carries at most 16 KiB, so a 32 KiB buffer still takes two per read.
TLS_READ_BUFFER = 32 * 1024


def small_tls_buffers(size: int = TLS_READ_BUFFER) -> None:
    """The operator's TLS connections (its own, Kopf's, the attach sessions) read through a
    `size`-byte buffer instead of asyncio's 256 KiB. Process-wide: called once at start-up."""
    if getattr(asyncio.sslproto.SSLProtocol, "max_size", None) is not None:
        asyncio.sslproto.SSLProtocol.max_size = size


def older(candidate: str, current: str) -> bool:
    """Whether resourceVersion `candidate` is older than `current`. They are opaque by contract
    but etcd's are integers; only those are compared (anything else is never older)."""
    if candidate.isdigit() and current.isdigit():
        return int(candidate) < int(current)
    return False


def new_session(
    conn: Connection,
    *,
    limit: int = 64,
    component: str = "client",
    headers: Mapping[str, str] | None = None,
) -> aiohttp.ClientSession:
    """The one way a session to the API server is made (ours and the one Kopf is handed)."""
    connector = aiohttp.TCPConnector(ssl=conn.ssl_context, limit=limit)
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=None, connect=10),
        headers={"User-Agent": user_agent(component), **(headers or {})},
        # Without the kubeconfig's proxy-url, HTTPS_PROXY/NO_PROXY decide (as for kubectl),
        # read here once: aiohttp's trust_env reads them, and ~/.netrc on a worker thread, for
        # every request (a thread hand-off per API call, in the operator's CPU profile).
        proxy=conn.proxy or env_proxy(conn.server),
        trust_env=False,
    )


def env_proxy(server: str) -> str | None:
    """The proxy the environment names for the API server (HTTPS_PROXY or HTTP_PROXY by its
    scheme, unless NO_PROXY covers its host)."""
    parts = urlsplit(server)
    if parts.hostname is not None and proxy_bypass(parts.hostname):
        return None
    return getproxies().get(parts.scheme)


# (verb, HTTP status or "error") -> None; the operator counts them, the CLI does not.
Observer = Callable[[str, str], None]


class Kube:
    def __init__(
        self,
        conn: Connection,
        *,
        pool_size: int = 64,
        component: str = "client",
        observe: Observer | None = None,
        page_size: int = LIST_PAGE_SIZE,
    ) -> None:
        self.conn = conn
        self.component = component
        self.observe = observe or (lambda verb, code: None)
        self.page_size = page_size
        self._pool_size = pool_size
        self._session: aiohttp.ClientSession | None = None
        self._streams: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = new_session(self.conn, limit=self._pool_size, component=self.component)
        return self._session

    @property
    def streams(self) -> aiohttp.ClientSession:
        """A session of its own, without a connection limit, for streams held open for as long
        as a pod is warm (attach sessions, preattach.py). In the request session's pool of
        `pool_size` (64) connections, 64 warm pods would leave no connection for any request:
        the bench's soak saw every call time out with 200 warm pods."""
        if self._streams is None or self._streams.closed:
            self._streams = new_session(self.conn, limit=0, component=self.component)
        return self._streams

    @property
    def tls(self) -> dict[str, Any]:
        """Per-request TLS options (the kubeconfig's tls-server-name)."""
        name = self.conn.tls_server_name
        return {"server_hostname": name} if name else {}

    async def close(self) -> None:
        for session in (self._session, self._streams):
            if session is not None:
                await session.close()

    def headers(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """Headers with the credential as it is now (see `auth_headers` for a fresh one)."""
        return self._with_auth(self.conn.credentials.current(), extra)

    async def auth_headers(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        return self._with_auth(await self.conn.authorization(), extra)

    @staticmethod
    def _with_auth(value: str | None, extra: Mapping[str, str] | None) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if value:
            headers["Authorization"] = value
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
        verb: str | None = None,
        answer: bool = True,
    ) -> JSON:
        """The decoded answer; with `answer=False` a success comes back as `{}` undecoded (a
        pod's answer is ~7 KB of JSON, ~0.25 ms to decode on a slow 2-vCPU machine, for a release
        or a delete whose caller never reads it). Errors are always decoded."""
        verb = verb or _VERBS.get(method, method.lower())
        data = None if body is None else json.dumps(body)
        for attempt in (1, 2):
            headers = await self.auth_headers({"Content-Type": content_type} if data else None)
            try:
                async with self.session.request(
                    method,
                    self.conn.server + path,
                    params=params,
                    data=data,
                    headers=headers,
                    timeout=aiohttp.ClientTimeout(total=timeout),
                    **self.tls,
                ) as resp:
                    self.observe(verb, str(resp.status))
                    status = resp.status
                    if status < 400 and not answer:
                        await resp.read()
                        return {}
                    text = await resp.text()
            except (aiohttp.ClientError, TimeoutError):
                self.observe(verb, "error")
                raise
            try:
                payload: Any = jsonbounds.loads(text, typed=_typed(path)) if text else {}
            except ValueError:
                payload = {"message": text}
            # An expired or revoked credential: renew it once (exec plugins, rotated tokens).
            if status == 401 and attempt == 1 and await self.conn.refresh():
                continue
            if status >= 400:
                raise ApiError(status, payload)
            return payload if isinstance(payload, dict) else {"items": payload}
        raise AssertionError("unreachable")

    async def get(self, res: Resource, name: str, namespace: str | None = None) -> JSON:
        return await self.request("GET", res.path(namespace, name), verb="get")

    async def list(
        self,
        res: Resource,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        limit: int | None = None,
    ) -> JSON:
        """All items, fetched in pages of `limit` (`continue` tokens), as one list whose
        metadata.resourceVersion is the first page's: a watch from it misses nothing."""
        first: JSON | None = None
        items: list[Any] = []
        async for page in self.pages(
            res,
            namespace,
            label_selector=label_selector,
            field_selector=field_selector,
            limit=limit,
        ):
            first = first or page
            items.extend(page.get("items") or [])
        assert first is not None
        first["items"] = items
        first.setdefault("metadata", {}).pop("continue", None)
        return first

    async def pages(
        self,
        res: Resource,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[JSON]:
        """A list's pages of `limit` items, one request each, following `continue` tokens."""
        params: dict[str, str | int] = {"limit": limit or self.page_size}
        if label_selector:
            params["labelSelector"] = label_selector
        if field_selector:
            params["fieldSelector"] = field_selector
        path = res.path(namespace)
        page = await self.request("GET", path, params=params, verb="list")
        while True:
            yield page
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return
            page = await self.request(
                "GET", path, params={**params, "continue": token}, verb="list"
            )

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
        answer: bool = True,
    ) -> JSON:
        return await self.request(
            "PATCH",
            res.path(namespace, name, sub),
            body=body,
            content_type=_PATCH_CONTENT_TYPES[patch_type],
            answer=answer,
        )

    async def patch_status(
        self, res: Resource, name: str, status: JSON, namespace: str | None = None
    ) -> JSON:
        return await self.patch(res, name, {"status": status}, namespace, sub="status")

    async def replace_status(
        self, res: Resource, name: str, status: JSON, namespace: str | None = None
    ) -> JSON:
        """Sets the whole status in one JSON Patch `add` (RFC 6902 replaces an existing member).

        Unlike a merge patch, every `null` inside the new status is stored as null, not read as
        "delete this member" (a returned `{"error": None}` must come back with its null).
        """
        ops = [{"op": "add", "path": "/status", "value": status}]
        return await self.patch(res, name, ops, namespace, sub="status", patch_type="json")

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
            await self.request("DELETE", res.path(namespace, name), body=body or None, answer=False)
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
            headers=await self.auth_headers(),
            timeout=aiohttp.ClientTimeout(
                total=timeout_seconds + 30, sock_read=timeout_seconds + 30
            ),
            **self.tls,
        ) as resp:
            self.observe("watch", str(resp.status))
            if resp.status == 401:
                await self.conn.refresh()  # the caller's next watch uses the new credential
            if resp.status >= 400:
                raise ApiError(resp.status, await resp.text())
            async for line in resp.content:
                if not line.strip():
                    continue
                event = jsonbounds.loads(line, typed=not res.group)
                if event.get("type") == "ERROR":
                    status = event.get("object", {})
                    raise ApiError(int(status.get("code", 500)), status)
                yield event


async def sleep_backoff(attempt: int, *, base: float = 0.2, cap: float = 5.0) -> None:
    await backoff.sleep(attempt + 1, base=base, cap=cap)
