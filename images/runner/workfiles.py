"""Input files placed in the working directory before the code runs, and artifacts read back
from ./artifacts/ after it ended (stdlib only; used by the supervisor, never by the worker).

Everything here distrusts the directory it works in: the user's code ran there and may have
planted symlinks, FIFOs, devices or hard links. Nothing is followed: every path is resolved
one component at a time relative to a directory descriptor, with O_NOFOLLOW.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import os
import stat
from dataclasses import dataclass, field
from typing import Any

ARTIFACTS_DIR = "artifacts"
# An input path: at most this many components, each a plain name.
MAX_PATH_DEPTH = 8
MAX_PATH_CHARS = 255
READ_CHUNK = 1 << 20

# How the limits are named in the report (`artifactLimit.kind`).
LIMIT_COUNT = "count"
LIMIT_FILE = "fileSize"
LIMIT_TOTAL = "totalSize"


class FileError(Exception):
    """An input file cannot be placed; the message goes into the report."""


def path_parts(path: Any) -> list[str]:
    """The components of a relative path that stays inside the working directory."""
    if not isinstance(path, str) or not path or len(path) > MAX_PATH_CHARS:
        raise FileError("a file path must be 1-255 characters")
    if path.startswith("/") or "\\" in path or "\x00" in path:
        raise FileError(f"file path {path!r} must be relative, with '/' separators")
    parts = path.split("/")
    if len(parts) > MAX_PATH_DEPTH or any(p in ("", ".", "..") for p in parts):
        raise FileError(f"file path {path!r} must not contain '', '.' or '..' components")
    return parts


def _open_dir(parent: int, name: str, create: bool) -> int:
    if create:
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, 0o755, dir_fd=parent)
    return os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)


def place_files(workdir: str, files: list[dict[str, Any]]) -> None:
    """Writes each {path, b64} under workdir (which the code cannot yet have touched) and
    creates ./artifacts/, all owned by this uid."""
    root = os.open(workdir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.close(_open_dir(root, ARTIFACTS_DIR, create=True))
        for entry in files:
            if not isinstance(entry, dict):
                raise FileError("each file must be an object")
            parts = path_parts(entry.get("path"))
            try:
                data = base64.b64decode(entry.get("b64") or "", validate=True)
            except (binascii.Error, ValueError) as exc:
                raise FileError(f"file {entry.get('path')!r} is not valid base64") from exc
            fds = [root]
            try:
                for part in parts[:-1]:
                    fds.append(_open_dir(fds[-1], part, create=True))
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
                fd = os.open(parts[-1], flags, 0o644, dir_fd=fds[-1])
                try:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view) :]
                finally:
                    os.close(fd)
            except OSError as exc:
                raise FileError(f"cannot write {entry.get('path')!r}: {exc.strerror}") from exc
            finally:
                for fd in fds[1:]:
                    os.close(fd)
    finally:
        os.close(root)


@dataclass(frozen=True)
class Limits:
    max_files: int
    max_file_bytes: int
    max_total_bytes: int

    @classmethod
    def parse(cls, raw: Any) -> Limits | None:
        if not isinstance(raw, dict):
            return None
        values = [raw.get(k) for k in ("maxFiles", "maxFileBytes", "maxTotalBytes")]
        if not all(type(v) is int and v > 0 for v in values):
            return None
        return cls(*values)


@dataclass
class Artifact:
    name: str
    data: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    def listing(self) -> dict[str, Any]:
        return {"name": self.name, "size": len(self.data), "sha256": self.sha256}

    def record(self, request_id: str) -> dict[str, Any]:
        return {
            "id": request_id,
            **self.listing(),
            "b64": base64.b64encode(self.data).decode("ascii"),
        }


@dataclass
class Collected:
    artifacts: list[Artifact] = field(default_factory=list)
    # The first limit met, and every file left out because of a limit.
    limit: str | None = None
    skipped: list[str] = field(default_factory=list)
    problem: str | None = None

    def limit_record(self, limits: Limits) -> dict[str, Any] | None:
        if self.limit is None:
            return None
        return {
            "kind": self.limit,
            "skipped": self.skipped[:50],
            "skippedCount": len(self.skipped),
            "maxFiles": limits.max_files,
            "maxFileBytes": limits.max_file_bytes,
            "maxTotalBytes": limits.max_total_bytes,
        }


def _visible(name: str) -> bool:
    return not name.startswith(".") and all(32 <= ord(c) != 127 for c in name)


def _read_regular(parent: int, name: str, limit: int) -> bytes | None:
    """A regular file's bytes (at most limit + 1), or None for anything else.

    O_NOFOLLOW refuses a symlink; O_NONBLOCK keeps a FIFO from blocking the open; the check on
    the open descriptor (not the name) decides, so nothing can be swapped in between.
    """
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
    try:
        fd = os.open(name, flags, dir_fd=parent)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        chunks: list[bytes] = []
        got = 0
        while got <= limit:
            chunk = os.read(fd, min(READ_CHUNK, limit + 1 - got))
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)
    except OSError:
        return None
    finally:
        os.close(fd)


def collect(workdir: str, limits: Limits) -> Collected:
    """The regular files directly under workdir/artifacts, by name, within the limits.

    A file over the per-file size, or one that would pass the total, is left out and the next
    is tried; past the count, the rest are left out. Read after every process of the user's
    code is gone, so nothing changes while it is read.
    """
    out = Collected()
    try:
        root = os.open(workdir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        out.problem = f"working directory: {exc.strerror}"
        return out
    try:
        try:
            folder = _open_dir(root, ARTIFACTS_DIR, create=False)
        except FileNotFoundError:
            return out
        except OSError as exc:  # a symlink (ELOOP/ENOTDIR) or something else planted there
            out.problem = f"{ARTIFACTS_DIR}/ is not a directory ({exc.strerror}); nothing read"
            return out
        try:
            names = sorted(n for n in os.listdir(folder) if _visible(n))
            total = 0
            for name in names:
                if len(out.artifacts) >= limits.max_files:
                    out.limit = out.limit or LIMIT_COUNT
                    out.skipped.append(name)
                    continue
                data = _read_regular(folder, name, limits.max_file_bytes)
                if data is None:
                    continue
                if len(data) > limits.max_file_bytes:
                    out.limit = out.limit or LIMIT_FILE
                    out.skipped.append(name)
                    continue
                if total + len(data) > limits.max_total_bytes:
                    out.limit = out.limit or LIMIT_TOTAL
                    out.skipped.append(name)
                    continue
                total += len(data)
                out.artifacts.append(Artifact(name, data))
        finally:
            os.close(folder)
    finally:
        os.close(root)
    return out
