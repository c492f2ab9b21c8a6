"""The persistent ledger (SQLite by default, PostgreSQL for several instances)."""

from __future__ import annotations

from . import reports
from .store import KnownRecord, Store, StoreStatistics, async_url, with_async_driver

__all__ = [
    "KnownRecord",
    "Store",
    "StoreStatistics",
    "async_url",
    "reports",
    "with_async_driver",
]
