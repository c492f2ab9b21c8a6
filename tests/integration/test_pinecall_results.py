"""PinecallAgent's result tools, call ends and per-call options, against the fake Pinecall
server over real sockets on 127.0.0.1."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

import anyio
import pytest

from dispatch import DialRequest, DialUnknown
from dispatch.abc import AgentContext, CallResult, LateOutcome
from dispatch.agents.pinecall import PinecallAgent
from dispatch.pinecall_fake import ToolCall
from dispatch.results import ResultTool
from dispatch.testing import Answer, FakePinecall, ManualClock, Signal
from tests.integration.test_pinecall import CALLER, running
from tests.support import PHONES

pytestmark = pytest.mark.anyio

CONFIRM = ResultTool(
    "confirm_appointment",
    "Report whether the callee keeps the appointment.",
    {
        "type": "object",
        "properties": {
            "status": {"enum": ["confirmed", "cancelled"]},
            "notes": {"type": "string"},
        },
        "required": ["status"],
        "additionalProperties": False,
    },
)
CALL_BACK = ResultTool(
    "call_back",
    "The callee asks to be called back.",
    {"type": "object", "properties": {"at": {"type": "string"}}, "required": ["at"]},
)
TOOLS = [CONFIRM, CALL_BACK]
MESSAGES = [{"role": "assistant", "content": "Hi Ada"}, "noise", {"role": "user", "content": "Yes"}]


def request(to: str, n: int = 0, **fields: Any) -> DialRequest:
    return DialRequest(to=to, dispatch_id=f"attempt-{n}", **fields)


def by_msg(fake: FakePinecall) -> dict[str, list[dict[str, Any]]]:
    return {frame["msg_id"]: frame["results"] for frame in fake.tool_results}


async def test_tool_calls_are_answered_once_and_valid_ones_end_up_on_the_call_end(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = ManualClock()
    answer = Answer(
        talk=30,
        tool_calls=[
            ToolCall("confirm_appointment", '{"status": "confirmed"}', msg_id="m1", times=2),
            ToolCall(
                "confirm_appointment",
                {"status": "maybe"},
                msg_id="m2",
                msg_key="message_id",
                spelling="function",
            ),
            ToolCall("confirm_appointment", '{"status": ', msg_id="m3"),
            ToolCall("reschedule", "{}", msg_id="m4"),
            ToolCall(
                "call_back",
                {"at": "2026-01-06T10:00"},
                msg_id="m5",
                msg_key="message_id",
                spelling="function",
                times=3,
            ),
        ],
        messages=MESSAGES,
        session_timeout="max_duration",
    )
    caplog.set_level(logging.DEBUG, logger="dispatch.agents.pinecall")
    async with (
        FakePinecall(script={PHONES[0]: [answer]}, clock=clock) as fake,
        running(fake, tools=TOOLS, ping_interval=1000, dial_timeout=100) as agent,
    ):
        with anyio.fail_after(10):
            call = await agent.dial(request(PHONES[0]))
            await fake.wait_for("llm.tool_result", 5)
            await clock.wait_until(lambda: 30.0 in clock.deadlines)
            clock.advance(30)
            end = await call.wait()
            await fake.flush()  # anything more the agent sent has arrived by now

    wall = clock.now() - timedelta(seconds=30)
    assert [frame["msg_id"] for frame in fake.tool_results] == ["m1", "m2", "m3", "m4", "m5"]
    assert {frame["call_id"] for frame in fake.tool_results} == {call.id}
    results = by_msg(fake)
    assert results["m1"] == [{"tool_call_id": f"tc-{call.id}-0", "result": {"ok": True}}]
    assert results["m5"] == [{"tool_call_id": f"tc-{call.id}-4", "result": {"ok": True}}]
    invalid = {msg: results[msg][0]["result"]["error"] for msg in ("m2", "m3", "m4")}
    assert "status" in invalid["m2"]
    assert "'maybe' is not one of" in invalid["m2"]
    assert "not valid JSON" in invalid["m3"]
    assert "unknown tool 'reschedule'" in invalid["m4"]
    assert "confirm_appointment, call_back" in invalid["m4"]  # the model learns what exists

    assert end.results == (
        CallResult("confirm_appointment", {"status": "confirmed"}, wall),
        CallResult("call_back", {"at": "2026-01-06T10:00"}, wall),
    )
    assert end.transcript == (MESSAGES[0], MESSAGES[2])
    assert (end.reason, end.duration) == ("hangup", 30.0)
    assert (end.started_at, end.ended_at) == (wall, wall + timedelta(seconds=30))
    assert end.started_at is not None
    assert end.started_at.utcoffset() == timedelta(0)

    invalid_logs = [r.getMessage() for r in caplog.records if "tool_call_invalid" in r.getMessage()]
    assert len(invalid_logs) == 3
    assert f"call_id={call.id} tool=reschedule error=unknown tool" in invalid_logs[2]
    assert f"pinecall.session_timeout call_id={call.id} reason=max_duration" in caplog.text
    assert fake.api_key not in caplog.text


async def test_tool_calls_for_a_call_no_dial_owns_are_not_answered() -> None:
    stray = {
        "event": "llm.tool_call",
        "agent_id": "dialer",
        "call_id": "someone-elses-call",
        "msg_id": "m1",
        "tool_calls": [{"id": "t1", "name": "confirm_appointment", "arguments": "{}"}],
    }
    async with FakePinecall() as fake, running(fake, tools=TOOLS) as agent:
        with anyio.fail_after(5):
            call = await agent.dial(request(PHONES[0]))
            await call.wait()  # the call is over: its id is nobody's now
            await fake.send(stray)
            await fake.send({**stray, "call_id": call.id})
            await fake.flush()
    assert fake.tool_results == []


async def test_a_call_given_up_on_reports_its_results_and_transcript_when_it_ends() -> None:
    clock = ManualClock()
    answer = Answer(
        ring=10,
        talk=5,
        tool_calls=[ToolCall("confirm_appointment", '{"status": "cancelled"}')],
        messages=MESSAGES,
    )
    late: list[LateOutcome] = []
    reported = Signal()

    def report(outcome: LateOutcome) -> None:
        late.append(outcome)
        reported.notify()

    async with FakePinecall(script={PHONES[0]: [answer]}, clock=clock) as fake:
        agent = PinecallAgent(
            url=fake.url,
            api_key=fake.api_key,
            agent_id="dialer",
            phone_numbers=[CALLER],
            tools=TOOLS,
            clock=clock,
            dial_timeout=5,
            ping_interval=1000,
        )
        await agent.open(AgentContext(report_late=report))
        try:
            with anyio.fail_after(10):
                async with anyio.create_task_group() as tg:

                    async def give_up() -> None:
                        with pytest.raises(DialUnknown):
                            await agent.dial(request(PHONES[0]))

                    tg.start_soon(give_up)
                    await clock.wait_until(lambda: {5.0, 10.0} <= set(clock.deadlines))
                    clock.advance(5)  # dial() gives up
                clock.advance(5)  # ... and the callee answers
                await fake.wait_for("llm.tool_result")
                await clock.wait_until(lambda: 15.0 in clock.deadlines)
                clock.advance(5)
                await reported.wait_until(lambda: len(late) == 2)
        finally:
            await agent.aclose()

    started, ended = late
    assert (started.started, started.reason, started.end) == (True, None, None)
    assert (ended.call_id, ended.reason, ended.duration) == ("call-1", "hangup", 5.0)
    assert ended.end is not None
    assert ended.end.results == (
        CallResult(
            "confirm_appointment", {"status": "cancelled"}, clock.now() - timedelta(seconds=5)
        ),
    )
    assert ended.end.transcript == (MESSAGES[0], MESSAGES[2])
    assert ended.end.ended_at == clock.now()


async def test_an_end_without_timestamps_or_a_message_list_has_none_of_them() -> None:
    calls = []
    async with FakePinecall(script={PHONES[0]: ["silence"]}) as fake, running(fake) as agent:
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:

                async def dial() -> None:
                    calls.append(await agent.dial(request(PHONES[0])))

                tg.start_soon(dial)
                await fake.wait_sent("call.dialing")
                await fake.send({"event": "call.started", "call_id": "call-1"})
            ended = {"event": "call.ended", "call_id": "call-1", "reason": "hangup"}
            await fake.send({**ended, "messages": "not a list", "started_at": "yesterday"})
            end = await calls[0].wait()
    assert (end.results, end.transcript, end.started_at, end.ended_at) == ((), (), None, None)


async def test_prompt_vars_go_in_agent_create_and_in_history_set_vars_once_started(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = ManualClock()
    script = {PHONES[0]: [Answer(ring=5, talk=1)], PHONES[1]: [Answer()]}
    async with (
        FakePinecall(script=script, clock=clock) as fake,
        running(
            fake, vars={"company": "Pine Dental"}, ping_interval=1000, dial_timeout=100
        ) as agent,
    ):
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:

                async def dial() -> None:
                    call = await agent.dial(
                        request(PHONES[0], prompt_vars={"name": "Ada"}, config={"voice": "x"})
                    )
                    assert call.id == "call-1"

                tg.start_soon(dial)
                await clock.wait_until(lambda: 5.0 in clock.deadlines)  # ringing
                await fake.flush()
                assert fake.received("history.set_vars") == []  # not before it started
                clock.advance(5)
            await fake.wait_for("history.set_vars")
            await agent.dial(request(PHONES[1], 1))  # no prompt vars: no frame
            await fake.flush()
            await fake.send({"event": "history.updated", "call_id": "call-1", "error": "no llm"})
            await fake.flush()

    create = fake.received("agent.create")[0].frame
    assert create["vars"] == {"company": "Pine Dental"}
    dial = fake.received("call.dial")[0].frame
    assert dial["config"] == {"voice": "x"}  # the vars are not smuggled into config
    assert "config" not in fake.received("call.dial")[1].frame
    (set_vars,) = (r.frame for r in fake.received("history.set_vars"))
    assert set_vars == {
        "event": "history.set_vars",
        "call_id": "call-1",
        "request_id": "vars-attempt-0",
        "vars": {"name": "Ada"},
    }
    assert fake.refusals == []
    assert "pinecall.set_vars_refused call_id=call-1 error=no llm" in caplog.text


async def test_result_tools_are_registered_in_the_function_shape_the_sdk_sends() -> None:
    async with FakePinecall() as fake, running(fake, tools=TOOLS):
        pass
    create = fake.received("agent.create")[0].frame
    assert create["tools"] == [
        {"type": "function", "function": tool.spec()} for tool in (CONFIRM, CALL_BACK)
    ]
    assert create["tools"][0]["function"]["name"] == "confirm_appointment"
    assert "vars" not in create


@pytest.mark.parametrize(
    ("default", "asked", "sent"),
    [(None, None, "absent"), (None, True, True), (True, None, True), (True, False, False)],
)
async def test_detect_turn_end_is_a_dial_option(
    default: bool | None, asked: bool | None, sent: bool | str
) -> None:
    async with FakePinecall() as fake, running(fake, detect_turn_end=default) as agent:
        with anyio.fail_after(5):
            await agent.dial(request(PHONES[0], detect_turn_end=asked))
    frame = fake.received("call.dial")[0].frame
    assert frame.get("detect_turn_end", "absent") == sent
    assert "detect_turn_end" not in frame.get("config", {})
