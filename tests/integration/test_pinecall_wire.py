"""PinecallAgent's fidelity to the wire: which dial an error concerns, agent ids as the server
slugs them, the handshake, and caller ids. Against the fake Pinecall server over real sockets
on 127.0.0.1; the agent's clock is a ManualClock nobody moves unless a test says so, so a dial
that is not settled by the frames a test sends never settles at all (and fail_after says so)."""

from __future__ import annotations

import logging
from typing import Any

import anyio
import pytest

from dispatch import Call, DialRejected, DialRequest, DialUnknown
from dispatch.abc import AgentContext, LateOutcome
from dispatch.agents.pinecall import PinecallAgent
from dispatch.testing import Answer, FakePinecall, ManualClock, Signal
from tests.integration.test_pinecall import CALLER, running
from tests.support import PHONES

pytestmark = pytest.mark.anyio

CALLER_2 = "+13185550101"


def request(to: str, n: int = 0, **fields: Any) -> DialRequest:
    return DialRequest(to=to, dispatch_id=f"attempt-{n}", **fields)


class Dials:
    """Dials running in the background, and what each came to."""

    def __init__(self, agent: Any, tg: Any) -> None:
        self.agent, self.tg = agent, tg
        self.outcomes: dict[str, Call | BaseException] = {}

    def start(self, to: str, **fields: Any) -> None:
        async def dial() -> None:
            try:
                self.outcomes[to] = await self.agent.dial(request(to, len(self.outcomes), **fields))
            except (DialRejected, DialUnknown) as exc:
                self.outcomes[to] = exc

        self.tg.start_soon(dial)


def error(**fields: Any) -> dict[str, Any]:
    return {"event": "error", "agent_id": "dialer", "code": "DIAL_REFUSED", "error": "no", **fields}


# -- error frames: whose are they? -------------------------------------------------------------


async def test_an_error_naming_another_call_never_touches_a_ringing_dial() -> None:
    async with (
        FakePinecall(script={PHONES[0]: ["silence"]}) as fake,
        running(fake, clock=ManualClock()) as agent,
    ):
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                dials = Dials(agent, tg)
                dials.start(PHONES[0])
                await fake.wait_sent("call.dialing")  # ringing, as call-1
                await fake.send(error(call_id="call-99"))  # somebody else's call
                await fake.send(error())  # naming no call: not one that rings under its id
                await fake.flush()
                assert dials.outcomes == {}
                await fake.send(
                    {"event": "call.started", "agent_id": "dialer", "call_id": "call-1"}
                )
            call = dials.outcomes[PHONES[0]]
            assert isinstance(call, Call)
            await fake.send(error(call_id="call-1"))  # about the live call: it goes on
            await fake.send({"event": "call.ended", "call_id": "call-1", "reason": "hangup"})
            end = await call.wait()
    assert (call.id, end.reason) == ("call-1", "hangup")


async def test_a_repeated_end_of_an_earlier_call_does_not_end_the_retry_to_that_number() -> None:
    async with (
        FakePinecall(script={PHONES[0]: ["busy", "silence"]}, send_dialing=False) as fake,
        running(fake, clock=ManualClock()) as agent,
    ):
        with anyio.fail_after(5):
            with pytest.raises(DialRejected, match="busy"):
                await agent.dial(request(PHONES[0]))
            (busy,) = (r.frame for r in fake.sent if r.event == "call.ended")
            async with anyio.create_task_group() as tg:
                dials = Dials(agent, tg)
                dials.start(PHONES[0])  # the retry: nothing heard of it yet
                await fake.wait_for("call.dial", 2)
                await fake.send(busy)  # the platform repeats the first call's end
                await fake.flush()
                assert dials.outcomes == {}
                await fake.send({"event": "call.started", "call_id": "call-2", "to": PHONES[0]})
    assert isinstance(dials.outcomes[PHONES[0]], Call)


