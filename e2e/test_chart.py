"""The Helm chart, end to end (issue 4, acceptance 2-5).

Without a cluster: `helm lint`, the values schema, and what the templates render. With the
local cluster (marked ``cluster``): the chart installed from the operator's image completes the
examples, /metrics moves, RBAC holds against the real API server (SubjectAccessReview), the
`codeexec` CLI works against it, and `helm uninstall` leaves only the CRDs.

Isolation: the suite's own operator (tests/integration) may run at the same time, with pools
`python`/`nodejs` and sandbox namespace `codeexec-sandbox`. This release uses its own sandbox
namespace, its own pools, its own `codeexec.io/instance` (the operator serves only pools with
its label) and serves only this module's namespace, whose name does not start with `e2e-`.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from e2e import examples
from e2e.fixtures import REPO_ROOT, Cluster, wait_for

CHART = REPO_ROOT / "charts" / "codeexec-operator"
RELEASE = "codeexec-e2e"
RELEASE_NS = "codeexec-system"
FULLNAME = "codeexec-e2e"  # fullnameOverride: short, predictable object names
SANDBOX_NS = "codeexec-e2e-sandbox"
INSTANCE = "codeexec-e2e"
PY_POOL, JS_POOL = "e2e-python", "e2e-nodejs"
POOL_SIZES = {PY_POOL: 2, JS_POOL: 1}
# The images the local build made (e2e/cluster/images.sh: `dev`, or IMAGE_TAG); the chart's
# default tag is its appVersion, so the install sets image.tag.
IMAGE_TAG = os.environ.get("IMAGE_TAG", "dev")
OPERATOR_IMAGE = f"codeexec.local/operator:{IMAGE_TAG}"
APP_VERSION = yaml.safe_load((REPO_ROOT / "charts/codeexec-operator/Chart.yaml").read_text())[
    "appVersion"
]
# Our helm is built without a stamped Kubernetes version (it would assume 1.20 offline, below
# the chart's kubeVersion): render for the test bed's.
KUBE_VERSION = "1.34.4"
SA_USER = f"system:serviceaccount:{RELEASE_NS}:{FULLNAME}"
GATEWAY_SECRET, GATEWAY_TOKEN = "codeexec-e2e-gateway", secrets.token_hex(16)
SA_GROUPS = [
    "system:serviceaccounts",
    f"system:serviceaccounts:{RELEASE_NS}",
    "system:authenticated",
]


# ---- helm --------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def helm_bin() -> Path:
    """helm, built from the Go module proxy by e2e/tools.sh on first use."""
    proc = subprocess.run(
        ["bash", str(REPO_ROOT / "e2e" / "tools.sh")], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        pytest.fail(f"e2e/tools.sh failed:\n{proc.stderr[-3000:]}")
    return Path(proc.stdout.strip().splitlines()[-1])


def run_helm(
    helm_bin: Path, *args: str, cluster: Cluster | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ}
    if cluster is not None:
        env["KUBECONFIG"] = str(cluster.kubeconfig)
    proc = subprocess.run(
        [str(helm_bin), *args], capture_output=True, text=True, env=env, timeout=900, check=False
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}")
    return proc


def render(
    helm_bin: Path, *sets: str, namespace: str = RELEASE_NS, tests: bool = True
) -> list[dict[str, Any]]:
    """`helm template` with `--set` pairs, parsed (`tests`: with the `helm test` hooks)."""
    args = ["template", RELEASE, str(CHART), "-n", namespace, "--kube-version", KUBE_VERSION]
    if not tests:
        args.append("--skip-tests")
    for pair in sets:
        args += ["--set", pair]
    out = run_helm(helm_bin, *args).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} {name}, found {len(matches)}"
    return matches[0]


def env_of(deployment: dict[str, Any]) -> dict[str, Any]:
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


# ---- without a cluster: lint, schema, templates -------------------------------------------


def test_chart_lints_strictly(helm_bin: Path) -> None:
    run_helm(helm_bin, "lint", "--strict", str(CHART))
    run_helm(helm_bin, "lint", "--strict", str(CHART), "--set", "replicas=3")


@pytest.mark.parametrize(
    ("pair", "complaint"),
    [
        ("replica=2", "additional properties 'replica' not allowed"),
        ("pools.python.size=-1", "/pools/python/size"),
        ("pools.python.language=ruby", "/pools/python/language"),
        ("pools.python.resources.limits.cpu=1", "want string"),
        ("pools.python.allowNetwork=yes", "/pools/python/allowNetwork"),
        ("sandbox.namespace.name=Bad_Name", "/sandbox/namespace/name"),
        ("sandbox.namespace.labels.pod-security\\.kubernetes\\.io/enforce=privileged", "not"),
        ("operator.watchNamespaces[0]=UPPER", "/operator/watchNamespaces/0"),
        ("gateway.port=80", "additional properties 'port' not allowed"),
    ],
)
def test_values_schema_rejects_mistakes(helm_bin: Path, pair: str, complaint: str) -> None:
    proc = run_helm(
        helm_bin,
        "template",
        RELEASE,
        str(CHART),
        "--kube-version",
        KUBE_VERSION,
        "--set",
        pair,
        check=False,
    )
    assert proc.returncode != 0
    assert complaint in proc.stderr


def test_gateway_without_a_token_secret_does_not_render(helm_bin: Path) -> None:
    """caught: the chart rendered an open gateway before (no token unless one was named)."""
    proc = run_helm(helm_bin, "template", RELEASE, str(CHART), "--kube-version", KUBE_VERSION,
                    "--set", "gateway.enabled=true", check=False)  # fmt: skip
    assert proc.returncode != 0 and "gateway.tokenSecret is required" in proc.stderr


def test_gateway_network_policy_admits_only_the_named_peers(helm_bin: Path) -> None:
    """caught: the chart had no NetworkPolicy for the gateway; every pod could call it."""
    name = f"{RELEASE}-codeexec-operator-gateway"
    docs = render(helm_bin, "gateway.enabled=true", "gateway.tokenSecret=gw")
    policy = find(docs, "NetworkPolicy", name)
    pod_labels = find(docs, "Deployment", name)["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert policy["spec"]["policyTypes"] == ["Ingress"] and policy["spec"]["ingress"] == []
    peer = "gateway.networkPolicy.from[0].namespaceSelector.matchLabels.team=ragflow"
    docs = render(helm_bin, "gateway.enabled=true", "gateway.tokenSecret=gw", peer)
    (rule,) = find(docs, "NetworkPolicy", name)["spec"]["ingress"]
    assert rule["from"] == [{"namespaceSelector": {"matchLabels": {"team": "ragflow"}}}]
    assert rule["ports"] == [{"protocol": "TCP", "port": 8090}]
    container = find(docs, "Deployment", name)["spec"]["template"]["spec"]["containers"][0]
    assert "--token-file=/var/run/secrets/codeexec-gateway/token" in container["args"]


def test_default_render_is_a_hardened_single_operator(helm_bin: Path) -> None:
    docs = render(helm_bin)
    deployment = find(docs, "Deployment", f"{RELEASE}-codeexec-operator")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    # Image tags default to the chart's appVersion, the sandbox images' too.
    assert container["image"] == f"codeexec.local/operator:{APP_VERSION}"
    assert container["args"] == ["operator"]
    # The old pod must stop before the new one starts.
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    env = env_of(deployment)
    assert env["CODEEXEC_SANDBOX_NAMESPACE"] == "codeexec-sandbox"
    assert env["CODEEXEC_NAMESPACES"] == ""
    assert env["CODEEXEC_POOL_SELECTOR"] == f"codeexec.io/instance={RELEASE}-codeexec-operator"
    # Always elected: `kubectl scale` can add a replica the chart never hears of.
    assert env["CODEEXEC_LEADER_ELECTION"] == "true"
    assert find(docs, "Lease", f"{RELEASE}-codeexec-operator")
    assert env["CODEEXEC_LEASE_NAMESPACE"] == RELEASE_NS
    assert env["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http-metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http-metrics"}
    # Pod Security `restricted`, met by the operator's own pod too.
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert set(container["resources"]) == {"requests", "limits"}
    namespace = find(docs, "Namespace", "codeexec-sandbox")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    pools = {d["metadata"]["name"]: d for d in docs if d["kind"] == "SandboxPool"}
    assert set(pools) == {"python", "nodejs"}
    for pool in pools.values():
        assert pool["metadata"]["labels"]["codeexec.io/instance"] == f"{RELEASE}-codeexec-operator"
        assert pool["spec"]["default"] is True
        assert "enabled" not in pool["spec"] and "runtimeClassName" not in pool["spec"]
        language = pool["spec"]["language"]
        assert pool["spec"]["image"] == f"codeexec.local/{language}-sandbox:{APP_VERSION}"
    # The operator makes its own NetworkPolicies; the chart must not fight it over them.
    assert not [d for d in docs if d["kind"] == "NetworkPolicy"]
    assert not [
        d for d in docs if d["kind"] in ("ServiceMonitor", "RuntimeClass", "PodDisruptionBudget")
    ]


def test_replicas_turn_on_leader_election(helm_bin: Path) -> None:
    docs = render(helm_bin, "replicas=2")
    deployment = find(docs, "Deployment", f"{RELEASE}-codeexec-operator")
    assert env_of(deployment)["CODEEXEC_LEADER_ELECTION"] == "true"
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    # A drain takes one replica at a time; a standby (ready while it waits) takes over.
    pdb = find(docs, "PodDisruptionBudget", f"{RELEASE}-codeexec-operator")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    assert pdb["spec"]["selector"]["matchLabels"].items() <= (
        deployment["spec"]["template"]["metadata"]["labels"].items()
    )
    # ... and it serves no probes while it waits on the Lease: start-up may last that long.
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert (
        container["startupProbe"]["periodSeconds"] * container["startupProbe"]["failureThreshold"]
        >= 86400
    )
    lease = find(docs, "Lease", f"{RELEASE}-codeexec-operator")
    assert lease["metadata"]["namespace"] == RELEASE_NS
    role = find(docs, "Role", f"{RELEASE}-codeexec-operator")
    lease_rules = [r for r in role["rules"] if r["resources"] == ["leases"]]
    assert {"create"} in [set(r["verbs"]) for r in lease_rules]
    named = [r for r in lease_rules if r.get("resourceNames")]
    assert named == [
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "resourceNames": [f"{RELEASE}-codeexec-operator"],
            "verbs": ["get", "patch"],
        }
    ]


def test_watch_namespaces_scope_execution_rights_to_them(helm_bin: Path) -> None:
    docs = render(helm_bin, "operator.watchNamespaces={team-a,team-b}")
    bindings = [
        d
        for d in docs
        if d["kind"] in ("RoleBinding", "ClusterRoleBinding")
        and d["roleRef"]["name"] == f"{RELEASE}-codeexec-operator-executions"
    ]
    assert sorted((b["kind"], b["metadata"].get("namespace")) for b in bindings) == [
        ("RoleBinding", "team-a"),
        ("RoleBinding", "team-b"),
    ]
    deployment = find(docs, "Deployment", f"{RELEASE}-codeexec-operator")
    assert env_of(deployment)["CODEEXEC_NAMESPACES"] == "team-a,team-b"


def test_runtime_class_reaches_every_pool_unless_overridden(helm_bin: Path) -> None:
    docs = render(
        helm_bin,
        "sandbox.runtimeClassName=gvisor",
        "sandbox.runtimeClass.create=true",
        "pools.nodejs.runtimeClassName=kata",
    )
    pools = {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "SandboxPool"}
    assert pools["python"]["runtimeClassName"] == "gvisor"
    assert pools["nodejs"]["runtimeClassName"] == "kata"
    assert find(docs, "RuntimeClass", "gvisor")["handler"] == "runsc"


def test_sandbox_role_grants_no_exec_logs_or_portforward(helm_bin: Path) -> None:
    docs = render(helm_bin)
    role = find(docs, "Role", f"{RELEASE}-codeexec-operator-sandbox")
    assert role["metadata"]["namespace"] == "codeexec-sandbox"
    resources = {res for rule in role["rules"] for res in rule["resources"]}
    expected = {"pods", "pods/attach", "networkpolicies", "sandboxpoolscales"}
    assert resources == expected | {"sandboxpoolscales/status"}
    for cluster_role in (d for d in docs if d["kind"] == "ClusterRole"):
        for rule in cluster_role["rules"]:
            assert not {"pods", "pods/attach", "pods/exec", "secrets"} & set(rule["resources"])


# ---- the release on the local cluster -----------------------------------------------------


@dataclass(frozen=True)
class Release:
    cluster: Cluster
    helm: Path
    tenant_ns: str

    def kubectl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.cluster.kubectl(*args, check=check)

    def operator_pod(self) -> dict[str, Any]:
        pods = self.cluster.get_json(
            "pods",
            "-n",
            RELEASE_NS,
            "-l",
            f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/component!=gateway",
        )["items"]
        running = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
        assert len(running) == 1, f"expected one operator pod, found {len(running)}"
        pod: dict[str, Any] = running[0]
        return pod

    def metrics(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        """Samples of /metrics, read through the API server's proxy to the metrics Service."""
        text = self.kubectl(
            "get",
            "--raw",
            f"/api/v1/namespaces/{RELEASE_NS}/services/{FULLNAME}-metrics:http-metrics"
            "/proxy/metrics",
        ).stdout
        return {
            (s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }


@pytest.fixture(scope="module")
def images(cluster: Cluster) -> None:
    """The project's images, rebuilt if their inputs changed (a quick no-op otherwise)."""
    log = cluster.dir / "logs" / "images-chart-test.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        proc = subprocess.run(
            ["bash", str(REPO_ROOT / "e2e" / "cluster" / "images.sh")],
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
        )
    if proc.returncode != 0:
        pytest.fail(f"e2e/cluster/images.sh failed; see {log}")


