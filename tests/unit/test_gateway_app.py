"""gateway HTTP surface and backend, without a cluster: request checks, the concurrency gate,
auth, size limit, health, the access log, and the create/delete bookkeeping of KubeBackend.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from codeexec.api.models import CodeExecution
from codeexec.client import WaitTimeout
from codeexec.gateway import accesslog
from codeexec.gateway.app import GATEWAY, Gate, build_app
from codeexec.gateway.auth import TokenSource, bearer, matches
from codeexec.gateway.backend import (
    CachedHealth,
    Health,
    KubeBackend,
    Rejected,
    Vanished,
    execution_name,
    pools_serving,
)
from codeexec.gateway.config import ConfigError, GatewayConfig
from codeexec.gateway.request import Invalid, RunRequest, parse_run_request
from codeexec.kube.client import ApiError, Kube

USAGE_EXAMPLE = {
    "code_b64": base64.b64encode(b"def main(x): return x * 2").decode(),
    "language": "python",
    "arguments": {"x": 5},
}


def b64(code: str) -> str:
    return base64.b64encode(code.encode()).decode()


def succeeded(value: Any, language: str = "python") -> CodeExecution:
    return CodeExecution.from_body(
        {
            "metadata": {"name": "gw-x", "namespace": "ns", "uid": "u"},
            "spec": {"language": language, "code": "x"},
            "status": {
                "phase": "Succeeded",
                "reason": "Succeeded",
                "message": "main returned",
                "result": {
                    "status": "success",
                    "started": True,
                    "exitCode": 0,
                    "returnValue": value,
                    "stdout": "",
                    "stderr": "",
                    "wallMs": 3.0,
                    "peakMemoryBytes": 1024 * 1024,
                },
            },
        }
    )


class FakeBackend:
    def __init__(self, outcome: CodeExecution | Exception | None = None) -> None:
        self.outcome = outcome
        self.calls: list[RunRequest] = []
        self.block = False
        self.release = asyncio.Event()
        self.entered = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.arrivals: asyncio.Queue[RunRequest] = asyncio.Queue()
        self.health_value = Health(True, "serving: python")

    async def execute(self, request: RunRequest, request_id: str) -> CodeExecution:
        self.calls.append(request)
        self.entered.set()
        self.arrivals.put_nowait(request)
        try:
            if self.block:
                await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return self.outcome or succeeded(request.arguments.get("x", 0) * 2, request.language)

    async def health(self) -> Health:
        return self.health_value

    async def close(self) -> None:
        pass


@asynccontextmanager
async def gateway(backend: FakeBackend, **cfg: Any) -> AsyncIterator[TestClient[Any, Any]]:
    app = build_app(GatewayConfig(**cfg), backend)
    async with TestClient(TestServer(app)) as client:
        yield client


# ---- the request body ----------------------------------------------------------------------


def test_usage_example_parses() -> None:
    req = parse_run_request(json.dumps(USAGE_EXAMPLE).encode())
    assert req == RunRequest(
        code="def main(x): return x * 2", language="python", arguments={"x": 5}
    )


def test_language_and_arguments_default_as_in_the_original() -> None:
    req = parse_run_request(json.dumps({"code_b64": b64("x"), "arguments": None}).encode())
    assert (req.language, req.arguments) == ("python", {})


MALFORMED = {
    "invalid-base64": ({"code_b64": "not base64!"}, "code_b64", "Invalid base64 encoding"),
    "bad-padding": ({"code_b64": "YWJ"}, "code_b64", "Invalid base64 encoding"),
    "missing-code": ({"language": "python"}, "code_b64", "Field required"),
    "code-not-string": ({"code_b64": 5}, "code_b64", "valid string"),
    "empty-code": ({"code_b64": ""}, "code_b64", "no code"),
    "not-utf8": ({"code_b64": base64.b64encode(b"\xff\xfe").decode()}, "code_b64", "not UTF-8"),
    "too-large": (
        {"code_b64": base64.b64encode(b"#" * (128 * 1024 + 1)).decode()},
        "code_b64",
        "at most",
    ),
    "unknown-language": (
        {"code_b64": b64("x"), "language": "ruby"},
        "language",
        "'python' or 'nodejs'",
    ),
    "language-case": (
        {"code_b64": b64("x"), "language": "Python"},
        "language",
        "'python' or 'nodejs'",
    ),
    "arguments-list": ({"code_b64": b64("x"), "arguments": [1]}, "arguments", "valid dictionary"),
    "arguments-string": (
        {"code_b64": b64("x"), "arguments": "x=1"},
        "arguments",
        "valid dictionary",
    ),
}


@pytest.mark.parametrize("name", MALFORMED)
def test_malformed_field_is_named_in_the_problem(name: str) -> None:
    body, field, words = MALFORMED[name]
    with pytest.raises(Invalid) as info:
        parse_run_request(json.dumps(body).encode())
    problems = info.value.problems
    assert [p.loc for p in problems] == [("body", field)]
    assert words in problems[0].msg


@pytest.mark.parametrize(
    "body", [b"", b"{", b"[1, 2]", b'"x"', b'{"code_b64": "eA==", "arguments": {"x": NaN}}']
)
def test_body_that_is_not_a_json_object_is_invalid(body: bytes) -> None:
    with pytest.raises(Invalid) as info:
        parse_run_request(body)
    assert info.value.problems[0].loc == ("body",)


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(Invalid) as info:
        parse_run_request(json.dumps({"code_b64": "!", "language": "go", "arguments": 1}).encode())
    assert [p.loc[1] for p in info.value.problems] == ["code_b64", "language", "arguments"]


# ---- POST /run -------------------------------------------------------------------------------


async def test_usage_example_answers_in_the_originals_shape() -> None:
    async with gateway(FakeBackend()) as client:
        resp = await client.post("/run", json=USAGE_EXAMPLE)
        assert resp.status == 200 and resp.headers["X-Request-Id"]
        assert await resp.json() == {
            "status": "success",
            "stdout": "10\n",
            "stderr": "",
            "exit_code": 0,
            "detail": None,
            "time_used_ms": 3.0,
            "memory_used_kb": 1024.0,
            "resource_limit_type": None,
            "unauthorized_access_type": None,
            "runtime_error_type": None,
            # A current RAGFlow's fields, after the original's.
            "artifacts": [],
            "result": {"present": True, "value": 10, "type": "json"},
        }


@pytest.mark.parametrize("name", MALFORMED)
async def test_malformed_request_gets_422_and_reaches_no_backend(name: str) -> None:
    backend = FakeBackend()
    async with gateway(backend) as client:
        resp = await client.post("/run", json=MALFORMED[name][0])
        assert resp.status == 422
        body = await resp.json()
        assert body["detail"][0]["loc"] == ["body", MALFORMED[name][1]]
    assert backend.calls == []


async def test_non_json_body_gets_422() -> None:
    backend = FakeBackend()
    async with gateway(backend) as client:
        resp = await client.post(
            "/run", data=b"code_b64=eA==", headers={"Content-Type": "text/plain"}
        )
        assert resp.status == 422 and (await resp.json())["detail"][0]["type"] == "json_invalid"
    assert backend.calls == []


@pytest.mark.parametrize("busy_status", [429, 200])
async def test_beyond_the_limit_answers_too_many_requests_at_once(busy_status: int) -> None:
    """429 as a current RAGFlow expects; 200 (the original's) when configured so."""
    backend = FakeBackend()
    backend.block = True
    async with gateway(backend, max_concurrency=2, busy_status=busy_status) as client:
        running = [asyncio.create_task(client.post("/run", json=USAGE_EXAMPLE)) for _ in range(2)]
        for _ in running:
            await backend.arrivals.get()
        resp = await client.post("/run", json=USAGE_EXAMPLE)
        # Answered while both admitted requests are still held inside the backend.
        assert not any(t.done() for t in running)
        assert resp.status == busy_status
        body = await resp.json()
        assert (body["status"], body["exit_code"]) == ("program_runner_error", -429)
        assert body["detail"] == "Too many requests, please try again later"
        assert len(backend.calls) == 2
        backend.release.set()
        for task in running:
            assert (await (await task).json())["status"] == "success"
        # The slots are free again.
        assert (await (await client.post("/run", json=USAGE_EXAMPLE)).json())["status"] == "success"
        assert client.app[GATEWAY].gate.in_flight == 0


async def test_malformed_requests_take_no_slot() -> None:
    backend = FakeBackend()
    async with gateway(backend, max_concurrency=1) as client:
        for _ in range(3):
            assert (await client.post("/run", json={"code_b64": "!"})).status == 422
        assert client.app[GATEWAY].gate.in_flight == 0


async def test_client_hanging_up_cancels_the_execution() -> None:
    backend = FakeBackend()
    backend.block = True
    async with gateway(backend) as client, aiohttp.ClientSession() as session:
        request = asyncio.create_task(session.post(client.make_url("/run"), json=USAGE_EXAMPLE))
        await backend.entered.wait()
        request.cancel()
        await asyncio.wait_for(backend.cancelled.wait(), timeout=30)


async def test_static_check_refuses_as_the_original_before_anything_runs() -> None:
    backend = FakeBackend()
    async with gateway(backend, static_check=True) as client:
        resp = await client.post("/run", json={"code_b64": b64("import os\ndef main(): pass\n")})
        body = await resp.json()
        assert resp.status == 200
        assert (body["status"], body["exit_code"], body["detail"]) == (
            "program_runner_error",
            -999,
            "Code is unsafe",
        )
        assert body["stderr"] == "Line 1: Import: os"
        # Node.js code is not checked, as in the original.
        resp = await client.post(
            "/run", json={"code_b64": b64("const os = require('os');"), "language": "nodejs"}
        )
        assert (await resp.json())["status"] == "success"
    assert [c.language for c in backend.calls] == ["nodejs"]


async def test_static_check_is_off_by_default() -> None:
    backend = FakeBackend()
    async with gateway(backend) as client:
        resp = await client.post("/run", json={"code_b64": b64("import os\ndef main(): pass\n")})
        assert (await resp.json())["status"] == "success"
    assert len(backend.calls) == 1


@pytest.mark.parametrize(
    ("error", "expect"),
    [
        (Vanished("gone"), ("program_runner_error", -999, "cancelled")),
        (WaitTimeout("slow"), ("program_runner_error", -3, "internal_error")),
        (ApiError(403, {"message": "forbidden"}), ("program_runner_error", -3, "internal_error")),
        (aiohttp.ClientConnectionError("refused"), ("program_runner_error", -3, "internal_error")),
        (RuntimeError("bug"), ("program_runner_error", -999, "unhandled_exception")),
    ],
)
async def test_backend_failures_answer_in_the_originals_shape(
    error: Exception, expect: tuple[str, int, str]
) -> None:
    async with gateway(FakeBackend(error)) as client:
        resp = await client.post("/run", json=USAGE_EXAMPLE)
        body = await resp.json()
        assert resp.status == 200
        assert (body["status"], body["exit_code"], body["detail"]) == expect and body["stderr"]


async def test_api_server_refusing_the_resource_is_a_422_without_its_words() -> None:
    async with gateway(FakeBackend(Rejected("spec.arguments: too deep"))) as client:
        resp = await client.post("/run", json=USAGE_EXAMPLE)
        msg = (await resp.json())["detail"][0]["msg"]
        assert resp.status == 422 and "refused as invalid" in msg and "too deep" not in msg


# ---- auth, size, health ----------------------------------------------------------------------


async def test_bearer_token_is_required_when_configured() -> None:
    backend = FakeBackend()
    async with gateway(backend, token="s3cret") as client:
        assert (await client.post("/run", json=USAGE_EXAMPLE)).status == 401
        wrong = await client.post(
            "/run", json=USAGE_EXAMPLE, headers={"Authorization": "Bearer nope"}
        )
        assert wrong.status == 401 and wrong.headers["WWW-Authenticate"] == "Bearer"
        basic = await client.post(
            "/run", json=USAGE_EXAMPLE, headers={"Authorization": "Basic s3cret"}
        )
        assert basic.status == 401
        assert len(backend.calls) == 0
        ok = await client.post(
            "/run", json=USAGE_EXAMPLE, headers={"Authorization": "Bearer s3cret"}
        )
        assert ok.status == 200
        # Probes carry no token.
        assert (await client.get("/healthz")).status == 200
    assert len(backend.calls) == 1


async def test_token_file_is_reread_when_the_secret_rotates(tmp_path: Any) -> None:
    path = tmp_path / "token"
    path.write_text("first\n")
    now = [0.0]
    tokens = TokenSource(path=path, recheck_seconds=10, clock=lambda: now[0])
    tokens.load()
    assert await tokens.current() == "first"
    path.write_text("second")
    assert await tokens.current() == "first"  # not re-read yet
    now[0] = 11
    assert await tokens.current() == "second"
    path.write_text("")  # half-written update: keep the last good token
    now[0] = 22
    assert await tokens.current() == "second"


def test_bearer_header_parsing() -> None:
    assert bearer("Bearer abc") == "abc" and bearer("bearer  abc ") == "abc"
    assert bearer("Basic abc") is None and bearer(None) is None and bearer("Bearer") is None
    assert matches("abc", "abc") and not matches("abd", "abc") and not matches(None, "abc")


async def test_request_over_the_size_limit_gets_413_and_reaches_no_backend() -> None:
    backend = FakeBackend()
    async with gateway(backend, max_request_bytes=2048) as client:
        big = {**USAGE_EXAMPLE, "arguments": {"x": "y" * 4096}}
        resp = await client.post("/run", json=big)
        assert resp.status == 413 and "2048" in (await resp.json())["detail"]

        async def chunks() -> AsyncIterator[bytes]:
            yield json.dumps(big).encode()

        chunked = await client.post(
            "/run", data=chunks(), headers={"Content-Type": "application/json"}
        )
        assert chunked.status == 413
    assert backend.calls == []


async def test_healthz_follows_the_pools() -> None:
    backend = FakeBackend()
    async with gateway(backend) as client:
        resp = await client.get("/healthz")
        assert resp.status == 200 and await resp.json() == {"status": "ok"}
        backend.health_value = Health(False, "no ready pods in python")
        resp = await client.get("/healthz")
        assert resp.status == 503 and (await resp.json())["detail"] == "no ready pods in python"
        assert (await client.get("/livez")).status == 200


def pool(
    name: str, language: str, *, default: bool = False, ready: int = 0, claimed: int = 0
) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {"language": language, "default": default},
        "status": {"ready": ready, "claimed": claimed},
    }


