"""The rules of processing payments and refunds, and the payment job handler, asserted where a
plausible bug would break them (each test here kills mutants of ``payments/service.py`` or
``payments/handler.py`` that ``test_payments.py`` lets through; README, Testing)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from structlog.testing import capture_logs

from payflow import metrics, tracing
from payflow.errors import InvalidJob, RetryLater
from payflow.jobs import PaymentJob, RefundJob, WebhookJob, parse_job
from payflow.models import Event, Payment, PaymentStatus, Refund, RefundStatus, event_id_for
from payflow.payments.handler import PaymentHandler
from payflow.payments.processor import ChargeResult
from payflow.payments.service import PaymentService
from payflow.queue.consumer import DONE
from payflow.store.base import RefundCompletion, Transition
from payflow.store.front import StoreFront
from payflow.store.memory import MemoryStore

FAR = "9999-12-31T00:00:00.000Z"


class Scripted:
    """A processor answering each payment id (and refund id) as told; counts calls."""

    def __init__(self, answers: dict[str, ChargeResult | RetryLater] | None = None) -> None:
        self.answers = answers or {}
        self.charged: list[list[str]] = []
        self.refunded: list[str] = []
        self.refunded_payments: list[str] = []

    async def charge(self, payment: Payment, *, idempotency_key: str) -> ChargeResult:
        raise AssertionError("the service charges in batches")

    async def charge_many(self, payments: Sequence[Payment]
                          ) -> list[ChargeResult | RetryLater]:
        self.charged.append([p.id for p in payments])
        return [self.answers.get(p.id, ChargeResult(True)) for p in payments]

    async def refund(self, payment: Payment, refund: Refund, *,
                     idempotency_key: str) -> ChargeResult:
        assert idempotency_key == refund.id
        self.refunded.append(refund.id)
        self.refunded_payments.append(payment.id)
        answer = self.answers.get(refund.id, ChargeResult(True))
        if isinstance(answer, RetryLater):
            raise answer
        return answer


def finishing_elsewhere(store: MemoryStore) -> Scripted:
    """A processor during whose charge another consumer finishes ``pay_1`` (succeeded)."""

    class Racing(Scripted):
        async def charge_many(self, payments: Sequence[Payment]
                              ) -> list[ChargeResult | RetryLater]:
            await store.transition([Transition(
                payment_id="pay_1", expected=(PaymentStatus.PROCESSING,),
                new=PaymentStatus.SUCCEEDED, emit=True)])
            return await super().charge_many(payments)

    return Racing()


def service(processor: Any = None, store: MemoryStore | None = None,
            max_attempts: int = 3) -> PaymentService:
    return PaymentService(StoreFront(store or MemoryStore()), processor or Scripted(),
                          max_attempts=max_attempts)


def sample(name: str, labels: dict[str, str]) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


async def paid(store: MemoryStore, payment_id: str = "pay_1", amount: int = 100) -> None:
    await store.create_payments([Payment(id=payment_id, method="upi", amount=amount,
                                         currency="INR", status=PaymentStatus.SUCCEEDED)])


async def reserved(store: MemoryStore, refund_id: str = "re_1", amount: int = 40) -> Refund:
    refund = Refund(id=refund_id, payment_id="pay_1", amount=amount, currency="INR")
    assert await store.reserve_refund(refund) is None
    return refund


# --- payments ---------------------------------------------------------------------------------


async def test_a_batch_processes_each_payment_and_answers_in_job_order() -> None:
    """One charge call for the batch; results in the jobs' order, an unknown payment's
    InvalidJob in its place, and each succeeded or failed payment's own event."""
    store = MemoryStore()
    await store.create_payments([Payment(id="pay_a", method="upi"),
                                 Payment(id="pay_b", method="upi")])
    proc = Scripted({"pay_b": ChargeResult(False, "card_declined", "no")})
    svc = service(proc, store)
    results = await svc.process_many([PaymentJob(payment_id="pay_a"),
                                      PaymentJob(payment_id="pay_x"),
                                      PaymentJob(payment_id="pay_b")])
    assert proc.charged == [["pay_a", "pay_b"]]
    a, x, b = results
    assert isinstance(a, Event) and a.id == event_id_for("pay_a", "payment.success")
    assert isinstance(x, InvalidJob) and "unknown payment 'pay_x'" in x.reason
    assert isinstance(b, Event) and b.id == event_id_for("pay_b", "payment.failed")
    assert b.data["failure_code"] == "card_declined" and b.data["failure_message"] == "no"
    stored = await store.get_payments(["pay_a", "pay_b"])
    assert stored["pay_a"].status is PaymentStatus.SUCCEEDED
    assert stored["pay_b"].status is PaymentStatus.FAILED
    assert stored["pay_b"].failure_code == "card_declined"


