"""A webhook receiver in a process of its own, for benchmarks/pipeline.py.

``python -m benchmarks.receiver --port P`` serves ``POST /hook``: every delivery's signature is
checked with :func:`payflow.webhooks.signing.verify` (400 if it does not match), a verified one
is answered 200 and counted once per event id, and the arrival time (``time.time()``, the same
clock as the benchmark's, on the same machine) of each event's ``data.id`` is kept. Control
routes for the benchmark: ``POST /_reset`` ``{"secrets": [...]}`` forgets everything and sets
the secrets to verify with, ``GET /_stats`` answers ``{"count", "rejected", "duplicates"}`` and
``GET /_arrivals`` ``{data_id: arrival}``.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from aiohttp import web

from payflow.webhooks.signing import WebhookVerificationError, verify


class State:
    def __init__(self) -> None:
        self.secrets: list[str] = []
        self.reset([])

    def reset(self, secrets: list[str]) -> None:
        self.secrets = secrets
        self.count = 0
        self.rejected = 0
        self.duplicates = 0
        self.seen: set[str] = set()
        self.arrivals: dict[str, float] = {}


STATE = web.AppKey("state", State)


async def hook(request: web.Request) -> web.Response:
    state = request.app[STATE]
    body = await request.read()
    arrived = time.time()
    try:
        if not state.secrets:
            raise WebhookVerificationError("no secret set: POST /_reset first")
        event = verify(body, request.headers, state.secrets)
    except WebhookVerificationError:
        state.rejected += 1
        return web.Response(status=400)
    event_id = str(event.get("id"))
    if event_id in state.seen:
        state.duplicates += 1
        return web.Response(status=200)
    state.seen.add(event_id)
    state.count += 1
    data = event.get("data")
    if isinstance(data, dict) and isinstance(data.get("id"), str):
        state.arrivals.setdefault(data["id"], arrived)
    return web.Response(status=200)


async def reset(request: web.Request) -> web.Response:
    given: Any = await request.json()
    secrets = given.get("secrets") if isinstance(given, dict) else None
    if not isinstance(secrets, list) or not all(isinstance(s, str) for s in secrets):
        return web.json_response({"error": "expected {\"secrets\": [str, ...]}"}, status=400)
    request.app[STATE].reset(secrets)
    return web.json_response({"ok": True})


async def stats(request: web.Request) -> web.Response:
    state = request.app[STATE]
    return web.json_response({"count": state.count, "rejected": state.rejected,
                              "duplicates": state.duplicates})


async def arrivals(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATE].arrivals)


def make_app() -> web.Application:
    app = web.Application(client_max_size=1 << 20)
    app[STATE] = State()
    app.router.add_post("/hook", hook)
    app.router.add_post("/_reset", reset)
    app.router.add_get("/_stats", stats)
    app.router.add_get("/_arrivals", arrivals)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    web.run_app(make_app(), host="127.0.0.1", port=args.port, access_log=None, print=None,
                handle_signals=True, loop=new_event_loop())


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's when it is installed (the `fast` extra), as the daemon runs: the receiver and
    the load generator share the machine with what they measure, so they should cost little."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


if __name__ == "__main__":
    main()
