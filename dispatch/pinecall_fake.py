"""A fake Pinecall server (the SDK 0.14 socket protocol) for tests: a real WebSocket server on
127.0.0.1, path ``/client``, JSON frames, with outcomes scripted per destination number.

    async with FakePinecall(script={"+14155552671": ["busy", Answer(ring=2, talk=30)]}) as fake:
        agent = PinecallAgent(url=fake.url, api_key=fake.api_key, agent_id="dialer", ...)

It is as strict as the platform is known to be: ``channel.add`` and ``call.dial`` before the
agent's ``agent.create`` was answered on that connection, a dial ``from`` a number that was not
added with ``channel.add`` (or that another agent holds: ``phones_in_use``) and
``history.set_vars`` for a call that has not started are refused with an ``error`` frame (or a
``history.updated`` carrying ``error``), and each refusal is kept in ``refusals``. Agent ids
are echoed slugified, as the server stores them (``Dialer_Bot`` comes back ``dialer-bot``).

Outcomes (a string or an object per dial of a number, in order; then ``default``):
``"answer"`` / :class:`Answer` (``call.started`` after ``ring`` s, then the answer's tool
calls, ``call.ended`` after ``talk`` s more with ``started_at`` / ``ended_at`` and the answer's
``messages``), ``"busy"``, ``"no-answer"``, ``"no_answer"``, ``"failed"``, ``"canceled"``
(``call.ended`` with that reason, never started), ``"call.error"``, ``"error"`` (an
agent-scoped ``error`` frame refusing the dial before any call exists: it names no call),
``"error-with-call-id"`` (``call.dialing``, then an ``error`` frame naming that call),
``"silence"`` (``call.dialing`` and then nothing), ``"drop"`` (close the socket as soon as the
dial arrives) and ``"half-open"`` (stop answering anything, pings included, without closing).
Delays run on ``clock`` (a :class:`~dispatch.testing.ManualClock` in tests).

Quirks: ``agent_prefix`` (agent ids echoed as ``org:slug``), ``echo_metadata`` (None, the
default: the dial's metadata on ``call.started`` only, as the SDK documents; True: on every call
event, ``call.dialing`` included; False: never), ``send_dialing`` (False: ``call.started``
without ``call.dialing``), ``duplicate`` (every call event twice), ``reorder`` (``call.dialing``
sent after the event that follows it), ``authenticated_first`` (an ``authenticated`` frame
before ``connected``), ``registration_errors`` (the next ``agent.create`` frames answered with
these error frames). Faults and control: :meth:`drop` (close every connection, with a code and
reason), :meth:`send` (push any frame), :meth:`flush` (a ping round trip: everything the client
sent before it has arrived), scripted ``"drop"`` and ``"half-open"``, a wrong API key.
``transcript`` holds every frame received, with the connection it came on (``tool_results``:
the ``llm.tool_result`` frames among them), ``sent`` every frame sent (:meth:`wait_sent`).
"""

from __future__ import annotations

import json
import logging
import re
from collections import deque
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, Self

import anyio
from anyio.abc import TaskGroup
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from .clock import Clock, SystemClock

__all__ = ["Answer", "FakePinecall", "Received", "Refusal", "ToolCall"]

logger = logging.getLogger(__name__)

