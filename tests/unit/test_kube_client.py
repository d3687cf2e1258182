"""The REST client's process-wide transport settings."""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import ssl

from codeexec.kube.client import TLS_READ_BUFFER, small_tls_buffers


async def test_tls_connections_made_after_start_up_read_through_a_small_buffer() -> None:
    """A held attach session is mostly its TLS read buffer: after `small_tls_buffers()` a new
    TLS connection's buffer is 32 KiB, not asyncio's 256 KiB. Fails as soon as a Python
    release stops sizing the buffer by `SSLProtocol.max_size` (the saving would be gone).
    Caught: with the assignment in small_tls_buffers removed the buffer was 262144 bytes."""
    original = asyncio.sslproto.SSLProtocol.max_size
    try:
        small_tls_buffers()
        loop = asyncio.get_running_loop()
        proto = asyncio.sslproto.SSLProtocol(
            loop, asyncio.Protocol(), ssl.create_default_context(), None, server_hostname="x"
        )
        assert len(proto._ssl_buffer) == TLS_READ_BUFFER == 32 * 1024
    finally:
        asyncio.sslproto.SSLProtocol.max_size = original
