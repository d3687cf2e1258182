"""Named crash points for resilience tests: `CODEEXEC_FAILPOINTS=after-claim,...`.

A hit failpoint SIGKILLs this process on the spot, as a node failure or an OOM kill would; the
tests then restart the operator and check that every execution still ends exactly once. Armed
as `name=SECONDS` it pauses there instead, so a test can disturb the world at that step. Unset
(the default), both are a dictionary lookup.
"""

from __future__ import annotations

import asyncio
import os
import signal

AFTER_CLAIM = "after-claim"  # pod claimed (the claim is the record), nothing sent yet
AFTER_RECORD = "after-record"  # Running written to the status while the code runs
AFTER_DELIVERY = "after-delivery"  # request sent, the code is running
BEFORE_STATUS = "before-status"  # report in hand, terminal status not yet written
AFTER_STATUS = "after-status"  # terminal status written, the pod not yet deleted
# Not a crash: Kopf's decoder raises on a response holding this text, as it did on a deeply
# nested object, so that a test can watch a dead watcher being noticed (kube/kopfjson.py).
WATCHER_FAILS = "watcher-fails"
WATCHER_FAILS_MARKER = "codeexec-failpoint-watcher-fails"


def _parse(raw: str) -> dict[str, float | None]:
    armed: dict[str, float | None] = {}
    for item in filter(None, (p.strip() for p in raw.split(","))):
        name, _, seconds = item.partition("=")
        armed[name] = float(seconds) if seconds else None
    return armed


_ARMED = _parse(os.environ.get("CODEEXEC_FAILPOINTS", ""))


def hit(name: str) -> None:
    if name in _ARMED and _ARMED[name] is None:
        os.kill(os.getpid(), signal.SIGKILL)


def armed(name: str) -> bool:
    return name in _ARMED


async def pause(name: str) -> None:
    seconds = _ARMED.get(name)
    if seconds:
        await asyncio.sleep(seconds)
