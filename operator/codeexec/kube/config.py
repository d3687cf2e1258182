"""Where the API server is and how to authenticate to it: in-cluster or a kubeconfig.

Kubeconfig files are read by `kubernetes_asyncio`'s loader (merged `KUBECONFIG` lists,
contexts, exec credential plugins, auth-provider/OIDC, tokenFile and certificate paths relative
to the file that names them, proxy-url, tls-server-name); this module turns its answer into one
`Connection` that our REST client, the attach session and Kopf's login share, and keeps its
credentials fresh (an expired exec credential is renewed before use, a 401 renews it once).
"""

from __future__ import annotations

import asyncio
import os
import ssl
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
DEFAULT_KUBECONFIG = "~/.kube/config"
# Renew an exec credential this long before its expirationTimestamp: a request signed just
# before expiry must still arrive in time (client-go renews at expiry and relies on the 401
# retry; we do both).
EXPIRY_MARGIN = timedelta(seconds=10)
# aiohttp speaks HTTP CONNECT to http:// and https:// proxies; SOCKS needs another library.
PROXY_SCHEMES = ("http://", "https://")

_T = TypeVar("_T")


class ConfigError(ValueError):
    """A kubeconfig that cannot be used, with what to do about it."""


class Credentials:
    """No credentials (client certificates, if any, are in the TLS context)."""

    def current(self) -> str | None:
        """The Authorization header value as of now, without renewing anything."""
        return None

    async def authorization(self) -> str | None:
        """The Authorization header value to send now, renewed first if it expired."""
        return self.current()

    async def refresh(self) -> bool:
        """After a 401: renew the credential; True if there is a new one worth a retry."""
        return False

    @property
    def expiry(self) -> datetime | None:
        return None


@dataclass
class StaticToken(Credentials):
    token: str

    def current(self) -> str | None:
        return f"Bearer {self.token}"


@dataclass
class TokenFile(Credentials):
    """A token read from a file on each use: projected service-account tokens rotate."""

    path: Path
    _last: str | None = None

    def current(self) -> str | None:
        self._last = self.path.read_text().strip()
        return f"Bearer {self._last}" if self._last else None

    async def refresh(self) -> bool:
        before = self._last
        return self.current() is not None and self._last != before


@dataclass(frozen=True)
class Connection:
    server: str
    ssl_context: ssl.SSLContext
    credentials: Credentials = field(default_factory=Credentials)
    namespace: str | None = None
    # http(s) proxy from the kubeconfig's proxy-url; None means HTTPS_PROXY/NO_PROXY decide.
    proxy: str | None = None
    # The name to verify the server's certificate against (kubeconfig tls-server-name).
    tls_server_name: str | None = None
    context: str | None = None
    # Kept so Kopf can be handed the same credentials.
    ca_data: bytes | None = None
    cert_data: bytes | None = None
    key_data: bytes | None = None
    insecure: bool = False

    def bearer(self) -> str | None:
        """The current token without its scheme (for code that wants only the token)."""
        value = self.credentials.current()
        if value is None:
            return None
        scheme, _, token = value.partition(" ")
        return token if scheme == "Bearer" else None

    async def authorization(self) -> str | None:
        return await self.credentials.authorization()

    async def refresh(self) -> bool:
        return await self.credentials.refresh()


def _ssl_context(
    ca: bytes | None, cert: str | None, key: str | None, insecure: bool
) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cadata=ca.decode() if ca else None)
    if insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cert and key:
        ctx.load_cert_chain(cert, key)
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
        credentials=TokenFile(token_path),
        namespace=ns_file.read_text().strip() if ns_file.exists() else None,
        ca_data=ca,
    )


