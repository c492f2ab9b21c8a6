"""Signed outcome webhooks against a real receiver on 127.0.0.1, verified with the
``standardwebhooks`` package a receiver would use."""

from __future__ import annotations

import base64
import json
import logging
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import anyio
import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from dispatch import Backoff, CallEnd, CallResult, DispatchHub
from dispatch.testing import ManualClock, ScriptedAgent
from dispatch.webhooks import WebhookEndpoint
from tests.support import ListStrategy, rec, store_for

pytestmark = pytest.mark.anyio

SECRET = "whsec_" + base64.b64encode(b"a test secret of 32 bytes here!!").decode()
A, B = "+14155552671", "+14155552672"


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes

    @property
    def event(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.body)
        return parsed


@dataclass
class Receiver:
    """A webhook receiver: answers each POST with the next status of ``statuses`` (then
    200; 0 hangs up without an answer), and keeps every request it answered.

    Its port is taken when it is made and kept until the test ends: until :meth:`serving`
    it refuses connections (bound, not listening), so a receiver that is "down" can come
    "up" on the same URL without another process taking the port meanwhile."""

    statuses: list[int] = field(default_factory=list)
    requests: list[Received] = field(default_factory=list)
    lock: threading.Condition = field(default_factory=threading.Condition)

    def __post_init__(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers["content-length"])
                headers = {k.lower(): v for k, v in self.headers.items()}
                body = self.rfile.read(length)
                with receiver.lock:
                    status = receiver.statuses.pop(0) if receiver.statuses else 200
                if status == 0:
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()
                self.wfile.flush()
                # Kept once answered: a request the hub gave up on before its answer was
                # sent is not counted as delivered.
                headers["x-answered"] = str(status)
                with receiver.lock:
                    receiver.requests.append(Received(headers, body))
                    receiver.lock.notify_all()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler, bind_and_activate=False)
        self._server.daemon_threads = True
        self._server.server_bind()  # the port is ours; connections are refused until serving

    @property
    def url(self) -> str:
        port = self._server.server_address[1]
        return f"http://127.0.0.1:{port}/hooks?token=in-the-url"

    def delivered(self) -> list[Received]:
        """The requests answered 2xx."""
        with self.lock:
            return [r for r in self.requests if r.headers.get("x-answered") == "200"]

    def wait_delivered(self, count: int, timeout: float) -> bool:
        """Whether ``count`` requests were answered 2xx within ``timeout`` (real) seconds."""
        with self.lock:
            return self.lock.wait_for(lambda: len(self.delivered()) >= count, timeout)

    @contextmanager
    def serving(self) -> Iterator[None]:
        self._server.server_activate()
        thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        thread.start()
        try:
            yield
        finally:
            self._server.shutdown()
            self._server.server_close()
            thread.join()


def verified(received: Received) -> dict[str, Any]:
    """The event, if its signature is good (raises otherwise), as a receiver checks it."""
    headers = {k: v for k, v in received.headers.items() if k.startswith("webhook-")}
    payload: dict[str, Any] = Webhook(SECRET).verify(received.body, headers)
    return payload


async def until_delivered(receiver: Receiver, count: int, clock: ManualClock) -> None:
    """Wait until ``count`` events were delivered, moving the clock a second (the outbox's
    retry delay) whenever nothing arrives for a while. The clock moves only between real
    waits: advancing it whenever every task waits (on a socket or a worker thread too)
    would race it through hours of polls and retries while one request is in flight."""
    while not await anyio.to_thread.run_sync(receiver.wait_delivered, count, 0.1):
        await clock.wait_all_tasks_blocked()
        clock.advance(1.0)


def hook(receiver: Receiver, **options: Any) -> WebhookEndpoint:
    return WebhookEndpoint("crm", receiver.url, SECRET, **options)


def make_hub(url: str, agent: ScriptedAgent, source: ListStrategy, **options: Any) -> DispatchHub:
    clock = options.pop("clock", None) or ManualClock()
    return DispatchHub(
        agent=agent,
        strategies=[source],
        store=store_for(url, clock),
        clock=clock,
        callback_backoff=Backoff(initial=1.0, maximum=1.0),
        **options,
    )


