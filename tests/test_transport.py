"""The delivery transport (payflow.webhooks.transport) against raw local servers that answer
exactly what each test scripts: the request on the wire, keep-alive reuse and when a
connection must not be reused, bodies cut at the cap, answers delimited by the end of the
connection, interim answers, a stale pooled connection, broken answers, the connection
limit, a cancelled request, TLS."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from payflow.webhooks.ssrf import AddressPolicy, GuardedResolver, SSRFRefused
from payflow.webhooks.transport import (
    DNS_SECONDS,
    HAPPY_EYEBALLS_DELAY,
    MAX_DISCARD,
    MAX_HEAD,
    Transport,
    TransportError,
    _Target,
    make_transport,
)
from resolvers import StubResolver

LOCAL = AddressPolicy(["127.0.0.0/8", "::1/128"])
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class RawServer:
    """Serves ``script`` on every connection; counts connections and keeps each request."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.connections = 0
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self, host: str = "127.0.0.1",
                    context: ssl.SSLContext | None = None) -> RawServer:
        self.server = await asyncio.start_server(self._serve, host, 0, ssl=context)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.script(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def read_request(self, reader: asyncio.StreamReader) -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        request = head + await reader.readexactly(length)
        self.requests.append(request)
        return request

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Awaitable[RawServer]]]:
    servers: list[RawServer] = []

    async def start(answers: Callable[[RawServer], Script], **kw: object) -> RawServer:
        server = RawServer(lambda r, w: answers(server)(r, w))
        servers.append(await server.start(**kw))  # type: ignore[arg-type]
        return server

    yield start
    for server in servers:
        await server.stop()


@pytest.fixture
async def transport() -> AsyncIterator[Transport]:
    t = make_transport(LOCAL)
    yield t
    await t.close()


def keep_alive(answer: bytes = OK) -> Callable[[RawServer], Script]:
    """Answer every request on the connection with ``answer``."""
    def script(server: RawServer) -> Script:
        async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while True:
                await server.read_request(reader)
                writer.write(answer)
                await writer.drain()
        return run
    return script


def once(answer: bytes, *, then_close: bool = True) -> Callable[[RawServer], Script]:
    """Answer one request with ``answer``, then close the connection (or keep it silent)."""
    def script(server: RawServer) -> Script:
        async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await server.read_request(reader)
            writer.write(answer)
            await writer.drain()
            if not then_close:
                await asyncio.sleep(30)
        return run
    return script


async def test_the_request_on_the_wire(serve: Callable[..., Awaitable[RawServer]],
                                       transport: Transport) -> None:
    server = await serve(keep_alive())
    answer = await transport.post(f"http://127.0.0.1:{server.port}/hook/a%20b?x=1&y=%C3%A9",
                                  b"webhook-id: evt_1\r\n", b'{"a":1}', cap=100)
    assert (answer.status, answer.body, answer.retry_after) == (200, b"ok", None)
    assert server.requests == [
        b"POST /hook/a%20b?x=1&y=%C3%A9 HTTP/1.1\r\n"
        b"Host: 127.0.0.1:" + str(server.port).encode() + b"\r\n"
        b"webhook-id: evt_1\r\n"
        b"Content-Length: 7\r\n\r\n"
        b'{"a":1}']


async def test_credentials_in_the_url_are_sent_as_basic_auth(
        serve: Callable[..., Awaitable[RawServer]], transport: Transport) -> None:
    server = await serve(keep_alive())
    await transport.post(f"http://shop:p%40ss@127.0.0.1:{server.port}/h", b"", b"", cap=10)
    await transport.post(f"http://token@127.0.0.1:{server.port}/h", b"", b"", cap=10)
    await transport.post(f"http://%E2%82%ACuro:%C3%BC@127.0.0.1:{server.port}/h", b"", b"",
                         cap=10)  # latin-1, as aiohttp; "€" is not in it: "?"
    assert [r.split(b"\r\n")[2] for r in server.requests] == [
        b"Authorization: Basic c2hvcDpwQHNz",  # shop:p@ss
        b"Authorization: Basic dG9rZW46",  # token:
        b"Authorization: Basic P3Vybzr8",  # ?uro:\xfc
    ]


