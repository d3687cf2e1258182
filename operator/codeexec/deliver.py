"""Send the request into a claimed pod over attach and read the runner's report.

The runner's report ends the success path: nothing here waits for the kubelet. Only when the
stream ends without a report does the caller turn to the pod's own record (`collect`).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from codeexec import backoff, clock, failpoints, podspec
from codeexec.kube.attach import (
    ERROR,
    STDOUT,
    AttachError,
    AttachSession,
    error_status,
    open_attach,
)
from codeexec.kube.client import Kube
from codeexec.kube.lease import Fence, NotLeading, unfenced
from codeexec.podcache import PodCache
from codeexec.protocol import ArtifactRecord, Report, ReportReader, Request

log = logging.getLogger(__name__)

# After the pod is seen finished, how long a report still in flight may take to arrive.
FINISH_GRACE_SECONDS = 2.0
# A session held open ahead of the claim may have been cut off silently somewhere between the
# API server and the runtime; if the runner does not confirm the request on it by then, the
# request is sent again on a fresh session (harmless: the runner takes one request only).
CONFIRM_SECONDS = 5.0


@dataclass(frozen=True)
class Delivery:
    """The runner's report if it arrived, and whether its `CXS1` record was seen on a stream
    (proof that the code was handed over, whatever happens to the pod afterwards)."""

    report: Report | None
    started: bool
    # The artifact records that came with the report (empty without one).
    artifacts: tuple[ArtifactRecord, ...] = ()
    # Our clock when the request last went out and when its report arrived (road_parts).
    sent_at: float = 0.0
    seen_at: float = 0.0


class NeverSent(Exception):
    """The pod went away before any byte of the request was sent: the code cannot have run."""


class _Exchange:
    """One attach session's worth of sending and listening."""

    def __init__(self, request: Request, fence: Fence) -> None:
        self.request = request
        self.fence = fence
        self.reader = ReportReader(request.id, request.max_line_bytes())
        self.sent = False
        self.sent_at = self.seen_at = 0.0

    async def run(self, session: AttachSession, pod: str, *, confirm: bool) -> Report | None:
        self.fence()  # a deposed leader sends nothing, not even a resend
        self.sent = True  # from here on, some bytes may be out: never call it unsent again
        self.sent_at = clock.time()
        await session.send(self.request.encode())
        # Give the bytes time to cross the wire: the test wants the code running, not lost.
        asyncio.get_running_loop().call_later(0.5, failpoints.hit, failpoints.AFTER_DELIVERY)
        frames = session.frames()
        while True:
            try:
                timeout = CONFIRM_SECONDS if confirm and not self.reader.started else None
                frame = await asyncio.wait_for(anext(frames), timeout)
            except StopAsyncIteration:
                return None
            except TimeoutError:
                log.info("no confirmation from %s on its held session; attaching anew", pod)
                return None
            if frame.channel == STDOUT:
                report = self.reader.feed(frame.data)
                if report is not None:
                    self.seen_at = clock.time()
                    return report
            elif frame.channel == ERROR:
                status = error_status(frame.data)
                if status.get("status") != "Success":
                    log.info("attach to %s ended: %s", pod, status.get("message"))
                return None


async def _pod_finished(cache: PodCache, pod: str) -> None:
    while True:
        view = cache.pods.get(pod)
        if view is None or view.finished or view.deleting:
            await asyncio.sleep(FINISH_GRACE_SECONDS)
            return
        await cache.wait_changed(5.0)


async def deliver(
    kube: Kube,
    cache: PodCache,
    namespace: str,
    pod: str,
    request: Request,
    deadline: float,
    *,
    held: AttachSession | None = None,
    fresh: bool = False,
    fence: Fence = unfenced,
) -> Delivery:
    """The report, or none when the pod ended, vanished or the deadline passed without one.

    `held` is a session opened before the claim (see preattach); `fresh` says that nobody can
    have sent this request yet (a claim made by this process just now), which is what lets a pod
    that vanishes before the first byte raise NeverSent instead of leaving the outcome unknown.

    Sending is safe to repeat: the runner reads exactly one request line in its life, so a
    resumed operator re-attaches and re-sends without any risk of the code starting twice.
    """
    exchange = _Exchange(request, fence)
    report = await _deliver(kube, cache, namespace, pod, exchange, deadline, held, fresh)
    started = exchange.reader.started or (report is not None and report.started)
    artifacts = tuple(exchange.reader.artifacts) if report is not None else ()
    return Delivery(report, started, artifacts, exchange.sent_at, exchange.seen_at)


async def _deliver(
    kube: Kube,
    cache: PodCache,
    namespace: str,
    pod: str,
    exchange: _Exchange,
    deadline: float,
    held: AttachSession | None,
    fresh: bool,
) -> Report | None:
    attempt = 0
    while clock.time() < deadline:
        view = cache.pods.get(pod)
        unsent = fresh and not exchange.sent
        if unsent and (view is None or not view.live):
            raise NeverSent(f"pod {pod} ended or was deleted before the request was sent")
        if view is not None and view.deleting and not exchange.sent:
            # A resumed claim on a pod being deleted: never start the code in a dying pod. Its
            # final record tells whether an earlier process had sent the request.
            return None
        session, confirm = held, held is not None
        held = None
        if session is None:
            try:
                session = await open_attach(kube, namespace, pod, podspec.CONTAINER, stdin=True)
            except AttachError as err:
                if unsent and err.status == 404:
                    raise NeverSent(f"pod {pod} is gone: {err}") from err
                log.info("attach to %s failed: %s", pod, err)
                session = None
        if session is not None:
            report = await _listen(exchange, session, cache, pod, deadline, confirm=confirm)
            if report is not None:
                return report
        view = cache.pods.get(pod)
        if view is None or view.finished or view.deleting:
            return None
        # The stream ended while the container still runs (API server restart, proxy timeout,
        # a held session gone stale): attach again and keep listening.
        attempt += 1
        await backoff.sleep(attempt + 1, base=0.05, cap=2.0)
    return None


async def _listen(
    exchange: _Exchange,
    session: AttachSession,
    cache: PodCache,
    pod: str,
    deadline: float,
    *,
    confirm: bool,
) -> Report | None:
    reading = asyncio.ensure_future(exchange.run(session, pod, confirm=confirm))
    finished = asyncio.ensure_future(_pod_finished(cache, pod))
    try:
        done, _ = await asyncio.wait(
            {reading, finished},
            timeout=max(0.0, deadline - clock.time()),
            return_when=asyncio.FIRST_COMPLETED,
        )
    finally:
        finished.cancel()
        if not reading.done():
            reading.cancel()
        await session.close()
    if reading not in done:
        return None
    try:
        return reading.result()
    except AttachError as err:
        log.info("attach to %s failed: %s", pod, err)
    except NotLeading:
        raise
    except Exception as err:  # a broken stream: fall back on the pod's record
        log.info("attach to %s broke: %r", pod, err)
    return None