async def test_a_payment_named_twice_in_a_batch_is_processed_once() -> None:
    """The later job goes after the first: it finds the payment finished and gets the same
    event; the payment is charged once."""
    store = MemoryStore()
    await store.create_payments([Payment(id="pay_a", method="upi"),
                                 Payment(id="pay_b", method="upi")])
    proc = Scripted()
    svc = service(proc, store)
    results = await svc.process_many([PaymentJob(payment_id="pay_a"),
                                      PaymentJob(payment_id="pay_b"),
                                      PaymentJob(payment_id="pay_a", attempt=1)])
    assert proc.charged == [["pay_a", "pay_b"]]
    assert results[0] == results[2] and isinstance(results[0], Event)
    assert isinstance(results[1], Event) and results[1].data["id"] == "pay_b"
    assert len(await store.list_events(limit=10)) == 2


async def test_a_claim_lost_to_a_cancel_queues_the_canceled_event_and_charges_nothing(
        ) -> None:
    """Pending when loaded, canceled before the claim: the job is looked at again and gets
    the canceled payment's event; nothing is charged."""
    store = MemoryStore()
    await store.create_payments([Payment(id="pay_1", method="upi"),
                                 Payment(id="pay_2", method="upi")])

    real_transition = store.transition
    canceled: list[Any] = []

    async def transition(changes: Sequence[Transition]) -> list[Any]:
        if not canceled:  # the API's cancel gets there first, for pay_1
            canceled.extend(await real_transition([Transition(
                payment_id="pay_1", expected=(PaymentStatus.PENDING,),
                new=PaymentStatus.CANCELED, emit=True)]))
        return await real_transition(changes)

    store.transition = transition  # type: ignore[method-assign,assignment]
    proc = Scripted()
    results = await service(proc, store).process_many([PaymentJob(payment_id="pay_1"),
                                                       PaymentJob(payment_id="pay_2")])
    assert proc.charged == [["pay_2"]]
    first, second = results
    assert isinstance(first, Event) and first == canceled[0].event
    assert isinstance(second, Event) and second.type == "payment.success"


@pytest.mark.parametrize(("attempt", "retried"), [(0, True), (1, True), (2, False)])
async def test_a_transient_failure_is_retried_until_the_last_attempt(
        attempt: int, retried: bool) -> None:
    """max_attempts 3: attempts 0 and 1 (the first and second) are retried, the third fails
    the payment with processor_unavailable."""
    proc = Scripted({"pay_1": RetryLater("busy", delay=4)})
    store = MemoryStore()
    await store.create_payments([Payment(id="pay_1", method="upi")])
    [result] = await service(proc, store).process_many([PaymentJob(payment_id="pay_1",
                                                                   attempt=attempt)])
    stored = await StoreFront(store).get_payment("pay_1")
    assert stored is not None
    if retried:
        assert isinstance(result, RetryLater) and result.delay == 4
        assert stored.status is PaymentStatus.PROCESSING
    else:
        assert isinstance(result, Event) and result.type == "payment.failed"
        assert stored.status is PaymentStatus.FAILED
        assert (stored.failure_code, stored.failure_message) == ("processor_unavailable", "busy")


async def test_finished_payments_are_counted_by_status_once() -> None:
    store = MemoryStore()
    await store.create_payments([Payment(id=f"pay_{i}", method="upi") for i in range(3)])
    proc = Scripted({"pay_2": ChargeResult(False, "card_declined")})
    before = {s: sample("payflow_payments_total", {"status": s})
              for s in ("succeeded", "failed")}
    svc = service(proc, store)
    await svc.process_many([PaymentJob(payment_id=f"pay_{i}") for i in range(3)])
    await svc.process_many([PaymentJob(payment_id=f"pay_{i}") for i in range(3)])  # again
    after = {s: sample("payflow_payments_total", {"status": s}) for s in before}
    assert {s: after[s] - before[s] for s in before} == {"succeeded": 2, "failed": 1}


