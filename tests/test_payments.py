"""Processing rules: compare-and-set transitions, one event per terminal state, the seed's lines."""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Sequence
from typing import Any

import pytest
from structlog.testing import capture_logs

from payflow.errors import InvalidJob, RetryLater
from payflow.jobs import PaymentJob, RefundJob, WebhookJob, parse_job
from payflow.models import Payment, PaymentStatus, Refund, event_id_for
from payflow.payments.handler import PaymentHandler
from payflow.payments.processor import ChargeResult, SimulatedProcessor, card_fingerprint
from payflow.payments.service import PaymentService
from payflow.store.base import Transition
from payflow.store.front import StoreFront
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

    async def charge_many(self, payments: Sequence[Payment]
                          ) -> list[ChargeResult | RetryLater]:
        results: list[ChargeResult | RetryLater] = []
        for payment in payments:
            try:
                results.append(await self.charge(payment, idempotency_key=payment.id))
            except RetryLater as exc:
                results.append(exc)
        return results

    async def refund(self, payment: Payment, refund: Refund, *,
                     idempotency_key: str) -> ChargeResult:
        return await self.charge(payment, idempotency_key=idempotency_key)


def service(processor: Any = None, store: MemoryStore | None = None) -> PaymentService:
    return PaymentService(StoreFront(store or MemoryStore()), processor or CountingProcessor(),
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
    # the event is recorded with the state change (the outbox), not yet marked enqueued
    assert await svc.store.get_event(event.id) == event
    assert await svc.store.store.unqueued_events("9999-12-31T00:00:00.000Z", 10) == [event]


async def test_a_job_delivered_twice_changes_state_once_and_emits_one_event() -> None:
    proc = CountingProcessor()
    store = MemoryStore()
    svc = service(proc, store)
    job = PaymentJob(payment_id="pay_1", method="upi")
    first = await svc.process(job)
    assert first is not None
    assert await svc.process(job) == first  # queued again: the very same event
    assert proc.calls == ["pay_1"]  # charged once, with the payment id as idempotency key
    stored = await svc.store.get_payment("pay_1")
    assert stored is not None and stored.sequence == 2
    assert [e.id for e in await store.list_events(limit=10)] == [first.id]  # one event


async def test_terminal_payment_whose_event_was_never_queued_requeues_the_same_event() -> None:
    store = MemoryStore()
    svc = service(store=store)
    job = PaymentJob(payment_id="pay_1", method="upi")
    first = await svc.process(job)  # crash before the push: the event was never queued
    again = await svc.process(job)
    assert first is not None and again is not None
    assert again.id == first.id and again.timestamp == first.timestamp
    # recorded with the state change, so the outbox sweeper would queue it too
    assert await store.unqueued_events("9999-12-31T00:00:00.000Z", 10) == [first]


async def test_terminal_payment_whose_event_was_lost_records_it_once() -> None:
    store = MemoryStore()
    await store.create_payments([Payment(id="pay_1", method="upi",
                                         status=PaymentStatus.SUCCEEDED)])
    svc = service(store=store)
    job = PaymentJob(payment_id="pay_1", method="upi")
    first = await svc.process(job)  # no event recorded for it (e.g. pruned): recorded now
    assert first is not None and first.id == event_id_for("pay_1", "payment.success")
    assert await store.get_events([first.id]) == {first.id: first}
    assert await svc.process(job) == first  # the recorded one, not a new one
    assert len(await store.list_events(limit=10)) == 1


async def test_processing_left_by_a_crash_is_finished() -> None:
    store = MemoryStore()
    await store.create_payments([Payment(id="pay_1", method="upi",
                                         status=PaymentStatus.PROCESSING)])
    event = await service(store=store).process(PaymentJob(payment_id="pay_1"))
    assert event is not None and event.type == "payment.success"


async def test_canceled_payment_is_not_processed_and_its_job_queues_the_recorded_event(
        ) -> None:
    store = MemoryStore()
    await store.create_payments([Payment(id="pay_1", method="upi", status=PaymentStatus.PENDING)])
    [changed] = await store.transition([Transition(
        payment_id="pay_1", expected=(PaymentStatus.PENDING,), new=PaymentStatus.CANCELED,
        emit=True)])  # the API's cancel records payment.canceled at once
    assert changed is not None and changed.event is not None
    assert changed.event.type == "payment.canceled"
    proc = CountingProcessor()
    svc = service(proc, store)
    assert await svc.process(PaymentJob(payment_id="pay_1")) == changed.event
    assert proc.calls == []
    assert len(await store.list_events(limit=10)) == 1


async def test_canceled_payment_without_its_event_gets_it_recorded_once() -> None:
    store = MemoryStore()
    await store.create_payments([Payment(id="pay_1", method="upi",
                                         status=PaymentStatus.CANCELED)])
    proc = CountingProcessor()
    svc = service(proc, store)
    event = await svc.process(PaymentJob(payment_id="pay_1"))
    assert proc.calls == []
    assert event is not None and event.type == "payment.canceled"
    assert await svc.process(PaymentJob(payment_id="pay_1")) == event  # the same one
    assert await store.list_events(limit=10) == [event]


async def test_unknown_payment_without_method_is_invalid() -> None:
    svc = service()
    with pytest.raises(InvalidJob, match="unknown payment 'pay_nope'"):
        await svc.process(PaymentJob(payment_id="pay_nope"))
    assert await svc.store.get_payment("pay_nope") is None  # nothing created


async def test_a_payment_envelope_for_an_unknown_payment_is_dead_lettered() -> None:
    # A payment the store does not have (its store was lost, or the job was pushed by hand)
    # is not invented from an envelope without a method.
    handler = PaymentHandler(service(), max_job_bytes=65536)
    raw = PaymentJob(payment_id="pay_gone", jid="job_1").encode()
    outcome = await handler(raw)
    assert outcome.dead is not None and "unknown payment 'pay_gone'" in outcome.dead


async def test_unknown_refund_is_invalid() -> None:
    store = MemoryStore()
    await store.create_payments([Payment(id="pay_1", method="upi", amount=100, currency="INR",
                                         status=PaymentStatus.SUCCEEDED)])
    with pytest.raises(InvalidJob, match="unknown refund 're_nope'"):
        await service(store=store).refund(RefundJob(refund_id="re_nope", payment_id="pay_1"))


async def test_refund_job_takes_the_refund_from_the_store() -> None:
    store = MemoryStore()
    await store.create_payments([Payment(id="pay_1", method="upi", amount=100, currency="INR",
                                         status=PaymentStatus.SUCCEEDED)])
    refund = Refund(id="re_1", payment_id="pay_1", amount=40, currency="INR")
    assert await store.reserve_refund(refund) is None
    svc = service(store=store)
    with pytest.raises(InvalidJob, match="belongs to payment pay_1"):
        await svc.refund(RefundJob(refund_id="re_1", payment_id="pay_2"))
    event = await svc.refund(RefundJob(refund_id="re_1", payment_id="pay_1"))
    assert event is not None and event.type == "refund.success"
    assert event.data["amount"] == 40
    payment = await svc.store.get_payment("pay_1")
    assert payment is not None and payment.status is PaymentStatus.PARTIALLY_REFUNDED
    assert payment.amount_refunded == 40
    again = await svc.refund(RefundJob(refund_id="re_1", payment_id="pay_1"))
    assert again == event  # redelivered: the recorded event again, the refund done once
    payment = await svc.store.get_payment("pay_1")
    assert payment is not None and payment.amount_refunded == 40


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


async def test_simulator_failure_rate() -> None:
    p = Payment(id="pay_1", method="upi")
    declined = await SimulatedProcessor(failure_rate=1.0).charge(p, idempotency_key="k")
    assert declined.failure_code == "processor_declined"
    assert (await SimulatedProcessor(failure_rate=0.0).charge(p, idempotency_key="k")).succeeded


async def test_the_simulator_answers_a_key_it_has_seen_with_the_same_outcome() -> None:
    # The same simulator, a coin-flip failure rate: a key charged again (a crashed consumer's
    # payment charged once more) gets its first outcome back, whatever the coin says now,
    # through charge and through charge_many (which keys by the payment id) alike.
    sim = SimulatedProcessor(failure_rate=0.5, rng=random.Random(7))
    payments = [Payment(id=f"pay_{i}", method="upi") for i in range(40)]
    first = await sim.charge_many(payments)
    assert {isinstance(r, ChargeResult) and r.succeeded for r in first} == {True, False}
    for _ in range(5):
        assert await sim.charge_many(payments) == first
        assert [await sim.charge(p, idempotency_key=p.id) for p in payments] == first


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
    event_id = event_id_for("pay_test_1001", "payment.success")
    job = parse_job(pushed)
    # It names the event (type and payment only label log lines), no more.
    assert job == WebhookJob(event_id=event_id, event_type="payment.success",
                             subject_id="pay_test_1001", jid=job.jid)
    body = json.loads(pushed)
    assert (body["type"], body["payment_id"]) == ("payment.success", "pay_test_1001")
    assert "event" not in body
    # the event is in the store already (recorded with the state change), waiting to be queued
    store = svc.store.store
    event = await svc.store.get_event(event_id)
    assert event is not None and event.data["status"] == "succeeded"
    assert [e.id for e in await store.unqueued_events("9999-12-31T00:00:00.000Z", 10)] == [
        event_id]
    assert outcome.after is not None
    await outcome.after()  # once the push is settled: marked enqueued, nothing to sweep
    assert await store.unqueued_events("9999-12-31T00:00:00.000Z", 10) == []


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


def test_a_moved_payment_is_what_replace_would_give_for_every_field() -> None:
    # Payment.moved is written out by hand for speed: a field added to Payment must be
    # carried over there too, which this test notices (every field set to a non-default).
    values: dict[str, Any] = {
        "id": "pay_1", "method": "card", "amount": 5, "currency": "INR",
        "method_details": {"last4": "4242"}, "status": PaymentStatus.PROCESSING,
        "metadata": {"k": "v"}, "created_at": "2026-01-01T00:00:00.000Z",
        "updated_at": "2026-01-01T00:00:01.000Z", "failure_code": "x",
        "failure_message": "y", "sequence": 3, "amount_refunded": 2}
    assert set(values) == {f.name for f in dataclasses.fields(Payment)}
    payment = Payment(**values)
    moved = payment.moved(PaymentStatus.FAILED, "2026-01-01T00:00:02.000Z", "c", "m")
    assert moved == dataclasses.replace(
        payment, status=PaymentStatus.FAILED, updated_at="2026-01-01T00:00:02.000Z",
        failure_code="c", failure_message="m", sequence=4)
