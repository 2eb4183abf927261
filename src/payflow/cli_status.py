"""``payflow status``: the queues and daemons of the Redis a daemon uses, read from Redis alone.

Processing rates are not shown: the done counters live in each daemon's process (``/metrics``),
not in Redis. Also :func:`never_registered`, the check that ``payflow dead`` and ``payflow
status`` share: a Redis that no PayFlow daemon ever used is most likely the wrong one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from payflow.errors import ConfigError

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from payflow.config import Config

NOT_PAYFLOW = 3  # exit status when no PayFlow daemon has ever registered on the Redis


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    status = sub.add_parser(
        "status", help="show queue depths and the registered daemons",
        description="Show, from Redis alone, each queue's ready, processing, delayed and dead "
                    "jobs, and the registered daemons with their heartbeat and in-flight jobs. "
                    "Exits 3 when no PayFlow daemon has ever registered on that Redis.")
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


async def gather(redis: Redis, queues: Sequence[str]) -> dict[str, Any]:
    """The status as a JSON-able dict: ``queues`` (name -> ready, processing, delayed, dead),
    ``daemons`` (id, host, pid, started_at, store, shared, alive, heartbeat_age_seconds,
    in_flight: queue -> jobs) and ``stores`` (the store kinds the daemons report)."""
    from payflow.queue import keys

    registry = await redis.hgetall(keys.DAEMONS)
    daemons: list[dict[str, Any]] = []
    processing = dict.fromkeys(queues, 0)
    now = datetime.now(UTC)
    for raw_id, raw_info in sorted(registry.items()):
        daemon_id = _text(raw_id)
        try:
            info = json.loads(raw_info)
            lists = [(str(q), str(p)) for q, p in info.get("lists", [])]
        except (ValueError, TypeError, AttributeError):
            info, lists = {}, []
        beat = await redis.get(keys.heartbeat(daemon_id))
        in_flight: dict[str, int] = {}
        for queue, plist in lists:
            in_flight[queue] = in_flight.get(queue, 0) + int(await redis.llen(plist))
        for queue, count in in_flight.items():
            if queue in processing:
                processing[queue] += count
        daemons.append({"id": daemon_id, "host": info.get("host"), "pid": info.get("pid"),
                        "started_at": info.get("started_at"), "store": info.get("store"),
                        "shared": info.get("shared"), "alive": beat is not None,
                        "heartbeat_age_seconds": _age(beat, now), "in_flight": in_flight})
    report: dict[str, Any] = {"queues": {}, "daemons": daemons,
                              "stores": sorted({str(d["store"]) for d in daemons
                                                if d["store"] is not None})}
    for queue in queues:
        async with redis.pipeline(transaction=False) as pipe:
            pipe.llen(queue)
            pipe.zcard(keys.delayed(queue))
            pipe.llen(keys.dead(queue))
            ready, delayed, dead = await pipe.execute()
        report["queues"][queue] = {"ready": int(ready), "processing": processing[queue],
                                   "delayed": int(delayed), "dead": int(dead)}
    return report


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else value


def _age(beat: bytes | str | None, now: datetime) -> float | None:
    """Seconds since the heartbeat's ISO time (liveness.beat writes it)."""
    if beat is None:
        return None
    try:
        then = datetime.fromisoformat(_text(beat))
    except ValueError:
        return None
    return round(max(0.0, (now - then).total_seconds()), 1)


def render(report: dict[str, Any]) -> str:
    rows = [["QUEUE", "READY", "PROCESSING", "DELAYED", "DEAD"]]
    for name, q in report["queues"].items():
        rows.append([name, *(str(q[k]) for k in ("ready", "processing", "delayed", "dead"))])
    lines = _table(rows, right=range(1, 5))
    lines.append("")
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
