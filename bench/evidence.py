"""What the chaos runs submit (a mix of programs) and what they see happen to it: every
sandbox pod's own start and report records, every execution's status revisions."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from bench.cluster import CLAIMED_BY
from codeexec.api.models import Language
from codeexec.protocol import parse_termination_message

log = logging.getLogger("bench.chaos")


@dataclass(frozen=True)
class Program:
    id: str
    language: Language
    code: str
    expected: str
    timeout: int = 10
    weight: int = 1


PROGRAMS = [
    Program(
        "py-ok",
        "python",
        "def main(n):\n    print('ran', n, flush=True)\n    return n\n",
        "Succeeded",
        weight=25,
    ),
    Program(
        "py-slow-ok",
        "python",
        "import time\ndef main(n):\n    print('ran', n, flush=True)\n    time.sleep(2)\n"
        "    return n\n",
        "Succeeded",
        weight=15,
    ),
    Program(
        "py-exception",
        "python",
        "def main(n):\n    print('ran', n, flush=True)\n    raise ValueError(f'boom {n}')\n",
        "UserException",
        weight=15,
    ),
    Program(
        "py-timeout",
        "python",
        "def main(n):\n    print('ran', n, flush=True)\n    while True:\n        pass\n",
        "WallTimeout",
        timeout=2,
        weight=10,
    ),
    Program(
        "py-memory",
        "python",
        "def main(n):\n    print('ran', n, flush=True)\n    blocks = []\n    while True:\n"
        "        blocks.append(bytearray(16 * 1024 * 1024))\n",
        "MemoryLimit",
        timeout=30,
        weight=5,
    ),
    Program(
        "js-ok",
        "nodejs",
        "module.exports = ({ n }) => { console.log('ran', n); return n; };\n",
        "Succeeded",
        weight=15,
    ),
    Program(
        "js-exception",
        "nodejs",
        "module.exports = ({ n }) => { console.log('ran', n); throw new Error('boom ' + n); };\n",
        "UserException",
        weight=8,
    ),
    Program(
        "js-timeout",
        "nodejs",
        "module.exports = ({ n }) => { console.log('ran', n); for (;;) {} };\n",
        "WallTimeout",
        timeout=2,
        weight=7,
    ),
]


# ---- evidence -------------------------------------------------------------------------------


@dataclass
class PodEvidence:
    name: str
    execution_uid: str = ""
    started: bool = False  # a CXS1/CXR1 record with started=true was seen
    reported: bool = False  # a CXR1 record (the run's whole outcome) was seen
    record_seen: bool = False  # the container's terminated state (with message) was seen
    deleted: bool = False
    deleted_by_chaos: bool = False
    deleting: bool = False
    phase: str = ""


class PodRecorder:
    """Every pod of the sandbox namespace, by uid, with what it recorded about itself."""

    def __init__(self) -> None:
        self.pods: dict[str, PodEvidence] = {}

    def on_event(self, type_: str, pod: dict[str, Any]) -> None:
        meta = pod.get("metadata", {})
        uid = meta.get("uid", "")
        ev = self.pods.setdefault(uid, PodEvidence(meta.get("name", "")))
        claimed = (meta.get("labels") or {}).get(CLAIMED_BY)
        if claimed:
            ev.execution_uid = claimed
        ev.phase = (pod.get("status") or {}).get("phase", "")
        ev.deleting = bool(meta.get("deletionTimestamp"))
        if type_ == "DELETED":
            ev.deleted = True
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            term = (cs.get("state") or {}).get("terminated")
            if not term:
                continue
            ev.record_seen = True
            msg = term.get("message") or ""
            record = parse_termination_message(msg, _record_id(msg))
            ev.started = ev.started or record.started
            ev.reported = ev.reported or (record.report is not None and record.report.started)

    def of_execution(self, uid: str) -> list[PodEvidence]:
        return [p for p in self.pods.values() if p.execution_uid == uid]

    def live(self) -> list[PodEvidence]:
        return [p for p in self.pods.values() if not p.deleted and not p.deleting]


def _record_id(message: str) -> str:
    # Any id the pod recorded: what matters is whether it started, not which request.
    with contextlib.suppress(ValueError, IndexError, KeyError, TypeError):
        return str(json.loads(message.strip().split(" ", 1)[1])["id"])
    return ""


@dataclass
class ExecutionTrack:
    name: str
    program: Program
    n: int
    uid: str = ""
    submitted: float = 0.0  # time.monotonic() when the create call returned
    terminal_at: float | None = None  # time.monotonic() when the terminal status was seen
    status_pods: list[str] = field(default_factory=list)
    terminal: dict[str, Any] | None = None
    terminal_rewrites: int = 0
    done: asyncio.Event = field(default_factory=asyncio.Event)


class ExecutionTracker:
    def __init__(self) -> None:
        self.tracks: dict[str, ExecutionTrack] = {}

    def on_event(self, type_: str, obj: dict[str, Any]) -> None:
        t = self.tracks.get(obj.get("metadata", {}).get("name", ""))
        if t is None or type_ == "DELETED":
            return
        t.uid = obj["metadata"].get("uid", t.uid)
        status = obj.get("status") or {}
        pod = (status.get("sandbox") or {}).get("pod")
        if pod and pod not in t.status_pods:
            t.status_pods.append(pod)
        if status.get("phase") in ("Succeeded", "Failed"):
            key = (status.get("reason"), status.get("completionTime"))
            if t.terminal is None:
                t.terminal = obj
                t.terminal_at = time.monotonic()
                t.done.set()
            else:
                old = t.terminal.get("status") or {}
                if (old.get("reason"), old.get("completionTime")) != key:
                    t.terminal_rewrites += 1
                    t.terminal = obj
