"""A simulated voice agent: the default, for demos, dry runs and tests of the whole pipeline."""

from __future__ import annotations

import itertools
import logging
import random
from collections import Counter
from dataclasses import dataclass

from ..abc import Agent, Call, CallEnd, DialRequest
from ..clock import Clock, SystemClock
from ..errors import DialRejected

__all__ = ["SimulatedAgent", "SimulatedCall"]

logger = logging.getLogger(__name__)

_OUTCOMES = ("answered", "no_answer", "busy", "failed")


@dataclass(frozen=True, slots=True)
class _Plan:
    outcome: str
    ring: float
    talk: float


class SimulatedCall(Call):
    def __init__(self, call_id: str, talk: float, clock: Clock) -> None:
        self.id = call_id
        self._talk = talk
        self._clock = clock

    async def wait(self) -> CallEnd:
        await self._clock.sleep_until(self._clock.monotonic() + self._talk)
        return CallEnd("hangup", round(self._talk, 3))

    def __repr__(self) -> str:
        return f"SimulatedCall({self.id!r})"


class SimulatedAgent(Agent):
    """Answers, rings out, or is busy at configurable rates, with ring and talk times drawn
    uniformly from ranges (in simulated seconds) and scaled by ``time_scale`` (``0.01`` runs
    a 60 s call in 0.6 s; ``0`` makes everything instant).

    Outcomes are deterministic for a given ``seed``: the n-th dial of a number always gets the
    same result, whatever the order or concurrency of dials.
    """

    def __init__(
        self,
        *,
        answered: float = 0.7,
        no_answer: float = 0.15,
        busy: float = 0.1,
        failed: float = 0.05,
        ring_seconds: tuple[float, float] = (2.0, 8.0),
        talk_seconds: tuple[float, float] = (20.0, 120.0),
        time_scale: float = 1.0,
        seed: int = 0,
        clock: Clock | None = None,
    ) -> None:
        weights = (answered, no_answer, busy, failed)
        if any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError("outcome rates must be non-negative and not all zero")
        for name, (low, high) in (("ring_seconds", ring_seconds), ("talk_seconds", talk_seconds)):
            if not 0 <= low <= high:
                raise ValueError(f"{name} must be a range (low, high) with 0 <= low <= high")
        if time_scale < 0:
            raise ValueError("time_scale cannot be negative")
        self.weights = weights
        self.ring_seconds = ring_seconds
        self.talk_seconds = talk_seconds
        self.time_scale = time_scale
        self.seed = seed
        self.clock = clock or SystemClock()
        self._dials_per_phone: Counter[str] = Counter()
        self._ids = itertools.count(1)

    def plan(self, to: str, nth: int) -> _Plan:
        """What the ``nth`` (1-based) dial of ``to`` will do."""
        rng = random.Random(f"{self.seed}:{to}:{nth}")
        outcome = rng.choices(_OUTCOMES, weights=self.weights)[0]
        return _Plan(outcome, rng.uniform(*self.ring_seconds), rng.uniform(*self.talk_seconds))

    async def dial(self, request: DialRequest) -> Call:
        self._dials_per_phone[request.to] += 1
        plan = self.plan(request.to, self._dials_per_phone[request.to])
        await self.clock.sleep_until(self.clock.monotonic() + plan.ring * self.time_scale)
        if plan.outcome != "answered":
            raise DialRejected(plan.outcome)
        return SimulatedCall(f"sim-{next(self._ids)}", plan.talk * self.time_scale, self.clock)

    def __repr__(self) -> str:
        return f"SimulatedAgent(weights={self.weights}, time_scale={self.time_scale})"
