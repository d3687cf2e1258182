"""Kubeconfig loading and the REST client's handling of credentials, against a local HTTP
server standing in for the API server (the same kubeconfigs against the real cluster:
tests/integration/test_kubeconfigs.py)."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from codeexec.kube import config
from codeexec.kube.client import CODE_EXECUTIONS, PODS, ApiError, Kube, user_agent

PLUGIN = Path(__file__).parents[1] / "kubeconfigs" / "exec_plugin.py"


def kubeconfig(
    path: Path,
    *,
    server: str = "http://127.0.0.1:1",
    cluster: dict[str, Any] | None = None,
    user: dict[str, Any] | None = None,
    context: str = "main",
    current: str | None = "",
    namespace: str | None = None,
) -> Path:
    ctx: dict[str, Any] = {"cluster": context, "user": context}
    if namespace:
        ctx["namespace"] = namespace
    doc: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": context, "cluster": {"server": server, **(cluster or {})}}],
        "users": [{"name": context, "user": user or {}}],
        "contexts": [{"name": context, "context": ctx}],
    }
    if current is not None:
        doc["current-context"] = current or context
    path.write_text(yaml.safe_dump(doc))
    return path


def exec_user(state: Path, *credentials: str) -> dict[str, Any]:
    state.mkdir(parents=True, exist_ok=True)
    (state / "credentials").write_text("\n".join(credentials) + "\n")
    return {
        "exec": {
            "apiVersion": "client.authentication.k8s.io/v1",
            "command": sys.executable,
            "args": [str(PLUGIN), str(state)],
            "interactiveMode": "Never",
        }
    }


def runs(state: Path) -> int:
    calls = state / "calls"
    return len(calls.read_text().splitlines()) if calls.exists() else 0


def rfc3339(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


# --- loading -------------------------------------------------------------------------------


def test_two_files_merge_and_context_chooses_the_non_current_one(tmp_path: Path) -> None:
    first = kubeconfig(tmp_path / "a", server="https://a.example:6443", context="a")
    second = kubeconfig(
        tmp_path / "b", server="https://b.example:6443", context="b", namespace="team"
    )
    paths = f"{first}{os.pathsep}{second}"
    assert config.from_kubeconfig(paths).server == "https://a.example:6443"  # type: ignore[union-attr]
    other = config.from_kubeconfig(paths, context="b")
    assert other is not None
    assert (other.server, other.namespace, other.context) == ("https://b.example:6443", "team", "b")


def test_an_unknown_context_names_the_known_ones(tmp_path: Path) -> None:
    path = kubeconfig(tmp_path / "k", context="one")
    with pytest.raises(config.ConfigError, match=r"'two' not found \(contexts: one\)"):
        config.from_kubeconfig(str(path), context="two")


def test_no_current_context_asks_for_one(tmp_path: Path) -> None:
    path = kubeconfig(tmp_path / "k", current=None)
    with pytest.raises(config.ConfigError, match="--context"):
        config.from_kubeconfig(str(path))


def test_token_file_is_relative_to_the_kubeconfig_not_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "kube"
    home.mkdir()
    (home / "token").write_text("from-the-file\n")
    path = kubeconfig(home / "config", user={"tokenFile": "token"})
    monkeypatch.chdir(tmp_path)
    conn = config.from_kubeconfig(str(path))
    assert conn is not None and conn.bearer() == "from-the-file"


def test_load_prefers_an_explicit_kubeconfig_and_says_when_it_is_missing(
    tmp_path: Path,
) -> None:
    with pytest.raises(config.ConfigError, match="no kubeconfig file found"):
        config.load(str(tmp_path / "missing"))


def test_proxy_url_and_tls_server_name_reach_the_connection(tmp_path: Path) -> None:
    path = kubeconfig(
        tmp_path / "k",
        server="https://127.0.0.2:6443",
        cluster={"proxy-url": "http://127.0.0.1:8888", "tls-server-name": "kubernetes"},
        user={"token": "t"},
    )
    conn = config.from_kubeconfig(str(path))
    assert conn is not None
    assert (conn.proxy, conn.tls_server_name) == ("http://127.0.0.1:8888", "kubernetes")
    assert Kube(conn).tls == {"server_hostname": "kubernetes"}


def test_a_socks_proxy_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    path = kubeconfig(tmp_path / "k", cluster={"proxy-url": "socks5://127.0.0.1:1080"})
    with pytest.raises(config.ConfigError, match="not http"):
        config.from_kubeconfig(str(path))


async def test_an_expired_exec_credential_is_renewed_before_use(tmp_path: Path) -> None:
    """caught: removing the expiry check in KubeconfigCredentials.authorization made this fail."""
    state = tmp_path / "plugin"
    past = rfc3339(datetime.now(UTC) - timedelta(minutes=1))
    future = rfc3339(datetime.now(UTC) + timedelta(hours=1))
    user = exec_user(state, f"first {past}", f"second {future}")
    conn = config.from_kubeconfig(str(kubeconfig(tmp_path / "k", user=user)))
    assert conn is not None and conn.bearer() == "first" and runs(state) == 1
    assert await conn.authorization() == "Bearer second"
    assert await conn.authorization() == "Bearer second"
    assert runs(state) == 2  # a valid credential is not fetched again


# --- the client against a stand-in API server -------------------------------------------------


class FakeApi:
    """Answers like the API server for what these tests need, and records each request."""

    def __init__(self, valid_token: str | None = None, items: int = 0, page: int = 2) -> None:
        self.valid_token = valid_token
        self.items = [{"metadata": {"name": f"cx-{i}"}} for i in range(items)]
        self.page = page
        self.seen: list[tuple[str, str, dict[str, str]]] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append((request.method, request.path_qs, dict(request.headers)))
        if self.valid_token and request.headers.get("Authorization") != (
            f"Bearer {self.valid_token}"
        ):
            return web.json_response({"reason": "Unauthorized", "code": 401}, status=401)
        if request.method == "GET" and request.query.get("watch") == "true":
            resp = web.StreamResponse()
            await resp.prepare(request)
            await resp.write(b'{"type":"ADDED","object":{"metadata":{"name":"cx-0"}}}\n')
            return resp
        if request.method == "GET" and request.path.endswith("codeexecutions"):
            start = int(request.query.get("continue") or 0)
            limit = int(request.query["limit"])
            end = start + min(limit, self.page)
            meta: dict[str, Any] = {"resourceVersion": "7"}
            if end < len(self.items):
                meta["continue"] = str(end)
            return web.json_response({"metadata": meta, "items": self.items[start:end]})
        return web.json_response({"metadata": {"name": "x"}})


@pytest.fixture
async def serve() -> AsyncIterator[Any]:
    runners: list[web.AppRunner] = []

    async def start(api: FakeApi) -> str:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", api.handle)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return f"http://127.0.0.1:{port}"

    yield start
    for runner in runners:
        await runner.cleanup()


async def test_every_request_carries_the_user_agent(tmp_path: Path, serve: Any) -> None:
    api = FakeApi(items=1)
    server = await serve(api)
    conn = config.from_kubeconfig(str(kubeconfig(tmp_path / "k", server=server)))
    assert conn is not None
    kube = Kube(conn, component="operator")
    try:
        await kube.get(CODE_EXECUTIONS, "x", "ns")
        await kube.list(CODE_EXECUTIONS, "ns")
        await kube.create(CODE_EXECUTIONS, {}, "ns")
        await kube.patch(CODE_EXECUTIONS, "x", {}, "ns")
        await kube.delete(PODS, "x", "ns")
        async for _ in kube.watch(CODE_EXECUTIONS, "ns", resource_version="1"):
            break
    finally:
        await kube.close()
    agents = {headers.get("User-Agent") for _, _, headers in api.seen}
    assert agents == {user_agent("operator")}
    assert user_agent("operator").startswith("codeexec-operator/0.")
    assert len(api.seen) == 6


async def test_lists_page_through_limit_and_continue(tmp_path: Path, serve: Any) -> None:
    """caught: returning the first page only (no continue loop) made this fail."""
    api = FakeApi(items=5, page=2)
    server = await serve(api)
    conn = config.from_kubeconfig(str(kubeconfig(tmp_path / "k", server=server)))
    assert conn is not None
    kube = Kube(conn, page_size=2)
    try:
        listing = await kube.list(CODE_EXECUTIONS, "ns")
    finally:
        await kube.close()
    assert [i["metadata"]["name"] for i in listing["items"]] == [f"cx-{i}" for i in range(5)]
    assert listing["metadata"] == {"resourceVersion": "7"}
    queries = [q for _, q, _ in api.seen]
    assert len(queries) == 3 and all("limit=2" in q for q in queries)
    assert "continue=2" in queries[1] and "continue=4" in queries[2]


async def test_a_401_renews_the_exec_credential_once_and_retries(
    tmp_path: Path, serve: Any
) -> None:
    """caught: removing the 401 retry in Kube.request made this fail."""
    api = FakeApi(valid_token="good")
    server = await serve(api)
    state = tmp_path / "plugin"
    later = rfc3339(datetime.now(UTC) + timedelta(hours=1))
    user = exec_user(state, f"revoked {later}", f"good {later}")
    conn = config.from_kubeconfig(str(kubeconfig(tmp_path / "k", server=server, user=user)))
    assert conn is not None
    seen: list[tuple[str, str]] = []
    kube = Kube(conn, observe=lambda verb, code: seen.append((verb, code)))
    try:
        await kube.get(CODE_EXECUTIONS, "x", "ns")
    finally:
        await kube.close()
    assert runs(state) == 2
    assert seen == [("get", "401"), ("get", "200")]


async def test_a_credential_the_server_keeps_refusing_is_an_error(
    tmp_path: Path, serve: Any
) -> None:
    api = FakeApi(valid_token="never")
    server = await serve(api)
    state = tmp_path / "plugin"
    user = exec_user(state, "wrong")
    conn = config.from_kubeconfig(str(kubeconfig(tmp_path / "k", server=server, user=user)))
    assert conn is not None
    kube = Kube(conn)
    try:
        with pytest.raises(ApiError) as err:
            await kube.get(CODE_EXECUTIONS, "x", "ns")
    finally:
        await kube.close()
    assert err.value.status == 401
    assert len(api.seen) == 2  # one retry, not a loop


def test_loading_inside_a_running_loop_works() -> None:
    async def inside(tmp: Path) -> config.Connection | None:
        state = tmp / "plugin"
        user = exec_user(state, "tok")
        return config.from_kubeconfig(str(kubeconfig(tmp / "k", user=user)))

    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        conn = asyncio.run(inside(Path(tmp)))
    assert conn is not None and conn.bearer() == "tok"


async def test_kopf_is_handed_a_session_like_ours(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Kopf's own requests (its watches) carry our User-Agent and the same credential."""
    from codeexec import handlers

    monkeypatch.setenv("KUBECONFIG", str(kubeconfig(tmp_path / "k", user={"token": "t"})))
    context = await handlers.login()
    session = context.aiohttp_session
    try:
        assert session.headers["User-Agent"] == user_agent("operator")
        assert session.headers["Authorization"] == "Bearer t"
        assert context.server == "http://127.0.0.1:1"
    finally:
        await session.close()


