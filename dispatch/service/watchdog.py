"""The systemd watchdog, fed from the event loop itself.

With ``WatchdogSec=`` systemd sets ``$WATCHDOG_USEC`` (and ``$WATCHDOG_PID``) and expects
``WATCHDOG=1`` at least that often, or it kills and restarts the service. The pings come from a
task on the event loop, at half the period: a loop that stops turning (a synchronous call that
hangs, a busy loop) stops them, which is the point.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import NoReturn

import anyio

from .notify import Notifier

__all__ = ["feed_watchdog", "watchdog_interval"]

logger = logging.getLogger(__name__)


def watchdog_interval(
    environ: Mapping[str, str] = os.environ, pid: int | None = None
) -> float | None:
    """Seconds between pings (half of ``$WATCHDOG_USEC``), or None when no watchdog is set for
    this process: no ``WATCHDOG_USEC``, or a ``WATCHDOG_PID`` that is another process's (the
    variables were inherited), as sd_watchdog_enabled(3) decides."""
    usec = environ.get("WATCHDOG_USEC", "")
    owner = environ.get("WATCHDOG_PID", "")
    try:
        period = int(usec)
        if owner and int(owner) != (os.getpid() if pid is None else pid):
            return None
    except ValueError:
        if usec:
            logger.warning("watchdog.ignored WATCHDOG_USEC=%r WATCHDOG_PID=%r", usec, owner)
        return None
    if period <= 0:
        return None
    return period / 1_000_000 / 2


async def feed_watchdog(notifier: Notifier, interval: float) -> NoReturn:
    """Send ``WATCHDOG=1`` now and every ``interval`` seconds, while the loop turns."""
    logger.debug("watchdog.started interval=%.3fs", interval)
    while True:
        notifier.watchdog()
        await anyio.sleep(interval)
