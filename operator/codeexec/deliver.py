"""Send the request into a claimed pod over attach and read the runner's report.

The runner's report ends the success path: nothing here waits for the kubelet. Only when the
stream ends without a report does the caller turn to the pod's own record (`collect`).
"""

from __future__ import annotations

import asyncio
import logging
import time

from codeexec import failpoints, podspec
from codeexec.kube.attach import ERROR, STDOUT, AttachError, attach, error_status
from codeexec.kube.client import Kube
from codeexec.podcache import PodCache
from codeexec.protocol import Report, ReportReader, Request

log = logging.getLogger(__name__)

# After the pod is seen finished, how long a report still in flight may take to arrive.
FINISH_GRACE_SECONDS = 2.0


async def _read_report(
    kube: Kube, namespace: str, pod: str, request: Request, *, send: bool
) -> Report | None:
    reader = ReportReader(request.id)
    async with attach(kube, namespace, pod, podspec.CONTAINER, stdin=send) as session:
        if send:
            await session.send(request.encode())
            # Give the bytes time to cross the wire: the test wants the code running, not lost.
            asyncio.get_running_loop().call_later(0.5, failpoints.hit, failpoints.AFTER_DELIVERY)
        async for frame in session.frames():
            if frame.channel == STDOUT:
                report = reader.feed(frame.data)
                if report is not None:
                    return report
            elif frame.channel == ERROR:
                status = error_status(frame.data)
                if status.get("status") != "Success":
                    log.info("attach to %s ended: %s", pod, status.get("message"))
                break
    return None


async def _pod_finished(cache: PodCache, pod: str) -> None:
    while True:
        view = cache.pods.get(pod)
        if view is None or view.finished or view.deleting:
            await asyncio.sleep(FINISH_GRACE_SECONDS)
            return
        await cache.wait_changed(5.0)


async def deliver(
    kube: Kube, cache: PodCache, namespace: str, pod: str, request: Request, deadline: float
) -> Report | None:
    """The report, or None when the pod ended, vanished or the deadline passed without one.

    Sending is safe to repeat: the runner reads exactly one request in its life, and stdinOnce
    closes its stdin when the first attach session ends, so a resumed operator re-attaches and
    re-sends without any risk of the code starting twice.
    """
    attempt = 0
    while time.time() < deadline:
        reading = asyncio.ensure_future(_read_report(kube, namespace, pod, request, send=True))
        finished = asyncio.ensure_future(_pod_finished(cache, pod))
        try:
            done, _ = await asyncio.wait(
                {reading, finished},
                timeout=max(0.0, deadline - time.time()),
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            finished.cancel()
            if not reading.done():
                reading.cancel()
        if reading in done:
            try:
                report = reading.result()
            except AttachError as err:
                log.info("attach to %s failed: %s", pod, err)
                report = None
            except Exception as err:  # a broken stream: fall back on the pod's record
                log.info("attach to %s broke: %r", pod, err)
                report = None
            if report is not None:
                return report
        view = cache.pods.get(pod)
        if view is None or view.finished or view.deleting or finished in done:
            return None
        # The stream ended while the container still runs (API server restart, proxy timeout):
        # attach again and keep listening.
        attempt += 1
        await asyncio.sleep(min(2.0, 0.1 * 2**attempt))
    return None