def test_the_host_header_and_target_of_each_url_form() -> None:
    assert _Target("http://example.com/").head == b"POST / HTTP/1.1\r\nHost: example.com\r\n"
    assert _Target("https://example.com:443").head == (
        b"POST / HTTP/1.1\r\nHost: example.com\r\n")
    assert _Target("https://example.com:8443/h").head == (
        b"POST /h HTTP/1.1\r\nHost: example.com:8443\r\n")
    assert _Target("http://example.com:443/").head == (
        b"POST / HTTP/1.1\r\nHost: example.com:443\r\n")
    six = _Target("http://[::1]:8080/x")
    assert six.head == b"POST /x HTTP/1.1\r\nHost: [::1]:8080\r\n"
    assert (six.host, six.port, six.tls, six.ip_literal) == ("::1", 8080, False, True)
    idn = _Target("https://bücher.example/")
    assert idn.head == b"POST / HTTP/1.1\r\nHost: xn--bcher-kva.example\r\n"
    assert (idn.port, idn.tls, idn.ip_literal) == (443, True, False)
    dotted = _Target("http://127.0.0.1.:81/")
    assert (dotted.host, dotted.ip_literal) == ("127.0.0.1", True)


async def test_a_connection_is_reused_for_the_next_request(
        serve: Callable[..., Awaitable[RawServer]], transport: Transport) -> None:
    server = await serve(keep_alive())
    url = f"http://127.0.0.1:{server.port}/"
    for _ in range(5):
        assert (await transport.post(url, b"", b"{}", cap=10)).status == 200
    assert server.connections == 1
    assert len(server.requests) == 5


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
], ids=["connection-close", "http-1.0"])
async def test_a_connection_the_server_gives_up_is_not_reused(
        serve: Callable[..., Awaitable[RawServer]], transport: Transport,
        answer: bytes) -> None:
    server = await serve(keep_alive(answer))
    url = f"http://127.0.0.1:{server.port}/"
    for _ in range(3):
        assert (await transport.post(url, b"", b"{}", cap=10)).body == b"ok"
    assert server.connections == 3
    assert transport._open == set() and not any(transport._idle.values())


async def test_a_connection_idle_too_long_is_not_reused(
        serve: Callable[..., Awaitable[RawServer]]) -> None:
    server = await serve(keep_alive())
    transport = Transport(make_transport(LOCAL).resolver, keepalive_seconds=0.05)
    url = f"http://127.0.0.1:{server.port}/"
    try:
        await transport.post(url, b"", b"", cap=10)
        await transport.post(url, b"", b"", cap=10)
        assert server.connections == 1
        await asyncio.sleep(0.1)
        await transport.post(url, b"", b"", cap=10)
        assert server.connections == 2
        assert len(transport._open) == 1  # the stale one was closed and forgotten
    finally:
        await transport.close()


async def test_idle_connections_of_every_origin_are_swept_when_stale(
        serve: Callable[..., Awaitable[RawServer]]) -> None:
    first, second = await serve(keep_alive()), await serve(keep_alive())
    transport = Transport(make_transport(LOCAL).resolver, keepalive_seconds=0.05)
    try:
        await transport.post(f"http://127.0.0.1:{first.port}/", b"", b"", cap=10)
        [old] = transport._open
        await asyncio.sleep(0.1)
        await transport.post(f"http://127.0.0.1:{second.port}/", b"", b"", cap=10)
        assert old.closed and old not in transport._open
        assert list(transport._idle) == [("127.0.0.1", second.port, False)]
        assert len(transport._open) == 1
    finally:
        await transport.close()


