"""Delivering strategy callbacks off the dialing path.

Callbacks are queued and run one at a time by a worker task, in the order their events
happened; a callback that raises or exceeds ``timeout`` is logged with the record id and the
worker moves on. Dialing never waits for a callback to run.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectSendStream

from .abc import Strategy
from .record import Record

__all__ = ["CallbackRunner", "invoke"]

logger = logging.getLogger(__name__)


async def invoke(function: Callable[..., Any], *args: Any) -> Any:
    """Call a plain or async function and await its result if it is awaitable."""
    result = function(*args)
    if inspect.isawaitable(result):
        result = await result
    return result


@dataclass(frozen=True, slots=True)
class _Delivery:
    strategy: Strategy
    callback: str
    record: Record
    args: tuple[Any, ...]


class CallbackRunner:
    def __init__(self, *, timeout: float = 30.0, queue_size: int = 100_000) -> None:
        self.timeout = timeout
        self._queue_size = queue_size
        self._send: MemoryObjectSendStream[_Delivery] | None = None
        self.delivered = 0
        self.failed = 0

    async def deliver(self, strategy: Strategy, callback: str, record: Record, *args: Any) -> None:
        """Queue ``strategy.<callback>(record, *args)``; never raises."""
        if self._send is None:
            raise RuntimeError("the callback runner is not running")
        try:
            await self._send.send(_Delivery(strategy, callback, record, args))
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            # Only when the hub itself is being torn down by cancellation.
            logger.error(
                "callback.dropped strategy=%s callback=%s record=%s (hub shutting down)",
                strategy.name,
                callback,
                record.id,
            )

    def close(self) -> None:
        """No more deliveries; :meth:`run` finishes what is queued and returns."""
        if self._send is not None:
            self._send.close()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        self._send, receive = anyio.create_memory_object_stream[_Delivery](self._queue_size)
        task_status.started()
        async with receive:
            async for delivery in receive:
                await self._run_one(delivery)

    async def _run_one(self, d: _Delivery) -> None:
        # Looked up at delivery time so `strategy.on_completed = fn` works after construction.
        function = getattr(d.strategy, d.callback)
        try:
            with anyio.fail_after(self.timeout):
                await invoke(function, d.record, *d.args)
        except Exception as exc:
            self.failed += 1
            logger.error(
                "callback.failed strategy=%s callback=%s record=%s error=%s: %s",
                d.strategy.name,
                d.callback,
                d.record.id,
                type(exc).__name__,
                exc,
            )
        else:
            self.delivered += 1
