"""Faults at the real boundary: a TCP proxy in front of a real server that a test can cut.

``TcpProxy`` listens on 127.0.0.1 (a port of its own) and forwards every connection to the
real server. ``cut()`` drops every open connection at once and makes new ones fail until
``restore()``: what a database restart, a network partition or a firewall looks like to the
client. ``refuse=True`` closes the listening socket (connection refused); otherwise a new
connection is accepted and closed at once (reset by peer).
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import anyio.abc
from anyio.abc import SocketStream, TaskGroup


class TcpProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = _free_port()
        self.connections = 0  # accepted and forwarded so far
        self._cut = False
        self._blackhole = False
        self.attempts = 0  # connections tried, forwarded or not
        self._trap: bytes | None = None  # see lose_commit_reply
        self._trap_state = ""
        self.trapped = anyio.Event()
        self._scopes: set[anyio.CancelScope] = set()
        self._listening: anyio.CancelScope | None = None
        self._tg: TaskGroup | None = None

    @property
    def is_cut(self) -> bool:
        return self._cut

    def cut(self, *, refuse: bool = False) -> None:
        """Drop every connection; new ones fail (refused, or reset) until :meth:`restore`."""
        self._blackhole = False
        self._cut = True
        for scope in list(self._scopes):
            scope.cancel()
        if refuse and self._listening is not None:
            self._listening.cancel()
            self._listening = None

    def blackhole(self) -> None:
        """A network that drops packets: nothing goes through any more, in either direction,
        and nothing is closed or refused (new connections are accepted and never answered)."""
        self._blackhole = True

    def lose_commit_reply(self, statement: bytes) -> None:
        """The next transaction that sends ``statement`` commits on the server, but its
        client never hears so: the reply to its COMMIT is dropped and the connection cut (a
        network failure at the worst moment). ``trapped`` is set when it happened."""
        self._trap, self._trap_state = statement, ""

    async def restore(self) -> None:
        self._cut = self._blackhole = False
        if self._listening is None and self._tg is not None:
            await self._tg.start(self._listen)

    async def _listen(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        with anyio.CancelScope() as scope:
            self._listening = scope
            listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=self.port)
            task_status.started()
            async with listener:
                await listener.serve(self._handle)

    async def _handle(self, client: SocketStream) -> None:
        async with client:
            self.attempts += 1
            if self._blackhole:
                await anyio.sleep_forever()  # accepted, never answered
            if self._cut:
                return  # accepted and closed at once
            try:
                server = await anyio.connect_tcp(*self.target)
            except OSError:
                return
            self.connections += 1
            with anyio.CancelScope() as scope:
                self._scopes.add(scope)
                try:
                    async with server, anyio.create_task_group() as tg:
                        tg.start_soon(self._pump, client, server, tg, True)
                        tg.start_soon(self._pump, server, client, tg, False)
                finally:
                    self._scopes.discard(scope)

    async def _pump(
        self, source: SocketStream, sink: SocketStream, tg: TaskGroup, upstream: bool
    ) -> None:
        try:
            async for chunk in source:
                if self._blackhole:
                    continue  # lost on the way
                if self._trap is not None:
                    if upstream and self._trap in chunk:
                        self._trap_state = "statement"
                    elif upstream and self._trap_state == "statement" and b"COMMIT" in chunk:
                        self._trap_state = "commit"
                    elif not upstream and self._trap_state == "commit":
                        # The server has committed and answers: the client never hears it.
                        self._trap = None
                        self.trapped.set()
                        self.cut()
                        return
                await sink.send(chunk)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass
        tg.cancel_scope.cancel()  # one side gone: drop the other


@asynccontextmanager
async def tcp_proxy(target_host: str, target_port: int) -> AsyncIterator[TcpProxy]:
    """Run a :class:`TcpProxy` for the duration of the block."""
    proxy = TcpProxy(target_host, target_port)
    async with anyio.create_task_group() as tg:
        proxy._tg = tg
        await tg.start(proxy._listen)
        try:
            yield proxy
        finally:
            proxy.cut(refuse=True)
            tg.cancel_scope.cancel()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
