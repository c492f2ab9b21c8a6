"""Built-in record sources. Each is importable alone: ``from strategies.csv import CsvStrategy``."""

from __future__ import annotations

from .csv import CsvStrategy, RowMapper, WriteBack, WriteBackError, neutralize
from .sql import SqlStrategy

__all__ = ["CsvStrategy", "RowMapper", "SqlStrategy", "WriteBack", "WriteBackError", "neutralize"]
