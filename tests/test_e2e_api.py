"""The API and webhooks over real HTTP against `payflow serve`, with `payflow listen` as the
merchant's receiver."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from conftest import RedisServer, free_port
from daemon_proc import PAYFLOW, Daemon, daemon_env

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

KEY = "sk_test_e2e_key_0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
BODY = {"amount": 2500, "currency": "INR", "method": "upi", "upi": {"vpa": "ravi@okaxis"}}


class Listener:
    def __init__(self, tmp: Path, port: int, *secrets: str) -> None:
        self.log = tmp / f"listen-{port}-{time.monotonic_ns()}.log"
        args = [PAYFLOW, "listen", "--port", str(port), "--path", "/hooks"]
        for secret in secrets:
            args += ["--secret", secret]
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT,
                                         env=daemon_env(), stdin=subprocess.DEVNULL)

    def output(self) -> str:
        return self.log.read_text("utf-8", "replace")

    async def wait_for(self, text: str, count: int = 1, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while self.output().count(text) < count:
            assert time.monotonic() < deadline, f"no {text!r} x{count}:\n{self.output()}"
            await asyncio.sleep(0.05)

    def stop(self) -> int:
        self.proc.terminate()
        return self.proc.wait(timeout=10)


@pytest.fixture
def listeners(tmp_path: Path) -> Iterator[Callable[..., Listener]]:
    made: list[Listener] = []

    def make(port: int, *secrets: str) -> Listener:
        listener = Listener(tmp_path, port, *secrets)
        made.append(listener)
        return listener

    yield make
    for listener in made:
        if listener.proc.poll() is None:
            listener.proc.kill()
            listener.proc.wait()


async def call(http: aiohttp.ClientSession, method: str, url: str,
               **kw: Any) -> tuple[int, dict[str, Any], Any]:
    async with http.request(method, url, **kw) as resp:
        text = await resp.text()
        body = None
        if resp.content_type.endswith("json"):
            body = json.loads(text)
        return resp.status, dict(resp.headers), body


async def test_payflow_listen_verifies_events_from_payflow_serve_through_a_rotation(
        make_daemon: Callable[..., Daemon], redis_server: RedisServer,
        listeners: Callable[..., Listener]) -> None:
    d = make_daemon(redis_server.url, PAYFLOW_API_KEYS=f"e2e:{KEY}")
    port = free_port()
    async with aiohttp.ClientSession(headers=AUTH) as http:
        status, _, endpoint = await call(http, "POST", f"{d.base_url}/v1/webhook_endpoints",
                                         json={"url": f"http://127.0.0.1:{port}/hooks"})
        assert status == 201
        old = endpoint["secret"]
        listen = listeners(port, old)
        await listen.wait_for("listening on")
        status, _, payment = await call(http, "POST", f"{d.base_url}/v1/payments", json=BODY)
        assert status == 202
        await listen.wait_for("verified  ")
        assert f"payment.success  {payment['id']}  status=succeeded" in listen.output()
        # rotate: during the grace period both signatures are sent, so a receiver that knows
        # only the new secret verifies, and so does one that still has the old one
        status, _, rotated = await call(
            http, "POST", f"{d.base_url}/v1/webhook_endpoints/{endpoint['id']}/rotate_secret")
        assert status == 200 and rotated["secret"] != old
        assert listen.stop() == 0
        for secrets in ((rotated["secret"],), (old,)):
            listen = listeners(port, *secrets)
            await listen.wait_for("listening on")
            status, _, again = await call(http, "POST", f"{d.base_url}/v1/payments",
                                          json=BODY)
            await listen.wait_for(f"payment.success  {again['id']}")
            assert "REJECTED" not in listen.output()
            assert listen.stop() == 0
        # every attempt is visible
        status, _, events = await call(http, "GET", f"{d.base_url}/v1/events?limit=100")
        event = next(e for e in events["data"] if e["data"]["id"] == payment["id"])
        status, _, attempts = await call(http, "GET",
                                         f"{d.base_url}/v1/events/{event['id']}/attempts")
        assert [(a["outcome"], a["status"]) for a in attempts["data"]] == [("succeeded", 200)]
    assert d.stop() == 0


async def test_every_status_code_over_real_http(make_daemon: Callable[..., Daemon],
                                                tmp_path: Path) -> None:
    server = RedisServer(tmp_path)
    server.start()
    try:
        d = make_daemon(server.url, PAYFLOW_API_KEYS=f"e2e:{KEY}",
                        PAYFLOW_API_REQUIRE_IDEMPOTENCY_KEY="true",
                        PAYFLOW_HTTP_MAX_BODY_BYTES="2048")
        base = f"{d.base_url}/v1/payments"
        async with aiohttp.ClientSession(headers=AUTH) as http:
            def idem(key: str) -> dict[str, str]:
                return {"Idempotency-Key": key}

            assert (await call(http, "POST", base, json=BODY))[0] == 400  # key required
            status, headers, created = await call(http, "POST", base, json=BODY,
                                                  headers={**idem("k1"),
                                                           "Request-Id": "client-req-7"})
            assert status == 202 and headers["Location"].endswith(created["id"])
            assert headers["Request-Id"] == "client-req-7"  # taken from the request
            d.wait_for("payment.created")
            line = next(x for x in d.lines() if "payment.created" in x)
            assert "request_id=client-req-7" in line  # and on the request's log lines
            status, headers, replay = await call(http, "POST", base, json=BODY,
                                                 headers=idem("k1"))
            assert status == 202 and headers["Idempotent-Replayed"] == "true"
            assert replay["id"] == created["id"]
            other = {**BODY, "amount": 1}
            assert (await call(http, "POST", base, json=other, headers=idem("k1")))[0] == 422
            status, _, bad = await call(http, "POST", base, json={**BODY, "amount": 0},
                                        headers=idem("k2"))
            assert status == 422 and bad["param"] == "amount"
            status, _, _ = await call(http, "POST", base, data=b"{nope",
                                      headers={**idem("k3"), "Content-Type": "application/json"})
            assert status == 400
            big = {**BODY, "metadata": {"note": "x" * 400, "n2": "y" * 400, "n3": "z" * 400,
                                        "n4": "w" * 400, "n5": "v" * 400, "n6": "u" * 400}}
            assert (await call(http, "POST", base, json=big, headers=idem("k4")))[0] == 413
            assert (await call(http, "GET", f"{base}/pay_missing"))[0] == 404
            assert (await call(http, "PUT", base))[0] == 405
            status, _, got = await call(http, "GET", f"{base}/{created['id']}")
            assert status == 200 and got["id"] == created["id"]
            status, _, conflict = await call(http, "POST", f"{base}/{created['id']}/cancel",
                                             headers=idem("k5"))
            assert status == 409 and conflict["current_status"] in ("processing", "succeeded")
            async with aiohttp.ClientSession() as anonymous:
                status, headers, _ = await call(anonymous, "GET", base)
                assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")
            server.kill()  # Redis away: nothing is accepted that cannot be queued
            # The first push after the kill may be sent on the open connection before the
            # daemon can know Redis is gone: that payment is kept (202, its job re-queued by
            # the sweeper later). From then on Redis is known to be away: 503, nothing kept.
            status, headers, down = await call(http, "POST", base, json=BODY,
                                               headers=idem("k6"))
            if status == 202:
                kept = down["id"]
                status, headers, down = await call(http, "POST", base, json=BODY,
                                                   headers=idem("k7"))
                assert (await call(http, "GET", f"{base}/{kept}"))[0] == 200
            assert status == 503 and headers["Retry-After"] == "1"
            assert down["code"] in ("idempotency_unavailable", "queue_unavailable")
            assert (await call(http, "GET", f"{d.base_url}/readyz"))[0] == 503
        assert d.stop() == 0
    finally:
        server.kill()


def test_open_api_off_loopback_warns(make_daemon: Callable[..., Daemon],
                                     redis_server: RedisServer) -> None:
    d = make_daemon(redis_server.url, args=["--host", "0.0.0.0", "--log-format", "console"])
    assert "api.open" in d.output() and "anyone who reaches it" in d.output()
    assert d.stop() == 0
    quiet = make_daemon(redis_server.url)  # loopback: no warning
    assert "api.open" not in quiet.output()
    assert quiet.stop() == 0
