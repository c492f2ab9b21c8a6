"""Built-in agents: :class:`SimulatedAgent` (the default) and :class:`PinecallAgent`
(``dispatch.agents.pinecall``, loaded on first use: it needs ``websockets``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .simulated import SimulatedAgent, SimulatedCall

if TYPE_CHECKING:
    from .pinecall import PinecallAgent

__all__ = ["PinecallAgent", "SimulatedAgent", "SimulatedCall"]


def __getattr__(name: str) -> Any:
    if name == "PinecallAgent":
        from .pinecall import PinecallAgent

        return PinecallAgent
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