def test_pools_serving_looks_at_the_gateways_pools_only() -> None:
    pools = [pool("python", "python", default=True), pool("other", "python", ready=3)]
    assert not pools_serving(pools, {}).ok
    assert pools_serving(pools, {"python": "other"}).ok


def test_pool_under_full_load_is_serving() -> None:
    assert pools_serving([pool("python", "python", default=True, claimed=3)], {}).ok


def test_no_pools_is_not_serving() -> None:
    health = pools_serving([], {})
    assert not health.ok and "no SandboxPool" in health.detail


async def test_health_is_probed_once_per_cache_period() -> None:
    calls = 0
    now = [0.0]
    gate = asyncio.Event()

    async def probe() -> Health:
        nonlocal calls
        calls += 1
        await gate.wait()
        return Health(True, "ok")

    cache = CachedHealth(probe, ttl=2.0, clock=lambda: now[0])
    waiting = [asyncio.create_task(cache.get()) for _ in range(5)]
    await asyncio.sleep(0)
    gate.set()
    assert all(h.ok for h in await asyncio.gather(*waiting))
    assert calls == 1
    now[0] = 1.0
    await cache.get()
    assert calls == 1
    now[0] = 3.0
    await cache.get()
    assert calls == 2


async def test_failed_probe_is_unhealthy() -> None:
    async def probe() -> Health:
        raise ApiError(403, {"message": "forbidden"})

    health = await CachedHealth(probe, ttl=2.0).get()
    # The API server's words go to the log only: /healthz needs no token.
    assert not health.ok and "forbidden" not in health.detail


