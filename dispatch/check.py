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

from .abc import PollItem, Strategy
from .admission import Admission, Skip
from .clock import Clock, SystemClock
from .config import Settings, store_url
from .errors import DispatchError, StoreUnavailable, dispatch_error_in
from .hub import DispatchHub, poll_items
from .intake import Admit, Done, Ignore, Refuse, Wait, Withdraw, decide
from .rules.caps import CapTracker
from .rules.dnc import DoNotCallList
from .rules.gate import CallingRules, Gate, Hold
from .rules.gate import Refuse as GateRefuse
from .service.preflight import STORE_HINT, missing_extra
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


# How long each part of the check (the store, the agent, each strategy's poll) may take: a
# part that keeps reconnecting or never answers is a finding, not a reason to wait for ever.
DEADLINE = 10.0
CLOSE_DEADLINE = 5.0  # for closing what a part opened, once it is over


async def check(
    settings: Settings,
    base: Path,
    *,
    limit: int,
    clock: Clock | None = None,
    deadline: float = DEADLINE,
) -> CheckReport:
    """Reach the store and the agent and dry-run one poll of each strategy, as of ``clock``'s
    time (now, by default), giving each of them ``deadline`` seconds."""
    from .config import build_hub

    hub = build_hub(settings, base=base)
    clock = clock or SystemClock()
    store = Store(store_url(settings, base))
    dnc, tracker = DoNotCallList(), CapTracker()
    part, known = await _store(store, hub, dnc, tracker, clock, deadline)
    parts = [part, await _agent(hub, deadline)]
    admission = Admission(default_region=settings.default_region, clock=clock)
    max_dials = hub.retry.max_dials
    gate = Gate(dnc, tracker)
    sources = [
        await _poll(
            s, admission, known, limit, max_dials, gate, hub.calling_rules(s.name), clock, deadline
        )
        for s in hub.strategies
    ]
    return CheckReport(parts, sources)


async def _store(
    store: Store,
    hub: DispatchHub,
    dnc: DoNotCallList,
    tracker: CapTracker,
    clock: Clock,
    deadline: float,
) -> tuple[_Part, dict[tuple[str, str], KnownRecord]]:
    """Open (and migrate) the store and read what admission needs of it: the records it
    knows, the do-not-call list and the dial history the caps look at."""
    known: dict[tuple[str, str], KnownRecord] = {}
    part = _Part("store", detail=f"{store} reachable, schema up to date")
    with anyio.move_on_after(deadline) as scope:
        try:
            await store.open()
            known = await store.known_records()
            listed = await store.do_not_call()
            dnc.replace({p: e.added_at for p, e in listed.items()}, (len(listed), None))
            rules = (hub.calling_rules(s.name) for s in hub.strategies)
            horizon = max((r.caps.horizon for r in rules), default=0)
            if horizon:
                since = clock.now() - timedelta(seconds=horizon)
                tracker.load(await store.dial_history(since))
        except DispatchError as exc:
            hint = f"; {STORE_HINT}" if isinstance(exc, StoreUnavailable) else ""
            part = _Part("store", ok=False, detail=f"{exc}{hint}")
        finally:
            with anyio.move_on_after(CLOSE_DEADLINE, shield=True):
                await store.aclose()
    if scope.cancelled_caught:
        part = _Part("store", ok=False, detail=f"no answer from {store} after {deadline:g} s "
                     f"({STORE_HINT})")  # fmt: skip
    return part, known


async def _agent(hub: DispatchHub, deadline: float) -> _Part:
    # The agent is opened and closed inside the deadline's scope: an agent's open() may enter
    # a task group that only its aclose() leaves, and scopes must nest.
    part = _Part("agent", detail=f"{hub.agent!r} connected and ready")
    with anyio.move_on_after(deadline) as scope:
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
    if scope.cancelled_caught:
        detail = (
            f"cannot connect to {hub.agent!r} after {deadline:g} s (is the url right, and the "
            "platform reachable from here?)"
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
    deadline: float,
) -> _Source:
    report = _Source(strategy.name)
    items: list[PollItem] = []
    with anyio.move_on_after(deadline) as scope:
        try:
            await strategy.open(None)
            items = [item async for item in poll_items(strategy)]
        except Exception as exc:
            detail = missing_extra(exc) or f"{type(exc).__name__}: {exc}"
            return _Source(strategy.name, ok=False, detail=detail)
        finally:
            with anyio.move_on_after(CLOSE_DEADLINE, shield=True):
                await strategy.aclose()
    if scope.cancelled_caught:
        detail = (
            f"no answer from the source after {deadline:g} s (is it reachable from here, and "
            "answering? `dispatch run` would keep polling it)"
        )
        return _Source(strategy.name, ok=False, detail=detail)
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
