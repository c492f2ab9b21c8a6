"""Log output for the daemon: readable text (journald adds its own timestamps) or JSON lines.

Library code only logs through ``logging.getLogger(__name__)``; configuring output is the
daemon's job alone.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Literal

__all__ = ["configure_logging"]


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname,
            "logger": record.name,
            "event": record.msg.split(" ", 1)[0] if isinstance(record.msg, str) else None,
            "message": record.getMessage(),
        }
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        return json.dumps(payload)


def configure_logging(level: str = "INFO", format: Literal["text", "json"] = "text") -> None:
    handler = logging.StreamHandler(sys.stdout)
    if format == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)-7s %(message)s", "%H:%M:%S")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # SQLAlchemy and aiosqlite are chatty at DEBUG; keep our own DEBUG readable.
    for noisy in ("sqlalchemy", "aiosqlite", "alembic"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
