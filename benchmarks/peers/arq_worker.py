"""PayFlow's two-stage pipeline written with arq, the way arq's documentation shows it.

A ``payment`` job logs a line, records the payment in a dict and enqueues a ``webhook`` job;
the ``webhook`` job logs a line (and, with ``BENCH_WEBHOOK_URL``, POSTs the signed event to the
receiver first). See benchmarks/peers/common.py for the settings.

Worker (arq's CLI): ``arq benchmarks.peers.arq_worker.WorkerSettings``
Enqueue N payments and wait until every job is done (one JSON line of timings):
``python -m benchmarks.peers.arq_worker N [--timeout S]``
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from arq import create_pool
from arq.connections import ArqRedis, RedisSettings
from arq.constants import default_queue_name

from benchmarks.peers import common

REDIS_SETTINGS = RedisSettings.from_dsn(common.REDIS_URL)


async def payment(ctx: dict[str, Any], payment_id: str, method: str) -> None:
    event = common.process_payment(payment_id, method)
    redis: ArqRedis = ctx["redis"]
    await redis.enqueue_job("webhook", event)


async def webhook(ctx: dict[str, Any], event: dict[str, Any]) -> None:
    await common.deliver(ctx["session"], event)


async def startup(ctx: dict[str, Any]) -> None:
    common.setup_logging()
    ctx["session"] = common.new_session()
    common.log.info(common.READY)


async def shutdown(ctx: dict[str, Any]) -> None:
    if ctx.get("session") is not None:
        await ctx["session"].close()


class WorkerSettings:
    functions = (payment, webhook)
    on_startup = startup
    on_shutdown = shutdown
    redis_settings = REDIS_SETTINGS


async def enqueue_and_wait(count: int) -> None:
    redis = await create_pool(REDIS_SETTINGS)
    try:
        limit = asyncio.Semaphore(50)  # enqueue_job is a WATCH/MULTI round trip: overlap them

        async def one(i: int) -> None:
            async with limit:
                await redis.enqueue_job("payment", f"pay_b_{i}", "upi")

        started = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(count)))
        enqueued = time.perf_counter() - started
        # arq keeps a job in its queue until it has finished ("pessimistic execution"), and a
        # payment job enqueues its webhook job before it finishes: empty = all done.
        while await redis.zcard(default_queue_name) > 0:  # noqa: ASYNC110 (Redis polled)
            await asyncio.sleep(0.02)
        common.report(time.perf_counter() - started, enqueued)
    finally:
        await redis.aclose()


async def run(count: int, seconds: float) -> None:
    try:
        async with asyncio.timeout(seconds):
            await enqueue_and_wait(count)
    except TimeoutError:
        raise SystemExit(f"arq: jobs not all done after {seconds} s") from None


def main() -> None:
    parser = argparse.ArgumentParser(description="enqueue N payments, wait until all are done")
    parser.add_argument("count", type=int)
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args()
    asyncio.run(run(args.count, args.timeout))


if __name__ == "__main__":
    main()
