"""A custom strategy and agent, runnable as-is: `.venv/bin/python examples/custom_strategy.py`.

The strategy reads "leads" from an in-memory CRM and writes outcomes back to it; the agent is
the simulated one, sped up. Replace `FakeCrm` with your CRM client and `SimulatedAgent` with the
real agent.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import anyio

from dispatch import DispatchHub, Record, SimulatedAgent, Strategy


class FakeCrm:
    def __init__(self) -> None:
        self.leads = {
            "crm-1": {"phone": "+14155552671", "name": "Ada", "status": "new"},
            "crm-2": {"phone": "(415) 555-2672", "name": "Alan", "status": "new"},
            "crm-3": {"phone": "12", "name": "Typo", "status": "new"},
        }


class CrmStrategy(Strategy):
    def __init__(self, crm: FakeCrm) -> None:
        super().__init__("crm")
        self.crm = crm

    async def poll(self) -> list[Record]:
        # Return everything still wanted, every time: the hub deduplicates by id.
        return [
            Record(id=lead_id, phone=lead["phone"], greeting=f"Hi {lead['name']}!")
            for lead_id, lead in self.crm.leads.items()
            if lead["status"] == "new"
        ]

    # Callbacks are delivered at least once: make them idempotent (set, don't append).
    async def on_completed(self, record: Record, call_id: str, reason: str) -> None:
        self.crm.leads[record.id]["status"] = f"called ({reason}, {call_id})"

    def on_failed(self, record: Record, error: str) -> None:
        self.crm.leads[record.id]["status"] = f"failed ({error})"

    def on_skipped(self, record: Record, reason: str) -> None:
        self.crm.leads[record.id]["status"] = f"skipped ({reason})"


async def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)-7s %(message)s")
    crm = FakeCrm()
    with tempfile.TemporaryDirectory() as tmp:
        hub = DispatchHub(
            agent=SimulatedAgent(answered=1, no_answer=0, busy=0, failed=0, time_scale=0.01),
            strategies=[CrmStrategy(crm)],
            from_="+14155550100",
            default_region="US",
            max_calls_per_minute=60,
            max_concurrent=2,
            store=f"sqlite:///{Path(tmp) / 'campaign.db'}",
            exit_when_done=True,
        )
        await hub.run()
    for lead_id, lead in crm.leads.items():
        print(lead_id, lead["status"])  # noqa: T201 - an example's output


if __name__ == "__main__":
    anyio.run(main)
