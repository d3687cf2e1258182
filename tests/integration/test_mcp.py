"""`codeexec mcp` driven by the MCP SDK's own client over stdio, against the real cluster
(issue 12, point 6): the tools are listed, code runs as a CodeExecution, and the value and the
chart come back (the chart as image content, byte-identical to what the sandbox wrote)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import sys
from typing import Any

import pytest
from e2e.fixtures import Cluster

from codeexec.kube import config
from codeexec.kube.client import CODE_EXECUTIONS, Kube

from .conftest import OperatorProcess

pytestmark = pytest.mark.cluster

mcp_client = pytest.importorskip("mcp.client.stdio")
mcp_session = pytest.importorskip("mcp.client.session")

CHART = """
import hashlib
import matplotlib.pyplot as plt

def main(points):
    rows = [line.split(",") for line in open("points.csv").read().split()]
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.plot([float(x) for x, _ in rows], [float(y) for _, y in rows])
    fig.savefig("artifacts/plot.png", dpi=50)
    open("artifacts/notes.txt", "w").write("made from %d points" % len(rows))
    return {"points": len(rows) + points, "sha256": hashlib.sha256(open("artifacts/plot.png", "rb").read()).hexdigest()}
"""


async def test_an_mcp_client_lists_the_tools_runs_code_and_gets_the_chart(
    operator: OperatorProcess, cluster: Cluster, namespace: str
) -> None:
    params = mcp_client.StdioServerParameters(
        command=sys.executable,
        args=[
            "-m",
            "codeexec",
            "mcp",
            "-n",
            namespace,
            "--pool-python",
            "python",
            "--pool-nodejs",
            "nodejs",
        ],
        env={**os.environ, "KUBECONFIG": str(cluster.kubeconfig)},
    )
    async with (
        mcp_client.stdio_client(params) as (read, write),
        mcp_session.ClientSession(read, write) as session,
    ):
        await session.initialize()
        tools = {t.name: t for t in (await session.list_tools()).tools}
        assert {"run_python", "run_nodejs"} <= set(tools)
        schema = tools["run_python"].input_schema
        assert {"code", "arguments", "files", "timeout_seconds"} <= set(schema["properties"])

        result = await session.call_tool(
            "run_python",
            {
                "code": CHART,
                "arguments": {"points": 0},
                "files": [{"path": "points.csv", "content": "1,2\n2,4\n3,9\n"}],
                "timeout_seconds": 30,
            },
        )
        assert not result.is_error, result
        text = json.loads(result.content[0].text)
        assert text["reason"] == "Succeeded" and text["return_value"]["points"] == 3
        images = [c for c in result.content if c.type == "image"]
        assert [i.mime_type for i in images] == ["image/png"]
        png = base64.b64decode(images[0].data)
        assert hashlib.sha256(png).hexdigest() == text["return_value"]["sha256"]
        resources = [c for c in result.content if c.type == "resource"]
        assert base64.b64decode(resources[0].resource.blob) == b"made from 3 points"

        failed = await session.call_tool(
            "run_nodejs", {"code": "module.exports = () => { throw new Error('nope') }"}
        )
        assert failed.is_error
        assert json.loads(failed.content[0].text)["reason"] == "UserException"

    # Each call was a CodeExecution, deleted once answered.
    kube = Kube(config.from_kubeconfig(str(cluster.kubeconfig)) or config.load())
    try:
        left: dict[str, Any] = await kube.list(CODE_EXECUTIONS, namespace)
        assert left.get("items", []) == []
    finally:
        await kube.close()
