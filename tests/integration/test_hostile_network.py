"""Hostile tenants and network-enabled pools on the real cluster (issue 10, finding 3).

A tenant may use only the pools that name its namespace, and code in a pool with
`allowNetwork: true` reaches the internet but never the cluster: not the API server (by its
Service IP or its real endpoint), not the node's kubelet, not cloud metadata, not other pods.

The "internet" is stood up on this machine: a network namespace made by the test, joined to the
host by a veth pair, holding 198.51.100.10 (a documentation range, RFC 5737, not RFC 1918) and
169.254.169.254 (where clouds serve metadata), each with a real HTTP server. Only pod traffic is
routed there (a policy-routing rule for 10.244.0.0/16), and only to those two addresses; nothing
leaves the machine. Every "unreachable" target is first shown reachable from an ordinary pod,
so a refusal is the sandbox's policy and not a dead target.

caught: on main before this change (one `egress: [{}]` policy for every network pod, pools
open to every namespace) the API server, kubelet, metadata and pod probes all connected, the
namespace without a label ran its code, and the allow-list pool reached port 8081.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from e2e.fixtures import Cluster, wait_for

from codeexec.client import Client
from codeexec.kube import config
from codeexec.kube.client import Kube

from .conftest import PYTHON_IMAGE, SANDBOX_NS, OperatorProcess, pool_manifest, wait_pool_full

pytestmark = pytest.mark.cluster

OUTSIDE_IP = "198.51.100.10"  # RFC 5737 TEST-NET-2: outside every range the policy blocks
HOST_SIDE_IP = "198.51.100.1"
METADATA_IP = "169.254.169.254"
POD_CIDR = "10.244.0.0/16"  # e2e/cluster/versions.env
ROUTE_TABLE = "7319"
OPEN_POOL, LIST_POOL = "hostile-net-open", "hostile-net-allowlist"
NET_LABEL = "codeexec.local/network-pools"


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, check=check, timeout=30)


@dataclass(frozen=True)
class Outside:
    marker: str  # what the HTTP servers answer with


@pytest.fixture(scope="module")
def outside(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Outside]:
    """An address outside the cluster's ranges, and a fake metadata server, on this machine."""
    if shutil.which("ip") is None or shutil.which("iptables") is None:
        pytest.fail("the network tests need `ip` and `iptables` (root) on the node's host")
    tag = secrets.token_hex(3)
    netns, host_if, ns_if = f"cxnet-{tag}", f"cxh{tag}", f"cxn{tag}"
    marker = f"outside-{secrets.token_hex(8)}"
    root = tmp_path_factory.mktemp("outside")
    (root / "ok").write_text(marker)
    undo: list[tuple[str, ...]] = []
    servers: list[subprocess.Popen[bytes]] = []
    forward_rules = [
        ("-s", POD_CIDR, "-o", host_if, "-j", "RETURN"),
        ("-i", host_if, "-d", POD_CIDR, "-j", "RETURN"),
    ]
    try:
        sh("ip", "netns", "add", netns)
        undo.append(("ip", "netns", "del", netns))
        sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        undo.append(("ip", "link", "del", host_if))
        sh("ip", "link", "set", ns_if, "netns", netns)
        sh("ip", "addr", "add", f"{HOST_SIDE_IP}/24", "dev", host_if)
        sh("ip", "link", "set", host_if, "up")
        inside = ("ip", "netns", "exec", netns)
        sh(*inside, "ip", "addr", "add", f"{OUTSIDE_IP}/24", "dev", ns_if)
        sh(*inside, "ip", "addr", "add", f"{METADATA_IP}/32", "dev", ns_if)
        sh(*inside, "ip", "link", "set", ns_if, "up")
        sh(*inside, "ip", "link", "set", "lo", "up")
        sh(*inside, "ip", "route", "add", "default", "via", HOST_SIDE_IP)
        # Pods (and only pods) reach the fake metadata address through the veth; the host's
        # own route to 169.254.169.254, if it has one, is untouched.
        sh("ip", "route", "add", f"{METADATA_IP}/32", "via", OUTSIDE_IP, "table", ROUTE_TABLE)
        undo.append(("ip", "route", "del", f"{METADATA_IP}/32", "table", ROUTE_TABLE))
        rule = ("from", POD_CIDR, "to", f"{METADATA_IP}/32", "lookup", ROUTE_TABLE)
        sh("ip", "rule", "add", *rule, "priority", ROUTE_TABLE)
        undo.append(("ip", "rule", "del", *rule, "priority", ROUTE_TABLE))
        # The test bed drops forwarded pod traffic that leaves the pod bridge (docs/testbed.md);
        # let this one veth through, on to the rest of FORWARD (the policy controller's chains).
        # Only where that guard is in place: RETURN anywhere else would skip those chains.
        if (
            sh("iptables", "-w", "-C", "FORWARD", "-j", "CODEEXEC-FORWARD", check=False).returncode
            == 0
        ):
            for spec in forward_rules:
                sh("iptables", "-w", "-I", "CODEEXEC-FORWARD", "1", *spec)
                undo.append(("iptables", "-w", "-D", "CODEEXEC-FORWARD", *spec))
        sh("sysctl", "-qw", f"net.ipv4.conf.{host_if}.forwarding=1")
        if sh("sysctl", "-n", "net.ipv4.ip_forward").stdout.strip() != "1":
            pytest.fail("IP forwarding is off: is the local cluster up?")
        for port in ("8080", "8081", "80"):
            servers.append(
                subprocess.Popen(
                    [*inside, sys.executable, "-m", "http.server", port, "--bind", "0.0.0.0"],
                    cwd=root,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        for ip, port in ((OUTSIDE_IP, 8080), (OUTSIDE_IP, 8081), (METADATA_IP, 80)):
            wait_for(
                lambda ip=ip, port=port: _host_fetch(netns, ip, port) == marker,
                timeout=30,
                what=f"the test's HTTP server on {ip}:{port}",
            )
        yield Outside(marker)
    finally:
        for server in servers:
            server.kill()
            server.wait()
        for cmd in reversed(undo):
            sh(*cmd, check=False)


def _host_fetch(netns: str, ip: str, port: int) -> str:
    code = (
        "import sys, urllib.request;"
        "print(urllib.request.urlopen(sys.argv[1], timeout=2).read().decode(), end='')"
    )
    proc = sh(
        "ip", "netns", "exec", netns, sys.executable, "-c", code, f"http://{ip}:{port}/ok",
        check=False,
    )  # fmt: skip
    return proc.stdout


@dataclass(frozen=True)
class Targets:
    api_service: tuple[str, int]
    api_endpoint: tuple[str, int]
    kubelet: tuple[str, int]
    metadata: tuple[str, int]
    other_pod: tuple[str, int]
    outside: tuple[str, int]
    outside_other_port: tuple[str, int]

    def as_list(self) -> list[list[Any]]:
        return [[name, host, port] for name, (host, port) in vars(self).items()]


@dataclass(frozen=True)
class Tenancy:
    allowed: str  # labelled: may use both network pools
    refused: str  # unlabelled, unlisted


@pytest.fixture(scope="module")
def tenancy(cluster: Cluster) -> Iterator[Tenancy]:
    tag = secrets.token_hex(3)
    allowed, refused = f"e2e-net-ok-{tag}", f"e2e-net-no-{tag}"
    for name, labels in ((allowed, {NET_LABEL: "yes"}), (refused, {})):
        cluster.apply(
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}
        )
    wait_for(
        lambda: cluster.kubectl("-n", allowed, "get", "sa", "default", check=False).returncode == 0,
        timeout=30,
        what="ServiceAccount default",
    )
    yield Tenancy(allowed, refused)
    for name in (allowed, refused):
        cluster.kubectl("-n", name, "delete", "pods", "--all", "--grace-period=0", "--force",
                        "--wait=false", check=False)  # fmt: skip
        cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="module")
