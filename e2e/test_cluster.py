"""Acceptance tests of the local Kubernetes test bed (issue 2, points 1-7).

Each test runs against the real cluster (``make cluster-up``): real API server, kubelet
and containerd. The cluster-down part of point 1 is in test_cluster_down.py, which runs
after every other test of the session.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import textwrap
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from e2e.fixtures import CLUSTER_SCRIPTS, Cluster, KubectlError, pinned_versions, wait_for

pytestmark = pytest.mark.cluster

PYTHON_IMAGE = "codeexec.local/python-sandbox:dev"
NODE_NAME = "codeexec-node"
KIND = os.environ.get("KIND") == "1"


# ---- helpers -----------------------------------------------------------------------------


def python_pod(name: str, script: str, **spec: Any) -> dict[str, Any]:
    """A single-container pod running ``python3 -c script`` in the project's sandbox image."""
    container: dict[str, Any] = {
        "name": "main",
        "image": PYTHON_IMAGE,
        # Imported, never pulled: fail fast if the image is missing.
        "imagePullPolicy": "Never",
        "command": ["python3", "-u", "-c", textwrap.dedent(script)],
    }
    container.update(spec.pop("container", {}))
    labels = spec.pop("labels", {"app": name})
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 0,
            "containers": [container],
            **spec,
        },
    }


def terminated_state(pod: dict[str, Any]) -> dict[str, Any]:
    statuses = pod["status"].get("containerStatuses", [])
    assert statuses, f"no container status: {pod['status']}"
    state: dict[str, Any] = statuses[0]["state"].get("terminated", {})
    return state


def pid_files(cluster: Cluster) -> dict[str, str]:
    run = cluster.dir / "run"
    return {p.stem: p.read_text().strip() for p in sorted(run.glob("*.pid"))}


@pytest.fixture(scope="session")
def python_image(cluster: Cluster) -> str:
    """The project's Python sandbox image, as images.sh imported it."""
    if not cluster.image_present(PYTHON_IMAGE):
        pytest.fail(
            f"{PYTHON_IMAGE} is not on the node: images.sh builds it from "
            "images/python/Dockerfile (run `make images`)"
        )
    return PYTHON_IMAGE


# ---- 1. a Ready node; a second cluster-up is a no-op -------------------------------------


def test_node_is_ready_at_the_pinned_version(cluster: Cluster) -> None:
    nodes = cluster.get_json("nodes")["items"]
    assert len(nodes) == 1
    node = nodes[0]
    ready = {c["type"]: c["status"] for c in node["status"]["conditions"]}["Ready"]
    assert ready == "True"
    if not KIND:
        assert node["metadata"]["name"] == NODE_NAME
        assert node["status"]["nodeInfo"]["kubeletVersion"] == pinned_versions()["K8S_VERSION"]
        assert node["spec"]["podCIDR"]


