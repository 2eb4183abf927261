"""OpenTelemetry tracing (payflow.tracing): one trace follows a payment from the POST through its
job to every webhook attempt, the context crossing the queues in the job envelope ("tp"); off,
the jobs are what they always were."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from structlog.testing import capture_logs

from conftest import ServeApp
from payflow import tracing
from payflow.jobs import PaymentJob, RefundJob, WebhookJob, parse_job
from payflow.models import WebhookEndpoint
from payflow.payments.handler import PaymentHandler
from payflow.payments.processor import SimulatedProcessor
from payflow.payments.service import PaymentService
from payflow.queue.consumer import Outcome
from payflow.store.front import StoreFront
from payflow.store.memory import MemoryStore
from payflow.web.app import create_app
from payflow.web.context import WebContext
from payflow.webhooks.delivery import HttpDelivery, LogSink
from payflow.webhooks.sender import RetryPolicy, WebhookHandler
from payflow.webhooks.ssrf import AddressPolicy
from payflow.webhooks.transport import make_transport

UPI_BODY: dict[str, Any] = {"amount": 49900, "currency": "inr", "method": "upi",
                            "upi": {"vpa": "asha@okhdfc"}}
TRACEPARENT = re.compile(r"00-(?P<trace>[0-9a-f]{32})-(?P<span>[0-9a-f]{16})-[0-9a-f]{2}")
CALLER_TRACE, CALLER_SPAN = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
POLICY = RetryPolicy(schedule=(5.0,), max_attempts=3)


@dataclass
class Gateway:
    """The HTTP API, the payment handler and the webhook handler over one memory store."""

    client: TestClient[web.Request, web.Application]
    store: MemoryStore
    queued: list[bytes] = field(default_factory=list)

    async def post(self, headers: dict[str, str] | None = None) -> bytes:
        """POST a payment; the job it queued."""
        before = len(self.queued)
        resp = await self.client.post("/v1/payments", json=UPI_BODY, headers=headers)
        assert resp.status == 202, await resp.text()
        [raw] = self.queued[before:]
        return raw

    async def process(self, raw: bytes) -> Outcome:
        service = PaymentService(StoreFront(self.store), SimulatedProcessor(), max_attempts=3)
        batch = await PaymentHandler(service, max_job_bytes=65536).batch([raw])
        [outcome] = batch.outcomes
        assert isinstance(outcome, Outcome)
        return outcome

    async def deliver(self, raw: bytes, http: HttpDelivery | None = None,
                      sink: bool = True) -> Outcome:
        handler = WebhookHandler(store=StoreFront(self.store), http=http,
                                 sink=LogSink() if sink else None, policy=POLICY,
                                 max_job_bytes=65536)
        [outcome] = (await handler.batch([raw])).outcomes
        return outcome if isinstance(outcome, Outcome) else await outcome


async def build_gateway(serve_app: ServeApp) -> Gateway:
    store = MemoryStore()
    queued: list[bytes] = []

    async def enqueue(raw: bytes) -> None:
        queued.append(raw)

    async def ping() -> bool:
        return True

    client = await serve_app(create_app(WebContext(store=store, enqueue_payment=enqueue,
                                                   ping=ping)))
    return Gateway(client=client, store=store, queued=queued)


@pytest.fixture
async def gateway(serve_app: ServeApp) -> Gateway:
    """Tracing off."""
    return await build_gateway(serve_app)


@pytest.fixture
async def traced(spans: InMemorySpanExporter, serve_app: ServeApp) -> Gateway:
    """Tracing on before the app is built, as ``payflow serve`` does."""
    return await build_gateway(serve_app)


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[list[dict[str, str]], str]]:
    """A webhook endpoint on 127.0.0.1 answering 200: (the headers of each POST, its URL)."""
    hits: list[dict[str, str]] = []

    async def handle(request: web.Request) -> web.Response:
        hits.append(dict(request.headers))
        return web.Response(status=200 if request.path == "/ok" else 500)

    app = web.Application()
    app.router.add_post("/{name}", handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield hits, f"http://127.0.0.1:{server.port}"
    finally:
        await server.close()


def by_name(exporter: InMemorySpanExporter) -> dict[str, list[ReadableSpan]]:
    found: dict[str, list[ReadableSpan]] = {}
    for span in exporter.get_finished_spans():
        found.setdefault(span.name, []).append(span)
    return found


def ids(span: ReadableSpan) -> tuple[int, int]:
    assert span.context is not None
    return span.context.trace_id, span.context.span_id


def parent_of(span: ReadableSpan) -> tuple[int, int] | None:
    return None if span.parent is None else (span.parent.trace_id, span.parent.span_id)


def tp_of(raw: bytes) -> str | None:
    tp: str | None = json.loads(raw).get("tp")
    return tp


def tp_ids(tp: str | None) -> tuple[int, int]:
    assert tp is not None
    m = TRACEPARENT.fullmatch(tp)
    assert m is not None, tp
    return int(m["trace"], 16), int(m["span"], 16)


# --- one trace per payment -------------------------------------------------------------------


async def test_one_trace_follows_a_payment_to_its_webhook(
        spans: InMemorySpanExporter, traced: Gateway) -> None:
    raw = await traced.post()
    outcome = await traced.process(raw)
    [webhook] = outcome.push
    assert (await traced.deliver(webhook)).dead is None

    found = by_name(spans)
    [post], [process], [deliver] = (found["POST /v1/payments"], found["payment.process"],
                                    found["webhook.deliver"])
    trace_id = ids(post)[0]
    assert post.parent is None and post.kind is SpanKind.SERVER
    assert post.attributes is not None and post.attributes["http.response.status_code"] == 202
    assert tp_ids(tp_of(raw)) == ids(post)  # the payment job carries the POST's context
    assert parent_of(process) == ids(post)
    assert tp_ids(tp_of(webhook)) == ids(process)  # and the webhook job that of the processing
    assert parent_of(deliver) == ids(process)
    assert {ids(s)[0] for s in (post, process, deliver)} == {trace_id}

    payment_id = json.loads(raw)["payment_id"]
    event_id = json.loads(webhook)["event_id"]
    assert process.attributes == {"payflow.payment.id": payment_id, "payflow.job.attempt": 1,
                                  "payflow.outcome": "event", "payflow.event.id": event_id,
                                  "payflow.event.type": "payment.success"}
    assert deliver.attributes == {"payflow.event.id": event_id,
                                  "payflow.event.type": "payment.success",
                                  "payflow.endpoint.id": "log", "payflow.webhook.attempt": 1,
                                  "payflow.outcome": "succeeded"}


async def test_an_incoming_traceparent_is_continued(
        spans: InMemorySpanExporter, traced: Gateway) -> None:
    raw = await traced.post({"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"})
    [post] = by_name(spans)["POST /v1/payments"]
    assert parent_of(post) == (int(CALLER_TRACE, 16), int(CALLER_SPAN, 16))
    assert tp_ids(tp_of(raw)) == ids(post)
    assert ids(post)[0] == int(CALLER_TRACE, 16)


async def test_a_malformed_incoming_traceparent_starts_a_new_trace(
        spans: InMemorySpanExporter, traced: Gateway) -> None:
    raw = await traced.post({"traceparent": "00-nothex-00f067aa0ba902b7-01"})
    [post] = by_name(spans)["POST /v1/payments"]
    assert post.parent is None
    assert tp_ids(tp_of(raw)) == ids(post)


async def test_each_http_attempt_is_a_span_and_sends_its_traceparent(
        spans: InMemorySpanExporter, traced: Gateway,
        receiver: tuple[list[dict[str, str]], str]) -> None:
    """An endpoint that answers 200 and one that answers 500: a span per attempt, the POST's
    ``traceparent`` header naming it; the retry job stays in the payment's trace."""
    hits, base = receiver
    for name in ("ok", "bad"):
        await traced.store.put_endpoint(WebhookEndpoint(id=f"ep_{name}", url=f"{base}/{name}"))
    raw = await traced.post()
    [webhook] = (await traced.process(raw)).push
    guard = AddressPolicy(("127.0.0.0/8",))
    async with aclosing(HttpDelivery(make_transport(guard), timeout=2.0,
                                     policy=guard)) as http:
        outcome = await traced.deliver(webhook, http, sink=False)

    found = by_name(spans)
    [process] = found["payment.process"]
    attempts = {s.attributes["payflow.endpoint.id"]: s for s in found["webhook.deliver"]
                if s.attributes is not None}
    assert set(attempts) == {"ep_ok", "ep_bad"}
    for span in attempts.values():
        assert parent_of(span) == ids(process) and span.kind is SpanKind.CLIENT
    ok, bad = attempts["ep_ok"], attempts["ep_bad"]
    assert ok.attributes is not None and bad.attributes is not None
    assert (ok.attributes["payflow.outcome"], ok.attributes["http.response.status_code"]) == (
        "succeeded", 200)
    assert (bad.attributes["payflow.outcome"], bad.attributes["http.response.status_code"]) == (
        "retrying", 500)
    assert (ok.status.status_code, bad.status.status_code) == (StatusCode.UNSET,
                                                               StatusCode.ERROR)
    sent = {tp_ids(h["traceparent"]) for h in hits}
    assert sent == {ids(ok), ids(bad)}
    [(retry, _)] = outcome.delay
    assert tp_of(retry) == tp_of(webhook)  # a retry is traced as a sibling of this attempt
    assert parse_job(retry) == WebhookJob(
        event_id=json.loads(webhook)["event_id"], event_type="payment.success",
        subject_id=json.loads(raw)["payment_id"], endpoint="ep_bad", attempt=1,
        jid=json.loads(webhook)["jid"], traceparent=tp_of(webhook))