async def test_a_payment_finished_elsewhere_has_nothing_to_queue() -> None:
    """Another consumer finished it between our claim and our finish: that one queues the
    event; ours answers None and counts nothing."""
    store = MemoryStore()
    await store.create_payments([Payment(id="pay_1", method="upi",
                                         status=PaymentStatus.PROCESSING)])

    before = sample("payflow_payments_total", {"status": "succeeded"})
    with capture_logs() as logs:
        [result] = await service(finishing_elsewhere(store), store).process_many(
            [PaymentJob(payment_id="pay_1")])
    assert result is None
    assert sample("payflow_payments_total", {"status": "succeeded"}) == before
    assert any(e["event"] == "payment.finished_elsewhere" for e in logs)


async def test_a_redelivered_finished_payment_requeues_its_recorded_event() -> None:
    """Finished, its event recorded (and perhaps pushed by a settle that was lost): the
    redelivered job queues the recorded event itself, not a new one, and adds none."""
    store = MemoryStore()
    svc = service(store=store)
    first = await svc.process(PaymentJob(payment_id="pay_1", method="upi"))
    assert first is not None
    recorded = await store.get_events([first.id])
    assert recorded == {first.id: first}
    again = await svc.process(PaymentJob(payment_id="pay_1", method="upi"))
    assert again is not None
    assert again == first and again.timestamp == first.timestamp and again.data == first.data
    assert len(await store.list_events(limit=10)) == 1


async def test_only_missing_events_are_recorded_when_requeueing() -> None:
    store = MemoryStore()
    svc = service(store=store)
    done = await svc.process(PaymentJob(payment_id="pay_a", method="upi"))
    await store.create_payments([Payment(id="pay_b", method="upi",
                                         status=PaymentStatus.FAILED)])
    added: list[list[str]] = []
    real_add = store.add_events

    async def add_events(events: Sequence[Event]) -> None:
        added.append([e.id for e in events])
        await real_add(events)

    store.add_events = add_events  # type: ignore[method-assign]
    results = await svc.process_many([PaymentJob(payment_id="pay_a"),
                                      PaymentJob(payment_id="pay_b")])
    assert added == [[event_id_for("pay_b", "payment.failed")]]
    assert results[0] == done
    assert isinstance(results[1], Event) and results[1].type == "payment.failed"


async def test_a_legacy_job_creates_its_payment_only_when_unknown() -> None:
    store = MemoryStore()
    await store.create_payments([Payment(id="pay_known", method="card", amount=5,
                                         currency="INR")])
    created: list[list[str]] = []
    real_create = store.create_payments

    async def create_payments(payments: Sequence[Payment]) -> list[Payment]:
        created.append([p.id for p in payments])
        return await real_create(payments)

    store.create_payments = create_payments  # type: ignore[method-assign]
    results = await service(store=store).process_many([
        PaymentJob(payment_id="pay_known", method="upi"),
        PaymentJob(payment_id="pay_new", method="wallet"),
        PaymentJob(payment_id="pay_none")])
    assert created == [["pay_new"]]
    assert isinstance(results[0], Event) and results[0].data["method"] == "card"
    assert isinstance(results[1], Event) and results[1].data["method"] == "wallet"
    assert isinstance(results[2], InvalidJob)
    assert "gives a method to create one" in results[2].reason
    assert await StoreFront(store).get_payment("pay_none") is None


async def test_process_raises_what_process_many_answers() -> None:
    proc = Scripted({"pay_1": RetryLater("busy")})
    svc = service(proc)
    with pytest.raises(RetryLater, match="busy"):
        await svc.process(PaymentJob(payment_id="pay_1", method="upi"))
    with pytest.raises(InvalidJob):
        await svc.process(PaymentJob(payment_id="pay_2"))
    assert await svc.process(PaymentJob(payment_id="pay_3", method="upi")) is not None


# --- refunds ----------------------------------------------------------------------------------


