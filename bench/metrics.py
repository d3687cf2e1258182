"""Prometheus text: parsed, compared between scrapes; the API server's and kubelet's pages."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from bench.cluster import NODES, raw_get
from codeexec.kube.client import (
    ApiError,
    Kube,
)

log = logging.getLogger("bench")

# ---- Prometheus text ------------------------------------------------------------------------

LabelKey = tuple[tuple[str, str], ...]


@dataclass
class Metrics:
    """Samples of one scrape: {sample name: {sorted labels: value}}."""

    samples: dict[str, dict[LabelKey, float]]

    @classmethod
    def parse(cls, text: str) -> Metrics:
        samples: dict[str, dict[LabelKey, float]] = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                key = tuple(sorted(s.labels.items()))
                samples.setdefault(s.name, {})[key] = float(s.value)
        return cls(samples)

    def total(self, name: str, **match: str) -> float:
        return sum(
            v
            for k, v in self.samples.get(name, {}).items()
            if all(dict(k).get(mk) == mv for mk, mv in match.items())
        )

    def by(self, name: str, label_names: tuple[str, ...], **match: str) -> dict[str, float]:
        out: dict[str, float] = {}
        for k, v in self.samples.get(name, {}).items():
            labels = dict(k)
            if all(labels.get(mk) == mv for mk, mv in match.items()):
                key = " ".join(labels.get(n, "") for n in label_names)
                out[key] = out.get(key, 0.0) + v
        return out


def counter_delta(
    before: Metrics, after: Metrics, name: str, label_names: tuple[str, ...], **match: str
) -> dict[str, float]:
    a, b = after.by(name, label_names, **match), before.by(name, label_names, **match)
    out = {k: v - b.get(k, 0.0) for k, v in a.items()}
    return {k: v for k, v in sorted(out.items(), key=lambda kv: -kv[1]) if v}


def histogram_delta(before: Metrics, after: Metrics, name: str, **match: str) -> dict[str, Any]:
    """count, mean and bucket-interpolated p50/p95/p99 (ms) of a histogram between scrapes."""

    def buckets(m: Metrics) -> dict[float, float]:
        out: dict[float, float] = {}
        for k, v in m.samples.get(f"{name}_bucket", {}).items():
            labels = dict(k)
            if all(labels.get(mk) == mv for mk, mv in match.items()):
                le = float(labels["le"])
                out[le] = out.get(le, 0.0) + v
        return out

    b_after, b_before = buckets(after), buckets(before)
    cum = sorted((le, b_after[le] - b_before.get(le, 0.0)) for le in b_after)
    count = after.total(f"{name}_count", **match) - before.total(f"{name}_count", **match)
    total = after.total(f"{name}_sum", **match) - before.total(f"{name}_sum", **match)
    out: dict[str, Any] = {"count": int(count)}
    if count <= 0:
        return out
    out["mean_ms"] = round(1000 * total / count, 1)
    for q in (50, 95, 99):
        out[f"p{q}_ms"] = _bucket_quantile(cum, count, q / 100)
    return out


def _bucket_quantile(cum: list[tuple[float, float]], count: float, q: float) -> float | None:
    rank = q * count
    prev_le, prev_c = 0.0, 0.0
    for le, c in cum:
        if c >= rank:
            if math.isinf(le):
                return None  # above the highest finite bucket
            if c == prev_c:
                return round(1000 * le, 1)
            return round(1000 * (prev_le + (le - prev_le) * (rank - prev_c) / (c - prev_c)), 1)
        prev_le, prev_c = le, c
    return None


def only(text: str, prefixes: tuple[str, ...]) -> str:
    """The lines of a Prometheus text page that belong to metrics named `prefixes*`.

    The API server's page is megabytes; parsing all of it in Python blocks our event loop for
    seconds (and so delays every timestamp we take), so we keep what we read first."""
    keep = []
    for line in text.splitlines():
        name = line.split(" ", 3)[2] if line.startswith("# ") and line.count(" ") >= 2 else line
        if name.startswith(prefixes):
            keep.append(line)
    return "\n".join(keep) + "\n"


APISERVER_METRICS = ("apiserver_request_total", "apiserver_request_duration_seconds")
KUBELET_METRICS = (
    "kubelet_pod_start_sli_duration_seconds",
    "kubelet_pod_start_duration_seconds",
    "kubelet_pod_worker_duration_seconds",
    "kubelet_runtime_operations_duration_seconds",
)


async def apiserver_metrics(kube: Kube) -> Metrics:
    return Metrics.parse(only(await raw_get(kube, "/metrics", timeout=60), APISERVER_METRICS))


async def kubelet_metrics(kube: Kube) -> Metrics | None:
    nodes = (await kube.list(NODES)).get("items", [])
    if not nodes:
        return None
    name = nodes[0]["metadata"]["name"]
    try:
        text = await raw_get(kube, f"/api/v1/nodes/{name}/proxy/metrics", 60)
        return Metrics.parse(only(text, KUBELET_METRICS))
    except (ApiError, aiohttp.ClientError, OSError, TimeoutError) as err:
        log.warning("kubelet metrics unavailable: %r", err)
        return None
