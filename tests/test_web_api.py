"""Listing, cancel and refunds through aiohttp's test client, and a refund through the
payment consumer's rules."""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis.exceptions
from aiohttp.test_utils import TestClient

from conftest import ServeApp
from payflow.jobs import PaymentJob, RefundJob, WebhookJob, parse_job
from payflow.models import Payment, PaymentStatus, RefundStatus, event_id_for
from payflow.payments.processor import SimulatedProcessor
from payflow.payments.service import PaymentService
from payflow.store.base import Transition
from payflow.store.front import StoreFront
from payflow.store.memory import MemoryStore
from payflow.web.app import create_app
from payflow.web.context import WebContext

REFUND_FAILS = "4000000000005126"
FAR_FUTURE = "9999-12-31T00:00:00.000Z"


class Env:
    def __init__(self) -> None:
        self.store = MemoryStore()
        self.raws: list[bytes] = []
        self.webhook_raws: list[bytes] = []
        self.fail = False
        self.webhooks_fail = False

    async def enqueue(self, raw: bytes) -> None:
        if self.fail:
            raise redis.exceptions.ConnectionError("down")
        self.raws.append(raw)

    async def enqueue_webhook(self, raw: bytes) -> None:
        if self.webhooks_fail:
            raise redis.exceptions.ConnectionError("down")
        self.webhook_raws.append(raw)

    async def run_jobs(self) -> list[str]:
        """Run every queued job through the consumer's rules; returns the types of the events
        to queue (each recorded in the store with its state change)."""
        service = PaymentService(StoreFront(self.store), SimulatedProcessor())
        types = []
        while self.raws:
            job = parse_job(self.raws.pop(0))
            if isinstance(job, RefundJob):
                event = await service.refund(job)
            else:
                assert isinstance(job, PaymentJob)
                event = await service.process(job)
            if event is not None:
                assert event.id in await self.store.get_events([event.id])
                types.append(event.type)
        return types


@pytest.fixture
async def env(serve_app: ServeApp) -> tuple[Env, TestClient[Any, Any]]:
    e = Env()

    async def ping() -> bool:
        return True

    ctx = WebContext(store=e.store, enqueue_payment=e.enqueue, ping=ping,
                     enqueue_webhook=e.enqueue_webhook)
    return e, await serve_app(create_app(ctx))


async def pay(client: TestClient[Any, Any], amount: int = 1000, **extra: Any) -> str:
    resp = await client.post("/v1/payments", json={"amount": amount, "currency": "INR",
                                                   "method": "upi", **extra})
    assert resp.status == 202
    return str((await resp.json())["id"])


async def test_list_newest_first_with_cursor_and_filters(
        env: tuple[Env, TestClient[Any, Any]]) -> None:
    e, client = env
    ids = [await pay(client) for _ in range(5)]
    await e.store.transition([Transition(payment_id=ids[1], expected=(PaymentStatus.PENDING,),
                                         new=PaymentStatus.CANCELED)])
    page = await (await client.get("/v1/payments?limit=2")).json()
    assert page["object"] == "list" and page["has_more"] is True
    assert [p["id"] for p in page["data"]] == [ids[4], ids[3]]
    nxt = await (await client.get(f"/v1/payments?limit=2&starting_after={ids[3]}")).json()
    assert [p["id"] for p in nxt["data"]] == [ids[2], ids[1]]
    last = await (await client.get(f"/v1/payments?limit=2&starting_after={ids[1]}")).json()
    assert [p["id"] for p in last["data"]] == [ids[0]] and last["has_more"] is False
    canceled = await (await client.get("/v1/payments?status=canceled")).json()
    assert [p["id"] for p in canceled["data"]] == [ids[1]]
    everything = await (await client.get("/v1/payments?created[gte]=0&limit=100")).json()
    assert len(everything["data"]) == 5
    future = await (await client.get("/v1/payments?created[gte]=2999-01-01T00:00:00Z")).json()
    assert future["data"] == []
    for query, param in [("limit=0", "limit"), ("limit=101", "limit"), ("status=lost", "status"),
                         ("created[gte]=yesterday", "created[gte]")]:
        resp = await client.get(f"/v1/payments?{query}")
        assert resp.status == 400 and (await resp.json())["param"] == param


