"""/v1/webhook_endpoints and /v1/events through aiohttp's test client."""

from __future__ import annotations

import base64
import socket
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis.exceptions
from aiohttp.test_utils import TestClient
from structlog.testing import capture_logs

from conftest import ServeApp
from payflow.jobs import WebhookJob, parse_job
from payflow.models import (
    DeliveryAttempt,
    Event,
    Payment,
    PaymentStatus,
    WebhookEndpoint,
    parse_iso,
)
from payflow.store.memory import MemoryStore
from payflow.web.app import create_app
from payflow.web.context import WebContext
from payflow.webhooks.admin import RECOVER_DEFAULT_HOURS
from payflow.webhooks.ssrf import AddressPolicy

PROBLEM = "application/problem+json"


class Env:
    def __init__(self) -> None:
        self.store = MemoryStore()
        self.hooks: list[bytes] = []
        self.fail = False

    async def enqueue_webhook(self, raw: bytes) -> None:
        if self.fail:
            raise redis.exceptions.ConnectionError("down")
        self.hooks.append(raw)

    def jobs(self) -> list[WebhookJob]:
        jobs = [parse_job(raw) for raw in self.hooks]
        assert all(isinstance(j, WebhookJob) for j in jobs)
        return jobs  # type: ignore[return-value]


@pytest.fixture
async def env(serve_app: ServeApp) -> tuple[Env, TestClient[Any, Any]]:
    e = Env()

    async def enqueue(raw: bytes) -> None:
        return None

    async def ping() -> bool:
        return True

    ctx = WebContext(store=e.store, enqueue_payment=enqueue, ping=ping,
                     enqueue_webhook=e.enqueue_webhook, rotation_grace_hours=24)
    return e, await serve_app(create_app(ctx))


async def test_create_returns_the_secret_once(
        env: tuple[Env, TestClient[Any, Any]]) -> None:
    _, client = env
    resp = await client.post("/v1/webhook_endpoints", json={
        "url": "https://merchant.example/hooks", "enabled_events": ["payment.success"],
        "description": "shop"})
    assert resp.status == 201
    created = await resp.json()
    assert created["id"].startswith("ep_") and created["object"] == "webhook_endpoint"
    assert resp.headers["Location"] == f"/v1/webhook_endpoints/{created['id']}"
    secret = created["secret"]
    assert secret.startswith("whsec_") and 24 <= len(base64.b64decode(secret[6:])) <= 64
    assert created["enabled_events"] == ["payment.success"] and created["signed"] is True
    again = await (await client.get(f"/v1/webhook_endpoints/{created['id']}")).json()
    assert "secret" not in again and again["url"] == "https://merchant.example/hooks"
    listing = await (await client.get("/v1/webhook_endpoints")).json()
    assert [ep["id"] for ep in listing["data"]] == [created["id"]]
    assert "secret" not in listing["data"][0]


@pytest.mark.parametrize(("body", "param", "code"), [
    ({}, "url", "invalid_url"),
    ({"url": "ftp://x.example/"}, "url", "invalid_url"),
    ({"url": "https:///nohost"}, "url", "invalid_url"),
    ({"url": "https://x.example", "enabled_events": ["payment.exploded"]}, "enabled_events",
     "invalid_events"),
    ({"url": "https://x.example", "enabled_events": []}, "enabled_events", "invalid_events"),
    ({"url": "https://x.example", "disabled": "yes"}, "disabled", "invalid_type"),
    ({"url": "https://x.example", "secret": "mine"}, "secret", "unknown_field"),
])
async def test_create_validation(env: tuple[Env, TestClient[Any, Any]], body: dict[str, Any],
                                 param: str, code: str) -> None:
    _, client = env
    resp = await client.post("/v1/webhook_endpoints", json=body)
    assert resp.status == 422 and resp.content_type == PROBLEM
    problem = await resp.json()
    assert (problem["param"], problem["code"]) == (param, code)


