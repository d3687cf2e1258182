"""Who gets a pool's next pod: namespaces in turn, FIFO within one, under a per-namespace cap.

Pure. The broker (claim.py) keeps one `FairQueue` per pool and asks it for the next waiter
whenever a warm pod is free; `holding` counts what each namespace runs from the claimed pods
themselves (the claim patch records the execution on its pod), so the count is the same after a
restart and drops when a claimed pod is released, whatever happened to its execution.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Generic, TypeVar

from codeexec.podcache import PodView

T = TypeVar("T")

QUOTA_REASON = "WaitingForQuota"
POD_REASON = "WaitingForPod"


@dataclass(order=True)
class _Entry(Generic[T]):
    created: float
    seq: int
    item: T = field(compare=False)


# A line's order as plain tuples: sorted by them, pairs compare in C instead of through the
# dataclass's generated `__lt__`.
_ORDER = attrgetter("created", "seq")


@dataclass
class _Census(Generic[T]):
    """The counts of a queue as of one version: live items in all, by namespace, and for each
    item (by identity) the live items of its namespace before it."""

    version: int
    total: int
    by_namespace: dict[str, int]
    ahead: dict[int, tuple[T, str, int]]


class FairQueue(Generic[T]):
    """The waiters of one pool: one line per namespace, ordered by creation (then arrival);
    the namespaces take turns, one pod per turn. A namespace that arrives joins the end of the
    turn order, so one that queued a thousand executions delays a newcomer by one pod, not a
    thousand. `live` says whether an item still waits (the broker's waiters are dropped lazily:
    a cancelled one stays until its line is next looked at); whoever makes an item stop being
    live while it is in line calls `changed`.

    The counts (`waiting`, `waiting_by_namespace`, `ahead`) come from a census taken once per
    change of the queue: every waiting execution asks for its place every few seconds, and
    counting the whole line for each made N waiters cost N * N looks (400 waiting in one
    namespace: 48,240 `live` calls per second on the fake API server)."""

    def __init__(self, live: Callable[[T], bool]) -> None:
        self._live = live
        self._lines: dict[str, list[_Entry[T]]] = {}
        self._turns: OrderedDict[str, None] = OrderedDict()
        self._version = 0
        self._census: _Census[T] | None = None

    def changed(self) -> None:
        """An item in line stopped being live (its waiter gave up): count again."""
        self._version += 1

    def push(self, namespace: str, created: float, seq: int, item: T) -> None:
        line = self._lines.setdefault(namespace, [])
        heapq.heappush(line, _Entry(created, seq, item))
        if namespace not in self._turns:
            self._turns[namespace] = None
        self._version += 1

    def give_back(self, namespace: str, created: float, seq: int, item: T) -> None:
        """An item whose pod was lost to another claimer: back at the head of its line, and its
        namespace's turn, which got it nothing, comes again first."""
        self.push(namespace, created, seq, item)
        self._turns.move_to_end(namespace, last=False)

    def pop(self, admit: Callable[[str, T], bool] = lambda _ns, _item: True) -> T | None:
        """The head of the first namespace in turn whose head `admit(namespace, head)` lets
        through; that namespace goes to the end of the turn order. None when none does."""
        for namespace in list(self._turns):
            line = self._prune(namespace)
            if not line or not admit(namespace, line[0].item):
                continue
            entry = heapq.heappop(line)
            self._version += 1
            self._turns.move_to_end(namespace)
            if not line:
                self._drop(namespace)
            return entry.item
        return None

    def waiting(self) -> int:
        return self._count().total

    def waiting_by_namespace(self) -> dict[str, int]:
        return dict(self._count().by_namespace)

    def ahead(self, namespace: str, item: T) -> int | None:
        """Live waiters of `namespace` in line before `item`; None when it is not in line."""
        found = self._count().ahead.get(id(item))
        if found is None or found[0] is not item or found[1] != namespace:
            return None
        return found[2]

    def _count(self) -> _Census[T]:
        """The census of this version: each line sorted once, O(n log n) per change."""
        census = self._census
        if census is not None and census.version == self._version:
            return census
        by_namespace: dict[str, int] = {}
        ahead: dict[int, tuple[T, str, int]] = {}
        for namespace, line in self._lines.items():
            live = 0
            for entry in sorted(line, key=_ORDER):
                ahead[id(entry.item)] = (entry.item, namespace, live)
                live += self._live(entry.item)
            if live:
                by_namespace[namespace] = live
        census = _Census(self._version, sum(by_namespace.values()), by_namespace, ahead)
        self._census = census
        return census

    def namespaces(self) -> list[str]:
        """In turn order (for tests and the status)."""
        return list(self._turns)

    def _prune(self, namespace: str) -> list[_Entry[T]]:
        line = self._lines.get(namespace, [])
        while line and not self._live(line[0].item):
            heapq.heappop(line)
            self._version += 1
        if not line:
            self._drop(namespace)
        return line

    def _drop(self, namespace: str) -> None:
        self._version += 1
        self._lines.pop(namespace, None)
        self._turns.pop(namespace, None)


