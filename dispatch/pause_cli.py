"""`dispatch pause` and `dispatch resume`: stop and restart new dials without stopping the daemon.

The commands write the store's pause flags directly (:mod:`dispatch.store.controls`), so they
work whether a daemon runs or not. A running daemon reads the flags at most every
``poll_interval``: within that time after ``pause`` it starts no new dial of a paused strategy
(calls in flight finish, queued records wait), and within that time after ``resume`` it dials
again. ``pause`` creates and migrates the store if need be, so a campaign can start paused;
``resume`` on a store that does not exist has nothing to do.

Store failures exit 1 (raised as :class:`~dispatch.errors.StoreError`, reported by
:mod:`dispatch.cli`); a name that cannot be a strategy's exits 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

import anyio
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from .config import Settings, store_url
from .report_cli import _time
from .store import Store, controls

__all__ = ["pause", "resume"]

EXIT_OK = 0
EXIT_USAGE = 2  # as dispatch.cli


def _say(text: str) -> None:
    print(text)  # noqa: T201 - the command's output (this module is part of the CLI)


def _warn(text: str) -> None:
    print(f"dispatch: {text}", file=sys.stderr)  # noqa: T201 - the CLI's diagnostics


async def pause(settings: Settings, base: Path, args: argparse.Namespace) -> int:
    """Run ``dispatch pause [--strategy NAME] [--reason TEXT]``; return the exit code.

    Raises :class:`~dispatch.errors.StoreError` (the caller prints it and exits 1).
    """
    strategy = _strategy(args.strategy)
    if strategy is None:
        return EXIT_USAGE
    async with _opened(settings, base, create=True) as engine:
        assert engine is not None
        before = await controls.pause(engine, strategy, at=datetime.now(UTC), reason=args.reason)
    which = _which(strategy)
    if before is None:
        _say(f"paused {which}")
    else:
        _say(f"{which} already paused since {_time(before.paused_at)}")
    _say(
        f"a running daemon starts no new dial of it within {settings.poll_interval:g}s "
        "(calls in flight finish); `dispatch resume` dials again"
    )
    return EXIT_OK


async def resume(settings: Settings, base: Path, args: argparse.Namespace) -> int:
    """Run ``dispatch resume [--strategy NAME]``: clear one strategy's flag, or every flag;
    return the exit code.

    Raises :class:`~dispatch.errors.StoreError` (the caller prints it and exits 1).
    """
    strategy = None if args.strategy is None else _strategy(args.strategy)
    if args.strategy is not None and strategy is None:
        return EXIT_USAGE
    async with _opened(settings, base, create=False) as engine:
        if engine is None:
            _say("nothing was paused (there is no store yet)")
            return EXIT_OK
        cleared = await controls.resume(engine, strategy)
        left = await controls.paused(engine)
    for flag in cleared:
        _say(f"resumed {_which(flag.strategy)}")
    if not cleared:
        _say(f"{_which(strategy)} was not paused" if strategy else "nothing was paused")
    if strategy is not None and (every := left.get(controls.EVERY)) is not None:
        _warn(
            f"{strategy} stays paused: every strategy is, since {_time(every.paused_at)} "
            "(`dispatch resume` without --strategy lifts that)"
        )
    elif cleared:
        _say(f"a running daemon dials again within {settings.poll_interval:g}s")
    return EXIT_OK


def _strategy(name: str | None) -> str | None:
    """The flag's name for ``--strategy`` (none: every strategy), or None if it is unusable."""
    if name is None:
        return controls.EVERY
    name = name.strip()
    if not name or name == controls.EVERY or len(name) > 200:
        _warn(
            f"--strategy {name!r} cannot be a strategy's name "
            "(leave --strategy out to pause or resume every strategy)"
        )
        return None
    return name


def _which(strategy: str) -> str:
    return "every strategy" if strategy == controls.EVERY else f"strategy {strategy}"


@asynccontextmanager
async def _opened(
    settings: Settings, base: Path, *, create: bool
) -> AsyncIterator[AsyncEngine | None]:
    """The store's engine, migrated (and created if need be) with ``create``; without it, as
    it is, or None when a SQLite store does not exist (opening it would create an empty one)."""
    url = store_url(settings, base)
    parsed = make_url(url)
    database = parsed.database
    if (
        not create
        and parsed.get_backend_name() == "sqlite"
        and database
        and database != ":memory:"
        and not await anyio.Path(database).exists()
    ):
        yield None
        return
    store = Store(url)
    try:
        # Without create the schema is left as it is: a store older than the pause flags
        # fails with a StoreError naming the missing table, which dispatch.cli prints.
        await store.open(migrate=create)
        yield store.engine
    finally:
        await store.aclose()
