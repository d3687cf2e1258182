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


def main() -> None:
    install()
    trace = os.environ.get("BENCH_MEMORY_TRACE")
    if trace:
        trace_memory(trace, int(os.environ.get("BENCH_MEMORY_TRACE_FRAMES") or 1))
    from codeexec.cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