# ---- the access log --------------------------------------------------------------------------


async def test_access_log_has_no_code_arguments_or_output(caplog: pytest.LogCaptureFixture) -> None:
    secret_code = "def main(password): return 'MARKER-' + password  # CODE-MARKER"
    body = {"code_b64": b64(secret_code), "arguments": {"password": "hunter2"}}
    caplog.set_level(logging.INFO, logger=accesslog.ACCESS_LOGGER)
    async with gateway(FakeBackend(succeeded("MARKER-hunter2"))) as client:
        resp = await client.post("/run", json=body)
        assert "hunter2" in (await resp.json())["stdout"]
    records = [r for r in caplog.records if r.name == accesslog.ACCESS_LOGGER]
    assert len(records) == 1
    line = accesslog.JsonFormatter().format(records[0])
    for leaked in ("hunter2", "CODE-MARKER", "password", b64(secret_code)):
        assert leaked not in line
    doc = json.loads(line)
    assert doc["event"] == "access" and doc["path"] == "/run" and doc["http_status"] == 200
    assert doc["language"] == "python" and doc["code_bytes"] == len(secret_code)
    assert doc["argument_count"] == 1 and doc["result_status"] == "success"
    assert doc["execution"].endswith(execution_name(doc["request_id"]))


def test_access_record_drops_unknown_fields() -> None:
    record = accesslog.access_record(
        request_id="r",
        method="POST",
        path="/run",
        http_status=200,
        duration_ms=1.0,
        remote=None,
        bytes_in=10,
        user_agent=None,
        fields={"language": "python", "code": "print(1)", "arguments": {"a": 1}},
    )
    assert "code" not in record and "arguments" not in record and record["language"] == "python"


