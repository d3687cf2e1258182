"""The gateway on the real cluster: the original sandbox's API answered by CodeExecutions.

Acceptance of issue 6: the original's usage example field for field; one request per original
status and sub-type; 20 concurrent requests against the pool of 3; immediate "too many
requests" past the limit; 422 and nothing created for malformed requests. The gateway runs
in-process (aiohttp's test server on the session's loop) against the operator fixture.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from e2e.fixtures import Cluster, wait_for

from codeexec.gateway.app import GATEWAY, build_app, make_backend
from codeexec.gateway.config import GatewayConfig
from codeexec.kube import config
from codeexec.kube.client import CODE_EXECUTIONS, NAMESPACES, Kube

from .conftest import OperatorProcess, pool_manifest

pytestmark = pytest.mark.cluster

ORIGINAL_FIELDS = [
    "status",
    "stdout",
    "stderr",
    "exit_code",
    "detail",
    "time_used_ms",
    "memory_used_kb",
    "resource_limit_type",
    "unauthorized_access_type",
    "runtime_error_type",
]
SUBTYPES = ("resource_limit_type", "unauthorized_access_type", "runtime_error_type")
USAGE_EXAMPLE = "def main(x): return x * 2"


def b64(code: str) -> str:
    return base64.b64encode(code.encode()).decode()


@dataclass
class Gateway:
    client: TestClient[Any, Any]
    app: web.Application
    kube: Kube
    namespace: str

    async def run(
        self, code: str, language: str = "python", arguments: dict[str, Any] | None = None
    ) -> tuple[int, dict[str, Any]]:
        body = {"code_b64": b64(code), "language": language, "arguments": arguments or {}}
        resp = await self.client.post("/run", json=body)
        return resp.status, await resp.json()

    async def executions(self) -> list[dict[str, Any]]:
        listing = await self.kube.list(CODE_EXECUTIONS, self.namespace)
        return list(listing.get("items", []))

    @property
    def in_flight(self) -> int:
        return self.app[GATEWAY].gate.in_flight


@asynccontextmanager
async def start_gateway(cluster: Cluster, namespace: str, **cfg: Any) -> AsyncIterator[Gateway]:
    conn = config.from_kubeconfig(str(cluster.kubeconfig))
    assert conn is not None
    # The session's own pools, named: other installations on a shared cluster have default
    # pools too.
    cfg.setdefault("pools", {"python": "python", "nodejs": "nodejs"})
    # The gateway gives up first, so a stuck execution shows up as an answer that says so.
    cfg.setdefault("wait_timeout", 240.0)
    gw_cfg = GatewayConfig(namespace=namespace, **cfg)
    backend = make_backend(gw_cfg, conn)
    app = build_app(gw_cfg, backend)
    kube = Kube(conn)
    try:
        async with TestClient(TestServer(app), timeout=aiohttp.ClientTimeout(total=600)) as client:
            yield Gateway(client, app, kube, namespace)
    finally:
        await backend.close()
        await kube.close()


async def eventually(
    probe: Callable[[], Awaitable[bool]], *, what: str, timeout: float = 120
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await probe():
        if loop.time() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.2)


def assert_original_shape(body: dict[str, Any]) -> None:
    # The original's fields in its order, then a current RAGFlow's (artifacts, result).
    assert list(body) == [*ORIGINAL_FIELDS, "artifacts", "result"], body


# ---- 1. the original's usage example, field for field ---------------------------------------


async def test_original_usage_example_field_for_field(
    operator: OperatorProcess, cluster: Cluster, namespace: str
) -> None:
    async with start_gateway(cluster, namespace) as gw:
        status, body = await gw.run(USAGE_EXAMPLE, arguments={"x": 5})
        left = await gw.executions()
    assert status == 200
    assert_original_shape(body)
    # The original's runner did `print(main(**args))`: "10" and print's newline.
    assert {k: v for k, v in body.items() if k not in ("time_used_ms", "memory_used_kb")} == {
        "status": "success",
        "stdout": "10\n",
        "stderr": "",
        "exit_code": 0,
        "detail": None,
        "resource_limit_type": None,
        "unauthorized_access_type": None,
        "runtime_error_type": None,
        "artifacts": [],
        "result": {"present": True, "value": 10, "type": "json"},
    }
    assert isinstance(body["time_used_ms"], int | float) and body["time_used_ms"] > 0
    assert body["memory_used_kb"] is None or body["memory_used_kb"] > 0
    assert left == [], "the CodeExecution is deleted before the answer"


# ---- 2. one request per original status and sub-type ----------------------------------------


@dataclass(frozen=True)
class Case:
    id: str
    code: str
    expect: dict[str, Any]
    language: str = "python"
    arguments: dict[str, Any] = field(default_factory=dict)
    stderr_has: tuple[str, ...] = ()


PROGRAM_ERROR = {"status": "program_error", "runtime_error_type": "nonzero_exit", "stdout": ""}
CASES = [
    Case(
        "success-python-dict",
        "def main(name):\n    print('hello', name)\n    return {'greeted': name, 'n': [1, 2.5]}\n",
        {
            "status": "success",
            "stdout": "hello ada\n{'greeted': 'ada', 'n': [1, 2.5]}\n",
            "exit_code": 0,
            "stderr": "",
        },
        arguments={"name": "ada"},
    ),
    Case(
        "success-nodejs-object",
        "module.exports = ({ x }) => ({ doubled: x * 2 });\n",
        {"status": "success", "stdout": '{"doubled":10}\n', "exit_code": 0, "stderr": ""},
        language="nodejs",
        arguments={"x": 5},
    ),
    Case(
        "success-nodejs-async-string",
        "async function main() { return 'hi'; }\nmodule.exports = { main };\n",
        {"status": "success", "stdout": "hi\n", "exit_code": 0},
        language="nodejs",
    ),
    Case(
        "program-error-exception",
        "def main():\n    print('lost on failure')\n    raise ValueError('boom')\n",
        {**PROGRAM_ERROR, "exit_code": 1},
        stderr_has=("ValueError: boom",),
    ),
    Case(
        "program-error-exit-code",
        "import sys\ndef main():\n    sys.exit(3)\n",
        {**PROGRAM_ERROR, "exit_code": 3},
        stderr_has=("exited with code 3",),
    ),
    Case(
        "program-error-nodejs-throw",
        "module.exports = () => { throw new TypeError('bad'); };\n",
        {**PROGRAM_ERROR, "exit_code": 1},
        language="nodejs",
        stderr_has=("TypeError",),
    ),
    Case(
        "resource-limit-time",
        "def main():\n    print('started', flush=True)\n    while True:\n        pass\n",
        {
            "status": "resource_limit_exceeded",
            "resource_limit_type": "time",
            "exit_code": -124,
            "stdout": "",
        },
        stderr_has=("Execution timeout",),
    ),
    Case(
        "resource-limit-memory",
        "def main():\n    blocks = []\n    while True:\n        blocks.append(bytearray(16 * 1024 * 1024))\n",
        {"status": "resource_limit_exceeded", "resource_limit_type": "memory", "stdout": ""},
    ),
    Case(
        "resource-limit-output",
        "def main():\n    while True:\n        print('x' * 1000)\n",
        {
            "status": "resource_limit_exceeded",
            "resource_limit_type": "output",
            "exit_code": -153,
            "stdout": "",
        },
        stderr_has=("Output limit exceeded",),
    ),
    Case(
        "unauthorized-file-access",
        "def main():\n    open('/owned', 'w').write('x')\n",
        {
            "status": "unauthorized_access",
            "unauthorized_access_type": "file_access",
            "exit_code": 1,
            "stdout": "",
        },
    ),
    Case(
        "unauthorized-disallowed-syscall",
        "import os\ndef main():\n    os.setuid(0)\n",
        {
            "status": "unauthorized_access",
            "unauthorized_access_type": "disallowed_syscall",
            # Killed by the supervisor's seccomp filter (SIGSYS), not an EPERM it could fake.
            "exit_code": 128 + 31,
        },
    ),
    Case(
        "unauthorized-network-access",
        "import socket\ndef main():\n    socket.create_connection(('10.96.0.1', 443), timeout=3)\n",
        {
            "status": "unauthorized_access",
            "unauthorized_access_type": "network_access",
            "exit_code": 1,
        },
    ),
    Case(
        "runtime-error-signalled",
        "import ctypes\ndef main():\n    ctypes.string_at(0)\n",
        {
            "status": "runtime_error",
            "runtime_error_type": "signalled",
            "exit_code": 128 + 11,
            "stdout": "",
        },
    ),
]


@dataclass(frozen=True)
class Answers:
    by_case: dict[str, tuple[int, dict[str, Any]]]
    left_over: list[dict[str, Any]]


@pytest.fixture(scope="module")
async def answers(operator: OperatorProcess, cluster: Cluster) -> AsyncIterator[Answers]:
    """All cases at once through one gateway (they queue on the pools, which is part of it)."""
    conn = config.from_kubeconfig(str(cluster.kubeconfig))
    assert conn is not None
    kube = Kube(conn)
    ns = f"e2e-gateway-{uuid.uuid4().hex[:6]}"  # the session operator serves e2e-*
    await kube.create(NAMESPACES, {"metadata": {"name": ns}})
    try:
        async with start_gateway(cluster, ns, max_concurrency=len(CASES), timeout_seconds=8) as gw:
            results = await asyncio.gather(
                *(gw.run(c.code, c.language, c.arguments) for c in CASES)
            )
            left_over = await gw.executions()
        yield Answers({c.id: r for c, r in zip(CASES, results, strict=True)}, left_over)
    finally:
        await kube.delete(NAMESPACES, ns)
        await kube.close()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_original_status_and_subtype(case: Case, answers: Answers) -> None:
    http_status, body = answers.by_case[case.id]
    assert http_status == 200
    assert_original_shape(body)
    for key, value in case.expect.items():
        assert body[key] == value, f"{key}: {json.dumps(body)[:2000]}"
    for key in SUBTYPES:
        if key not in case.expect:
            assert body[key] is None, f"{key}: {body}"
    for text in case.stderr_has:
        assert text in body["stderr"], body
    if body["status"] != "success":
        assert body["stderr"].strip(), "every failure says why on stderr"
    assert body["detail"] is None, "detail is for runner-side outcomes only"


def test_memory_limit_uses_the_originals_exit_code(answers: Answers) -> None:
    _, body = answers.by_case["resource-limit-memory"]
    # Killed by the cgroup: the original's -137. Caught as MemoryError: the program's own 1.
    expected = 1 if "MemoryError" in body["stderr"] else -137
    assert body["exit_code"] == expected, body


def test_every_execution_was_deleted(answers: Answers) -> None:
    assert answers.left_over == []


async def test_static_check_refuses_as_the_original(
    operator: OperatorProcess, cluster: Cluster, namespace: str
) -> None:
    async with start_gateway(cluster, namespace, static_check=True) as gw:
        status, body = await gw.run("import os\ndef main():\n    return os.getcwd()\n")
        ok_status, ok = await gw.run(USAGE_EXAMPLE, arguments={"x": 5})
    assert status == 200 and body == {
        "status": "program_runner_error",
        "stdout": "",
        "stderr": "Line 1: Import: os\nLine 3: Attribute Access: os.getcwd",
        "exit_code": -999,
        "detail": "Code is unsafe",
        "time_used_ms": None,
        "memory_used_kb": None,
        "resource_limit_type": None,
        "unauthorized_access_type": None,
        "runtime_error_type": None,
        "artifacts": [],
        "result": None,
    }
    assert ok_status == 200 and ok["status"] == "success" and ok["stdout"] == "10\n"


async def test_pool_without_pods_answers_pool_busy(
    operator: OperatorProcess, cluster: Cluster, namespace: str
) -> None:
    name = f"gw-empty-{secrets.token_hex(3)}"
    cluster.apply(pool_manifest(name, "python", size=0, queueTimeoutSeconds=1))
    try:

        def seen_by_operator() -> bool:
            pool = cluster.get_json("sandboxpool", name)
            observed = pool.get("status", {}).get("observedGeneration")
            return bool(observed is not None and observed == pool["metadata"].get("generation"))

        wait_for(seen_by_operator, timeout=60, what=f"operator to observe pool {name}")
        async with start_gateway(cluster, namespace, pools={"python": name}) as gw:
            status, body = await gw.run(USAGE_EXAMPLE, arguments={"x": 5})
            left = await gw.executions()
    finally:
        cluster.kubectl("delete", "sandboxpool", name, "--wait=false", check=False)
    assert status == 200
    assert_original_shape(body)
    assert (body["status"], body["exit_code"], body["detail"]) == (
        "program_runner_error",
        -10,
        "no_available_container",
    )
    assert (body["stdout"], body["stderr"]) == ("", "Container pool is busy")
    assert left == []


# ---- 3. concurrency ----------------------------------------------------------------------------


async def test_twenty_concurrent_requests_against_a_pool_of_three_all_succeed(
    operator: OperatorProcess, cluster: Cluster, namespace: str
) -> None:
    assert cluster.get_json("sandboxpool", "python")["spec"]["size"] == 3
    code = "def main(i):\n    return i * i\n"
    async with start_gateway(cluster, namespace, max_concurrency=20) as gw:
        results = await asyncio.gather(*(gw.run(code, arguments={"i": i}) for i in range(20)))
        left = await gw.executions()
    for i, (status, body) in enumerate(results):
        assert status == 200
        assert (body["status"], body["stdout"], body["exit_code"]) == (
            "success",
            f"{i * i}\n",
            0,
        ), body
    assert left == []


async def test_requests_beyond_the_limit_get_too_many_requests_at_once(
    operator: OperatorProcess, cluster: Cluster, namespace: str
) -> None:
    slow = "import time\ndef main():\n    time.sleep(15)\n    return 'slow'\n"
    # busy_status=200: the original's answer, kept for its clients (a current RAGFlow's 429 is
    # the default, tested in test_gateway_ragflow.py).
    async with start_gateway(
        cluster, namespace, max_concurrency=2, timeout_seconds=60, busy_status=200
    ) as gw:
        running = [asyncio.create_task(gw.run(slow)) for _ in range(2)]

        async def both_admitted() -> bool:
            return gw.in_flight == 2 and len(await gw.executions()) == 2

        await eventually(both_admitted, what="two requests in flight")
        status, body = await gw.run(USAGE_EXAMPLE, arguments={"x": 5})
        # Answered while both admitted requests are still running: refused, not queued.
        assert not any(t.done() for t in running)
        assert len(await gw.executions()) == 2, "nothing was created for the refused request"
        assert status == 200  # the original answered "too many requests" with 200 as well
        assert body == {
            "status": "program_runner_error",
            "stdout": "",
            "stderr": "Too many requests, please try again later",
            "exit_code": -429,
            "detail": "Too many requests, please try again later",
            "time_used_ms": None,
            "memory_used_kb": None,
            "resource_limit_type": None,
            "unauthorized_access_type": None,
            "runtime_error_type": None,
            "artifacts": [],
            "result": None,
        }
        for task in running:
            done_status, done = await task
            assert done_status == 200 and (done["status"], done["stdout"]) == ("success", "slow\n")


async def test_client_hanging_up_deletes_the_execution(
    operator: OperatorProcess, cluster: Cluster, namespace: str
) -> None:
    slow = "import time\ndef main():\n    time.sleep(120)\n"
    async with (
        start_gateway(cluster, namespace, timeout_seconds=300) as gw,
        aiohttp.ClientSession() as session,
    ):
        request = asyncio.create_task(
            session.post(gw.client.make_url("/run"), json={"code_b64": b64(slow)})
        )

        async def created() -> bool:
            return len(await gw.executions()) == 1

        await eventually(created, what="the CodeExecution")
        request.cancel()

        async def deleted() -> bool:
            return await gw.executions() == []

        # Well before the program's own end (120 s) or its TTL: the hang-up deleted it.
        await eventually(deleted, what="the CodeExecution to be deleted", timeout=60)
        assert gw.in_flight == 0


# ---- 4. malformed requests ----------------------------------------------------------------------

MALFORMED: dict[str, bytes] = {
    "invalid-base64": json.dumps({"code_b64": "def main(): pass"}).encode(),
    "unknown-language": json.dumps({"code_b64": b64(USAGE_EXAMPLE), "language": "ruby"}).encode(),
    "arguments-not-object": json.dumps({"code_b64": b64(USAGE_EXAMPLE), "arguments": [5]}).encode(),
    "missing-code": json.dumps({"language": "python"}).encode(),
    "not-json": b"code_b64=ZGVm",
    "json-array": b"[1, 2, 3]",
}


async def test_malformed_requests_get_422_and_create_nothing(
    operator: OperatorProcess, cluster: Cluster, namespace: str
) -> None:
    async with start_gateway(cluster, namespace) as gw:
        before = await gw.kube.list(CODE_EXECUTIONS, namespace)
        for name, body in MALFORMED.items():
            resp = await gw.client.post(
                "/run", data=body, headers={"Content-Type": "application/json"}
            )
            assert resp.status == 422, name
            problems = (await resp.json())["detail"]
            assert problems and all(p["msg"] for p in problems), name
        # Not even briefly: a watch from before the requests replays every change since.
        events = [
            event
            async for event in gw.kube.watch(
                CODE_EXECUTIONS,
                namespace,
                resource_version=before["metadata"]["resourceVersion"],
                timeout_seconds=2,
            )
            if event["type"] != "BOOKMARK"
        ]
        assert events == []
        assert await gw.executions() == []


async def test_healthz_answers_ok_while_the_pools_serve(
    operator: OperatorProcess, cluster: Cluster, namespace: str
) -> None:
    async with start_gateway(cluster, namespace) as gw:
        answers: list[tuple[int, Any]] = []

        async def ok() -> bool:
            resp = await gw.client.get("/healthz")
            answers.append((resp.status, await resp.json()))
            return resp.status == 200

        # Right after a burst a pool may briefly have only warming pods (not serving).
        try:
            await eventually(ok, what="/healthz to answer ok")
        except TimeoutError:
            pytest.fail(f"/healthz never answered ok; last answers: {answers[-3:]}")
        assert answers[-1] == (200, {"status": "ok"})


async def test_healthz_answers_503_without_a_serving_pool(
    operator: OperatorProcess, cluster: Cluster, namespace: str
) -> None:
    missing = {"python": "no-such-pool", "nodejs": "no-such-pool"}
    async with start_gateway(cluster, namespace, pools=missing) as gw:
        resp = await gw.client.get("/healthz")
        body = await resp.json()
    assert resp.status == 503 and body["status"] == "unavailable" and body["detail"], body
