"""Issue 15's speed and scale targets against the latest `make bench`, `make scale` and
`make soak` sections of results.json: one row per figure, with its verdict."""

from __future__ import annotations

from typing import Any

from bench.results import fmt_ms, md_table

LANGS = ("python", "nodejs")
# (p50, p99) ms of a warm execution, end to end.
WARM_FULL_MS = (50.0, 120.0)
WARM_BACK_TO_BACK_MS = (70.0, 180.0)
WARM_VS_COLD_P50 = 40.0
OPERATOR_CPU_MS = 20.0
OPERATOR_REQUESTS = 5.0
CLUSTER_WRITES = 14.0
THROUGHPUT_RATIO = 1.2
SCALE_SIZE = (50_000, 1_000, 100)  # finished, pending, namespaces
SCALE_RSS_MB = 300.0
SCALE_READY_S = 5.0
HELD_KIB = 100.0
HELD_PODS = 200
IDLE_S = 3600
REHOLD_S = 30.0
# A p50/p99 from fewer samples says little; `--settle one` leaves one pool-full sample.
MIN_SAMPLES = 10

# (figure, value, met or None when not measured, target)
Row = tuple[str, Any, bool | None, str]


def _verdict(ok: bool | None) -> str:
    return "not measured" if ok is None else ("met" if ok else "**missed**")


def _at_most(figure: str, value: Any, limit: float, target: str) -> Row:
    return (figure, value, None if value is None else value <= limit, target)


def _latency(figure: str, lat: dict[str, Any] | None, limits: tuple[float, float]) -> Row:
    target = f"<= {limits[0]:.0f} / <= {limits[1]:.0f}"
    lat = lat or {}
    n = lat.get("n", 0)
    p50, p99 = lat.get("p50"), lat.get("p99")
    if n < MIN_SAMPLES or p50 is None or p99 is None:
        return (figure, f"{n} samples", None, target)
    ok = p50 <= limits[0] and p99 <= limits[1]
    return (figure, f"{fmt_ms(p50)} / {fmt_ms(p99)} (n={n})", ok, target)


def _pool_full(b: dict[str, Any], lang: str) -> dict[str, Any] | None:
    """The pool-full latencies: `--settle both`'s own series, else the main one if it settled
    full, else the pool-full samples of a back-to-back series (one, the first)."""
    full = (b.get("warm_pool_full") or {}).get(lang)
    if full:
        return full.get("latency_ms")  # type: ignore[no-any-return]
    w = (b.get("warm") or {}).get(lang) or {}
    return w.get("latency_ms") if w.get("settle") == "full" else w.get("latency_ms_pool_full")


