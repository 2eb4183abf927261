"""The HTTP API end to end through aiohttp's test client: payments, problem+json, Request-Id,
body limits, shutdown, and what happens when the queue is down."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
import redis.exceptions
import structlog
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient

from conftest import ServeApp
from payflow.jobs import PaymentJob, parse_job
from payflow.logs import add_request_id
from payflow.models import Payment
from payflow.payments.processor import card_fingerprint
from payflow.store.memory import MemoryStore
from payflow.web.app import create_app
from payflow.web.context import WebContext

PROBLEM = "application/problem+json"
TYPE_BASE = "https://payflow.dev/problems/"
VISA = "4242424242424242"
UPI_BODY: dict[str, Any] = {"amount": 49900, "currency": "inr", "method": "upi",
                            "upi": {"vpa": "asha@okhdfc"}, "metadata": {"order": "o_1"}}


class FakeQueue:
    """Records what is enqueued, or raises ``fail`` when set."""

    def __init__(self) -> None:
        self.raws: list[bytes] = []
        self.fail: BaseException | None = None

    async def enqueue(self, raw: bytes) -> None:
        if self.fail is not None:
            raise self.fail
        self.raws.append(raw)


class RecordingStore(MemoryStore):
    """A MemoryStore that remembers every id it was asked to create."""

    def __init__(self) -> None:
        super().__init__()
        self.created: list[str] = []

    async def create_payments(self, payments: Sequence[Payment]) -> list[Payment]:
        self.created += [p.id for p in payments]
        return await super().create_payments(payments)

    async def get_payment(self, payment_id: str) -> Payment | None:
        return (await self.get_payments([payment_id])).get(payment_id)


class BrokenStore(RecordingStore):
    async def create_payments(self, payments: Sequence[Payment]) -> list[Payment]:
        raise RuntimeError("store exploded: secret-internal-detail")


@dataclass
class Api:
    client: TestClient[web.Request, web.Application]
    store: RecordingStore
    queue: FakeQueue
    ctx: WebContext

    async def post(self, body: object, **kwargs: Any) -> tuple[ClientResponse, Any]:
        resp = await self.client.post("/v1/payments", json=body, **kwargs)
        return resp, await resp.json(content_type=None)


MakeApi = Callable[..., Awaitable[Api]]


@pytest.fixture
async def make_api(serve_app: ServeApp) -> MakeApi:
    async def make(*, max_body_bytes: int = 65536, store: RecordingStore | None = None) -> Api:
        queue = FakeQueue()
        the_store = store if store is not None else RecordingStore()

        async def ping() -> bool:
            return True

        ctx = WebContext(store=the_store, enqueue_payment=queue.enqueue, ping=ping,
                         max_body_bytes=max_body_bytes)
        client = await serve_app(create_app(ctx))
        return Api(client=client, store=the_store, queue=queue, ctx=ctx)

    return make


@pytest.fixture
async def api(make_api: MakeApi) -> Api:
    return await make_api()


def assert_problem(resp: ClientResponse, data: Any, status: int, slug: str, code: str) -> None:
    assert resp.status == status
    assert resp.content_type == PROBLEM
    assert data["type"] == TYPE_BASE + slug
    assert data["status"] == status
    assert data["code"] == code
    assert isinstance(data["title"], str) and data["title"]
    assert isinstance(data["detail"], str) and data["detail"]
    assert data["request_id"] == resp.headers["Request-Id"]


# --- creating and reading payments -----------------------------------------------------------


async def test_create_upi_payment(api: Api) -> None:
    resp, data = await api.post(UPI_BODY)
    assert resp.status == 202
    assert resp.content_type == "application/json"
    assert re.fullmatch(r"pay_[0-9a-f]{24}", data["id"])
    assert resp.headers["Location"] == f"/v1/payments/{data['id']}"
    assert data["object"] == "payment"
    assert (data["amount"], data["currency"], data["method"]) == (49900, "INR", "upi")
    assert data["method_details"] == {"vpa": "asha@okhdfc"}
    assert data["status"] == "pending"
    assert data["metadata"] == {"order": "o_1"}
    stored = await api.store.get_payment(data["id"])
    assert stored is not None and stored.to_dict() == data


async def test_enqueued_job_is_the_payment_envelope(api: Api) -> None:
    _, data = await api.post(UPI_BODY)
    assert len(api.queue.raws) == 1
    envelope = json.loads(api.queue.raws[0])
    assert (envelope["v"], envelope["kind"], envelope["attempt"]) == (1, "payment", 0)
    job = parse_job(api.queue.raws[0])
    assert isinstance(job, PaymentJob)
    # It names the payment and nothing else: no snapshot (the store has the payment) and no
    # method, so a job whose payment is gone is dead-lettered, never made a new payment.
    assert (job.payment_id, job.method) == (data["id"], None)
    assert set(envelope) == {"v", "kind", "jid", "attempt", "payment_id"}
    stored = await api.store.get_payment(data["id"])
    assert stored is not None and stored.to_dict() == data


async def test_create_card_payment_keeps_no_card_number(api: Api) -> None:
    body = {"amount": 100, "currency": "USD", "method": "card",
            "card": {"number": "4242 4242 4242 4242", "exp_month": 12, "exp_year": 2045}}
    with structlog.testing.capture_logs() as logs:
        resp, data = await api.post(body)
    assert resp.status == 202, data
    assert data["method_details"] == {"brand": "visa", "last4": "4242", "exp_month": 12,
                                      "exp_year": 2045, "fingerprint": card_fingerprint(VISA)}
    stored = await api.store.get_payment(data["id"])
    assert stored is not None
    for text in (json.dumps(data), repr(stored), api.queue.raws[0].decode(), repr(logs)):
        assert VISA not in text
        assert "4242 4242" not in text


async def test_payment_created_is_logged_with_request_id(api: Api) -> None:
    with structlog.testing.capture_logs(
        processors=[add_request_id]
    ) as logs:
        resp, data = await api.post(UPI_BODY, headers={"Request-Id": "trace-42"})
    assert resp.status == 202
    created = [e for e in logs if e["event"] == "payment.created"]
    assert len(created) == 1
    entry = created[0]
    assert entry["log_level"] == "info"
    assert entry["payment_id"] == data["id"]
    assert (entry["amount"], entry["currency"], entry["method"]) == (49900, "INR", "upi")
    assert entry["request_id"] == "trace-42"


@pytest.mark.parametrize(
    ("extra", "details"),
    [({"method": "netbanking", "netbanking": {"bank_code": "HDFC"}}, {"bank_code": "HDFC"}),
     ({"method": "wallet", "wallet": {"wallet": "paytm"}}, {"wallet": "paytm"}),
     ({"method": "card"}, {})],
)
async def test_create_other_methods(api: Api, extra: dict[str, Any], details: Any) -> None:
    resp, data = await api.post({"amount": 5, "currency": "JPY", **extra})
    assert resp.status == 202
    assert (data["method"], data["method_details"]) == (extra["method"], details)


async def test_get_payment(api: Api) -> None:
    _, created = await api.post(UPI_BODY)
    resp = await api.client.get(f"/v1/payments/{created['id']}")
    assert resp.status == 200
    assert resp.content_type == "application/json"
    assert await resp.json() == created
    assert re.fullmatch(r"req_[0-9a-f]{24}", resp.headers["Request-Id"])


async def test_get_unknown_payment_is_404_problem(api: Api) -> None:
    resp = await api.client.get("/v1/payments/pay_nope")
    data = await resp.json(content_type=PROBLEM)
    assert_problem(resp, data, 404, "payment-not-found", "payment_not_found")
    assert "param" not in data


# --- the queue is down: nothing is accepted --------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [redis.exceptions.ConnectionError("Connection refused"), redis.exceptions.TimeoutError(),
     ConnectionResetError(), TimeoutError()],
)
async def test_enqueue_failure_is_503_and_leaves_nothing(api: Api, error: Exception) -> None:
    api.queue.fail = error
    resp, data = await api.post(UPI_BODY)
    assert_problem(resp, data, 503, "queue-unavailable", "queue_unavailable")
    assert resp.headers["Retry-After"] == "1"
    assert len(api.store.created) == 1
    assert await api.store.get_payment(api.store.created[0]) is None
    assert api.queue.raws == []


async def test_unexpected_enqueue_error_is_500_and_leaves_nothing(api: Api) -> None:
    api.queue.fail = ValueError("a bug")
    resp, data = await api.post(UPI_BODY)
    assert_problem(resp, data, 500, "internal-error", "internal_error")
    assert await api.store.get_payment(api.store.created[0]) is None


async def test_queue_recovers(api: Api) -> None:
    api.queue.fail = redis.exceptions.ConnectionError()
    assert (await api.post(UPI_BODY))[0].status == 503
    api.queue.fail = None
    assert (await api.post(UPI_BODY))[0].status == 202
    assert len(api.queue.raws) == 1


# --- validation errors over HTTP -------------------------------------------------------------


@pytest.mark.parametrize(
    ("patch", "param", "code"),
    [({"amount": None}, "amount", "missing"), ({"amount": True}, "amount", "invalid_type"),
     ({"amount": 0}, "amount", "out_of_range"), ({"currency": "ABC"}, "currency",
                                                  "invalid_currency"),
     ({"method": "cash"}, "method", "invalid_method"), ({"tip": 1}, "tip", "unknown_field"),
     ({"card": {"number": VISA}}, "card", "method_mismatch"),
     ({"upi": {"vpa": "nope"}}, "upi.vpa", "invalid_vpa"),
     ({"metadata": {"k": 1}}, "metadata.k", "invalid_type")],
)
async def test_validation_errors_are_422_problems(
    api: Api, patch: dict[str, Any], param: str, code: str
) -> None:
    resp, data = await api.post({**UPI_BODY, **patch})
    assert_problem(resp, data, 422, "validation-error", code)
    assert data["param"] == param
    assert api.store.created == [] and api.queue.raws == []
    assert VISA not in json.dumps(data)


async def test_bad_card_number_is_422_without_echo(api: Api) -> None:
    bad = "4242424242424241"
    body = {"amount": 1, "currency": "EUR", "method": "card",
            "card": {"number": bad, "exp_month": 1, "exp_year": 2040}}
    with structlog.testing.capture_logs() as logs:
        resp, data = await api.post(body)
    assert_problem(resp, data, 422, "validation-error", "invalid_card_number")
    assert data["param"] == "card.number"
    assert bad not in json.dumps(data) and bad not in repr(logs)


# --- malformed bodies ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [b"{", b"", b"   ", b"{'amount': 1}", b'{"amount": NaN}', b"[" * 100_000,
     b"\xff\xfe\x00garbage", b'{"amount": ' + b"1" * 5000 + b"}"],
)
async def test_malformed_json_is_400(make_api: MakeApi, raw: bytes) -> None:
    api = await make_api(max_body_bytes=200_000)
    resp = await api.client.post("/v1/payments", data=raw,
                                 headers={"Content-Type": "application/json"})
    data = await resp.json(content_type=PROBLEM)
    assert_problem(resp, data, 400, "invalid-json", "invalid_json")
    assert "Traceback" not in data["detail"]


@pytest.mark.parametrize("raw", [b"[]", b'"text"', b"42", b"null", b"true"])
async def test_json_that_is_not_an_object_is_400(api: Api, raw: bytes) -> None:
    resp = await api.client.post("/v1/payments", data=raw)
    data = await resp.json(content_type=PROBLEM)
    assert_problem(resp, data, 400, "invalid-body", "invalid_body")


async def test_missing_content_type_is_accepted(api: Api) -> None:
    resp = await api.client.post("/v1/payments", data=json.dumps(UPI_BODY).encode(),
                                 skip_auto_headers=["Content-Type"])
    assert "Content-Type" not in resp.request_info.headers
    assert resp.status == 202


async def test_declared_body_over_limit_is_413_before_reading(make_api: MakeApi) -> None:
    api = await make_api(max_body_bytes=1024)
    body = {**UPI_BODY, "metadata": {"k": "x" * 400, "l": "y" * 400, "m": "z" * 400}}
    resp = await api.client.post("/v1/payments", json=body)
    data = await resp.json(content_type=PROBLEM)
    assert_problem(resp, data, 413, "payload-too-large", "payload_too_large")
    assert "1024" in data["detail"]
    assert api.store.created == [] and api.queue.raws == []


async def test_streamed_body_over_limit_is_413(make_api: MakeApi) -> None:
    api = await make_api(max_body_bytes=1024)

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"amount": 1, "currency": "INR", "method": "upi", "metadata": {"k": "'
        for _ in range(20):
            yield b"x" * 100
        yield b'"}}'

    resp = await api.client.post("/v1/payments", data=chunks())
    assert "Content-Length" not in resp.request_info.headers
    data = await resp.json(content_type=PROBLEM)
    assert_problem(resp, data, 413, "payload-too-large", "payload_too_large")
    assert api.store.created == []


async def test_body_at_limit_is_accepted(make_api: MakeApi) -> None:
    api = await make_api(max_body_bytes=1024)
    raw = json.dumps(UPI_BODY).encode()
    raw = raw + b" " * (1024 - len(raw))
    resp = await api.client.post("/v1/payments", data=raw)
    assert resp.status == 202


# --- routing errors --------------------------------------------------------------------------


async def test_unknown_route_is_404_problem(api: Api) -> None:
    resp = await api.client.get("/v2/nothing")
    data = await resp.json(content_type=PROBLEM)
    assert_problem(resp, data, 404, "not-found", "not_found")


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [("PUT", "/v1/payments", "GET,HEAD,POST"), ("DELETE", "/v1/payments/pay_x", "GET,HEAD"),
     ("POST", "/healthz", "GET,HEAD")],
)
async def test_wrong_method_is_405_problem_with_allow(
    api: Api, method: str, path: str, allow: str
) -> None:
    resp = await api.client.request(method, path)
    data = await resp.json(content_type=PROBLEM)
    assert_problem(resp, data, 405, "method-not-allowed", "method_not_allowed")
    assert resp.headers["Allow"] == allow


# --- Request-Id ------------------------------------------------------------------------------


async def test_request_id_is_echoed(api: Api) -> None:
    rid = "c0ffee-01 trace/7"
    resp = await api.client.get("/v1/payments/pay_missing", headers={"Request-Id": rid})
    assert resp.headers["Request-Id"] == rid
    assert (await resp.json(content_type=PROBLEM))["request_id"] == rid


async def test_request_id_is_generated_and_unique(api: Api) -> None:
    first = (await api.post(UPI_BODY))[0].headers["Request-Id"]
    second = (await api.post(UPI_BODY))[0].headers["Request-Id"]
    assert re.fullmatch(r"req_[0-9a-f]{24}", first)
    assert re.fullmatch(r"req_[0-9a-f]{24}", second)
    assert first != second


@pytest.mark.parametrize("rid", ["x" * 201, "caf\u00e9"])
async def test_insane_request_id_is_replaced(api: Api, rid: str) -> None:
    resp = await api.client.get("/healthz", headers={"Request-Id": rid})
    assert re.fullmatch(r"req_[0-9a-f]{24}", resp.headers["Request-Id"])


async def test_request_id_of_200_chars_is_kept(api: Api) -> None:
    rid = "r" * 200
    resp = await api.client.get("/healthz", headers={"Request-Id": rid})
    assert resp.headers["Request-Id"] == rid


# --- shutdown and unexpected errors ----------------------------------------------------------


async def test_stopping_answers_503_to_everything_but_healthz(api: Api) -> None:
    api.ctx.stopping.set()
    for method, path in [("POST", "/v1/payments"), ("GET", "/v1/payments/pay_x"),
                         ("GET", "/readyz"), ("GET", "/nowhere")]:
        resp = await api.client.request(method, path, json=UPI_BODY)
        data = await resp.json(content_type=PROBLEM)
        assert_problem(resp, data, 503, "shutting-down", "shutting_down")
        assert resp.headers["Retry-After"] == "1"
    assert api.store.created == [] and api.queue.raws == []
    resp = await api.client.get("/healthz")
    assert resp.status == 200


async def test_unexpected_exception_is_500_without_trace(make_api: MakeApi) -> None:
    api = await make_api(store=BrokenStore())
    with structlog.testing.capture_logs() as logs:
        resp, data = await api.post(UPI_BODY)
    assert_problem(resp, data, 500, "internal-error", "internal_error")
    text = json.dumps(data)
    assert "secret-internal-detail" not in text and "Traceback" not in text
    errors = [e for e in logs if e["event"] == "http.unhandled_error"]
    assert len(errors) == 1
    assert errors[0]["log_level"] == "error" and errors[0]["exc_info"] is True
    assert (errors[0]["method"], errors[0]["path"]) == ("POST", "/v1/payments")


async def test_declared_length_is_refused_without_waiting_for_the_body(
    make_api: MakeApi,
) -> None:
    api = await make_api(max_body_bytes=1024)
    server = api.client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        writer.write(b"POST /v1/payments HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                     b"Request-Id: early-413\r\nContent-Length: 1000000\r\n\r\n{\"amount\": ")
        await writer.drain()
        async with asyncio.timeout(5):  # the rest of the body never comes
            head = await reader.readuntil(b"\r\n\r\n")
    finally:
        writer.close()
        await writer.wait_closed()
    assert head.startswith(b"HTTP/1.1 413 ")
    assert b"Content-Type: application/problem+json" in head
    assert b"Request-Id: early-413" in head