def network_pools(operator: OperatorProcess, cluster: Cluster, tenancy: Tenancy) -> Iterator[None]:
    pools = [
        pool_manifest(
            OPEN_POOL, "python", size=1, allowNetwork=True, preload=[],
            tenants={"namespaceSelector": {"matchLabels": {NET_LABEL: "yes"}}},
        ),
        pool_manifest(
            LIST_POOL, "python", size=1, allowNetwork=True, preload=[],
            tenants={"namespaces": [tenancy.allowed]},
            egress={
                "internet": False,
                "allow": [{"cidr": f"{OUTSIDE_IP}/32", "ports": [{"port": 8080}]}],
            },
        ),
    ]  # fmt: skip
    for pool in pools:
        cluster.apply(pool)
    for pool in pools:
        wait_pool_full(cluster, pool["metadata"]["name"], 1)
    yield
    for pool in pools:
        cluster.kubectl("delete", "sandboxpool", pool["metadata"]["name"], check=False)


CONNECT = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3).close()
except OSError:
    sys.exit(1)
"""


@pytest.fixture(scope="module")
def targets(cluster: Cluster, tenancy: Tenancy, outside: Outside) -> Targets:
    """Each target, shown reachable from an ordinary pod (no NetworkPolicy) first."""
    node = cluster.get_json("nodes")["items"][0]
    node_ip = next(a["address"] for a in node["status"]["addresses"] if a["type"] == "InternalIP")
    kubelet_port = int(node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"])
    svc = cluster.get_json("-n", "default", "service", "kubernetes")
    slice_ = cluster.get_json("-n", "default", "endpointslice", "kubernetes")
    api_endpoint = (slice_["endpoints"][0]["addresses"][0], int(slice_["ports"][0]["port"]))
    server = textwrap.dedent(
        """
        import http.server, socketserver
        socketserver.TCPServer(("", 8080), http.server.SimpleHTTPRequestHandler).serve_forever()
        """
    )
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "bystander", "labels": {"app": "bystander"}},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 0,
            "securityContext": {"runAsNonRoot": True, "runAsUser": 4242},
            "containers": [
                {
                    "name": "main",
                    "image": PYTHON_IMAGE,
                    "imagePullPolicy": "Never",
                    "command": ["python3", "-u", "-c", server],
                    "workingDir": "/tmp",
                }
            ],
        },
    }
    cluster.apply(pod, tenancy.allowed)
    bystander = cluster.wait_pod(tenancy.allowed, "bystander")
    found = Targets(
        api_service=(svc["spec"]["clusterIP"], int(svc["spec"]["ports"][0]["port"])),
        api_endpoint=api_endpoint,
        kubelet=(node_ip, kubelet_port),
        metadata=(METADATA_IP, 80),
        other_pod=(bystander["status"]["podIP"], 8080),
        outside=(OUTSIDE_IP, 8080),
        outside_other_port=(OUTSIDE_IP, 8081),
    )
    for name, host, port in found.as_list():
        if name == "other_pod":
            continue  # the bystander is the prober; the sandbox's own probe shows it listens

        def reaches(host: str = host, port: int = port) -> bool:
            proc = cluster.kubectl(
                "-n", tenancy.allowed, "exec", "bystander", "--",
                "python3", "-c", CONNECT, host, str(port), check=False, timeout=30,
            )  # fmt: skip
            return proc.returncode == 0

        wait_for(reaches, timeout=60, what=f"an ordinary pod to reach {name} {host}:{port}")
    return found


PROBE = """
import socket, urllib.request