async def test_cancel_pending_only(env: tuple[Env, TestClient[Any, Any]]) -> None:
    e, client = env
    payment_id = await pay(client)
    resp = await client.post(f"/v1/payments/{payment_id}/cancel")
    assert resp.status == 200 and (await resp.json())["status"] == "canceled"
    again = await client.post(f"/v1/payments/{payment_id}/cancel")
    assert again.status == 409
    problem = await again.json()
    assert problem["code"] == "payment_not_cancelable" and problem["current_status"] == "canceled"
    assert (await client.post("/v1/payments/pay_nope/cancel")).status == 404
    # payment.canceled is recorded with the cancel and its webhook job pushed at once...
    event_id = event_id_for(payment_id, "payment.canceled")
    (raw,) = e.webhook_raws
    assert parse_job(raw) == WebhookJob(event_id=event_id, event_type="payment.canceled",
                                        subject_id=payment_id, jid=json.loads(raw)["jid"])
    event = (await e.store.get_events([event_id]))[event_id]
    assert event.type == "payment.canceled" and event.data["status"] == "canceled"
    assert await e.store.unqueued_events(FAR_FUTURE, 10) == []  # marked enqueued
    # ...and the payment's queued job is acked without processing, queuing that same event
    assert await e.run_jobs() == ["payment.canceled"]
    assert [ev.id for ev in await e.store.list_events(limit=10)] == [event_id]
    stored = (await e.store.get_payments([payment_id]))[payment_id]
    assert stored.status is PaymentStatus.CANCELED


async def test_cancel_with_the_webhook_queue_down_leaves_the_event_to_the_outbox(
        env: tuple[Env, TestClient[Any, Any]]) -> None:
    e, client = env
    payment_id = await pay(client)
    e.webhooks_fail = True
    resp = await client.post(f"/v1/payments/{payment_id}/cancel")
    assert resp.status == 200 and (await resp.json())["status"] == "canceled"
    assert e.webhook_raws == []
    # recorded, not marked enqueued: the outbox sweeper queues it
    (unqueued,) = await e.store.unqueued_events(FAR_FUTURE, 10)
    assert unqueued.id == event_id_for(payment_id, "payment.canceled")


async def test_refunds_partial_then_rest(env: tuple[Env, TestClient[Any, Any]]) -> None:
    e, client = env
    payment_id = await pay(client, 1000)
    early = await client.post(f"/v1/payments/{payment_id}/refunds", json={"amount": 10})
    assert early.status == 409 and (await early.json())["current_status"] == "pending"
    assert await e.run_jobs() == ["payment.success"]
    resp = await client.post(f"/v1/payments/{payment_id}/refunds", json={"amount": 300})
    assert resp.status == 202
    first = await resp.json()
    assert first["status"] == "pending" and first["amount"] == 300
    assert resp.headers["Location"] == f"/v1/refunds/{first['id']}"
    too_much = await client.post(f"/v1/payments/{payment_id}/refunds", json={"amount": 701})
    assert too_much.status == 422 and (await too_much.json())["code"] == "amount_too_large"
    rest = await (await client.post(f"/v1/payments/{payment_id}/refunds")).json()
    assert rest["amount"] == 700  # the default: what is left, pending refunds counted
    assert await e.run_jobs() == ["refund.success", "refund.success"]
    payment = await (await client.get(f"/v1/payments/{payment_id}")).json()
    assert payment["status"] == "refunded" and payment["amount_refunded"] == 1000
    got = await (await client.get(f"/v1/refunds/{first['id']}")).json()
    assert got["status"] == "succeeded"
    none_left = await client.post(f"/v1/payments/{payment_id}/refunds")
    assert none_left.status == 409
    assert (await client.get("/v1/refunds/re_nope")).status == 404


async def test_nothing_left_while_refunds_are_pending_is_refused(
        env: tuple[Env, TestClient[Any, Any]]) -> None:
    e, client = env
    payment_id = await pay(client, 1000)
    await e.run_jobs()
    resp = await client.post(f"/v1/payments/{payment_id}/refunds")  # all of it, still pending
    assert resp.status == 202 and (await resp.json())["amount"] == 1000
    nothing = await client.post(f"/v1/payments/{payment_id}/refunds")
    assert nothing.status == 422 and (await nothing.json())["code"] == "invalid_amount"
    listed = await (await client.get(f"/v1/payments/{payment_id}/refunds")).json()
    assert [r["amount"] for r in listed["data"]] == [1000]  # no refund of 0


