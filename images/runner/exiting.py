"""What /proc shows of a worker that has begun to exit: its wait status before its memory is freed.

Exiting is two steps in the kernel: the exit status is stored and the task lets go of its
address space, then the address space is freed (68 MiB of numpy and pandas: ~5 ms on a quiet
2-vCPU node, ~44 ms p50 beside a warming pod) and only then the parent hears of it. Between the
two, /proc/<pid>/stat already shows the exit flag, no address space, and the stored status (to
a reader the kernel lets see it). That status is the kernel's, not the program's; the
supervisor reports on it instead of waiting for the freeing (docs/runner-protocol.md).
Every reading is optional: a missing or unexpected file gives None (gVisor, an old kernel).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import processes
import reporting

PF_EXITING = 0x4  # include/linux/sched.h: "getting shut down"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True)
class Stat:
    """The fields of /proc/<pid>/stat this module reads (proc(5) numbering in comments)."""

    flags: int  # 9
    utime: int  # 14, clock ticks
    stime: int  # 15
    vsize: int  # 23, 0 once the task has let go of its address space
    start_code: int  # 26, 1 when the kernel hides it from this reader, 0 without memory
    exit_code: int  # 52, the wait status; shown as 0 to a reader the kernel does not let see


def read_stat(pid: int) -> Stat | None:
    fields = processes.stat_fields(pid)
    if fields is None or len(fields) < 50:  # exit_code arrived in Linux 3.5
        return None

    def at(number: int) -> int:
        return int(fields[number - 3])

    try:
        return Stat(at(9), at(14), at(15), at(23), at(26), at(52))
    except ValueError:
        return None


def shows_exit_codes(pid: int) -> bool:
    """Whether the kernel shows this reader the live worker's protected fields (the same check
    guards its exit status): the start of its code, where a refused reader sees 1. Read once,
    when the worker is warm and before any user code."""
    stat = read_stat(pid)
    return stat is not None and stat.start_code > 1


def exit_status(pid: int) -> int | None:
    """The wait status of a worker past the point of no return, or None while it is not.

    The exit flag alone is not enough: the status is stored a few steps after it. The task lets
    go of its address space after the status is stored, so both together mean the status shown
    is final. A status of 0 is also what a refused reader sees: see `shows_exit_codes`.
    """
    stat = read_stat(pid)
    if stat is None or not stat.flags & PF_EXITING or stat.vsize or stat.start_code:
        return None
    return stat.exit_code


def cpu_ms(pid: int, stat: Stat | None = None) -> float | None:
    """CPU time (user + system) of the worker's threads so far, in ms.

    The thread group's total is in clock ticks (10 ms); each live thread's own is exact (its
    schedstat, in ns) but a thread that has already exited is missing from those. Both are
    lower bounds of the truth, so the larger is within a tick of it, and exact for one thread.
    """
    stat = stat or read_stat(pid)
    if stat is None:
        return None
    ticks_ms = (stat.utime + stat.stime) * 1000.0 / CLOCK_TICKS
    exact_ns = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        tids = []
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat", "rb") as f:
                exact_ns += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return max(ticks_ms, exact_ns / 1e6)


def peak_rss_kb(pid: int) -> int | None:
    """The worker's resident high-water mark (VmHWM), while it still has its memory."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


@dataclass
class Peek:
    """A worker's stored exit status, read once its one record is in and only when that status
    is the one its harness leaves with after that record (0 after "returned", 1 after "error").
    """

    pid: int
    visible: bool  # shows_exit_codes(pid), checked once the worker is warm
    seen: tuple[int, int | None] = (-1, None)  # (bytes of records read, the status they call for)
    rss_kb: int | None = None  # the worker's high-water mark, as last read while it had memory

    @property
    def waiting(self) -> bool:
        """A record is in and calls for a status not read yet: look again soon."""
        return self.seen[1] is not None

    def sample(self) -> None:
        """Reads the high-water mark (each poll round of a run, and as the record comes in): once
        the worker has let go of its memory, only the reap could tell."""
        if self.visible:
            rss = peak_rss_kb(self.pid)
            if rss is not None and (self.rss_kb is None or rss > self.rss_kb):
                self.rss_kb = rss

    def status(self, records: bytes | bytearray, overflowed: bool) -> int | None:
        if not self.visible:
            return None
        size, expected = self.seen
        if size != len(records):
            rec = reporting.record_in(bytes(records), overflowed)
            code = reporting.harness_exit_code(rec)
            expected = None if code is None else code << 8
            self.seen = (len(records), expected)
            if expected is not None:
                self.sample()
        if expected is None:
            return None
        status = exit_status(self.pid)
        if status is None:
            return None
        if status != expected:
            self.seen = (len(records), None)  # final, not the harness's: wait for the reap
            return None
        return status