def test_second_cluster_up_is_a_noop(cluster: Cluster) -> None:
    before = pid_files(cluster)
    proc = subprocess.run(
        ["bash", str(CLUSTER_SCRIPTS / "up.sh")],
        env={**os.environ, "CLUSTER": str(cluster.dir)},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    output = proc.stdout + proc.stderr
    assert "already up" in output, output
    assert "starting" not in output, output
    assert pid_files(cluster) == before


# ---- 2. the Python sandbox image prints a line and exits 0 -------------------------------


def test_python_pod_prints_and_succeeds(
    cluster: Cluster, namespace: str, python_image: str
) -> None:
    cluster.apply(python_pod("hello", "print('hello from the sandbox image')"), namespace)
    pod = cluster.wait_pod(namespace, "hello", ("Succeeded", "Failed"))
    assert pod["status"]["phase"] == "Succeeded", pod["status"]
    assert terminated_state(pod)["exitCode"] == 0
    logs = cluster.kubectl("-n", namespace, "logs", "hello").stdout
    assert logs == "hello from the sandbox image\n"


# ---- 3. past the memory limit: OOMKilled, 137 --------------------------------------------


def test_memory_hog_is_oom_killed(cluster: Cluster, namespace: str, python_image: str) -> None:
    hog = python_pod(
        "hog",
        """
        chunks = []
        while True:
            chunks.append(b"x" * (16 << 20))  # written, so really resident
        """,
        container={"resources": {"limits": {"memory": "64Mi", "cpu": "500m"}}},
    )
    cluster.apply(hog, namespace)
    pod = cluster.wait_pod(namespace, "hog", ("Failed", "Succeeded"))
    state = terminated_state(pod)
    assert state["reason"] == "OOMKilled", state
    assert state["exitCode"] == 137


# ---- 3b. RuntimeClass gvisor: pods run under gVisor; runc stays the default ---------------


@pytest.mark.skipif(KIND, reason="kind nodes have no gVisor runtime (README: gVisor on kind)")
@pytest.mark.parametrize("runtime_class", ["gvisor", None], ids=["gvisor", "default"])
def test_runtime_class_gvisor_runs_pods_under_gvisor(
    cluster: Cluster, namespace: str, python_image: str, runtime_class: str | None
) -> None:
    """gVisor's kernel names itself in /proc/version (`4.19.0-gvisor`); a pod without a
    RuntimeClass sees the host's kernel (runc, the default handler).
    caught: the pod without runtimeClassName failed the gvisor expectations."""
    assert cluster.get_json("runtimeclass", "gvisor")["handler"] == "gvisor"
    spec = {"runtimeClassName": runtime_class} if runtime_class else {}
    probe = "print(open('/proc/version').read().strip())"
    cluster.apply(python_pod("kernel", probe, **spec), namespace)
    pod = cluster.wait_pod(namespace, "kernel", ("Succeeded", "Failed"))
    assert pod["status"]["phase"] == "Succeeded", pod["status"]
    seen = cluster.kubectl("-n", namespace, "logs", "kernel").stdout.strip()
    host = Path("/proc/version").read_text().strip()
    if runtime_class:
        assert "gvisor" in seen and seen != host, seen
    else:
        assert seen == host, seen


@pytest.mark.skipif(KIND, reason="kind nodes have no gVisor runtime (README: gVisor on kind)")
def test_memory_hog_under_gvisor_ends_the_sandbox(
    cluster: Cluster, namespace: str, python_image: str
) -> None:
    """Past the limit the host OOM killer ends gVisor's whole sandbox. gVisor's shim reports the
    container with exit code 128 (its status for a sandbox that is gone) and, from the pod
    cgroup's OOM counter, OOMKilled: the evidence outcomes.py reads for gVisor pods."""
    hog = python_pod(
        "hog",
        """
        chunks = []
        while True:
            chunks.append(b"x" * (16 << 20))
        """,
        container={"resources": {"limits": {"memory": "64Mi", "cpu": "500m"}}},
        runtimeClassName="gvisor",
    )
    cluster.apply(hog, namespace)
    pod = cluster.wait_pod(namespace, "hog", ("Failed", "Succeeded"))
    state = terminated_state(pod)
    assert state["reason"] == "OOMKilled", state
    assert state["exitCode"] in (128, 137), state


# ---- 4. lowering activeDeadlineSeconds: DeadlineExceeded ---------------------------------


def test_lowered_active_deadline_fails_the_pod(
    cluster: Cluster, namespace: str, python_image: str
) -> None:
    # Warm pods start with a large ceiling; claiming one lowers it.
    sleeper = python_pod("sleeper", "import time; time.sleep(3600)", activeDeadlineSeconds=3600)
    cluster.apply(sleeper, namespace)
    cluster.wait_pod(namespace, "sleeper", ("Running",))
    cluster.kubectl(
        "-n",
        namespace,
        "patch",
        "pod",
        "sleeper",
        "--type=merge",
        "-p",
        json.dumps({"spec": {"activeDeadlineSeconds": 1}}),
    )
    pod = cluster.wait_pod(namespace, "sleeper", ("Failed",), timeout=60)
    assert pod["status"]["reason"] == "DeadlineExceeded", pod["status"]
    # Raising it again is refused: the deadline can only go down.
    with pytest.raises(KubectlError):
        cluster.kubectl(
            "-n",
            namespace,
            "patch",
            "pod",
            "sleeper",
            "--type=merge",
            "-p",
            json.dumps({"spec": {"activeDeadlineSeconds": 7200}}),
        )


# ---- 5. attach over the v5.channel.k8s.io websocket --------------------------------------

STDIN, STDOUT, STDERR, ERROR, CLOSE = 0, 1, 2, 3, 255

ECHO_SCRIPT = """
import json, sys
request = json.loads(sys.stdin.readline())
print("got a request", file=sys.stderr, flush=True)
print(json.dumps({"answer": request["x"] * 2}), flush=True)
rest = sys.stdin.read()  # returns only at end-of-file on stdin
print("EOF after " + repr(rest), flush=True)
"""


async def _read_until(
    ws: aiohttp.ClientWebSocketResponse,
    streams: dict[int, bytes],
    done: Any,
    timeout: float,
) -> bool:
    """Collects channel frames into ``streams`` until ``done(streams)`` or timeout/close."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not done(streams):
        remaining = deadline - loop.time()
        if remaining <= 0:
            return False
        try:
            msg = await ws.receive(timeout=remaining)
        except TimeoutError:
            return False
        if msg.type != aiohttp.WSMsgType.BINARY:
            return bool(done(streams))
        channel, payload = msg.data[0], msg.data[1:]
        streams[channel] = streams.get(channel, b"") + payload
    return True


@pytest.mark.parametrize("stdin_once", [True, False], ids=["stdinOnce", "stdin-kept-open"])
async def test_attach_v5_stdin_stdout_stderr(
    cluster: Cluster, namespace: str, python_image: str, stdin_once: bool
) -> None:
    pod = python_pod("echo", ECHO_SCRIPT, container={"stdin": True, "stdinOnce": stdin_once})
    cluster.apply(pod, namespace)
    cluster.wait_pod(namespace, "echo", ("Running",))

    url = (
        f"{cluster.server}/api/v1/namespaces/{namespace}/pods/echo/attach"
        "?container=main&stdin=true&stdout=true&stderr=true"
    )
    streams: dict[int, bytes] = {}
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(
            url, protocols=("v5.channel.k8s.io",), ssl=cluster.ssl_context(), max_msg_size=0
        ) as ws,
    ):
        assert ws.protocol == "v5.channel.k8s.io"
        await ws.send_bytes(bytes([STDIN]) + b'{"x": 21}\n')
        answered = await _read_until(
            ws,
            streams,
            lambda s: b"\n" in s.get(STDOUT, b"") and b"\n" in s.get(STDERR, b""),
            timeout=30,
        )
        assert answered, f"no answer on stdout/stderr: {streams}"
        assert json.loads(streams[STDOUT].split(b"\n")[0]) == {"answer": 42}
        assert streams[STDERR] == b"got a request\n"

        # v5 only: close stdin (channel 255, payload = the channel to close) while the
        # websocket stays open.
        await ws.send_bytes(bytes([CLOSE, STDIN]))
        eof_seen = await _read_until(
            ws, streams, lambda s: b"EOF after" in s.get(STDOUT, b""), timeout=10
        )

    # What docs/testbed.md records (the runner depends on neither): the close frame
    # reaches the container as end-of-file only with stdinOnce; without it the attach
    # session ends (status Success on channel 3) and the container keeps its stdin open.
    print(
        f"stdinOnce={stdin_once}: stdin EOF via the v5 close frame reached the container: "
        f"{eof_seen}"
    )
    if stdin_once:
        assert eof_seen, f"stdin EOF did not reach the container: {streams}"
        done = cluster.wait_pod(namespace, "echo", ("Succeeded", "Failed"), timeout=30)
        assert terminated_state(done)["exitCode"] == 0
    else:
        assert not eof_seen, streams
        assert json.loads(streams.get(ERROR, b"{}")).get("status") == "Success", streams
        assert cluster.pod(namespace, "echo")["status"]["phase"] == "Running"


# ---- 6. a CRD: schema validation, status subresource, 409 on a stale resourceVersion -----


def widget_crd(group: str) -> dict[str, Any]:
    spec_schema = {
        "type": "object",
        "required": ["size"],
        "properties": {"size": {"type": "integer", "minimum": 1, "maximum": 10}},
        "x-kubernetes-validations": [
            {"rule": "self.size % 2 == 0", "message": "size must be even"}
        ],
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"widgets.{group}"},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": spec_schema,
                                "status": {
                                    "type": "object",
                                    "properties": {"phase": {"type": "string"}},
                                },
                            },
                        }
                    },
                }
            ],
        },
    }


@pytest.fixture
def widget_group(cluster: Cluster) -> Any:
    """A CRD in a group of this test's own (CRDs are cluster-wide); deleted afterwards."""
    group = f"t{secrets.token_hex(4)}.e2e.codeexec.local"
    cluster.apply(widget_crd(group))
    cluster.kubectl("wait", "--for=condition=Established", f"crd/widgets.{group}", "--timeout=60s")
    yield group
    cluster.kubectl("delete", "crd", f"widgets.{group}", "--wait=false", check=False)


def widget(group: str, name: str, size: int) -> dict[str, Any]:
    return {
        "apiVersion": f"{group}/v1",
        "kind": "Widget",
        "metadata": {"name": name},
        "spec": {"size": size},
    }


async def test_crd_validation_status_and_conflict(
    cluster: Cluster, namespace: str, widget_group: str
) -> None:
    group = widget_group
    # Invalid objects are rejected with the schema's own messages.
    with pytest.raises(KubectlError) as too_big:
        cluster.apply(widget(group, "big", 12), namespace)
    assert "should be less than or equal to 10" in too_big.value.stderr
    with pytest.raises(KubectlError) as odd:
        cluster.apply(widget(group, "odd", 3), namespace)
    assert "size must be even" in odd.value.stderr

    cluster.apply(widget(group, "w", 2), namespace)
    base = f"{cluster.server}/apis/{group}/v1/namespaces/{namespace}/widgets/w"
    merge = {"Content-Type": "application/merge-patch+json"}
    async with aiohttp.ClientSession() as session:
        ssl_ctx = cluster.ssl_context()

        async def patch(url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
            async with session.patch(url, json=body, headers=merge, ssl=ssl_ctx) as resp:
                return resp.status, await resp.json()

        async with session.get(base, ssl=ssl_ctx) as resp:
            assert resp.status == 200
            stale_rv = (await resp.json())["metadata"]["resourceVersion"]

        # Status goes through the status subresource only.
        status, obj = await patch(base + "/status", {"status": {"phase": "Ready"}})
        assert status == 200 and obj["status"] == {"phase": "Ready"}
        status, obj = await patch(base, {"spec": {"size": 4}, "status": {"phase": "Ignored"}})
        assert status == 200
        assert obj["spec"]["size"] == 4 and obj["status"] == {"phase": "Ready"}

        # A merge patch carrying the resourceVersion we read before those changes: 409.
        status, obj = await patch(
            base, {"metadata": {"resourceVersion": stale_rv}, "spec": {"size": 6}}
        )
        assert status == 409, obj
        assert obj["reason"] == "Conflict"
        # With the current resourceVersion the same patch goes through.
        current_rv = cluster.get_json("-n", namespace, f"widgets.{group}", "w")["metadata"][
            "resourceVersion"
        ]
        status, obj = await patch(
            base, {"metadata": {"resourceVersion": current_rv}, "spec": {"size": 6}}
        )
        assert status == 200 and obj["spec"]["size"] == 6


# ---- 7. NetworkPolicy is enforced; the `kubernetes` Service works from pods --------------

SERVER_SCRIPT = """
import http.server as h
h.ThreadingHTTPServer(("", 8080), h.SimpleHTTPRequestHandler).serve_forever()
"""
SLEEP_SCRIPT = "import time; time.sleep(3600)"
CONNECT_SCRIPT = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3).close()
except OSError as e:
    print(e)
    sys.exit(1)
print("connected")
"""


def can_connect(cluster: Cluster, namespace: str, pod: str, host: str, port: int) -> bool:
    proc = cluster.kubectl(
        "-n",
        namespace,
        "exec",
        pod,
        "--",
        "python3",
        "-c",
        CONNECT_SCRIPT,
        host,
        str(port),
        check=False,
        timeout=30,
    )
    return proc.returncode == 0


def kubernetes_service(cluster: Cluster) -> tuple[str, int]:
    svc = cluster.get_json("-n", "default", "service", "kubernetes")
    return svc["spec"]["clusterIP"], svc["spec"]["ports"][0]["port"]


def test_deny_all_network_policy_cuts_a_pod_off(
    cluster: Cluster, namespace: str, python_image: str
) -> None:
    cluster.apply(python_pod("server", SERVER_SCRIPT), namespace)
    for name in ("free", "isolated"):
        cluster.apply(python_pod(name, SLEEP_SCRIPT, labels={"role": name}), namespace)
    server_ip = cluster.wait_pod(namespace, "server")["status"]["podIP"]
    for name in ("free", "isolated"):
        cluster.wait_pod(namespace, name)
    api_ip, api_port = kubernetes_service(cluster)
    targets = [(server_ip, 8080), (api_ip, api_port)]

    def reaches(pod: str, host: str, port: int) -> bool:
        return can_connect(cluster, namespace, pod, host, port)

    # Before the policy both pods reach both targets (the server may still be starting).
    for pod in ("free", "isolated"):
        for host, port in targets:
            wait_for(
                partial(reaches, pod, host, port),
                timeout=90,
                what=f"{pod} -> {host}:{port} before the policy",
            )

    deny_all = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "deny-all"},
        "spec": {
            "podSelector": {"matchLabels": {"role": "isolated"}},
            "policyTypes": ["Ingress", "Egress"],
        },
    }
    cluster.apply(deny_all, namespace)
    # The policy controller applies it asynchronously.
    for host, port in targets:
        wait_for(
            partial(lambda h, p: not reaches("isolated", h, p), host, port),
            timeout=90,
            what=f"isolated -> {host}:{port} to be cut off",
        )
    for host, port in targets:
        assert reaches("free", host, port), f"free -> {host}:{port}"


API_FROM_POD_SCRIPT = """
import json, os, ssl, urllib.request
sa = "/var/run/secrets/kubernetes.io/serviceaccount"
host, port = os.environ["KUBERNETES_SERVICE_HOST"], os.environ["KUBERNETES_SERVICE_PORT"]
ctx = ssl.create_default_context(cafile=sa + "/ca.crt")
token = open(sa + "/token").read()
req = urllib.request.Request(f"https://{host}:{port}/version",
                             headers={"Authorization": "Bearer " + token})
print(json.dumps({"host": host, "version": json.load(urllib.request.urlopen(req, context=ctx))}))
"""


def test_pod_reaches_api_server_through_kubernetes_service(
    cluster: Cluster, namespace: str, python_image: str
) -> None:
    cluster.apply(python_pod("apiclient", API_FROM_POD_SCRIPT), namespace)
    pod = cluster.wait_pod(namespace, "apiclient", ("Succeeded", "Failed"))
    logs = cluster.kubectl("-n", namespace, "logs", "apiclient").stdout
    assert pod["status"]["phase"] == "Succeeded", logs
    result = json.loads(logs.strip().splitlines()[-1])
    api_ip, _ = kubernetes_service(cluster)
    assert result["host"] == api_ip
    server_version = json.loads(cluster.kubectl("get", "--raw", "/version").stdout)
    assert result["version"]["gitVersion"] == server_version["gitVersion"]


def test_our_kubectl_is_the_pinned_one(cluster: Cluster) -> None:
    """The tests use our kubectl, not /usr/bin/kubectl (a foreign build on our machines)."""
    if KIND:
        pytest.skip("kind: kubectl comes from PATH")
    version = pinned_versions()["K8S_VERSION"]
    assert Path(cluster.kubectl_path).parent.name == f"kubernetes-{version}"
    client = json.loads(cluster.kubectl("version", "-o", "json").stdout)["clientVersion"]
    assert client["gitVersion"] == version
