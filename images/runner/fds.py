"""The supervisor's descriptors: std fds that exist, writes bounded in time, non-blocking reads."""

from __future__ import annotations

import os
import select
import time

READ_CHUNK = 65536


def ensure_std_fds() -> None:
    # With 0/1/2 closed, os.pipe() could hand out 1 and the report would go into a pipe.
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)


def write_all(fd: int, data: bytes, timeout_s: float = 10.0) -> bool:
    end = time.monotonic() + timeout_s
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
            view = view[n:]
        except BlockingIOError:
            if time.monotonic() > end:
                return False
            select.select([], [fd], [], 0.05)
        except InterruptedError:
            continue
        except OSError:
            return False
    return True


def read_ready(fd: int) -> bytes | None:
    """What a non-blocking fd has now: None if nothing yet, b"" at its end (or on an error)."""
    try:
        return os.read(fd, READ_CHUNK)
    except (BlockingIOError, InterruptedError):
        return None
    except OSError:
        return b""
