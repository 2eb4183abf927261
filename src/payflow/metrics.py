"""Prometheus metrics (prometheus-client), served at ``/metrics``.

Counters and histograms are updated where things happen; queue depths are sampled from Redis
every few seconds by :func:`run_sampler`, so a scrape never waits on Redis.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from redis.asyncio import Redis
from redis.exceptions import RedisError

from payflow.queue import keys

log = structlog.get_logger("payflow.metrics")

REGISTRY = CollectorRegistry(auto_describe=True)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

JOBS = Counter("payflow_jobs", "Jobs handled, by queue and outcome (done, retried, dead; a "
               "job passed on to the other queue is done).", ["queue", "outcome"],
               registry=REGISTRY)
IN_FLIGHT = Gauge("payflow_jobs_in_flight", "Jobs being handled now, by queue.", ["queue"],
                  registry=REGISTRY)
JOB_SECONDS = Histogram("payflow_job_seconds", "Time to handle one job, by queue.", ["queue"],
                        buckets=_LATENCY, registry=REGISTRY)
QUEUE_DEPTH = Gauge("payflow_queue_jobs", "Jobs in Redis, by queue and state (ready, delayed, "
                    "dead), sampled.", ["queue", "state"], registry=REGISTRY)
PAYMENTS = Counter("payflow_payments", "Payments that reached a terminal state, by status.",
                   ["status"], registry=REGISTRY)
REFUNDS = Counter("payflow_refunds", "Refunds that finished, by status.", ["status"],
                  registry=REGISTRY)
WEBHOOK_ATTEMPTS = Counter("payflow_webhook_attempts", "Webhook delivery attempts, by outcome "
                           "and HTTP status class.", ["outcome", "status"], registry=REGISTRY)
WEBHOOK_SECONDS = Histogram("payflow_webhook_delivery_seconds", "Time of one delivery attempt.",
                            buckets=_LATENCY, registry=REGISTRY)
DEAD_TRIMMED = Counter("payflow_dead_trimmed", "Oldest dead-letter entries dropped to keep a "
                       "dead list within [queue] dead_max_entries, by queue.", ["queue"],
                       registry=REGISTRY)
WEBHOOK_ATTEMPTS_BY_ENDPOINT = Counter(
    "payflow_webhook_attempts_by_endpoint", "Webhook delivery attempts to endpoints (not the log "
    "sink), by endpoint id and outcome.", ["endpoint", "outcome"], registry=REGISTRY)
REDIS_RECONNECTS = Counter("payflow_redis_reconnects", "Consumers whose fetch or settle "
                           "succeeded after failed ones (queue.reconnected), by queue.", ["queue"],
                           registry=REGISTRY)
HTTP_REQUESTS = Counter("payflow_http_requests", "HTTP requests answered, by method, route "
                        "template (unmatched: no route) and status.", ["method", "route", "status"],
                        registry=REGISTRY)
HTTP_SECONDS = Histogram("payflow_http_request_seconds", "Time to answer an HTTP request, by "
                         "method and route template.", ["method", "route"], buckets=_LATENCY,
                         registry=REGISTRY)
ENDPOINTS_DISABLED = Counter("payflow_webhook_endpoints_disabled", "Endpoints disabled, by "
                             "cause (gone, failing, api).", ["cause"], registry=REGISTRY)


def status_class(status: int | None, *, ok: bool = False) -> str:
    """``2xx``…``5xx``; without an HTTP answer ``none`` for a success (the log sink) and
    ``error`` for a failure (timeout, refused, connection)."""
    if status is None:
        return "none" if ok else "error"
    return f"{status // 100}xx"


def render() -> bytes:
    return generate_latest(REGISTRY)


async def sample_queues(redis: Redis, queues: Sequence[str]) -> None:
    async with redis.pipeline(transaction=False) as pipe:
        for queue in queues:
            pipe.llen(queue)
            pipe.zcard(keys.delayed(queue))
            pipe.llen(keys.dead(queue))
        counts = await pipe.execute()
    for i, queue in enumerate(queues):
        ready, delayed, dead = counts[3 * i:3 * i + 3]
        QUEUE_DEPTH.labels(queue, "ready").set(ready)
        QUEUE_DEPTH.labels(queue, "delayed").set(delayed)
        QUEUE_DEPTH.labels(queue, "dead").set(dead)


async def run_sampler(redis: Redis, queues: Sequence[str], *, interval: float,
                      stop: asyncio.Event) -> None:
    from payflow.queue.consumer import wait_or_stop

    while not stop.is_set():
        try:
            await sample_queues(redis, queues)
        except (RedisError, OSError) as exc:
            log.debug("metrics.sample_failed", error=f"{type(exc).__name__}: {exc}")
        await wait_or_stop(stop, interval)
