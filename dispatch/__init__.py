"""pinecall-dispatch: outbound voice-AI call campaigns, paced, capped and crash-safe.

from dispatch import DispatchHub, Record, Strategy, SimulatedAgent
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from .abc import Agent, Call, CallEnd, DialRequest, Strategy
from .agents import SimulatedAgent
from .clock import Clock, SystemClock
from .errors import (
    ConfigError,
    DialError,
    DialRejected,
    DialUnknown,
    DispatchError,
    InvalidPhone,
    StoreError,
)
from .hub import DispatchHub, HubStatistics
from .options import Pacing, RecoverMode, RetryPolicy
from .outbox import Backoff
from .pacing import LimiterStatistics, SlidingWindowLimiter
from .record import Record, normalize_phone
from .states import AttemptState, RecordState, SkipReason
from .store import Store

try:
    __version__ = version("pinecall-dispatch")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0+unknown"

__all__ = [
    "Agent",
    "AttemptState",
    "Backoff",
    "Call",
    "CallEnd",
    "Clock",
    "ConfigError",
    "DialError",
    "DialRejected",
    "DialRequest",
    "DialUnknown",
    "DispatchError",
    "DispatchHub",
    "HubStatistics",
    "InvalidPhone",
    "LimiterStatistics",
    "Pacing",
    "Record",
    "RecordState",
    "RecoverMode",
    "RetryPolicy",
    "SimulatedAgent",
    "SkipReason",
    "SlidingWindowLimiter",
    "Store",
    "StoreError",
    "Strategy",
    "SystemClock",
    "__version__",
    "normalize_phone",
]
