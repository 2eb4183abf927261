"""Several daemons, one Redis, one PostgreSQL: they agree, lose nothing, and survive restarts.

- Scale-out: three `payflow serve` on one real Redis and one PostgreSQL store; an endpoint created
  over daemon 1's API (a real receiver that verifies every signature); 20,000 payments POSTed
  round-robin to all three; daemon 3 killed -9 halfway. Every payment ends terminal exactly once,
  both survivors answer the same for it, the receiver gets every event, nothing goes to the log
  sink.
- Restart: payments, events, attempts and endpoints survive `payflow serve` stopping and
  starting.
- A memory store is alone: a second daemon on the same Redis refuses to start (exit 2).
"""

from __future__ import annotations

import asyncio
import itertools
import re
import signal
import time
from collections import Counter
from collections.abc import Callable

import aiohttp
import pytest

from conftest import RedisServer
from daemon_proc import Daemon
from receiver import Receiver, until

pytestmark = [pytest.mark.e2e, pytest.mark.postgres, pytest.mark.timeout(300)]

FAST = {
    "PAYFLOW_DAEMON_HEARTBEAT_SECONDS": "0.3",
    "PAYFLOW_DAEMON_HEARTBEAT_TTL_SECONDS": "1.5",
    "PAYFLOW_DAEMON_REAP_INTERVAL_SECONDS": "0.3",
    "PAYFLOW_WEBHOOKS_RETRY_SCHEDULE": "0.1,0.2,0.4,0.8,1",
    "PAYFLOW_WEBHOOKS_MAX_ATTEMPTS": "30",
    "PAYFLOW_QUEUE_PROMOTE_INTERVAL_SECONDS": "0.1",
    "PAYFLOW_QUEUE_REQUEUE_PENDING_AFTER_SECONDS": "5",
}
BODY = {"amount": 1500, "currency": "INR", "method": "upi", "upi": {"vpa": "success@okbank"}}


async def post_payments(http: aiohttp.ClientSession, urls: list[str], count: int, *,
                        on_half: Callable[[], None] | None = None,
                        alive: Callable[[str], bool] = lambda _: True) -> list[str]:
    """POST ``count`` payments round-robin over ``urls`` (32 at a time); returns the ids of
    those answered 202. Requests to a daemon that is not ``alive`` go to the next one."""
    accepted: list[str] = []
    turn = itertools.count()
    sent = itertools.count()
    halfway = False

    async def one() -> None:
        nonlocal halfway
        while next(sent) < count:
            if not halfway and len(accepted) >= count // 2 and on_half is not None:
                halfway = True
                on_half()
            url = next(u for u in (urls[next(turn) % len(urls)] for _ in range(9)) if alive(u))
            try:
                async with http.post(url + "/v1/payments", json=BODY) as resp:
                    data = await resp.json()
                    if resp.status == 202:
                        accepted.append(data["id"])
            except (aiohttp.ClientError, TimeoutError):
                pass  # the daemon was killed under this request: no answer, no promise

    await asyncio.gather(*(one() for _ in range(32)))
    return accepted


async def test_three_daemons_one_killed_agree_and_lose_nothing(
        make_daemon: Callable[..., Daemon], redis_server: RedisServer,
        postgres_url: str) -> None:
    receiver = Receiver()
    await receiver.start()
    daemons = [make_daemon(redis_server.url, PAYFLOW_STORE_URL=postgres_url,
                           PAYFLOW_LOG_FORMAT="json", **FAST) for _ in range(3)]
    urls = [d.base_url for d in daemons]
    killed = daemons[2]
    try:
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            async with http.post(urls[0] + "/v1/webhook_endpoints",
                                 json={"url": receiver.url}) as resp:
                assert resp.status == 201
                receiver.secret = (await resp.json())["secret"]
            started = time.monotonic()
            accepted = await post_payments(
                http, urls, 20_000, on_half=killed.kill,
                alive=lambda u: u != killed.base_url or killed.proc is not None)
            posted = time.monotonic() - started
            assert len(accepted) >= 19_900, len(accepted)
            expected = set(accepted)

            def paid() -> set[str]:
                return {e["data"]["id"] for e in receiver.events.values()}

            await until(lambda: expected <= paid(), 120,
                        lambda: f"{len(expected - paid())} payments without a delivered event")
            delivered = time.monotonic() - started
            # Every payment in the store (accepted or not: one created by the killed daemon
            # just before it died is swept and processed) is terminal.
            all_ids: list[str] = []
            cursor: str | None = None
            while True:
                params = {"limit": "100", **({"starting_after": cursor} if cursor else {})}
                async with http.get(urls[0] + "/v1/payments", params=params) as resp:
                    page = await resp.json()
                all_ids += [p["id"] for p in page["data"]]
                assert all(p["status"] == "succeeded" for p in page["data"]), [
                    p for p in page["data"] if p["status"] != "succeeded"][:3]
                if not page["has_more"]:
                    break
                cursor = page["data"][-1]["id"]
            assert expected <= set(all_ids)
            # The two survivors answer the same for every payment (a sample of 500).
            for payment_id in accepted[::40]:
                answers = []
                for url in urls[:2]:
                    async with http.get(f"{url}/v1/payments/{payment_id}") as resp:
                        answers.append(await resp.json())
                assert answers[0] == answers[1]
    finally:
        await receiver.stop()
    outputs = "".join(d.output() for d in daemons)
    successes = Counter(re.findall(r"PAYMENT SUCCESS for (pay_\w+)", outputs))
    # Terminal exactly once: no payment's success was logged twice (a daemon killed -9 may
    # have lost the line of one it finished; the API says every one succeeded).
    assert max(successes.values()) == 1, successes.most_common(3)
    assert receiver.forged == 0
    assert '"endpoint": "log"' not in outputs and "endpoint=log" not in outputs
    duplicates = sum(n - 1 for n in receiver.counts.values())
    print(f"\nscale-out: {len(accepted)} accepted of 20000 POSTs in {posted:.1f} s, all events "
          f"verified at the receiver after {delivered:.1f} s; {len(all_ids)} payments in the "
          f"store, {duplicates} duplicate deliveries (same event id)")
    for d in daemons[:2]:
        assert d.stop() == 0


