"""One attempt of a record, from intent to outcome, and late outcomes reconciled.

:meth:`Attempts.run` commits the intent (before any dial), starts the dial in the rate
limiter at the moment the intent is committed, dials through the agent, and settles the
outcome with the record's next state and the callback reporting it, committed together. The
record's next step (a retry, or nothing: it is terminal) is taken only once that outcome is
committed: an outage makes the attempt wait for the store, never run ahead of it.

When an agent learns the outcome of an attempt after giving up on it (``DialUnknown``,
``DialInterrupted``), :meth:`Attempts.late` takes the report and :meth:`reconcile_late`
writes it to the ledger. Nothing here ever dials a record again.
"""

from __future__ import annotations

import json
import logging
import math
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeGuard

import anyio

from .abc import Agent, Call, CallEnd, DialRequest, LateOutcome
from .clock import Clock
from .errors import DialInterrupted, DialRejected, DialUnknown, StoreError, StoreUnavailable
from .options import RetryPolicy
from .pacing import Reservation, SlidingWindowLimiter
from .queue import DispatchQueue, Source
from .record import Record
from .results import Action, ActionKind, decide_action
from .rules.caps import CapTracker, is_refusal
from .rules.dnc import DoNotCallList
from .states import AttemptState, RecordState
from .store import DoNotCall, KnownRecord, Store
from .store.cluster import Claim, Claimed, ClusterLimits, NotYet, Taken
from .store.outbox import Callback

__all__ = ["Attempts", "Counters"]

logger = logging.getLogger(__name__)

# The ledger's start of a dial is the time written with its intent, and the dial follows the
# commit: a restarted daemon seeds its rate limiter with each start this much later. A commit
# that takes longer moves the start it records to the time the dial really begins.
START_MARGIN = 1.0
# In a cluster, how often a dial that goes out late after its claim is stamped again, at most.
RESTAMPS = 3
# In a cluster, how many of the records queued next to one about to be claimed are looked up
# in the ledger with it (one read, without the cluster's lock).
LOOKUP = 64


def claim_margin(window: float) -> float:
    """In a cluster, how late after its claim a dial may reach the platform: each start
    counts for the window plus this margin (the ledger is the rate limiter, and the dial
    follows the claim's commit). A twentieth of the window, START_MARGIN at most: the
    margin never costs more than 5 % of the rate."""
    return min(START_MARGIN, window / 20)


# Distinct reasons counted per attempt state; more are counted as "other". The platform's
# words are few, but nothing bounds them, and each one is a time series of the metrics.
MAX_REASONS = 64
_OWN_WORDS = (AttemptState.COMPLETED, AttemptState.REJECTED)  # reasons worth a label


@dataclass(slots=True)
class Counters:
    """Plain ints, bumped on the hot path and read by statistics() and the metrics."""

    dialed: int = 0
    completed: int = 0
    failed: int = 0
    skipped: int = 0
    # Attempts ended, by final state and reason: completed/hangup, rejected/busy ...
    ended: dict[AttemptState, dict[str, int]] = field(
        default_factory=lambda: {state: {} for state in AttemptState if not state.in_flight}
    )
    skips: dict[str, int] = field(default_factory=dict)  # skipped records, by reason

    def ended_with(self, state: AttemptState, reason: str | None) -> None:
        """Count an attempt's committed outcome by its reason's first word (``call_error``
        for ``call_error: <the platform's message>``). An unknown or interrupted one is
        counted by its state alone: its reason is free text (the error that made it so)."""
        if state not in _OWN_WORDS or not reason:
            reason = state.value
        elif ":" in reason:
            reason = reason.split(":", 1)[0]
        by_reason = self.ended[state]
        if reason not in by_reason and len(by_reason) >= MAX_REASONS:
            reason = "other"
        by_reason[reason] = by_reason.get(reason, 0) + 1


