"""Where the runs' figures go: statistics, the machine they ran on, results files, Markdown."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import platform
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

log = logging.getLogger("bench")

REPO = Path(__file__).resolve().parent.parent
BENCH_DIR = REPO / "bench"


def utcnow() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---- statistics --------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), q in [0, 100]."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def summarize(values: list[float]) -> dict[str, float | int]:
    """n, min, mean, p50, p95, p99, max of a list of milliseconds (rounded to 0.1 ms)."""
    if not values:
        return {"n": 0}
    out: dict[str, float | int] = {"n": len(values)}
    out["min"] = min(values)
    out["mean"] = sum(values) / len(values)
    for q in (50, 95, 99):
        out[f"p{q}"] = percentile(values, q)
    out["max"] = max(values)
    return {k: (round(v, 1) if isinstance(v, float) else v) for k, v in out.items()}


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0 or math.isnan(a) or math.isnan(b):
        return None
    return round(a / b, 2)


# ---- the machine ---------------------------------------------------------------------------


def _cpu_times() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs, from /proc/stat."""
    fields = [float(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)
    total = sum(fields[:8])
    return total - idle, total


class MachineLoad:
    """How busy the whole machine was between `start` and `stop` (other engineers included)."""

    def __init__(self) -> None:
        self._start = _cpu_times()
        self._load_start = os.getloadavg()
        self._t0 = time.monotonic()

    def stop(self) -> dict[str, Any]:
        busy1, total1 = _cpu_times()
        busy0, total0 = self._start
        util = (busy1 - busy0) / (total1 - total0) if total1 > total0 else math.nan
        return {
            "seconds": round(time.monotonic() - self._t0, 1),
            "cpu_busy_percent": round(100 * util, 1),
            "busy_cpu_seconds": round((busy1 - busy0) / os.sysconf("SC_CLK_TCK"), 2),
            "loadavg_start": [round(x, 2) for x in self._load_start],
            "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        }


def machine_info() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem_kb = int(Path("/proc/meminfo").read_text().splitlines()[0].split()[1])
    return {
        "hostname": platform.node(),
        "cpu_model": model,
        "cpus": os.cpu_count(),
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


# ---- results files ------------------------------------------------------------------------


def results_paths(smoke: bool) -> tuple[Path, Path]:
    """results.json and results.md; a smoke run writes *.tmp files (ignored by git)."""
    if smoke:
        return BENCH_DIR / "results.smoke.json.tmp", BENCH_DIR / "results.smoke.md.tmp"
    return BENCH_DIR / "results.json", BENCH_DIR / "results.md"


def save_section(section: str, data: dict[str, Any], smoke: bool) -> Path:
    """Each command owns one section of results.json; the others are kept as they were."""
    path, _ = results_paths(smoke)
    doc: dict[str, Any] = {}
    if path.exists():
        with contextlib.suppress(ValueError):
            doc = json.loads(path.read_text())
    doc[section] = data
    path.write_text(json.dumps(doc, indent=2, sort_keys=False, default=str) + "\n")
    return path


def load_results(smoke: bool) -> dict[str, Any]:
    path, _ = results_paths(smoke)
    if not path.exists():
        return {}
    try:
        doc: dict[str, Any] = json.loads(path.read_text())
    except ValueError:
        return {}
    return doc


@contextlib.contextmanager
def run_lock() -> Iterator[None]:
    """One bench command at a time on this checkout: they share names and the metrics port."""
    path = BENCH_DIR / "run.lock.tmp"
    with path.open("w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SystemExit("another bench command is running (bench/run.lock.tmp)") from None
        yield


def fmt_ms(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.0f}" if v >= 100 else f"{v:.1f}"


def md_table(headers: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(str(c) for c in row) + " |")
    return "\n".join(lines)
