"""The pure sizing decision (autoscale.decide, autoscale.need) and the demand it is fed."""

from __future__ import annotations

import random

from codeexec import autoscale
from codeexec.api.models import PoolScaling, SandboxPoolSpec
from codeexec.autoscale import Decision, Demand, Observation, Recommendations, decide, need

SCALING = PoolScaling(min_ready=1, max_size=12, cooldown_seconds=300, headroom=1)


def _obs(now: float, *, rate: float = 0.0, warmup: float = 5.0, queue: int = 0) -> Observation:
    return Observation(now=now, arrival_rate=rate, warmup_seconds=warmup, queue=queue)


def _run(scaling: PoolScaling, steps: list[Observation]) -> list[Decision]:
    history: Recommendations = ()
    out = []
    for obs in steps:
        decision, history = decide(scaling, obs, history)
        out.append(decision)
    return out


def test_a_burst_grows_the_pool_at_once_to_max() -> None:
    [d] = _run(SCALING, [_obs(0.0, queue=60)])
    assert d.desired == 12
    assert d.need == 60
    assert "held at maxSize 12" in d.reason


def test_the_pool_shrinks_only_after_the_cooldown() -> None:
    steps = [_obs(0.0, queue=8)] + [_obs(t) for t in range(1, 400, 10)]
    sizes = {obs.now: d.desired for obs, d in zip(steps, _run(SCALING, steps), strict=True)}
    assert all(size == 8 for t, size in sizes.items() if t < 300), sizes
    assert all(size == 1 for t, size in sizes.items() if t > 300), sizes


def test_the_size_never_leaves_its_bounds() -> None:
    """Random demand, random bounds: every decision lies within minReady..maxSize.

    Caught: dropping the minReady clamp in decide (`min(max_size, peak)`) let an idle pool
    with minReady 1 drop to 0, and this failed.
    """
    rng = random.Random(5)
    for _ in range(200):
        low = rng.randint(0, 5)
        scaling = PoolScaling(
            min_ready=low,
            max_size=rng.randint(max(1, low), 20),
            cooldown_seconds=rng.randint(0, 60),
        )
        steps = [
            _obs(t, rate=rng.choice([0, 0.1, 1, 5]), queue=rng.choice([0, 0, 3, 50]))
            for t in range(0, 300, 3)
        ]
        for d in _run(scaling, steps):
            assert scaling.min_ready <= d.desired <= scaling.max_size, (scaling, d)


def test_a_steady_rate_gives_a_steady_size() -> None:
    """The estimate swings with each 1 s sample; the size keeps the cooldown's peak.

    Caught: `peak = wanted` in decide (no window) made the size follow every swing.
    """
    rng = random.Random(3)
    steps = [_obs(t, rate=rng.uniform(0.6, 0.9)) for t in range(600)]
    sizes = [d.desired for d in _run(SCALING, steps)][300:]
    assert max(sizes) - min(sizes) == 0, sorted(set(sizes))


def test_one_execution_on_an_empty_pool_asks_for_one_pod_and_no_headroom() -> None:
    """Scale from zero: the waiting execution is the demand; a rate of one a minute is no
    steady demand, so there is no headroom and the pool can return to zero."""
    zero = PoolScaling(min_ready=0, max_size=5, cooldown_seconds=30)
    waiting, served, later = _run(
        zero,
        [_obs(0.0, rate=1 / 180, queue=1), _obs(5.0, rate=1 / 180), _obs(40.0, rate=1 / 180)],
    )
    assert (waiting.desired, served.desired, later.desired) == (1, 1, 0)


def test_a_lone_arrival_on_a_slow_warming_pool_is_no_steady_demand() -> None:
    """Measured on the test bed before the STEADY_MEAN threshold: one execution in 180 s, the
    10 s default warm-up, gave 0.06 + 2 x 0.24 -> 1 pod plus headroom, so an empty pool
    started 2 pods for one execution."""
    for warmup in (5.0, 10.0, 30.0):
        assert need(_obs(0.0, rate=1 / 180, warmup=warmup, queue=1), headroom=1) == 1


def test_steady_demand_stocks_the_arrivals_of_one_warm_up_plus_their_spread() -> None:
    # 1/s for 4 s of warm-up: 4 expected, 2 standard deviations (2 x 2) above, 1 headroom.
    assert need(_obs(0.0, rate=1.0, warmup=4.0), headroom=1) == 4 + 4 + 1
    # A queue beyond the stock is served by pods of its own.
    assert need(_obs(0.0, rate=1.0, warmup=4.0, queue=30), headroom=1) == 31
    assert need(_obs(0.0), headroom=3) == 0


def test_the_window_keeps_only_recommendations_that_can_still_be_the_peak() -> None:
    history: Recommendations = ()
    for t in range(1000):
        _, history = decide(SCALING, _obs(float(t), rate=0.5 + (t % 7) / 10), history)
    values = [n for _, n in history]
    assert values == sorted(values, reverse=True) and len(values) <= 12


def test_demand_measures_rate_and_warmup() -> None:
    d = Demand()
    for t in range(90):
        d.arrived(float(t))
    assert d.rate(90.0) == 90 / autoscale.RATE_WINDOW_SECONDS
    assert d.rate(90.0 + autoscale.RATE_WINDOW_SECONDS) == 0.0
    d.warmed(4.0)
    d.warmed(8.0)
    assert d.warmup == 4.0 + autoscale.WARMUP_WEIGHT * 4.0


def test_fixed_and_external_pools_keep_their_size_within_the_bounds() -> None:
    base = {"language": "python", "image": "x"}
    fixed = SandboxPoolSpec.model_validate({**base, "size": 4})
    assert Demand().target(fixed, 0.0, queue=50).desired == 4
    external = SandboxPoolSpec.model_validate(
        {**base, "size": 40, "scaling": {"mode": "External", "minReady": 2, "maxSize": 9}}
    )
    assert Demand().target(external, 0.0, queue=0).desired == 9
    external.size = 0
    assert Demand().target(external, 0.0, queue=0).desired == 2
