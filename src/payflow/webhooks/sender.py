"""The webhook consumer's handler: one webhook job in, deliveries out, failures rescheduled.

A job without an endpoint fans out to every enabled endpoint subscribed to the event, and to
the log sink when it is configured (never as a fallback: an event nobody subscribes to stays
recorded in the store, and an endpoint created later can recover it); an endpoint that fails
gets its own retry job, aimed at it alone, so each (event, endpoint) pair is retried
independently, on the schedule of :class:`RetryPolicy`. Every attempt is recorded in the store.
After the last attempt, or when the SSRF guard refuses the address, the pair is dead-lettered in
``{webhook_jobs}:dead``; a ``410 Gone`` disables the endpoint.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections.abc import Awaitable, Sequence
from datetime import UTC, datetime, timedelta

import structlog

from payflow import metrics, tracing
from payflow.errors import InvalidJob
from payflow.jobs import WebhookJob, describe, parse_job
from payflow.models import (
    REFUND_EVENT_TYPES,
    STATUS_OF_EVENT,
    DeliveryAttempt,
    Event,
    WebhookEndpoint,
    event_id_for,
    iso,
    new_local_id,
    now_iso,
)
from payflow.queue.consumer import DONE, Batch, Outcome, handle_one
from payflow.store.front import StoreFront
from payflow.webhooks import endpoints as eps
from payflow.webhooks.delivery import Attempt, HttpDelivery, LogSink

log = structlog.get_logger("payflow.webhooks")

SINK = "log"  # the endpoint id of the log sink
JITTER = 0.2  # ±20 % on every scheduled delay
RETRY_AFTER_MIN = 1.0


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class RetryPolicy:
    schedule: Sequence[float]  # delays before attempts 2, 3, …; the last one repeats
    max_attempts: int

    def delay(self, attempts_done: int, rng: random.Random | None = None) -> float:
        base = self.schedule[min(attempts_done, len(self.schedule)) - 1]
        return base * (rng or random).uniform(1 - JITTER, 1 + JITTER)

    def retry_after(self, seconds: float) -> float:
        """A receiver's Retry-After, clamped to [1 s, the schedule's longest delay]."""
        return min(max(seconds, RETRY_AFTER_MIN), max(self.schedule))


class WebhookHandler:
    def __init__(self, *, store: StoreFront, http: HttpDelivery | None, sink: LogSink | None,
                 policy: RetryPolicy, max_job_bytes: int,
                 disable_after: timedelta = timedelta(hours=120)) -> None:
        self.store = store
        self.http = http
        self.sink = sink  # None: the log sink is not configured
        self.policy = policy
        self.max_job_bytes = max_job_bytes
        self.disable_after = disable_after

    async def __call__(self, raw: bytes) -> Outcome:
        """One job alone."""
        return await handle_one(self, raw)

    async def batch(self, raws: list[bytes]) -> Batch:
        """The batch's events in one lookup and its endpoints in one listing; a delivery to
        the log sink alone is done at once (attempts recorded in one call), one that involves
        an HTTP endpoint runs on as its own task."""
        outcomes: list[Outcome | Awaitable[Outcome]] = [DONE] * len(raws)
        named: list[tuple[int, WebhookJob]] = []
        for i, raw in enumerate(raws):
            try:
                job = parse_job(raw, max_bytes=self.max_job_bytes)
            except InvalidJob as exc:
                log.error("Job rejected: dead-lettered", reason=exc.reason, job=describe(raw))
                outcomes[i] = Outcome(dead=exc.reason)
                continue
            if not isinstance(job, WebhookJob):  # both queues accept every kind: pass it on
                log.info("job.forwarded", job=job.legacy_text, to="payments")
                outcomes[i] = Outcome(push=[raw])
            elif job.event_id is None or job.endpoint is not None:
                outcomes[i] = self._one(job)  # a legacy job, or a retry: the long way
            else:
                named.append((i, job))
        if not named:
            return Batch(outcomes)
        store = self.store.store
        events = await store.get_events([job.event_id for _, job in named if job.event_id])
        endpoints = await store.list_endpoints()
        attempts: list[DeliveryAttempt] = []
        for i, job in named:
            event = events.get(job.event_id or "")
            if event is None:
                reason = f"unknown event {job.event_id!r}"
                log.error("Job rejected: dead-lettered", reason=reason, job=job.legacy_text)
                outcomes[i] = Outcome(dead=reason)
                continue
            subscribed = [ep for ep in endpoints if ep.subscribed(event.type)]
            if subscribed or self.sink is None or self.sink.failure_rate:
                targets, skipped = self._split(subscribed)
                outcomes[i] = self._deliver_all(job, event, targets, skipped)
            else:  # the log sink alone: nothing to wait for
                outcomes[i] = self._to_sink(job, event, attempts)
        if attempts:
            _count(attempts)
            await store.add_attempts(attempts)
        return Batch(outcomes)

    def _to_sink(self, job: WebhookJob, event: Event,
                 attempts: list[DeliveryAttempt]) -> Outcome:
        text = event.legacy_text
        attempt_no = job.attempt + 1
        log.info(f"Delivering webhook: {text}", event_id=event.id, attempt=attempt_no,
                 endpoints=[SINK])
        log.info(f"Webhook delivered: {text}", event_id=event.id, endpoint=SINK, status=None,
                 latency_ms=0.0)
        if tracing.ON:
            tracing.end(_start_span(job, event, None), outcome="succeeded")
        attempts.append(DeliveryAttempt(
            id=new_local_id("att_"), event_id=event.id, endpoint_id=SINK, attempt=attempt_no,
            outcome="succeeded", at=now_iso()))
        return DONE

    async def _one(self, job: WebhookJob) -> Outcome:
        event = await self._event(job)
        targets, skipped = await self._targets(job, event)
        return await self._deliver_all(job, event, targets, skipped)

    async def _deliver_all(self, job: WebhookJob, event: Event,
                           targets: list[WebhookEndpoint | None],
                           skipped: list[WebhookEndpoint]) -> Outcome:
        attempt_no = job.attempt + 1
        text = event.legacy_text
        log.info(f"Delivering webhook: {text}", event_id=event.id, attempt=attempt_no,
                 endpoints=[t.id if t else SINK for t in targets])
        for off in skipped:
            await self._record(event, off.id, attempt_no, "skipped",
                               Attempt(ok=False, error="endpoint disabled"))
        if not targets:
            if not skipped:
                log.info("webhook.no_subscribers", event_id=event.id, event_type=event.type,
                         detail="the event is recorded; an endpoint created later can "
                                "recover it")
            return DONE
        spans: list[tracing.Span | None] = [None] * len(targets)
        if tracing.ON:
            spans = [_start_span(job, event, ep) for ep in targets]
        try:
            return await self._attempts(job, event, targets, spans)
        except BaseException as exc:
            if tracing.ON:
                tracing.fail(spans, exc)
            raise

    async def _attempts(self, job: WebhookJob, event: Event,
                        targets: list[WebhookEndpoint | None],
                        spans: list[tracing.Span | None]) -> Outcome:
        """Deliver to ``targets`` at once; record each attempt and decide what follows it."""
        attempt_no = job.attempt + 1
        text = event.legacy_text
        if len(targets) == 1:  # the common case: no task to create
            attempts = [await self._deliver(targets[0], event, spans[0])]
        else:
            attempts = await asyncio.gather(*(self._deliver(ep, event, span)
                                              for ep, span in zip(targets, spans, strict=True)))
        delay: list[tuple[bytes, float]] = []
        dead: list[tuple[bytes, str]] = []
        for endpoint, attempt, span in zip(targets, attempts, spans, strict=True):
            ep_id = endpoint.id if endpoint else SINK
            if attempt.ok:
                log.info(f"Webhook delivered: {text}", event_id=event.id, endpoint=ep_id,
                         status=attempt.status, latency_ms=round(attempt.latency_ms, 1))
                await self._record(event, ep_id, attempt_no, "succeeded", attempt)
                if endpoint is not None and endpoint.failing_since is not None:
                    await eps.record_success(self.store, ep_id)
                if span is not None:
                    tracing.end(span, outcome="succeeded", http_status=attempt.status)
                continue
            verdict = await self._failed(job, event, endpoint, attempt)
            if span is not None:
                _end_failed_span(span, attempt, verdict)
            retry = WebhookJob.for_event(event, endpoint=ep_id, attempt=attempt_no,
                                         jid=job.jid, traceparent=job.traceparent).encode()
            if verdict.outcome == "retrying":
                delay.append((retry, verdict.retry_in))
            elif verdict.dead:
                dead.append((retry, verdict.reason))
        if len(dead) == 1 and not delay and job.endpoint is not None:
            return Outcome(dead=dead[0][1])  # this job was aimed at that endpoint alone
        if not delay and not dead:
            return DONE
        return Outcome(delay=delay, dead_jobs=dead)

    async def _failed(self, job: WebhookJob, event: Event, endpoint: WebhookEndpoint | None,
                      attempt: Attempt) -> Verdict:
        """Decide what a failed attempt leads to (and record it)."""
        ep_id = endpoint.id if endpoint else SINK
        attempt_no = job.attempt + 1
        text = event.legacy_text
        if attempt.refused:
            log.error(f"Webhook refused: {text}", event_id=event.id, endpoint=ep_id,
                      reason=attempt.reason)
            await self._record(event, ep_id, attempt_no, "refused", attempt)
            return Verdict("refused", reason=f"refused: {attempt.reason}")
        if endpoint is not None and attempt.gone:
            await self._record(event, ep_id, attempt_no, "disabled", attempt)
            await eps.disable(self.store.store, endpoint, "the endpoint answered 410 Gone",
                              cause="gone")
            return DISABLED
        disabled = None
        if endpoint is not None:
            disabled = await eps.record_failure(self.store, ep_id,
                                                disable_after=self.disable_after)
        if disabled is not None:
            await self._record(event, ep_id, attempt_no, "disabled", attempt)
            return DISABLED
        if attempt_no >= self.policy.max_attempts:
            log.error(f"Webhook failed permanently: {text}", event_id=event.id, endpoint=ep_id,
                      attempts=attempt_no, reason=attempt.reason)
            await self._record(event, ep_id, attempt_no, "dead", attempt)
            return Verdict("dead", reason=f"gave up after {attempt_no} attempts: "
                                          f"{attempt.reason}")
        seconds = (self.policy.retry_after(attempt.retry_after)
                   if attempt.retry_after is not None else self.policy.delay(attempt_no))
        log.warning(f"Webhook delivery failed: {text}", event_id=event.id, endpoint=ep_id,
                    attempt=attempt_no, reason=attempt.reason, retry_in=round(seconds, 3))
        next_at = iso(datetime.now(UTC) + timedelta(seconds=seconds))
        await self._record(event, ep_id, attempt_no, "retrying", attempt, next_retry_at=next_at)
        return Verdict("retrying", retry_in=seconds)

    async def _record(self, event: Event, endpoint_id: str, attempt_no: int, outcome: str,
                      attempt: Attempt, *, next_retry_at: str | None = None) -> None:
        record = DeliveryAttempt(
            id=new_local_id("att_"), event_id=event.id, endpoint_id=endpoint_id,
            attempt=attempt_no, outcome=outcome, at=now_iso(), status=attempt.status,
            error=attempt.error, latency_ms=attempt.latency_ms, response_body=attempt.body,
            next_retry_at=next_retry_at)
        _count([record], ok=attempt.ok)
        await self.store.add_attempt(record)

    async def _targets(self, job: WebhookJob, event: Event
                       ) -> tuple[list[WebhookEndpoint | None], list[WebhookEndpoint]]:
        """(endpoints to deliver to, ``None`` meaning the log sink; subscribed endpoints that
        are disabled)."""
        if job.endpoint == SINK:
            return ([None] if self.sink is not None else []), []
        if job.endpoint is not None:
            endpoint = await self.store.get_endpoint(job.endpoint)
            if endpoint is None:
                raise InvalidJob(f"endpoint {job.endpoint!r} does not exist")
            if not endpoint.subscribed(event.type):
                raise InvalidJob(f"endpoint {endpoint.id} is not subscribed to {event.type}")
            return ([], [endpoint]) if endpoint.disabled else ([endpoint], [])
        return self._split([ep for ep in await self.store.list_endpoints()
                            if ep.subscribed(event.type)])

    def _split(self, subscribed: list[WebhookEndpoint]
               ) -> tuple[list[WebhookEndpoint | None], list[WebhookEndpoint]]:
        """(the enabled endpoints of ``subscribed`` and the log sink, if any; the disabled
        ones)."""
        targets: list[WebhookEndpoint | None] = [ep for ep in subscribed if not ep.disabled]
        if self.sink is not None:
            targets.append(None)
        return targets, [ep for ep in subscribed if ep.disabled]

    async def _deliver(self, endpoint: WebhookEndpoint | None, event: Event,
                       span: tracing.Span | None = None) -> Attempt:
        if endpoint is None:
            assert self.sink is not None
            return await self.sink.deliver(event)
        if self.http is None:
            return Attempt(ok=False, error="HTTP delivery is not available here")
        traceparent = tracing.traceparent(span) if span is not None else None
        return await self.http.deliver(endpoint, event, traceparent=traceparent)

    async def _event(self, job: WebhookJob) -> Event:
        """The job's event, from the store: a job names an event, it never supplies one."""
        if job.event_id is not None:
            event = await self.store.get_event(job.event_id)
            if event is None:
                raise InvalidJob(f"unknown event {job.event_id!r}")
            return event
        assert job.event_type is not None and job.subject_id is not None
        return await self._derive(job.event_type, job.subject_id)

    async def _derive(self, event_type: str, subject_id: str) -> Event:
        """A legacy job names only the type and the payment (or refund): its event is the one
        recorded for that transition, or derived from the current state when that state is
        the one the type names; anything else is not true and is dead-lettered."""
        stored = await self.store.get_event(event_id_for(subject_id, event_type))
        if stored is not None:
            return stored
        event: Event | None = None
        if event_type in REFUND_EVENT_TYPES.values():
            refund = await self.store.get_refund(subject_id)
            if refund is not None and REFUND_EVENT_TYPES.get(refund.status) == event_type:
                event = Event.for_refund(refund)
        else:
            payment = await self.store.get_payment(subject_id)
            if payment is not None and payment.status is STATUS_OF_EVENT.get(event_type):
                event = Event.for_payment(payment)
        if event is None:
            raise InvalidJob(f"no {event_type} event for {subject_id!r}: the store does not "
                             "have it in that state")
        await self.store.add_event(event)
        return event