async def test_patch_delete_and_not_found(env: tuple[Env, TestClient[Any, Any]]) -> None:
    e, client = env
    await e.store.put_endpoint(WebhookEndpoint(id="ep_1", url="https://a.example", disabled=True,
                                               disabled_reason="the endpoint answered 410 Gone",
                                               failing_since="2026-01-01T00:00:00.000Z"))
    resp = await client.patch("/v1/webhook_endpoints/ep_1",
                              json={"disabled": False, "enabled_events": ["*"]})
    assert resp.status == 200
    body = await resp.json()
    assert body["disabled"] is False and body["disabled_reason"] is None
    assert body["failing_since"] is None
    resp = await client.patch("/v1/webhook_endpoints/ep_1", json={"disabled": True})
    assert (await resp.json())["disabled_reason"] == "disabled through the API"
    resp = await client.delete("/v1/webhook_endpoints/ep_1")
    assert resp.status == 200 and (await resp.json())["deleted"] is True
    for method in ("get", "patch", "delete"):
        resp = await client.request(method, "/v1/webhook_endpoints/ep_1", json={})
        assert resp.status == 404 and (await resp.json())["code"] == "webhook_endpoint_not_found"


async def test_rotation_keeps_the_old_secret_for_the_grace_period(
        env: tuple[Env, TestClient[Any, Any]]) -> None:
    e, client = env
    created = await (await client.post("/v1/webhook_endpoints",
                                       json={"url": "https://a.example"})).json()
    resp = await client.post(f"/v1/webhook_endpoints/{created['id']}/rotate_secret")
    assert resp.status == 200
    rotated = await resp.json()
    assert rotated["secret"] != created["secret"]
    assert len(rotated["previous_secrets_expire_at"]) == 1
    endpoint = (await e.store.get_endpoints([created["id"]]))[created["id"]]
    assert endpoint.active_secrets() == [rotated["secret"], created["secret"]]


async def test_events_list_get_attempts_retry(env: tuple[Env, TestClient[Any, Any]]) -> None:
    e, client = env
    events = [Event.for_payment(Payment(id=f"pay_{i}", method="upi",
                                        status=PaymentStatus.SUCCEEDED)) for i in range(3)]
    await e.store.add_events(events)
    page = await (await client.get("/v1/events?limit=2")).json()
    assert [ev["id"] for ev in page["data"]] == [events[2].id, events[1].id]
    assert page["has_more"] is True and page["data"][0]["object"] == "event"
    rest = await (await client.get(f"/v1/events?limit=2&starting_after={events[1].id}")).json()
    assert [ev["id"] for ev in rest["data"]] == [events[0].id] and rest["has_more"] is False
    assert (await client.get("/v1/events?limit=0")).status == 400
    got = await (await client.get(f"/v1/events/{events[0].id}")).json()
    assert got["type"] == "payment.success" and got["data"]["id"] == "pay_0"
    await e.store.add_attempts([DeliveryAttempt(id="att_1", event_id=events[0].id,
                                                endpoint_id="ep_1", attempt=1, outcome="dead",
                                                status=500, error="HTTP 500")])
    attempts = await (await client.get(f"/v1/events/{events[0].id}/attempts")).json()
    assert [(a["id"], a["outcome"], a["status"]) for a in attempts["data"]] == [
        ("att_1", "dead", 500)]
    resp = await client.post(f"/v1/events/{events[0].id}/retry")
    assert resp.status == 202
    (job,) = e.jobs()
    assert job.event_id == events[0].id  # the job names the event; the store has it
    assert job.attempt == 0 and job.endpoint is None
    assert (await client.get("/v1/events/evt_nope")).status == 404
    resp = await client.post(f"/v1/events/{events[0].id}/retry", json={"endpoint_id": "ep_x"})
    assert resp.status == 404
    e.fail = True
    resp = await client.post(f"/v1/events/{events[0].id}/retry")
    assert resp.status == 503 and resp.headers["Retry-After"] == "1"


