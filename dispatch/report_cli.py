"""`dispatch status` and `dispatch history`: the ledger as tables, or JSON with ``--json``."""

from __future__ import annotations

import argparse
import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
from sqlalchemy.engine import make_url

from .config import Settings, store_url
from .errors import InvalidPhone, StoreError, StoreUnavailable
from .record import normalize_phone
from .store import Store, controls, reports

__all__ = ["history", "status"]


@asynccontextmanager
async def _reading(settings: Settings, base: Path) -> AsyncIterator[Store]:
    url = store_url(settings, base)
    parsed = make_url(url)
    # Opening a missing SQLite file would create an empty one: say what is wrong instead.
    database = parsed.database
    if (
        parsed.get_backend_name() == "sqlite"
        and database
        and not await anyio.Path(database).exists()
    ):
        raise StoreError(f"no store at {database}: the daemon has not run yet")
    store = Store(url)
    await store.open(migrate=False)
    try:
        yield store
    except StoreUnavailable:
        raise
    except StoreError as exc:
        raise StoreError(
            f"{exc}; has the daemon or `dispatch db upgrade` ever run against it?"
        ) from exc
    finally:
        await store.aclose()


async def status(settings: Settings, base: Path, args: argparse.Namespace) -> None:
    async with _reading(settings, base) as store:
        report = await reports.status(store.engine)
        flags = await controls.paused(store.engine)
    if args.json:
        paused = {
            name: {"since": f.paused_at.isoformat(), "reason": f.reason}
            for name, f in flags.items()
        }
        print(json.dumps({**report.as_dict(), "paused": paused}, indent=2))
        return
    columns = ["completed", "failed", "skipped", "expired", "interrupted", "dialing", "retry"]
    rows = [
        [
            name,
            str(s.pending),
            str(s.waiting),
            *(str(s.states.get(c, 0)) for c in columns),
            _time(s.polled_at),
        ]
        for name, s in report.strategies.items()
    ]
    headers = ["strategy", "pending", "waiting", *columns, "last poll"]
    print(_table(headers, rows) if rows else "no records yet")
    for name, s in report.strategies.items():
        for label, counts in (
            ("completed by reason", s.completed),
            ("failed by error", s.failed),
            ("skipped by reason", s.skipped),
            ("waiting for", s.waiting_reasons),
        ):
            if counts:
                # A count of 0 is a note, not a count (when a closed schedule opens).
                listed = ", ".join(f"{k} {v}" if v else k for k, v in sorted(counts.items()))
                print(f"{name}: {label}: {listed}")
    for name, flag in sorted(flags.items()):
        which = "every strategy" if name == "*" else f"strategy {name}"
        why = f": {flag.reason}" if flag.reason else ""
        print(f"paused: {which} since {_time(flag.paused_at)}{why} (dispatch resume)")
    alive = report.alive(settings.store.heartbeat_timeout)
    total = sum(d.dials_last_hour for d in alive) or 1
    for daemon in alive:
        age = daemon.heartbeat_age(report.generated_at)
        share = f"{daemon.dials_last_hour} dials in the last hour"
        if len(alive) > 1:  # several daemons: each one's share
            share += f" ({100 * daemon.dials_last_hour / total:.0f}%)"
        print(f"daemon: running on {daemon.host} (pid {daemon.pid}), heartbeat {age:.0f}s ago, "
              f"{share}")  # fmt: skip
    if not alive:
        last = max((d.heartbeat_at for d in report.daemons), default=None)
        since = f"; last heartbeat {_time(last)}" if last else ""
        print(f"daemon: not running{since}")
    flying = str(report.in_flight)
    if report.in_flight and not alive:
        flying += " (left by a daemon that is gone: the next start records them interrupted)"
    rate = []
    if len(alive) > 1:  # the global rate: every daemon's starts count against one limit
        rate.append(f"{len(alive)} daemons together")
    if (limit := settings.pacing.max_calls_per_minute) is not None:
        rate.append(f"limit {limit} per {settings.pacing.window:g}s")
    print(
        f"calls in flight: {flying}; "
        f"dial starts in the last minute: {report.dials_last_minute}"
        f"{' (' + '; '.join(rate) + ')' if rate else ''}; "
        f"callbacks pending: {report.outbox_pending} ({report.outbox_failing} failing)"
    )


async def history(settings: Settings, base: Path, args: argparse.Namespace) -> None:
    phone = args.phone
    if phone is not None:
        try:
            phone = normalize_phone(phone, settings.default_region)
        except InvalidPhone as exc:
            raise StoreError(str(exc)) from None
    async with _reading(settings, base) as store:
        rows = await reports.history(
            store.engine,
            phone=phone,
            record_id=args.record,
            strategy=args.strategy,
            transcripts=getattr(args, "transcript", False),
        )
    if args.json:
        print(json.dumps([r.as_dict() for r in rows], indent=2))
        return
    if not rows:
        print("no attempts")
        return
    headers = ["strategy", "record", "attempt", "phone", "state", "reason", "call id", "dialed at",
               "ended at", "duration", "results", "rules"]  # fmt: skip
    print(
        _table(
            headers,
            [
                [
                    r.strategy,
                    r.record_id,
                    str(r.number),
                    r.phone,
                    r.state,
                    r.reason or "",
                    r.call_id or "",
                    _time(r.dialed_at),
                    _time(r.ended_at),
                    f"{r.duration:.1f}s" if r.duration is not None else "",
                    "; ".join(_result(result) for result in r.results),
                    _evidence(r.evidence),
                ]
                for r in rows
            ],
        )
    )
    for r in rows:
        if r.transcript:
            print(f"\n{r.record_id} attempt {r.number} ({r.call_id or 'no call id'}):")
            for message in r.transcript:
                role = message.get("role", "?")
                print(f"  {role}: {message.get('content', message)}")


def _evidence(evidence: dict[str, Any]) -> str:
    """What the calling rules saw at the dial, short: ``us@1 10:00 America/New_York; calls
    1 in 24h/1 in 30d; dnc read 15:00:00; from +12125550100`` (``--json`` has it whole)."""
    parts = []
    if evidence.get("rules"):
        local = str(evidence.get("local_time", ""))[11:16]
        zones = evidence.get("zones") or []
        more = f" (+{len(zones) - 1} zones)" if len(zones) > 1 else ""
        parts.append(f"{evidence['rules']} {local} {zones[0] if zones else ''}{more}".strip())
    if evidence.get("caps"):
        parts.append("calls " + "/".join(f"{v} in {k}" for k, v in evidence["caps"].items()))
    if evidence.get("dnc_checked_at"):
        parts.append(f"dnc read {str(evidence['dnc_checked_at'])[11:19]}")
    if evidence.get("caller_id"):
        parts.append(f"from {evidence['caller_id']}")
    return "; ".join(parts)


def _result(result: dict[str, Any]) -> str:
    arguments = result.get("arguments") or {}
    said = ", ".join(f"{k}={v}" for k, v in arguments.items())
    return f"{result.get('tool')}({said})"


def _time(value: datetime | None) -> str:
    """A stored time, in UTC, saying so (the store keeps UTC; naive values are UTC too)."""
    if value is None:
        return ""
    if value.tzinfo is not None:
        value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%d %H:%M:%S UTC")


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(c)) for c in column) for column in zip(headers, *rows, strict=False)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    return "\n".join(lines)
