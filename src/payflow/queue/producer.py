"""Pushing the API's jobs: concurrent pushes share one round trip, and a failure says whether
the job may have reached Redis.

The pushes onto a queue go out as one ``LPUSH`` with many values (a serial
:class:`~payflow.store.front.Coalescer`: while one ``LPUSH`` is in flight the next requests'
jobs gather for the next), on one connection this producer owns: a thousand concurrent
requests never need a thousand connections, and the busier it is the bigger the batches.

A push fails with :class:`NotSent` when Redis could not be reached (nothing happened), and with
:class:`Uncertain` when the command was sent but no answer came (Redis stalled or went away
mid-command: the job may be queued, or not). After an idle second, or a failure, a PING goes
first, so that a Redis that went away meanwhile is found out before anything is sent. The
caller keeps what it stored in the second case; the sweeper re-queues a payment whose job was
lost, and a duplicate job is a no-op.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

from redis.asyncio import Redis
from redis.exceptions import RedisError

from payflow.store.front import Coalescer

ERRORS = (RedisError, OSError, TimeoutError)
IDLE_CHECK_SECONDS = 1.0


class NotSent(Exception):
    """Redis could not be reached: the push did not happen."""


class Uncertain(Exception):
    """The push was sent but its answer was lost: it may have happened."""


class Producer:
    def __init__(self, redis: Redis, queues: Sequence[str]) -> None:
        """``redis``: a single-connection client without retries (a retry could send twice
        and hide which attempt was lost)."""
        self.redis = redis
        self._last_ok = float("-inf")  # loop time of the last push that Redis answered
        self._pushers = {queue: Coalescer(self._lpush(queue), serial=True) for queue in queues}

    def _lpush(self, queue: str) -> Callable[[list[bytes]], Awaitable[list[None]]]:
        async def run(raws: list[bytes]) -> list[None]:
            loop = asyncio.get_running_loop()
            try:
                if loop.time() - self._last_ok > IDLE_CHECK_SECONDS:
                    # Idle for a while, or the last push failed: Redis may be away, which only
                    # a command would show, and then too late to know. A PING first costs one
                    # round trip, only then.
                    await self.redis.ping()
            except ERRORS as exc:
                raise NotSent(f"{type(exc).__name__}: {exc}") from exc
            try:
                await self.redis.lpush(queue, *raws)
            except ERRORS as exc:
                self._last_ok = float("-inf")
                raise Uncertain(f"{type(exc).__name__}: {exc}") from exc
            self._last_ok = loop.time()
            return [None] * len(raws)

        return run

    async def push(self, queue: str, raw: bytes) -> None:
        await self._pushers[queue](raw)
