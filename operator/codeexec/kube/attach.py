"""Attach to a container's stdin/stdout through the API server over `v5.channel.k8s.io`.

Each binary websocket frame starts with a channel byte: 0 stdin, 1 stdout, 2 stderr, 3 error
(a Status object), 4 resize; v5 adds 255 to close a channel (`0xff 0x00` closes stdin).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp

from codeexec.kube.client import PODS, Kube

PROTOCOL = "v5.channel.k8s.io"
STDIN, STDOUT, STDERR, ERROR, CLOSE = 0, 1, 2, 3, 255


class AttachError(Exception):
    """The attach stream could not be opened or broke."""


@dataclass
class Frame:
    channel: int
    data: bytes


class AttachSession:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws

    async def send(self, data: bytes) -> None:
        await self._ws.send_bytes(bytes([STDIN]) + data)

    async def close_stdin(self) -> None:
        await self._ws.send_bytes(bytes([CLOSE, STDIN]))

    async def frames(self) -> AsyncIterator[Frame]:
        async for msg in self._ws:
            if msg.type == aiohttp.WSMsgType.BINARY and msg.data:
                yield Frame(msg.data[0], msg.data[1:])
            elif msg.type in (aiohttp.WSMsgType.ERROR, aiohttp.WSMsgType.CLOSED):
                break


@asynccontextmanager
async def attach(
    kube: Kube,
    namespace: str,
    pod: str,
    container: str,
    *,
    stdin: bool = True,
    stderr: bool = False,
) -> AsyncIterator[AttachSession]:
    url = kube.conn.server + PODS.path(namespace, pod, "attach")
    params: dict[str, Any] = {
        "container": container,
        "stdin": str(stdin).lower(),
        "stdout": "true",
        "stderr": str(stderr).lower(),
        "tty": "false",
    }
    try:
        ws = await kube.session.ws_connect(
            url,
            params=params,
            protocols=(PROTOCOL,),
            headers=kube.headers(),
            autoping=True,
            max_msg_size=0,
        )
    except aiohttp.WSServerHandshakeError as err:
        raise AttachError(
            f"attach to {namespace}/{pod} refused: {err.status} {err.message}"
        ) from err
    except aiohttp.ClientError as err:
        raise AttachError(f"attach to {namespace}/{pod} failed: {err}") from err
    if ws.protocol != PROTOCOL:
        await ws.close()
        raise AttachError(f"API server did not agree to {PROTOCOL} (got {ws.protocol!r})")
    try:
        yield AttachSession(ws)
    finally:
        await ws.close()


def error_status(data: bytes) -> dict[str, Any]:
    """The error channel carries a metav1.Status; 'Success' means the stream ended cleanly."""
    try:
        status = json.loads(data)
    except ValueError:
        return {"status": "Failure", "message": data.decode(errors="replace")}
    return status if isinstance(status, dict) else {"status": "Failure", "message": str(status)}