@pytest.fixture(scope="module")
def tenant_ns(cluster: Cluster) -> Iterator[str]:
    """The one namespace this release serves (not `e2e-*`: other operators may watch those)."""
    name = f"chart-e2e-{secrets.token_hex(3)}"
    cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def gone(cluster: Cluster, *args: str) -> bool:
    proc = cluster.kubectl("get", *args, "-o", "name", check=False)
    return proc.returncode != 0 and "NotFound" in proc.stderr


@pytest.fixture(scope="module")
def release(
    cluster: Cluster,
    helm_bin: Path,
    images: None,
    tenant_ns: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Release]:
    # A release left by an interrupted run would hold our names: remove it first.
    run_helm(helm_bin, "uninstall", RELEASE, "-n", RELEASE_NS, "--ignore-not-found", "--wait",
             cluster=cluster)  # fmt: skip
    wait_for(lambda: gone(cluster, "namespace", SANDBOX_NS), timeout=180, what="old sandbox ns")
    values = {
        "fullnameOverride": FULLNAME,
        "image": {"tag": IMAGE_TAG},
        "operator": {"instance": INSTANCE, "watchNamespaces": [tenant_ns]},
        "sandbox": {"namespace": {"name": SANDBOX_NS}},
        "gateway": {"enabled": True, "namespace": tenant_ns, "tokenSecret": GATEWAY_SECRET},
        "pools": {
            "python": {"name": PY_POOL, "size": POOL_SIZES[PY_POOL]},
            "nodejs": {"name": JS_POOL, "size": POOL_SIZES[JS_POOL]},
        },
    }
    # The gateway refuses to serve without a token: its Secret exists before the install.
    cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": RELEASE_NS}})
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": GATEWAY_SECRET, "namespace": RELEASE_NS},
            "stringData": {"token": GATEWAY_TOKEN},
        }
    )
    values_file = tmp_path_factory.mktemp("chart") / "values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    run_helm(
        helm_bin,
        "install",
        RELEASE,
        str(CHART),
        "-n",
        RELEASE_NS,
        "--create-namespace",
        "-f",
        str(values_file),
        "--wait",
        "--timeout",
        "5m",
        cluster=cluster,
    )
    rel = Release(cluster, helm_bin, tenant_ns)
    yield rel
    if (
        run_helm(
            helm_bin, "status", RELEASE, "-n", RELEASE_NS, cluster=cluster, check=False
        ).returncode
        == 0
    ):
        # Keep what the operator said for whoever debugs a failure, then clean up.
        logs = cluster.kubectl("-n", RELEASE_NS, "logs", f"deploy/{FULLNAME}", check=False)
        (cluster.dir / "logs").mkdir(parents=True, exist_ok=True)
        (cluster.dir / "logs" / "chart-operator.log").write_text(logs.stdout + logs.stderr)
        run_helm(helm_bin, "uninstall", RELEASE, "-n", RELEASE_NS, "--wait", cluster=cluster,
                 check=False)  # fmt: skip


