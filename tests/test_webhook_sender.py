"""The webhook handler against a real local receiver: fan-out, schedule, Retry-After, 410,
redirects, timeouts, closed connections, SSRF refusals, attempts recorded, endpoint disabling."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from structlog.testing import capture_logs

from payflow.errors import InvalidJob
from payflow.jobs import WebhookJob, parse_job
from payflow.models import (
    EndpointSecret,
    Event,
    Payment,
    PaymentStatus,
    WebhookEndpoint,
    event_id_for,
)
from payflow.store.memory import MemoryStore
from payflow.webhooks.delivery import HttpDelivery, LogSink
from payflow.webhooks.sender import RetryPolicy, WebhookHandler
from payflow.webhooks.signing import sign
from payflow.webhooks.ssrf import AddressPolicy, make_connector

SCHEDULE = (5.0, 300.0, 1800.0)
POLICY = RetryPolicy(schedule=SCHEDULE, max_attempts=4)
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


class Receiver:
    """Answers per path: a list of behaviours, the last one repeating."""

    def __init__(self) -> None:
        self.plan: dict[str, list[str]] = {}
        self.hits: list[tuple[str, dict[str, str], bytes]] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        self.hits.append((name, dict(request.headers), await request.read()))
        plan = self.plan.get(name) or ["200"]
        step = plan.pop(0) if len(plan) > 1 else plan[0]
        if step == "hang":
            await asyncio.sleep(5)
        if step == "close":
            assert request.transport is not None
            request.transport.close()
            return web.Response(status=200)
        if step.startswith("301"):
            raise web.HTTPMovedPermanently(location="/elsewhere")
        status, _, retry_after = step.partition(":")
        headers = {"Retry-After": retry_after} if retry_after else {}
        return web.Response(status=int(status), headers=headers, text="x" * 5000)


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
async def make_handler() -> AsyncIterator[Callable[..., Any]]:
    sessions: list[aiohttp.ClientSession] = []

    async def make(*endpoints: WebhookEndpoint, failure_rate: float = 0.0,
                   allow: tuple[str, ...] = ("127.0.0.0/8",), timeout: float = 2.0,
                   disable_after: timedelta = timedelta(hours=1)
                   ) -> tuple[WebhookHandler, MemoryStore]:
        store = MemoryStore()
        for ep in endpoints:
            await store.put_endpoint(ep)
        guard = AddressPolicy(allow)
        session = aiohttp.ClientSession(connector=make_connector(guard))
        sessions.append(session)
        handler = WebhookHandler(store=store,
                                 http=HttpDelivery(session, timeout=timeout, policy=guard),
                                 sink=LogSink(failure_rate=failure_rate), policy=POLICY,
                                 max_job_bytes=65536, disable_after=disable_after)
        return handler, store

    yield make
    for session in sessions:
        await session.close()


def endpoint(base: str, name: str, **kw: Any) -> WebhookEndpoint:
    return WebhookEndpoint(id=f"ep_{name}", url=f"{base}/{name}", **kw)


def event_job(attempt: int = 0, endpoint: str | None = None) -> bytes:
    event = Event.for_payment(Payment(id="pay_1", method="upi", status=PaymentStatus.SUCCEEDED))
    return WebhookJob(event_type=event.type, payment_id="pay_1", event=event.to_dict(),
                      endpoint=endpoint, attempt=attempt).encode()


EVENT_ID = event_id_for("pay_1", "payment.success")


async def test_log_sink_prints_the_seed_lines(make_handler: Callable[..., Any]) -> None:
    handler, store = await make_handler()
    with capture_logs() as logs:
        outcome = await handler(b"webhook:payment.success:pay_test_1001")
    assert [e["event"] for e in logs] == [
        "Delivering webhook: webhook:payment.success:pay_test_1001",
        "Webhook delivered: webhook:payment.success:pay_test_1001"]
    assert not outcome.delay and outcome.dead is None
    event_id = event_id_for("pay_test_1001", "payment.success")
    assert await store.get_event(event_id) is not None  # visible in /v1/events
    (attempt,) = await store.list_attempts(event_id)
    assert (attempt.endpoint_id, attempt.outcome, attempt.attempt) == ("log", "succeeded", 1)


def test_status_classes() -> None:
    from payflow.metrics import status_class

    assert [status_class(204), status_class(503), status_class(None, ok=True),
            status_class(None)] == ["2xx", "5xx", "none", "error"]


async def test_schedule_with_jitter_then_dead(make_handler: Callable[..., Any]) -> None:
    handler, store = await make_handler(failure_rate=1.0)
    outcome = await handler(b"webhook:payment.success:pay_1")
    ((raw, delay),) = outcome.delay
    assert 4.0 <= delay <= 6.0  # 5 s ± 20 %
    job = parse_job(raw)
    assert isinstance(job, WebhookJob) and job.attempt == 1 and job.endpoint == "log"
    second = await handler(raw)
    assert 240.0 <= second.delay[0][1] <= 360.0  # 300 s ± 20 %
    last = await handler(event_job(attempt=3, endpoint="log"))  # the 4th and last attempt
    assert last.dead is not None and "gave up after 4 attempts" in last.dead
    attempts = await store.list_attempts(EVENT_ID)
    assert [(a.attempt, a.outcome) for a in attempts] == [(1, "retrying"), (2, "retrying"),
                                                          (4, "dead")]
    assert attempts[-1].next_retry_at is None and attempts[0].next_retry_at is not None


async def test_fan_out_signs_and_retries_each_endpoint_alone(
        make_handler: Callable[..., Any], receiver: tuple[Receiver, str]) -> None:
    rec, base = receiver
    rec.plan = {"bad": ["500"], "moved": ["301"]}
    good = endpoint(base, "good", secrets=(EndpointSecret(secret=SECRET),))
    bad, moved = endpoint(base, "bad"), endpoint(base, "moved")
    other = endpoint(base, "other", enabled_events=("payment.failed",))
    off = endpoint(base, "off", disabled=True)
    handler, store = await make_handler(good, bad, moved, other, off)
    outcome = await handler(event_job())
    assert sorted(name for name, _, _ in rec.hits) == ["bad", "good", "moved"]
    retried = {parse_job(raw).endpoint for raw, _ in outcome.delay}  # type: ignore[union-attr]
    assert retried == {"ep_bad", "ep_moved"}  # a redirect is not followed: a failure
    _, headers, body = next(h for h in rec.hits if h[0] == "good")
    assert headers["webhook-id"] == EVENT_ID
    assert headers["webhook-signature"] == sign(SECRET, EVENT_ID,
                                                int(headers["webhook-timestamp"]), body)
    assert "webhook-signature" not in next(h for h in rec.hits if h[0] == "bad")[1]
    attempts = {a.endpoint_id: a for a in await store.list_attempts(EVENT_ID)}
    assert attempts["ep_good"].outcome == "succeeded" and attempts["ep_good"].status == 200
    assert attempts["ep_bad"].outcome == "retrying" and attempts["ep_bad"].status == 500
    assert attempts["ep_bad"].next_retry_at is not None
    assert len(attempts["ep_bad"].response_body) == 1024  # truncated
    assert attempts["ep_moved"].status == 301
    assert attempts["ep_off"].outcome == "skipped"  # recover replays it


async def test_retry_after_is_honoured_and_clamped(
        make_handler: Callable[..., Any], receiver: tuple[Receiver, str]) -> None:
    rec, base = receiver
    rec.plan = {"busy": ["429:42"], "down": ["503:999999"], "soon": ["503:0"]}
    handler, _ = await make_handler(endpoint(base, "busy"), endpoint(base, "down"),
                                    endpoint(base, "soon"))
    outcome = await handler(event_job())
    delays = {parse_job(raw).endpoint: d for raw, d in outcome.delay}  # type: ignore[union-attr]
    assert delays == {"ep_busy": 42.0, "ep_down": max(SCHEDULE), "ep_soon": 1.0}


async def test_410_disables_the_endpoint(make_handler: Callable[..., Any],
                                         receiver: tuple[Receiver, str]) -> None:
    rec, base = receiver
    rec.plan = {"gone": ["410"]}
    handler, store = await make_handler(endpoint(base, "gone"))
    with capture_logs() as logs:
        outcome = await handler(event_job())
    assert not outcome.delay and not outcome.dead_jobs
    gone = await store.get_endpoint("ep_gone")
    assert gone is not None and gone.disabled and "410" in (gone.disabled_reason or "")
    assert any(e["event"] == "webhook.endpoint_disabled" for e in logs)
    # a later event is not sent to it, but recorded as skipped
    await handler(event_job())
    assert len(rec.hits) == 1
    assert [a.outcome for a in await store.list_attempts(EVENT_ID)] == ["disabled", "skipped"]


@pytest.mark.parametrize(("step", "error"), [("hang", "timeout"), ("close", "connection")])
async def test_hangs_and_closed_connections_are_failures(
        make_handler: Callable[..., Any], receiver: tuple[Receiver, str], step: str,
        error: str) -> None:
    rec, base = receiver
    rec.plan = {"x": [step]}
    handler, store = await make_handler(endpoint(base, "x"), timeout=0.5)
    outcome = await handler(event_job())
    assert len(outcome.delay) == 1
    (attempt,) = await store.list_attempts(EVENT_ID)
    assert attempt.outcome == "retrying" and error in (attempt.error or "")


async def test_ssrf_refusal_is_recorded_and_dead_at_once(
        make_handler: Callable[..., Any], receiver: tuple[Receiver, str]) -> None:
    rec, base = receiver
    by_name = WebhookEndpoint(id="ep_local", url=base.replace("127.0.0.1", "localhost") + "/a")
    by_ip = endpoint(base, "b")
    handler, store = await make_handler(by_name, by_ip, allow=())
    outcome = await handler(event_job())
    assert rec.hits == []  # nothing was sent
    assert not outcome.delay
    reasons = sorted(reason for _, reason in outcome.dead_jobs)
    assert all(r.startswith("refused: ssrf_refused:") and "loopback" in r for r in reasons)
    outcomes = {a.endpoint_id: a.outcome for a in await store.list_attempts(EVENT_ID)}
    assert outcomes == {"ep_local": "refused", "ep_b": "refused"}


async def test_endpoint_failing_too_long_is_disabled(
        make_handler: Callable[..., Any], receiver: tuple[Receiver, str]) -> None:
    rec, base = receiver
    rec.plan = {"x": ["500"]}
    handler, store = await make_handler(endpoint(base, "x"), disable_after=timedelta(0))
    first = await handler(event_job())  # the failing streak starts
    assert len(first.delay) == 1
    second = await handler(event_job(attempt=1, endpoint="ep_x"))
    assert not second.delay and second.dead is None
    x = await store.get_endpoint("ep_x")
    assert x is not None and x.disabled and "failing for" in (x.disabled_reason or "")


async def test_success_resets_the_failing_streak(
        make_handler: Callable[..., Any], receiver: tuple[Receiver, str]) -> None:
    rec, base = receiver
    rec.plan = {"x": ["500", "200"]}
    handler, store = await make_handler(endpoint(base, "x"))
    await handler(event_job())
    x = await store.get_endpoint("ep_x")
    assert x is not None and x.failing_since is not None
    await handler(event_job(attempt=1, endpoint="ep_x"))
    x = await store.get_endpoint("ep_x")
    assert x is not None and x.failing_since is None


async def test_unknown_endpoint_is_an_invalid_job(make_handler: Callable[..., Any]) -> None:
    handler, _ = await make_handler(WebhookEndpoint(id="ep_a", url="http://127.0.0.1:9/a"))
    with pytest.raises(InvalidJob, match="no longer exists"):
        await handler(event_job(endpoint="ep_gone"))


async def test_legacy_job_derives_the_event_from_the_store(
        make_handler: Callable[..., Any], receiver: tuple[Receiver, str]) -> None:
    rec, base = receiver
    handler, store = await make_handler(endpoint(base, "a"))
    await store.create_payment(Payment(id="pay_7", method="card", amount=100, currency="USD",
                                       status=PaymentStatus.FAILED))
    await handler(b"webhook:payment.failed:pay_7")
    body: dict[str, Any] = json.loads(rec.hits[0][2])
    assert body["id"] == event_id_for("pay_7", "payment.failed")
    assert body["data"]["amount"] == 100


async def test_payment_job_on_the_webhook_queue_is_forwarded(
        make_handler: Callable[..., Any]) -> None:
    handler, _ = await make_handler()
    outcome = await handler(b"process_payment:pay_1:upi")
    assert list(outcome.push) == [b"process_payment:pay_1:upi"]
