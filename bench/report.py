"""Tables (markdown, also printed), the latency histogram PNG and py-spy profile summaries."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from bench import capacity, runtimes, soak, targets
from bench.results import BENCH_DIR, fmt_ms, load_results, md_table, results_paths
from codeexec.protocol import ROAD_PARTS

log = logging.getLogger("bench")

TARGETS = {
    "warm_p50_ms": 150,
    "warm_p99_ms": 500,
    "warm_vs_cold_p50": 8.0,
    "throughput_ratio": 0.8,
    "scale_ready_s": 30,
    "scale_rss_mb": 250,
}


def speedup(cold: float | None, warm: float | None) -> float | None:
    if not cold or not warm:
        return None
    return round(cold / warm, 1)


def safe_ratio(a: float | None, b: float | None) -> float | None:
    if a is None or not b:
        return None
    return round(a / b, 2)


def verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("met" if ok else "**missed**")


# ---- bench ---------------------------------------------------------------------------------


def render_bench(r: dict[str, Any]) -> str:
    out = [f"## make bench ({r.get('started', '?')}{', smoke' if r.get('smoke') else ''})", ""]
    warm, cold = r.get("warm", {}), r.get("cold", {})
    rows = []
    for lang in ("python", "nodejs"):
        for kind, data in (("warm", warm.get(lang)), ("cold", cold.get(lang))):
            if not data:
                continue
            lat = data["latency_ms"]
            rows.append(
                [
                    f"{kind} {lang}",
                    lat.get("n", 0),
                    data.get("failed", 0),
                    fmt_ms(lat.get("p50")),
                    fmt_ms(lat.get("p95")),
                    fmt_ms(lat.get("p99")),
                    fmt_ms(lat.get("max")),
                ]
            )
    out += [
        "End-to-end latency, ms (create call -> terminal status seen on the client's watch;",
        "cold: create -> pod terminated seen on a watch -> log read):",
        "",
    ]
    out.append(md_table(["path", "n", "failed", "p50", "p95", "p99", "max"], rows))
    out.append("")
    wvc = r.get("warm_vs_cold", {})
    rows = []
    for lang in ("python", "nodejs"):
        if lang not in wvc or lang not in warm:
            continue
        p50 = warm[lang]["latency_ms"].get("p50")
        p99 = warm[lang]["latency_ms"].get("p99")
        sp = wvc[lang].get("p50")
        rows.append(
            [
                lang,
                f"{fmt_ms(p50)} ({verdict(p50 is not None and p50 <= TARGETS['warm_p50_ms'])})",
                f"{fmt_ms(p99)} ({verdict(p99 is not None and p99 <= TARGETS['warm_p99_ms'])})",
                f"{sp}x ({verdict(sp is not None and sp >= TARGETS['warm_vs_cold_p50'])})",
                f"{wvc[lang].get('p99')}x",
            ]
        )
    split = []
    for lang in ("python", "nodejs"):
        data = warm.get(lang) or {}
        if "latency_ms_pool_full" in data:
            f, g = data["latency_ms_pool_full"], data["latency_ms_pool_refilling"]
            split.append(
                f"- warm {lang}: pool full {f.get('n', 0)}x p50 {fmt_ms(f.get('p50'))} / p99 "
                f"{fmt_ms(f.get('p99'))} ms; pool refilling beside it {g.get('n', 0)}x p50 "
                f"{fmt_ms(g.get('p50'))} / p99 {fmt_ms(g.get('p99'))} ms"
            )
    for lang, data in (r.get("warm_pool_full") or {}).items():
        f = data.get("latency_ms") or {}
        split.append(
            f"- warm {lang}, a series of its own, each started with the pool full: "
            f"{f.get('n', 0)}x p50 {fmt_ms(f.get('p50'))} / p99 {fmt_ms(f.get('p99'))} ms"
        )
    if split:
        out += ["Warm latency by what the node was doing (replacement pods warming up or not):"]
        out += [*split, ""]
    out.append(
        md_table(
            [
                "language",
                "warm p50 <= 150",
                "warm p99 <= 500",
                "cold/warm p50 >= 8x",
                "cold/warm p99",
            ],
            rows,
        )
    )
    out.append("")
    rows = []
    for lang in ("python", "nodejs"):
        b = warm.get(lang, {}).get("operator_breakdown")
        if not b:
            continue
        for step in (
            "queue_wait",
            "claim",
            "status_write",
            "deliver_and_run",
            *(f"road_{part}" for part in ROAD_PARTS),
            "runner_wall",
            "end_to_end",
        ):
            h = b.get(step, {})
            rows.append(
                [
                    lang,
                    step,
                    h.get("count", 0),
                    fmt_ms(h.get("mean_ms")),
                    fmt_ms(h.get("p50_ms")),
                    fmt_ms(h.get("p99_ms")),
                ]
            )
    if rows:
        out += [
            "Operator's own breakdown of the warm series (its /metrics; status_write counts",
            "every status write; p50/p99 interpolated within histogram buckets):",
            "",
        ]
        out.append(md_table(["language", "step", "count", "mean ms", "~p50 ms", "~p99 ms"], rows))
        out.append("")
    rows = []
    for lang in ("python", "nodejs"):
        w = warm.get(lang, {}).get("cluster_writes_per_execution") or {}
        for who, verbs in (w.get("by_component_and_verb") or {}).items():
            detail = ", ".join(f"{what} {n}" for what, n in verbs.items())
            rows.append([lang, who, w["by_component"].get(who), detail])
        if w.get("available"):
            rows.append([lang, "**all**", w["total"], ""])
    if rows:
        out += [
            "Cluster-wide writes per warm execution (the API server's audit log; replacement pod",
            "included):",
            "",
        ]
        out.append(md_table(["language", "component", "writes", "by verb"], rows))
        out.append("")
    tp = r.get("throughput")
    if tp:
        o, c = tp["operator"], tp["raw_pod_churn"]
        lean = tp.get("operator_no_preload")
        target = TARGETS["throughput_ratio"]
        ok = tp.get("ratio") is not None and tp["ratio"] >= target
        ok_lean = tp.get("ratio_no_preload") is not None and tp["ratio_no_preload"] >= target

        def row(label: str, t: dict[str, Any], width: Any) -> list[Any]:
            return [
                label,
                width,
                t["duration_seconds"],
                t["completed_in_window"],
                t["per_second"],
                t["per_second_second_half"],
                fmt_ms(t["latency_ms"].get("p50")),
                fmt_ms(t["latency_ms"].get("p99")),
                t.get("machine_cpu_seconds_per_execution", "-"),
                (t.get("machine") or {}).get("cpu_busy_percent", "-"),
            ]

        out.append(
            md_table(
                [
                    "",
                    "concurrency",
                    "window s",
                    "completed",
                    "per s",
                    "per s (2nd half)",
                    "latency p50 ms",
                    "p99 ms",
                    "machine CPU-s per execution",
                    "machine busy %",
                ],
                [
                    row("operator, python, numpy+pandas preloaded", o, o["clients"]),
                    *([row("operator, python, no preload", lean, lean["clients"])] if lean else []),
                    row("raw pod churn (bare python3 -c)", c, c["workers"]),
                ],
            )
        )
        out.append("")
        out.append(
            f"Throughput ratio operator / raw churn, default preload: {tp.get('ratio')} "
            f"(second half {tp.get('ratio_second_half')}); target >= 0.8: {verdict(ok)}"
        )
        if lean:
            out.append("")
            out.append(
                f"Same work as the bare pod (pool `preload: []`): {tp.get('ratio_no_preload')} "
                f"(second half {tp.get('ratio_no_preload_second_half')}); target >= 0.8: "
                f"{verdict(ok_lean)}"
            )
        out.append("")
    cost = r.get("operator_cost")
    if cost:
        out.append(
            f"Operator cost: {cost['cpu_ms_per_execution']} CPU ms per execution "
            f"({cost['executions']} executions, {cost['cpu_seconds']} CPU s); idle "
            f"{cost['idle_cpu_per_second']} CPU s/s; peak RSS {cost['peak_rss_mb']} MB."
        )
        out.append("")
    if r.get("runtimes"):
        out.append(runtimes.render(r["runtimes"]))
    load = r.get("machine_load")
    if load:
        m = r.get("machine", {})
        out.append(
            f"Machine: {m.get('cpus')} CPUs ({m.get('cpu_model')}), {m.get('memory_gib')} GiB; "
            f"whole-machine CPU busy {load['cpu_busy_percent']}% over {load['seconds']} s, "
            f"load average {load['loadavg_start']} -> {load['loadavg_end']}."
        )
        out.append("")
    return "\n".join(out)


# ---- chaos ---------------------------------------------------------------------------------


def render_chaos(r: dict[str, Any]) -> str:
    out = [f"## make chaos ({r.get('started', '?')}{', smoke' if r.get('smoke') else ''})", ""]
    scenarios = r.get("scenarios", {})
    classic = {k: s for k, s in scenarios.items() if "fault_seconds" not in s}
    faults = {k: s for k, s in scenarios.items() if "fault_seconds" in s}
    rows = []
    for name, s in classic.items():
        rows.append(
            [
                name,
                s["executions"],
                s["terminal"],
                s["duplicates"],
                s["leaked_pods"],
                s["lost_results"],
                s.get("multi_pod_executions", 0),
                s.get("unproven", 0),
                s.get("failed_without_running", 0),
                s.get("disturbed", 0),
                s.get("chaos_actions", 0),
            ]
        )
    if rows:
        out.append(
            md_table(
                [
                    "scenario",
                    "executions",
                    "terminal",
                    "started twice",
                    "leaked pods",
                    "lost results",
                    ">1 pod claimed",
                    "unproven",
                    "failed without running",
                    "disturbed",
                    "chaos actions",
                ],
                rows,
            )
        )
    out.append("")
    if faults:
        out.append(render_faults(faults))
    for name, s in scenarios.items():
        cls = ", ".join(f"{k}: {v}" for k, v in sorted(s.get("classification", {}).items()))
        out.append(f"- {name} classification: {cls}")
        mism = s.get("unexpected_classification", {})
        if mism:
            out.append(f"  - not the program's own outcome (expected -> got): {mism}")
    out.append("")
    return "\n".join(out)


def render_faults(faults: dict[str, Any]) -> str:
    """The cluster faults: safety figures, the fault's length and the recovery after it."""
    rows = [
        [
            name,
            s["executions"],
            s["duplicates"],
            s["lost_results"],
            s["leaked_pods"],
            s.get("stuck", 0),
            s.get("unproven", 0),
            s.get("terminal_rewrites", 0),
            s.get("caught_by_fault", 0),
            s.get("fault_seconds", "-"),
            "-" if s.get("recovery_seconds") is None else s["recovery_seconds"],
            ("passed" if s.get("passed") else "**failed**")
            + (f" ({s['fault_error']})" if s.get("fault_error") else ""),
        ]
        for name, s in faults.items()
    ]
    headers = [
        "cluster fault",
        "executions",
        "started twice",
        "lost",
        "leaked pods",
        "stuck",
        "unproven",
        "terminal rewrites",
        "caught by the fault",
        "fault s",
        "recovery s",
        "",
    ]
    return md_table(headers, rows) + "\n"