def test_a_relative_exec_command_is_found_beside_its_kubeconfig(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """client-go resolves `./bin/plugin` against the kubeconfig's directory, not the cwd."""
    home = tmp_path / "kube"
    (home / "bin").mkdir(parents=True)
    state = tmp_path / "state"
    user = exec_user(state, "beside")
    wrapper = home / "bin" / "plugin"
    wrapper.write_text(f"#!/bin/sh\nexec {sys.executable} {PLUGIN} {state}\n")
    wrapper.chmod(0o755)
    user["exec"]["command"], user["exec"]["args"] = "./bin/plugin", []
    path = kubeconfig(home / "config", user=user)
    monkeypatch.chdir(tmp_path)
    conn = config.from_kubeconfig(str(path))
    assert conn is not None and conn.bearer() == "beside"


def test_an_oidc_id_token_is_sent_while_it_is_valid(tmp_path: Path) -> None:
    import base64
    import json

    def part(doc: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(doc).encode()).decode().rstrip("=")

    exp = int((datetime.now(UTC) + timedelta(hours=1)).timestamp())
    token = f"{part({'alg': 'RS256'})}.{part({'exp': exp, 'sub': 'me'})}.c2ln"
    user = {
        "auth-provider": {
            "name": "oidc",
            "config": {
                "client-id": "kubectl",
                "idp-issuer-url": "https://issuer.invalid",
                "id-token": token,
                "refresh-token": "r",
            },
        }
    }
    conn = config.from_kubeconfig(str(kubeconfig(tmp_path / "k", user=user)))
    assert conn is not None and conn.bearer() == token
