"""``GET /openapi.json``: a valid OpenAPI 3.1 document that matches the app's routes both ways,
and schemathesis against the running app finds no server error and no answer that the
document does not describe (status, content type, body, headers).

The app runs on a real TCP port (127.0.0.1, a thread of its own) with a MemoryStore, in-memory
queues, ONE API KEY (sent by every schemathesis request) and Idempotency-Key handling over
fakeredis, so the 401, 409/422 replay and Idempotent-Replayed answers are real too. The schema
is loaded from the server's own ``/openapi.json``.

Every operation runs, in this order: cases on seeded resources (so 200/202 answers of real
payments, refunds, events, attempts and endpoints are checked against the schemas), then
Hypothesis-generated positive and negative cases (derandomized: the same cases every run).

App bugs schemathesis found (``FIXED_BUGS``: 500s on malformed URLs and out-of-range times) are
kept as regression cases in ``test_fixed_app_bug``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Final

import fakeredis
import orjson
import pytest
import requests
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from openapi_spec_validator import validate
from schemathesis import APIOperation, BaseSchema, Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from payflow import __version__
from payflow.config import ApiKeyConfig
from payflow.models import (
    DeliveryAttempt,
    EndpointSecret,
    Event,
    Payment,
    PaymentStatus,
    Refund,
    RefundStatus,
    WebhookEndpoint,
)
from payflow.operations import Operations
from payflow.queue import keys
from payflow.queue.deadletters import entry_id
from payflow.store.base import RefundCompletion
from payflow.store.memory import MemoryStore
from payflow.web.app import MAX_REQUEST_ID_LENGTH, create_app
from payflow.web.auth import ALWAYS_OPEN
from payflow.web.context import WebContext
from payflow.web.idempotency import Idempotency
from payflow.web.openapi import document
from payflow.web.problems import MAX_REQUEST_ID_LENGTH as DOCUMENTED_REQUEST_ID_LENGTH

KEY: Final = ApiKeyConfig(name="schemathesis", secret="sk_test_openapi_0123456789")
AUTH: Final = {"Authorization": f"Bearer {KEY.secret}"}
CONFORMANCE: Final = [status_code_conformance, content_type_conformance,
                      response_headers_conformance, response_schema_conformance]
CHECKS: Final = [not_a_server_error, *CONFORMANCE]
MAX_EXAMPLES: Final = 40  # per operation and generation mode
Operation = APIOperation[Any, Any, Any, Any]
METHODS: Final = ("get", "put", "post", "delete", "options", "head", "patch", "trace")

# Seeded resources (created before the run; generated ids never hit them).
PENDING, SUCCEEDED = "pay_pending000000000000000", "pay_succeeded0000000000000"
REFUND = "re_seeded0000000000000000"
ENDPOINT, DISABLED_ENDPOINT = "ep_seeded0000000001", "ep_seeded0000000002"
FUZZ_ENDPOINT = "ep_seeded0000000003"  # PATCHed by the fuzzing: anything may happen to it
PAYMENT_EVENT, REFUND_EVENT = "evt_seeded_payment000000", "evt_seeded_refund0000000"
QUEUES: Final = ("payflow_jobs", "webhook_jobs")
DEAD_ENTRY: Final = (b'{"queue":"payflow_jobs","reason":"seeded","failed_at":'
                     b'"2026-01-01T00:00:00.000Z","consumer":"d:p0","job":"garbage"}')
DEAD_ID: Final = entry_id(DEAD_ENTRY)
# The dashboard's and the API reference's pages and files: served without an API key.
DASHBOARD_PAGES: Final = frozenset({"/dashboard", "/dashboard/{file}", "/docs", "/docs/{file}"})


def _documented_operations() -> list[tuple[str, str]]:
    return [(method.upper(), path) for path, item in document(__version__)["paths"].items()
            for method in item if method in METHODS]


# --- the live server -------------------------------------------------------------------------


@dataclass
class Live:
    """The app on 127.0.0.1:<port>, run by its own event loop in a thread."""

    stopping: bool = False
    api_keys: tuple[ApiKeyConfig, ...] = (KEY,)
    url: str = ""
    raws: list[bytes] = field(default_factory=list)
    _loop: asyncio.AbstractEventLoop | None = None
    _stop: asyncio.Event | None = None
    _thread: threading.Thread | None = None

    def start(self) -> None:
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            try:
                asyncio.run(self._serve(ready))
            except BaseException as exc:  # reported to the starting thread
                failure.append(exc)
                ready.set()

        self._thread = threading.Thread(target=run, name="openapi-live", daemon=True)
        self._thread.start()
        assert ready.wait(10), "the live server did not start"
        if failure:
            raise failure[0]

    async def _serve(self, ready: threading.Event) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        store = MemoryStore()
        await seed(store)
        redis = fakeredis.FakeAsyncRedis()
        await seed_redis(redis)

        async def enqueue(raw: bytes) -> None:
            self.raws.append(raw)

        async def ping() -> bool:
            return True

        ctx = WebContext(store=store, enqueue_payment=enqueue, enqueue_webhook=enqueue,
                         ping=ping, api_keys=self.api_keys,
                         idempotency=Idempotency(redis, ttl_seconds=600, required=False),
                         operations=Operations(redis, QUEUES, store))
        if self.stopping:
            ctx.stopping.set()
        runner = web.AppRunner(create_app(ctx))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        ready.set()
        try:
            await self._stop.wait()
        finally:
            await runner.cleanup()
            await redis.aclose()

    def close(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)


async def seed(store: MemoryStore) -> None:
    """A pending and a partially refunded card payment, a refund, their events, an endpoint
    with attempts and a disabled one."""
    await store.create_payments([Payment(id=PENDING, method="upi", amount=1000, currency="INR",
                                         method_details={"vpa": "asha@okbank"},
                                         metadata={"order": "A-1"})])
    card = {"brand": "visa", "last4": "4242", "exp_month": 12, "exp_year": 2040,
            "fingerprint": "fp_0123"}
    paid = Payment(id=SUCCEEDED, method="card", amount=5000, currency="USD",
                   method_details=card, status=PaymentStatus.SUCCEEDED, sequence=2)
    await store.create_payments([paid])
    refund = Refund(id=REFUND, payment_id=SUCCEEDED, amount=1000, currency="USD")
    assert await store.reserve_refund(refund) is None
    [done] = await store.complete_refunds([RefundCompletion(refund_id=REFUND,
                                                            new=RefundStatus.SUCCEEDED)])
    assert done is not None
    payment_event = Event.for_payment(paid)
    refund_event = done.event  # recorded with the refund's completion
    await store.add_events([
        Event(id=PAYMENT_EVENT, type=payment_event.type, timestamp=payment_event.timestamp,
              data=payment_event.data),
        Event(id=REFUND_EVENT, type=refund_event.type, timestamp=refund_event.timestamp,
              data=refund_event.data)])
    await store.put_endpoint(WebhookEndpoint(id=ENDPOINT, url="https://example.com/hooks",
                                             secrets=(EndpointSecret(secret="whsec_x"),)))
    await store.put_endpoint(WebhookEndpoint(id=FUZZ_ENDPOINT, url="https://example.com/f"))
    await store.put_endpoint(WebhookEndpoint(id=DISABLED_ENDPOINT, url="https://example.org/h",
                                             disabled=True, disabled_reason="gone",
                                             failing_since="2026-01-01T00:00:00.000Z"))
    for number, outcome in enumerate(("retrying", "dead"), start=1):
        await store.add_attempts([DeliveryAttempt(
            id=f"att_{number:016d}", event_id=PAYMENT_EVENT, endpoint_id=ENDPOINT,
            attempt=number, outcome=outcome, status=503, error="HTTP 503", latency_ms=12.34,
            response_body="busy",
            next_retry_at="2030-01-01T00:00:00.000Z" if outcome == "retrying" else None)])


async def seed_redis(redis: fakeredis.FakeAsyncRedis) -> None:
    """Dead letters in both queues and a live daemon with rates."""
    await redis.rpush(keys.dead(QUEUES[0]), DEAD_ENTRY, DEAD_ENTRY.replace(b"garbage", b"g2"))
    await redis.rpush(keys.dead(QUEUES[1]), DEAD_ENTRY.replace(b"payflow", b"webhook"))
    lists = [[q, keys.processing(q, "d:p0")] for q in QUEUES]
    rates = {q: {"done": 1.5, "retried": 0.0, "dead": 0.02} for q in QUEUES}
    await redis.hset(keys.DAEMONS, "d", orjson.dumps({
        "host": "h", "pid": 1, "started_at": "2026-01-01T00:00:00.000Z", "lists": lists,
        "store": "memory", "shared": False, "rates": rates, "rate_window_seconds": 60.0}))
    await redis.set(keys.heartbeat("d"), "2026-01-01T00:00:00.000+00:00")


@pytest.fixture(scope="module")
def live() -> Iterator[Live]:
    server = Live()
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def schema(live: Live) -> BaseSchema:
    """The schema as schemathesis loads it from the running app (no API key needed)."""
    return schemathesis.openapi.from_url(f"{live.url}/openapi.json", timeout=10)


@pytest.fixture(scope="module")
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


# --- the document ----------------------------------------------------------------------------


def test_document_is_valid_openapi_3_1() -> None:
    doc = document(__version__)
    assert doc["openapi"].startswith("3.1.") and doc["info"]["version"] == __version__
    validate(doc)  # openapi-spec-validator picks the 3.1 validator from the version


def test_every_route_is_documented_and_every_operation_exists() -> None:
    async def noop(raw: bytes) -> None:
        return None

    async def ping() -> bool:
        return True

    app = create_app(WebContext(store=MemoryStore(), enqueue_payment=noop, ping=ping))
    routes = {(route.method, route.resource.canonical)
              for route in app.router.routes() if route.resource is not None}
    gets = {path for method, path in routes if method == "GET"}
    # HEAD routes are added by aiohttp beside every GET; they are not operations
    routes = {(m, p) for m, p in routes if not (m == "HEAD" and p in gets)}
    documented = set(_documented_operations())
    assert routes - documented == set(), "routes missing from the document"
    assert documented - routes == set(), "documented operations the app does not have"


def test_security_matches_the_open_paths() -> None:
    doc = document(__version__)
    assert doc["security"] == [{"bearerAuth": []}]
    open_ops = {path for path, item in doc["paths"].items() for method, op in item.items()
                if method in METHODS and op.get("security") == []}
    assert open_ops == set(ALWAYS_OPEN) | DASHBOARD_PAGES
    assert doc["paths"]["/metrics"]["get"]["security"] == [{}, {"bearerAuth": []}]
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if method not in METHODS:
                continue
            secured = op.get("security") != []
            assert ("401" in op["responses"]) is secured, (method, path)
            idempotent = method == "post" and path.startswith("/v1/")
            names = {p.get("$ref", "").rsplit("/", 1)[-1] for p in op["parameters"]}
            assert ("IdempotencyKey" in names) is idempotent, (method, path)
            assert "RequestId" in names
            for status, answer in op["responses"].items():
                assert "Request-Id" in answer["headers"], (method, path, status)


def test_documented_limits_match_the_code() -> None:
    from payflow.models import DELIVERY_OUTCOMES, MAX_ENDPOINT_DESCRIPTION
    from payflow.payments.validation import CARD_BRANDS
    from payflow.web.openapi import document

    doc = document("test")
    parts = doc["components"]
    header = parts["parameters"]["RequestId"]["schema"]
    assert header["maxLength"] == DOCUMENTED_REQUEST_ID_LENGTH == MAX_REQUEST_ID_LENGTH
    schemas = parts["schemas"]
    assert schemas["CardDetails"]["properties"]["brand"]["enum"] == list(CARD_BRANDS)
    assert schemas["DeliveryAttempt"]["properties"]["outcome"]["enum"] == list(DELIVERY_OUTCOMES)
    assert (schemas["WebhookEndpointCreate"]["properties"]["description"]["maxLength"]
            == MAX_ENDPOINT_DESCRIPTION)


def test_the_payment_body_names_every_method_once() -> None:
    """The validator's field sets are read from ``PaymentCreate`` and its detail inputs: one
    details field per method, and nothing else beside amount, currency, method, metadata."""
    from payflow.models import METHODS
    from payflow.payments import validation

    assert {"amount", "currency", "method", "metadata", *METHODS} == validation.TOP_LEVEL_FIELDS
    assert tuple(validation.DETAIL_FIELDS) == tuple(validation.DETAIL_INPUTS) == METHODS
    assert validation.DETAIL_FIELDS["card"] == ("number", "exp_month", "exp_year")


# Request body component -> an operation that reads it, on a seeded resource.
BODIES: Final = {
    "PaymentCreate": ("POST", "/v1/payments"),
    "RefundCreate": ("POST", f"/v1/payments/{SUCCEEDED}/refunds"),
    "WebhookEndpointCreate": ("POST", "/v1/webhook_endpoints"),
    "WebhookEndpointUpdate": ("PATCH", f"/v1/webhook_endpoints/{FUZZ_ENDPOINT}"),
    "EventRetry": ("POST", f"/v1/events/{PAYMENT_EVENT}/retry"),
    "DeadLetterReplay": ("POST", "/v1/dead_letters/replay"),
}


def test_the_documented_request_fields_are_the_ones_the_handlers_know(
        live: Live, http: requests.Session) -> None:
    """Every member a request body declares passes the unknown-field check, and nothing else
    does (a list is no valid value of any of them: each answer is a 422, nothing changes)."""
    schemas = document(__version__)["components"]["schemas"]
    assert {name for name, schema in schemas.items()
            if schema.get("additionalProperties") is False and "properties" in schema
            and not name.endswith("Input")} == set(BODIES)
    for name, (method, path) in BODIES.items():
        for member in [*schemas[name]["properties"], "colour"]:
            resp = http.request(method, live.url + path, json={member: []}, headers=AUTH,
                                timeout=10)
            assert resp.status_code == 422, (name, member, resp.text)
            unknown = resp.json()["code"] == "unknown_field"
            assert unknown is (member == "colour"), (name, member, resp.text)


def test_document_is_served_without_an_api_key(live: Live, http: requests.Session) -> None:
    resp = http.get(f"{live.url}/openapi.json", timeout=10)
    assert resp.status_code == 200
    assert resp.headers["Content-Type"].startswith("application/json")
    assert resp.headers["Request-Id"].startswith("req_")
    assert resp.json() == document(__version__)
    assert http.get(f"{live.url}/v1/payments", timeout=10).status_code == 401


# --- schemathesis ----------------------------------------------------------------------------


def _check(case: Case[Any], live: Live, http: requests.Session) -> int:
    """Send ``case`` with the API key and run the checks; the status."""
    response = case.call_and_validate(base_url=live.url, session=http, headers=AUTH,
                                      checks=CHECKS, timeout=10)
    return response.status_code


# Cases on the seeded resources, with the status each must get: real 200/201/202 answers (and
# a few conflicts and replays) checked against the schemas. They run in the document's order.
_KEY: Final = {"Idempotency-Key": "seeded-replay-1"}
_UPI: Final = {"amount": 1000, "currency": "inr", "method": "upi", "upi": {"vpa": "asha@okbank"}}
SEEDED: Final[dict[tuple[str, str], list[tuple[int, dict[str, Any]]]]] = {
    ("POST", "/v1/payments"): [
        (202, {"body": _UPI, "headers": _KEY}),
        (202, {"body": _UPI, "headers": _KEY}),  # replayed: Idempotent-Replayed
        (422, {"body": {**_UPI, "amount": 1}, "headers": _KEY}),  # the key, another body
        (202, {"body": {"amount": 99_999_999, "currency": "KWD", "method": "card", "card": {
            "number": "4242 4242 4242 4242", "exp_month": 12, "exp_year": 2070},
            "metadata": {"k": "v"}}}),
        (202, {"body": {"amount": 1, "currency": "JPY", "method": "netbanking",
                        "netbanking": {"bank_code": "HDFC"}, "wallet": None}})],
    ("GET", "/v1/payments"): [(200, {"query": {"limit": 1}}),
                              (200, {"query": {"status": "succeeded", "created[gte]": "0"}})],
    ("GET", "/v1/payments/{payment_id}"): [(200, {"path_parameters": {"payment_id": p}})
                                           for p in (PENDING, SUCCEEDED)],
    ("POST", "/v1/payments/{payment_id}/cancel"): [
        (200, {"path_parameters": {"payment_id": PENDING}}),
        (409, {"path_parameters": {"payment_id": PENDING}})],  # already canceled
    ("POST", "/v1/payments/{payment_id}/refunds"): [
        (202, {"path_parameters": {"payment_id": SUCCEEDED}, "body": {"amount": 1}}),
        (422, {"path_parameters": {"payment_id": SUCCEEDED}, "body": {"amount": 10**9}}),
        (409, {"path_parameters": {"payment_id": PENDING}, "body": {}})],
    ("GET", "/v1/refunds/{refund_id}"): [(200, {"path_parameters": {"refund_id": REFUND}})],
    ("POST", "/v1/webhook_endpoints"): [(201, {"body": {
        "url": "https://example.net/hook", "enabled_events": ["payment.success"],
        "description": "d", "disabled": False}})],
    ("GET", "/v1/webhook_endpoints"): [(200, {})],
    ("GET", "/v1/webhook_endpoints/{id}"): [(200, {"path_parameters": {"id": ENDPOINT}})],
    ("PATCH", "/v1/webhook_endpoints/{id}"): [
        (200, {"path_parameters": {"id": ENDPOINT}, "body": {"description": "seeded"}}),
        (422, {"path_parameters": {"id": ENDPOINT}, "body": {"colour": "red"}})],
    ("POST", "/v1/webhook_endpoints/{id}/rotate_secret"): [
        (200, {"path_parameters": {"id": ENDPOINT}})],
    ("POST", "/v1/webhook_endpoints/{id}/recover"): [
        (202, {"path_parameters": {"id": ENDPOINT}, "query": {"since": "2000-01-01T00:00:00Z"}}),
        (409, {"path_parameters": {"id": DISABLED_ENDPOINT}})],
    ("GET", "/v1/events"): [(200, {"query": {"limit": 100}})],
    ("GET", "/v1/events/{id}"): [(200, {"path_parameters": {"id": e}})
                                 for e in (PAYMENT_EVENT, REFUND_EVENT)],
    ("GET", "/v1/events/{id}/attempts"): [(200, {"path_parameters": {"id": PAYMENT_EVENT}})],
    ("POST", "/v1/events/{id}/retry"): [
        (202, {"path_parameters": {"id": PAYMENT_EVENT}, "body": {"endpoint_id": ENDPOINT}}),
        (409, {"path_parameters": {"id": PAYMENT_EVENT},
               "body": {"endpoint_id": DISABLED_ENDPOINT}}),
        (202, {"path_parameters": {"id": PAYMENT_EVENT}})],
    ("GET", "/v1/queues"): [(200, {})],
    ("GET", "/v1/dead_letters"): [(200, {"query": {"queue": QUEUES[0], "limit": 1}}),
                                  (400, {"query": {"queue": "nope"}})],
    ("DELETE", "/v1/dead_letters"): [(200, {"query": {"queue": QUEUES[1]}})],
    ("POST", "/v1/dead_letters/replay"): [
        (200, {"body": {"queue": QUEUES[0], "id": DEAD_ID}}),
        (404, {"body": {"queue": QUEUES[0], "id": DEAD_ID}}),  # replayed already
        (200, {"body": {"queue": QUEUES[0], "all": True}})],
    ("GET", "/v1/payments/{payment_id}/events"): [
        (200, {"path_parameters": {"payment_id": SUCCEEDED}})],
    ("GET", "/v1/webhook_endpoints/{id}/health"): [(200, {"path_parameters": {"id": ENDPOINT}})],
    ("GET", "/dashboard"): [(200, {})],
    ("GET", "/dashboard/{file}"): [(200, {"path_parameters": {"file": f}})
                                   for f in ("app.js", "style.css")],
    ("GET", "/docs"): [(200, {})],
    ("GET", "/docs/{file}"): [(200, {"path_parameters": {"file": f}})
                              for f in ("init.js", "swagger-ui-bundle.js", "swagger-ui.css")],
}


@dataclass(frozen=True)
class Bug:
    """An app bug schemathesis found (a 500), kept as a regression case."""

    operation: tuple[str, str]
    case: dict[str, Any]
    reason: str


FIXED_BUGS: Final = {
    "endpoint-url-urlsplit": Bug(
        ("POST", "/v1/webhook_endpoints"), {"body": {"url": "http://["}},
        "web/endpoints.py _fields: urlsplit() raises ValueError on a malformed URL such as "
        "'http://[' (unbalanced IPv6 bracket) -> 500 instead of 422 invalid_url"),
    "endpoint-url-urlsplit-patch": Bug(
        ("PATCH", "/v1/webhook_endpoints/{id}"),
        {"path_parameters": {"id": FUZZ_ENDPOINT}, "body": {"url": "https://[::1"}},
        "web/endpoints.py _fields (PATCH): the same urlsplit() ValueError -> 500"),
    "created-overflow": Bug(
        ("GET", "/v1/payments"), {"query": {"created[gte]": "0001-01-01T00:00:00+01:00"}},
        "web/params.py time_param: iso(moment) converts to UTC outside the try; a time "
        "whose UTC value is before year 1 or after 9999 raises OverflowError -> 500 "
        "instead of 400 invalid_time"),
    "recover-since-without-zone": Bug(
        ("POST", "/v1/webhook_endpoints/{id}/recover"),
        {"path_parameters": {"id": ENDPOINT}, "query": {"since": "2026-01-01T00:00:00"}},
        "web/endpoints.py recover accepts a since without a zone (or a bare date); "
        "MemoryStore.attempts_since then compares it with the attempts' aware times: "
        "TypeError -> 500 once the endpoint has attempts (422 invalid_time expected)"),
}


# Operation -> path parameters of a seeded resource to fuzz it on as well.
FUZZ_ON: Final[dict[tuple[str, str], dict[str, str]]] = {
    ("POST", "/v1/payments/{payment_id}/refunds"): {"payment_id": SUCCEEDED},
    ("PATCH", "/v1/webhook_endpoints/{id}"): {"id": FUZZ_ENDPOINT},
    ("POST", "/v1/webhook_endpoints/{id}/recover"): {"id": ENDPOINT},
    ("POST", "/v1/events/{id}/retry"): {"id": PAYMENT_EVENT},
}


@pytest.mark.parametrize(("method", "path"), _documented_operations())
def test_schemathesis(method: str, path: str, live: Live, schema: BaseSchema,
                      http: requests.Session) -> None:
    op = schema[path][method]
    for status, seeded in SEEDED.get((method, path), []):
        assert _check(op.Case(**seeded), live, http) == status, seeded
    # Generated path parameters name nothing that exists: some operations are fuzzed on a
    # seeded resource too, or their bodies and queries would only ever meet the 404.
    for fixed in (None, FUZZ_ON[method, path]) if (method, path) in FUZZ_ON else (None,):
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            strategy = op.as_strategy(mode, path_parameters=fixed)

            @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True,
                      database=None, suppress_health_check=[
                          HealthCheck.too_slow, HealthCheck.filter_too_much,
                          HealthCheck.data_too_large])
            @given(case=strategy)
            def run(case: Case[Any]) -> None:
                _check(case, live, http)

            run()


class ServerErrorAnswered(Exception):
    """A fixed bug answers 5xx again."""


@pytest.mark.parametrize("name", list(FIXED_BUGS))
def test_fixed_app_bug(name: str, live: Live, schema: BaseSchema,
                       http: requests.Session) -> None:
    bug = FIXED_BUGS[name]
    method, path = bug.operation
    case = schema[path][method].Case(**bug.case)
    response = case.call(base_url=live.url, session=http, headers=AUTH, timeout=10)
    if response.status_code >= 500:
        raise ServerErrorAnswered(f"{bug.reason}: {response.status_code}: {response.text}")
    case.validate_response(response, checks=CHECKS)  # fixed: then the answer must conform


def _minimal_case(op: Operation) -> Case[Any]:
    case: Case[Any] = op.Case(path_parameters={name: "x" for name in _path_names(op.path)})
    return case


def _path_names(path: str) -> list[str]:
    return [part[1:-1] for part in path.split("/") if part.startswith("{")]


def test_every_operation_documents_its_401(schema: BaseSchema, live: Live,
                                           http: requests.Session) -> None:
    for method, path in _documented_operations():
        case = _minimal_case(schema[path][method])
        response = case.call(base_url=live.url, session=http, timeout=10)
        assert (response.status_code == 401) is (
            path not in ALWAYS_OPEN | DASHBOARD_PAGES | {"/metrics"})
        case.validate_response(response, checks=CHECKS)


def test_every_api_operation_refuses_unknown_query_parameters(
        schema: BaseSchema, live: Live, http: requests.Session) -> None:
    """Every ``/v1/`` operation answers a query parameter it does not take with the 400
    ``unknown_parameter`` it documents, before anything else about the request."""
    api = [(m, p) for m, p in _documented_operations() if p.startswith("/v1/")]
    assert len(api) > 20
    for method, path in api:
        op = schema[path][method]
        case: Case[Any] = op.Case(path_parameters={name: "x" for name in _path_names(path)},
                                  query={"colour": "red"}, headers=dict(AUTH))
        response = case.call(base_url=live.url, session=http, timeout=10)
        assert response.status_code == 400, (method, path, response.text)
        assert response.json()["code"] == "unknown_parameter", (method, path)
        assert response.json()["param"] == "colour"
        case.validate_response(response, checks=CHECKS)


def test_every_operation_documents_shutting_down(schema: BaseSchema,
                                                 http: requests.Session) -> None:
    stopping = Live(stopping=True, api_keys=())
    stopping.start()
    try:
        for method, path in _documented_operations():
            case = _minimal_case(schema[path][method])
            response = case.call(base_url=stopping.url, session=http, timeout=10)
            assert response.status_code == (200 if path == "/healthz" else 503)
            case.validate_response(response, checks=CONFORMANCE)  # a 503 is expected
    finally:
        stopping.close()
