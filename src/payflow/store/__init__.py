"""Stores, chosen by URL scheme and imported lazily."""

from __future__ import annotations

from payflow.errors import ConfigError
from payflow.store.base import Store


def open_store(url: str) -> Store:
    scheme = url.split(":", 1)[0].lower()
    if scheme == "memory":
        from payflow.store.memory import MemoryStore

        return MemoryStore()
    raise ConfigError(f"[store] url: the {scheme!r} store is not available yet (use memory://)")


__all__ = ["Store", "open_store"]
