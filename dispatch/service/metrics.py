"""``GET /metrics`` (Prometheus text) and ``GET /healthz`` on one small HTTP/1.1 endpoint.

The server runs on the daemon's event loop, in the daemon's task group, and stops with it: no
thread outlives the daemon. Every scrape reads the hub afresh (a custom collector on a registry
of its own, so nothing global is touched): the hub counts in plain ints, and this is where they
become metrics. The one figure that needs a query, the callback backlog, is read at most every
few seconds (:class:`~dispatch.service.backlog.OutboxBacklog`), never per record.

``/healthz`` answers ``200 ok``, or ``503`` with a one-line reason when the event loop lags,
the store has been unreachable longer than ``store_grace`` or the agent disconnected longer
than ``agent_grace``. A loop that is stuck outright cannot answer at all: a prober sees a
timeout, which it must count as unhealthy (see docs/metrics.md).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

import anyio
from anyio.abc import SocketAttribute, SocketStream, TaskStatus
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from ..errors import StoreError
from ..histogram import HistogramStatistics
from ..store.store import StoreStatistics
from .backlog import OutboxBacklog

if TYPE_CHECKING:
    from ..config import MetricsConfig
    from ..hub import DispatchHub

__all__ = [
    "HealthLimits",
    "HubCollector",
    "MetricsServer",
    "agent_connected",
    "health_problem",
    "parse_listen",
    "serve_metrics",
]

logger = logging.getLogger(__name__)

TICK = 1.0  # seconds between loop-lag ticks (and looks at the agent)
LOOP_LAG_LIMIT = 5.0  # a tick this late makes /healthz fail
REQUEST_TIMEOUT = 5.0  # a client has this long to send its request head
MAX_HEAD = 8192  # bytes of request line and headers read at most
TEXT = "text/plain; charset=utf-8"


@dataclass(frozen=True, slots=True)
class HealthLimits:
    """How long each kind of trouble is tolerated before ``/healthz`` fails (seconds)."""

    store_grace: float = 60.0
    agent_grace: float = 120.0
    loop_lag: float = LOOP_LAG_LIMIT


def health_problem(
    *,
    now: float,
    store: StoreStatistics | None,
    agent_down_since: float | None,
    loop_lag: float,
    limits: HealthLimits,
) -> str | None:
    """The reason the daemon is unhealthy, or None. ``now``, ``store.unavailable_since`` and
    ``agent_down_since`` are on the hub's monotonic clock; ``store`` is None before the store
    is open (starting is not unhealthy)."""
    if loop_lag > limits.loop_lag:
        return f"event loop lagging: a {TICK:g}s tick came {loop_lag:.1f}s late"
    if store is not None and store.unavailable_since is not None:
        down = now - store.unavailable_since
        if down > limits.store_grace:
            return f"store unreachable for {down:.0f}s ({store.failed_tries} failed tries)"
    if agent_down_since is not None:
        down = now - agent_down_since
        if down > limits.agent_grace:
            return f"agent disconnected for {down:.0f}s"
    return None


def agent_connected(agent: object) -> bool | None:
    """Whether the agent holds its connection, for agents that keep one (PinecallAgent: its
    ``_ready`` event); None for agents that have no such state."""
    if not hasattr(agent, "_ready"):
        return None
    ready: Any = agent._ready
    return ready is not None and bool(ready.is_set())


class HubCollector(Collector):
    """Reads ``hub`` on every scrape. ``loop_lag`` and ``agent`` come from the server."""

    def __init__(self, hub: DispatchHub, server: MetricsServer | None = None) -> None:
        self.hub = hub
        self.server = server

    def collect(self) -> Iterable[Metric]:
        return list(self._collect())

    def _collect(self) -> Iterator[Metric]:
        s = self.hub.statistics()
        yield _counter("dispatch_dials", "Dials started.", s.dialed)
        outcomes = CounterMetricFamily(
            "dispatch_outcomes", "Records that reached an outcome.", labels=["outcome"]
        )
        for outcome, value in (
            ("completed", s.completed),
            ("failed", s.failed),
            ("skipped", s.skipped),
        ):
            outcomes.add_metric([outcome], value)
        yield outcomes
        ended = CounterMetricFamily(
            "dispatch_attempt_outcomes",
            "Dial attempts ended, by state and reason (completed/hangup, rejected/busy ...).",
            labels=["state", "reason"],
        )
        for state, by_reason in s.ended.items():
            for reason, value in sorted(by_reason.items()):
                ended.add_metric([state, reason], value)
        yield ended
        skips = CounterMetricFamily(
            "dispatch_skips", "Records skipped, by reason.", labels=["reason"]
        )
        for reason, value in sorted(s.skips.items()):
            skips.add_metric([reason], value)
        yield skips
        yield _gauge("dispatch_calls_active", "Calls in flight.", s.active)
        yield _gauge("dispatch_queue_pending", "Records due for dialing.", s.pending)
        yield _gauge("dispatch_queue_waiting", "Records waiting (retry, hours, caps).", s.waiting)
        yield _gauge(
            "dispatch_dials_rate_limited", "Dials waiting for the rate limit.", s.rate_limited
        )
        yield _gauge(
            "dispatch_numbers_held", "Numbers held: a call may still be live.", s.held_numbers
        )
        yield _gauge("dispatch_do_not_call_numbers", "Numbers on the DNC list.", s.do_not_call)
        yield from self._strategies()
        yield from self._store()
        yield from self._outbox()
        connected = agent_connected(self.hub.agent)
        if connected is not None:
            yield _gauge("dispatch_agent_connected", "1 while the agent is connected.", connected)
        if self.server is not None:
            yield _gauge(
                "dispatch_event_loop_lag_seconds",
                "How late the last 1s tick of the event loop came.",
                self.server.loop_lag,
            )

    def _strategies(self) -> Iterator[Metric]:
        pending = GaugeMetricFamily(
            "dispatch_strategy_pending", "Records due, by strategy.", labels=["strategy"]
        )
        waiting = GaugeMetricFamily(
            "dispatch_strategy_waiting", "Records waiting, by strategy.", labels=["strategy"]
        )
        reasons = GaugeMetricFamily(
            "dispatch_strategy_waiting_reason",
            "Records waiting, by strategy and what they wait for.",
            labels=["strategy", "reason"],
        )
        polls = HistogramMetricFamily(
            "dispatch_poll_duration_seconds",
            "Polls that read the source, by strategy: how long each took, intake included.",
            labels=["strategy"],
        )
        failures = CounterMetricFamily(
            "dispatch_poll_failures", "Polls that failed, by strategy.", labels=["strategy"]
        )
        for name, s in self.hub.strategy_statistics().items():
            pending.add_metric([name], s.pending)
            waiting.add_metric([name], s.waiting)
            for reason, count in sorted(s.waiting_for.items()):
                reasons.add_metric([name, reason], count)
            if s.poll_seconds is not None:
                _observed(polls, [name], s.poll_seconds)
            failures.add_metric([name], s.poll_failures)
        yield from (pending, waiting, reasons, polls, failures)

    def _store(self) -> Iterator[Metric]:
        store = self.hub.store
        yield _gauge("dispatch_store_available", "1 while the store takes writes.", store.available)
        try:
            s = store.statistics()
        except StoreError:  # not open yet: no writer to ask
            return
        yield _counter("dispatch_store_commits", "Transactions committed.", s.commits)
        yield _counter("dispatch_store_writes", "Writes committed.", s.writes)
        yield _gauge("dispatch_store_writes_held", "Writes held for the store.", s.held)
        yield _gauge(
            "dispatch_store_failed_tries", "Failed tries in the current outage.", s.failed_tries
        )
        down = (
            0.0 if s.unavailable_since is None else self.hub.clock.monotonic() - s.unavailable_since
        )
        yield _gauge("dispatch_store_unavailable_seconds", "Length of the current outage.", down)
        if s.commit_seconds is not None:
            commits = HistogramMetricFamily(
                "dispatch_store_commit_duration_seconds", "How long each commit took."
            )
            yield _observed(commits, [], s.commit_seconds)

    def _outbox(self) -> Iterator[Metric]:
        read = self.server.backlog.last if self.server is not None else None
        if read is None:  # not read yet (or never readable): no figure rather than a wrong 0
            return
        yield _gauge("dispatch_outbox_pending", "Callbacks not delivered yet.", read.pending)
        yield _gauge("dispatch_outbox_failing", "Of which failed at least once.", read.failing)
        age = 0.0
        if read.oldest is not None:
            age = max(0.0, (self.hub.clock.now() - read.oldest).total_seconds())
        yield _gauge(
            "dispatch_outbox_oldest_age_seconds", "Age of the oldest callback not delivered.", age
        )


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=float(value))


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=float(value))


def _observed(
    family: HistogramMetricFamily, labels: list[str], observed: HistogramStatistics
) -> HistogramMetricFamily:
    family.add_metric(labels, observed.cumulative(), observed.total)
    return family


def parse_listen(listen: str) -> tuple[str, int]:
    """``"127.0.0.1:9108"`` -> ``("127.0.0.1", 9108)``; ``"[::1]:9108"`` and ``":9108"`` (every
    interface) too. Raises ValueError for a port out of range."""
    host, _, port_text = listen.rpartition(":")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError(f"metrics.listen: port {port} out of range")
    return host.strip("[]") or "0.0.0.0", port


class MetricsServer:
    """The endpoint for one hub. Run :meth:`serve` in a task group; it returns only when
    cancelled, and closes its listener then."""

    def __init__(
        self,
        hub: DispatchHub,
        host: str = "127.0.0.1",
        port: int = 0,
        limits: HealthLimits | None = None,
        backlog: OutboxBacklog | None = None,
    ) -> None:
        self.hub = hub
        self.host = host
        self.port = port
        self.limits = limits or HealthLimits()
        self.backlog = backlog or OutboxBacklog(hub.store, hub.clock)
        self.loop_lag = 0.0
        self.agent_down_since: float | None = None
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(HubCollector(hub, self))

    async def serve(self, *, task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED) -> NoReturn:
        """Listen; ``task_status.started(port)`` with the port bound (for ``port=0``)."""
        listener = await anyio.create_tcp_listener(local_host=self.host, local_port=self.port)
        async with listener, anyio.create_task_group() as tg:
            port = listener.extra(SocketAttribute.local_port)
            logger.info("metrics.listening host=%s port=%d", self.host, port)
            tg.start_soon(self._tick)
            task_status.started(port)
            await listener.serve(self._handle, task_group=tg)
        raise AssertionError("unreachable: serve() returns only when cancelled")

    def health(self) -> str | None:
        """Why the daemon is unhealthy now, or None."""
        self._observe_agent()
        try:
            store: StoreStatistics | None = self.hub.store.statistics()
        except StoreError:
            store = None
        return health_problem(
            now=self.hub.clock.monotonic(),
            store=store,
            agent_down_since=self.agent_down_since,
            loop_lag=self.loop_lag,
            limits=self.limits,
        )

    def _observe_agent(self) -> None:
        connected = agent_connected(self.hub.agent)
        if connected is False:
            if self.agent_down_since is None:
                self.agent_down_since = self.hub.clock.monotonic()
        else:
            self.agent_down_since = None

    async def _tick(self) -> NoReturn:
        # Real loop time, not the hub's clock: lag is about this process, and a test's manual
        # clock must not make it look stuck.
        while True:
            started = anyio.current_time()
            await anyio.sleep(TICK)
            self.loop_lag = max(0.0, anyio.current_time() - started - TICK)
            self._observe_agent()

    async def _handle(self, stream: SocketStream) -> None:
        async with stream:
            try:
                with anyio.fail_after(REQUEST_TIMEOUT):
                    head = await _read_head(stream)
                status, content_type, body = await self._respond(head)
                await stream.send(_response(status, content_type, body))
            except (TimeoutError, anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                pass  # the client went away or never spoke: nothing to answer

    async def _respond(self, head: bytes | None) -> tuple[str, str, bytes]:
        if head is None:
            return "400 Bad Request", TEXT, b"bad request\n"
        parts = head.split(b"\r\n", 1)[0].split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            return "400 Bad Request", TEXT, b"bad request\n"
        method, target = parts[0], parts[1].split(b"?", 1)[0]
        if target not in (b"/metrics", b"/healthz"):
            return "404 Not Found", TEXT, b"not found: try /metrics or /healthz\n"
        if method != b"GET":
            return "405 Method Not Allowed", TEXT, b"only GET\n"
        if target == b"/metrics":
            await self.backlog.refresh()  # a query at most every few seconds, bounded in time
            return (
                "200 OK",
                "text/plain; version=0.0.4; charset=utf-8",
                generate_latest(self.registry),
            )
        problem = self.health()
        if problem is None:
            return "200 OK", TEXT, b"ok\n"
        return "503 Service Unavailable", TEXT, problem.encode() + b"\n"


async def _read_head(stream: SocketStream) -> bytes | None:
    """The request line and headers, or None when they run past :data:`MAX_HEAD`."""
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        if len(buffer) > MAX_HEAD:
            return None
        buffer += await stream.receive()
    return buffer.partition(b"\r\n\r\n")[0]


def _response(status: str, content_type: str, body: bytes) -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


async def serve_metrics(
    hub: DispatchHub,
    config: MetricsConfig,
    backlog: OutboxBacklog | None = None,
    *,
    task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Serve ``config.listen`` for ``hub`` until cancelled (the daemon's entry point)."""
    if config.listen is None:
        raise ValueError("metrics.listen is not set")
    host, port = parse_listen(config.listen)
    limits = HealthLimits(config.health_store_grace, config.health_agent_grace)
    await MetricsServer(hub, host, port, limits, backlog).serve(task_status=task_status)
