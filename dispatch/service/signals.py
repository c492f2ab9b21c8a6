"""What the daemon does on a signal.

SIGTERM and SIGINT stop dialing and drain calls in flight (up to ``drain_timeout``), then the
process exits 0. A second signal during the drain is logged and ignored, so a systemd stop
never cuts an outcome short; systemd's own stop timeout is the hard limit. SIGHUP (``systemctl
reload``) is logged and ignored: reloading is not supported yet, and a SIGHUP must not kill a
daemon with calls in flight.
"""

from __future__ import annotations

import logging
import signal

import anyio

from ..hub import DispatchHub
from .notify import Notifier
from .status import status_line

__all__ = ["watch_signals"]

logger = logging.getLogger(__name__)


async def watch_signals(hub: DispatchHub, notifier: Notifier) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        draining = False
        async for signum in signals:
            name = signal.Signals(signum).name
            if signum == signal.SIGHUP:
                logger.warning(
                    "daemon.reload_unsupported %s: reload is not supported yet, nothing changed; "
                    "restart the daemon (systemctl restart, or SIGTERM) to apply a new "
                    "configuration",
                    name,
                )
                continue
            if draining:
                logger.warning("daemon.signal %s again: still draining calls in flight", name)
                continue
            draining = True
            logger.info("daemon.signal %s: no new dials, draining calls in flight", name)
            hub.stop()
            notifier.stopping(status_line(hub.statistics(), stopping=True))