# ---- configuration ---------------------------------------------------------------------------


def test_gate_admits_up_to_its_limit() -> None:
    gate = Gate(2)
    assert gate.try_acquire() and gate.try_acquire() and not gate.try_acquire()
    gate.release()
    assert gate.try_acquire()


@pytest.mark.parametrize(
    "bad",
    [
        {"max_concurrency": 0},
        {"max_request_bytes": 10},
        {"wait_timeout": 0},
        {"timeout_seconds": 0},
        {"token": " "},
    ],
)
def test_unusable_configuration_is_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        GatewayConfig(**bad)


def test_cli_flags_and_environment() -> None:
    import argparse

    from codeexec.gateway import app, config

    parser = argparse.ArgumentParser()
    app.add_arguments(parser)
    args = parser.parse_args(["--pool-python", "fast", "--max-concurrency", "4", "--static-check"])
    cfg = config.from_args(
        args, {"CODEEXEC_GATEWAY_NAMESPACE": "tenant", "CODEEXEC_GATEWAY_TOKEN": "t"}
    )
    assert (cfg.namespace, cfg.token, cfg.max_concurrency, cfg.static_check) == (
        "tenant",
        "t",
        4,
        True,
    )
    assert dict(cfg.pools) == {"python": "fast"} and cfg.port == 8090
    assert config.from_args(parser.parse_args([]), {}).namespace == "default"


