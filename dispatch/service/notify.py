"""The sd_notify protocol, spoken natively: one datagram per state change, to the supervisor.

systemd (``Type=notify``) passes ``$NOTIFY_SOCKET``: a unix datagram socket, named by a path or,
with a leading ``@``, in the abstract namespace. Each datagram holds newline-separated
``KEY=value`` assignments (``READY=1``, ``STATUS=...``, ``WATCHDOG=1``, ``STOPPING=1``), as
sd_notify(3) describes. Without the variable (a terminal, ``Type=simple``) nothing is sent.

A lost notification must never stop the daemon: sending never blocks (a full socket buffer
drops the datagram) and a failure is logged once.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping
from typing import Self

__all__ = ["Notifier"]

logger = logging.getLogger(__name__)


class Notifier:
    """Tells the service manager what the daemon is doing. ``address`` is the socket as
    ``$NOTIFY_SOCKET`` names it (``/run/systemd/notify``, ``@abstract``); None: a no-op."""

    def __init__(self, address: str | None) -> None:
        self.address = address or None
        self._target: str | None = None
        if self.address is not None:
            if self.address.startswith("@"):
                self._target = "\0" + self.address[1:]
            elif self.address.startswith("/"):
                self._target = self.address
            else:  # vsock:... and friends: not spoken here
                logger.warning("notify.unsupported socket=%s (not a unix socket)", self.address)
        self._socket: socket.socket | None = None
        self._failed = False
        self.ready_sent = False
        self.stopping_sent = False

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] = os.environ) -> Notifier:
        return cls(environ.get("NOTIFY_SOCKET"))

    @property
    def enabled(self) -> bool:
        return self._target is not None

    def send(self, **fields: str) -> bool:
        """Send ``KEY=value`` assignments in one datagram (``send(READY="1")``); True if it
        left. A value is one line: line breaks become spaces."""
        if self._target is None:
            return False
        message = "\n".join(f"{key}={_one_line(value)}" for key, value in fields.items())
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._socket.setblocking(False)
            self._socket.sendto(message.encode("utf-8", "replace"), self._target)
        except OSError as exc:
            if not self._failed:
                logger.warning(
                    "notify.failed socket=%s error=%s (the service manager may not hear from us)",
                    self.address,
                    exc,
                )
            self._failed = True
            return False
        self._failed = False
        return True

    def ready(self, status: str) -> None:
        """``READY=1``, once, and not after :meth:`stopping` (a stop during startup)."""
        if self.ready_sent or self.stopping_sent:
            return
        self.ready_sent = True
        self.send(READY="1", STATUS=status)

    def reloading(self) -> None:
        """``RELOADING=1``: a reload begins (systemd wants the monotonic time with it)."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send(RELOADING="1", MONOTONIC_USEC=str(usec), STATUS="reloading the configuration")

    def reloaded(self, status: str) -> None:
        """``READY=1`` again once a reload is over (taken or refused), unless stopping."""
        if not self.stopping_sent:
            self.send(READY="1", STATUS=status)

    def status(self, status: str) -> None:
        self.send(STATUS=status)

    def watchdog(self) -> None:
        self.send(WATCHDOG="1")

    def stopping(self, status: str | None = None) -> None:
        """``STOPPING=1``, once; later calls only update the status."""
        fields = {} if self.stopping_sent else {"STOPPING": "1"}
        self.stopping_sent = True
        if status is not None:
            fields["STATUS"] = status
        if fields:
            self.send(**fields)

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Notifier({self.address!r})"


def _one_line(value: str) -> str:
    return " ".join(value.splitlines())
