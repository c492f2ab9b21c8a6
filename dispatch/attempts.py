"""One attempt of a record, from intent to outcome, and late outcomes reconciled.

:meth:`Attempts.run` commits the intent (before any dial), dials through the agent, and
settles the outcome with the record's next state and the callback reporting it, committed
together; a rejected attempt with dials left is queued again after the retry delay. When an
agent learns the outcome of an attempt after giving up on it (``DialUnknown``,
``DialInterrupted``), :meth:`Attempts.late` takes the report and :meth:`reconcile_late`
writes it to the ledger. Nothing here ever dials a record again.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from datetime import timedelta

import anyio

from .abc import Agent, Call, DialRequest, LateOutcome
from .clock import Clock
from .errors import DialInterrupted, DialRejected, DialUnknown, StoreError
from .options import RetryPolicy
from .outbox import Outbox
from .queue import DispatchQueue, Source
from .record import Record
from .states import AttemptState, RecordState
from .store import KnownRecord, Store
from .store.outbox import Callback

__all__ = ["Attempts", "Counters"]

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class Counters:
    dialed: int = 0
    completed: int = 0
    failed: int = 0
    skipped: int = 0


@dataclass(frozen=True, slots=True)
class _Outcome:
    state: AttemptState
    reason: str | None
    call_id: str | None = None
    duration: float | None = None


@dataclass(slots=True)
class Attempts:
    store: Store
    agent: Agent
    clock: Clock
    queue: DispatchQueue
    outbox: Outbox
    counters: Counters
    retry: RetryPolicy
    from_: str | None
    poll_interval: float
    # Attempts whose outcome is not known, until the agent reports it late (or we stop).
    _unknown: dict[str, tuple[Source, Record, int]] = field(default_factory=dict)
    _late: list[LateOutcome] = field(default_factory=list)
    _late_event: anyio.Event | None = None

    async def run(self, source: Source, record: Record) -> None:
        """Commit the intent, dial, and settle the outcome of one attempt of ``record``."""
        known = source.known.get(record.id)
        number = (known.attempts if known else 0) + 1
        attempt_id = uuid.uuid4().hex
        try:
            await self.store.intent(
                attempt_id=attempt_id,
                strategy=source.name,
                record_id=record.id,
                number=number,
                phone=record.phone,
                at=self.clock.now(),
            )
        except StoreError as exc:
            # Never dial without a committed intent; try again after a poll interval.
            logger.error("store.intent_failed record=%s error=%s", record.id, exc)
            self.queue.delay(source, record, self.clock.monotonic() + self.poll_interval)
            return
        source.known[record.id] = KnownRecord(RecordState.DIALING, number)
        self.counters.dialed += 1
        logger.info(
            "dial.start strategy=%s record=%s phone=%s attempt=%d/%d",
            source.name,
            record.id,
            record.phone,
            number,
            self.retry.max_dials,
        )
        outcome = await self._dial(source, record, attempt_id)
        with anyio.CancelScope(shield=True):  # an outcome, once known, is always recorded
            await self._settle(source, record, attempt_id, number, outcome)

    async def _dial(self, source: Source, record: Record, attempt_id: str) -> _Outcome:
        request = DialRequest(
            to=record.phone,
            dispatch_id=attempt_id,
            from_=record.from_ or self.from_,
            greeting=record.greeting,
            metadata=record.metadata,
            prompt_vars=record.prompt_vars,
            config=record.config,
        )
        call: Call | None = None
        try:
            call = await self.agent.dial(request)
            logger.info("call.started record=%s call_id=%s", record.id, call.id)
            try:
                await self.store.activated(
                    attempt_id,
                    call.id,
                    at=self.clock.now(),
                    callback=Callback(source.name, "on_dispatched", record, (call.id,)),
                )
                self.outbox.wake()
            except StoreError as exc:
                logger.error("store.activate_failed record=%s error=%s", record.id, exc)
            end = await call.wait()
        except DialRejected as exc:
            return _Outcome(AttemptState.REJECTED, exc.reason, _id(call))
        except DialInterrupted as exc:
            return _Outcome(AttemptState.INTERRUPTED, f"interrupted: {exc.reason}", _id(call))
        except DialUnknown as exc:
            return _Outcome(AttemptState.UNKNOWN, f"unknown: {exc.reason}", _id(call))
        except anyio.get_cancelled_exc_class():
            # Drain timeout or cancellation: the call may still be live on the platform.
            with anyio.CancelScope(shield=True):
                await self._settle(
                    source,
                    record,
                    attempt_id,
                    source.known[record.id].attempts,
                    _Outcome(AttemptState.INTERRUPTED, "interrupted", _id(call)),
                )
            raise
        except Exception as exc:
            # An agent bug or a lost connection: the phone may have rung, so never retry.
            logger.exception("agent.error record=%s", record.id)
            return _Outcome(
                AttemptState.UNKNOWN, f"unknown: {type(exc).__name__}: {exc}", _id(call)
            )
        return _Outcome(AttemptState.COMPLETED, end.reason, call.id, end.duration)

    async def _settle(
        self, source: Source, record: Record, attempt_id: str, number: int, outcome: _Outcome
    ) -> None:
        """Persist an attempt's outcome with the record's next state and the callback that
        reports it (committed together), then schedule a retry if one is due."""
        retry = outcome.state is AttemptState.REJECTED and number < self.retry.max_dials
        record_state = {
            AttemptState.COMPLETED: RecordState.COMPLETED,
            AttemptState.REJECTED: RecordState.RETRY if retry else RecordState.FAILED,
            AttemptState.UNKNOWN: RecordState.FAILED,
            AttemptState.INTERRUPTED: RecordState.INTERRUPTED,
        }[outcome.state]
        callback = None
        if record_state is RecordState.COMPLETED:
            args = (outcome.call_id, outcome.reason)
            callback = Callback(source.name, "on_completed", record, args)
        elif record_state is not RecordState.RETRY:
            callback = Callback(source.name, "on_failed", record, (outcome.reason,))
        now = self.clock.now()
        try:
            await self.store.finished(
                attempt_id=attempt_id,
                strategy=source.name,
                record_id=record.id,
                state=outcome.state,
                record_state=record_state,
                reason=outcome.reason,
                call_id=outcome.call_id,
                duration=outcome.duration,
                at=now,
                callback=callback,
                retry_at=now + timedelta(seconds=self.retry.delay) if retry else None,
            )
            self.outbox.wake()
        except StoreError as exc:
            # The row stays `dialing`: the next start marks it interrupted, never re-dials it.
            logger.error("store.outcome_failed record=%s error=%s", record.id, exc)
        source.known[record.id] = KnownRecord(record_state, number)
        if outcome.state in (AttemptState.UNKNOWN, AttemptState.INTERRUPTED):
            self._unknown[attempt_id] = (source, record, number)  # the agent may learn more
        self._log_outcome(record, number, outcome, record_state)
        if record_state is RecordState.COMPLETED:
            self.counters.completed += 1
        elif record_state is RecordState.RETRY:
            self.queue.delay(source, record, self.clock.monotonic() + self.retry.delay)
        else:
            self.counters.failed += 1

    def late(self, outcome: LateOutcome) -> None:
        """The agent's :meth:`~dispatch.abc.Agent.report_late` hook."""
        self._late.append(outcome)
        if self._late_event is not None:
            self._late_event.set()

    async def reconcile_late(self) -> None:
        """Record what the agent learnt late about dials whose outcome was unknown: an answered
        call becomes completed (and ``on_completed`` is delivered). Never re-dials anything."""
        while True:
            self._late_event = anyio.Event()
            if not self._late:
                await self._late_event.wait()
            outcomes, self._late = self._late, []
            for outcome in outcomes:
                await self._reconcile(outcome)

    async def _reconcile(self, outcome: LateOutcome) -> None:
        entry = self._unknown.get(outcome.dispatch_id)
        if entry is None or outcome.reason is None:
            logger.info(
                "call.late attempt=%s call_id=%s started=%s (noted; waiting for its end)",
                outcome.dispatch_id,
                outcome.call_id,
                outcome.started,
            )
            return
        source, record, number = entry
        if outcome.started:
            state, record_state = AttemptState.COMPLETED, RecordState.COMPLETED
            args = (outcome.call_id or "", outcome.reason)
            callback = Callback(source.name, "on_completed", record, args)
        else:
            state, record_state, callback = AttemptState.REJECTED, RecordState.FAILED, None
        try:
            await self.store.finished(
                attempt_id=outcome.dispatch_id,
                strategy=source.name,
                record_id=record.id,
                state=state,
                record_state=record_state,
                reason=outcome.reason,
                call_id=outcome.call_id,
                duration=outcome.duration,
                at=self.clock.now(),
                callback=callback,
            )
        except StoreError as exc:
            logger.error("store.late_outcome_failed record=%s error=%s", record.id, exc)
            return
        del self._unknown[outcome.dispatch_id]
        source.known[record.id] = KnownRecord(record_state, number)
        self.outbox.wake()
        logger.warning(
            "call.reconciled record=%s call_id=%s state=%s reason=%s (reported after the dial "
            "timed out; not dialed again)",
            record.id,
            outcome.call_id,
            state,
            outcome.reason,
        )

    def _log_outcome(
        self, record: Record, number: int, outcome: _Outcome, state: RecordState
    ) -> None:
        if outcome.state is AttemptState.COMPLETED:
            duration = f"{outcome.duration:.1f}s" if outcome.duration is not None else "-"
            logger.info(
                "call.ended record=%s call_id=%s reason=%s duration=%s",
                record.id,
                outcome.call_id,
                outcome.reason,
                duration,
            )
        else:
            logger.warning(
                "dial.%s record=%s reason=%s attempt=%d/%d next=%s",
                outcome.state.value,
                record.id,
                outcome.reason,
                number,
                self.retry.max_dials,
                f"retry in {self.retry.delay:g}s" if state is RecordState.RETRY else state.value,
            )

    # -- bookkeeping -------------------------------------------------------------------------


def _id(call: Call | None) -> str | None:
    return call.id if call is not None else None
