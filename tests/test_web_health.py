"""/healthz (alive, even while stopping) and /readyz (Redis answers; not while stopping)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import pytest
import redis.exceptions
import structlog
from aiohttp import web
from aiohttp.test_utils import TestClient

from conftest import ServeApp
from payflow.store.memory import MemoryStore
from payflow.web import health
from payflow.web.app import create_app
from payflow.web.context import WebContext

PROBLEM = "application/problem+json"


class FakeRedis:
    """``ping`` answers ``answer``, raises ``fail``, or hangs when ``hang`` is set."""

    def __init__(self) -> None:
        self.answer = True
        self.fail: Exception | None = None
        self.hang = False
        self.pings = 0

    async def ping(self) -> bool:
        self.pings += 1
        if self.fail is not None:
            raise self.fail
        if self.hang:
            await asyncio.Event().wait()
        return self.answer

    async def enqueue(self, raw: bytes) -> None:
        raise AssertionError("health checks never enqueue")


@dataclass
class Health:
    client: TestClient[web.Request, web.Application]
    redis: FakeRedis
    ctx: WebContext


@pytest.fixture
async def make_health(serve_app: ServeApp) -> Callable[[], Awaitable[Health]]:
    async def make() -> Health:
        fake = FakeRedis()
        ctx = WebContext(store=MemoryStore(), enqueue_payment=fake.enqueue, ping=fake.ping)
        client = await serve_app(create_app(ctx))
        return Health(client=client, redis=fake, ctx=ctx)

    return make


@pytest.fixture
async def hc(make_health: Callable[[], Awaitable[Health]]) -> Health:
    return await make_health()


async def test_healthz_ok(hc: Health) -> None:
    resp = await hc.client.get("/healthz")
    assert resp.status == 200
    assert resp.content_type == "application/json"
    assert await resp.read() == b'{"status":"ok"}'
    assert resp.headers["Request-Id"].startswith("req_")


async def test_healthz_does_not_need_redis(hc: Health) -> None:
    hc.redis.fail = redis.exceptions.ConnectionError()
    resp = await hc.client.get("/healthz")
    assert resp.status == 200
    assert hc.redis.pings == 0


async def test_healthz_stays_200_while_stopping(hc: Health) -> None:
    hc.ctx.stopping.set()
    resp = await hc.client.get("/healthz")
    assert resp.status == 200
    assert await resp.json() == {"status": "ok"}
    head = await hc.client.head("/healthz")
    assert head.status == 200


async def test_readyz_ready(hc: Health) -> None:
    resp = await hc.client.get("/readyz")
    assert resp.status == 200
    assert resp.content_type == "application/json"
    assert await resp.read() == b'{"status":"ready"}'
    assert hc.redis.pings == 1


async def assert_not_ready(hc: Health, code: str = "redis_unavailable") -> None:
    resp = await hc.client.get("/readyz", headers={"Request-Id": "probe-1"})
    assert resp.status == 503
    assert resp.content_type == PROBLEM
    data = await resp.json(content_type=PROBLEM)
    assert data["type"] == "https://payflow.dev/problems/" + code.replace("_", "-")
    assert (data["status"], data["code"], data["request_id"]) == (503, code, "probe-1")
    assert resp.headers["Retry-After"] == "1"


async def test_readyz_503_when_ping_is_false(hc: Health) -> None:
    hc.redis.answer = False
    await assert_not_ready(hc)


@pytest.mark.parametrize(
    "error",
    [redis.exceptions.ConnectionError("refused"), redis.exceptions.TimeoutError(), OSError(),
     RuntimeError("anything")],
)
async def test_readyz_503_when_ping_raises(hc: Health, error: Exception) -> None:
    hc.redis.fail = error
    with structlog.testing.capture_logs() as logs:
        await assert_not_ready(hc)
    failures = [e for e in logs if e["event"] != "http.request"]  # the access log line aside
    assert [e["event"] for e in failures] == ["readyz.ping_failed"]
    assert failures[0]["error_type"] == type(error).__name__


async def test_readyz_503_when_ping_hangs(
    hc: Health, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(health, "READY_TIMEOUT", 0.05)
    hc.redis.hang = True
    await assert_not_ready(hc)


async def test_readyz_503_while_stopping(hc: Health) -> None:
    hc.ctx.stopping.set()
    await assert_not_ready(hc, code="shutting_down")
    assert hc.redis.pings == 0


async def test_readyz_recovers(hc: Health) -> None:
    hc.redis.answer = False
    await assert_not_ready(hc)
    hc.redis.answer = True
    assert (await hc.client.get("/readyz")).status == 200


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
async def test_an_unknown_query_parameter_is_400_as_on_v1_routes(hc: Health, path: str) -> None:
    resp = await hc.client.get(path, params={"verbose": "1"})
    assert resp.status == 400
    assert resp.content_type == PROBLEM
    data = await resp.json(content_type=PROBLEM)
    assert (data["code"], data["param"]) == ("unknown_parameter", "verbose")
    assert data["detail"] == "Unknown query parameter 'verbose' (this route takes none)."
    assert hc.redis.pings == 0  # refused before Redis is asked
    v1 = await hc.client.get("/v1/payments/pay_x", params={"verbose": "1"})  # the same answer
    assert v1.status == 400
    assert (await v1.json(content_type=PROBLEM))["code"] == "unknown_parameter"


async def test_metrics_still_ignores_query_parameters(hc: Health) -> None:
    resp = await hc.client.get("/metrics", params={"name[]": "payflow_http_requests_total"})
    assert resp.status == 200
