"""`codeexec gateway`: the original sandbox's HTTP API (`POST /run`, `GET /healthz`).

Each request becomes one `CodeExecution` in the configured namespace; the answer is its
terminal status in the original's shape (compat.py), and the resource is deleted afterwards.
Middleware, outermost first: access log, request size limit, token authentication.
Secure by default: no token, no service (unless local-only); every phase of a request has a
deadline; a client never sees the API server's words, only the gateway's log does.
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from codeexec.client import WaitTimeout
from codeexec.gateway import accesslog, compat, staticcheck
from codeexec.gateway import config as gwconfig
from codeexec.gateway.auth import TokenSource, matches, presented
from codeexec.gateway.backend import (
    Backend,
    Finished,
    KubeBackend,
    Rejected,
    Vanished,
    execution_name,
    new_request_id,
)
from codeexec.gateway.config import ConfigError, GatewayConfig
from codeexec.gateway.request import Invalid, Problem, RunRequest, parse_run_request
from codeexec.kube import config as kubeconfig
from codeexec.kube.client import ApiError, Kube

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# Probes carry no token; they reveal nothing but whether the pools serve.
OPEN_PATHS = frozenset({"/healthz", "/livez"})


class Gate:
    """Admits at most `limit` requests at once and never queues: the rest are refused now."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_flight = 0

    def try_acquire(self) -> bool:
        if self.in_flight >= self.limit:
            return False
        self.in_flight += 1
        return True

    def release(self) -> None:
        self.in_flight -= 1


@dataclass
class RequestContext:
    request_id: str
    fields: dict[str, Any] = field(default_factory=dict)


# Set by the access-log middleware, in the task that also runs the handler.
_CONTEXT: contextvars.ContextVar[RequestContext] = contextvars.ContextVar("codeexec_gateway")


class Gateway:
    def __init__(self, cfg: GatewayConfig, backend: Backend, tokens: TokenSource) -> None:
        self.cfg = cfg
        self.backend = backend
        self.tokens = tokens
        self.gate = Gate(cfg.max_concurrency)


GATEWAY = web.AppKey("gateway", Gateway)


# ---- middleware ------------------------------------------------------------------------------


@web.middleware
async def access_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    ctx = RequestContext(new_request_id())
    _CONTEXT.set(ctx)
    loop = asyncio.get_running_loop()
    started = loop.time()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        response.headers["X-Request-Id"] = ctx.request_id
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    except asyncio.CancelledError:
        status = 499  # the client went away first (nginx's word for it)
        raise
    finally:
        accesslog.log_access(
            accesslog.access_record(
                request_id=ctx.request_id,
                method=request.method,
                path=request.path,
                http_status=status,
                duration_ms=(loop.time() - started) * 1000,
                remote=request.remote,
                bytes_in=request.content_length,
                user_agent=request.headers.get("User-Agent"),
                fields=ctx.fields,
            )
        )


def _error(status: int, detail: str, **headers: str) -> web.Response:
    return web.json_response({"detail": detail}, status=status, headers=headers or None)


@web.middleware
async def limit_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    limit = request.app[GATEWAY].cfg.max_request_bytes
    too_large = f"the request body is larger than {limit} bytes"
    if request.content_length is not None and request.content_length > limit:
        return _error(413, too_large)
    try:
        return await handler(request)
    except web.HTTPRequestEntityTooLarge:
        return _error(413, too_large)  # a chunked body that grew past client_max_size


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    tokens = request.app[GATEWAY].tokens
    if tokens.enabled and request.path not in OPEN_PATHS:
        expected = await tokens.current()
        if expected is None or not matches(presented(request.headers), expected):
            return _error(401, "Not authenticated", **{"WWW-Authenticate": "Bearer"})
    return await handler(request)


# ---- handlers --------------------------------------------------------------------------------


def _answer(result: compat.OriginalResult, status: int = 200) -> web.Response:
    ctx = _CONTEXT.get()
    ctx.fields.update(result_status=result.status, exit_code=result.exit_code, detail=result.detail)
    # Every result, refusals included, is HTTP 200, as the original answered; only "too many
    # requests" is a 429 (a current RAGFlow's executor), unless configured as of old.
    return web.json_response(result.to_json(), status=status)