async def test_a_refund_completed_twice_is_counted_once() -> None:
    store = MemoryStore()
    await paid(store)
    await reserved(store)
    proc = Scripted()
    svc = service(proc, store)
    before = sample("payflow_refunds_total", {"status": "succeeded"})
    first = await svc.refund(RefundJob(refund_id="re_1", payment_id="pay_1"))
    assert first is not None and first.type == "refund.success"
    assert await svc.refund(RefundJob(refund_id="re_1", payment_id="pay_1")) == first
    assert sample("payflow_refunds_total", {"status": "succeeded"}) - before == 1
    assert proc.refunded == ["re_1"]  # the redelivered job does not refund again
    assert proc.refunded_payments == ["pay_1"]  # the refund's payment, from the store


async def test_a_refund_finished_elsewhere_has_nothing_to_queue() -> None:
    store = MemoryStore()
    await paid(store)
    await reserved(store)

    class Racing(Scripted):
        async def refund(self, payment: Payment, refund: Refund, *,
                         idempotency_key: str) -> ChargeResult:
            await StoreFront(store).complete_refund(RefundCompletion(refund_id=refund.id,
                                                         new=RefundStatus.SUCCEEDED))
            return ChargeResult(True)

    before = sample("payflow_refunds_total", {"status": "succeeded"})
    assert await service(Racing(), store).refund(
        RefundJob(refund_id="re_1", payment_id="pay_1")) is None
    assert sample("payflow_refunds_total", {"status": "succeeded"}) == before


async def test_a_declined_refund_fails_with_the_processor_reason() -> None:
    store = MemoryStore()
    await paid(store)
    await reserved(store)
    proc = Scripted({"re_1": ChargeResult(False, "refund_declined", "too late")})
    before = sample("payflow_refunds_total", {"status": "failed"})
    with capture_logs() as logs:
        event = await service(proc, store).refund(RefundJob(refund_id="re_1",
                                                            payment_id="pay_1"))
    assert event is not None and event.type == "refund.failed"
    assert event.data["failure_code"] == "refund_declined"
    assert event.data["failure_message"] == "too late"
    refund = await StoreFront(store).get_refund("re_1")
    assert refund is not None and refund.status is RefundStatus.FAILED
    payment = await StoreFront(store).get_payment("pay_1")
    assert payment is not None and payment.amount_refunded == 0
    assert sample("payflow_refunds_total", {"status": "failed"}) - before == 1
    assert any(e["event"] == "REFUND FAILED for re_1" for e in logs)


@pytest.mark.parametrize(("attempt", "retried"), [(0, True), (1, True), (2, False)])
async def test_a_refund_transient_failure_is_retried_until_the_last_attempt(
        attempt: int, retried: bool) -> None:
    store = MemoryStore()
    await paid(store)
    await reserved(store)
    svc = service(Scripted({"re_1": RetryLater("busy")}), store)
    job = RefundJob(refund_id="re_1", payment_id="pay_1", attempt=attempt)
    refund = await StoreFront(store).get_refund("re_1")
    assert refund is not None
    if retried:
        with pytest.raises(RetryLater):
            await svc.refund(job)
        refund = await StoreFront(store).get_refund("re_1")
        assert refund is not None and refund.status is RefundStatus.PENDING
    else:
        event = await svc.refund(job)
        assert event is not None and event.type == "refund.failed"
        assert event.data["failure_code"] == "processor_unavailable"
        assert event.data["failure_message"] == "busy"


async def test_a_refund_of_an_unknown_payment_is_invalid() -> None:
    store = MemoryStore()
    await paid(store)
    await reserved(store)
    svc = service(store=store)

    async def no_payment(payment_id: str) -> None:  # its payment was pruned meanwhile
        return None

    svc.store.get_payment = no_payment
    with pytest.raises(InvalidJob, match="refund re_1 is for the unknown payment 'pay_1'"):
        await svc.refund(RefundJob(refund_id="re_1", payment_id="pay_1"))


# --- the handler ------------------------------------------------------------------------------


def handler_of(svc: PaymentService, **kwargs: Any) -> PaymentHandler:
    return PaymentHandler(svc, max_job_bytes=65536, **kwargs)


