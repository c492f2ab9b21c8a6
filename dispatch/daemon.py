"""The daemon: a hub built from configuration, with signal handling.

SIGTERM and SIGINT stop dialing and drain calls in flight (up to ``drain_timeout``), then the
process exits 0. A second signal during the drain is logged and ignored, so a systemd stop
never cuts an outcome short; systemd's own stop timeout is the hard limit.
"""

from __future__ import annotations

import logging
import signal
from pathlib import Path

import anyio

from .config import Settings, build_hub
from .hub import DispatchHub

__all__ = ["run_daemon"]

logger = logging.getLogger(__name__)


async def run_daemon(settings: Settings, *, base: Path, exit_when_done: bool = False) -> None:
    hub = build_hub(settings, base=base, exit_when_done=exit_when_done)
    async with anyio.create_task_group() as tg:
        tg.start_soon(_watch_signals, hub)
        await hub.run()
        tg.cancel_scope.cancel()


async def _watch_signals(hub: DispatchHub) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        draining = False
        async for signum in signals:
            name = signal.Signals(signum).name
            if draining:
                logger.warning("daemon.signal %s again: still draining calls in flight", name)
                continue
            draining = True
            logger.info("daemon.signal %s: no new dials, draining calls in flight", name)
            hub.stop()
