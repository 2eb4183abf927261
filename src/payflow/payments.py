"""The rules of processing a payment job, over a Store and a Processor. No queue or HTTP here.

A job delivered twice changes the payment's state once: every step is a compare-and-set, and a
job whose payment is already terminal only makes sure that payment's event gets queued.
"""

from __future__ import annotations

import structlog

from payflow import metrics
from payflow.errors import InvalidJob, RetryLater
from payflow.jobs import PaymentJob, RefundJob
from payflow.models import Event, Payment, PaymentStatus, Refund, RefundStatus
from payflow.processor import ChargeResult, Processor
from payflow.store.base import Store

log = structlog.get_logger("payflow.payments")

_PENDING = (PaymentStatus.PENDING,)
_PROCESSING = (PaymentStatus.PROCESSING,)


class PaymentService:
    def __init__(self, store: Store, processor: Processor, *, max_attempts: int = 5) -> None:
        self.store = store
        self.processor = processor
        self.max_attempts = max_attempts

    async def process(self, job: PaymentJob) -> Event | None:
        """Take the job's payment to a terminal state. Returns the event to queue, or ``None``
        when there is nothing to queue (canceled, or another consumer finished it first).
        Raises :class:`RetryLater` on a transient processor failure before the last attempt."""
        payment = await self._load(job)
        if payment.status.terminal:  # canceled included: acked without processing
            event = Event.for_payment(payment)
            if await self.store.get_event(event.id) is not None:
                log.info("payment.already_done", payment_id=payment.id, status=payment.status)
                return None
            log.info("payment.requeue_event", payment_id=payment.id, status=payment.status)
            return event
        if payment.status is PaymentStatus.PENDING:
            claimed = await self.store.transition(payment.id, _PENDING, PaymentStatus.PROCESSING)
            if claimed is None:  # changed under us (canceled, or another consumer took it)
                return await self.process(job)
            payment = claimed
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

    async def _finish(self, payment_id: str, status: PaymentStatus, code: str | None,
                      message: str | None) -> Event | None:
        done = await self.store.transition(payment_id, _PROCESSING, status,
                                           failure_code=code, failure_message=message)
        if done is None:  # another consumer finished it; that one queues the event
            log.info("payment.finished_elsewhere", payment_id=payment_id)
            return None
        metrics.PAYMENTS.labels(status.value).inc()
        if status is PaymentStatus.SUCCEEDED:
            log.info(f"PAYMENT SUCCESS for {payment_id}", payment_id=payment_id)
        else:
            log.info(f"PAYMENT FAILED for {payment_id}", payment_id=payment_id,
                     failure_code=code, failure_message=message)
        return Event.for_payment(done)

    async def _load(self, job: PaymentJob) -> Payment:
        payment = await self.store.get_payment(job.payment_id)
        if payment is not None:
            return payment
        if job.payment is not None:  # the store lost it (restart of memory://): the snapshot
            try:
                snapshot = Payment.from_dict(job.payment)
            except (KeyError, ValueError, TypeError) as exc:
                raise InvalidJob(f"bad payment snapshot: {exc}") from None
            log.warning("payment.restored_from_job", payment_id=job.payment_id)
            return await self.store.create_payment(snapshot)
        if job.method is None:
            raise InvalidJob(f"unknown payment {job.payment_id!r} and no method to create it")
        log.debug("payment.created_from_job", payment_id=job.payment_id, method=job.method)
        return await self.store.create_payment(Payment(id=job.payment_id, method=job.method))

    async def refund(self, job: RefundJob) -> Event | None:
        """Take a pending refund to succeeded or failed; returns the event to queue, as
        :meth:`process` does for payments."""
        refund = await self.store.get_refund(job.refund_id)
        if refund is None:
            if job.refund is None:
                raise InvalidJob(f"unknown refund {job.refund_id!r} and no snapshot")
            try:
                refund = await self.store.put_refund(Refund.from_dict(job.refund))
            except (KeyError, ValueError, TypeError) as exc:
                raise InvalidJob(f"bad refund snapshot: {exc}") from None
            log.warning("refund.restored_from_job", refund_id=refund.id)
        if refund.status is not RefundStatus.PENDING:
            event = Event.for_refund(refund)
            return None if await self.store.get_event(event.id) is not None else event
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
        done = await self.store.complete_refund(refund.id, status,
                                                failure_code=result.failure_code,
                                                failure_message=result.failure_message)
        if done is None:
            return None  # finished elsewhere
        metrics.REFUNDS.labels(status.value).inc()
        word = "SUCCESS" if result.succeeded else "FAILED"
        log.info(f"REFUND {word} for {refund.id}", refund_id=refund.id,
                 payment_id=payment.id, failure_code=result.failure_code)
        return Event.for_refund(done)