async def test_a_job_without_context_starts_a_trace(spans: InMemorySpanExporter,
                                                    traced: Gateway) -> None:
    """A legacy job (redis-cli LPUSH): its processing is a root span, its webhook follows it."""
    outcome = await traced.process(b"process_payment:pay_legacy_1:upi")
    [webhook] = outcome.push
    [process] = by_name(spans)["payment.process"]
    assert process.parent is None
    assert tp_ids(tp_of(webhook)) == ids(process)


# --- off: nothing changes --------------------------------------------------------------------


async def test_off_the_jobs_carry_no_context(gateway: Gateway) -> None:
    assert not tracing.ON
    raw = await gateway.post()
    assert set(json.loads(raw)) == {"v", "kind", "jid", "attempt", "payment_id"}
    [webhook] = (await gateway.process(raw)).push
    assert "tp" not in json.loads(webhook)
    assert (await gateway.deliver(webhook)).dead is None


def test_jobs_encode_as_before_unless_given_a_context() -> None:
    assert PaymentJob(payment_id="pay_1", jid="job_1").encode() == (
        b'{"v":1,"kind":"payment","jid":"job_1","attempt":0,"payment_id":"pay_1"}')
    assert RefundJob(refund_id="re_1", payment_id="pay_1", jid="job_2").encode() == (
        b'{"v":1,"kind":"refund","jid":"job_2","attempt":0,"refund_id":"re_1",'
        b'"payment_id":"pay_1"}')
    assert WebhookJob(event_id="evt_1", jid="job_3").encode() == (
        b'{"v":1,"kind":"webhook","jid":"job_3","attempt":0,"event_id":"evt_1"}')
    tp = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"
    for job in (PaymentJob(payment_id="pay_1", jid="j", traceparent=tp),
                RefundJob(refund_id="re_1", payment_id="pay_1", jid="j", traceparent=tp),
                WebhookJob(event_id="evt_1", jid="j", traceparent=tp)):
        assert json.loads(job.encode())["tp"] == tp
        assert parse_job(job.encode()) == job


