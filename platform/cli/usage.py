"""`minimax-m1 usage`: billed usage from the gateway's ledger, per tenant and model.

--since/--until take dates (YYYY-MM-DD) or ISO times, in UTC; the default is the current month.
"""
from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json

from minimax_m1.cli.common import EXIT_USAGE, CliError
from minimax_m1.cli.keys import add_database_arguments, open_db


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_database_arguments(parser)
    parser.add_argument("--tenant", help="only this tenant")
    parser.add_argument("--since", help="start (UTC date or ISO time); default: start of this month")
    parser.add_argument("--until", help="end, exclusive (UTC date or ISO time); default: now")
    parser.add_argument("--records", action="store_true", help="list single usage records instead of totals")
    parser.add_argument("--limit", type=int, default=1000, help="most records listed with --records")
    parser.add_argument("--json", action="store_true")


def _time(value: str, flag: str) -> float:
    try:
        t = dt.datetime.fromisoformat(value)
    except ValueError:
        raise CliError(f"{flag}: expected YYYY-MM-DD or an ISO time, got {value!r}", EXIT_USAGE) from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.timezone.utc)
    return t.timestamp()


async def _run(args: argparse.Namespace) -> int:
    from minimax_m1.gateway.ledger import Ledger

    now = dt.datetime.now(dt.timezone.utc)
    since = _time(args.since, "--since") if args.since else now.replace(day=1, hour=0, minute=0, second=0,
                                                                         microsecond=0).timestamp()
    until = _time(args.until, "--until") if args.until else float("inf")
    db = await open_db(args)
    try:
        ledger = Ledger(db, instance_id="cli", hooks=())
        if args.records:
            records = await ledger.records(args.tenant, since, until, args.limit)
            if args.json:
                print(json.dumps([r.to_json() for r in records]))
            else:
                print(f"{'RECORD':<36} {'TENANT':<14} {'MODEL':<14} {'STATUS':<18} {'IN':>8} {'OUT':>8} {'MS':>9}")
                for r in records:
                    print(f"{r.record_id:<36} {r.tenant:<14} {r.model:<14} {r.status:<18} {r.input_tokens:>8} "
                          f"{r.output_tokens:>8} {r.compute_ms:>9.1f}")
            return 0
        rows = await ledger.summary(args.tenant, since, until)
        if args.json:
            print(json.dumps([{"tenant": s.tenant, "model": s.model, "requests": s.requests,
                               "input_tokens": s.input_tokens, "output_tokens": s.output_tokens,
                               "expert_activations": s.expert_activations, "compute_s": s.compute_s} for s in rows]))
        else:
            print(f"{'TENANT':<16} {'MODEL':<16} {'REQUESTS':>9} {'INPUT':>11} {'OUTPUT':>11} {'EXPERT ACT':>13} {'COMPUTE S':>10}")
            for s in rows:
                print(f"{s.tenant:<16} {s.model:<16} {s.requests:>9} {s.input_tokens:>11} {s.output_tokens:>11} "
                      f"{s.expert_activations:>13} {s.compute_s:>10.2f}")
        return 0
    finally:
        await db.close()


def run(args: argparse.Namespace) -> int:
    return asyncio.run(_run(args))
