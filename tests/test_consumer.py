"""The consumer loop on fakeredis: outcomes settled in one step, errors never kill the loop."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

from redis.asyncio import Redis
from structlog.testing import capture_logs

from conftest import free_port
from payflow import metrics
from payflow.errors import InvalidJob
from payflow.queue import keys
from payflow.queue.consumer import Batch, Consumer, Outcome, PerJob
from payflow.queue.redis import QueueClient
from payflow.store.base import is_outage

Q, W = "payflow_jobs", "webhook_jobs"


async def run_until(consumer: Consumer, done: asyncio.Event, timeout: float = 5) -> None:
    task = asyncio.create_task(consumer.run())
    async with asyncio.timeout(timeout):
        await done.wait()
    consumer.stop.set()
    async with asyncio.timeout(timeout):
        await task


async def test_every_outcome_is_settled(fake_redis: Redis) -> None:
    recorded: list[str] = []
    seen: list[bytes] = []
    all_seen = asyncio.Event()

    async def handler(raw: bytes) -> Outcome:
        seen.append(raw)
        if len(seen) == 5:
            all_seen.set()
        if raw == b"ok":
            async def after() -> None:
                recorded.append("after")
            return Outcome(push=[b"hook"], after=after)
        if raw == b"retry":
            return Outcome(delay=[(b"retry#2", 30.0)])
        if raw == b"invalid":
            raise InvalidJob("no good")
        if raw == b"boom":
            raise RuntimeError("bug")
        return Outcome(dead="given up")

    await fake_redis.lpush(Q, b"ok", b"retry", b"invalid", b"boom", b"dead")
    client = QueueClient(fake_redis, queue=Q, forward=W, consumer_id="t:p0")
    consumer = Consumer(client=client, handler=PerJob(handler), stop=asyncio.Event(), batch_size=10,
                        block_seconds=0.1)
    with capture_logs() as logs:
        await run_until(consumer, all_seen)
    assert await fake_redis.llen(client.processing) == 0
    assert await fake_redis.lrange(W, 0, -1) == [b"hook"]
    assert await fake_redis.zrange(keys.delayed(Q), 0, -1) == [b"retry#2"]
    dead = [json.loads(e) for e in await fake_redis.lrange(keys.dead(Q), 0, -1)]
    reasons = sorted(e["reason"] for e in dead)
    assert reasons == ["given up", "internal error: RuntimeError: bug", "no good"]
    assert recorded == ["after"]
    assert any(e["event"] == "Job failed unexpectedly: dead-lettered" and
               e["log_level"] == "error" for e in logs)


async def test_each_job_settles_on_its_own_in_streaming_mode(fake_redis: Redis) -> None:
    release = asyncio.Event()

    async def handler(raw: bytes) -> Outcome:
        if raw == b"slow":
            await release.wait()
        return Outcome()

    await fake_redis.lpush(Q, b"slow", b"fast")
    client = QueueClient(fake_redis, queue=Q, forward=W, consumer_id="t:w0")
    consumer = Consumer(client=client, handler=PerJob(handler), stop=asyncio.Event(), batch_size=10,
                        block_seconds=0.1, stream=True)
    task = asyncio.create_task(consumer.run())
    async with asyncio.timeout(5):
        while await fake_redis.lrange(client.processing, 0, -1) != [b"slow"]:
            await asyncio.sleep(0.01)
    # the fast job was acked while the slow one is still in flight
    release.set()
    consumer.stop.set()
    async with asyncio.timeout(5):
        await task
    assert await fake_redis.llen(client.processing) == 0


async def test_redis_down_backs_off_and_keeps_running() -> None:
    dead_port = free_port()
    redis = Redis(port=dead_port, socket_connect_timeout=0.2, single_connection_client=True)
    client = QueueClient(redis, queue=Q, forward=W, consumer_id="t:p0")

    async def handler(raw: bytes) -> Outcome:
        return Outcome()

    consumer = Consumer(client=client, handler=PerJob(handler), stop=asyncio.Event(), batch_size=10,
                        block_seconds=0.1)
    with capture_logs() as logs:
        task = asyncio.create_task(consumer.run())
        await asyncio.sleep(0.8)
        assert not task.done()  # it did not crash
        consumer.stop.set()
        async with asyncio.timeout(6):
            await task
    failures = [e for e in logs if e["event"] == "queue.fetch_failed"]
    assert 1 <= len(failures) < 30  # backed off rather than spun
    await redis.aclose()


async def test_jobs_moved_by_a_lost_fetch_reply_are_put_back(fake_redis: Redis) -> None:
    """Redis moved jobs into our processing list but the reply never arrived: after the
    failure, the consumer returns its own list to the queue before fetching again."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    class LosingClient(QueueClient):
        lost = False

        async def fetch(self, max_jobs: int, block_seconds: float) -> list[bytes]:
            if not self.lost:
                self.lost = True
                await super().fetch(max_jobs, block_seconds)  # moved, but the reply is lost
                raise RedisConnectionError("connection reset")
            return await super().fetch(max_jobs, block_seconds)

    seen: list[bytes] = []
    done = asyncio.Event()

    async def handler(raw: bytes) -> Outcome:
        seen.append(raw)
        if len(seen) == 2:
            done.set()
        return Outcome()

    await fake_redis.lpush(Q, b"a", b"b")
    client = LosingClient(fake_redis, queue=Q, forward=W, consumer_id="t:p0")
    consumer = Consumer(client=client, handler=PerJob(handler), stop=asyncio.Event(), batch_size=10,
                        block_seconds=0.1)
    with capture_logs() as logs:
        await run_until(consumer, done)
    assert sorted(seen) == [b"a", b"b"]
    assert await fake_redis.llen(client.processing) == 0
    assert any(e["event"] == "queue.recovered_unseen_jobs" and e["jobs"] == 2 for e in logs)