@pytest.mark.parametrize("tp", [
    "garbage", 7, None, ["00"], "",
    f"01-{CALLER_TRACE}-{CALLER_SPAN}-01",  # a version we do not know
    f"00-{CALLER_TRACE.upper()}-{CALLER_SPAN}-01",  # W3C: lowercase hex only
    f"00-{CALLER_TRACE}-{CALLER_SPAN}-01\n",  # the regex's $ would have let this through
    f"00-{CALLER_TRACE}-{CALLER_SPAN}-01-extra",
    f"00-{CALLER_TRACE[:-1]}-{CALLER_SPAN}-01",
])
def test_an_invalid_context_in_a_forged_job_is_ignored(tp: object) -> None:
    for body, expected in (
        ({"kind": "payment", "payment_id": "pay_1"}, PaymentJob(payment_id="pay_1", jid="j")),
        ({"kind": "refund", "refund_id": "re_1", "payment_id": "pay_1"},
         RefundJob(refund_id="re_1", payment_id="pay_1", jid="j")),
        ({"kind": "webhook", "event_id": "evt_1"}, WebhookJob(event_id="evt_1", jid="j")),
    ):
        raw = json.dumps({"v": 1, "jid": "j", "attempt": 0, "tp": tp, **body}).encode()
        assert parse_job(raw) == expected  # a label only: dropped, never a dead letter


