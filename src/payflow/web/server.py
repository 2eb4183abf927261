"""The HTTP server's defences against slow and hostile clients.

aiohttp keeps a connection open for an hour by default, waits for ever for a header that never
ends, and logs a traceback for every malformed request. Here each connection has a deadline:

- ``header_seconds`` to send a complete request head after connecting or after its previous
  response (an idle keep-alive connection is closed after ``idle_seconds``);
- ``body_seconds`` to send the body once the head is in (read by :func:`read_body`);
- at most ``max_connections`` open: a new connection evicts the oldest one that is not in a
  request (a slow or idle one), so that ``/healthz`` and real clients still get in.

Malformed requests (oversized or too many headers, bad chunking) get a problem+json 400 that
never echoes the offending bytes, and are logged as one line, at most once per second.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import structlog
from aiohttp import web
from aiohttp.web_protocol import RequestHandler

log = structlog.get_logger("payflow.web")

_LOG_EVERY = 1.0  # seconds between two log lines about the same kind of client error


class Throttled:
    """Log ``event`` at most once per ``every`` seconds, with how many were suppressed."""

    def __init__(self, event: str, every: float = _LOG_EVERY) -> None:
        self.event = event
        self.every = every
        self._last = 0.0
        self._suppressed = 0

    def __call__(self, **fields: Any) -> None:
        now = time.monotonic()
        if now - self._last < self.every:
            self._suppressed += 1
            return
        log.warning(self.event, suppressed=self._suppressed, **fields)
        self._last, self._suppressed = now, 0


class ConnectionGuard:
    def __init__(self, *, header_seconds: float, body_seconds: float, idle_seconds: float,
                 max_connections: int) -> None:
        self.header_seconds = header_seconds
        self.body_seconds = body_seconds
        self.idle_seconds = idle_seconds
        self.max_connections = max_connections
        # Open connections, oldest first; the value: True while a request runs on it.
        self.open: dict[GuardedHandler, bool] = {}
        self.evicted = Throttled("http.connections_evicted")
        self.expired = Throttled("http.connection_deadline")
        self.bad_requests = Throttled("http.bad_request")

    def factory(self, server: web.Server, **kwargs: Any) -> Callable[[], GuardedHandler]:
        """The protocol factory for ``loop.create_server``, in place of ``server`` itself."""
        loop = asyncio.get_running_loop()

        def make() -> GuardedHandler:
            return GuardedHandler(self, server, loop=loop, **kwargs)

        return make

    def opened(self, handler: GuardedHandler) -> None:
        if len(self.open) >= self.max_connections:
            victim = next((h for h, busy in self.open.items() if not busy), None)
            self.evicted(open=len(self.open), limit=self.max_connections)
            (victim or handler).drop()
            if victim is None:
                return
        self.open[handler] = False
        handler.arm(self.header_seconds)

    def closed(self, handler: GuardedHandler) -> None:
        self.open.pop(handler, None)


class GuardedHandler(RequestHandler):
    """aiohttp's connection protocol with a deadline and the guard's bookkeeping."""

    def __init__(self, guard: ConnectionGuard, manager: web.Server, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self.guard = guard
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.guard.opened(self)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm()
        self.guard.closed(self)
        super().connection_lost(exc)

    def arm(self, seconds: float) -> None:
        self._disarm()
        self._deadline = asyncio.get_running_loop().call_later(seconds, self._expire)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self) -> None:
        self._deadline = None
        self.guard.expired(peer=str(self.peername))
        self.drop()

    def drop(self) -> None:
        self._disarm()
        self.guard.closed(self)
        self.force_close()

    def request_started(self) -> None:
        """The head of a request is in: no deadline while it runs (the body has its own)."""
        self._disarm()
        if self in self.guard.open:
            self.guard.open[self] = True
            self.guard.open[self] = self.guard.open.pop(self)  # now the newest

    def request_finished(self) -> None:
        if self in self.guard.open:
            self.guard.open[self] = False
            self.arm(self.guard.idle_seconds)

    def handle_error(self, request: Any, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        """A request aiohttp could not parse (or a crash past the app's own error handling):
        one throttled log line, and a problem+json answer that echoes nothing."""
        if status >= 500:
            log.error("http.server_error", status=status,
                      error=type(exc).__name__ if exc else None)
        else:
            self.guard.bad_requests(status=status, error=type(exc).__name__ if exc else None,
                                    peer=str(self.peername))
        title = "Bad request" if status == 400 else "Error"
        body = {"type": "about:blank", "title": title, "status": status,
                "detail": "The request could not be read as HTTP/1.1 within the server's "
                          "limits." if status < 500 else "An unexpected error occurred.",
                "code": "bad_request" if status < 500 else "internal_error"}
        response = web.Response(status=status, body=json.dumps(body).encode(),
                                content_type="application/problem+json")
        response.force_close()
        return response


def guard_of(request: web.BaseRequest) -> GuardedHandler | None:
    protocol = request.protocol
    return protocol if isinstance(protocol, GuardedHandler) else None


async def read_body(request: web.BaseRequest, seconds: float) -> bytes:
    """The request body, which the client must finish sending within ``seconds``."""
    async with asyncio.timeout(seconds):
        return await request.read()


class GuardedSite(web.TCPSite):
    r"""A TCP site whose connections are :class:`GuardedHandler`\ s of ``guard``."""

    def __init__(self, runner: web.AppRunner, host: str, port: int, *,
                 guard: ConnectionGuard, **handler_kwargs: Any) -> None:
        super().__init__(runner, host, port)
        self.guard = guard
        self.handler_kwargs = handler_kwargs

    async def start(self) -> None:
        self._runner._reg_site(self)  # what BaseSite.start does (TCPSite.start is replaced)
        server = self._runner.server
        assert server is not None
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self.guard.factory(server, **self.handler_kwargs), self._host, self._port,
            backlog=self._backlog, reuse_address=self._reuse_address)


_accept_errors = Throttled("http.accept_failed", every=5.0)


def quiet_accept_errors(loop: asyncio.AbstractEventLoop) -> None:
    """Log the event loop's accept() failures (out of file descriptors under a flood of
    connections) as one line per 5 s instead of a traceback each; other errors as before."""

    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if "accept" in str(context.get("message", "")) and isinstance(exc, OSError):
            _accept_errors(error=f"{type(exc).__name__}: {exc}")
            return
        loop.default_exception_handler(context)

    loop.set_exception_handler(handle)


def raise_file_limit() -> None:
    """Let this process open as many files as its hard limit allows (connections are files)."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, ValueError, OSError):  # not on this platform, or not allowed
        pass
