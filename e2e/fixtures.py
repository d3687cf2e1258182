"""Pytest plugin: the project's local Kubernetes cluster for tests marked ``cluster``.

Fixtures:

``cluster`` (session)
    Brings the cluster up with ``e2e/cluster/up.sh`` unless its API server is already
    healthy, then yields a :class:`Cluster` (kubeconfig path, kubectl path, helpers).
    Works the same whether ``up.sh`` ran our own cluster or kind (``KIND=1``): both write
    ``$CLUSTER/kubeconfig``.
``namespace`` (function)
    A fresh namespace per test, deleted afterwards.
``kubectl`` (function)
    ``kubectl(*args, input=None, check=True)``: runs our kubectl against the cluster.

The cluster is always the one in ``$CLUSTER`` (default ``<repo>/.cluster``); a
``KUBECONFIG`` in the environment is ignored on purpose, so tests never touch another
cluster by accident.

Tests marked ``cluster_down`` run after every other test of the session (they stop the
cluster, so nothing may come after them).
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import shutil
import ssl
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
CLUSTER_SCRIPTS = REPO_ROOT / "e2e" / "cluster"

T = TypeVar("T")

# Container waiting reasons that waiting longer will not fix.
HOPELESS_WAITING_REASONS = {
    "ErrImageNeverPull",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
}


class KubectlError(AssertionError):
    """A kubectl command failed; carries its output."""

    def __init__(self, args: list[str], proc: subprocess.CompletedProcess[str]) -> None:
        self.returncode = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr
        super().__init__(
            f"kubectl {' '.join(args)} exited {proc.returncode}\n"
            f"stdout: {proc.stdout.strip()}\nstderr: {proc.stderr.strip()}"
        )


def cluster_dir() -> Path:
    return Path(os.environ.get("CLUSTER") or REPO_ROOT / ".cluster")


def pinned_versions() -> dict[str, str]:
    """KEY=value pairs of e2e/cluster/versions.env."""
    pins: dict[str, str] = {}
    for line in (CLUSTER_SCRIPTS / "versions.env").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            pins[key] = value
    return pins


def kubectl_path() -> Path:
    """Our kubectl (built at the pinned version), else one on PATH (the kind path).

    /usr/bin/kubectl on our machines is a foreign build: ours comes first.
    """
    cache = Path(os.environ.get("CODEEXEC_CACHE") or Path.home() / ".cache" / "codeexec")
    ours = cache / "bin" / f"kubernetes-{pinned_versions()['K8S_VERSION']}" / "kubectl"
    if ours.exists():
        return ours
    found = shutil.which("kubectl")
    if found is None:
        raise RuntimeError(f"no kubectl: neither {ours} nor one on PATH")
    return Path(found)


def wait_for(
    probe: Callable[[], T | None],
    *,
    timeout: float = 60,
    interval: float = 0.5,
    what: str = "condition",
) -> T:
    """Polls ``probe`` until it returns something truthy, which is returned."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@dataclass(frozen=True)
