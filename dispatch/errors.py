"""Every exception the library raises, in one tree rooted at :class:`DispatchError`.

Retry code matches on type: :class:`DialRejected` is a definite "the phone did not take this
call" (retryable within ``retry_attempts``), :class:`DialUnknown` means the outcome is unknown
(the phone may have rung), so it is never retried automatically.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DialError",
    "DialInterrupted",
    "DialRejected",
    "DialUnknown",
    "DispatchError",
    "InvalidPhone",
    "SourceError",
    "StoreError",
    "StoreInUse",
    "StoreUnavailable",
]


class DispatchError(Exception):
    """Root of every error raised by pinecall-dispatch."""


class ConfigError(DispatchError):
    """The configuration is invalid; the message names the offending key."""


class StoreError(DispatchError):
    """The store refused an operation, or could not be reached (:class:`StoreUnavailable`);
    the driver error is chained. A plain ``StoreError`` is permanent: trying the same write
    again fails the same way."""


class StoreUnavailable(StoreError):
    """The store cannot be reached right now (connection refused or lost, server restarting,
    database locked): transient. Writes that must not be lost (outcomes, skips, callbacks)
    are held and committed once it is back; an intent fails at once, so nothing is dialed
    without one."""


class StoreInUse(StoreError):
    """Another daemon holds the store (its heartbeat is fresh): a second one is refused."""


class SourceError(DispatchError):
    """A strategy could not read its source or write an outcome to it (a database down, a
    query refused); the driver error is chained. The hub logs it and polls again."""


class InvalidPhone(DispatchError, ValueError):
    """A phone number could not be parsed into E.164."""

    def __init__(self, phone: str, reason: str) -> None:
        super().__init__(f"invalid phone {phone!r}: {reason}")
        self.phone = phone
        self.reason = reason


class DialError(DispatchError):
    """A dial did not produce a call."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class DialRejected(DialError):
    """The platform definitely did not connect the call (busy, no answer, failed, canceled).

    ``reason`` is normalised (``no_answer``, ``busy``, ``failed``, ``canceled`` or the
    platform's own word). The hub retries the record while it has attempts left.
    """


class DialUnknown(DialError):
    """The outcome of the dial is unknown (no answer from the platform in time, connection lost).

    The phone may have rung, so the hub never retries such a dial automatically.
    """


class DialInterrupted(DialUnknown):
    """The connection to the platform dropped while the dial or call was in flight.

    Recorded as ``interrupted`` (like a crash): never re-dialed, since the phone may be ringing.
    """


def dispatch_error_in(exc: BaseException) -> DispatchError | None:
    """The :class:`DispatchError` behind ``exc``, also from inside task groups' exception
    groups; None if there is none."""
    if isinstance(exc, DispatchError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            if (found := dispatch_error_in(inner)) is not None:
                return found
    return None