def _start_span(job: WebhookJob, event: Event, endpoint: WebhookEndpoint | None
                ) -> tracing.Span:
    """A ``webhook.deliver`` span for one attempt, the child of the context its job carries
    (that of the ``payment.process`` span that queued it)."""
    return tracing.start("webhook.deliver", job.traceparent, {
        "payflow.event.id": event.id, "payflow.event.type": event.type,
        "payflow.endpoint.id": endpoint.id if endpoint else SINK,
        "payflow.webhook.attempt": job.attempt + 1}, kind="client")


def _end_failed_span(span: tracing.Span, attempt: Attempt, verdict: Verdict) -> None:
    tracing.end(span, outcome=verdict.outcome, http_status=attempt.status,
                error=attempt.reason)


def _count(attempts: list[DeliveryAttempt], *, ok: bool = True) -> None:
    """The metrics of recorded attempts (``ok``: those of a success)."""
    first = attempts[0]
    status = metrics.status_class(first.status, ok=ok)
    if len(attempts) > 1:  # a batch of log sink deliveries: alike
        metrics.WEBHOOK_ATTEMPTS.labels(first.outcome, status).inc(len(attempts))
        for _ in attempts:
            metrics.WEBHOOK_SECONDS.observe(0.0)
        return
    metrics.WEBHOOK_ATTEMPTS.labels(first.outcome, status).inc()
    if first.endpoint_id != SINK:  # endpoint ids are bounded by the operator
        metrics.WEBHOOK_ATTEMPTS_BY_ENDPOINT.labels(first.endpoint_id, first.outcome).inc()
    if first.outcome != "skipped":
        metrics.WEBHOOK_SECONDS.observe(first.latency_ms / 1000)


@dataclasses.dataclass(frozen=True, slots=True)
class Verdict:
    """What a failed attempt leads to; ``outcome`` is the attempt's recorded outcome:
    ``retrying`` (again in ``retry_in`` seconds), ``dead`` or ``refused`` (the delivery is
    dead-lettered, because of ``reason``), or ``disabled`` (the endpoint is disabled: nothing
    more until ``recover`` replays it)."""

    outcome: str
    retry_in: float = 0.0
    reason: str = ""

    @property
    def dead(self) -> bool:
        return self.outcome in ("dead", "refused")


DISABLED = Verdict("disabled")
