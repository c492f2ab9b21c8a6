"""A fake Pinecall server (the SDK 0.14 socket protocol) for tests: a real WebSocket server on
127.0.0.1, path ``/client``, JSON frames, with outcomes scripted per destination number.

    async with FakePinecall(script={"+14155552671": ["busy", Answer(ring=2, talk=30)]}) as fake:
        agent = PinecallAgent(url=fake.url, api_key=fake.api_key, agent_id="dialer", ...)

Outcomes (a string or an object per dial of a number, in order; then ``default``):
``"answer"`` / :class:`Answer` (``call.started`` after ``ring`` s, ``call.ended hangup`` after
``talk`` s more), ``"busy"``, ``"no-answer"``, ``"no_answer"``, ``"failed"``, ``"canceled"``
(``call.ended`` with that reason, never started), ``"call.error"``, ``"error"`` (an agent-scoped
``error`` frame refusing the dial), ``"silence"`` (``call.dialing`` and then nothing),
``"drop"`` (close the socket as soon as the dial arrives) and ``"half-open"`` (stop answering
anything, pings included, without closing). Delays run on ``clock`` (a
:class:`~dispatch.testing.ManualClock` in tests).

Quirks: ``agent_prefix`` (agent ids echoed as ``org:slug``), ``echo_metadata``,
``send_dialing`` (``call.started`` without ``call.dialing``), ``duplicate`` (every call event
twice), ``reorder`` (``call.dialing`` sent after the event that follows it),
``registration_errors`` (the next ``agent.create`` frames answered with these error frames).
Faults and control: :meth:`drop` (close every connection, with a code and reason),
:meth:`send` (push any frame), scripted ``"drop"`` and ``"half-open"``, a wrong API key.
``transcript`` holds every frame received, with the connection it came on.
"""

from __future__ import annotations

import json
import logging
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

import anyio
from anyio.abc import TaskGroup
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from .clock import Clock, SystemClock

__all__ = ["Answer", "FakePinecall", "Received"]

logger = logging.getLogger(__name__)

REJECTIONS = frozenset({"busy", "no-answer", "no_answer", "failed", "canceled"})


@dataclass(frozen=True, slots=True)
class Answer:
    """The callee answers after ``ring`` seconds and the call ends after ``talk`` more."""

    ring: float = 0.0
    talk: float = 0.0
    reason: str = "hangup"


@dataclass(frozen=True, slots=True)
class Received:
    """One frame the fake received: which connection (1, 2, ...) and the decoded frame."""

    connection: int
    frame: dict[str, Any]

    @property
    def event(self) -> str | None:
        event = self.frame.get("event")
        return event if isinstance(event, str) else None


@dataclass(slots=True)
class _Connection:
    number: int
    ws: ServerConnection
    half_open: bool = False
    tasks: TaskGroup | None = None


