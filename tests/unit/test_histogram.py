"""The plain-int histogram behind the duration metrics."""

from __future__ import annotations

import pytest

from dispatch.histogram import Histogram


def test_a_duration_counts_in_the_first_bucket_whose_bound_it_does_not_exceed() -> None:
    histogram = Histogram((0.1, 1.0))
    for seconds in (0.05, 0.1, 0.5, 1.0, 3.0):
        histogram.observe(seconds)
    s = histogram.statistics()
    assert s.counts == (2, 2, 1)  # a bound is inclusive, as Prometheus' `le`
    assert s.count == 5
    assert s.total == pytest.approx(4.65)
    assert s.cumulative() == [("0.1", 2.0), ("1.0", 4.0), ("+Inf", 5.0)]


def test_bounds_must_ascend() -> None:
    with pytest.raises(ValueError, match="ascending"):
        Histogram((1.0, 0.1))
    with pytest.raises(ValueError, match="distinct"):
        Histogram((1.0, 1.0))