async def test_an_error_naming_a_call_given_up_on_is_reported_late() -> None:
    clock = ManualClock()
    late: list[LateOutcome] = []
    reported = Signal()
    async with FakePinecall(script={PHONES[0]: ["silence"]}) as fake:
        agent = PinecallAgent(
            url=fake.url,
            api_key=fake.api_key,
            agent_id="dialer",
            phone_numbers=[CALLER],
            clock=clock,
            dial_timeout=5,
            ping_interval=1000,
        )
        await agent.open(AgentContext(report_late=lambda o: (late.append(o), reported.notify())))
        try:
            with anyio.fail_after(5):
                async with anyio.create_task_group() as tg:

                    async def give_up() -> None:
                        with pytest.raises(DialUnknown):
                            await agent.dial(request(PHONES[0]))

                    tg.start_soon(give_up)
                    await fake.wait_sent("call.dialing")
                    await clock.wait_until(lambda: 5.0 in clock.deadlines)
                    clock.advance(5)
                await fake.send(error(call_id="call-1"))
                await reported.wait_until(lambda: bool(late))
        finally:
            await agent.aclose()
    assert [(o.call_id, o.started, o.reason) for o in late] == [("call-1", False, "dial_refused")]


async def test_an_anonymous_error_makes_the_one_dial_not_heard_of_unknown_never_rejected() -> None:
    async with (
        FakePinecall(script={PHONES[0]: ["error"]}) as fake,
        running(fake, clock=ManualClock()) as agent,
    ):
        with anyio.fail_after(5), pytest.raises(DialUnknown, match="DIAL_REFUSED naming no call"):
            await agent.dial(request(PHONES[0]))
    assert [r.code for r in fake.refusals] == []  # the fake itself refused nothing


async def test_an_anonymous_error_with_several_dials_not_heard_of_touches_none() -> None:
    script = {PHONES[0]: ["silence"], PHONES[1]: ["silence"]}
    async with (
        FakePinecall(script=script, send_dialing=False) as fake,
        running(fake, clock=ManualClock()) as agent,
    ):
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                dials = Dials(agent, tg)
                dials.start(PHONES[0])
                dials.start(PHONES[1])
                await fake.wait_for("call.dial", 2)
                await fake.send(error())
                await fake.flush()
                assert dials.outcomes == {}
                base = {"agent_id": "dialer", "direction": "outbound"}
                await fake.send({"event": "call.started", "call_id": "a", "to": PHONES[0], **base})
                busy = {"event": "call.ended", "call_id": "b", "to": PHONES[1], "reason": "busy"}
                await fake.send({**busy, **base})
    answered, refused = dials.outcomes[PHONES[0]], dials.outcomes[PHONES[1]]
    assert isinstance(answered, Call)
    assert answered.id == "a"
    assert isinstance(refused, DialRejected)
    assert refused.reason == "busy"


# -- call.error before call.dialing ------------------------------------------------------------


async def test_a_call_error_before_any_call_dialing_fails_the_one_dial_it_can_be() -> None:
    # The one dial not named yet: it failed, at once rather than at the dial timeout.
    async with (
        FakePinecall(script={PHONES[0]: ["call.error"]}, send_dialing=False) as fake,
        running(fake, clock=ManualClock()) as agent,
    ):
        with anyio.fail_after(5), pytest.raises(DialRejected) as refused:
            await agent.dial(request(PHONES[0]))
    assert refused.value.reason == "call_error: carrier error"


async def test_a_call_error_several_dials_could_mean_waits_for_its_call_dialing() -> None:
    clock = ManualClock()
    script = {PHONES[0]: [Answer(ring=5)], PHONES[1]: ["call.error"]}
    async with (
        # reorder: call.dialing comes after the event that follows it (call.started, call.error)
        FakePinecall(script=script, reorder=True, clock=clock) as fake,
        running(fake, dial_timeout=100, ping_interval=1000) as agent,
    ):
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                dials = Dials(agent, tg)
                dials.start(PHONES[0])
                await clock.wait_until(lambda: 5.0 in clock.deadlines)  # rings, not heard of
                dials.start(PHONES[1])
                await fake.wait_sent("call.dialing")  # call-2's, after its call.error
                await fake.flush()
                assert list(dials.outcomes) == [PHONES[1]]
                clock.advance(5)
    refused, answered = dials.outcomes[PHONES[1]], dials.outcomes[PHONES[0]]
    assert isinstance(refused, DialRejected)
    assert refused.reason == "call_error: carrier error"
    assert isinstance(answered, Call)
    assert answered.id == "call-1"


