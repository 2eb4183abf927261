"""The webhook handler: fan-out, per-endpoint retries through the delayed queue, dead letters."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from structlog.testing import capture_logs

from payflow.config import EndpointConfig
from payflow.errors import InvalidJob
from payflow.jobs import WebhookJob, parse_job
from payflow.models import Event, Payment, PaymentStatus, event_id_for
from payflow.store.memory import MemoryStore
from payflow.webhooks.delivery import HttpDelivery, LogSink, endpoint_id
from payflow.webhooks.sender import RetryPolicy, WebhookHandler
from payflow.webhooks.signing import sign

POLICY = RetryPolicy(max_attempts=3, base_seconds=1.0, max_seconds=10.0)


class Receiver:
    def __init__(self) -> None:
        self.statuses: dict[str, list[int]] = {}
        self.hits: list[tuple[str, dict[str, str], bytes]] = []

    async def handle(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        self.hits.append((name, dict(request.headers), await request.read()))
        codes = self.statuses.get(name) or [200]
        status = codes.pop(0) if len(codes) > 1 else codes[0]
        if status == 301:
            raise web.HTTPMovedPermanently(location="/elsewhere")
        return web.Response(status=status)


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, str]]:
    rec = Receiver()
    app = web.Application()
    app.router.add_post("/{name}", rec.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield rec, f"http://127.0.0.1:{server.port}"
    finally:
        await server.close()


@pytest.fixture
async def make_handler() -> AsyncIterator[Callable[..., WebhookHandler]]:
    session = aiohttp.ClientSession()

    def make(*endpoints: EndpointConfig, failure_rate: float = 0.0,
             store: MemoryStore | None = None) -> WebhookHandler:
        return WebhookHandler(store=store or MemoryStore(), endpoints=endpoints,
                              http=HttpDelivery(session, timeout=2.0),
                              sink=LogSink(failure_rate=failure_rate), policy=POLICY,
                              max_job_bytes=65536)

    yield make
    await session.close()


def event_job(attempt: int = 0, endpoint: str | None = None) -> bytes:
    payment = Payment(id="pay_1", method="upi", status=PaymentStatus.SUCCEEDED)
    event = Event.for_payment(payment)
    return WebhookJob(event_type=event.type, payment_id="pay_1", event=event.to_dict(),
                      endpoint=endpoint, attempt=attempt).encode()


async def test_log_sink_prints_the_seed_lines(make_handler: Callable[..., WebhookHandler]) -> None:
    with capture_logs() as logs:
        outcome = await make_handler()(b"webhook:payment.success:pay_test_1001")
    messages = [e["event"] for e in logs]
    assert messages == ["Delivering webhook: webhook:payment.success:pay_test_1001",
                        "Webhook delivered: webhook:payment.success:pay_test_1001"]
    assert not outcome.delay and outcome.dead is None


async def test_simulated_failure_is_requeued_with_a_delay(
        make_handler: Callable[..., WebhookHandler]) -> None:
    outcome = await make_handler(failure_rate=1.0)(b"webhook:payment.success:pay_1")
    ((raw, delay),) = outcome.delay
    assert 0 <= delay <= POLICY.base_seconds
    job = parse_job(raw)
    assert isinstance(job, WebhookJob) and job.attempt == 1 and job.endpoint == "log"
    assert job.event is not None
    assert job.event["id"] == event_id_for("pay_1", "payment.success")


async def test_last_attempt_dead_letters(make_handler: Callable[..., WebhookHandler]) -> None:
    outcome = await make_handler(failure_rate=1.0)(event_job(attempt=2, endpoint="log"))
    assert outcome.dead is not None and "gave up after 3 attempts" in outcome.dead
    assert not outcome.delay


async def test_fan_out_retries_only_the_failing_endpoint(
        make_handler: Callable[..., WebhookHandler], receiver: tuple[Receiver, str]) -> None:
    rec, base = receiver
    rec.statuses = {"bad": [500], "gone": [301]}
    good = EndpointConfig(url=f"{base}/good", secret="whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    bad = EndpointConfig(url=f"{base}/bad")
    moved = EndpointConfig(url=f"{base}/gone")
    other = EndpointConfig(url=f"{base}/other", enabled_events=("payment.failed",))
    outcome = await make_handler(good, bad, moved, other)(event_job())
    assert sorted(name for name, _, _ in rec.hits) == ["bad", "gone", "good"]  # not 'other'
    retried = {parse_job(raw).endpoint for raw, _ in outcome.delay}  # type: ignore[union-attr]
    assert retried == {endpoint_id(bad), endpoint_id(moved)}  # a redirect is a failure
    _, headers, body = next(h for h in rec.hits if h[0] == "good")
    assert headers["webhook-id"] == event_id_for("pay_1", "payment.success")
    expected = sign(good.secret or "", headers["webhook-id"],
                    int(headers["webhook-timestamp"]), body)
    assert headers["webhook-signature"] == expected
    assert json.loads(body)["type"] == "payment.success"


async def test_targeted_retry_goes_to_that_endpoint_only(
        make_handler: Callable[..., WebhookHandler], receiver: tuple[Receiver, str]) -> None:
    rec, base = receiver
    a, b = EndpointConfig(url=f"{base}/a"), EndpointConfig(url=f"{base}/b")
    outcome = await make_handler(a, b)(event_job(attempt=1, endpoint=endpoint_id(b)))
    assert [name for name, _, _ in rec.hits] == ["b"]
    assert not outcome.delay and outcome.dead is None


async def test_unknown_endpoint_is_an_invalid_job(
        make_handler: Callable[..., WebhookHandler], receiver: tuple[Receiver, str]) -> None:
    _, base = receiver
    with pytest.raises(InvalidJob, match="no longer configured"):
        await make_handler(EndpointConfig(url=f"{base}/a"))(event_job(endpoint="ep_gone"))


async def test_unreachable_endpoint_is_a_failure_not_a_crash(
        make_handler: Callable[..., WebhookHandler]) -> None:
    outcome = await make_handler(EndpointConfig(url="http://127.0.0.1:9/closed"))(event_job())
    assert len(outcome.delay) == 1


async def test_legacy_job_derives_the_event_from_the_store(
        make_handler: Callable[..., WebhookHandler], receiver: tuple[Receiver, str]) -> None:
    rec, base = receiver
    store = MemoryStore()
    await store.create_payment(Payment(id="pay_7", method="card", amount=100, currency="USD",
                                       status=PaymentStatus.FAILED))
    await make_handler(EndpointConfig(url=f"{base}/a"), store=store)(
        b"webhook:payment.failed:pay_7")
    body: dict[str, Any] = json.loads(rec.hits[0][2])
    assert body["id"] == event_id_for("pay_7", "payment.failed")
    assert body["data"]["amount"] == 100


async def test_payment_job_on_the_webhook_queue_is_forwarded(
        make_handler: Callable[..., WebhookHandler]) -> None:
    outcome = await make_handler()(b"process_payment:pay_1:upi")
    assert list(outcome.push) == [b"process_payment:pay_1:upi"]
