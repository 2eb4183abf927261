"""The webhook handler's decisions, asserted directly over a scripted delivery (each test here
kills mutants of ``webhooks/sender.py`` that the receiver-based tests of
``test_webhook_sender.py`` let through; README, Testing, "Mutation testing")."""

from __future__ import annotations

import random
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from structlog.testing import capture_logs

from payflow import metrics
from payflow.errors import InvalidJob
from payflow.jobs import WebhookJob, parse_job
from payflow.models import (
    DeliveryAttempt,
    Event,
    Payment,
    PaymentStatus,
    Refund,
    RefundStatus,
    WebhookEndpoint,
    event_id_for,
    now_iso,
)
from payflow.queue.consumer import DONE, Outcome, handle_one
from payflow.store.front import StoreFront
from payflow.store.memory import MemoryStore
from payflow.webhooks.delivery import Attempt, LogSink
from payflow.webhooks.sender import (
    JITTER,
    RETRY_AFTER_MIN,
    SINK,
    RetryPolicy,
    Verdict,
    WebhookHandler,
)

POLICY = RetryPolicy(schedule=(5.0, 60.0, 600.0), max_attempts=4)
PAYMENT = Payment(id="pay_1", method="upi", amount=100, currency="INR",
                  status=PaymentStatus.SUCCEEDED)
EVENT = Event.for_payment(PAYMENT)


class Scripted:
    """An HttpDelivery stand-in: each endpoint id answers its Attempt; calls recorded."""

    def __init__(self, answers: dict[str, Attempt] | None = None) -> None:
        self.answers = answers or {}
        self.calls: list[tuple[str, str | None]] = []

    async def deliver(self, endpoint: WebhookEndpoint, event: Event, *,
                      traceparent: str | None = None) -> Attempt:
        self.calls.append((endpoint.id, traceparent))
        return self.answers.get(endpoint.id, Attempt(ok=True, status=200, latency_ms=12.0))


async def make(*endpoints: WebhookEndpoint, answers: dict[str, Attempt] | None = None,
               sink: LogSink | None = None, http: bool = True,
               disable_after: timedelta = timedelta(hours=1)
               ) -> tuple[WebhookHandler, MemoryStore, Scripted]:
    store = MemoryStore()
    for ep in endpoints:
        await store.put_endpoint(ep)
    await store.create_payments([PAYMENT])
    await store.add_events([EVENT])
    delivery = Scripted(answers)
    handler = WebhookHandler(store=StoreFront(store),
                             http=delivery if http else None,  # type: ignore[arg-type]
                             sink=sink, policy=POLICY, max_job_bytes=65536,
                             disable_after=disable_after)
    return handler, store, delivery


def ep(name: str, **kw: Any) -> WebhookEndpoint:
    return WebhookEndpoint(id=f"ep_{name}", url=f"https://{name}.example/hook", **kw)


def job(attempt: int = 0, endpoint: str | None = None, event: Event = EVENT) -> bytes:
    return WebhookJob.for_event(event, endpoint=endpoint, attempt=attempt,
                                jid="job_1").encode()


async def outcome_of(handler: WebhookHandler, raw: bytes) -> Outcome:
    with capture_logs():
        return await handle_one(handler, raw)


async def attempts(store: MemoryStore, event_id: str = EVENT.id) -> list[DeliveryAttempt]:
    return await store.list_attempts(event_id)


FAIL = Attempt(ok=False, status=500, error="HTTP 500", latency_ms=3.0, body="oops")
REFUSED = Attempt(ok=False, error="ssrf_refused: private address", refused=True)


# --- the retry policy -------------------------------------------------------------------------


def test_the_schedule_gives_each_attempt_its_delay_and_repeats_the_last() -> None:
    class Mid(random.Random):
        def uniform(self, a: float, b: float) -> float:
            assert (a, b) == (1 - JITTER, 1 + JITTER)
            return 1.0

    rng = Mid()
    assert [POLICY.delay(n, rng) for n in (1, 2, 3, 4, 9)] == [5.0, 60.0, 600.0, 600.0, 600.0]
    assert JITTER == 0.2
    for _ in range(50):
        assert 4.0 <= POLICY.delay(1) <= 6.0


