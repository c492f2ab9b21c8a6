"""PinecallAgent: calls through the Pinecall platform (the SDK 0.14 socket protocol).

One WebSocket to ``{url}/client``: ``connect`` with the API key, ``connected`` (an
``authenticated`` frame before it is skipped, as the SDK does), then ``agent.create`` with the
agent's configuration, its prompt ``vars`` and its result ``tools``, and a ``channel.add`` per
phone number; dials go out only once the platform has answered ``agent.created`` (or
``agent.resumed``). ``docs/pinecall.md`` has the frames, and the SDK sources behind each.

What the TypeScript SDK gets wrong and this adapter does not (shared/pinecall-wire.md, A10/D2):

* Each dial carries our own ``dispatch_id`` in ``metadata``. Platform events are matched to a
  dial by call id, then by the echoed ``dispatch_id``, then by destination number (the hub
  never has two dials to one number in flight); an event no dial owns is ignored, never
  taken for another dial's. Agent ids are compared the way the server slugifies them.
* An ``error`` frame naming a call id concerns that call only. One naming none cannot be pinned
  on a dial: the dial it may refuse could already be ringing, so it makes at most one dial's
  outcome *unknown* (:class:`~dispatch.errors.DialUnknown`), never a retryable rejection.
* No answer from the platform within ``dial_timeout`` is *unknown*, not failed (never
  retried); a late ``call.started`` / ``call.ended`` for it is still reported through
  :meth:`Agent.report_late`.
* A dial is sent once, on the connection that is up, or not at all. If that connection
  drops, the dial or call is *interrupted* (:class:`~dispatch.errors.DialInterrupted`); it
  is never re-sent after the reconnect. A dial whose caller id is missing, unregistered or
  taken by another agent (``PHONE_IN_USE``) is refused before anything is sent.
* A ``ping`` every ``ping_interval``; a socket with no ``pong`` for ``pong_timeout`` is
  declared dead (half-open) and replaced. Reconnects back off 1 s, 2 s, 4 s ... up to 30 s with
  0-25 % jitter, and re-register the agent each time.
* A refused API key or a ``displaced`` agent is fatal (:class:`PinecallFatal`), as are
  registration errors that cannot clear; the hub stops and the daemon exits non-zero.

Result tools: the model's ``llm.tool_call`` frames are answered at once with
``llm.tool_result`` (once per message id, however often the server repeats it); arguments that
match the tool's schema become :class:`~dispatch.abc.CallResult` s on the call's
:class:`~dispatch.abc.CallEnd`, anything else gets an error result the model can act on.
"""

from __future__ import annotations

import json
import logging
import random
import re
from collections.abc import Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Self

import anyio
from anyio.abc import TaskStatus
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from ..abc import Agent, AgentContext, Call, CallEnd, CallResult, DialRequest, LateOutcome
from ..clock import Clock, SystemClock, wait_for
from ..errors import DialInterrupted, DialRejected, DialUnknown, DispatchError
from ..results import ResultTool

__all__ = ["PinecallAgent", "PinecallCall", "PinecallFatal", "normalize_reason", "slugify"]

logger = logging.getLogger(__name__)

DEFAULT_URL = "wss://voice.pinecall.io"
_RETRY_REGISTRATION = {"AGENT_IN_USE", "AGENT_CONFLICT"}
_FATAL_REGISTRATION = {"AGENT_CONFLICT_FATAL", "REGISTRATION_ERROR"}
_REMEMBERED = 256  # call ids of other calls, and call errors waiting for their call.dialing


class PinecallFatal(DispatchError):
    """The platform refused us for good (bad API key, agent displaced, registration refused)."""


class _ConnectionLost(Exception):
    """The socket is gone or silent; reconnect."""


def normalize_reason(reason: object) -> str:
    """``no-answer`` and ``no_answer`` are the same; reasons are lower snake case."""
    return str(reason or "unknown").strip().lower().replace("-", "_").replace(" ", "_")