async def test_every_event_is_signed_and_a_retry_keeps_its_webhook_id(sqlite_url: str) -> None:
    said = CallResult("confirm_appointment", {"status": "confirmed"}, ManualClock().now())
    agent = ScriptedAgent(script={A: [CallEnd("hangup", 3.0, (said,))]})
    source = ListStrategy([rec("r1", A), rec("bad", "12")])
    receiver = Receiver(statuses=[503, 500])  # the first two tries fail
    clock = ManualClock()
    with receiver.serving():
        hub = make_hub(sqlite_url, agent, source, clock=clock, webhooks=[hook(receiver)])
        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                tg.start_soon(hub.run)
                await source.signal.wait_until(lambda: len(source.named("completed")) == 1)
                await until_delivered(receiver, 4, clock)
                hub.stop()
    events = [verified(r) for r in receiver.delivered()]
    by_record = {
        rid: [e["type"] for e in events if e["data"]["record"]["id"] == rid]
        for rid in ("r1", "bad")
    }
    assert by_record == {
        "r1": ["call.dispatched", "call.result", "call.completed"],
        "bad": ["record.skipped"],
    }
    completed = next(e for e in events if e["type"] == "call.completed")
    assert completed["data"]["strategy"] == "list"
    assert (completed["data"]["call_id"], completed["data"]["reason"]) == ("call-1", "hangup")
    result = next(e for e in events if e["type"] == "call.result")
    assert result["data"]["result"]["arguments"] == {"status": "confirmed"}
    # Each failed try carried the id (and body) of the delivery of its event that followed.
    failed = [r for r in receiver.requests if r.headers["x-answered"] != "200"]
    delivered = {r.headers["webhook-id"]: r.body for r in receiver.delivered()}
    assert len(failed) == 2
    assert len(delivered) == 4
    for attempt in failed:
        assert delivered[attempt.headers["webhook-id"]] == attempt.body
    tampered = Received(receiver.requests[-1].headers, receiver.requests[-1].body + b" ")
    with pytest.raises(WebhookVerificationError, match="signature"):
        verified(tampered)


async def test_a_receiver_down_then_up_gets_everything_in_order_after_a_restart(
    sqlite_url: str,
) -> None:
    agent = ScriptedAgent(script={A: ["busy", "answer"], B: ["answer"]})
    records = [rec("r1", A), rec("r2", B)]
    receiver = Receiver()  # not serving yet: its port refuses connections
    endpoint = hook(receiver, timeout=2.0)
    first = make_hub(
        sqlite_url,
        agent,
        ListStrategy(records),
        webhooks=[endpoint],
        exit_when_done=True,
        retry_attempts=1,
        retry_delay=0.0,
    )
    with anyio.fail_after(30):  # it stops with every event still owed to the receiver
        await first.run()
    assert receiver.requests == []
    with receiver.serving():  # the receiver is back; a new daemon delivers what is owed
        clock = ManualClock()
        second = make_hub(
            sqlite_url, ScriptedAgent(), ListStrategy(records), clock=clock, webhooks=[endpoint]
        )
        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                tg.start_soon(second.run)
                await until_delivered(receiver, 4, clock)
                second.stop()
    events = [verified(r) for r in receiver.delivered()]
    for rid, expected in (
        ("r1", ["call.dispatched", "call.completed"]),
        ("r2", ["call.dispatched", "call.completed"]),
    ):
        assert [e["type"] for e in events if e["data"]["record"]["id"] == rid] == expected
    assert len(agent.dials) == 3  # r1 busy then answered, r2 answered; nobody dialed again


async def test_an_endpoint_that_hangs_up_is_rested_on_the_hubs_clock(sqlite_url: str) -> None:
    # Each try that gets no answer rests the endpoint for a while: on the hub's clock, like
    # the backoff of the events it fails, so a receiver back on its feet is tried again when
    # the clock says so (in real time, three rests would outlast this test).
    agent = ScriptedAgent()
    receiver = Receiver(statuses=[0, 0, 0])
    clock = ManualClock()
    with receiver.serving():
        hub = make_hub(
            sqlite_url, agent, ListStrategy([rec("r1", A)]), clock=clock, webhooks=[hook(receiver)]
        )
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(hub.run)
                await until_delivered(receiver, 2, clock)
                hub.stop()
    assert [verified(r)["type"] for r in receiver.delivered()] == [
        "call.dispatched",
        "call.completed",
    ]
    assert receiver.statuses == []  # the three hang-ups were tried, and then the rest


