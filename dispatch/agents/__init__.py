"""Built-in agents. The real Pinecall adapter arrives as ``dispatch.agents.pinecall``."""

from __future__ import annotations

from .simulated import SimulatedAgent, SimulatedCall

__all__ = ["SimulatedAgent", "SimulatedCall"]