async def test_state_survives_a_restart(make_daemon: Callable[..., Daemon],
                                        redis_server: RedisServer, postgres_url: str) -> None:
    receiver = Receiver()
    await receiver.start()
    env = {"PAYFLOW_STORE_URL": postgres_url, "PAYFLOW_STORE_SECRET_KEY": "a" * 32, **FAST}
    first = make_daemon(redis_server.url, **env)
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(first.base_url + "/v1/webhook_endpoints",
                                 json={"url": receiver.url}) as resp:
                endpoint = await resp.json()
                receiver.secret = endpoint.pop("secret")
            ids = await post_payments(http, [first.base_url], 20)
            await until(lambda: len(receiver.events) == 20, 30, lambda: str(receiver.counts))
            before = {}
            for path in [f"/v1/payments/{i}" for i in ids] + [
                    "/v1/events?limit=100", f"/v1/webhook_endpoints/{endpoint['id']}"]:
                async with http.get(first.base_url + path) as resp:
                    before[path] = await resp.json()
            event_ids = [e["id"] for e in before["/v1/events?limit=100"]["data"]]
            for event_id in event_ids:
                async with http.get(f"{first.base_url}/v1/events/{event_id}/attempts") as resp:
                    before[event_id] = await resp.json()
            assert first.stop() == 0

            second = make_daemon(redis_server.url, **env)
            for path, answer in before.items():
                url = (f"{second.base_url}/v1/events/{path}/attempts" if path.startswith("evt_")
                       else second.base_url + path)
                async with http.get(url) as resp:
                    assert resp.status == 200, path
                    assert await resp.json() == answer, path
            # The endpoint and its (sealed) secret survived: new events still verify.
            more = await post_payments(http, [second.base_url], 5)
            await until(lambda: len(receiver.events) == 25, 30, lambda: str(receiver.counts))
            assert set(more) <= {e["data"]["id"] for e in receiver.events.values()}
            assert receiver.forged == 0
            assert second.stop(signal.SIGINT) == 0
    finally:
        await receiver.stop()


def test_a_memory_store_refuses_to_share_a_redis(make_daemon: Callable[..., Daemon],
                                                 redis_server: RedisServer) -> None:
    first = make_daemon(redis_server.url)
    second = make_daemon(redis_server.url, start=False)
    second.start(wait=False)
    assert second.proc is not None
    assert second.proc.wait(timeout=20) == 2
    lines = [line for line in second.output().splitlines() if "configuration error" in line]
    assert len(lines) == 1 and "postgresql://" in lines[0], second.output()
    assert first.proc is not None and first.proc.poll() is None


def test_a_postgres_daemon_refuses_to_join_a_memory_one(
        make_daemon: Callable[..., Daemon], redis_server: RedisServer,
        postgres_url: str) -> None:
    make_daemon(redis_server.url)
    second = make_daemon(redis_server.url, start=False, PAYFLOW_STORE_URL=postgres_url)
    second.start(wait=False)
    assert second.proc is not None
    assert second.proc.wait(timeout=20) == 2
    assert "memory:// store, which cannot be shared" in second.output()
