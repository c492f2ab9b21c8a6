"""Which daemon is using the store: identity, heartbeat, and the claim of a single-daemon store.

Each running daemon is a row of ``instances`` (host, pid, boot, start time, heartbeat). On
start, :func:`claim` registers this process and refuses it (:class:`StoreInUse`, naming the
holder) if another daemon's heartbeat is fresh; a holder whose heartbeat expired, or whose
process is provably gone (same machine and boot, no such pid: a kill -9), is removed, and its
in-flight attempts become the newcomer's to recover. The claim is one transaction that takes
the table's write lock first, so two daemons starting at once cannot both win.

This is the groundwork for several daemons on one PostgreSQL: then each registers and beats
the same way, and only the dead ones' attempts are recovered.
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import delete, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ..errors import StoreInUse
from .errors import translated
from .models import instances

__all__ = ["Instance", "claim", "heartbeat", "release", "row", "running"]

# The instances this process runs (several hubs may share a process, and a store).
_RUNNING: set[str] = set()


@dataclass(frozen=True, slots=True)
class Instance:
    """One daemon process using the store."""

    id: str
    host: str
    pid: int
    boot_id: str | None  # the machine's boot and this process's pid namespace
    started_at: datetime
    heartbeat_at: datetime
    cluster: bool | None = False  # runs with [cluster] enabled

    @classmethod
    def this_process(cls, now: datetime, *, cluster: bool = False) -> Instance:
        host, pid = socket.gethostname(), os.getpid()
        return cls(uuid.uuid4().hex, host, pid, _boot_id(), now, now, cluster)

    def __str__(self) -> str:
        return f"{self.host}:{self.pid}"

    def dead(self, me: Instance, expiry: timedelta, *, proven: bool = True) -> bool:
        """Dead as ``me`` sees it now: its heartbeat is ``expiry`` old (as of ``me``'s), or,
        with ``proven``, its process is provably gone (see :meth:`gone`)."""
        return self.heartbeat_at <= me.heartbeat_at - expiry or (proven and self.gone(me))

    def gone(self, me: Instance) -> bool:
        """Provably dead: on this machine, since the same boot, in the same pid namespace
        (a container sharing the host's name and boot sees other pids, or none), and no
        process has its pid. A pid in use by another process counts as alive: waiting for
        the heartbeat to expire is the safe mistake."""
        if (self.host, self.boot_id) != (me.host, me.boot_id) or self.boot_id is None:
            return False
        if self.pid == me.pid:
            return self.id not in _RUNNING  # a hub of this very process: gone if it stopped
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False  # it exists, under another user
        return False


async def claim(engine: AsyncEngine, me: Instance, *, expiry: timedelta) -> list[Instance]:
    """Register ``me`` as the store's only daemon; return the dead holders it replaced.

    Raises :class:`StoreInUse` if another daemon's heartbeat is younger than ``expiry`` and
    its process is not provably gone.
    """
    # Marked running before the commit: a second hub of this process that claims right after
    # it must see a live daemon, not one whose hub stopped.
    _RUNNING.add(me.id)
    try:
        return await _claim(engine, me, expiry=expiry)
    except BaseException:
        _RUNNING.discard(me.id)
        raise


async def _claim(engine: AsyncEngine, me: Instance, *, expiry: timedelta) -> list[Instance]:
    with translated("registering this daemon"):
        async with engine.begin() as conn:
            await _lock(conn)
            rows = (await conn.execute(select(instances).where(instances.c.id != me.id))).all()
            others = [Instance(**row._mapping) for row in rows]
            for other in others:
                if not other.dead(me, expiry):
                    several = (
                        " with [cluster] enabled (enable it here too)" if other.cluster else ""
                    )
                    raise StoreInUse(
                        f"store in use by {other}{several} since "
                        f"{other.started_at:%Y-%m-%d %H:%M:%S} UTC (its heartbeat is "
                        f"{(me.heartbeat_at - other.heartbeat_at).total_seconds():.0f}s old; "
                        "stop that daemon first, or wait for its heartbeat to expire if it is "
                        "gone)"
                    )
            if others:
                await conn.execute(delete(instances).where(instances.c.id != me.id))
            await conn.execute(insert(instances).values(**row(me)))
    return others


async def heartbeat(engine: AsyncEngine, me: Instance, now: datetime) -> bool:
    """Record that ``me`` is alive; False if its row is gone (another daemon took over)."""
    with translated("writing the heartbeat"):
        async with engine.begin() as conn:
            result = await conn.execute(
                update(instances).where(instances.c.id == me.id).values(heartbeat_at=now)
            )
    return result.rowcount > 0


async def release(engine: AsyncEngine, me: Instance) -> None:
    """A clean stop: the next daemon need not wait for the heartbeat to expire. (If the store
    cannot be reached, the row stays; the next daemon on this machine sees the process gone.)"""
    _RUNNING.discard(me.id)
    with translated("unregistering this daemon"):
        async with engine.begin() as conn:
            await conn.execute(delete(instances).where(instances.c.id == me.id))


async def _lock(conn: AsyncConnection) -> None:
    """Take the write lock before reading, so the check and the insert are one step."""
    if conn.dialect.name == "postgresql":
        await conn.execute(text("LOCK TABLE instances IN SHARE ROW EXCLUSIVE MODE"))
    else:
        # SQLite: a write as the transaction's first statement takes the database's write
        # lock (waiting out another writer), so the read that follows sees every claim
        # committed before ours and none can commit after it until we are done.
        await conn.execute(delete(instances).where(instances.c.id == ""))


def running(me: Instance) -> None:
    """``me`` is a hub of this process from now on (see :meth:`Instance.gone`)."""
    _RUNNING.add(me.id)


def row(instance: Instance) -> dict[str, object]:
    """``instance`` as a row of ``instances``."""
    return {
        "id": instance.id,
        "host": instance.host[:255],
        "pid": instance.pid,
        "boot_id": instance.boot_id,
        "started_at": instance.started_at,
        "heartbeat_at": instance.heartbeat_at,
        "cluster": instance.cluster,
    }


def _boot_id() -> str | None:
    """This boot of this machine, and this process's pid namespace: two processes with the
    same value see each other's pids."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None
    return f"{boot}/{namespace}"[:64] or None
