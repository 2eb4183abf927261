"""The payment consumer's handler: one raw job in, an :class:`Outcome` out.

It prints the seed's console lines (``Job received: …``, ``Webhook job queued: …``); the rules
of processing live in :mod:`payflow.payments`.
"""

from __future__ import annotations

import dataclasses
import random

import structlog

from payflow.errors import RetryLater
from payflow.jobs import RefundJob, WebhookJob, describe, new_job_id, parse_job
from payflow.payments import PaymentService
from payflow.queue.backoff import full_jitter
from payflow.queue.consumer import Outcome

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
        job = parse_job(raw, max_bytes=self.max_job_bytes)
        if isinstance(job, WebhookJob):  # both queues accept both kinds: pass it on
            log.info("job.forwarded", job=job.legacy_text, to="webhooks")
            return Outcome(push=[raw])
        shown = job.legacy_text if job.jid else describe(raw)
        log.info(f"Job received: {shown}", attempt=job.attempt + 1, payment_id=job.payment_id)
        try:
            if isinstance(job, RefundJob):
                event = await self.service.refund(job)
            else:
                event = await self.service.process(job)
        except RetryLater as exc:
            delay = exc.delay if exc.delay is not None else full_jitter(
                job.attempt, base=self.retry_base, cap=self.retry_max, rng=self.rng)
            log.warning("payment.retry_scheduled", payment_id=job.payment_id, reason=exc.reason,
                        retry_in=round(delay, 3))
            again = dataclasses.replace(job, attempt=job.attempt + 1,
                                        jid=job.jid or new_job_id())
            return Outcome(delay=[(again.encode(), delay)])
        if event is None:
            return Outcome()
        # Logged before the push is sent so that this line always precedes the webhook
        # consumer's "Delivering webhook"; the push and the ack are one atomic step.
        log.info(f"Webhook job queued: {event.legacy_text}", event_id=event.id,
                 payment_id=job.payment_id)
        store = self.service.store

        async def enqueued() -> None:  # the outbox: this event needs no sweeping
            await store.mark_enqueued(event.id)

        return Outcome(push=[WebhookJob.for_event(event).encode()], after=enqueued)
