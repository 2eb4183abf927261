"""``payflow migrate [--status]`` and ``payflow prune --older-than AGE``: the store's upkeep."""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from datetime import UTC, datetime, timedelta

from payflow.errors import ConfigError, StartupError

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_CONFIG_HELP = "configuration file (default: $PAYFLOW_CONFIG, else ./payflow.toml if present)"


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``migrate`` and ``prune`` to the ``payflow`` command's subparsers."""
    migrate = sub.add_parser(
        "migrate", help="apply the store's pending schema migrations",
        description="Apply the pending schema migrations of the [store] url (PostgreSQL) "
                    "under an advisory lock (safe while daemons start), then list them. "
                    "memory:// has nothing to migrate.")
    migrate.add_argument("--config", metavar="PATH", help=_CONFIG_HELP)
    migrate.add_argument("--status", action="store_true",
                         help="only list the migrations, applied (with when) or pending")
    prune = sub.add_parser(
        "prune", help="delete old events and delivery attempts from the store",
        description="Delete the events recorded before now - AGE whose webhook jobs were "
                    "queued, with their delivery attempts, and every delivery attempt made "
                    "before then. Payments and refunds stay.")
    prune.add_argument("--older-than", metavar="AGE", required=True, type=age_arg,
                       help="a whole number with a unit: s, m, h or d (e.g. 30d)")
    prune.add_argument("--config", metavar="PATH", help=_CONFIG_HELP)


def age_arg(text: str) -> timedelta:
    match = re.fullmatch(r"(\d+)([smhd])", text.strip())
    if not match:
        raise argparse.ArgumentTypeError(
            f"expected a whole number and a unit (s, m, h or d), such as 30d; got {text!r}")
    return timedelta(seconds=int(match[1]) * _UNITS[match[2]])


def run(args: argparse.Namespace) -> int:
    from payflow.config import load_config

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"payflow: configuration error: {exc}", file=sys.stderr)
        return 2
    url = config.store.url
    memory = url.split(":", 1)[0].lower() == "memory"
    if memory:
        what = "migrate" if args.command == "migrate" else "prune"
        print(f"payflow: [store] url is memory://: nothing to {what} (the in-memory store "
              "lives and ends with `payflow serve`)")
        return 0
    key = config.store.secret_key or None
    try:
        if args.command == "migrate" and args.status:
            return asyncio.run(_status(url))
        from payflow import logs

        logs.configure(config.log.format, config.log.level, stream=sys.stderr)  # not stdout
        if args.command == "migrate":
            return asyncio.run(_migrate(url, key))
        before = datetime.now(UTC) - args.older_than
        return asyncio.run(_prune(url, key, before))
    except StartupError as exc:
        print(f"payflow: {exc}", file=sys.stderr)
        return 1
    except ConfigError as exc:
        print(f"payflow: configuration error: {exc}", file=sys.stderr)
        return 2


async def _status(url: str) -> int:
    from payflow.store.postgres import PostgresStore

    for line in await PostgresStore.migration_status(url):
        print(line.line)
    return 0


async def _migrate(url: str, key: str | None) -> int:
    from payflow.store import open_store

    store = await open_store(url, secret_key=key, migrate=True)
    await store.close()
    return await _status(url)


async def _prune(url: str, key: str | None, before: datetime) -> int:
    from payflow.models import iso
    from payflow.store import open_store

    store = await open_store(url, secret_key=key, migrate=False)
    try:
        gone = await store.prune(iso(before))
    finally:
        await store.close()
    print(f"pruned {gone} rows (events and delivery attempts before {iso(before)})")
    return 0
