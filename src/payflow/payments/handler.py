"""The payment consumer's handler: a batch of raw jobs in, an :class:`Outcome` per job out.

It prints the seed's console lines (``Job received: …``, ``Webhook job queued: …``); the rules
of processing live in :mod:`payflow.payments.service`, which does the store work of the whole batch
together. Refund jobs (rare, one processor call each) run on their own.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Awaitable

import structlog

from payflow import tracing
from payflow.errors import InvalidJob, RetryLater
from payflow.jobs import PaymentJob, RefundJob, WebhookJob, describe, new_job_id, parse_job
from payflow.models import Event
from payflow.payments.service import PaymentService, Processed
from payflow.queue.backoff import full_jitter
from payflow.queue.consumer import DONE, Batch, Outcome, handle_one

log = structlog.get_logger("payflow.payments")


class PaymentHandler:
    def __init__(self, service: PaymentService, *, max_job_bytes: int,
                 retry_base_seconds: float = 1.0, retry_max_seconds: float = 300.0,
                 rng: random.Random | None = None) -> None:
        self.service = service
        self.max_job_bytes = max_job_bytes
        self.retry_base = retry_base_seconds
        self.retry_max = retry_max_seconds
        self.rng = rng

    async def __call__(self, raw: bytes) -> Outcome:
        """One job alone (its batch's ``after`` folded into its outcome)."""
        return await handle_one(self, raw)

    async def batch(self, raws: list[bytes]) -> Batch:
        outcomes: list[Outcome | Awaitable[Outcome]] = [DONE] * len(raws)
        payments: list[tuple[int, PaymentJob]] = []
        for i, raw in enumerate(raws):
            job = self._parse(raw)
            if isinstance(job, Outcome):
                outcomes[i] = job
            elif isinstance(job, RefundJob):
                outcomes[i] = self._refund(job)
            else:
                payments.append((i, job))
        if not payments:
            return Batch(outcomes)
        spans = _start_spans(payments) if tracing.ON else None
        try:
            results = await self.service.process_many([job for _, job in payments])
        except BaseException as exc:
            if spans is not None:
                tracing.fail(spans, exc)
            raise
        enqueued: list[str] = []
        if spans is None:
            for (i, job), result in zip(payments, results, strict=True):
                outcomes[i] = self._outcome(job, result, enqueued)
        else:  # each webhook job carries the context of its payment's span
            for (i, job), result, span in zip(payments, results, spans, strict=True):
                outcomes[i] = self._outcome(job, result, enqueued, tracing.traceparent(span))
                _end_span(span, result)
        store = self.service.store.store

        async def mark_enqueued() -> None:  # the outbox: these events need no sweeping
            await store.mark_enqueued(enqueued)

        return Batch(outcomes, mark_enqueued if enqueued else None)

    def _parse(self, raw: bytes) -> PaymentJob | RefundJob | Outcome:
        """The job, or the outcome of a job this queue does not process."""
        try:
            job = parse_job(raw, max_bytes=self.max_job_bytes)
        except InvalidJob as exc:
            log.error("Job rejected: dead-lettered", reason=exc.reason, job=describe(raw))
            return Outcome(dead=exc.reason)
        if isinstance(job, WebhookJob):  # both queues accept both kinds: pass it on
            log.info("job.forwarded", job=job.legacy_text, to="webhooks")
            return Outcome(push=[raw])
        shown = job.legacy_text if job.jid else describe(raw)
        log.info(f"Job received: {shown}", attempt=job.attempt + 1, payment_id=job.payment_id)
        return job

    def _outcome(self, job: PaymentJob | RefundJob, result: Processed,
                 enqueued: list[str], traceparent: str | None = None) -> Outcome:
        if isinstance(result, InvalidJob):
            log.error("Job rejected: dead-lettered", reason=result.reason,
                      payment_id=job.payment_id)
            return Outcome(dead=result.reason)
        if isinstance(result, RetryLater):
            delay = result.delay if result.delay is not None else full_jitter(
                job.attempt, base=self.retry_base, cap=self.retry_max, rng=self.rng)
            log.warning("payment.retry_scheduled", payment_id=job.payment_id,
                        reason=result.reason, retry_in=round(delay, 3))
            again = dataclasses.replace(job, attempt=job.attempt + 1,
                                        jid=job.jid or new_job_id())
            return Outcome(delay=[(again.encode(), delay)])
        if result is None:
            return DONE
        # Logged before the push is sent so that this line always precedes the webhook
        # consumer's "Delivering webhook"; the push and the ack are one atomic step.
        log.info(f"Webhook job queued: {result.legacy_text}", event_id=result.id,
                 payment_id=job.payment_id)
        enqueued.append(result.id)
        return Outcome(push=[_webhook_job(result, traceparent)])

    async def _refund(self, job: RefundJob) -> Outcome:
        try:
            result: Processed = await self.service.refund(job)
        except (InvalidJob, RetryLater) as exc:
            result = exc
        enqueued: list[str] = []
        outcome = self._outcome(job, result, enqueued)
        if not enqueued:
            return outcome
        store = self.service.store

        async def mark_enqueued() -> None:
            await store.mark_enqueued(enqueued[0])

        return dataclasses.replace(outcome, after=mark_enqueued)


def _webhook_job(event: Event, traceparent: str | None = None) -> bytes:
    return WebhookJob.for_event(event, traceparent=traceparent).encode()


def _start_spans(payments: list[tuple[int, PaymentJob]]) -> list[tracing.Span]:
    """A ``payment.process`` span per job, the child of the context its job carries."""
    return [tracing.start("payment.process", job.traceparent,
                          {"payflow.payment.id": job.payment_id,
                           "payflow.job.attempt": job.attempt + 1})
            for _, job in payments]


def _end_span(span: tracing.Span, result: Processed) -> None:
    if isinstance(result, InvalidJob):
        tracing.end(span, outcome="dead", error=result.reason)
    elif isinstance(result, RetryLater):
        tracing.end(span, outcome="retry", error=result.reason)
    elif result is None:
        tracing.end(span, outcome="nothing_to_do")
    else:
        tracing.end(span, outcome="event", event_id=result.id, event_type=result.type)
