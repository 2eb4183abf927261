"""The HTTP/1.1 client of webhook deliveries: one POST, its status, its first bytes.

Deliveries need little of a general HTTP client: a POST of a small body to a URL checked
beforehand, the status, ``Retry-After``, the start of the body, keep-alive connections reused
per origin, a deadline, no redirects, no cookies, no proxies, no compression. aiohttp's client
was 36 % of the daemon's CPU on the HTTP path; this one builds the request as one ``bytes`` and
parses the answer with httptools (llhttp, the parser of Node.js and uvicorn). Measured in one
process, 100 deliveries in flight to a receiver process, signing included: 160-185 µs of CPU per
delivery with aiohttp's client, 62-66 µs with this one.

Every connection is made to addresses from :class:`~payflow.webhooks.ssrf.GuardedResolver`
(the SSRF guard, at every new connection, so a name that starts resolving to a refused address
is refused from then on); an IP-literal host is checked by
:func:`~payflow.webhooks.ssrf.check_url` before. A connection is reused only after a complete
answer that allows it (``Connection: close``, HTTP/1.0 and unread bodies close it), and not
after ``keepalive_seconds`` idle. A POST on a reused connection that the server had closed
meanwhile (no byte of an answer) is sent once more on a new connection: a receiver deduplicates
on ``webhook-id``, and a stale keep-alive connection is not the endpoint failing.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import socket
import ssl
import time
from typing import Final

import aiohappyeyeballs
import httptools
from aiohttp.abc import AbstractResolver
from yarl import URL

from payflow.webhooks.ssrf import AddressPolicy, GuardedResolver, bare, parse_ip

KEEPALIVE_SECONDS: Final = 15.0  # idle time after which a pooled connection is not reused
HAPPY_EYEBALLS_DELAY: Final = 0.25  # before trying a name's next address (RFC 8305; aiohttp's)
DNS_SECONDS: Final = 10.0  # how long the allowed addresses of a name are reused
MAX_DISCARD: Final = 64 * 1024  # body bytes read past the kept ones to reuse the connection
MAX_HEAD: Final = 64 * 1024  # bytes of an answer's status line and headers (aiohttp: 8 KiB a line)
_FRAMING: Final = frozenset({b"content-length", b"transfer-encoding"})


class TransportError(Exception):
    """A delivery that got no (complete) answer; ``kind`` is ``connection_failed``,
    ``connection_closed`` or ``bad_response``."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind


class Answer:
    """What came back: the status, ``Retry-After`` and the first ``cap`` bytes of the body."""

    __slots__ = ("body", "retry_after", "status")

    def __init__(self, status: int, retry_after: str | None, body: bytes) -> None:
        self.status = status
        self.retry_after = retry_after
        self.body = body


class _Target:
    """A URL taken apart once: where to connect and the request's first lines."""

    __slots__ = ("head", "host", "ip_literal", "origin", "port", "tls")

    def __init__(self, url: str) -> None:
        parsed = URL(url)  # checked by check_url: http or https, a host
        self.host = bare(str(parsed.raw_host))
        self.tls = parsed.scheme == "https"
        assert parsed.port is not None  # yarl knows the default ports of http and https
        self.port = parsed.port
        self.origin = (self.host, self.port, self.tls)
        self.ip_literal = parse_ip(self.host) is not None
        authority = f"[{self.host}]" if ":" in self.host else self.host
        if not parsed.is_default_port():
            authority += f":{self.port}"
        head = f"POST {parsed.raw_path_qs} HTTP/1.1\r\nHost: {authority}\r\n".encode()
        if parsed.user is not None:  # credentials in the URL: HTTP basic auth, as aiohttp did
            pair = f"{parsed.user}:{parsed.password or ''}".encode("latin-1", "replace")
            head += b"Authorization: Basic " + base64.b64encode(pair) + b"\r\n"
        self.head = head


class _Exchange:
    """One request's answer as it arrives."""

    __slots__ = ("cap", "complete", "discarded", "framed", "keep_alive", "kept", "parts",
                 "received", "retry_after", "status", "waiter")

    def __init__(self, waiter: asyncio.Future[Answer], cap: int) -> None:
        self.waiter = waiter
        self.cap = cap  # body bytes kept
        self.received = 0  # bytes of the answer so far
        self.status = 0  # once its head is complete
        self.retry_after: str | None = None
        self.framed = False  # it has a Content-Length or Transfer-Encoding
        self.parts: list[bytes] = []  # of the body, up to cap bytes
        self.kept = 0
        self.discarded = 0  # body bytes read in all
        self.complete = False
        self.keep_alive = False  # the answer lets the connection be reused