# ---- KubeBackend: the resource is deleted in every case --------------------------------------


class FakeKube:
    """Just enough of Kube for KubeBackend and Client.wait: create, get, delete."""

    def __init__(self) -> None:
        self.allow_create = asyncio.Event()
        self.allow_create.set()
        self.create_error: ApiError | None = None
        self.created: list[dict[str, Any]] = []
        self.deleted: list[str] = []
        self.listed: list[dict[str, Any]] = []
        self.get_errors: list[Exception] = []
        self.finished_status: dict[str, Any] = {
            "phase": "Succeeded",
            "reason": "Succeeded",
            "result": {"status": "success", "returnValue": 10, "exitCode": 0},
        }

    async def create(
        self, res: Any, body: dict[str, Any], namespace: str | None = None
    ) -> dict[str, Any]:
        await self.allow_create.wait()
        if self.create_error is not None:
            raise self.create_error
        self.created.append(body)
        return {
            **body,
            "metadata": {
                **body["metadata"],
                "namespace": namespace,
                "uid": "u",
                "resourceVersion": "1",
            },
        }

    async def get(self, res: Any, name: str, namespace: str | None = None) -> dict[str, Any]:
        if self.get_errors:
            raise self.get_errors.pop(0)
        body = next(b for b in self.created if b["metadata"]["name"] == name)
        return {
            **body,
            "metadata": {
                **body["metadata"],
                "namespace": namespace,
                "uid": "u",
                "resourceVersion": "2",
            },
            "status": self.finished_status,
        }

    async def delete(self, res: Any, name: str, namespace: str | None = None, **_: Any) -> None:
        self.deleted.append(name)

    async def list(self, res: Any, namespace: str | None = None, **kw: Any) -> dict[str, Any]:
        self.listed.append(kw)
        return {"items": [pool("python", "python", default=True, ready=1)]}

    async def close(self) -> None:
        pass


