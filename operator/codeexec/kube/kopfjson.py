"""Kopf's API client decodes list and watch responses through `jsonbounds` (installed once).

Kopf 1.45 decodes watch lines with `json.loads` (module `kopf._cogs.clients.api`, name `json`)
and list/get/patch responses with aiohttp's `ClientResponse.json()`, whose `loads` defaults to
`json.loads`. Either one raising RecursionError on a deeply nested object killed the
CodeExecution watcher for every tenant, and the next start failed on the same initial list.
Both references are swapped for the bounded decoder; `installed()` lets the watchdog and the
tests check that the hook is still in place after a Kopf upgrade.
"""

from __future__ import annotations

import json
import types
from typing import Any

import aiohttp

from codeexec import failpoints, jsonbounds

_FAIL = failpoints.armed(failpoints.WATCHER_FAILS)


def _bounded_loads(data: str | bytes | bytearray, **_: Any) -> Any:
    if _FAIL and failpoints.WATCHER_FAILS_MARKER in str(data):
        raise RecursionError("failpoint watcher-fails: maximum recursion depth exceeded")
    return jsonbounds.loads(data)


_SHIM = types.SimpleNamespace(
    **{name: getattr(json, name) for name in dir(json) if not name.startswith("_")}
)
_SHIM.loads = _bounded_loads


def install() -> None:
    from kopf._cogs.clients import api

    api.json = _SHIM  # type: ignore[attr-defined,assignment]
    defaults = aiohttp.ClientResponse.json.__kwdefaults__
    if defaults is None or "loads" not in defaults:
        raise RuntimeError("aiohttp's ClientResponse.json has no `loads` default to replace")
    defaults["loads"] = _bounded_loads


def installed() -> bool:
    from kopf._cogs.clients import api

    defaults = aiohttp.ClientResponse.json.__kwdefaults__ or {}
    return getattr(api, "json", None) is _SHIM and defaults.get("loads") is _bounded_loads
