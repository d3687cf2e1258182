"""Prometheus instruments, in one place."""

from __future__ import annotations

import platform

from prometheus_client import Counter, Gauge, Histogram, Info

from codeexec import __version__

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

EXECUTIONS = Counter(
    "codeexec_executions_total",
    "Finished executions by language and reason",
    ["language", "reason"],
)
QUEUE_WAIT = Histogram(
    "codeexec_queue_wait_seconds",
    "Time from creation to a claimed pod",
    ["language"],
    buckets=_LATENCY_BUCKETS,
)
RUN_TIME = Histogram(
    "codeexec_run_seconds",
    "Wall time of the user's code as the runner measured it",
    ["language"],
    buckets=_LATENCY_BUCKETS,
)
END_TO_END = Histogram(
    "codeexec_end_to_end_seconds",
    "Time from creation to the terminal status write",
    ["language"],
    buckets=_LATENCY_BUCKETS,
)
STEP = Histogram(
    "codeexec_step_seconds",
    "Time spent in each step of the road",
    ["step"],
    buckets=_LATENCY_BUCKETS,
)
WORKER_EXITS = Counter(
    "codeexec_worker_exits_total",
    "Delivered runs by where the supervisor read the worker's exit status: proc (stored by the "
    "kernel, the report sent before the reap) or wait (the reap)",
    ["read"],
)
# Milliseconds matter here: a warm run's parts are 0.1-20 ms each.
ROAD = Histogram(
    "codeexec_road_seconds",
    "A delivered run's time by part: frame_out, start, run, exit, wrap_up, report_back "
    "(frame_out and report_back compare the operator's clock with the pod's node's)",
    ["part"],
    buckets=(
        0.0005,
        0.001,
        0.002,
        0.004,
        0.006,
        0.008,
        0.01,
        0.015,
        0.02,
        0.03,
        0.05,
        0.1,
        0.25,
        1.0,
        5.0,
        30.0,
    ),
)
CLAIM_CONFLICTS = Counter(
    "codeexec_claim_conflicts_total", "Claims lost to another claimer (409) or a vanished pod"
)
FOREIGN_OPERATOR = Counter(
    "codeexec_foreign_operator_sightings_total",
    "Pools of another installation seen on executions this one watches (two operators race)",
)
DELIVERIES = Counter(
    "codeexec_deliveries_total",
    "Requests sent, by the attach session that carried them: held open before the claim, or new",
    ["session"],
)
PREATTACHED = Gauge(
    "codeexec_preattached_sessions", "Attach sessions held open to warm pods ahead of a claim"
)
POOL_READY = Gauge("codeexec_pool_ready_pods", "Warm pods ready to be claimed", ["pool"])
POOL_WARMING = Gauge("codeexec_pool_warming_pods", "Warm pods not yet ready", ["pool"])
POOL_CLAIMED = Gauge("codeexec_pool_claimed_pods", "Pods currently running an execution", ["pool"])
POOL_DESIRED = Gauge(
    "codeexec_pool_desired_pods",
    "Warm pods the pool is keeping (its size or the autoscaler's)",
    ["pool"],
)
POOL_UNSCHEDULABLE = Gauge(
    "codeexec_pool_unschedulable_pods", "Pods of the pool the scheduler cannot place", ["pool"]
)
POOL_QUEUE_DEPTH = Gauge(
    "codeexec_pool_queue_depth",
    "Executions waiting that more warm pods of the pool would serve (not those a cap holds back)",
    ["pool"],
)
POOL_IN_USE_RATIO = Gauge(
    "codeexec_pool_in_use_ratio",
    "Running pods / (running + ready warm pods); 1 while executions wait",
    ["pool"],
)
POOL_GAUGES = (
    POOL_READY,
    POOL_WARMING,
    POOL_CLAIMED,
    POOL_DESIRED,
    POOL_UNSCHEDULABLE,
    POOL_QUEUE_DEPTH,
    POOL_IN_USE_RATIO,
)
IN_FLIGHT = Gauge("codeexec_executions_in_flight", "Executions being processed")
API_REQUESTS = Counter(
    "codeexec_api_requests_total",
    "Requests of the operator's own API client by Kubernetes verb and HTTP status "
    "('error': no answer); Kopf's watches of our resources are not included",
    ["verb", "code"],
)
BUILD_INFO = Info("codeexec_build", "The running operator's version")
BUILD_INFO.info({"version": __version__, "python_version": platform.python_version()})


def api_request(verb: str, code: str) -> None:
    API_REQUESTS.labels(verb, code).inc()
