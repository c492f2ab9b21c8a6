"""Durations counted into fixed buckets, in plain ints.

What a Prometheus histogram shows, at the cost of one bisect and two additions per
observation: the metrics endpoint turns :meth:`Histogram.statistics` into a histogram at
scrape time, so nothing on the hot path touches prometheus-client. Observed once per commit
round (the store's latency) or per poll, never per record.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass

__all__ = ["COMMIT_BUCKETS", "POLL_BUCKETS", "Histogram", "HistogramStatistics"]

# Upper bounds in seconds. A commit takes about a millisecond on a healthy store; a poll from
# milliseconds (a CSV tail) to a minute (a slow API, paged, with retries).
COMMIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
POLL_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


@dataclass(frozen=True, slots=True)
class HistogramStatistics:
    bounds: tuple[float, ...]
    counts: tuple[int, ...]  # per bucket (not cumulative); the last one is above every bound
    total: float  # the sum of every duration observed

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, float]]:
        """``[("0.001", 3), ..., ("+Inf", count)]``: Prometheus' ``le`` buckets."""
        buckets, running = [], 0
        for bound, count in zip((*map(str, self.bounds), "+Inf"), self.counts, strict=True):
            running += count
            buckets.append((bound, float(running)))
        return buckets


class Histogram:
    """Counts durations (seconds) in the buckets ``bounds`` (ascending upper bounds, each
    inclusive as Prometheus' ``le``)."""

    __slots__ = ("_counts", "_total", "bounds")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        if list(bounds) != sorted(set(bounds)):
            raise ValueError("histogram bounds must be distinct and ascending")
        self.bounds = bounds
        self._counts = [0] * (len(bounds) + 1)
        self._total = 0.0

    def observe(self, seconds: float) -> None:
        self._counts[bisect_left(self.bounds, seconds)] += 1
        self._total += seconds

    def statistics(self) -> HistogramStatistics:
        return HistogramStatistics(self.bounds, tuple(self._counts), self._total)

    def __repr__(self) -> str:
        s = self.statistics()
        return f"Histogram(count={s.count}, total={s.total:.3f}s)"
