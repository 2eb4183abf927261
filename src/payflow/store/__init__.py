"""Stores, chosen by URL scheme and imported lazily: ``memory://`` and ``postgresql://``."""

from __future__ import annotations

from payflow.errors import ConfigError
from payflow.store.base import Store


async def open_store(url: str, *, secret_key: str | None = None,
                     memory_max_payments: int = 100_000, migrate: bool = True) -> Store:
    """Open the store of ``url``. PostgreSQL: connect a pool and, with ``migrate``, apply the
    pending migrations under an advisory lock (so daemons starting together don't race)."""
    scheme = url.split(":", 1)[0].lower()
    if scheme == "memory":
        from payflow.store.memory import MemoryStore

        return MemoryStore(max_payments=memory_max_payments)
    if scheme in ("postgresql", "postgres"):
        from payflow.store.postgres import PostgresStore

        return await PostgresStore.open(url, secret_key=secret_key, migrate=migrate)
    raise ConfigError(f"[store] url: unknown scheme {scheme!r} (use memory:// or postgresql://)")


__all__ = ["Store", "open_store"]
