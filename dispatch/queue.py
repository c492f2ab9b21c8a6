"""What is waiting to be dialed, across strategies.

Per strategy: admitted records in arrival order, the records in flight, and the records
waiting for a time (a retry delay, ``not_before``). Across strategies: the numbers in a call,
and the numbers held for a while because a call to them may still be live at the platform (a
crash or a lost connection left it in flight). :meth:`DispatchQueue.take` picks the next
dialable record round-robin across strategies (one busy source cannot starve another),
passing over, never dropping, a record whose number is in a call or held. Waiters are woken by
changes and timers, never by polling.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import Counter, deque
from collections.abc import Callable, Sequence, Set
from dataclasses import dataclass, field
from datetime import datetime

import anyio

from .abc import Strategy
from .clock import Clock
from .histogram import POLL_BUCKETS, Histogram
from .record import Record
from .store import KnownRecord

__all__ = ["LOOKAHEAD", "DispatchQueue", "Source"]

# In a cluster, how many records of other daemons' shares a take passes over looking for one
# of its own daemon's (see DispatchQueue.prefer): no record waits behind more younger ones.
LOOKAHEAD = 32


@dataclass(slots=True)
class Source:
    """Per-strategy state: what is queued, in flight, and already known to the store."""

    strategy: Strategy
    known: dict[str, KnownRecord] = field(default_factory=dict)
    pending: dict[str, Record] = field(default_factory=dict)  # by id; `order` says the order
    # The pending ids in the order they were queued; may also hold ids no longer pending
    # (taken, withdrawn), dropped as they are met: see `take_first`.
    order: deque[str] = field(default_factory=deque)
    in_flight: set[str] = field(default_factory=set)
    waiting: dict[str, tuple[float, int]] = field(default_factory=dict)  # id -> (due, entry)
    why: dict[str, str] = field(default_factory=dict)  # id -> what a waiting one waits for
    polls: int = 0  # successful polls
    poll_failures: int = 0  # polls that raised
    poll_seconds: Histogram = field(default_factory=lambda: Histogram(POLL_BUCKETS))  # good ones
    polling: bool = False
    handled_in_last_poll: int = 0  # records of the last poll that an earlier run finished
    terminal_at_start: set[str] = field(default_factory=set)
    poll_wanted: bool = False  # the strategy asked for a poll (`poll_now`)
    poll_event: anyio.Event | None = None  # set while the poll loop sleeps
    opens_at: datetime | None = None  # closed by its schedule until then
    dialed: int = 0  # dial starts this run
    done: int = 0  # records that reached a terminal state this run (skips included)
    retired: bool = False  # a reload removed its strategy: not polled, nothing queued
    generation: int = 0  # bumped when a reload stops it (removed, or a new version)
    scope: anyio.CancelScope | None = None  # its poll loop's, while it runs
    stopped: anyio.Event | None = None  # set once its poll loop has stopped

    def waiting_reasons(self) -> dict[str, int]:
        """The waiting records by what they wait for (``outside hours``, ``cap``, ``retry``
        ...): the first words of each reason, before any time."""
        # `why` holds the kind of each reason, worked out once when the record was delayed:
        # counted here in one pass in C, as a poll of a large campaign calls this each time.
        counts = dict(Counter(self.why.values()))
        unnamed = len(self.waiting) - len(self.why)
        if unnamed:
            counts["retry or not_before"] = unnamed
        return counts

    def request_poll(self) -> None:
        self.poll_wanted = True
        if self.poll_event is not None:
            self.poll_event.set()

    @property
    def name(self) -> str:
        return self.strategy.name

    def put(self, record: Record) -> None:
        """Queue ``record``. A new version of a pending record keeps its place; so does one
        withdrawn and queued again before the queue reached it (its first place is kept)."""
        if record.id not in self.pending:
            self.order.append(record.id)
            if len(self.order) > 2 * len(self.pending) + 64:
                # Mostly ids no longer pending (withdrawn, and queued again): drop those.
                self.order = deque(i for i in dict.fromkeys(self.order) if i in self.pending)
                self.order.append(record.id)
        self.pending[record.id] = record

    def take_first(
        self, blocked: Set[str], prefer: Callable[[str], bool] | None = None
    ) -> Record | None:
        """Remove and return the first pending record whose number is not in ``blocked``;
        with ``prefer`` (a record id -> whether this daemon's share), the first such record
        of its share among the first :data:`LOOKAHEAD` others, else the first.

        O(1) for the first record of the queue, however many were taken before it (a dict
        walks the holes its deleted entries leave: a take at 300,000 records walked 75,000 of
        them on average). Records passed over for a blocked number are passed over again
        next time: at most one per call in flight."""
        order, pending = self.order, self.pending
        while order and order[0] not in pending:
            order.popleft()
        first = None
        others = 0
        for index, record_id in enumerate(order):
            record = pending.get(record_id)
            if record is None or record.phone in blocked:
                continue
            if prefer is None or prefer(record_id):
                return self._take(index, record_id)
            if first is None:
                first = index
            others += 1
            if others >= LOOKAHEAD:
                break
        return None if first is None else self._take(first, order[first])

    def _take(self, index: int, record_id: str) -> Record:
        record = self.pending.pop(record_id)
        if index == 0:
            self.order.popleft()
        else:
            del self.order[index]
        return record

    def first_ids(self, count: int) -> list[str]:
        """The ids of the first ``count`` pending records."""
        pending = self.pending
        return list(itertools.islice((i for i in self.order if i in pending), count))

    def queued_ids(self) -> list[str]:
        """The records queued and not in flight (pending, or waiting for a time)."""
        return [*self.pending, *self.waiting]

    def queued(self, record_id: str) -> bool:
        return record_id in self.pending or record_id in self.in_flight or record_id in self.waiting


class DispatchQueue:
    def __init__(self, sources: Sequence[Source], clock: Clock) -> None:
        self.sources = list(sources)
        self.clock = clock
        self._phones_busy: set[str] = set()
        self._holds: dict[str, float] = {}  # number -> monotonic time the hold ends
        self._hold_ends: list[tuple[float, str]] = []  # a heap of (end, number)
        self._delayed: list[tuple[float, int, Source, Record]] = []
        self._seq = itertools.count()
        self._rr = 0  # round-robin position across sources
        # In a cluster: whether a record (by id) is of this daemon's share. Each daemon takes
        # its own share first, so daemons walking the same records in the same order do not
        # all claim the same one (only one would win); every record is some live daemon's.
        self.prefer: Callable[[str], bool] | None = None
        self._changed: anyio.Event | None = None
        self._timer_scope: anyio.CancelScope | None = None
        self._timer_target = math.inf  # the deadline the timer sleeps for

    @property
    def pending(self) -> int:
        return sum(len(s.pending) for s in self.sources)

    @property
    def waiting(self) -> int:
        return sum(len(s.waiting) for s in self.sources)

    @property
    def in_flight(self) -> int:
        return sum(len(s.in_flight) for s in self.sources)

    def idle(self) -> bool:
        """Nothing queued, in flight or waiting for a time."""
        return not any(s.pending or s.in_flight or s.waiting for s in self.sources)

    def admit(self, source: Source, record: Record) -> None:
        source.put(record)
        self.notify()

    def delay(self, source: Source, record: Record, until: float, why: str = "") -> None:
        """Queue ``record`` at monotonic time ``until`` (``why``: what it waits for, counted
        in :meth:`Source.waiting_reasons`)."""
        seq = next(self._seq)
        source.waiting[record.id] = (until, seq)
        if why:
            source.why[record.id] = why.split(" until ")[0].split(":")[0]
        else:
            source.why.pop(record.id, None)
        heapq.heappush(self._delayed, (until, seq, source, record))
        self._rearm(until)
        self.notify()

    def withdraw(self, source: Source, record_id: str) -> float | None:
        """Drop a queued record that is not in flight; return its due time if it was waiting
        for one. Its heap entry stays behind, stale, and is ignored when its time comes."""
        source.pending.pop(record_id, None)
        source.why.pop(record_id, None)
        entry = source.waiting.pop(record_id, None)
        if entry is None:
            return None
        if not any(s.waiting for s in self.sources):
            self._delayed.clear()
        return entry[0]

    def hold(self, phone: str, until: float) -> None:
        """Dial no record with number ``phone`` before monotonic time ``until``: a call to it
        may still be live. A longer hold already in place is kept."""
        if until <= self._holds.get(phone, -math.inf):
            return
        self._holds[phone] = until
        heapq.heappush(self._hold_ends, (until, phone))
        self._rearm(until)
        self.notify()

    def unhold(self, phone: str) -> None:
        """The call that held ``phone`` is known to be over."""
        if self._holds.pop(phone, None) is not None:
            self.notify()

    @property
    def held(self) -> int:
        """How many numbers are held."""
        return len(self._holds)

    async def take(self) -> tuple[Source, Record]:
        """Wait for the next dialable record and mark it (and its number) in flight."""
        while True:
            count = len(self.sources)
            blocked = self._phones_busy
            if self._holds:
                blocked = blocked | self._holds.keys()
            for offset in range(count):
                source = self.sources[(self._rr + offset) % count]
                record = source.take_first(blocked, self.prefer)
                if record is not None:
                    source.in_flight.add(record.id)
                    self._phones_busy.add(record.phone)
                    self._rr = (self._rr + offset + 1) % count
                    return source, record
            # Nothing dialable: wait for a change (no await since the scan, so none was missed).
            await self._change_event().wait()

    def release(self, source: Source, record: Record) -> None:
        """The record's attempt is over: its number is free again."""
        source.in_flight.discard(record.id)
        self._phones_busy.discard(record.phone)
        self.notify()

    def put_back(self, source: Source, record: Record) -> None:
        """A taken record was not dialed after all: back in the queue."""
        self.release(source, record)
        self.admit(source, record)

    async def run_timers(self) -> None:
        """Move waiting records into the queue when their time comes, and end holds; runs
        until cancelled."""
        while True:
            now = self.clock.monotonic()
            while self._delayed and self._delayed[0][0] <= now:
                until, seq, source, record = heapq.heappop(self._delayed)
                if source.waiting.get(record.id) == (until, seq):  # else withdrawn or replaced
                    del source.waiting[record.id]
                    source.why.pop(record.id, None)
                    self.admit(source, record)
            while self._hold_ends and self._hold_ends[0][0] <= now:
                until, phone = heapq.heappop(self._hold_ends)
                if self._holds.get(phone) == until:  # else lifted or extended
                    del self._holds[phone]
                    self.notify()
            deadlines = [h[0][0] for h in (self._delayed, self._hold_ends) if h]
            with anyio.CancelScope() as scope:
                self._timer_scope = scope
                if deadlines:
                    self._timer_target = min(deadlines)
                    await self.clock.sleep_until(self._timer_target)
                else:
                    self._timer_target = math.inf
                    await self._change_event().wait()
            self._timer_scope = None

    def _rearm(self, deadline: float) -> None:
        """A new deadline: if the timer sleeps for a later one, wake it to sleep again."""
        if self._timer_scope is not None and deadline < self._timer_target:
            self._timer_scope.cancel()

    def notify(self) -> None:
        """Something changed: wake whoever waits for a record or a deadline."""
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    def _change_event(self) -> anyio.Event:
        if self._changed is None:
            self._changed = anyio.Event()
        return self._changed
