"""The callback outbox's backlog, as the ``STATUS=`` line and ``/metrics`` show it.

The count is a query of the store, never a counter kept per record (the outbox is shared by
every daemon of a cluster, and survives restarts). So it is read at most once every
:data:`READ_EVERY` seconds whoever asks (the status line every second, each scrape), within
:data:`READ_DEADLINE`, and not at all while the store is known to be unreachable: a scrape or
a status update never waits on a store in trouble, they show the last value read.
"""

from __future__ import annotations

import logging
import math

import anyio

from ..clock import Clock
from ..errors import StoreError
from ..store import Store
from ..store.outbox import Backlog, backlog

__all__ = ["OutboxBacklog"]

logger = logging.getLogger(__name__)

READ_EVERY = 10.0  # seconds between two reads of the backlog, at most one per this
READ_DEADLINE = 2.0  # a read that takes longer is given up (the last value stays)
# After a read that failed (the schema still migrating at start, a store in trouble), the
# next is tried sooner than READ_EVERY: the figure should not stay missing that long.
RETRY_AFTER = 1.0


class OutboxBacklog:
    """The last backlog read from ``store`` (None until one succeeded), and when."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        *,
        every: float = READ_EVERY,
        deadline: float = READ_DEADLINE,
    ) -> None:
        self.store = store
        self.clock = clock
        self.every = every
        self.deadline = deadline
        self.last: Backlog | None = None
        self._next_at = -math.inf  # when the next read is due (monotonic, on the clock)
        self._lock = anyio.Lock()

    async def refresh(self) -> Backlog | None:
        """Read the backlog if the last try is :attr:`every` seconds old; return the last
        value read."""
        if not self._due():
            return self.last
        try:
            engine = self.store.engine
        except StoreError:  # not open yet (the daemon is starting): nothing to try
            return self.last
        async with self._lock:
            if not self._due():  # read by whoever held the lock meanwhile
                return self.last
            tried_at = self.clock.monotonic()
            self._next_at = tried_at + min(self.every, RETRY_AFTER)  # unless it succeeds
            with anyio.move_on_after(self.deadline):
                try:
                    self.last = await backlog(engine)
                    self._next_at = tried_at + self.every
                except StoreError as exc:  # the read failed: keep the last value
                    logger.debug("outbox.backlog_unread error=%s", exc)
        return self.last

    def _due(self) -> bool:
        if not self.store.available:
            return False  # the writer knows of an outage: no read would get through
        return self.clock.monotonic() >= self._next_at
