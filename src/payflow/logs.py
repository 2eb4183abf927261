"""structlog set-up: the console renderer on a terminal, JSON lines otherwise.

The seed's console lines are the ``event`` of a log entry (``Job received: …``); structured
fields follow it. A job's ids are fields of its lines; an HTTP request's id comes from the
:data:`REQUEST_ID` context variable.
"""

from __future__ import annotations

import asyncio
import atexit
import contextvars
import json
import logging
import re
import sys
from collections.abc import Callable, MutableMapping
from typing import Any, BinaryIO, TextIO

import orjson
import structlog

from payflow.models import now_iso

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
          "error": logging.ERROR}


def resolve_format(fmt: str, stream: TextIO) -> str:
    """``auto`` means console on a terminal, JSON otherwise."""
    if fmt != "auto":
        return fmt
    return "console" if stream.isatty() else "json"


def configure(fmt: str = "auto", level: str = "info", stream: TextIO | None = None) -> str:
    """Configure structlog once for the process; returns the format chosen."""
    out = stream or sys.stdout
    chosen = resolve_format(fmt, out)
    processors: list[Any] = [
        add_request_id,
        structlog.processors.add_log_level,
        _timestamp,
    ]
    factory: Any = structlog.WriteLoggerFactory(file=out)
    if chosen == "json":
        binary = getattr(out, "buffer", None)
        if binary is not None:  # one processor for it all: a JSON line is on every hot path
            processors = [json_line]
            out.flush()
            lines = BufferedLines(binary)
            atexit.register(lines.flush)
            _flushers.append(lines.flush)
            factory = lambda *_: lines  # noqa: E731
        else:
            processors += [structlog.processors.format_exc_info,
                           structlog.processors.JSONRenderer()]
    else:
        processors.append(structlog.dev.ConsoleRenderer(colors=out.isatty(), sort_keys=False))
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )
    # Libraries that use the standard library (aiohttp, redis, asyncio; aiohttp's access log is
    # off) go through structlog too, from WARNING: a JSON log holds only JSON lines.
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, StdlibToStructlog)]:
        root.removeHandler(handler)
    root.addHandler(StdlibToStructlog())
    root.setLevel(logging.WARNING)
    return chosen


class StdlibToStructlog(logging.Handler):
    """Forwards a standard library log record to structlog: its level, message, logger name
    (field ``logger``) and exception, if any."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields: dict[str, Any] = {"logger": record.name}
            if record.exc_info:
                fields["exc_info"] = record.exc_info
            structlog.get_logger(record.name).log(record.levelno, record.getMessage(), **fields)
        except Exception:  # logging must not raise
            self.handleError(record)


# The HTTP request a log line belongs to (set by the web middleware for the request's task).
REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id",
                                                                       default=None)


_flushers: list[Callable[[], None]] = []


def flush() -> None:
    """Write out buffered log lines now (before an exit that skips ``atexit``)."""
    for flush_lines in _flushers:
        flush_lines()


def add_request_id(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Add the request id of the request being served, if any (one context variable: cheaper
    than structlog's merge_contextvars, which walks every context variable on every line)."""
    if (request_id := REQUEST_ID.get()) is not None:
        event.setdefault("request_id", request_id)
    return event


_SURROGATE = re.compile("[\ud800-\udfff]")
_LEVEL_OF_METHOD = {"warn": "warning", "exception": "error"}
_format_exc_info = structlog.processors.format_exc_info


def json_line(logger: Any, method: str, event: MutableMapping[str, Any]) -> bytes:
    """What ``add_request_id``, ``add_log_level``, ``_timestamp``, ``format_exc_info`` and
    ``JSONRenderer`` do in turn, in one call: the log line as JSON (orjson, or the standard
    library's encoder for what orjson refuses, such as a lone surrogate or a huge integer)."""
    if (request_id := REQUEST_ID.get()) is not None:
        event.setdefault("request_id", request_id)
    event["level"] = _LEVEL_OF_METHOD.get(method, method)
    event["timestamp"] = now_iso()
    if "exc_info" in event:
        event = _format_exc_info(logger, method, event)
    try:
        return orjson.dumps(event, default=repr)
    except TypeError:  # orjson.JSONEncodeError
        text = json.dumps(event, default=repr, separators=(",", ":"), ensure_ascii=False)
        # a lone surrogate, shown as its escape in text (a strict parser refuses it as JSON)
        return _SURROGATE.sub(lambda m: f"\\\\u{ord(m[0]):04x}", text).encode()


def _timestamp(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """ISO-8601 UTC with milliseconds (``now_iso``: cheaper than structlog's TimeStamper)."""
    event["timestamp"] = now_iso()
    return event


class BufferedLines:
    """A structlog logger writing JSON lines to a binary stream in batches: one write a few
    milliseconds (``interval``) after the first line of a batch, or at once past ``limit``
    bytes, instead of a write system call per line. Flushed at exit too (``flush``)."""

    def __init__(self, file: BinaryIO, *, interval: float = 0.02, limit: int = 1 << 16) -> None:
        self.file = file
        self.interval = interval
        self.limit = limit
        self._buffer = bytearray()
        self._scheduled = False

    def msg(self, message: bytes) -> None:
        self._buffer += message
        self._buffer += b"\n"
        if len(self._buffer) >= self.limit:
            self.flush()
        elif not self._scheduled:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop: nothing would flush later
                self.flush()
                return
            self._scheduled = True
            loop.call_later(self.interval, self.flush)

    log = debug = info = warn = warning = err = error = critical = exception = fatal = msg

    def flush(self) -> None:
        self._scheduled = False
        if self._buffer:
            data = bytes(self._buffer)
            self._buffer.clear()
            try:
                self.file.write(data)
                self.file.flush()
            except (OSError, ValueError):  # closed or broken stdout: nothing to do
                pass
