"""The queue's Lua scripts, on fakeredis and on a real redis-server (one contract, two backends)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import cast

import pytest
from redis.asyncio import Redis

from payflow.queue import keys
from payflow.queue.redis import QueueClient, Scripts, Settlement, promote_due

Q, W = "payflow_jobs", "webhook_jobs"


@pytest.fixture(params=["fakeredis", "redis-server"])
def r(request: pytest.FixtureRequest) -> Redis:
    client: Redis = request.getfixturevalue(
        "fake_redis" if request.param == "fakeredis" else "real_redis")
    return client


def qc(r: Redis, cid: str = "d1:p0") -> QueueClient:
    return QueueClient(r, queue=Q, forward=W, consumer_id=cid)


def test_keys_share_the_queue_hash_tag() -> None:
    assert keys.processing(Q, "d:p0") == "{payflow_jobs}:processing:d:p0"
    assert keys.delayed(Q) == "{payflow_jobs}:delayed"
    assert keys.dead(Q) == "{payflow_jobs}:dead"


async def test_fetch_is_fifo_and_moves_into_processing(r: Redis) -> None:
    await r.lpush(Q, b"a", b"b", b"c")  # LPUSH producers: a is oldest
    c = qc(r)
    assert await c.fetch(2, 0.1) == [b"a", b"b"]
    assert await r.lrange(c.processing, 0, -1) == [b"b", b"a"]
    assert await c.fetch(10, 0.1) == [b"c"]
    assert await r.llen(Q) == 0


async def test_fetch_blocks_until_a_job_arrives(r: Redis) -> None:
    c = qc(r)
    started = time.monotonic()
    assert await c.fetch(5, 0.3) == []
    assert time.monotonic() - started >= 0.25  # it blocked rather than spun

    async def later() -> None:
        await asyncio.sleep(0.2)
        await r.lpush(Q, b"late")

    task = asyncio.create_task(later())
    assert await c.fetch(5, 3.0) == [b"late"]
    await task
    assert await r.lrange(c.processing, 0, -1) == [b"late"]


async def test_settle_applies_every_operation_atomically(r: Redis) -> None:
    await r.lpush(Q, b"j1", b"j2", b"j3", b"j4")
    c = qc(r)
    assert len(await c.fetch(4, 0.1)) == 4
    s = Settlement()
    s.push(b"webhook-for-j1")
    s.ack(b"j1")
    s.delay(b"j2-retry", 60)
    s.ack(b"j2")
    s.dead(c.dead_entry(b"j3", "broken"))
    s.ack(b"j3")
    await c.settle(s)
    assert await r.lrange(c.processing, 0, -1) == [b"j4"]
    assert await r.lrange(W, 0, -1) == [b"webhook-for-j1"]
    delayed = cast(list[tuple[bytes, float]],
                   await r.zrange(keys.delayed(Q), 0, -1, withscores=True))
    ((member, score),) = delayed
    assert member == b"j2-retry"
    redis_now_ms = int((await r.time())[0]) * 1000
    assert redis_now_ms + 55_000 < score < redis_now_ms + 65_000
    entry = json.loads((await r.lrange(keys.dead(Q), 0, -1))[0])
    assert entry["job"] == "j3" and entry["reason"] == "broken" and entry["queue"] == Q


async def test_dead_entry_keeps_binary_jobs(r: Redis) -> None:
    c = qc(r)
    entry = json.loads(c.dead_entry(b"\xff\x00", "not UTF-8"))
    assert entry["job_b64"] == "/wA="


async def test_promoter_moves_only_due_jobs_to_the_consuming_end(r: Redis) -> None:
    await r.lpush(Q, b"waiting")
    now_ms = int((await r.time())[0]) * 1000
    await r.zadd(keys.delayed(Q), {b"due": now_ms - 1000, b"future": now_ms + 600_000})
    assert await promote_due(r, Scripts(r), Q) == 1
    assert await r.zrange(keys.delayed(Q), 0, -1) == [b"future"]
    assert await qc(r).fetch(1, 0.1) == [b"due"]  # a retry goes first, before waiting jobs


async def test_requeue_restores_the_original_order(r: Redis) -> None:
    await r.lpush(Q, b"1", b"2", b"3", b"4")
    c = qc(r)
    assert await c.fetch(3, 0.1) == [b"1", b"2", b"3"]
    assert await c.requeue_all() == 3
    assert await r.llen(c.processing) == 0
    assert await c.fetch(10, 0.1) == [b"1", b"2", b"3", b"4"]


async def test_settle_trims_the_dead_list_to_its_limit(r: Redis) -> None:
    """LPUSH then LTRIM in the same step: the newest entries stay, the count of the oldest
    dropped comes back."""
    c = QueueClient(r, queue=Q, forward=W, consumer_id="d1:p0", dead_max_entries=3)
    s = Settlement()
    for i in range(5):
        s.dead(f"entry-{i}".encode())
    assert await c.settle(s) == 2
    assert await r.lrange(keys.dead(Q), 0, -1) == [b"entry-4", b"entry-3", b"entry-2"]
    one = Settlement()
    one.dead(b"entry-5")
    assert await c.settle(one) == 1
    assert await r.lrange(keys.dead(Q), 0, -1) == [b"entry-5", b"entry-4", b"entry-3"]
    none_dead = Settlement()
    none_dead.push(b"hook")
    assert await c.settle(none_dead) == 0
    assert await c.settle(Settlement()) == 0
    assert await r.llen(keys.dead(Q)) == 3


async def test_settle_under_the_limit_trims_nothing(r: Redis) -> None:
    c = qc(r)  # the default limit, 100,000
    s = Settlement()
    for i in range(5):
        s.dead(f"entry-{i}".encode())
    assert await c.settle(s) == 0
    assert await r.llen(keys.dead(Q)) == 5


def test_a_dead_list_keeps_at_least_one_entry(fake_redis: Redis) -> None:
    with pytest.raises(ValueError, match="dead_max_entries"):
        QueueClient(fake_redis, queue=Q, forward=W, consumer_id="d1:p0", dead_max_entries=0)
