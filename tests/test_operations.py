"""Processing rates: sampled from the job counters with each heartbeat over a one-minute
window (``JobRates``), published in the daemon registry, summed over the live daemons by
``payflow.operations.gather`` and printed by ``payflow status``."""

from __future__ import annotations

import asyncio
import json

from redis.asyncio import Redis

from payflow import metrics
from payflow.cli.status import render
from payflow.models import Event, Payment, PaymentStatus
from payflow.operations import gather
from payflow.queue import keys
from payflow.queue.liveness import JobRates, Liveness, job_counts

Q, W = "payflow_jobs", "webhook_jobs"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_rates_over_the_last_minute() -> None:
    clock = Clock()
    counts: dict[tuple[str, str], float] = {}
    rates = JobRates([Q, W, Q], clock=clock, read=lambda: dict(counts))
    assert rates.queues == [Q, W]
    zero = {"done": 0.0, "retried": 0.0, "dead": 0.0}
    assert rates.sample() == {Q: zero, W: zero}  # no time has passed: nothing to measure
    for _ in range(30):  # 2 s heartbeats, 10 jobs done and 1 retried per beat
        clock.now += 2
        counts[Q, "done"] = counts.get((Q, "done"), 0) + 10
        counts[W, "retried"] = counts.get((W, "retried"), 0) + 1
        published = rates.sample()
    assert published == {Q: {**zero, "done": 5.0}, W: {**zero, "retried": 0.5}}
    # then the queue goes idle: the rate falls as the busy minute leaves the window
    for _ in range(15):
        clock.now += 2
        published = rates.sample()
    assert published[Q]["done"] == 2.5  # 30 s of 5/s in the last 60 s
    for _ in range(15):
        clock.now += 2
        published = rates.sample()
    assert published == {Q: zero, W: zero}
    assert len(rates._samples) <= 32  # the window's samples only


def test_rates_before_a_minute_has_passed_cover_the_time_so_far() -> None:
    clock = Clock()
    counts = {(Q, "dead"): 0.0}
    rates = JobRates([Q], clock=clock, read=lambda: dict(counts))
    clock.now += 4
    counts[Q, "dead"] = 2
    assert rates.sample()[Q]["dead"] == 0.5


def test_the_counters_are_read_from_the_metrics() -> None:
    metrics.JOBS.labels("ops_test_q", "done").inc(3)
    metrics.JOBS.labels("ops_test_q", "dead").inc()
    counts = job_counts()
    assert counts["ops_test_q", "done"] == 3 and counts["ops_test_q", "dead"] == 1


async def test_the_heartbeat_publishes_the_rates(fake_redis: Redis) -> None:
    liveness = Liveness(fake_redis, daemon_id="d1",
                        lists=[(Q, keys.processing(Q, "d1:p0")),
                               (W, keys.processing(W, "d1:w0"))],
                        heartbeat_seconds=2, ttl_seconds=10, reap_interval=5,
                        max_redeliveries=3, stop=asyncio.Event())
    clock = Clock()
    counts = {(Q, "done"): 0.0}
    liveness.rates = JobRates([Q, W], clock=clock, read=lambda: dict(counts))
    clock.now += 10
    counts[Q, "done"] = 40
    await liveness.beat()
    entry = json.loads(await fake_redis.hget(keys.DAEMONS, "d1") or b"")
    assert entry["rates"] == {Q: {"done": 4.0, "retried": 0.0, "dead": 0.0},
                              W: {"done": 0.0, "retried": 0.0, "dead": 0.0}}
    assert entry["rate_window_seconds"] == 60
    assert entry["lists"] == [[Q, keys.processing(Q, "d1:p0")],
                              [W, keys.processing(W, "d1:w0")]]

    report = await gather(fake_redis, [Q, W])
    assert report["rates"] == entry["rates"]
    assert report["daemons"][0]["rates"] == entry["rates"]
    # once its heartbeat expires its rates no longer count
    await fake_redis.delete(keys.heartbeat("d1"))
    report = await gather(fake_redis, [Q, W])
    assert report["rates"][Q]["done"] == 0
    assert report["daemons"][0]["rates"][Q]["done"] == 4.0


async def test_gather_tolerates_odd_registry_entries(fake_redis: Redis) -> None:
    entries = {"old": {"host": "h", "lists": []},  # a daemon from before rates
               "odd": {"lists": [], "rates": {Q: {"done": "fast", "dead": True, "x": 1,
                                                  "retried": 2}, "7": [], W: None}},
               "junk": "not json"}
    for daemon_id, info in entries.items():
        await fake_redis.hset(keys.DAEMONS, daemon_id,
                              info if isinstance(info, str) else json.dumps(info))
        await fake_redis.set(keys.heartbeat(daemon_id), "2026-01-01T00:00:00+00:00")
    report = await gather(fake_redis, [Q, W])
    assert report["rates"] == {Q: {"done": 0.0, "retried": 2.0, "dead": 0.0},
                               W: {"done": 0.0, "retried": 0.0, "dead": 0.0}}
    assert {d["id"]: d["rates"] for d in report["daemons"]} == {
        "junk": {}, "odd": {Q: {"retried": 2.0}}, "old": {}}


def test_status_prints_the_rates() -> None:
    report = {"queues": {Q: {"ready": 1, "processing": 2, "delayed": 3, "dead": 4}},
              "rates": {Q: {"done": 12.345, "retried": 0.5, "dead": 0.0}},
              "daemons": [], "stores": []}
    lines = render(report).splitlines()
    assert lines[0].split() == ["QUEUE", "READY", "PROCESSING", "DELAYED", "DEAD", "DONE/S",
                                "RETRIED/S", "DEAD/S"]
    assert lines[1].split() == [Q, "1", "2", "3", "4", "12.35", "0.50", "0.00"]
    assert lines[1].endswith("0.00") and lines[0].endswith("DEAD/S")  # right-aligned


def test_the_documented_rates_are_the_published_outcomes() -> None:
    """QueueRates (the OpenAPI component of the rates maps) names the outcomes JobRates
    publishes and queue_status sums, in their order."""
    from payflow.operations import QueueRates
    from payflow.queue.liveness import RATE_OUTCOMES

    assert tuple(QueueRates.__annotations__) == RATE_OUTCOMES


def test_the_api_view_of_an_event_is_its_webhook_body_with_object_first() -> None:
    """``Event.to_api_dict``: what /v1/events and /v1/payments/{id}/events answer."""
    event = Event.for_payment(Payment(id="pay_1", method="upi", status=PaymentStatus.SUCCEEDED))
    view = event.to_api_dict()
    assert view == {"object": "event", **event.to_dict()}
    assert list(view) == ["object", "id", "type", "timestamp", "data"]
