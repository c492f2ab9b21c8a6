"""Admission rules, one module each: calling hours (:mod:`.hours`), campaign schedules
(:mod:`.schedule`), per-number caps (:mod:`.caps`), do-not-call (:mod:`.dnc`) and the gate that
applies them before a dial (:mod:`.gate`). Rule packs are data files in ``rules/packs/``.

This package itself holds only :func:`parse_duration`, shared by the packs and the
configuration. The rule modules are imported on first use, so that importing
``dispatch.rules`` (and ``dispatch --help``) stays cheap.
"""

from __future__ import annotations

import math
import re
from importlib import import_module
from typing import TYPE_CHECKING, Any

__all__ = [
    "BUILTIN_PACKS",
    "CallingHours",
    "HolidayCalendar",
    "RulePack",
    "Schedule",
    "Window",
    "custom_pack",
    "load_pack",
    "parse_duration",
    "windows_from_config",
    "zones_for",
]

_LAZY = {
    "BUILTIN_PACKS": ".hours",
    "CallingHours": ".hours",
    "HolidayCalendar": ".hours",
    "RulePack": ".hours",
    "Window": ".hours",
    "custom_pack": ".hours",
    "load_pack": ".hours",
    "windows_from_config": ".hours",
    "zones_for": ".hours",
    "Schedule": ".schedule",
}

if TYPE_CHECKING:
    from .hours import (
        BUILTIN_PACKS,
        CallingHours,
        HolidayCalendar,
        RulePack,
        Window,
        custom_pack,
        load_pack,
        windows_from_config,
        zones_for,
    )
    from .schedule import Schedule

# Lower-case units only: "M" would read as months to some people and minutes to others.
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86_400.0, "w": 604_800.0}
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([smhdw]?)")


def parse_duration(value: str | float | int) -> float:
    """A duration in seconds, from ``"30s"``, ``"10m"``, ``"2h"``, ``"60d"``, ``"1w"``, a
    plain number of seconds (``90``, ``2.5``) or a numeric string (``"90"``).

    One number and one unit (``s``, ``m``, ``h``, ``d``, ``w``; lower case); surrounding
    blanks are ignored. Raises :class:`ValueError` naming the value for anything else:
    negative, infinite or NaN numbers, booleans, combined forms such as ``"1h30m"``, unknown
    units.
    """
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"invalid duration {value!r}: give seconds or a string such as '10m'")
    if isinstance(value, str):
        match = _DURATION.fullmatch(value.strip())
        if match is None:
            raise ValueError(
                f"invalid duration {value!r}: expected a number and a unit among s, m, h, d, w "
                "(e.g. '30s', '10m', '2h', '60d')"
            )
        number, unit = match.groups()
        seconds = float(number) * _UNITS[unit or "s"]
    else:
        seconds = float(value)
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"invalid duration {value!r}: must be a finite, non-negative length")
    return seconds


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