def test_retry_after_is_clamped_to_a_second_and_the_longest_delay() -> None:
    assert RETRY_AFTER_MIN == 1.0
    assert POLICY.retry_after(0.2) == 1.0
    assert POLICY.retry_after(30) == 30
    assert POLICY.retry_after(10_000) == 600.0


def test_a_verdict_is_dead_when_dead_or_refused() -> None:
    assert Verdict("dead").dead and Verdict("refused").dead
    assert not Verdict("retrying").dead and not Verdict("disabled").dead
    assert (Verdict("x").retry_in, Verdict("x").reason) == (0.0, "")


# --- what a failure leads to ------------------------------------------------------------------


async def test_a_failed_fan_out_retries_each_endpoint_alone_at_its_attempt() -> None:
    handler, store, _ = await make(ep("a"), ep("b"), ep("c"),
                                   answers={"ep_b": FAIL, "ep_c": REFUSED})
    outcome = await outcome_of(handler, job())
    assert outcome.dead is None
    ((raw, seconds),) = outcome.delay
    retry = parse_job(raw)
    assert isinstance(retry, WebhookJob)
    assert (retry.endpoint, retry.attempt, retry.event_id, retry.jid) == (
        "ep_b", 1, EVENT.id, "job_1")
    assert 5.0 * (1 - JITTER) <= seconds <= 5.0 * (1 + JITTER)
    # the refused delivery: dead-lettered beside the job, aimed at its endpoint
    ((dead_raw, reason),) = outcome.dead_jobs
    dead = parse_job(dead_raw)
    assert isinstance(dead, WebhookJob) and dead.endpoint == "ep_c" and dead.attempt == 1
    assert reason == "refused: ssrf_refused: private address"
    recorded = {a.endpoint_id: a for a in await attempts(store)}
    assert {k: a.outcome for k, a in recorded.items()} == {
        "ep_a": "succeeded", "ep_b": "retrying", "ep_c": "refused"}
    b = recorded["ep_b"]
    assert (b.attempt, b.status, b.error, b.latency_ms, b.response_body) == (
        1, 500, "HTTP 500", 3.0, "oops")
    assert b.next_retry_at is not None and b.next_retry_at > now_iso()
    assert recorded["ep_a"].next_retry_at is None


async def test_a_retry_aimed_at_one_endpoint_dies_alone_after_the_last_attempt() -> None:
    handler, store, _ = await make(ep("a"), answers={"ep_a": FAIL})
    outcome = await outcome_of(handler, job(attempt=3, endpoint="ep_a"))
    assert outcome.dead == "gave up after 4 attempts: HTTP 500"
    assert not outcome.delay and not outcome.dead_jobs
    [attempt] = await attempts(store)
    assert (attempt.outcome, attempt.attempt) == ("dead", 4)
    # one attempt earlier: retried
    handler, store, _ = await make(ep("a"), answers={"ep_a": FAIL})
    outcome = await outcome_of(handler, job(attempt=2, endpoint="ep_a"))
    ((raw, seconds),) = outcome.delay
    retry = parse_job(raw)
    assert isinstance(retry, WebhookJob) and retry.attempt == 3
    assert 600 * (1 - JITTER) <= seconds <= 600 * (1 + JITTER)


async def test_a_fan_out_job_whose_only_endpoint_dies_dead_letters_it_as_an_extra() -> None:
    """A job for the whole event (no endpoint): its one failed delivery is dead-lettered as
    a job aimed at that endpoint (``dead_jobs``), so that a replay retries it alone."""
    handler, _, _ = await make(ep("a"), answers={"ep_a": REFUSED})
    outcome = await outcome_of(handler, job())
    assert outcome.dead is None and not outcome.delay
    ((raw, reason),) = outcome.dead_jobs
    dead = parse_job(raw)
    assert isinstance(dead, WebhookJob) and dead.endpoint == "ep_a"
    assert reason.startswith("refused: ")


