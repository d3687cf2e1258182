"""Where the API server is and how to authenticate to it: in-cluster or a kubeconfig.

One loader serves both our own client and Kopf's login, so the two never disagree.
"""

from __future__ import annotations

import base64
import os
import ssl
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


@dataclass(frozen=True)
class Connection:
    server: str
    ssl_context: ssl.SSLContext | bool
    token: str | None = None
    token_path: Path | None = None
    namespace: str | None = None
    # Kept so Kopf can be handed the same credentials.
    ca_data: bytes | None = None
    cert_data: bytes | None = None
    key_data: bytes | None = None
    insecure: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def bearer(self) -> str | None:
        # Projected service-account tokens rotate: read the file each time (it is tiny).
        if self.token_path is not None:
            return self.token_path.read_text().strip()
        return self.token


def _data(entry: dict[str, Any], key: str, base_dir: Path) -> bytes | None:
    if entry.get(f"{key}-data"):
        return base64.b64decode(str(entry[f"{key}-data"]))
    if entry.get(key):
        return (base_dir / os.path.expanduser(str(entry[key]))).read_bytes()
    return None


def _ssl_context(
    ca: bytes | None, cert: bytes | None, key: bytes | None, insecure: bool
) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cadata=ca.decode() if ca else None)
    if insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cert and key:
        # ssl only loads client certificates from files: use a private temporary directory.
        with tempfile.TemporaryDirectory() as tmp:
            cert_file, key_file = Path(tmp, "cert"), Path(tmp, "key")
            cert_file.write_bytes(cert)
            key_file.write_bytes(key)
            ctx.load_cert_chain(cert_file, key_file)
    return ctx


def in_cluster() -> Connection | None:
    host = os.environ.get("KUBERNETES_SERVICE_HOST")
    port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    token_path = SA_DIR / "token"
    if not host or not token_path.exists():
        return None
    ca = (SA_DIR / "ca.crt").read_bytes()
    ns_file = SA_DIR / "namespace"
    if ":" in host:
        host = f"[{host}]"
    return Connection(
        server=f"https://{host}:{port}",
        ssl_context=_ssl_context(ca, None, None, False),
        token_path=token_path,
        namespace=ns_file.read_text().strip() if ns_file.exists() else None,
        ca_data=ca,
    )


def from_kubeconfig(path: str | None = None) -> Connection | None:
    path = path or os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
    first = path.split(os.pathsep)[0]
    if not first or not os.path.exists(first):
        return None
    cfg = yaml.safe_load(Path(first).read_text()) or {}
    base_dir = Path(first).parent
    context_name = cfg.get("current-context")
    contexts = {c["name"]: c.get("context") or {} for c in cfg.get("contexts", [])}
    clusters = {c["name"]: c.get("cluster") or {} for c in cfg.get("clusters", [])}
    users = {u["name"]: u.get("user") or {} for u in cfg.get("users", [])}
    if context_name not in contexts:
        raise ValueError(f"kubeconfig {first}: current-context {context_name!r} not found")
    context = contexts[context_name]
    cluster, user = clusters[context["cluster"]], users.get(context.get("user", ""), {})
    ca = _data(cluster, "certificate-authority", base_dir)
    cert = _data(user, "client-certificate", base_dir)
    key = _data(user, "client-key", base_dir)
    insecure = bool(cluster.get("insecure-skip-tls-verify"))
    token = user.get("token")
    if not token and user.get("tokenFile"):
        token = Path(user["tokenFile"]).read_text().strip()
    return Connection(
        server=cluster["server"].rstrip("/"),
        ssl_context=_ssl_context(ca, cert, key, insecure),
        token=token,
        namespace=context.get("namespace"),
        ca_data=ca,
        cert_data=cert,
        key_data=key,
        insecure=insecure,
    )


def load() -> Connection:
    """Kubeconfig when one is named explicitly, otherwise in-cluster, otherwise ~/.kube/config."""
    explicit = os.environ.get("KUBECONFIG")
    conn = (from_kubeconfig(explicit) if explicit else None) or in_cluster() or from_kubeconfig()
    if conn is None:
        raise RuntimeError("no Kubernetes credentials: set KUBECONFIG or run in a pod")
    return conn
