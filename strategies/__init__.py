"""Built-in record sources. Each is importable alone: ``from strategies.csv import CsvStrategy``.

The names below load on first use (PEP 562): a daemon that reads a CSV file does not pay for
the HTTP client, nor one that reads an API for the SQL machinery it does not use.
"""

from __future__ import annotations

from dispatch._lazy import exports

TYPE_CHECKING = False  # typing.TYPE_CHECKING to mypy and ruff

if TYPE_CHECKING:
    from .csv import CsvStrategy, RowMapper, WriteBack, WriteBackError, neutralize
    from .http import HttpAuth, HttpStrategy, HttpWriteBack, ItemMap, PageMap
    from .sql import SqlStrategy

_EXPORTS = {
    "CsvStrategy": ".csv",
    "RowMapper": ".csv",
    "WriteBack": ".csv",
    "WriteBackError": ".csv",
    "neutralize": ".csv",
    "HttpAuth": ".http",
    "HttpStrategy": ".http",
    "HttpWriteBack": ".http",
    "ItemMap": ".http",
    "PageMap": ".http",
    "SqlStrategy": ".sql",
}
__getattr__ = exports(__name__, _EXPORTS, globals())


def __dir__() -> list[str]:
    return sorted(__all__)


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
