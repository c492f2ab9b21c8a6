"""What makes the hub a good citizen under a service manager: sd_notify, the watchdog, the
``STATUS=`` line, signals, and the checks the command line runs before it starts anything."""

from __future__ import annotations

from .notify import Notifier
from .watchdog import feed_watchdog, watchdog_interval

__all__ = ["Notifier", "feed_watchdog", "watchdog_interval"]
