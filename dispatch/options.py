"""Groups of hub options, as frozen values."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

__all__ = ["Backoff", "Pacing", "RecoverMode", "RetryPolicy", "RetryRule"]

RecoverMode = Literal["interrupt", "retry"]


@dataclass(frozen=True, slots=True)
class Pacing:
    """How fast and how many at once.

    ``max_calls_per_minute``: no more than this many dial starts (retries included) in ANY
    ``window`` seconds (60 by default); ``None`` means unlimited. ``max_concurrent``: calls in
    flight at once, counted from the dial request until the call ends or the dial is rejected.
    """

    max_calls_per_minute: int | None = None
    max_concurrent: int = 1
    window: float = 60.0
    max_calls_per_second: float | None = None  # a smoother on top, for carriers' CPS limits

    def __post_init__(self) -> None:
        if self.max_calls_per_minute is not None and self.max_calls_per_minute < 1:
            raise ValueError("max_calls_per_minute must be at least 1 (or None for no limit)")
        if self.max_concurrent < 1:
            raise ValueError("max_concurrent must be at least 1")
        if self.window <= 0:
            raise ValueError("window must be positive")
        if self.max_calls_per_second is not None and self.max_calls_per_second <= 0:
            raise ValueError("max_calls_per_second must be positive (or None for no smoothing)")


@dataclass(frozen=True, slots=True)
class RetryRule:
    """``attempts`` more dials after this kind of rejection, each after ``delay`` seconds."""

    attempts: int = 0
    delay: float = 60.0

    def __post_init__(self) -> None:
        if self.attempts < 0:
            raise ValueError("retry attempts cannot be negative")
        if self.delay < 0:
            raise ValueError("retry delay cannot be negative")


# The kinds of rejection that may have their own rule; any other reason counts as "failed".
RETRY_KINDS = ("busy", "no_answer", "failed")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """A rejected dial (busy, no answer, failed) is retried ``attempts`` more times, each after
    ``delay`` seconds; ``by_reason`` gives ``busy``, ``no_answer`` or ``failed`` rejections
    their own rule (``{"busy": RetryRule(2, 600)}``), counted separately. A dial whose outcome
    is unknown is never retried."""

    attempts: int = 0
    delay: float = 60.0
    by_reason: Mapping[str, RetryRule] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.attempts < 0:
            raise ValueError("retry attempts cannot be negative")
        if self.delay < 0:
            raise ValueError("retry delay cannot be negative")
        unknown = set(self.by_reason) - set(RETRY_KINDS)
        if unknown:
            raise ValueError(
                f"retry rules exist for {', '.join(RETRY_KINDS)}, not {', '.join(sorted(unknown))}"
            )

    @staticmethod
    def kind(reason: str | None) -> str:
        """The retry kind of a rejection reason (``no-answer`` is ``no_answer``)."""
        normal = (reason or "").strip().lower().replace("-", "_")
        return normal if normal in RETRY_KINDS else "failed"

    def rule(self, reason: str | None) -> RetryRule:
        return self.by_reason.get(self.kind(reason)) or RetryRule(self.attempts, self.delay)

    @property
    def max_dials(self) -> int:
        """The most dials a record can ever get: one, plus every kind's retries (the flat
        ``attempts`` when no kind has its own rule)."""
        if not self.by_reason:
            return 1 + self.attempts
        return 1 + sum(self.rule(kind).attempts for kind in RETRY_KINDS)

    def retry_after(self, reason: str | None, earlier: Sequence[str | None]) -> float | None:
        """Seconds before the next dial of a record whose attempt was just rejected with
        ``reason`` (``earlier``: the reasons of its previous rejections), or None for none."""
        if not self.by_reason:
            return self.delay if len(earlier) < self.attempts else None
        kind = self.kind(reason)
        rule = self.rule(reason)
        made = sum(1 for r in earlier if self.kind(r) == kind)
        return rule.delay if made < rule.attempts else None


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delay before the n-th retry: ``initial * factor**(n-1)``, at most ``maximum`` seconds."""

    initial: float = 1.0
    maximum: float = 300.0
    factor: float = 2.0

    def __post_init__(self) -> None:
        if self.initial <= 0 or self.maximum < self.initial or self.factor < 1:
            raise ValueError("backoff needs 0 < initial <= maximum and factor >= 1")

    def delay(self, failures: int) -> float:
        return min(self.maximum, self.initial * self.factor ** max(0, failures - 1))
