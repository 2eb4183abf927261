"""The promoter: moves due jobs from ``{<q>}:delayed`` back onto ``<q>``.

The move is one Lua script that reads Redis' own ``TIME``, so the clocks of several daemons do
not matter and several promoters running at once cannot move a job twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from payflow.queue.backoff import Backoff
from payflow.queue.consumer import wait_or_stop
from payflow.queue.redis import Scripts, promote_due

log = structlog.get_logger("payflow.queue")

BATCH = 1000


async def run_promoter(redis: Redis, queues: Sequence[str], *, interval: float,
                       stop: asyncio.Event) -> None:
    scripts = Scripts(redis)
    backoff = Backoff("queue.promote_failed")
    while not stop.is_set():
        try:
            busy = False
            for queue in queues:
                moved = await promote_due(redis, scripts, queue, BATCH)
                if moved:
                    log.debug("queue.promoted", queue=queue, jobs=moved)
                busy = busy or moved == BATCH
            backoff.succeeded()
        except (RedisError, OSError) as exc:
            await wait_or_stop(stop, backoff.failed(exc))
            continue
        if not busy:
            await wait_or_stop(stop, interval)