def pool_ready(cluster: Cluster, name: str) -> bool:
    pool = cluster.get_json("sandboxpool", name)
    return bool(pool.get("status", {}).get("ready", 0) >= POOL_SIZES[name])


@pytest.mark.cluster
def test_install_runs_the_operator_from_its_image(release: Release) -> None:
    pod = release.operator_pod()
    spec = pod["spec"]
    assert spec["containers"][0]["image"] == OPERATOR_IMAGE
    assert spec["serviceAccountName"] == FULLNAME
    # In-cluster configuration only: the API server is reached through the `kubernetes`
    # Service with the pod's own token, as on any cluster.
    env_names = {e["name"] for e in spec["containers"][0].get("env", [])}
    assert "KUBECONFIG" not in env_names
    ready = {c["type"]: c["status"] for c in pod["status"]["conditions"]}
    assert ready["Ready"] == "True"  # /readyz: the sandbox pod watch has synced
    # The operator (not the chart) made the sandbox NetworkPolicies at start-up.
    policies = release.cluster.get_json("networkpolicies", "-n", SANDBOX_NS)["items"]
    # The chart's pools have no network: deny-all only, no egress policy of any pool, and never
    # the old allow-all egress policy (removed at start-up).
    assert {p["metadata"]["name"] for p in policies} == {"codeexec-sandbox-deny-all"}
    labels = release.cluster.get_json("namespace", SANDBOX_NS)["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    # Enforced, not just labelled: the API server turns away a root pod in the sandbox namespace.
    root_pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "root-probe"},
        "spec": {"containers": [{"name": "c", "image": OPERATOR_IMAGE,
                                 "securityContext": {"runAsUser": 0}}]},
    }  # fmt: skip
    refused = release.cluster.kubectl(
        "-n", SANDBOX_NS, "create", "--dry-run=server", "-f", "-", input=json.dumps(root_pod),
        check=False,
    )  # fmt: skip
    assert refused.returncode != 0 and "violates PodSecurity" in refused.stderr, refused.stderr
    for pool in POOL_SIZES:
        wait_for(partial(pool_ready, release.cluster, pool), timeout=300, what=f"{pool} ready")