@dataclass(slots=True)
class FakePinecall:
    api_key: str = "pk_test_fake"
    script: Mapping[str, Iterable[str | Answer]] = field(default_factory=dict)
    default: str | Answer = "answer"
    clock: Clock = field(default_factory=SystemClock)
    org_id: str = "org_test"
    agent_prefix: bool = False
    echo_metadata: bool = True
    send_dialing: bool = True
    duplicate: bool = False
    reorder: bool = False
    registration_errors: list[dict[str, Any]] = field(default_factory=list)
    transcript: list[Received] = field(default_factory=list)
    url: str = ""
    _queues: dict[str, deque[str | Answer]] = field(default_factory=dict)
    _server: Server | None = None
    _connections: list[_Connection] = field(default_factory=list)
    calls: dict[str, str] = field(default_factory=dict)  # call id -> destination number
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
    def connections(self) -> int:
        """How many connections have been accepted so far."""
        return self._accepted

    async def wait_for(self, event: str, count: int = 1) -> None:
        """Return once ``count`` frames of ``event`` have been received."""
        while len(self.received(event)) < count:
            if self._changed is None:
                self._changed = anyio.Event()
            await self._changed.wait()

    async def drop(self, code: int = 1011, reason: str = "gone") -> None:
        """Close every open connection, as a network failure would (or, with a reason such as
        ``"displaced by another client"``, as the platform does)."""
        for connection in list(self._connections):
            await connection.ws.close(code, reason)

    async def send(self, frame: dict[str, Any]) -> None:
        """Send ``frame`` on every open connection (a late report, an unsolicited event)."""
        for connection in list(self._connections):
            await self._send(connection, frame)

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
        await self._send(connection, {"event": "connected", "org_id": self.org_id})
        async for raw in ws:
            frame = self._record(connection, raw)
            if connection.half_open:
                continue
            await self._handle(connection, frame)

    async def _handle(self, connection: _Connection, frame: dict[str, Any]) -> None:
        event = frame.get("event")
        if event == "ping":
            await self._send(
                connection, {"event": "pong", "timestamp": self.clock.now().timestamp()}
            )
        elif event == "agent.create":
            if self.registration_errors:
                await self._send(connection, {"event": "error", **self.registration_errors.pop(0)})
            else:
                await self._send(
                    connection, {"event": "agent.created", "agent_id": self._agent(frame)}
                )
        elif event == "call.dial":
            assert connection.tasks is not None
            connection.tasks.start_soon(self._dial, connection, frame)
        elif event in ("channel.add", "channel.remove", "call.hangup", "pong"):
            pass  # recorded in the transcript; nothing to answer
        else:
            logger.info("fake_pinecall.ignored event=%s", event)

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
        self._calls += 1
        call_id = f"call-{self._calls}"
        self.calls[call_id] = to
        base: dict[str, Any] = {
            "agent_id": self._agent(frame),
            "call_id": call_id,
            "to": to,
            "from": frame.get("from"),
        }
        if self.echo_metadata and frame.get("metadata") is not None:
            base["metadata"] = frame["metadata"]
        if self.send_dialing:
            await self._call_event(connection, "call.dialing", base)
        if outcome == "silence":
            return
        answer = (
            outcome if isinstance(outcome, Answer) else Answer() if outcome == "answer" else None
        )
        await self._sleep(answer.ring if answer else 0.0)
        if answer is None:
            await self._refuse(connection, str(outcome), base)
            return
        session = {"session_id": f"sess-{call_id}", "direction": "outbound", "transport": "phone"}
        await self._call_event(connection, "call.started", {**base, **session})
        await self._sleep(answer.talk)
        ended = {"reason": answer.reason, "duration_seconds": answer.talk}
        await self._call_event(connection, "call.ended", {**base, **session, **ended})

    async def _refuse(self, connection: _Connection, outcome: str, base: dict[str, Any]) -> None:
        if outcome in REJECTIONS:
            ended = {"reason": outcome, "duration_seconds": 0}
            await self._call_event(connection, "call.ended", {**base, **ended})
        elif outcome == "call.error":
            error = {"error": "carrier error", "code": "CARRIER_ERROR"}
            await self._call_event(
                connection,
                "call.error",
                {"agent_id": base["agent_id"], "call_id": base["call_id"], **error},
            )
        elif outcome == "error":
            refusal = {
                "error": "dial refused",
                "code": "DIAL_REFUSED",
                "agent_id": base["agent_id"],
            }
            await self._send(connection, {"event": "error", **refusal})
        else:
            raise ValueError(f"unknown scripted outcome {outcome!r}")

    async def _call_event(self, connection: _Connection, event: str, body: dict[str, Any]) -> None:
        for _ in range(2 if self.duplicate else 1):
            await self._send(connection, {"event": event, **body})

    async def _send(self, connection: _Connection, frame: dict[str, Any]) -> None:
        await connection.ws.send(json.dumps(frame))

    async def _sleep(self, seconds: float) -> None:
        if seconds > 0:
            await self.clock.sleep_until(self.clock.monotonic() + seconds)

    def _agent(self, frame: dict[str, Any]) -> str:
        slug = str(frame.get("agent_id"))
        return f"{self.org_id}:{slug}" if self.agent_prefix else slug

    def _record(self, connection: _Connection, raw: str | bytes) -> dict[str, Any]:
        frame = json.loads(raw)
        self.transcript.append(Received(connection.number, frame))
        if self._changed is not None:
            self._changed.set()
            self._changed = None
        return frame if isinstance(frame, dict) else {}
