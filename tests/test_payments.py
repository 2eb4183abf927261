"""Processing rules: compare-and-set transitions, one event per terminal state, the seed's lines."""

from __future__ import annotations

import json
from typing import Any

import pytest
from structlog.testing import capture_logs

from payflow.errors import InvalidJob, RetryLater
from payflow.handlers import PaymentHandler
from payflow.jobs import PaymentJob, parse_job
from payflow.models import Event, Payment, PaymentStatus, Refund, event_id_for
from payflow.payments import PaymentService
from payflow.processor import ChargeResult, SimulatedProcessor, card_fingerprint
from payflow.store.memory import MemoryStore


class CountingProcessor:
    def __init__(self, result: ChargeResult | Exception | None = None) -> None:
        self.calls: list[str] = []
        self.result = result or ChargeResult(True)

    async def charge(self, payment: Payment, *, idempotency_key: str) -> ChargeResult:
        self.calls.append(idempotency_key)
        if isinstance(self.result, Exception):
            raise self.result
        return self.result

    async def refund(self, payment: Payment, refund: Refund, *,
                     idempotency_key: str) -> ChargeResult:
        return await self.charge(payment, idempotency_key=idempotency_key)


def service(processor: Any = None, store: MemoryStore | None = None) -> PaymentService:
    return PaymentService(store or MemoryStore(), processor or CountingProcessor(),
                          max_attempts=3)


async def test_legacy_job_creates_the_unknown_payment_and_succeeds() -> None:
    svc = service()
    event = await svc.process(PaymentJob(payment_id="pay_test_1001", method="upi"))
    assert event is not None
    assert event.type == "payment.success"
    assert event.id == event_id_for("pay_test_1001", "payment.success")
    stored = await svc.store.get_payment("pay_test_1001")
    assert stored is not None and stored.status is PaymentStatus.SUCCEEDED
    assert stored.sequence == 2  # pending -> processing -> succeeded
    assert event.data["status"] == "succeeded"


async def test_a_job_delivered_twice_changes_state_once_and_emits_one_event() -> None:
    proc = CountingProcessor()
    svc = service(proc)
    job = PaymentJob(payment_id="pay_1", method="upi")
    first = await svc.process(job)
    assert first is not None
    await svc.store.add_event(first)  # the consumer records it once queued
    assert await svc.process(job) is None
    assert proc.calls == ["pay_1"]  # charged once, with the payment id as idempotency key
    stored = await svc.store.get_payment("pay_1")
    assert stored is not None and stored.sequence == 2


async def test_terminal_payment_whose_event_was_never_queued_requeues_the_same_event() -> None:
    store = MemoryStore()
    svc = service(store=store)
    job = PaymentJob(payment_id="pay_1", method="upi")
    first = await svc.process(job)  # crash before the push: the event was never recorded
    again = await svc.process(job)
    assert first is not None and again is not None
    assert again.id == first.id and again.timestamp == first.timestamp


async def test_processing_left_by_a_crash_is_finished() -> None:
    store = MemoryStore()
    await store.create_payment(Payment(id="pay_1", method="upi",
                                       status=PaymentStatus.PROCESSING))
    event = await service(store=store).process(PaymentJob(payment_id="pay_1"))
    assert event is not None and event.type == "payment.success"


async def test_canceled_payment_is_not_processed_but_its_event_is_queued() -> None:
    store = MemoryStore()
    await store.create_payment(Payment(id="pay_1", method="upi", status=PaymentStatus.CANCELED))
    proc = CountingProcessor()
    svc = service(proc, store)
    event = await svc.process(PaymentJob(payment_id="pay_1"))
    assert proc.calls == []
    assert event is not None and event.type == "payment.canceled"
    await store.add_event(event)
    assert await svc.process(PaymentJob(payment_id="pay_1")) is None  # once only


