"""listeners: a pulse wakes whoever waits when it fires, even a waiter not yet run, and nobody after."""

from __future__ import annotations

import asyncio

from codeexec.listeners import Pulse


async def test_a_pulse_wakes_a_waiter_that_had_not_run_yet_when_it_fired() -> None:
    """Caught: with one Event set and cleared at once (the old keeper's way), the waiter woke
    to a cleared flag and slept its whole timeout."""
    pulse = Pulse()
    waiter = asyncio.create_task(pulse.wait(30.0))
    await asyncio.sleep(0)  # the waiter holds the event now
    pulse.fire()
    pulse.fire()  # a second fire before the waiter runs loses nothing either
    assert await asyncio.wait_for(waiter, 1.0) is True


async def test_a_pulse_fired_before_the_wait_does_not_wake_it() -> None:
    pulse = Pulse()
    pulse.fire()
    assert await pulse.wait(0.01) is False
