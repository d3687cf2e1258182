"""Every kind of kubeconfig a user brings, used by the CLI and by the Python client against the
real cluster: client certificate, token, tokenFile relative to the kubeconfig, an exec plugin
(with renewal when the credential expires or is refused), two files merged in KUBECONFIG,
--context choosing the non-current context, proxy-url through a real HTTP CONNECT proxy
(tinyproxy) and tls-server-name.

The identities other than the client certificate are a ServiceAccount's tokens from the
TokenRequest API, allowed to use CodeExecutions in this module's namespace only.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from e2e.fixtures import Cluster, wait_for

from codeexec.client import Client
from tests.integration.conftest import OperatorProcess

pytestmark = pytest.mark.cluster

PLUGIN = Path(__file__).parents[1] / "kubeconfigs" / "exec_plugin.py"
BIN = Path(sys.executable).parent
CODE = "def main(x):\n    return x * 2\n"
SA = "kubeconfig-matrix"


def rfc3339(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Proxy:
    """tinyproxy, started by the test with its own configuration; its log names each CONNECT."""

    port: int
    log: Path
    proc: subprocess.Popen[bytes]

    def connects(self) -> list[str]:
        return [ln for ln in self.log.read_text().splitlines() if "CONNECT " in ln]


@dataclass
class Bed:
    dir: Path
    namespace: str
    admin: dict[str, Any]  # the cluster's own kubeconfig (client certificate)
    token: str  # the ServiceAccount's, from the TokenRequest API
    proxy: Proxy
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def server(self) -> str:
        return str(self.admin["clusters"][0]["cluster"]["server"])

    @property
    def ca_data(self) -> str:
        return str(self.admin["clusters"][0]["cluster"]["certificate-authority-data"])

    def write(self, name: str, doc: dict[str, Any]) -> Path:
        path = self.dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(doc))
        path.chmod(0o600)
        return path

    def config(
        self,
        user: dict[str, Any],
        *,
        cluster: dict[str, Any] | None = None,
        name: str = "matrix",
    ) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": name,
                    "cluster": cluster
                    or {"server": self.server, "certificate-authority-data": self.ca_data},
                }
            ],
            "users": [{"name": name, "user": user}],
            "contexts": [
                {
                    "name": name,
                    "context": {"cluster": name, "user": name, "namespace": self.namespace},
                }
            ],
            "current-context": name,
        }

    def exec_user(self, state: Path, *credentials: str) -> dict[str, Any]:
        state.mkdir(parents=True, exist_ok=True)
        (state / "credentials").write_text("\n".join(credentials) + "\n")
        (state / "calls").unlink(missing_ok=True)
        return {
            "exec": {
                "apiVersion": "client.authentication.k8s.io/v1",
                "command": sys.executable,
                "args": [str(PLUGIN), str(state)],
                "interactiveMode": "Never",
            }
        }


def start_proxy(workdir: Path) -> Proxy:
    if shutil.which("tinyproxy") is None:
        pytest.fail("tinyproxy is missing: run `make tools` (it installs Debian's package)")
    port = free_port()
    conf = workdir / "tinyproxy.conf"
    # No ConnectPort line: CONNECT to any port (the API server listens on 16443).
    conf.write_text(
        f"Port {port}\nListen 127.0.0.1\nAllow 127.0.0.1\nTimeout 600\nLogLevel Connect\n"
        "MaxClients 100\n"
    )
    log = workdir / "tinyproxy.log"
    out = log.open("wb")
    proc = subprocess.Popen(["tinyproxy", "-d", "-c", str(conf)], stdout=out, stderr=out)

    def listening() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"tinyproxy exited: {log.read_text()}")
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    wait_for(listening, timeout=30, what="tinyproxy listening")
    return Proxy(port, log, proc)


@pytest.fixture(scope="module")
def bed(
    operator: OperatorProcess, cluster: Cluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Bed]:
    ns = f"e2e-kubeconfigs-{secrets.token_hex(3)}"
    cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    cluster.kubectl("-n", ns, "create", "serviceaccount", SA)
    cluster.kubectl(
        "-n",
        ns,
        "create",
        "role",
        SA,
        "--verb=get,list,watch,create,delete",
        "--resource=codeexecutions.codeexec.io",
    )
    cluster.kubectl(
        "-n", ns, "create", "rolebinding", SA, f"--role={SA}", f"--serviceaccount={ns}:{SA}"
    )
    token = cluster.kubectl("-n", ns, "create", "token", SA, "--duration=2h").stdout.strip()
    workdir = tmp_path_factory.mktemp("kubeconfigs")
    proxy = start_proxy(workdir)
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    try:
        yield Bed(workdir, ns, admin, token, proxy)
    finally:
        proxy.proc.terminate()
        proxy.proc.wait(timeout=30)
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


# --- the matrix -----------------------------------------------------------------------------------


@dataclass
class Case:
    """How to point a client at the cluster: --kubeconfig/--context, or KUBECONFIG."""

    kubeconfig: str | None = None
    context: str | None = None
    env_kubeconfig: str | None = None
    check: Callable[[], None] = lambda: None

    def cli_args(self) -> list[str]:
        args = ["--kubeconfig", self.kubeconfig] if self.kubeconfig else []
        return args + (["--context", self.context] if self.context else [])

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
        if self.env_kubeconfig:
            env["KUBECONFIG"] = self.env_kubeconfig
        return env


def client_cert(bed: Bed) -> Case:
    return Case(kubeconfig=str(bed.write("cert/config", bed.admin)))


def token(bed: Bed) -> Case:
    return Case(kubeconfig=str(bed.write("token/config", bed.config({"token": bed.token}))))


def token_file(bed: Bed) -> Case:
    # Relative to the kubeconfig's directory, not to where the command runs.
    (bed.dir / "tokenfile" / "secrets").mkdir(parents=True, exist_ok=True)
    (bed.dir / "tokenfile" / "secrets" / "token").write_text(bed.token + "\n")
    path = bed.write("tokenfile/config", bed.config({"tokenFile": "secrets/token"}))
    return Case(kubeconfig=str(path))


def exec_plugin(bed: Bed) -> Case:
    later = rfc3339(datetime.now(UTC) + timedelta(hours=1))
    user = bed.exec_user(bed.dir / "exec" / "state", f"{bed.token} {later}")
    return Case(kubeconfig=str(bed.write("exec/config", bed.config(user))))


def merged(bed: Bed) -> Case:
    # The first file has the cluster and the context, the second the user they name.
    full = bed.config({"token": bed.token})
    first = {**full, "users": []}
    second = {"apiVersion": "v1", "kind": "Config", "users": full["users"]}
    a, b = bed.write("merged/a", first), bed.write("merged/b", second)
    return Case(env_kubeconfig=f"{a}{os.pathsep}{b}")


def other_context(bed: Bed) -> Case:
    good = bed.config({"token": bed.token}, name="good")
    broken = bed.config(
        {"token": "nothing"}, cluster={"server": "https://127.0.0.1:1"}, name="broken"
    )
    doc = {
        **good,
        "clusters": good["clusters"] + broken["clusters"],
        "users": good["users"] + broken["users"],
        "contexts": good["contexts"] + broken["contexts"],
        "current-context": "broken",
    }
    return Case(kubeconfig=str(bed.write("contexts/config", doc)), context="good")


def proxy_url(bed: Bed) -> Case:
    cluster = {
        "server": bed.server,
        "certificate-authority-data": bed.ca_data,
        "proxy-url": f"http://127.0.0.1:{bed.proxy.port}",
    }
    path = bed.write("proxy/config", bed.config({"token": bed.token}, cluster=cluster))
    target = urlsplit(bed.server).netloc
    before = len(bed.proxy.connects())

    def went_through_the_proxy() -> None:
        assert any(f"CONNECT {target}" in ln for ln in bed.proxy.connects()[before:])

    return Case(kubeconfig=str(path), check=went_through_the_proxy)


def tls_server_name(bed: Bed) -> Case:
    # 127.0.0.2 reaches the same API server (it listens on every address) but is not among
    # its certificate's names (e2e/cluster/pki.sh); `kubernetes` is.
    parts = urlsplit(bed.server)
    if parts.hostname != "127.0.0.1":
        pytest.skip("needs the local cluster's API server on 127.0.0.1")
    cluster = {
        "server": f"https://127.0.0.2:{parts.port}",
        "certificate-authority-data": bed.ca_data,
        "tls-server-name": "kubernetes",
    }
    return Case(
        kubeconfig=str(bed.write("tls/config", bed.config({"token": bed.token}, cluster=cluster)))
    )


CASES = {
    "client-certificate": client_cert,
    "token": token,
    "token-file-relative": token_file,
    "exec-plugin": exec_plugin,
    "two-files-merged": merged,
    "non-current-context": other_context,
    "proxy-url": proxy_url,
    "tls-server-name": tls_server_name,
}


def cli(
    case: Case,
    *args: str,
    stdin: str | None = None,
    cwd: Path | None = None,
    program: str = "codeexec",
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / program), *args, *case.cli_args()],
        input=stdin,
        capture_output=True,
        text=True,
        env=case.env(),
        cwd=cwd or "/",
        timeout=300,
    )


@pytest.mark.parametrize("kind", list(CASES))
def test_the_cli_runs_code_with_every_kind_of_kubeconfig(bed: Bed, kind: str) -> None:
    case = CASES[kind](bed)
    proc = cli(case, "run", "-", "-n", bed.namespace, "--arg", "x=21", "-q", stdin=CODE)
    assert (proc.returncode, proc.stdout) == (0, "42\n"), proc.stderr
    case.check()


@pytest.mark.parametrize("kind", list(CASES))
async def test_the_python_client_runs_code_with_every_kind_of_kubeconfig(
    bed: Bed, kind: str
) -> None:
    case = CASES[kind](bed)
    saved = os.environ.pop("KUBECONFIG", None)
    if case.env_kubeconfig:
        os.environ["KUBECONFIG"] = case.env_kubeconfig
    try:
        async with Client(
            namespace=bed.namespace, kubeconfig=case.kubeconfig, context=case.context
        ) as cx:
            done = await cx.run(CODE, arguments={"x": 21}, wait_timeout=240)
    finally:
        os.environ.pop("KUBECONFIG", None)
        if saved is not None:
            os.environ["KUBECONFIG"] = saved
    assert done.status.result is not None and done.status.result.return_value == 42
    case.check()


def test_the_environments_https_proxy_carries_the_cli_unless_no_proxy_names_the_server(
    bed: Bed,
) -> None:
    """Without a proxy-url, HTTPS_PROXY and NO_PROXY decide, as for kubectl (read once per
    session: kube.client.env_proxy), through the real tinyproxy."""
    case = token(bed)
    parts = urlsplit(bed.server)
    env = {k: v for k, v in case.env().items() if k.lower() not in ("https_proxy", "no_proxy")}
    for no_proxy, through in (("", True), (parts.hostname or "", False)):
        before = len(bed.proxy.connects())
        proc = subprocess.run(
            [
                str(BIN / "codeexec"),
                "run",
                "-",
                "-n",
                bed.namespace,
                "--arg",
                "x=21",
                "-q",
                *case.cli_args(),
            ],
            input=CODE,
            capture_output=True,
            text=True,
            env={**env, "HTTPS_PROXY": f"http://127.0.0.1:{bed.proxy.port}", "NO_PROXY": no_proxy},
            cwd="/",
            timeout=300,
        )
        assert (proc.returncode, proc.stdout) == (0, "42\n"), proc.stderr
        went = any(f"CONNECT {parts.netloc}" in ln for ln in bed.proxy.connects()[before:])
        assert went is through, (no_proxy, bed.proxy.connects()[before:])


def test_without_tls_server_name_the_mismatched_address_is_refused(bed: Bed) -> None:
    """The tls-server-name case above proves something: the same address without it fails."""
    case = tls_server_name(bed)
    assert case.kubeconfig is not None
    doc = yaml.safe_load(Path(case.kubeconfig).read_text())
    del doc["clusters"][0]["cluster"]["tls-server-name"]
    plain = Case(kubeconfig=str(bed.write("tls/no-name", doc)))
    proc = cli(plain, "list", "-n", bed.namespace)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "certificate" in proc.stderr.lower()


def test_the_exec_credential_is_renewed_when_refused_and_when_expired(bed: Bed) -> None:
    """First credential: refused by the API server (401) -> the plugin runs again; second: a
    valid token whose expirationTimestamp has passed -> renewed before use; third: kept."""
    past = rfc3339(datetime.now(UTC) - timedelta(minutes=1))
    later = rfc3339(datetime.now(UTC) + timedelta(hours=1))
    state = bed.dir / "renew" / "state"
    user = bed.exec_user(
        state, f"not-a-token {later}", f"{bed.token} {past}", f"{bed.token} {later}"
    )
    case = Case(kubeconfig=str(bed.write("renew/config", bed.config(user))))
    proc = cli(case, "run", "-", "-n", bed.namespace, "--arg", "x=2", "-q", stdin=CODE)
    assert (proc.returncode, proc.stdout) == (0, "4\n"), proc.stderr
    calls = (state / "calls").read_text().splitlines()
    assert len(calls) == 3  # the third credential served every later request
    assert '"kind": "ExecCredential"' in calls[0]


def test_kubectl_runs_the_cli_as_a_plugin(bed: Bed, cluster: Cluster) -> None:
    case = client_cert(bed)
    env = case.env()
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    proc = subprocess.run(
        [
            str(cluster.kubectl_path),
            "codeexec",
            "run",
            "-",
            "-n",
            bed.namespace,
            "--arg",
            "x=4",
            "-q",
            *case.cli_args(),
        ],
        input=CODE,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert (proc.returncode, proc.stdout) == (0, "8\n"), proc.stderr


def test_a_wrong_context_is_a_usage_of_the_kubeconfig_error(bed: Bed) -> None:
    case = other_context(bed)
    case.context = "nope"
    proc = cli(case, "list", "-n", bed.namespace)
    assert proc.returncode == 3
    assert "context 'nope' not found (contexts: broken, good)" in proc.stderr
