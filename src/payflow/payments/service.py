"""The rules of processing a payment job, over a Store and a Processor. No queue or HTTP here.

A job delivered twice changes the payment's state once: every step is a compare-and-set, and a
job whose payment is already terminal only makes sure that payment's event gets queued.
"""

from __future__ import annotations

from collections.abc import Sequence

import structlog

from payflow import metrics
from payflow.errors import InvalidJob, RetryLater
from payflow.jobs import PaymentJob, RefundJob
from payflow.models import Event, Payment, PaymentStatus, RefundStatus
from payflow.payments.processor import ChargeResult, Processor
from payflow.store.base import RefundCompletion, Transition
from payflow.store.front import StoreFront

log = structlog.get_logger("payflow.payments")

_PENDING = (PaymentStatus.PENDING,)
_PROCESSING = (PaymentStatus.PROCESSING,)


# What became of one payment job: the event to queue, None (nothing to queue: another consumer
# finished it first), or why not (RetryLater: a transient processor failure; InvalidJob).
Processed = Event | None | RetryLater | InvalidJob


class PaymentService:
    def __init__(self, store: StoreFront, processor: Processor, *, max_attempts: int = 5) -> None:
        self.store = store
        self.processor = processor
        self.max_attempts = max_attempts

    async def process(self, job: PaymentJob) -> Event | None:
        """One job of :meth:`process_many`; raises its :class:`RetryLater` or
        :class:`InvalidJob`."""
        [result] = await self.process_many([job])
        if isinstance(result, Exception):
            raise result
        return result

    async def process_many(self, jobs: Sequence[PaymentJob]) -> list[Processed]:
        """Take each job's payment to a terminal state; its event is recorded with that state
        (the outbox). Per job, in order: the event to queue, ``None`` when there is nothing to
        queue (another consumer finished it first), :class:`RetryLater` on a transient
        processor failure before the last attempt, or :class:`InvalidJob`. The store work of
        the batch is shared: one lookup, one claim, one charge call, one finish."""
        results: list[Processed] = [None] * len(jobs)
        first: dict[str, int] = {}
        again: list[int] = []  # a payment named twice: the later job goes after the first
        for i, job in enumerate(jobs):
            if job.payment_id in first:
                again.append(i)
            else:
                first[job.payment_id] = i
        await self._round(jobs, list(first.values()), results)
        if again:
            for i, result in zip(again, await self.process_many([jobs[i] for i in again]),
                                 strict=True):
                results[i] = result
        return results

    async def _round(self, jobs: Sequence[PaymentJob], todo: list[int],
                     results: list[Processed]) -> None:
        """Process ``jobs[i]`` for ``i`` in ``todo`` (each a different payment)."""
        store = self.store.store
        payments = await self._load([jobs[i] for i in todo])
        finished: list[tuple[int, Payment]] = []
        pending: list[tuple[int, Payment]] = []
        charge: list[tuple[int, Payment]] = []
        for i, payment in zip(todo, payments, strict=True):
            if isinstance(payment, InvalidJob):
                results[i] = payment
            elif payment.status.terminal:  # canceled included: acked without processing
                finished.append((i, payment))
            elif payment.status is PaymentStatus.PENDING:
                pending.append((i, payment))
            else:  # PROCESSING: left by a consumer that crashed, or ours from another round
                charge.append((i, payment))
        if finished:
            # Redelivered jobs (after a crash, a failover that lost the settle, or a sweep):
            # queue their events again, as the settle that pushed them may be what was lost.
            # A duplicate carries the same event id.
            events = await self._requeue([Event.for_payment(p) for _, p in finished])
            for (i, _), event in zip(finished, events, strict=True):
                results[i] = event
        if pending:
            claimed = await store.transition([
                Transition(payment_id=p.id, expected=_PENDING, new=PaymentStatus.PROCESSING)
                for _, p in pending])
            lost = []
            for (i, _), change in zip(pending, claimed, strict=True):
                if change is None:  # changed under us (canceled, or another consumer took it)
                    lost.append(i)
                else:
                    charge.append((i, change.payment))
            if lost:
                await self._round(jobs, lost, results)
        if charge:
            await self._charge(jobs, charge, results)

    async def _charge(self, jobs: Sequence[PaymentJob], charge: list[tuple[int, Payment]],
                      results: list[Processed]) -> None:
        """Charge payments in ``processing`` (the processor's idempotency key, the payment id,
        makes charging again after a crash safe) and finish them."""
        for _, payment in charge:
            log.info(f"Processing payment: {payment.id}", payment_id=payment.id)
        charged = await self.processor.charge_many([p for _, p in charge])
        finish: list[tuple[int, Transition]] = []
        for (i, payment), result in zip(charge, charged, strict=True):
            if isinstance(result, RetryLater):
                if jobs[i].attempt + 1 < self.max_attempts:
                    results[i] = result
                    continue
                log.error("payment.processor_gave_up", payment_id=payment.id,
                          reason=result.reason)
                result = ChargeResult(False, "processor_unavailable", result.reason)
            status = PaymentStatus.SUCCEEDED if result.succeeded else PaymentStatus.FAILED
            finish.append((i, Transition(
                payment_id=payment.id, expected=_PROCESSING, new=status,
                failure_code=result.failure_code, failure_message=result.failure_message,
                emit=True)))
        if not finish:
            return
        done = await self.store.store.transition([t for _, t in finish])
        counts: dict[PaymentStatus, int] = {}
        for (i, t), change in zip(finish, done, strict=True):
            if change is None:  # another consumer finished it; that one queues the event
                log.info("payment.finished_elsewhere", payment_id=t.payment_id)
                continue
            counts[t.new] = counts.get(t.new, 0) + 1
            if t.new is PaymentStatus.SUCCEEDED:
                log.info(f"PAYMENT SUCCESS for {t.payment_id}", payment_id=t.payment_id)
            else:
                log.info(f"PAYMENT FAILED for {t.payment_id}", payment_id=t.payment_id,
                         failure_code=t.failure_code, failure_message=t.failure_message)
            results[i] = change.event
        for status, count in counts.items():
            metrics.PAYMENTS.labels(status.value).inc(count)

    async def _requeue(self, derived: list[Event]) -> list[Event]:
        """The recorded events of finished payments or refunds (recorded now if they are
        not)."""
        store = self.store.store
        recorded = await store.get_events([e.id for e in derived])
        if missing := [e for e in derived if e.id not in recorded]:
            await store.add_events(missing)
        for event in derived:
            log.info("payment.already_done", event_id=event.id,
                     detail="a redelivered job: its event is queued again")
        return [recorded.get(e.id, e) for e in derived]

    async def _load(self, jobs: list[PaymentJob]) -> list[Payment | InvalidJob]:
        """The payment of each job; a legacy job (with a method) creates an unknown one."""
        store = self.store.store
        found = await store.get_payments([j.payment_id for j in jobs])
        create = [Payment(id=j.payment_id, method=j.method) for j in jobs
                  if j.payment_id not in found and j.method is not None]
        if create:
            for payment in create:
                log.debug("payment.created_from_job", payment_id=payment.id,
                          method=payment.method)
            found.update((p.id, p) for p in await store.create_payments(create))
        return [found.get(j.payment_id) or InvalidJob(
            f"unknown payment {j.payment_id!r} (a job names a payment the API created, or "
            "gives a method to create one)") for j in jobs]

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
            [event] = await self._requeue([Event.for_refund(refund)])
            return event
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