async def test_a_retry_job_carries_the_next_attempt_and_a_backoff_delay() -> None:
    """No delay from the processor: full jitter over retry_base * 2**attempt, capped by
    retry_max; the job goes back with attempt + 1 and keeps its jid."""
    proc = Scripted({"pay_1": RetryLater("busy")})
    store = MemoryStore()
    await store.create_payments([Payment(id="pay_1", method="upi")])
    svc = service(proc, store, max_attempts=10)
    h = handler_of(svc, retry_base_seconds=2.0, retry_max_seconds=5.0, rng=random.Random(1))
    delays = []
    for attempt in (0, 1, 2, 6):
        raw = PaymentJob(payment_id="pay_1", attempt=attempt, jid="job_abc").encode()
        batch = await h.batch([raw])
        [outcome] = batch.outcomes
        assert not isinstance(outcome, type(DONE)) or outcome.delay
        assert hasattr(outcome, "delay")
        ((again, delay),) = outcome.delay
        job = parse_job(again)
        assert isinstance(job, PaymentJob)
        assert (job.attempt, job.jid, job.payment_id) == (attempt + 1, "job_abc", "pay_1")
        delays.append(delay)
    expected_rng = random.Random(1)
    assert delays == [expected_rng.uniform(0, min(5.0, 2.0 * 2 ** a)) for a in (0, 1, 2, 6)]


async def test_a_legacy_retry_gets_a_jid() -> None:
    proc = Scripted({"pay_1": RetryLater("busy", delay=3)})
    h = handler_of(service(proc))
    [outcome] = (await h.batch([b"process_payment:pay_1:upi"])).outcomes
    ((again, delay),) = outcome.delay  # type: ignore[union-attr]
    job = parse_job(again)
    assert delay == 3 and isinstance(job, PaymentJob) and job.jid.startswith("job_")
    assert job.attempt == 1 and job.method == "upi"


async def test_a_batch_pushes_each_event_and_marks_them_enqueued_after() -> None:
    store = MemoryStore()
    svc = service(store=store)
    h = handler_of(svc)
    batch = await h.batch([b"process_payment:pay_a:upi", b"not a job",
                           b"process_payment:pay_b:upi", b"webhook:payment.success:pay_z"])
    a, bad, b, hook = batch.outcomes
    assert bad.dead is not None  # type: ignore[union-attr]
    assert list(hook.push) == [b"webhook:payment.success:pay_z"]  # type: ignore[union-attr]
    for outcome, pid in ((a, "pay_a"), (b, "pay_b")):
        (pushed,) = outcome.push  # type: ignore[union-attr]
        job = parse_job(pushed)
        assert isinstance(job, WebhookJob)
        assert job.event_id == event_id_for(pid, "payment.success")
    assert len(await store.unqueued_events(FAR, 10)) == 2
    assert batch.after is not None
    await batch.after()
    assert await store.unqueued_events(FAR, 10) == []


async def test_a_batch_without_payment_jobs_has_no_after() -> None:
    h = handler_of(service())
    batch = await h.batch([b"not a job", b"webhook:payment.success:pay_z"])
    assert batch.after is None
    store = MemoryStore()
    await store.create_payments([Payment(id="pay_1", method="upi")])
    proc = Scripted({"pay_1": RetryLater("busy", delay=1)})
    batch = await handler_of(service(proc, store)).batch([b"process_payment:pay_1:upi"])
    assert batch.after is None  # nothing to mark enqueued


async def test_an_invalid_payment_job_is_dead_lettered_with_its_reason() -> None:
    h = handler_of(service())
    [outcome] = (await h.batch([PaymentJob(payment_id="pay_gone", jid="j").encode()])).outcomes
    assert outcome.dead is not None  # type: ignore[union-attr]
    assert "unknown payment 'pay_gone'" in outcome.dead  # type: ignore[union-attr]
    assert not outcome.push and not outcome.delay  # type: ignore[union-attr]


async def test_a_payment_finished_elsewhere_is_acked() -> None:
    store = MemoryStore()
    await store.create_payments([Payment(id="pay_1", method="upi",
                                         status=PaymentStatus.PROCESSING)])

    batch = await handler_of(service(finishing_elsewhere(store), store)).batch(
        [PaymentJob(payment_id="pay_1").encode()])
    assert batch.outcomes == [DONE] and batch.after is None


