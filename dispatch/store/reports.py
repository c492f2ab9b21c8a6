"""Read-only views of the ledger for `dispatch status` and `dispatch history`.

Both only read committed rows, so they are safe to run while the daemon is writing (SQLite in
WAL mode lets readers and the writer proceed together).
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from ..states import AttemptState, RecordState
from .errors import translated
from .models import attempts, instances, records, sources
from .outbox import backlog

__all__ = ["AttemptRow", "Daemon", "StatusReport", "StrategyStatus", "history", "status"]


@dataclass(frozen=True, slots=True)
class StrategyStatus:
    """Counts for one strategy: records by state, and by reason within each final state."""

    states: dict[str, int] = field(default_factory=dict)
    completed: dict[str, int] = field(default_factory=dict)  # by the platform's end reason
    failed: dict[str, int] = field(default_factory=dict)  # by error
    skipped: dict[str, int] = field(default_factory=dict)  # by skip reason (expired included)
    pending: int = 0  # queued in the hub's memory at its last poll (not yet in the store)
    waiting: int = 0  # waiting for a retry delay or not_before, at the last poll
    polled_at: datetime | None = None
    waiting_reasons: dict[str, int] = field(default_factory=dict)  # what they wait for


@dataclass(frozen=True, slots=True)
class Daemon:
    """A daemon registered in the store (``instances``): where it runs and its heartbeat."""

    host: str
    pid: int
    started_at: datetime
    heartbeat_at: datetime
    dials_last_hour: int = 0  # its share of the dial starts of the last hour

    def heartbeat_age(self, now: datetime) -> float:
        """Seconds since its last heartbeat, as of ``now``; never below 0 (a beat committed
        after ``now`` was read is fresh, not from the future)."""
        return max(0.0, (now - self.heartbeat_at).total_seconds())

    def as_dict(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "pid": self.pid,
            "started_at": self.started_at.isoformat(),
            "heartbeat_at": self.heartbeat_at.isoformat(),
            "dials_last_hour": self.dials_last_hour,
        }


@dataclass(frozen=True, slots=True)
class StatusReport:
    generated_at: datetime
    strategies: dict[str, StrategyStatus]
    in_flight: int  # attempts dialing or on a call
    dials_last_minute: int  # dial starts in the 60 s before generated_at
    outbox_pending: int = 0  # callbacks not delivered yet
    outbox_failing: int = 0  # of which failed at least once
    daemons: list[Daemon] = field(default_factory=list)  # registered, with their heartbeat

    def alive(self, timeout: float) -> list[Daemon]:
        """The daemons whose heartbeat is younger than ``timeout`` seconds."""
        horizon = self.generated_at - timedelta(seconds=timeout)
        return [d for d in self.daemons if d.heartbeat_at > horizon]

    def as_dict(self) -> dict[str, Any]:
        return {
            "generated_at": self.generated_at.isoformat(),
            "daemons": [d.as_dict() for d in self.daemons],
            "in_flight": self.in_flight,
            "dials_last_minute": self.dials_last_minute,
            "outbox": {"pending": self.outbox_pending, "failing": self.outbox_failing},
            "strategies": {
                name: {
                    "states": s.states,
                    "completed": s.completed,
                    "failed": s.failed,
                    "skipped": s.skipped,
                    "pending": s.pending,
                    "waiting": s.waiting,
                    "waiting_reasons": s.waiting_reasons,
                    "polled_at": s.polled_at.isoformat() if s.polled_at else None,
                }
                for name, s in self.strategies.items()
            },
        }


@dataclass(frozen=True, slots=True)
class AttemptRow:
    strategy: str
    record_id: str
    number: int
    phone: str
    state: str
    reason: str | None
    call_id: str | None
    duration: float | None
    dialed_at: datetime
    ended_at: datetime | None
    results: list[dict[str, Any]] = field(default_factory=list)  # [{"tool", "arguments", "at"}]
    evidence: dict[str, Any] = field(default_factory=dict)  # what the calling rules saw
    transcript: list[dict[str, Any]] | None = None  # with transcripts=True

    def as_dict(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy,
            "record_id": self.record_id,
            "attempt": self.number,
            "phone": self.phone,
            "state": self.state,
            "reason": self.reason,
            "call_id": self.call_id,
            "duration": self.duration,
            "dialed_at": self.dialed_at.isoformat(),
            "ended_at": self.ended_at.isoformat() if self.ended_at else None,
            "results": self.results,
            "evidence": self.evidence,
            **({"transcript": self.transcript} if self.transcript is not None else {}),
        }


_BY_REASON = {
    RecordState.COMPLETED.value: "completed",
    RecordState.FAILED.value: "failed",
    RecordState.SKIPPED.value: "skipped",
    RecordState.EXPIRED.value: "skipped",
}


async def status(engine: AsyncEngine, now: datetime | None = None) -> StatusReport:
    """Counts per strategy and state, calls in flight, and the dial rate of the last minute,
    as of ``now`` (by default the database's clock for a cluster, which is what its daemons
    stamp their heartbeats and dials with; the system's otherwise)."""
    if now is None:
        now = await _now(engine)
    by_state = select(records.c.strategy, records.c.state, records.c.reason, func.count()).group_by(
        records.c.strategy, records.c.state, records.c.reason
    )
    in_flight = select(func.count()).where(
        attempts.c.state.in_([AttemptState.DIALING.value, AttemptState.ACTIVE.value])
    )
    recent = select(func.count()).where(attempts.c.dialed_at > now - timedelta(minutes=1))
    by_owner = (
        select(attempts.c.owner, func.count().label("dials"))
        .where(attempts.c.dialed_at > now - timedelta(hours=1))
        .group_by(attempts.c.owner)
        .subquery()
    )
    with translated("reading the status"):
        async with engine.connect() as conn:
            rows = (await conn.execute(by_state)).all()
            flying = (await conn.execute(in_flight)).scalar_one()
            last_minute = (await conn.execute(recent)).scalar_one()
            queues = {row.strategy: row for row in await conn.execute(select(sources))}
            registered = (
                await conn.execute(
                    select(
                        instances.c.host,
                        instances.c.pid,
                        instances.c.started_at,
                        instances.c.heartbeat_at,
                        func.coalesce(by_owner.c.dials, 0),
                    )
                    .outerjoin(by_owner, by_owner.c.owner == instances.c.id)
                    .order_by(instances.c.started_at)
                )
            ).all()
    callbacks = await backlog(engine)
    states: dict[str, Counter[str]] = defaultdict(Counter)
    reasons: dict[str, dict[str, Counter[str]]] = defaultdict(lambda: defaultdict(Counter))
    states.update({name: Counter() for name in queues if name not in states})
    for strategy, state, reason, count in rows:
        states[strategy][state] += count
        if state in _BY_REASON:
            reasons[strategy][_BY_REASON[state]][reason or state] += count
    report = {
        name: StrategyStatus(
            states=dict(sorted(states[name].items())),
            completed=dict(reasons[name]["completed"]),
            failed=dict(reasons[name]["failed"]),
            skipped=dict(reasons[name]["skipped"]),
            pending=queues[name].pending if name in queues else 0,
            waiting=queues[name].waiting if name in queues else 0,
            polled_at=queues[name].polled_at if name in queues else None,
            waiting_reasons=json.loads(queues[name].waiting_reasons or "{}")
            if name in queues
            else {},
        )
        for name in sorted(states)
    }
    daemons = [Daemon(*row) for row in registered]
    return StatusReport(
        now, report, flying, last_minute, callbacks.pending, callbacks.failing, daemons
    )


async def history(
    engine: AsyncEngine,
    *,
    phone: str | None = None,
    record_id: str | None = None,
    strategy: str | None = None,
    transcripts: bool = False,
) -> list[AttemptRow]:
    """Every attempt for a phone (E.164) or a record id, oldest first, with the results of
    its call (and its transcript, with ``transcripts``)."""
    if phone is None and record_id is None:
        raise ValueError("give a phone or a record id")
    query = select(
        attempts.c.strategy,
        attempts.c.record_id,
        attempts.c.number,
        attempts.c.phone,
        attempts.c.state,
        attempts.c.reason,
        attempts.c.call_id,
        attempts.c.duration,
        attempts.c.dialed_at,
        attempts.c.ended_at,
        attempts.c.results,
        attempts.c.transcript,
        attempts.c.evidence,
    ).order_by(attempts.c.dialed_at, attempts.c.number)
    if phone is not None:
        query = query.where(attempts.c.phone == phone)
    if record_id is not None:
        query = query.where(attempts.c.record_id == record_id)
    if strategy is not None:
        query = query.where(attempts.c.strategy == strategy)
    with translated("reading the history"):
        async with engine.connect() as conn:
            result = await conn.execute(query)
            rows = []
            for row in result:
                values = dict(row._mapping)
                values["results"] = json.loads(values["results"] or "[]")
                values["evidence"] = json.loads(values["evidence"] or "{}")
                transcript = values.pop("transcript")
                if transcripts:
                    values["transcript"] = json.loads(transcript or "[]")
                rows.append(AttemptRow(**values))
            return rows


async def _now(engine: AsyncEngine) -> datetime:
    """The clock the daemons of this store stamp with: the database's for a cluster, the
    system's otherwise (a single daemon stamps its heartbeat with its host's clock)."""
    if engine.dialect.name != "postgresql":
        return datetime.now(UTC)
    with translated("reading the status"):
        async with engine.connect() as conn:
            now, cluster = (
                await conn.execute(
                    select(
                        func.clock_timestamp(),
                        select(func.bool_or(instances.c.cluster)).scalar_subquery(),
                    )
                )
            ).one()
    return now if cluster else datetime.now(UTC)