def _run_blocking(make: Callable[[], Awaitable[_T]]) -> _T:
    """Runs a coroutine to completion from synchronous code, even inside a running loop.

    Loading a kubeconfig may run an exec plugin (a subprocess); kubectl blocks on it too. It
    runs on a private loop in a helper thread, so a caller inside an event loop works as well.
    """
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            box["value"] = asyncio.run(make())  # type: ignore[arg-type]
        except BaseException as err:  # handed to the caller below
            box["error"] = err

    thread = threading.Thread(target=work, name="kubeconfig-load")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]


class KubeconfigCredentials(Credentials):
    """Whatever the kubeconfig's user says, kept fresh by the library's loader."""

    def __init__(self, loader: Any, user: dict[str, Any], ssl_context: ssl.SSLContext) -> None:
        from kubernetes_asyncio.client import Configuration

        self._loader = loader
        self._ssl = ssl_context
        self._configuration = Configuration
        self._dynamic = "exec" in user or "auth-provider" in user or "tokenFile" in user
        self._exec = "exec" in user
        self._lock = asyncio.Lock()
        self._value: str | None = None
        self._cert: tuple[str | None, str | None] = (None, None)

    def adopt(self, cfg: Any) -> None:
        """Takes the loader's answer: the header value and, from exec, a client certificate."""
        value = cfg.api_key.get("BearerToken")
        # A tokenFile's trailing newline is not part of the token.
        self._value = str(value).strip() if value else None
        cert = (cfg.cert_file, cfg.key_file)
        if cert != self._cert and cert[0] and cert[1]:
            # Affects the connections opened from now on (the SSL context is shared).
            self._ssl.load_cert_chain(cert[0], cert[1])
        self._cert = cert

    def current(self) -> str | None:
        return self._value

    @property
    def expiry(self) -> datetime | None:
        expiry = getattr(self._loader, "exec_plugin_expiry", None) if self._exec else None
        if isinstance(expiry, datetime) and expiry.tzinfo is None:
            expiry = expiry.replace(tzinfo=UTC)
        return expiry if isinstance(expiry, datetime) else None

    def _expired(self) -> bool:
        expiry = self.expiry
        return expiry is not None and expiry - EXPIRY_MARGIN <= datetime.now(UTC)

    async def _reload(self) -> None:
        cfg = self._configuration()
        await self._loader.load_and_set(cfg)
        self.adopt(cfg)

    async def authorization(self) -> str | None:
        if self._expired():
            async with self._lock:
                if self._expired():  # another request may have renewed it meanwhile
                    self._forget_exec()
                    await self._reload()
        return self._value

    def _forget_exec(self) -> None:
        # The loader re-runs the plugin when it holds no expiry (its own cache key).
        if self._exec and hasattr(self._loader, "exec_plugin_expiry"):
            del self._loader.exec_plugin_expiry

    async def refresh(self) -> bool:
        if not self._dynamic:
            return False
        async with self._lock:
            before = self._value
            self._forget_exec()
            await self._reload()
            return self._value is not None and (self._value != before or self._exec)


def _plain(node: Any) -> dict[str, Any]:
    """The merger wraps entries in nodes that remember their file; we only read them."""
    value = getattr(node, "value", node)
    return value if isinstance(value, dict) else {}


def _resolve_exec_commands(users: list[Any]) -> None:
    """As client-go does: an exec command with a path separator that is not absolute is
    relative to the kubeconfig file that names it (`./bin/get-token`); a bare name is looked
    up on PATH."""
    for node in users:
        source = getattr(node, "path", None)
        plugin = (_plain(node).get("user") or {}).get("exec")
        command = str((plugin or {}).get("command") or "")
        if plugin and source and os.sep in command and not os.path.isabs(command):
            plugin["command"] = os.path.join(os.path.dirname(os.path.abspath(source)), command)


def _read(path: str | None) -> bytes | None:
    return Path(path).read_bytes() if path else None


def kubeconfig_paths(path: str | None = None) -> str:
    """The kubeconfig list as kubectl reads it: --kubeconfig, else $KUBECONFIG, else ~/.kube."""
    return path or os.environ.get("KUBECONFIG") or os.path.expanduser(DEFAULT_KUBECONFIG)


