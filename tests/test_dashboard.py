"""The dashboard's page and the API routes it reads and acts through (``/v1/queues``,
``/v1/dead_letters``, ``/v1/payments/{id}/events``, ``/v1/webhook_endpoints/{id}/health``),
through aiohttp's test client over fakeredis and a MemoryStore."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import pytest
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from conftest import ServeApp, free_port
from payflow.config import ApiKeyConfig
from payflow.jobs import WebhookJob
from payflow.models import (
    DeliveryAttempt,
    Event,
    Payment,
    PaymentStatus,
    Refund,
    WebhookEndpoint,
    iso,
)
from payflow.operations import Operations
from payflow.queue import keys
from payflow.queue.deadletters import entry_id
from payflow.queue.redis import dead_entry
from payflow.store.memory import MemoryStore
from payflow.web.app import create_app
from payflow.web.context import WebContext

KEY: Final = ApiKeyConfig(name="ops", secret="sk_test_dashboard_0123456789")
AUTH: Final = {"Authorization": f"Bearer {KEY.secret}"}
Q, W = "payflow_jobs", "webhook_jobs"
PROBLEM: Final = "application/problem+json"
Client = TestClient[Any, Any]


@dataclass
class Env:
    store: MemoryStore
    redis: Redis
    client: Client


async def _noop(raw: bytes) -> None:
    return None


async def _ping() -> bool:
    return True


async def build(serve_app: ServeApp, redis: Redis | None,
                store: MemoryStore | None = None) -> Client:
    store = store or MemoryStore()
    ctx = WebContext(store=store, enqueue_payment=_noop, enqueue_webhook=_noop, ping=_ping,
                     api_keys=(KEY,),
                     operations=None if redis is None else Operations(redis, (Q, W), store))
    return await serve_app(create_app(ctx))


@pytest.fixture
async def env(serve_app: ServeApp, fake_redis: Redis) -> Env:
    store = MemoryStore()
    return Env(store, fake_redis, await build(serve_app, fake_redis, store))


async def call(client: Client, method: str, path: str, *, auth: bool = True,
               headers: dict[str, str] | None = None, **kw: Any) -> tuple[int, Any]:
    resp = await client.request(method, path, headers={**(AUTH if auth else {}),
                                                       **(headers or {})}, **kw)
    body = await resp.json(content_type=None)
    return resp.status, body


# --- the page ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "content_type", "text"), [
    ("/dashboard", "text/html", "<title>PayFlow dashboard</title>"),
    ("/dashboard/app.js", "text/javascript", "Authorization"),
    ("/dashboard/style.css", "text/css", ".badge"),
])
async def test_the_page_is_served_without_a_key(env: Env, path: str, content_type: str,
                                                text: str) -> None:
    resp = await env.client.get(path)
    assert resp.status == 200
    assert resp.content_type == content_type and resp.charset == "utf-8"
    assert text in await resp.text()
    assert "default-src 'none'" in resp.headers["Content-Security-Policy"]
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert resp.headers["Request-Id"].startswith("req_")


@pytest.mark.parametrize("path", ["/dashboard/index.html", "/dashboard/nope.js",
                                  "/dashboard/..%2fapp.py"])
async def test_nothing_else_is_served_from_it(env: Env, path: str) -> None:
    resp = await env.client.get(path)
    assert resp.status == 404 and resp.content_type == PROBLEM


async def test_the_page_refers_only_to_its_own_files(env: Env) -> None:
    html = await (await env.client.get("/dashboard")).text()
    assert 'src="dashboard/app.js"' in html and 'href="dashboard/style.css"' in html
    assert "http://" not in html and "https://" not in html  # no CDN


# --- the key ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/v1/queues"), ("GET", f"/v1/dead_letters?queue={Q}"),
    ("DELETE", f"/v1/dead_letters?queue={Q}"), ("POST", "/v1/dead_letters/replay"),
    ("GET", "/v1/payments/pay_x/events"), ("GET", "/v1/webhook_endpoints/ep_x/health"),
])
async def test_every_route_needs_the_key(env: Env, method: str, path: str) -> None:
    await env.redis.rpush(keys.dead(Q), dead_entry(Q, b"x", "bad", consumer="c"))
    status, body = await call(env.client, method, path, auth=False,
                              json={"queue": Q, "all": True})
    assert (status, body["code"]) == (401, "missing_api_key")
    resp = await env.client.request(method, path, headers={"Authorization": "Bearer nope"})
    assert resp.status == 401
    assert await env.redis.llen(keys.dead(Q)) == 1  # nothing was done


# --- GET /v1/queues ---------------------------------------------------------------------------


async def test_the_overview_sums_the_rates_of_live_daemons(env: Env) -> None:
    async def register(daemon_id: str, done: float, *, alive: bool) -> None:
        lists = [[Q, keys.processing(Q, f"{daemon_id}:p0")]]
        await env.redis.hset(keys.DAEMONS, daemon_id, json.dumps({
            "host": "h", "pid": 7, "started_at": "2026-01-01T00:00:00.000Z", "lists": lists,
            "store": "memory", "shared": False,
            "rates": {Q: {"done": done, "retried": 0.5, "dead": 0.0}}}))
        if alive:
            await env.redis.set(keys.heartbeat(daemon_id), "2026-01-01T00:00:00+00:00")

    await register("a", 10.25, alive=True)
    await register("b", 2.0, alive=True)
    await register("gone", 100.0, alive=False)
    await env.redis.lpush(Q, b"j1", b"j2")
    await env.redis.lpush(keys.processing(Q, "a:p0"), b"j3")
    await env.redis.rpush(keys.dead(W), b"{}")
    status, body = await call(env.client, "GET", "/v1/queues")
    assert status == 200 and body["object"] == "queue_overview"
    assert body["queues"] == {Q: {"ready": 2, "processing": 1, "delayed": 0, "dead": 0},
                              W: {"ready": 0, "processing": 0, "delayed": 0, "dead": 1}}
    assert body["rates"] == {Q: {"done": 12.25, "retried": 1.0, "dead": 0.0},
                             W: {"done": 0.0, "retried": 0.0, "dead": 0.0}}
    assert body["rate_window_seconds"] == 60
    assert [(d["id"], d["alive"], d["in_flight"]) for d in body["daemons"]] == [
        ("a", True, {Q: 1}), ("b", True, {Q: 0}), ("gone", False, {Q: 0})]
    assert body["stores"] == ["memory"]


async def test_without_operations_the_routes_answer_503(serve_app: ServeApp) -> None:
    client = await build(serve_app, None)
    for method, path in (("GET", "/v1/queues"), ("GET", f"/v1/dead_letters?queue={Q}"),
                         ("GET", "/v1/payments/pay_x/events")):
        status, body = await call(client, method, path)
        assert (status, body["code"]) == (503, "queue_unavailable")


async def test_an_unreachable_redis_is_503_not_500(serve_app: ServeApp) -> None:
    down = Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.5)
    try:
        client = await build(serve_app, down)
        for method, path in (("GET", "/v1/queues"), ("GET", f"/v1/dead_letters?queue={Q}"),
                             ("DELETE", f"/v1/dead_letters?queue={Q}")):
            status, body = await call(client, method, path)
            assert (status, body["code"]) == (503, "queue_unavailable")
            assert "Redis does not answer" in body["detail"]
    finally:
        await down.aclose()


# --- dead letters -----------------------------------------------------------------------------


async def test_list_replay_one_and_all_then_purge(env: Env) -> None:
    envelope = WebhookJob(event_id="evt_1", attempt=7, jid="job_1").encode()
    raws = [dead_entry(W, envelope, "gave up after 7 attempts: HTTP 500", consumer="d:w0"),
            dead_entry(W, b"webhook:payment.success:pay_2", "unknown", consumer="d:w0"),
            dead_entry(W, b"\xff garbage", "unrecognised job", consumer="d:w1")]
    for raw in raws:
        await env.redis.lpush(keys.dead(W), raw)  # as the consumers do: newest first

    status, body = await call(env.client, "GET", f"/v1/dead_letters?queue={W}&limit=2")
    assert status == 200
    assert (body["object"], body["queue"], body["total"], body["has_more"]) == (
        "list", W, 3, True)
    assert [e["id"] for e in body["data"]] == [entry_id(raws[2]), entry_id(raws[1])]
    newest = body["data"][0]
    assert newest == {"object": "dead_letter", "id": entry_id(raws[2]), "queue": W,
                      "failed_at": newest["failed_at"], "reason": "unrecognised job",
                      "consumer": "d:w1", "job": "\\xff garbage"}

    status, body = await call(env.client, "POST", "/v1/dead_letters/replay",
                              json={"queue": W, "id": entry_id(raws[0])})
    assert (status, body) == (200, {"object": "dead_letter_replay", "queue": W, "replayed": 1})
    [queued] = await env.redis.lrange(W, 0, -1)
    assert json.loads(queued) == {**json.loads(envelope), "attempt": 0}  # all attempts again
    status, body = await call(env.client, "POST", "/v1/dead_letters/replay",
                              json={"queue": W, "id": entry_id(raws[0])})
    assert (status, body["code"]) == (404, "dead_letter_not_found")

    status, body = await call(env.client, "POST", "/v1/dead_letters/replay",
                              json={"queue": W, "all": True})
    assert (status, body["replayed"]) == (200, 2)
    assert sorted(await env.redis.lrange(W, 0, -1)) == sorted(
        [b"\xff garbage", b"webhook:payment.success:pay_2", queued])
    assert await env.redis.llen(keys.dead(W)) == 0

    await env.redis.lpush(keys.dead(Q), raws[1], raws[2])
    status, body = await call(env.client, "DELETE", f"/v1/dead_letters?queue={Q}")
    assert (status, body) == (200, {"object": "dead_letter_purge", "queue": Q, "deleted": 2})
    status, body = await call(env.client, "GET", f"/v1/dead_letters?queue={Q}")
    assert (status, body["total"], body["data"], body["has_more"]) == (200, 0, [], False)
    assert await env.redis.llen(W) == 3  # the queue itself is untouched


@pytest.mark.parametrize(("method", "path", "status", "param", "code"), [
    ("GET", "/v1/dead_letters", 400, "queue", "missing"),
    ("GET", "/v1/dead_letters?queue=nope", 400, "queue", "unknown_queue"),
    ("GET", f"/v1/dead_letters?queue={Q}&limit=0", 400, "limit", "out_of_range"),
    ("GET", f"/v1/dead_letters?queue={Q}&limit=101", 400, "limit", "out_of_range"),
    ("DELETE", "/v1/dead_letters?queue=%7Bpayflow_jobs%7D:dead", 400, "queue",
     "unknown_queue"),
    ("DELETE", "/v1/dead_letters", 400, "queue", "missing"),
])
async def test_bad_queries(env: Env, method: str, path: str, status: int, param: str,
                           code: str) -> None:
    await env.redis.rpush(keys.dead(Q), b"{}")
    got, body = await call(env.client, method, path)
    assert (got, body["param"], body["code"]) == (status, param, code)
    assert await env.redis.llen(keys.dead(Q)) == 1


@pytest.mark.parametrize(("body", "param", "code"), [
    ({}, "queue", "missing"),
    ({"queue": 1, "all": True}, "queue", "invalid_type"),
    ({"queue": "nope", "all": True}, "queue", "unknown_queue"),
    ({"queue": Q}, "id", "missing"),
    ({"queue": Q, "all": False}, "id", "missing"),
    ({"queue": Q, "id": "abc", }, "id", "invalid_id"),
    ({"queue": Q, "id": "ABCDEF012345"}, "id", "invalid_id"),
    ({"queue": Q, "id": 12}, "id", "invalid_type"),
    ({"queue": Q, "all": "yes"}, "all", "invalid_type"),
    ({"queue": Q, "id": "0123456789ab", "all": True}, "all", "id_and_all"),
    ({"queue": Q, "all": True, "force": True}, "force", "unknown_field"),
])
async def test_bad_replay_bodies(env: Env, body: dict[str, Any], param: str,
                                 code: str) -> None:
    await env.redis.rpush(keys.dead(Q), b"{}")
    status, problem = await call(env.client, "POST", "/v1/dead_letters/replay", json=body)
    assert (status, problem["param"], problem["code"]) == (422, param, code)
    assert await env.redis.llen(keys.dead(Q)) == 1


async def test_a_replay_without_a_json_object_is_400(env: Env) -> None:
    for data in (b"", b"[1]", b"{"):
        status, problem = await call(env.client, "POST", "/v1/dead_letters/replay", data=data,
                                     headers={"Content-Type": "application/json"})
        assert status == 400 and problem["code"] in ("invalid_json", "invalid_body")


# --- payment events and endpoint health -------------------------------------------------------


async def test_the_events_of_a_payment_and_its_refunds(env: Env) -> None:
    paid = Payment(id="pay_1", method="upi", amount=1000, currency="INR",
                   status=PaymentStatus.SUCCEEDED)
    other = Payment(id="pay_2", method="upi", amount=5, currency="INR",
                    status=PaymentStatus.FAILED)
    await env.store.create_payments([paid, other])
    refund = Refund(id="re_1", payment_id="pay_1", amount=100, currency="INR")
    events = [Event(id="evt_a", type="payment.success", timestamp=paid.updated_at,
                    data=paid.to_dict()),
              Event(id="evt_b", type="payment.failed", timestamp=other.updated_at,
                    data=other.to_dict()),
              Event(id="evt_c", type="refund.success", timestamp=refund.updated_at,
                    data=refund.to_dict())]
    await env.store.add_events(events)
    status, body = await call(env.client, "GET", "/v1/payments/pay_1/events")
    assert status == 200 and body["has_more"] is False
    assert [(e["object"], e["id"]) for e in body["data"]] == [("event", "evt_a"),
                                                              ("event", "evt_c")]
    assert body["data"][0]["data"]["id"] == "pay_1"
    status, body = await call(env.client, "GET", "/v1/payments/pay_nope/events")
    assert (status, body["code"]) == (404, "payment_not_found")


async def test_the_health_of_an_endpoint(env: Env) -> None:
    await env.store.put_endpoint(WebhookEndpoint(id="ep_1", url="https://example.com/h",
                                                 failing_since="2026-01-01T00:00:00.000Z"))
    outcomes = ["dead", "succeeded", "retrying", "dead", "skipped"]
    at = [iso(datetime.now(UTC) - timedelta(minutes=10 - n)) for n in range(len(outcomes))]
    old = iso(datetime.now(UTC) - timedelta(hours=25))  # out of the window
    await env.store.add_events([Event(id=f"evt_{n}", type="payment.success", timestamp=old,
                                      data={"id": f"pay_{n}"}) for n in range(6)])
    await env.store.add_attempts([DeliveryAttempt(
        id=f"att_{n}", event_id=f"evt_{n}", endpoint_id="ep_1", attempt=1, outcome=outcome,
        status=None if outcome == "skipped" else 500, at=at[n])
        for n, outcome in enumerate(outcomes)])
    await env.store.add_attempts([DeliveryAttempt(id="att_old", event_id="evt_5",
                                                  endpoint_id="ep_1", attempt=1,
                                                  outcome="succeeded", at=old)])
    status, body = await call(env.client, "GET", "/v1/webhook_endpoints/ep_1/health")
    assert status == 200
    assert body == {"object": "webhook_endpoint_health", "endpoint_id": "ep_1",
                    "window_hours": 24, "attempts": 5, "failures": 3,
                    "last_success_at": at[1], "last_failure_at": at[3], "failure_streak": 2,
                    "failing_since": "2026-01-01T00:00:00.000Z", "disabled": False,
                    "disabled_reason": None}
    status, body = await call(env.client, "GET", "/v1/webhook_endpoints/ep_nope/health")
    assert (status, body["code"]) == (404, "webhook_endpoint_not_found")
