"""A CSV strategy whose callbacks append to a log, for the kill -9 and cluster tests (loaded by
the daemon through `kind = "python"`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from dispatch import Record
from strategies import CsvStrategy


class LoggedCsv(CsvStrategy):
    """Each callback appends one line, ``<callback> <record id> <args...>``, in one write(2) so
    a kill never leaves half a line that a later delivery would follow. With ``pid``, each
    line starts with the delivering process's pid (several daemons share one log)."""

    def __init__(self, path: str, log: str, pid: bool = False, **options: Any) -> None:
        super().__init__(path, **options)
        self.log = Path(log)
        self.pid = pid

    def _append(self, *fields: str) -> None:
        if self.pid:
            fields = (str(os.getpid()), *fields)
        fd = os.open(self.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (" ".join(fields) + "\n").encode())
        finally:
            os.close(fd)

    def on_dispatched(self, record: Record, call_id: str) -> None:
        self._append("on_dispatched", record.id, call_id)

    def on_completed(self, record: Record, call_id: str, reason: str) -> None:
        self._append("on_completed", record.id, call_id, reason)

    def on_failed(self, record: Record, error: str) -> None:
        self._append("on_failed", record.id, error)

    def on_skipped(self, record: Record, reason: str) -> None:
        self._append("on_skipped", record.id, reason)
