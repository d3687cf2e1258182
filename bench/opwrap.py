"""The operator, unchanged, with every Kubernetes API request it makes counted.

    python -m bench.opwrap operator

Both of the operator's clients (Kopf's and `codeexec.kube.client`) are aiohttp sessions: one
wrapper around `aiohttp.ClientSession._request` sees every request, watch and attach of the
process. The counts are a Prometheus counter in the default registry, so they appear on the
operator's own /metrics as `bench_operator_api_requests_total{verb,resource}`. This is how
`make scale` counts the requests made at startup without the API server's audit log (which
our cluster does not enable) and without mixing in other clients on the same cluster.

`BENCH_MEMORY_TRACE=FILE` also records where the operator's memory goes: at each 16 MB of RSS
growth, tracemalloc's largest allocation sites (`BENCH_MEMORY_TRACE_FRAMES` frames deep,
default 1) are appended to FILE. It slows the operator several times over: for finding a
leak, not for any figure.

`BENCH_DECODE_TRACE=FILE` writes, every 10 s, how many JSON documents and bytes the operator
decoded (`jsonbounds.loads`, Kopf's included) by the function that asked: what the decoder's
share of a profile is spent on. `BENCH_GC_TRACE=FILE` writes, every 10 s, the collections of
Python's cyclic garbage collector by generation, their count, total and longest time and what
each generation had pending.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
import tracemalloc
from typing import Any

import aiohttp
from prometheus_client import Counter
from yarl import URL

API_REQUESTS = Counter(
    "bench_operator_api_requests",
    "Kubernetes API requests made by this operator process",
    ["verb", "resource"],
)

_PREFIX = re.compile(r"^/(?:api/[^/]+|apis/[^/]+/[^/]+)")


def classify(method: str, url: str | URL, params: Any) -> tuple[str, str]:
    """(verb, resource[/subresource]) as the API server's metrics would name them."""
    u = URL(str(url))
    query = dict(u.query)
    if isinstance(params, dict):
        query.update({str(k): str(v) for k, v in params.items()})
    path = u.path
    m = _PREFIX.match(path)
    if not m:
        return method.upper(), path or "/"
    rest = [p for p in path[m.end() :].split("/") if p]
    if not rest:
        return method.upper(), "(discovery)"
    if len(rest) >= 2 and rest[0] == "namespaces" and len(rest) > 2:
        rest = rest[2:]
    resource = rest[0] if rest else ""
    named = len(rest) >= 2
    if len(rest) >= 3:
        resource += "/" + rest[2]
    verb = method.upper()
    if verb == "GET":
        if str(query.get("watch", "")).lower() in ("true", "1"):
            verb = "WATCH"
        elif not named:
            verb = "LIST"
    return verb, resource


def install() -> None:
    original = aiohttp.ClientSession._request

    async def counted(
        self: aiohttp.ClientSession, method: str, str_or_url: Any, *args: Any, **kwargs: Any
    ) -> Any:
        with contextlib.suppress(Exception):  # counting must never break a request
            API_REQUESTS.labels(*classify(method, str_or_url, kwargs.get("params"))).inc()
        return await original(self, method, str_or_url, *args, **kwargs)

    aiohttp.ClientSession._request = counted  # type: ignore[method-assign]


# Trace records at each step of RSS growth (16 MB: ~25 records from an empty operator to the
# 432.6 MB it once reached), the 25 largest sites each.
TRACE_STEP_BYTES = 16 << 20
TRACE_TOP = 25


def trace_memory(path: str, frames: int) -> None:
    """Appends the largest allocation sites to `path` whenever RSS grew by a step."""
    from bench.operator import read_proc  # only when tracing: the operator's own reader

    def rss() -> int:
        stats = read_proc(os.getpid())
        return stats.rss_bytes if stats else 0

    tracemalloc.start(frames)
    start = rss()

    def watch() -> None:
        mark = start
        while True:
            time.sleep(1.0)
            now = rss()
            if now < mark + TRACE_STEP_BYTES:
                continue
            mark = now
            top = tracemalloc.take_snapshot().statistics("traceback")[:TRACE_TOP]
            with open(path, "a") as out:
                out.write(f"=== {time.strftime('%H:%M:%S')} RSS {now / 2**20:.1f} MB\n")
                for stat in top:
                    out.write(f"{stat.size / 2**20:8.1f} MB {stat.count:9d}\n")
                    for line in stat.traceback.format():
                        out.write(f"    {line}\n")

    threading.Thread(target=watch, name="memory-trace", daemon=True).start()


def trace_decodes(path: str) -> None:
    """Counts `jsonbounds.loads` calls and bytes by their caller, rewritten to `path` every 10 s."""
    import sys
    from collections import Counter as Tally

    from codeexec import jsonbounds

    calls: Tally[str] = Tally()
    sizes: Tally[str] = Tally()
    loads = jsonbounds.loads

    def counted(data: Any, **kwargs: Any) -> Any:
        frame = sys._getframe(1)
        while frame.f_back is not None and frame.f_code.co_filename.endswith(
            ("kopfjson.py", "aiohttp/client_reqrep.py", "json/__init__.py")
        ):
            frame = frame.f_back
        where = f"{os.path.basename(frame.f_code.co_filename)}:{frame.f_code.co_name}"
        calls[where] += 1
        sizes[where] += len(data)
        return loads(data, **kwargs)

    jsonbounds.loads = counted

    def write() -> None:
        while True:
            time.sleep(10.0)
            with open(path, "w") as out:
                for where, n in sizes.most_common():
                    out.write(f"{n:12d} bytes {calls[where]:8d} documents  {where}\n")

    threading.Thread(target=write, name="decode-trace", daemon=True).start()


def trace_gc(path: str) -> None:
    """Times every collection (gc.callbacks), rewritten to `path` every 10 s."""
    import gc

    started: list[float] = [0.0]
    count = [0, 0, 0]
    total = [0.0, 0.0, 0.0]
    longest = [0.0, 0.0, 0.0]

    def callback(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
            return
        gen = int(info.get("generation", 0))
        spent = time.perf_counter() - started[0]
        count[gen] += 1
        total[gen] += spent
        longest[gen] = max(longest[gen], spent)

    gc.callbacks.append(callback)

    def write() -> None:
        while True:
            time.sleep(10.0)
            counts = gc.get_count()
            with open(path, "w") as out:
                for gen in range(3):
                    out.write(
                        f"gen{gen}: {count[gen]} collections, {1000 * total[gen]:.1f} ms, "
                        f"longest {1000 * longest[gen]:.2f} ms, pending {counts[gen]}\n"
                    )

    threading.Thread(target=write, name="gc-trace", daemon=True).start()


def main() -> None:
    install()
    gc_trace = os.environ.get("BENCH_GC_TRACE")
    if gc_trace:
        trace_gc(gc_trace)
    decodes = os.environ.get("BENCH_DECODE_TRACE")
    if decodes:
        trace_decodes(decodes)
    trace = os.environ.get("BENCH_MEMORY_TRACE")
    if trace:
        trace_memory(trace, int(os.environ.get("BENCH_MEMORY_TRACE_FRAMES") or 1))
    from codeexec.cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