async def test_a_410_disables_the_endpoint_loudly_and_the_token_never_shows(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    agent = ScriptedAgent()
    source = ListStrategy([rec("r1", A)])
    receiver = Receiver(statuses=[410])
    with receiver.serving(), caplog.at_level(logging.DEBUG):
        hub = make_hub(sqlite_url, agent, source, webhooks=[hook(receiver)], exit_when_done=True)
        with anyio.fail_after(20):
            await hub.run()
    assert len(receiver.requests) == 1  # dispatched: 410; completed is dropped
    assert "webhook.disabled name=crm url=http://127.0.0.1" in caplog.text
    assert "in-the-url" not in caplog.text
    assert SECRET not in caplog.text
    assert SECRET.removeprefix("whsec_") not in caplog.text


def test_an_endpoint_with_a_bad_secret_or_event_is_refused() -> None:
    with pytest.raises(ValueError, match="not a Standard Webhooks secret"):
        WebhookEndpoint("crm", "https://crm.example/hooks", "not-base64!")
    with pytest.raises(ValueError, match="unknown events"):
        WebhookEndpoint("crm", "https://crm.example/hooks", SECRET, frozenset({"answered"}))
    assert SECRET not in repr(WebhookEndpoint("crm", "https://crm.example/hooks", SECRET))


async def test_a_receiver_that_never_answers_does_not_hold_back_strategy_callbacks(
    sqlite_url: str,
) -> None:
    # A receiver that accepts connections and says nothing: each try takes its timeout.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(100)
    port = silent.getsockname()[1]
    endpoint = WebhookEndpoint("crm", f"http://127.0.0.1:{port}/hooks", SECRET, timeout=3.0)
    source = ListStrategy([rec(f"r{n}", f"+1415555{2600 + n:04d}") for n in range(48)])
    hub = make_hub(sqlite_url, ScriptedAgent(), source, webhooks=[endpoint], max_concurrent=48)
    try:
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(hub.run)
                started = anyio.current_time()
                await source.signal.wait_until(lambda: len(source.named("completed")) == 48)
                took = anyio.current_time() - started
                hub.stop()
    finally:
        silent.close()
    # One try waits out its 3 s; the endpoint's other events fail at once and wait their
    # backoff. Without that, 96 events 16 at a time would hold the pass for 18 s or more.
    assert took < 8, took


async def test_a_record_id_in_two_strategies_has_its_own_lane_at_each_endpoint(
    sqlite_url: str,
) -> None:
    from tests.conftest import fetch

    receiver = Receiver(statuses=[503] * 100)  # nothing gets through: rows stay pending
    with receiver.serving():
        hub = DispatchHub(
            agent=ScriptedAgent(),
            strategies=[
                ListStrategy([rec("42", A)], name="a"),
                ListStrategy([rec("42", B)], name="b"),
            ],
            store=store_for(sqlite_url, ManualClock()),
            clock=ManualClock(),
            webhooks=[hook(receiver)],
            exit_when_done=True,
        )
        with anyio.fail_after(20):
            await hub.run()
    lanes = await fetch(
        sqlite_url, "SELECT DISTINCT record_id FROM outbox WHERE strategy = 'webhook:crm'"
    )
    assert sorted(lanes) == [("a/42",), ("b/42",)]


async def test_a_webhook_added_by_a_reload_gets_the_events_that_follow(sqlite_url: str) -> None:
    agent = ScriptedAgent(auto_end=False)
    source = ListStrategy([rec("r1", A)])
    receiver = Receiver()
    clock = ManualClock()
    with receiver.serving():
        hub = make_hub(sqlite_url, agent, source, clock=clock)
        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                await tg.start(hub.run)
                await agent.wait_for_live(1)  # dispatched before the webhook existed
                assert await hub.reconfigure(webhooks=[hook(receiver)]) == ["webhooks"]
                next(iter(agent.live.values())).end()
                await until_delivered(receiver, 1, clock)
                hub.stop()
    assert [verified(r)["type"] for r in receiver.delivered()] == ["call.completed"]