# ---- scale ---------------------------------------------------------------------------------


def render_scale(r: dict[str, Any]) -> str:
    out = [f"## make scale ({r.get('started', '?')}{', smoke' if r.get('smoke') else ''})", ""]
    ready = r.get("ready_seconds")
    rss = r.get("peak_rss_mb")
    until_ready = r.get("api_requests_until_ready", {})
    until_done = r.get("api_requests_until_done", {})
    rows: list[list[Any]] = [
        [
            "finished / pending executions",
            f"{r.get('finished')} / {r.get('pending')} in {r.get('namespaces')} namespaces",
            "",
        ],
        [
            "time to /readyz after restart",
            f"{ready} s (empty cluster: {r.get('empty_ready_seconds')} s)",
            verdict(ready is not None and ready <= TARGETS["scale_ready_s"]),
        ],
        [
            "first pending execution picked up / every namespace picked up",
            f"{r.get('first_pending_picked_up_seconds')} s / "
            f"{r.get('every_namespace_picked_up_seconds')} s",
            "",
        ],
        [
            "all pending terminal after restart",
            f"{r.get('pending_done_seconds')} s ({r.get('pending_terminal')} terminal)",
            "",
        ],
        [
            "peak RSS",
            f"{rss} MB (at ready {r.get('rss_at_ready_mb')} MB; empty cluster "
            f"{r.get('empty_rss_mb')} MB)",
            verdict(rss is not None and rss < TARGETS["scale_rss_mb"]),
        ],
        [
            "API requests until ready (operator's own count)",
            _requests(until_ready),
            "",
        ],
        [
            "API requests until every pending one was done",
            _requests(until_done),
            "",
        ],
        [
            "finished executions whose resourceVersion changed",
            r.get("finished_changed"),
            verdict(r.get("finished_changed") == 0),
        ],
        [
            "executions finished by the operator (must equal pending)",
            f"{r.get('executions_finished_by_operator_total')} "
            f"({r.get('executions_finished_by_operator')})",
            verdict(r.get("executions_finished_by_operator_total") == r.get("pending")),
        ],
    ]
    out.append(md_table(["", "value", "target"], rows))
    out.append("")
    return "\n".join(out)


