"""The operator, running as a real process against the real local cluster.

Session-wide: the CRDs, the sandbox namespace, default pools for both languages and one
operator process. Tests that kill the operator use `operator.restart()`.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from e2e.fixtures import REPO_ROOT, Cluster, wait_for

from codeexec.client import Client
from codeexec.kube import config
from codeexec.kube.client import Kube

SANDBOX_NS = "codeexec-sandbox"
# IMAGE_TAG as in e2e/cluster/images.sh: a change to the sandbox images can be tried under its
# own tag without disturbing other users of the cluster.
_TAG = os.environ.get("IMAGE_TAG", "dev")
PYTHON_IMAGE = f"codeexec.local/python-sandbox:{_TAG}"
NODEJS_IMAGE = f"codeexec.local/nodejs-sandbox:{_TAG}"
METRICS_PORT = 18080
# Pools of this suite's operator; other installations on the cluster (the chart's) use others.
INSTANCE_LABEL, INSTANCE = "codeexec.io/instance", "tests"
# The suite operator's S3 credentials; the test's S3 server (on 127.0.0.1 only) takes them.
S3_ACCESS_KEY_ID = "codeexec-tests"
S3_SECRET_ACCESS_KEY = secrets.token_hex(16)


def pool_manifest(name: str, language: str, **spec: Any) -> dict[str, Any]:
    image = PYTHON_IMAGE if language == "python" else NODEJS_IMAGE
    return {
        "apiVersion": "codeexec.io/v1alpha1",
        "kind": "SandboxPool",
        "metadata": {"name": name, "labels": {INSTANCE_LABEL: INSTANCE}},
        "spec": {
            "language": language,
            "image": image,
            "resources": {"limits": {"cpu": "1", "memory": "256Mi"}},
            **spec,
        },
    }


class OperatorProcess:
    def __init__(self, cluster: Cluster, log_path: Path) -> None:
        self.cluster = cluster
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, failpoints: str = "") -> None:
        env = {
            **os.environ,
            "KUBECONFIG": str(self.cluster.kubeconfig),
            "CODEEXEC_SANDBOX_NAMESPACE": SANDBOX_NS,
            "CODEEXEC_METRICS_PORT": str(METRICS_PORT),
            "CODEEXEC_FAILPOINTS": failpoints,
            "CODEEXEC_POOL_SELECTOR": f"{INSTANCE_LABEL}={INSTANCE}",
            # Only this suite's namespaces: other installations may share the cluster.
            "CODEEXEC_NAMESPACES": "e2e-*,outcomes-*",
            # spec.files may name Secrets labelled codeexec.io/input-file (test_files_artifacts).
            "CODEEXEC_FILES_FROM_SECRETS": "true",
            # The S3 artifact store's credentials (test_files_artifacts starts the server).
            "CODEEXEC_S3_ACCESS_KEY_ID": S3_ACCESS_KEY_ID,
            "CODEEXEC_S3_SECRET_ACCESS_KEY": S3_SECRET_ACCESS_KEY,
        }
        log = self.log_path.open("ab")
        log.write(f"\n=== operator start failpoints={failpoints!r} ===\n".encode())
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "codeexec", "operator"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO_ROOT,
        )
        wait_for(self.ready, timeout=60, what="operator readiness")

    def ready(self) -> bool:
        import urllib.request

        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError(f"operator exited; see {self.log_path}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{METRICS_PORT}/readyz", timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def wait_dead(self, timeout: float = 120) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()

    def restart(self, failpoints: str = "") -> None:
        self.kill()
        self.start(failpoints)


def pool_ready(cluster: Cluster, name: str, size: int) -> bool:
    pool = cluster.get_json("sandboxpool", name)
    return bool(pool.get("status", {}).get("ready", 0) >= size)


@pytest.fixture(scope="session")
def installed(cluster: Cluster) -> Cluster:
    """CRDs, the sandbox namespace (Pod Security `restricted`) and the default pools."""
    for crd in sorted((REPO_ROOT / "crds").glob("*.yaml")):
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crd))
    for crd_name in (
        "codeexecutions.codeexec.io",
        "sandboxpools.codeexec.io",
        "sandboxpoolscales.codeexec.io",
    ):
        cluster.kubectl("wait", "--for=condition=Established", f"crd/{crd_name}", "--timeout=60s")
    namespace = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": SANDBOX_NS,
            "labels": {
                "pod-security.kubernetes.io/enforce": "restricted",
                "pod-security.kubernetes.io/enforce-version": "latest",
            },
        },
    }
    cluster.apply(namespace)
    for pool in (
        # A low process limit makes a fork bomb hit it long before the memory limit.
        pool_manifest("python", "python", default=True, size=3, maxProcesses=16),
        pool_manifest("nodejs", "nodejs", default=True, size=2),
    ):
        cluster.apply(pool)
    return cluster


@pytest.fixture(scope="session")
def operator(installed: Cluster) -> Iterator[OperatorProcess]:
    log_dir = installed.dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    op = OperatorProcess(installed, log_dir / "operator-tests.log")
    op.start()
    wait_for(lambda: pool_ready(installed, "python", 3), timeout=180, what="python pool ready")
    wait_for(lambda: pool_ready(installed, "nodejs", 2), timeout=180, what="nodejs pool ready")
    yield op
    op.stop()


# The test bed's RuntimeClass for gVisor (e2e/cluster/configs.sh) and the suite's pools under it:
# the default pools' twins, differing only in runtimeClassName.
GVISOR = "gvisor"
GVISOR_POOLS = {"python": "python-gvisor", "nodejs": "nodejs-gvisor"}
# The pool each runtime's Python and Node.js executions go to.
RUNTIME_POOLS = {"runc": {"python": "python", "nodejs": "nodejs"}, "gvisor": GVISOR_POOLS}
RUNTIMES = tuple(RUNTIME_POOLS)


@pytest.fixture(scope="session")
def gvisor_pools(operator: OperatorProcess, cluster: Cluster) -> Iterator[dict[str, str]]:
    """Pools like the default ones under RuntimeClass gvisor; made on first use, for the session."""
    if os.environ.get("KIND") == "1":
        pytest.skip("kind nodes have no gVisor runtime (README: enabling gVisor on kind)")
    found = cluster.kubectl("get", "runtimeclass", GVISOR, "-o", "name", check=False)
    assert found.returncode == 0, f"the test bed has no RuntimeClass {GVISOR}: {found.stderr}"
    # A module hands these pools all its cases at once (45 in test_outcomes_e2e) and waits up
    # to 600 s for them. A gVisor pod warms slowly (its imports go through the gofer): on a
    # 2-vCPU AMD EPYC VM (2026-12-01) the last of them waited past the default 120 s queue
    # timeout and ended PoolExhausted, which is what that timeout is for, not what is tested.
    queue = {"queueTimeoutSeconds": 600}
    for pool in (
        pool_manifest(
            GVISOR_POOLS["python"],
            "python",
            size=3,
            maxProcesses=16,
            runtimeClassName=GVISOR,
            **queue,
        ),
        pool_manifest(GVISOR_POOLS["nodejs"], "nodejs", size=2, runtimeClassName=GVISOR, **queue),
    ):
        cluster.apply(pool)
    wait_for(lambda: pool_ready(cluster, GVISOR_POOLS["python"], 3), timeout=300, what="gVisor py")
    wait_for(lambda: pool_ready(cluster, GVISOR_POOLS["nodejs"], 2), timeout=300, what="gVisor js")
    yield GVISOR_POOLS
    for name in GVISOR_POOLS.values():
        cluster.kubectl("delete", "sandboxpool", name, "--ignore-not-found", check=False)


@pytest.fixture
def runtime_pools(request: pytest.FixtureRequest, runtime: str) -> dict[str, str]:
    """The pools of the runtime a test is parametrised with (`runtime`: runc or gvisor)."""
    if runtime == "gvisor":
        request.getfixturevalue("gvisor_pools")
    return RUNTIME_POOLS[runtime]


@pytest.fixture
async def cx(operator: OperatorProcess, namespace: str, cluster: Cluster) -> AsyncIterator[Client]:
    os.environ["KUBECONFIG"] = str(cluster.kubeconfig)
    client = Client(
        Kube(config.from_kubeconfig(str(cluster.kubeconfig)) or config.load()), namespace
    )
    yield client
    await client.kube.close()


def dump(obj: Any) -> str:
    return yaml.safe_dump(json.loads(json.dumps(obj)), sort_keys=False)


def sandbox_pods(cluster: Cluster) -> list[dict[str, Any]]:
    return list(cluster.get_json("pods", "-n", SANDBOX_NS).get("items", []))


def wait_pool_full(cluster: Cluster, name: str, size: int, timeout: float = 180) -> None:
    wait_for(lambda: pool_ready(cluster, name, size), timeout=timeout, what=f"pool {name} full")


def now() -> float:
    return time.time()


def metric(name: str, **labels: str) -> float:
    """One sample from the suite operator's /metrics (0 when the series does not exist yet)."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=5) as r:
        text = r.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0