async def test_recover_requeues_what_the_endpoint_missed(
        env: tuple[Env, TestClient[Any, Any]]) -> None:
    e, client = env
    await e.store.put_endpoint(WebhookEndpoint(id="ep_1", url="https://a.example",
                                               enabled_events=("payment.success",),
                                               disabled=True, disabled_reason="410"))
    evs = [Event.for_payment(Payment(id=f"pay_{i}", method="upi",
                                     status=PaymentStatus.SUCCEEDED)) for i in range(5)]
    # an event of a type the endpoint does not subscribe to is never its to recover
    other = Event.for_payment(Payment(id="pay_f", method="upi", status=PaymentStatus.FAILED))
    await e.store.add_events([*evs, other])
    # evs[4]: never tried there (recorded when no endpoint subscribed)
    for event, outcomes in zip(evs, [["dead"], ["skipped"], ["retrying", "succeeded"],
                                     ["retrying"], []], strict=True):
        for n, outcome in enumerate(outcomes, 1):
            await e.store.add_attempts([DeliveryAttempt(
                id=f"att_{event.id}_{n}", event_id=event.id, endpoint_id="ep_1", attempt=n,
                outcome=outcome)])
    resp = await client.post("/v1/webhook_endpoints/ep_1/recover")
    assert resp.status == 409 and (await resp.json())["code"] == "endpoint_disabled"
    await client.patch("/v1/webhook_endpoints/ep_1", json={"disabled": False})
    resp = await client.post("/v1/webhook_endpoints/ep_1/recover?since=2000-01-01T00:00:00Z")
    assert resp.status == 202
    body = await resp.json()
    assert body["requeued"] == 3
    assert body["event_ids"] == [evs[0].id, evs[1].id, evs[4].id]  # oldest first
    assert [(j.event_id, j.endpoint, j.attempt) for j in e.jobs()] == [
        (evs[0].id, "ep_1", 0), (evs[1].id, "ep_1", 0), (evs[4].id, "ep_1", 0)]
    resp = await client.post("/v1/webhook_endpoints/ep_1/recover?since=yesterday")
    assert resp.status == 422 and (await resp.json())["param"] == "since"
    future = await client.post("/v1/webhook_endpoints/ep_1/recover?since=2999-01-01T00:00:00Z")
    assert (await future.json())["requeued"] == 0


async def test_recover_without_since_looks_back_the_default_hours(
        env: tuple[Env, TestClient[Any, Any]]) -> None:
    e, client = env
    await e.store.put_endpoint(WebhookEndpoint(id="ep_1", url="https://a.example"))
    window = timedelta(hours=RECOVER_DEFAULT_HOURS)
    before = datetime.now(UTC)
    resp = await client.post("/v1/webhook_endpoints/ep_1/recover")
    after = datetime.now(UTC)
    assert resp.status == 202
    since = parse_iso((await resp.json())["since"])  # to the millisecond
    assert before - window - timedelta(milliseconds=1) <= since <= after - window


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


async def test_disabling_through_the_api_counts_in_metrics(
        env: tuple[Env, TestClient[Any, Any]]) -> None:
    e, client = env
    await e.store.put_endpoint(WebhookEndpoint(id="ep_m", url="https://a.example"))
    name = 'payflow_webhook_endpoints_disabled_total{cause="api"}'
    before = metric(await (await client.get("/metrics")).text(), name)
    await client.patch("/v1/webhook_endpoints/ep_m", json={"disabled": True})
    resp = await client.get("/metrics")
    assert resp.status == 200 and resp.content_type == "text/plain"
    assert metric(await resp.text(), name) == before + 1


# --- URLs that can only reach addresses delivery refuses (the SSRF policy) -------------------

LOOKUPS: dict[str, Sequence[str]] = {"loop.test": ["127.0.0.1", "::1"],
                                     "public.test": ["93.184.216.34"]}
Guarded = Callable[..., Awaitable[tuple[Env, TestClient[Any, Any], list[str]]]]


@pytest.fixture
def guarded(serve_app: ServeApp) -> Guarded:
    """An API whose WebContext has an address policy allowing ``allow``; host names resolve
    from LOOKUPS (anything else does not resolve). Returns the names looked up, too."""

    async def make(*allow: str) -> tuple[Env, TestClient[Any, Any], list[str]]:
        e = Env()
        looked_up: list[str] = []

        async def resolve(host: str) -> Sequence[str]:
            looked_up.append(host)
            if host not in LOOKUPS:
                raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
            return LOOKUPS[host]

        async def ping() -> bool:
            return True

        ctx = WebContext(store=e.store, enqueue_payment=e.enqueue_webhook, ping=ping,
                         enqueue_webhook=e.enqueue_webhook, address_policy=AddressPolicy(allow))
        ctx.webhooks.resolve = resolve
        return e, await serve_app(create_app(ctx)), looked_up

    return make


