"""The consumer loop shared by payment and webhook consumers.

Fetch a batch (one round trip), run the handler on each job, record the outcomes (one atomic
round trip per batch, or per job when ``settle_each``), repeat. A failure is requeued through
the delayed ZSET by the settle step; a consumer never sleeps on a retry. Redis going away makes
the loop back off and reconnect; it never exits on an error, only when ``stop`` is set.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable, Sequence

import structlog
from redis.exceptions import RedisError

from payflow import metrics
from payflow.errors import InvalidJob
from payflow.jobs import describe
from payflow.queue.backoff import full_jitter
from payflow.queue.redis import QueueClient, Settlement

log = structlog.get_logger("payflow.queue")

# A consumer whose last batch was short waits this long before fetching again, so that a
# trickle of jobs is taken in batches rather than one round trip each (see ARCHITECTURE.md).
SHORT_BATCH_PAUSE = 0.005
# How often a streaming consumer with jobs in flight looks for new jobs (non-blocking).
STREAM_POLL = 0.05


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Outcome:
    """What became of one job. The job itself is always removed from the processing list."""

    push: Sequence[bytes] = ()  # jobs for the other queue (e.g. the webhook of a payment)
    delay: Sequence[tuple[bytes, float]] = ()  # (job, seconds): retries through {q}:delayed
    dead: str | None = None  # the reason this job is dead-lettered
    dead_jobs: Sequence[tuple[bytes, str]] = ()  # (job, reason): other jobs to dead-letter
    after: Callable[[], Awaitable[None]] | None = None  # runs once the outcome is in Redis


Handler = Callable[[bytes], Awaitable[Outcome]]


class Consumer:
    def __init__(
        self,
        *,
        client: QueueClient,
        handler: Handler,
        stop: asyncio.Event,
        batch_size: int,
        block_seconds: float,
        settle_each: bool = False,
    ) -> None:
        self.client = client
        self.handler = handler
        self.stop = stop
        self.batch_size = batch_size
        self.block_seconds = block_seconds
        self.settle_each = settle_each
        self.log = log.bind(consumer=client.consumer_id, queue=client.queue)
        self._in_flight = metrics.IN_FLIGHT.labels(client.queue)
        self._seconds = metrics.JOB_SECONDS.labels(client.queue)
        self._counted = {kind: metrics.JOBS.labels(client.queue, kind)
                         for kind in ("done", "retried", "dead")}
        self._dead_trimmed = metrics.DEAD_TRIMMED.labels(client.queue)
        self._reconnects = metrics.REDIS_RECONNECTS.labels(client.queue)
        self._failures = 0  # consecutive failed fetches
        self._orphans = False  # a failed fetch may have moved jobs we never saw
        self._resume_at = 0.0  # loop time before which a streaming consumer does not fetch

    async def run(self) -> None:
        """Until ``stop``: in batches (payments), or streaming (webhooks: ``settle_each``)."""
        if self.settle_each:
            await self._stream()
        else:
            await self._batches()

    async def _fetch(self, room: int, *, idle: bool) -> list[bytes] | None:
        """Up to ``room`` jobs, blocking only when ``idle`` (nothing of ours in flight). None
        after a failure: logged, and backed off (waited when idle, else remembered)."""
        loop = asyncio.get_running_loop()
        try:
            # A fetch whose reply was lost (Redis went away) may have moved jobs into our
            # processing list that we never saw; once nothing of ours is in flight, every job
            # in that list is such an orphan.
            if idle and self._orphans:
                if moved := await self.client.requeue_all():
                    self.log.warning("queue.recovered_unseen_jobs", jobs=moved)
                self._orphans = False
            raws = await self.client.fetch(room, self.block_seconds if idle else 0)
        except (RedisError, OSError) as exc:
            self._failures += 1
            self._orphans = True
            delay = full_jitter(self._failures, base=0.1, cap=5.0)
            self.log.warning("queue.fetch_failed", error=f"{type(exc).__name__}: {exc}",
                             retry_in=round(delay, 3))
            if idle:
                await wait_or_stop(self.stop, delay)
            else:
                self._resume_at = loop.time() + delay
            return None
        if self._failures:
            self.log.info("queue.reconnected", after_failures=self._failures)
            self._reconnects.inc()
            self._failures = 0
        return raws

    async def _batches(self) -> None:
        while not self.stop.is_set():
            raws = await self._fetch(self.batch_size, idle=True)
            if not raws:
                continue
            await self._run_and_settle(raws)
            if len(raws) < self.batch_size:
                await asyncio.sleep(SHORT_BATCH_PAUSE)

    async def _run_and_settle(self, raws: list[bytes]) -> None:
        """Run a batch; record all its outcomes in one round trip."""
        self._in_flight.inc(len(raws))
        try:
            outcomes = await asyncio.gather(*(self._outcome(raw) for raw in raws))
            await self._record(list(zip(raws, outcomes, strict=True)))
        finally:
            self._in_flight.dec(len(raws))

    async def _stream(self) -> None:
        """Keep up to ``batch_size`` jobs in flight, fetch more as they finish, and record
        finished jobs in waves (those done by then, in one round trip): a slow job (a webhook
        receiver taking its time) holds back neither the acks nor the fetching of others."""
        loop = asyncio.get_running_loop()
        running: dict[asyncio.Future[Outcome], bytes] = {}
        try:
            while not self.stop.is_set():
                room = self.batch_size - len(running)
                if room > 0 and loop.time() >= self._resume_at:
                    fetched = await self._fetch(room, idle=not running) or ()
                    for raw in fetched:
                        running[asyncio.ensure_future(self._outcome(raw))] = raw
                    if fetched:
                        self._in_flight.inc(len(fetched))
                if running:
                    done, _ = await asyncio.wait(running, timeout=STREAM_POLL,
                                                 return_when=asyncio.FIRST_COMPLETED)
                    await self._record_done(running, done)
                elif loop.time() < self._resume_at:  # backing off while jobs were in flight
                    await wait_or_stop(self.stop, self._resume_at - loop.time())
            while running:  # stopping: let them finish (the daemon's grace period bounds this)
                done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                await self._record_done(running, done)
        finally:
            for task in running:  # cancelled at shutdown: the jobs stay in the processing list
                task.cancel()
            self._in_flight.dec(len(running))

    async def _record_done(self, running: dict[asyncio.Future[Outcome], bytes],
                           done: set[asyncio.Future[Outcome]]) -> None:
        if not done:
            return
        wave = [(running.pop(task), task.result()) for task in done]
        self._in_flight.dec(len(wave))
        await self._record(wave)

    async def _record(self, finished: list[tuple[bytes, Outcome]]) -> None:
        settlement = Settlement()
        for raw, outcome in finished:
            for job in outcome.push:
                settlement.push(job)
            for job, seconds in outcome.delay:
                settlement.delay(job, seconds)
            for job, reason in outcome.dead_jobs:
                settlement.dead(self.client.dead_entry(job, reason))
            if outcome.dead is not None:
                settlement.dead(self.client.dead_entry(raw, outcome.dead))
            settlement.ack(raw)
        # Recording the outcome must not be interrupted half-way by a shutdown.
        await asyncio.shield(self._settle(settlement))
        afters = []
        counts = {"done": 0, "retried": 0, "dead": 0}
        for _, outcome in finished:
            counts["dead" if outcome.dead is not None else
                   "retried" if outcome.delay else "done"] += 1
            if outcome.after is not None:
                afters.append(outcome.after())
        for kind, count in counts.items():  # once per batch, not per job
            if count:
                self._counted[kind].inc(count)
        # Side by side, so that a store coalesces them into one round trip.
        for failure in await asyncio.gather(*afters, return_exceptions=True):
            if isinstance(failure, Exception):
                self.log.error("queue.after_failed", error=f"{type(failure).__name__}: "
                                                          f"{failure}")
            elif isinstance(failure, BaseException):
                raise failure

    async def _outcome(self, raw: bytes) -> Outcome:
        started = time.perf_counter()
        try:
            return await self._run_handler(raw)
        finally:
            self._seconds.observe(time.perf_counter() - started)

    async def _run_handler(self, raw: bytes) -> Outcome:
        try:
            return await self.handler(raw)
        except InvalidJob as exc:
            self.log.error("Job rejected: dead-lettered", reason=exc.reason, job=describe(raw))
            return Outcome(dead=exc.reason)
        except Exception as exc:
            self.log.exception("Job failed unexpectedly: dead-lettered", job=describe(raw))
            return Outcome(dead=f"internal error: {type(exc).__name__}: {exc}")

    async def _settle(self, settlement: Settlement) -> None:
        """Record a batch's outcome, retrying while Redis is away. The script is safe to run
        again: an ack of a job already removed is a no-op, and a job pushed twice carries the
        same event id, which receivers deduplicate on."""
        attempt = 0
        while True:
            try:
                trimmed = await self.client.settle(settlement)
                break
            except (RedisError, OSError) as exc:
                attempt += 1
                delay = full_jitter(attempt, base=0.1, cap=5.0)
                self.log.warning("queue.settle_failed", error=f"{type(exc).__name__}: {exc}",
                             retry_in=round(delay, 3))
                await asyncio.sleep(delay)
        if trimmed:
            self._dead_trimmed.inc(trimmed)
            self.log.warning("queue.dead_trimmed", trimmed=trimmed,
                             limit=self.client.dead_max_entries)


async def wait_or_stop(event: asyncio.Event, seconds: float) -> None:
    """Sleep ``seconds`` or until ``event`` is set, whichever is first."""
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        pass
