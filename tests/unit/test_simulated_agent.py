from __future__ import annotations

from collections import Counter

import anyio
import pytest

from dispatch import DialRejected, DialRequest, SimulatedAgent
from dispatch.testing import ManualClock

pytestmark = pytest.mark.anyio


def request(to: str) -> DialRequest:
    return DialRequest(to=to, dispatch_id="d")


async def outcome(agent: SimulatedAgent, to: str) -> str:
    try:
        call = await agent.dial(request(to))
    except DialRejected as exc:
        return exc.reason
    end = await call.wait()
    return f"answered:{end.reason}"


async def test_outcomes_follow_the_configured_mix() -> None:
    agent = SimulatedAgent(answered=0.5, no_answer=0.3, busy=0.2, failed=0, time_scale=0)
    counts = Counter(
        [(await outcome(agent, f"+1415555{n:04d}")).split(":")[0] for n in range(2000)]
    )
    assert set(counts) == {"answered", "no_answer", "busy"}
    assert 900 < counts["answered"] < 1100
    assert 500 < counts["no_answer"] < 700
    assert 300 < counts["busy"] < 500


async def test_the_nth_dial_of_a_number_is_deterministic_for_a_seed() -> None:
    numbers = [f"+1415555{n:04d}" for n in range(50)]
    first = SimulatedAgent(seed=3, time_scale=0)
    second = SimulatedAgent(seed=3, time_scale=0)
    forward = [await outcome(first, n) for n in numbers]
    backward = [await outcome(second, n) for n in reversed(numbers)]
    assert forward == list(reversed(backward))
    assert forward != [await outcome(SimulatedAgent(seed=4, time_scale=0), n) for n in numbers]


async def test_ring_and_talk_times_run_on_the_injected_clock_scaled() -> None:
    clock = ManualClock()
    agent = SimulatedAgent(
        answered=1,
        no_answer=0,
        busy=0,
        failed=0,
        ring_seconds=(4, 4),
        talk_seconds=(60, 60),
        time_scale=0.5,
        clock=clock,
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(outcome, agent, "+14155552671")
        await clock.wait_for_sleepers(1)
        assert clock.deadlines == [2.0]  # 4 s of ringing at half scale
        clock.advance(2.0)
        await clock.wait_for_sleepers(1)
        assert clock.deadlines == [32.0]  # then 60 s of talk at half scale
        clock.advance(30.0)


def test_impossible_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="outcome rates"):
        SimulatedAgent(answered=0, no_answer=0, busy=0, failed=0)
    with pytest.raises(ValueError, match="ring_seconds"):
        SimulatedAgent(ring_seconds=(5, 1))
    with pytest.raises(ValueError, match="time_scale"):
        SimulatedAgent(time_scale=-1)
