"""Dead letters: list, replay and purge the entries of ``{<queue>}:dead``.

An entry is the JSON written by :func:`payflow.queue.redis.dead_entry` (``job``, or ``job_b64``
when the job was not UTF-8) or by ``reap.lua`` through Lua's cjson, which copies the job's bytes
as they are, invalid UTF-8 included. Entries are decoded with ``surrogateescape`` so that such a
job comes back byte for byte. An entry has no stored id: its id is derived from its bytes (the
first 12 hex digits of their SHA-1), so it is stable for as long as the entry exists.

Replaying an entry is one Lua step (``replay.lua``): remove exactly that entry from the dead list
and push its job onto the queue, or do nothing when the entry is already gone, so two operators
replaying at once never queue a job twice.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import Final

from redis.asyncio import Redis

from payflow.queue import keys
from payflow.queue.redis import Scripts

__all__ = ["UNREADABLE", "DeadEntry", "entry_id", "list_dead", "parse_entry", "purge",
           "replay", "replay_payload"]

UNREADABLE = "unreadable dead-letter entry"
PAGE = 500  # entries read per LRANGE when going through a whole dead list

ReplayOne = Callable[[bytes], Awaitable[bool]]
# (entries gone through, entries to go through): called as ``replay(ids=None)`` goes
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class DeadEntry:
    id: str  # first 12 hex digits of the SHA-1 of ``raw``
    queue: str
    reason: str
    failed_at: str
    consumer: str
    job: bytes  # the original job, byte for byte
    raw: bytes  # the entry exactly as stored (what replay removes)


ENTRY_ID_DIGITS: Final = 12  # the hex digits of a dead-letter entry's id


def entry_id(raw: bytes) -> str:
    return hashlib.sha1(raw, usedforsecurity=False).hexdigest()[:ENTRY_ID_DIGITS]


def parse_entry(raw: bytes, queue: str) -> DeadEntry:
    """Read one stored entry; one that cannot be read becomes an entry whose reason is
    :data:`UNREADABLE` and whose job is the stored bytes (nothing raises)."""
    try:
        body = json.loads(raw.decode("utf-8", "surrogateescape"))
        if not isinstance(body, dict):
            raise ValueError("not an object")
        job = body.get("job")
        job_b64 = body.get("job_b64")
        if isinstance(job, str):
            job_bytes = job.encode("utf-8", "surrogateescape")
        elif isinstance(job_b64, str):
            job_bytes = base64.b64decode(job_b64, validate=True)
        else:
            raise ValueError("no job")
    except (ValueError, UnicodeEncodeError, binascii.Error, RecursionError):
        # json.JSONDecodeError is a ValueError; UnicodeEncodeError: a lone surrogate that is
        # not an escaped byte (JSON "\ud800"); RecursionError: absurdly deep nesting.
        return DeadEntry(id=entry_id(raw), queue=queue, reason=UNREADABLE, failed_at="",
                         consumer="", job=raw, raw=raw)

    def text(key: str, default: str = "") -> str:
        value = body.get(key)
        return value if isinstance(value, str) else default

    return DeadEntry(id=entry_id(raw), queue=text("queue", queue), reason=text("reason"),
                     failed_at=text("failed_at"), consumer=text("consumer"), job=job_bytes,
                     raw=raw)


async def list_dead(redis: Redis, queue: str, *, limit: int | None = None) -> list[DeadEntry]:
    """The entries of ``{queue}:dead``, newest first; at most ``limit`` of them."""
    if limit is not None and limit <= 0:
        return []
    stop = -1 if limit is None else limit - 1
    raws = await _lrange(redis, keys.dead(queue), 0, stop)
    return [parse_entry(raw, queue) for raw in raws]


def replay_payload(job: bytes) -> bytes:
    """What to queue again for a dead job: a JSON envelope (``{"v": 1, …}``) with its
    ``attempt`` reset to 0, so that it gets its full set of attempts again (``jid``,
    ``endpoint`` and every other field kept); any other job unchanged."""
    try:
        body = json.loads(job.decode("utf-8"))
    except (ValueError, RecursionError):  # not UTF-8, not JSON: a text job (or garbage)
        return job
    if not isinstance(body, dict) or body.get("v") != 1 or body.get("attempt", 0) == 0:
        return job
    body["attempt"] = 0
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


async def replay(redis: Redis, queue: str, ids: Collection[str] | None, *,
                 progress: Progress | None = None) -> tuple[int, list[str]]:
    """Put the jobs of the entries with these ids (``None``: every entry) back on ``queue``,
    removing the entries. Returns how many were replayed and the ids of which no entry was
    replayed (none found, or another replay or purge took it first), in the order given.
    ``progress`` is called after each entry of a replay of every entry."""
    script = Scripts(redis).replay
    dead = keys.dead(queue)

    async def replay_one(raw: bytes) -> bool:
        payload = replay_payload(parse_entry(raw, queue).job)
        done: int = await script(keys=[dead, queue], args=[raw, payload])
        return done == 1

    if ids is None:
        return await _replay_all(redis, dead, replay_one, progress), []

    wanted = set(ids)
    found: Counter[bytes] = Counter()  # matching entries, oldest first, with their copies
    async for page in _pages_oldest_first(redis, dead):
        for raw in page:
            if entry_id(raw) in wanted:
                found[raw] += 1
    replayed = 0
    replayed_ids: set[str] = set()
    for raw, copies in found.items():
        for _ in range(copies):  # identical entries share an id: replay each copy
            if not await replay_one(raw):
                break
            replayed += 1
            replayed_ids.add(entry_id(raw))
    missing = [i for i in dict.fromkeys(ids) if i not in replayed_ids]
    return replayed, missing


async def _pages_oldest_first(redis: Redis, dead: str) -> AsyncIterator[list[bytes]]:
    """Read the list in pages from its tail (oldest entry first). Indexes counted from the tail
    do not move when new entries are LPUSHed meanwhile."""
    skip = 0
    while True:
        page = await _lrange(redis, dead, -(skip + PAGE), -(skip + 1))
        if not page:
            return
        page.reverse()
        yield page
        if len(page) < PAGE:
            return
        skip += PAGE


async def _replay_all(redis: Redis, dead: str, replay_one: ReplayOne,
                      progress: Progress | None) -> int:
    """Replay the entries that are in the list now, a page at a time: at most as many as
    ``LLEN`` says at the start, so entries that die again meanwhile are not replayed again
    and again. Each page is the newest of the entries not yet replayed (addressed from the
    tail, so new entries do not shift it), because ``replay.lua`` finds an entry by
    scanning from the head: that keeps each replay's scan short."""
    remaining: int = await redis.llen(dead)
    total, replayed = remaining, 0
    while remaining > 0:
        size = min(PAGE, remaining)
        page = await _lrange(redis, dead, -remaining, -remaining + size - 1)
        if not page:
            break
        for n, raw in enumerate(page, 1):
            replayed += int(await replay_one(raw))
            if progress is not None:
                progress(total - remaining + n, total)
        remaining -= len(page)
    return replayed


async def _lrange(redis: Redis, key: str, start: int, stop: int) -> list[bytes]:
    values = await redis.lrange(key, start, stop)
    # The stubs allow str (a decode_responses=True client); PayFlow's clients answer bytes.
    return [v if isinstance(v, bytes) else v.encode("utf-8", "surrogateescape") for v in values]


async def purge(redis: Redis, queue: str) -> int:
    """Delete ``{queue}:dead``; returns how many entries it had."""
    dead = keys.dead(queue)
    async with redis.pipeline(transaction=True) as pipe:
        pipe.llen(dead)
        pipe.delete(dead)
        count, _deleted = await pipe.execute()
    return int(count)