async def test_a_retry_aimed_at_an_endpoint_with_a_sibling_retry_is_not_dead_itself() -> None:
    handler, _, _ = await make(ep("a"), answers={"ep_a": REFUSED},
                               sink=LogSink(failure_rate=1.0, rng=random.Random(0)))
    outcome = await outcome_of(handler, job(attempt=1))
    assert outcome.dead is None
    assert len(outcome.delay) == 1 and len(outcome.dead_jobs) == 1


async def test_a_retry_after_answer_sets_the_delay() -> None:
    answer = Attempt(ok=False, status=503, error="HTTP 503", retry_after=42.0)
    handler, _store, _ = await make(ep("a"), answers={"ep_a": answer})
    outcome = await outcome_of(handler, job(endpoint="ep_a"))
    ((_, seconds),) = outcome.delay
    assert seconds == 42.0


async def test_410_disables_the_endpoint_and_nothing_follows() -> None:
    gone = Attempt(ok=False, status=410, error="HTTP 410")
    handler, store, _ = await make(ep("a"), ep("b"), answers={"ep_a": gone})
    outcome = await outcome_of(handler, job())
    assert outcome is DONE
    endpoint = (await store.get_endpoints(["ep_a"]))["ep_a"]
    assert endpoint.disabled and endpoint.disabled_reason == "the endpoint answered 410 Gone"
    assert {a.endpoint_id: a.outcome for a in await attempts(store)} == {
        "ep_a": "disabled", "ep_b": "succeeded"}


async def test_a_410_from_the_sink_is_not_a_disable() -> None:
    class GoneSink(LogSink):
        async def deliver(self, event: Event) -> Attempt:
            return Attempt(ok=False, status=410, error="HTTP 410")

    handler, store, _ = await make(sink=GoneSink(), http=False)
    outcome = await outcome_of(handler, job(endpoint=SINK))
    assert len(outcome.delay) == 1
    [attempt] = await attempts(store)
    assert (attempt.endpoint_id, attempt.outcome) == (SINK, "retrying")


async def test_an_endpoint_failing_too_long_is_disabled_not_retried() -> None:
    failing = ep("a", failing_since="2000-01-01T00:00:00.000Z")
    handler, store, _ = await make(failing, answers={"ep_a": FAIL},
                                   disable_after=timedelta(hours=1))
    outcome = await outcome_of(handler, job(endpoint="ep_a"))
    assert outcome is DONE
    endpoint = (await store.get_endpoints(["ep_a"]))["ep_a"]
    assert endpoint.disabled
    [attempt] = await attempts(store)
    assert attempt.outcome == "disabled"


async def test_a_success_clears_the_failing_streak() -> None:
    failing = ep("a", failing_since=now_iso())
    handler, store, _ = await make(failing, ep("b"))
    assert await outcome_of(handler, job()) is DONE
    endpoints = await store.get_endpoints(["ep_a", "ep_b"])
    assert endpoints["ep_a"].failing_since is None
    assert endpoints["ep_b"].failing_since is None


# --- targets ----------------------------------------------------------------------------------


async def test_disabled_and_unsubscribed_endpoints_are_not_delivered_to() -> None:
    handler, store, http = await make(ep("on"), ep("off", disabled=True),
                                      ep("other", enabled_events=("refund.success",)))
    assert await outcome_of(handler, job()) is DONE
    assert [c[0] for c in http.calls] == ["ep_on"]
    assert {a.endpoint_id: (a.outcome, a.error) for a in await attempts(store)} == {
        "ep_on": ("succeeded", None), "ep_off": ("skipped", "endpoint disabled")}


