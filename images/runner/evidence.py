"""What the kernel saw of a run, read by the supervisor (stdlib only).

Each reading is something the user's code cannot write: cgroup counters (tasks, memory limit
hits), the network namespace's IP counters, the scratch file system's free space, and the
sandbox's actual file permissions. The operator turns a program's own error into a resource or
access reason only when one of these backs it (docs/runner-protocol.md, "evidence").
Every reading is optional: a missing file gives None, never an exception.
"""

from __future__ import annotations

import itertools
import os
import stat
from dataclasses import dataclass, field
from typing import Any

# Free space below this share of the scratch file system counts as full (tmpfs keeps none back).
SCRATCH_FULL_FRACTION = 0.01


def read_small(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read(65536)
    except OSError:
        return None


def int_or_none(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return int(text.strip())
    except ValueError:
        return None


def keyed_counter(text: str | None, key: str) -> int | None:
    for line in (text or "").splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == key:
            return int_or_none(parts[1])
    return None


@dataclass
class CgroupMemory:
    """The container's memory cgroup (v2 unified or the v1 controller): OOM kills, peak, limit."""

    root: str

    def _v2(self) -> bool:
        return os.path.exists(os.path.join(self.root, "memory.events"))

    def oom_kills(self) -> int | None:
        if self._v2():
            text = read_small(os.path.join(self.root, "memory.events"))
        else:
            text = read_small(os.path.join(self.root, "memory", "memory.oom_control"))
        return keyed_counter(text, "oom_kill")

    def peak_bytes(self) -> int | None:
        if self._v2():
            return int_or_none(read_small(os.path.join(self.root, "memory.peak")))
        path = os.path.join(self.root, "memory", "memory.max_usage_in_bytes")
        return int_or_none(read_small(path))

    def limit_bytes(self) -> int | None:
        if self._v2():
            value = int_or_none(read_small(os.path.join(self.root, "memory.max")))
        else:
            path = os.path.join(self.root, "memory", "memory.limit_in_bytes")
            value = int_or_none(read_small(path))
        # v1 reports "no limit" as a page-rounded LONG_MAX.
        if value is None or value <= 0 or value >= 1 << 60:
            return None
        return value


@dataclass
class Kernel:
    """The readings, from a cgroup root (v2, or v1 controllers below it) and a /proc/net."""

    cgroup_root: str
    proc_net: str = "/proc/self/net"

    def _cg(self, v2_name: str, v1_controller: str, v1_name: str | None = None) -> str | None:
        v2 = os.path.join(self.cgroup_root, v2_name)
        if os.path.exists(v2):
            return read_small(v2)
        return read_small(os.path.join(self.cgroup_root, v1_controller, v1_name or v2_name))

    def tasks(self) -> int | None:
        counted = int_or_none(self._cg("pids.current", "pids"))
        if counted is None and os.getpid() == 1:
            # No readable pids controller: as PID 1 of the pod's PID namespace, /proc lists
            # exactly the container's processes (zombies included; threads not).
            try:
                counted = sum(name.isdigit() for name in os.listdir("/proc"))
            except OSError:
                return None
        return counted

    def tasks_peak(self) -> int | None:
        return int_or_none(self._cg("pids.peak", "pids"))

    def memory_limit_hits(self) -> int | None:
        """How often usage hit the limit (v2 memory.events `max`, v1 memory.failcnt)."""
        v2 = read_small(os.path.join(self.cgroup_root, "memory.events"))
        if v2 is not None:
            return keyed_counter(v2, "max")
        return int_or_none(read_small(os.path.join(self.cgroup_root, "memory", "memory.failcnt")))

    def ip_sends(self) -> int | None:
        """IP packets this network namespace sent or failed to route (v4 and v6)."""
        total, seen = 0, False
        lines = (read_small(os.path.join(self.proc_net, "snmp")) or "").splitlines()
        for names, values in itertools.pairwise(lines):
            if names.startswith("Ip: ") and values.startswith("Ip: ") and not names[4].isdigit():
                row = dict(zip(names.split()[1:], values.split()[1:], strict=False))
                for key in ("OutRequests", "OutNoRoutes"):
                    if int_or_none(row.get(key)) is not None:
                        total, seen = total + int(row[key]), True
        v6 = read_small(os.path.join(self.proc_net, "snmp6"))
        for key in ("Ip6OutRequests", "Ip6OutNoRoutes"):
            value = keyed_counter(v6, key)
            if value is not None:
                total, seen = total + value, True
        return total if seen else None


def scratch_full(path: str) -> bool | None:
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    if st.f_blocks == 0:
        return None
    return st.f_bavail <= st.f_blocks * SCRATCH_FULL_FRACTION


def file_at_limit(paths: list[str], limit: int, budget: int = 10_000) -> bool:
    """Whether a file beneath `paths` has reached RLIMIT_FSIZE (the kernel lets a write fill a
    file up to the limit exactly, then refuses: EFBIG, or SIGXFSZ where it is not ignored, as
    Node.js ignores it). At most `budget` entries are looked at."""
    stack = list(paths)
    while stack and budget > 0:
        path = stack.pop()
        budget -= 1
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and st.st_size >= limit:
            return True
        if stat.S_ISDIR(st.st_mode):
            try:
                names = os.listdir(path)
            except OSError:
                continue
            stack.extend(os.path.join(path, name) for name in names[:budget])
    return False


def _existing_ancestor(path: str) -> str:
    while not os.path.lexists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def _beneath(path: str, roots: list[str]) -> bool:
    return any(path == root or path.startswith(root.rstrip("/") + "/") for root in roots)


def access_denied(
    path: str, code: str | None, cwd: str, write_roots: list[str] | None = None
) -> bool:
    """Whether the sandbox really denies this uid access to `path` the way `code` says.

    The supervisor runs with the worker's uid, groups and mounts, so its own view is the
    sandbox's: EROFS needs a read-only file system there, EACCES a file (or, for a file that
    does not exist, a directory) this uid may not fully use, or, when the worker is
    landlocked, a path outside the roots it may write (`write_roots`).
    """
    if not path or code not in ("EACCES", "EROFS"):
        return False
    full = os.path.normpath(os.path.join(cwd, path))
    if code == "EACCES" and write_roots is not None and not _beneath(full, write_roots):
        return True
    target = _existing_ancestor(full)
    if code == "EROFS":
        try:
            return bool(os.statvfs(target).f_flag & os.ST_RDONLY)
        except OSError:
            return False
    if target == full:
        wanted = os.R_OK | os.W_OK | (os.X_OK if os.path.isdir(full) else 0)
        return not os.access(full, wanted)
    return not os.access(target, os.W_OK | os.X_OK)


@dataclass
class Watch:
    """Readings over one run: counters at the start, the running task peak, deltas at the end."""

    kernel: Kernel
    process_limit: int
    scratch: str
    cwd: str
    write_roots: list[str] | None = None  # where a landlocked worker may write
    file_limit: int | None = None  # the worker's RLIMIT_FSIZE
    files: list[str] = field(default_factory=list)  # where its files can be
    tasks_max: int | None = None
    _start: dict[str, int | None] = field(default_factory=dict)

    def begin(self) -> None:
        self._start = {
            "memory": self.kernel.memory_limit_hits(),
            "ip": self.kernel.ip_sends(),
            "peak": self.kernel.tasks_peak(),
        }
        self.sample()

    def sample(self) -> None:
        """Called on every poll round of the run: the peak, where the kernel keeps none."""
        now = self.kernel.tasks()
        if now is not None and (self.tasks_max is None or now > self.tasks_max):
            self.tasks_max = now

    def end(self, error: dict[str, Any] | None) -> dict[str, Any]:
        # The run's peak: the cgroup's peak is the container's whole life, warm-up included
        # (numpy's threads, the start-up probe: 8 and more of a limit of 16 on the test bed), so
        # it counts only when the run raised it; else the samples taken during the run.
        peak = self.tasks_max
        kernel_peak, before = self.kernel.tasks_peak(), self._start.get("peak")
        if kernel_peak is not None and (before is None or kernel_peak > before):
            peak = kernel_peak if peak is None else max(peak, kernel_peak)

        def delta(key: str, now: int | None) -> int | None:
            before = self._start.get(key)
            return None if before is None or now is None else max(now - before, 0)

        denied = None
        if error is not None and isinstance(error.get("filename"), str):
            filename, code = error["filename"], error.get("code")
            denied = access_denied(filename, code, self.cwd, self.write_roots)
        return {
            "tasksPeak": peak,
            "processLimit": self.process_limit,
            "memoryLimitHits": delta("memory", self.kernel.memory_limit_hits()),
            "ipPacketsSent": delta("ip", self.kernel.ip_sends()),
            # /dev/shm is the runtime's other memory-backed file system in the pod.
            "scratchFull": any(scratch_full(path) for path in (self.scratch, "/dev/shm")),
            "fileAtLimit": self.file_limit is not None
            and file_at_limit([self.scratch, *self.files], self.file_limit),
            "accessDenied": denied,
        }