def bench_rows(b: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    warm = b.get("warm") or {}
    for lang in LANGS:
        w = warm.get(lang) or {}
        figure = f"warm p50 / p99 ms, {lang}"
        rows.append(_latency(f"{figure}, pool full", _pool_full(b, lang), WARM_FULL_MS))
        rows.append(
            _latency(f"{figure}, back to back", w.get("latency_ms"), WARM_BACK_TO_BACK_MS)
            if w.get("settle") == "one"
            else (f"{figure}, back to back", "run with --settle one", None, "<= 70 / <= 180")
        )
    for lang in LANGS:
        x = ((b.get("warm_vs_cold") or {}).get(lang) or {}).get("p50")
        ok = None if x is None else x >= WARM_VS_COLD_P50
        rows.append((f"warm vs cold at p50, {lang}, the main series", x, ok, ">= 40x"))
        cold = (((b.get("cold") or {}).get(lang) or {}).get("latency_ms") or {}).get("p50")
        full = (_pool_full(b, lang) or {}).get("p50")
        x = round(cold / full, 1) if cold and full else None
        ok = None if x is None else x >= WARM_VS_COLD_P50
        rows.append((f"warm vs cold at p50, {lang}, pool full", x, ok, ">= 40x"))
    cost = b.get("operator_cost") or {}
    for lang, ms in (cost.get("cpu_ms_per_execution_warm_sequential") or {}).items():
        rows.append(
            _at_most(f"operator CPU ms per execution, {lang}", ms, OPERATOR_CPU_MS, "<= 20")
        )
    for lang in LANGS:
        w = warm.get(lang) or {}
        requests = (w.get("operator_api_requests_per_execution") or {}).get("total")
        figure = f"operator API requests per execution, {lang}"
        rows.append(_at_most(figure, requests, OPERATOR_REQUESTS, "<= 5"))
        writes = w.get("cluster_writes_per_execution") or {}
        total = writes.get("total") if writes.get("available") else None
        figure = f"cluster-wide API writes per execution, {lang}"
        rows.append(_at_most(figure, total, CLUSTER_WRITES, "<= 14"))
    tp = b.get("throughput") or {}
    ratio = tp.get("ratio")
    ok = None if ratio is None else ratio >= THROUGHPUT_RATIO
    rows.append(("throughput at saturation, operator / raw pod churn", ratio, ok, ">= 1.2x"))
    ours, raw = tp.get("operator") or {}, tp.get("raw_pod_churn") or {}
    cpu = "machine_cpu_seconds_per_execution"
    busy = [(side.get("machine") or {}).get("cpu_busy_percent") for side in (ours, raw)]
    rows.append(
        (
            "machine CPU-s per execution at saturation, operator / raw churn (machine busy %)",
            f"{ours.get(cpu)} / {raw.get(cpu)} ({busy[0]} / {busy[1]} %)",
            None,
            "reported",
        )
    )
    return rows


def scale_rows(s: dict[str, Any]) -> list[Row]:
    size = (s.get("finished", 0), s.get("pending", 0), s.get("namespaces", 0))
    label = f"{size[0]:,} finished + {size[1]:,} pending in {size[2]} namespaces"
    if any(have < want for have, want in zip(size, SCALE_SIZE, strict=True)):
        return [(f"operator memory at scale ({label})", "below the target's size", None, "")]
    changed = s.get("finished_changed")
    return [
        _at_most(f"operator peak RSS MB ({label})", s.get("peak_rss_mb"), SCALE_RSS_MB, "<= 300"),
        _at_most("ready after a restart, s", s.get("ready_seconds"), SCALE_READY_S, "<= 5"),
        ("finished executions touched", changed, None if changed is None else changed == 0, "0"),
    ]


def soak_rows(s: dict[str, Any]) -> list[Row]:
    pods, idle = s.get("pods", 0), s.get("idle_seconds", 0)
    if pods < HELD_PODS or idle < IDLE_S:
        return [("held attach sessions", f"{pods} pods, {idle} s idle", None, "")]
    low, replaced = s.get("idle_min_held"), s.get("idle_pods_replaced")
    kib, rehold = s.get("rss_per_held_pod_kib"), s.get("rehold_seconds")
    return [
        _at_most("operator memory per held session, KiB", kib, HELD_KIB, "<= 100"),
        (
            f"{pods} held over {idle} s idle: fewest held / pods replaced",
            f"{low} / {replaced}",
            low == pods and replaced == 0,
            "all / 0",
        ),
        _at_most("all re-held after an operator restart, s", rehold, REHOLD_S, "<= 30"),
    ]


def render(doc: dict[str, Any]) -> str:
    rows: list[Row] = []
    if "bench" in doc:
        rows += bench_rows(doc["bench"])
    if "scale" in doc:
        rows += scale_rows(doc["scale"])
    if "soak" in doc:
        rows += soak_rows(doc["soak"])
    table = [
        [figure, value, target, target if target == "reported" else _verdict(ok)]
        for figure, value, ok, target in rows
    ]
    return "\n".join(
        [
            "## Issue 15's targets (the latest section of each command)",
            "",
            md_table(["figure", "value", "target", "verdict"], table),
            "",
        ]
    )