def slow_handler() -> tuple[asyncio.Event, list[bytes], Callable[[bytes], Awaitable[Outcome]]]:
    """A handler that holds the job ``b"slow"`` until the event is set; the jobs it finished."""
    release = asyncio.Event()
    handled: list[bytes] = []

    async def handler(raw: bytes) -> Outcome:
        if raw == b"slow":
            await release.wait()
        handled.append(raw)
        return Outcome()

    return release, handled, handler


async def test_a_slow_job_does_not_hold_back_fetching_in_streaming_mode(
        fake_redis: Redis) -> None:
    release, handled, handler = slow_handler()
    client = QueueClient(fake_redis, queue=Q, forward=W, consumer_id="t:w1")
    consumer = Consumer(client=client, handler=PerJob(handler), stop=asyncio.Event(), batch_size=10,
                        block_seconds=0.1, stream=True)
    task = asyncio.create_task(consumer.run())
    await fake_redis.lpush(Q, b"slow")
    async with asyncio.timeout(5):
        while await fake_redis.lrange(client.processing, 0, -1) != [b"slow"]:
            await asyncio.sleep(0.01)
        await fake_redis.lpush(Q, b"later-1", b"later-2")  # pushed after the slow one started
        while sorted(handled) != [b"later-1", b"later-2"]:
            await asyncio.sleep(0.01)
        while await fake_redis.lrange(client.processing, 0, -1) != [b"slow"]:
            await asyncio.sleep(0.01)  # the later jobs are acked; the slow one still runs
    release.set()
    consumer.stop.set()
    async with asyncio.timeout(5):
        await task
    assert handled[-1] == b"slow" and await fake_redis.llen(client.processing) == 0


async def test_by_default_a_batch_is_finished_before_the_next_is_fetched(
        fake_redis: Redis) -> None:
    """Batch mode, the default: a slow job holds back the next fetch (unlike streaming)."""
    release, handled, handler = slow_handler()
    client = QueueClient(fake_redis, queue=Q, forward=W, consumer_id="t:p1")
    consumer = Consumer(client=client, handler=PerJob(handler), stop=asyncio.Event(), batch_size=2,
                        block_seconds=0.1)
    await fake_redis.lpush(Q, b"slow", b"quick")
    task = asyncio.create_task(consumer.run())
    async with asyncio.timeout(5):
        while handled != [b"quick"]:
            await asyncio.sleep(0.01)
    await fake_redis.lpush(Q, b"next")
    await asyncio.sleep(0.3)  # a streaming consumer would have taken "next" by now
    assert await fake_redis.lrange(Q, 0, -1) == [b"next"]
    assert handled == [b"quick"]
    release.set()
    async with asyncio.timeout(5):
        while b"next" not in handled:
            await asyncio.sleep(0.01)
    consumer.stop.set()
    async with asyncio.timeout(5):
        await task


async def test_the_after_hooks_of_a_batch_run_side_by_side(fake_redis: Redis) -> None:
    """So that a store coalesces them (one round trip); one that fails is logged, the others
    still run."""
    running = 0
    most = 0
    finished: list[bytes] = []
    done = asyncio.Event()

    async def handler(raw: bytes) -> Outcome:
        async def after() -> None:
            nonlocal running, most
            running += 1
            most = max(most, running)
            await asyncio.sleep(0.05)
            running -= 1
            if raw == b"bad":
                raise RuntimeError("store down")
            finished.append(raw)
            if len(finished) == 3:
                done.set()

        return Outcome(after=after)

    await fake_redis.lpush(Q, b"a", b"bad", b"b", b"c")
    client = QueueClient(fake_redis, queue=Q, forward=W, consumer_id="t:p0")
    consumer = Consumer(client=client, handler=PerJob(handler), stop=asyncio.Event(), batch_size=10,
                        block_seconds=0.1)
    with capture_logs() as logs:
        await run_until(consumer, done)
    assert sorted(finished) == [b"a", b"b", b"c"]
    assert most == 4  # all four at once
    (failed,) = [e for e in logs if e["event"] == "queue.after_failed"]
    assert "store down" in failed["error"]
    assert await fake_redis.llen(client.processing) == 0