async def test_snapshot_restores_a_payment_the_store_lost() -> None:
    snap = Payment(id="pay_9", method="card", amount=500, currency="INR").to_dict()
    svc = service()
    event = await svc.process(PaymentJob(payment_id="pay_9", payment=snap))
    assert event is not None and event.data["amount"] == 500


async def test_unknown_payment_without_method_is_invalid() -> None:
    with pytest.raises(InvalidJob, match="unknown payment"):
        await service().process(PaymentJob(payment_id="pay_nope"))


async def test_transient_failure_retries_then_fails_the_payment() -> None:
    proc = CountingProcessor(RetryLater("processor down"))
    svc = service(proc)
    with pytest.raises(RetryLater):
        await svc.process(PaymentJob(payment_id="pay_1", method="upi", attempt=0))
    event = await svc.process(PaymentJob(payment_id="pay_1", method="upi", attempt=2))
    assert event is not None and event.type == "payment.failed"
    assert event.data["failure_code"] == "processor_unavailable"


@pytest.mark.parametrize(
    ("method", "details", "outcome"),
    [
        ("card", {"fingerprint": card_fingerprint("4000000000000002")}, "card_declined"),
        ("card", {"fingerprint": card_fingerprint("4242424242424242")}, None),
        ("upi", {"vpa": "failure@okbank"}, "upi_declined"),
        ("upi", {"vpa": "success@okbank"}, None),
        ("wallet", {}, None),
    ],
)
async def test_simulator_test_values(method: str, details: dict[str, Any],
                                     outcome: str | None) -> None:
    result = await SimulatedProcessor().charge(
        Payment(id="pay_1", method=method, method_details=details), idempotency_key="pay_1")
    assert result.failure_code == outcome
    assert result.succeeded is (outcome is None)


async def test_simulator_failure_rate_and_idempotency() -> None:
    sim = SimulatedProcessor(failure_rate=1.0)
    p = Payment(id="pay_1", method="upi")
    first = await sim.charge(p, idempotency_key="k")
    assert first.failure_code == "processor_declined"
    sim_ok = SimulatedProcessor(failure_rate=0.0)
    assert (await sim_ok.charge(p, idempotency_key="k")).succeeded


async def test_handler_prints_the_seed_lines_and_pushes_one_webhook_job() -> None:
    svc = service()
    handler = PaymentHandler(svc, max_job_bytes=65536)
    with capture_logs() as logs:
        outcome = await handler(b"process_payment:pay_test_1001:upi")
    messages = [e["event"] for e in logs]
    assert messages[0] == "Job received: process_payment:pay_test_1001:upi"
    seed = [m for m in messages if not m.startswith("payment.")]
    assert seed == [
        "Job received: process_payment:pay_test_1001:upi",
        "Processing payment: pay_test_1001",
        "PAYMENT SUCCESS for pay_test_1001",
        "Webhook job queued: webhook:payment.success:pay_test_1001",
    ]
    (pushed,) = outcome.push
    job = parse_job(pushed)
    assert job.legacy_text == "webhook:payment.success:pay_test_1001"
    body = json.loads(pushed)
    assert Event.from_dict(body["event"]).id == event_id_for("pay_test_1001", "payment.success")
    assert outcome.after is not None
    await outcome.after()
    assert await svc.store.get_event(body["event"]["id"]) is not None


async def test_handler_turns_retry_later_into_a_delayed_job() -> None:
    handler = PaymentHandler(service(CountingProcessor(RetryLater("busy", delay=7))),
                             max_job_bytes=65536)
    outcome = await handler(b"process_payment:pay_1:upi")
    ((raw, delay),) = outcome.delay
    assert delay == 7
    job = parse_job(raw)
    assert isinstance(job, PaymentJob) and job.attempt == 1 and job.jid.startswith("job_")


async def test_handler_forwards_a_webhook_job_found_on_the_payment_queue() -> None:
    outcome = await PaymentHandler(service(), max_job_bytes=65536)(
        b"webhook:payment.success:pay_1")
    assert list(outcome.push) == [b"webhook:payment.success:pay_1"]