async def test_a_sweep_keeps_fresh_connections_and_runs_once_a_period(
        serve: Callable[..., Awaitable[RawServer]]) -> None:
    server = await serve(keep_alive())
    transport = Transport(make_transport(LOCAL).resolver, keepalive_seconds=0.3)
    sweeps: list[float] = []
    sweep = transport._sweep

    def counted(fresh_after: float) -> None:
        sweeps.append(fresh_after)
        sweep(fresh_after)

    transport._sweep = counted  # type: ignore[method-assign]
    url = f"http://127.0.0.1:{server.port}/"
    try:
        started = time.monotonic()
        await transport.post(url, b"", b"", cap=10)  # a sweep, then a connection
        await asyncio.sleep(0.15)
        await transport.post(url, b"", b"", cap=10)  # reused, no sweep: idle since 0.15 s
        assert len(sweeps) == 1
        await asyncio.sleep(0.2)
        await transport.post(url, b"", b"", cap=10)  # a sweep at 0.35 s keeps it: 0.2 s idle
        assert len(sweeps) == 2
        assert 0 < sweeps[1] - started < 0.2  # what counts as stale: idle since before then
        assert server.connections == 1
    finally:
        await transport.close()


async def test_no_more_idle_connections_than_the_limit(
        serve: Callable[..., Awaitable[RawServer]]) -> None:
    servers = [await serve(keep_alive()) for _ in range(4)]
    transport = make_transport(LOCAL, limit=2)
    try:
        for server in servers:  # one origin after another, each answer allowing keep-alive
            await transport.post(f"http://127.0.0.1:{server.port}/", b"", b"", cap=10)
        assert len(transport._open) == 2
        assert sum(len(idle) for idle in transport._idle.values()) == 2
    finally:
        await transport.close()