class _Connection(asyncio.Protocol):
    """One connection, one request at a time, the answer parsed as it arrives."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.idle_since = 0.0
        self.exchange = _Exchange(asyncio.get_running_loop().create_future(), 0)
        self.exchange.waiter.cancel()  # nothing asked yet

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        if self.exchange.waiter.done():  # bytes nobody asked for (or after the answer): close
            self.close()
            return
        current = self.exchange
        current.received += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(TransportError("bad_response", "the server switched protocols"))
        except httptools.HttpParserError as exc:
            self._fail(TransportError("bad_response", f"unreadable HTTP answer: {exc}"))
        else:
            if not current.status and current.received > MAX_HEAD:  # headers without end
                self._fail(TransportError("bad_response", f"the answer's head passed "
                                                          f"{MAX_HEAD} bytes"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.close()
        current = self.exchange
        if current.status and not current.complete and not current.framed:
            self._finish()  # an answer delimited by the end of the connection
        elif not current.received:
            self._fail(TransportError("connection_closed",
                                      "the server closed the connection without answering"))
        else:
            self._fail(TransportError("bad_response",
                                      "the connection closed in the middle of the answer"))

    # httptools callbacks

    def on_message_begin(self) -> None:
        if self.exchange.complete:  # a second answer to one request: never reuse this one
            self.close()

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == b"retry-after":
            self.exchange.retry_after = value.decode("latin-1")
        elif name in _FRAMING:
            self.exchange.framed = True

    def on_headers_complete(self) -> None:
        self.exchange.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        current = self.exchange
        if (room := current.cap - current.kept) > 0:
            current.parts.append(body[:room])
            current.kept += min(room, len(body))
        current.discarded += len(body)
        if current.discarded > current.cap + MAX_DISCARD:  # not worth reading on: close
            self._finish()
            self.close()

    def on_message_complete(self) -> None:
        current = self.exchange
        if current.status < 200:  # an interim answer (1xx): the real one follows
            current.status = 0
            current.retry_after = None
            current.framed = False
            return
        current.complete = True
        current.keep_alive = self.parser.should_keep_alive()  # only true until the next one
        self._finish()

    # requests

    async def request(self, data: bytes, cap: int) -> Answer:
        assert self.transport is not None
        self.exchange = current = _Exchange(asyncio.get_running_loop().create_future(), cap)
        if self.transport.is_closing():  # closed by the server since it was pooled
            self._fail(TransportError("connection_closed", "the server closed the connection"))
        else:
            self.transport.write(data)
        return await current.waiter

    @property
    def reusable(self) -> bool:
        current = self.exchange
        return current.complete and current.keep_alive and not self.closed

    def _finish(self) -> None:
        current = self.exchange
        if not current.waiter.done():
            current.waiter.set_result(Answer(current.status, current.retry_after,
                                             b"".join(current.parts)))

    def _fail(self, exc: TransportError) -> None:
        if not self.exchange.waiter.done():
            self.exchange.waiter.set_exception(exc)
        self.close()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class Transport:
    """POSTs over pooled keep-alive connections, at most ``limit`` open at once."""

    def __init__(self, resolver: GuardedResolver, *, limit: int = 100,
                 keepalive_seconds: float = KEEPALIVE_SECONDS,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.resolver = resolver
        self.keepalive_seconds = keepalive_seconds
        self.limit = limit
        self._slots = asyncio.Semaphore(limit)
        self._idle: dict[tuple[str, int, bool], collections.deque[_Connection]] = {}
        self._targets: dict[str, _Target] = {}
        self._ssl = ssl_context
        self._open: set[_Connection] = set()
        self._dns: dict[tuple[str, int], tuple[float, list[str]]] = {}  # allowed addresses
        self._next_sweep = 0.0  # monotonic time of the next sweep of idle connections

    async def post(self, url: str, headers: bytes, body: bytes, *, cap: int) -> Answer:
        """POST ``body`` to ``url`` with ``headers`` (``Name: value\\r\\n`` lines, without
        Host and Content-Length); the answer, its body cut at ``cap`` bytes. Raises
        :class:`TransportError`, :class:`SSRFRefused` or ``OSError``; the caller bounds the
        time (a cancelled request closes its connection)."""
        target = self._target(url)
        data = b"".join((target.head, headers, b"Content-Length: %d\r\n\r\n" % len(body), body))
        if (now := time.monotonic()) >= self._next_sweep:
            self._next_sweep = now + self.keepalive_seconds
            self._sweep(now - self.keepalive_seconds)
        async with self._slots:
            conn = self._pooled(target)
            if conn is not None:
                try:
                    return await self._exchange(conn, target, data, cap)
                except TransportError as exc:
                    if exc.kind != "connection_closed":
                        raise
                    # closed by the server while idle in the pool: once more, on a new one
            conn = await self._connect(target)
            return await self._exchange(conn, target, data, cap)

    async def _exchange(self, conn: _Connection, target: _Target, data: bytes,
                        cap: int) -> Answer:
        try:
            answer = await conn.request(data, cap)
        except BaseException:
            self._drop(conn)
            raise
        if conn.reusable and len(self._open) <= self.limit:  # idle ones count too
            conn.idle_since = time.monotonic()
            self._idle.setdefault(target.origin, collections.deque()).append(conn)
        else:
            self._drop(conn)
        return answer

    def _drop(self, conn: _Connection) -> None:
        conn.close()
        self._open.discard(conn)

    def _target(self, url: str) -> _Target:
        target = self._targets.get(url)
        if target is None:
            if len(self._targets) >= 10_000:
                self._targets.clear()
            target = self._targets[url] = _Target(url)
        return target

    def _sweep(self, fresh_after: float) -> None:
        """Close the idle connections of every origin that went stale or were closed (those
        of an origin no longer posted to would stay open otherwise)."""
        for origin, idle in list(self._idle.items()):
            for conn in [c for c in idle if c.closed or c.idle_since < fresh_after]:
                idle.remove(conn)
                self._drop(conn)
            if not idle:
                del self._idle[origin]

    def _pooled(self, target: _Target) -> _Connection | None:
        idle = self._idle.get(target.origin)
        if not idle:
            return None
        fresh_after = time.monotonic() - self.keepalive_seconds
        while idle:
            conn = idle.pop()  # the most recently used: the least likely to be closed
            if not conn.closed and conn.idle_since >= fresh_after:
                return conn
            self._drop(conn)
        return None

    async def _connect(self, target: _Target) -> _Connection:
        loop = asyncio.get_running_loop()
        if target.ip_literal:  # check_url refused it already if it is refused; once more here
            ip = parse_ip(target.host)
            assert ip is not None
            if (refused := self.resolver.policy.refuse(target.host, ip)) is not None:
                raise refused
            addresses = [target.host]
        else:
            addresses = await self._resolve(target)
        context = None
        if target.tls:
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            context = self._ssl
        infos = [socket.getaddrinfo(address, target.port, type=socket.SOCK_STREAM,
                                    flags=socket.AI_NUMERICHOST)[0] for address in addresses]
        try:  # the addresses in turn, the next one started after 0.25 s, as aiohttp's client
            sock = await aiohappyeyeballs.start_connection(
                infos, happy_eyeballs_delay=HAPPY_EYEBALLS_DELAY, interleave=1)
            try:
                _, conn = await loop.create_connection(
                    _Connection, sock=sock, ssl=context,
                    server_hostname=target.host if context is not None else None)
            except BaseException:
                sock.close()
                raise
        except OSError as exc:  # refused, unreachable, a TLS handshake that failed
            raise TransportError("connection_failed",
                                 f"cannot connect to {target.host}:{target.port}: {exc}") from None
        self._open.add(conn)
        return conn

    async def _resolve(self, target: _Target) -> list[str]:
        """The addresses of ``target``'s name that the policy allows (a refusal raises and is
        never remembered), from a cache of :data:`DNS_SECONDS`."""
        key = (target.host, target.port)
        now = time.monotonic()
        cached = self._dns.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        found = await self.resolver.resolve(target.host, family=socket.AF_UNSPEC)
        addresses = [result["host"] for result in found]
        if len(self._dns) >= 10_000:
            self._dns.clear()
        self._dns[key] = (now + DNS_SECONDS, addresses)
        return addresses

    def clear_dns_cache(self) -> None:
        self._dns.clear()

    async def close(self) -> None:
        for conn in list(self._open):
            conn.close()
        self._open.clear()
        self._idle.clear()
        await self.resolver.close()


def make_transport(policy: AddressPolicy, *, limit: int = 100,
                   inner_resolver: AbstractResolver | None = None) -> Transport:
    """The transport of deliveries: connections only to addresses ``policy`` allows.
    ``inner_resolver`` is for tests; the default is the system's getaddrinfo in a thread."""
    return Transport(GuardedResolver(policy, inner_resolver), limit=limit)
