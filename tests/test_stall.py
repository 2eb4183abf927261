"""A 503 never charges: Redis stalled (SIGSTOP) for 5 s under 200 concurrent keyed POSTs.

Each client retries with its Idempotency-Key until it gets an answer that is not a 5xx. In the
end there is exactly one payment per key, processed once, every 202 for a key names that same
payment, and no payment exists that its client was only ever told was not accepted.
"""

from __future__ import annotations

import asyncio
import re
import signal
import time
from collections import Counter, defaultdict
from collections.abc import Callable

import aiohttp
import pytest

from conftest import RedisServer
from daemon_proc import Daemon

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

BODY = {"amount": 700, "currency": "INR", "method": "upi", "upi": {"vpa": "success@okbank"}}
CLIENTS = 200
KEYS_EACH = 4  # each client sends its keys one after the other, so the stall hits every phase


async def test_a_redis_stall_never_charges_a_refused_payment_nor_twice_for_a_key(
        make_daemon: Callable[..., Daemon], redis_server: RedisServer) -> None:
    d = make_daemon(redis_server.url, PAYFLOW_QUEUE_REQUEUE_PENDING_AFTER_SECONDS="3",
                    PAYFLOW_LOG_FORMAT="json")
    assert redis_server.proc is not None
    answers: dict[str, list[tuple[int, str | None]]] = defaultdict(list)

    async def pay(key: str, http: aiohttp.ClientSession) -> None:
        """POST with ``key`` until the answer is final: not a 5xx, not 409 (in flight)."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                async with http.post(d.base_url + "/v1/payments", json=BODY,
                                     headers={"Idempotency-Key": key}) as resp:
                    data = await resp.json()
                    answers[key].append((resp.status, data.get("id")))
                    if resp.status < 500 and resp.status != 409:
                        return
            except (aiohttp.ClientError, TimeoutError):
                answers[key].append((0, None))
            await asyncio.sleep(0.2)
        raise AssertionError(f"{key} got no answer in 60 s: {answers[key]}")

    async def client(n: int, http: aiohttp.ClientSession) -> None:
        for k in range(KEYS_EACH):
            await pay(f"stall-{n}-{k}", http)

    async def stall() -> None:
        await asyncio.sleep(0.3)  # requests are in every phase by now
        redis_server.proc.send_signal(signal.SIGSTOP)  # type: ignore[union-attr]
        await asyncio.sleep(5)
        redis_server.proc.send_signal(signal.SIGCONT)  # type: ignore[union-attr]

    timeout = aiohttp.ClientTimeout(total=30)
    connector = aiohttp.TCPConnector(limit=CLIENTS)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as http:
        await asyncio.gather(stall(), *(client(n, http) for n in range(CLIENTS)))
        refused = sum(1 for tries in answers.values() for status, _ in tries if status >= 500)
        accepted: dict[str, str] = {}
        for key, tries in answers.items():
            ids = {str(pid) for status, pid in tries if status == 202}
            assert len(ids) == 1, (key, tries)  # every 202 for a key names one payment
            accepted[key] = ids.pop()
        assert len(accepted) == CLIENTS * KEYS_EACH

        # Every payment in the store is one that a client was told was accepted, and each
        # ends succeeded.
        async def all_payments() -> list[dict[str, object]]:
            found: list[dict[str, object]] = []
            cursor = None
            while True:
                params = {"limit": "100", **({"starting_after": cursor} if cursor else {})}
                async with http.get(d.base_url + "/v1/payments", params=params) as resp:
                    page = await resp.json()
                found += page["data"]
                if not page["has_more"]:
                    return found
                cursor = page["data"][-1]["id"]

        deadline = time.monotonic() + 60
        while True:
            payments = await all_payments()
            if all(p["status"] == "succeeded" for p in payments) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
    assert sorted(str(p["id"]) for p in payments) == sorted(accepted.values())
    assert all(p["status"] == "succeeded" for p in payments), Counter(
        str(p["status"]) for p in payments)
    charged = Counter(re.findall(r"PAYMENT SUCCESS for (pay_\w+)", d.output()))
    assert set(charged) == set(accepted.values()) and max(charged.values()) == 1
    print(f"\nstall: {CLIENTS * KEYS_EACH} keys, {refused} answers 503 during the stall, "
          f"{len(payments)} payments, each charged once")
    assert d.stop() == 0


async def test_concurrency_is_not_an_outage(make_daemon: Callable[..., Daemon],
                                            redis_server: RedisServer) -> None:
    """Far more concurrent requests than any Redis pool holds (redis-py's default is 100) on a
    healthy Redis: every one is answered 2xx, none 503."""
    d = make_daemon(redis_server.url, PAYFLOW_LOG_FORMAT="json")
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=60)) as http:

        async def pay(n: int) -> int:
            headers = {"Idempotency-Key": f"c-{n}"} if n % 2 else {}
            async with http.post(d.base_url + "/v1/payments", json=BODY,
                                 headers=headers) as resp:
                return resp.status

        async def endpoint(n: int) -> int:  # through the Redis idempotency middleware
            async with http.post(d.base_url + "/v1/webhook_endpoints",
                                 json={"url": f"https://example.com/hook/{n}"},
                                 headers={"Idempotency-Key": f"e-{n}"}) as resp:
                return resp.status

        statuses = await asyncio.gather(*(pay(n) for n in range(600)),
                                        *(endpoint(n) for n in range(300)))
    assert Counter(statuses) == Counter({202: 600, 201: 300})
    assert "MaxConnectionsError" not in d.output()
