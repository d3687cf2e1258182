"""The MCP tools' results (mcpserver.py): the summary, images as image content, other files
as embedded resources, failures flagged."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from codeexec.api.models import ArtifactInfo, ArtifactRef, CodeExecution
from codeexec.client import Artifact

pytest.importorskip("mcp")

from codeexec.mcpserver import tool_result


def _done(reason: str, value: Any) -> CodeExecution:
    return CodeExecution.from_body(
        {
            "metadata": {"name": "cx-1", "namespace": "ns", "uid": "u"},
            "spec": {"language": "python", "code": "x"},
            "status": {
                "phase": "Succeeded" if reason == "Succeeded" else "Failed",
                "reason": reason,
                "result": {"status": "success", "returnValue": value, "stdout": "hi\n"},
            },
        }
    )


def _artifact(name: str, kind: str, data: bytes) -> tuple[Artifact, bytes]:
    info = ArtifactInfo(
        name=name,
        size=len(data),
        content_type=kind,
        sha256="0" * 64,
        store="configmap",
        ref=ArtifactRef(config_map="c", key="k"),
    )
    return Artifact(info, "ns", None), data  # type: ignore[arg-type]


def test_a_chart_is_image_content_and_a_csv_an_embedded_resource() -> None:
    result = tool_result(
        _done("Succeeded", {"n": 3}),
        [_artifact("plot.png", "image/png", b"\x89PNG"), _artifact("t.csv", "text/csv", b"a,b")],
    )
    assert not result.is_error
    summary = json.loads(result.content[0].text)
    assert summary["return_value"] == {"n": 3} and summary["stdout"] == "hi\n"
    assert [a["name"] for a in summary["artifacts"]] == ["plot.png", "t.csv"]
    image, resource = result.content[1], result.content[2]
    assert (image.type, image.mime_type, base64.b64decode(image.data)) == (
        "image",
        "image/png",
        b"\x89PNG",
    )
    assert resource.type == "resource" and base64.b64decode(resource.resource.blob) == b"a,b"


def test_a_failed_run_is_a_tool_error_with_its_reason() -> None:
    result = tool_result(_done("UserException", None), [])
    assert result.is_error and json.loads(result.content[0].text)["reason"] == "UserException"


async def test_streamable_http_serves_the_same_tools(tmp_path: Any) -> None:
    """`codeexec mcp --transport streamable-http` on 127.0.0.1, listed with the SDK's own
    streamable-HTTP client (listing needs no cluster: only calls create CodeExecutions)."""
    import asyncio
    import os
    import socket
    import sys

    from mcp.client.session import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "clusters: [{name: k, cluster: {server: 'https://127.0.0.1:1'}}]\n"
        "users: [{name: u, user: {token: t}}]\n"
        "contexts: [{name: c, context: {cluster: k, user: u, namespace: ns}}]\n"
    )
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "codeexec", "mcp", "--transport", "streamable-http",
        "--host", "127.0.0.1", "--port", str(port),
        env={**os.environ, "KUBECONFIG": str(kubeconfig)},
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        for _ in range(200):  # a bound against hangs: up to 20 s for the server to listen
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                break
            except OSError:
                await asyncio.sleep(0.1)
        async with (
            streamable_http_client(f"http://127.0.0.1:{port}/mcp") as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            names = {t.name for t in (await session.list_tools()).tools}
        assert {"run_python", "run_nodejs"} <= names
    finally:
        proc.terminate()
        await proc.wait()
