"""PinecallAgent against the fake Pinecall server, over real sockets on 127.0.0.1."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

from dispatch import DialInterrupted, DialRejected, DialRequest, DialUnknown, DispatchHub
from dispatch.agents.pinecall import PinecallAgent, PinecallFatal
from dispatch.errors import dispatch_error_in
from dispatch.testing import Answer, FakePinecall, ManualClock, Signal
from tests.conftest import fetch
from tests.support import PHONES, ListStrategy, rec

pytestmark = pytest.mark.anyio

CALLER = "+13185550100"


def request(to: str, n: int = 0) -> DialRequest:
    return DialRequest(to=to, dispatch_id=f"attempt-{n}-{to}", metadata={"crm": n})


@asynccontextmanager
async def running(fake: FakePinecall, **options: Any) -> AsyncIterator[PinecallAgent]:
    options.setdefault("clock", fake.clock)
    options.setdefault("agent_id", "dialer")
    options.setdefault("phone_numbers", [CALLER])
    options.setdefault("config", {"voice": "alloy", "language": "en"})
    agent = PinecallAgent(url=fake.url, api_key=fake.api_key, **options)
    async with agent:  # open() enters a task group that aclose() leaves: no scope in between
        yield agent


async def test_it_registers_the_agent_and_its_numbers_before_dialing() -> None:
    async with FakePinecall() as fake, running(fake) as agent:
        call = await agent.dial(request(PHONES[0]))
        with anyio.fail_after(5):
            end = await call.wait()
    assert [r.event for r in fake.transcript] == [
        "connect",
        "agent.create",
        "channel.add",
        "call.dial",
    ]
    create, channel, dial = (r.frame for r in fake.transcript[1:])
    assert create == {
        "event": "agent.create",
        "agent_id": "dialer",
        "voice": "alloy",
        "language": "en",
    }
    assert channel == {"event": "channel.add", "agent_id": "dialer", "type": "phone", "ref": CALLER}
    assert dial["from"] == CALLER
    assert dial["metadata"] == {"crm": 0, "dispatch_id": f"attempt-0-{PHONES[0]}"}
    assert (end.reason, end.duration) == ("hangup", 0.0)
    assert "pk_test" not in repr(agent)


async def drive(clock: ManualClock, horizon: float = 1000) -> None:
    """Move time to each deadline before ``horizon`` as soon as somebody sleeps on one."""
    while True:
        await clock.wait_until(lambda: (clock.next_deadline or horizon) < horizon)
        clock.advance_to_next()


QUIRKS = [
    {},
    {"reorder": True},
    {"reorder": True, "duplicate": True},
    {"echo_metadata": True},
    {"echo_metadata": False},
    {"send_dialing": False},
    {"echo_metadata": False, "send_dialing": False},
    {"agent_prefix": True, "duplicate": True},
]


@pytest.mark.parametrize("quirks", QUIRKS, ids=lambda q: ",".join(q) or "plain")
async def test_concurrent_dials_each_get_their_own_call_and_reason(quirks: dict[str, Any]) -> None:
    clock = ManualClock()
    outcomes: dict[str, Any] = {
        PHONES[0]: [Answer(ring=3, talk=5)],
        PHONES[1]: [Answer(ring=1, talk=20)],
        PHONES[2]: ["busy"],
        PHONES[3]: ["no-answer"],
        PHONES[4]: ["no_answer"],
        PHONES[5]: ["failed"],
        PHONES[6]: ["canceled"],
        PHONES[7]: ["call.error"],
        PHONES[8]: [Answer(ring=2, talk=1, reason="idle_timeout")],
    }
    results: dict[str, Any] = {}
    # The agent's own timers are far off: time moves only for the fake's scripted delays.
    async with (
        FakePinecall(script=outcomes, clock=clock, **quirks) as fake,
        running(fake, dial_timeout=100, ping_interval=1000) as agent,
    ):

        async def one(to: str, n: int) -> None:
            try:
                call = await agent.dial(request(to, n))
                results[to] = ("started", fake.calls[call.id], await call.wait())
            except DialRejected as exc:
                results[to] = ("rejected", exc.reason)
            except DialUnknown:
                results[to] = ("unknown",)
            done.notify()

        done = Signal()
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(drive, clock, 50)  # the scripted delays, not the dial timeout
                async with anyio.create_task_group() as dials:
                    for n, to in enumerate(outcomes):
                        dials.start_soon(one, to, n)
                    if not quirks.get("send_dialing", True):
                        await done.wait_until(lambda: len(results) == len(outcomes) - 1)
                        clock.advance(100)  # the one dial nobody answered times out
                tg.cancel_scope.cancel()

    dialing = quirks.get("send_dialing", True)
    assert results[PHONES[0]][:2] == ("started", PHONES[0])  # its own call, not the first one
    assert results[PHONES[0]][2].reason == "hangup"
    assert results[PHONES[1]][:2] == ("started", PHONES[1])
    assert results[PHONES[8]][2].reason == "idle_timeout"
    assert {to: r for to, r in results.items() if r[0] == "rejected"} == {
        PHONES[2]: ("rejected", "busy"),
        PHONES[3]: ("rejected", "no_answer"),
        PHONES[4]: ("rejected", "no_answer"),
        PHONES[5]: ("rejected", "failed"),
        PHONES[6]: ("rejected", "canceled"),
        **({PHONES[7]: ("rejected", "call_error: carrier error")} if dialing else {}),
    }
    # call.error names only the call id, which only call.dialing ties to a dial: without it
    # the error is nobody's and the dial ends unknown at its timeout, never someone else's.
    assert (
        results[PHONES[7]] == ("rejected", "call_error: carrier error") if dialing else ("unknown",)
    )


async def test_an_error_frame_naming_the_call_refuses_its_dial() -> None:
    script = {PHONES[0]: ["error-with-call-id"]}
    async with FakePinecall(script=script) as fake, running(fake) as agent:
        with pytest.raises(DialRejected, match="dial_refused"), anyio.fail_after(5):
            await agent.dial(request(PHONES[0]))


async def test_a_drop_mid_dial_interrupts_it_and_it_is_never_sent_again() -> None:
    clock = ManualClock()
    async with (
        FakePinecall(script={PHONES[0]: ["drop"]}, clock=clock) as fake,
        running(fake) as agent,
    ):
        with pytest.raises(DialInterrupted), anyio.fail_after(5):
            await agent.dial(request(PHONES[0]))
        with anyio.fail_after(5):
            await clock.wait_until(lambda: (clock.next_deadline or 99) < 2)  # the backoff
            clock.advance_to_next()
            await fake.wait_for("agent.create", 2)  # registered again on the new socket
            call = await agent.dial(request(PHONES[1]))
            await call.wait()
    dials = fake.received("call.dial")
    assert [(d.connection, d.frame["to"]) for d in dials] == [(1, PHONES[0]), (2, PHONES[1])]
    assert len(fake.received("channel.add")) == 2


async def test_a_half_open_socket_is_detected_and_replaced() -> None:
    clock = ManualClock()
    script = {PHONES[0]: ["half-open"]}
    async with (
        FakePinecall(script=script, clock=clock) as fake,
        running(fake, ping_interval=10, dial_timeout=5) as agent,
    ):
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:

                async def dial_into_the_void() -> None:
                    with pytest.raises(DialUnknown, match="within 5s"):
                        await agent.dial(request(PHONES[0]))

                tg.start_soon(dial_into_the_void)
                await fake.wait_for("call.dial")
                await clock.wait_until(lambda: 5.0 in clock.deadlines)
                clock.advance(5)  # the dial times out: unknown, not failed
            # The server has gone silent: pings go unanswered until the deadline (20 s).
            for pings in (1, 2):
                await clock.wait_until(lambda n=pings: clock.next_deadline == 10.0 * n)
                clock.advance_to_next()
                await fake.wait_for("ping", pings)
            await clock.wait_until(lambda: clock.next_deadline == 30.0)
            clock.advance_to_next()  # 30 s without a pong: replaced
            await clock.wait_until(lambda: (clock.next_deadline or 0) > 30.0)
            clock.advance_to_next()  # the reconnect's backoff
            await fake.wait_for("connect", 2)
            await fake.wait_for("agent.create", 2)
    assert len(fake.received("call.dial")) == 1


async def test_a_refused_key_fails_fast_and_is_not_retried() -> None:
    async with FakePinecall() as fake:
        agent = PinecallAgent(url=fake.url, api_key="wrong", agent_id="dialer")
        with anyio.fail_after(5), pytest.raises(PinecallFatal, match="API key refused"):
            async with agent:
                pass
    assert fake.connections == 1


async def test_a_registration_refused_for_good_is_fatal() -> None:
    refusal = {"code": "AGENT_CONFLICT_FATAL", "error": "owned by another org"}
    async with FakePinecall(registration_errors=[refusal]) as fake:
        agent = PinecallAgent(url=fake.url, api_key=fake.api_key, agent_id="dialer")
        with anyio.fail_after(5), pytest.raises(PinecallFatal, match="AGENT_CONFLICT_FATAL"):
            async with agent:
                pass


async def test_an_agent_in_use_is_registered_once_the_holder_lets_go() -> None:
    clock = ManualClock()
    busy = {"code": "AGENT_IN_USE", "error": "held elsewhere", "retry_after_s": 7}
    async with FakePinecall(registration_errors=[busy], clock=clock) as fake:
        agent = PinecallAgent(url=fake.url, api_key=fake.api_key, agent_id="dialer", clock=clock)
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:

                async def connect() -> None:
                    async with agent:
                        await fake.wait_for("agent.create", 2)

                tg.start_soon(connect)
                await clock.wait_until(lambda: clock.deadlines == [7.0])
                clock.advance(7)


async def test_a_late_answer_is_reconciled_into_the_ledger(sqlite_url: str) -> None:
    clock = ManualClock()
    script = {PHONES[0]: [Answer(ring=40, talk=5)]}
    source = ListStrategy([rec("r1", PHONES[0])])
    async with FakePinecall(script=script, clock=clock) as fake:
        agent = PinecallAgent(
            url=fake.url,
            api_key=fake.api_key,
            agent_id="dialer",
            phone_numbers=[CALLER],
            clock=clock,
            dial_timeout=30,
            ping_interval=1000,
        )
        hub = DispatchHub(
            agent=agent, strategies=[source], store=sqlite_url, clock=clock, poll_interval=1000
        )
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(hub.run)
                await fake.wait_for("call.dial")
                # The dial's timeout (30 s) and the callee's ring (40 s) are both running.
                await clock.wait_until(lambda: {30.0, 40.0} <= set(clock.deadlines))
                clock.advance(30)  # no word from the platform: unknown
                await source.wait_for_events(1)
                assert source.events[0][:2] == ("failed", "r1")
                clock.advance(10)  # ... then the callee answers
                await clock.wait_until(lambda: 45.0 in clock.deadlines)
                clock.advance(5)  # and hangs up
                await source.wait_for_events(2)
                hub.stop()

    assert source.events[1] == ("completed", "r1", "call-1", "hangup")
    assert await fetch(sqlite_url, "SELECT state, call_id, reason, duration FROM attempts") == [
        ("completed", "call-1", "hangup", 5.0)
    ]
    assert await fetch(sqlite_url, "SELECT state FROM records") == [("completed",)]
    assert len(fake.received("call.dial")) == 1


async def test_a_displaced_agent_is_fatal() -> None:
    async with FakePinecall() as fake:
        agent = PinecallAgent(url=fake.url, api_key=fake.api_key, agent_id="dialer")

        async def displaced() -> None:
            async with agent:
                await fake.drop(4000, "displaced by another client")
                await anyio.sleep_forever()

        with anyio.fail_after(5), pytest.raises((PinecallFatal, BaseExceptionGroup)) as raised:
            await displaced()
    assert isinstance(dispatch_error_in(raised.value), PinecallFatal)
    assert "displaced" in str(dispatch_error_in(raised.value))
    assert fake.connections == 1  # not reconnected


async def test_a_call_cut_off_by_a_drop_is_reconciled_when_reported_after_reconnecting(
    sqlite_url: str,
) -> None:
    clock = ManualClock()
    script = {PHONES[0]: [Answer(ring=0, talk=100)]}
    source = ListStrategy([rec("r1", PHONES[0])])
    async with FakePinecall(script=script, clock=clock) as fake:
        agent = PinecallAgent(
            url=fake.url,
            api_key=fake.api_key,
            agent_id="dialer",
            phone_numbers=[CALLER],
            clock=clock,
            ping_interval=1000,
        )
        hub = DispatchHub(
            agent=agent, strategies=[source], store=sqlite_url, clock=clock, poll_interval=1000
        )
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(hub.run)
                await source.wait_for_events(1)  # dispatched: the call is live
                await fake.drop()
                await source.wait_for_events(2)
                assert source.events[1] == (
                    "failed",
                    "r1",
                    "interrupted: connection to Pinecall lost during the call",
                )
                await clock.wait_until(lambda: (clock.next_deadline or 99) < 2)
                clock.advance_to_next()  # reconnect
                await fake.wait_for("agent.create", 2)
                ended = {"reason": "hangup", "duration_seconds": 42}
                await fake.send({"event": "call.ended", "call_id": "call-1", **ended})
                await source.wait_for_events(3)
                hub.stop()
    assert source.events[2] == ("completed", "r1", "call-1", "hangup")
    assert await fetch(sqlite_url, "SELECT state, reason, duration FROM attempts") == [
        ("completed", "hangup", 42.0)
    ]
    assert len(fake.received("call.dial")) == 1
