"""The gateway speaks a current RAGFlow's sandbox contract (issue 12, point 5).

Requests are built the way RAGFlow's CodeExec tool and its self-managed provider build them
(`{"code_b64", "language", "arguments"}` from a pydantic model_dump, JSON body), and our
answers are read the way they read them: `result.present/value/type` for the value, else
stdout; `artifacts[].content_b64` decoded for the files. Both token headers are accepted, a
missing or wrong token is refused, and past the concurrency limit the answer is HTTP 429 with
exit_code -429.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from typing import Any

import pytest
from e2e.fixtures import Cluster

from .conftest import OperatorProcess
from .test_gateway_e2e import eventually, start_gateway

pytestmark = pytest.mark.cluster

TOKEN = "ragflow-shared-secret"
CHART = """
import hashlib
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd

def main(title: str) -> dict:
    df = pd.DataFrame({"x": [1, 2, 3, 4], "y": [10, 20, 25, 30]})
    fig, ax = plt.subplots()
    ax.plot(df["x"], df["y"])
    ax.set_title(title)
    fig.savefig("artifacts/chart.png", dpi=50, bbox_inches="tight")
    plt.close(fig)
    df.to_csv("artifacts/data.csv", index=False)
    return {"summary": "Chart saved", "sha256": hashlib.sha256(open("artifacts/chart.png", "rb").read()).hexdigest()}
"""


def ragflow_request(code: str, language: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """What CodeExecutionRequest(...).model_dump() yields: base64 of the UTF-8 code, the
    language normalised (python3 -> python, javascript -> nodejs), arguments as given."""
    lang = {"python3": "python", "javascript": "nodejs"}.get(language.lower(), language.lower())
    return {
        "code_b64": base64.b64encode(code.encode("utf-8")).decode("utf-8"),
        "language": lang,
        "arguments": arguments,
    }


def ragflow_reads(body: dict[str, Any]) -> tuple[Any, list[tuple[str, str, bytes]]]:
    """The value and the files, read as RAGFlow's CodeExec reads an executor's answer."""
    structured = body.get("result")
    if isinstance(structured, dict) and structured.get("present") is True:
        value = structured.get("value")
    else:
        text = str(body.get("stdout") or "").strip()
        try:
            value = json.loads(text)
        except ValueError:
            value = text
    files = []
    for art in body.get("artifacts", []):
        name, content_b64 = art.get("name"), art.get("content_b64")
        if name and content_b64:
            files.append((name, art.get("mime_type"), base64.b64decode(content_b64)))
    return value, files


async def test_a_ragflow_request_gets_the_value_and_the_chart_back(
    operator: OperatorProcess, cluster: Cluster, namespace: str
) -> None:
    async with start_gateway(cluster, namespace, token=TOKEN) as gw:
        body = ragflow_request(CHART, "python3", {"title": "from RAGFlow"})
        bearer = await gw.client.post(
            "/run", json=body, headers={"Authorization": f"Bearer {TOKEN}"}
        )
        assert bearer.status == 200
        answer = await bearer.json()
        value, files = ragflow_reads(answer)
        assert answer["status"] == "success", answer
        assert answer["result"] == {"present": True, "value": value, "type": "json"}
        assert value["summary"] == "Chart saved"
        names = {name: (mime, data) for name, mime, data in files}
        assert names["chart.png"][0] == "image/png"
        assert hashlib.sha256(names["chart.png"][1]).hexdigest() == value["sha256"]
        assert names["data.csv"] == ("text/csv", b"x,y\n1,10\n2,20\n3,25\n4,30\n")
        assert [a["size"] for a in answer["artifacts"]] == [len(d) for _, _, d in files]
        # The other header RAGFlow may send, with a Node.js request.
        js = "module.exports = { main: async (args) => ({ got: args.n * 3 }) };"
        other = await gw.client.post(
            "/run",
            json=ragflow_request(js, "javascript", {"n": 4}),
            headers={"X-Sandbox-Token": TOKEN},
        )
        assert other.status == 200
        assert ragflow_reads(await other.json())[0] == {"got": 12}
        # No token, or a wrong one: refused before anything is created.
        for headers in ({}, {"X-Sandbox-Token": "wrong"}, {"Authorization": "Bearer wrong"}):
            refused = await gw.client.post("/run", json=body, headers=headers)
            assert refused.status == 401, headers
        assert await gw.executions() == []


async def test_an_older_client_still_gets_its_answer(
    operator: OperatorProcess, cluster: Cluster, namespace: str
) -> None:
    """Only code_b64/language/arguments, reading stdout: the printed return value is there."""
    async with start_gateway(cluster, namespace) as gw:
        status, body = await gw.run("def main(x):\n    return x * 2\n", arguments={"x": 21})
    assert status == 200 and body["stdout"] == "42\n" and body["exit_code"] == 0
    assert ragflow_reads({k: v for k, v in body.items() if k != "result"})[0] == 42


async def test_past_the_limit_the_answer_is_429_with_exit_code_minus_429(
    operator: OperatorProcess, cluster: Cluster, namespace: str
) -> None:
    slow = "import time\ndef main():\n    time.sleep(10)\n    return 'slow'\n"
    async with start_gateway(cluster, namespace, max_concurrency=1, timeout_seconds=60) as gw:
        running = asyncio.create_task(gw.run(slow))
        await eventually(lambda: _admitted(gw), what="one request in flight")
        resp = await gw.client.post(
            "/run", json=ragflow_request("def main(): return 1", "python", {})
        )
        assert resp.status == 429
        answer = await resp.json()
        assert (answer["exit_code"], answer["status"]) == (-429, "program_runner_error")
        assert (await running)[0] == 200


async def _admitted(gw: Any) -> bool:
    return bool(gw.in_flight == 1 and len(await gw.executions()) == 1)
