"""The webhook consumer's handler: one webhook job in, deliveries out, failures rescheduled.

A job without an endpoint fans out to every configured endpoint subscribed to the event (or to
the log sink when none is configured); an endpoint that fails gets its own retry job, aimed at
it alone, so each (event, endpoint) pair is retried independently. After ``max_attempts`` the
pair is dead-lettered in ``{webhook_jobs}:dead`` with the last reason.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random

import structlog

from payflow.config import EndpointConfig
from payflow.errors import InvalidJob
from payflow.jobs import PaymentJob, WebhookJob, parse_job
from payflow.models import STATUS_OF_EVENT, Event, event_id_for, now_iso
from payflow.queue.backoff import full_jitter
from payflow.queue.consumer import Outcome
from payflow.store.base import Store
from payflow.webhooks.delivery import Attempt, HttpDelivery, LogSink, endpoint_id, subscribed

log = structlog.get_logger("payflow.webhooks")

SINK = "log"  # the endpoint id of the log sink


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class RetryPolicy:
    max_attempts: int
    base_seconds: float
    max_seconds: float

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        return full_jitter(attempt, base=self.base_seconds, cap=self.max_seconds, rng=rng)


class WebhookHandler:
    def __init__(self, *, store: Store, endpoints: tuple[EndpointConfig, ...],
                 http: HttpDelivery | None, sink: LogSink, policy: RetryPolicy,
                 max_job_bytes: int) -> None:
        self.store = store
        self.endpoints = {endpoint_id(ep): ep for ep in endpoints}
        self.http = http
        self.sink = sink
        self.policy = policy
        self.max_job_bytes = max_job_bytes

    async def __call__(self, raw: bytes) -> Outcome:
        job = parse_job(raw, max_bytes=self.max_job_bytes)
        if isinstance(job, PaymentJob):  # both queues accept both kinds: pass it on
            log.info("job.forwarded", job=job.legacy_text, to="payments")
            return Outcome(push=[raw])
        event = await self._event(job)
        with structlog.contextvars.bound_contextvars(event_id=event.id,
                                                     payment_id=job.payment_id):
            return await self._deliver_all(job, event)

    async def _deliver_all(self, job: WebhookJob, event: Event) -> Outcome:
        targets = self._targets(job, event)
        log.info(f"Delivering webhook: {job.legacy_text}", attempt=job.attempt + 1,
                 endpoints=list(targets))
        if not targets:
            log.info("webhook.no_subscribers", event_type=event.type)
            return Outcome()
        attempts = await asyncio.gather(*(self._deliver(ep, event) for ep in targets.values()))
        failed: list[tuple[str, Attempt]] = []
        for ep_id, attempt in zip(targets, attempts, strict=True):
            if attempt.ok:
                log.info(f"Webhook delivered: {job.legacy_text}", endpoint=ep_id,
                         status=attempt.status, latency_ms=round(attempt.latency_ms, 1))
            else:
                failed.append((ep_id, attempt))
        return self._reschedule(job, event, failed)

    def _reschedule(self, job: WebhookJob, event: Event,
                    failed: list[tuple[str, Attempt]]) -> Outcome:
        if not failed:
            return Outcome()
        next_attempt = job.attempt + 1
        if next_attempt >= self.policy.max_attempts:
            reasons = "; ".join(f"{ep}: {a.reason}" for ep, a in failed)
            log.error(f"Webhook failed permanently: {job.legacy_text}",
                      attempts=next_attempt, reason=reasons)
            if len(failed) == 1 and job.endpoint is not None:
                return Outcome(dead=f"gave up after {next_attempt} attempts: {reasons}")
            return Outcome(dead_jobs=[
                (self._job_for(job, event, ep, next_attempt),
                 f"gave up after {next_attempt} attempts: {a.reason}")
                for ep, a in failed
            ])
        delays = []
        for ep, attempt in failed:
            delay = self.policy.delay(job.attempt)
            log.warning(f"Webhook delivery failed: {job.legacy_text}", endpoint=ep,
                        attempt=next_attempt, reason=attempt.reason, retry_in=round(delay, 3))
            delays.append((self._job_for(job, event, ep, next_attempt), delay))
        return Outcome(delay=delays)

    @staticmethod
    def _job_for(job: WebhookJob, event: Event, ep: str, attempt: int) -> bytes:
        return WebhookJob(event_type=event.type, payment_id=job.payment_id,
                          event=event.to_dict(), endpoint=ep, attempt=attempt,
                          jid=job.jid).encode()

    def _targets(self, job: WebhookJob, event: Event) -> dict[str, EndpointConfig | None]:
        """Endpoint id → endpoint (``None`` for the log sink)."""
        if job.endpoint is not None:
            if job.endpoint == SINK:
                return {SINK: None}
            if job.endpoint not in self.endpoints:
                raise InvalidJob(f"endpoint {job.endpoint!r} is no longer configured")
            return {job.endpoint: self.endpoints[job.endpoint]}
        if not self.endpoints:
            return {SINK: None}
        return {i: ep for i, ep in self.endpoints.items() if subscribed(ep, event.type)}

    async def _deliver(self, endpoint: EndpointConfig | None, event: Event) -> Attempt:
        if endpoint is None or self.http is None:
            return await self.sink.deliver(event)
        return await self.http.deliver(endpoint, event)

    async def _event(self, job: WebhookJob) -> Event:
        if job.event is not None:
            try:
                return Event.from_dict(job.event)
            except (KeyError, TypeError) as exc:
                raise InvalidJob(f"bad event in job: {exc}") from None
        # A legacy job names only the type and the payment: derive the event, with the same id
        # the payment's own transition would give it.
        event_id = event_id_for(job.payment_id, job.event_type)
        if (stored := await self.store.get_event(event_id)) is not None:
            return stored
        payment = await self.store.get_payment(job.payment_id)
        if payment is not None and payment.status is STATUS_OF_EVENT[job.event_type]:
            return Event.for_payment(payment)
        data = payment.to_dict() if payment is not None else {"id": job.payment_id}
        return Event(id=event_id, type=job.event_type, timestamp=now_iso(), data=data)