async def test_a_call_error_of_another_agent_or_of_a_call_seen_before_is_nobodys() -> None:
    inbound = {"event": "call.started", "agent_id": "dialer", "call_id": "in-1", "to": CALLER}
    async with (
        FakePinecall(script={PHONES[0]: ["silence"]}, send_dialing=False) as fake,
        running(fake, clock=ManualClock()) as agent,
    ):
        with anyio.fail_after(5):
            await fake.send({**inbound, "from": PHONES[5], "direction": "inbound"})
            async with anyio.create_task_group() as tg:
                dials = Dials(agent, tg)
                dials.start(PHONES[0])
                await fake.wait_for("call.dial")
                failure = {"event": "call.error", "error": "carrier error", "code": "X"}
                await fake.send({**failure, "agent_id": "org_test:another", "call_id": "zz"})
                await fake.send({**failure, "agent_id": "dialer", "call_id": "in-1"})
                await fake.flush()
                assert dials.outcomes == {}
                await fake.send({"event": "call.started", "call_id": "c", "to": PHONES[0]})
    assert isinstance(dials.outcomes[PHONES[0]], Call)


# -- agent ids and the handshake ---------------------------------------------------------------


@pytest.mark.parametrize("prefix", [False, True], ids=["slug", "org:slug"])
async def test_agent_scoped_frames_are_recognised_under_the_servers_slug(prefix: bool) -> None:
    script = {PHONES[0]: ["error"], PHONES[1]: ["error-with-call-id"], PHONES[2]: ["answer"]}
    async with (
        FakePinecall(script=script, agent_prefix=prefix) as fake,
        running(fake, agent_id="Dialer_Bot", clock=ManualClock()) as agent,
    ):
        with anyio.fail_after(5):
            with pytest.raises(DialUnknown):
                await agent.dial(request(PHONES[0]))
            with pytest.raises(DialRejected, match="dial_refused"):
                await agent.dial(request(PHONES[1], 1))
            call = await agent.dial(request(PHONES[2], 2))
            end = await call.wait()
    echoed = {r.frame["agent_id"] for r in fake.sent if "agent_id" in r.frame}
    assert echoed == {"org_test:dialer-bot" if prefix else "dialer-bot"}
    assert end.reason == "hangup"


async def test_an_authenticated_frame_before_connected_is_tolerated() -> None:
    async with FakePinecall(authenticated_first=True) as fake:
        with anyio.fail_after(5):
            async with running(fake, clock=ManualClock()) as agent:
                call = await agent.dial(request(PHONES[0]))
                await call.wait()
    assert fake.connections == 1
    assert [r.event for r in fake.sent[:2]] == ["authenticated", "connected"]


# -- caller ids --------------------------------------------------------------------------------


async def test_a_caller_id_in_use_named_only_in_the_error_text_is_dropped_too() -> None:
    # The SDK recognises the condition by its code or by its text: so does the adapter.
    async with FakePinecall() as fake, running(fake, phone_numbers=[CALLER, CALLER_2]) as agent:
        with anyio.fail_after(5):
            await fake.send(
                {
                    "event": "error",
                    "agent_id": "dialer",
                    "phone": CALLER_2,
                    "error": f"PHONE_IN_USE: {CALLER_2} is held by another agent",
                }
            )
            await fake.flush()
            with pytest.raises(DialRejected, match="caller_id_in_use"):
                await agent.dial(request(PHONES[0], from_=CALLER_2))
    assert fake.received("call.dial") == []