async def test_the_body_is_cut_at_the_cap_and_chunks_are_joined(
        serve: Callable[..., Awaitable[RawServer]], transport: Transport) -> None:
    chunked = (b"HTTP/1.1 500 Oops\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"5\r\nhello\r\n6\r\n world\r\n3\r\nabc\r\n0\r\n\r\n")
    server = await serve(keep_alive(chunked))
    url = f"http://127.0.0.1:{server.port}/"
    assert (await transport.post(url, b"", b"", cap=100)).body == b"hello worldabc"
    assert (await transport.post(url, b"", b"", cap=7)).body == b"hello w"
    assert (await transport.post(url, b"", b"", cap=6)).body == b"hello "
    assert (await transport.post(url, b"", b"", cap=5)).body == b"hello"
    answer = await transport.post(url, b"", b"", cap=0)
    assert (answer.status, answer.body) == (500, b"")
    assert server.connections == 1  # read to the end each time: reused


async def test_a_huge_body_is_not_read_to_its_end(
        serve: Callable[..., Awaitable[RawServer]], transport: Transport) -> None:
    size = MAX_DISCARD * 4
    huge = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size + b"x" * size
    server = await serve(keep_alive(huge))
    url = f"http://127.0.0.1:{server.port}/"
    answer = await transport.post(url, b"", b"", cap=10)
    assert (answer.status, answer.body) == (200, b"x" * 10)
    await transport.post(url, b"", b"", cap=10)
    assert server.connections == 2  # the first one was closed, not drained


@pytest.mark.parametrize(("extra", "connections"), [(0, 1), (1, 2)])
async def test_a_body_is_drained_up_to_the_discard_limit(
        serve: Callable[..., Awaitable[RawServer]], transport: Transport,
        extra: int, connections: int) -> None:
    """cap + MAX_DISCARD body bytes are read to reuse the connection; one more closes it."""
    size = 10 + MAX_DISCARD + extra
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size + b"y" * size
    server = await serve(keep_alive(answer))
    url = f"http://127.0.0.1:{server.port}/"
    for _ in range(2):
        assert (await transport.post(url, b"", b"", cap=10)).body == b"y" * 10
    assert server.connections == connections


async def test_a_huge_answer_in_small_chunks_is_not_read_to_its_end(
        serve: Callable[..., Awaitable[RawServer]], transport: Transport) -> None:
    chunk = b"400\r\n" + b"z" * 0x400 + b"\r\n"
    many = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            + chunk * (4 * MAX_DISCARD // 0x400) + b"0\r\n\r\n")
    server = await serve(keep_alive(many))
    url = f"http://127.0.0.1:{server.port}/"
    for _ in range(2):
        assert (await transport.post(url, b"", b"", cap=3)).body == b"zzz"
    assert server.connections == 2


async def test_an_answer_delimited_by_the_end_of_the_connection(
        serve: Callable[..., Awaitable[RawServer]], transport: Transport) -> None:
    server = await serve(once(b"HTTP/1.1 200 OK\r\n\r\nuntil the end"))
    answer = await transport.post(f"http://127.0.0.1:{server.port}/", b"", b"", cap=100)
    assert (answer.status, answer.body) == (200, b"until the end")


async def test_an_interim_answer_is_skipped(serve: Callable[..., Awaitable[RawServer]],
                                            transport: Transport) -> None:
    server = await serve(keep_alive(b"HTTP/1.1 100 Continue\r\n\r\n" + OK))
    url = f"http://127.0.0.1:{server.port}/"
    assert (await transport.post(url, b"", b"", cap=10)).body == b"ok"
    assert (await transport.post(url, b"", b"", cap=10)).body == b"ok"
    assert server.connections == 1


async def test_an_interim_answer_alone_is_no_answer(
        serve: Callable[..., Awaitable[RawServer]], transport: Transport) -> None:
    server = await serve(once(b"HTTP/1.1 100 Continue\r\nRetry-After: 5\r\n\r\n"))
    with pytest.raises(TransportError) as info:
        await transport.post(f"http://127.0.0.1:{server.port}/", b"", b"", cap=10)
    assert (info.value.kind, str(info.value)) == (
        "bad_response", "the connection closed in the middle of the answer")


async def test_an_interim_answers_headers_are_not_the_answers(
        serve: Callable[..., Awaitable[RawServer]], transport: Transport) -> None:
    server = await serve(once(b"HTTP/1.1 103 Early Hints\r\nRetry-After: 5\r\n"
                              b"Content-Length: 0\r\n\r\n"
                              b"HTTP/1.1 503 Busy\r\n\r\nuntil the end"))
    answer = await transport.post(f"http://127.0.0.1:{server.port}/", b"", b"", cap=100)
    assert (answer.status, answer.retry_after, answer.body) == (503, None, b"until the end")


async def test_switching_protocols_is_a_bad_response(
        serve: Callable[..., Awaitable[RawServer]], transport: Transport) -> None:
    server = await serve(once(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                              b"Connection: Upgrade\r\n\r\n", then_close=False))
    with pytest.raises(TransportError) as info:
        await transport.post(f"http://127.0.0.1:{server.port}/", b"", b"", cap=10)
    assert (info.value.kind, str(info.value)) == ("bad_response",
                                                  "the server switched protocols")
    assert transport._open == set()


async def test_a_second_answer_to_one_request_closes_the_connection(
        serve: Callable[..., Awaitable[RawServer]], transport: Transport) -> None:
    server = await serve(keep_alive(OK + OK))
    url = f"http://127.0.0.1:{server.port}/"
    for _ in range(2):
        assert (await transport.post(url, b"", b"", cap=10)).body == b"ok"
    assert server.connections == 2


async def test_bytes_nobody_asked_for_close_a_pooled_connection(
        serve: Callable[..., Awaitable[RawServer]], transport: Transport) -> None:
    def script(server: RawServer) -> Script:
        async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await server.read_request(reader)
            writer.write(OK)
            await asyncio.sleep(0.02)
            writer.write(b"HTTP/1.1 200 OK\r\n")  # unasked, while the connection is idle
            await asyncio.sleep(30)
        return run

    server = await serve(script)
    url = f"http://127.0.0.1:{server.port}/"
    assert (await transport.post(url, b"", b"", cap=10)).body == b"ok"
    [conn] = transport._open
    await asyncio.sleep(0.1)
    assert conn.closed and conn.transport is not None and conn.transport.is_closing()
    assert transport._pooled(_Target(url)) is None


@pytest.mark.parametrize("header", [b"X-Long: " + b"a" * 70_000 + b"\r\n",
                                    b"X-Many: 1\r\n" * 7_000])
async def test_an_endless_head_is_cut_off(serve: Callable[..., Awaitable[RawServer]],
                                          transport: Transport, header: bytes) -> None:
    """A receiver that keeps sending headers is not listened to past MAX_HEAD bytes."""
    server = await serve(once(b"HTTP/1.1 200 OK\r\n" + header, then_close=False))
    with pytest.raises(TransportError) as info:
        async with asyncio.timeout(5):
            await transport.post(f"http://127.0.0.1:{server.port}/", b"", b"", cap=10)
    assert (info.value.kind, str(info.value)) == (
        "bad_response", f"the answer's head passed {MAX_HEAD} bytes")
    assert transport._open == set()


async def test_a_head_dripped_in_small_pieces_is_cut_off_too(
        serve: Callable[..., Awaitable[RawServer]], transport: Transport) -> None:
    def script(server: RawServer) -> Script:
        async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await server.read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\n")
            for _ in range(100):  # 100 KiB of headers, 1 KiB at a time
                writer.write(b"X-Drip: " + b"d" * 1014 + b"\r\n")
                await writer.drain()
                await asyncio.sleep(0.002)
            await asyncio.sleep(30)
        return run

    server = await serve(script)
    with pytest.raises(TransportError, match="head passed"):
        async with asyncio.timeout(5):
            await transport.post(f"http://127.0.0.1:{server.port}/", b"", b"", cap=10)


async def test_a_head_just_within_the_limit_is_read(
        serve: Callable[..., Awaitable[RawServer]], transport: Transport) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Pad: "
    head += b"p" * (MAX_HEAD - len(head) - 4) + b"\r\n\r\n"
    assert len(head) == MAX_HEAD
    server = await serve(once(head + b"ok", then_close=False))
    answer = await transport.post(f"http://127.0.0.1:{server.port}/", b"", b"", cap=10)
    assert (answer.status, answer.body) == (200, b"ok")


async def test_retry_after_is_kept(serve: Callable[..., Awaitable[RawServer]],
                                   transport: Transport) -> None:
    server = await serve(keep_alive(
        b"HTTP/1.1 429 Slow down\r\nretry-AFTER: 120\r\nX-Retry-After-Not: 5\r\n"
        b"x-something: 7\r\n"
        b"Content-Length: 0\r\n\r\n"))
    answer = await transport.post(f"http://127.0.0.1:{server.port}/", b"", b"", cap=10)
    assert (answer.status, answer.retry_after, answer.body) == (429, "120", b"")


async def test_a_stale_pooled_connection_is_replaced_once(
        serve: Callable[..., Awaitable[RawServer]], transport: Transport) -> None:
    """The server closes each connection after one answer without saying so: the second
    POST meets the closed pooled connection and goes out again on a new one."""
    server = await serve(once(OK))
    url = f"http://127.0.0.1:{server.port}/"
    assert (await transport.post(url, b"", b"1", cap=10)).status == 200
    await asyncio.sleep(0.05)  # the server's FIN arrives
    conn = transport._idle[("127.0.0.1", server.port, False)][0]
    assert conn.closed  # the server's FIN was seen: the pool would not hand it out
    conn.closed = False  # as if the FIN had not been seen yet: the write meets a dead socket
    assert (await transport.post(url, b"", b"2", cap=10)).status == 200
    assert server.connections == 2
    for n in range(3, 20):  # back to back: the FIN and the next POST race (either way: 200)
        assert (await transport.post(url, b"", b"%d" % n, cap=10)).status == 200
    assert server.connections == 19
    assert len(transport._open) <= 1  # the closed ones were forgotten, not only skipped


async def test_a_request_on_a_connection_being_closed_fails_at_once(
        serve: Callable[..., Awaitable[RawServer]], transport: Transport) -> None:
    server = await serve(keep_alive())
    conn = await transport._connect(_Target(f"http://127.0.0.1:{server.port}/"))
    assert conn.transport is not None
    conn.transport.close()
    with pytest.raises(TransportError) as info:
        await conn.request(b"POST / HTTP/1.1\r\n\r\n", 10)
    assert (info.value.kind, str(info.value)) == ("connection_closed",
                                                  "the server closed the connection")
    assert server.requests == []


async def test_a_pooled_connection_the_server_closed_is_forgotten(
        serve: Callable[..., Awaitable[RawServer]], transport: Transport) -> None:
    server = await serve(once(OK))  # closes after one answer (no Connection: close said)
    url = f"http://127.0.0.1:{server.port}/"
    await transport.post(url, b"", b"", cap=10)
    [old] = transport._open
    await asyncio.sleep(0.05)  # its FIN is seen: closed, still in the idle pool
    assert old.closed and old in transport._idle[("127.0.0.1", server.port, False)]
    await transport.post(url, b"", b"", cap=10)
    assert old not in transport._open and len(transport._open) == 1
    assert server.connections == 2


async def test_a_fresh_connection_closed_without_an_answer_fails(
        serve: Callable[..., Awaitable[RawServer]], transport: Transport) -> None:
    server = await serve(once(b""))
    with pytest.raises(TransportError) as info:
        await transport.post(f"http://127.0.0.1:{server.port}/", b"", b"", cap=10)
    assert (info.value.kind, str(info.value)) == (
        "connection_closed", "the server closed the connection without answering")
    assert server.connections == 1  # not tried again: it was not a pooled connection


@pytest.mark.parametrize(("answer", "detail"), [
    (b"SMTP ready\r\n\r\n", "^unreadable HTTP answer: "),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
     "^the connection closed in the middle of the answer$"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
     "^the connection closed in the middle of the answer$"),
])
async def test_a_broken_answer_is_a_bad_response(
        serve: Callable[..., Awaitable[RawServer]], transport: Transport,
        answer: bytes, detail: str) -> None:
    server = await serve(once(answer))
    with pytest.raises(TransportError, match=detail) as info:
        await transport.post(f"http://127.0.0.1:{server.port}/", b"", b"", cap=10)
    assert info.value.kind == "bad_response"


async def test_nothing_listening_is_a_connection_failure(transport: Transport) -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    with pytest.raises(TransportError) as info:
        await transport.post(f"http://127.0.0.1:{port}/", b"", b"", cap=10)
    assert info.value.kind == "connection_failed"
    assert str(info.value).startswith(f"cannot connect to 127.0.0.1:{port}: ")


async def test_a_cancelled_request_closes_its_connection(
        serve: Callable[..., Awaitable[RawServer]], transport: Transport) -> None:
    slow = 0

    def script(server: RawServer) -> Script:
        async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal slow
            while True:
                await server.read_request(reader)
                slow += 1
                if slow == 1:
                    await asyncio.sleep(30)  # the first answer never comes
                writer.write(OK)
                await writer.drain()
        return run

    server = await serve(script)
    url = f"http://127.0.0.1:{server.port}/"
    errors: list[dict[str, object]] = []
    asyncio.get_running_loop().set_exception_handler(lambda loop, context: errors.append(context))
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.1):
            await transport.post(url, b"", b"", cap=10)
    assert transport._open == set()
    await asyncio.sleep(0.05)  # the connection is lost meanwhile: nothing to report
    assert errors == []
    assert (await transport.post(url, b"", b"", cap=10)).status == 200
    assert server.connections == 2


