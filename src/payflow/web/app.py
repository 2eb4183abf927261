"""The HTTP API's application: :func:`create_app` over a :class:`WebContext`, and the middleware.

The middleware gives every request a ``Request-Id`` (echoed from the client when sane, else
``req_<hex>``), sets it for the request's log lines (``logs.REQUEST_ID``), answers 503
while the daemon stops (except ``/healthz``), refuses a declared body over the limit before
reading it, and renders every error as RFC 9457 problem+json: a :class:`Problem`, a
:class:`ValidationError`, aiohttp's own 404/405/413, and any unexpected exception (a 500 whose
body carries no trace; the trace goes to the log).
"""

from __future__ import annotations

import re
import secrets
import time
from typing import Final

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from prometheus_client import Counter, Histogram

from payflow import metrics
from payflow.errors import PayFlowError
from payflow.logs import REQUEST_ID
from payflow.web import (
    dashboard,
    docs,
    endpoints,
    events,
    health,
    openapi,
    operations,
    payments,
    problems,
    refunds,
)
from payflow.web.auth import auth_middleware
from payflow.web.body import BODY_SECONDS_KEY
from payflow.web.context import WebContext
from payflow.web.idempotency import middleware as idempotency_middleware
from payflow.web.server import guard_of

log = structlog.get_logger("payflow.web")

REQUEST_ID_HEADER: Final = "Request-Id"
MAX_REQUEST_ID_LENGTH: Final = problems.MAX_REQUEST_ID_LENGTH
_SANE_REQUEST_ID: Final = re.compile(rf"[\x20-\x7e]{{1,{MAX_REQUEST_ID_LENGTH}}}")
# Paths that still answer while the daemon stops (liveness: the process is alive).
_ALWAYS_OPEN: Final = frozenset({"/healthz"})


CTX_KEY: Final = web.AppKey("ctx", WebContext)
REQUEST_ID_KEY: Final = web.RequestKey("request_id", str)


def create_app(ctx: WebContext) -> web.Application:
    """The aiohttp application of the HTTP API around ``ctx``."""
    middlewares: list[Middleware] = [_middleware]  # first: Request-Id, problem rendering
    # then who is calling (the idempotency keys are scoped to the API key)
    middlewares.append(auth_middleware(ctx.api_keys, metrics_public=ctx.metrics_public,
                                       open_trees=[dashboard.PATH, docs.PATH]))
    if ctx.idempotency is not None:
        middlewares.append(idempotency_middleware(ctx.idempotency))
    app = web.Application(client_max_size=ctx.max_body_bytes, middlewares=middlewares)
    app[CTX_KEY] = ctx
    app[BODY_SECONDS_KEY] = ctx.body_seconds
    payments.add_routes(app, ctx)
    refunds.add_routes(app, ctx)
    endpoints.add_routes(app, ctx)
    events.add_routes(app, ctx)
    health.add_routes(app, ctx)
    operations.add_routes(app, ctx)
    dashboard.add_routes(app)
    docs.add_routes(app)
    openapi.add_routes(app)
    app.on_response_prepare.append(_stamp_request_id)
    return app


def new_request_id() -> str:
    return "req_" + secrets.token_hex(12)


def _incoming_request_id(value: str | None) -> str:
    if value is not None and _SANE_REQUEST_ID.fullmatch(value):
        return value
    return new_request_id()


@web.middleware
async def _middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    request_id = _incoming_request_id(request.headers.get(REQUEST_ID_HEADER))
    request[REQUEST_ID_KEY] = request_id
    connection = guard_of(request)
    if connection is not None:
        connection.request_started()
    try:
        token = REQUEST_ID.set(request_id)
        status: int | None = None  # None: no answer (cancelled): not counted
        try:
            response = await _guarded(request, handler, request_id)
            status = response.status
            return response
        except web.HTTPException as exc:  # a redirect, re-raised by _guarded
            status = exc.status
            raise
        finally:
            if status is not None:
                _observe(request, status, started)
            REQUEST_ID.reset(token)
    finally:
        if connection is not None:
            connection.request_finished()


# Methods counted by name; any other (a client may send any token) is counted as OTHER.
_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# (method, route, status) -> (the request counter's child, the duration histogram's child)
_CHILDREN: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}


def _observe(request: web.Request, status: int, started: float) -> None:
    """Count the request, time it and write its access log line; ``route`` is the route's
    template (``/v1/payments/{payment_id}``), ``unmatched`` without one, so that the paths
    clients make up never become label values."""
    seconds = time.perf_counter() - started
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    method = request.method if request.method in _METHODS else "OTHER"
    key = (method, route, status)
    if (children := _CHILDREN.get(key)) is None:
        children = _CHILDREN[key] = (metrics.HTTP_REQUESTS.labels(method, route, str(status)),
                                     metrics.HTTP_SECONDS.labels(method, route))
    children[0].inc()
    children[1].observe(seconds)
    log.info("http.request", method=method, path=route, status=status,
             duration_ms=round(seconds * 1000, 3))


async def _guarded(request: web.Request, handler: Handler, request_id: str) -> web.StreamResponse:
    ctx = request.app[CTX_KEY]
    try:
        if ctx.stopping.is_set() and request.path not in _ALWAYS_OPEN:
            raise problems.shutting_down()
        length = request.content_length
        if length is not None and length > ctx.max_body_bytes:
            raise problems.payload_too_large(ctx.max_body_bytes)
        return await handler(request)
    except problems.Problem as exc:
        problem = exc
    except PayFlowError as exc:
        if (found := problems.from_error(exc)) is None:
            raise
        problem = found
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        problem = problems.from_http_exception(exc, request)
    except Exception:
        log.exception("http.unhandled_error", method=request.method, path=request.path)
        problem = problems.internal_error()
    return problem.response(request_id)


async def _stamp_request_id(request: web.Request, response: web.StreamResponse) -> None:
    request_id = request.get(REQUEST_ID_KEY)
    if request_id is not None:
        response.headers[REQUEST_ID_HEADER] = request_id
