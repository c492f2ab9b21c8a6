"""Contract suites for the seams: the tests every :class:`~dispatch.abc.Agent` and every
:class:`~dispatch.abc.Strategy` must pass, for the built-in ones and for yours.

A suite is a plain class whose ``test_*`` methods are pytest tests (run with the anyio plugin).
Subclass it in a test module under a name pytest collects (``Test...``) and fill in what it
needs: a fixture that builds the object, and what it can expect of it. The suite opens and
closes the object itself, with a context it controls, so it can check that the context is kept::

    import pytest
    from dispatch.testing import AgentContract, StrategyContract

    class TestMyAgent(AgentContract):
        @pytest.fixture
        def make_agent(self):
            return lambda: MyAgent(sandbox=True)  # a new agent, not opened

        def number(self, outcome, n):
            # the n-th distinct number whose first dial answers (then hangs up) / is rejected
            return f"+1555010{n:04d}" if outcome == "answer" else f"+1555020{n:04d}"

    class TestMyStrategy(StrategyContract):
        expected_ids = ("lead-1", "lead-2")

        @pytest.fixture
        def strategy(self, tmp_path):
            return MyStrategy(make_source(tmp_path, ["lead-1", "lead-2"]))  # not opened

        async def add_record(self, strategy):  # optional: enables one more test
            strategy.source.add("lead-3", "+15550100003")
            return "lead-3"

The suites need an ``anyio_backend`` (the plugin's default is asyncio). Everything they wait
for is bounded by ``timeout`` seconds (a class attribute); nothing sleeps.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import AsyncIterator, Callable, Collection, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from itertools import zip_longest
from typing import Any, ClassVar, Literal, TypeAlias

import anyio
import pytest

from .abc import (
    Agent,
    AgentContext,
    Call,
    CallbackName,
    CallEnd,
    DialRequest,
    LateOutcome,
    Malformed,
    PollItem,
    Removed,
    Strategy,
    StrategyContext,
)
from .errors import DialRejected
from .hub import poll_items
from .record import Record

__all__ = ["AgentContract", "DialOutcome", "StrategyContract"]

DialOutcome: TypeAlias = Literal["answer", "reject"]

CALLBACK_ARGS: dict[CallbackName, tuple[str, ...]] = {
    "on_dispatched": ("contract-call-1",),
    "on_completed": ("contract-call-1", "hangup"),
    "on_failed": ("busy",),
    "on_skipped": ("expired",),
}


# -- agents ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Dialed:
    """What one dial of the concurrent test came to."""

    request: DialRequest
    call: Call | None = None
    end: CallEnd | None = None
    rejection: DialRejected | None = None
    error: BaseException | None = None


class AgentContract:
    """The contract of :class:`~dispatch.abc.Agent` (and of the :class:`~dispatch.abc.Call`
    it returns), as tests.

    Provide:

    * the fixture ``make_agent``: returns a function that builds a new agent, not opened (each
      test builds one, opens it with an :class:`~dispatch.abc.AgentContext` of its own and
      closes it, all in the test's task, so agents that run a task group across ``open`` and
      ``aclose`` work);
    * :meth:`number`: destinations whose first dial on a new agent answers (and whose call
      then ends by itself) or is rejected;
    * optionally :meth:`destination_of`, if a test can tell which number a call went to, so
      the suite checks that each dial got the call of its own number;
    * optionally :meth:`dial_request`, to add a caller id or configuration to the dials.

    ``timeout`` bounds each test; ``concurrent_answered`` and ``concurrent_rejected`` are how
    many dials of each kind the concurrency test places at once (at least 1 each; they bound
    the ``n`` that :meth:`number` is asked for).
    """

    timeout: ClassVar[float] = 10.0
    concurrent_answered: ClassVar[int] = 5
    concurrent_rejected: ClassVar[int] = 2

    @pytest.fixture
    def make_agent(self) -> Callable[[], Agent]:
        """A function returning a new, unopened agent. Override this fixture."""
        pytest.fail(f"{type(self).__name__} must define the make_agent fixture")

    def number(self, outcome: DialOutcome, n: int) -> str:
        """The ``n``-th (0-based) distinct destination whose first dial on a new agent answers
        (``"answer"``: the call connects and ends by itself within ``timeout``) or is refused
        (``"reject"``: ``dial()`` raises ``DialRejected``). ``n`` stays below
        ``concurrent_answered`` / ``concurrent_rejected``. Override this method."""
        raise NotImplementedError(f"{type(self).__name__} must define number(outcome, n)")

    def destination_of(self, call: Call) -> str | None:
        """The number ``call`` was placed to, if the test can tell (from the call object or a
        fake platform's records); None (the default) skips that check."""
        return None

    def dial_request(self, to: str) -> DialRequest:
        """The request the suite dials ``to`` with; every one has its own ``dispatch_id``."""
        return DialRequest(to=to, dispatch_id=f"contract-{uuid.uuid4().hex}")

    @asynccontextmanager
    async def running(
        self, make_agent: Callable[[], Agent]
    ) -> AsyncIterator[tuple[Agent, list[LateOutcome]]]:
        """A new agent, opened with a context that collects what reaches ``report_late``, and
        closed afterwards; everything inside is bounded by ``timeout``."""
        reports: list[LateOutcome] = []
        agent = make_agent()
        # One deadline around open, the test and aclose: a scope that ended between open and
        # aclose would break an agent whose task group spans them.
        with anyio.fail_after(self.timeout):
            await agent.open(AgentContext(report_late=reports.append))
            try:
                yield agent, reports
            finally:
                await agent.aclose()

    @pytest.mark.anyio
    async def test_an_answered_dial_returns_a_call_that_ends_with_a_reason(
        self, make_agent: Callable[[], Agent]
    ) -> None:
        """``dial()`` returns a :class:`~dispatch.abc.Call` with a non-empty ``str`` id, and
        its ``wait()`` a :class:`~dispatch.abc.CallEnd` with a ``str`` reason."""
        to = self.number("answer", 0)
        async with self.running(make_agent) as (agent, _):
            call = await agent.dial(self.dial_request(to))
            assert isinstance(call, Call), f"dial() returned {call!r}, not a Call"
            assert isinstance(call.id, str), f"call id {call.id!r} is not a str"
            assert call.id, "the call id is empty"
            end = await call.wait()
        assert isinstance(end, CallEnd), f"wait() returned {end!r}, not a CallEnd"
        assert isinstance(end.reason, str), f"end reason {end.reason!r} is not a str"
        assert end.duration is None or isinstance(end.duration, int | float)
        destination = self.destination_of(call)
        assert destination in (None, to), f"the call to {to} went to {destination}"

    @pytest.mark.anyio
    async def test_a_rejected_dial_raises_dial_rejected_and_the_agent_dials_on(
        self, make_agent: Callable[[], Agent]
    ) -> None:
        """A dial that does not connect raises :class:`~dispatch.errors.DialRejected` with a
        non-empty ``str`` reason (not a call, not another error), and the agent stays usable:
        the next dial answers."""
        async with self.running(make_agent) as (agent, _):
            with pytest.raises(DialRejected) as rejected:
                await agent.dial(self.dial_request(self.number("reject", 0)))
            assert isinstance(rejected.value.reason, str)
            assert rejected.value.reason, "DialRejected without a reason"
            call = await agent.dial(self.dial_request(self.number("answer", 0)))
            assert isinstance(await call.wait(), CallEnd)

    @pytest.mark.anyio
    async def test_concurrent_dials_each_get_their_own_call(
        self, make_agent: Callable[[], Agent]
    ) -> None:
        """Dials placed at once (``concurrent_answered`` answering, ``concurrent_rejected``
        refused, interleaved) each end their own way: every answered one returns a call
        that completes, every refused one raises ``DialRejected``, no call is returned for
        two dials, and (where :meth:`destination_of` tells) each call went to its own
        number."""
        answered = [self.number("answer", n) for n in range(self.concurrent_answered)]
        refused = [self.number("reject", n) for n in range(self.concurrent_rejected)]
        numbers = answered + refused
        assert len(set(numbers)) == len(numbers), f"number() repeats itself: {numbers}"
        # Refusals among the answers, not after them: a mix-up shows where they interleave.
        order = [to for pair in zip_longest(answered, refused) for to in pair if to is not None]
        requests = {to: self.dial_request(to) for to in order}
        ids = [r.dispatch_id for r in requests.values()]
        assert len(set(ids)) == len(ids), "dial_request() must give every dial its own id"
        results: dict[str, _Dialed] = {}

        async def dial(agent: Agent, request: DialRequest) -> None:
            try:
                call = await agent.dial(request)
            except DialRejected as exc:
                results[request.to] = _Dialed(request, rejection=exc)
                return
            except Exception as exc:
                results[request.to] = _Dialed(request, error=exc)
                return
            try:
                end = await call.wait()
            except Exception as exc:
                results[request.to] = _Dialed(request, call, error=exc)
                return
            results[request.to] = _Dialed(request, call, end)

        async with self.running(make_agent) as (agent, _), anyio.create_task_group() as tg:
            for request in requests.values():
                tg.start_soon(dial, agent, request)

        errors = {to: repr(r.error) for to, r in results.items() if r.error is not None}
        assert not errors, f"dials failed: {errors}"
        for to in answered:
            result = results[to]
            assert result.call is not None, f"the dial to {to} was refused: {result.rejection}"
            assert isinstance(result.end, CallEnd)
        for to in refused:
            result = results[to]
            assert result.rejection is not None, f"the dial to {to} returned {result.call!r}"
            assert result.rejection.reason, f"the dial to {to} was refused without a reason"
        calls = [results[to].call for to in answered]
        assert len({id(call) for call in calls}) == len(calls), "one call returned twice"
        call_ids = [call.id for call in calls if call is not None]
        assert len(set(call_ids)) == len(call_ids), f"call ids repeat: {call_ids}"
        wrong = {
            to: destination
            for to in answered
            if (call := results[to].call) is not None
            and (destination := self.destination_of(call)) not in (None, to)
        }
        assert not wrong, f"dials got the call of another number (dialed: got): {wrong}"

    @pytest.mark.anyio
    async def test_an_agent_opens_and_closes_without_dialing(
        self, make_agent: Callable[[], Agent]
    ) -> None:
        """``open()`` then ``aclose()``, with no dial in between, both return (within
        ``timeout``) without raising."""
        async with self.running(make_agent):
            pass

    @pytest.mark.anyio
    async def test_the_agent_keeps_the_context_it_was_opened_with(
        self, make_agent: Callable[[], Agent]
    ) -> None:
        """``report_late()`` reaches the :class:`~dispatch.abc.AgentContext` given to
        ``open()``: an override of ``open`` calls ``super().open(context)`` (or a wrapper
        passes the context on)."""
        outcome = LateOutcome("contract-late", "contract-call", True, "hangup", 1.0)
        async with self.running(make_agent) as (agent, reports):
            agent.report_late(outcome)
        assert reports == [outcome], "report_late() did not reach the context given to open()"


# -- strategies ------------------------------------------------------------------------------


class StrategyContract:
    """The contract of :class:`~dispatch.abc.Strategy`, as tests.

    Provide:

    * the fixture ``strategy``: a new strategy, not opened, over a source holding at least
      the records named in ``expected_ids`` (each test opens it with a
      :class:`~dispatch.abc.StrategyContext` of its own and closes it);
    * ``expected_ids``: at least two ids a first poll must yield as records (a class
      attribute, or set on ``self`` by the fixture);
    * optionally :meth:`add_record`, to check that a record added to the source comes in the
      next poll.

    ``timeout`` bounds each test.
    """

    timeout: ClassVar[float] = 10.0
    expected_ids: Collection[str] = ()

    @pytest.fixture
    def strategy(self) -> Strategy:
        """A new, unopened strategy over a source holding ``expected_ids``. Override this
        fixture."""
        pytest.fail(f"{type(self).__name__} must define the strategy fixture")

    async def add_record(self, strategy: Strategy) -> str:
        """Add one record, not among ``expected_ids``, to the source of ``strategy`` (opened
        and polled once) and return its id. Not overridden: that test is skipped."""
        raise NotImplementedError

    @asynccontextmanager
    async def opened(self, strategy: Strategy) -> AsyncIterator[list[None]]:
        """``strategy`` opened with a context that appends to the list it yields on every
        ``poll_now()``, and closed afterwards; everything inside is bounded by ``timeout``."""
        requests: list[None] = []
        with anyio.fail_after(self.timeout):
            await strategy.open(StrategyContext(poll_now=lambda: requests.append(None)))
            try:
                yield requests
            finally:
                await strategy.aclose()

    def expected(self) -> set[str]:
        expected = set(self.expected_ids)
        if len(expected) < 2:
            pytest.fail(f"{type(self).__name__}.expected_ids must name at least two records")
        return expected

    @pytest.mark.anyio
    async def test_a_poll_yields_records_with_unique_ids_covering_the_source(
        self, strategy: Strategy
    ) -> None:
        """One poll yields only :data:`~dispatch.abc.PollItem` values (``Record``,
        ``Malformed``, ``Removed``), whichever form ``poll()`` takes; every record has a
        non-empty ``str`` id and a ``str`` phone, no id comes twice, and the records cover
        ``expected_ids``."""
        async with self.opened(strategy):
            items = await _poll(strategy)
        records = _records(items)
        ids = [record.id for record in records]
        assert len(set(ids)) == len(ids), f"a poll yielded an id twice: {sorted(ids)}"
        missing = self.expected() - set(ids)
        assert not missing, f"the first poll did not yield {sorted(missing)}"

    @pytest.mark.anyio
    async def test_a_poll_of_an_unchanged_source_repeats_or_yields_nothing(
        self, strategy: Strategy
    ) -> None:
        """Polled again with nothing changed, a strategy that is not ``incremental`` yields
        the same records again (the hub wants every record still wanted, every time), and an
        ``incremental`` one yields no record and no ``Removed`` (nothing changed, and a
        ``Removed`` would drop a queued record)."""
        async with self.opened(strategy):
            first = {record.id for record in _records(await _poll(strategy))}
            again = await _poll(strategy)
        ids = {record.id for record in _records(again)}
        if strategy.incremental:
            changed = sorted(i.id for i in again if isinstance(i, Record | Removed))
            assert not changed, f"an incremental poll of an unchanged source yielded {changed}"
        else:
            assert ids == first, f"the second poll yielded {sorted(ids)}, not {sorted(first)}"

    @pytest.mark.anyio
    async def test_a_record_added_to_the_source_comes_in_the_next_poll(
        self, strategy: Strategy
    ) -> None:
        """After :meth:`add_record`, the next poll yields the new record: alone (and nothing
        ``Removed``) for an ``incremental`` strategy, with every earlier record for one that
        is not."""
        if type(self).add_record is StrategyContract.add_record:
            pytest.skip(f"{type(self).__name__} does not define add_record()")
        async with self.opened(strategy):
            first = {record.id for record in _records(await _poll(strategy))}
            new = await self.add_record(strategy)
            assert new not in first, f"add_record() returned {new!r}, which was there already"
            items = await _poll(strategy)
        ids = {record.id for record in _records(items)}
        if strategy.incremental:
            assert ids == {new}, f"the poll after adding {new!r} yielded {sorted(ids)}"
            removed = sorted(i.id for i in items if isinstance(i, Removed))
            assert not removed, f"adding {new!r} removed {removed}"
        else:
            missing = (first | {new}) - ids
            assert not missing, f"the poll after adding {new!r} did not yield {sorted(missing)}"

    @pytest.mark.anyio
    @pytest.mark.parametrize("callback", list(CALLBACK_ARGS))
    async def test_deliver_accepts_each_callback_twice(
        self, strategy: Strategy, callback: CallbackName
    ) -> None:
        """``deliver()`` of each callback, with the arguments the hub passes, for a polled
        record, returns without raising, and does again when delivered a second time
        (delivery is at least once)."""
        async with self.opened(strategy):
            record = self._first_expected(await _poll(strategy))
            for _ in range(2):
                await strategy.deliver(callback, record, *CALLBACK_ARGS[callback])

    @pytest.mark.anyio
    async def test_deliver_calls_the_callback_assigned_on_the_instance(
        self, strategy: Strategy
    ) -> None:
        """``deliver()`` calls the callback found on the object at delivery time (``strategy
        .on_completed = fn`` works, so an override of ``deliver`` calls ``super().deliver``),
        awaits an async one, and runs a plain one in a worker thread, off the event loop."""
        loop_thread = threading.get_ident()
        calls: list[tuple[str, bool, tuple[Any, ...]]] = []

        def plain(name: str) -> Callable[..., None]:
            def callback(*args: Any) -> None:
                calls.append((name, threading.get_ident() == loop_thread, args))

            return callback

        def coroutine(name: str) -> Callable[..., Any]:
            async def callback(*args: Any) -> None:
                calls.append((name, threading.get_ident() == loop_thread, args))

            return callback

        async with self.opened(strategy):
            record = self._first_expected(await _poll(strategy))
            for n, name in enumerate(CALLBACK_ARGS):
                setattr(strategy, name, plain(name) if n % 2 == 0 else coroutine(name))
            for name, args in CALLBACK_ARGS.items():
                await strategy.deliver(name, record, *args)
        assert [(name, args) for name, _, args in calls] == [
            (name, (record, *args)) for name, args in CALLBACK_ARGS.items()
        ], "deliver() did not call the callbacks assigned on the instance"
        on_loop = [name for n, (name, loop, _) in enumerate(calls) if n % 2 == 0 and loop]
        assert not on_loop, f"plain callbacks ran on the event loop: {on_loop}"

    @pytest.mark.anyio
    async def test_the_strategy_keeps_the_context_it_was_opened_with(
        self, strategy: Strategy
    ) -> None:
        """``poll_now()`` is harmless before ``open()`` and, once opened, reaches the
        :class:`~dispatch.abc.StrategyContext` given to ``open()`` (an override of ``open``
        calls ``super().open(context)``)."""
        strategy.poll_now()
        async with self.opened(strategy) as requests:
            strategy.poll_now()
        assert requests == [None], "poll_now() did not reach the context given to open()"

    @pytest.mark.anyio
    async def test_a_strategy_opens_and_closes_without_polling(self, strategy: Strategy) -> None:
        """``open()`` then ``aclose()``, with no poll in between, both return (within
        ``timeout``) without raising; the strategy has a non-empty ``str`` name."""
        assert isinstance(strategy.name, str), f"name {strategy.name!r} is not a str"
        assert strategy.name, "the strategy has an empty name"
        async with self.opened(strategy):
            pass

    def _first_expected(self, items: list[PollItem]) -> Record:
        by_id = {record.id: record for record in _records(items)}
        wanted = min(self.expected())
        assert wanted in by_id, f"the poll did not yield {wanted!r}"
        return by_id[wanted]


async def _poll(strategy: Strategy) -> list[PollItem]:
    """One poll, consumed as the hub consumes it."""
    return [item async for item in poll_items(strategy)]


def _records(items: list[PollItem]) -> list[Record]:
    """The records among ``items``, after checking that every item is a poll item and every
    record is well formed."""
    return list(_checked(items))


def _checked(items: list[PollItem]) -> Iterator[Record]:
    for item in items:
        assert isinstance(item, Record | Malformed | Removed), f"{item!r} is not a PollItem"
        if isinstance(item, Record):
            assert isinstance(item.id, str), f"record id {item.id!r} is not a str"
            assert item.id, f"{item!r} has an empty id"
            assert isinstance(item.phone, str), f"record {item.id}: phone is not a str"
            yield item
        else:
            assert isinstance(item.id, str), f"{item!r}: id is not a str"
            assert item.id, f"{item!r} has an empty id"
