"""The fake Pinecall server is as strict as the platform: these are the mistakes it catches,
shown with a raw WebSocket client (the agent itself never makes them)."""

from __future__ import annotations

import json
from typing import Any

import anyio
import pytest
from websockets.asyncio.client import ClientConnection, connect

from dispatch.pinecall_fake import ToolCall
from dispatch.testing import Answer, FakePinecall
from tests.support import PHONES

pytestmark = pytest.mark.anyio

CALLER = "+13185550100"


async def ask(ws: ClientConnection, frame: dict[str, Any]) -> dict[str, Any]:
    await ws.send(json.dumps(frame))
    answer = json.loads(await ws.recv())
    assert isinstance(answer, dict)
    return answer


async def test_it_refuses_what_comes_before_registration_or_from_an_unknown_number() -> None:
    dial = {"event": "call.dial", "agent_id": "Dialer_Bot", "to": PHONES[0], "from": CALLER}
    async with FakePinecall(phones_in_use={"+13185550109"}) as fake:
        with anyio.fail_after(5):
            async with connect(f"{fake.url}/client") as ws:
                assert (await ask(ws, {"event": "connect", "api_key": fake.api_key}))["event"] == (
                    "connected"
                )
                early = await ask(ws, dial)
                channel = {"event": "channel.add", "agent_id": "Dialer_Bot", "type": "phone"}
                early_channel = await ask(ws, {**channel, "ref": CALLER})
                created = await ask(ws, {"event": "agent.create", "agent_id": "Dialer_Bot"})
                stranger = await ask(ws, dial)
                in_use = await ask(ws, {**channel, "ref": "+13185550109"})
                added = await ask(ws, {**channel, "ref": CALLER})
                vars_ = {"event": "history.set_vars", "call_id": "call-9", "vars": {"a": 1}}
                not_started = await ask(ws, {**vars_, "request_id": "r1"})
                dialing = await ask(ws, dial)  # now it goes through
    assert (early["event"], early["code"]) == ("error", "AGENT_NOT_REGISTERED")
    assert "call_id" not in early  # no call exists: the refusal names none
    assert early_channel["code"] == "AGENT_NOT_REGISTERED"
    assert created == {"event": "agent.created", "agent_id": "dialer-bot"}
    assert (stranger["code"], stranger["agent_id"]) == ("UNKNOWN_CALLER_ID", "dialer-bot")
    assert (in_use["code"], in_use["phone"]) == ("PHONE_IN_USE", "+13185550109")
    assert added == {
        "event": "channel.added",
        "agent_id": "dialer-bot",
        "type": "phone",
        "ref": CALLER,
    }
    assert not_started["event"] == "history.updated"
    assert not_started["request_id"] == "r1"
    assert "error" in not_started
    assert dialing["event"] == "call.dialing"
    assert [(r.connection, r.code, r.frame["event"]) for r in fake.refusals] == [
        (1, "AGENT_NOT_REGISTERED", "call.dial"),
        (1, "AGENT_NOT_REGISTERED", "channel.add"),
        (1, "UNKNOWN_CALLER_ID", "call.dial"),
        (1, "PHONE_IN_USE", "channel.add"),
        (1, "NO_SUCH_CALL", "history.set_vars"),
    ]


@pytest.mark.parametrize(
    ("echo", "where"),
    [
        (None, {"call.started"}),
        (True, {"call.dialing", "call.started", "call.ended"}),
        (False, set()),
    ],
)
async def test_metadata_is_echoed_on_call_started_only_unless_asked(
    echo: bool | None, where: set[str]
) -> None:
    dial = {"event": "call.dial", "agent_id": "dialer", "to": PHONES[0], "from": CALLER}
    tool = ToolCall("confirm", {"a": 1}, msg_key="message_id", spelling="function")
    async with FakePinecall(
        echo_metadata=echo, script={PHONES[0]: [Answer(tool_calls=[tool])]}
    ) as fake:
        with anyio.fail_after(5):
            async with connect(f"{fake.url}/client") as ws:
                await ask(ws, {"event": "connect", "api_key": fake.api_key})
                await ask(ws, {"event": "agent.create", "agent_id": "dialer"})
                await ask(ws, {"event": "channel.add", "agent_id": "dialer", "ref": CALLER})
                await ws.send(json.dumps({**dial, "metadata": {"dispatch_id": "d1"}}))
                await fake.wait_sent("call.ended")
    events = {r.event: r.frame for r in fake.sent}
    assert {event for event, frame in events.items() if "metadata" in frame} == where
    assert events["llm.tool_call"] == {
        "event": "llm.tool_call",
        "agent_id": "dialer",
        "call_id": "call-1",
        "message_id": "msg-call-1-0",
        "tool_calls": [
            {
                "id": "tc-call-1-0",
                "type": "function",
                "function": {"name": "confirm", "arguments": {"a": 1}},
            }
        ],
    }
    assert isinstance(events["call.ended"]["started_at"], float)
