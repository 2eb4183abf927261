"""``payflow push``: LPUSH raw jobs onto a queue (what ``redis-cli LPUSH`` does, for machines
without redis-cli)."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from payflow.cli import status as cli_status

if TYPE_CHECKING:
    from redis.asyncio import Redis


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    push = sub.add_parser(
        "push", help="push raw jobs onto a queue (like redis-cli LPUSH)",
        description="LPUSH each JOB onto the queue, in order; '-' reads jobs from standard "
                    "input, one per line (empty lines are skipped).")
    push.add_argument("jobs", nargs="+", metavar="JOB",
                      help='a job, e.g. "process_payment:pay_1:upi"; - for standard input')
    push.add_argument("--queue", metavar="Q", default="payflow_jobs",
                      help="the queue (default: payflow_jobs)")
    cli_status.add_redis_arguments(push)


def run(args: argparse.Namespace) -> int:
    jobs: list[str] = []
    for job in args.jobs:
        if job == "-":
            jobs += [line.rstrip("\r\n") for line in sys.stdin if line.strip()]
        else:
            jobs.append(job)
    loaded = cli_status.load(args)
    if isinstance(loaded, int):
        return loaded
    config, url = loaded

    async def work(redis: Redis) -> int:
        if jobs:
            await redis.lpush(args.queue, *jobs)
        print(f"pushed {len(jobs)} job{'' if len(jobs) == 1 else 's'} onto {args.queue}")
        return 0

    return cli_status.with_redis(url, config.redis.url == "embedded", work)
