"""Groups of hub options, as frozen values."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["Backoff", "Pacing", "RecoverMode", "RetryPolicy"]

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

    def __post_init__(self) -> None:
        if self.max_calls_per_minute is not None and self.max_calls_per_minute < 1:
            raise ValueError("max_calls_per_minute must be at least 1 (or None for no limit)")
        if self.max_concurrent < 1:
            raise ValueError("max_concurrent must be at least 1")
        if self.window <= 0:
            raise ValueError("window must be positive")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """A rejected dial (busy, no answer, failed) is retried ``attempts`` more times, each after
    ``delay`` seconds. A dial whose outcome is unknown is never retried."""

    attempts: int = 0
    delay: float = 60.0

    def __post_init__(self) -> None:
        if self.attempts < 0:
            raise ValueError("retry attempts cannot be negative")
        if self.delay < 0:
            raise ValueError("retry delay cannot be negative")

    @property
    def max_dials(self) -> int:
        return 1 + self.attempts


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