def kube_backend(**cfg: Any) -> tuple[KubeBackend, FakeKube]:
    fake = FakeKube()
    return KubeBackend(cast(Kube, fake), GatewayConfig(namespace="tenant", **cfg)), fake


REQUEST = RunRequest(code="def main(x): return x * 2", language="python", arguments={"x": 5})


async def test_finished_execution_is_deleted_before_the_answer() -> None:
    backend, kube = kube_backend(pools={"python": "fast"}, timeout_seconds=7)
    done = (await backend.execute(REQUEST, "abc")).execution
    assert done.status.result is not None and done.status.result.return_value == 10
    assert kube.deleted == ["gw-abc"]
    manifest = kube.created[0]
    assert manifest["metadata"]["name"] == "gw-abc"
    assert manifest["metadata"]["labels"] == {"app.kubernetes.io/managed-by": "codeexec-gateway"}
    spec = manifest["spec"]
    assert spec["code"] == REQUEST.code and spec["arguments"] == {"x": 5}
    assert (spec["pool"], spec["timeoutSeconds"], spec["ttlSecondsAfterFinished"]) == (
        "fast",
        7,
        300,
    )


async def test_request_cancelled_during_create_still_deletes_what_was_created() -> None:
    backend, kube = kube_backend()
    kube.allow_create.clear()
    task = asyncio.create_task(backend.execute(REQUEST, "abc"))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert kube.deleted == []  # the create has not landed yet
    kube.allow_create.set()
    await backend.close()  # waits for the background clean-up
    assert [b["metadata"]["name"] for b in kube.created] == ["gw-abc"]
    assert kube.deleted == ["gw-abc"]


async def test_refused_create_raises_rejected_and_deletes_nothing() -> None:
    backend, kube = kube_backend()
    kube.create_error = ApiError(
        422, {"message": "spec.arguments: Invalid value", "reason": "Invalid"}
    )
    with pytest.raises(Rejected, match="Invalid value"):
        await backend.execute(REQUEST, "abc")
    assert kube.deleted == []


async def test_health_lists_the_installations_pools() -> None:
    backend, kube = kube_backend(pool_selector="codeexec.io/instance=a")
    assert (await backend.health()).ok
    assert (await backend.health()).ok
    assert kube.listed == [{"label_selector": "codeexec.io/instance=a"}]  # cached the second time


async def test_waiting_resumes_after_the_api_server_broke_off() -> None:
    backend, kube = kube_backend()
    kube.get_errors = [
        aiohttp.ClientPayloadError("Response payload is not completed"),
        ApiError(503, {"message": "apiserver is shutting down"}),
    ]
    done = (await backend.execute(REQUEST, "abc")).execution
    assert done.status.result is not None and done.status.result.return_value == 10
    assert kube.get_errors == [] and kube.deleted == ["gw-abc"]


async def test_execution_deleted_by_someone_else_is_vanished() -> None:
    backend, kube = kube_backend()
    kube.get_errors = [ApiError(404, {"message": "not found", "reason": "NotFound"})]
    with pytest.raises(Vanished):
        await backend.execute(REQUEST, "abc")
