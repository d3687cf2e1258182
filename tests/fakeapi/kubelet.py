"""A kubelet and an in-pod runner for the fake API server: pods warm up, run one request, end.

The runner keeps the real one's contract (docs/runner-protocol.md): it reads exactly one
request line in its life, writes `CXS1` (stdout and termination log) when it starts the code,
then the `CXR1` report, and exits. Every start is recorded in `starts`: the ground truth the
at-most-once tests count, independent of anything the operator says.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from codeexec import clock, podspec
from codeexec.kube.attach import PROTOCOL, STDIN, STDOUT
from codeexec.protocol import REPORT_PREFIX, started_line

from .client import refused
from .server import JSON, FakeApi

# A program: the request's arguments -> (seconds it runs, what main returns).
Program = Callable[[dict[str, Any]], tuple[float, Any]]


def default_program(arguments: dict[str, Any]) -> tuple[float, Any]:
    return float(arguments.get("sleep", 0.05)), arguments.get("n")


@dataclass(frozen=True)
class Start:
    pod: str
    request_id: str
    claimed_by: str | None
    at: float
    sender: str  # the client (replica) whose attach session carried the request


class FakeSocket:
    """The websocket of one attach session, as aiohttp's client would present it."""

    protocol = PROTOCOL

    def __init__(self, container: _Container, client: str) -> None:
        self.container = container
        self.client = client
        self.inbox: asyncio.Queue[aiohttp.WSMessage | None] = asyncio.Queue()
        self.closed = False
        self.deaf = False  # a stale session: bytes sent on it vanish, nothing comes back

    def __aiter__(self) -> FakeSocket:
        return self

    async def __anext__(self) -> aiohttp.WSMessage:
        msg = await self.inbox.get()
        if msg is None:
            self.closed = True
            self.inbox.put_nowait(None)
            raise StopAsyncIteration
        return msg

    def deliver(self, channel: int, data: bytes) -> None:
        if not self.closed and not self.deaf:
            self.inbox.put_nowait(
                aiohttp.WSMessage(aiohttp.WSMsgType.BINARY, bytes([channel]) + data, None)
            )

    async def send_bytes(self, data: bytes) -> None:
        if self.closed:
            raise ConnectionResetError("attach session closed")
        await asyncio.sleep(0)
        if data and data[0] == STDIN and not self.deaf:
            self.container.stdin(data[1:], self.client)

    async def close(self) -> None:
        self.end()

    def end(self) -> None:
        if not self.closed:
            self.closed = True
            self.container.sessions.discard(self)
            self.inbox.put_nowait(None)


@dataclass(eq=False)
class _Container:
    kubelet: Kubelet
    pod: str
    state: str = "waiting"  # waiting running terminated
    buffer: bytes = b""
    request: dict[str, Any] | None = None
    sessions: set[FakeSocket] = field(default_factory=set)
    message: str = ""
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    deadline: asyncio.TimerHandle | None = None
    began: float | None = None
    stopping: bool = False

    def stdin(self, data: bytes, sender: str) -> None:
        if self.state != "running" or self.request is not None:
            return  # the runner reads one line in its life, then never reads stdin again
        self.buffer += data
        if b"\n" not in self.buffer:
            return
        line = self.buffer.split(b"\n", 1)[0]
        self.request = json.loads(line)
        self.tasks.append(asyncio.get_running_loop().create_task(self.run(self.request, sender)))

    def out(self, line: bytes) -> None:
        for s in list(self.sessions):
            s.deliver(STDOUT, line + b"\n")

    async def run(self, request: dict[str, Any], sender: str) -> None:
        k = self.kubelet
        pod = k.api.read("pods", k.namespace, self.pod) or {"metadata": {}}
        labels = pod["metadata"].get("labels") or {}
        k.starts.append(
            Start(
                self.pod, request["id"], labels.get(podspec.CLAIMED_BY_LABEL), clock.time(), sender
            )
        )
        started = started_line(request["id"]).decode()
        self.message = started
        self.out(started.encode())
        seconds, value = k.program(request.get("arguments") or {})
        await asyncio.sleep(seconds)
        if self.state != "running":
            return
        report = {
            "id": request["id"],
            "started": True,
            "exit": {"code": 0},
            "result": {"kind": "returned", "value": value},
            "stdout": {"text": "", "bytes": 0},
            "stderr": {"text": "", "bytes": 0},
            "usage": {"wallMs": seconds * 1000},
        }
        line = REPORT_PREFIX + json.dumps(report).encode()
        self.message = line.decode()
        self.out(line)
        await asyncio.sleep(0.01)
        k.terminate(self.pod, exit_code=0)


