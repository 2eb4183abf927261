"""A webhook receiver for tests, served on the test's own event loop: it counts deliveries per
event id and can fail on purpose."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from aiohttp import web

from conftest import free_port
from payflow.webhooks.signing import WebhookVerificationError, verify


class Receiver:
    def __init__(self, secret: str = "") -> None:
        self.port = free_port()
        self.secret = secret  # set: every delivery's signature is verified (else 400, forged)
        self.forged = 0
        self.counts: Counter[str] = Counter()  # event id -> deliveries
        self.events: dict[str, dict[str, Any]] = {}
        self.fail_first = 0  # answer 500 to this many requests first
        self.requests = 0
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def _hook(self, request: web.Request) -> web.Response:
        self.requests += 1
        raw = await request.read()
        if self.secret:
            try:
                verify(raw, request.headers, self.secret)
            except WebhookVerificationError:
                self.forged += 1
                return web.Response(status=400)
        body = json.loads(raw)
        if self.requests <= self.fail_first:
            return web.Response(status=500)
        self.counts[body["id"]] += 1
        self.events[body["id"]] = body
        return web.Response(status=204)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def duplicates(self) -> int:
        return sum(n - 1 for n in self.counts.values())


async def until(pred: Callable[[], bool], timeout: float, what: Callable[[], str]) -> float:
    """Poll ``pred`` on the event loop (so in-loop servers keep serving); returns the seconds
    it took, or fails with ``what()``."""
    started = time.monotonic()
    while not pred():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout} s: {what()}")
        await asyncio.sleep(0.05)
    return time.monotonic() - started
