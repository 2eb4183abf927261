"""The consumer loop shared by payment and webhook consumers.

Fetch a batch (one round trip), run the handler on each job, record the outcomes (one atomic
round trip per batch, or per job when ``settle_each``), repeat. A failure is requeued through
the delayed ZSET by the settle step; a consumer never sleeps on a retry. Redis going away makes
the loop back off and reconnect; it never exits on an error, only when ``stop`` is set.
"""

from __future__ import annotations

import asyncio
import dataclasses
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

    async def run(self) -> None:
        failures = 0
        while not self.stop.is_set():
            try:
                # A fetch whose reply was lost (Redis went away) may have moved jobs into our
                # processing list that we never saw; nothing else is in flight here.
                if failures and (moved := await self.client.requeue_all()):
                    self.log.warning("queue.recovered_unseen_jobs", jobs=moved)
                raws = await self.client.fetch(self.batch_size, self.block_seconds)
            except (RedisError, OSError) as exc:
                failures += 1
                delay = full_jitter(failures, base=0.1, cap=5.0)
                self.log.warning("queue.fetch_failed", error=f"{type(exc).__name__}: {exc}",
                             retry_in=round(delay, 3))
                await wait_or_stop(self.stop, delay)
                continue
            if failures:
                self.log.info("queue.reconnected", after_failures=failures)
                failures = 0
            if not raws:
                continue
            if self.settle_each:
                await self._run_in_waves(raws)
            else:
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

    async def _run_in_waves(self, raws: list[bytes]) -> None:
        """Run a batch; record outcomes as jobs finish, those done by then together, so a
        slow job (a webhook receiver taking its time) holds back no other job's ack."""
        tasks = {asyncio.ensure_future(self._outcome(raw)): raw for raw in raws}
        self._in_flight.inc(len(tasks))
        try:
            while tasks:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                wave = [(tasks.pop(task), task.result()) for task in done]
                self._in_flight.dec(len(wave))
                await self._record(wave)
        finally:
            for task in tasks:  # cancelled at shutdown: the jobs stay in the processing list
                task.cancel()
            self._in_flight.dec(len(tasks))

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
        for _, outcome in finished:
            kind = "dead" if outcome.dead is not None else "retried" if outcome.delay else "done"
            self._counted[kind].inc()
            if outcome.after is not None:
                try:
                    await outcome.after()
                except Exception:
                    self.log.exception("queue.after_failed")

    async def _outcome(self, raw: bytes) -> Outcome:
        with self._seconds.time():
            return await self._run_handler(raw)

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
                await self.client.settle(settlement)
                return
            except (RedisError, OSError) as exc:
                attempt += 1
                delay = full_jitter(attempt, base=0.1, cap=5.0)
                self.log.warning("queue.settle_failed", error=f"{type(exc).__name__}: {exc}",
                             retry_in=round(delay, 3))
                await asyncio.sleep(delay)


async def wait_or_stop(event: asyncio.Event, seconds: float) -> None:
    """Sleep ``seconds`` or until ``event`` is set, whichever is first."""
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        pass