async def test_no_more_connections_than_the_limit(
        serve: Callable[..., Awaitable[RawServer]]) -> None:
    gate = asyncio.Event()
    busy = 0
    most = 0

    def script(server: RawServer) -> Script:
        async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal busy, most
            while True:
                await server.read_request(reader)
                busy += 1
                most = max(most, busy)
                await gate.wait()
                busy -= 1
                writer.write(OK)
                await writer.drain()
        return run

    server = await serve(script)
    transport = make_transport(LOCAL, limit=3)
    url = f"http://127.0.0.1:{server.port}/"
    try:
        posts = [asyncio.create_task(transport.post(url, b"", b"", cap=10)) for _ in range(10)]
        await asyncio.sleep(0.1)
        assert (most, server.connections) == (3, 3)
        gate.set()
        assert [a.status for a in await asyncio.gather(*posts)] == [200] * 10
        assert server.connections == 3
    finally:
        await transport.close()


async def test_an_ip_literal_the_policy_refuses_is_never_connected_to(
        serve: Callable[..., Awaitable[RawServer]]) -> None:
    server = await serve(keep_alive())
    transport = make_transport(AddressPolicy([]))
    try:
        with pytest.raises(SSRFRefused, match="loopback"):
            await transport.post(f"http://127.0.0.1:{server.port}/", b"", b"", cap=10)
    finally:
        await transport.close()
    assert server.connections == 0