@pytest.mark.cluster
def test_helm_test_runs_an_execution(release: Release) -> None:
    for pool in POOL_SIZES:
        wait_for(partial(pool_ready, release.cluster, pool), timeout=300, what=f"{pool} ready")
    proc = run_helm(release.helm, "test", RELEASE, "-n", RELEASE_NS, "--logs", "--timeout", "5m",
                    cluster=release.cluster)  # fmt: skip
    assert re.search(r"Phase:\s+Succeeded", proc.stdout), proc.stdout
    assert "42" in proc.stdout.split("POD LOGS")[-1]


@pytest.mark.cluster
def test_pools_take_runtime_class_gvisor_when_the_cluster_has_it(release: Release) -> None:
    """sandbox.preferredRuntimeClassName (default `gvisor`): the test bed has that
    RuntimeClass, so the release's pools, and so their pods, run under gVisor, and the examples
    (test_examples_reach_their_expected_outcomes) run there. On a cluster without it (kind) the
    pools keep the node's default runtime.
    caught: rendering the pools without the lookup's result made this fail."""
    has_gvisor = not gone(release.cluster, "runtimeclass", "gvisor")
    # The project's test bed always registers gVisor: there this must run under it.
    assert has_gvisor or not release.cluster.own_testbed, "the test bed has no gvisor class"
    expected = "gvisor" if has_gvisor else None
    for pool in POOL_SIZES:
        spec = release.cluster.get_json("sandboxpool", pool)["spec"]
        assert spec.get("runtimeClassName") == expected, (pool, spec)
    wait_for(
        lambda: all(pool_ready(release.cluster, p) for p in POOL_SIZES),
        timeout=300,
        what="pools ready",
    )
    pods = release.cluster.get_json("pods", "-n", SANDBOX_NS)["items"]
    assert pods
    assert {p["spec"].get("runtimeClassName") for p in pods} == {expected}


@pytest.mark.cluster
def test_rendered_manifests_pass_server_side_validation(release: Release) -> None:
    # Every variant, validated by the real API server (schemas of built-in kinds and our CRDs,
    # unknown fields rejected) without persisting anything. Namespaced objects go to the
    # tenant namespace, which exists; ServiceMonitor is left out (its CRD is not installed).
    variants = [
        [],
        # A class name of its own: the test bed's `gvisor` class exists, and a RuntimeClass's
        # handler cannot change, so a dry-run apply over it would be refused for that alone.
        [
            "replicas=2",
            "sandbox.runtimeClassName=dryrun-gvisor",
            "sandbox.runtimeClass.create=true",
        ],
        [f"operator.watchNamespaces={{{release.tenant_ns}}}", "rbac.tenant.aggregate=false"],
    ]
    for sets in variants:
        docs = render(
            release.helm,
            f"sandbox.namespace.name={release.tenant_ns}",
            "fullnameOverride=codeexec-dryrun",
            "pools.python.name=dryrun-python",
            "pools.nodejs.name=dryrun-nodejs",
            *sets,
            namespace=release.tenant_ns,
            # The test pod names a ServiceAccount that a dry run does not create; `helm test`
            # (test_helm_test_runs_an_execution) creates the hooks for real.
            tests=False,
        )
        manifest = yaml.safe_dump_all(docs)
        proc = release.cluster.kubectl(
            "apply", "--dry-run=server", "--validate=strict", "-f", "-", input=manifest, check=False
        )
        assert proc.returncode == 0, f"variant {sets}:\n{proc.stderr}"
        assert "(server dry run)" in proc.stdout


