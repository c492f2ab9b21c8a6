"""Signed outcome webhooks: one JSON POST per event, delivered from the outbox.

Each configured endpoint gets its own outbox row for every event it subscribes to, committed
in the same transaction as the outcome (strategy ``webhook:<name>``), so delivery is at least
once, in order per record, and survives restarts, like a strategy callback. Requests are
signed by the Standard Webhooks scheme (the ``standardwebhooks`` package): ``webhook-id`` (the
same on every retry of one event), ``webhook-timestamp`` and ``webhook-signature: v1,<base64
HMAC-SHA256 of "id.timestamp.body">`` with a ``whsec_`` secret, so a receiver verifies them
with an off-the-shelf library.

A 2xx answer delivers the event; ``410 Gone`` disables the endpoint until the daemon restarts
(its events are dropped, loudly); anything else (another status, a timeout, a refused
connection) fails the delivery, which the outbox retries with backoff.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from .abc import CallResult
from .clock import Clock

if TYPE_CHECKING:
    import httpx

    from .store.outbox import OutboxRow

__all__ = ["EVENTS", "WebhookEndpoint", "Webhooks"]

logger = logging.getLogger(__name__)

# The events, by the callback that reports them, and their `type` in the body.
EVENTS = {
    "on_dispatched": ("dispatched", "call.dispatched"),
    "on_result": ("result", "call.result"),
    "on_completed": ("completed", "call.completed"),
    "on_failed": ("failed", "call.failed"),
    "on_skipped": ("skipped", "record.skipped"),
}
PREFIX = "webhook:"
REST = 5.0  # seconds an endpoint that did not answer is left alone


@dataclass(frozen=True)
class WebhookEndpoint:
    """Where events go. ``secret`` is the ``whsec_...`` signing secret (never shown);
    ``events``: ``dispatched``, ``result``, ``completed``, ``failed``, ``skipped``."""

    name: str
    url: str
    secret: str = field(repr=False)
    events: frozenset[str] = frozenset(kind for kind, _ in EVENTS.values())
    timeout: float = 10.0

    def __post_init__(self) -> None:
        from standardwebhooks import Webhook

        unknown = self.events - {kind for kind, _ in EVENTS.values()}
        if unknown:
            known = ", ".join(kind for kind, _ in EVENTS.values())
            raise ValueError(f"webhook {self.name}: unknown events {sorted(unknown)} ({known})")
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"webhook {self.name}: url must be http:// or https://")
        try:
            Webhook(self.secret)
        except Exception:
            raise ValueError(
                f"webhook {self.name}: the secret is not a Standard Webhooks secret "
                "(whsec_ followed by base64)"
            ) from None

    @property
    def target(self) -> str:
        """The outbox's name for this endpoint's rows."""
        return PREFIX + self.name

    def wants(self, callback: str) -> bool:
        return callback in EVENTS and EVENTS[callback][0] in self.events


def routes(endpoints: Iterable[WebhookEndpoint]) -> dict[str, tuple[str, ...]]:
    """Callback name -> the outbox targets of the endpoints that want that event."""
    found: dict[str, tuple[str, ...]] = {}
    for callback in EVENTS:
        found[callback] = tuple(e.target for e in endpoints if e.wants(callback))
    return found


def body(row: OutboxRow) -> dict[str, Any]:
    """The JSON of one event: its ``type``, when it happened, and the record and outcome."""
    callback = row.callback
    strategy, *args = callback.args
    data: dict[str, Any] = {"strategy": strategy, "record": callback.record.to_json()}
    if callback.name == "on_dispatched":
        data["call_id"] = args[0]
    elif callback.name == "on_result":
        result = args[1]
        data["call_id"] = args[0]
        data["result"] = result.to_json() if isinstance(result, CallResult) else result
    elif callback.name == "on_completed":
        data["call_id"], data["reason"] = args[0], args[1]
    elif callback.name == "on_failed":
        data["error"] = args[0]
    else:
        data["reason"] = args[0]
    return {"type": EVENTS[callback.name][1], "timestamp": _iso(row.created_at), "data": data}


class Gone(Exception):
    """The receiver answered 410: it wants no more events."""


class Webhooks:
    """Sends the outbox's webhook rows; one HTTP client for every endpoint."""

    def __init__(self, endpoints: Sequence[WebhookEndpoint], clock: Clock) -> None:
        names = [e.name for e in endpoints]
        if len(set(names)) != len(names):
            raise ValueError(f"webhook names must be unique, got {names}")
        self.endpoints: Mapping[str, WebhookEndpoint] = {e.target: e for e in endpoints}
        self.clock = clock
        self.disabled: set[str] = set()
        # An endpoint that just failed to answer is not tried again for a moment: its other
        # due events fail at once (and wait their backoff) instead of each taking its
        # timeout, which would hold the outbox's pass, strategy callbacks included.
        # On the hub's clock, like the outbox's backoff that retries the events it fails.
        self._resting: dict[str, float] = {}  # target -> clock.monotonic() it may be tried
        self._client: httpx.AsyncClient | None = None

    async def aclose(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    async def send(self, row: OutboxRow) -> None:
        """POST the row's event; raise to have the outbox retry it. A row of an endpoint
        that is gone (410, or removed from the configuration) is dropped."""
        from standardwebhooks import Webhook

        endpoint = self.endpoints.get(row.callback.strategy)
        if endpoint is None or endpoint.target in self.disabled:
            why = "removed from the configuration" if endpoint is None else "disabled (410)"
            logger.warning(
                "webhook.dropped target=%s record=%s event=%s (the endpoint is %s)",
                row.callback.strategy,
                row.callback.record.id,
                row.callback.name,
                why,
            )
            return
        rest = self._resting.get(endpoint.target)
        if rest is not None and self.clock.monotonic() < rest:
            raise ConnectionError(f"webhook {endpoint.name}: not answering (tried again soon)")
        payload = json.dumps(body(row), separators=(",", ":"), default=str)
        message_id = f"msg_{row.created_at:%Y%m%d%H%M%S}_{row.id}"  # the same on every retry
        # The real time, not the hub's clock: the receiver checks it against its own to
        # refuse replays.
        now = datetime.now(UTC)
        headers = {
            "content-type": "application/json",
            "user-agent": "pinecall-dispatch",
            "webhook-id": message_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": Webhook(endpoint.secret).sign(message_id, now, payload),
        }
        client = self._open()
        try:
            response = await client.post(
                endpoint.url, content=payload, headers=headers, timeout=endpoint.timeout
            )
        except BaseException as exc:  # httpx's errors (or the outbox's timeout), without
            # the headers (the signature)
            self._resting[endpoint.target] = self.clock.monotonic() + REST
            if not isinstance(exc, Exception):
                raise
            raise ConnectionError(f"webhook {endpoint.name}: {type(exc).__name__}") from None
        self._resting.pop(endpoint.target, None)
        if response.status_code == 410:
            self.disabled.add(endpoint.target)
            logger.error(
                "webhook.disabled name=%s url=%s (the receiver answered 410 Gone: no more "
                "events go to it until the daemon restarts)",
                endpoint.name,
                _safe(endpoint.url),
            )
            return
        if not 200 <= response.status_code < 300:
            raise ConnectionError(f"webhook {endpoint.name}: HTTP {response.status_code}")

    def _open(self) -> httpx.AsyncClient:
        if self._client is None:
            import httpx

            from .logs import quiet_http_logs

            quiet_http_logs()
            self._client = httpx.AsyncClient(follow_redirects=False)
        return self._client


def _iso(at: datetime) -> str:
    return at.isoformat(timespec="seconds")


def _safe(url: str) -> str:
    """A URL without its query (which may hold a token)."""
    return url.split("?", 1)[0]
