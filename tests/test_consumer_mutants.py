"""The consumer's properties that a plausible bug would break, asserted directly (each test here
kills mutants of ``queue/consumer.py`` that the behaviour tests of ``test_consumer.py`` let
through; README, Testing, "Mutation testing")."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from structlog.testing import capture_logs

from payflow import metrics
from payflow.errors import InvalidJob
from payflow.queue import keys
from payflow.queue.consumer import (
    DONE,
    Batch,
    Consumer,
    Outcome,
    PerJob,
    handle_one,
    wait_or_stop,
)
from payflow.queue.redis import QueueClient, Settlement
from payflow.store.base import is_outage

Q, W = "payflow_jobs", "webhook_jobs"


def consumer_of(client: QueueClient, handler: object, *, batch_size: int = 10,
                stream: bool = False, outage: bool = False) -> Consumer:
    return Consumer(client=client, handler=handler, stop=asyncio.Event(),  # type: ignore[arg-type]
                    batch_size=batch_size, block_seconds=0.1, stream=stream,
                    **({"outage": is_outage} if outage else {}))


async def run_until(consumer: Consumer, done: asyncio.Event, timeout: float = 5) -> None:
    task = asyncio.create_task(consumer.run())
    async with asyncio.timeout(timeout):
        await done.wait()
    consumer.stop.set()
    async with asyncio.timeout(timeout):
        await task


async def wait_for(condition: Any, timeout: float = 5) -> None:
    async with asyncio.timeout(timeout):
        while not await condition():
            await asyncio.sleep(0.005)


def counted(kind: str, queue: str = Q) -> float:
    value = metrics.REGISTRY.get_sample_value("payflow_jobs_total",
                                              {"queue": queue, "outcome": kind})
    return value or 0.0


async def delayed(redis: Redis) -> list[tuple[bytes, float]]:
    """The delayed set: (job, due time in ms)."""
    entries: Any = await redis.zrange(keys.delayed(Q), 0, -1, withscores=True)
    return [(job, float(due)) for job, due in entries]


def dead_entries(entries: list[Any]) -> list[tuple[str, str]]:
    return sorted((json.loads(e)["job"], json.loads(e)["reason"]) for e in entries)


async def test_a_batch_settle_is_shielded_from_cancellation(fake_redis: Redis) -> None:
    """Cancelled (a shutdown past its grace) while its settle is in flight, the consumer
    still lets that settle finish: the outcome is recorded whole, not half-way."""
    entered = asyncio.Event()
    release = asyncio.Event()

    class SlowSettle(QueueClient):
        async def settle(self, settlement: Settlement) -> int:
            entered.set()
            await release.wait()
            return await super().settle(settlement)

    async def handler(raw: bytes) -> Outcome:
        return Outcome(push=[b"hook-" + raw])

    await fake_redis.lpush(Q, b"a")
    client = SlowSettle(fake_redis, queue=Q, forward=W, consumer_id="t:p0")
    consumer = consumer_of(client, PerJob(handler))
    task = asyncio.create_task(consumer.run())
    async with asyncio.timeout(5):
        await entered.wait()
    task.cancel()
    await asyncio.sleep(0.05)
    release.set()
    try:
        async with asyncio.timeout(5):
            await task
    except asyncio.CancelledError:
        pass
    await wait_for(lambda: _empty(fake_redis, client.processing))
    assert await fake_redis.lrange(W, 0, -1) == [b"hook-a"]


async def _empty(redis: Redis, key: str) -> bool:
    return await redis.llen(key) == 0


async def test_the_extra_jobs_an_outcome_dead_letters_are_recorded(fake_redis: Redis) -> None:
    """``dead_jobs`` (a fan-out's delivery refused by the SSRF guard) land in the dead list
    with their reasons, beside the job's own dead letter."""
    done = asyncio.Event()

    async def handler(raw: bytes) -> Outcome:
        done.set()
        return Outcome(dead="own reason", dead_jobs=[(b"retry-x", "refused: private"),
                                                     (b"retry-y", "gave up")])

    await fake_redis.lpush(Q, b"job")
    client = QueueClient(fake_redis, queue=Q, forward=W, consumer_id="t:p0")
    await run_until(consumer_of(client, PerJob(handler)), done)
    await wait_for(lambda: _empty(fake_redis, client.processing))
    assert dead_entries(await fake_redis.lrange(keys.dead(Q), 0, -1)) == [
        ("job", "own reason"), ("retry-x", "refused: private"), ("retry-y", "gave up")]


async def test_dead_jobs_without_a_dead_job_count_the_job_as_done(fake_redis: Redis) -> None:
    done = asyncio.Event()

    async def handler(raw: bytes) -> Outcome:
        done.set()
        return Outcome(dead_jobs=[(b"retry-x", "refused: private")])

    before = {kind: counted(kind) for kind in ("done", "retried", "dead")}
    await fake_redis.lpush(Q, b"job")
    client = QueueClient(fake_redis, queue=Q, forward=W, consumer_id="t:p0")
    await run_until(consumer_of(client, PerJob(handler)), done)
    await wait_for(lambda: _empty(fake_redis, client.processing))
    assert dead_entries(await fake_redis.lrange(keys.dead(Q), 0, -1)) == [
        ("retry-x", "refused: private")]
    assert {k: counted(k) - v for k, v in before.items()} == {"done": 1, "retried": 0, "dead": 0}


async def test_each_outcome_is_counted_once_under_its_kind(fake_redis: Redis) -> None:
    seen: list[bytes] = []
    done = asyncio.Event()

    async def handler(raw: bytes) -> Outcome:
        seen.append(raw)
        if len(seen) == 6:
            done.set()
        if raw.startswith(b"retry"):
            return Outcome(delay=[(raw + b"#2", 60.0)])
        if raw == b"dead":
            return Outcome(dead="given up", delay=[(b"ignored", 1.0)])
        if raw == b"push":
            return Outcome(push=[b"hook"])
        return DONE

    before = {kind: counted(kind) for kind in ("done", "retried", "dead")}
    await fake_redis.lpush(Q, b"ok", b"push", b"retry1", b"retry2", b"dead", b"ok2")
    client = QueueClient(fake_redis, queue=Q, forward=W, consumer_id="t:p0")
    await run_until(consumer_of(client, PerJob(handler)), done)
    await wait_for(lambda: _empty(fake_redis, client.processing))
    assert {k: counted(k) - v for k, v in before.items()} == {"done": 3, "retried": 2, "dead": 1}


async def test_a_retry_is_delayed_by_its_seconds(fake_redis: Redis) -> None:
    """The delayed set's score is Redis' now plus the outcome's delay, in milliseconds."""
    done = asyncio.Event()

    async def handler(raw: bytes) -> Outcome:
        done.set()
        return Outcome(delay=[(b"again", 30.0)])

    await fake_redis.lpush(Q, b"job")
    client = QueueClient(fake_redis, queue=Q, forward=W, consumer_id="t:p0")
    before = time.time() * 1000
    await run_until(consumer_of(client, PerJob(handler)), done)
    await wait_for(lambda: _empty(fake_redis, client.processing))
    [(job, due)] = await delayed(fake_redis)
    assert job == b"again"
    assert before + 29_000 <= due <= time.time() * 1000 + 31_000


async def test_a_streaming_consumer_finishes_in_flight_jobs_when_stopped(
        fake_redis: Redis) -> None:
    """At stop, a job in flight is waited for (the daemon's grace period bounds this) and its
    outcome recorded; it is not cancelled."""
    started = asyncio.Event()
    release = asyncio.Event()
    finished: list[bytes] = []

    async def handler(raw: bytes) -> Outcome:
        started.set()
        await release.wait()
        finished.append(raw)
        return Outcome(push=[b"hook"])

    await fake_redis.lpush(Q, b"slow")
    client = QueueClient(fake_redis, queue=Q, forward=W, consumer_id="t:w0")
    consumer = consumer_of(client, PerJob(handler), stream=True)
    task = asyncio.create_task(consumer.run())
    async with asyncio.timeout(5):
        await started.wait()
    consumer.stop.set()
    await asyncio.sleep(0.2)
    assert not task.done()  # still waiting for the job
    release.set()
    async with asyncio.timeout(5):
        await task
    assert finished == [b"slow"]
    assert await fake_redis.llen(client.processing) == 0
    assert await fake_redis.lrange(W, 0, -1) == [b"hook"]


async def test_a_streaming_consumer_cancelled_leaves_its_jobs_in_processing(
        fake_redis: Redis) -> None:
    started = asyncio.Event()
    cancelled: list[bytes] = []

    async def handler(raw: bytes) -> Outcome:
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.append(raw)
            raise
        return DONE

    await fake_redis.lpush(Q, b"slow")
    client = QueueClient(fake_redis, queue=Q, forward=W, consumer_id="t:w0")
    consumer = consumer_of(client, PerJob(handler), stream=True)
    task = asyncio.create_task(consumer.run())
    async with asyncio.timeout(5):
        await started.wait()
    task.cancel()
    try:
        async with asyncio.timeout(5):
            await task
    except asyncio.CancelledError:
        pass
    await asyncio.sleep(0)
    assert cancelled == [b"slow"]
    assert await fake_redis.lrange(client.processing, 0, -1) == [b"slow"]


async def test_an_outage_in_a_running_job_retries_it_instead_of_dead_lettering(
        fake_redis: Redis) -> None:
    """A job that runs on (an awaitable outcome) and meets an outage is retried through the
    delayed set, alone; an unexpected error dead-letters it; an InvalidJob with its reason."""
    seen: list[bytes] = []
    done = asyncio.Event()

    async def run(raw: bytes) -> Outcome:
        seen.append(raw)
        if len(seen) == 3:
            done.set()
        if raw == b"outage":
            raise ConnectionRefusedError("the store is down")
        if raw == b"invalid":
            raise InvalidJob("bad job")
        raise ValueError("a bug")

    await fake_redis.lpush(Q, b"outage", b"invalid", b"bug")
    for stream in (False, True):
        seen.clear()
        done.clear()
        await fake_redis.delete(keys.dead(Q), keys.delayed(Q))
        if stream:
            await fake_redis.lpush(Q, b"outage", b"invalid", b"bug")
        client = QueueClient(fake_redis, queue=Q, forward=W, consumer_id=f"t:{stream}")
        consumer = consumer_of(client, PerJob(run), stream=stream, outage=True)
        with capture_logs() as logs:
            await run_until(consumer, done)
        await wait_for(lambda c=client: _empty(fake_redis, c.processing))
        [(job, due)] = await delayed(fake_redis)
        assert job == b"outage"
        assert due > time.time() * 1000  # later, not now
        assert dead_entries(await fake_redis.lrange(keys.dead(Q), 0, -1)) == [
            ("bug", "internal error: ValueError: a bug"), ("invalid", "bad job")]
        [line] = [e for e in logs if e["event"] == "queue.outage_retry"]
        assert line["jobs"] == 1
        assert line["error"] == "ConnectionRefusedError: the store is down"


async def test_outages_back_off_and_a_success_starts_over(fake_redis: Redis) -> None:
    """Consecutive outages wait longer (the backoff counts them); a handled batch resets it."""
    consumer = consumer_of(QueueClient(fake_redis, queue=Q, forward=W, consumer_id="t"),
                           PerJob(lambda raw: _done()), outage=True)
    with capture_logs():
        for _ in range(3):
            consumer._outage_delay(ConnectionRefusedError(), 1)
    assert consumer._outages.failures == 3
    assert consumer._outages.base == 1.0 and consumer._outages.cap == 60.0

    class Fine:
        async def batch(self, raws: list[bytes]) -> Batch:
            return Batch([DONE for _ in raws])

    consumer.handler = Fine()
    await consumer._handle([b"a"])
    assert consumer._outages.failures == 0


async def _done() -> Outcome:
    return DONE


async def test_a_batch_outage_delays_every_job_by_the_same_backoff(fake_redis: Redis) -> None:
    class Down:
        async def batch(self, raws: list[bytes]) -> Batch:
            raise ConnectionRefusedError("down")

    consumer = consumer_of(QueueClient(fake_redis, queue=Q, forward=W, consumer_id="t"),
                           Down(), outage=True)
    with capture_logs() as logs:
        batch = await consumer._handle([b"a", b"b"])
    delays = [o.delay for o in batch.outcomes if isinstance(o, Outcome)]
    assert [[job for job, _ in d] for d in delays] == [[b"a"], [b"b"]]
    assert delays[0][0][1] == delays[1][0][1] >= 0
    assert batch.after is None
    [line] = [e for e in logs if e["event"] == "queue.outage_retry"]
    assert line["jobs"] == 2


async def test_a_failing_batch_is_split_and_each_after_still_runs(fake_redis: Redis) -> None:
    """The batch fails as a whole: each job alone; the ``after`` of every job that has one
    runs, in order, once, as the split batch's ``after``."""
    ran: list[bytes] = []

    class Picky:
        async def batch(self, raws: list[bytes]) -> Batch:
            if len(raws) > 1:
                raise ValueError("a bug")
            if raws == [b"bad"]:
                raise ValueError("a bug")
            if raws == [b"quiet"]:
                return Batch([DONE])

            async def after(raw: bytes = raws[0]) -> None:
                ran.append(raw)

            return Batch([DONE], after)

    consumer = consumer_of(QueueClient(fake_redis, queue=Q, forward=W, consumer_id="t"),
                           Picky())
    with capture_logs():
        batch = await consumer._handle([b"a", b"bad", b"quiet", b"b"])
    assert [o.dead if isinstance(o, Outcome) else o for o in batch.outcomes] == [
        None, "internal error: the handler failed (see the log)", None, None]
    assert batch.after is not None
    await batch.after()
    assert ran == [b"a", b"b"]

    class AllQuiet:
        async def batch(self, raws: list[bytes]) -> Batch:
            if len(raws) > 1:
                raise ValueError("a bug")
            return Batch([DONE])

    consumer.handler = AllQuiet()
    with capture_logs():
        assert (await consumer._handle([b"a", b"b"])).after is None


async def test_a_batch_after_runs_once_its_outcomes_are_settled(fake_redis: Redis) -> None:
    """The batch's ``after`` (marking events enqueued) runs after the settle, once; a failing
    one is logged and the loop goes on."""
    order: list[str] = []
    done = asyncio.Event()

    class Client(QueueClient):
        async def settle(self, settlement: Settlement) -> int:
            order.append("settle")
            return await super().settle(settlement)

    class Handler:
        async def batch(self, raws: list[bytes]) -> Batch:
            async def after() -> None:
                order.append("after")
                done.set()
                raise RuntimeError("store down")

            return Batch([Outcome(push=[b"hook"]) for _ in raws], after)

    await fake_redis.lpush(Q, b"a", b"b")
    client = Client(fake_redis, queue=Q, forward=W, consumer_id="t:p0")
    for stream in (False, True):
        order.clear()
        done.clear()
        if stream:
            await fake_redis.lpush(Q, b"c")
        with capture_logs() as logs:
            await run_until(consumer_of(client, Handler(), stream=stream), done)
        assert order == ["settle", "after"]
        assert [e["event"] for e in logs if e["event"] == "queue.after_failed"] == [
            "queue.after_failed"]


async def test_a_settle_is_retried_while_redis_is_away(fake_redis: Redis) -> None:
    failures = 2

    class Flaky(QueueClient):
        async def settle(self, settlement: Settlement) -> int:
            nonlocal failures
            if failures:
                failures -= 1
                raise RedisConnectionError("reset")
            return await super().settle(settlement)

    done = asyncio.Event()

    async def handler(raw: bytes) -> Outcome:
        done.set()
        return Outcome(push=[b"hook"])

    await fake_redis.lpush(Q, b"a")
    client = Flaky(fake_redis, queue=Q, forward=W, consumer_id="t:p0")
    consumer = consumer_of(client, PerJob(handler))
    with capture_logs() as logs:
        await run_until(consumer, done)
        await wait_for(lambda: _empty(fake_redis, client.processing))
    assert failures == 0
    assert await fake_redis.lrange(W, 0, -1) == [b"hook"]
    assert len([e for e in logs if e["event"] == "queue.settle_failed"]) == 2
    assert consumer._settling.failures == 0  # a success starts the backoff over


async def test_a_short_batch_pauses_before_the_next_fetch(fake_redis: Redis) -> None:
    """A trickle is taken in batches: after a batch shorter than the batch size, the consumer
    waits a little before fetching again; a full batch is followed at once."""
    fetched: list[int] = []

    class Counting(QueueClient):
        async def fetch(self, max_jobs: int, block_seconds: float) -> list[bytes]:
            raws = await super().fetch(max_jobs, block_seconds)
            fetched.append(len(raws))
            return raws

    done = asyncio.Event()
    handled: list[bytes] = []

    async def handler(raw: bytes) -> Outcome:
        handled.append(raw)
        if len(handled) == 4:
            done.set()
        return DONE

    await fake_redis.lpush(Q, b"1", b"2", b"3", b"4")
    client = Counting(fake_redis, queue=Q, forward=W, consumer_id="t:p0")
    await run_until(consumer_of(client, PerJob(handler), batch_size=2), done)
    assert fetched[:2] == [2, 2]
    assert sorted(handled) == [b"1", b"2", b"3", b"4"]


async def test_fetch_blocks_only_when_nothing_is_in_flight(fake_redis: Redis) -> None:
    blocks: list[float] = []

    class Recording(QueueClient):
        async def fetch(self, max_jobs: int, block_seconds: float) -> list[bytes]:
            blocks.append(block_seconds)
            return await super().fetch(max_jobs, block_seconds)

    consumer = consumer_of(Recording(fake_redis, queue=Q, forward=W, consumer_id="t"),
                           PerJob(lambda raw: _done()))
    assert await consumer._fetch(5, idle=True) == []
    assert await consumer._fetch(5, idle=False) == []
    assert blocks == [0.1, 0]


async def test_a_failed_fetch_while_jobs_are_in_flight_defers_the_next_one(
        fake_redis: Redis) -> None:
    """Not idle: a failed fetch does not sleep (jobs in flight must be recorded) but sets
    when the next fetch may be tried; idle, it waits there."""

    class Down(QueueClient):
        async def fetch(self, max_jobs: int, block_seconds: float) -> list[bytes]:
            raise RedisConnectionError("reset")

    consumer = consumer_of(Down(fake_redis, queue=Q, forward=W, consumer_id="t"),
                           PerJob(lambda raw: _done()))
    loop = asyncio.get_running_loop()
    with capture_logs():
        now = loop.time()
        assert await consumer._fetch(5, idle=False) is None
        assert loop.time() - now < 0.05
        assert now < consumer._resume_at <= now + 5.0
        assert consumer._orphans
        consumer._resume_at = 0.0
        consumer._fetching.base = consumer._fetching.cap = 0.3
        consumer._fetching.failures = 0

        import random
        random.seed(0)  # full jitter: uniform(0, 0.3), 0.25 with this seed
        now = loop.time()
        assert await consumer._fetch(5, idle=True) is None
        assert loop.time() - now >= 0.1
        assert consumer._resume_at == 0.0


async def test_a_streaming_consumer_backing_off_fetches_again_later(fake_redis: Redis) -> None:
    """A fetch failed while a job was in flight: the consumer finishes the job, waits out the
    backoff, then fetches (and handles) what came in meanwhile."""
    release = asyncio.Event()
    handled: list[bytes] = []
    both = asyncio.Event()

    class OnceDown(QueueClient):
        failed = False

        async def fetch(self, max_jobs: int, block_seconds: float) -> list[bytes]:
            if block_seconds == 0 and not self.failed:
                self.failed = True
                raise RedisConnectionError("reset")
            return await super().fetch(max_jobs, block_seconds)

    async def handler(raw: bytes) -> Outcome:
        if raw == b"slow":
            await release.wait()
        handled.append(raw)
        if len(handled) == 2:
            both.set()
        return DONE

    await fake_redis.lpush(Q, b"slow")
    client = OnceDown(fake_redis, queue=Q, forward=W, consumer_id="t:w0")
    consumer = consumer_of(client, PerJob(handler), stream=True)
    with capture_logs() as logs:
        task = asyncio.create_task(consumer.run())
        await wait_for(lambda: _async(client.failed))
        await fake_redis.lpush(Q, b"later")
        release.set()
        async with asyncio.timeout(10):
            await both.wait()
        consumer.stop.set()
        async with asyncio.timeout(5):
            await task
    assert handled == [b"slow", b"later"]
    assert any(e["event"] == "queue.fetch_failed" for e in logs)
    assert await fake_redis.llen(client.processing) == 0


async def _async(value: bool) -> bool:
    return value


async def test_a_reconnect_after_fetch_failures_is_logged_and_counted(
        fake_redis: Redis) -> None:
    class Recovering(QueueClient):
        failures = 2

        async def fetch(self, max_jobs: int, block_seconds: float) -> list[bytes]:
            if self.failures:
                self.failures -= 1
                raise RedisConnectionError("reset")
            return await super().fetch(max_jobs, block_seconds)

    client = Recovering(fake_redis, queue=Q, forward=W, consumer_id="t:p0")
    consumer = consumer_of(client, PerJob(lambda raw: _done()))
    consumer._fetching.base = consumer._fetching.cap = 0.01

    def reconnects() -> float:
        value = metrics.REGISTRY.get_sample_value("payflow_redis_reconnects_total",
                                                  {"queue": Q})
        return value or 0.0

    before = reconnects()
    with capture_logs() as logs:
        for _ in range(3):
            await consumer._fetch(5, idle=True)
        await consumer._fetch(5, idle=True)
    [line] = [e for e in logs if e["event"] == "queue.reconnected"]
    assert (line["after_failures"], line["call"]) == (2, "fetch")
    assert reconnects() - before == 1


async def test_a_reconnect_after_settle_failures_is_logged_and_counted(
        fake_redis: Redis) -> None:
    """A busy consumer meets an outage in its settle, not its fetch: coming back is a
    reconnect all the same (tests/test_sentinel.py waits for this line after a failover)."""
    class Recovering(QueueClient):
        failures = 3

        async def settle(self, settlement: Settlement) -> int:
            if self.failures:
                self.failures -= 1
                raise RedisConnectionError("reset")
            return await super().settle(settlement)

    client = Recovering(fake_redis, queue=Q, forward=W, consumer_id="t:p0")
    consumer = consumer_of(client, PerJob(lambda raw: _done()))
    consumer._settling.base = consumer._settling.cap = 0.01
    before = metrics.REGISTRY.get_sample_value("payflow_redis_reconnects_total",
                                               {"queue": Q}) or 0.0
    with capture_logs() as logs:
        await consumer._settle(Settlement())
        await consumer._settle(Settlement())  # no failure before it: nothing to say
    [line] = [e for e in logs if e["event"] == "queue.reconnected"]
    assert (line["after_failures"], line["call"]) == (3, "settle")
    after = metrics.REGISTRY.get_sample_value("payflow_redis_reconnects_total", {"queue": Q})
    assert after == before + 1


async def test_in_flight_jobs_are_gauged_until_recorded(fake_redis: Redis) -> None:
    """The in-flight gauge counts fetched jobs until their outcome is recorded, and is back
    where it started once the consumer stops (batches and streaming)."""
    def gauge() -> float:
        value = metrics.REGISTRY.get_sample_value("payflow_jobs_in_flight", {"queue": Q})
        return value or 0.0

    for stream in (False, True):
        base = gauge()
        started = asyncio.Event()
        release = asyncio.Event()
        handled: list[bytes] = []

        async def handler(raw: bytes, started: asyncio.Event = started,
                          release: asyncio.Event = release,
                          handled: list[bytes] = handled) -> Outcome:
            if raw == b"slow":
                started.set()
                await release.wait()
            handled.append(raw)
            return DONE

        class Mixed:
            async def batch(self, raws: list[bytes]) -> Batch:
                return Batch([DONE if raw == b"now" else PerJob(handler).handle(raw)
                              for raw in raws])

        await fake_redis.lpush(Q, b"slow", b"now")
        client = QueueClient(fake_redis, queue=Q, forward=W, consumer_id=f"t:g{stream}")
        consumer = consumer_of(client, Mixed(), stream=stream)
        task = asyncio.create_task(consumer.run())
        async with asyncio.timeout(5):
            await started.wait()
        await asyncio.sleep(0.05)
        assert gauge() - base == (1 if stream else 2)
        release.set()
        await wait_for(lambda c=client: _empty(fake_redis, c.processing))
        consumer.stop.set()
        async with asyncio.timeout(5):
            await task
        assert gauge() == base


async def test_handle_one_folds_the_batch_after_into_the_outcome() -> None:
    order: list[str] = []

    async def first() -> None:
        order.append("batch")

    async def second() -> None:
        order.append("job")

    class Both:
        async def batch(self, raws: list[bytes]) -> Batch:
            assert raws == [b"x"]  # the job, as a batch of one
            return Batch([Outcome(after=second)], first)

    outcome = await handle_one(Both(), b"x")
    assert outcome.after is not None
    await outcome.after()
    assert order == ["batch", "job"]

    class Later:
        async def batch(self, raws: list[bytes]) -> Batch:
            async def bad() -> Outcome:
                raise InvalidJob("no good")
            return Batch([bad()], first)

    outcome = await handle_one(Later(), b"x")
    assert outcome.dead == "no good" and outcome.after is first


async def test_wait_or_stop_returns_at_the_stop_or_the_timeout() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    now = loop.time()
    await wait_or_stop(stop, 0.05)
    assert 0.04 <= loop.time() - now < 1
    loop.call_later(0.02, stop.set)
    now = loop.time()
    await wait_or_stop(stop, 10)
    assert loop.time() - now < 1


async def test_job_seconds_are_observed_per_job(fake_redis: Redis) -> None:
    def count() -> float:
        value = metrics.REGISTRY.get_sample_value("payflow_job_seconds_count", {"queue": Q})
        return value or 0.0

    done = asyncio.Event()
    seen: list[bytes] = []

    class Handler:
        async def batch(self, raws: list[bytes]) -> Batch:
            seen.extend(raws)
            if len(seen) >= 3:
                done.set()
            return Batch([DONE for _ in raws])

    before = count()
    await fake_redis.lpush(Q, b"1", b"2", b"3")
    client = QueueClient(fake_redis, queue=Q, forward=W, consumer_id="t:p0")
    await run_until(consumer_of(client, Handler()), done)
    assert count() - before == 3


async def test_the_consumer_log_lines_name_the_consumer_and_the_queue(
        fake_redis: Redis) -> None:
    """The fetch, settle and outage backoffs log through the consumer's bound logger, with the
    error that caused them."""

    class Failing(QueueClient):
        fetches = 0
        settles = 0

        async def fetch(self, max_jobs: int, block_seconds: float) -> list[bytes]:
            self.fetches += 1
            if self.fetches == 1:
                raise RedisConnectionError("fetch reset")
            return await super().fetch(max_jobs, block_seconds)

        async def settle(self, settlement: Settlement) -> int:
            self.settles += 1
            if self.settles == 1:
                raise RedisConnectionError("settle reset")
            return await super().settle(settlement)

    seen = asyncio.Event()

    class Down:
        async def batch(self, raws: list[bytes]) -> Batch:
            seen.set()
            raise ConnectionRefusedError("store down")

    await fake_redis.lpush(Q, b"a")
    client = Failing(fake_redis, queue=Q, forward=W, consumer_id="t:named")
    consumer = consumer_of(client, Down(), outage=True)
    consumer._fetching.base = consumer._fetching.cap = 0.01
    consumer._settling.base = consumer._settling.cap = 0.01
    with capture_logs() as logs:
        await run_until(consumer, seen)
        await wait_for(lambda: _empty(fake_redis, client.processing))
    by_event = {e["event"]: e for e in logs}
    for name, error in (("queue.fetch_failed", "ConnectionError: fetch reset"),
                        ("queue.settle_failed", "ConnectionError: settle reset"),
                        ("queue.outage_retry", "ConnectionRefusedError: store down")):
        line = by_event[name]
        assert (line["consumer"], line["queue"], line["error"]) == ("t:named", Q, error), name


async def test_the_processing_list_is_put_back_once_after_a_lost_fetch_only(
        fake_redis: Redis) -> None:
    """Returning the processing list to the queue is for after a failed fetch: a fresh
    consumer does not do it, and after a failure it is done once, not on every fetch."""
    requeues = 0

    class Counting(QueueClient):
        lose = False

        async def fetch(self, max_jobs: int, block_seconds: float) -> list[bytes]:
            if self.lose:
                self.lose = False
                raise RedisConnectionError("reset")
            return await super().fetch(max_jobs, block_seconds)

        async def requeue_all(self) -> int:
            nonlocal requeues
            requeues += 1
            return await super().requeue_all()

    client = Counting(fake_redis, queue=Q, forward=W, consumer_id="t:p0")
    consumer = consumer_of(client, PerJob(lambda raw: _done()))
    consumer._fetching.base = consumer._fetching.cap = 0.01
    await fake_redis.lpush(client.processing, b"left-by-someone")
    for _ in range(2):
        await consumer._fetch(5, idle=True)
    assert requeues == 0
    assert await fake_redis.lrange(client.processing, 0, -1) == [b"left-by-someone"]
    client.lose = True
    with capture_logs():
        for _ in range(4):
            await consumer._fetch(5, idle=True)
    assert requeues == 1


async def test_a_full_batch_is_followed_by_the_next_fetch_at_once(
        fake_redis: Redis, monkeypatch: object) -> None:
    """The short-batch pause is for a trickle only; a backlog is taken batch after batch."""
    import payflow.queue.consumer as consumer_module

    monkeypatch.setattr(consumer_module, "SHORT_BATCH_PAUSE", 2.0)  # type: ignore[attr-defined]
    handled: list[bytes] = []
    done = asyncio.Event()

    async def handler(raw: bytes) -> Outcome:
        handled.append(raw)
        if len(handled) == 6:
            done.set()
        return DONE

    await fake_redis.lpush(Q, *[str(i).encode() for i in range(6)])
    client = QueueClient(fake_redis, queue=Q, forward=W, consumer_id="t:p0")
    consumer = consumer_of(client, PerJob(handler), batch_size=2)
    task = asyncio.create_task(consumer.run())
    async with asyncio.timeout(1.5):
        await done.wait()
    consumer.stop.set()
    async with asyncio.timeout(5):
        await task


async def test_a_streaming_consumer_keeps_at_most_batch_size_jobs_in_flight(
        fake_redis: Redis) -> None:
    for size in (1, 2):
        running = most = 0
        handled: list[bytes] = []
        done = asyncio.Event()

        async def handler(raw: bytes, handled: list[bytes] = handled,
                          done: asyncio.Event = done) -> Outcome:
            nonlocal running, most
            running += 1
            most = max(most, running)
            await asyncio.sleep(0.02)
            running -= 1
            handled.append(raw)
            if len(handled) == 5:
                done.set()
            return DONE

        await fake_redis.lpush(Q, *[str(i).encode() for i in range(5)])
        client = QueueClient(fake_redis, queue=Q, forward=W, consumer_id=f"t:w{size}")
        await run_until(consumer_of(client, PerJob(handler), batch_size=size, stream=True),
                        done)
        assert most == size
        assert sorted(handled) == [str(i).encode() for i in range(5)]


async def test_an_idle_streaming_consumer_blocks_on_the_fetch(fake_redis: Redis) -> None:
    fetches: list[float] = []

    class Counting(QueueClient):
        async def fetch(self, max_jobs: int, block_seconds: float) -> list[bytes]:
            fetches.append(block_seconds)
            return await super().fetch(max_jobs, block_seconds)

    client = Counting(fake_redis, queue=Q, forward=W, consumer_id="t:w0")
    consumer = consumer_of(client, PerJob(lambda raw: _done()), stream=True)
    task = asyncio.create_task(consumer.run())
    await asyncio.sleep(0.35)
    consumer.stop.set()
    async with asyncio.timeout(5):
        await task
    assert 1 <= len(fetches) <= 6 and set(fetches) == {0.1}


async def test_a_streaming_consumer_waits_out_the_fetch_backoff(fake_redis: Redis) -> None:
    """A fetch failed while a job is in flight: no new fetch before the backoff's delay,
    though the in-flight job is still looked after."""
    release = asyncio.Event()
    fetches = 0

    class Failing(QueueClient):
        async def fetch(self, max_jobs: int, block_seconds: float) -> list[bytes]:
            nonlocal fetches
            fetches += 1
            if block_seconds == 0:
                raise RedisConnectionError("reset")
            return await super().fetch(max_jobs, block_seconds)

    started = asyncio.Event()

    async def handler(raw: bytes) -> Outcome:
        started.set()
        await release.wait()
        return DONE

    await fake_redis.lpush(Q, b"slow")
    client = Failing(fake_redis, queue=Q, forward=W, consumer_id="t:w0")
    consumer = consumer_of(client, PerJob(handler), stream=True)
    consumer._fetching.failed = lambda exc, **fields: 1.0  # type: ignore[method-assign]
    task = asyncio.create_task(consumer.run())
    async with asyncio.timeout(5):
        await started.wait()
    await asyncio.sleep(0.4)
    assert fetches == 2  # the one that got the job, the one that failed; none since
    release.set()
    consumer.stop.set()
    async with asyncio.timeout(5):
        await task
    assert await fake_redis.llen(client.processing) == 0


async def test_job_seconds_are_observed_per_job_and_are_durations(fake_redis: Redis) -> None:
    def sample(suffix: str) -> float:
        value = metrics.REGISTRY.get_sample_value(f"payflow_job_seconds_{suffix}", {"queue": Q})
        return value or 0.0

    for stream in (False, True):
        done = asyncio.Event()
        seen: list[bytes] = []

        class Handler:
            async def batch(self, raws: list[bytes], seen: list[bytes] = seen,
                            done: asyncio.Event = done) -> Batch:
                seen.extend(raws)
                if len(seen) >= 3:
                    done.set()
                return Batch([DONE if raw != b"3" else _done() for raw in raws])

        before = sample("count"), sample("sum")
        await fake_redis.lpush(Q, b"1", b"2", b"3")
        client = QueueClient(fake_redis, queue=Q, forward=W, consumer_id=f"t:s{stream}")
        await run_until(consumer_of(client, Handler(), stream=stream), done)
        await wait_for(lambda c=client: _empty(fake_redis, c.processing))
        assert sample("count") - before[0] == (4 if not stream else 3)
        assert 0 <= sample("sum") - before[1] < 1.0


async def test_stopping_records_each_in_flight_job_as_it_finishes(fake_redis: Redis) -> None:
    """While stopping, a job that finishes is recorded at once, not when the last one does:
    cancelled at the end of the grace period, the consumer has lost no finished job."""
    started: list[bytes] = []
    both = asyncio.Event()
    release_fast = asyncio.Event()

    async def handler(raw: bytes) -> Outcome:
        started.append(raw)
        if len(started) == 2:
            both.set()
        if raw == b"fast":
            await release_fast.wait()
            return Outcome(push=[b"hook-fast"])
        await asyncio.sleep(30)
        return DONE

    await fake_redis.lpush(Q, b"fast", b"hang")
    client = QueueClient(fake_redis, queue=Q, forward=W, consumer_id="t:w0")
    consumer = consumer_of(client, PerJob(handler), stream=True)
    task = asyncio.create_task(consumer.run())
    async with asyncio.timeout(5):
        await both.wait()
    consumer.stop.set()
    await asyncio.sleep(0.1)
    release_fast.set()
    await wait_for(lambda: _async_lrange_is(fake_redis, client.processing, [b"hang"]))
    assert await fake_redis.lrange(W, 0, -1) == [b"hook-fast"]
    task.cancel()
    try:
        async with asyncio.timeout(5):
            await task
    except asyncio.CancelledError:
        pass


async def _async_lrange_is(redis: Redis, key: str, expected: list[bytes]) -> bool:
    return bool(await redis.lrange(key, 0, -1) == expected)


async def test_a_full_streaming_consumer_does_not_poll_redis(fake_redis: Redis) -> None:
    """With ``batch_size`` jobs in flight there is no room: no fetch until one finishes."""
    sizes: list[int] = []
    started = asyncio.Event()
    release = asyncio.Event()

    class Counting(QueueClient):
        async def fetch(self, max_jobs: int, block_seconds: float) -> list[bytes]:
            sizes.append(max_jobs)
            return await super().fetch(max_jobs, block_seconds)

    async def handler(raw: bytes) -> Outcome:
        started.set()
        await release.wait()
        return DONE

    await fake_redis.lpush(Q, b"slow")
    client = Counting(fake_redis, queue=Q, forward=W, consumer_id="t:w0")
    consumer = consumer_of(client, PerJob(handler), batch_size=1, stream=True)
    task = asyncio.create_task(consumer.run())
    async with asyncio.timeout(5):
        await started.wait()
    await asyncio.sleep(0.3)
    assert sizes == [1]
    release.set()
    consumer.stop.set()
    async with asyncio.timeout(5):
        await task
