"""The cyclic garbage collector, paused while many long-lived objects are built.

Python 3.11's full collections walk every tracked object: while a poll takes in a million rows
or records, each one walks the growing heap again, stopping every thread (the event loop's
included) for tens to hundreds of milliseconds. :func:`gc_paused` turns the collector off for
a stretch of synchronous work (a CSV read in a worker thread) and hands what it built straight
to the oldest generation; :class:`GcPause` does the same for the event loop's intake, and
turns the collector back on across every wait, so it is never left off while the process
waits for I/O (the collector is process-wide: an application embedding the hub shares it).
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType

__all__ = ["YOUNG_THRESHOLD", "GcPause", "gc_paused", "young_threshold_raised"]

# The youngest generation's threshold while a hub runs. Python's default (700) makes a busy
# hub, with a thousand calls in flight each holding a few dozen young objects (frames, rows,
# events), collect the youngest generations thousands of times a campaign, walking all of
# those every time: a fifth of its CPU at 100,000 records, more as the campaign grows. Almost
# everything it allocates dies by reference counting, so with 50,000 the collector runs a
# few times a campaign; garbage cycles wait at most that many allocations.
YOUNG_THRESHOLD = 50_000


def _hand_over() -> None:
    """Move what was allocated while the collector was off to the oldest generation."""
    if not gc.get_freeze_count():
        # Everything allocated meanwhile sits in the youngest generation, and the first
        # collection would walk all of it in one C call (0.8 s for a million rows, every
        # thread stopped). freeze + unfreeze moves it to the oldest generation, where the rows
        # would have ended up, in O(1); any garbage cycle among it waits for the next full
        # collection. Not if the application froze objects itself: unfreeze would thaw those.
        gc.freeze()
        gc.unfreeze()


@contextmanager
def gc_paused() -> Iterator[None]:
    """The cyclic GC off while building many long-lived objects (rows, records), none of
    which form cycles: it would walk the growing heap again and again meanwhile."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            _hand_over()
            gc.enable()


class GcPause:
    """``with GcPause() as pause:`` the collector is off, except inside ``with
    pause.resumed():`` around each wait (for I/O, a checkpoint, a commit)."""

    def __init__(self) -> None:
        self._paused = False

    def __enter__(self) -> GcPause:
        self._pause()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._resume()

    @contextmanager
    def resumed(self) -> Iterator[None]:
        paused = self._paused
        self._resume()
        try:
            yield
        finally:
            if paused:
                self._pause()

    def _pause(self) -> None:
        if gc.isenabled():
            gc.disable()
            self._paused = True

    def _resume(self) -> None:
        if self._paused:
            self._paused = False
            _hand_over()
            gc.enable()


@contextmanager
def young_threshold_raised(threshold: int = YOUNG_THRESHOLD) -> Iterator[None]:
    """The youngest generation's collection threshold at least ``threshold`` meanwhile (never
    lowered; put back afterwards unless someone changed it since)."""
    before = gc.get_threshold()
    raised = (max(before[0], threshold), *before[1:])
    gc.set_threshold(*raised)
    try:
        yield
    finally:
        if gc.get_threshold() == raised:
            gc.set_threshold(*before)