class Kubelet:
    """Runs the sandbox namespace's pods: schedules, starts, readies, enforces deadlines, ends."""

    def __init__(
        self,
        api: FakeApi,
        namespace: str,
        *,
        start_after: float = 0.3,
        ready_after: float = 0.5,
        stop_after: float = 0.2,
        program: Program = default_program,
        capacity: int | None = None,
    ) -> None:
        self.api, self.namespace = api, namespace
        # Running pods the node holds; a pod beyond it stays Pending, unschedulable, until a
        # running one ends (as the scheduler reports a full cluster).
        self.capacity = capacity
        self.start_after, self.ready_after, self.stop_after = start_after, ready_after, stop_after
        self.program = program
        self.containers: dict[str, _Container] = {}
        self.starts: list[Start] = []
        self.attach_refused: set[str] = set()
        # Sessions opened on warm pods (pre-attached) go stale unnoticed: what is sent on them
        # is lost, as when a proxy drops an idle stream without closing it.
        self.stale_warm_sessions = False
        api.hooks.append(self._changed)
        api.attach = self.attach

    def started_for(self, execution_uid: str) -> list[Start]:
        return [s for s in self.starts if s.claimed_by == execution_uid]

    # --- reacting to the API server --------------------------------------------------------------

    def _changed(self, type_: str, obj: JSON) -> None:
        meta = obj["metadata"]
        if obj.get("kind", "Pod") != "Pod" or meta.get("namespace") != self.namespace:
            return
        if "containers" not in (obj.get("spec") or {}):
            return
        name = meta["name"]
        loop = asyncio.get_running_loop()
        c = self.containers.get(name)
        if type_ == "ADDED" and c is None:
            c = self.containers[name] = _Container(self, name)
            c.tasks.append(loop.create_task(self._start(name)))
            return
        if c is None:
            return
        if type_ == "DELETED":
            self._kill(c, 137, "Error", record=False)
            return
        if meta.get("deletionTimestamp") and not c.stopping:
            c.stopping = True
            grace = int(meta.get("deletionGracePeriodSeconds") or 0)
            c.tasks.append(loop.create_task(self._stop(name, min(grace, self.stop_after))))
        self._arm_deadline(c, obj)

    def _full(self) -> bool:
        running = sum(1 for c in self.containers.values() if c.state == "running")
        return self.capacity is not None and running >= self.capacity

    async def _start(self, name: str) -> None:
        await asyncio.sleep(self.start_after)
        marked = False
        while self._full():
            if self.api.read("pods", self.namespace, name) is None:
                return
            if not marked:
                marked = True

                def unschedulable(p: JSON) -> None:
                    p["status"] = {
                        "phase": "Pending",
                        "conditions": [
                            {
                                "type": "PodScheduled",
                                "status": "False",
                                "reason": "Unschedulable",
                                "message": "0/1 nodes are available: 1 Insufficient memory.",
                            }
                        ],
                    }

                self.api.put("pods", self.namespace, name, unschedulable)
            await asyncio.sleep(1.0)
        now = clock.now().strftime("%Y-%m-%dT%H:%M:%SZ")

        def running(p: JSON) -> None:
            p["spec"]["nodeName"] = "node-1"
            p["status"] = {
                "phase": "Running",
                "startTime": now,
                "conditions": [{"type": "Ready", "status": "False"}],
                "containerStatuses": [
                    {"name": podspec.CONTAINER, "ready": False, "state": {"running": {}}}
                ],
            }

        c = self.containers[name]
        if c.state != "waiting" or self.api.read("pods", self.namespace, name) is None:
            return
        c.state = "running"
        c.began = clock.monotonic()
        self.api.put("pods", self.namespace, name, running)
        await asyncio.sleep(self.ready_after)
        if c.state != "running":
            return

        def ready(p: JSON) -> None:
            p["status"]["conditions"] = [{"type": "Ready", "status": "True"}]
            p["status"]["containerStatuses"][0]["ready"] = True

        if self.api.read("pods", self.namespace, name) is not None:
            self.api.put("pods", self.namespace, name, ready)

    def _arm_deadline(self, c: _Container, obj: JSON) -> None:
        ads = (obj.get("spec") or {}).get("activeDeadlineSeconds")
        began = c.began
        if ads is None or began is None or c.state != "running":
            return
        if c.deadline is not None:
            c.deadline.cancel()
        delay = max(0.0, began + int(ads) - clock.monotonic())
        c.deadline = asyncio.get_running_loop().call_later(
            delay, lambda: self.terminate(c.pod, 137, pod_reason="DeadlineExceeded")
        )

    async def _stop(self, name: str, after: float) -> None:
        await asyncio.sleep(after)
        self.terminate(name, 137, "Error")
        self.api.finish_termination(self.namespace, name)

    # --- the container ---------------------------------------------------------------------------

    def _kill(self, c: _Container, code: int, reason: str, *, record: bool = True) -> None:
        if c.state == "terminated":
            return
        c.state = "terminated"
        if c.deadline is not None:
            c.deadline.cancel()
        for s in list(c.sessions):
            s.end()

    def terminate(
        self, name: str, exit_code: int, reason: str | None = None, pod_reason: str | None = None
    ) -> None:
        c = self.containers.get(name)
        if c is None or c.state == "terminated":
            return
        self._kill(c, exit_code, reason or "Completed")
        message = c.message

        def ended(p: JSON) -> None:
            st = p.setdefault("status", {})
            st["phase"] = "Succeeded" if exit_code == 0 and not pod_reason else "Failed"
            if pod_reason:
                st["reason"] = pod_reason
            st["conditions"] = [{"type": "Ready", "status": "False"}]
            st["containerStatuses"] = [
                {
                    "name": podspec.CONTAINER,
                    "ready": False,
                    "state": {
                        "terminated": {
                            "exitCode": exit_code,
                            "reason": reason or ("Completed" if exit_code == 0 else "Error"),
                            "message": message,
                        }
                    },
                }
            ]

        if self.api.read("pods", self.namespace, name) is not None:
            self.api.put("pods", self.namespace, name, ended)

    def attach(self, namespace: str, name: str, url: str, client: str) -> FakeSocket:
        c = self.containers.get(name)
        if self.api.read("pods", namespace, name) is None or c is None:
            raise refused(url, 404, f'pods "{name}" not found')
        if name in self.attach_refused or c.state != "running":
            raise refused(url, 400, "container is not running")
        sock = FakeSocket(c, client)
        labels = ((self.api.read("pods", namespace, name) or {}).get("metadata") or {}).get(
            "labels"
        ) or {}
        sock.deaf = self.stale_warm_sessions and labels.get(podspec.STATE_LABEL) == podspec.WARM
        c.sessions.add(sock)
        return sock

    def drop_sessions(self, name: str) -> None:
        c = self.containers.get(name)
        for s in list(c.sessions if c else ()):
            s.end()
