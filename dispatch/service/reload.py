"""SIGHUP: read the configuration file again and apply it to the running hub.

What a reload changes is what :meth:`~dispatch.DispatchHub.reconfigure` takes: strategies
(added, removed, changed), pacing, retries, caps and calling rules, webhooks, the poll
interval, the drain timeout, the caller id and the default region. A strategy whose table is
unchanged keeps running untouched (its queue, its watcher); one whose table changed is
rebuilt. The sections named in :data:`~dispatch.config.RESTART_ONLY` (the store, the agent,
metrics, logging ...) keep the values the daemon started with, and a reload that changes them
says so. A file that does not load, or a change that cannot be applied, is refused with one
log line, and the running configuration is kept as it was.
"""

from __future__ import annotations

import logging
from pathlib import Path

import anyio

from ..abc import Strategy
from ..config import RESTART_ONLY, Settings, hub_settings, load_settings
from ..errors import ConfigError, DispatchError
from ..hub import DispatchHub
from ..logs import register_secrets
from .secrets import configured_secrets
from .status import ServiceStatus

__all__ = ["Reloader"]

logger = logging.getLogger(__name__)


class Reloader:
    """Reloads ``path`` into ``hub``; remembers the settings last applied."""

    def __init__(self, hub: DispatchHub, settings: Settings, path: Path | None, base: Path) -> None:
        self.hub = hub
        self.settings = settings
        self.path = path
        self.base = base
        self._lock = anyio.Lock()  # one reload at a time: each compares with the last

    async def reload(self, status: ServiceStatus) -> bool:
        """Apply the file as it is now; return whether it was taken. The service manager
        hears of it through ``status.notifier``."""
        if self.path is None:
            logger.warning("daemon.reload_refused error=the daemon was started without a "
                           "configuration file, there is nothing to reload")  # fmt: skip
            return False
        async with self._lock:
            status.notifier.reloading()
            try:
                return await self._reload(self.path)
            finally:
                status.notifier.reloaded(status.line())

    async def _reload(self, path: Path) -> bool:
        logger.info("daemon.reloading path=%s", path)
        try:
            new = load_settings(path)
            register_secrets(configured_secrets(new, self.base))  # new ones are redacted too
            strategies = self._strategies(new)
            changes = await self.hub.reconfigure(
                strategies=strategies, **hub_settings(new, self.base)
            )
        except (ConfigError, DispatchError, ValueError, OSError) as exc:
            logger.error(
                "daemon.reload_refused path=%s error=%s (the running configuration is kept)",
                path,
                exc,
            )
            return False
        except Exception as exc:  # a strategy's own code (its import, its open()): the same
            logger.error(
                "daemon.reload_refused path=%s error=%s: %s (the running configuration is kept)",
                path,
                type(exc).__name__,
                exc,
            )
            return False
        kept = [name for name in RESTART_ONLY if getattr(new, name) != getattr(self.settings, name)]
        if kept:
            logger.warning(
                "daemon.reload_needs_restart sections=%s (these keep the values the daemon "
                "started with; restart it to apply them)",
                ",".join(kept),
            )
        self.settings = new.model_copy(update={name: getattr(self.settings, name) for name in kept})
        logger.info("daemon.reloaded changes=%s", "; ".join(changes) or "none")
        return True

    def _strategies(self, new: Settings) -> list[Strategy]:
        """The strategies of ``new``: the running object where a table is unchanged, a new
        one (built, not opened yet) where it changed or is new."""
        running = list(zip(self.settings.strategies, self.hub.strategies, strict=True))
        strategies = []
        for config in new.strategies:
            same = next((pair for pair in running if pair[0] == config), None)
            if same is None:
                strategies.append(config.build(self.base))
            else:
                running.remove(same)
                strategies.append(same[1])
        return strategies