@pytest.mark.cluster
def test_examples_reach_their_expected_outcomes(release: Release) -> None:
    manifests = examples.manifests()
    assert manifests, "examples/ has no CodeExecutions"
    for manifest in manifests:
        release.cluster.apply(manifest, namespace=release.tenant_ns)

    def all_finished() -> list[dict[str, Any]] | None:
        items: list[dict[str, Any]] = release.cluster.get_json(
            "codeexecutions", "-n", release.tenant_ns
        )["items"]
        phases = [(i.get("status") or {}).get("phase") for i in items]
        done = len(items) >= len(manifests) and all(p in ("Succeeded", "Failed") for p in phases)
        return items if done else None

    items = wait_for(all_finished, timeout=300, what="every example finished")
    from codeexec.api.models import CodeExecution

    verdicts = {i["metadata"]["name"]: examples.verdict(CodeExecution.from_body(i)) for i in items}
    assert all(v.startswith("ok") for v in verdicts.values()), verdicts
    # Run by this release's operator: only it serves these pools.
    pools = {
        i["metadata"]["name"]: i["status"]["sandbox"]["pool"]
        for i in items
        if i["status"].get("sandbox")
    }
    assert set(pools.values()) <= {PY_POOL, JS_POOL}, (
        f"pools {pools}: another operator that serves every namespace (no CODEEXEC_NAMESPACES) "
        "ran some of this release's executions"
    )
    # Least privilege held up in practice: the operator was never refused anything.
    logs = release.kubectl("-n", RELEASE_NS, "logs", f"deploy/{FULLNAME}").stdout
    assert "Forbidden" not in logs, logs[-3000:]


def counter(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@pytest.mark.cluster
def test_metrics_move_after_executions(release: Release) -> None:
    before = release.metrics()
    watched = [
        ("codeexec_executions_total", {"language": "python", "reason": "Succeeded"}),
        ("codeexec_queue_wait_seconds_count", {"language": "python"}),
        ("codeexec_run_seconds_count", {"language": "python"}),
        ("codeexec_end_to_end_seconds_count", {"language": "python"}),
    ]
    name = f"metrics-{secrets.token_hex(3)}"
    release.cluster.apply(
        {
            "apiVersion": "codeexec.io/v1alpha1",
            "kind": "CodeExecution",
            "metadata": {"name": name},
            "spec": {"language": "python", "code": "def main():\n    return 1\n"},
        },
        namespace=release.tenant_ns,
    )

    def moved() -> dict[str, float] | None:
        after = release.metrics()
        deltas = {
            metric: counter(after, metric, **labels) - counter(before, metric, **labels)
            for metric, labels in watched
        }
        return deltas if all(d >= 1 for d in deltas.values()) else None

    deltas = wait_for(moved, timeout=120, what="metrics to count the execution")
    assert all(d >= 1 for d in deltas.values())
    after = release.metrics()
    # Histograms carry buckets: the +Inf bucket counted the run too.
    inf = counter(after, "codeexec_end_to_end_seconds_bucket", language="python", le="+Inf")
    assert inf == counter(after, "codeexec_end_to_end_seconds_count", language="python")


# ---- RBAC, asked of the real API server -----------------------------------------------------


def can(cluster: Cluster, user: str, groups: list[str], **attributes: str) -> bool:
    review = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "spec": {"user": user, "groups": groups, "resourceAttributes": attributes},
    }
    out = cluster.kubectl("create", "-f", "-", "-o", "json", input=json.dumps(review)).stdout
    return bool(json.loads(out)["status"].get("allowed"))


def attrs(spec: str, namespace: str | None) -> dict[str, str]:
    """'VERB [GROUP:]RESOURCE[/SUBRESOURCE] [NAME]' -> SubjectAccessReview resourceAttributes."""
    verb, resource, *name = spec.split()
    group, _, rest = resource.rpartition(":")
    plural, _, sub = rest.partition("/")
    out = {"verb": verb, "group": group, "resource": plural}
    if sub:
        out["subresource"] = sub
    if namespace:
        out["namespace"] = namespace
    if name:
        out["name"] = name[0]
    return out


SANDBOX, TENANT, RELEASE_NAMESPACE, CLUSTER = "sandbox", "tenant", "release", "cluster"

OPERATOR_NEEDS = [
    (CLUSTER, "list codeexec.io:sandboxpools"),
    (CLUSTER, "watch codeexec.io:sandboxpools"),
    (CLUSTER, "patch codeexec.io:sandboxpools/status e2e-python"),
    (CLUSTER, "patch codeexec.io:sandboxpools/scale e2e-python"),
    (SANDBOX, "list codeexec.io:sandboxpoolscales"),
    (SANDBOX, "watch codeexec.io:sandboxpoolscales"),
    (SANDBOX, "create codeexec.io:sandboxpoolscales"),
    (SANDBOX, "delete codeexec.io:sandboxpoolscales"),
    (SANDBOX, "patch codeexec.io:sandboxpoolscales/status"),
    (CLUSTER, f"get namespaces {SANDBOX_NS}"),
    (TENANT, "list codeexec.io:codeexecutions"),
    (TENANT, "watch codeexec.io:codeexecutions"),
    (TENANT, "get codeexec.io:codeexecutions"),
    (TENANT, "delete codeexec.io:codeexecutions"),
    (TENANT, "patch codeexec.io:codeexecutions/status"),
    (TENANT, "create events"),
    (RELEASE_NAMESPACE, "create events"),
    (SANDBOX, "get pods"),
    (SANDBOX, "list pods"),
    (SANDBOX, "watch pods"),
    (SANDBOX, "create pods"),
    (SANDBOX, "patch pods"),
    (SANDBOX, "delete pods"),
    (SANDBOX, "get pods/attach"),
    (SANDBOX, "create pods/attach"),
    (SANDBOX, "create networking.k8s.io:networkpolicies"),
    (SANDBOX, "patch networking.k8s.io:networkpolicies"),
    (SANDBOX, "delete networking.k8s.io:networkpolicies"),
    # Pools that select tenants by label: the execution's namespace, read by name.
    (CLUSTER, "get namespaces kube-system"),
    # Network pools' egress excepts node and API server addresses.
    (CLUSTER, "list nodes"),
    ("default", "get discovery.k8s.io:endpointslices kubernetes"),
]

