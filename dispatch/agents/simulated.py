"""A simulated voice agent: the default, for demos, dry runs and tests of the whole pipeline."""

from __future__ import annotations

import itertools
import logging
import random
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..abc import Agent, Call, CallEnd, CallResult, DialRequest
from ..clock import Clock, SystemClock
from ..errors import DialRejected
from ..results import ResultTool

__all__ = ["SimulatedAgent", "SimulatedCall", "SimulatedResult"]

logger = logging.getLogger(__name__)

_OUTCOMES = ("answered", "no_answer", "busy", "failed")


@dataclass(frozen=True, slots=True)
class SimulatedResult:
    """One answer simulated callees give: ``tool`` called with ``arguments``, drawn with
    probability proportional to ``weight``."""

    tool: str
    arguments: Mapping[str, Any] = field(default_factory=dict)
    weight: float = 1.0


@dataclass(frozen=True, slots=True)
class _Plan:
    outcome: str
    ring: float
    talk: float
    result: SimulatedResult | None = None


class SimulatedCall(Call):
    def __init__(
        self,
        call_id: str,
        talk: float,
        clock: Clock,
        result: SimulatedResult | None = None,
        greeting: str | None = None,
    ) -> None:
        self.id = call_id
        self._talk = talk
        self._clock = clock
        self._result = result
        self._greeting = greeting

    async def wait(self) -> CallEnd:
        started_at = self._clock.now()
        await self._clock.sleep_until(self._clock.monotonic() + self._talk)
        ended_at = self._clock.now()
        transcript: list[Mapping[str, Any]] = [
            {"role": "assistant", "content": self._greeting or "Hello!"}
        ]
        results: tuple[CallResult, ...] = ()
        if self._result is not None:
            results = (CallResult(self._result.tool, dict(self._result.arguments), ended_at),)
            said = ", ".join(f"{k}: {v}" for k, v in self._result.arguments.items())
            transcript.append({"role": "user", "content": f"({said or self._result.tool})"})
        return CallEnd(
            "hangup", round(self._talk, 3), results, tuple(transcript), started_at, ended_at
        )

    def __repr__(self) -> str:
        return f"SimulatedCall({self.id!r})"


class SimulatedAgent(Agent):
    """Answers, rings out, or is busy at configurable rates, with ring and talk times drawn
    uniformly from ranges (in simulated seconds) and scaled by ``time_scale`` (``0.01`` runs
    a 60 s call in 0.6 s; ``0`` makes everything instant).

    Outcomes are deterministic for a given ``seed``: the n-th dial of a number always gets the
    same result, whatever the order or concurrency of dials.

    With result ``tools``, an answered call ends with one result drawn from ``results`` (by
    weight); without ``results``, the mix is derived from the tools: one entry per value of
    each tool's first ``enum`` argument (so ``confirm_appointment {status: confirmed |
    cancelled | reschedule}`` answers each status about equally often).
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
        tools: Sequence[ResultTool] = (),
        results: Sequence[SimulatedResult] = (),
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
        self.tools = list(tools)
        self.results = _checked_mix(self.tools, results)
        self.clock = clock or SystemClock()
        self._dials_per_phone: Counter[str] = Counter()
        self._ids = itertools.count(1)

    def plan(self, to: str, nth: int) -> _Plan:
        """What the ``nth`` (1-based) dial of ``to`` will do."""
        rng = random.Random(f"{self.seed}:{to}:{nth}")
        outcome = rng.choices(_OUTCOMES, weights=self.weights)[0]
        ring, talk = rng.uniform(*self.ring_seconds), rng.uniform(*self.talk_seconds)
        result = None
        if self.results and outcome == "answered":
            result = rng.choices(self.results, weights=[r.weight for r in self.results])[0]
        return _Plan(outcome, ring, talk, result)

    async def dial(self, request: DialRequest) -> Call:
        self._dials_per_phone[request.to] += 1
        plan = self.plan(request.to, self._dials_per_phone[request.to])
        await self.clock.sleep_until(self.clock.monotonic() + plan.ring * self.time_scale)
        if plan.outcome != "answered":
            raise DialRejected(plan.outcome)
        return SimulatedCall(
            f"sim-{next(self._ids)}",
            plan.talk * self.time_scale,
            self.clock,
            plan.result,
            request.greeting,
        )

    def __repr__(self) -> str:
        return f"SimulatedAgent(weights={self.weights}, time_scale={self.time_scale})"


def _checked_mix(
    tools: Sequence[ResultTool], results: Sequence[SimulatedResult]
) -> list[SimulatedResult]:
    by_name = {tool.name: tool for tool in tools}
    if not results:
        return [entry for tool in tools for entry in _derived(tool)]
    for entry in results:
        tool = by_name.get(entry.tool)
        if tool is None:
            raise ValueError(f"simulated result for unknown tool {entry.tool!r}")
        if entry.weight <= 0:
            raise ValueError(f"simulated result for {entry.tool}: weight must be positive")
        if problems := tool.errors(entry.arguments):
            raise ValueError(f"simulated result for {entry.tool}: {'; '.join(problems)}")
    return list(results)


def _derived(tool: ResultTool) -> list[SimulatedResult]:
    """One answer per value of the tool's first enum argument (else one with no arguments),
    each valid for the tool's schema as far as required strings and enums go."""
    properties: Mapping[str, Any] = tool.parameters.get("properties", {})
    required = set(tool.parameters.get("required", ()))
    base: dict[str, Any] = {}
    choices: tuple[str, list[Any]] | None = None
    for name, schema in properties.items():
        if not isinstance(schema, Mapping):
            continue
        if "enum" in schema and choices is None:
            choices = (name, list(schema["enum"]))
        elif name in required:
            base[name] = schema["enum"][0] if "enum" in schema else _sample(schema)
    candidates = [{**base, choices[0]: value} for value in choices[1]] if choices else [base]
    return [SimulatedResult(tool.name, a) for a in candidates if not tool.errors(a)]


def _sample(schema: Mapping[str, Any]) -> Any:
    kind = schema.get("type")
    return {"integer": 1, "number": 1.0, "boolean": True, "array": [], "object": {}}.get(
        str(kind), "simulated"
    )
