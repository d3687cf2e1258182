"""The cluster's writes, by component, verb and resource, from the test bed's API audit log."""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.cluster import LOG_DIR

AUDIT_LOG = LOG_DIR / "audit.log"

VERBS = {"create": "POST", "update": "PUT", "patch": "PATCH", "delete": "DELETE"}


def component(user: str, agent: str) -> str:
    """Who sent a request: our operator and the bench's client by their User-Agent
    (`codeexec-operator/<v> (<component>)`, both may use the admin's credentials on the test
    bed), the cluster's own parts by their user."""
    if agent.startswith("codeexec-operator/"):
        return agent.rpartition("(")[2].rstrip(")") or "codeexec"
    if user.startswith("system:node:"):
        return "kubelet"
    if user == "system:kube-scheduler":
        return "scheduler"
    if user == "system:kube-controller-manager" or user.startswith(
        "system:serviceaccount:kube-system:"
    ):
        return "controller-manager"
    if user.startswith("system:serviceaccount:"):
        return "serviceaccount " + user.rpartition(":")[2]
    return user.removeprefix("system:")


def key(event: dict[str, Any]) -> tuple[str, str] | None:
    """(component, "VERB resource[/subresource]") of one audit event, None if not a write."""
    verb = VERBS.get(str(event.get("verb")))
    if verb is None:
        return None
    ref = event.get("objectRef") or {}
    resource = str(ref.get("resource", "?"))
    if ref.get("subresource"):
        resource += "/" + str(ref["subresource"])
    who = component(
        str((event.get("user") or {}).get("username", "")), str(event.get("userAgent", ""))
    )
    return who, f"{verb} {resource}"


@dataclass(frozen=True)
class Mark:
    inode: int
    offset: int


class AuditLog:
    """Reads the writes logged after a mark. The test bed rotates the log at 200 MB; a
    rotation between mark and read is reported as missing evidence, not as zero writes."""

    def __init__(self, path: Path = AUDIT_LOG) -> None:
        self.path = path

    def mark(self) -> Mark | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return Mark(st.st_ino, st.st_size)

    def writes_since(self, mark: Mark | None) -> Counter[tuple[str, str]] | None:
        if mark is None:
            return None
        try:
            with open(self.path, "rb") as f:
                if os.fstat(f.fileno()).st_ino != mark.inode:
                    return None
                f.seek(mark.offset)
                data = f.read()
        except OSError:
            return None
        counts: Counter[tuple[str, str]] = Counter()
        for line in data.splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if not isinstance(event, dict) or event.get("stage") != "ResponseComplete":
                continue
            k = key(event)
            if k is not None:
                counts[k] += 1
        return counts


def per_execution(counts: Counter[tuple[str, str]] | None, n: int) -> dict[str, Any]:
    """Writes per execution: the total, by component, and by component and verb."""
    if counts is None or n <= 0:
        return {"available": False}
    by_component: Counter[str] = Counter()
    detail: dict[str, dict[str, float]] = {}
    for (who, what), c in counts.items():
        by_component[who] += c
        detail.setdefault(who, {})[what] = round(c / n, 2)
    return {
        "available": True,
        "executions": n,
        "total": round(sum(counts.values()) / n, 2),
        "by_component": {k: round(v / n, 2) for k, v in by_component.most_common()},
        "by_component_and_verb": {
            who: dict(sorted(d.items(), key=lambda kv: -kv[1])) for who, d in detail.items()
        },
    }
