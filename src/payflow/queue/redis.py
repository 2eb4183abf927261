"""Reliable Redis lists: fetch into a processing list, settle a batch in one atomic step.

A job is never only in memory: it moves from ``<q>`` into ``{<q>}:processing:<consumer-id>``
(``LMOVE``/``BLMOVE``) and leaves it only in the same Lua step that records its outcome (ack,
forward, delay or dead-letter). Every key of a queue shares the queue's hash tag. A dead list
keeps at most ``dead_max_entries`` entries: the step that pushes onto it trims the oldest.
"""

from __future__ import annotations

import base64
import json
from importlib import resources
from typing import Any

from redis.asyncio import Redis

from payflow.models import now_iso
from payflow.queue import keys

_SCRIPT_NAMES = ("fetch", "settle", "promote", "requeue", "reap", "replay")


def _source(name: str) -> str:
    return resources.files("payflow.queue").joinpath(f"lua/{name}.lua").read_text("utf-8")


class Scripts:
    """The queue's Lua scripts, bound to a client (EVALSHA, falling back to EVAL on NOSCRIPT)."""

    def __init__(self, redis: Redis) -> None:
        self.fetch, self.settle, self.promote, self.requeue, self.reap, self.replay = (
            redis.register_script(_source(name)) for name in _SCRIPT_NAMES
        )


def dead_entry(queue: str, raw: bytes, reason: str, *, consumer: str) -> bytes:
    """A dead-letter entry: the original job (as text, or base64 when it is not UTF-8), why it
    died, when and where."""
    entry: dict[str, Any] = {"queue": queue, "reason": reason, "failed_at": now_iso(),
                             "consumer": consumer}
    try:
        entry["job"] = raw.decode("utf-8")
    except UnicodeDecodeError:
        entry["job_b64"] = base64.b64encode(raw).decode("ascii")
    return json.dumps(entry, separators=(",", ":"), ensure_ascii=False).encode()


def check_dead_max_entries(value: int) -> int:
    """``[queue] dead_max_entries``: a dead list keeps at least one entry (``LTRIM 0 -1`` would
    keep them all)."""
    if value < 1:
        raise ValueError(f"dead_max_entries must be at least 1, got {value}")
    return value


class Settlement:
    """The outcome of a batch, as the operations of ``settle.lua``."""

    def __init__(self) -> None:
        self.ops: list[bytes | str | int] = []

    def __bool__(self) -> bool:
        return bool(self.ops)

    def ack(self, raw: bytes) -> None:
        self.ops += ["ack", raw]

    def push(self, raw: bytes) -> None:
        self.ops += ["push", raw]

    def delay(self, raw: bytes, seconds: float) -> None:
        self.ops += ["delay", raw, max(0, round(seconds * 1000))]

    def dead(self, entry: bytes) -> None:
        self.ops += ["dead", entry]


class QueueClient:
    """One consumer's end of a queue, on a connection it owns."""

    def __init__(self, redis: Redis, *, queue: str, forward: str, consumer_id: str,
                 dead_max_entries: int = 100_000) -> None:
        self.redis = redis
        self.queue = queue
        self.forward = forward
        self.consumer_id = consumer_id
        self.dead_max_entries = check_dead_max_entries(dead_max_entries)
        self.processing = keys.processing(queue, consumer_id)
        self._keys = [self.processing, keys.delayed(queue), keys.dead(queue), forward]
        self._scripts = Scripts(redis)

    async def fetch(self, max_jobs: int, block_seconds: float) -> list[bytes]:
        """Up to ``max_jobs`` jobs in one round trip; when the queue is empty, block up to
        ``block_seconds`` for one (not at all when it is 0)."""
        jobs: list[bytes] = await self._scripts.fetch(
            keys=[self.queue, self.processing], args=[max_jobs]
        )
        if jobs or block_seconds <= 0:  # 0: do not block (BLMOVE's 0 would block forever)
            return jobs
        job = await self.redis.blmove(
            self.queue, self.processing, block_seconds, "RIGHT", "LEFT"  # type: ignore[arg-type]
        )
        return [job] if isinstance(job, bytes) else []

    async def settle(self, settlement: Settlement) -> int:
        """Apply a batch's outcome in one atomic step. Returns how many of the oldest
        dead-letter entries were trimmed to keep the dead list within ``dead_max_entries``."""
        if not settlement:
            return 0
        _, trimmed = await self._scripts.settle(
            keys=self._keys, args=[self.dead_max_entries, *settlement.ops])
        return int(trimmed)

    def dead_entry(self, raw: bytes, reason: str) -> bytes:
        return dead_entry(self.queue, raw, reason, consumer=self.consumer_id)

    async def requeue_all(self) -> int:
        """Move every job left in this consumer's processing list back to the queue."""
        moved: int = await self._scripts.requeue(keys=[self.processing, self.queue])
        return moved


async def promote_due(redis: Redis, scripts: Scripts, queue: str, limit: int = 1000) -> int:
    """Move due jobs of ``{queue}:delayed`` back onto ``queue``; returns how many moved."""
    moved: int = await scripts.promote(keys=[keys.delayed(queue), queue], args=[limit])
    return moved
