"""Attach to a container's stdin/stdout through the API server over `v5.channel.k8s.io`.

Each binary websocket frame starts with a channel byte: 0 stdin, 1 stdout, 2 stderr, 3 error
(a Status object), 4 resize; v5 adds 255 to close a channel (`0xff 0x00` closes stdin).

A session reads its socket from the moment it opens, whether or not anyone consumes its frames
yet: that answers pings and notices a dropped stream while a session is held open ahead of use.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp

from codeexec.kube.client import PODS, Kube

PROTOCOL = "v5.channel.k8s.io"
STDIN, STDOUT, STDERR, ERROR, CLOSE = 0, 1, 2, 3, 255
# Pings keep idle sessions alive through proxies and reveal a peer that vanished silently.
HEARTBEAT_SECONDS = 30.0


class AttachError(Exception):
    """The attach stream could not be opened or broke."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Frame:
    channel: int
    data: bytes


class AttachSession:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self._frames: asyncio.Queue[Frame | None] = asyncio.Queue()
        self._reader = asyncio.create_task(self._read(), name="attach-reader")

    async def _read(self) -> None:
        try:
            async for msg in self._ws:
                if msg.type == aiohttp.WSMsgType.BINARY and msg.data:
                    self._frames.put_nowait(Frame(msg.data[0], msg.data[1:]))
                elif msg.type in (aiohttp.WSMsgType.ERROR, aiohttp.WSMsgType.CLOSED):
                    break
        except Exception:  # a broken socket ends the session like a closed one
            pass
        finally:
            self._frames.put_nowait(None)

    @property
    def closed(self) -> bool:
        return self._reader.done()

    async def wait_closed(self) -> None:
        await asyncio.shield(self._reader)

    async def send(self, data: bytes) -> None:
        if self.closed or self._ws.closed:
            raise AttachError("attach session already ended")
        try:
            await self._ws.send_bytes(bytes([STDIN]) + data)
        except (ConnectionError, aiohttp.ClientError) as err:
            raise AttachError(f"sending on the attach session failed: {err}") from err

    async def close_stdin(self) -> None:
        await self._ws.send_bytes(bytes([CLOSE, STDIN]))

    async def frames(self) -> AsyncIterator[Frame]:
        while True:
            frame = await self._frames.get()
            if frame is None:
                self._frames.put_nowait(None)  # later readers see the end too
                return
            yield frame

    async def close(self) -> None:
        await self._ws.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


async def open_attach(
    kube: Kube,
    namespace: str,
    pod: str,
    container: str,
    *,
    stdin: bool = True,
    stderr: bool = False,
) -> AttachSession:
    url = kube.conn.server + PODS.path(namespace, pod, "attach")
    params: dict[str, Any] = {
        "container": container,
        "stdin": str(stdin).lower(),
        "stdout": "true",
        "stderr": str(stderr).lower(),
        "tty": "false",
    }
    try:
        ws = await kube.streams.ws_connect(
            url,
            params=params,
            protocols=(PROTOCOL,),
            headers=await kube.auth_headers(),
            autoping=True,
            heartbeat=HEARTBEAT_SECONDS,
            max_msg_size=0,
            **kube.tls,
        )
    except aiohttp.WSServerHandshakeError as err:
        kube.observe("attach", str(err.status))
        if err.status == 401:
            await kube.conn.refresh()  # the next attempt uses the renewed credential
        raise AttachError(
            f"attach to {namespace}/{pod} refused: {err.status} {err.message}", err.status
        ) from err
    except aiohttp.ClientError as err:
        kube.observe("attach", "error")
        raise AttachError(f"attach to {namespace}/{pod} failed: {err}") from err
    kube.observe("attach", "101")
    if ws.protocol != PROTOCOL:
        await ws.close()
        raise AttachError(f"API server did not agree to {PROTOCOL} (got {ws.protocol!r})")
    return AttachSession(ws)


def error_status(data: bytes) -> dict[str, Any]:
    """The error channel carries a metav1.Status; 'Success' means the stream ended cleanly."""
    try:
        status = json.loads(data)
    except ValueError:
        return {"status": "Failure", "message": data.decode(errors="replace")}
    return status if isinstance(status, dict) else {"status": "Failure", "message": str(status)}
