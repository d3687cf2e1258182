"""The gateway is secure by default: a token or no service, deadlines on every phase of a
request, and no API server text in any answer (issue 10, finding 4)."""

from __future__ import annotations

import argparse
import asyncio
import socket

import pytest
from aiohttp.test_utils import TestClient, TestServer

from codeexec.gateway import app as gwapp
from codeexec.gateway import config
from codeexec.gateway.app import GATEWAY, build_app, make_runner
from codeexec.gateway.config import GatewayConfig
from codeexec.kube.client import ApiError

from .test_gateway_app import USAGE_EXAMPLE, FakeBackend

API_WORDS = 'namespaces "tenant-secret-name" not found; admission webhook "internal.example"'


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    gwapp.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_without_a_token_the_gateway_refuses_to_start(capsys: pytest.CaptureFixture[str]) -> None:
    """caught: main() serving without a token (today's default) made this fail."""
    assert gwapp.main(parse("--namespace", "t")) == 2
    err = capsys.readouterr().err
    assert "refusing to start without a token" in err and "--insecure-local-only" in err


def test_local_only_serves_without_a_token_on_loopback_only() -> None:
    cfg = config.from_args(parse("--insecure-local-only"), {})
    assert cfg.host == "127.0.0.1" and cfg.refusal() is None
    exposed = config.from_args(parse("--insecure-local-only", "--host", "0.0.0.0"), {})
    assert "loopback" in (exposed.refusal() or "")
    assert config.from_args(parse(), {"CODEEXEC_GATEWAY_TOKEN": "t"}).refusal() is None


async def test_serve_refuses_an_unauthenticated_configuration() -> None:
    with pytest.raises(config.ConfigError, match="without a token"):
        await gwapp.serve(GatewayConfig(), asyncio.Event())


async def test_either_token_header_is_accepted_and_nothing_else() -> None:
    """caught: reading only `Authorization: Bearer` made the X-Sandbox-Token case fail."""
    backend = FakeBackend()
    app = build_app(GatewayConfig(token="s3cret"), backend)
    async with TestClient(TestServer(app)) as client:
        for headers, status in (
            ({"X-Sandbox-Token": "s3cret"}, 200),
            ({"Authorization": "Bearer s3cret"}, 200),
            ({"X-Sandbox-Token": "wrong"}, 401),
            ({"X-Sandbox-Token": ""}, 401),
            ({"Authorization": "Bearer wrong", "X-Sandbox-Token": "s3cret"}, 401),
            ({}, 401),
        ):
            resp = await client.post("/run", json=USAGE_EXAMPLE, headers=headers)
            assert resp.status == status, headers
    assert len(backend.calls) == 2


@pytest.mark.parametrize(
    "error",
    [
        ApiError(404, {"message": API_WORDS}),
        ApiError(500, {"message": API_WORDS}),
        OSError(API_WORDS),
    ],
)
async def test_error_bodies_carry_no_api_server_text(
    error: Exception, caplog: pytest.LogCaptureFixture
) -> None:
    """caught: the old `the Kubernetes API failed: {err}` answer made this fail."""
    app = build_app(GatewayConfig(token="t"), FakeBackend(error))
    async with TestClient(TestServer(app)) as client:
        resp = await client.post("/run", json=USAGE_EXAMPLE, headers={"X-Sandbox-Token": "t"})
        text = await resp.text()
    assert "tenant-secret-name" not in text and "webhook" not in text
    assert resp.headers["X-Request-Id"] in text  # what an operator looks up in the log
    assert "tenant-secret-name" in caplog.text


async def test_a_request_that_never_finishes_gives_back_its_slot() -> None:
    """caught: without the request deadline the request hung and kept its slot."""
    backend = FakeBackend()
    backend.block = True  # the backend never answers
    cfg = GatewayConfig(token="t", wait_timeout=0.05, request_slack_seconds=0.05, max_concurrency=1)
    app = build_app(cfg, backend)
    async with TestClient(TestServer(app)) as client:
        resp = await client.post("/run", json=USAGE_EXAMPLE, headers={"X-Sandbox-Token": "t"})
        body = await resp.json()
        assert body["detail"] == "internal_error" and "did not finish" in body["stderr"]
        assert backend.cancelled.is_set()  # so its execution is deleted
        assert app[GATEWAY].gate.in_flight == 0


async def test_slow_body_is_cut_off_before_it_reaches_a_slot() -> None:
    """caught: without the body deadline the request waited for the body for ever."""
    backend = FakeBackend()
    app = build_app(GatewayConfig(token="t", body_timeout=0.05), backend)
    async with TestServer(app) as server:
        reader, writer = await asyncio.open_connection(server.host, server.port)
        writer.write(
            b"POST /run HTTP/1.1\r\nHost: x\r\nX-Sandbox-Token: t\r\n"
            b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"
        )
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), timeout=30)
        writer.close()
    assert status_line.startswith(b"HTTP/1.1 408"), status_line
    assert backend.calls == [] and app[GATEWAY].gate.in_flight == 0


async def test_slow_headers_cannot_hold_a_connection() -> None:
    """caught: without keepalive_timeout in make_runner the half-sent request held the socket."""
    cfg = GatewayConfig(token="t", header_timeout=0.2)
    runner = make_runner(build_app(cfg, FakeBackend()), cfg)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    from aiohttp import web

    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /run HTTP/1.1\r\nHost: x\r\n")  # and never the rest
        await writer.drain()
        # The server closes the connection: EOF, not a wait for ever (30 s is only a net).
        assert await asyncio.wait_for(reader.read(), timeout=30) == b""
        writer.close()
    finally:
        await runner.cleanup()
