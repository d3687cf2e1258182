"""Hostile values on the data path: arguments and return values (issue 10 finding 1, issue 11
findings 4, 5 and 8), on the real cluster with the real operator process.

Deeply nested arguments are sent as raw JSON text (`kubectl create --raw`): the API server
accepts JSON nested up to 10,000 levels, which no Python client can even encode. Every
execution must end terminal (or be refused at admission), the operator must stay up and
keep serving other namespaces, also across a restart whose initial list holds those objects.
Return values must come back exactly or flagged, and their pods must be deleted.
"""

from __future__ import annotations

import json
import os
import secrets
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e.fixtures import Cluster, wait_for

from codeexec.client import Client
from codeexec.kube import config
from codeexec.kube.client import CODE_EXECUTIONS, Kube

from .conftest import SANDBOX_NS, OperatorProcess

pytestmark = pytest.mark.cluster

# A bound against hangs (a terminal status comes in seconds); lower it to try a mutation fast.
WAIT = float(os.environ.get("CODEEXEC_TEST_WAIT", "120"))
# 9,990 is about the deepest the API server takes inside an object (10,000 is its decoder's
# limit for the whole request; measured: 10,000 is refused as "unrecognized").
LEVELS = (500, 1_000, 5_000, 9_990, 10_000)


def nested_arguments(levels: int) -> str:
    return '{"deep": ' + "[" * levels + "1" + "]" * levels + "}"


def create_raw(cluster: Cluster, namespace: str, name: str, arguments: str) -> str | None:
    """Creates the CodeExecution from raw JSON text; the API server's refusal, if it refused."""
    body = (
        '{"apiVersion": "codeexec.io/v1alpha1", "kind": "CodeExecution", '
        f'"metadata": {{"name": "{name}"}}, '
        '"spec": {"language": "python", "code": "def main(**a):\\n    return 1\\n", '
        f'"arguments": {arguments}}}}}'
    )
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        f.write(body)
    try:
        path = f"/apis/codeexec.io/v1alpha1/namespaces/{namespace}/codeexecutions"
        proc = cluster.kubectl("create", "--raw", path, "-f", f.name, check=False)
    finally:
        Path(f.name).unlink()
    return None if proc.returncode == 0 else (proc.stderr or proc.stdout)


@pytest.fixture
def other_namespace(cluster: Cluster) -> Iterator[str]:
    """A second tenant's namespace (served by the suite's operator: e2e-*)."""
    name = f"e2e-bystander-{secrets.token_hex(3)}"
    cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


async def client_for(cluster: Cluster, namespace: str) -> Client:
    return Client(Kube(config.from_kubeconfig(str(cluster.kubeconfig)) or config.load()), namespace)


def pod_gone(cluster: Cluster, pod: str) -> bool:
    proc = cluster.kubectl("-n", SANDBOX_NS, "get", "pod", pod, "-o", "name", check=False)
    return proc.returncode != 0 and "NotFound" in proc.stderr


