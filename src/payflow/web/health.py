"""``/healthz`` (the process is alive: always 200, even while stopping) and ``/readyz`` (Redis
answers a ping within :data:`READY_TIMEOUT` seconds; 503 otherwise and while stopping). Both
refuse any query parameter with a 400 ``unknown_parameter``, as every ``/v1/`` route does."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Final

import structlog
from aiohttp import web

from payflow import metrics
from payflow.web import problems
from payflow.web.params import query

if TYPE_CHECKING:
    from payflow.web.context import WebContext

log = structlog.get_logger("payflow.web")

READY_TIMEOUT: Final = 2.0


def add_routes(app: web.Application, ctx: WebContext) -> None:
    handlers = _HealthHandlers(ctx)
    app.router.add_get("/healthz", handlers.healthz)
    app.router.add_get("/readyz", handlers.readyz)
    app.router.add_get("/metrics", _metrics)


async def _metrics(request: web.Request) -> web.Response:
    """Prometheus metrics (text exposition format)."""
    response = web.Response(body=metrics.render())
    response.headers["Content-Type"] = metrics.CONTENT_TYPE
    return response


class _HealthHandlers:
    def __init__(self, ctx: WebContext) -> None:
        self._ctx = ctx

    async def healthz(self, request: web.Request) -> web.Response:
        query(request)
        return problems.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        query(request)
        try:
            async with asyncio.timeout(READY_TIMEOUT):
                ready = await self._ctx.ping()
        except Exception as exc:
            log.warning("readyz.ping_failed", error_type=type(exc).__name__, error=str(exc))
            ready = False
        if not ready:
            raise problems.redis_unavailable()
        return problems.json_response({"status": "ready"})
