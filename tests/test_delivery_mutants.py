"""One delivery attempt (payflow.webhooks.delivery), directly: what is sent, which answers count
as delivered, Retry-After in both forms, how failures are named, the log sink. Written against
the mutants that the sender's tests let through (scripts/mutation delivery)."""

from __future__ import annotations

import json
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing as closing
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from payflow import __version__
from payflow.models import EndpointSecret, Event, Payment, PaymentStatus, WebhookEndpoint
from payflow.webhooks import verify
from payflow.webhooks.delivery import (
    Attempt,
    HttpDelivery,
    LogSink,
    encode_event,
    parse_retry_after,
)
from payflow.webhooks.ssrf import AddressPolicy, SSRFRefused
from payflow.webhooks.transport import make_transport
from resolvers import StubResolver

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
PAYMENT = Payment(id="pay_ü", method="upi", amount=2500, currency="INR",
                  status=PaymentStatus.SUCCEEDED, metadata={"note": "café"})
EVENT = Event.for_payment(PAYMENT)
NOW = 1_700_000_000.0

Answer = Callable[[web.Request], Awaitable[web.StreamResponse]]
Deliver = Callable[..., Awaitable[tuple[Attempt, list[web.Request], list[bytes]]]]


@pytest.fixture
async def deliver() -> AsyncIterator[Deliver]:
    """``await deliver(answer)``: one HttpDelivery attempt to a local server answering with
    ``answer``; returns the attempt and the requests (and bodies) the server saw."""
    servers: list[TestServer] = []
    deliveries: list[HttpDelivery] = []

    async def run(answer: Answer, **kw: Any) -> tuple[Attempt, list[web.Request], list[bytes]]:
        seen: list[web.Request] = []
        bodies: list[bytes] = []

        async def handle(request: web.Request) -> web.StreamResponse:
            seen.append(request)
            bodies.append(await request.read())
            return await answer(request)

        app = web.Application()
        app.router.add_post("/hook", handle)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        policy = AddressPolicy(["127.0.0.0/8"])
        delivery = HttpDelivery(make_transport(policy), timeout=2.0, policy=policy)
        deliveries.append(delivery)
        ep = WebhookEndpoint(id="ep_1", url=f"http://127.0.0.1:{server.port}/hook",
                             secrets=(EndpointSecret(secret=SECRET),))
        return await delivery.deliver(ep, EVENT, **kw), seen, bodies

    yield run
    for delivery in deliveries:
        await delivery.aclose()
    for server in servers:
        await server.close()