OPERATOR_MUST_NOT = [
    (TENANT, "get pods"),
    (TENANT, "list pods"),
    (TENANT, "create pods"),
    ("default", "list pods"),
    ("kube-system", "get pods"),
    (RELEASE_NAMESPACE, "list pods"),
    (CLUSTER, "list pods"),
    (SANDBOX, "create pods/exec"),
    (SANDBOX, "get pods/log"),
    (SANDBOX, "create pods/portforward"),
    (SANDBOX, "patch pods/ephemeralcontainers"),
    (SANDBOX, "deletecollection pods"),
    (SANDBOX, "get secrets"),
    (SANDBOX, "list secrets"),
    (RELEASE_NAMESPACE, "get secrets"),
    (CLUSTER, "list secrets"),
    ("kube-system", "get configmaps"),
    (SANDBOX, "create serviceaccounts/token"),
    (SANDBOX, "deletecollection networking.k8s.io:networkpolicies"),
    (TENANT, "create networking.k8s.io:networkpolicies"),
    (TENANT, "create codeexec.io:codeexecutions"),
    (TENANT, "update codeexec.io:codeexecutions"),
    (TENANT, "patch codeexec.io:codeexecutions"),
    ("default", "list codeexec.io:codeexecutions"),  # outside watchNamespaces
    (CLUSTER, "list codeexec.io:codeexecutions"),
    (CLUSTER, "create codeexec.io:sandboxpools"),
    (CLUSTER, "patch codeexec.io:sandboxpools e2e-python"),
    (CLUSTER, "delete codeexec.io:sandboxpools e2e-python"),
    (TENANT, "create codeexec.io:sandboxpoolscales"),
    (SANDBOX, "patch codeexec.io:sandboxpoolscales"),
    (CLUSTER, "list namespaces"),
    (CLUSTER, "watch namespaces"),
    (CLUSTER, "patch namespaces kube-system"),
    (CLUSTER, "delete namespaces codeexec-e2e-sandbox"),
    (CLUSTER, "get nodes codeexec-node"),
    (CLUSTER, "watch nodes"),
    (CLUSTER, "patch nodes codeexec-node"),
    (CLUSTER, "get nodes/proxy codeexec-node"),
    ("default", "get discovery.k8s.io:endpointslices other"),
    ("default", "list discovery.k8s.io:endpointslices"),
    ("kube-system", "get discovery.k8s.io:endpointslices kubernetes"),
    (CLUSTER, "create rbac.authorization.k8s.io:clusterrolebindings"),
    (RELEASE_NAMESPACE, "get coordination.k8s.io:leases"),  # one replica: no Lease rights
    (RELEASE_NAMESPACE, "create apps:deployments"),
]


def where(scope: str, tenant_ns: str) -> str | None:
    return {
        SANDBOX: SANDBOX_NS,
        TENANT: tenant_ns,
        RELEASE_NAMESPACE: RELEASE_NS,
        CLUSTER: None,
    }.get(scope, scope)


@pytest.mark.cluster
@pytest.mark.parametrize(("scope", "request_"), OPERATOR_NEEDS, ids=lambda v: str(v))
def test_operator_may_do_what_it_needs(release: Release, scope: str, request_: str) -> None:
    attributes = attrs(request_, where(scope, release.tenant_ns))
    assert can(release.cluster, SA_USER, SA_GROUPS, **attributes), attributes


@pytest.mark.cluster
@pytest.mark.parametrize(("scope", "request_"), OPERATOR_MUST_NOT, ids=lambda v: str(v))
def test_operator_is_refused_what_it_does_not_need(
    release: Release, scope: str, request_: str
) -> None:
    attributes = attrs(request_, where(scope, release.tenant_ns))
    assert not can(release.cluster, SA_USER, SA_GROUPS, **attributes), attributes


def make_tenant(release: Release, name: str, cluster_role: str) -> tuple[str, list[str]]:
    """A ServiceAccount in the tenant namespace bound (RoleBinding) to `cluster_role`."""
    ns = release.tenant_ns
    release.kubectl("-n", ns, "create", "serviceaccount", name)
    release.kubectl(
        "-n", ns, "create", "rolebinding", name, f"--clusterrole={cluster_role}",
        f"--serviceaccount={ns}:{name}",
    )  # fmt: skip
    groups = ["system:serviceaccounts", f"system:serviceaccounts:{ns}", "system:authenticated"]
    return f"system:serviceaccount:{ns}:{name}", groups


TENANT_MAY = ["create", "get", "list", "watch", "delete"]
TENANT_MUST_NOT = [
    "get pods",
    "list pods",
    "create pods/exec",
    "get pods/exec",
    "create pods/attach",
    "get pods/attach",
    "get pods/log",
    "delete pods",
]


@pytest.mark.cluster
def test_tenant_runs_code_but_cannot_reach_sandbox_pods(release: Release) -> None:
    user, groups = make_tenant(release, "tenant", f"{FULLNAME}-tenant")
    for verb in TENANT_MAY:
        assert can(
            release.cluster, user, groups,
            **attrs(f"{verb} codeexec.io:codeexecutions", release.tenant_ns),
        ), verb  # fmt: skip
    assert not can(
        release.cluster, user, groups,
        **attrs("patch codeexec.io:codeexecutions/status", release.tenant_ns),
    )  # fmt: skip
    assert not can(
        release.cluster, user, groups, **attrs("create codeexec.io:codeexecutions", "default")
    )
    for request_ in TENANT_MUST_NOT:
        assert not can(release.cluster, user, groups, **attrs(request_, SANDBOX_NS)), request_


