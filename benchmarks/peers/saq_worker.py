"""PayFlow's two-stage pipeline written with saq, the way saq's documentation shows it.

A ``payment`` job logs a line, records the payment in a dict and enqueues a ``webhook`` job;
the ``webhook`` job logs a line (and, with ``BENCH_WEBHOOK_URL``, POSTs the signed event to the
receiver first). See benchmarks/peers/common.py for the settings.

Worker (saq's CLI): ``saq benchmarks.peers.saq_worker.settings``
Enqueue N payments and wait until every job is done (one JSON line of timings):
``python -m benchmarks.peers.saq_worker N [--timeout S]``
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import aiohttp
from saq import Queue
from saq.types import Context, SettingsDict

from benchmarks.peers import common

queue = Queue.from_url(common.REDIS_URL)
session: aiohttp.ClientSession | None = None


async def payment(ctx: Context, *, payment_id: str, method: str) -> None:
    event = common.process_payment(payment_id, method)
    await queue.enqueue("webhook", event=event)


async def webhook(ctx: Context, *, event: dict[str, Any]) -> None:
    await common.deliver(session, event)


async def startup(ctx: Context) -> None:
    global session
    common.setup_logging()
    session = common.new_session()
    common.log.info(common.READY)


async def shutdown(ctx: Context) -> None:
    if session is not None:
        await session.close()


settings: SettingsDict[Context] = {
    "queue": queue,
    "functions": [payment, webhook],
    "concurrency": 10,
    "startup": startup,
    "shutdown": shutdown,
}


async def enqueue_and_wait(count: int) -> None:
    await queue.connect()
    try:
        limit = asyncio.Semaphore(50)

        async def one(i: int) -> None:
            async with limit:
                await queue.enqueue("payment", payment_id=f"pay_b_{i}", method="upi")

        started = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(count)))
        enqueued = time.perf_counter() - started
        # As saq's own benchmark waits: a payment job enqueues its webhook job before it
        # completes, so no incomplete job = all done.
        while await queue.count("incomplete"):  # noqa: ASYNC110 (Redis polled)
            await asyncio.sleep(0.02)
        common.report(time.perf_counter() - started, enqueued)
    finally:
        await queue.disconnect()


async def run(count: int, seconds: float) -> None:
    try:
        async with asyncio.timeout(seconds):
            await enqueue_and_wait(count)
    except TimeoutError:
        raise SystemExit(f"saq: jobs not all done after {seconds} s") from None


def main() -> None:
    parser = argparse.ArgumentParser(description="enqueue N payments, wait until all are done")
    parser.add_argument("count", type=int)
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args()
    asyncio.run(run(args.count, args.timeout))


if __name__ == "__main__":
    main()