def from_kubeconfig(path: str | None = None, context: str | None = None) -> Connection | None:
    """The connection a kubeconfig describes, or None when none of its files exist.

    `path` may list several files (os.pathsep); they merge as kubectl merges them (the first
    file to define a name wins; current-context from the first file that sets it).
    """
    from kubernetes_asyncio.client import Configuration
    from kubernetes_asyncio.config.config_exception import ConfigException
    from kubernetes_asyncio.config.kube_config import KubeConfigLoader, KubeConfigMerger

    paths = kubeconfig_paths(path)
    files = [os.path.expanduser(p) for p in paths.split(os.pathsep) if p]
    if not any(os.path.exists(f) for f in files):
        return None
    merger = KubeConfigMerger(os.pathsep.join(files))
    merged = merger.config
    if merged is None:
        return None
    _resolve_exec_commands(merged.value.get("users") or [])
    contexts = {_plain(c).get("name"): _plain(c) for c in merged.value.get("contexts") or []}
    # kubectl: the first file that sets current-context wins (the merger keeps the last).
    current = next(
        (
            (merger.config_files[p] or {}).get("current-context")
            for p in merger.paths
            if (merger.config_files[p] or {}).get("current-context")
        ),
        None,
    )
    name = context or current
    if not name:
        raise ConfigError(f"kubeconfig {paths}: no current-context; choose one with --context")
    if name not in contexts:
        known = ", ".join(sorted(str(c) for c in contexts)) or "none"
        raise ConfigError(f"kubeconfig {paths}: context {name!r} not found (contexts: {known})")
    try:
        loader = KubeConfigLoader(config_dict=merged, active_context=name, config_base_path=None)
        user_name = (contexts[name].get("context") or {}).get("user")
        users = [_plain(u) for u in merged.value.get("users") or []]
        user = next((u.get("user") or {} for u in users if u.get("name") == user_name), {})
        cfg = Configuration()
        _run_blocking(lambda: loader.load_and_set(cfg))
    except ConfigException as err:
        raise ConfigError(f"kubeconfig {paths}, context {name!r}: {err}") from err
    if cfg.proxy and not str(cfg.proxy).startswith(PROXY_SCHEMES):
        raise ConfigError(f"kubeconfig context {name!r}: proxy-url {cfg.proxy!r} is not http(s)")
    ca = _read(cfg.ssl_ca_cert)
    insecure = not cfg.verify_ssl
    ctx = _ssl_context(ca, None, None, insecure)
    credentials = KubeconfigCredentials(loader, dict(user), ctx)
    credentials.adopt(cfg)
    namespace = (loader.current_context or {}).get("context", {}).get("namespace")
    return Connection(
        server=str(cfg.host).rstrip("/"),
        ssl_context=ctx,
        credentials=credentials,
        namespace=namespace,
        proxy=cfg.proxy or None,
        tls_server_name=cfg.tls_server_name or None,
        context=name,
        ca_data=ca,
        cert_data=_read(cfg.cert_file),
        key_data=_read(cfg.key_file),
        insecure=insecure,
    )


def load(kubeconfig: str | None = None, context: str | None = None) -> Connection:
    """kubectl's order: an explicit kubeconfig or context, else $KUBECONFIG, else in-cluster
    (the operator's own pod), else ~/.kube/config."""
    conn: Connection | None
    if kubeconfig or context or os.environ.get("KUBECONFIG"):
        conn = from_kubeconfig(kubeconfig, context)
        if conn is None:
            raise ConfigError(f"no kubeconfig file found at {kubeconfig_paths(kubeconfig)}")
        return conn
    conn = in_cluster() or from_kubeconfig()
    if conn is None:
        raise ConfigError("no Kubernetes credentials: set KUBECONFIG or run in a pod")
    return conn