@pytest.mark.cluster
def test_namespace_editors_get_codeexecutions_through_aggregation(release: Release) -> None:
    user, groups = make_tenant(release, "editor", "edit")
    create = attrs("create codeexec.io:codeexecutions", release.tenant_ns)
    # The aggregation controller folds the tenant role into `edit` shortly after install.
    wait_for(lambda: can(release.cluster, user, groups, **create), timeout=60, what="aggregation")
    for request_ in TENANT_MUST_NOT:
        assert not can(release.cluster, user, groups, **attrs(request_, SANDBOX_NS)), request_


# ---- the CLI against the installed operator -------------------------------------------------


def codeexec(release: Release, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KUBECONFIG": str(release.cluster.kubeconfig)}
    return subprocess.run(
        [sys.executable, "-m", "codeexec", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO_ROOT,
        timeout=600,
        check=False,
    )


@pytest.mark.cluster
def test_cli_run_double_prints_10(release: Release) -> None:
    proc = codeexec(release, "run", "examples/double.py", "--arg", "x=5", "-n", release.tenant_ns)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "10\n"
    assert ": done: Succeeded" in proc.stderr
    # Not --keep: the resource is gone once the CLI exits.
    left = release.cluster.get_json(
        "codeexecutions", "-n", release.tenant_ns, "-l", "app.kubernetes.io/created-by=codeexec-cli"
    )["items"]
    assert left == []


@pytest.mark.cluster
def test_cli_failing_program_exits_nonzero_with_the_reason(
    release: Release, tmp_path: Path
) -> None:
    program = tmp_path / "mean.py"
    program.write_text("def main(items):\n    return sum(items) / len(items)\n")
    proc = codeexec(release, "run", str(program), "--args-json", '{"items": []}', "-n",
                    release.tenant_ns)  # fmt: skip
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert "codeexec: failed: UserException: ZeroDivisionError: division by zero" in proc.stderr
    assert "Traceback" in proc.stderr


@pytest.mark.cluster
def test_cli_get_and_list_show_a_kept_execution(release: Release, tmp_path: Path) -> None:
    program = tmp_path / "greet.js"
    program.write_text("module.exports = ({ who }) => `hi ${who}`;\n")
    ran = codeexec(release, "run", str(program), "--arg", "who=there", "--keep", "-n",
                   release.tenant_ns)  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout == '"hi there"\n'
    name = next(
        line.split("/")[-1]
        for line in ran.stderr.splitlines()
        if line.startswith("codeexec: created")
    )
    got = codeexec(release, "get", name, "-n", release.tenant_ns, "-o", "json")
    assert got.returncode == 0, got.stderr
    body = json.loads(got.stdout)
    assert body["status"]["result"]["returnValue"] == "hi there"
    listed = codeexec(release, "list", "-n", release.tenant_ns)
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if line.startswith(name))
    assert row.split()[:4] == [name, "nodejs", "Succeeded", "Succeeded"]


# ---- two replicas: one leader, one standby, failover ----------------------------------------


def replicas_state(release: Release) -> tuple[str, str] | None:
    """(leader, standby) once two pods run and are ready (a standby is ready while it waits)
    and the Lease names one of them."""
    pods = [
        p
        for p in release.cluster.get_json(
            "pods",
            "-n",
            RELEASE_NS,
            "-l",
            f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/component!=gateway",
        )["items"]
        if not p["metadata"].get("deletionTimestamp") and p["status"].get("phase") == "Running"
    ]
    lease = release.cluster.get_json("lease", "-n", RELEASE_NS, FULLNAME)
    holder: str | None = (lease.get("spec") or {}).get("holderIdentity")
    ready = {
        p["metadata"]["name"]: any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in p["status"].get("conditions", [])
        )
        for p in pods
    }
    if len(pods) != 2 or holder is None or holder not in ready:
        return None
    standby = next(name for name in ready if name != holder)
    return (holder, standby) if ready[holder] and ready[standby] else None


@pytest.mark.cluster
def test_two_replicas_elect_one_leader_and_fail_over(release: Release) -> None:
    run_helm(release.helm, "upgrade", RELEASE, str(CHART), "-n", RELEASE_NS,
             "--reset-then-reuse-values", "--set", "replicas=2", cluster=release.cluster)  # fmt: skip
    leader, standby = wait_for(
        lambda: replicas_state(release), timeout=240, what="a leader and a standby"
    )
    # The standby waits on the Lease and has not started acting.
    log = release.kubectl("-n", RELEASE_NS, "logs", standby).stdout
    assert "waiting to lead" in log and "leading as" not in log
    ran = codeexec(release, "run", "examples/double.py", "--arg", "x=1", "-n", release.tenant_ns)
    assert (ran.returncode, ran.stdout) == (0, "2\n"), ran.stderr

    release.kubectl("-n", RELEASE_NS, "delete", "pod", leader, "--wait=false")

    # The old leader hands the Lease back as it shuts down; a live replica takes it and starts
    # acting. That is the standby, or the Deployment's replacement pod if it asked first: the
    # point is that exactly one live replica other than the old leader leads.
    def successor_leads() -> str | None:
        state = replicas_state(release)
        return state[0] if state is not None and state[0] != leader else None

    successor = wait_for(successor_leads, timeout=240, what="another replica to take over")
    lease = release.cluster.get_json("lease", "-n", RELEASE_NS, FULLNAME)
    assert lease["spec"]["holderIdentity"] == successor
    assert int(lease["spec"].get("leaseTransitions") or 0) >= 1
    ran = codeexec(release, "run", "examples/double.py", "--arg", "x=2", "-n", release.tenant_ns)
    assert (ran.returncode, ran.stdout) == (0, "4\n"), ran.stderr