REJECTIONS = frozenset({"busy", "no-answer", "no_answer", "failed", "canceled"})


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One ``llm.tool_call`` frame the fake sends once the call is answered: the model calls
    ``name`` with ``arguments`` (a JSON string, as the SDK expects, or an object). The frame is
    sent ``times`` times with the same message id (the server may repeat it), spelled either
    way the SDK reads: ``msg_id`` or ``message_id``, ``{id, name, arguments}`` (``"flat"``) or
    ``{id, function: {name, arguments}}`` (``"function"``)."""

    name: str
    arguments: str | Mapping[str, Any] = "{}"
    msg_id: str | None = None  # default: msg-<call id>-<n>
    times: int = 1
    msg_key: Literal["msg_id", "message_id"] = "msg_id"
    spelling: Literal["flat", "function"] = "flat"

    def frame(self, agent_id: str, call_id: str, n: int) -> dict[str, Any]:
        item: dict[str, Any] = {"id": f"tc-{call_id}-{n}"}
        if self.spelling == "function":
            item["type"] = "function"
            item["function"] = {"name": self.name, "arguments": self.arguments}
        else:
            item.update(name=self.name, arguments=self.arguments)
        return {
            "event": "llm.tool_call",
            "agent_id": agent_id,
            "call_id": call_id,
            self.msg_key: self.msg_id or f"msg-{call_id}-{n}",
            "tool_calls": [item],
        }


@dataclass(frozen=True, slots=True)
class Answer:
    """The callee answers after ``ring`` seconds and the call ends after ``talk`` more, with
    ``reason``. Meanwhile the model makes ``tool_calls`` (sent right after ``call.started``);
    ``messages`` is the transcript sent on ``call.ended`` (anything, to test what a client
    keeps); ``session_timeout`` sends ``session.timeout`` with that reason before the end."""

    ring: float = 0.0
    talk: float = 0.0
    reason: str = "hangup"
    tool_calls: Sequence[ToolCall] = ()
    messages: Sequence[Any] = ()
    session_timeout: str | None = None


@dataclass(frozen=True, slots=True)
class Received:
    """One frame the fake received (or sent): which connection (1, 2, ...), the decoded
    frame, and when (the fake's clock, monotonic): the platform's own timeline of calls."""

    connection: int
    frame: dict[str, Any]
    at: float = 0.0

    @property
    def event(self) -> str | None:
        event = self.frame.get("event")
        return event if isinstance(event, str) else None


@dataclass(frozen=True, slots=True)
class Refusal:
    """A frame the fake refused (on ``connection``), and the ``code`` it answered with."""

    connection: int
    code: str
    frame: dict[str, Any]


@dataclass(slots=True)
class _Connection:
    number: int
    ws: ServerConnection
    half_open: bool = False
    tasks: TaskGroup | None = None
    agents: set[str] = field(default_factory=set)  # slugs registered on this connection
    channels: set[tuple[str, str]] = field(default_factory=set)  # (slug, phone) added


def _slug(value: object) -> str:
    """How the server stores an agent id (SDK ``src/protocol/id-resolver.ts``)."""
    slug = re.sub(r"[_\s]+", "-", str(value).strip().lower())
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "", slug)).strip("-")


@dataclass(slots=True)
class FakePinecall:
    api_key: str = "pk_test_fake"
    script: Mapping[str, Iterable[str | Answer]] = field(default_factory=dict)
    default: str | Answer = "answer"
    clock: Clock = field(default_factory=SystemClock)
    org_id: str = "org_test"
    agent_prefix: bool = False
    echo_metadata: bool | None = None
    send_dialing: bool = True
    duplicate: bool = False
    reorder: bool = False
    authenticated_first: bool = False
    phones_in_use: Collection[str] = ()
    registration_errors: list[dict[str, Any]] = field(default_factory=list)
    transcript: list[Received] = field(default_factory=list)
    refusals: list[Refusal] = field(default_factory=list)
    sent: list[Received] = field(default_factory=list)  # every frame sent, for waiting on
    url: str = ""
    _queues: dict[str, deque[str | Answer]] = field(default_factory=dict)
    _server: Server | None = None
    _connections: list[_Connection] = field(default_factory=list)
    calls: dict[str, str] = field(default_factory=dict)  # call id -> destination number
    _started: set[str] = field(default_factory=set)  # call ids that were answered
    _accepted: int = 0
    _calls: int = 0
    _changed: anyio.Event | None = None

    async def __aenter__(self) -> Self:
        self._queues = {to: deque(outcomes) for to, outcomes in self.script.items()}
        self._server = await serve(self._serve, "127.0.0.1", 0, ping_interval=None)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"ws://127.0.0.1:{port}"
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._server is not None
        self._server.close()
        with anyio.CancelScope(shield=True):
            await self._server.wait_closed()

    # -- what tests look at and do -------------------------------------------------------------

    def received(self, event: str) -> list[Received]:
        return [r for r in self.transcript if r.event == event]

    @property
    def tool_results(self) -> list[dict[str, Any]]:
        """Every ``llm.tool_result`` frame received, in order."""
        return [r.frame for r in self.received("llm.tool_result")]

    @property
    def connections(self) -> int:
        """How many connections have been accepted so far."""
        return self._accepted

    async def wait_for(self, event: str, count: int = 1) -> None:
        """Return once ``count`` frames of ``event`` have been received."""
        await self.wait_until(lambda: len(self.received(event)) >= count)

    async def wait_sent(self, event: str, count: int = 1) -> None:
        """Return once the fake has sent ``count`` frames of ``event`` (on any connection)."""
        await self.wait_until(lambda: sum(r.event == event for r in self.sent) >= count)

    async def flush(self) -> None:
        """Send a ``ping`` on every open connection and return once each has answered it:
        every frame the client sent before reading the ping (for one that handles frames in
        order, everything it did about the frames sent before) has then been received."""
        for connection in list(self._connections):
            pongs = self._pongs(connection.number)
            await self._send(connection, {"event": "ping"})
            number = connection.number
            await self.wait_until(lambda: self._pongs(number) > pongs)  # noqa: B023 - awaited here

    async def drop(self, code: int = 1011, reason: str = "gone") -> None:
        """Close every open connection, as a network failure would (or, with a reason such as
        ``"displaced by another client"``, as the platform does)."""
        for connection in list(self._connections):
            await connection.ws.close(code, reason)

    async def send(self, frame: dict[str, Any]) -> None:
        """Send ``frame`` on every open connection (a late report, an unsolicited event)."""
        for connection in list(self._connections):
            await self._send(connection, frame)

    def _pongs(self, connection: int) -> int:
        return sum(1 for r in self.received("pong") if r.connection == connection)

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Return once ``predicate()`` holds; it is checked as each frame is received or
        sent (so a test acts at the very frame it waits for, before the fake's next)."""
        while not predicate():
            if self._changed is None:
                self._changed = anyio.Event()
            await self._changed.wait()

    # -- the server ----------------------------------------------------------------------------

    async def _serve(self, ws: ServerConnection) -> None:
        if ws.request is None or ws.request.path != "/client":
            await ws.close(1008, "no such path")
            return
        self._accepted += 1
        connection = _Connection(self._accepted, ws)
        self._connections.append(connection)
        try:
            async with anyio.create_task_group() as tasks:
                connection.tasks = tasks
                await self._converse(connection)
                tasks.cancel_scope.cancel()
        except* ConnectionClosed:
            pass  # the client went away, or a test dropped the connection
        finally:
            self._connections.remove(connection)

    async def _converse(self, connection: _Connection) -> None:
        ws = connection.ws
        first = self._record(connection, await ws.recv())
        if first.get("event") != "connect" or first.get("api_key") != self.api_key:
            await self._send(
                connection, {"event": "error", "error": "invalid API key", "code": "AUTH_FAILED"}
            )
            await ws.close(4001, "unauthorized")
            return
        if self.authenticated_first:
            await self._send(connection, {"event": "authenticated", "org_id": self.org_id})
        await self._send(connection, {"event": "connected", "org_id": self.org_id})
        async for raw in ws:
            frame = self._record(connection, raw)
            if connection.half_open:
                continue
            await self._handle(connection, frame)

    async def _handle(self, connection: _Connection, frame: dict[str, Any]) -> None:
        event = frame.get("event")
        slug = _slug(frame.get("agent_id"))
        if event == "ping":
            await self._send(
                connection, {"event": "pong", "timestamp": self.clock.now().timestamp()}
            )
        elif event == "agent.create":
            if self.registration_errors:
                await self._send(connection, {"event": "error", **self.registration_errors.pop(0)})
            else:
                connection.agents.add(slug)
                await self._send(
                    connection, {"event": "agent.created", "agent_id": self._agent(frame)}
                )
        elif event == "channel.add":
            await self._add_channel(connection, frame)
        elif event == "channel.remove":
            connection.channels.discard((slug, str(frame.get("ref"))))
        elif event == "call.dial":
            if slug not in connection.agents:
                await self._refuse(connection, frame, "AGENT_NOT_REGISTERED", "agent not created")
            elif (slug, str(frame.get("from"))) not in connection.channels:
                await self._refuse(connection, frame, "UNKNOWN_CALLER_ID", "from: not a channel")
            else:
                assert connection.tasks is not None
                connection.tasks.start_soon(self._dial, connection, frame)
        elif event == "history.set_vars":
            ack = {"event": "history.updated", "call_id": frame.get("call_id")}
            ack |= {"request_id": frame.get("request_id")}
            if frame.get("call_id") in self._started:
                await self._send(connection, {**ack, "count": 0})
            else:
                self.refusals.append(Refusal(connection.number, "NO_SUCH_CALL", frame))
                await self._send(connection, {**ack, "error": "no live call with this id"})
        elif event in ("call.hangup", "pong", "llm.tool_result"):
            pass  # recorded in the transcript; nothing to answer
        else:
            logger.info("fake_pinecall.ignored event=%s", event)

    async def _add_channel(self, connection: _Connection, frame: dict[str, Any]) -> None:
        slug, ref = _slug(frame.get("agent_id")), str(frame.get("ref"))
        if slug not in connection.agents:
            await self._refuse(connection, frame, "AGENT_NOT_REGISTERED", "agent not created")
        elif ref in self.phones_in_use:
            await self._refuse(connection, frame, "PHONE_IN_USE", "held by another agent", ref)
        else:
            connection.channels.add((slug, ref))
            added = {"agent_id": self._agent(frame), "type": frame.get("type"), "ref": ref}
            await self._send(connection, {"event": "channel.added", **added})

    async def _refuse(
        self,
        connection: _Connection,
        frame: dict[str, Any],
        code: str,
        error: str,
        phone: str | None = None,
    ) -> None:
        self.refusals.append(Refusal(connection.number, code, frame))
        refusal = {"event": "error", "code": code, "error": error, "agent_id": self._agent(frame)}
        await self._send(connection, {**refusal, **({"phone": phone} if phone else {})})

    async def _dial(self, connection: _Connection, frame: dict[str, Any]) -> None:
        to = str(frame.get("to"))
        queue = self._queues.get(to)
        outcome = queue.popleft() if queue else self.default
        if outcome == "drop":
            await connection.ws.close(1011, "dropped mid-dial")
            return
        if outcome == "half-open":
            connection.half_open = True
            return
        agent = self._agent(frame)
        if outcome == "error":  # refused before any call exists, so it names none
            refusal = {"error": "dial refused", "code": "DIAL_REFUSED", "agent_id": agent}
            await self._send(connection, {"event": "error", **refusal})
            return
        self._calls += 1
        call_id = f"call-{self._calls}"
        self.calls[call_id] = to
        events = _CallEvents(self, connection, frame, call_id)
        if self.send_dialing:
            await events.dialing()
        if outcome == "silence":
            await events.flush()
            return
        if outcome == "error-with-call-id":
            refusal = {"error": "dial refused", "code": "DIAL_REFUSED", "agent_id": agent}
            await events.send({"event": "error", **refusal}, base=False)
            return
        answer = (
            outcome if isinstance(outcome, Answer) else Answer() if outcome == "answer" else None
        )
        await self._sleep(answer.ring if answer else 0.0)
        if answer is None:
            await self._unanswered(events, str(outcome))
            return
        started_at = self.clock.now().timestamp()
        session = {"session_id": f"sess-{call_id}", "direction": "outbound", "transport": "phone"}
        await events.send({"event": "call.started", **session}, metadata=True)
        self._started.add(call_id)
        for n, tool_call in enumerate(answer.tool_calls):
            for _ in range(tool_call.times):
                await self._send(connection, tool_call.frame(agent, call_id, n))
        await self._sleep(answer.talk)
        if answer.session_timeout:
            timeout = {"session_id": session["session_id"], "reason": answer.session_timeout}
            await events.send({"event": "session.timeout", **timeout}, base=False)
        ended = {
            "reason": answer.reason,
            "duration_seconds": answer.talk,
            "started_at": started_at,
            "ended_at": self.clock.now().timestamp(),
            **({"messages": list(answer.messages)} if answer.messages else {}),
        }
        await events.send({"event": "call.ended", **session, **ended})

    async def _unanswered(self, events: _CallEvents, outcome: str) -> None:
        if outcome in REJECTIONS:
            await events.send({"event": "call.ended", "reason": outcome, "duration_seconds": 0})
        elif outcome == "call.error":
            error = {"error": "carrier error", "code": "CARRIER_ERROR"}
            await events.send({"event": "call.error", **error}, base=False)
        else:
            raise ValueError(f"unknown scripted outcome {outcome!r}")

    async def _send(self, connection: _Connection, frame: dict[str, Any]) -> None:
        await connection.ws.send(json.dumps(frame))
        self.sent.append(Received(connection.number, frame, self.clock.monotonic()))
        self._changed_now()

    async def _sleep(self, seconds: float) -> None:
        if seconds > 0:
            await self.clock.sleep_until(self.clock.monotonic() + seconds)

    def _agent(self, frame: dict[str, Any]) -> str:
        slug = _slug(frame.get("agent_id"))
        return f"{self.org_id}:{slug}" if self.agent_prefix else slug

    def _record(self, connection: _Connection, raw: str | bytes) -> dict[str, Any]:
        frame = json.loads(raw)
        self.transcript.append(Received(connection.number, frame, self.clock.monotonic()))
        self._changed_now()
        return frame if isinstance(frame, dict) else {}

    def _changed_now(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None


class _CallEvents:
    """The events of one call, with the fake's quirks applied (duplicates, a held-back
    ``call.dialing``, metadata echoed or not)."""

    def __init__(
        self, fake: FakePinecall, connection: _Connection, dial: dict[str, Any], call_id: str
    ) -> None:
        self.fake = fake
        self.connection = connection
        self.base: dict[str, Any] = {
            "agent_id": fake._agent(dial),
            "call_id": call_id,
            "to": dial.get("to"),
            "from": dial.get("from"),
        }
        self.metadata = dial.get("metadata")
        self.held: dict[str, Any] | None = None

    async def dialing(self) -> None:
        frame = {"event": "call.dialing", **self.base, **self._metadata(False)}
        if self.fake.reorder:
            self.held = frame  # sent after the next event
        else:
            await self._emit(frame)

    async def send(
        self, frame: dict[str, Any], *, metadata: bool = False, base: bool = True
    ) -> None:
        """``frame`` with the call's fields (``base``: ``to``/``from`` too, else the agent
        and call id only) and, for ``call.started`` (``metadata``), the dial's metadata."""
        fields = self.base if base else {k: self.base[k] for k in ("agent_id", "call_id")}
        await self._emit({**frame, **fields, **self._metadata(metadata)})
        await self.flush()

    async def flush(self) -> None:
        if self.held is not None:
            held, self.held = self.held, None
            await self._emit(held)

    def _metadata(self, started: bool) -> dict[str, Any]:
        echo = self.fake.echo_metadata
        if self.metadata is None or echo is False or (echo is None and not started):
            return {}
        return {"metadata": self.metadata}

    async def _emit(self, frame: dict[str, Any]) -> None:
        for _ in range(2 if self.fake.duplicate else 1):
            await self.fake._send(self.connection, frame)