async def test_close_closes_every_connection(serve: Callable[..., Awaitable[RawServer]]
                                             ) -> None:
    server = await serve(keep_alive())
    transport = make_transport(LOCAL)
    await transport.post(f"http://127.0.0.1:{server.port}/", b"", b"", cap=10)
    [conn] = transport._open
    await transport.close()
    assert conn.closed and transport._open == set() and transport._idle == {}
    assert conn.transport is not None and conn.transport.is_closing()


def test_the_limits_and_the_bounded_url_cache() -> None:
    assert make_transport(LOCAL).limit == 100
    assert make_transport(LOCAL, limit=7).limit == 7
    assert Transport(GuardedResolver(LOCAL)).limit == 100
    once = make_transport(LOCAL)
    assert once._target("https://a.example/x") is once._target("https://a.example/x")
    transport = make_transport(LOCAL)
    for n in range(10_000):
        transport._target(f"https://h{n}.example.com/")
    assert len(transport._targets) == 10_000
    transport._target("https://one-more.example.com/")
    assert list(transport._targets) == ["https://one-more.example.com/"]


async def test_names_are_resolved_once_per_dns_seconds_and_every_address_is_tried(
        serve: Callable[..., Awaitable[RawServer]]) -> None:
    server = await serve(keep_alive(b"HTTP/1.1 200 OK\r\nConnection: close\r\n"
                                    b"Content-Length: 2\r\n\r\nok"))
    names = StubResolver({"hooks.test": ["127.0.0.2", "127.0.0.1"]})  # nothing on 127.0.0.2
    transport = Transport(GuardedResolver(LOCAL, names))
    url = f"http://hooks.test:{server.port}/"
    try:
        for _ in range(3):
            assert (await transport.post(url, b"", b"", cap=10)).body == b"ok"
        assert names.calls == ["hooks.test"]
        assert names.families == [socket.AF_UNSPEC]  # IPv4 and IPv6 addresses
        assert server.connections == 3
        assert server.requests[0].startswith(b"POST / HTTP/1.1\r\nHost: hooks.test:%d\r\n"
                                             % server.port)
        expires, addresses = transport._dns[("hooks.test", server.port)]
        assert addresses == ["127.0.0.2", "127.0.0.1"]
        assert 0 < expires - time.monotonic() <= DNS_SECONDS
        transport._dns[("hooks.test", server.port)] = (time.monotonic() - 0.001, addresses)
        await transport.post(url, b"", b"", cap=10)
        assert names.calls == ["hooks.test"] * 2
        names.table["hooks.test"] = ["127.0.0.2"]
        transport.clear_dns_cache()
        with pytest.raises(TransportError) as info:
            await transport.post(url, b"", b"", cap=10)
        assert info.value.kind == "connection_failed"
    finally:
        await transport.close()