# ---- uninstall: last, it removes the release -------------------------------------------------


# ---- the gateway, deployed by the chart -------------------------------------------------------

GATEWAY_SA = f"system:serviceaccount:{RELEASE_NS}:{FULLNAME}-gateway"
SA_GROUPS = ["system:serviceaccounts", f"system:serviceaccounts:{RELEASE_NS}"]


def proxy_post(
    release: Release, path: str, body: dict[str, Any], headers: dict[str, str]
) -> tuple[int, dict[str, Any]]:
    """POST through the API server with our kubeconfig's credentials and extra headers."""
    import asyncio

    from codeexec.kube import config as kubeconfig
    from codeexec.kube.client import Kube

    async def post() -> tuple[int, dict[str, Any]]:
        conn = kubeconfig.from_kubeconfig(str(release.cluster.kubeconfig))
        assert conn is not None
        kube = Kube(conn)
        try:
            async with kube.session.post(
                conn.server + path,
                json=body,
                headers=kube.headers(headers),
            ) as resp:
                return resp.status, await resp.json(content_type=None)
        finally:
            await kube.close()

    return asyncio.run(post())


@pytest.mark.cluster
def test_gateway_runs_the_original_usage_example(release: Release) -> None:
    body = {
        "code_b64": base64.b64encode(b"def main(x):\n    return x * 2\n").decode(),
        "language": "python",
        "arguments": {"x": 5},
    }
    path = f"/api/v1/namespaces/{RELEASE_NS}/services/{FULLNAME}-gateway:http/proxy/run"
    # POST through the API server's service proxy (the node: admitted by the gateway's
    # NetworkPolicy), with the token header RAGFlow sends; without it, 401.
    assert proxy_post(release, path, body, {})[0] == 401
    status, answer = proxy_post(release, path, body, {"X-Sandbox-Token": GATEWAY_TOKEN})
    assert status == 200 and answer["status"] == "success", answer
    assert answer["stdout"].strip() == "10"
    assert answer["exit_code"] == 0


@pytest.mark.cluster
def test_gateway_service_account_is_least_privilege(release: Release) -> None:
    c, ns = release.cluster, release.tenant_ns

    def allowed(verb: str, resource: str, namespace: str, group: str = "codeexec.io") -> bool:
        return can(c, GATEWAY_SA, SA_GROUPS, verb=verb, group=group, resource=resource,
                   namespace=namespace)  # fmt: skip

    for verb in ("create", "get", "watch", "delete"):
        assert allowed(verb, "codeexecutions", ns), verb
    assert not allowed("create", "codeexecutions", "default")
    assert not allowed("update", "codeexecutions", ns)
    assert not allowed("get", "pods", SANDBOX_NS, group="")
    assert not allowed("create", "pods/attach", SANDBOX_NS, group="")
    assert not allowed("get", "secrets", ns, group="")


@pytest.mark.cluster
def test_uninstall_removes_everything_but_the_crds(release: Release) -> None:
    manifest = run_helm(
        release.helm, "get", "manifest", RELEASE, "-n", RELEASE_NS, cluster=release.cluster
    ).stdout
    created = [doc for doc in yaml.safe_load_all(manifest) if doc]
    assert len(created) > 10
    run_helm(release.helm, "uninstall", RELEASE, "-n", RELEASE_NS, "--wait", "--timeout", "5m",
             cluster=release.cluster)  # fmt: skip

    def leftovers() -> list[str]:
        left = []
        for doc in created:
            ns = doc["metadata"].get("namespace")
            args = [doc["kind"].lower(), doc["metadata"]["name"], *(["-n", ns] if ns else [])]
            if not gone(release.cluster, *args):
                left.append("/".join(args))
        return left

    # The sandbox namespace takes its pods and the operator's NetworkPolicies with it; that
    # finishes shortly after helm returns.
    wait_for(lambda: not leftovers(), timeout=180, what="release objects to be deleted")
    assert leftovers() == []
    assert gone(release.cluster, "namespace", SANDBOX_NS)
    labelled = release.kubectl(
        "get", "clusterroles,clusterrolebindings,sandboxpools", "-l",
        f"app.kubernetes.io/instance={RELEASE}", "-o", "name",
    ).stdout  # fmt: skip
    assert labelled.strip() == ""
    for crd in (
        "codeexecutions.codeexec.io",
        "sandboxpools.codeexec.io",
        "sandboxpoolscales.codeexec.io",
    ):
        assert not gone(release.cluster, "crd", crd), f"{crd} must survive helm uninstall"


def test_helm_test_hooks_render_in_the_served_namespace(helm_bin: Path) -> None:
    docs = render(helm_bin, "operator.watchNamespaces={team-a,team-b}")
    hooks = [d for d in docs if d["metadata"].get("annotations", {}).get("helm.sh/hook") == "test"]
    kinds = {d["kind"]: d for d in hooks}
    assert set(kinds) == {"ServiceAccount", "Role", "RoleBinding", "ConfigMap", "Pod"}
    assert kinds["Role"]["metadata"]["namespace"] == "team-a"
    assert kinds["Role"]["rules"] == [
        {"apiGroups": ["codeexec.io"], "resources": ["codeexecutions"],
         "verbs": ["create", "get", "list", "watch", "delete"]}
    ]  # fmt: skip
    container = kinds["Pod"]["spec"]["containers"][0]
    assert container["command"][-1] == "team-a"
    assert container["image"] == f"codeexec.local/operator:{APP_VERSION}"
    off = render(helm_bin, "tests.enabled=false")
    assert not [d for d in off if d["metadata"].get("annotations", {}).get("helm.sh/hook")]