async def test_partial_refund_and_failed_refund(env: tuple[Env, TestClient[Any, Any]]) -> None:
    e, client = env
    payment_id = await pay(client, 500, method="card",
                           card={"number": REFUND_FAILS, "exp_month": 12, "exp_year": 2030})
    await e.run_jobs()
    refund = await (await client.post(f"/v1/payments/{payment_id}/refunds",
                                      json={"amount": 100})).json()
    assert await e.run_jobs() == ["refund.failed"]
    failed = (await e.store.get_refunds([refund["id"]]))[refund["id"]]
    assert failed.status is RefundStatus.FAILED
    payment = (await e.store.get_payments([payment_id]))[payment_id]
    assert payment.status is PaymentStatus.SUCCEEDED
    assert await e.store.refundable(payment_id) == 500  # a failed refund frees its amount
    ok_id = await pay(client, 900)
    await e.run_jobs()
    await client.post(f"/v1/payments/{ok_id}/refunds", json={"amount": 100})
    await e.run_jobs()
    partial = (await e.store.get_payments([ok_id]))[ok_id]
    assert partial.status is PaymentStatus.PARTIALLY_REFUNDED
    assert partial.amount_refunded == 100


async def test_refund_validation_and_queue_down(env: tuple[Env, TestClient[Any, Any]]) -> None:
    e, client = env
    payment_id = await pay(client, 500)
    await e.run_jobs()
    for body, code in [({"amount": 0}, "invalid_amount"), ({"amount": "5"}, "invalid_amount"),
                       ({"amount": True}, "invalid_amount"), ({"reason": "x"}, "unknown_field")]:
        resp = await client.post(f"/v1/payments/{payment_id}/refunds", json=body)
        assert resp.status == 422 and (await resp.json())["code"] == code
    e.fail = True
    resp = await client.post(f"/v1/payments/{payment_id}/refunds", json={"amount": 5})
    assert resp.status == 503
    assert await e.store.refundable(payment_id) == 500  # nothing kept reserved
    legacy = Payment(id="pay_legacy", method="upi", status=PaymentStatus.SUCCEEDED)
    await e.store.create_payments([legacy])
    e.fail = False
    resp = await client.post("/v1/payments/pay_legacy/refunds")
    assert resp.status == 409 and "no amount" in (await resp.json())["detail"]


async def test_the_job_names_the_payment_whatever_the_request_size(
        env: tuple[Env, TestClient[Any, Any]]) -> None:
    e, client = env
    metadata = {f"note{i}": "n" * 500 for i in range(20)}  # 10 KB: once a 413 job_too_large
    big = {"amount": 100, "currency": "INR", "method": "upi", "metadata": metadata}
    resp = await client.post("/v1/payments", json=big)
    assert resp.status == 202
    payment_id = (await resp.json())["id"]
    (raw,) = e.raws
    assert len(raw) < 200 and b"nnnn" not in raw  # no snapshot: the store has the payment
    assert parse_job(raw) == PaymentJob(payment_id=payment_id, jid=json.loads(raw)["jid"])
    stored = (await e.store.get_payments([payment_id]))[payment_id]
    assert stored.metadata == metadata


async def test_a_payments_refunds_are_listed(env: tuple[Env, TestClient[Any, Any]]) -> None:
    e, client = env
    payment_id = await pay(client, 1000)
    assert (await (await client.get(f"/v1/payments/{payment_id}/refunds")).json()) == {
        "object": "list", "data": [], "has_more": False}
    await e.run_jobs()
    first = await (await client.post(f"/v1/payments/{payment_id}/refunds",
                                     json={"amount": 300})).json()
    second = await (await client.post(f"/v1/payments/{payment_id}/refunds")).json()
    await e.run_jobs()
    listed = await (await client.get(f"/v1/payments/{payment_id}/refunds")).json()
    assert {r["id"] for r in listed["data"]} == {first["id"], second["id"]}
    assert {(r["amount"], r["status"]) for r in listed["data"]} == {
        (300, "succeeded"), (700, "succeeded")}
    other = await pay(client, 500)
    assert (await (await client.get(f"/v1/payments/{other}/refunds")).json())["data"] == []
    missing = await client.get("/v1/payments/pay_nope/refunds")
    assert missing.status == 404 and (await missing.json())["code"] == "payment_not_found"