async def test_a_refund_job_pushes_its_event_and_marks_it_enqueued_after() -> None:
    store = MemoryStore()
    await paid(store)
    await reserved(store)
    h = handler_of(service(store=store))
    raw = RefundJob(refund_id="re_1", payment_id="pay_1").encode()
    [pending] = (await h.batch([raw])).outcomes
    assert not hasattr(pending, "push")  # it runs on, as its own task
    outcome = await pending
    (pushed,) = outcome.push
    job = parse_job(pushed)
    assert isinstance(job, WebhookJob) and job.event_type == "refund.success"
    assert [e.id for e in await store.unqueued_events(FAR, 10)] == [job.event_id]
    assert outcome.after is not None
    await outcome.after()
    assert await store.unqueued_events(FAR, 10) == []


async def test_a_refund_job_that_fails_or_waits_has_no_after() -> None:
    store = MemoryStore()
    await paid(store)
    await reserved(store)
    h = handler_of(service(Scripted({"re_1": RetryLater("busy", delay=2)}), store))
    raw = RefundJob(refund_id="re_1", payment_id="pay_1").encode()
    [pending] = (await h.batch([raw])).outcomes
    outcome = await pending  # type: ignore[misc]
    ((again, delay),) = outcome.delay
    job = parse_job(again)
    assert delay == 2 and isinstance(job, RefundJob) and job.attempt == 1
    assert outcome.after is None
    [pending] = (await h.batch([RefundJob(refund_id="re_x", payment_id="pay_1").encode()]
                               )).outcomes
    outcome = await pending  # type: ignore[misc]
    assert outcome.dead is not None and "unknown refund 're_x'" in outcome.dead
    assert outcome.after is None


async def test_a_refund_that_succeeds_says_so_in_the_seed_line() -> None:
    store = MemoryStore()
    await paid(store)
    await reserved(store)
    with capture_logs() as logs:
        await service(store=store).refund(RefundJob(refund_id="re_1", payment_id="pay_1"))
    assert [e["event"] for e in logs if e["event"].startswith("REFUND ")] == [
        "REFUND SUCCESS for re_1"]


async def test_the_invalid_job_reasons_say_what_is_wrong() -> None:
    store = MemoryStore()
    await paid(store)
    svc = service(store=store)
    [result] = await svc.process_many([PaymentJob(payment_id="pay_x")])
    assert isinstance(result, InvalidJob)
    assert result.reason == ("unknown payment 'pay_x' (a job names a payment the API created, "
                             "or gives a method to create one)")
    with pytest.raises(InvalidJob) as caught:
        await svc.refund(RefundJob(refund_id="re_x", payment_id="pay_1"))
    assert caught.value.reason == ("unknown refund 're_x' (refunds are created through the "
                                   "API)")


# --- the batch goes on past one payment's answer ----------------------------------------------


async def test_a_retry_in_a_batch_does_not_hold_back_the_payments_after_it() -> None:
    store = MemoryStore()
    await store.create_payments([Payment(id="pay_a", method="upi"),
                                 Payment(id="pay_b", method="upi")])
    proc = Scripted({"pay_a": RetryLater("busy")})
    a, b = await service(proc, store).process_many([PaymentJob(payment_id="pay_a"),
                                                    PaymentJob(payment_id="pay_b")])
    assert isinstance(a, RetryLater)
    assert isinstance(b, Event) and b.type == "payment.success"
    stored = await store.get_payments(["pay_a", "pay_b"])
    assert stored["pay_a"].status is PaymentStatus.PROCESSING
    assert stored["pay_b"].status is PaymentStatus.SUCCEEDED


async def test_one_payment_finished_elsewhere_does_not_hold_back_the_others() -> None:
    store = MemoryStore()
    await store.create_payments([Payment(id="pay_a", method="upi",
                                         status=PaymentStatus.PROCESSING),
                                 Payment(id="pay_b", method="upi",
                                         status=PaymentStatus.PROCESSING)])

    class Racing(Scripted):
        async def charge_many(self, payments: Sequence[Payment]
                              ) -> list[ChargeResult | RetryLater]:
            await store.transition([Transition(
                payment_id="pay_a", expected=(PaymentStatus.PROCESSING,),
                new=PaymentStatus.FAILED, emit=True)])
            return await super().charge_many(payments)

    with capture_logs():
        a, b = await service(Racing(), store).process_many([PaymentJob(payment_id="pay_a"),
                                                            PaymentJob(payment_id="pay_b")])
    assert a is None
    assert isinstance(b, Event) and b.type == "payment.success"


