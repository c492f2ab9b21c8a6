"""Live progress of a foreground run: where each strategy stands, how fast, and how long to go.

On a terminal (stderr a TTY, not under journald) a live table per strategy, drawn with
``rich``: dialed, active, done, remaining, the rate over the last minute and an ETA. Log lines
keep printing above it. Otherwise (piped, under journald) one ``hub.progress`` line per
strategy every :data:`SUMMARY_EVERY` seconds, while there is something to report.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, NoReturn, TextIO

import anyio

from ..hub import DispatchHub, StrategyStatistics

if TYPE_CHECKING:
    from rich.console import RenderableType

__all__ = ["Progress", "ProgressRow", "show_progress"]

logger = logging.getLogger(__name__)

RATE_WINDOW = 60.0  # the rate is over this many seconds (less, early in a run)
SUMMARY_EVERY = 60.0  # seconds between summary lines when not on a terminal
REFRESH_EVERY = 1.0  # seconds between redraws of the live table


@dataclass(frozen=True, slots=True)
class ProgressRow:
    strategy: str
    dialed: int
    active: int
    done: int
    remaining: int  # queued: pending, or waiting for a time
    per_minute: float  # dials per minute over the rate window
    eta: float | None  # seconds until the remaining records are dialed at this rate
    paused: bool = False

    def log(self) -> None:
        """The summary as a log line (a template with arguments: JSON lines get the fields)."""
        logger.info(_SUMMARY, *self._values())

    def summary(self) -> str:
        return _SUMMARY % self._values()

    def _values(self) -> tuple[object, ...]:
        paused = " paused" if self.paused else ""
        return (self.strategy, self.dialed, self.active, self.done, self.remaining,
                self.per_minute, format_eta(self.eta), paused)  # fmt: skip


_SUMMARY = (
    "hub.progress strategy=%s dialed=%d active=%d done=%d remaining=%d rate=%.1f/min eta=%s%s"
)


class Progress:
    """Samples the hub's per-strategy counters and works out rates and ETAs."""

    def __init__(self, hub: DispatchHub, clock: Callable[[], float] = time.monotonic) -> None:
        self.hub = hub
        self.clock = clock
        self._samples: dict[str, deque[tuple[float, int]]] = {}

    def rows(self) -> list[ProgressRow]:
        now = self.clock()
        return [self._row(name, s, now) for name, s in self.hub.strategy_statistics().items()]

    def _row(self, name: str, s: StrategyStatistics, now: float) -> ProgressRow:
        samples = self._samples.setdefault(name, deque())
        samples.append((now, s.dialed))
        while len(samples) > 2 and samples[1][0] <= now - RATE_WINDOW:
            samples.popleft()
        then, dialed_then = samples[0]
        span = now - then
        per_second = (s.dialed - dialed_then) / span if span > 0 else 0.0
        remaining = s.pending + s.waiting
        eta = remaining / per_second if per_second > 0 else (0.0 if not remaining else None)
        return ProgressRow(
            name, s.dialed, s.active, s.done, remaining, per_second * 60, eta, s.paused
        )


def format_eta(seconds: float | None) -> str:
    if seconds is None or math.isinf(seconds):
        return "-"
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def table(rows: list[ProgressRow]) -> RenderableType:
    from rich.table import Table

    view = Table(box=None, pad_edge=False, header_style="bold")
    for heading in ("strategy", "dialed", "active", "done", "remaining", "rate", "eta"):
        view.add_column(heading, justify="left" if heading == "strategy" else "right")
    for row in rows:
        name = row.strategy + (" (paused)" if row.paused else "")
        counts = (row.dialed, row.active, row.done, row.remaining)
        view.add_row(name, *map(str, counts), f"{row.per_minute:.1f}/min", format_eta(row.eta))
    return view


def on_terminal(streams: tuple[TextIO, ...], environ: Mapping[str, str]) -> bool:
    """Whether a live table may be drawn: every one of ``streams`` (stdout and stderr) a
    TTY, so no log line meant for a file ends up on the screen, and not a service."""
    service = "JOURNAL_STREAM" in environ or "INVOCATION_ID" in environ
    return not service and all(stream.isatty() for stream in streams)


async def show_progress(hub: DispatchHub, *, live: bool) -> NoReturn:
    """Draw the live table (``live``) or log the summary lines, until cancelled."""
    progress = Progress(hub)
    if not live:
        while True:
            await anyio.sleep(SUMMARY_EVERY)
            for row in progress.rows():
                if row.active or row.remaining or row.per_minute:
                    row.log()
    from rich.console import Console
    from rich.live import Live

    console = Console(file=sys.stderr, soft_wrap=True)  # a long log line is not cut in two
    with Live(table(progress.rows()), console=console, transient=True, auto_refresh=False) as view:
        while True:
            await anyio.sleep(REFRESH_EVERY)
            view.update(table(progress.rows()), refresh=True)