def _requests(counts: dict[str, Any], top: int = 6) -> str:
    if not counts:
        return "-"
    parts = [f"{k} {v}" for k, v in counts.items() if k != "total"][:top]
    return f"{counts.get('total')} ({', '.join(parts)}{', ...' if len(counts) > top + 1 else ''})"


# ---- files ---------------------------------------------------------------------------------


def write_all(smoke: bool) -> None:
    """results.md from every section of results.json; the PNG from the bench section."""
    doc = load_results(smoke)
    parts = [
        "# codeexec-operator benchmark results",
        "",
        "Generated by `make bench`, `make chaos`, `make scale` (bench/). "
        "See docs/benchmarks.md for what the numbers mean.",
        "",
    ]
    if "bench" in doc:
        parts.append(render_bench(doc["bench"]))
    if "chaos" in doc:
        parts.append(render_chaos(doc["chaos"]))
    if "scale" in doc:
        parts.append(render_scale(doc["scale"]))
    if "capacity" in doc:
        parts.append(capacity.render(doc["capacity"]))
    if "soak" in doc:
        parts.append(soak.render(doc["soak"]))
    parts.append(targets.render(doc))
    _, md = results_paths(smoke)
    md.write_text("\n".join(parts) + "\n")
    if "bench" in doc:
        png = BENCH_DIR / ("latency.smoke.png.tmp" if smoke else "latency.png")
        plot_latency(doc["bench"], png)


