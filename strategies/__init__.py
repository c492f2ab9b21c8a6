"""Built-in record sources. Each is importable alone: ``from strategies.csv import CsvStrategy``."""

from __future__ import annotations

from .csv import CsvStrategy, RowMapper, WriteBack, WriteBackError, neutralize

__all__ = ["CsvStrategy", "RowMapper", "WriteBack", "WriteBackError", "neutralize"]
