"""PinecallAgent: calls through the Pinecall platform (the SDK 0.14 socket protocol).

One WebSocket to ``{url}/client``: ``connect`` with the API key, ``connected``, then
``agent.create`` with the agent's configuration and a ``channel.add`` per phone number; dials
go out only once the platform has answered ``agent.created`` (or ``agent.resumed``).

What the TypeScript SDK gets wrong and this adapter does not (shared/pinecall-wire.md, A10/D2):

* Each dial carries our own ``dispatch_id`` in ``metadata``. Platform events are matched to a
  dial by call id, then by the echoed ``dispatch_id``, then by destination number (the hub
  never has two dials to one number in flight); an event no dial owns is ignored, never
  taken for another dial's.
* No answer from the platform within ``dial_timeout`` is *unknown*, not failed
  (:class:`~dispatch.errors.DialUnknown`: never retried); a late ``call.started`` /
  ``call.ended`` for it is still reported through :meth:`Agent.report_late`.
* A dial is sent once, on the connection that is up, or not at all. If that connection
  drops, the dial or call is *interrupted* (:class:`~dispatch.errors.DialInterrupted`); it
  is never re-sent after the reconnect.
* A ``ping`` every ``ping_interval``; a socket with no ``pong`` for ``pong_timeout`` is
  declared dead (half-open) and replaced. Reconnects back off 1 s, 2 s, 4 s ... up to 30 s with
  0-25 % jitter, and re-register the agent each time.
* A refused API key or a ``displaced`` agent is fatal (:class:`PinecallFatal`), as are
  registration errors that cannot clear; the hub stops and the daemon exits non-zero.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any, Self

import anyio
from anyio.abc import TaskStatus
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from ..abc import Agent, AgentContext, Call, CallEnd, DialRequest, LateOutcome
from ..clock import Clock, SystemClock, wait_for
from ..errors import DialInterrupted, DialRejected, DialUnknown, DispatchError

__all__ = ["PinecallAgent", "PinecallCall", "PinecallFatal", "normalize_reason"]

logger = logging.getLogger(__name__)

DEFAULT_URL = "wss://voice.pinecall.io"
_REJECTED = {"busy", "no_answer", "failed", "canceled"}
_RETRY_REGISTRATION = {"AGENT_IN_USE", "AGENT_CONFLICT"}
_FATAL_REGISTRATION = {"AGENT_CONFLICT_FATAL", "REGISTRATION_ERROR"}


class PinecallFatal(DispatchError):
    """The platform refused us for good (bad API key, agent displaced, registration refused)."""


class _ConnectionLost(Exception):
    """The socket is gone or silent; reconnect."""


def normalize_reason(reason: object) -> str:
    """``no-answer`` and ``no_answer`` are the same; reasons are lower snake case."""
    return str(reason or "unknown").strip().lower().replace("-", "_").replace(" ", "_")


@dataclass(eq=False, slots=True)
class _Dial:
    request: DialRequest
    connection: int
    call_id: str | None = None
    started: bool = False
    abandoned: bool = False  # dial() gave up waiting (timeout): late events are reconciled
    abandoned_at: float = 0.0
    settled: anyio.Event = field(default_factory=anyio.Event)
    rejection: str | None = None
    lost: bool = False
    ended: anyio.Event = field(default_factory=anyio.Event)
    end: CallEnd | None = None

    def reject(self, reason: str) -> None:
        if not self.settled.is_set():
            self.rejection = reason
            self.settled.set()


class PinecallCall(Call):
    """A call the platform started; :meth:`wait` returns when it ends."""

    def __init__(self, dial: _Dial) -> None:
        assert dial.call_id is not None
        self.id = dial.call_id
        self._dial = dial

    async def wait(self) -> CallEnd:
        await self._dial.ended.wait()
        if self._dial.end is None:
            raise DialInterrupted("connection to Pinecall lost during the call")
        return self._dial.end


class PinecallAgent(Agent):
    """Places calls through Pinecall. ``config`` is the agent's configuration as the platform
    takes it in ``agent.create`` (``voice``, ``language``, ``stt``, ``llm``, ``prompt`` ...);
    ``phone_numbers`` are registered as phone channels, the first is the default caller id.

    :meth:`on` registers extra handlers for any platform event (``fn(frame)``, sync).
    """

    def __init__(
        self,
        *,
        api_key: str,
        agent_id: str,
        url: str = DEFAULT_URL,
        phone_numbers: Sequence[str] = (),
        config: Mapping[str, Any] | None = None,
        dial_timeout: float = 30.0,
        connect_timeout: float = 10.0,
        ping_interval: float = 30.0,
        pong_timeout: float | None = None,
        reconnect_initial: float = 1.0,
        reconnect_max: float = 30.0,
        late_window: float = 3600.0,
        clock: Clock | None = None,
    ) -> None:
        if not api_key:
            raise ValueError("PinecallAgent needs an API key")
        self._api_key = api_key
        self.agent_id = agent_id
        self.url = url.rstrip("/").replace("https://", "wss://").replace("http://", "ws://")
        self.phone_numbers = list(phone_numbers)
        self.config = dict(config or {})
        self.dial_timeout = dial_timeout
        self.connect_timeout = connect_timeout
        self.ping_interval = ping_interval
        self.pong_timeout = pong_timeout if pong_timeout is not None else 2 * ping_interval
        self.reconnect_initial = reconnect_initial
        self.reconnect_max = reconnect_max
        self.late_window = late_window
        self.clock = clock or SystemClock()
        self._handlers: dict[str, list[Callable[[dict[str, Any]], None]]] = {}
        self._ws: ClientConnection | None = None
        self._connection = 0  # number of the current connection (0: none yet)
        self._ready: anyio.Event | None = None
        self._dials: list[_Dial] = []  # pending, live and abandoned dials, oldest first
        self._stack: AsyncExitStack | None = None
        self._last_pong = 0.0

    def __repr__(self) -> str:  # never shows the key
        return f"PinecallAgent(agent_id={self.agent_id!r}, url={self.url!r})"

    def on(self, event: str, handler: Callable[[dict[str, Any]], None]) -> None:
        self._handlers.setdefault(event, []).append(handler)

    # -- life cycle ----------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def open(self, context: AgentContext | None = None) -> None:
        """Connect and register; return once the agent is ready to dial. Raises
        :class:`PinecallFatal` at once for a refused key or registration.

        The connection runs in a task group that ``open()`` enters and :meth:`aclose` leaves:
        call both from the same task with no cancel scope opened in between (the hub does), or
        use ``async with agent:``."""
        await super().open(context)
        self._ready = anyio.Event()
        # The connection runs in a task group entered here and left in aclose(): the hub calls
        # both from its own task, around everything else it runs.
        self._stack = AsyncExitStack()
        tasks = await self._stack.enter_async_context(anyio.create_task_group())
        self._stack.callback(tasks.cancel_scope.cancel)
        try:
            await tasks.start(self._run)
        except BaseException:
            await self._stack.aclose()
            raise

    async def aclose(self) -> None:
        if self._stack is not None:
            stack, self._stack = self._stack, None
            await stack.aclose()

    # -- dialing -------------------------------------------------------------------------------

    async def dial(self, request: DialRequest) -> Call:
        ready = self._ready
        if ready is None:
            raise DialRejected("not_connected")  # nothing was sent: safe to retry
        with anyio.move_on_after(self.dial_timeout):
            await ready.wait()
        ws = self._ws
        if not ready.is_set() or ws is None:
            raise DialRejected("not_connected")
        dial = _Dial(request, self._connection)
        self._dials.append(dial)
        frame = self._dial_frame(request)
        deadline = self.clock.monotonic() + self.dial_timeout
        try:
            await ws.send(json.dumps(frame))
        except ConnectionClosed:
            self._forget(dial)
            raise DialInterrupted("connection to Pinecall lost while sending the dial") from None
        try:
            await self._wait_settled(dial, deadline)
        except TimeoutError:
            dial.abandoned = True
            dial.abandoned_at = self.clock.monotonic()
            raise DialUnknown(
                f"no answer from Pinecall within {self.dial_timeout:g}s (the phone may ring)"
            ) from None
        if dial.lost:  # kept (abandoned) in case the platform reports it after a reconnect
            raise DialInterrupted("connection to Pinecall lost during the dial")
        if dial.rejection is not None:
            self._forget(dial)
            raise DialRejected(dial.rejection)
        return PinecallCall(dial)

    def _dial_frame(self, request: DialRequest) -> dict[str, Any]:
        caller = request.from_ or (self.phone_numbers[0] if self.phone_numbers else None)
        frame: dict[str, Any] = {
            "event": "call.dial",
            "agent_id": self.agent_id,
            "to": request.to,
            "from": caller,
            "metadata": {**request.metadata, "dispatch_id": request.dispatch_id},
        }
        if request.greeting:
            frame["greeting"] = request.greeting
        config = dict(request.config)
        if request.prompt_vars:  # the agent's prompt variables, per call
            config["vars"] = {**config.get("vars", {}), **request.prompt_vars}
        if config:
            frame["config"] = config
        return frame

    async def _wait_settled(self, dial: _Dial, deadline: float) -> None:
        if not await wait_for(dial.settled, deadline, self.clock):
            raise TimeoutError

    def _forget(self, dial: _Dial) -> None:
        if dial in self._dials:
            self._dials.remove(dial)

    # -- the connection ------------------------------------------------------------------------

    async def _run(self, *, task_status: TaskStatus[None]) -> None:
        failures = 0
        started = False
        while True:
            try:
                async with connect(
                    f"{self.url}/client",
                    open_timeout=self.connect_timeout,
                    ping_interval=None,  # our own JSON ping, with a pong deadline
                    close_timeout=1,
                ) as ws:
                    await self._handshake(ws)
                    failures = 0
                    logger.info(
                        "pinecall.ready agent=%s connection=%d", self.agent_id, self._connection
                    )
                    if not started:
                        started = True
                        task_status.started()
                    await self._serve(ws)
            except PinecallFatal as exc:
                logger.error("pinecall.fatal agent=%s error=%s", self.agent_id, exc)
                raise
            except (
                OSError,
                TimeoutError,
                ConnectionClosed,
                InvalidHandshake,
                _ConnectionLost,
            ) as exc:
                failures += 1
                logger.warning(
                    "pinecall.disconnected agent=%s error=%s: %s",
                    self.agent_id,
                    type(exc).__name__,
                    exc,
                )
            finally:
                self._disconnected()
            delay = min(self.reconnect_max, self.reconnect_initial * 2 ** max(0, failures - 1))
            delay *= 1 + random.uniform(0, 0.25)
            logger.info("pinecall.reconnect agent=%s in=%.1fs", self.agent_id, delay)
            await self.clock.sleep_until(self.clock.monotonic() + delay)

    async def _handshake(self, ws: ClientConnection) -> None:
        with anyio.fail_after(self.connect_timeout):
            await ws.send(json.dumps({"event": "connect", "api_key": self._api_key}))
            try:
                frame = await _recv(ws)
            except ConnectionClosed as exc:
                if exc.rcvd is not None and exc.rcvd.code in (1008, 4001, 4003):
                    raise PinecallFatal(
                        f"API key refused ({exc.rcvd.reason or exc.rcvd.code})"
                    ) from None
                raise
            if frame.get("event") == "error":
                raise PinecallFatal(f"API key refused: {frame.get('error') or frame.get('code')}")
            if frame.get("event") != "connected":
                raise _ConnectionLost(f"expected 'connected', got {frame.get('event')!r}")
        await self._register(ws)
        self._connection += 1
        self._ws = ws
        self._last_pong = self.clock.monotonic()
        assert self._ready is not None
        self._ready.set()

    async def _register(self, ws: ClientConnection) -> None:
        waited = 0.0
        while True:
            await ws.send(
                json.dumps({"event": "agent.create", "agent_id": self.agent_id, **self.config})
            )
            with anyio.fail_after(self.connect_timeout):
                frame = await _recv(ws)
                while frame.get("event") not in ("agent.created", "agent.resumed", "error"):
                    frame = await _recv(ws)
            if frame.get("event") != "error":
                break
            code = str(frame.get("code") or "")
            message = f"{code}: {frame.get('error')}"
            if code in _RETRY_REGISTRATION:
                delay = float(frame.get("retry_after_s") or min(60.0, 5.0 * 2 ** (waited // 5)))
                waited += delay
                if waited > 90:
                    raise PinecallFatal(f"agent {self.agent_id} still in use after 90s ({message})")
                logger.warning(
                    "pinecall.registration_retry agent=%s %s in=%.0fs",
                    self.agent_id,
                    message,
                    delay,
                )
                await self.clock.sleep_until(self.clock.monotonic() + delay)
                continue
            if code == "SERVER_AT_CAPACITY":
                raise _ConnectionLost(message)
            raise PinecallFatal(f"registration of agent {self.agent_id} refused ({message})")
        for phone in self.phone_numbers:
            await ws.send(
                json.dumps(
                    {
                        "event": "channel.add",
                        "agent_id": self.agent_id,
                        "type": "phone",
                        "ref": phone,
                    }
                )
            )

    async def _serve(self, ws: ClientConnection) -> None:
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._heartbeat, ws)
                async for raw in ws:
                    try:
                        frame = json.loads(raw)
                    except ValueError:
                        logger.warning(
                            "pinecall.bad_frame agent=%s frame=%.200r", self.agent_id, raw
                        )
                        continue
                    if isinstance(frame, dict):
                        await self._on_frame(ws, frame)
                tg.cancel_scope.cancel()
        except* PinecallFatal as group:
            raise group.exceptions[0] from None
        except* (ConnectionClosed, OSError) as group:
            lost = group.exceptions[0]
            if isinstance(lost, ConnectionClosed) and "displaced" in _close_reason(lost):
                raise PinecallFatal(f"agent {self.agent_id} {_close_reason(lost)}") from None
            raise _ConnectionLost(str(lost)) from None
        if ws.close_reason and "displaced" in ws.close_reason.lower():
            raise PinecallFatal(f"agent {self.agent_id} {ws.close_reason}")
        raise _ConnectionLost("the platform closed the connection")

    async def _heartbeat(self, ws: ClientConnection) -> None:
        while True:
            await self.clock.sleep_until(self.clock.monotonic() + self.ping_interval)
            if self.clock.monotonic() - self._last_pong > self.pong_timeout:
                logger.warning(
                    "pinecall.half_open agent=%s no pong for %.0fs: replacing the connection",
                    self.agent_id,
                    self.clock.monotonic() - self._last_pong,
                )
                await ws.close(1011, "no pong")
                return
            await ws.send(json.dumps({"event": "ping"}))
            self._prune()

    def _prune(self) -> None:
        """Stop waiting for late news of dials given up on more than ``late_window`` ago."""
        horizon = self.clock.monotonic() - self.late_window
        for dial in [d for d in self._dials if d.abandoned and d.abandoned_at < horizon]:
            self._dials.remove(dial)

    def _disconnected(self) -> None:
        """The connection is gone: whatever was in flight on it is interrupted, never re-sent.

        Those dials stay known, as abandoned: if the platform reports one after the reconnect,
        the report goes to :meth:`report_late` for the ledger."""
        self._ws = None
        if self._ready is not None and self._ready.is_set():
            self._ready = anyio.Event()
        for dial in self._dials:
            if dial.connection != self._connection or dial.abandoned:
                continue
            dial.lost = dial.abandoned = True
            dial.abandoned_at = self.clock.monotonic()
            dial.settled.set()
            dial.ended.set()

    # -- events --------------------------------------------------------------------------------

    async def _on_frame(self, ws: ClientConnection, frame: dict[str, Any]) -> None:
        event = frame.get("event")
        for handler in self._handlers.get(str(event), ()):
            try:
                handler(frame)
            except Exception:
                logger.exception("pinecall.handler_failed event=%s", event)
        if event == "ping":
            await ws.send(json.dumps({"event": "pong"}))
        elif event == "pong":
            self._last_pong = self.clock.monotonic()
        elif event == "call.dialing":
            dial = self._owner(frame)
            if dial is not None and dial.call_id is None:
                dial.call_id = str(frame.get("call_id"))
        elif event == "call.started":
            self._started(frame)
        elif event == "call.ended":
            self._ended(frame)
        elif event == "call.error":
            dial = self._owner(frame, by_destination=False)
            if dial is not None:
                reason = normalize_reason(frame.get("code") or "call_error")
                self._finish(dial, None, f"call_error: {frame.get('error') or reason}", 0.0)
        elif event == "error":
            self._error(frame)
        elif event == "agent.displaced":
            raise PinecallFatal(f"agent {self.agent_id} displaced: {frame.get('reason')}")

    def _owner(self, frame: dict[str, Any], *, by_destination: bool = True) -> _Dial | None:
        """The dial an event belongs to: by call id, then echoed dispatch_id, then number."""
        call_id = frame.get("call_id")
        if call_id is not None:
            for dial in self._dials:
                if dial.call_id == call_id:
                    return dial
        metadata = frame.get("metadata")
        if isinstance(metadata, dict) and metadata.get("dispatch_id"):
            for dial in self._dials:
                if dial.request.dispatch_id == metadata["dispatch_id"]:
                    return dial
        if by_destination and frame.get("to"):
            for dial in self._dials:
                if dial.request.to == frame["to"] and (
                    dial.call_id is None or dial.call_id == call_id
                ):
                    return dial
        return None

    def _started(self, frame: dict[str, Any]) -> None:
        dial = self._owner(frame)
        if dial is None or dial.started:
            return  # another client's call, or a duplicate
        dial.call_id = str(frame.get("call_id") or dial.call_id)
        dial.started = True
        if dial.abandoned:
            self._late(dial)
        dial.settled.set()

    def _ended(self, frame: dict[str, Any]) -> None:
        dial = self._owner(frame)
        if dial is None:
            return
        reason = normalize_reason(frame.get("reason"))
        duration = frame.get("duration_seconds")
        self._finish(
            dial, frame.get("call_id"), reason, float(duration) if duration is not None else None
        )

    def _finish(self, dial: _Dial, call_id: object, reason: str, duration: float | None) -> None:
        if call_id is not None and dial.call_id is None:
            dial.call_id = str(call_id)
        self._forget(dial)
        if dial.started:
            dial.end = CallEnd(reason, duration)
            dial.ended.set()
            if dial.abandoned:
                self._late(dial, reason, duration)
        elif dial.abandoned:
            self._late(dial, reason, 0.0)
        else:
            dial.reject(reason)

    def _error(self, frame: dict[str, Any]) -> None:
        agent = str(frame.get("agent_id") or "")
        if agent and agent != self.agent_id and not agent.endswith(f":{self.agent_id}"):
            return
        code = str(frame.get("code") or "error")
        if code == "PHONE_IN_USE":
            logger.error(
                "pinecall.phone_in_use agent=%s phone=%s", self.agent_id, frame.get("phone")
            )
            return
        # A refusal names no dial: take it for one only when no other dial could be meant.
        waiting = [d for d in self._dials if not d.started and not d.abandoned]
        target = frame.get("to") or frame.get("phone")
        if target:
            waiting = [d for d in waiting if d.request.to == target]
        if len(waiting) == 1:
            self._forget(waiting[0])
            waiting[0].reject(normalize_reason(code))
        else:
            logger.warning(
                "pinecall.error agent=%s code=%s error=%s (no single dial it could refer to)",
                self.agent_id,
                code,
                frame.get("error"),
            )

    def _late(self, dial: _Dial, reason: str | None = None, duration: float | None = None) -> None:
        outcome = LateOutcome(
            dial.request.dispatch_id, dial.call_id, dial.started, reason, duration
        )
        logger.warning(
            "pinecall.late dispatch_id=%s call_id=%s started=%s reason=%s",
            outcome.dispatch_id,
            outcome.call_id,
            outcome.started,
            outcome.reason,
        )
        self.report_late(outcome)


def _close_reason(exc: ConnectionClosed) -> str:
    return (exc.rcvd.reason if exc.rcvd is not None else "").lower()


async def _recv(ws: ClientConnection) -> dict[str, Any]:
    frame = json.loads(await ws.recv())
    return frame if isinstance(frame, dict) else {}