async def test_events_filtered_by_type(env: tuple[Env, TestClient[Any, Any]]) -> None:
    e, client = env
    paid = await pay(client, 1000)
    await pay(client, 1000, upi={"vpa": "failure@okbank"})
    await e.run_jobs()
    await client.post(f"/v1/payments/{paid}/refunds")
    await e.run_jobs()
    everything = await (await client.get("/v1/events")).json()
    assert sorted(ev["type"] for ev in everything["data"]) == [
        "payment.failed", "payment.success", "refund.success"]
    for kind in ("payment.success", "payment.failed", "refund.success"):
        page = await (await client.get(f"/v1/events?type={kind}")).json()
        assert [ev["type"] for ev in page["data"]] == [kind]
    assert (await (await client.get("/v1/events?type=refund.failed")).json())["data"] == []
    bad = await client.get("/v1/events?type=payment.exploded")
    assert bad.status == 400 and (await bad.json())["param"] == "type"


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/v1/payments?limit=1&colour=red"),
    ("GET", "/v1/payments/{payment}?colour=red"),
    ("GET", "/v1/payments/{payment}/refunds?colour=red"),
    ("GET", "/v1/events?type=payment.success&colour=red"),
    ("GET", "/v1/webhook_endpoints?colour=red"),
    ("POST", "/v1/payments/{payment}/cancel?colour=red"),
    ("GET", "/v1/payments?created%5Bgt%5D=0&colour=red"),  # created[gt]: a typo of [gte]
])
async def test_unknown_query_parameters_are_400(env: tuple[Env, TestClient[Any, Any]],
                                                method: str, path: str) -> None:
    _, client = env
    payment_id = await pay(client, 1000)
    resp = await client.request(method, path.format(payment=payment_id))
    assert resp.status == 400
    assert resp.content_type == "application/problem+json"
    problem = await resp.json()
    assert problem["code"] == "unknown_parameter"
    assert problem["param"] in ("colour", "created[gt]")
    assert repr(problem["param"]) in problem["detail"]
    assert (await (await client.get(f"/v1/payments/{payment_id}")).json())["status"] == "pending"


async def test_the_known_query_parameters_still_work(
        env: tuple[Env, TestClient[Any, Any]]) -> None:
    _, client = env
    await pay(client, 1000)
    resp = await client.get("/v1/payments", params={
        "limit": "5", "status": "pending", "created[gte]": "0", "created[lte]": "99999999999"})
    assert resp.status == 200 and len((await resp.json())["data"]) == 1
    ok = await client.get("/v1/events", params={"limit": "5", "type": "payment.success"})
    assert ok.status == 200


async def test_the_api_reference_is_served_without_a_key(serve_app: ServeApp) -> None:
    from payflow.config import ApiKeyConfig

    async def ping() -> bool:
        return True

    async def enqueue(raw: bytes) -> None:
        return None

    ctx = WebContext(store=MemoryStore(), enqueue_payment=enqueue, ping=ping,
                     api_keys=(ApiKeyConfig(name="k", secret="sk_test_docs_0123456789"),))
    client = await serve_app(create_app(ctx))
    page = await client.get("/docs")
    assert page.status == 200 and page.content_type == "text/html"
    html = await page.text()
    assert "/docs/swagger-ui-bundle.js" in html and "/docs/init.js" in html
    assert "https://" not in html  # no CDN
    init = await (await client.get("/docs/init.js")).text()
    assert 'url: "/openapi.json"' in init
    bundle = await client.get("/docs/swagger-ui-bundle.js")
    assert bundle.status == 200 and bundle.content_type == "text/javascript"
    assert "SwaggerUIBundle" in await bundle.text()
    css = await client.get("/docs/swagger-ui.css")
    assert css.status == 200 and css.content_type == "text/css"
    assert "default-src 'none'" in css.headers["Content-Security-Policy"]
    assert (await client.get("/docs/VENDORED.md")).status == 404
    assert (await client.get("/docs/LICENSE.swagger-ui")).status == 404
    assert (await client.get("/openapi.json")).status == 200
    assert (await client.get("/v1/payments")).status == 401  # the API still needs the key