async def test_a_retry_for_a_disabled_endpoint_is_skipped() -> None:
    handler, store, http = await make(ep("off", disabled=True))
    assert await outcome_of(handler, job(attempt=1, endpoint="ep_off")) is DONE
    assert http.calls == []
    [attempt] = await attempts(store)
    assert (attempt.outcome, attempt.attempt) == ("skipped", 2)


async def test_a_retry_for_an_endpoint_no_longer_subscribed_is_invalid() -> None:
    handler, _, _ = await make(ep("other", enabled_events=("refund.success",)))
    with pytest.raises(InvalidJob, match=r"not subscribed to payment\.success"):
        await handler._one(WebhookJob.for_event(EVENT, endpoint="ep_other"))
    outcome = await outcome_of(handler, job(endpoint="ep_other"))
    assert outcome.dead == "endpoint ep_other is not subscribed to payment.success"


async def test_a_sink_retry_without_a_sink_delivers_nothing() -> None:
    handler, store, http = await make(ep("a"))
    assert await outcome_of(handler, job(endpoint=SINK)) is DONE
    assert http.calls == [] and await attempts(store) == []


async def test_a_sink_retry_goes_to_the_sink_alone() -> None:
    handler, store, http = await make(ep("a"), sink=LogSink())
    assert await outcome_of(handler, job(endpoint=SINK)) is DONE
    assert http.calls == []
    assert [(a.endpoint_id, a.outcome) for a in await attempts(store)] == [(SINK, "succeeded")]


async def test_without_http_an_endpoint_delivery_fails_and_is_retried() -> None:
    handler, store, _ = await make(ep("a"), http=False)
    outcome = await outcome_of(handler, job())
    assert len(outcome.delay) == 1
    [attempt] = await attempts(store)
    assert attempt.error == "HTTP delivery is not available here"


async def test_a_batch_delivers_to_the_sink_at_once_and_records_every_attempt() -> None:
    """Jobs going to the log sink alone are done in the batch (one add_attempts call);
    an unknown event is dead; a job with endpoints runs on."""
    handler, store, _ = await make(sink=LogSink())
    other = Event.for_payment(Payment(id="pay_2", method="upi", amount=1, currency="INR",
                                      status=PaymentStatus.FAILED))
    await store.add_events([other])
    calls: list[int] = []
    real = store.add_attempts

    async def add_attempts(items: Sequence[DeliveryAttempt]) -> None:
        calls.append(len(items))
        await real(items)

    store.add_attempts = add_attempts  # type: ignore[method-assign,assignment]
    missing = WebhookJob(event_id="evt_nope", event_type="payment.success",
                         subject_id="pay_9").encode()
    with capture_logs():
        batch = await handler.batch([job(), missing, job(event=other)])
    first, unknown, second = batch.outcomes
    assert first is DONE and second is DONE
    assert isinstance(unknown, Outcome) and unknown.dead == "unknown event 'evt_nope'"
    assert calls == [2]
    for event in (EVENT, other):
        [attempt] = await attempts(store, event.id)
        assert (attempt.endpoint_id, attempt.outcome, attempt.attempt) == (SINK, "succeeded", 1)


async def test_a_batch_with_endpoints_or_a_failing_sink_runs_the_delivery_on() -> None:
    handler, _, http = await make(ep("a"), sink=LogSink())
    with capture_logs():
        batch = await handler.batch([job()])
    [pending] = batch.outcomes
    assert not isinstance(pending, Outcome)
    assert await pending is DONE
    assert [c[0] for c in http.calls] == ["ep_a"]
    handler, _store, _ = await make(sink=LogSink(failure_rate=1.0))
    with capture_logs():
        [pending] = (await handler.batch([job()])).outcomes
    assert not isinstance(pending, Outcome)
    outcome = await pending
    assert len(outcome.delay) == 1


async def test_a_batch_without_a_sink_and_subscribers_records_nothing() -> None:
    handler, store, _ = await make()
    with capture_logs() as logs:
        [pending] = (await handler.batch([job()])).outcomes
        assert await pending is DONE  # type: ignore[misc]
    assert await attempts(store) == []
    assert any(e["event"] == "webhook.no_subscribers" for e in logs)


