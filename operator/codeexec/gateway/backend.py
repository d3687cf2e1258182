"""Where requests become `CodeExecution`s: create, watch to the end, delete; and pool health.

The HTTP side talks to the `Backend` protocol only, so it can be tested without a cluster.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp

from codeexec.api.models import ArtifactInfo, CodeExecution, Language
from codeexec.client import ArtifactError, Client, WaitTimeout
from codeexec.gateway.config import GatewayConfig
from codeexec.gateway.request import RunRequest
from codeexec.kube.client import CODE_EXECUTIONS, SANDBOX_POOLS, ApiError, Kube, sleep_backoff

log = logging.getLogger(__name__)

MANAGED_BY = "codeexec-gateway"
LABELS = {"app.kubernetes.io/managed-by": MANAGED_BY}
DELETE_WAIT_SECONDS = 5.0


class Rejected(Exception):
    """The API server refused the CodeExecution as invalid; nothing was created."""


class Vanished(Exception):
    """The CodeExecution was deleted by someone else before it finished."""


@dataclass(frozen=True)
class Health:
    ok: bool
    detail: str


@dataclass(frozen=True)
class Finished:
    """A terminal execution and its artifacts' bytes, read before the resource went."""

    execution: CodeExecution
    artifacts: list[tuple[ArtifactInfo, bytes]]


class Backend(Protocol):
    async def execute(self, request: RunRequest, request_id: str) -> CodeExecution | Finished:
        """Runs the request to its terminal status; the resource is gone when this returns."""
        ...

    async def health(self) -> Health: ...

    async def close(self) -> None: ...


def execution_name(request_id: str) -> str:
    # Chosen before the create, so the resource can be deleted even if the create's answer
    # is lost to a cancelled request.
    return f"gw-{request_id}"


def new_request_id() -> str:
    return secrets.token_hex(8)


# ---- pool health (pure) ----------------------------------------------------------------------


def pools_serving(pools: Iterable[Mapping[str, Any]], named: Mapping[Language, str]) -> Health:
    """Whether a pool the gateway sends code to is serving.

    The gateway's pools are the named ones, and the default pool of each language without a
    name. A pool serves when it has ready pods or is running code: a pool under full load has
    no ready pod at all and is the last one to take out of service.
    """
    relevant: list[tuple[str, int, int]] = []
    for pool in pools:
        meta, spec = pool.get("metadata") or {}, pool.get("spec") or {}
        status = pool.get("status") or {}
        name, language = meta.get("name", ""), spec.get("language")
        chosen = named.get(language) if language in ("python", "nodejs") else None
        if (chosen is not None and name == chosen) or (chosen is None and spec.get("default")):
            relevant.append((name, int(status.get("ready") or 0), int(status.get("claimed") or 0)))
    if not relevant:
        return Health(False, "no SandboxPool for the gateway's languages")
    serving = [name for name, ready, claimed in relevant if ready + claimed > 0]
    if serving:
        return Health(True, f"serving: {', '.join(sorted(serving))}")
    return Health(False, f"no ready pods in {', '.join(sorted(n for n, _, _ in relevant))}")


