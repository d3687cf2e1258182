"""The gateway is secure by default, proved with real gateway processes on the real cluster
(issue 10, finding 4): no token, no service; either token header RAGFlow sends works; no API
server text reaches a client; and the chart's NetworkPolicy keeps pods outside its allowed
sources from reaching a gateway pod at all.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from e2e.fixtures import REPO_ROOT, Cluster, pinned_versions, wait_for

from .conftest import PYTHON_IMAGE, OperatorProcess

pytestmark = pytest.mark.cluster

OPERATOR_IMAGE = PYTHON_IMAGE.replace("python-sandbox", "operator")
CHART = REPO_ROOT / "charts" / "codeexec-operator"
USAGE = {
    "code_b64": base64.b64encode(b"def main(x):\n    return x * 2\n").decode(),
    "language": "python",
    "arguments": {"x": 5},
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def gateway_env(cluster: Cluster, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CODEEXEC_GATEWAY_")}
    return {**env, "KUBECONFIG": str(cluster.kubeconfig), **extra}


def post(port: int, body: Any, headers: dict[str, str]) -> tuple[int, str]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/run",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **headers},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=300) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def answers(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/livez", timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


@contextmanager
def gateway_process(
    cluster: Cluster, tmp_path: Path, *args: str, env: dict[str, str] | None = None
) -> Iterator[tuple[subprocess.Popen[bytes], int, Path]]:
    port = free_port()
    log = tmp_path / f"gateway-{port}.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "codeexec", "gateway", "--port", str(port), *args],
        env=env or gateway_env(cluster),
        cwd=REPO_ROOT,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        yield proc, port, log
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=60)


def test_gateway_refuses_to_start_without_a_token(
    operator: OperatorProcess, cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    """caught: main's gateway served /run to anyone when no token was configured."""
    with gateway_process(cluster, tmp_path, "--namespace", namespace) as (proc, port, log):
        assert proc.wait(timeout=60) == 2
        said = log.read_text()
        assert "refusing to start without a token" in said and "--insecure-local-only" in said
        assert not answers(port)