async def test_nested_arguments_end_terminal_while_other_tenants_keep_running(
    cluster: Cluster,
    operator: OperatorProcess,
    cx: Client,
    namespace: str,
    other_namespace: str,
) -> None:
    """Arguments nested 500, 1,000, 5,000, 9,990 and 10,000 deep each end Failed/InvalidRequest
    naming the limit (or are refused at admission), while an execution in another namespace
    completes, before and after an operator restart whose initial list holds them all.

    caught (each guarded line removed once, on the cluster): without kopfjson.install() in
    handlers.startup, Kopf's watcher died on the 1,000-level object ("maximum recursion depth
    exceeded while decoding a JSON array"), its orchestrator and the process with it, and
    deep-500 never got a status; without the arguments check in execution.parse, deep-500's
    arguments (cut at 128 levels by the decoder) ran and ended Succeeded, not InvalidRequest.
    """
    names = {levels: f"deep-{levels}" for levels in LEVELS}
    refused = {
        levels: create_raw(cluster, namespace, name, nested_arguments(levels))
        for levels, name in names.items()
    }
    print("admission:", {k: (v or "accepted")[:120] for k, v in refused.items()})
    bystander = await client_for(cluster, other_namespace)
    try:
        done = await bystander.run("def main():\n    return 'still here'\n", wait_timeout=WAIT)
        assert done.status.reason == "Succeeded"
        assert done.status.result and done.status.result.return_value == "still here"
        for levels, name in names.items():
            if refused[levels] is not None:
                continue  # refused at admission: nothing to run, nothing to break
            ended = await cx.wait(name, timeout=WAIT)
            assert (ended.status.phase, ended.status.reason) == ("Failed", "InvalidRequest")
            assert "more than 64 levels deep" in (ended.status.message or ""), ended.status
        assert operator.proc is not None and operator.proc.poll() is None
        # The crash loop came back on every start: the initial list held the deep objects.
        operator.restart()
        again = await bystander.run("def main():\n    return 2\n", wait_timeout=WAIT)
        assert again.status.result and again.status.result.return_value == 2
    finally:
        await bystander.kube.close()
    assert any(r is None for r in refused.values()), "the API server refused every depth"


RETURNS_DEEP = {
    "python": "def main():\n    v = []\n    for _ in range(10_000):\n        v = [v]\n    return v\n",
    "nodejs": "module.exports = () => { let v = []; for (let i = 0; i < 10000; i++) v = [v]; "
    "return v; };",
}


@pytest.mark.parametrize("language", ["python", "nodejs"])
async def test_a_return_value_nested_10000_deep_ends_terminal_and_its_pod_goes(
    cluster: Cluster, cx: Client, language: str
) -> None:
    """caught: the runner tests show each image's depth check failing when removed
    (tests/runner/test_results.py::test_a_return_value_deeper_than_the_limit_is_omitted_and_
    flagged); here, on the real cluster, the status says why and the pod is gone."""
    done = await cx.run(RETURNS_DEEP[language], language=language, wait_timeout=WAIT)
    assert (done.status.phase, done.status.reason) == ("Succeeded", "Succeeded"), done.status
    result = done.status.result
    assert result is not None and result.return_value_truncated
    assert result.return_value_omitted == "TooDeep"
    assert "more than 64 levels deep" in (done.status.message or "")
    assert done.status.sandbox and done.status.sandbox.pod
    wait_for(lambda: pod_gone(cluster, done.status.sandbox.pod), timeout=WAIT, what="pod deleted")