def answer(status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> Answer:
    async def respond(request: web.Request) -> web.StreamResponse:
        return web.Response(status=status, body=body, headers=headers)

    return respond


def test_an_event_is_compact_utf8_json() -> None:
    body = encode_event(EVENT)
    assert body == json.dumps(EVENT.to_dict(), separators=(",", ":"),
                              ensure_ascii=False).encode("utf-8")
    assert b", " not in body and b'": ' not in body  # no spaces after separators
    assert "café".encode() in body and b"\\u" not in body  # UTF-8, not \u escapes


async def test_the_request_is_signed_json_with_our_user_agent(deliver: Deliver) -> None:
    attempt, [request], [body] = await deliver(answer(200))
    assert attempt.ok
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["User-Agent"] == f"PayFlow/{__version__}"
    assert request.headers["webhook-id"] == EVENT.id
    assert body == encode_event(EVENT)
    assert verify(body, dict(request.headers), SECRET) == json.loads(body)


@pytest.mark.parametrize(("status", "ok"), [(200, True), (204, True),
                                            (299, True), (300, False), (301, False),
                                            (400, False), (500, False)])
async def test_only_a_2xx_is_delivered(deliver: Deliver, status: int, ok: bool) -> None:
    headers = {"Location": "/elsewhere"} if 300 <= status < 400 else {}
    attempt, seen, _ = await deliver(answer(status, headers=headers))
    assert attempt.ok is ok and attempt.status == status
    assert attempt.error == (None if ok else f"HTTP {status}")
    assert attempt.reason == ("delivered" if ok else f"HTTP {status}")
    assert len(seen) == 1  # a redirect is not followed
    assert attempt.latency_ms > 0 and attempt.latency_ms < 2000


async def test_the_response_body_is_kept_decoded_with_replacement(deliver: Deliver) -> None:
    attempt, _, _ = await deliver(answer(500, b"bad \xff byte" + b"x" * 2000))
    assert attempt.body == "bad \ufffd byte" + "x" * (1024 - 10)


@pytest.mark.parametrize("status", [429, 503])
async def test_retry_after_of_a_429_or_503_is_read(deliver: Deliver, status: int) -> None:
    attempt, _, _ = await deliver(answer(status, headers={"retry-after": "7"}))
    assert attempt.retry_after == 7.0


async def test_retry_after_of_other_answers_is_ignored(deliver: Deliver) -> None:
    attempt, _, _ = await deliver(answer(500, headers={"Retry-After": "7"}))
    assert attempt.retry_after is None


def test_retry_after_delta_seconds() -> None:
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after(" 5 ") == 5.0
    assert parse_retry_after(None) is None and parse_retry_after("") is None
    assert parse_retry_after("soon") is None and parse_retry_after("-5") is None


def test_retry_after_http_date_is_honoured() -> None:
    later = datetime.fromtimestamp(NOW, UTC) + timedelta(seconds=90)
    assert parse_retry_after(format_datetime(later, usegmt=True), now=NOW) == 90.0
    # the obsolete asctime form has no zone: it is GMT (RFC 9110)
    assert parse_retry_after(later.strftime("%a %b %d %H:%M:%S %Y"), now=NOW) == 90.0
    # a date in the past means now, never a negative delay
    earlier = datetime.fromtimestamp(NOW, UTC) - timedelta(seconds=30)
    assert parse_retry_after(format_datetime(earlier, usegmt=True), now=NOW) == 0.0


def test_retry_after_http_date_defaults_to_the_clock() -> None:
    later = datetime.now(UTC) + timedelta(seconds=600)
    delay = parse_retry_after(format_datetime(later, usegmt=True))
    assert delay is not None and 590 <= delay <= 600


async def test_a_connection_failure_is_named_and_timed() -> None:
    policy = AddressPolicy(["127.0.0.0/8"])
    async with closing(HttpDelivery(make_transport(policy), timeout=2.0,
                                    policy=policy)) as delivery:
        closed = socket_port()
        attempt = await delivery.deliver(
            WebhookEndpoint(id="ep_1", url=f"http://127.0.0.1:{closed}/"), EVENT)
        assert attempt.ok is False and attempt.status is None and not attempt.refused
        assert (attempt.error or "").startswith("connection_failed: ")
        assert attempt.latency_ms > 0
        refused = await delivery.deliver(WebhookEndpoint(id="ep_2", url="http://10.0.0.1/"),
                                         EVENT)
        assert refused.ok is False and refused.refused and refused.latency_ms > 0
        assert (refused.error or "").startswith("ssrf_refused: 10.0.0.1 is a private address")


async def test_a_name_that_does_not_resolve_is_a_connection_failure() -> None:
    policy = AddressPolicy([])
    names = StubResolver({})  # knows no name
    async with closing(HttpDelivery(make_transport(policy, inner_resolver=names), timeout=2.0,
                                    policy=policy)) as delivery:
        attempt = await delivery.deliver(WebhookEndpoint(id="ep_1", url="https://gone.test/"),
                                         EVENT)
    assert attempt == Attempt(ok=False, error="connection_failed: no such host gone.test",
                              latency_ms=attempt.latency_ms)
    assert attempt.latency_ms > 0 and names.calls == ["gone.test"]


async def test_an_event_id_no_header_can_carry_is_not_sent() -> None:
    policy = AddressPolicy([])
    names = StubResolver({})
    async with closing(HttpDelivery(make_transport(policy, inner_resolver=names), timeout=2.0,
                                    policy=policy)) as delivery:
        for bad in ("evt_1\r\nX-Injected: 1", "evt_é"):
            attempt = await delivery.deliver(
                WebhookEndpoint(id="ep_1", url="https://h.test/"),
                Event(id=bad, type="payment.succeeded", timestamp=EVENT.timestamp,
                      data=EVENT.data))
            assert attempt == Attempt(
                ok=False, error=f"bad_request: the event id {bad!r} cannot be sent in a header",
                latency_ms=attempt.latency_ms)
            assert 0 < attempt.latency_ms < 1000
    assert names.calls == []  # nothing was even looked up


def socket_port() -> int:
    """A local port nothing listens on."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_the_log_sink_delivers_by_default_and_fails_at_its_rate() -> None:
    assert await LogSink().deliver(EVENT) == Attempt(ok=True)
    always = LogSink(failure_rate=1.0)
    assert await always.deliver(EVENT) == Attempt(ok=False, error="simulated failure")

    class Fixed(random.Random):
        def random(self) -> float:
            return 0.5

    assert (await LogSink(failure_rate=0.5, rng=Fixed()).deliver(EVENT)).ok  # 0.5 < 0.5: no
    assert not (await LogSink(failure_rate=0.51, rng=Fixed()).deliver(EVENT)).ok


def test_latency_is_in_milliseconds() -> None:
    from payflow.webhooks.delivery import _since

    assert 250.0 <= _since(time.perf_counter() - 0.25) < 250.2


def test_an_event_past_orjson_is_still_compact_utf8_json() -> None:
    big = Event(id="evt_big", type="payment.success", timestamp="2026-03-01T12:00:00.000Z",
                data={"n": 2**70, "note": "café"})
    assert encode_event(big) == ('{"id":"evt_big","type":"payment.success",'
                                 '"timestamp":"2026-03-01T12:00:00.000Z",'
                                 f'"data":{{"n":{2**70},"note":"café"}}}}').encode()


async def test_a_refused_url_stays_refused_with_its_reason() -> None:
    policy = AddressPolicy([])
    async with closing(HttpDelivery(make_transport(policy), timeout=2.0,
                                    policy=policy)) as delivery:
        endpoint = WebhookEndpoint(id="ep_1", url="http://10.0.0.1/hook")
        for _ in range(2):  # the second answer comes from the remembered verdict
            attempt = await delivery.deliver(endpoint, EVENT)
            assert attempt.refused and attempt.error == (
                "ssrf_refused: 10.0.0.1 is a private address; add it to [webhooks] "
                "allow_networks to allow it")
        with pytest.raises(SSRFRefused) as info:
            delivery._check("http://10.0.0.1/hook")
        assert (info.value.host, info.value.address) == ("10.0.0.1", "10.0.0.1")


async def test_the_remembered_url_checks_are_bounded() -> None:
    policy = AddressPolicy([])
    async with closing(HttpDelivery(make_transport(policy), timeout=2.0,
                                    policy=policy)) as delivery:
        for n in range(10_000):
            delivery._check(f"https://h{n}.example.com/")
        assert len(delivery._checked) == 10_000
        delivery._check("https://one-more.example.com/")
        assert len(delivery._checked) == 1


async def test_a_traceparent_is_sent_when_given(deliver: Deliver) -> None:
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    _, [request], _ = await deliver(answer(200), traceparent=parent)
    assert request.headers["traceparent"] == parent
    _, [plain], _ = await deliver(answer(200))
    assert "traceparent" not in plain.headers
