"""``payflow status``: the queues and daemons of the Redis a daemon uses, read from Redis alone.

The report is :func:`payflow.operations.gather`, which the dashboard's ``GET /v1/queues``
answers too. Processing rates (jobs done, retried and dead per second over the last minute)
are those the live daemons publish with their heartbeats, summed. Also
:func:`never_registered`, the check that ``payflow dead`` and ``payflow status`` share: a Redis
that no PayFlow daemon ever used is most likely the wrong one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from payflow.errors import ConfigError

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from payflow.config import Config

NOT_PAYFLOW = 3  # exit status when no PayFlow daemon has ever registered on the Redis


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    status = sub.add_parser(
        "status", help="show queue depths, processing rates and the registered daemons",
        description="Show, from Redis alone, each queue's ready, processing, delayed and dead "
                    "jobs, the jobs done, retried and dead per second over the last minute "
                    "(summed over the live daemons), and the registered daemons with their "
                    "heartbeat and in-flight jobs. Exits 3 when no PayFlow daemon has ever "
                    "registered on that Redis.")
    add_redis_arguments(status)
    status.add_argument("--json", action="store_true", help="one JSON object")


def add_redis_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="PATH",
                        help="configuration file (default: $PAYFLOW_CONFIG, else ./payflow.toml "
                             "if present)")
    parser.add_argument("--redis-url", metavar="URL",
                        help='the Redis of the daemon: redis://…, rediss://…, unix://…, or '
                             '"embedded" ([redis] url)')


async def never_registered(redis: Redis, queues: Sequence[str]) -> bool:
    """True when neither ``payflow:daemons`` nor any key of ``queues`` exists."""
    from payflow.queue import keys

    names = [keys.DAEMONS]
    for queue in queues:
        names += [queue, keys.delayed(queue), keys.dead(queue), keys.redeliveries(queue)]
    if await redis.exists(*names):
        return False
    for queue in queues:
        async for _ in redis.scan_iter(match=f"{{{queue}}}:processing:*", count=1000):
            return False
    return True


def not_registered_line(url: str) -> str:
    from payflow._config_parse import mask_url

    return (f"payflow: no PayFlow daemon has registered on "
            f"{mask_url(url, lone_user_is_secret=True)}: is --redis-url right?")


def load(args: argparse.Namespace) -> tuple[Config, str] | int:
    """The configuration and the Redis URL to connect to; or an exit status (2) after saying
    what is wrong with the configuration."""
    from payflow.config import load_config
    from payflow.embedded import EmbeddedRedis

    try:
        config = load_config(args.config, overrides={"redis": {"url": args.redis_url}},
                             override_sources={("redis", "url"): "--redis-url"})
    except ConfigError as exc:
        print(f"payflow: configuration error: {exc}", file=sys.stderr)
        return 2
    url = config.redis.url
    if url == "embedded":
        url = EmbeddedRedis(config.redis.embedded_port).url
    return config, url


def with_redis(url: str, embedded: bool, work: Callable[[Redis], Awaitable[int]]) -> int:
    """Run ``work`` on a client of ``url``; an unreachable Redis is one line and exit 1."""
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import RedisError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    from payflow._config_parse import mask_url
    from payflow.redis_client import connect

    async def session() -> int:
        client = connect(url, single_connection=False, socket_timeout=None, connect_timeout=5)
        try:
            return await work(client)
        finally:
            await client.aclose()

    shown = mask_url(url, lone_user_is_secret=True)
    try:
        return asyncio.run(session())
    except (OSError, RedisConnectionError, RedisTimeoutError) as exc:
        hint = (" (the embedded Redis runs only inside `payflow serve`: is it running?)"
                if embedded else "")
        print(f"payflow: cannot reach Redis at {shown}: {_one_line(exc)}{hint}", file=sys.stderr)
        return 1
    except RedisError as exc:
        print(f"payflow: Redis error at {shown}: {_one_line(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def run(args: argparse.Namespace) -> int:
    loaded = load(args)
    if isinstance(loaded, int):
        return loaded
    config, url = loaded
    queues = [config.queue.payments, config.queue.webhooks]

    async def work(redis: Redis) -> int:
        from payflow.operations import gather

        if await never_registered(redis, queues):
            print(not_registered_line(url), file=sys.stderr)
            return NOT_PAYFLOW
        report = await gather(redis, queues)
        if args.json:
            print(json.dumps(report))
        else:
            print(render(report))
        return 0

    return with_redis(url, config.redis.url == "embedded", work)


def render(report: dict[str, Any]) -> str:
    rows = [["QUEUE", "READY", "PROCESSING", "DELAYED", "DEAD", "DONE/S", "RETRIED/S",
             "DEAD/S"]]
    for name, q in report["queues"].items():
        rates = report["rates"].get(name, {})
        rows.append([name, *(str(q[k]) for k in ("ready", "processing", "delayed", "dead")),
                     *(f"{rates.get(k, 0.0):.2f}" for k in ("done", "retried", "dead"))])
    lines = _table(rows, right=range(1, 8))
    lines += ["(per second: jobs over the last minute, summed over the live daemons)", ""]
    if report["daemons"]:
        rows = [["DAEMON", "HOST", "PID", "STORE", "HEARTBEAT", "STATE", "IN FLIGHT"]]
        for d in report["daemons"]:
            age = d["heartbeat_age_seconds"]
            rows.append([d["id"], str(d["host"]), str(d["pid"]), str(d["store"]),
                         "-" if age is None else f"{age:.1f}s ago",
                         "alive" if d["alive"] else "dead",
                         str(sum(d["in_flight"].values()))])
        lines += _table(rows, right=(2, 6))
    else:
        lines.append("no daemon registered")
    lines.append(f"store: {', '.join(report['stores']) or '-'}")
    return "\n".join(lines)


def _table(rows: list[list[str]], right: Sequence[int] | range) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.rjust(w) if i in right else cell.ljust(w)
                      for i, (cell, w) in enumerate(zip(row, widths, strict=True))).rstrip()
            for row in rows]
