"""The webhook handler against a real local receiver: fan-out, schedule, Retry-After, 410,
redirects, timeouts, closed connections, SSRF refusals, attempts recorded, endpoint disabling."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from structlog.testing import capture_logs

from payflow.jobs import WebhookJob, parse_job
from payflow.models import (
    DeliveryAttempt,
    EndpointSecret,
    Event,
    Payment,
    PaymentStatus,
    WebhookEndpoint,
    event_id_for,
)
from payflow.store.base import Transition
from payflow.store.front import StoreFront
from payflow.store.memory import MemoryStore
from payflow.webhooks.delivery import HttpDelivery, LogSink
from payflow.webhooks.sender import RetryPolicy, WebhookHandler
from payflow.webhooks.signing import sign
from payflow.webhooks.ssrf import AddressPolicy
from payflow.webhooks.transport import make_transport

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
    deliveries: list[HttpDelivery] = []

    async def make(*endpoints: WebhookEndpoint, sink: bool = False, failure_rate: float = 0.0,
                   allow: tuple[str, ...] = ("127.0.0.0/8",), timeout: float = 2.0,
                   disable_after: timedelta = timedelta(hours=1)
                   ) -> tuple[WebhookHandler, MemoryStore]:
        """A handler over a store that has pay_1, succeeded, and its event (``EVENT``); the
        log sink only with ``sink``."""
        store = MemoryStore()
        for ep in endpoints:
            await store.put_endpoint(ep)
        await store.create_payments([PAYMENT])
        await store.add_events([EVENT])
        guard = AddressPolicy(allow)
        http = HttpDelivery(make_transport(guard), timeout=timeout, policy=guard)
        deliveries.append(http)
        handler = WebhookHandler(store=StoreFront(store),
                                 http=http,
                                 sink=LogSink(failure_rate=failure_rate) if sink else None,
                                 policy=POLICY, max_job_bytes=65536, disable_after=disable_after)
        return handler, store

    yield make
    for http in deliveries:
        await http.aclose()


def endpoint(base: str, name: str, **kw: Any) -> WebhookEndpoint:
    return WebhookEndpoint(id=f"ep_{name}", url=f"{base}/{name}", **kw)


PAYMENT = Payment(id="pay_1", method="upi", amount=2500, currency="INR",
                  status=PaymentStatus.SUCCEEDED)
EVENT = Event.for_payment(PAYMENT)
EVENT_ID = event_id_for("pay_1", "payment.success")


def event_job(attempt: int = 0, endpoint: str | None = None) -> bytes:
    return WebhookJob.for_event(EVENT, endpoint=endpoint, attempt=attempt).encode()


async def attempts_of(store: MemoryStore, event_id: str = EVENT_ID) -> list[DeliveryAttempt]:
    return await store.list_attempts(event_id)


async def endpoint_in(store: MemoryStore, endpoint_id: str) -> WebhookEndpoint:
    return (await store.get_endpoints([endpoint_id]))[endpoint_id]


async def test_log_sink_prints_the_seed_lines(make_handler: Callable[..., Any]) -> None:
    handler, store = await make_handler(sink=True)
    await store.create_payments([Payment(id="pay_test_1001", method="upi",
                                         status=PaymentStatus.SUCCEEDED)])
    with capture_logs() as logs:
        outcome = await handler(b"webhook:payment.success:pay_test_1001")
    assert [e["event"] for e in logs] == [
        "Delivering webhook: webhook:payment.success:pay_test_1001",
        "Webhook delivered: webhook:payment.success:pay_test_1001"]
    assert not outcome.delay and outcome.dead is None
    event_id = event_id_for("pay_test_1001", "payment.success")
    assert event_id in await store.get_events([event_id])  # visible in /v1/events
    (attempt,) = await attempts_of(store, event_id)
    assert (attempt.endpoint_id, attempt.outcome, attempt.attempt) == ("log", "succeeded", 1)


async def test_the_log_sink_goes_beside_the_endpoints_when_configured(
        make_handler: Callable[..., Any], receiver: tuple[Receiver, str]) -> None:
    rec, base = receiver
    handler, store = await make_handler(endpoint(base, "a"), sink=True)
    await handler(event_job())
    assert [name for name, _, _ in rec.hits] == ["a"]
    assert {(a.endpoint_id, a.outcome) for a in await attempts_of(store)} == {
        ("ep_a", "succeeded"), ("log", "succeeded")}


async def test_without_a_sink_and_endpoints_nothing_is_delivered_and_the_event_stays(
        make_handler: Callable[..., Any]) -> None:
    handler, store = await make_handler()  # no endpoint, no log sink: never a fallback
    with capture_logs() as logs:
        outcome = await handler(event_job())
    assert not outcome.push and not outcome.delay and not outcome.dead_jobs
    assert outcome.dead is None
    assert "Webhook delivered: webhook:payment.success:pay_1" not in [e["event"] for e in logs]
    assert any(e["event"] == "webhook.no_subscribers" for e in logs)
    assert await attempts_of(store) == []  # never tried: an endpoint's recover finds it
    assert await store.get_events([EVENT_ID]) == {EVENT_ID: EVENT}  # still recorded
    # a job aimed at the log sink of a daemon without one delivers nothing either
    assert not (await handler(event_job(attempt=1, endpoint="log"))).delay
    assert await attempts_of(store) == []


async def test_a_job_names_the_event_and_the_event_comes_from_the_store(
        make_handler: Callable[..., Any], receiver: tuple[Receiver, str]) -> None:
    rec, base = receiver
    handler, _ = await make_handler(endpoint(base, "a"))
    # an envelope of an earlier version carried the event: only its id is taken
    forged = {**EVENT.to_dict(), "data": {**EVENT.data, "amount": 10**9}}
    old = json.dumps({"v": 1, "kind": "webhook", "type": "payment.success",
                      "payment_id": "pay_1", "event": forged}).encode()
    for raw in (event_job(), old):
        await handler(raw)
    assert len(rec.hits) == 2
    for _, _, body in rec.hits:
        assert json.loads(body) == EVENT.to_dict()  # the store's event, amount 2500


async def test_a_job_naming_an_unknown_event_is_an_invalid_job(
        make_handler: Callable[..., Any], receiver: tuple[Receiver, str]) -> None:
    rec, base = receiver
    handler, _ = await make_handler(endpoint(base, "a"), sink=True)
    dead = (await handler(WebhookJob(event_id="evt_nope").encode())).dead
    assert dead is not None and "unknown event 'evt_nope'" in dead
    assert rec.hits == []


def test_status_classes() -> None:
    from payflow.metrics import status_class

    assert [status_class(204), status_class(503), status_class(None, ok=True),
            status_class(None)] == ["2xx", "5xx", "none", "error"]


async def test_schedule_with_jitter_then_dead(make_handler: Callable[..., Any]) -> None:
    handler, store = await make_handler(sink=True, failure_rate=1.0)
    outcome = await handler(b"webhook:payment.success:pay_1")
    ((raw, delay),) = outcome.delay
    assert 4.0 <= delay <= 6.0  # 5 s ± 20 %
    job = parse_job(raw)
    assert isinstance(job, WebhookJob) and job.attempt == 1 and job.endpoint == "log"
    second = await handler(raw)
    assert 240.0 <= second.delay[0][1] <= 360.0  # 300 s ± 20 %
    last = await handler(event_job(attempt=3, endpoint="log"))  # the 4th and last attempt
    assert last.dead is not None and "gave up after 4 attempts" in last.dead
    attempts = await attempts_of(store)
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
    attempts = {a.endpoint_id: a for a in await attempts_of(store)}
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
    gone = await endpoint_in(store, "ep_gone")
    assert gone.disabled and "410" in (gone.disabled_reason or "")
    assert any(e["event"] == "webhook.endpoint_disabled" for e in logs)
    # a later event is not sent to it, but recorded as skipped
    await handler(event_job())
    assert len(rec.hits) == 1
    assert [a.outcome for a in await attempts_of(store)] == ["disabled", "skipped"]


@pytest.mark.parametrize(("step", "error"), [("hang", "timeout"), ("close", "connection")])
async def test_hangs_and_closed_connections_are_failures(
        make_handler: Callable[..., Any], receiver: tuple[Receiver, str], step: str,
        error: str) -> None:
    rec, base = receiver
    rec.plan = {"x": [step]}
    handler, store = await make_handler(endpoint(base, "x"), timeout=0.5)
    outcome = await handler(event_job())
    assert len(outcome.delay) == 1
    (attempt,) = await attempts_of(store)
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
    outcomes = {a.endpoint_id: a.outcome for a in await attempts_of(store)}
    assert outcomes == {"ep_local": "refused", "ep_b": "refused"}


async def test_a_trailing_dot_ip_is_refused_once_not_retried(
        make_handler: Callable[..., Any], receiver: tuple[Receiver, str]) -> None:
    """``127.0.0.1.`` is 127.0.0.1, not a name for DNS (whose failure would be retried)."""
    rec, base = receiver
    dotted = WebhookEndpoint(id="ep_dot", url=base.replace("127.0.0.1", "127.0.0.1.") + "/d")
    handler, store = await make_handler(dotted, allow=())
    outcome = await handler(event_job())
    assert rec.hits == [] and not outcome.delay
    ((_, reason),) = outcome.dead_jobs
    assert reason.startswith("refused: ssrf_refused: 127.0.0.1 is a loopback address")
    (attempt,) = await attempts_of(store)
    assert (attempt.endpoint_id, attempt.attempt, attempt.outcome) == ("ep_dot", 1, "refused")
    assert attempt.next_retry_at is None
    # allowed, it reaches 127.0.0.1
    handler, store = await make_handler(dotted)
    outcome = await handler(event_job())
    assert [name for name, _, _ in rec.hits] == ["d"] and not outcome.delay
    assert [a.outcome for a in await attempts_of(store)] == ["succeeded"]


async def test_endpoint_failing_too_long_is_disabled(
        make_handler: Callable[..., Any], receiver: tuple[Receiver, str]) -> None:
    rec, base = receiver
    rec.plan = {"x": ["500"]}
    handler, store = await make_handler(endpoint(base, "x"), disable_after=timedelta(0))
    first = await handler(event_job())  # the failing streak starts
    assert len(first.delay) == 1
    second = await handler(event_job(attempt=1, endpoint="ep_x"))
    assert not second.delay and second.dead is None
    x = await endpoint_in(store, "ep_x")
    assert x.disabled and "failing for" in (x.disabled_reason or "")


async def test_success_resets_the_failing_streak(
        make_handler: Callable[..., Any], receiver: tuple[Receiver, str]) -> None:
    rec, base = receiver
    rec.plan = {"x": ["500", "200"]}
    handler, store = await make_handler(endpoint(base, "x"))
    await handler(event_job())
    assert (await endpoint_in(store, "ep_x")).failing_since is not None
    await handler(event_job(attempt=1, endpoint="ep_x"))
    assert (await endpoint_in(store, "ep_x")).failing_since is None


async def test_unknown_endpoint_is_an_invalid_job(make_handler: Callable[..., Any]) -> None:
    handler, _ = await make_handler(WebhookEndpoint(id="ep_a", url="http://127.0.0.1:9/a"))
    dead = (await handler(event_job(endpoint="ep_gone"))).dead
    assert dead is not None and "endpoint 'ep_gone' does not exist" in dead


async def test_legacy_job_derives_the_event_from_the_store(
        make_handler: Callable[..., Any], receiver: tuple[Receiver, str]) -> None:
    rec, base = receiver
    handler, store = await make_handler(endpoint(base, "a"))
    await store.create_payments([Payment(id="pay_7", method="card", amount=100, currency="USD",
                                         status=PaymentStatus.FAILED)])
    await handler(b"webhook:payment.failed:pay_7")
    body: dict[str, Any] = json.loads(rec.hits[0][2])
    event_id = event_id_for("pay_7", "payment.failed")
    assert body["id"] == event_id
    assert body["data"]["amount"] == 100
    # derived once, then recorded: the same job again delivers the very same event
    assert event_id in await store.get_events([event_id])
    await handler(b"webhook:payment.failed:pay_7")
    assert json.loads(rec.hits[1][2]) == body
    # the recorded event is delivered even after the payment moved on
    await store.transition([Transition(payment_id="pay_7", expected=(PaymentStatus.FAILED,),
                                       new=PaymentStatus.PENDING)])
    await handler(b"webhook:payment.failed:pay_7")
    assert len(rec.hits) == 3


@pytest.mark.parametrize("raw", [
    b"webhook:payment.success:pay_unknown",  # the store does not have the payment
    b"webhook:payment.failed:pay_1",  # pay_1 succeeded: that event would not be true
    b"webhook:refund.success:re_unknown",
])
async def test_a_legacy_job_the_store_does_not_back_is_an_invalid_job(
        make_handler: Callable[..., Any], receiver: tuple[Receiver, str], raw: bytes) -> None:
    rec, base = receiver
    handler, store = await make_handler(endpoint(base, "a"), sink=True)
    dead = (await handler(raw)).dead
    assert dead is not None and "the store does not have it in that state" in dead
    assert rec.hits == []
    assert [e.id for e in await store.list_events(limit=10)] == [EVENT_ID]  # nothing invented


async def test_payment_job_on_the_webhook_queue_is_forwarded(
        make_handler: Callable[..., Any]) -> None:
    handler, _ = await make_handler()
    outcome = await handler(b"process_payment:pay_1:upi")
    assert list(outcome.push) == [b"process_payment:pay_1:upi"]
