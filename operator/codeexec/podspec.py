"""The hardened manifest of a warm sandbox pod, derived from its pool (pure).

Every field here is a defence: no API credentials, no privileges, nothing writable but a small
memory-backed /tmp, and a per-pod uid so that RLIMIT_NPROC and /proc permissions are per sandbox.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import secrets
from collections.abc import Iterable
from typing import Any

from codeexec.api.models import SandboxPoolSpec

MANAGED_BY = "app.kubernetes.io/managed-by"
OPERATOR = "codeexec-operator"
POOL_LABEL = "codeexec.io/pool"
TEMPLATE_LABEL = "codeexec.io/template"
STATE_LABEL = "codeexec.io/state"
EGRESS_LABEL = "codeexec.io/egress"
CLAIMED_BY_LABEL = "codeexec.io/claimed-by"
EXECUTION_ANNOTATION = "codeexec.io/execution"
# The claim itself is the durable record a restarted operator resumes from: which request this
# pod is for, since when, and on which attempt. The user's code cannot read its pod's metadata.
REQUEST_ANNOTATION = "codeexec.io/request-id"
CLAIMED_AT_ANNOTATION = "codeexec.io/claimed-at"
ATTEMPT_ANNOTATION = "codeexec.io/attempt"
# Set by the claim, removed only after the terminal status is written (poddelete): whoever
# deletes a claimed pod (a drain, an eviction, an admin), its object and the kubelet's record of
# whether the code started stay readable until the operator has judged the run.
CLAIM_FINALIZER = "codeexec.io/claim"
# The leader's term (lease holder and transition count) that made the claim.
TERM_ANNOTATION = "codeexec.io/leader-term"
CONTAINER = "sandbox"

WARM, CLAIMED = "warm", "claimed"
MAX_LABEL_VALUE = 63  # Kubernetes' limit on a label value (the pool name is one)
# Warm pods are recycled after a day; a claim lowers this to the execution's deadline.
WARM_DEADLINE_SECONDS = 24 * 3600
# Room for the runner's own SIGTERM-then-SIGKILL and report before the kubelet steps in.
DEADLINE_SLACK_SECONDS = 30
READY_FILE = "/tmp/.codeexec-ready"
# The startup probe waits for the ready file (4.5 s, looking every 50 ms) instead of failing
# every second until it appears: each failed probe was a runc exec plus a kubelet Event write
# (11.2 Event writes per execution in make bench's warm Python series, 2026-11-30), and the
# pod now counts as ready within ~50 ms of warming instead of up to a second later. python3
# is in every sandbox image: the supervisor is Python.
WAIT_READY = (
    "import os,time\n"
    "for _ in range(90):\n"
    f"    if os.path.exists({READY_FILE!r}): raise SystemExit(0)\n"
    "    time.sleep(0.05)\n"
    "raise SystemExit(1)\n"
)
# Never 0: a delete that names no grace period takes this one, and 0 would remove the object
# before the kubelet has stopped the container (poddelete.py says why that matters).
TERMINATION_GRACE_SECONDS = 1
# RLIMIT_FSIZE of the user's code when the scratch size cannot be read (supervisor default).
DEFAULT_MAX_FILE_BYTES = 64 * 1024 * 1024
_QUANTITY_SUFFIXES = {
    "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40,
    "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
}  # fmt: skip


UID_MIN, UID_MAX = 100_000, 2_000_000_000

# RuntimeClass names taken for gVisor's user-space kernel: `gvisor` (GKE Sandbox, the test
# bed) and `runsc` (its runtime's name, common on self-managed nodes), or names containing them.
USER_SPACE_KERNEL_NAMES = ("gvisor", "runsc")


def user_space_kernel(runtime_class: str | None) -> bool:
    """Whether pods of this RuntimeClass run under gVisor, where exceeding the memory limit
    kills the whole sandbox (runner included) instead of the program alone."""
    return runtime_class is not None and any(n in runtime_class for n in USER_SPACE_KERNEL_NAMES)


def quantity_bytes(text: str) -> int | None:
    """A Kubernetes memory quantity ("64Mi", "1G", "1048576") in bytes, or None."""
    for suffix, scale in sorted(_QUANTITY_SUFFIXES.items(), key=lambda kv: -len(kv[0])):
        if text.endswith(suffix):
            number = text[: -len(suffix)]
            return int(number) * scale if number.isdigit() else None
    return int(text) if text.isdigit() else None


def max_file_bytes(spec: SandboxPoolSpec) -> int:
    """No file the code writes may outgrow its scratch space: that also bounds the files that
    live on the node's disk outside the pod's storage accounting (/dev/termination-log)."""
    return quantity_bytes(spec.scratch_size_limit) or DEFAULT_MAX_FILE_BYTES


def template_hash(spec: SandboxPoolSpec) -> str:
    """Changes whenever a field that shapes the pod changes, so stale warm pods are replaced."""
    shaping = spec.dump()
    for ignored in (
        "size",
        "default",
        "maxTimeoutSeconds",
        "readyTimeoutSeconds",
        "queueTimeoutSeconds",
        # Who may use a pool and where its pods may connect do not shape the pod: the egress
        # rules live in the pool's NetworkPolicy, which applies to running pods at once.
        "tenants",
        "egress",
    ):
        shaping.pop(ignored, None)
    digest = hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()
    return digest[:10]


def pod_name(pool: str) -> str:
    return f"{pool[:40]}-{secrets.token_hex(4)}"


def sandbox_pod(pool: str, spec: SandboxPoolSpec, namespace: str) -> dict[str, Any]:
    uid = secrets.randbelow(UID_MAX - UID_MIN) + UID_MIN
    limits = {"cpu": "1", "memory": "256Mi", "ephemeral-storage": "64Mi", **spec.resources.limits}
    requests = {"cpu": "50m", "memory": "64Mi", **spec.resources.requests}
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "activeDeadlineSeconds": WARM_DEADLINE_SECONDS,
        "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
        "hostNetwork": False,
        "hostPID": False,
        "hostIPC": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": uid,
            "runAsGroup": uid,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [
            {
                "name": CONTAINER,
                "image": spec.image,
                "imagePullPolicy": spec.image_pull_policy,
                # The request arrives over attach. stdin stays open across sessions, so the
                # operator can attach while the pod is warm and a restarted operator can attach
                # again; the runner reads exactly one request line in its life and never reads
                # stdin after it, so a pod can never run a second request.
                "stdin": True,
                "stdinOnce": False,
                "tty": False,
                "env": [
                    {"name": "CODEEXEC_LANGUAGE", "value": spec.language},
                    {"name": "CODEEXEC_MAX_PROCESSES", "value": str(spec.max_processes)},
                    {"name": "CODEEXEC_MAX_FILE_BYTES", "value": str(max_file_bytes(spec))},
                    {"name": "HOME", "value": "/tmp"},
                    {"name": "CODEEXEC_READY_FILE", "value": READY_FILE},
                    *(
                        [{"name": "CODEEXEC_PRELOAD", "value": ",".join(spec.preload)}]
                        if spec.preload is not None
                        else []
                    ),
                ],
                # Warm means imports done: the supervisor touches the file when its worker is
                # ready. A startup probe stops once it passes, so a warm pod costs no probes.
                "startupProbe": {
                    "exec": {"command": ["python3", "-I", "-S", "-c", WAIT_READY]},
                    "periodSeconds": 1,
                    "failureThreshold": 60,  # 60 x (4.5 s + 1 s): 5.5 minutes to warm
                    "timeoutSeconds": 5,
                },
                "resources": {"limits": limits, "requests": requests},
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "readOnlyRootFilesystem": True,
                    "runAsNonRoot": True,
                    "privileged": False,
                    "capabilities": {"drop": ["ALL"]},
                    "seccompProfile": {"type": "RuntimeDefault"},
                },
                "volumeMounts": [{"name": "scratch", "mountPath": "/tmp"}],
                "terminationMessagePolicy": "File",
            }
        ],
        "volumes": [
            {
                "name": "scratch",
                "emptyDir": {"medium": "Memory", "sizeLimit": spec.scratch_size_limit},
            }
        ],
    }
    if spec.runtime_class_name:
        pod_spec["runtimeClassName"] = spec.runtime_class_name
    if spec.node_selector:
        pod_spec["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        pod_spec["tolerations"] = list(spec.tolerations)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod_name(pool),
            "namespace": namespace,
            "labels": {
                MANAGED_BY: OPERATOR,
                POOL_LABEL: pool,
                TEMPLATE_LABEL: template_hash(spec),
                STATE_LABEL: WARM,
                EGRESS_LABEL: "allow" if spec.allow_network else "deny",
            },
        },
        "spec": pod_spec,
    }


# Never reachable through the default internet rule of an allowNetwork pool: what an attacker
# inside the cluster's network would aim at. RFC 1918 and CGNAT hold pods, Services and nodes
# on most clusters (and Alibaba's metadata, 100.100.100.200); link-local holds the clouds'
# metadata (169.254.169.254) and node-local DNS; the rest are not internet destinations.
BLOCKED_IPV4 = (
    "0.0.0.0/8",  # "this network"
    "10.0.0.0/8",  # RFC 1918
    "100.64.0.0/10",  # RFC 6598 CGNAT
    "127.0.0.0/8",  # loopback
    "169.254.0.0/16",  # link-local: cloud metadata
    "172.16.0.0/12",  # RFC 1918
    "192.0.0.0/24",  # IETF protocol assignments
    "192.168.0.0/16",  # RFC 1918
    "224.0.0.0/4",  # multicast
    "240.0.0.0/4",  # reserved, broadcast
)
# The name the policy of one pool gets; the label ties it to its pool.
EGRESS_POLICY_PREFIX = "codeexec-egress-"
# Allowed everything to network pools before per-pool policies; deleted at start-up.
LEGACY_ALLOW_EGRESS = "codeexec-sandbox-allow-egress"
# CoreDNS and kube-dns pods carry this label in kube-system on every common distribution.
CLUSTER_DNS_PEER = {
    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
    "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
}


def network_policies(namespace: str) -> list[dict[str, Any]]:
    """Deny all ingress and egress to every sandbox pod; pools open egress with their own."""
    deny_all = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "codeexec-sandbox-deny-all", "namespace": namespace},
        "spec": {
            "podSelector": {"matchLabels": {MANAGED_BY: OPERATOR}},
            "policyTypes": ["Ingress", "Egress"],
        },
    }
    return [deny_all]


def blocked_ranges(cluster: Iterable[str]) -> list[str]:
    """BLOCKED_IPV4 plus the cluster's own IPv4 addresses and ranges, merged and sorted.

    `cluster`: node and API server addresses, pod and Service CIDRs. Only IPv4 counts: the
    internet rule opens IPv4 only, so IPv6 is closed unless an allow rule names it.
    """
    nets = [ipaddress.IPv4Network(n) for n in BLOCKED_IPV4]
    for entry in cluster:
        try:
            net = ipaddress.ip_network(entry.strip(), strict=False)
        except ValueError:
            continue
        if isinstance(net, ipaddress.IPv4Network):
            nets.append(net)
    return [str(n) for n in ipaddress.collapse_addresses(nets)]


def egress_policy(
    pool: str, spec: SandboxPoolSpec, namespace: str, blocked: list[str]
) -> dict[str, Any]:
    """The egress a network-enabled pool's pods get, on top of the namespace's deny-all.

    NetworkPolicy rules add up: the internet rule is 0.0.0.0/0 minus `blocked`; DNS and each
    allow rule open exactly their peers and ports, even inside `blocked`. The policy is matched
    after kube-proxy's DNAT, so a Service address is judged by its endpoint (the API server's
    Service IP by the node or control-plane address behind it): that is why node and API
    server addresses are in `blocked`.
    """
    rules: list[dict[str, Any]] = []
    egress = spec.egress
    if egress.internet:
        rules.append({"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": list(blocked)}}]})
    if egress.dns:
        rules.append(
            {
                "to": [CLUSTER_DNS_PEER],
                "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
            }
        )
    for rule in egress.allow:
        cidr = str(ipaddress.ip_network(rule.cidr.strip(), strict=False))
        opened: dict[str, Any] = {"to": [{"ipBlock": {"cidr": cidr}}]}
        if rule.ports:
            opened["ports"] = [
                {
                    "protocol": p.protocol,
                    "port": p.port,
                    **({"endPort": p.end_port} if p.end_port and p.end_port > p.port else {}),
                }
                for p in rule.ports
            ]
        rules.append(opened)
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": EGRESS_POLICY_PREFIX + pool,
            "namespace": namespace,
            "labels": {MANAGED_BY: OPERATOR, POOL_LABEL: pool},
        },
        "spec": {
            "podSelector": {
                "matchLabels": {MANAGED_BY: OPERATOR, POOL_LABEL: pool, EGRESS_LABEL: "allow"}
            },
            "policyTypes": ["Egress"],
            "egress": rules,
        },
    }


def claim_patch(
    execution_uid: str,
    execution_ref: str,
    resource_version: str,
    deadline_seconds: int,
    *,
    request_id: str,
    claimed_at: str,
    attempt: int,
    term: str = "",
) -> dict[str, Any]:
    """Conditioned on resourceVersion: a 409 means another claimer won this pod."""
    notes = {TERM_ANNOTATION: term} if term else {}
    return {
        "metadata": {
            "resourceVersion": resource_version,
            "labels": {STATE_LABEL: CLAIMED, CLAIMED_BY_LABEL: execution_uid},
            "finalizers": [CLAIM_FINALIZER],
            "annotations": {
                EXECUTION_ANNOTATION: execution_ref,
                REQUEST_ANNOTATION: request_id,
                CLAIMED_AT_ANNOTATION: claimed_at,
                ATTEMPT_ANNOTATION: str(attempt),
                **notes,
            },
        },
        "spec": {"activeDeadlineSeconds": deadline_seconds},
    }