# --- legacy jobs ------------------------------------------------------------------------------


async def test_a_legacy_refund_job_derives_its_event_from_the_refund() -> None:
    handler, store, _ = await make(sink=LogSink())
    refund = Refund(id="re_1", payment_id="pay_1", amount=10, currency="INR")
    assert await store.reserve_refund(refund) is None
    outcome = await outcome_of(handler, b"webhook:refund.success:re_1")
    assert outcome.dead is not None and "no refund.success event for 're_1'" in outcome.dead
    from payflow.store.base import RefundCompletion

    await StoreFront(store).complete_refund(RefundCompletion(refund_id="re_1",
                                                             new=RefundStatus.SUCCEEDED))
    # completing records the event: a legacy job finds it
    assert await outcome_of(handler, b"webhook:refund.success:re_1") is DONE
    [attempt] = await attempts(store, event_id_for("re_1", "refund.success"))
    assert attempt.outcome == "succeeded"


async def test_a_legacy_job_derives_and_records_an_event_the_store_lacks() -> None:
    handler, store, _ = await make(sink=LogSink())
    await store.create_payments([Payment(id="pay_2", method="upi",
                                         status=PaymentStatus.FAILED)])
    assert await outcome_of(handler, b"webhook:payment.failed:pay_2") is DONE
    event_id = event_id_for("pay_2", "payment.failed")
    assert event_id in await store.get_events([event_id])
    outcome = await outcome_of(handler, b"webhook:payment.success:pay_2")
    assert outcome.dead is not None and "no payment.success event for 'pay_2'" in outcome.dead


# --- metrics ----------------------------------------------------------------------------------


def value(name: str, labels: dict[str, str]) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


async def test_attempts_are_counted_by_outcome_status_and_endpoint() -> None:
    handler, _store, _ = await make(ep("m1"), answers={"ep_m1": FAIL}, sink=LogSink())
    keys = {
        "retrying_5xx": ("payflow_webhook_attempts_total", {"outcome": "retrying",
                                                            "status": "5xx"}),
        "sink_ok": ("payflow_webhook_attempts_total", {"outcome": "succeeded",
                                                       "status": "none"}),
        "by_ep": ("payflow_webhook_attempts_by_endpoint_total", {"endpoint": "ep_m1",
                                                                 "outcome": "retrying"}),
        "by_sink": ("payflow_webhook_attempts_by_endpoint_total", {"endpoint": SINK,
                                                                   "outcome": "succeeded"}),
        "seconds": ("payflow_webhook_delivery_seconds_count", {}),
        "seconds_sum": ("payflow_webhook_delivery_seconds_sum", {}),
    }
    before = {k: value(*v) for k, v in keys.items()}
    await outcome_of(handler, job())
    after = {k: value(*v) - before[k] for k, v in keys.items()}
    assert after == {"retrying_5xx": 1, "sink_ok": 1, "by_ep": 1, "by_sink": 0, "seconds": 2,
                     "seconds_sum": pytest.approx(0.003)}


async def test_sink_batches_and_skips_are_counted_without_latency() -> None:
    handler, _, _ = await make(sink=LogSink())
    ok = ("payflow_webhook_attempts_total", {"outcome": "succeeded", "status": "none"})
    seconds: tuple[str, dict[str, str]] = ("payflow_webhook_delivery_seconds_count", {})
    before: tuple[float, ...] = value(*ok), value(*seconds)
    with capture_logs():
        await handler.batch([job(), job()])
    assert (value(*ok) - before[0], value(*seconds) - before[1]) == (2, 2)
    handler, _store, _ = await make(ep("off", disabled=True))
    skipped = ("payflow_webhook_attempts_total", {"outcome": "skipped", "status": "error"})
    by_ep = ("payflow_webhook_attempts_by_endpoint_total", {"endpoint": "ep_off",
                                                           "outcome": "skipped"})
    before = value(*skipped), value(*seconds), value(*by_ep)
    await outcome_of(handler, job())
    assert (value(*skipped) - before[0], value(*seconds) - before[1],
            value(*by_ep) - before[2]) == (1, 0, 1)


