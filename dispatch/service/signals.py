"""What the daemon does on a signal.

SIGTERM and SIGINT stop dialing and drain calls in flight (up to ``drain_timeout``), then the
process exits 0. A second signal during the drain is logged and ignored, so a systemd stop
never cuts an outcome short; systemd's own stop timeout is the hard limit. SIGHUP (``systemctl
reload``) reloads the configuration file (:mod:`dispatch.service.reload`) in a task of its
own, so a SIGTERM during a reload still stops the daemon at once; a SIGHUP while draining is
ignored.
"""

from __future__ import annotations

import logging
import signal

import anyio

from ..hub import DispatchHub
from .reload import Reloader
from .status import ServiceStatus

__all__ = ["watch_signals"]

logger = logging.getLogger(__name__)


async def watch_signals(hub: DispatchHub, status: ServiceStatus, reloader: Reloader) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        draining = False
        async with anyio.create_task_group() as reloads:
            async for signum in signals:
                if signum == signal.SIGHUP and not draining:
                    reloads.start_soon(reloader.reload, status)
                    continue
                draining = _on_signal(signum, draining, hub, status)


def _on_signal(signum: int, draining: bool, hub: DispatchHub, status: ServiceStatus) -> bool:
    """Act on a stop signal (or a SIGHUP while draining); return whether the hub drains."""
    name = signal.Signals(signum).name
    if signum == signal.SIGHUP:
        logger.warning("daemon.signal %s while draining: not reloading", name)
        return draining
    if draining:
        logger.warning("daemon.signal %s again: still draining calls in flight", name)
        return True
    logger.info("daemon.signal %s: no new dials, draining calls in flight", name)
    hub.stop()
    status.notifier.stopping(status.line(stopping=True))
    return True