class CachedHealth:
    """One probe at a time, its answer reused for `ttl` seconds (probes come often)."""

    def __init__(
        self,
        probe: Callable[[], Awaitable[Health]],
        ttl: float,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._probe = probe
        self._ttl = ttl
        self._clock = clock
        self._value: Health | None = None
        self._at = 0.0
        self._inflight: asyncio.Future[Health] | None = None

    def _now(self) -> float:
        return self._clock() if self._clock else asyncio.get_running_loop().time()

    async def get(self) -> Health:
        if self._value is not None and self._now() - self._at < self._ttl:
            return self._value
        if self._inflight is None:
            self._inflight = asyncio.ensure_future(self._refresh())
        # Shielded: one caller going away must not cancel the probe the others wait on.
        return await asyncio.shield(self._inflight)

    async def _refresh(self) -> Health:
        try:
            value = await self._probe()
        except (ApiError, aiohttp.ClientError, OSError, TimeoutError) as err:
            # /healthz is open to anyone who reaches the gateway: the details go to the log.
            log.warning("health probe: cannot read SandboxPools: %s", err)
            value = Health(False, "cannot read SandboxPools")
        finally:
            self._inflight = None
        self._value, self._at = value, self._now()
        return value


# ---- the real thing --------------------------------------------------------------------------


class KubeBackend:
    def __init__(self, kube: Kube, cfg: GatewayConfig) -> None:
        self.kube = kube
        self.cfg = cfg
        self.client = Client(kube, cfg.namespace)
        self._cleanups: set[asyncio.Task[None]] = set()
        self._health = CachedHealth(self._probe, cfg.health_cache_seconds)

    def manifest(self, request: RunRequest, name: str) -> dict[str, Any]:
        return self.client.manifest(
            request.code,
            language=request.language,
            arguments=request.arguments,
            timeout_seconds=self.cfg.timeout_seconds,
            pool=self.cfg.pools.get(request.language),
            name=name,
            ttl_seconds_after_finished=self.cfg.ttl_seconds_after_finished,
            labels=LABELS,
        )

    async def execute(self, request: RunRequest, request_id: str) -> Finished:
        name = execution_name(request_id)
        create = asyncio.ensure_future(
            self.kube.create(CODE_EXECUTIONS, self.manifest(request, name), self.cfg.namespace)
        )
        try:
            try:
                # Shielded: a cancelled request must still learn whether the create landed.
                await asyncio.shield(create)
            except ApiError as err:
                if err.status in (400, 422):
                    raise Rejected(str(err.body.get("message") or err)) from err
                raise
            done = await self._wait(name)
            # Before the delete: the default store's Secret goes with the execution.
            return Finished(done, await self._artifacts(done))
        finally:
            cleanup = asyncio.create_task(self._cleanup(name, create), name=f"delete-{name}")
            self._cleanups.add(cleanup)
            cleanup.add_done_callback(self._cleanups.discard)
            current = asyncio.current_task()
            if current is None or not current.cancelling():
                # Normally the resource is gone before the answer; an API server in trouble
                # does not get to hold the answer for long (the delete goes on regardless).
                await asyncio.wait([cleanup], timeout=DELETE_WAIT_SECONDS)
            # A cancelled request (client gone) leaves at once; the delete finishes in the
            # background and `close` waits for it.

    async def _wait(self, name: str) -> CodeExecution:
        """`Client.wait`, resumed across broken watches and API server restarts."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.cfg.wait_timeout
        attempt = 0
        while True:
            try:
                return await self.client.wait(name, timeout=max(0.0, deadline - loop.time()))
            except WaitTimeout:
                raise
            except ApiError as err:
                if err.not_found:
                    raise Vanished(f"CodeExecution {name} was deleted before it finished") from err
                if err.status < 500 and err.status != 429:
                    raise
                failure: Exception = err
            except (aiohttp.ClientError, OSError) as err:
                failure = err
            # The execution goes on in the cluster meanwhile; only our view of it broke.
            if loop.time() >= deadline:
                raise WaitTimeout(f"{name}: the API server was unreachable: {failure}")
            log.info("waiting for %s again after: %s", name, failure)
            await sleep_backoff(attempt)
            attempt += 1

    async def _artifacts(self, done: CodeExecution) -> list[tuple[ArtifactInfo, bytes]]:
        """Each artifact's bytes, checked against its SHA-256; one that cannot be read is
        left out (and logged), never the answer."""
        out = []
        for artifact in self.client.artifacts(done):
            try:
                out.append((artifact.info, await artifact.read()))
            except (ArtifactError, ApiError, aiohttp.ClientError, OSError) as err:
                log.warning("artifact %s of %s not read: %s", artifact.name, done.name, err)
        return out

    async def _cleanup(self, name: str, create: asyncio.Future[Any]) -> None:
        try:
            await create
        except ApiError as err:
            if err.status < 500:
                return  # a definite refusal: nothing was created
        except aiohttp.ClientConnectorError:
            return  # never reached the API server
        except Exception:
            pass  # the outcome is unknown: delete to be sure
        # Deleting a running execution stops it: the operator cancels it and frees its pod.
        failure: Exception | None = None
        for attempt in range(5):
            try:
                await self.kube.delete(CODE_EXECUTIONS, name, self.cfg.namespace)
                return
            except ApiError as err:
                if err.status < 500 and err.status != 429:
                    log.warning("could not delete CodeExecution %s: %s", name, err)
                    return
                failure = err
            except (aiohttp.ClientError, OSError, TimeoutError) as err:
                failure = err
            await sleep_backoff(attempt)
        log.warning("gave up deleting CodeExecution %s (its TTL will remove it): %s", name, failure)

    async def _probe(self) -> Health:
        listing = await self.kube.list(SANDBOX_POOLS, label_selector=self.cfg.pool_selector or None)
        return pools_serving(listing.get("items", []), self.cfg.pools)

    async def health(self) -> Health:
        return await self._health.get()

    async def close(self) -> None:
        if self._cleanups:
            await asyncio.gather(*self._cleanups, return_exceptions=True)
        await self.kube.close()
