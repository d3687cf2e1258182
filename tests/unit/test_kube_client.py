"""The REST client's transport: process-wide settings, and its sessions' connection pools."""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import ssl

import pytest
from aiohttp import web

from codeexec.kube import attach as attach_mod
from codeexec.kube.client import PODS, TLS_READ_BUFFER, ApiError, Kube, small_tls_buffers
from codeexec.kube.config import Connection


async def test_tls_connections_made_after_start_up_read_through_a_small_buffer() -> None:
    """A held attach session is mostly its TLS read buffer: after `small_tls_buffers()` a new
    TLS connection's buffer is 32 KiB, not asyncio's 256 KiB. Fails as soon as a Python
    release stops sizing the buffer by `SSLProtocol.max_size` (the saving would be gone).
    Caught: with the assignment in small_tls_buffers removed the buffer was 262144 bytes."""
    original = asyncio.sslproto.SSLProtocol.max_size
    try:
        small_tls_buffers()
        loop = asyncio.get_running_loop()
        proto = asyncio.sslproto.SSLProtocol(
            loop, asyncio.Protocol(), ssl.create_default_context(), None, server_hostname="x"
        )
        assert len(proto._ssl_buffer) == TLS_READ_BUFFER == 32 * 1024
    finally:
        asyncio.sslproto.SSLProtocol.max_size = original


async def test_held_attach_sessions_never_starve_the_api_requests() -> None:
    """Every warm pod holds an attach session open, for as long as it stays warm. With the
    request session's connection limit shared, as many held sessions as the limit left no
    connection for any request: the soak's 200 warm pods had every call time out. Here, over
    real sockets to a local server, the limit is 2 and 3 sessions are held.
    Caught: with attach on `kube.session` the GET never got a connection."""
    held: list[web.WebSocketResponse] = []

    async def attach(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(protocols=(attach_mod.PROTOCOL,))
        await ws.prepare(request)
        held.append(ws)
        async for _ in ws:  # held until the client goes
            pass
        return ws

    async def get_pod(request: web.Request) -> web.Response:
        return web.json_response({"kind": "Pod", "metadata": {"name": "p"}})

    app = web.Application()
    app.router.add_get("/api/v1/namespaces/ns/pods/{name}/attach", attach)
    app.router.add_get("/api/v1/namespaces/ns/pods/{name}", get_pod)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    conn = Connection(server=f"http://127.0.0.1:{port}", ssl_context=ssl.create_default_context())
    kube = Kube(conn, pool_size=2)
    try:
        sessions = [await attach_mod.open_attach(kube, "ns", f"w{i}", "runner") for i in range(3)]
        assert len(held) == 3
        # A bound against a hang, not a speed figure: without the fix this never returns.
        pod = await asyncio.wait_for(kube.get(PODS, "p", "ns"), 20)
        assert pod["metadata"]["name"] == "p"
        for s in sessions:
            await s.close()
    finally:
        await kube.close()
        await runner.cleanup()


async def _serve(app: web.Application) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]


async def test_the_environments_proxy_is_read_once_and_still_used(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """HTTP(S)_PROXY and NO_PROXY decide, as for kubectl, but are read when the session is made:
    aiohttp's trust_env read them, and ~/.netrc on a worker thread, on every request. Real
    sockets: the proxy is a local server that answers requests in absolute form.
    Caught: with `proxy=conn.proxy` alone the GET went straight to the API server."""
    seen: list[str] = []

    async def api(request: web.Request) -> web.Response:
        seen.append(f"api {request.path}")
        return web.json_response({"metadata": {"name": "direct"}})

    async def proxy(request: web.Request) -> web.Response:
        seen.append(f"proxy {request.url}")
        return web.json_response({"metadata": {"name": "proxied"}})

    api_app, proxy_app = web.Application(), web.Application()
    api_app.router.add_get("/api/v1/namespaces/ns/pods/p", api)
    proxy_app.router.add_route("*", "/{tail:.*}", proxy)
    (api_runner, api_port), (proxy_runner, proxy_port) = (
        await _serve(api_app),
        await _serve(proxy_app),
    )
    server = f"http://127.0.0.1:{api_port}"
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy_port}")
    try:
        for no_proxy, expected in (("", "proxied"), ("127.0.0.1", "direct")):
            monkeypatch.setenv("NO_PROXY", no_proxy)
            kube = Kube(Connection(server=server, ssl_context=ssl.create_default_context()))
            try:
                assert kube.session.trust_env is False
                pod = await kube.get(PODS, "p", "ns")
                assert pod["metadata"]["name"] == expected, seen
            finally:
                await kube.close()
        assert seen == [
            f"proxy {server}/api/v1/namespaces/ns/pods/p",
            "api /api/v1/namespaces/ns/pods/p",
        ]
    finally:
        await api_runner.cleanup()
        await proxy_runner.cleanup()


async def test_an_answer_nobody_reads_is_not_decoded_but_an_error_still_is() -> None:
    """A release patch's and a delete's answer (a whole pod) is read off the wire, not decoded;
    a refusal still comes back as an ApiError with the server's message, and the connection
    serves the next call (pool of 1, over real sockets).
    Caught: with the answer decoded, the 200's body came back as `{"message": ...}`."""
    peers: list[object] = []

    async def delete_pod(request: web.Request) -> web.Response:
        peers.append(request.transport.get_extra_info("peername") if request.transport else None)
        if request.match_info["name"] == "held":
            return web.json_response(
                {"kind": "Status", "message": "held by a precondition"}, status=409
            )
        return web.Response(text="not json: a pod nobody reads", content_type="application/json")

    app = web.Application()
    app.router.add_delete("/api/v1/namespaces/ns/pods/{name}", delete_pod)
    runner, port = await _serve(app)
    conn = Connection(server=f"http://127.0.0.1:{port}", ssl_context=ssl.create_default_context())
    kube = Kube(conn, pool_size=1)
    try:
        answer = await kube.request("DELETE", PODS.path("ns", "p"), answer=False)
        assert answer == {}
        with pytest.raises(ApiError) as refused:
            await asyncio.wait_for(kube.delete(PODS, "held", "ns", missing_ok=True), 20)
        assert refused.value.status == 409
        assert refused.value.body["message"] == "held by a precondition"
        assert len(peers) == 2 and peers[0] == peers[1]  # one connection, read to its end
    finally:
        await kube.close()
        await runner.cleanup()
