"""The persistent ledger (SQLite by default, PostgreSQL for several instances)."""

from __future__ import annotations

from . import reports
from .store import (
    DoNotCall,
    Heartbeat,
    KnownRecord,
    Skipped,
    Store,
    StoreStatistics,
    async_url,
    with_async_driver,
)

__all__ = [
    "DoNotCall",
    "Heartbeat",
    "KnownRecord",
    "Skipped",
    "Store",
    "StoreStatistics",
    "async_url",
    "reports",
    "with_async_driver",
]
