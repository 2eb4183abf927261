"""Versioned schema migrations of the PostgreSQL store.

The migrations are the SQL files ``store/migrations/NNNN_name.sql`` of this package, applied in
version order, each in one transaction together with its row in ``schema_migrations`` (in the
connection's current schema, so a ``search_path`` selects the schema to use). :func:`apply`
holds an advisory lock, keyed by :data:`LOCK_KEY` and the schema, so two daemons starting
together apply each migration once.
"""

from __future__ import annotations

import dataclasses
import re
from importlib import resources
from typing import Any

from payflow.models import iso

# pg_advisory_lock(LOCK_KEY, hashtext(current_schema())): "PayF" as a 32-bit integer
LOCK_KEY = 0x50617946

_FILE = re.compile(r"^(\d{4})_(\w+)\.sql$")


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Migration:
    version: int
    name: str  # e.g. "0001_initial"
    sql: str = dataclasses.field(repr=False, default="")


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class MigrationStatus:
    version: int
    name: str
    applied_at: str | None  # None: pending

    @property
    def line(self) -> str:
        """``applied 0001_initial 2026-…`` or ``pending 0002_…``."""
        if self.applied_at is None:
            return f"pending {self.name}"
        return f"applied {self.name} {self.applied_at}"


def available() -> list[Migration]:
    """The migrations this version of PayFlow knows, in version order."""
    found: list[Migration] = []
    for entry in resources.files("payflow.store").joinpath("migrations").iterdir():
        match = _FILE.match(entry.name)
        if match:
            found.append(Migration(version=int(match[1]), name=entry.name.removesuffix(".sql"),
                                   sql=entry.read_text(encoding="utf-8")))
    return sorted(found, key=lambda m: m.version)


_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version integer PRIMARY KEY,
    name text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)"""
_LOCK = "SELECT pg_advisory_lock($1, hashtext(coalesce(current_schema(), '')))"
_UNLOCK = "SELECT pg_advisory_unlock($1, hashtext(coalesce(current_schema(), '')))"


async def status(conn: Any) -> list[MigrationStatus]:
    """Every known migration, applied (with its time) or pending, in version order; then any
    applied migration this version does not know (a newer PayFlow applied it)."""
    applied: dict[int, tuple[str, str]] = {}
    if await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL"):
        for row in await conn.fetch("SELECT version, name, applied_at FROM schema_migrations"):
            applied[row["version"]] = (row["name"], iso(row["applied_at"]))
    known = available()
    result = [MigrationStatus(version=m.version, name=m.name,
                              applied_at=applied[m.version][1] if m.version in applied else None)
              for m in known]
    versions = {m.version for m in known}
    result += [MigrationStatus(version=v, name=f"{name} (unknown to this version)",
                               applied_at=at)
               for v, (name, at) in sorted(applied.items()) if v not in versions]
    return result


async def pending(conn: Any) -> list[str]:
    """The names of the migrations not applied yet."""
    return [s.name for s in await status(conn) if s.applied_at is None]


async def apply(conn: Any) -> list[str]:
    """Apply the pending migrations under the advisory lock, each in its own transaction;
    returns the names applied (none when another process applied them first)."""
    await conn.execute(_LOCK, LOCK_KEY)
    try:
        await conn.execute(_CREATE_TABLE)
        done = {row["version"] for row in await conn.fetch("SELECT version FROM schema_migrations")}
        names: list[str] = []
        for migration in available():
            if migration.version in done:
                continue
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                                   migration.version, migration.name)
            names.append(migration.name)
        return names
    finally:
        await conn.execute(_UNLOCK, LOCK_KEY)
