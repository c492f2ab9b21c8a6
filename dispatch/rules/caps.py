"""Per-number caps across every strategy: attempts per rolling 24 h and 30 days, a minimum gap
between two calls to one number, and a cool-down after a refusal.

:class:`CapTracker` holds each number's recent dial starts (loaded from the ledger on start,
kept up to date by the hub as it dials), so the caps hold across strategies and restarts.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

__all__ = ["REFUSALS", "CapTracker", "Caps", "DialStart", "is_refusal"]

DAY = 86_400.0

# Reasons of a rejected dial that mean the callee refused the call (SIP 603 Decline), not
# that nobody picked up: they start the cool-down. A `refused` result does too.
REFUSALS = frozenset({"declined", "rejected", "refused"})


def is_refusal(reason: str | None) -> bool:
    return reason is not None and reason in REFUSALS


@dataclass(frozen=True, slots=True)
class Caps:
    """Limits per number (None: no limit). Durations in seconds."""

    per_24h: int | None = None
    per_30d: int | None = None
    min_gap: float | None = None
    cooldown_after_refusal: float | None = None

    def __post_init__(self) -> None:
        for name in ("per_24h", "per_30d"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"caps.{name} must be at least 1")
        for name in ("min_gap", "cooldown_after_refusal"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"caps.{name} cannot be negative")

    def tightened(self, other: Caps) -> Caps:
        """The stricter of both, limit by limit."""

        def low(a: int | None, b: int | None) -> int | None:
            return b if a is None else a if b is None else min(a, b)

        def high(a: float | None, b: float | None) -> float | None:
            return b if a is None else a if b is None else max(a, b)

        return Caps(
            low(self.per_24h, other.per_24h),
            low(self.per_30d, other.per_30d),
            high(self.min_gap, other.min_gap),
            high(self.cooldown_after_refusal, other.cooldown_after_refusal),
        )

    @property
    def horizon(self) -> float:
        """How far back dial starts matter, in seconds."""
        spans = [DAY if self.per_24h else 0.0, 30 * DAY if self.per_30d else 0.0]
        spans += [self.min_gap or 0.0, self.cooldown_after_refusal or 0.0]
        return max(spans)

    def __bool__(self) -> bool:
        return any(v is not None for v in (self.per_24h, self.per_30d, self.min_gap,
                                           self.cooldown_after_refusal))  # fmt: skip


@dataclass(frozen=True, slots=True)
class DialStart:
    phone: str
    at: datetime
    refused: bool = False  # the callee refused (cool-down)


class CapTracker:
    """Each number's dial starts (and refusals) within the caps' horizon."""

    def __init__(self, horizon: float = 30 * DAY) -> None:
        self.horizon = horizon
        self._starts: dict[str, list[datetime]] = {}
        self._refused: dict[str, datetime] = {}

    def load(self, starts: Iterable[DialStart]) -> None:
        """Track ``starts`` (the ledger's) too; a start tracked already is not counted twice."""
        for start in starts:
            times = self._starts.get(start.phone, ())
            at = bisect.bisect_left(times, start.at)
            if at == len(times) or times[at] != start.at:
                self.started(start.phone, start.at)
            if start.refused:
                self.refused(start.phone, start.at)

    def started(self, phone: str, at: datetime) -> None:
        if not self.horizon:
            return  # no cap looks at dial starts: keep nothing per number
        times = self._starts.setdefault(phone, [])
        bisect.insort(times, at)
        horizon = at - timedelta(seconds=self.horizon)
        while times and times[0] < horizon:  # forget what no cap looks at any more
            del times[0]

    def refused(self, phone: str, at: datetime) -> None:
        if at > self._refused.get(phone, datetime.min.replace(tzinfo=at.tzinfo)):
            self._refused[phone] = at

    def counts(self, phone: str, now: datetime) -> dict[str, int]:
        """Dial starts to ``phone`` in the last 24 h and 30 days (the evidence of a dial)."""
        times = self._starts.get(phone, [])
        return {
            "24h": len(times) - bisect.bisect_right(times, now - timedelta(days=1)),
            "30d": len(times) - bisect.bisect_right(times, now - timedelta(days=30)),
        }

    def allowed_at(self, phone: str, caps: Caps, now: datetime) -> tuple[datetime, str] | None:
        """None if ``caps`` allow a call to ``phone`` now; else the earliest time they do, with
        the cap that holds it back (``cap: 3 calls in 24 h``)."""
        times = self._starts.get(phone, [])
        holds: list[tuple[datetime, str]] = []
        for limit, days, label in ((caps.per_24h, 1, "24 h"), (caps.per_30d, 30, "30 days")):
            if limit is None:
                continue
            window = timedelta(days=days)
            # A call exactly `window` ago has left it: the window is (now - window, now].
            recent = times[bisect.bisect_right(times, now - window) :]
            if len(recent) >= limit:
                # Free again once the oldest call that keeps it full leaves the window.
                holds.append((recent[len(recent) - limit] + window, f"{limit} calls in {label}"))
        if caps.min_gap and times and times[-1] + timedelta(seconds=caps.min_gap) > now:
            holds.append((times[-1] + timedelta(seconds=caps.min_gap), "minimum gap"))
        refused = self._refused.get(phone)
        if caps.cooldown_after_refusal and refused is not None:
            until = refused + timedelta(seconds=caps.cooldown_after_refusal)
            if until > now:
                holds.append((until, f"cool-down after a refusal on {refused:%Y-%m-%d}"))
        if not holds:
            return None
        at, why = max(holds)
        return at, f"cap: {why}"