async def test_an_address_that_never_answers_does_not_hold_back_the_next(
        serve: Callable[..., Awaitable[RawServer]]) -> None:
    """Happy eyeballs: a name's first address swallows the SYN (a full backlog on 127.0.0.2),
    its second answers; the POST goes out on the second a quarter second later, not at the
    deadline."""
    server = await serve(keep_alive())
    stuck = socket.socket()
    stuck.bind(("127.0.0.2", server.port))
    stuck.listen(0)
    queued = []
    for _ in range(3):  # fill the backlog: from then on its SYNs go unanswered
        filler = socket.socket()
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect(("127.0.0.2", server.port))
        queued.append(filler)
    await asyncio.sleep(0.1)
    names = StubResolver({"slow.test": ["127.0.0.2", "127.0.0.1"]})
    transport = Transport(GuardedResolver(LOCAL, names))
    try:
        started = time.monotonic()
        async with asyncio.timeout(5):
            answer = await transport.post(f"http://slow.test:{server.port}/", b"", b"", cap=10)
        took = time.monotonic() - started
        assert answer.body == b"ok" and server.connections == 1
        assert HAPPY_EYEBALLS_DELAY <= took < 2, took
    finally:
        await transport.close()
        for sock in (stuck, *queued):
            sock.close()


