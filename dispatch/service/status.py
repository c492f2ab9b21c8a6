"""The one-line ``STATUS=`` summary that ``systemctl status`` shows."""

from __future__ import annotations

from typing import NoReturn

import anyio

from ..hub import DispatchHub, HubStatistics
from .notify import Notifier

__all__ = ["report_status", "status_line"]

STATUS_EVERY = 1.0  # seconds between looks; a datagram is sent only when the line changed


def status_line(
    statistics: HubStatistics, *, store_available: bool = True, stopping: bool = False
) -> str:
    """``"2 calls active, 40 dialed, 12 pending, 3 waiting"``, led by what matters more."""
    s = statistics
    queue = f"{s.dialed} dialed, {s.pending} pending, {s.waiting} waiting"
    if stopping:
        return f"stopping: no new dials, {s.active} calls in flight; {queue}"
    if not store_available:
        return f"store unreachable: no dials until it is back; {s.active} calls active, {queue}"
    if s.paused:
        paused = ", ".join(sorted(s.paused))
        return f"paused ({paused}): no new dials; {s.active} calls active, {queue}"
    return f"{s.active} calls active, {queue}"


def hub_status(hub: DispatchHub, notifier: Notifier) -> str:
    return status_line(
        hub.statistics(), store_available=hub.store.available, stopping=notifier.stopping_sent
    )


async def report_status(
    notifier: Notifier, hub: DispatchHub, sent: str | None = None, every: float = STATUS_EVERY
) -> NoReturn:
    """Keep ``STATUS=`` up to date with the hub, for as long as it runs (``sent``: the line
    the service manager has already)."""
    while True:
        line = hub_status(hub, notifier)
        if line != sent:
            notifier.status(line)
            sent = line
        await anyio.sleep(every)
