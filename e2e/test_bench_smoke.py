"""Issue 5: the benchmark commands keep working, and what they prove about safety holds.

Short runs of `make bench`, `make chaos` and `make scale` (their `--smoke` sizes) against the
real local cluster, each with its own operator process. Speed is reported, never asserted here
(no timed assertions); what is asserted is that each command completes and writes its results,
and the correctness figures: no execution started twice, no leaked pod, no lost result, no
finished execution touched after a restart.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from e2e.fixtures import REPO_ROOT, Cluster

pytestmark = pytest.mark.cluster

SMOKE_RESULTS = REPO_ROOT / "bench" / "results.smoke.json.tmp"


def run_bench(cluster: Cluster, module: str, *args: str) -> dict[str, Any]:
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}
    done = subprocess.run(
        [sys.executable, "-m", module, "--smoke", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert done.returncode == 0, f"{module}: {done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return dict(json.loads(SMOKE_RESULTS.read_text()))


def test_bench_measures_warm_cold_and_throughput(cluster: Cluster) -> None:
    r = run_bench(cluster, "bench", "--no-profile")["bench"]
    for lang in ("python", "nodejs"):
        assert r["warm"][lang]["failed"] == 0, r["warm"][lang].get("failures")
        assert r["warm"][lang]["latency_ms"]["n"] == r["parameters"]["n"]
        assert r["cold"][lang]["latency_ms"]["n"] == r["parameters"]["cold_n"]
        assert r["warm_vs_cold"][lang]["p50"] is not None
        # `--settle both`: back to back, then a series of its own with the pool full.
        assert r["warm"][lang]["settle"] == "one"
        full = r["warm_pool_full"][lang]
        assert (full["settle"], full["failed"]) == ("full", 0), full.get("failures")
        assert full["latency_ms"]["n"] == r["parameters"]["n"]
    tp = r["throughput"]
    assert tp["operator"]["reasons"] == {"Succeeded": tp["operator"]["executions_total"]}
    assert tp["ratio"] is not None and tp["ratio_no_preload"] is not None
    # Both sides at saturation: the whole machine's CPU-seconds per execution.
    for side in ("operator", "operator_no_preload", "raw_pod_churn"):
        assert tp[side]["machine"]["busy_cpu_seconds"] > 0, tp[side]
        assert tp[side]["machine_cpu_seconds_per_execution"] > 0, tp[side]
    assert tp["machine_cpu_per_execution_ratio"] is not None
    assert r["operator_cost"]["peak_rss_mb"] > 0
    # Issue 16: runc and gVisor side by side in the same run (the test bed always has gVisor).
    rt = r["runtimes"]
    if cluster.own_testbed or "skipped" not in rt:
        assert "skipped" not in rt, rt
        for runtime in ("runc", "gvisor"):
            assert rt["warmup"][runtime]["pools_full_seconds"] > 0, rt["warmup"]
            assert rt["throughput"][runtime]["completed_in_window"] > 0, rt["throughput"]
        for lang in ("python", "nodejs"):
            assert rt["warm"][lang]["failed"] == 0, rt["warm"][lang]["failures"]
            for runtime in ("runc", "gvisor"):
                assert rt["warm"][lang]["latency_ms"][runtime]["n"] == rt["n"], rt["warm"][lang]


def test_chaos_never_runs_code_twice_leaks_or_loses(cluster: Cluster) -> None:
    r = run_bench(cluster, "bench.chaos", "--scenarios", "classic")["chaos"]
    assert set(r["scenarios"]) == {"operator-kill", "pod-delete"}
    for name, s in r["scenarios"].items():
        assert s["terminal"] == s["executions"], name
        assert (s["duplicates"], s["leaked_pods"], s["lost_results"]) == (0, 0, 0), (name, s)
        # No proof may rest on missing evidence: every pod named in a status left its record,
        # and no terminal status was ever rewritten.
        assert (s["unproven"], s["terminal_rewrites"]) == (0, 0), (name, s)
    assert r["passed"] is True


CLUSTER_FAULTS = {
    "apiserver-stop",
    "etcd-restart",
    "kubelet-restart",
    "containerd-restart",
    "api-partition",
    "leader-pause",
    "node-drain",
}


def test_cluster_faults_never_run_code_twice_lose_leak_or_wedge(cluster: Cluster) -> None:
    """Issue 11: the short forms of the real-cluster faults (the API server stopped, etcd,
    kubelet and containerd restarted, the operator cut off from the API server, the leader
    paused past its lease with a standby running, the node drained under the chart's operator).
    Disruptive: every component of the cluster is stopped once; CI runs nothing else meanwhile."""
    r = run_bench(cluster, "bench.chaos", "--scenarios", "cluster")["chaos"]
    assert set(r["scenarios"]) == CLUSTER_FAULTS
    for name, s in r["scenarios"].items():
        assert not s.get("fault_error"), (name, s["fault_error"])
        assert s["caught_by_fault"] > 0, (name, "the fault hit no execution in flight")
        assert s["terminal"] == s["executions"], (name, s["lost_details"])
        figures = {
            k: s[k]
            for k in (
                "duplicates", "lost_results", "leaked_pods", "stuck", "unproven",
                "terminal_rewrites",
            )
        }  # fmt: skip
        assert figures == dict.fromkeys(figures, 0), (name, figures, s)
    assert r["passed"] is True


def test_scale_restart_leaves_finished_executions_alone(cluster: Cluster) -> None:
    r = run_bench(cluster, "bench.scale")["scale"]
    assert r["finished_changed"] == 0
    assert r["executions_finished_by_operator_total"] == r["pending"]
    assert r["pending_terminal"] == r["pending"]
    assert r["passed"] is True


def test_held_sessions_last_while_idle_and_come_back_after_a_restart(cluster: Cluster) -> None:
    r = run_bench(cluster, "bench.soak")["soak"]
    assert r["pods"] > 0 and len(r["idle_samples"]) > 0
    assert r["idle_min_held"] == r["pods"], r["idle_samples"]
    assert r["idle_pods_replaced"] == 0
    assert r["rehold_seconds"] is not None
    assert r["restart_pods_replaced"] == 0
    assert r["passed"] is True
