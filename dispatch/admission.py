"""Admission: the small, named rules a record passes before it may be queued for dialing.

Each rule either lets the record through, skips it for good with a reason, or defers it to a
later time. Dedup by id (the store) is part of the intake decision (:mod:`dispatch.intake`),
and dedup by phone (a number in a call waits) lives in the queue, because both depend on live
state rather than on the record alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from .clock import Clock
from .errors import InvalidPhone
from .record import Record, normalize_phone
from .states import RecordState, SkipReason

__all__ = ["Admission", "Admit", "Decision", "Defer", "Skip"]


@dataclass(frozen=True, slots=True)
class Admit:
    """Queue the record (its phone now in E.164)."""

    record: Record


@dataclass(frozen=True, slots=True)
class Skip:
    """Never dial the record; ``state`` is the terminal state to record."""

    reason: SkipReason
    detail: str
    state: RecordState = RecordState.SKIPPED


@dataclass(frozen=True, slots=True)
class Defer:
    """Not yet: queue the record, to be dialed at wall time ``until``."""

    record: Record
    until: datetime


Decision = Admit | Skip | Defer


class Admission:
    """The rules, applied in order: valid phone, not expired, due (``not_before``)."""

    def __init__(self, *, default_region: str | None, clock: Clock) -> None:
        self.default_region = default_region
        self.clock = clock

    def check(self, record: Record) -> Decision:
        try:
            phone = normalize_phone(record.phone, self.default_region)
        except InvalidPhone as exc:
            return Skip(SkipReason.INVALID_PHONE, exc.reason)
        if phone != record.phone:
            record = record.replace(phone=phone)
        now = self.clock.now()
        if record.not_after is not None and record.not_after <= now:
            return Skip(
                SkipReason.EXPIRED, f"not_after {record.not_after.isoformat()}", RecordState.EXPIRED
            )
        if record.not_before is not None and record.not_before > now:
            return Defer(record, record.not_before)
        return Admit(record)
