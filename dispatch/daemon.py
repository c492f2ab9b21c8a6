"""The daemon: a hub built from configuration, run under a service manager's eye.

Signals (:mod:`dispatch.service.signals`): SIGTERM and SIGINT drain calls in flight, then the
process exits 0; SIGHUP reloads ``config`` (:mod:`dispatch.service.reload`), with
``RELOADING=1`` and ``READY=1`` around it. Under systemd (``Type=notify``) it says
``READY=1`` once the hub is up (the store migrated, the agent connected and registered, the
strategies open), keeps ``STATUS=`` current, pings the watchdog from the event loop and says
``STOPPING=1`` when the drain begins. On a terminal a live table shows each strategy's
progress; otherwise a ``hub.progress`` line per strategy sums it up every minute.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from functools import partial
from pathlib import Path

import anyio
from anyio.abc import TaskStatus

from .config import Settings, build_hub
from .hub import DispatchHub
from .service.backlog import OutboxBacklog
from .service.notify import Notifier
from .service.progress import on_terminal, show_progress
from .service.reload import Reloader
from .service.signals import watch_signals
from .service.status import ServiceStatus, report_status
from .service.watchdog import feed_watchdog, watchdog_interval

__all__ = ["run_daemon"]

logger = logging.getLogger(__name__)


async def run_daemon(
    settings: Settings,
    *,
    base: Path,
    config: Path | None = None,
    exit_when_done: bool = False,
    environ: Mapping[str, str] = os.environ,
) -> None:
    """Run the hub ``settings`` describe (read from the file ``config``, which SIGHUP reads
    again) until a signal or, with ``exit_when_done``, the end of the work."""
    hub = build_hub(settings, base=base, exit_when_done=exit_when_done)
    notifier = Notifier.from_environ(environ)
    reloader = Reloader(hub, settings, config, base)
    backlog = OutboxBacklog(hub.store, hub.clock)  # one reader for STATUS= and /metrics
    status = ServiceStatus(hub, notifier, backlog)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(watch_signals, hub, status, reloader)
            interval = watchdog_interval(environ)
            if interval is not None and notifier.enabled:
                tg.start_soon(feed_watchdog, notifier, interval)
            if settings.metrics.listen is not None:
                # prometheus-client is loaded only when metrics are on.
                from .service.metrics import serve_metrics

                # Up before the hub, so a prober sees the daemon while it starts.
                await tg.start(serve_metrics, hub, settings.metrics, backlog)
            notifier.status("starting: opening the store, the agent and the strategies")
            # Returns once the hub runs: what READY=1 promises.
            await tg.start(_run, hub, tg.cancel_scope)
            await status.refresh()  # the day's dials and the backlog, bounded in time
            line = status.line()
            notifier.ready(line)
            tg.start_soon(report_status, status, line)
            tg.start_soon(
                partial(show_progress, hub, live=on_terminal((sys.stdout, sys.stderr), environ))
            )
    finally:
        notifier.stopping()
        notifier.close()


async def _run(
    hub: DispatchHub,
    daemon: anyio.CancelScope,
    *,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    await hub.run(task_status=task_status)
    daemon.cancel()  # the hub is done: so are the signal watcher, the watchdog, the status
