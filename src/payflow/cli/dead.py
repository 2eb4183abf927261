"""``payflow dead list|replay|purge``: look at and act on the dead-letter lists
(``{<queue>}:dead``) of a Redis that a daemon uses. The work is done by
:mod:`payflow.queue.deadletters`; this module is the command line around it."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, TextIO

from payflow.cli.status import NOT_PAYFLOW, never_registered, not_registered_line
from payflow.errors import ConfigError

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from payflow.queue.deadletters import DeadEntry

JOB_SHOWN = 200  # characters of a job shown by `payflow dead list`
PROGRESS_SECONDS = 0.1  # a progress line is redrawn at most this often
PROGRESS_WIDTH = 30  # characters of the bar

Action = Callable[["Redis", Sequence[str], argparse.Namespace], Awaitable[int]]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``dead`` and its actions to the ``payflow`` command's subparsers."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="PATH",
                        help="configuration file (default: $PAYFLOW_CONFIG, else ./payflow.toml "
                             "if present)")
    common.add_argument("--redis-url", metavar="URL",
                        help='the Redis of the daemon: redis://host:port/db, rediss://…, '
                             'unix://…, or "embedded" for the embedded server of a running '
                             "`payflow serve` on 127.0.0.1:[redis] embedded_port ([redis] url)")
    common.add_argument("--queue", metavar="Q",
                        help="only this queue: [queue] payments or [queue] webhooks "
                             "(default: both)")
    dead = sub.add_parser(
        "dead", help="list, replay or purge dead-lettered jobs",
        description="Dead-lettered jobs are kept in {<queue>}:dead. Each entry has an ID (from "
                    "its content) that `payflow dead list` shows and `payflow dead replay` "
                    "takes.")
    actions = dead.add_subparsers(dest="dead_command", metavar="ACTION", required=True)
    show = actions.add_parser(
        "list", parents=[common], help="show dead-letter entries, newest first",
        description="Show the dead-letter entries of each queue, newest first.")
    show.add_argument("--limit", metavar="N", type=_count_arg, default=20,
                      help="at most N entries per queue (default 20; 0: all)")
    show.add_argument("--json", action="store_true",
                      help="one JSON object per entry and line: id, queue, failed_at, reason, "
                           "consumer, job (non-UTF-8 bytes as \\xNN)")
    again = actions.add_parser(
        "replay", parents=[common], help="put dead jobs back on their queue",
        description="Put the job of each entry back on its queue and remove the entry, in one "
                    "atomic step per entry. A JSON envelope job starts again at attempt 0.")
    again.add_argument("ids", nargs="*", metavar="ID", help="entry IDs from `payflow dead list`")
    again.add_argument("--all", action="store_true", help="every entry")
    again.set_defaults(dead_parser=again)
    purge = actions.add_parser(
        "purge", parents=[common], help="delete dead-letter lists",
        description="Delete the dead-letter list of each queue.")
    purge.add_argument("--yes", action="store_true",
                       help="really delete (without it: only say what would be deleted)")


def _count_arg(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return value


def run(args: argparse.Namespace) -> int:
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import RedisError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    from payflow._config_parse import mask_url
    from payflow.config import load_config
    from payflow.embedded import EmbeddedRedis

    if args.dead_command == "replay" and bool(args.all) == bool(args.ids):
        args.dead_parser.error("give either one or more IDs or --all")
    try:
        config = load_config(args.config, overrides={"redis": {"url": args.redis_url}},
                             override_sources={("redis", "url"): "--redis-url"})
    except ConfigError as exc:
        print(f"payflow: configuration error: {exc}", file=sys.stderr)
        return 2
    known = [config.queue.payments, config.queue.webhooks]
    queues = known if args.queue is None else [args.queue]
    if args.queue not in (None, *known):
        print(f"payflow: --queue: unknown queue {args.queue!r}: expected {known[0]!r} ([queue] "
              f"payments) or {known[1]!r} ([queue] webhooks)", file=sys.stderr)
        return 2
    url = config.redis.url
    if url == "embedded":
        url = EmbeddedRedis(config.redis.embedded_port).url
    _tolerant_output()
    try:
        return asyncio.run(_session(url, queues, _ACTIONS[args.dead_command], args))
    except BrokenPipeError:  # `payflow dead list | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (OSError, RedisConnectionError, RedisTimeoutError) as exc:
        hint = (" (the embedded Redis of [redis] url \"embedded\" runs only inside "
                "`payflow serve`: is it running?)" if config.redis.url == "embedded" else "")
        print(f"payflow: cannot reach Redis at {mask_url(url, lone_user_is_secret=True)}: "
              f"{_one_line(exc)}{hint}", file=sys.stderr)
        return 1
    except RedisError as exc:
        print(f"payflow: Redis error at {mask_url(url, lone_user_is_secret=True)}: "
              f"{_one_line(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _tolerant_output() -> None:
    """Jobs may hold anything: never fail to print them on a terminal that is not UTF-8."""
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="backslashreplace")


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


async def _session(url: str, queues: Sequence[str], action: Action,
                   args: argparse.Namespace) -> int:
    from payflow.redis_client import connect

    client = connect(url, single_connection=False, socket_timeout=None, connect_timeout=5)
    try:
        if await never_registered(client, queues):
            print(not_registered_line(url), file=sys.stderr)
            return NOT_PAYFLOW
        return await action(client, queues, args)
    finally:
        await client.aclose()


# --- the actions ----------------------------------------------------------------------------


async def _list(redis: Redis, queues: Sequence[str], args: argparse.Namespace) -> int:
    from payflow.queue import keys
    from payflow.queue.deadletters import list_dead

    for n, queue in enumerate(queues):
        if args.json:
            for entry in await list_dead(redis, queue, limit=args.limit or None):
                print(json.dumps(_entry_json(entry)))
            continue
        total = await redis.llen(keys.dead(queue))
        entries = await list_dead(redis, queue, limit=args.limit or None)
        shown = f", newest {len(entries)} shown" if len(entries) < total else ""
        print(("\n" if n else "") + f"{keys.dead(queue)}: {_entries(total)}{shown}")
        for entry in entries:
            print(f"{entry.id}  {entry.queue}  {entry.failed_at or '-'}\n"
                  f"  reason: {_printable(entry.reason)}\n"
                  f"  job: {_job_text(entry.job)}")
    return 0


def _entry_json(entry: DeadEntry) -> dict[str, str]:
    return {"id": entry.id, "queue": entry.queue, "failed_at": entry.failed_at,
            "reason": entry.reason, "consumer": entry.consumer,
            "job": entry.job.decode("utf-8", "backslashreplace")}


async def _replay(redis: Redis, queues: Sequence[str], args: argparse.Namespace, *,
                  stderr: TextIO | None = None) -> int:
    from payflow.queue import keys
    from payflow.queue.deadletters import replay

    total = 0
    pending: list[str] | None = None if args.all else list(dict.fromkeys(args.ids))
    for queue in queues:
        bar = ProgressLine.on(stderr or sys.stderr, f"replaying {keys.dead(queue)}")
        try:
            count, missing = await replay(redis, queue, pending,
                                          progress=bar.update if bar else None)
        finally:
            if bar is not None:
                bar.close()
        total += count
        if pending is not None:
            pending = missing
            if not pending:
                break
    print(f"replayed {total}")
    for missing_id in pending or ():
        print(f"payflow: no dead-letter entry {missing_id!r} in "
              f"{' or '.join(_dead_keys(queues))}", file=sys.stderr)
    return 1 if pending else 0


async def _purge(redis: Redis, queues: Sequence[str], args: argparse.Namespace) -> int:
    from payflow.queue.deadletters import purge

    for dead, queue in zip(_dead_keys(queues), queues, strict=True):
        if args.yes:
            print(f"{dead}: deleted {_entries(await purge(redis, queue))}")
        else:
            print(f"{dead}: {_entries(await redis.llen(dead))} would be deleted")
    if not args.yes:
        print("payflow: nothing deleted: add --yes to delete", file=sys.stderr)
        return 1
    return 0


_ACTIONS: dict[str, Action] = {"list": _list, "replay": _replay, "purge": _purge}


class ProgressLine:
    """A progress bar redrawn in place (``\r``) on a terminal; :meth:`on` gives none for a
    stream that is not one, so that piped and logged output stays as it was."""

    def __init__(self, stream: TextIO, label: str) -> None:
        self._stream = stream
        self._label = label
        self._drawn = 0.0  # monotonic time of the last draw; 0: never drawn
        self._width = 0  # characters of the last line drawn

    @classmethod
    def on(cls, stream: TextIO, label: str) -> ProgressLine | None:
        try:
            tty = stream.isatty()
        except (AttributeError, ValueError):  # no isatty, or a closed stream
            tty = False
        return cls(stream, label) if tty else None

    def update(self, done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - self._drawn < PROGRESS_SECONDS:
            return
        self._drawn = now
        filled = PROGRESS_WIDTH * done // total if total else PROGRESS_WIDTH
        line = (f"{self._label}  [{'#' * filled}{'.' * (PROGRESS_WIDTH - filled)}]  "
                f"{done:,}/{total:,}  {100 * done // total if total else 100}%")
        self._stream.write("\r" + line.ljust(self._width))
        self._stream.flush()
        self._width = len(line)

    def close(self) -> None:
        """Erase the line, so that what is printed next starts on a clean one."""
        if self._width:
            self._stream.write("\r" + " " * self._width + "\r")
            self._stream.flush()


# --- printing -------------------------------------------------------------------------------


def _dead_keys(queues: Sequence[str]) -> list[str]:
    from payflow.queue import keys

    return [keys.dead(queue) for queue in queues]


def _entries(n: int) -> str:
    return "1 entry" if n == 1 else f"{n} entries"


def _job_text(job: bytes) -> str:
    text = _printable(job.decode("utf-8", "backslashreplace"))
    return text if len(text) <= JOB_SHOWN else f"{text[:JOB_SHOWN]}… ({len(job)} bytes)"


def _printable(text: str) -> str:
    """``text`` with control and other unprintable characters escaped (a job must not move the
    terminal's cursor or end its line)."""
    return "".join(ch if ch.isprintable() else _escape(ch) for ch in text)


def _escape(ch: str) -> str:
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"