# --- what the batch path checks ---------------------------------------------------------------


async def test_a_batch_dead_letters_a_bad_job_and_goes_on_with_the_others() -> None:
    handler, store, _ = await make(sink=LogSink())
    handler.max_job_bytes = 400
    with capture_logs():
        batch = await handler.batch([b"", b"x" * 401, job()])
    empty, big, good = batch.outcomes
    assert isinstance(empty, Outcome) and empty.dead == "empty job"
    assert isinstance(big, Outcome) and big.dead == (
        "job of 401 bytes exceeds the limit of 400 bytes")
    assert good is DONE
    [attempt] = await attempts(store)
    assert attempt.outcome == "succeeded"


async def test_an_endpoint_subscribed_to_the_event_type_alone_gets_it() -> None:
    """Not only ``*``: an endpoint that lists the event's type is delivered to, in a batch,
    a fan-out job and a retry aimed at it."""
    only = ep("only", enabled_events=("payment.success",))
    handler, _, http = await make(only)
    with capture_logs():
        [pending] = (await handler.batch([job()])).outcomes
    assert not isinstance(pending, Outcome)
    assert await pending is DONE
    assert await outcome_of(handler, WebhookJob(event_type="payment.success",
                                                subject_id="pay_1").encode()) is DONE
    assert await outcome_of(handler, job(attempt=1, endpoint="ep_only")) is DONE
    assert [c[0] for c in http.calls] == ["ep_only"] * 3


async def test_attempt_records_have_their_own_ids_and_times() -> None:
    handler, store, _ = await make(ep("a"), answers={"ep_a": FAIL}, sink=LogSink())
    before = now_iso()
    await outcome_of(handler, job())
    handler2, store2, _ = await make(sink=LogSink())
    with capture_logs():
        await handler2.batch([job()])
    recorded = await attempts(store) + await attempts(store2)
    assert len(recorded) >= 3
    assert all(a.id.startswith("att_") for a in recorded)
    assert len({a.id for a in recorded}) == len(recorded)
    assert all(isinstance(a.at, str) and a.at >= before for a in recorded)


async def test_the_seed_lines_name_the_event() -> None:
    handler, _, _ = await make(ep("a"), answers={"ep_a": FAIL}, sink=LogSink())
    with capture_logs() as logs:
        await handle_one(handler, job())
    text = "webhook:payment.success:pay_1"
    events = [e["event"] for e in logs]
    assert f"Delivering webhook: {text}" in events
    assert f"Webhook delivery failed: {text}" in events
    handler, _, _ = await make(sink=LogSink())
    with capture_logs() as logs:
        await handler.batch([job()])
    assert [e["event"] for e in logs] == [f"Delivering webhook: {text}",
                                          f"Webhook delivered: {text}"]
    handler, _, _ = await make(ep("a"), answers={"ep_a": REFUSED})
    with capture_logs() as logs:
        await handle_one(handler, job())
    assert f"Webhook refused: {text}" in [e["event"] for e in logs]


async def test_the_sink_is_given_the_event() -> None:
    given: list[Event] = []

    class Recording(LogSink):
        async def deliver(self, event: Event) -> Attempt:
            given.append(event)
            return await super().deliver(event)

    handler, _, _ = await make(ep("a"), sink=Recording())
    await outcome_of(handler, job())
    assert given == [EVENT]


async def test_a_retry_naming_an_unknown_event_says_which() -> None:
    handler, _, _ = await make(ep("a"))
    with pytest.raises(InvalidJob) as caught:
        await handler._one(WebhookJob(event_id="evt_nope", event_type="payment.success",
                                      subject_id="pay_1", endpoint="ep_a"))
    assert caught.value.reason == "unknown event 'evt_nope'"


