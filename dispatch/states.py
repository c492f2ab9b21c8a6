"""States and reasons: the closed vocabularies the store, the hub and callbacks share."""

from __future__ import annotations

from enum import StrEnum

__all__ = ["AttemptState", "RecordState", "SkipReason"]


class AttemptState(StrEnum):
    """Where one dial attempt is. The first two are in flight; the rest are final."""

    DIALING = "dialing"  # intent committed, agent.dial() called or about to be
    ACTIVE = "active"  # the platform gave a call id; the call is ringing or connected
    COMPLETED = "completed"  # the call connected and ended (reason: the platform's word)
    REJECTED = "rejected"  # the dial definitely did not connect (busy, no_answer, ...)
    UNKNOWN = "unknown"  # the outcome is unknown; the phone may have rung
    INTERRUPTED = "interrupted"  # the process ended (crash, drain timeout) before the outcome

    @property
    def in_flight(self) -> bool:
        return self in (AttemptState.DIALING, AttemptState.ACTIVE)


class RecordState(StrEnum):
    """Where a record is. A terminal record is never dialed again, whatever its source says."""

    DIALING = "dialing"  # an attempt is in flight
    RETRY = "retry"  # the last attempt was rejected and attempts remain
    COMPLETED = "completed"
    FAILED = "failed"
    SKIPPED = "skipped"
    EXPIRED = "expired"
    INTERRUPTED = "interrupted"

    @property
    def terminal(self) -> bool:
        return self not in (RecordState.DIALING, RecordState.RETRY)


class SkipReason(StrEnum):
    """Why admission refused a record (``on_skipped``'s ``reason``)."""

    INVALID_PHONE = "invalid_phone"
    EXPIRED = "expired"
    MALFORMED = "malformed"  # the source's data could not become a record (a bad CSV row)
    DNC = "dnc"  # the number is on the do-not-call list
    CAP = "cap"  # a per-number cap will not allow a call before the record expires
    UNKNOWN_TIMEZONE = "unknown_timezone"  # calling hours apply, and no zone is known
    NO_WINDOW = "no_window"  # the calling hours never open in every zone of the number

    @property
    def about_content(self) -> bool:
        """The record's data was at fault: an incremental source that yields the record again
        (the operator fixed the row) has it looked at again."""
        return self in (SkipReason.INVALID_PHONE, SkipReason.MALFORMED, SkipReason.UNKNOWN_TIMEZONE)
