"""Issue 15's targets table (bench/targets.py) judges only what was measured at the target's size.

Cluster-free: the results documents are made up; `render` and the row builders only read them.
"""

from __future__ import annotations

from typing import Any

from bench import targets


def latency(n: int, p50: float, p99: float) -> dict[str, Any]:
    return {"n": n, "p50": p50, "p99": p99}


def bench_doc(**over: Any) -> dict[str, Any]:
    warm = {
        lang: {
            "settle": "one",
            "latency_ms": latency(40, 60, 170),
            "latency_ms_pool_full": latency(1, 40, 40),
            "operator_api_requests_per_execution": {"total": 5.0},
            "cluster_writes_per_execution": {"available": True, "total": 14.0},
        }
        for lang in targets.LANGS
    }
    doc: dict[str, Any] = {
        "warm": warm,
        "warm_pool_full": {lang: {"latency_ms": latency(40, 45, 110)} for lang in targets.LANGS},
        "warm_vs_cold": {lang: {"p50": 41.0} for lang in targets.LANGS},
        "operator_cost": {"cpu_ms_per_execution_warm_sequential": {"python": 19.0, "nodejs": 21.0}},
        "throughput": {
            "ratio": 1.25,
            "operator": {"machine_cpu_seconds_per_execution": 0.8},
            "raw_pod_churn": {"machine_cpu_seconds_per_execution": 1.1},
        },
    }
    doc.update(over)
    return doc


def verdicts(rows: list[targets.Row]) -> dict[str, bool | None]:
    return {figure: ok for figure, _, ok, _ in rows}


def test_every_bench_figure_of_the_issue_is_judged_against_its_own_limit() -> None:
    v = verdicts(targets.bench_rows(bench_doc()))
    assert v["warm p50 / p99 ms, python, pool full"] is True
    assert v["warm p50 / p99 ms, nodejs, back to back"] is True
    assert v["warm vs cold at p50, python, the main series"] is True
    assert v["warm vs cold at p50, python, pool full"] is None  # no cold series in the doc
    assert v["operator CPU ms per execution, python"] is True
    assert v["operator CPU ms per execution, nodejs"] is False  # 21 > 20
    assert v["operator API requests per execution, python"] is True
    assert v["cluster-wide API writes per execution, nodejs"] is True
    assert v["throughput at saturation, operator / raw pod churn"] is True


def test_a_figure_without_enough_samples_is_never_reported_met() -> None:
    # Without `--settle both` a back-to-back run holds one pool-full sample: not a p99.
    doc = bench_doc(warm_pool_full={})
    v = verdicts(targets.bench_rows(doc))
    assert v["warm p50 / p99 ms, python, pool full"] is None
    doc = bench_doc()
    doc["warm"]["python"]["cluster_writes_per_execution"] = {"available": False, "total": 0}
    del doc["throughput"]
    v = verdicts(targets.bench_rows(doc))
    assert v["cluster-wide API writes per execution, python"] is None
    assert v["throughput at saturation, operator / raw pod churn"] is None
    assert "not measured" in targets.render({"bench": doc})


def test_a_series_that_settled_full_is_not_judged_as_back_to_back() -> None:
    doc = bench_doc(warm_pool_full={})
    for w in doc["warm"].values():
        w["settle"] = "full"
    v = verdicts(targets.bench_rows(doc))
    assert v["warm p50 / p99 ms, python, back to back"] is None
    # Its own latency_ms (n=40) is the pool-full figure, judged by that row's limits: 170 > 120.
    assert v["warm p50 / p99 ms, python, pool full"] is False


def test_memory_at_scale_is_judged_only_at_the_targets_size() -> None:
    small = {"finished": 5000, "pending": 200, "namespaces": 20, "peak_rss_mb": 136.0}
    assert [ok for _, _, ok, _ in targets.scale_rows(small)] == [None]
    large = {
        "finished": 50_000,
        "pending": 1_000,
        "namespaces": 100,
        "peak_rss_mb": 301.0,
        "ready_seconds": 2.0,
        "finished_changed": 0,
    }
    assert [ok for _, _, ok, _ in targets.scale_rows(large)] == [False, True, True]


def test_a_soak_that_lost_a_session_misses_even_with_little_memory() -> None:
    soak = {
        "pods": 200,
        "idle_seconds": 3600,
        "rss_per_held_pod_kib": 80.0,
        "idle_min_held": 199,
        "idle_pods_replaced": 1,
        "rehold_seconds": 2.0,
    }
    assert [ok for _, _, ok, _ in targets.soak_rows(soak)] == [True, False, True]
    short = dict(soak, idle_seconds=60)
    assert [ok for _, _, ok, _ in targets.soak_rows(short)] == [None]
