"""The bench's figures from two metric snapshots: operator steps and road, API server, kubelet."""

from __future__ import annotations

from typing import Any

from bench.metrics import Metrics, histogram_delta
from codeexec.protocol import ROAD_PARTS


def operator_breakdown(m0: Metrics, m1: Metrics, language: str) -> dict[str, Any]:
    return {
        "queue_wait": histogram_delta(m0, m1, "codeexec_queue_wait_seconds", language=language),
        "claim": histogram_delta(m0, m1, "codeexec_step_seconds", step="claim"),
        "status_write": histogram_delta(m0, m1, "codeexec_step_seconds", step="status_write"),
        "deliver_and_run": histogram_delta(m0, m1, "codeexec_step_seconds", step="deliver_and_run"),
        "runner_wall": histogram_delta(m0, m1, "codeexec_run_seconds", language=language),
        "end_to_end": histogram_delta(m0, m1, "codeexec_end_to_end_seconds", language=language),
        # deliver_and_run split by where the time went (protocol.road_parts).
        **{
            f"road_{part}": histogram_delta(m0, m1, "codeexec_road_seconds", part=part)
            for part in ROAD_PARTS
        },
    }


def per_execution(counts: dict[str, float], n: int) -> dict[str, float]:
    out = {k: round(v / n, 2) for k, v in counts.items()} if n else {}
    out["total"] = round(sum(counts.values()) / n, 2) if n else 0.0
    return out


def apiserver_breakdown(a0: Metrics, a1: Metrics) -> dict[str, Any]:
    """Mean server-side latency and count of the requests our paths make, cluster-wide."""
    wanted = [
        ("POST", "codeexecutions", ""),
        ("PATCH", "codeexecutions", "status"),
        ("PATCH", "pods", ""),
        ("POST", "pods", ""),
        ("DELETE", "pods", ""),
        ("CONNECT", "pods", "attach"),
        ("GET", "pods", "log"),
        ("POST", "events", ""),
        ("PATCH", "sandboxpools", "status"),
    ]
    out: dict[str, Any] = {}
    for verb, resource, sub in wanted:
        match = {"verb": verb, "resource": resource, "subresource": sub}
        count = a1.total("apiserver_request_duration_seconds_count", **match) - a0.total(
            "apiserver_request_duration_seconds_count", **match
        )
        total = a1.total("apiserver_request_duration_seconds_sum", **match) - a0.total(
            "apiserver_request_duration_seconds_sum", **match
        )
        if count > 0:
            key = f"{verb} {resource}{'/' + sub if sub else ''}"
            out[key] = {"count": int(count), "mean_ms": round(1000 * total / count, 1)}
    return out


def kubelet_breakdown(k0: Metrics, k1: Metrics) -> dict[str, Any]:
    """Where a cold pod's time goes on the node, from the kubelet's own histograms."""
    out: dict[str, Any] = {}
    for name, label in (
        ("kubelet_pod_start_sli_duration_seconds", None),
        ("kubelet_pod_start_duration_seconds", None),
        ("kubelet_pod_worker_duration_seconds", "operation_type"),
        ("kubelet_runtime_operations_duration_seconds", "operation_type"),
    ):
        if f"{name}_count" not in k1.samples:
            continue
        if label is None:
            h = histogram_delta(k0, k1, name)
            if h["count"]:
                out[name] = h
            continue
        keys = {dict(k).get(label, "") for k in k1.samples[f"{name}_count"]}
        per: dict[str, Any] = {}
        for key in sorted(keys):
            h = histogram_delta(k0, k1, name, **{label: key})
            if h["count"]:
                per[key] = {"count": h["count"], "mean_ms": h.get("mean_ms")}
        if per:
            out[name] = per
    return out
