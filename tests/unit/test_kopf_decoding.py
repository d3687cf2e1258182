"""Kopf's own list and watch code, against a local HTTP server serving objects nested 10,000
deep (as the API server accepts them): with kopfjson installed the watcher yields them, cut,
and lives on; without it, it dies (issue 10, 1)."""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from kopf._cogs.clients import api, auth, watching
from kopf._cogs.configs.configuration import OperatorSettings
from kopf._cogs.structs import credentials, references

from codeexec import jsonbounds
from codeexec.kube import kopfjson

RESOURCE = references.Resource(
    group="codeexec.io",
    version="v1alpha1",
    plural="codeexecutions",
    namespaced=True,
    preferred=True,
    verbs=["list", "watch"],
)
LEVELS = 10_000


def deep_object(name: str) -> str:
    return (
        '{"apiVersion": "codeexec.io/v1alpha1", "kind": "CodeExecution", "metadata": {"name": "'
        + name
        + '", "namespace": "t", "uid": "'
        + name
        + '", "resourceVersion": "2"}, "spec": {"language": "python", "code": "x", '
        '"arguments": {"a": ' + "[" * LEVELS + "]" * LEVELS + "}}}"
    )


def fake_api_server() -> web.Application:
    async def codeexecutions(request: web.Request) -> web.StreamResponse:
        if request.query.get("watch") != "true":
            body = (
                '{"apiVersion": "codeexec.io/v1alpha1", "kind": "CodeExecutionList", '
                '"metadata": {"resourceVersion": "1"}, "items": [' + deep_object("listed") + "]}"
            )
            return web.Response(text=body, content_type="application/json")
        resp = web.StreamResponse()
        resp.content_type = "application/json"
        await resp.prepare(request)
        event = '{"type": "ADDED", "object": ' + deep_object("watched") + "}\n"
        await resp.write(event.encode())
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/apis/codeexec.io/v1alpha1/codeexecutions", codeexecutions)
    return app


@pytest.fixture
async def kopf_context() -> AsyncIterator[None]:
    server = TestServer(fake_api_server())
    await server.start_server()
    vault = credentials.Vault()
    info = credentials.ConnectionInfo(server=str(server.make_url("")).rstrip("/"))
    await vault.populate({"test": info})
    token = auth.vault_var.set(vault)
    try:
        yield
    finally:
        auth.vault_var.reset(token)
        await vault.close()
        await server.close()


@pytest.fixture
def unhooked() -> AsyncIterator[None]:
    """Kopf as it ships: the references kopfjson replaces, put back for the test."""
    saved_module, saved_default = api.json, aiohttp.ClientResponse.json.__kwdefaults__["loads"]
    api.json = json  # type: ignore[attr-defined]
    aiohttp.ClientResponse.json.__kwdefaults__["loads"] = json.loads
    try:
        yield None  # type: ignore[misc]
    finally:
        api.json = saved_module  # type: ignore[attr-defined]
        aiohttp.ClientResponse.json.__kwdefaults__["loads"] = saved_default


async def first_events(count: int) -> list[Any]:
    settings = OperatorSettings()
    stream = watching.continuous_watch(
        settings=settings,
        resource=RESOURCE,
        namespace=None,
        operator_pause_waiter=asyncio.get_running_loop().create_future(),
    )
    events: list[Any] = []
    async for event in stream:
        events.append(event)
        if len(events) == count:
            break
    await stream.aclose()
    return events


@pytest.mark.usefixtures("kopf_context")
async def test_kopfs_list_and_watch_survive_objects_nested_10000_deep() -> None:
    """caught: removing either assignment in kopfjson.install() (the watch lines' `api.json`,
    the list's aiohttp `loads` default) made this fail with RecursionError, which ends Kopf's
    watcher task and, through its orchestrator, the operator."""
    kopfjson.install()
    listed, bookmark, watched = await first_events(3)
    assert bookmark is watching.Bookmark.LISTED
    for event, name in ((listed, "listed"), (watched, "watched")):
        body = event["object"]
        assert body["metadata"]["name"] == name
        assert jsonbounds.depth(body) <= jsonbounds.MAX_DECODE_DEPTH
        copy.deepcopy(body)  # Kopf's diffbase and our handlers._plain
    assert watched["type"] == "ADDED"
    assert kopfjson.installed()


@pytest.mark.usefixtures("kopf_context", "unhooked")
async def test_unhooked_kopf_dies_on_the_same_objects() -> None:
    """The fake server really does reach Kopf's fatal path: this is what the hook prevents."""
    with pytest.raises(RecursionError):
        await first_events(1)
