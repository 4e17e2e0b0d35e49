"""`minimax-m1 keys create|list|revoke`: API keys of the gateway's database.

A new key is printed once, on stdout; only its hash is stored. The database is the gateway's:
--database, else $MINIMAX_M1_GATEWAY_DATABASE, else the SQLite file under the data dir.
"""
from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json

from minimax_m1.cli.common import EXIT_USAGE, CliError, progress


def add_database_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--database", help="sqlite:///PATH or postgresql://... (default: the gateway's)")
    parser.add_argument("--data-dir", help="data dir of the embedded SQLite ledger")


def database_url(args: argparse.Namespace) -> str:
    from minimax_m1.gateway.config import default_database_url, env_database_url

    if args.database:
        return args.database
    if args.data_dir:
        return default_database_url(args.data_dir)
    return env_database_url() or default_database_url()


async def open_db(args: argparse.Namespace):
    from minimax_m1.gateway.storage import open_database

    url = database_url(args)
    try:
        return await open_database(url)
    except Exception as exc:  # a bad URL or an unreachable server is the user's to fix
        raise CliError(f"cannot open database {url}: {exc}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_database_arguments(parser)
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    create = sub.add_parser("create", help="create a key for a tenant and print it once")
    create.add_argument("--tenant", required=True)
    create.add_argument("--name", default="", help="a label for listings")
    create.add_argument("--models", default="", help="comma-separated models the key may use (default: all)")
    create.add_argument("--json", action="store_true", help="print the key and its id as JSON")
    listing = sub.add_parser("list", help="list keys (never the secrets)")
    listing.add_argument("--tenant")
    listing.add_argument("--json", action="store_true")
    revoke = sub.add_parser("revoke", help="revoke a key by its id")
    revoke.add_argument("key_id")


def _when(ts: float | None) -> str:
    return "-" if ts is None else dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


async def _run(args: argparse.Namespace) -> int:
    from minimax_m1.gateway.keys import KeyStore

    db = await open_db(args)
    try:
        store = KeyStore(db)
        if args.action == "create":
            models = tuple(m.strip() for m in args.models.split(",") if m.strip())
            try:
                created = await store.create(args.tenant, name=args.name, models=models)
            except ValueError as exc:
                raise CliError(str(exc), EXIT_USAGE) from None
            if args.json:
                print(json.dumps({"key": created.key, "key_id": created.info.key_id, "tenant": args.tenant}))
            else:
                print(created.key)
                progress(f"key id {created.info.key_id} for tenant {args.tenant!r}; the key is shown only this once")
        elif args.action == "list":
            keys = await store.list(args.tenant)
            if args.json:
                print(json.dumps([{"key_id": k.key_id, "tenant": k.tenant, "prefix": k.prefix, "name": k.name,
                                   "models": list(k.models), "created_at": k.created_at, "revoked_at": k.revoked_at}
                                  for k in keys]))
            else:
                print(f"{'KEY ID':<18} {'TENANT':<16} {'PREFIX':<9} {'CREATED':<21} {'REVOKED':<21} {'MODELS':<16} NAME")
                for k in keys:
                    print(f"{k.key_id:<18} {k.tenant:<16} {k.prefix:<9} {_when(k.created_at):<21} "
                          f"{_when(k.revoked_at):<21} {','.join(k.models) or '*':<16} {k.name}")
        else:
            if not await store.revoke(args.key_id):
                raise CliError(f"no active key with id {args.key_id!r}")
            print(f"revoked {args.key_id}")
        return 0
    finally:
        await db.close()


def run(args: argparse.Namespace) -> int:
    if not args.action:
        raise CliError("choose an action: create, list or revoke", EXIT_USAGE)
    return asyncio.run(_run(args))
