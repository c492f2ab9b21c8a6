"""``dispatch check``: validate a setup before running it, changing nothing but the schema.

Reaches the store (applying pending migrations, as ``dispatch run`` would), connects and
registers the agent, opens each strategy and dry-runs one poll through admission: who would be
dialed, who would be skipped and why, who is already done. Prints a report (or JSON) and
returns 0 when everything answered, 1 otherwise. Secrets never appear in it.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio

from .abc import Strategy
from .admission import Admission, Skip
from .clock import Clock, SystemClock
from .config import Settings, store_url
from .errors import DispatchError, dispatch_error_in
from .hub import DispatchHub, poll_items
from .intake import Admit, Done, Ignore, Refuse, Wait, Withdraw, decide
from .rules.caps import CapTracker
from .rules.dnc import DoNotCallList
from .rules.gate import CallingRules, Gate, Hold
from .rules.gate import Refuse as GateRefuse
from .store import KnownRecord, Store

__all__ = ["CheckReport", "check"]


@dataclass(slots=True)
class _Part:
    name: str
    ok: bool = True
    detail: str = ""


@dataclass(slots=True)
class _Source:
    name: str
    ok: bool = True
    detail: str = ""
    counts: Counter[str] = field(default_factory=Counter)
    samples: list[tuple[str, str, str]] = field(default_factory=list)  # (decision, id, why)


@dataclass(slots=True)
class CheckReport:
    """What ``dispatch check`` found; the CLI prints :meth:`lines` or :meth:`as_json`."""

    parts: list[_Part]
    sources: list[_Source]

    @property
    def ok(self) -> bool:
        return all(p.ok for p in self.parts) and all(s.ok for s in self.sources)

    def as_json(self) -> dict[str, Any]:
        strategies = [
            {
                "name": s.name,
                "ok": s.ok,
                "detail": s.detail,
                "counts": dict(s.counts),
                "samples": [list(sample) for sample in s.samples],
            }
            for s in self.sources
        ]
        return {"ok": self.ok, "parts": [asdict(p) for p in self.parts], "strategies": strategies}

    def lines(self) -> list[str]:
        out = [f"{'ok  ' if p.ok else 'FAIL'} {p.name}: {p.detail}" for p in self.parts]
        for source in self.sources:
            if not source.ok:
                out.append(f"FAIL strategy {source.name}: {source.detail}")
                continue
            counts = ", ".join(f"{k} {v}" for k, v in sorted(source.counts.items()))
            out.append(f"ok   strategy {source.name}: one poll: {counts or 'no records'}")
            out.extend(f"       {d:<5} {rid:<24} {why}" for d, rid, why in source.samples)
            hidden = sum(source.counts.values()) - len(source.samples)
            if hidden > 0:
                out.append(f"       ... {hidden} more (--limit)")
        return out


async def check(
    settings: Settings, base: Path, *, limit: int, clock: Clock | None = None
) -> CheckReport:
    """Reach the store and the agent and dry-run one poll of each strategy, as of ``clock``'s
    time (now, by default)."""
    from .config import build_hub

    hub = build_hub(settings, base=base)
    parts: list[_Part] = []
    known: dict[tuple[str, str], KnownRecord] = {}
    store = Store(store_url(settings, base))
    clock = clock or SystemClock()
    dnc, tracker = DoNotCallList(), CapTracker()
    try:
        await store.open()
        known = await store.known_records()
        listed = await store.do_not_call()
        dnc.replace({p: e.added_at for p, e in listed.items()}, (len(listed), None))
        horizon = max((hub.calling_rules(s.name).caps.horizon for s in hub.strategies), default=0)
        if horizon:
            tracker.load(await store.dial_history(clock.now() - timedelta(seconds=horizon)))
        parts.append(_Part("store", detail=f"{store} reachable, schema up to date"))
    except DispatchError as exc:
        parts.append(_Part("store", ok=False, detail=str(exc)))
    finally:
        await store.aclose()
    parts.append(await _agent(hub))
    admission = Admission(default_region=settings.default_region, clock=clock)
    max_dials = hub.retry.max_dials
    gate = Gate(dnc, tracker)
    sources = [
        await _poll(s, admission, known, limit, max_dials, gate, hub.calling_rules(s.name), clock)
        for s in hub.strategies
    ]
    return CheckReport(parts, sources)


# How long the check waits for the agent: one that keeps reconnecting is a finding, not a
# reason to wait for ever.
AGENT_DEADLINE = 10.0


async def _agent(hub: DispatchHub) -> _Part:
    # The agent is opened and closed inside the deadline's scope: an agent's open() may enter
    # a task group that only its aclose() leaves, and scopes must nest.
    part = _Part("agent", detail=f"{hub.agent!r} connected and ready")
    with anyio.move_on_after(AGENT_DEADLINE) as deadline:
        try:
            await hub.agent.open(None)  # no hub behind it: nothing is dialed, nothing reported
        except Exception as exc:  # every failure is a finding of the check
            error = dispatch_error_in(exc) or exc
            part = _Part("agent", ok=False, detail=f"{type(error).__name__}: {error}")
        finally:
            # Not shielded: a scope opened here would not be the one the agent's task group
            # sits in. An open() cut short by the deadline closes what it opened itself.
            with contextlib.suppress(Exception):
                await hub.agent.aclose()  # a failed open is what the check reports
    if deadline.cancelled_caught:
        detail = (
            f"{hub.agent!r}: cannot connect after {AGENT_DEADLINE:g} s (is the url right, and "
            "the platform reachable from here?)"
        )
        return _Part("agent", ok=False, detail=detail)
    return part


async def _poll(
    strategy: Strategy,
    admission: Admission,
    known: dict[tuple[str, str], KnownRecord],
    limit: int,
    max_dials: int,
    gate: Gate,
    rules: CallingRules,
    clock: Clock,
) -> _Source:
    report = _Source(strategy.name)
    try:
        await strategy.open(None)
        items = [item async for item in poll_items(strategy)]
    except Exception as exc:
        return _Source(strategy.name, ok=False, detail=f"{type(exc).__name__}: {exc}")
    finally:
        await strategy.aclose()
    for item in items:
        # The decision `dispatch run` takes, for a hub that holds nothing yet.
        verdict = decide(
            item,
            known=known.get((strategy.name, item.id)),
            queued=False,
            in_flight=False,
            incremental=strategy.incremental,
            admission=admission,
            max_dials=max_dials,
        )
        if isinstance(verdict, Withdraw | Ignore):
            continue
        if isinstance(verdict, Done):
            decision, why = "done", verdict.why or f"{verdict.state} earlier"
        elif isinstance(verdict, Refuse):
            decision, why = "skip", _why(verdict.skip)
        elif isinstance(verdict, Wait):
            when = f"{verdict.until:%Y-%m-%d %H:%M:%S} UTC"
            decision, why = "wait", f"{'retry' if verdict.why == 'retry' else 'not due'} {when}"
        else:
            assert isinstance(verdict, Admit)
            # And what the calling rules would say, were it dialed now.
            ruled = gate.check(rules, verdict.record, clock.now())
            if isinstance(ruled, Hold):
                decision, why = "wait", ruled.why
            elif isinstance(ruled, GateRefuse):
                decision, why = "skip", _why(ruled.skip)
            else:
                decision, why = "dial", verdict.record.phone
        report.counts[decision] += 1
        if len(report.samples) < limit:
            report.samples.append((decision, item.id, why))
    return report


def _why(skip: Skip) -> str:
    """``dnc since 2026-11-02``, ``invalid_phone: too short``: the reason, once."""
    reason, detail = str(skip.reason), skip.detail
    if not detail or detail == reason:
        return reason
    return detail if detail.startswith(reason) else f"{reason}: {detail}"
