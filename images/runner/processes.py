"""The user's processes: signals, wait statuses, the process tree, killing all that is left."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import time

PR_SET_DUMPABLE = 4
PR_SET_CHILD_SUBREAPER = 36
CLEANUP_S = 2.0  # bound on killing and reaping leftovers


def prctl(option: int, arg: int) -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(option, arg, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def decode_status(status: int | None) -> tuple[int | None, int | None]:
    if status is None:
        return None, None
    if os.WIFSIGNALED(status):
        return None, os.WTERMSIG(status)
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status), None
    return None, None


def stat_fields(pid: int | str) -> list[bytes] | None:
    """/proc/<pid>/stat's fields from the state on (field 3): the command name before them may
    hold spaces and ")". None when the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    return stat[stat.rfind(b")") + 2 :].split()


def parents() -> dict[int, int]:
    """Every process's parent, from one pass over /proc."""
    parents: dict[int, int] = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return parents
    for name in names:
        if not name.isdigit():
            continue
        fields = stat_fields(name)
        if fields is not None and len(fields) > 1 and fields[1].isdigit():
            parents[int(name)] = int(fields[1])
    return parents


def children_of(parent: int) -> list[int]:
    return [pid for pid, ppid in parents().items() if ppid == parent]


def descendants_of(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for pid, ppid in parents().items():
        children.setdefault(ppid, []).append(pid)
    found, todo = [], list(children.get(root, []))
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def kill_everything(group: int) -> None:
    """SIGKILL to every process of the user's, without waiting for any to go: as PID 1 of the
    container all but us; elsewhere the worker's group and every descendant of ours."""
    if os.getpid() == 1:
        # In a PID namespace this reaches only the container's processes, never the host.
        with contextlib.suppress(OSError):
            os.kill(-1, signal.SIGKILL)
        return
    killpg(group, signal.SIGKILL)
    for pid in descendants_of(os.getpid()):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def kill_leftovers() -> None:
    """Ends every process the user's code left behind, bounded in time."""
    end = time.monotonic() + CLEANUP_S
    if os.getpid() == 1:
        # In a PID namespace this reaches only the container's processes, never the host.
        with contextlib.suppress(OSError):
            os.kill(-1, signal.SIGKILL)
        while time.monotonic() < end:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                time.sleep(0.005)
        return
    # Not PID 1 (tests, or a shared PID namespace): never kill(-1). As a subreaper every
    # orphaned descendant is re-parented to us, so killing our children finds them all.
    me = os.getpid()
    while time.monotonic() < end:
        kids = children_of(me)
        if not kids:
            return
        for pid in kids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
        time.sleep(0.005)


def _alive(pid: int) -> bool:
    """Whether `pid` still exists and is not a zombie."""
    fields = stat_fields(pid)
    return bool(fields) and fields[0] != b"Z"


def wait_gone(worker: int, timeout_s: float = CLEANUP_S) -> None:
    """Waits, bounded, until every process of the user's but the exiting worker is dead or a
    zombie (after `kill_everything`): none of them can write a file any more."""
    end = time.monotonic() + timeout_s
    me = os.getpid()
    while time.monotonic() < end:
        if me == 1:
            others = [int(n) for n in os.listdir("/proc") if n.isdigit() and int(n) != 1]
        else:
            others = descendants_of(me)
        if not any(_alive(pid) for pid in others if pid != worker):
            return
        time.sleep(0.002)