class Cluster:
    """A running cluster: where its kubeconfig and our kubectl are, and small helpers."""

    dir: Path
    kubeconfig: Path
    kubectl_path: Path

    # ---- kubectl -----------------------------------------------------------------

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        argv = [str(self.kubectl_path), "--kubeconfig", str(self.kubeconfig), *args]
        proc = subprocess.run(
            argv, input=input, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and proc.returncode != 0:
            raise KubectlError(list(args), proc)
        return proc

    def get_json(self, *args: str) -> Any:
        """``kubectl get ARGS -o json``, parsed."""
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def apply(self, manifest: dict[str, Any] | str, namespace: str | None = None) -> None:
        text = manifest if isinstance(manifest, str) else json.dumps(manifest)
        ns = ["-n", namespace] if namespace else []
        self.kubectl(*ns, "apply", "-f", "-", input=text)

    def healthy(self) -> bool:
        """API server ready and up.sh finished (it writes run/up.done as its last step)."""
        if not self.kubeconfig.exists() or not (self.dir / "run" / "up.done").exists():
            return False
        try:
            proc = self.kubectl("get", "--raw", "/readyz", check=False, timeout=10)
        except subprocess.TimeoutExpired:
            return False
        return proc.returncode == 0 and proc.stdout.strip() == "ok"

    # ---- pods --------------------------------------------------------------------

    def pod(self, namespace: str, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self.get_json("-n", namespace, "pod", name)
        return result

    def wait_pod(
        self,
        namespace: str,
        name: str,
        phases: tuple[str, ...] = ("Running",),
        timeout: float = 180,
    ) -> dict[str, Any]:
        """Waits until the pod is in one of ``phases``; returns the pod.

        Fails at once when a container is stuck for a reason that waiting cannot fix (a
        missing image, a bad container config).
        """

        def probe() -> dict[str, Any] | None:
            pod = self.pod(namespace, name)
            status = pod.get("status", {})
            for cs in status.get("containerStatuses", []) + status.get("initContainerStatuses", []):
                waiting = cs.get("state", {}).get("waiting", {})
                if waiting.get("reason") in HOPELESS_WAITING_REASONS:
                    raise AssertionError(
                        f"pod {namespace}/{name} container {cs['name']}: "
                        f"{waiting['reason']}: {waiting.get('message', '')}"
                    )
            return pod if status.get("phase") in phases else None

        try:
            return wait_for(probe, timeout=timeout, what=f"pod {namespace}/{name} in {phases}")
        except TimeoutError:
            described = self.kubectl("-n", namespace, "describe", "pod", name, check=False)
            raise TimeoutError(
                f"pod {namespace}/{name} not in {phases} after {timeout}s:\n{described.stdout}"
            ) from None

    @property
    def own_testbed(self) -> bool:
        """The project's own cluster (`make cluster-up`), which always has RuntimeClass gvisor;
        not kind."""
        return (self.dir / "containerd" / "state" / "containerd.sock").exists()

    def image_present(self, image: str) -> bool:
        """Whether the node has ``image``.

        Asks our containerd when it is there: the node's status lists new images only
        after a while. Otherwise (kind) the node's status.
        """
        socket = self.dir / "containerd" / "state" / "containerd.sock"
        if self.own_testbed:
            proc = subprocess.run(
                ["ctr", "--address", str(socket), "-n", "k8s.io", "images", "ls", "-q"],
                capture_output=True,
                text=True,
                check=False,
            )
            return image in proc.stdout.split()
        nodes = self.get_json("nodes")["items"]
        return any(
            image in entry.get("names", [])
            for node in nodes
            for entry in node.get("status", {}).get("images", [])
        )

    # ---- direct API access (for what kubectl cannot show: status codes, websockets) --

    def kubeconfig_data(self) -> dict[str, Any]:
        """Server URL and credentials of the kubeconfig's current context."""
        cfg = yaml.safe_load(self.kubeconfig.read_text())
        ctx_name = cfg["current-context"]
        ctx = next(c["context"] for c in cfg["contexts"] if c["name"] == ctx_name)
        cluster = next(c["cluster"] for c in cfg["clusters"] if c["name"] == ctx["cluster"])
        user = next(u["user"] for u in cfg["users"] if u["name"] == ctx["user"])
        return {"server": cluster["server"], "cluster": cluster, "user": user}

    @property
    def server(self) -> str:
        server: str = self.kubeconfig_data()["server"]
        return server

    def ssl_context(self) -> ssl.SSLContext:
        """TLS context with the cluster's CA and the kubeconfig's client certificate."""
        data = self.kubeconfig_data()
        cluster, user = data["cluster"], data["user"]
        ca = base64.b64decode(cluster["certificate-authority-data"]).decode()
        context = ssl.create_default_context(cadata=ca)
        with tempfile.TemporaryDirectory() as tmp:
            cert, key = Path(tmp) / "client.crt", Path(tmp) / "client.key"
            cert.write_bytes(base64.b64decode(user["client-certificate-data"]))
            key.write_bytes(base64.b64decode(user["client-key-data"]))
            context.load_cert_chain(cert, key)
        return context


def the_cluster() -> Cluster:
    d = cluster_dir()
    return Cluster(dir=d, kubeconfig=d / "kubeconfig", kubectl_path=kubectl_path())


def cluster_up() -> None:
    """Runs up.sh (honours KIND=1); output goes to the test log."""
    env = {**os.environ, "CLUSTER": str(cluster_dir())}
    subprocess.run(["bash", str(CLUSTER_SCRIPTS / "up.sh")], check=True, env=env)


def run_kubectl(*args: str, input: str | None = None, check: bool = True) -> str:
    """kubectl against the local cluster, for code outside fixtures; returns stdout."""
    return the_cluster().kubectl(*args, input=input, check=check).stdout


# ---- pytest hooks and fixtures -----------------------------------------------------------


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "cluster: needs the real local Kubernetes cluster")
    config.addinivalue_line(
        "markers", "cluster_down: stops the cluster; runs after every other test"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Stable partition: tests that stop the cluster go last.
    last = [i for i in items if i.get_closest_marker("cluster_down")]
    if last:
        items[:] = [i for i in items if not i.get_closest_marker("cluster_down")] + last


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    """The running local cluster, brought up first if its API server is not healthy."""
    if not the_cluster().healthy():
        cluster_up()
    c = the_cluster()  # kubectl may only exist after up.sh built it
    if not c.healthy():
        pytest.fail(f"cluster in {c.dir} not healthy after up.sh")
    yield c


def _namespace_name(node_name: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", node_name.lower()).strip("-")[:40].strip("-")
    return f"e2e-{slug}-{secrets.token_hex(3)}"


@pytest.fixture
def namespace(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A namespace of this test's own, removed afterwards (without waiting for it)."""
    name = _namespace_name(request.node.name)
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": name, "labels": {"codeexec.local/e2e": "true"}},
        }
    )
    # Pods need the namespace's default ServiceAccount, made by a controller.
    wait_for(
        lambda: cluster.kubectl("-n", name, "get", "sa", "default", check=False).returncode == 0,
        timeout=30,
        what=f"ServiceAccount default in {name}",
    )
    yield name
    # Pods first with no grace: a namespace deletion would wait for each pod's grace period.
    cluster.kubectl(
        "-n",
        name,
        "delete",
        "pods",
        "--all",
        "--grace-period=0",
        "--force",
        "--wait=false",
        check=False,
    )
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def kubectl(cluster: Cluster) -> Callable[..., subprocess.CompletedProcess[str]]:
    """``kubectl(*args, input=None, check=True, timeout=120)`` against the cluster."""
    return cluster.kubectl