def slugify(value: str) -> str:
    """An agent id as the server stores it: lower case, underscores and spaces become hyphens,
    anything else but ``a-z0-9-`` dropped, hyphens collapsed and trimmed (``Dialer_Bot`` is
    ``dialer-bot``; SDK ``src/protocol/id-resolver.ts``)."""
    slug = re.sub(r"[_\s]+", "-", value.strip().lower())
    slug = re.sub(r"[^a-z0-9-]", "", slug)
    return re.sub(r"-+", "-", slug).strip("-")


@dataclass(eq=False, slots=True)
class _Dial:
    request: DialRequest
    connection: int
    call_id: str | None = None
    started: bool = False
    abandoned: bool = False  # dial() gave up waiting (timeout, unknown): late news reconciled
    abandoned_at: float = 0.0
    settled: anyio.Event = field(default_factory=anyio.Event)
    rejection: str | None = None
    unknown: str | None = None  # why its outcome cannot be known (an unattributable error)
    lost: bool = False
    ended: anyio.Event = field(default_factory=anyio.Event)
    end: CallEnd | None = None
    results: list[CallResult] = field(default_factory=list)
    answered: set[str] = field(default_factory=set)  # tool-call message ids already answered

    def reject(self, reason: str) -> None:
        if self.rejection is None:
            self.rejection = reason
            self.settled.set()

    def make_unknown(self, why: str) -> None:
        if self.unknown is None:
            self.unknown = why
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
    ``vars`` are the prompt's default ``{{vars}}`` (a dial's ``prompt_vars`` override them for
    its call); ``tools`` are the result tools the model may call; ``detect_turn_end`` is the
    default of that dial option (None: not sent). ``phone_numbers`` are registered as phone
    channels and are the only caller ids a dial may use; the first usable one is the default.

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
        tools: Sequence[ResultTool] = (),
        vars: Mapping[str, Any] | None = None,
        detect_turn_end: bool | None = None,
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
        self.tools = {tool.name: tool for tool in tools}
        if len(self.tools) != len(tools):
            raise ValueError("PinecallAgent: two result tools have the same name")
        self.vars = dict(vars or {})
        self.detect_turn_end = detect_turn_end
        self.dial_timeout = dial_timeout
        self.connect_timeout = connect_timeout
        self.ping_interval = ping_interval
        self.pong_timeout = pong_timeout if pong_timeout is not None else 2 * ping_interval
        self.reconnect_initial = reconnect_initial
        self.reconnect_max = reconnect_max
        self.late_window = late_window
        self.clock = clock or SystemClock()
        self._slug = slugify(agent_id)
        self._handlers: dict[str, list[Callable[[dict[str, Any]], None]]] = {}
        self._ws: ClientConnection | None = None
        self._connection = 0  # number of the current connection (0: none yet)
        self._ready: anyio.Event | None = None
        self._dials: list[_Dial] = []  # pending, live and abandoned dials, oldest first
        self._in_use: set[str] = set()  # caller ids the platform said another agent holds
        self._known: dict[str, None] = {}  # call ids accounted for: others', ours that ended
        self._orphans: dict[str, dict[str, Any]] = {}  # call.error frames for unknown call ids
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
        frame = self._dial_frame(request, self._caller(request))
        dial = _Dial(request, self._connection)
        self._dials.append(dial)
        deadline = self.clock.monotonic() + self.dial_timeout
        try:
            await ws.send(json.dumps(frame))
        except ConnectionClosed:
            self._forget(dial)
            raise DialInterrupted("connection to Pinecall lost while sending the dial") from None
        settled = await wait_for(dial.settled, deadline, self.clock)
        # From here to the return nothing awaits: whatever the platform said before this
        # point is in `dial`, and whatever it says after finds the dial abandoned (reported
        # late), so no news is lost between the two.
        if dial.lost:  # kept (abandoned) in case the platform reports it after a reconnect
            raise DialInterrupted("connection to Pinecall lost during the dial")
        if dial.started:  # even after an unattributable error: the call is what counts
            return PinecallCall(dial)
        if dial.rejection is not None:
            self._forget(dial)
            raise DialRejected(dial.rejection)
        self._abandon(dial)
        if settled and dial.unknown is not None:
            raise DialUnknown(dial.unknown)
        raise DialUnknown(
            f"no answer from Pinecall within {self.dial_timeout:g}s (the phone may ring)"
        )

    def _caller(self, request: DialRequest) -> str:
        """The caller id of ``request``, or DialRejected (nothing sent): the platform rings
        only from a number registered to this agent, so a retry cannot fix any of these."""
        usable = [phone for phone in self.phone_numbers if phone not in self._in_use]
        if request.from_:
            if request.from_ in usable:
                return request.from_
            reason = "caller_id_in_use" if request.from_ in self._in_use else "unknown_caller_id"
        elif usable:
            return usable[0]
        else:
            reason = "caller_id_in_use" if self.phone_numbers else "no_caller_id"
        logger.error(
            "pinecall.dial_refused dispatch_id=%s reason=%s from=%s registered=%s (nothing sent)",
            request.dispatch_id,
            reason,
            request.from_,
            ",".join(self.phone_numbers) or "none",
        )
        raise DialRejected(reason)

    def _dial_frame(self, request: DialRequest, caller: str) -> dict[str, Any]:
        frame: dict[str, Any] = {
            "event": "call.dial",
            "agent_id": self.agent_id,
            "to": request.to,
            "from": caller,
            "metadata": {**request.metadata, "dispatch_id": request.dispatch_id},
        }
        if request.greeting:
            frame["greeting"] = request.greeting
        if request.config:  # prompt vars do not go here: history.set_vars once it started
            frame["config"] = dict(request.config)
        detect = request.detect_turn_end
        if detect is None:
            detect = self.detect_turn_end
        if detect is not None:
            frame["detect_turn_end"] = detect
        return frame

    def _abandon(self, dial: _Dial) -> None:
        dial.abandoned = True
        dial.abandoned_at = self.clock.monotonic()

    def _forget(self, dial: _Dial) -> None:
        if dial in self._dials:
            self._dials.remove(dial)
        self._remember(dial.call_id)  # a repeated event for it must not find another dial

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
                while frame.get("event") == "authenticated":  # the SDK ignores it too
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

    def _create_frame(self) -> dict[str, Any]:
        """``agent.create``: the config, then ``vars`` (the prompt's defaults) and ``tools`` in
        the OpenAI function shape the SDK sends (``src/tool.ts`` ``_toWire``)."""
        frame: dict[str, Any] = {"event": "agent.create", "agent_id": self.agent_id, **self.config}
        if self.vars:
            frame["vars"] = {**frame.get("vars", {}), **self.vars}
        if self.tools:
            specs = [{"type": "function", "function": t.spec()} for t in self.tools.values()]
            frame["tools"] = [*frame.get("tools", []), *specs]
        return frame

    async def _register(self, ws: ClientConnection) -> None:
        waited = 0.0
        while True:
            await ws.send(json.dumps(self._create_frame()))
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
            if phone in self._in_use:
                continue  # another agent holds it: the platform refused it once already
            channel = {"event": "channel.add", "agent_id": self.agent_id, "type": "phone"}
            await ws.send(json.dumps({**channel, "ref": phone}))

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
            dial.lost = True
            self._abandon(dial)
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
        if not self._ours(frame.get("agent_id")):
            logger.debug("pinecall.other_agent event=%s agent=%s", event, frame.get("agent_id"))
            return
        if event == "ping":
            await ws.send(json.dumps({"event": "pong"}))
        elif event == "pong":
            self._last_pong = self.clock.monotonic()
        elif event == "call.dialing":
            dial = self._owner(frame)
            if dial is None:
                self._remember(frame.get("call_id"))
            elif dial.call_id is None and frame.get("call_id"):
                self._bind(dial, str(frame["call_id"]))
        elif event == "call.started":
            if (dial := self._started(frame)) is not None and dial.request.prompt_vars:
                await self._set_vars(ws, dial)
        elif event == "call.ended":
            self._ended(frame)
        elif event == "call.error":
            self._call_error(frame)
        elif event == "llm.tool_call":
            await self._tool_call(ws, frame)
        elif event == "error":
            self._error(frame)
        elif event == "history.updated" and frame.get("error"):
            logger.warning(
                "pinecall.set_vars_refused call_id=%s error=%s",
                frame.get("call_id"),
                frame.get("error"),
            )
        elif event == "session.timeout":
            logger.info(
                "pinecall.session_timeout call_id=%s reason=%s",
                frame.get("call_id"),
                frame.get("reason"),
            )
        elif event == "agent.displaced":
            raise PinecallFatal(f"agent {self.agent_id} displaced: {frame.get('reason')}")

    def _ours(self, agent_id: object) -> bool:
        """Whether a frame's ``agent_id`` (absent, ``slug`` or ``org_id:slug``, slugified by
        the server) names this agent."""
        if not agent_id:
            return True
        candidate = str(agent_id).rsplit(":", 1)[-1]
        return candidate == self.agent_id or slugify(candidate) == self._slug

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
        if call_id is not None and str(call_id) in self._known:
            return None  # a repeat for a call that ended, or another client's call
        if by_destination and frame.get("to"):
            for dial in self._dials:
                if dial.request.to == frame["to"] and (
                    dial.call_id is None or dial.call_id == call_id
                ):
                    return dial
        return None

    def _by_call_id(self, call_id: object) -> _Dial | None:
        return next((d for d in self._dials if call_id and d.call_id == call_id), None)

    def _bind(self, dial: _Dial, call_id: str) -> None:
        """``call_id`` is the dial's: a ``call.error`` for it that came first applies now."""
        dial.call_id = call_id
        if (early := self._orphans.pop(call_id, None)) is not None:
            self._call_error(early)

    def _remember(self, call_id: object) -> None:
        if call_id:
            self._known[str(call_id)] = None
            while len(self._known) > _REMEMBERED:
                del self._known[next(iter(self._known))]

    def _started(self, frame: dict[str, Any]) -> _Dial | None:
        """The dial that has just started, if the frame starts one."""
        dial = self._owner(frame)
        if dial is None:
            self._remember(frame.get("call_id"))  # an inbound call, another client's
            return None
        if dial.started:
            return None  # a duplicate
        dial.call_id = str(frame.get("call_id") or dial.call_id)
        dial.started = True
        if dial.abandoned:
            self._late(dial)
        dial.settled.set()
        return dial

    async def _set_vars(self, ws: ClientConnection, dial: _Dial) -> None:
        """The dial's prompt variables, for its call only: the SDK's ``call.setPromptVars``
        (``src/domain/call-requests.ts``), acknowledged by ``history.updated``."""
        frame = {
            "event": "history.set_vars",
            "call_id": dial.call_id,
            "request_id": f"vars-{dial.request.dispatch_id}",
            "vars": dict(dial.request.prompt_vars),
        }
        await ws.send(json.dumps(frame))

    def _ended(self, frame: dict[str, Any]) -> None:
        dial = self._owner(frame)
        if dial is None:
            return
        reason = normalize_reason(frame.get("reason"))
        self._finish(
            dial, frame.get("call_id"), reason, _seconds(frame.get("duration_seconds")), frame
        )

    def _call_error(self, frame: dict[str, Any]) -> None:
        dial = self._owner(frame, by_destination=False)
        call_id = frame.get("call_id")
        if dial is None and call_id is not None and str(call_id) not in self._known:
            # Before its call.dialing (or with none at all): it can only be meant for a dial
            # whose call id we do not know yet. If there is exactly one, it is that one's.
            # (Sent on this connection: a call.error of an earlier one is no news of it.)
            unheard = [
                d
                for d in self._dials
                if d.call_id is None and not d.started and d.connection == self._connection
            ]
            if len(unheard) == 1 and not unheard[0].abandoned:
                # The agent is registered by this client alone, and every other call of
                # it was named (dialing, started) before it could fail: the error is this
                # dial's, and the dial failed like one whose call.dialing came first.
                dial = unheard[0]
                logger.info(
                    "pinecall.call_error_attributed dispatch_id=%s call_id=%s (before its "
                    "call.dialing; the one dial it can be)",
                    dial.request.dispatch_id,
                    call_id,
                )
            if len(unheard) != 1:
                self._orphans[str(call_id)] = frame  # its call.dialing may still come
                while len(self._orphans) > _REMEMBERED:
                    del self._orphans[next(iter(self._orphans))]
        if dial is None:
            logger.info(
                "pinecall.call_error_unowned call_id=%s code=%s", call_id, frame.get("code")
            )
            return
        reason = normalize_reason(frame.get("code") or "call_error")
        self._finish(dial, call_id, f"call_error: {frame.get('error') or reason}", 0.0)

    def _finish(
        self,
        dial: _Dial,
        call_id: object,
        reason: str,
        duration: float | None,
        frame: Mapping[str, Any] | None = None,
    ) -> None:
        if call_id is not None and dial.call_id is None:
            dial.call_id = str(call_id)
        self._forget(dial)
        if dial.started:
            dial.end = self._end(dial, reason, duration, frame or {})
            dial.ended.set()
            if dial.abandoned:
                self._late(dial, reason, duration, dial.end)
        elif dial.abandoned:
            self._late(dial, reason, 0.0)
        else:
            dial.reject(reason)

    def _end(
        self, dial: _Dial, reason: str, duration: float | None, frame: Mapping[str, Any]
    ) -> CallEnd:
        messages = frame.get("messages")
        transcript = (
            [m for m in messages if isinstance(m, dict)] if isinstance(messages, list) else []
        )
        return CallEnd(
            reason,
            duration,
            results=tuple(dial.results),
            transcript=tuple(transcript),
            started_at=_epoch(frame.get("started_at")),
            ended_at=_epoch(frame.get("ended_at")),
        )

    def _error(self, frame: dict[str, Any]) -> None:
        """An ``error`` frame (of this agent, or of none): see ``docs/pinecall.md``."""
        code = str(frame.get("code") or "error")
        text = frame.get("error") or frame.get("message")
        call_id = frame.get("call_id")
        if code == "PHONE_IN_USE" or "PHONE_IN_USE" in str(text):  # the SDK checks both
            self._phone_in_use(frame.get("phone"))
            if not call_id:
                return  # about a caller id, not a dial
            # Else it refuses the dial it names as well (rule 1, below).
        if call_id:  # it belongs to that call, and to no other
            dial = self._by_call_id(call_id)
            if dial is not None and not dial.started:  # dialing: refused (late, if given up)
                self._finish(dial, call_id, normalize_reason(code), 0.0)
            else:
                logger.warning(
                    "pinecall.error call_id=%s code=%s error=%s (%s)",
                    call_id,
                    code,
                    text,
                    "no dial of ours" if dial is None else "the call goes on",
                )
            return
        # Anonymous. A dial the platform has named (call.dialing) would be named in its error,
        # so only dials sent on this connection and not heard of since can be meant; and even
        # the one such dial may be ringing already: its outcome becomes unknown, not rejected.
        unheard = [
            d
            for d in self._dials
            if d.connection == self._connection and d.call_id is None and not d.started
        ]
        pending = [d for d in unheard if not d.abandoned]
        if len(unheard) == 1 and pending:
            logger.warning(
                "pinecall.error_unattributed dispatch_id=%s code=%s error=%s (the one dial not "
                "heard of yet: its outcome is unknown)",
                pending[0].request.dispatch_id,
                code,
                text,
            )
            pending[0].make_unknown(f"Pinecall error {code} naming no call: {text}")
        else:
            logger.warning(
                "pinecall.error agent=%s code=%s error=%s (%d dials it could concern: none "
                "is touched)",
                self.agent_id,
                code,
                text,
                len(unheard),
            )

    def _phone_in_use(self, phone: object) -> None:
        if phone not in self.phone_numbers:
            logger.error("pinecall.phone_in_use agent=%s phone=%s (not ours)", self.agent_id, phone)
            return
        self._in_use.add(str(phone))
        logger.error(
            "pinecall.phone_in_use agent=%s phone=%s: another agent holds this caller id; "
            "dials from it are refused until the daemon restarts",
            self.agent_id,
            phone,
        )

    async def _tool_call(self, ws: ClientConnection, frame: dict[str, Any]) -> None:
        """Answer one ``llm.tool_call`` (SDK ``src/dispatch/handlers/tool.ts``), once."""
        call_id = frame.get("call_id")
        dial = self._by_call_id(call_id)
        if dial is None:
            logger.debug("pinecall.tool_call_ignored call_id=%s (no dial of ours)", call_id)
            return
        items = frame.get("tool_calls")
        calls = (
            [item for item in items if isinstance(item, dict)] if isinstance(items, list) else []
        )
        msg_id = str(frame.get("msg_id") or frame.get("message_id") or "")
        key = msg_id or ",".join(str(item.get("id") or "") for item in calls)
        if key and key in dial.answered:
            logger.debug("pinecall.tool_call_repeated call_id=%s msg_id=%s", call_id, msg_id)
            return
        dial.answered.add(key)
        results = [
            {"tool_call_id": str(item.get("id") or ""), "result": self._result(dial, item)}
            for item in calls
        ]
        answer = {"event": "llm.tool_result", "call_id": call_id, "msg_id": msg_id}
        await ws.send(json.dumps({**answer, "results": results}))

    def _result(self, dial: _Dial, item: Mapping[str, Any]) -> dict[str, Any]:
        """What the model is told about one tool call; a valid one is recorded."""
        function = item.get("function")
        if not isinstance(function, dict):
            function = {}
        name = str(item.get("name") or function.get("name") or "")
        raw = item.get("arguments")
        if raw is None:
            raw = function.get("arguments")
        tool = self.tools.get(name)
        error: str | None
        if tool is None:
            error = f"unknown tool {name!r}; the tools are: {', '.join(self.tools) or 'none'}"
        else:
            error, arguments = _arguments(raw)
            if error is None:
                problems = tool.errors(arguments)
                if not problems:
                    dial.results.append(CallResult(name, dict(arguments), self.clock.now()))
                    return {"ok": True}
                error = f"invalid arguments for {name}: {'; '.join(problems)}"
        logger.warning(
            "pinecall.tool_call_invalid call_id=%s tool=%.80s error=%s", dial.call_id, name, error
        )
        return {"error": error}

    def _late(
        self,
        dial: _Dial,
        reason: str | None = None,
        duration: float | None = None,
        end: CallEnd | None = None,
    ) -> None:
        outcome = LateOutcome(
            dial.request.dispatch_id, dial.call_id, dial.started, reason, duration, end
        )
        logger.warning(
            "pinecall.late dispatch_id=%s call_id=%s started=%s reason=%s",
            outcome.dispatch_id,
            outcome.call_id,
            outcome.started,
            outcome.reason,
        )
        self.report_late(outcome)


def _arguments(raw: object) -> tuple[str | None, Any]:
    """A tool call's arguments: a JSON string (the SDK's shape) or an already decoded object;
    absent means none. Returns (error, arguments)."""
    if raw is None:
        return None, {}
    if isinstance(raw, str | bytes):
        try:
            return None, json.loads(raw)
        except ValueError as exc:
            return f"arguments are not valid JSON: {exc}", None
    return None, raw


def _seconds(value: object) -> float | None:
    try:
        return float(value) if value is not None else None  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _epoch(value: object) -> datetime | None:
    """Epoch seconds on the wire, as a UTC datetime; anything else is None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        return datetime.fromtimestamp(value, UTC)
    except (OverflowError, OSError, ValueError):
        return None


def _close_reason(exc: ConnectionClosed) -> str:
    return (exc.rcvd.reason if exc.rcvd is not None else "").lower()


async def _recv(ws: ClientConnection) -> dict[str, Any]:
    frame = json.loads(await ws.recv())
    return frame if isinstance(frame, dict) else {}
