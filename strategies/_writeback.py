"""What every built-in strategy writes back for an outcome, and where (shared by CSV and SQL)."""

from __future__ import annotations

from dataclasses import dataclass

from dispatch.abc import CallbackName

__all__ = ["WriteBack", "outcome_status"]


@dataclass(frozen=True, slots=True)
class WriteBack:
    """Which columns of the source receive outcomes.

    ``status_column`` gets ``dispatched``, ``completed: <reason>``, ``failed: <error>`` or
    ``skipped: <reason>``; ``call_id_column`` the platform's call id; ``time_column`` the UTC
    time the outcome was written. A CSV appends the columns it lacks; a SQL table must have
    them. ``attempts`` (CSV only) is how often a write is tried while the file keeps changing
    under it.
    """

    status_column: str = "dispatch_status"
    call_id_column: str | None = None
    time_column: str | None = None
    attempts: int = 5

    def columns(self) -> list[str]:
        named = [self.status_column, self.call_id_column, self.time_column]
        return [c for c in named if c]


def outcome_status(callback: CallbackName, args: tuple[str, ...]) -> tuple[str, str]:
    """The status cell and the call id (or "") for an outcome delivered as ``callback(*args)``."""
    if callback == "on_dispatched":
        return "dispatched", args[0]
    if callback == "on_completed":
        return f"completed: {args[1]}", args[0]
    return f"{callback.removeprefix('on_')}: {args[0]}", ""
