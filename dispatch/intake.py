"""THE intake decision: what to do with one item a strategy's poll yielded.

:func:`decide` is a pure function of the item, what the store knows of the record and where
the hub holds it. The hub acts on its verdict, and ``dispatch check`` reports it, so the two
can never disagree about who would be dialed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime

from .abc import Malformed, PollItem, Removed
from .admission import Admission, Decision, Defer, Skip
from .record import Record
from .states import RecordState, SkipReason
from .store import KnownRecord

__all__ = [
    "MAX_ID_LENGTH",
    "Admit",
    "Done",
    "Ignore",
    "Refuse",
    "Verdict",
    "Wait",
    "Withdraw",
    "decide",
]

MAX_ID_LENGTH = 500  # what the store keeps of a record id


@dataclass(frozen=True, slots=True)
class Withdraw:
    """The record left the source before its dial: drop it from the queue."""

    id: str


@dataclass(frozen=True, slots=True)
class Ignore:
    """Nothing to do (a repeat of a queued record, a record in a call, an unknown removal)."""

    id: str
    why: str


@dataclass(frozen=True, slots=True)
class Done:
    """Finished earlier (or still broken the way it was reported, or out of attempts): never
    dialed again."""

    id: str
    state: RecordState
    why: str = ""


@dataclass(frozen=True, slots=True)
class Refuse:
    """Never dial the record: admission (or the source) refused it, for ``skip.reason``."""

    record: Record
    skip: Skip


@dataclass(frozen=True, slots=True)
class Wait:
    """Queue the record, to be dialed not before ``until`` (wall time)."""

    record: Record
    until: datetime
    why: str
    replaces: bool = False  # it replaces the queued version (which may be waiting longer)


@dataclass(frozen=True, slots=True)
class Admit:
    """Queue the record for dialing now (its phone in E.164)."""

    record: Record
    replaces: bool = False  # it replaces the queued version (which may be waiting for a time)


Verdict = Withdraw | Ignore | Done | Refuse | Wait | Admit


def decide(
    item: PollItem,
    *,
    known: KnownRecord | None,
    queued: bool,
    in_flight: bool,
    incremental: bool,
    admission: Admission,
    max_dials: int | None = None,
) -> Verdict:
    """Decide about ``item``.

    ``known`` is the store's (or this run's) knowledge of the record, ``queued`` whether the
    hub holds it (pending, waiting or in a call), ``in_flight`` whether it is in a call now,
    ``incremental`` whether the strategy yields only changes (then a record yielded again
    replaces its queued version, and a record skipped for its content is looked at again).
    ``max_dials``: a record that has had that many dials gets no more, whatever its state
    says (a recovery put it back to ``retry``, or ``retry_attempts`` was lowered since).
    """
    if isinstance(item, Removed):
        if incremental and queued and not in_flight:
            return Withdraw(item.id)
        return Ignore(item.id, "removed, not queued")
    if isinstance(item, Malformed):
        record = item.record()
        verdict: Decision | None = Skip(SkipReason.MALFORMED, item.detail)
    else:
        record, verdict = item, None
    if len(record.id) > MAX_ID_LENGTH:
        # Kept under a stable id the store can hold, so it is reported once, not per poll.
        digest = hashlib.sha1(record.id.encode()).hexdigest()[:16]
        record = Record(id=f"long-id:{digest}", phone=record.phone[:32])
        verdict = Skip(SkipReason.MALFORMED, f"record id longer than {MAX_ID_LENGTH} characters")
    replaces = False
    if queued:
        if not incremental or in_flight:
            return Ignore(record.id, "in a call" if in_flight else "already queued")
        replaces = True
    fixable = incremental and known is not None and known.skipped_for_content
    if known is not None and known.terminal and not fixable:
        return Done(record.id, known.state)
    if known is not None and max_dials is not None and known.attempts >= max_dials:
        return Done(record.id, known.state, f"no attempts left ({known.attempts} made)")
    if verdict is None:
        verdict = admission.check(record)
    if isinstance(verdict, Skip):
        if (
            fixable
            and known is not None
            and (known.reason, known.phone)
            == (
                verdict.reason,
                record.phone[:32],
            )
        ):
            return Done(record.id, known.state)  # still broken the same way: reported already
        return Refuse(record, verdict)
    if isinstance(verdict, Defer):
        return Wait(verdict.record, verdict.until, "not_before", replaces)
    if known is not None and known.retry_at is not None and not replaces:
        # A retry scheduled by an earlier run keeps its due time.
        return Wait(verdict.record, known.retry_at, "retry", replaces)
    assert not isinstance(verdict, Skip | Defer)
    return Admit(verdict.record, replaces)
