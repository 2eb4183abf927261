"""Heartbeats, the daemon registry and the reaper, on fakeredis and a real redis-server."""

from __future__ import annotations

import asyncio
import json

import pytest
from redis.asyncio import Redis
from structlog.testing import capture_logs

from payflow import metrics
from payflow.errors import StartupError
from payflow.queue import keys
from payflow.queue.liveness import Liveness

Q = "payflow_jobs"


@pytest.fixture(params=["fakeredis", "redis-server"])
def r(request: pytest.FixtureRequest) -> Redis:
    client: Redis = request.getfixturevalue(
        "fake_redis" if request.param == "fakeredis" else "real_redis")
    return client


def liveness(r: Redis, daemon_id: str, *, ttl: float = 5.0, max_redeliveries: int = 2,
             reap_interval: float = 0.05, dead_max_entries: int = 100_000) -> Liveness:
    return Liveness(r, daemon_id=daemon_id, lists=[(Q, keys.processing(Q, f"{daemon_id}:p0"))],
                    heartbeat_seconds=ttl / 5, ttl_seconds=ttl, reap_interval=reap_interval,
                    max_redeliveries=max_redeliveries, stop=asyncio.Event(),
                    dead_max_entries=dead_max_entries)


async def test_start_registers_and_beats(r: Redis) -> None:
    live = liveness(r, "d1")
    await live.start(wait_for_namesake=False)
    assert await r.exists(keys.heartbeat("d1"))
    assert 0 < await r.pttl(keys.heartbeat("d1")) <= 5000
    info = json.loads(await r.hget(keys.DAEMONS, "d1") or b"{}")
    assert info["lists"] == [[Q, "{payflow_jobs}:processing:d1:p0"]]
    await live.stop_beating()
    assert not await r.exists(keys.heartbeat("d1"))
    assert await r.hget(keys.DAEMONS, "d1") is None


async def test_reaper_recovers_a_dead_daemons_jobs_in_order(r: Redis) -> None:
    dead = liveness(r, "dead")
    await dead.start(wait_for_namesake=False)
    proc = keys.processing(Q, "dead:p0")
    await r.lpush(proc, b"oldest", b"newer")  # fetched oldest first, LPUSHed into processing
    await r.lpush(Q, b"waiting")
    await r.delete(keys.heartbeat("dead"))  # its heartbeat expired
    alive = liveness(r, "alive")
    await alive.start(wait_for_namesake=False)
    assert await alive.reap_once() == 1
    assert await r.llen(proc) == 0
    assert await r.lrange(Q, 0, -1) == [b"waiting", b"newer", b"oldest"]  # oldest next out
    assert await r.hget(keys.DAEMONS, "dead") is None
    assert await r.hget(keys.DAEMONS, "alive") is not None  # a live daemon is left alone


async def test_one_reaper_at_a_time(r: Redis) -> None:
    a, b = liveness(r, "a", reap_interval=30), liveness(r, "b", reap_interval=30)
    await r.hset(keys.DAEMONS, "gone", json.dumps({"lists": []}))
    assert await a.reap_once() == 1
    await r.hset(keys.DAEMONS, "gone2", json.dumps({"lists": []}))
    assert await b.reap_once() == 0  # a holds the lock for its interval
    assert await r.hget(keys.DAEMONS, "gone2") is not None


async def test_a_job_reaped_too_often_is_poison(r: Redis) -> None:
    reaper = liveness(r, "reaper", max_redeliveries=2)
    for round_ in range(3):
        info = json.dumps({"lists": [[Q, keys.processing(Q, f"x{round_}:p0")]]})
        await r.hset(keys.DAEMONS, f"x{round_}", info)
        await r.lpush(keys.processing(Q, f"x{round_}:p0"), b"process_payment:pay_kill:upi")
        await r.delete(keys.REAPER_LOCK)
        await reaper.reap_once()
        if round_ < 2:
            assert await r.lrange(Q, 0, -1) == [b"process_payment:pay_kill:upi"]
            await r.delete(Q)  # the next daemon takes it and dies too
    assert await r.llen(Q) == 0
    (entry,) = [json.loads(e) for e in await r.lrange(keys.dead(Q), 0, -1)]
    assert entry["job"] == "process_payment:pay_kill:upi"
    assert entry["reason"].startswith("poison:") and "3 times" in entry["reason"]
    assert entry["queue"] == Q and entry["consumer"] == "x2" and entry["failed_at"]


async def test_poison_jobs_trim_the_dead_list_to_its_limit(r: Redis) -> None:
    def trimmed_total() -> float:
        value = metrics.REGISTRY.get_sample_value("payflow_dead_trimmed_total", {"queue": Q})
        return value or 0.0

    before = trimmed_total()
    await r.lpush(keys.dead(Q), b"old-1", b"old-2")
    reaper = liveness(r, "reaper", max_redeliveries=0, dead_max_entries=3)
    processing = keys.processing(Q, "x:p0")
    await r.hset(keys.DAEMONS, "x", json.dumps({"lists": [[Q, processing]]}))
    await r.lpush(processing, b"poison-1", b"poison-2")
    with capture_logs() as logs:
        assert await reaper.reap_once() == 1
    jobs = [json.loads(e)["job"] for e in await r.lrange(keys.dead(Q), 0, 1)]
    assert sorted(jobs) == ["poison-1", "poison-2"]
    assert await r.lrange(keys.dead(Q), 2, -1) == [b"old-2"]  # the oldest was trimmed
    assert await r.llen(Q) == 0
    assert trimmed_total() - before == 1
    (line,) = [e for e in logs if e["event"] == "queue.dead_trimmed"]
    assert line["log_level"] == "warning"
    assert line["queue"] == Q and line["trimmed"] == 1 and line["limit"] == 3


async def test_explicit_id_recovers_its_own_leftovers_at_start(r: Redis) -> None:
    first = liveness(r, "pod-1")
    await first.start(wait_for_namesake=True)
    await r.lpush(keys.processing(Q, "pod-1:p0"), b"job")
    await r.delete(keys.heartbeat("pod-1"))  # killed: the heartbeat lapses
    again = liveness(r, "pod-1")
    await again.start(wait_for_namesake=True)
    assert await r.lrange(Q, 0, -1) == [b"job"]


async def test_explicit_id_in_use_refuses_to_start(r: Redis) -> None:
    live = liveness(r, "pod-2", ttl=0.6)
    await live.start(wait_for_namesake=True)
    beating = asyncio.create_task(live.run_heartbeat())
    try:
        with pytest.raises(StartupError, match=r"another daemon with .* 'pod-2' is alive"):
            await liveness(r, "pod-2", ttl=0.6).start(wait_for_namesake=True)
    finally:
        live.done.set()
        await beating