def namespace_of(execution_ref: str | None) -> str | None:
    """The namespace in a claim's `namespace/name` record."""
    if not execution_ref or "/" not in execution_ref:
        return None
    return execution_ref.split("/", 1)[0]


def holds_slot(pod: PodView) -> bool:
    """A claimed pod counts against its namespace until the operator lets it go: its own
    deletion removes the claim finalizer first, so a pod deleted by anyone else (a drain) still
    counts while its run is resumed and judged."""
    return pod.claimed_by is not None and (not pod.deleting or pod.held)


def holding(pods: Iterable[PodView]) -> dict[str, set[str]]:
    """Namespace -> uids of its executions that hold a pod (an execution retried on a second
    pod holds one slot, not two)."""
    found: dict[str, set[str]] = {}
    for pod in pods:
        ns = namespace_of(pod.execution)
        if ns is not None and pod.claimed_by is not None and holds_slot(pod):
            found.setdefault(ns, set()).add(pod.claimed_by)
    return found


@dataclass(frozen=True)
class Cap:
    """The pool's per-namespace limit on running executions, and who holds its slots now."""

    limit: int | None
    holders: frozenset[str] = frozenset()
    reserved: int = 0  # pods handed to this namespace's waiters, their claim not yet written

    @property
    def used(self) -> int:
        return len(self.holders) + self.reserved

    @property
    def room(self) -> int | None:
        """Claims the namespace may still make; None without a cap."""
        return None if self.limit is None else max(0, self.limit - self.used)

    def admits(self, uid: str | None = None) -> bool:
        """One more claim fits (an execution that already holds a pod, retrying after a pod
        that never started its code, takes its own slot again)."""
        if self.limit is None or (uid is not None and uid in self.holders):
            return True
        return self.used < self.limit

    def holds_back(self, uid: str, ahead: int) -> bool:
        """A waiter with `ahead` of its namespace's waiters in line before it is held back by
        the cap, not by a lack of pods: even were a pod free for each of them, it would not get
        one. Only the first few of a namespace's line ever flip between the two answers."""
        if self.limit is None or uid in self.holders:
            return False
        return self.used + ahead >= self.limit


def servable(waiting: dict[str, int], cap: Callable[[str], Cap]) -> int:
    """Waiting executions that more warm pods would serve now: a namespace at its cap adds
    none, one below it at most the claims it has left. The pool's queue depth, as the
    autoscaler and an external one (queueDepth, codeexec_pool_queue_depth) see it: waiters the
    cap holds back would only leave new pods idle."""
    total = 0
    for namespace, count in waiting.items():
        room = cap(namespace).room
        total += count if room is None else min(count, room)
    return total


@dataclass(frozen=True)
class Hold:
    """Why a waiting execution waits, as its status says it."""

    reason: str
    message: str


def hold(pool: str, cap: Cap, uid: str, ahead: int, in_line: int) -> Hold:
    if cap.holds_back(uid, ahead):
        # `used`, not the holders alone: a pod being claimed for the namespace (its claim on
        # its way) takes a slot too, and the count must say why the waiter waits.
        return Hold(
            QUOTA_REASON,
            f"waiting: namespace quota, {cap.used} running (pool {pool} runs at most "
            f"{cap.limit} per namespace)",
        )
    return Hold(POD_REASON, f"waiting for a warm pod of pool {pool} ({in_line} in line)")
