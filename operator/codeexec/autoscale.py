"""How many warm pods a pool keeps: the pure sizing decision, and the demand it is fed.

A sandbox pod serves one execution, so a pool is a stock of warm pods drained by arrivals and
refilled at the pods' warm-up time. To serve without waiting it needs the arrivals expected
while a replacement warms (arrival rate x warm-up time), plus one pod for each execution
already waiting, plus headroom while there is demand. The size grows to that at once and
shrinks only to the largest size asked for during the cooldown (the stabilisation window the
HPA uses for scale-down), so a steady rate settles on one size instead of flapping. Bounds
always win: never below `minReady`, never above `maxSize`.

`decide` is pure; `Demand` keeps the observations (arrivals, warm-up samples, recent
recommendations) that the pool keeper (pool.py) hands it on each reconcile.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from codeexec.api.models import PoolScaling, SandboxPoolSpec

# Arrivals counted over the last minute give the rate: long enough that a few executions a
# minute count as demand, short enough that a finished burst stops counting within a minute.
RATE_WINDOW_SECONDS = 180.0
# Until a pod of the pool has been seen warming up, its warm-up time is taken to be 10 s (a
# Python pod preloading numpy and pandas took 4-8 s on the test bed).
DEFAULT_WARMUP_SECONDS = 10.0
# Each new warm-up sample moves the estimate a quarter of the way: one slow pod (an image
# pull) does not double the pool, a lasting change is followed within a few pods.
WARMUP_WEIGHT = 0.25
# Independent arrivals (Poisson) at a mean of m per warm-up bring m +- sqrt(m): stocking
# SPREAD standard deviations above the mean keeps clumps from queueing (with 2 on m = 3.5,
# 8 pods, a clump of 9 or more in one warm-up is about 1 in 100), so the queue term rarely
# swings the size under a steady rate.
SPREAD = 2.0
# Below half an arrival per warm-up there is no steady demand to stock for (one execution in
# three minutes on a pod that warms in 10 s is 0.06): the waiting executions are the demand,
# and a pool with minimum 0 goes back to zero.
STEADY_MEAN = 0.5


@dataclass(frozen=True)
class Observation:
    """What the autoscaler knows at one instant."""

    now: float  # monotonic seconds
    arrival_rate: float  # executions per second, recent
    warmup_seconds: float
    queue: int  # executions waiting for a pod now


@dataclass(frozen=True)
class Decision:
    desired: int
    need: int  # the unbounded estimate this instant
    reason: str


Recommendations = tuple[tuple[float, int], ...]


def need(obs: Observation, headroom: int) -> int:
    """Warm pods that serve the observed demand without waiting (unbounded).

    The pods for the arrivals expected during one warm-up (their mean plus SPREAD standard
    deviations), plus headroom, once the mean reaches STEADY_MEAN; the queue when it is
    larger (a burst), or alone when there is no steady demand.
    """
    mean = obs.arrival_rate * obs.warmup_seconds
    if mean < STEADY_MEAN:
        return obs.queue
    during_warmup = math.floor(mean + SPREAD * math.sqrt(mean) + 0.5)
    return max(obs.queue, during_warmup) + headroom


def decide(
    scaling: PoolScaling, obs: Observation, history: Recommendations
) -> tuple[Decision, Recommendations]:
    """The size to keep now, and the recommendations still inside the cooldown window.

    Grows at once (the newest recommendation is in the window); shrinks only when larger
    recommendations have aged out of it.
    """
    wanted = need(obs, scaling.headroom)
    horizon = obs.now - scaling.cooldown_seconds
    kept = (*((t, n) for t, n in history if t > horizon), (obs.now, wanted))
    peak = max(n for _, n in kept)
    # Only the last recommendation per value that can still be the peak matters; the rest is
    # dropped so the window stays small under a steady stream of reconciles.
    kept = _prune(kept)
    desired = min(scaling.max_size, max(scaling.min_ready, peak))
    return Decision(desired, wanted, _why(scaling, obs, wanted, peak, desired)), kept


def _prune(kept: Recommendations) -> Recommendations:
    """Drop every recommendation that a later one at least as large outlives (a monotonic
    deque: what remains is strictly decreasing in value)."""
    out: list[tuple[float, int]] = []
    for t, n in kept:
        while out and out[-1][1] <= n:
            out.pop()
        out.append((t, n))
    return tuple(out)


def _why(scaling: PoolScaling, obs: Observation, wanted: int, peak: int, desired: int) -> str:
    estimate = (
        f"{obs.queue} waiting, {obs.arrival_rate * 60:.1f}/min x "
        f"{obs.warmup_seconds:.1f}s warm-up, headroom {scaling.headroom}: {wanted}"
    )
    if peak > wanted:
        estimate += f"; {peak} asked for within the {scaling.cooldown_seconds}s cooldown"
    if desired == scaling.max_size and peak > desired:
        return f"{estimate}; held at maxSize {scaling.max_size}"
    if desired == scaling.min_ready and peak < desired:
        return f"{estimate}; held at minReady {scaling.min_ready}"
    return estimate


def bounded(scaling: PoolScaling, size: int) -> int:
    return min(scaling.max_size, max(scaling.min_ready, size))


@dataclass
class Demand:
    """One pool's observations, fed by the keeper and the road (pool.PoolManager.demand)."""

    arrivals: deque[float] = field(default_factory=deque)
    warmup: float | None = None
    history: Recommendations = ()
    # Warm pods seen not ready, by name: their warm-up is sampled when they turn ready.
    warming: set[str] = field(default_factory=set)

    def arrived(self, now: float) -> None:
        self.arrivals.append(now)

    def rate(self, now: float) -> float:
        while self.arrivals and self.arrivals[0] <= now - RATE_WINDOW_SECONDS:
            self.arrivals.popleft()
        return len(self.arrivals) / RATE_WINDOW_SECONDS

    def warmed(self, seconds: float) -> None:
        if seconds <= 0:
            return
        if self.warmup is None:
            self.warmup = seconds
        else:
            self.warmup += WARMUP_WEIGHT * (seconds - self.warmup)

    def target(self, spec: SandboxPoolSpec, now: float, queue: int) -> Decision:
        """The size the pool keeps now: fixed, external (clamped), or the builtin decision."""
        scaling = spec.scaling
        if scaling is None:
            return Decision(spec.size, spec.size, f"fixed size {spec.size}")
        if scaling.mode == "External":
            size = bounded(scaling, spec.size)
            why = f"spec.size {spec.size} (scale subresource)"
            if size != spec.size:
                why += f", within minReady {scaling.min_ready}..maxSize {scaling.max_size}"
            return Decision(size, spec.size, why)
        obs = Observation(
            now=now,
            arrival_rate=self.rate(now),
            warmup_seconds=self.warmup or DEFAULT_WARMUP_SECONDS,
            queue=queue,
        )
        decision, self.history = decide(scaling, obs, self.history)
        return decision