async def test_a_redelivered_job_queues_the_recorded_event_not_one_derived_again() -> None:
    """What the store recorded with the transition is what goes out again, even where
    deriving it now from the payment would give something else."""
    store = MemoryStore()
    await store.create_payments([Payment(id="pay_1", method="upi",
                                         status=PaymentStatus.SUCCEEDED)])
    payment = await StoreFront(store).get_payment("pay_1")
    assert payment is not None
    derived = Event.for_payment(payment)
    recorded = Event(id=derived.id, type=derived.type, data={**derived.data, "note": "then"},
                     timestamp="2026-01-01T00:00:00.000Z")
    await store.add_events([recorded])
    [result] = await service(store=store).process_many([PaymentJob(payment_id="pay_1")])
    assert result == recorded


# --- a processor or store that answers too few results is an error, not a silent ack ---------


async def test_a_processor_answering_too_few_results_fails_the_batch() -> None:
    store = MemoryStore()
    await store.create_payments([Payment(id="pay_a", method="upi"),
                                 Payment(id="pay_b", method="upi")])

    class Short(Scripted):
        async def charge_many(self, payments: Sequence[Payment]
                              ) -> list[ChargeResult | RetryLater]:
            return [ChargeResult(True)]

    with pytest.raises(ValueError, match="zip"):
        await service(Short(), store).process_many([PaymentJob(payment_id="pay_a"),
                                                    PaymentJob(payment_id="pay_b")])


@pytest.mark.parametrize("call", [1, 2])
async def test_a_store_answering_too_few_transitions_fails_the_batch(call: int) -> None:
    """The claim (first call) or the finish (second): a store that answers fewer changes than
    it was given breaks its contract; the batch fails (and is retried job by job)."""
    store = MemoryStore()
    await store.create_payments([Payment(id="pay_a", method="upi"),
                                 Payment(id="pay_b", method="upi")])
    real_transition = store.transition
    calls = 0

    async def transition(changes: Sequence[Transition]) -> list[Any]:
        nonlocal calls
        calls += 1
        done = await real_transition(changes)
        return done[:1] if calls == call else done

    store.transition = transition  # type: ignore[method-assign,assignment]
    with pytest.raises(ValueError, match="zip"):
        await service(store=store).process_many([PaymentJob(payment_id="pay_a"),
                                                 PaymentJob(payment_id="pay_b")])


async def test_the_default_is_five_attempts() -> None:
    for attempt, retried in ((3, True), (4, False)):
        store = MemoryStore()
        await store.create_payments([Payment(id="pay_1", method="upi")])
        svc = PaymentService(StoreFront(store), Scripted({"pay_1": RetryLater("busy")}))
        [result] = await svc.process_many([PaymentJob(payment_id="pay_1", attempt=attempt)])
        assert isinstance(result, RetryLater) is retried


# --- the handler: limits, lines, defaults, spans ----------------------------------------------


async def test_a_job_over_the_size_limit_is_dead_lettered() -> None:
    h = PaymentHandler(service(), max_job_bytes=40)
    raw = PaymentJob(payment_id="pay_" + "x" * 40, method="upi").encode()
    [outcome] = (await h.batch([raw])).outcomes
    assert outcome.dead is not None  # type: ignore[union-attr]
    assert "exceeds the limit of 40 bytes" in outcome.dead  # type: ignore[union-attr]


async def test_the_received_line_shows_a_legacy_job_as_it_came_and_an_envelope_as_text(
        ) -> None:
    h = handler_of(service())
    raws = [b"process_payment:pay_1:upi  ",
            PaymentJob(payment_id="pay_2", method="upi", jid="job_9").encode()]
    with capture_logs() as logs:
        await h.batch(raws)
    received = [e["event"] for e in logs if e["event"].startswith("Job received")]
    assert received == ["Job received: process_payment:pay_1:upi  ",
                        "Job received: process_payment:pay_2:upi"]


