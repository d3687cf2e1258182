"""The gateway's configuration: flags, with environment defaults where a chart wants them."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from codeexec.api.models import Language

ENV_PREFIX = "CODEEXEC_GATEWAY_"


class ConfigError(ValueError):
    """The flags or the environment do not make a usable configuration."""


@dataclass(frozen=True)
class GatewayConfig:
    namespace: str = "default"
    host: str = "0.0.0.0"
    port: int = 8090
    # Requests being executed at once; past it the original's "too many requests" at once.
    max_concurrency: int = 16
    # A bearer token, or a file holding one (re-read when it changes, so Secrets can rotate).
    token: str | None = None
    token_file: Path | None = None
    # The code is at most 128 KiB (175 KiB as base64); the arguments end up in etcd.
    max_request_bytes: int = 512 * 1024
    static_check: bool = False
    # How long one request waits for the terminal status (queueing for a pod included).
    wait_timeout: float = 300.0
    # The wall-clock limit of the code; the original's TIMEOUT was 10 s.
    timeout_seconds: int = 10
    pools: Mapping[Language, str] = field(default_factory=dict)
    # Which SandboxPools /healthz looks at when several installations share a cluster
    # (the operator's CODEEXEC_POOL_SELECTOR, e.g. `codeexec.io/instance=codeexec`).
    pool_selector: str = ""
    # Left on each CodeExecution in case the gateway dies before it deletes it.
    ttl_seconds_after_finished: int = 300
    keep_failure_stdout: bool = False
    health_cache_seconds: float = 2.0
    # The HTTP status of "too many requests" (exit_code -429 either way): 429 as a current
    # RAGFlow's executor answers, or 200 for clients of the original.
    busy_status: int = 429
    # Serve without a token, on the loopback interface only (a developer's machine).
    insecure_local_only: bool = False
    # Deadlines, so that no connection or concurrency slot is held by a client that never
    # finishes: the request line and headers (aiohttp closes a connection that has not sent a
    # complete request this long after it opened or went idle), the body (512 KiB arrives in
    # well under a second on any real link), and the whole request once it holds a slot
    # (the wait for the result plus room for the create and the delete).
    header_timeout: float = 15.0
    body_timeout: float = 30.0
    request_slack_seconds: float = 30.0

    def __post_init__(self) -> None:
        if self.max_concurrency < 1:
            raise ConfigError("--max-concurrency must be at least 1")
        if self.max_request_bytes < 1024:
            raise ConfigError("--max-request-bytes must be at least 1024")
        if self.wait_timeout <= 0:
            raise ConfigError("--wait-timeout must be positive")
        if not 1 <= self.timeout_seconds <= 3600:
            raise ConfigError("--timeout-seconds must be between 1 and 3600")
        if self.token is not None and not self.token.strip():
            raise ConfigError("the bearer token is empty")
        if not self.namespace:
            raise ConfigError("--namespace is empty")
        if self.busy_status not in (200, 429):
            raise ConfigError("--busy-status must be 429 or 200")
        if self.header_timeout <= 0 or self.body_timeout <= 0:
            raise ConfigError("--header-timeout and --body-timeout must be positive")

    @property
    def authenticated(self) -> bool:
        return self.token is not None or self.token_file is not None

    @property
    def request_timeout(self) -> float:
        return self.wait_timeout + self.request_slack_seconds

    def refusal(self) -> str | None:
        """Why this configuration must not serve, if it must not: secure by default."""
        if not self.authenticated and not self.insecure_local_only:
            return (
                "refusing to start without a token: anyone who can reach the gateway could run "
                f"code. Set --token-file (a mounted Secret) or {ENV_PREFIX}TOKEN; or, on a "
                "developer machine only, pass --insecure-local-only to serve without one on "
                "127.0.0.1"
            )
        if self.insecure_local_only and not _loopback(self.host):
            return f"--insecure-local-only serves on the loopback interface only, not {self.host!r}"
        return None


def _loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def add_arguments(parser: argparse.ArgumentParser) -> None:
    env = f"env {ENV_PREFIX}"
    parser.add_argument(
        "--namespace",
        default=None,
        help=f"where CodeExecutions are created ({env}NAMESPACE, default 'default')",
    )
    parser.add_argument(
        "--host", default=None, help="address to listen on (0.0.0.0; 127.0.0.1 when local-only)"
    )
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument(
        "--max-concurrency",
        type=int,
        default=16,
        help="requests executed at once; more are answered 'too many requests' at once",
    )
    parser.add_argument(
        "--token-file",
        type=Path,
        default=None,
        help=(
            f"the token POST /run requires (or {env}TOKEN), sent as `Authorization: Bearer` "
            "or `X-Sandbox-Token`; without one the gateway refuses to start"
        ),
    )
    parser.add_argument(
        "--insecure-local-only",
        action="store_true",
        help="serve without a token, on 127.0.0.1 only (a developer's machine; never deployed)",
    )
    parser.add_argument(
        "--header-timeout",
        type=float,
        default=15.0,
        help="seconds a connection may take to send a complete request line and headers",
    )
    parser.add_argument(
        "--body-timeout", type=float, default=30.0, help="seconds a request body may take"
    )
    parser.add_argument("--max-request-bytes", type=int, default=512 * 1024)
    parser.add_argument(
        "--static-check",
        action="store_true",
        help="refuse Python code the original's static check refused (compatibility aid only)",
    )
    parser.add_argument(
        "--wait-timeout",
        type=float,
        default=300.0,
        help="seconds one request waits for its result, queueing for a pod included",
    )
    parser.add_argument(
        "--timeout-seconds", type=int, default=10, help="wall-clock limit of the code"
    )
    parser.add_argument("--pool-python", default=None, help="SandboxPool for Python code")
    parser.add_argument("--pool-nodejs", default=None, help="SandboxPool for Node.js code")
    parser.add_argument(
        "--pool-selector",
        default=None,
        help=f"label selector of the SandboxPools /healthz considers ({env}POOL_SELECTOR)",
    )
    parser.add_argument("--ttl-seconds-after-finished", type=int, default=300)
    parser.add_argument(
        "--busy-status",
        type=int,
        choices=[429, 200],
        default=None,
        help="HTTP status of 'too many requests' (exit_code -429 either way): 429 as a current "
        f"RAGFlow expects, 200 as the original answered ({env}BUSY_STATUS, default 429)",
    )
    parser.add_argument(
        "--keep-failure-stdout",
        action="store_true",
        help="keep the program's stdout on failures (the original always emptied it)",
    )


def from_args(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> GatewayConfig:
    env = os.environ if env is None else env
    pools: dict[Language, str] = {}
    if args.pool_python:
        pools["python"] = args.pool_python
    if args.pool_nodejs:
        pools["nodejs"] = args.pool_nodejs
    token_file = args.token_file
    token = None if token_file else env.get(f"{ENV_PREFIX}TOKEN") or None
    return GatewayConfig(
        namespace=args.namespace or env.get(f"{ENV_PREFIX}NAMESPACE") or "default",
        host=args.host or ("127.0.0.1" if args.insecure_local_only else "0.0.0.0"),
        port=args.port,
        max_concurrency=args.max_concurrency,
        token=token,
        token_file=token_file,
        max_request_bytes=args.max_request_bytes,
        static_check=args.static_check,
        wait_timeout=args.wait_timeout,
        timeout_seconds=args.timeout_seconds,
        pools=pools,
        pool_selector=args.pool_selector or env.get(f"{ENV_PREFIX}POOL_SELECTOR") or "",
        ttl_seconds_after_finished=args.ttl_seconds_after_finished,
        keep_failure_stdout=args.keep_failure_stdout,
        busy_status=args.busy_status or int(env.get(f"{ENV_PREFIX}BUSY_STATUS") or 429),
        insecure_local_only=args.insecure_local_only,
        header_timeout=args.header_timeout,
        body_timeout=args.body_timeout,
    )