def test_local_only_gateway_listens_on_loopback_only(
    operator: OperatorProcess, cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    host_ip = cluster.get_json("nodes")["items"][0]["status"]["addresses"][0]["address"]
    args = ("--namespace", namespace, "--insecure-local-only")
    with gateway_process(cluster, tmp_path, *args) as (_, port, _log):
        wait_for(lambda: answers(port), timeout=60, what="the local-only gateway")
        assert not answers(port, host_ip)
        status, body = post(port, USAGE, {})
        assert status == 200 and json.loads(body)["stdout"].strip() == "10", body


def test_either_token_header_runs_code_and_none_is_refused(
    operator: OperatorProcess, cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    """Both headers RAGFlow sends run code; no header, or a wrong one, is refused."""
    token = secrets.token_hex(16)
    token_file = tmp_path / "token"
    token_file.write_text(token)
    args = ("--namespace", namespace, "--pool-python", "python", "--token-file", str(token_file))
    with gateway_process(cluster, tmp_path, *args) as (_, port, _):
        wait_for(lambda: answers(port), timeout=60, what="the gateway")
        assert post(port, USAGE, {})[0] == 401
        assert post(port, USAGE, {"X-Sandbox-Token": "wrong"})[0] == 401
        for headers in ({"X-Sandbox-Token": token}, {"Authorization": f"Bearer {token}"}):
            status, body = post(port, USAGE, headers)
            assert status == 200 and json.loads(body)["stdout"].strip() == "10", body


def test_error_bodies_carry_no_api_server_text(
    operator: OperatorProcess, cluster: Cluster, tmp_path: Path
) -> None:
    """The API server answers 404 (a namespace that does not exist) and 422 (a pool name over
    the schema's 253 bytes); the client sees the gateway's own words and a request id, the
    gateway's log the API server's.

    caught: main answered `the Kubernetes API failed: 404 NotFound: namespaces "…" not found`
    and `Value error, spec.pool: Too long: …`."""
    token = secrets.token_hex(16)
    missing = f"e2e-missing-{secrets.token_hex(3)}"
    cases = [
        (("--namespace", missing), ("not found", "NotFound", missing)),
        (("--namespace", "default", "--pool-python", "p" * 300), ("Too long", "spec.pool")),
    ]
    env = gateway_env(cluster, CODEEXEC_GATEWAY_TOKEN=token)
    for args, api_words in cases:
        with gateway_process(cluster, tmp_path, *args, env=env) as (proc, port, log):
            wait_for(lambda port=port: answers(port), timeout=60, what="the gateway")
            status, body = post(port, USAGE, {"X-Sandbox-Token": token})
            assert status in (200, 422), body
            for words in api_words:
                assert words not in body, (words, body)
            assert "request" in body
            proc.terminate()
            proc.wait(timeout=60)
            assert api_words[0] in log.read_text()


# ---- the chart's NetworkPolicy around a real gateway pod --------------------------------------


def chart_gateway_policy(namespace: str, allowed_ns: str) -> dict[str, Any]:
    """The chart's own gateway NetworkPolicy, rendered by helm, admitting `allowed_ns`."""
    tools = subprocess.run(
        ["bash", str(REPO_ROOT / "e2e" / "tools.sh")], capture_output=True, text=True, check=True
    )
    helm = tools.stdout.strip().splitlines()[-1]
    rendered = subprocess.run(
        [
            helm, "template", "hostile", str(CHART), "-n", namespace,
            "--kube-version", pinned_versions()["K8S_VERSION"],
            "--show-only", "templates/gateway.yaml",
            "--set", "gateway.enabled=true", "--set", "gateway.tokenSecret=gw",
            "--set", "gateway.networkPolicy.from[0].namespaceSelector.matchLabels"
            f".kubernetes\\.io/metadata\\.name={allowed_ns}",
        ],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    (policy,) = [d for d in docs if d["kind"] == "NetworkPolicy"]
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    return {"policy": policy, "labels": labels}


CONNECT = """
import sys, urllib.request
try:
    urllib.request.urlopen(f"http://{sys.argv[1]}:8090/livez", timeout=3).read()
except OSError:
    sys.exit(1)
"""


def client_pod(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 0,
            "securityContext": {"runAsNonRoot": True, "runAsUser": 4243},
            "containers": [
                {
                    "name": "main",
                    "image": PYTHON_IMAGE,
                    "imagePullPolicy": "Never",
                    "command": ["sleep", "3600"],
                }
            ],
        },
    }


@pytest.fixture
def extra_namespaces(cluster: Cluster) -> Iterator[list[str]]:
    tag = secrets.token_hex(3)
    names = [f"e2e-gw-home-{tag}", f"e2e-gw-caller-{tag}", f"e2e-gw-stranger-{tag}"]
    for name in names:
        cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    for name in names:
        wait_for(
            lambda name=name: (
                cluster.kubectl("-n", name, "get", "sa", "default", check=False).returncode == 0
            ),
            timeout=30,
            what="ServiceAccount default",
        )
    yield names
    for name in names:
        cluster.kubectl("-n", name, "delete", "pods", "--all", "--grace-period=0", "--force",
                        "--wait=false", check=False)  # fmt: skip
        cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def test_gateway_is_unreachable_from_a_pod_outside_its_allowed_sources(
    cluster: Cluster, extra_namespaces: list[str]
) -> None:
    """A real gateway process in a pod (the operator image), behind the chart's policy.

    caught: without the chart's NetworkPolicy (main) the stranger reached /livez."""
    home, caller, stranger = extra_namespaces
    rendered = chart_gateway_policy(home, caller)
    token = secrets.token_hex(16)
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "gw"},
            "stringData": {"token": token},
        },
        home,
    )
    gateway_pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "gateway", "labels": rendered["labels"]},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 0,
            "securityContext": {"runAsNonRoot": True, "runAsUser": 65532},
            "containers": [
                {
                    "name": "gateway",
                    "image": OPERATOR_IMAGE,
                    "imagePullPolicy": "Never",
                    "args": [
                        "gateway",
                        f"--namespace={home}",
                        "--port=8090",
                        "--token-file=/var/run/secrets/gw/token",
                    ],
                    "env": [{"name": "USER", "value": "codeexec"}],
                    "volumeMounts": [{"name": "gw", "mountPath": "/var/run/secrets/gw"}],
                }
            ],
            "volumes": [{"name": "gw", "secret": {"secretName": "gw"}}],
        },
    }
    cluster.apply(gateway_pod, home)
    cluster.apply(client_pod("caller"), caller)
    cluster.apply(client_pod("stranger"), stranger)
    gateway_ip = cluster.wait_pod(home, "gateway")["status"]["podIP"]
    for ns, pod in ((caller, "caller"), (stranger, "stranger")):
        cluster.wait_pod(ns, pod)

    def reaches(ns: str, pod: str) -> bool:
        proc = cluster.kubectl(
            "-n", ns, "exec", pod, "--", "python3", "-c", CONNECT, gateway_ip,
            check=False, timeout=30,
        )  # fmt: skip
        return proc.returncode == 0

    # Before the policy both reach the real gateway process.
    for ns, pod in ((caller, "caller"), (stranger, "stranger")):
        wait_for(lambda ns=ns, pod=pod: reaches(ns, pod), timeout=90, what=f"{pod} -> gateway")
    cluster.apply(rendered["policy"], home)
    # The policy controller applies it asynchronously.
    wait_for(lambda: not reaches(stranger, "stranger"), timeout=90, what="stranger cut off")
    assert reaches(caller, "caller")
    # The node itself (the kubelet's probes, the API server's service proxy) still gets in:
    # docs/gateway.md and the chart's own install test rely on it.
    assert answers(8090, gateway_ip)