async def test_the_default_retry_backoff_is_one_second_doubling_up_to_five_minutes() -> None:
    class Ceiling(random.Random):
        def uniform(self, a: float, b: float) -> float:
            return b

    proc = Scripted({"pay_1": RetryLater("busy")})
    store = MemoryStore()
    await store.create_payments([Payment(id="pay_1", method="upi")])
    h = PaymentHandler(service(proc, store, max_attempts=100), max_job_bytes=65536,
                       rng=Ceiling())
    delays = []
    for attempt in (0, 3, 20):
        [outcome] = (await h.batch([PaymentJob(payment_id="pay_1",
                                               attempt=attempt).encode()])).outcomes
        ((_, delay),) = outcome.delay  # type: ignore[union-attr]
        delays.append(delay)
    assert delays == [1.0, 8.0, 300.0]


async def test_a_service_answering_too_few_results_fails_the_batch() -> None:
    class Short(PaymentService):
        async def process_many(self, jobs: Sequence[PaymentJob]) -> list[Any]:
            return []

    h = PaymentHandler(Short(StoreFront(MemoryStore()), Scripted()), max_job_bytes=65536)
    for traced in (False, True):
        exporter = InMemorySpanExporter()
        if traced:
            tracing.setup(exporter=exporter)
        try:
            with pytest.raises(ValueError, match="zip"), capture_logs():
                await h.batch([PaymentJob(payment_id="pay_1").encode()])
        finally:
            if traced:
                tracing.shutdown()


async def test_each_payment_span_ends_with_its_outcome(spans: InMemorySpanExporter) -> None:
    store = MemoryStore()
    await store.create_payments([Payment(id="pay_r", method="upi"),
                                 Payment(id="pay_d", method="upi",
                                         status=PaymentStatus.PROCESSING)])

    class Racing(Scripted):
        async def charge_many(self, payments: Sequence[Payment]
                              ) -> list[ChargeResult | RetryLater]:
            await store.transition([Transition(
                payment_id="pay_d", expected=(PaymentStatus.PROCESSING,),
                new=PaymentStatus.SUCCEEDED, emit=True)])
            return await super().charge_many(payments)

    proc = Racing({"pay_r": RetryLater("busy", delay=1)})
    h = handler_of(service(proc, store))
    with capture_logs():
        await h.batch([PaymentJob(payment_id=p).encode() for p in ("pay_r", "pay_x", "pay_d")])
    found = {s.attributes["payflow.payment.id"]: s for s in spans.get_finished_spans()
             if s.attributes is not None and s.name == "payment.process"}
    assert set(found) == {"pay_r", "pay_x", "pay_d"}

    def seen(span_id: str) -> tuple[Any, ...]:
        span = found[span_id]
        assert span.attributes is not None
        return (span.attributes.get("payflow.outcome"), span.status.status_code,
                span.status.description)

    assert seen("pay_r") == ("retry", StatusCode.ERROR, "busy")
    assert seen("pay_x")[:2] == ("dead", StatusCode.ERROR)
    assert "unknown payment 'pay_x'" in str(seen("pay_x")[2])
    assert seen("pay_d") == ("nothing_to_do", StatusCode.UNSET, None)


async def test_a_batch_that_raises_fails_its_spans(spans: InMemorySpanExporter) -> None:
    class Broken(PaymentService):
        async def process_many(self, jobs: Sequence[PaymentJob]) -> list[Any]:
            raise ConnectionResetError("store gone")

    h = PaymentHandler(Broken(StoreFront(MemoryStore()), Scripted()), max_job_bytes=65536)
    with pytest.raises(ConnectionResetError), capture_logs():
        await h.batch([PaymentJob(payment_id="pay_1").encode(),
                       PaymentJob(payment_id="pay_2").encode()])
    ended = [s for s in spans.get_finished_spans() if s.name == "payment.process"]
    assert len(ended) == 2
    for span in ended:
        assert span.status.status_code is StatusCode.ERROR
        assert span.status.description == "ConnectionResetError: store gone"
        assert [e.name for e in span.events] == ["exception"]
