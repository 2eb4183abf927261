"""Backing off: exponential with full jitter and a cap (the AWS architecture blog's "full
jitter"), and :class:`Backoff`, the one way the daemon's upkeep loops retry (a consumer's fetch
and settle, the promoter, the heartbeat, the start-up registration): they back off alike and
say so alike in the log."""

from __future__ import annotations

import random
from typing import Any

import structlog

log = structlog.get_logger("payflow.queue")


def full_jitter(attempt: int, *, base: float, cap: float,
                rng: random.Random | None = None) -> float:
    """Seconds to wait before attempt ``attempt + 1`` (``attempt`` counts from 0)."""
    ceiling = min(cap, base * 2 ** min(attempt, 62))
    return (rng or random).uniform(0, ceiling)


class Backoff:
    """The consecutive failures of one loop. :meth:`failed` logs ``event`` (at ``level``, with
    the error and the wait) and returns the seconds to wait before trying again;
    :meth:`succeeded` starts over."""

    def __init__(self, event: str, *, base: float = 0.1, cap: float = 5.0,
                 level: str = "warning", logger: Any = None) -> None:
        self.event = event
        self.base = base
        self.cap = cap
        self.level = level
        self.log = logger if logger is not None else log
        self.failures = 0

    def failed(self, exc: BaseException, **fields: Any) -> float:
        self.failures += 1
        delay = full_jitter(self.failures, base=self.base, cap=self.cap)
        getattr(self.log, self.level)(self.event, error=f"{type(exc).__name__}: {exc}",
                                      retry_in=round(delay, 3), **fields)
        return delay

    def succeeded(self) -> int:
        """Start over; how many failures came before this success."""
        failures, self.failures = self.failures, 0
        return failures