def main(targets, url):
    out = {}
    for name, host, port in targets:
        try:
            socket.create_connection((host, port), timeout=3).close()
            out[name] = True
        except OSError:
            out[name] = False
    try:
        out["fetched"] = urllib.request.urlopen(url, timeout=5).read().decode()
    except OSError as err:
        out["fetched"] = f"error: {err}"
    return out
"""


async def probe(namespace: str, pool: str, targets: Targets, cluster: Cluster) -> dict[str, Any]:
    conn = config.from_kubeconfig(str(cluster.kubeconfig))
    assert conn is not None
    async with Client(Kube(conn), namespace) as cx:
        done = await cx.run(
            PROBE,
            pool=pool,
            arguments={"targets": targets.as_list(), "url": f"http://{OUTSIDE_IP}:8080/ok"},
            timeout_seconds=60,
            wait_timeout=180,
        )
    assert done.status.reason == "Succeeded", done.status
    assert done.status.result is not None
    result: dict[str, Any] = done.status.result.return_value
    return result


_PROBES: dict[str, dict[str, Any]] = {}


@pytest.fixture
async def open_pool_probe(
    network_pools: None, tenancy: Tenancy, targets: Targets, cluster: Cluster
) -> dict[str, Any]:
    """What code in the network pool reached, probed once for the module's tests."""
    if OPEN_POOL not in _PROBES:
        _PROBES[OPEN_POOL] = await probe(tenancy.allowed, OPEN_POOL, targets, cluster)
    return _PROBES[OPEN_POOL]