async def test_a_forged_context_is_no_reason_to_dead_letter(
        spans: InMemorySpanExporter, traced: Gateway) -> None:
    raw = json.dumps({"v": 1, "kind": "payment", "jid": "j", "attempt": 0,
                      "payment_id": "pay_forged", "method": "upi", "tp": "00-zz"}).encode()
    outcome = await traced.process(raw)
    assert outcome.dead is None and len(outcome.push) == 1
    [process] = by_name(spans)["payment.process"]
    assert process.parent is None  # a trace of its own


# --- setup -----------------------------------------------------------------------------------


@pytest.mark.parametrize("env", [
    {}, {tracing.ENDPOINT_VAR: ""},
    {tracing.ENDPOINT_VAR: "http://collector:4318", "OTEL_SDK_DISABLED": "true"},
])
def test_setup_without_an_endpoint_leaves_tracing_off(monkeypatch: pytest.MonkeyPatch,
                                                      env: dict[str, str]) -> None:
    monkeypatch.delenv(tracing.ENDPOINT_VAR, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with capture_logs() as logs:
        tracing.setup()
    assert not tracing.ON and logs == []


def test_off_payflow_imports_no_opentelemetry() -> None:
    """(redis-py imports OpenTelemetry's metrics API when it is installed: that is not ours.)"""
    code = ("import sys, os; os.environ.pop('OTEL_EXPORTER_OTLP_ENDPOINT', None)\n"
            "import redis.asyncio\n"
            "before = {m for m in sys.modules if m.startswith('opentelemetry')}\n"
            "import payflow.cli.main, payflow.daemon, payflow.payments.handler\n"
            "import payflow.webhooks.sender\n"
            "from payflow import tracing; tracing.setup()\n"
            "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')\n"
            "             and m not in before))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"


def test_setup_with_an_endpoint_exports_over_otlp(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(tracing.ENDPOINT_VAR, "http://127.0.0.1:9")
    with capture_logs() as logs:
        tracing.setup()
    try:
        assert tracing.ON
        assert [(e["event"], e["endpoint"]) for e in logs] == [
            ("tracing.enabled", "http://127.0.0.1:9")]
    finally:
        tracing.shutdown()
    assert not tracing.ON


def test_setup_without_the_packages_says_what_to_install(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(tracing.ENDPOINT_VAR, "http://collector:4318")
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk.resources", None)
    with capture_logs() as logs:
        tracing.setup()
    assert not tracing.ON
    [line] = logs
    assert line["log_level"] == "warning" and line["event"] == "tracing.unavailable"
    assert "pip install 'payflow[otel]'" in line["detail"]
