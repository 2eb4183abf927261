"""Chaos: kill -9 the daemon, kill one of two daemons, restart Redis, take the receiver down.

Each test runs real processes (redis-server, `payflow serve`) and a real webhook receiver, is
bounded in time, and checks that nothing is lost and nothing changes state twice.

A job names what it acts on and carries no snapshot, so what outlives a daemon is its store's:
the tests that kill a daemon and go on with another one use a PostgreSQL store (``memory://``
dies with its daemon, and cannot be shared by two).
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import cast

import aiohttp
import pytest
import redis

from conftest import RedisServer, need
from daemon_proc import Daemon
from payflow.models import event_id_for
from receiver import Receiver, until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

FAST_RECOVERY = {
    "PAYFLOW_DAEMON_HEARTBEAT_SECONDS": "0.3",
    "PAYFLOW_DAEMON_HEARTBEAT_TTL_SECONDS": "1.5",
    "PAYFLOW_DAEMON_REAP_INTERVAL_SECONDS": "0.3",
    "PAYFLOW_WEBHOOKS_RETRY_SCHEDULE": "0.1,0.2,0.4,0.8,1",
    "PAYFLOW_WEBHOOKS_MAX_ATTEMPTS": "30",
    "PAYFLOW_QUEUE_PROMOTE_INTERVAL_SECONDS": "0.1",
}


def push_payments(r: redis.Redis, prefix: str, count: int) -> list[str]:
    ids = [f"{prefix}{i}" for i in range(count)]
    for start in range(0, count, 1000):
        r.lpush("payflow_jobs", *(f"process_payment:{p}:upi" for p in ids[start:start + 1000]))
    return ids


def leftovers(r: redis.Redis) -> dict[str, int]:
    """Every job still anywhere in Redis (queues, processing lists, delayed, dead)."""
    found = {}
    for pattern in ("payflow_jobs", "webhook_jobs", "{*}:processing:*", "{*}:delayed",
                    "{*}:dead"):
        for key in cast(list[bytes], r.keys(pattern)):
            size = r.zcard(key) if key.endswith(b":delayed") else r.llen(key)
            if size:
                found[key.decode()] = int(size)
    return found


def successes(d: Daemon) -> Counter[str]:
    return Counter(re.findall(r"PAYMENT SUCCESS for (\S+)", d.output()))


def daemon_id(d: Daemon) -> str:
    m = re.search(r"daemon\.started\s+daemon_id=(\S+)", d.output())
    assert m, d.output()[-2000:]
    return m.group(1)


@pytest.mark.postgres
async def test_kill_9_with_5000_payments_in_flight(make_daemon: Callable[..., Daemon],
                                                   redis_server: RedisServer,
                                                   postgres_url: str) -> None:
    rec = Receiver()
    await rec.start()
    r = redis.Redis(port=redis_server.port)
    settings = {**FAST_RECOVERY, "PAYFLOW_WEBHOOKS_ENDPOINTS": rec.url,
                "PAYFLOW_STORE_URL": postgres_url}
    try:
        first = make_daemon(redis_server.url, **settings)
        ids = push_payments(r, "pay_k", 5000)
        # Kill it when about a third of the payments are taken: payments and webhooks are then
        # both in flight.
        await until(lambda: int(r.llen("payflow_jobs")) <= 3300, 60,
                    lambda: f"{r.llen('payflow_jobs')} still queued")
        first.kill()  # SIGKILL, mid-run
        killed_at = time.monotonic()
        in_flight = sum(int(r.llen(k)) for k in r.keys("{*}:processing:*"))
        queued = int(r.llen("payflow_jobs")) + int(r.llen("webhook_jobs"))
        second = make_daemon(redis_server.url, **settings)
        await until(lambda: len(rec.counts) >= len(ids), 120,
                    lambda: f"{len(rec.counts)} of {len(ids)} events; {leftovers(r)}")
        await until(lambda: not leftovers(r), 20, lambda: str(leftovers(r)))
        recovered_in = time.monotonic() - killed_at
        expected = {event_id_for(p, "payment.success") for p in ids}
        assert set(rec.counts) == expected  # every payment's event arrived, no stray event
        one, two = successes(first), successes(second)
        # each payment's state changed once, by one of the two daemons (the store outlived
        # the first: the second finished what it had claimed, and redid nothing it finished).
        # Every payment succeeded: its event arrived. (The first may have committed a few
        # whose lines the kill cut off, so the lines alone may not name every payment.)
        assert set(one.values()) == {1} and set(two.values()) == {1}
        assert not set(one) & set(two)
        assert set(one) | set(two) <= set(ids)
        assert set(two) - set(one)  # the second daemon really took over
        assert in_flight > 0  # the kill really caught jobs in flight
        print(f"\nkill -9: {in_flight} jobs in processing lists and {queued} queued at the kill;"
              f" all {len(ids)} events delivered {recovered_in:.1f} s after it; "
              f"{rec.duplicates} duplicate deliveries (same event id); "
              f"{len(one)} payments finished by the first daemon (lines seen), {len(two)} by the "
              "second")
        assert second.stop() == 0
    finally:
        r.close()
        await rec.stop()


@pytest.mark.postgres
async def test_survivor_reaps_a_killed_daemons_jobs(make_daemon: Callable[..., Daemon],
                                                    redis_server: RedisServer,
                                                    postgres_url: str) -> None:
    rec = Receiver()
    await rec.start()
    r = redis.Redis(port=redis_server.port)
    try:
        settings = {**FAST_RECOVERY, "PAYFLOW_WEBHOOKS_ENDPOINTS": rec.url,
                    "PAYFLOW_PROCESSOR_LATENCY_MS": "200", "PAYFLOW_STORE_URL": postgres_url}
        victim = make_daemon(redis_server.url, **settings)
        survivor = make_daemon(redis_server.url, **settings)
        ids = push_payments(r, "pay_two", 2000)
        await until(lambda: len(rec.counts) >= 200, 60, lambda: f"{len(rec.counts)} events")
        victim_id = daemon_id(victim)
        victim.kill()
        await until(lambda: len(rec.counts) >= len(ids), 90,
                    lambda: f"{len(rec.counts)} events; {leftovers(r)}")
        await until(lambda: not leftovers(r), 20, lambda: str(leftovers(r)))
        assert set(rec.counts) == {event_id_for(p, "payment.success") for p in ids}
        m = re.search(rf"daemon\.reaped\s+dead_daemon={re.escape(victim_id)} "
                      r"requeued=(\d+) poison=0", survivor.output())
        assert m, survivor.output()[-3000:]
        assert int(m.group(1)) > 0  # the survivor took over jobs the victim held
        # one store for both: each payment's state changed once, by one of them (every one
        # succeeded: its event arrived; the victim's last lines may have been cut off)
        one, two = successes(victim), successes(survivor)
        assert set(one.values()) | set(two.values()) == {1} and not set(one) & set(two)
        assert set(one) | set(two) <= set(ids)
        print(f"\nsurvivor reaped {m.group(1)} jobs of the killed daemon; "
              f"{rec.duplicates} duplicate deliveries")
        assert survivor.stop() == 0
    finally:
        r.close()
        await rec.stop()


async def test_redis_restart_loses_nothing_and_the_daemon_rides_it_out(
        make_daemon: Callable[..., Daemon], tmp_path: Path) -> None:
    need("redis-server", __import__("shutil").which("redis-server") is not None)
    server = RedisServer(tmp_path, appendonly=True)
    server.start()
    rec = Receiver()
    await rec.start()
    r = redis.Redis(port=server.port)
    try:
        d = make_daemon(server.url, PAYFLOW_WEBHOOKS_ENDPOINTS=rec.url,
                        PAYFLOW_PROCESSOR_LATENCY_MS="20", **FAST_RECOVERY)
        ids = push_payments(r, "pay_rr", 1000)
        await until(lambda: len(rec.counts) >= 150, 60, lambda: f"{len(rec.counts)} events")
        server.kill()  # SIGKILL the Redis server mid-run
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{d.base_url}/readyz") as resp:
                assert resp.status == 503
            async with http.get(f"{d.base_url}/healthz") as resp:
                assert resp.status == 200
            started = time.monotonic()
            body = {"amount": 100, "currency": "INR", "method": "upi"}
            async with http.post(f"{d.base_url}/v1/payments", json=body) as resp:
                assert resp.status == 503
                assert resp.headers["Retry-After"] == "1"
                assert resp.content_type == "application/problem+json"
            assert time.monotonic() - started < 5  # refused promptly, not hung
            await until(lambda: "queue.fetch_failed" in d.output(), 10, lambda: "no backoff")
            outage_lines = d.output().count("queue.fetch_failed")
            server.start()  # same port and directory: the AOF is replayed
            await until(lambda: len(rec.counts) >= len(ids), 90,
                        lambda: f"{len(rec.counts)} events; {leftovers(r)}")
            async with http.get(f"{d.base_url}/readyz") as resp:
                assert resp.status == 200
        await until(lambda: not leftovers(r), 20, lambda: str(leftovers(r)))
        assert d.proc is not None and d.proc.poll() is None  # it never exited
        assert set(rec.counts) == {event_id_for(p, "payment.success") for p in ids}
        assert set(successes(d).values()) == {1}
        print(f"\nRedis restart: {outage_lines} fetch-failure lines from 16 consumers during "
              f"the outage; all {len(ids)} events delivered; {rec.duplicates} duplicates")
        assert d.stop() == 0
    finally:
        r.close()
        server.kill()
        await rec.stop()


@pytest.mark.parametrize("mode", ["down for a while", "fails the first attempts"])
async def test_receiver_failures_are_retried_until_delivered(
        make_daemon: Callable[..., Daemon], redis_server: RedisServer, mode: str) -> None:
    rec = Receiver()
    if mode == "fails the first attempts":
        rec.fail_first = 60
        await rec.start()
    r = redis.Redis(port=redis_server.port)
    try:
        d = make_daemon(redis_server.url, PAYFLOW_WEBHOOKS_ENDPOINTS=rec.url,
                        **{**FAST_RECOVERY, "PAYFLOW_WEBHOOKS_RETRY_SCHEDULE": "0.2,0.4,1"})
        ids = push_payments(r, "pay_rx", 40)
        await until(lambda: d.output().count("Webhook delivery failed") >= 40, 30,
                    lambda: d.output()[-2000:])
        if mode == "down for a while":
            assert rec.requests == 0
            await rec.start()
        await until(lambda: len(rec.counts) >= len(ids), 60,
                    lambda: f"{len(rec.counts)} events; {leftovers(r)}")
        await until(lambda: not leftovers(r), 20, lambda: str(leftovers(r)))
        assert set(rec.counts) == {event_id_for(p, "payment.success") for p in ids}
        assert r.llen("{webhook_jobs}:dead") == 0
        assert d.stop() == 0
    finally:
        r.close()
        await rec.stop()
