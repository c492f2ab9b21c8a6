"""``dispatch check``: validate a setup before running it, changing nothing but the schema.

Reaches the store (applying pending migrations, as ``dispatch run`` would), connects and
registers the agent, opens each strategy and dry-runs one poll through admission: who would be
dialed, who would be skipped and why, who is already done. Prints a report (or JSON) and
returns 0 when everything answered, 1 otherwise. Secrets never appear in it.
"""

from __future__ import annotations

import contextlib
import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .abc import Malformed, Removed, Strategy
from .admission import Admission, Defer, Skip
from .clock import SystemClock
from .config import Settings, store_url
from .errors import DispatchError, dispatch_error_in
from .hub import DispatchHub
from .store import KnownRecord, Store

__all__ = ["run_check"]


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


async def run_check(settings: Settings, base: Path, *, as_json: bool, limit: int) -> int:
    from .config import build_hub

    hub = build_hub(settings, base=base)
    parts: list[_Part] = []
    known: dict[tuple[str, str], KnownRecord] = {}
    store = Store(store_url(settings, base))
    try:
        await store.open()
        known = await store.known_records()
        parts.append(_Part("store", detail=f"{store} reachable, schema up to date"))
    except DispatchError as exc:
        parts.append(_Part("store", ok=False, detail=str(exc)))
    finally:
        await store.aclose()
    parts.append(await _agent(hub))
    admission = Admission(default_region=settings.default_region, clock=SystemClock())
    sources = [await _poll(s, admission, known, limit) for s in hub.strategies]
    ok = all(p.ok for p in parts) and all(s.ok for s in sources)
    if as_json:
        strategies = [
            {
                "name": s.name,
                "ok": s.ok,
                "detail": s.detail,
                "counts": dict(s.counts),
                "samples": [list(sample) for sample in s.samples],
            }
            for s in sources
        ]
        report = {"ok": ok, "parts": [asdict(p) for p in parts], "strategies": strategies}
        print(json.dumps(report, indent=2))
    else:
        _print(parts, sources)
    return 0 if ok else 1


async def _agent(hub: DispatchHub) -> _Part:
    try:
        await hub.agent.open()
    except Exception as exc:  # every failure is a finding of the check
        error = dispatch_error_in(exc) or exc
        return _Part("agent", ok=False, detail=f"{type(error).__name__}: {error}")
    finally:
        with contextlib.suppress(Exception):  # a failed open is what the check reports
            await hub.agent.aclose()
    return _Part("agent", detail=f"{hub.agent!r} connected and ready")


async def _poll(
    strategy: Strategy, admission: Admission, known: dict[tuple[str, str], KnownRecord], limit: int
) -> _Source:
    report = _Source(strategy.name)
    try:
        await strategy.open()
        items = await _items(strategy)
    except Exception as exc:
        return _Source(strategy.name, ok=False, detail=f"{type(exc).__name__}: {exc}")
    finally:
        await strategy.aclose()
    for item in items:
        if isinstance(item, Removed):
            continue
        if isinstance(item, Malformed):
            decision, why = "skip", f"malformed: {item.detail}"
        else:
            record = known.get((strategy.name, item.id))
            if record is not None and record.state.terminal:
                decision, why = "done", f"{record.state} earlier"
            else:
                verdict = admission.check(item)
                if isinstance(verdict, Skip):
                    decision, why = "skip", f"{verdict.reason}: {verdict.detail}"
                elif isinstance(verdict, Defer):
                    decision, why = "wait", "not yet due (not_before)"
                else:
                    decision, why = "dial", verdict.record.phone
        report.counts[decision] += 1
        if len(report.samples) < limit:
            report.samples.append((decision, item.id, why))
    return report


async def _items(strategy: Strategy) -> list[Any]:
    result = strategy.poll()
    if hasattr(result, "__aiter__"):
        return [item async for item in result]
    return list(await result)


def _print(parts: list[_Part], sources: list[_Source]) -> None:
    for part in parts:
        print(f"{'ok  ' if part.ok else 'FAIL'} {part.name}: {part.detail}")
    for source in sources:
        if not source.ok:
            print(f"FAIL strategy {source.name}: {source.detail}")
            continue
        counts = ", ".join(f"{k} {v}" for k, v in sorted(source.counts.items())) or "no records"
        print(f"ok   strategy {source.name}: one poll: {counts}")
        for decision, record_id, why in source.samples:
            print(f"       {decision:<5} {record_id:<24} {why}")
        shown = len(source.samples)
        total = sum(source.counts.values())
        if total > shown:
            print(f"       ... {total - shown} more (--limit)")
