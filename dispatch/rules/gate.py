"""The last look before a dial: do-not-call, expiry, the campaign schedule, calling hours in the
callee's local time, and per-number caps, in that order.

The hub asks :meth:`Gate.check` right before it dials a record it took from the queue (and
``dispatch check`` asks it for every record of its dry run). The verdict is :class:`Go` (with
the evidence the ledger keeps for the attempt), :class:`Hold` (not now: the record waits in
the queue's timers until ``until``, not counted as an attempt) or :class:`Refuse` (never: the
record is skipped with the reason).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ..admission import Skip
from ..record import Record
from ..states import RecordState, SkipReason
from .caps import Caps, CapTracker
from .dnc import DoNotCallList

if TYPE_CHECKING:
    from .hours import RulePack
    from .schedule import Schedule

__all__ = ["CallingRules", "Gate", "Go", "Hold", "Refuse"]


@dataclass(frozen=True, slots=True)
class CallingRules:
    """What applies to one strategy's records: a rule pack (calling hours and its caps), the
    caps (the global ones tightened by the pack's and the strategy's), a schedule, and the
    end reasons of a call that put the number on the do-not-call list."""

    pack: RulePack | None = None
    caps: Caps = field(default_factory=Caps)
    schedule: Schedule | None = None
    opt_out_reasons: frozenset[str] = frozenset()  # end reasons that mean "stop calling me"


@dataclass(frozen=True, slots=True)
class Go:
    evidence: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Hold:
    until: datetime
    why: str


@dataclass(frozen=True, slots=True)
class Refuse:
    skip: Skip


Verdict = Go | Hold | Refuse


class Gate:
    def __init__(self, dnc: DoNotCallList, caps: CapTracker) -> None:
        self.dnc = dnc
        self.caps = caps

    def check(self, rules: CallingRules, record: Record, now: datetime) -> Verdict:
        since = self.dnc.since(record.phone)
        if since is not False:
            when = f" since {since:%Y-%m-%d}" if isinstance(since, datetime) else ""
            return Refuse(Skip(SkipReason.DNC, f"dnc{when}"))
        if record.not_after is not None and record.not_after <= now:
            return _expired(record, "expired")
        evidence: dict[str, Any] = {}
        if rules.schedule is not None:
            opens = rules.schedule.next_open(now)
            if opens is None:
                return _expired(record, "the campaign's schedule is over")
            if opens > now:
                return self._hold(
                    record, opens, f"campaign closed until {opens:%Y-%m-%d %H:%M} UTC"
                )
        pack = rules.pack
        if pack is not None:
            try:
                zones = pack.zones_for(record.phone, record.timezone)
            except ValueError as exc:  # the record's own timezone is not a zone
                return Refuse(Skip(SkipReason.UNKNOWN_TIMEZONE, str(exc)))
            if not zones:
                return Refuse(Skip(SkipReason.UNKNOWN_TIMEZONE, f"no time zone for {record.phone} "
                                   f"({pack.name}): give the record a timezone"))  # fmt: skip
            opens = pack.hours.next_open(now, zones)
            if opens is None:
                names = ", ".join(z.key for z in zones)
                return Refuse(Skip(SkipReason.NO_WINDOW, f"no opening in every zone ({names})"))
            if opens > now:
                return self._hold(record, opens, pack.hours.explain(now, zones))
            evidence["rules"] = f"{pack.name}@{pack.version}"
            evidence["zones"] = [z.key for z in zones]
            evidence["local_time"] = now.astimezone(zones[0]).isoformat(timespec="seconds")
        if rules.caps:
            held = self.caps.allowed_at(record.phone, rules.caps, now)
            if held is not None:
                until, why = held
                if record.not_after is not None and until >= record.not_after:
                    return Refuse(Skip(SkipReason.CAP, f"{why}, until after not_after"))
                return Hold(until, why)
            evidence["caps"] = self.caps.counts(record.phone, now)
        if self.dnc.checked_at is not None:
            evidence["dnc_checked_at"] = self.dnc.checked_at.isoformat(timespec="seconds")
        return Go(evidence)

    def _hold(self, record: Record, until: datetime, why: str) -> Hold | Refuse:
        if record.not_after is not None and until >= record.not_after:
            return _expired(record, f"expired before it could be dialed: {why}")
        return Hold(until, why)


def _expired(record: Record, why: str) -> Refuse:
    detail = f"{why} (not_after {record.not_after.isoformat()})" if record.not_after else why
    return Refuse(Skip(SkipReason.EXPIRED, detail, RecordState.EXPIRED))
