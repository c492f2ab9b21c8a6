"""The cyclic garbage collector, paused while many long-lived objects are built.

Python 3.11's full collections walk every tracked object: while a poll takes in a million rows
or records, each one walks the growing heap again, stopping every thread (the event loop's
included) for tens to hundreds of milliseconds. :func:`gc_paused` turns the collector off for
such a stretch of work and hands what it built straight to the oldest generation.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["gc_paused"]


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
            if not gc.get_freeze_count():
                # Everything allocated meanwhile sits in the youngest generation, and the
                # first collection would walk all of it in one C call (0.8 s for a million
                # rows, every thread stopped). freeze + unfreeze moves it to the oldest
                # generation, where the rows would have ended up, in O(1); any garbage cycle
                # among it waits for the next full collection. Not if the application froze
                # objects itself: unfreeze would thaw those too.
                gc.freeze()
                gc.unfreeze()
            gc.enable()