async def test_trimmed_dead_letters_are_counted_and_logged_once(fake_redis: Redis) -> None:
    seen: list[bytes] = []
    all_seen = asyncio.Event()

    async def handler(raw: bytes) -> Outcome:
        seen.append(raw)
        if len(seen) == 5:
            all_seen.set()
        return Outcome(dead="given up")

    def trimmed_total() -> float:
        value = metrics.REGISTRY.get_sample_value("payflow_dead_trimmed_total", {"queue": Q})
        return value or 0.0

    before = trimmed_total()
    await fake_redis.lpush(Q, b"j1", b"j2", b"j3", b"j4", b"j5")
    client = QueueClient(fake_redis, queue=Q, forward=W, consumer_id="t:p0",
                         dead_max_entries=3)
    consumer = Consumer(client=client, handler=PerJob(handler), stop=asyncio.Event(), batch_size=10,
                        block_seconds=0.1)
    with capture_logs() as logs:
        await run_until(consumer, all_seen)
    dead = [json.loads(e)["job"] for e in await fake_redis.lrange(keys.dead(Q), 0, -1)]
    assert dead == ["j5", "j4", "j3"]  # the newest kept
    assert trimmed_total() - before == 2
    (line,) = [e for e in logs if e["event"] == "queue.dead_trimmed"]  # one line, not per entry
    assert line["log_level"] == "warning"
    assert line["queue"] == Q and line["trimmed"] == 2 and line["limit"] == 3


async def test_a_store_outage_retries_the_batch_later_instead_of_dead_lettering_it(
        fake_redis: Redis) -> None:
    calls = 0

    class Flaky:
        async def batch(self, raws: list[bytes]) -> Batch:
            nonlocal calls
            calls += 1
            raise ConnectionRefusedError("the store is down")

    await fake_redis.lpush(Q, b"a", b"b")
    client = QueueClient(fake_redis, queue=Q, forward=W, consumer_id="t:p0")
    consumer = Consumer(client=client, handler=Flaky(), stop=asyncio.Event(), batch_size=10,
                        block_seconds=0.1, outage=is_outage)
    done = asyncio.Event()

    async def watch() -> None:
        while await fake_redis.zcard(keys.delayed(Q)) < 2:
            await asyncio.sleep(0.01)
        done.set()

    watcher = asyncio.create_task(watch())
    with capture_logs() as logs:
        await run_until(consumer, done)
    await watcher
    assert calls == 1  # not split job by job: an outage is not a bad job
    assert await fake_redis.llen(keys.dead(Q)) == 0
    assert sorted(await fake_redis.zrange(keys.delayed(Q), 0, -1)) == [b"a", b"b"]
    assert any(e["event"] == "queue.outage_retry" and e["jobs"] == 2 for e in logs)


async def test_an_unexpected_error_dead_letters_only_the_job_that_raises(
        fake_redis: Redis) -> None:
    class Picky:
        async def batch(self, raws: list[bytes]) -> Batch:
            if b"bad" in raws:
                raise ValueError("a bug")
            return Batch([Outcome() for _ in raws])

    await fake_redis.lpush(Q, b"a", b"bad", b"b")
    client = QueueClient(fake_redis, queue=Q, forward=W, consumer_id="t:p0")
    consumer = Consumer(client=client, handler=Picky(), stop=asyncio.Event(), batch_size=10,
                        block_seconds=0.1, outage=is_outage)
    done = asyncio.Event()

    async def watch() -> None:
        while await fake_redis.llen(keys.dead(Q)) < 1 or await fake_redis.llen(Q):
            await asyncio.sleep(0.01)
        done.set()

    watcher = asyncio.create_task(watch())
    with capture_logs():
        await run_until(consumer, done)
    await watcher
    [entry] = await fake_redis.lrange(keys.dead(Q), 0, -1)
    assert json.loads(entry)["job"] == "bad"
    assert await fake_redis.llen(client.processing) == 0  # a and b acked


def test_what_counts_as_an_outage() -> None:
    import asyncpg

    assert is_outage(ConnectionResetError()) and is_outage(TimeoutError())
    assert is_outage(asyncpg.exceptions.ConnectionDoesNotExistError("gone"))
    assert is_outage(asyncpg.exceptions.CannotConnectNowError("starting up"))
    assert not is_outage(asyncpg.exceptions.UniqueViolationError("duplicate"))
    assert not is_outage(ValueError("a bug"))
    from payflow.webhooks.ssrf import SSRFRefused

    assert not is_outage(SSRFRefused("h", "10.0.0.1", "private"))  # a verdict, not an outage
    assert is_outage(OSError(5, "Input/output error"))
