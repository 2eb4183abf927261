#!/usr/bin/env python3
"""Benchmark `payflow serve` end to end on a real Redis (started here on a free port).

Two runs per store, each against a fresh daemon (JSON logs to a file, the log sink on, default
config otherwise):

- burst: N legacy jobs pushed onto payflow_jobs at once; time until every payment is processed
  and every webhook delivered to the log sink (the metrics say so), i.e. jobs/s through both
  queues;
- intake: M payments POSTed over HTTP with C concurrent clients; requests/s and latency
  percentiles of the API, then the time until all are processed.

Usage: .venv/bin/python scripts/bench.py [--jobs 20000] [--posts 5000] [--concurrency 32]
                                         [--store memory://] [--store postgresql://…]
Each --store is measured in the same run (default: memory:// only); a PostgreSQL store gets a
schema of its own, dropped afterwards. Only 127.0.0.1 is used. Needs redis-server on PATH.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import redis

PAYFLOW = shutil.which("payflow", path=str(Path(sys.executable).parent)) or "payflow"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


STORE = "memory://"  # the store of the daemons started; main() sets it per run


class Daemon:
    def __init__(self, redis_url: str, workdir: Path) -> None:
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("PAYFLOW_")}
        env.update(PAYFLOW_REDIS_URL=redis_url, PAYFLOW_HTTP_PORT=str(self.port),
                   PAYFLOW_LOG_FORMAT="json", PAYFLOW_STORE_URL=STORE,
                   PAYFLOW_WEBHOOKS_LOG_SINK="true")
        self.log = (workdir / f"payflow-{self.port}.log").open("wb")
        self.proc = subprocess.Popen([PAYFLOW, "serve"], cwd=workdir, env=env,
                                     stdout=self.log, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.port}"

    async def wait_ready(self, http: aiohttp.ClientSession) -> None:
        for _ in range(200):
            try:
                async with http.get(self.url + "/readyz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
        raise SystemExit("payflow serve did not become ready")

    async def delivered(self, http: aiohttp.ClientSession) -> float:
        async with http.get(self.url + "/metrics") as resp:
            text = await resp.text()
        return metric(text, 'payflow_jobs_total{outcome="done",queue="webhook_jobs"}')

    async def wait_delivered(self, http: aiohttp.ClientSession, count: int) -> None:
        while await self.delivered(http) < count:
            await asyncio.sleep(0.02)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self.log.close()


async def burst(redis_url: str, workdir: Path, jobs: int) -> str:
    d = Daemon(redis_url, workdir)
    client = redis.Redis.from_url(redis_url)
    try:
        async with aiohttp.ClientSession() as http:
            await d.wait_ready(http)
            raws = [f"process_payment:pay_bench_{i}:upi" for i in range(jobs)]
            started = time.perf_counter()
            for start in range(0, jobs, 5000):
                client.lpush("payflow_jobs", *raws[start:start + 5000])
            await d.wait_delivered(http, jobs)
            took = time.perf_counter() - started
    finally:
        d.stop()
        client.close()
    return (f"burst   {jobs} legacy jobs pushed at once: all processed and delivered in "
            f"{took:.2f} s = {jobs / took:,.0f} payments/s (each a payment job and a webhook "
            f"job)")


async def intake(redis_url: str, workdir: Path, posts: int, concurrency: int) -> str:
    d = Daemon(redis_url, workdir)
    body = {"amount": 1999, "currency": "INR", "method": "upi", "upi": {"vpa": "bench@ok"}}
    latencies: list[float] = []
    try:
        connector = aiohttp.TCPConnector(limit=concurrency)
        async with aiohttp.ClientSession(connector=connector) as http:
            await d.wait_ready(http)
            queue: asyncio.Queue[int] = asyncio.Queue()
            for i in range(posts):
                queue.put_nowait(i)

            async def client() -> None:
                while not queue.empty():
                    queue.get_nowait()
                    t0 = time.perf_counter()
                    async with http.post(d.url + "/v1/payments", json=body) as resp:
                        await resp.read()
                        if resp.status != 202:
                            raise SystemExit(f"POST answered {resp.status}")
                    latencies.append(time.perf_counter() - t0)

            started = time.perf_counter()
            await asyncio.gather(*(client() for _ in range(concurrency)))
            accepted = time.perf_counter() - started
            await d.wait_delivered(http, posts)
            done = time.perf_counter() - started
    finally:
        d.stop()
    q = statistics.quantiles(latencies, n=100)
    return (f"intake  {posts} POST /v1/payments, {concurrency} concurrent: {posts / accepted:,.0f}"
            f" requests/s, latency p50 {q[49] * 1000:.1f} ms, p99 {q[98] * 1000:.1f} ms; all "
            f"processed and delivered after {done:.2f} s")


async def pg_schema(url: str, create: bool, schema: str) -> None:
    import asyncpg  # type: ignore[import-untyped,unused-ignore]

    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f"CREATE SCHEMA {schema}" if create
                           else f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    finally:
        await conn.close()


def main() -> None:
    global STORE
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=20000)
    parser.add_argument("--posts", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--store", action="append", default=[],
                        help="a store URL to measure (repeatable; default memory://)")
    args = parser.parse_args()
    if shutil.which("redis-server") is None:
        raise SystemExit("redis-server is needed (apt-get install redis-server)")
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        server = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                                   "--save", "", "--appendonly", "no"],
                                  stdout=subprocess.DEVNULL)
        url = f"redis://127.0.0.1:{port}/0"
        try:
            time.sleep(0.3)
            print(f"payflow serve on redis-server {url}, {os.cpu_count()} cores, JSON logs")
            for store in args.store or ["memory://"]:
                schema = f"payflow_bench_{os.getpid()}"
                is_pg = store.startswith("postgres")
                STORE = store
                if is_pg:
                    asyncio.run(pg_schema(store, True, schema))
                    sep = "&" if "?" in store else "?"
                    STORE = f"{store}{sep}search_path={schema}"
                try:
                    print(f"store {store}")
                    print(asyncio.run(burst(url, Path(tmp), args.jobs)))
                    redis.Redis.from_url(url).flushall()
                    if is_pg:  # a fresh schema for the intake run
                        asyncio.run(pg_schema(store, False, schema))
                        asyncio.run(pg_schema(store, True, schema))
                    print(asyncio.run(intake(url, Path(tmp), args.posts, args.concurrency)))
                    redis.Redis.from_url(url).flushall()
                finally:
                    if is_pg:
                        asyncio.run(pg_schema(store, False, schema))
        finally:
            server.terminate()
            server.wait()


if __name__ == "__main__":
    main()