def plot_latency(r: dict[str, Any], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib not installed (pip install -e '.[bench]'): no %s", path.name)
        return
    series = []
    for kind in ("warm", "cold"):
        for lang in ("python", "nodejs"):
            data = r.get(kind, {}).get(lang)
            if data and data.get("samples_ms"):
                series.append((f"{kind} {lang} (n={len(data['samples_ms'])})", data["samples_ms"]))
    if not series:
        return
    lo = max(1.0, min(min(s) for _, s in series) * 0.8)
    hi = max(max(s) for _, s in series) * 1.2
    bins = [lo * (hi / lo) ** (i / 60) for i in range(61)]
    fig, ax = plt.subplots(figsize=(9, 4.8), dpi=110)
    colors = {
        "warm python": "#1f77b4",
        "warm nodejs": "#17becf",
        "cold python": "#d62728",
        "cold nodejs": "#ff7f0e",
    }
    for label, values in series:
        key = " ".join(label.split()[:2])
        ax.hist(values, bins=bins, alpha=0.6, label=label, color=colors.get(key))
    ax.set_xscale("log")
    for x, text in ((150, "target p50 150 ms"), (500, "target p99 500 ms")):
        ax.axvline(x, color="grey", linestyle="--", linewidth=0.8)
        ax.text(
            x,
            ax.get_ylim()[1] * 0.95,
            text,
            rotation=90,
            va="top",
            ha="right",
            fontsize=8,
            color="grey",
        )
    ax.set_xlabel("end-to-end latency, ms (log scale)")
    ax.set_ylabel("executions")
    ax.set_title("codeexec: warm pool vs one bare pod per execution")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", axis="x", alpha=0.2)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