async def test_disabling_and_dead_records_name_the_endpoint_and_attempt() -> None:
    gone = Attempt(ok=False, status=410, error="HTTP 410")
    disabled_by = ("payflow_webhook_endpoints_disabled_total", {"cause": "gone"})
    before = value(*disabled_by)
    handler, store, _ = await make(ep("a"), answers={"ep_a": gone})
    await outcome_of(handler, job(attempt=1, endpoint="ep_a"))
    [a] = await attempts(store)
    assert (a.endpoint_id, a.attempt, a.outcome) == ("ep_a", 2, "disabled")
    assert value(*disabled_by) - before == 1

    failing = ep("b", failing_since="2000-01-01T00:00:00.000Z")
    handler, store, _ = await make(failing, answers={"ep_b": FAIL})
    await outcome_of(handler, job(attempt=2, endpoint="ep_b"))
    [a] = await attempts(store)
    assert (a.endpoint_id, a.attempt, a.outcome) == ("ep_b", 3, "disabled")

    handler, store, _ = await make(ep("c"), answers={"ep_c": FAIL})
    await outcome_of(handler, job(attempt=3, endpoint="ep_c"))
    [a] = await attempts(store)
    assert (a.endpoint_id, a.attempt, a.outcome) == ("ep_c", 4, "dead")


async def test_a_legacy_refund_job_derives_a_refund_event_the_store_lacks() -> None:
    handler, store, _ = await make(sink=LogSink())
    done = Refund(id="re_2", payment_id="pay_1", amount=10, currency="INR",
                  status=RefundStatus.SUCCEEDED)
    assert await store.reserve_refund(done) is None  # no event recorded for it
    event_id = event_id_for("re_2", "refund.success")
    assert await store.get_events([event_id]) == {}
    assert await outcome_of(handler, b"webhook:refund.success:re_2") is DONE
    recorded = await store.get_events([event_id])
    assert recorded[event_id] == Event.for_refund(done)
    outcome = await outcome_of(handler, b"webhook:refund.failed:re_2")
    assert outcome.dead is not None and "no refund.failed event for 're_2'" in outcome.dead


async def test_sink_batches_observe_no_latency() -> None:
    handler, _, _ = await make(sink=LogSink())
    total: tuple[str, dict[str, str]] = ("payflow_webhook_delivery_seconds_sum", {})
    count: tuple[str, dict[str, str]] = ("payflow_webhook_delivery_seconds_count", {})
    before = value(*total), value(*count)
    with capture_logs():
        await handler.batch([job(), job()])
    assert (value(*total) - before[0], value(*count) - before[1]) == (0, 2)


# --- spans --------------------------------------------------------------------------------------


async def test_a_single_delivery_sends_its_span_context(spans: InMemorySpanExporter) -> None:
    handler, _, http = await make(ep("a"))
    await outcome_of(handler, job())
    [(endpoint_id, traceparent)] = http.calls
    [span] = [s for s in spans.get_finished_spans() if s.name == "webhook.deliver"]
    assert endpoint_id == "ep_a" and traceparent is not None
    assert span.context is not None
    assert traceparent.split("-")[2] == format(span.context.span_id, "016x")


async def test_a_delivery_that_raises_fails_its_spans(spans: InMemorySpanExporter) -> None:
    class Broken(Scripted):
        async def deliver(self, endpoint: WebhookEndpoint, event: Event, *,
                          traceparent: str | None = None) -> Attempt:
            raise RuntimeError("boom")

    handler, _, _ = await make(ep("a"), ep("b"))
    handler.http = Broken()  # type: ignore[assignment]
    with pytest.raises(RuntimeError), capture_logs():
        await handler._one(WebhookJob.for_event(EVENT))
    ended = [s for s in spans.get_finished_spans() if s.name == "webhook.deliver"]
    assert len(ended) == 2
    for span in ended:
        assert span.status.status_code is StatusCode.ERROR
        assert span.status.description == "RuntimeError: boom"