@dataclass(frozen=True, slots=True)
class _Outcome:
    state: AttemptState
    reason: str | None
    call_id: str | None = None
    duration: float | None = None
    end: CallEnd | None = None  # a connected call's whole end: results, transcript

    @property
    def maybe_live(self) -> bool:
        """The call may still be going on at the platform: hold its number."""
        return self.state in (AttemptState.UNKNOWN, AttemptState.INTERRUPTED)


@dataclass(frozen=True, slots=True)
class _Unknown:
    source: Source
    record: Record
    number: int
    since: float  # monotonic


@dataclass(slots=True)
class Attempts:
    store: Store
    agent: Agent
    clock: Clock
    queue: DispatchQueue
    counters: Counters
    retry: RetryPolicy
    from_: str | None
    poll_interval: float
    limiter: SlidingWindowLimiter | None = None
    hold: float = 600.0  # seconds a number whose call may be live stays blocked
    late_window: float = 3600.0  # how long a late report for an unknown dial is awaited
    caps: CapTracker = field(default_factory=CapTracker)  # every number's recent dial starts
    dnc: DoNotCallList = field(default_factory=DoNotCallList)
    # Per strategy: end reasons of a connected call that mean "stop calling me".
    opt_out_reasons: dict[str, frozenset[str]] = field(default_factory=dict)
    # In a cluster: the limits every daemon together respects, for a record of a source.
    cluster: Callable[[Source], ClusterLimits] | None = None
    shared_room_at: float = -math.inf  # monotonic: until then the shared limits are full
    # The reasons of the rejections so far of records waiting to retry (retries by reason).
    rejections: dict[tuple[str, str], list[str | None]] = field(default_factory=dict)
    # Attempts whose outcome is not known, until the agent reports it late (or late_window
    # passes), oldest first.
    _unknown: dict[str, _Unknown] = field(default_factory=dict)
    # Intents whose commit failed with the connection: they may have been committed, so the
    # record's next try reuses the attempt id (the insert is idempotent by id).
    _unsure: dict[tuple[str, str], str] = field(default_factory=dict)
    _late: list[LateOutcome] = field(default_factory=list)
    _claiming: anyio.Lock | None = None
    _late_event: anyio.Event | None = None

    async def run(
        self,
        source: Source,
        record: Record,
        reservation: Reservation | None,
        evidence: dict[str, Any] | None = None,
    ) -> None:
        """Commit the intent, dial, and settle the outcome of one attempt of ``record``.

        The caller has taken the record from the queue (and ``reservation`` from the limiter),
        and the calling rules let it through (``evidence``: what they saw); it releases the
        record's number afterwards."""
        known = source.known.get(record.id)
        number = (known.attempts if known else 0) + 1
        if number > self.retry.max_dials:
            # Never past the cap, whatever put the record here (intake refuses it already).
            self.give_back(reservation)
            logger.error(
                "dial.refused record=%s attempt=%d/%d (no attempts left)",
                record.id,
                number,
                self.retry.max_dials,
            )
            return
        key = (source.name, record.id)
        unsure = self._unsure.pop(key, None)  # an intent whose commit we never heard of
        attempt_id = unsure or secrets.token_hex(16)  # 128 random bits
        dialed_at = self.clock.now()
        intent: dict[str, Any] = {
            "attempt_id": attempt_id,
            "strategy": source.name,
            "record_id": record.id,
            "number": number,
            "phone": record.phone,
            "at": dialed_at,
            "evidence": {**(evidence or {}), "caller_id": record.from_ or self.from_},
        }
        claimed: Claimed | None = None
        try:
            if self.cluster is None:
                await self.store.intent(**intent)
            else:
                claimed = await self._claim(source, record, number, intent, unsure is not None)
                if claimed is None:
                    self.give_back(reservation)
                    return
                dialed_at = claimed.at
        except StoreUnavailable:
            # Never dial without a committed intent. The store says why once per outage; the
            # record goes back to the queue, and the hub dials nothing until the store is back.
            self._unsure[key] = attempt_id
            self.give_back(reservation)
            self.queue.admit(source, record)
            return
        except StoreError as exc:
            self.give_back(reservation)
            logger.error("store.intent_failed record=%s error=%s", record.id, exc)
            self.queue.delay(source, record, self.clock.monotonic() + self.poll_interval)
            return
        if claimed is None:
            stamped = await self._restamp(record, attempt_id, dialed_at)
        else:
            again = await self._stamp_again(source, record, attempt_id, claimed)
            stamped = again.at if again is not None else None
        if stamped is None:
            source.known[record.id] = KnownRecord.of(RecordState.INTERRUPTED, number)
            self.give_back(reservation)
            return
        if reservation is not None and self.limiter is not None:
            await self.limiter.start(reservation)  # the start is counted from now
        self.caps.started(record.phone, stamped)  # the start as the ledger has it
        source.known[record.id] = KnownRecord.of(RecordState.DIALING, number)
        self.counters.dialed += 1
        source.dialed += 1
        logger.info(
            "dial.start strategy=%s record=%s phone=%s attempt=%d/%d",
            source.name,
            record.id,
            record.phone,
            number,
            self.retry.max_dials,
        )
        outcome = await self._dial(source, record, attempt_id, number)
        with anyio.CancelScope(shield=True):  # an outcome, once known, is always recorded
            await self._settle(source, record, attempt_id, number, outcome)

    async def _claim(
        self, source: Source, record: Record, number: int, intent: dict[str, Any], unsure: bool
    ) -> Claimed | None:
        """In a cluster: commit the intent as a claim under every daemon's limits, if it can
        be won now; None if not (what stopped it is acted on: see :meth:`_claimed`).
        ``unsure``: this attempt's claim may have been committed already, its answer lost."""
        assert self.cluster is not None
        async with self._one_claim():
            # Looked up once this claim's turn came: the others claim while it waits. (Not
            # a claim that may be our own already: the ledger would show it taken, by us,
            # and only the claim, which knows its attempt id, can tell.)
            if not unsure and await self._looked_up(source, record, number):
                return None
            claim = await self.store.claim_dial(**intent, limits=self.cluster(source))
        if self._claimed(claim, source, record):
            return claim
        return None

    @asynccontextmanager
    async def _one_claim(self) -> AsyncIterator[None]:
        """In a cluster, one claim at a time from this daemon, after the shared limits have
        room (as the last claim learned): the calls in flight do not each ask the database
        at the same moment, where all but one would lose, every loss a transaction under
        the cluster's lock that every daemon waits for."""
        if self._claiming is None:
            self._claiming = anyio.Lock()  # created lazily: it needs a running event loop
        async with self._claiming:
            if self.shared_room_at > self.clock.monotonic():
                await self.clock.sleep_until(self.shared_room_at)
            yield

    async def _looked_up(self, source: Source, record: Record, number: int) -> bool:
        """In a cluster, before a claim: whether the ledger shows ``record`` claimed by
        another daemon already, read without the lock, with the records queued next to it
        (one read). Those found claimed are learned and leave the queue, so claims under
        the lock are made for records that may still be won. They gather in every daemon's
        queue: the records of the others' shares (see :attr:`DispatchQueue.prefer`),
        passed over until the shares change (a daemon joins or dies) and become someone
        else's, or until a daemon with none of its own left near the head takes them."""
        numbers = {record.id: number}
        for record_id in source.first_ids(LOOKUP):
            if (source.name, record_id) in self._unsure:
                continue  # maybe claimed by us, its answer lost: its own claim will tell
            known = source.known.get(record_id)
            numbers[record_id] = (known.attempts if known else 0) + 1
        try:
            lost = await self.store.taken(source.name, numbers)
        except StoreError:
            return False  # the claim will tell
        for record_id, taken in lost.items():
            source.known[record_id] = KnownRecord.of(taken.state, taken.attempts, taken.retry_at)
            if record_id != record.id:
                self.queue.withdraw(source, record_id)
        if lost:
            logger.debug("dial.claimed_elsewhere strategy=%s records=%d seen=ledger",
                         source.name, len(lost))  # fmt: skip
        return record.id in lost

    def _claimed(self, claim: Claim, source: Source, record: Record) -> TypeGuard[Claimed]:
        """In a cluster: whether the claim was won. A record another daemon has is left to
        it (what it made of the record is known here from now on); one the shared limits
        hold back waits for the time they say."""
        if isinstance(claim, Claimed):
            return True
        if isinstance(claim, Taken):
            logger.info("dial.claimed_elsewhere strategy=%s record=%s state=%s seen=claim",
                        source.name, record.id, claim.state.value)  # fmt: skip
            source.known[record.id] = KnownRecord.of(claim.state, claim.attempts, claim.retry_at)
            return False
        until = self.clock.monotonic() + claim.wait(self.clock.now())
        if claim.shared:  # no record may go before then: the dispatch loop waits too
            self.shared_room_at = max(self.shared_room_at, until)
        self.queue.delay(source, record, until, claim.why)
        return False

    async def _restamp(
        self, record: Record, attempt_id: str, dialed_at: datetime
    ) -> datetime | None:
        """Keep the ledger's start of this dial within START_MARGIN of the real one (after a
        slow commit) and return it; None if that could not be written (then it is not
        dialed: it stays in flight in the store, and the next start records it as
        interrupted)."""
        margin = timedelta(seconds=START_MARGIN)
        while (now := self.clock.now()) - dialed_at > margin:
            dialed_at = now
            try:
                await self.store.restamp(attempt_id, at=now)
            except StoreError as exc:
                logger.error("store.restamp_failed record=%s error=%s (not dialed)", record.id, exc)
                return None
        return dialed_at

    async def _stamp_again(
        self, source: Source, record: Record, attempt_id: str, claim: Claimed
    ) -> Claimed | None:
        """In a cluster: the platform must see this dial no later than the margin after the
        start its claim counts (the others count it from then). Half the margin is for what
        follows this check (the send); past it, the start is stamped again under the lock,
        within the rate window, waiting for room if there is none. The claim as it stands, or
        None if it must not be dialed (recovered by another daemon meanwhile, or the store
        refused)."""
        assert self.cluster is not None
        limits = self.cluster(source)
        tries = 0
        while self.clock.monotonic() - claim.since > limits.margin / 2:
            if tries == RESTAMPS:
                # Each answer comes back past half the margin (a database this far away,
                # or this loaded): stamping again could go on for ever, every daemon
                # waiting on the lock meanwhile. The dial goes out this late after its start.
                logger.warning(
                    "dial.late_start record=%s late=%.3fs margin=%gs (the store's answers take "
                    "longer than half the margin: a longer rate window gives a larger one)",
                    record.id,
                    self.clock.monotonic() - claim.since,
                    limits.margin,
                )
                return claim
            tries += 1
            try:
                async with self._one_claim():
                    again = await self.store.restamp_claim(attempt_id, limits)
            except StoreUnavailable:
                await self.store.wait_available()
                continue
            except StoreError as exc:
                logger.error("store.restamp_failed record=%s error=%s (not dialed)", record.id, exc)
                return None
            if isinstance(again, Taken):
                logger.error("dial.recovered_elsewhere record=%s (not dialed)", record.id)
                return None
            if isinstance(again, NotYet):
                await self.clock.sleep_until(self.clock.monotonic() + again.wait(self.clock.now()))
                continue
            claim = again
        return claim

    def give_back(self, reservation: Reservation | None) -> None:
        """Nothing was dialed with ``reservation`` (if any): its room in the window is free."""
        if reservation is not None and self.limiter is not None:
            self.limiter.cancel(reservation)

    async def _dial(self, source: Source, record: Record, attempt_id: str, number: int) -> _Outcome:
        config = record.config
        detect_turn_end = None
        if "detect_turn_end" in config:  # a dial option, not agent configuration
            config = dict(config)
            detect_turn_end = _flag(config.pop("detect_turn_end"), record.id)
        request = DialRequest(
            to=record.phone,
            dispatch_id=attempt_id,
            from_=record.from_ or self.from_,
            greeting=record.greeting,
            # An agent may change its request's dicts: never the one records share.
            metadata=record.metadata or {},
            prompt_vars=record.prompt_vars or {},
            config=config or {},
            detect_turn_end=detect_turn_end,
        )
        call: Call | None = None
        try:
            call = await self.agent.dial(request)
            logger.info("call.started record=%s call_id=%s", record.id, call.id)

            def failed(error: BaseException, record_id: str = record.id) -> None:
                logger.error("store.activate_failed record=%s error=%s", record_id, error)

            try:  # not awaited: the call goes on meanwhile (see Store.activated_soon)
                self.store.activated_soon(
                    attempt_id,
                    call.id,
                    at=self.clock.now(),
                    callback=Callback(source.name, "on_dispatched", record, (call.id,)),
                    failed=failed,
                )
            except StoreError as exc:
                failed(exc)
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
                    number,
                    _Outcome(AttemptState.INTERRUPTED, "interrupted", _id(call)),
                )
            raise
        except Exception as exc:
            # An agent bug or a lost connection: the phone may have rung, so never retry.
            logger.exception("agent.error record=%s", record.id)
            return _Outcome(
                AttemptState.UNKNOWN, f"unknown: {type(exc).__name__}: {exc}", _id(call)
            )
        return _Outcome(AttemptState.COMPLETED, end.reason, call.id, end.duration, end)

    async def _settle(
        self, source: Source, record: Record, attempt_id: str, number: int, outcome: _Outcome
    ) -> None:
        """Commit an attempt's outcome with the record's next state and the callback that
        reports it, then act on it: schedule the retry, count it, hold the number.

        Nothing happens in memory before the commit. If the outcome cannot be committed (the
        store refused it, or was still unreachable when the daemon stopped) the record is
        left alone for this run, as the next start will find it: in flight, to be recovered
        as interrupted, never dialed again in between."""
        end = outcome.end
        action = self._action(source, record, end)
        call_back = self._call_back(record, number, action)
        key = (source.name, record.id)
        earlier = self.rejections.get(key, [])
        delay = None
        if outcome.state is AttemptState.REJECTED and number < self.retry.max_dials:
            delay = self.retry.retry_after(outcome.reason, earlier)
        retry = delay is not None or call_back is not None
        record_state = {
            AttemptState.COMPLETED: RecordState.COMPLETED,
            AttemptState.REJECTED: RecordState.RETRY if retry else RecordState.FAILED,
            AttemptState.UNKNOWN: RecordState.FAILED,
            AttemptState.INTERRUPTED: RecordState.INTERRUPTED,
        }[outcome.state]
        if call_back is not None:
            record_state = RecordState.RETRY
        callbacks = _result_callbacks(source.name, record, outcome.call_id, end)
        if outcome.state is AttemptState.COMPLETED:
            args = (outcome.call_id, outcome.reason)
            callbacks.append(Callback(source.name, "on_completed", record, args))
        elif record_state is not RecordState.RETRY:
            callbacks.append(Callback(source.name, "on_failed", record, (outcome.reason,)))
        now = self.clock.now()
        retry_at = now + timedelta(seconds=delay) if delay is not None else None
        if call_back is not None:
            retry_at = max(call_back, now)
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
                callbacks=callbacks,
                retry_at=retry_at,
                started_at=end.started_at if end else None,
                results=end.results if end else (),
                transcript=end.transcript if end else (),
                opt_out=_opt_out(source.name, record, action, attempt_id, outcome.reason),
                refused=_refused(action, outcome.reason),
            )
        except StoreError as exc:
            # Not committed: never dial this record again in this run (the ledger says it is
            # in flight; the next start recovers it as interrupted), and keep its number held
            # in case the call goes on.
            source.known[record.id] = KnownRecord.of(RecordState.INTERRUPTED, number)
            self.queue.hold(record.phone, self.clock.monotonic() + self.hold)
            logger.error(
                "store.outcome_lost record=%s attempt=%d state=%s reason=%s error=%s (left in "
                "flight in the store: the next start records it as interrupted)",
                record.id,
                number,
                outcome.state,
                outcome.reason,
                exc,
            )
            return
        source.known[record.id] = KnownRecord.of(record_state, number, retry_at)
        if record_state is RecordState.RETRY and outcome.state is AttemptState.REJECTED:
            self.rejections[key] = [*earlier, outcome.reason]
        elif record_state is not RecordState.RETRY:
            self.rejections.pop(key, None)
        self._acted(record, action, outcome.reason)
        if outcome.maybe_live:
            self.queue.hold(record.phone, self.clock.monotonic() + self.hold)
            self._remember_unknown(attempt_id, source, record, number)
        wait = (retry_at - now).total_seconds() if retry_at is not None else 0.0
        self._log_outcome(record, number, outcome, record_state, wait)
        self.counters.ended_with(outcome.state, outcome.reason)
        if action is not None and action.kind is not ActionKind.DONE:
            logger.info(
                "result.action record=%s action=%s at=%s",
                record.id,
                action.kind.value,
                retry_at.isoformat() if call_back is not None and retry_at else "-",
            )
        if outcome.state is AttemptState.COMPLETED:
            self.counters.completed += 1
        if record_state is not RecordState.RETRY:
            source.done += 1
        if record_state is RecordState.RETRY:
            self.queue.delay(source, record, self.clock.monotonic() + wait)
        elif record_state is not RecordState.COMPLETED:
            self.counters.failed += 1

    def _action(self, source: Source, record: Record, end: CallEnd | None) -> Action | None:
        """What the call's results (or its end reason) make of the record. A failure here is
        the results' fault, never the outcome's: it is logged and the outcome still
        committed, with no action."""
        if end is None:
            return None
        if end.reason in self.opt_out_reasons.get(source.name, ()):
            return Action(ActionKind.OPT_OUT)
        try:
            return decide_action(end.results, source.strategy.result_actions)
        except Exception:
            logger.exception("result.action_failed record=%s (no action taken)", record.id)
            return None

    def _acted(self, record: Record, action: Action | None, reason: str | None) -> None:
        """In memory, once the outcome is committed: an opt-out's number is not dialed again,
        a refusal starts the number's cool-down."""
        now = self.clock.now()
        if _refused(action, reason):
            self.caps.refused(record.phone, now)
        if action is not None and action.kind is ActionKind.OPT_OUT:
            self.dnc.add(record.phone, now)

    def _call_back(self, record: Record, number: int, action: Action | None) -> datetime | None:
        """When a ``call_back_at`` result asks for the record to be dialed again, if it can
        be: it counts against the retry budget, like any retry."""
        if action is None or action.kind is not ActionKind.CALL_BACK_AT:
            return None
        if action.at is None:
            logger.warning(
                "result.call_back_refused record=%s reason=%s", record.id, action.problem
            )
            return None
        if number >= self.retry.max_dials:
            logger.warning(
                "result.call_back_refused record=%s reason=no attempts left (%d of %d made)",
                record.id,
                number,
                self.retry.max_dials,
            )
            return None
        return action.at

    def _remember_unknown(
        self, attempt_id: str, source: Source, record: Record, number: int
    ) -> None:
        now = self.clock.monotonic()
        self._unknown[attempt_id] = _Unknown(source, record, number, now)
        # Oldest first: stop waiting for news of dials given up on long ago, so a daemon that
        # runs for months does not grow.
        horizon = now - self.late_window
        for key, old in list(self._unknown.items()):
            if old.since > horizon:
                break
            del self._unknown[key]

    def late(self, outcome: LateOutcome) -> None:
        """The hub's :class:`~dispatch.abc.AgentContext` ``report_late``."""
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
        source, record, number = entry.source, entry.record, entry.number
        end = outcome.end
        action = self._action(source, record, end)
        callbacks = _result_callbacks(source.name, record, outcome.call_id, end)
        if outcome.started:
            state, record_state = AttemptState.COMPLETED, RecordState.COMPLETED
            args = (outcome.call_id or "", outcome.reason)
            callbacks.append(Callback(source.name, "on_completed", record, args))
        else:
            state, record_state = AttemptState.REJECTED, RecordState.FAILED
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
                callbacks=callbacks,
                started_at=end.started_at if end else None,
                results=end.results if end else (),
                transcript=end.transcript if end else (),
                opt_out=_opt_out(source.name, record, action, outcome.dispatch_id, outcome.reason),
                refused=_refused(action, outcome.reason),
            )
        except StoreError as exc:
            logger.error("store.late_outcome_failed record=%s error=%s", record.id, exc)
            return
        del self._unknown[outcome.dispatch_id]
        source.known[record.id] = KnownRecord.of(record_state, number)
        self._acted(record, action, outcome.reason)
        self.queue.unhold(record.phone)  # the call is over: its number is free
        logger.warning(
            "call.reconciled record=%s call_id=%s state=%s reason=%s (reported after the dial "
            "timed out; not dialed again)",
            record.id,
            outcome.call_id,
            state,
            outcome.reason,
        )

    def _log_outcome(
        self, record: Record, number: int, outcome: _Outcome, state: RecordState, wait: float
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
            for result in outcome.end.results if outcome.end else ():
                logger.info(
                    "call.result record=%s tool=%s arguments=%.300s",
                    record.id,
                    result.tool,
                    json.dumps(dict(result.arguments), ensure_ascii=False),
                )
        else:
            then = state.value
            if state is RecordState.RETRY:
                then = f"retry in {wait:.0f}s" if wait >= 10 else f"retry in {wait:.3g}s"
            logger.warning(
                "dial.%s record=%s reason=%s attempt=%d/%d next=%s",
                outcome.state.value,
                record.id,
                outcome.reason,
                number,
                self.retry.max_dials,
                then,
            )


_TRUE = frozenset({"true", "yes", "y", "on", "1"})
_FALSE = frozenset({"false", "no", "n", "off", "0"})


def _flag(value: object, record_id: str) -> bool | None:
    """A record's yes/no dial option (a bool, or a source's text such as ``"false"``); None,
    the agent's default, for what is neither."""
    if isinstance(value, bool) or value is None:
        return value
    text = str(value).strip().casefold()
    if not text:
        return None
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    logger.warning(
        "dial.bad_option record=%s detect_turn_end=%r (not yes or no: the agent's default applies)",
        record_id,
        value,
    )
    return None


def _id(call: Call | None) -> str | None:
    return call.id if call is not None else None


def _result_callbacks(
    strategy: str, record: Record, call_id: str | None, end: CallEnd | None
) -> list[Callback]:
    """``on_result`` for each result of the call, in order (before ``on_completed``)."""
    if end is None:
        return []
    return [Callback(strategy, "on_result", record, (call_id or "", r)) for r in end.results]


def _opt_out(
    strategy: str, record: Record, action: Action | None, attempt_id: str, end_reason: str | None
) -> DoNotCall | None:
    """The do-not-call entry an opt-out adds: which record and attempt, and why (the result,
    or the call's end reason)."""
    if action is None or action.kind is not ActionKind.OPT_OUT:
        return None
    if action.result is not None:
        reason = f"{action.result.tool} {json.dumps(dict(action.result.arguments))}"
    else:
        reason = f"call ended: {end_reason}"
    return DoNotCall(record.phone, "result", strategy, record.id, reason, attempt_id=attempt_id)


def _refused(action: Action | None, reason: str | None) -> bool:
    """The callee refused: a rejection that says so, or a ``refused`` answer."""
    return is_refusal(reason) or (action is not None and action.kind is ActionKind.REFUSED)
