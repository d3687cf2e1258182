"""The operator, unchanged, with every Kubernetes API request it makes counted.

    python -m bench.opwrap operator

Both of the operator's clients (Kopf's and `codeexec.kube.client`) are aiohttp sessions: one
wrapper around `aiohttp.ClientSession._request` sees every request, watch and attach of the
process. The counts are a Prometheus counter in the default registry, so they appear on the
operator's own /metrics as `bench_operator_api_requests_total{verb,resource}`. This is how
`make scale` counts the requests made at startup without the API server's audit log (which
our cluster does not enable) and without mixing in other clients on the same cluster.
"""

from __future__ import annotations

import contextlib
import re
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


def main() -> None:
    install()
    from codeexec.cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
