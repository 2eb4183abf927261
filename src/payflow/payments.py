"""The rules of processing a payment job, over a Store and a Processor. No queue or HTTP here.

A job delivered twice changes the payment's state once: every step is a compare-and-set, and a
job whose payment is already terminal only makes sure that payment's event gets queued.
"""

from __future__ import annotations

import structlog

from payflow import metrics
from payflow.errors import InvalidJob, RetryLater
from payflow.jobs import PaymentJob, RefundJob
from payflow.models import Event, Payment, PaymentStatus, RefundStatus
from payflow.processor import ChargeResult, Processor
from payflow.store.base import RefundCompletion, Transition
from payflow.store.front import StoreFront

log = structlog.get_logger("payflow.payments")

_PENDING = (PaymentStatus.PENDING,)
_PROCESSING = (PaymentStatus.PROCESSING,)


class PaymentService:
    def __init__(self, store: StoreFront, processor: Processor, *, max_attempts: int = 5) -> None:
        self.store = store
        self.processor = processor
        self.max_attempts = max_attempts

    async def process(self, job: PaymentJob) -> Event | None:
        """Take the job's payment to a terminal state; its event is recorded with that state
        (the outbox). Returns the event to queue, or ``None`` when there is nothing to queue
        (another consumer finished it first). Raises :class:`RetryLater` on a transient
        processor failure before the last attempt."""
        payment = await self._load(job)
        if payment.status.terminal:  # canceled included: acked without processing
            # A redelivered job (after a crash, a failover that lost the settle, or a sweep):
            # queue its event again, as the settle that pushed it may be what was lost. A
            # duplicate carries the same event id.
            return await self._requeue(Event.for_payment(payment))
        if payment.status is PaymentStatus.PENDING:
            claimed = await self.store.transition(Transition(
                payment_id=payment.id, expected=_PENDING, new=PaymentStatus.PROCESSING))
            if claimed is None:  # changed under us (canceled, or another consumer took it)
                return await self.process(job)
            payment = claimed.payment
        # PROCESSING: ours, or left by a consumer that crashed; the processor's idempotency key
        # (the payment id) makes charging again safe.
        log.info(f"Processing payment: {payment.id}", payment_id=payment.id)
        try:
            result = await self.processor.charge(payment, idempotency_key=payment.id)
        except RetryLater as exc:
            if job.attempt + 1 < self.max_attempts:
                raise
            log.error("payment.processor_gave_up", payment_id=payment.id, reason=exc.reason)
            return await self._finish(payment.id, PaymentStatus.FAILED,
                                      "processor_unavailable", exc.reason)
        if result.succeeded:
            return await self._finish(payment.id, PaymentStatus.SUCCEEDED, None, None)
        return await self._finish(payment.id, PaymentStatus.FAILED,
                                  result.failure_code, result.failure_message)

    async def _requeue(self, derived: Event) -> Event:
        """The recorded event of a finished payment or refund (recorded now if it is not)."""
        recorded = await self.store.get_event(derived.id)
        if recorded is None:
            await self.store.add_event(derived)
        log.info("payment.already_done", event_id=derived.id,
                 detail="a redelivered job: its event is queued again")
        return recorded or derived

    async def _finish(self, payment_id: str, status: PaymentStatus, code: str | None,
                      message: str | None) -> Event | None:
        done = await self.store.transition(Transition(
            payment_id=payment_id, expected=_PROCESSING, new=status, failure_code=code,
            failure_message=message, emit=True))
        if done is None:  # another consumer finished it; that one queues the event
            log.info("payment.finished_elsewhere", payment_id=payment_id)
            return None
        metrics.PAYMENTS.labels(status.value).inc()
        if status is PaymentStatus.SUCCEEDED:
            log.info(f"PAYMENT SUCCESS for {payment_id}", payment_id=payment_id)
        else:
            log.info(f"PAYMENT FAILED for {payment_id}", payment_id=payment_id,
                     failure_code=code, failure_message=message)
        return done.event

    async def _load(self, job: PaymentJob) -> Payment:
        payment = await self.store.get_payment(job.payment_id)
        if payment is not None:
            return payment
        if job.method is None:
            raise InvalidJob(f"unknown payment {job.payment_id!r} (a job names a payment the "
                             "API created, or gives a method to create one)")
        log.debug("payment.created_from_job", payment_id=job.payment_id, method=job.method)
        return await self.store.create_payment(Payment(id=job.payment_id, method=job.method))

    async def refund(self, job: RefundJob) -> Event | None:
        """Take a pending refund the API created to succeeded or failed; returns the event to
        queue, as :meth:`process` does for payments."""
        refund = await self.store.get_refund(job.refund_id)
        if refund is None:
            raise InvalidJob(f"unknown refund {job.refund_id!r} (refunds are created through "
                             "the API)")
        if refund.payment_id != job.payment_id:
            raise InvalidJob(f"refund {refund.id} belongs to payment {refund.payment_id}, not "
                             f"{job.payment_id!r}")
        if refund.status is not RefundStatus.PENDING:
            return await self._requeue(Event.for_refund(refund))
        payment = await self.store.get_payment(refund.payment_id)
        if payment is None:
            raise InvalidJob(f"refund {refund.id} is for the unknown payment "
                             f"{refund.payment_id!r}")
        log.info(f"Processing refund: {refund.id}", refund_id=refund.id, amount=refund.amount)
        try:
            result = await self.processor.refund(payment, refund, idempotency_key=refund.id)
        except RetryLater as exc:
            if job.attempt + 1 < self.max_attempts:
                raise
            result = ChargeResult(False, "processor_unavailable", exc.reason)
        status = RefundStatus.SUCCEEDED if result.succeeded else RefundStatus.FAILED
        done = await self.store.complete_refund(RefundCompletion(
            refund_id=refund.id, new=status, failure_code=result.failure_code,
            failure_message=result.failure_message))
        if done is None:
            return None  # finished elsewhere
        metrics.REFUNDS.labels(status.value).inc()
        word = "SUCCESS" if result.succeeded else "FAILED"
        log.info(f"REFUND {word} for {refund.id}", refund_id=refund.id,
                 payment_id=payment.id, failure_code=result.failure_code)
        return done.event
