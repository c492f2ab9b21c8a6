"""The one-line ``STATUS=`` summary that ``systemctl status`` shows.

``2 calls active, 40 dialed since 00:00 UTC, 12 pending, 3 waiting, 5 callbacks pending``,
led by what matters more when something does: the store unreachable, a drain, a pause.

"Dialed since 00:00 UTC" counts the day's dial starts in the ledger (every daemon's, in a
cluster), read when the daemon starts and at each new UTC day, plus this daemon's since: a
restart does not reset it. The callback backlog is read from the store every few seconds
(:class:`~dispatch.service.backlog.OutboxBacklog`). A figure not read yet is left out.
"""

from __future__ import annotations

import logging
from datetime import date, datetime, time
from typing import NoReturn

import anyio

from ..errors import StoreError
from ..hub import DispatchHub, HubStatistics
from .backlog import OutboxBacklog
from .notify import Notifier

__all__ = ["ServiceStatus", "report_status", "status_line"]

logger = logging.getLogger(__name__)

STATUS_EVERY = 1.0  # seconds between looks; a datagram is sent only when the line changed
READ_DEADLINE = 2.0  # for the day's count of dial starts; given up after that (tried again)


def status_line(
    statistics: HubStatistics,
    *,
    dialed_today: int | None = None,
    callbacks: int | None = None,
    store_available: bool = True,
    stopping: bool = False,
) -> str:
    """The line for ``statistics``; ``dialed_today`` and ``callbacks`` (the outbox backlog)
    are left out while unknown."""
    s = statistics
    dialed = f"{dialed_today} dialed since 00:00 UTC, " if dialed_today is not None else ""
    queue = f"{dialed}{s.pending} pending, {s.waiting} waiting"
    if callbacks is not None:
        queue += f", {callbacks} {_plural(callbacks, 'callback')} pending"
    active = f"{s.active} {_plural(s.active, 'call')}"
    if stopping:
        return f"stopping: no new dials, {active} in flight; {queue}"
    if not store_available:
        return f"store unreachable: no dials until it is back; {active} active, {queue}"
    if s.paused:
        paused = ", ".join(sorted(s.paused))
        return f"paused ({paused}): no new dials; {active} active, {queue}"
    return f"{active} active, {queue}"


def _plural(count: int, word: str) -> str:
    return word if count == 1 else word + "s"


class ServiceStatus:
    """What the ``STATUS=`` line says about ``hub``, with the figures it reads from the store
    (:meth:`refresh`) kept between reads."""

    def __init__(self, hub: DispatchHub, notifier: Notifier, backlog: OutboxBacklog) -> None:
        self.hub = hub
        self.notifier = notifier
        self.backlog = backlog
        self._day: date | None = None  # the UTC day of the ledger's count
        self._ledger = 0  # the day's dial starts in the ledger, when it was read
        self._counted = 0  # the hub's own count of dial starts then

    async def refresh(self) -> None:
        """Read what the store says: the day's dial starts (at start and on a new UTC day)
        and the outbox backlog (every few seconds). Bounded in time; a failed read keeps
        what was known."""
        today = self.hub.clock.now().date()
        if self._day != today and self.hub.store.available:
            counted = self.hub.statistics().dialed
            midnight = datetime.combine(today, time(), self.hub.clock.now().tzinfo)
            with anyio.move_on_after(READ_DEADLINE):
                try:
                    self._ledger = await self.hub.store.dials_since(midnight)
                    self._day, self._counted = today, counted
                except StoreError as exc:  # not open yet, or unreachable: tried again
                    logger.debug("status.dials_unread error=%s", exc)
        await self.backlog.refresh()

    def dialed_today(self, statistics: HubStatistics) -> int | None:
        if self._day != self.hub.clock.now().date():
            return None  # a new day, not read yet
        return self._ledger + statistics.dialed - self._counted

    def line(self, *, stopping: bool = False) -> str:
        """The line as of now (``stopping``: a drain begins, whatever was sent so far)."""
        statistics = self.hub.statistics()
        backlog = self.backlog.last
        return status_line(
            statistics,
            dialed_today=self.dialed_today(statistics),
            callbacks=backlog.pending if backlog is not None else None,
            store_available=self.hub.store.available,
            stopping=stopping or self.notifier.stopping_sent,
        )


async def report_status(status: ServiceStatus, sent: str | None = None) -> NoReturn:
    """Keep ``STATUS=`` up to date with the hub, for as long as it runs (``sent``: the line
    the service manager has already)."""
    while True:
        await status.refresh()
        line = status.line()
        if line != sent:
            status.notifier.status(line)
            sent = line
        await anyio.sleep(STATUS_EVERY)
