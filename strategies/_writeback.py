"""What every built-in strategy writes back for an outcome, and where (shared by CSV and SQL)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dispatch.abc import CallbackName, CallResult

__all__ = ["WriteBack", "outcome_status", "result_cells"]


@dataclass(frozen=True, slots=True)
class WriteBack:
    """Which columns of the source receive outcomes.

    ``status_column`` gets ``dispatched``, ``completed: <reason>``, ``failed: <error>`` or
    ``skipped: <reason>``; ``call_id_column`` the platform's call id; ``time_column`` the UTC
    time the outcome was written. A CSV appends the columns it lacks; a SQL table must have
    them. ``result_columns`` maps the fields of the callee's answers (a result tool's
    arguments, or ``tool`` / ``at``) to columns: ``{"status": "Appointment"}``.
    ``attempts`` (CSV only) is how often a write is tried while the file keeps changing under
    it. ``path`` (CSV only): write into this working copy of the file instead of the file
    itself (the copy follows the source's rows; the source is only read).
    """

    status_column: str = "dispatch_status"
    call_id_column: str | None = None
    time_column: str | None = None
    result_columns: Mapping[str, str] = field(default_factory=dict)
    attempts: int = 5
    path: str | None = None

    def columns(self) -> list[str]:
        named = [self.status_column, self.call_id_column, self.time_column]
        return [c for c in named if c] + [c for c in self.result_columns.values() if c]


def outcome_status(callback: CallbackName, args: tuple[Any, ...]) -> tuple[str, str]:
    """The status cell and the call id (or "") for an outcome delivered as ``callback(*args)``."""
    if callback == "on_dispatched":
        return "dispatched", args[0]
    if callback == "on_completed":
        return f"completed: {args[1]}", args[0]
    if callback == "on_result":
        result: CallResult = args[1]
        return f"result: {result.tool} {json.dumps(dict(result.arguments))}", args[0]
    return f"{callback.removeprefix('on_')}: {args[0]}", ""


def result_cells(result: CallResult, columns: Mapping[str, str]) -> dict[str, str]:
    """The cells ``result`` fills: each mapped field it has (an argument, else ``tool`` or
    ``at``), as text (JSON for lists and objects)."""
    fields: dict[str, Any] = {"tool": result.tool, "at": result.at.isoformat(timespec="seconds")}
    fields.update(result.arguments)
    cells = {}
    for name, column in columns.items():
        if name in fields and fields[name] is not None:
            value = fields[name]
            cells[column] = value if isinstance(value, str) else json.dumps(value)
    return cells
