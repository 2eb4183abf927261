"""structlog set-up: the console renderer on a terminal, JSON lines otherwise.

The seed's console lines are the ``event`` of a log entry (``Job received: …``); structured
fields follow it. Per-job context (``job_id``, ``payment_id``) travels in contextvars.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import orjson
import structlog

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
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    factory: Any = structlog.WriteLoggerFactory(file=out)
    if chosen == "json":
        processors.append(structlog.processors.format_exc_info)
        binary = getattr(out, "buffer", None)
        if binary is not None:  # orjson renders bytes, several times faster than json
            processors.append(structlog.processors.JSONRenderer(serializer=orjson.dumps))
            out.flush()
            factory = structlog.BytesLoggerFactory(file=binary)
        else:
            processors.append(structlog.processors.JSONRenderer())
    else:
        processors.append(structlog.dev.ConsoleRenderer(colors=out.isatty(), sort_keys=False))
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )
    # Libraries that use the standard library (aiohttp's access log is off) go to stderr.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return chosen
