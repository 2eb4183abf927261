"""The sweepers: what the store knows is unfinished but Redis may have lost is queued again."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from payflow.jobs import PaymentJob, RefundJob, WebhookJob, parse_job
from payflow.models import Payment, PaymentStatus, Refund
from payflow.payments.intake import Payments
from payflow.queue.producer import Uncertain
from payflow.store.base import Transition
from payflow.store.memory import MemoryStore
from payflow.webhooks.outbox import sweep_once, sweep_pending


class Pushed:
    def __init__(self) -> None:
        self.raws: list[bytes] = []

    async def __call__(self, raws: Sequence[bytes]) -> None:
        self.raws += raws


async def test_an_event_left_unqueued_is_queued_once() -> None:
    store = MemoryStore()
    await store.create_payments([Payment(id="pay_1", method="upi", amount=100,
                                         currency="INR", status=PaymentStatus.PROCESSING)])
    [changed] = await store.transition([Transition(
        payment_id="pay_1", expected=(PaymentStatus.PROCESSING,), new=PaymentStatus.SUCCEEDED,
        emit=True)])
    assert changed is not None and changed.event is not None
    pushed = Pushed()
    assert await sweep_once(store, pushed, after_seconds=60) == 0  # not old enough yet
    await asyncio.sleep(0.01)
    assert await sweep_once(store, pushed, after_seconds=0) == 1
    [raw] = pushed.raws
    job = parse_job(raw)
    assert isinstance(job, WebhookJob) and job.event_id == changed.event.id
    assert await sweep_once(store, pushed, after_seconds=0) == 0  # marked enqueued


async def test_pending_payments_and_refunds_get_their_jobs_again() -> None:
    store = MemoryStore()
    await store.create_payments([
        Payment(id="pay_old", method="upi", amount=100, currency="INR",
                created_at="2026-01-01T00:00:00.000Z"),
        Payment(id="pay_paid", method="upi", amount=100, currency="INR",
                status=PaymentStatus.SUCCEEDED, created_at="2026-01-01T00:00:00.000Z")])
    assert await store.reserve_refund(Refund(id="re_old", payment_id="pay_paid", amount=50,
                                             created_at="2026-01-01T00:00:00.000Z")) is None
    await store.create_payments([Payment(id="pay_new", method="upi")])  # just now: not stale
    pushed = Pushed()
    assert await sweep_pending(store, pushed, after_seconds=60) == 2
    jobs = [parse_job(raw) for raw in pushed.raws]
    assert jobs[0] == PaymentJob(payment_id="pay_old", jid=jobs[0].jid)  # names it, no more
    assert jobs[1] == RefundJob(refund_id="re_old", payment_id="pay_paid", jid=jobs[1].jid)


async def test_an_uncertain_refund_push_keeps_the_refund() -> None:
    store = MemoryStore()
    await store.create_payments([Payment(id="pay_paid", method="upi", amount=100,
                                         currency="INR", status=PaymentStatus.SUCCEEDED)])

    async def uncertain(raw: bytes) -> None:
        raise Uncertain("TimeoutError: no answer")

    refund = await Payments(store, push_payment=uncertain, push_webhook=None).refund(
        "pay_paid", 40)
    assert (await store.get_refunds([refund.id]))[refund.id].amount == 40  # kept, pending
    assert await store.refundable("pay_paid") == 60