async def test_nulls_and_big_numbers_round_trip(cluster: Cluster, cx: Client) -> None:
    """caught (measured on this cluster, writing the same status both ways): a merge patch
    stored {"error": None, "rows": [{"a": None, "b": 1}], "n": 1} as {"n": 1, "rows":
    [{"b": 1}]}; the API server turned 2**64 into 18446744073709552000.0, -0.0 into 0, 1.0
    into 1, and refused 10**400 (400 BadRequest), which left the execution Running before the
    refused-status fallback and returnValueJSON."""
    cases: list[tuple[str, str, Any]] = [
        ("python", "return {'error': None, 'rows': [{'a': None, 'b': 1}], 'n': 1}", None),
        ("python", "return None", None),
        ("python", "return 2**64", 2**64),
        ("python", "return 10**400", 10**400),
        ("python", "return [-0.0, 1.0, 0.5, 2**63 - 1, -2**63]", None),
        ("python", "return {'s': 'h\\u00e9llo \\u2603 \\U0001f600'}", None),
        ("nodejs", "return { error: null, rows: [{ a: null }], big: 2 ** 64 };", None),
    ]
    expected: list[Any] = [
        {"error": None, "rows": [{"a": None, "b": 1}], "n": 1},
        None,
        2**64,
        10**400,
        [-0.0, 1.0, 0.5, 2**63 - 1, -(2**63)],
        {"s": "h\u00e9llo \u2603 \U0001f600"},
        {"error": None, "rows": [{"a": None}], "big": 18446744073709552000},
    ]
    pods = []
    for (language, body, _), want in zip(cases, expected, strict=True):
        code = (
            f"def main():\n    {body}\n"
            if language == "python"
            else f"module.exports = () => {{ {body} }};"
        )
        done = await cx.run(code, language=language, wait_timeout=WAIT)
        assert done.status.reason == "Succeeded", (body, done.status)
        result = done.status.result
        assert result is not None and not result.return_value_truncated, body
        got = result.return_value
        # Key order is the API server's; types are not: 1.0 stays a float, -0.0 keeps its sign.
        assert json.dumps(got, sort_keys=True) == json.dumps(want, sort_keys=True), (body, got)
        if want is None:  # stored as a JSON null, not left out
            raw = await cx.kube.get(CODE_EXECUTIONS, done.name, cx.namespace)
            assert raw["status"]["result"]["returnValue"] is None, raw["status"]["result"]
        pods.append(done.status.sandbox.pod if done.status.sandbox else None)
    for pod in filter(None, pods):
        wait_for(lambda pod=pod: pod_gone(cluster, pod), timeout=WAIT, what=f"pod {pod} deleted")


async def test_a_value_too_large_to_store_succeeds_flagged_and_its_pod_goes(
    cluster: Cluster, cx: Client
) -> None:
    """A 5 MiB string: Succeeded with the value flagged as not stored and its size.

    caught: with the workers' old ResultTooLarge error (restored in the runner test
    test_an_oversized_return_value_is_omitted_and_flagged_never_an_error, which then failed)
    this ended ResultNotSerializable, blaming the program.
    """
    done = await cx.run("def main():\n    return 'x' * (5 << 20)\n", wait_timeout=WAIT)
    assert (done.status.phase, done.status.reason) == ("Succeeded", "Succeeded"), done.status
    result = done.status.result
    assert result is not None and result.return_value_truncated
    assert (result.return_value_omitted, result.return_value_bytes) == ("TooLarge", (5 << 20) + 2)
    assert "262144-byte limit" in (done.status.message or "")
    assert done.status.sandbox and done.status.sandbox.pod
    wait_for(lambda: pod_gone(cluster, done.status.sandbox.pod), timeout=WAIT, what="pod deleted")


async def test_a_dead_watcher_stops_the_operator_and_a_fresh_one_serves(
    cluster: Cluster, operator: OperatorProcess, cx: Client, namespace: str
) -> None:
    """Kopf's watcher dies (the `watcher-fails` failpoint makes its decoder raise the
    RecursionError a deep object used to): the process must not stay up deaf. It ends on its
    own, non-zero, and a fresh process serves the execution that killed its predecessor.

    caught: on main before the cleanup's hard exit and the watchdog's hearing of Kopf's own
    failure report (a8df232), the watcher died, Kopf ran the cleanup (which stopped /healthz)
    and hung in its shutdown: the process stayed up and deaf, wait_dead timed out at 120 s.
    """
    operator.restart(failpoints="watcher-fails")
    try:
        marked = await cx.submit(
            "def main():\n    return 'served'\n", labels={"marker": failpoints_marker()}
        )
        code = operator.wait_dead(timeout=WAIT)
        log = operator.log_path.read_text(errors="replace")
        print("operator exit code", code, "watchdog line:", "watchdog:" in log)
        assert code != 0, "the operator exited 0 after its watcher died"
    finally:
        operator.restart()
    done = await cx.wait(marked.name, timeout=WAIT)
    assert done.status.result and done.status.result.return_value == "served"


def failpoints_marker() -> str:
    from codeexec.failpoints import WATCHER_FAILS_MARKER

    return WATCHER_FAILS_MARKER
