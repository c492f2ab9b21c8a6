"""Built-in record sources. Each is importable alone: ``from strategies.csv import CsvStrategy``."""

from __future__ import annotations

from .csv import CsvStrategy, RowMapper, WriteBack, WriteBackError, neutralize
from .http import HttpAuth, HttpStrategy, HttpWriteBack, ItemMap, PageMap
from .sql import SqlStrategy

__all__ = [
    "CsvStrategy",
    "HttpAuth",
    "HttpStrategy",
    "HttpWriteBack",
    "ItemMap",
    "PageMap",
    "RowMapper",
    "SqlStrategy",
    "WriteBack",
    "WriteBackError",
    "neutralize",
]
