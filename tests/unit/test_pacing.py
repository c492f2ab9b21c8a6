from __future__ import annotations

import random

import anyio
import pytest

from dispatch.pacing import SlidingWindowLimiter
from dispatch.testing import ManualClock, max_in_any_window

pytestmark = pytest.mark.anyio


async def test_never_exceeds_the_limit_in_any_window_under_random_demand() -> None:
    clock = ManualClock()
    limiter = SlidingWindowLimiter(5, 10.0, clock=clock)
    rng = random.Random(42)
    arrivals = sorted(rng.uniform(0, 100) for _ in range(60))
    starts: list[float] = []

    async def caller(arrival: float) -> None:
        await clock.sleep_until(arrival)
        starts.append(await limiter.acquire())

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(clock.autojump)
            async with anyio.create_task_group() as callers:
                for arrival in arrivals:
                    callers.start_soon(caller, arrival)
            tg.cancel_scope.cancel()

    assert len(starts) == 60
    assert max_in_any_window(starts, 10.0) == 5


async def test_reaches_full_rate_when_saturated() -> None:
    clock = ManualClock()
    limit, window, demand = 100, 1.0, 10_000
    limiter = SlidingWindowLimiter(limit, window, clock=clock)
    starts: list[float] = []

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            tg.start_soon(clock.autojump)
            for _ in range(demand):
                starts.append(await limiter.acquire())
            tg.cancel_scope.cancel()

    windows_used = (starts[-1] - starts[0]) / window + 1
    utilisation = demand / (windows_used * limit)
    assert utilisation >= 0.99
    assert max_in_any_window(starts, window) == limit


async def test_a_waiter_sleeps_until_the_exact_moment_a_start_is_allowed() -> None:
    clock = ManualClock()
    limiter = SlidingWindowLimiter(3, 60.0, clock=clock)
    for _ in range(3):
        await limiter.acquire()
    clock.advance(15)

    async with anyio.create_task_group() as tg:
        tg.start_soon(limiter.acquire)
        await clock.wait_for_sleepers(1)
        assert clock.next_deadline == 60.0  # one timer at the exact time, no polling
        assert limiter.statistics().waiting == 1
        clock.advance(44.999)
        assert clock.sleepers == 1
        clock.advance(0.001)
    assert limiter.starts_in_window() == 1


async def test_waiters_are_served_first_come_first_served() -> None:
    clock = ManualClock()
    limiter = SlidingWindowLimiter(1, 1.0, clock=clock)
    order: list[int] = []

    async def caller(n: int) -> None:
        await limiter.acquire()
        order.append(n)

    async with anyio.create_task_group() as tg:
        tg.start_soon(clock.autojump)
        async with anyio.create_task_group() as callers:
            for n in range(5):
                callers.start_soon(caller, n)
                await anyio.lowlevel.checkpoint()
        tg.cancel_scope.cancel()
    assert order == [0, 1, 2, 3, 4]


@pytest.mark.parametrize(("limit", "window"), [(0, 60.0), (-1, 60.0), (5, 0.0), (5, -1.0)])
def test_impossible_limits_are_refused(limit: int, window: float) -> None:
    with pytest.raises(ValueError, match="must be"):
        SlidingWindowLimiter(limit, window)


async def test_repr_shows_live_state() -> None:
    clock = ManualClock()
    limiter = SlidingWindowLimiter(2, 60.0, clock=clock)
    await limiter.acquire()
    assert repr(limiter) == "SlidingWindowLimiter(limit=2, window=60.0, in_window=1, waiting=0)"
