"""Operator configuration, read once from the environment (the Helm chart sets it)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field


def _env(name: str, default: str) -> str:
    return os.environ.get(f"CODEEXEC_{name}", default)


@dataclass(frozen=True)
class Settings:
    # Where sandbox pods live; tenants get no access there.
    sandbox_namespace: str = field(
        default_factory=lambda: _env("SANDBOX_NAMESPACE", "codeexec-sandbox")
    )
    # Namespaces whose CodeExecutions we serve; empty means all.
    namespaces: tuple[str, ...] = field(
        default_factory=lambda: tuple(n for n in _env("NAMESPACES", "").split(",") if n)
    )
    # Which SandboxPools this installation serves (a label selector, equality terms only);
    # empty means all. Lets several installations share a cluster without fighting over pools.
    pool_selector: str = field(default_factory=lambda: _env("POOL_SELECTOR", ""))
    # The cluster's pod and Service CIDRs (and any other range of its own), comma-separated:
    # network-enabled pools never reach them. Node and API server addresses are found on their
    # own; RFC 1918, CGNAT, loopback and link-local are always blocked.
    cluster_cidrs: tuple[str, ...] = field(
        default_factory=lambda: tuple(
            c.strip() for c in _env("CLUSTER_CIDRS", "").split(",") if c.strip()
        )
    )
    # Head of each stream kept in the status (etcd holds at most 1.5 MiB per object).
    keep_bytes: int = field(default_factory=lambda: int(_env("KEEP_BYTES", "65536")))
    # Default combined output after which the program is stopped (OutputLimit).
    max_output_bytes: int = field(default_factory=lambda: int(_env("MAX_OUTPUT_BYTES", "1048576")))
    # Pods that received no code before they failed are replaced at most this many times.
    max_attempts: int = field(default_factory=lambda: int(_env("MAX_ATTEMPTS", "3")))
    # Extra time the operator waits beyond the timeout before it gives up on the runner.
    grace_seconds: float = field(default_factory=lambda: float(_env("GRACE_SECONDS", "15")))
    # Whether spec.files may name Secrets (each must also be labelled codeexec.io/input-file).
    files_from_secrets: bool = field(
        default_factory=lambda: _env("FILES_FROM_SECRETS", "false").lower() == "true"
    )
    # Credentials of the S3 artifact stores (SandboxPool spec.artifacts.s3); the chart sets them
    # from a Secret (operator.s3CredentialsSecret).
    s3_access_key_id: str = field(default_factory=lambda: _env("S3_ACCESS_KEY_ID", ""))
    s3_secret_access_key: str = field(
        default_factory=lambda: _env("S3_SECRET_ACCESS_KEY", ""), repr=False
    )
    # A Normal Event for every execution that succeeds (CODEEXEC_SUCCESS_EVENTS). Off by
    # default: at agent rates that is one more write per execution, kept by etcd for the
    # Event TTL, saying what the status already says. Failures and waits always get one.
    success_events: bool = field(
        default_factory=lambda: _env("SUCCESS_EVENTS", "false").lower() == "true"
    )
    metrics_port: int = field(default_factory=lambda: int(_env("METRICS_PORT", "8080")))
    leader_election: bool = field(
        default_factory=lambda: _env("LEADER_ELECTION", "false").lower() == "true"
    )
    lease_namespace: str = field(default_factory=lambda: _env("LEASE_NAMESPACE", "codeexec-system"))
    lease_name: str = field(default_factory=lambda: _env("LEASE_NAME", "codeexec-operator"))
    # Unique per process: two replicas sharing an identity would both renew one lease.
    identity: str = field(
        default_factory=lambda: os.environ.get("POD_NAME") or f"{os.uname().nodename}-{os.getpid()}"
    )


def selector_matches(selector: str, labels: dict[str, str] | None) -> bool:
    """Equality-based label selector (`a=b,c=d`), as the API server applies it."""
    labels = labels or {}
    for term in filter(None, (t.strip() for t in selector.split(","))):
        key, _, value = term.partition("=")
        if labels.get(key.strip()) != value.strip().lstrip("="):
            return False
    return True
