"""pinecall-dispatch: outbound voice-AI call campaigns, paced, capped and crash-safe.

from dispatch import DispatchHub, Record, Strategy, SimulatedAgent
"""

from __future__ import annotations

from ._lazy import exports

# typing is not imported at run time: `dispatch --help` would pay for it (mypy and ruff read
# this constant as typing.TYPE_CHECKING).
TYPE_CHECKING = False

# The public names load on first use (PEP 562), so `dispatch --help` and tools that import one
# submodule do not pay for SQLAlchemy, pydantic and phonenumbers.
_EXPORTS = {
    "CallingRules": ".rules.gate",
    "Caps": ".rules.caps",
    "RetryRule": ".options",
    "DoNotCall": ".store",
    "SimulatedResult": ".agents.simulated",
    "ActionKind": ".results",
    "ResultAction": ".results",
    "ResultTool": ".results",
    "CallResult": ".abc",
    "Agent": ".abc",
    "AgentContext": ".abc",
    "AttemptState": ".states",
    "Backoff": ".options",
    "Call": ".abc",
    "CallEnd": ".abc",
    "Clock": ".clock",
    "ConfigError": ".errors",
    "DialError": ".errors",
    "DialInterrupted": ".errors",
    "DialRejected": ".errors",
    "DialRequest": ".abc",
    "DialUnknown": ".errors",
    "DispatchError": ".errors",
    "DispatchHub": ".hub",
    "Heartbeat": ".store",
    "HubStatistics": ".hub",
    "KEEP": ".hub",
    "Keep": ".hub",
    "InvalidPhone": ".errors",
    "LateOutcome": ".abc",
    "LimiterStatistics": ".pacing",
    "Malformed": ".abc",
    "Pacing": ".options",
    "PinecallAgent": ".agents.pinecall",
    "Record": ".record",
    "RecordState": ".states",
    "RecoverMode": ".options",
    "Removed": ".abc",
    "Reservation": ".pacing",
    "RetryPolicy": ".options",
    "SimulatedAgent": ".agents",
    "SkipReason": ".states",
    "SlidingWindowLimiter": ".pacing",
    "Slots": ".pacing",
    "SourceError": ".errors",
    "Store": ".store",
    "StrategyStatistics": ".hub",
    "StoreError": ".errors",
    "StoreInUse": ".errors",
    "StoreUnavailable": ".errors",
    "Strategy": ".abc",
    "StrategyContext": ".abc",
    "SystemClock": ".clock",
    "normalize_phone": ".record",
}
_load = exports(__name__, _EXPORTS, globals())

if TYPE_CHECKING:
    from typing import Any

    from .abc import (
        Agent,
        AgentContext,
        Call,
        CallEnd,
        CallResult,
        DialRequest,
        LateOutcome,
        Malformed,
        Removed,
        Strategy,
        StrategyContext,
    )
    from .agents import SimulatedAgent
    from .agents.pinecall import PinecallAgent
    from .agents.simulated import SimulatedResult
    from .clock import Clock, SystemClock
    from .errors import (
        ConfigError,
        DialError,
        DialInterrupted,
        DialRejected,
        DialUnknown,
        DispatchError,
        InvalidPhone,
        SourceError,
        StoreError,
        StoreInUse,
        StoreUnavailable,
    )
    from .hub import KEEP, DispatchHub, HubStatistics, Keep, StrategyStatistics
    from .options import Backoff, Pacing, RecoverMode, RetryPolicy, RetryRule
    from .pacing import LimiterStatistics, Reservation, SlidingWindowLimiter, Slots
    from .record import Record, normalize_phone
    from .results import ActionKind, ResultAction, ResultTool
    from .rules.caps import Caps
    from .rules.gate import CallingRules
    from .states import AttemptState, RecordState, SkipReason
    from .store import DoNotCall, Heartbeat, Store


def __getattr__(name: str) -> Any:
    if name == "__version__":  # importlib.metadata takes longer to import than the CLI
        globals()[name] = value = _version()
        return value
    return _load(name)


def __dir__() -> list[str]:
    return sorted(__all__)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pinecall-dispatch")
    except PackageNotFoundError:  # running from a source tree without an install
        return "0+unknown"


__all__ = [
    "KEEP",
    "ActionKind",
    "Agent",
    "AgentContext",
    "AttemptState",
    "Backoff",
    "Call",
    "CallEnd",
    "CallResult",
    "CallingRules",
    "Caps",
    "Clock",
    "ConfigError",
    "DialError",
    "DialInterrupted",
    "DialRejected",
    "DialRequest",
    "DialUnknown",
    "DispatchError",
    "DispatchHub",
    "DoNotCall",
    "Heartbeat",
    "HubStatistics",
    "InvalidPhone",
    "Keep",
    "LateOutcome",
    "LimiterStatistics",
    "Malformed",
    "Pacing",
    "PinecallAgent",
    "Record",
    "RecordState",
    "RecoverMode",
    "Removed",
    "Reservation",
    "ResultAction",
    "ResultTool",
    "RetryPolicy",
    "RetryRule",
    "SimulatedAgent",
    "SimulatedResult",
    "SkipReason",
    "SlidingWindowLimiter",
    "Slots",
    "SourceError",
    "Store",
    "StoreError",
    "StoreInUse",
    "StoreUnavailable",
    "Strategy",
    "StrategyContext",
    "StrategyStatistics",
    "SystemClock",
    "__version__",
    "normalize_phone",
]