async def test_the_dns_cache_is_bounded(serve: Callable[..., Awaitable[RawServer]]) -> None:
    server = await serve(keep_alive())
    names = StubResolver({f"h{n}.test": ["127.0.0.1"] for n in range(3)})
    transport = Transport(GuardedResolver(LOCAL, names))
    try:
        transport._dns.update({(f"x{n}", 1): (time.monotonic() + 60, []) for n in range(9_999)})
        await transport.post(f"http://h0.test:{server.port}/", b"", b"", cap=10)
        assert len(transport._dns) == 10_000
        await transport.post(f"http://h1.test:{server.port}/", b"", b"", cap=10)
        assert list(transport._dns) == [("h1.test", server.port)]
    finally:
        await transport.close()


def _self_signed(tmp: Path, name_: str = "127.0.0.1") -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(a server context with a certificate for ``name_``, a client context trusting it)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name_)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.DNSName(name_)] if not name_[0].isdigit()
                else [x509.IPAddress(ipaddress.ip_address(name_))]), critical=False)
            .sign(key, hashes.SHA256()))
    pem = cert.public_bytes(serialization.Encoding.PEM)
    (tmp / "cert.pem").write_bytes(pem)
    (tmp / "key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(tmp / "cert.pem", tmp / "key.pem")
    client = ssl.create_default_context(cadata=pem.decode())
    return server, client


async def test_https_verifies_the_server(serve: Callable[..., Awaitable[RawServer]],
                                         tmp_path: Path) -> None:
    server_ctx, client_ctx = _self_signed(tmp_path)
    server = await serve(keep_alive(), context=server_ctx)
    url = f"https://127.0.0.1:{server.port}/tls"
    trusting = Transport(make_transport(LOCAL).resolver, ssl_context=client_ctx)
    try:
        for _ in range(2):
            assert (await trusting.post(url, b"", b"{}", cap=10)).body == b"ok"
        assert server.connections == 1
        assert server.requests[0].startswith(
            b"POST /tls HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n" % server.port)
    finally:
        await trusting.close()
    default = make_transport(LOCAL)  # the system's trust store: a self-signed one is refused
    try:
        with pytest.raises(TransportError, match="CERTIFICATE_VERIFY_FAILED") as info:
            await default.post(url, b"", b"{}", cap=10)
        assert info.value.kind == "connection_failed"
    finally:
        await default.close()


async def test_https_checks_the_certificate_against_the_name(
        serve: Callable[..., Awaitable[RawServer]], tmp_path: Path) -> None:
    """Connected to the name's address, the certificate is checked for the name (SNI)."""
    server_ctx, client_ctx = _self_signed(tmp_path, "hooks.test")
    server = await serve(keep_alive(), context=server_ctx)
    transport = Transport(GuardedResolver(LOCAL, StubResolver({"hooks.test": ["127.0.0.1"]})),
                          ssl_context=client_ctx)
    try:
        answer = await transport.post(f"https://hooks.test:{server.port}/", b"", b"", cap=10)
        assert answer.body == b"ok"
    finally:
        await transport.close()
