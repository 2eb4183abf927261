"""The consumer loop shared by payment and webhook consumers.

Fetch a batch (one round trip), hand the whole batch to the handler, record the outcomes (one
atomic round trip per batch), repeat. The handler answers each job with an :class:`Outcome`
at once (the hot path: no task per job, the batch's store work shared) or with an awaitable,
for work that waits on something slow (an HTTP delivery): those run as tasks, and a streaming
consumer records them as they finish, in waves. A failure is requeued through the delayed ZSET
by the settle step; a consumer never sleeps on a retry. Redis going away makes the loop back
off and reconnect; it never exits on an error, only when ``stop`` is set.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

import structlog
from redis.exceptions import RedisError

from payflow import metrics
from payflow.errors import InvalidJob
from payflow.jobs import describe
from payflow.queue.backoff import Backoff
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


DONE = Outcome()


@dataclasses.dataclass(slots=True)
class Batch:
    """A handler's answer to a batch: per job (in order), its outcome now or an awaitable of
    it; ``after`` runs once the outcomes given now are in Redis (one call for the batch)."""

    outcomes: list[Outcome | Awaitable[Outcome]]
    after: Callable[[], Awaitable[None]] | None = None


class BatchHandler(Protocol):
    async def batch(self, raws: list[bytes]) -> Batch:
        """Handle ``raws``. A job that can never be processed gets ``Outcome(dead=reason)``;
        an exception means the batch could not be handled at all (each job is then retried
        alone, so that one bad job cannot hold back the others)."""
        ...


class PerJob:
    """A handler of one job at a time as a :class:`BatchHandler` (a task per job: for tests
    and for work that is slow anyway)."""

    def __init__(self, handle: Callable[[bytes], Awaitable[Outcome]]) -> None:
        self.handle = handle

    async def batch(self, raws: list[bytes]) -> Batch:
        return Batch([self.handle(raw) for raw in raws])


class Consumer:
    def __init__(
        self,
        *,
        client: QueueClient,
        handler: BatchHandler,
        stop: asyncio.Event,
        batch_size: int,
        block_seconds: float,
        stream: bool = False,
        outage: Callable[[BaseException], bool] = lambda exc: False,
    ) -> None:
        self.client = client
        self.handler = handler
        self.stop = stop
        self.batch_size = batch_size
        self.block_seconds = block_seconds
        self.stream = stream
        # Whether a handler's exception says that something it needs (the store) is away: its
        # jobs are then retried later, through the delayed set, never dead-lettered.
        self.outage = outage
        self.log = log.bind(consumer=client.consumer_id, queue=client.queue)
        self._outages = Backoff("queue.outage_retry", base=1.0, cap=60.0, logger=self.log)
        self._in_flight = metrics.IN_FLIGHT.labels(client.queue)
        self._seconds = metrics.JOB_SECONDS.labels(client.queue)
        self._counted = {kind: metrics.JOBS.labels(client.queue, kind)
                         for kind in ("done", "retried", "dead")}
        self._dead_trimmed = metrics.DEAD_TRIMMED.labels(client.queue)
        self._reconnects = metrics.REDIS_RECONNECTS.labels(client.queue)
        self._fetching = Backoff("queue.fetch_failed", logger=self.log)
        self._settling = Backoff("queue.settle_failed", logger=self.log)
        self._orphans = False  # a failed fetch may have moved jobs we never saw
        self._resume_at = 0.0  # loop time before which a streaming consumer does not fetch

    async def run(self) -> None:
        """Until ``stop``: in batches (payments), or streaming (webhooks: ``stream``)."""
        if self.stream:
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
            self._orphans = True
            delay = self._fetching.failed(exc)
            if idle:
                await wait_or_stop(self.stop, delay)
            else:
                self._resume_at = loop.time() + delay
            return None
        self._reconnected(self._fetching.succeeded(), "fetch")
        return raws

    async def _batches(self) -> None:
        while not self.stop.is_set():
            raws = await self._fetch(self.batch_size, idle=True)
            if not raws:
                continue
            self._in_flight.inc(len(raws))
            try:
                started = time.perf_counter()
                batch = await self._handle(raws)
                outcomes: list[Outcome] = []
                later: list[tuple[int, Awaitable[Outcome]]] = []
                for outcome in batch.outcomes:
                    if not isinstance(outcome, Outcome):
                        later.append((len(outcomes), outcome))
                        outcome = DONE  # for now
                    outcomes.append(outcome)
                if later:
                    done = await asyncio.gather(*(self._timed(raws[i], each)
                                                  for i, each in later))
                    for (i, _), outcome in zip(later, done, strict=True):
                        outcomes[i] = outcome
                self._observe(len(raws), time.perf_counter() - started)
                await self._record(raws, outcomes)
                if batch.after is not None:
                    await self._run_after(batch.after)
            finally:
                self._in_flight.dec(len(raws))
            if len(raws) < self.batch_size:
                await asyncio.sleep(SHORT_BATCH_PAUSE)

    async def _handle(self, raws: list[bytes]) -> Batch:
        """The handler's batch; when it fails as a whole, each job alone (isolating a job that
        breaks the batch: it alone is dead-lettered)."""
        try:
            batch = await self.handler.batch(raws)
            self._outages.succeeded()
            return batch
        except Exception as exc:
            if self.outage(exc):
                delay = self._outage_delay(exc, len(raws))
                return Batch([Outcome(delay=[(raw, delay)]) for raw in raws])
            if len(raws) == 1:
                self.log.exception("Job failed unexpectedly: dead-lettered",
                                   job=describe(raws[0]))
                return Batch([Outcome(dead="internal error: the handler failed (see the log)")])
            self.log.exception("queue.batch_failed", jobs=len(raws),
                               detail="handling each job of the batch alone")
        outcomes: list[Outcome | Awaitable[Outcome]] = []
        afters = []
        for raw in raws:
            one = await self._handle([raw])
            outcomes += one.outcomes
            if one.after is not None:
                afters.append(one.after)

        async def after() -> None:
            for each in afters:
                await each()

        return Batch(outcomes, after if afters else None)

    async def _stream(self) -> None:
        """Keep up to ``batch_size`` jobs in flight, fetch more as they finish, and record
        finished jobs in waves (those done by then, in one round trip): a slow job (a webhook
        receiver taking its time) holds back neither the acks nor the fetching of others."""
        loop = asyncio.get_running_loop()
        running: dict[asyncio.Future[Outcome], bytes] = {}
        # Finished tasks are collected by a done callback rather than by asyncio.wait, which
        # would add and remove a callback on every running task at each wake-up.
        finished: list[asyncio.Future[Outcome]] = []
        wake = asyncio.Event()

        def on_done(task: asyncio.Future[Outcome]) -> None:
            finished.append(task)
            wake.set()

        async def wait_done(within: float | None) -> list[asyncio.Future[Outcome]]:
            if not finished:
                try:
                    async with asyncio.timeout(within):
                        await wake.wait()
                except TimeoutError:
                    pass
            wake.clear()
            done = finished[:]
            finished.clear()
            return done

        try:
            while not self.stop.is_set():
                room = self.batch_size - len(running)
                if room > 0 and loop.time() >= self._resume_at:
                    fetched = await self._fetch(room, idle=not running) or []
                    if fetched:
                        await self._start(fetched, running, on_done)
                if running:
                    await self._record_done(running, await wait_done(STREAM_POLL))
                elif loop.time() < self._resume_at:  # backing off while jobs were in flight
                    await wait_or_stop(self.stop, self._resume_at - loop.time())
            while running:  # stopping: let them finish (the daemon's grace period bounds this)
                await self._record_done(running, await wait_done(None))
        finally:
            for task in running:  # cancelled at shutdown: the jobs stay in the processing list
                task.cancel()
            self._in_flight.dec(len(running))

    async def _start(self, fetched: list[bytes],
                     running: dict[asyncio.Future[Outcome], bytes],
                     on_done: Callable[[asyncio.Future[Outcome]], object]) -> None:
        """Hand a fetched batch to the handler: what is done now is recorded now, in one
        round trip; the rest runs on, as tasks."""
        self._in_flight.inc(len(fetched))
        started = time.perf_counter()
        batch = await self._handle(fetched)
        now_raws: list[bytes] = []
        now: list[Outcome] = []
        for raw, outcome in zip(fetched, batch.outcomes, strict=True):
            if isinstance(outcome, Outcome):
                now_raws.append(raw)
                now.append(outcome)
            else:
                task = asyncio.ensure_future(self._timed(raw, outcome))
                task.add_done_callback(on_done)
                running[task] = raw
        if now:
            self._observe(len(now), time.perf_counter() - started)
            self._in_flight.dec(len(now))
            await self._record(now_raws, now)
        if batch.after is not None:
            await self._run_after(batch.after)

    async def _record_done(self, running: dict[asyncio.Future[Outcome], bytes],
                           done: list[asyncio.Future[Outcome]]) -> None:
        if not done:
            return
        raws = [running.pop(task) for task in done]
        self._in_flight.dec(len(raws))
        await self._record(raws, [task.result() for task in done])

    async def _record(self, raws: list[bytes], outcomes: list[Outcome]) -> None:
        settlement = Settlement()
        counts = {"done": 0, "retried": 0, "dead": 0}
        afters = []
        for raw, outcome in zip(raws, outcomes, strict=True):
            if outcome is DONE:  # the common case
                settlement.ack(raw)
                counts["done"] += 1
                continue
            for job in outcome.push:
                settlement.push(job)
            for job, seconds in outcome.delay:
                settlement.delay(job, seconds)
            for job, reason in outcome.dead_jobs:
                settlement.dead(self.client.dead_entry(job, reason))
            if outcome.dead is not None:
                settlement.dead(self.client.dead_entry(raw, outcome.dead))
            settlement.ack(raw)
            counts["dead" if outcome.dead is not None else
                   "retried" if outcome.delay else "done"] += 1
            if outcome.after is not None:
                afters.append(outcome.after)
        # Recording the outcome must not be interrupted half-way by a shutdown.
        await asyncio.shield(self._settle(settlement))
        for kind, count in counts.items():  # once per batch, not per job
            if count:
                self._counted[kind].inc(count)
        if len(afters) == 1:
            await self._run_after(afters[0])
        elif afters:  # side by side, so that a store coalesces them into one round trip
            await asyncio.gather(*(self._run_after(after) for after in afters))

    async def _run_after(self, after: Callable[[], Awaitable[None]]) -> None:
        try:
            await after()
        except Exception as exc:
            self.log.error("queue.after_failed", error=f"{type(exc).__name__}: {exc}")

    async def _timed(self, raw: bytes, outcome: Awaitable[Outcome]) -> Outcome:
        """An outcome still to come; a failure dead-letters the job (with the reason when it
        is an :class:`InvalidJob`), but for an outage, after which it is retried."""
        started = time.perf_counter()
        try:
            return await outcome
        except InvalidJob as exc:
            self.log.error("Job rejected: dead-lettered", reason=exc.reason)
            return Outcome(dead=exc.reason)
        except Exception as exc:
            if self.outage(exc):
                return Outcome(delay=[(raw, self._outage_delay(exc, 1))])
            self.log.exception("Job failed unexpectedly: dead-lettered")
            return Outcome(dead=f"internal error: {type(exc).__name__}: {exc}")
        finally:
            self._seconds.observe(time.perf_counter() - started)

    def _outage_delay(self, exc: BaseException, jobs: int) -> float:
        """When to retry jobs that met an outage (backing off while it lasts); logged."""
        return self._outages.failed(exc, jobs=jobs)

    def _observe(self, jobs: int, seconds: float) -> None:
        """Each of ``jobs`` handled together took ``seconds``."""
        for _ in range(jobs):
            self._seconds.observe(seconds)

    async def _settle(self, settlement: Settlement) -> None:
        """Record a batch's outcome, retrying while Redis is away. The script is safe to run
        again: an ack of a job already removed is a no-op, and a job pushed twice carries the
        same event id, which receivers deduplicate on."""
        while True:
            try:
                trimmed = await self.client.settle(settlement)
                self._reconnected(self._settling.succeeded(), "settle")
                break
            except (RedisError, OSError) as exc:
                await asyncio.sleep(self._settling.failed(exc))
        if trimmed:
            self._dead_trimmed.inc(trimmed)
            self.log.warning("queue.dead_trimmed", trimmed=trimmed,
                             limit=self.client.dead_max_entries)


    def _reconnected(self, failures: int, call: str) -> None:
        """After ``failures`` failed calls, one succeeded: Redis is back for this consumer
        (whichever call met the outage: a busy consumer meets it in a settle)."""
        if failures:
            self.log.info("queue.reconnected", after_failures=failures, call=call)
            self._reconnects.inc()


async def wait_or_stop(event: asyncio.Event, seconds: float) -> None:
    """Sleep ``seconds`` or until ``event`` is set, whichever is first."""
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        pass


async def handle_one(handler: BatchHandler, raw: bytes) -> Outcome:
    """``raw`` handled alone, as a batch of one, waited for; the batch's ``after`` becomes the
    outcome's (for tests and tools that handle one job)."""
    batch = await handler.batch([raw])
    [outcome] = batch.outcomes
    if not isinstance(outcome, Outcome):
        try:
            outcome = await outcome
        except InvalidJob as exc:  # as the consumer does
            outcome = Outcome(dead=exc.reason)
    if batch.after is None:
        return outcome
    if outcome.after is None:
        return dataclasses.replace(outcome, after=batch.after)
    first, second = batch.after, outcome.after

    async def both() -> None:
        await first()
        await second()

    return dataclasses.replace(outcome, after=both)
