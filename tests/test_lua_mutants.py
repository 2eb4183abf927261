"""The queue's Lua scripts called directly, on fakeredis and a real redis-server: their return
values, guards, ends of lists and limits, which the callers' tests only see through a happy
path. Written against the Lua mutants that tests/test_queue.py, test_liveness.py and
test_dead.py let through (scripts/mutation lua)."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
import redis.exceptions
from redis.asyncio import Redis

from payflow.queue import keys
from payflow.queue.redis import Scripts

Q, W = "payflow_jobs", "webhook_jobs"
PROCESSING = keys.processing(Q, "d1:p0")
SETTLE_KEYS = [PROCESSING, keys.delayed(Q), keys.dead(Q), W]


@pytest.fixture(params=["fakeredis", "redis-server"])
def r(request: pytest.FixtureRequest) -> Redis:
    client: Redis = request.getfixturevalue(
        "fake_redis" if request.param == "fakeredis" else "real_redis")
    return client


async def settle(r: Redis, *args: Any, max_dead: int | str = 100) -> list[int]:
    result: list[int] = await Scripts(r).settle(keys=SETTLE_KEYS, args=[max_dead, *args])
    return [int(x) for x in result]


async def redis_ms(r: Redis) -> int:
    seconds, micros = await r.time()
    return int(seconds) * 1000 + int(micros) // 1000


# --- settle ------------------------------------------------------------------------------------


async def test_settle_counts_operations_and_trims_exactly(r: Redis) -> None:
    await r.lpush(PROCESSING, b"j1", b"j2")
    assert await settle(r, "ack", b"j1", "push", b"h", "delay", b"j2", 1000, "dead", b"e1",
                        "dead", b"e2", "dead", b"e3", max_dead=2) == [6, 1]
    assert await settle(r, "ack", b"j2") == [1, 0]
    assert await settle(r, "dead", b"e4", max_dead=1) == [1, 2]  # 3 entries -> 1


async def test_settle_acks_one_copy_and_pushes_to_the_producer_end(r: Redis) -> None:
    await r.lpush(PROCESSING, b"j", b"j")
    await r.lpush(W, b"old")
    await settle(r, "ack", b"j", "push", b"new", "dead", b"d1", "dead", b"d2")
    assert await r.lrange(PROCESSING, 0, -1) == [b"j"]
    assert await r.lrange(W, 0, -1) == [b"new", b"old"]
    assert await r.lrange(keys.dead(Q), 0, -1) == [b"d2", b"d1"]


async def test_settle_delays_by_the_given_milliseconds(r: Redis) -> None:
    before = await redis_ms(r)
    await settle(r, "delay", b"a", 60_000, "delay", b"b", 0)
    after = await redis_ms(r)
    scores: dict[bytes, float] = dict(
        await r.zrange(keys.delayed(Q), 0, -1, withscores=True))  # type: ignore[arg-type]
    assert before + 60_000 <= scores[b"a"] <= after + 60_000
    assert before <= scores[b"b"] <= after


@pytest.mark.parametrize("max_dead", [0, -1, "x"])
async def test_settle_refuses_a_dead_limit_below_one(r: Redis, max_dead: int | str) -> None:
    with pytest.raises(redis.exceptions.ResponseError, match="limit must be at least 1"):
        await settle(r, "dead", b"e", max_dead=max_dead)
    assert await r.llen(keys.dead(Q)) == 0


async def test_settle_refuses_an_unknown_operation(r: Redis) -> None:
    with pytest.raises(redis.exceptions.ResponseError, match="unknown operation bogus"):
        await settle(r, "bogus", b"x")
    with pytest.raises(redis.exceptions.ResponseError, match="unknown operation bogus"):
        await settle(r, "push", b"h", "bogus")  # even as the last argument, on its own


async def test_settle_trims_nothing_at_exactly_the_limit(r: Redis) -> None:
    assert await settle(r, "dead", b"e1", "dead", b"e2", max_dead=2) == [2, 0]
    assert await r.llen(keys.dead(Q)) == 2


# --- promote -----------------------------------------------------------------------------------


async def test_promote_moves_at_most_the_limit_earliest_first(r: Redis) -> None:
    now = await redis_ms(r)
    await r.zadd(keys.delayed(Q), {b"a": now - 3000, b"b": now - 2000, b"c": now - 1000})
    moved = await Scripts(r).promote(keys=[keys.delayed(Q), Q], args=[2])
    assert moved == 2
    assert await r.lrange(Q, 0, -1) == [b"a", b"b"]  # RPUSH: a is consumed first
    assert await r.zrange(keys.delayed(Q), 0, -1) == [b"c"]


async def test_promote_leaves_a_job_due_in_a_second(r: Redis) -> None:
    now = await redis_ms(r)
    await r.zadd(keys.delayed(Q), {b"soon": now + 1500, b"due": now})
    assert await Scripts(r).promote(keys=[keys.delayed(Q), Q], args=[10]) == 1
    assert await r.lrange(Q, 0, -1) == [b"due"]


# --- reap --------------------------------------------------------------------------------------


def sha(job: bytes) -> str:
    return hashlib.sha1(job).hexdigest()


async def reap(r: Redis, jobs: list[bytes], *, max_redeliveries: int = 2,
               max_dead: int | str = 100, memory: int = 3600) -> list[int]:
    pairs: list[Any] = []
    for job in jobs:
        pairs += [sha(job), b"dead:" + job]
    result = await Scripts(r).reap(
        keys=[PROCESSING, Q, keys.dead(Q), keys.redeliveries(Q)],
        args=[max_redeliveries, memory, max_dead, *pairs])
    return [int(x) for x in result]


async def test_reap_counts_requeues_deaths_and_trims(r: Redis) -> None:
    await r.lpush(keys.dead(Q), b"old-1", b"old-2")
    await r.lpush(PROCESSING, b"p1", b"p2")  # newest first: p2, p1
    assert await reap(r, [b"p2", b"p1"], max_redeliveries=0, max_dead=3) == [0, 2, 1]
    assert await r.lrange(keys.dead(Q), 0, -1) == [b"dead:p1", b"dead:p2", b"old-2"]
    assert await r.exists(PROCESSING) == 0


async def test_reap_requeues_up_to_the_limit_then_kills(r: Redis) -> None:
    for expected in ([1, 0, 0], [1, 0, 0], [0, 1, 0]):
        await r.lpush(PROCESSING, b"job")
        await r.delete(Q)
        assert await reap(r, [b"job"], max_redeliveries=2, memory=600) == expected
        if expected[0]:  # the counter is remembered for ARGV[2] seconds after a reap
            assert 590 <= await r.ttl(keys.redeliveries(Q)) <= 600
    assert await r.lrange(keys.dead(Q), 0, -1) == [b"dead:job"]
    assert await r.hget(keys.redeliveries(Q), sha(b"job")) is None  # the counter is gone
    assert await r.llen(Q) == 0


async def test_reap_keeps_the_order_and_counts_each_job(r: Redis) -> None:
    await r.lpush(Q, b"waiting")
    await r.lpush(PROCESSING, b"first", b"second")  # newest first: second, first
    assert await reap(r, [b"second", b"first"]) == [2, 0, 0]
    # at the consuming (right) end, the oldest first: before the job that was waiting
    assert await r.lrange(Q, 0, -1) == [b"waiting", b"second", b"first"]
    counts = await r.hgetall(keys.redeliveries(Q))
    assert counts == {sha(b"first").encode(): b"1", sha(b"second").encode(): b"1"}
    ttl = await r.ttl(keys.redeliveries(Q))
    assert 3590 <= ttl <= 3600


async def test_reap_of_an_empty_list_sets_no_expiry(r: Redis) -> None:
    await r.hset(keys.redeliveries(Q), "x", 1)
    assert await reap(r, []) == [0, 0, 0]
    assert await r.ttl(keys.redeliveries(Q)) == -1


async def test_reap_refuses_a_list_that_changed(r: Redis) -> None:
    await r.lpush(PROCESSING, b"a", b"b")
    with pytest.raises(redis.exceptions.ResponseError, match="list changed"):
        await reap(r, [b"b"])
    with pytest.raises(redis.exceptions.ResponseError, match="list changed"):
        await reap(r, [b"b", b"a", b"c"])
    assert await r.llen(PROCESSING) == 2


@pytest.mark.parametrize("max_dead", [0, "x"])
async def test_reap_refuses_a_dead_limit_below_one(r: Redis, max_dead: int | str) -> None:
    await r.lpush(PROCESSING, b"a")
    with pytest.raises(redis.exceptions.ResponseError, match="limit must be at least 1"):
        await reap(r, [b"a"], max_dead=max_dead)
    assert await r.llen(PROCESSING) == 1


async def test_reap_trims_nothing_at_exactly_the_limit(r: Redis) -> None:
    await r.lpush(keys.dead(Q), b"old")
    await r.lpush(PROCESSING, b"p")
    assert await reap(r, [b"p"], max_redeliveries=0, max_dead=2) == [0, 1, 0]
    assert await r.llen(keys.dead(Q)) == 2


async def test_reap_takes_a_dead_limit_of_one(r: Redis) -> None:
    await r.lpush(PROCESSING, b"p")
    assert await reap(r, [b"p"], max_redeliveries=0, max_dead=1) == [0, 1, 0]
    assert await r.lrange(keys.dead(Q), 0, -1) == [b"dead:p"]


# --- replay ------------------------------------------------------------------------------------


async def test_replay_takes_one_copy_and_pushes_to_the_producer_end(r: Redis) -> None:
    dead = keys.dead(Q)
    await r.lpush(dead, b"entry", b"other", b"entry")
    await r.lpush(Q, b"old")
    script = Scripts(r).replay
    assert await script(keys=[dead, Q], args=[b"entry", b"job"]) == 1
    assert await r.lrange(dead, 0, -1) == [b"other", b"entry"]
    assert await r.lrange(Q, 0, -1) == [b"job", b"old"]
    assert await script(keys=[dead, Q], args=[b"entry", b"job"]) == 1
    assert await script(keys=[dead, Q], args=[b"entry", b"job"]) == 0
    assert await r.lrange(dead, 0, -1) == [b"other"]
    assert await r.lrange(Q, 0, -1) == [b"job", b"job", b"old"]