def test_network_pool_cannot_reach_the_api_server(open_pool_probe: dict[str, Any]) -> None:
    """The Service IP is DNAT'd to the endpoint before the policy sees it: both refused.

    caught: main's `egress: [{}]` connected to both."""
    assert open_pool_probe["api_service"] is False, open_pool_probe
    assert open_pool_probe["api_endpoint"] is False, open_pool_probe


def test_network_pool_cannot_reach_the_kubelet(open_pool_probe: dict[str, Any]) -> None:
    """caught: main's `egress: [{}]` connected; dropping node addresses from `except` too."""
    assert open_pool_probe["kubelet"] is False, open_pool_probe


def test_network_pool_cannot_reach_cloud_metadata(open_pool_probe: dict[str, Any]) -> None:
    """caught: main's `egress: [{}]` fetched from the fake metadata server."""
    assert open_pool_probe["metadata"] is False, open_pool_probe


def test_network_pool_cannot_reach_another_pod(open_pool_probe: dict[str, Any]) -> None:
    """caught: main's `egress: [{}]` connected to the bystander pod."""
    assert open_pool_probe["other_pod"] is False, open_pool_probe


def test_network_pool_reaches_an_allowed_endpoint_outside_the_cluster(
    open_pool_probe: dict[str, Any], outside: Outside
) -> None:
    assert open_pool_probe["fetched"] == outside.marker, open_pool_probe
    assert open_pool_probe["outside"] is True and open_pool_probe["outside_other_port"] is True


async def test_allow_rule_opens_only_its_cidr_and_port(
    network_pools: None, tenancy: Tenancy, targets: Targets, outside: Outside, cluster: Cluster
) -> None:
    """A pool with `internet: false` and one allow rule (198.51.100.10/32, port 8080).

    caught: main's `egress: [{}]` reached port 8081 and everything else as well."""
    seen = await probe(tenancy.allowed, LIST_POOL, targets, cluster)
    assert seen["fetched"] == outside.marker, seen
    assert seen["outside"] is True
    for name in ("outside_other_port", "metadata", "api_service", "api_endpoint", "kubelet",
                 "other_pod"):  # fmt: skip
        assert seen[name] is False, (name, seen)


async def test_namespace_not_allowed_by_a_pool_gets_invalid_request_naming_it(
    network_pools: None, tenancy: Tenancy, cluster: Cluster
) -> None:
    """caught: main honoured spec.pool for every namespace and ran the code."""
    conn = config.from_kubeconfig(str(cluster.kubeconfig))
    assert conn is not None
    async with Client(Kube(conn), tenancy.refused) as cx:
        for pool in (OPEN_POOL, LIST_POOL):
            done = await cx.run("def main():\n    return 1\n", pool=pool, wait_timeout=120)
            assert (done.status.phase, done.status.reason) == ("Failed", "InvalidRequest")
            assert repr(pool) in (done.status.message or ""), done.status
            assert tenancy.refused in (done.status.message or "")
            # Refused before any claim: no pod was ever given this execution.
            assert done.status.sandbox is None or done.status.sandbox.pod is None
        # The default pools stay open to every namespace.
        done = await cx.run("def main():\n    return 1\n", wait_timeout=120)
        assert done.status.reason == "Succeeded", done.status


def test_network_pool_must_name_its_tenants(cluster: Cluster, tmp_path: Path) -> None:
    """The API server refuses a network pool open to everyone by omission.

    caught: removing the CEL rule let this pool in."""
    pool = pool_manifest("hostile-net-untenanted", "python", size=0, allowNetwork=True)
    path = tmp_path / "pool.json"
    path.write_text(json.dumps(pool))
    proc = cluster.kubectl("apply", "-f", str(path), check=False)
    assert proc.returncode != 0 and "must name its tenants" in proc.stderr


def test_each_network_pool_has_its_own_policy_and_none_opens_all(
    network_pools: None, cluster: Cluster
) -> None:
    """caught: main's `codeexec-sandbox-allow-egress` (`egress: [{}]`) was found here."""
    policies = cluster.get_json("networkpolicy", "-n", SANDBOX_NS)["items"]
    names = {p["metadata"]["name"] for p in policies}
    assert {f"codeexec-egress-{OPEN_POOL}", f"codeexec-egress-{LIST_POOL}"} <= names
    for policy in policies:
        for rule in policy["spec"].get("egress") or []:
            assert rule.get("to"), policy["metadata"]["name"]