async def run(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    ctx = _CONTEXT.get()
    try:
        # A body trickled in byte by byte must not hold the connection and its buffer.
        async with asyncio.timeout(gw.cfg.body_timeout):
            body = await request.read()
    except TimeoutError:
        ctx.fields["error"] = "body deadline"
        return _error(408, f"the request body did not arrive within {gw.cfg.body_timeout:g} s")
    try:
        req = parse_run_request(body)
    except Invalid as err:
        ctx.fields["error"] = str(err)
        return web.json_response(err.to_json(), status=422)
    ctx.fields.update(
        language=req.language, code_bytes=req.code_bytes, argument_count=len(req.arguments)
    )
    if not gw.gate.try_acquire():
        return _answer(compat.too_many_requests(), gw.cfg.busy_status)
    try:
        # The slot is held for a bounded time whatever the backend does: cancelling the
        # request deletes its execution (backend.execute's cleanup).
        async with asyncio.timeout(gw.cfg.request_timeout):
            if gw.cfg.static_check and req.language == "python":
                # Parsing up to 128 KiB of source is CPU work: keep it off the event loop.
                issues = await asyncio.to_thread(staticcheck.check, req.code)
                if issues:
                    return _answer(compat.unsafe_code([i.pair() for i in issues]))
            return await _execute(gw, req, ctx)
    except TimeoutError:
        ctx.fields["error"] = "request deadline"
        log.warning("request %s: stopped at its deadline", ctx.request_id)
        return _answer(
            compat.internal_error(
                f"the request did not finish within {gw.cfg.request_timeout:g} s; it was stopped"
            )
        )
    finally:
        gw.gate.release()


async def _execute(gw: Gateway, req: RunRequest, ctx: RequestContext) -> web.Response:
    ctx.fields["execution"] = f"{gw.cfg.namespace}/{execution_name(ctx.request_id)}"
    try:
        done = await gw.backend.execute(req, ctx.request_id)
    except Rejected as err:
        # The API server's words stay in the log: they may quote the request's values and
        # describe the cluster (schema, webhooks, quotas).
        ctx.fields["error"] = "refused by the API server"
        log.warning("request %s: the API server refused the execution: %s", ctx.request_id, err)
        problem = Problem(
            "value_error",
            ("body",),
            f"Value error, the request was refused as invalid (request {ctx.request_id})",
        )
        return web.json_response(Invalid([problem]).to_json(), status=422)
    except Vanished as err:
        return _answer(compat.cancelled(str(err)))
    except WaitTimeout:
        ctx.fields["error"] = "wait timeout"
        return _answer(
            compat.internal_error(
                f"the execution did not finish within {gw.cfg.wait_timeout:g} s; it was stopped"
            )
        )
    except (ApiError, aiohttp.ClientError, OSError, TimeoutError) as err:
        ctx.fields["error"] = type(err).__name__
        log.error("request %s: the Kubernetes API failed: %s", ctx.request_id, err)
        return _answer(
            compat.internal_error(
                f"the cluster could not run the request (request {ctx.request_id})"
            )
        )
    except Exception:
        log.exception("request %s: unhandled error", ctx.request_id)
        ctx.fields["error"] = "unhandled"
        message = f"unhandled error in the gateway (request {ctx.request_id})"
        return _answer(compat.unhandled(message))
    execution, files = (
        (done.execution, done.artifacts) if isinstance(done, Finished) else (done, [])
    )
    ctx.fields["reason"] = execution.status.reason
    ctx.fields["artifacts"] = len(files)
    return _answer(
        compat.from_execution(
            execution, keep_failure_stdout=gw.cfg.keep_failure_stdout, files=files
        )
    )


async def healthz(request: web.Request) -> web.Response:
    health = await request.app[GATEWAY].backend.health()
    if health.ok:
        return web.json_response({"status": "ok"})
    return web.json_response({"status": "unavailable", "detail": health.detail}, status=503)


async def livez(_: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def build_app(
    cfg: GatewayConfig, backend: Backend, tokens: TokenSource | None = None
) -> web.Application:
    if tokens is None:
        tokens = TokenSource(cfg.token, cfg.token_file)
        tokens.load()
    app = web.Application(
        client_max_size=cfg.max_request_bytes,
        middlewares=[access_middleware, limit_middleware, auth_middleware],
    )
    app[GATEWAY] = Gateway(cfg, backend, tokens)
    app.router.add_post("/run", run)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/livez", livez)
    return app


# ---- the command -----------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    gwconfig.add_arguments(parser)
    parser.add_argument("-v", "--verbose", action="store_true")


def make_backend(cfg: GatewayConfig, conn: kubeconfig.Connection | None = None) -> KubeBackend:
    # Every request in flight holds one watch connection; creates and deletes need more.
    kube = Kube(
        conn or kubeconfig.load(),
        pool_size=max(64, 2 * cfg.max_concurrency + 16),
        component="gateway",
    )
    return KubeBackend(kube, cfg)


def make_runner(app: web.Application, cfg: GatewayConfig) -> web.AppRunner:
    # handler_cancellation: a client that hangs up cancels its request, and so its run.
    # keepalive_timeout also closes a new connection that has not sent a whole request by
    # then (aiohttp arms it when the connection opens): the deadline on slow headers.
    return web.AppRunner(
        app,
        access_log=None,
        handler_cancellation=True,
        shutdown_timeout=30.0,
        keepalive_timeout=cfg.header_timeout,
    )


async def serve(cfg: GatewayConfig, stop: asyncio.Event) -> None:
    refusal = cfg.refusal()
    if refusal:
        raise ConfigError(refusal)
    backend = make_backend(cfg)
    try:
        app = build_app(cfg, backend)
        runner = make_runner(app, cfg)
        await runner.setup()
        await web.TCPSite(runner, cfg.host, cfg.port).start()
        log.info(
            "gateway listening",
            extra={
                "fields": {
                    "msg": "gateway listening",
                    "address": f"{cfg.host}:{cfg.port}",
                    "namespace": cfg.namespace,
                    "max_concurrency": cfg.max_concurrency,
                    "auth": app[GATEWAY].tokens.enabled,
                    "insecure_local_only": cfg.insecure_local_only,
                    "static_check": cfg.static_check,
                }
            },
        )
        try:
            await stop.wait()
        finally:
            # Requests in flight get the shutdown timeout to finish; the rest are cancelled,
            # which deletes their executions.
            await runner.cleanup()
    finally:
        await backend.close()


def main(args: argparse.Namespace) -> int:
    accesslog.configure(logging.DEBUG if args.verbose else logging.INFO)
    try:
        cfg = gwconfig.from_args(args)
        refusal = cfg.refusal()
        if refusal:
            raise ConfigError(refusal)
        TokenSource(cfg.token, cfg.token_file).load()
    except (ConfigError, OSError, ValueError) as err:
        print(f"codeexec gateway: {err}", file=sys.stderr)
        return 2

    async def _main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(cfg, stop)

    asyncio.run(_main())
    return 0
