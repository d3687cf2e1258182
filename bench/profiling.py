"""py-spy on the operator: a recording around one phase of a run, and its summary by function,
by library and by whom the time was spent for."""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

from bench.results import BENCH_DIR, REPO

log = logging.getLogger("bench")

Recording = tuple[subprocess.Popen[bytes], Path]


def start(pid: int, label: str) -> Recording | None:
    """py-spy recording `pid` at 100 Hz into bench/profile-LABEL.txt.tmp; None without py-spy.

    Only samples of the thread holding the GIL (`--gil`): what the operator computes. Without
    it a thread woken by epoll counts as busy while it waits in the run queue for a CPU, which
    on a busy 2-CPU machine was 22-31 % of the samples (all in `EpollSelector.select`).
    """
    exe = shutil.which("py-spy") or str(REPO / ".venv" / "bin" / "py-spy")
    if not Path(exe).exists():
        log.warning("py-spy not installed: no profile")
        return None
    out = BENCH_DIR / f"profile-{label}.txt.tmp"
    command = [exe, "record", "--pid", str(pid), "--rate", "100", "--nonblocking", "--gil"]
    proc = subprocess.Popen(
        [*command, "--format", "raw", "--output", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return proc, out


def stop(recording: Recording | None) -> dict[str, Any]:
    """Ends the recording (SIGINT: py-spy writes what it has) and summarizes it."""
    if recording is None:
        return {}
    proc, out = recording
    proc.send_signal(2)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
    return summarize(out)


_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")
GROUPS = (
    ("codeexec", "/codeexec/"),
    ("kopf", "/kopf/"),
    ("aiohttp", "/aiohttp/"),
    ("pydantic", "/pydantic"),
    ("prometheus", "/prometheus_client/"),
    ("json", "/json/"),
    ("ssl", "/ssl.py"),
    ("asyncio", "/asyncio/"),
    ("yaml", "/yaml/"),
)


OWNERS = ("codeexec", "kopf")
_ROOTS = (
    "<frozen runpy>",
    "bench/opwrap.py",
    "codeexec/cli.py",
    "asyncio/runners.py",
    "asyncio/base_events.py",
    "asyncio/events.py",
)


def _is_root(file: str) -> bool:
    return any(file.endswith(r) or file == r for r in _ROOTS)


def _group(file: str) -> str:
    path = "/" + file  # py-spy names files relative to their sys.path entry
    for name, needle in GROUPS:
        if needle in path:
            return name
    return "other"


def summarize(path: Path, top: int = 12) -> dict[str, Any]:
    """Leaf (self) and inclusive shares per function and per library of py-spy's raw output."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return {}
    self_fn: Counter[str] = Counter()
    incl_fn: Counter[str] = Counter()
    self_group: Counter[str] = Counter()
    incl_group: Counter[str] = Counter()
    on_behalf: Counter[str] = Counter()  # the innermost frame of ours (or Kopf's) per sample
    total = 0
    for line in lines:
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        count = int(count_s)
        frames = []
        for raw in stack.split(";"):
            m = _FRAME.match(raw.strip())
            if m:
                frames.append((m["func"], m["file"]))
        if not frames:
            continue
        total += count
        func, file = frames[-1]
        self_fn[f"{func} ({_short(file)})"] += count
        self_group[_group(file)] += count
        # The entry points (runpy, our wrapper, the CLI, the event loop) are under everything.
        inner = [(fn, fl) for fn, fl in frames if not _is_root(fl)]
        for name in {f"{fn} ({_short(fl)})" for fn, fl in inner}:
            incl_fn[name] += count
        for g in {_group(fl) for _, fl in inner}:
            incl_group[g] += count
        owner = next(
            (f"{fn} ({_short(fl)})" for fn, fl in reversed(inner) if _group(fl) in OWNERS),
            "(event loop / other)",
        )
        on_behalf[owner] += count
    if not total:
        return {"samples": 0}

    def pct(c: Counter[str]) -> dict[str, float]:
        return {k: round(100 * v / total, 1) for k, v in c.most_common(top)}

    return {
        "samples": total,
        "gil_only": True,
        "file": str(path.relative_to(BENCH_DIR.parent))
        if path.is_relative_to(BENCH_DIR.parent)
        else str(path),
        "self_percent_by_library": pct(self_group),
        "inclusive_percent_by_library": pct(incl_group),
        "self_percent_top_functions": pct(self_fn),
        "percent_on_behalf_of": pct(on_behalf),
        "inclusive_percent_top_codeexec": {
            k: v
            for k, v in pct(
                Counter(
                    {k: n for k, n in incl_fn.items() if "(codeexec/" in k or "/codeexec/" in k}
                )
            ).items()
        },
    }


def _short(file: str) -> str:
    for marker in ("site-packages/", "/operator/"):
        if marker in file:
            return file.split(marker, 1)[1]
    return file