async def test_a_caller_id_in_use_naming_a_ringing_dial_refuses_that_dial_too() -> None:
    async with (
        FakePinecall(script={PHONES[0]: ["silence"]}) as fake,
        running(fake, phone_numbers=[CALLER, CALLER_2], clock=ManualClock()) as agent,
    ):
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                dials = Dials(agent, tg)
                dials.start(PHONES[0])
                await fake.wait_sent("call.dialing")
                await fake.send(
                    {
                        "event": "error",
                        "agent_id": "dialer",
                        "call_id": "call-1",
                        "phone": CALLER,
                        "code": "PHONE_IN_USE",
                        "error": "the caller id is in use",
                    }
                )
        with pytest.raises(DialRejected, match="caller_id_in_use"):
            await agent.dial(request(PHONES[1], 1, from_=CALLER))
    refused = dials.outcomes[PHONES[0]]
    assert isinstance(refused, DialRejected)
    assert refused.reason == "phone_in_use"


async def test_a_caller_id_in_use_elsewhere_is_dropped_and_never_dialed_from(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = ManualClock()
    async with (
        FakePinecall(phones_in_use={CALLER}, clock=clock) as fake,
        running(fake, phone_numbers=[CALLER, CALLER_2], ping_interval=1000) as agent,
    ):
        with anyio.fail_after(5):
            other = {"event": "error", "code": "PHONE_IN_USE", "agent_id": "dialer"}
            await fake.send({**other, "phone": "+13185550177"})  # not one of ours
            await fake.flush()  # both PHONE_IN_USE have been read
            with pytest.raises(DialRejected, match="caller_id_in_use"):
                await agent.dial(request(PHONES[0], from_=CALLER))
            call = await agent.dial(request(PHONES[1], 1))  # the default: the usable number
            await call.wait()
            await fake.drop()
            await clock.wait_until(lambda: (clock.next_deadline or 99) < 2)
            clock.advance_to_next()  # reconnect
            await fake.wait_for("agent.create", 2)
            await fake.flush()
    assert [(r.frame["to"], r.frame["from"]) for r in fake.received("call.dial")] == [
        (PHONES[1], CALLER_2)
    ]
    channels = [(r.connection, r.frame["ref"]) for r in fake.received("channel.add")]
    assert channels == [(1, CALLER), (1, CALLER_2), (2, CALLER_2)]  # not offered again
    assert [r.code for r in fake.refusals] == ["PHONE_IN_USE"]
    assert f"pinecall.phone_in_use agent=dialer phone={CALLER}: another agent" in caplog.text
    assert "pinecall.phone_in_use agent=dialer phone=+13185550177 (not ours)" in caplog.text


@pytest.mark.parametrize(
    ("numbers", "caller", "reason"),
    [([], None, "no_caller_id"), ([CALLER], "+13185550199", "unknown_caller_id")],
)
async def test_a_dial_without_a_registered_caller_id_is_refused_before_anything_is_sent(
    numbers: list[str], caller: str | None, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR)
    async with FakePinecall() as fake, running(fake, phone_numbers=numbers) as agent:
        with anyio.fail_after(5), pytest.raises(DialRejected) as refused:
            await agent.dial(request(PHONES[0], from_=caller))
        await fake.flush()
    assert refused.value.reason == reason
    assert fake.received("call.dial") == []
    assert fake.refusals == []
    assert f"pinecall.dial_refused dispatch_id=attempt-0 reason={reason}" in caplog.text


async def test_a_call_that_starts_right_after_an_unattributable_error_is_returned() -> None:
    async with (
        FakePinecall(script={PHONES[0]: ["silence"]}, send_dialing=False) as fake,
        running(fake, clock=ManualClock()) as agent,
    ):
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                dials = Dials(agent, tg)
                dials.start(PHONES[0])
                await fake.wait_for("call.dial")
                # Both frames are written before the agent reads either: it handles them in one
                # go, so dial() wakes up to a dial that was made unknown and then started.
                await fake.send(error())
                await fake.send({"event": "call.started", "call_id": "c", "to": PHONES[0]})
    assert isinstance(dials.outcomes[PHONES[0]], Call)
