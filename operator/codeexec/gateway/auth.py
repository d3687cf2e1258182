"""Token authentication for `POST /run`: `Authorization: Bearer <token>` or `X-Sandbox-Token`.

The token comes from the environment or from a file; a file (a mounted Secret) is re-read
off the event loop when it may have changed, so a rotated Secret takes effect without a
restart. Without a token the gateway serves only with `--insecure-local-only` (config.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import time
from collections.abc import Callable, Mapping
from pathlib import Path


def bearer(header: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


# RAGFlow's executor reads this header as well as a bearer token.
TOKEN_HEADER = "X-Sandbox-Token"


def presented(headers: Mapping[str, str]) -> str | None:
    """The token a request carries: a bearer token, else the `X-Sandbox-Token` header."""
    token = bearer(headers.get("Authorization"))
    if token is None:
        token = (headers.get(TOKEN_HEADER) or "").strip() or None
    return token


def matches(presented: str | None, expected: str) -> bool:
    if presented is None:
        return False
    # Constant time: the comparison must not tell how much of a guess was right.
    return hmac.compare_digest(presented.encode(), expected.encode())


class TokenSource:
    """The expected token; None means authentication is off."""

    def __init__(
        self,
        token: str | None = None,
        path: Path | None = None,
        *,
        recheck_seconds: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._token = token.strip() if token else None
        self._path = path
        self._recheck = recheck_seconds
        self._clock = clock
        self._checked_at = float("-inf")
        self._lock = asyncio.Lock()

    @property
    def enabled(self) -> bool:
        return self._path is not None or self._token is not None

    def load(self) -> None:
        """Reads the file once, at startup: a missing or empty file is a configuration error."""
        if self._path is not None:
            self._token = _read(self._path)
            self._checked_at = self._clock()

    async def current(self) -> str | None:
        if self._path is None or self._clock() - self._checked_at < self._recheck:
            return self._token
        async with self._lock:
            if self._clock() - self._checked_at >= self._recheck:
                # A Secret update may be half-written: keep the last good token meanwhile.
                with contextlib.suppress(OSError, ValueError):
                    self._token = await asyncio.to_thread(_read, self._path)
                self._checked_at = self._clock()
        return self._token


def _read(path: Path) -> str:
    token = path.read_text().strip()
    if not token:
        raise ValueError(f"token file {path} is empty")
    return token