REFUSED_URLS = [
    ("http://127.0.0.1:8080/hooks", "127.0.0.1 is a loopback address; add it to"),
    ("http://127.0.0.1.:8080/hooks", "127.0.0.1 is a loopback address; add it to"),
    ("http://[::ffff:127.0.0.1]/hooks", "::ffff:127.0.0.1 embeds 127.0.0.1, a loopback "
                                        "address; add 127.0.0.1 to"),
    ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 is a cloud metadata address"),
    ("https://10.0.0.1/hooks", "10.0.0.1 is a private address; add it to"),
    ("https://loop.test/hooks", "loop.test resolves to 127.0.0.1, a loopback address; "
                                "add 127.0.0.1 to"),
]


@pytest.mark.parametrize(("url", "detail"), REFUSED_URLS)
async def test_create_refuses_a_url_that_can_only_reach_refused_addresses(
        guarded: Guarded, url: str, detail: str) -> None:
    e, client, _ = await guarded()
    resp = await client.post("/v1/webhook_endpoints", json={"url": url})
    assert resp.status == 422 and resp.content_type == PROBLEM
    problem = await resp.json()
    assert (problem["param"], problem["code"]) == ("url", "url_refused")
    assert detail in problem["detail"] and "[webhooks] allow_networks" in problem["detail"]
    assert await e.store.list_endpoints() == []  # nothing was created


@pytest.mark.parametrize(("url", "allow"), [
    ("http://127.0.0.1:8080/hooks", "127.0.0.0/8"),
    ("http://127.0.0.1.:8080/hooks", "127.0.0.1/32"),
    ("http://[::ffff:127.0.0.1]/hooks", "127.0.0.0/8"),
    ("http://169.254.169.254/latest/meta-data/", "169.254.169.254"),
    ("https://10.0.0.1/hooks", "10.0.0.0/8"),
    ("https://loop.test/hooks", "127.0.0.0/8"),  # one allowed address is enough
])
async def test_create_allows_a_refused_class_listed_in_allow_networks(
        guarded: Guarded, url: str, allow: str) -> None:
    e, client, _ = await guarded(allow)
    resp = await client.post("/v1/webhook_endpoints", json={"url": url})
    assert resp.status == 201, await resp.text()
    assert [ep.url for ep in await e.store.list_endpoints()] == [url]


async def test_create_allows_public_and_unresolvable_names(guarded: Guarded) -> None:
    e, client, looked_up = await guarded()
    with capture_logs() as logs:
        for url in ("https://public.test/hooks", "https://not-yet.test/hooks"):
            resp = await client.post("/v1/webhook_endpoints", json={"url": url})
            assert resp.status == 201, await resp.text()
    assert looked_up == ["public.test", "not-yet.test"]
    assert len(await e.store.list_endpoints()) == 2
    (unresolved,) = [entry for entry in logs if entry["event"] == "webhook.endpoint_unresolved"]
    assert unresolved["log_level"] == "info" and unresolved["host"] == "not-yet.test"


async def test_patch_refuses_the_same_urls_and_leaves_the_endpoint_alone(
        guarded: Guarded) -> None:
    e, client, _ = await guarded()
    original = WebhookEndpoint(id="ep_p", url="https://public.test/hooks", description="shop")
    await e.store.put_endpoint(original)
    for url, detail in REFUSED_URLS:
        resp = await client.patch("/v1/webhook_endpoints/ep_p",
                                  json={"url": url, "description": "changed"})
        assert resp.status == 422, url
        problem = await resp.json()
        assert (problem["param"], problem["code"]) == ("url", "url_refused")
        assert detail in problem["detail"]
        assert (await e.store.get_endpoints(["ep_p"]))["ep_p"] == original
    # other fields alone are not checked; an allowed URL goes through
    resp = await client.patch("/v1/webhook_endpoints/ep_p", json={"description": "changed"})
    assert resp.status == 200
    resp = await client.patch("/v1/webhook_endpoints/ep_p", json={"url": "https://8.8.8.8/h"})
    assert resp.status == 200 and (await resp.json())["url"] == "https://8.8.8.8/h"
    # an unknown endpoint is still a 404 first
    resp = await client.patch("/v1/webhook_endpoints/ep_nope", json={"url": REFUSED_URLS[0][0]})
    assert resp.status == 404


async def test_without_a_policy_loopback_urls_are_accepted(
        env: tuple[Env, TestClient[Any, Any]]) -> None:
    _, client = env
    resp = await client.post("/v1/webhook_endpoints", json={"url": "http://127.0.0.1:9/h"})
    assert resp.status == 201
