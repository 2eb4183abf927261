"""The outbound-address policy (payflow.webhooks.ssrf): address classes, the guarded resolver,
and a real aiohttp client against a local server on 127.0.0.1.

Only 127.0.0.1 (and ::1) ever receive traffic; names that must resolve elsewhere use a stub
resolver, never real DNS.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import AsyncIterator, Sequence

import aiohttp
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult

from payflow.webhooks.ssrf import (
    AddressPolicy,
    GuardedResolver,
    SSRFRefused,
    check_url,
    make_connector,
    refusal_in,
)

LOCAL = ["127.0.0.0/8", "::1/128"]

REFUSED = [
    ("127.0.0.1", "loopback"),
    ("127.255.255.254", "loopback"),
    ("::1", "loopback"),
    ("10.1.2.3", "private"),
    ("172.16.0.1", "private"),
    ("172.31.255.255", "private"),
    ("192.168.1.1", "private"),
    ("169.254.1.1", "link-local"),
    ("fe80::1", "link-local"),
    ("fe80::1%eth0", "link-local"),
    ("100.64.0.1", "carrier-grade NAT"),
    ("100.127.255.254", "carrier-grade NAT"),
    ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast"),
    ("ff02::1", "multicast"),
    ("240.0.0.1", "reserved"),
    ("255.255.255.255", "reserved"),
    ("0.1.2.3", "reserved"),
    ("192.0.2.1", "reserved"),
    ("198.51.100.7", "reserved"),
    ("203.0.113.9", "reserved"),
    ("198.18.0.1", "reserved"),
    ("198.19.255.1", "reserved"),
    ("2001:db8::1", "reserved"),
    ("fec0::1", "reserved"),
    ("0.0.0.0", "unspecified"),
    ("::", "unspecified"),
    ("169.254.169.254", "cloud metadata"),
    ("fd00:ec2::254", "cloud metadata"),
    ("100.100.100.200", "cloud metadata"),
    ("fc00::1", "IPv6 unique local"),
    ("fd12::1", "IPv6 unique local"),
    ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped
    ("::ffff:10.0.0.1", "private"),
    ("::ffff:169.254.169.254", "cloud metadata"),
    ("::ffff:0.0.0.0", "unspecified"),
    ("64:ff9b::a00:1", "private"),  # NAT64 of 10.0.0.1
    ("64:ff9b::7f00:1", "loopback"),  # NAT64 of 127.0.0.1
    ("2002:7f00:1::", "loopback"),  # 6to4 of 127.0.0.1
    ("2002:a9fe:a9fe::1", "cloud metadata"),  # 6to4 of 169.254.169.254
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "reserved"),  # Teredo, client 192.0.2.45
    ("2001:0:4136:e378:8000:63bf:80ff:fffe", "loopback"),  # Teredo, client 127.0.0.1
    ("::7f00:1", "reserved"),  # deprecated IPv4-compatible form
]

PUBLIC = [
    "8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700:4700::1111", "2a00:1450:4001:82a::200e",
    "::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::1", "100.63.255.255", "100.128.0.1",
    "172.32.0.1", "169.253.255.255", "11.0.0.1",
    "2001:0:4136:e378:8000:63bf:f7f7:f7f7",  # Teredo: server 65.54.227.120, client 8.8.8.8
]


@pytest.mark.parametrize(("address", "klass"), REFUSED)
def test_refused_classes(address: str, klass: str) -> None:
    assert AddressPolicy([]).refusal(ipaddress.ip_address(address)) == klass


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_pass(address: str) -> None:
    assert AddressPolicy([]).refusal(ipaddress.ip_address(address)) is None


def test_allow_networks() -> None:
    policy = AddressPolicy(["127.0.0.0/8"])
    assert policy.refusal(ipaddress.ip_address("127.0.0.5")) is None
    assert policy.refusal(ipaddress.ip_address("::ffff:127.0.0.5")) is None  # judged as IPv4
    assert policy.refusal(ipaddress.ip_address("10.0.0.1")) == "private"
    assert policy.refusal(ipaddress.ip_address("::1")) == "loopback"
    v6 = AddressPolicy(["::1/128"])
    assert v6.refusal(ipaddress.ip_address("::1")) is None
    assert v6.refusal(ipaddress.ip_address("127.0.0.1")) == "loopback"
    # an allow network wins over every class, metadata included; bare addresses work too
    odd = AddressPolicy(["169.254.169.254", "10.0.0.1/8", "fd00::/8"])
    for address in ("169.254.169.254", "10.200.0.1", "fd00:ec2::254", "fd12::1"):
        assert odd.refusal(ipaddress.ip_address(address)) is None, address
    assert odd.refusal(ipaddress.ip_address("169.254.169.253")) == "link-local"
    assert odd.refusal(ipaddress.ip_address("fc00::1")) == "IPv6 unique local"


def test_reasons_name_address_class_and_the_fix() -> None:
    policy = AddressPolicy([])
    exc = policy.refuse("127.0.0.1", ipaddress.ip_address("127.0.0.1"))
    assert exc is not None
    assert str(exc) == exc.reason == (
        "127.0.0.1 is a loopback address; add it to [webhooks] allow_networks to allow it")
    assert (exc.host, exc.address) == ("127.0.0.1", "127.0.0.1")
    assert isinstance(exc, OSError)

    exc = policy.refuse("hooks.example", ipaddress.ip_address("fc00::1"))
    assert exc is not None and exc.reason == (
        "hooks.example resolves to fc00::1, an IPv6 unique local address; "
        "add fc00::1 to [webhooks] allow_networks to allow it")

    exc = policy.refuse("hooks.example", ipaddress.ip_address("::ffff:169.254.169.254"))
    assert exc is not None and exc.reason == (
        "hooks.example resolves to ::ffff:169.254.169.254, which embeds 169.254.169.254, "
        "a cloud metadata address; add 169.254.169.254 to [webhooks] allow_networks to allow it")
    assert policy.refuse("example.com", ipaddress.ip_address("8.8.8.8")) is None


def test_check_url() -> None:
    policy = AddressPolicy([])
    check_url("https://hooks.example.com/pay", policy)  # names are checked when resolved
    check_url("http://8.8.8.8:8080/", policy)
    check_url("http://[2606:4700:4700::1111]/", policy)
    for url, klass in [("http://127.0.0.1:8080/", "loopback"), ("http://[::1]/", "loopback"),
                       ("https://169.254.169.254/latest/meta-data/", "cloud metadata"),
                       ("http://[::ffff:10.0.0.1]/", "private"),
                       ("http://[fe80::1%25eth0]:80/", "link-local"),
                       ("http://0.0.0.0:9/", "unspecified"),
                       ("http://2130706433/", "loopback"), ("http://0x7f.1/", "loopback"),
                       ("http://017700000001:80/", "loopback"), ("http://10.1/", "private")]:
        with pytest.raises(SSRFRefused, match=klass) as info:
            check_url(url, policy)
        assert info.value.address is not None
    with pytest.raises(SSRFRefused, match=re.escape("134744072 is a legacy numeric form of "
                                                    "8.8.8.8; write 8.8.8.8")):
        check_url("http://134744072/", policy)
    for url in ("ftp://hooks.example.com/", "file:///etc/passwd", "gopher://127.0.0.1/",
                "/relative", "http:///nohost", "http://[::1"):
        with pytest.raises(SSRFRefused) as info:
            check_url(url, policy)
        assert info.value.address is None, url
    check_url("http://127.0.0.1:8080/", AddressPolicy(LOCAL))
    check_url("http://[::1]:8080/", AddressPolicy(LOCAL))


class StubResolver(AbstractResolver):
    """Answers from a table; counts lookups. Never touches real DNS."""

    def __init__(self, table: dict[str, Sequence[str]]) -> None:
        self.table = table
        self.calls: list[str] = []

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        self.calls.append(host)
        if host not in self.table:
            raise OSError(None, f"no such host {host}")
        return [ResolveResult(hostname=host, host=address, port=port,
                              family=socket.AF_INET6 if ":" in address else socket.AF_INET,
                              proto=0, flags=socket.AI_NUMERICHOST)
                for address in self.table[host]]

    async def close(self) -> None:
        pass


async def test_guarded_resolver_keeps_only_allowed_addresses() -> None:
    stub = StubResolver({"mixed.test": ["10.0.0.7", "93.184.216.34", "fd12::1",
                                        "2606:4700:4700::1111"],
                         "private.test": ["192.168.0.10", "127.0.0.1"],
                         "meta.test": ["169.254.169.254"]})
    resolver = GuardedResolver(AddressPolicy([]), stub)
    results = await resolver.resolve("mixed.test", 443, socket.AF_UNSPEC)
    assert [r["host"] for r in results] == ["93.184.216.34", "2606:4700:4700::1111"]
    assert all(r["port"] == 443 for r in results)

    with pytest.raises(SSRFRefused) as info:
        await resolver.resolve("private.test", 80)
    exc = info.value
    assert (exc.host, exc.address) == ("private.test", "192.168.0.10")
    assert str(exc) == ("private.test resolves to 192.168.0.10, a private address; "
                        "add 192.168.0.10 to [webhooks] allow_networks to allow it")

    with pytest.raises(SSRFRefused, match=re.escape("meta.test resolves to 169.254.169.254")):
        await resolver.resolve("meta.test", 80)

    with pytest.raises(OSError, match="no such host") as failure:  # failures pass through
        await resolver.resolve("nxdomain.test", 80)
    assert refusal_in(failure.value) is None

    allowing = GuardedResolver(AddressPolicy(["192.168.0.0/16"]), stub)
    assert [r["host"] for r in await allowing.resolve("private.test", 80)] == ["192.168.0.10"]
    await resolver.close()


def test_refusal_in() -> None:
    refused = SSRFRefused("h", "10.0.0.1", "h resolves to 10.0.0.1, a private address")
    assert refusal_in(refused) is refused
    key = aiohttp.client_reqrep.ConnectionKey("h", 80, False, True, None, None, None)
    wrapped = aiohttp.ClientConnectorDNSError(key, refused)
    assert refusal_in(wrapped) is refused
    assert "h resolves to 10.0.0.1" in str(wrapped)  # aiohttp shows the reason too
    outer = RuntimeError("delivery failed")
    outer.__cause__ = wrapped
    assert refusal_in(outer) is refused
    inner = KeyError("while handling")
    inner.__context__ = outer
    assert refusal_in(inner) is refused
    assert refusal_in(ExceptionGroup("many", [ValueError(), wrapped])) is refused
    plain = aiohttp.ClientConnectorError(key, ConnectionRefusedError(111, "refused"))
    assert refusal_in(plain) is None
    assert refusal_in(TimeoutError()) is None


class Server:
    """A local aiohttp server recording the Host header of every request it answers."""

    def __init__(self) -> None:
        self.port = 0
        self.hits: list[str] = []
        self.runner: web.AppRunner | None = None

    async def start(self, host: str) -> Server:
        async def handle(request: web.Request) -> web.Response:
            self.hits.append(request.host)
            await request.read()
            return web.Response(text="ok")

        app = web.Application()
        app.router.add_post("/", handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, host, self.port).start()
        self.port = self.runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    srv = await Server().start("127.0.0.1")
    try:
        yield srv
    finally:
        await srv.stop()


async def post(connector: aiohttp.BaseConnector, url: str) -> int:
    async with aiohttp.ClientSession(connector=connector) as session, \
            session.post(url, data=b"{}", allow_redirects=False) as resp:
        await resp.read()
        return resp.status


async def test_localhost_is_refused_before_connecting(server: Server) -> None:
    url = f"http://localhost:{server.port}/"
    check_url(url, AddressPolicy([]))  # a name: nothing to say until it is resolved
    with pytest.raises(aiohttp.ClientConnectorError) as info:
        await post(make_connector(AddressPolicy([])), url)
    refused = refusal_in(info.value)
    assert refused is not None, info.value
    assert refused.host == "localhost"
    assert refused.reason.startswith("localhost resolves to ")
    assert "a loopback address" in refused.reason
    assert server.hits == []  # no connection was made
    # getaddrinfo maps the hex form onto 127.0.0.1 (numerically, no DNS): the guard sees that
    with pytest.raises(aiohttp.ClientConnectorError) as info:
        await post(make_connector(AddressPolicy([])), f"http://0x7f.0.0.1:{server.port}/")
    refused = refusal_in(info.value)
    assert refused is not None and refused.address == "127.0.0.1", info.value
    assert server.hits == []


async def test_ip_literal_is_refused_by_check_url_and_connector(server: Server) -> None:
    url = f"http://127.0.0.1:{server.port}/"
    with pytest.raises(SSRFRefused, match=re.escape("127.0.0.1 is a loopback address")):
        check_url(url, AddressPolicy([]))
    # aiohttp skips the resolver for IP literals; the connector checks them itself
    with pytest.raises(aiohttp.ClientConnectorError) as info:
        await post(make_connector(AddressPolicy([])), url)
    refused = refusal_in(info.value)
    assert refused is not None and refused.address == "127.0.0.1"
    assert server.hits == []


async def test_allow_networks_reach_the_server(server: Server) -> None:
    policy = AddressPolicy(LOCAL)
    for host in ("localhost", "127.0.0.1"):
        url = f"http://{host}:{server.port}/"
        check_url(url, policy)
        assert await post(make_connector(policy), url) == 200
    assert len(server.hits) == 2


async def test_connects_only_to_the_checked_address(server: Server) -> None:
    """The connector uses exactly the addresses the guard returned, from one lookup: a decoy
    on the refused 127.0.0.2 (same port) is never tried though the stub lists it first, and a
    second request is served from aiohttp's cache of the filtered answer."""
    decoy = Server()
    decoy.port = server.port
    await decoy.start("127.0.0.2")
    stub = StubResolver({"pinned.test": ["127.0.0.2", "127.0.0.1"]})
    connector = make_connector(AddressPolicy(["127.0.0.1/32"]), inner_resolver=stub)
    url = f"http://pinned.test:{server.port}/"
    close = {"Connection": "close"}  # each request opens a new connection (no pooled reuse)
    try:
        async with aiohttp.ClientSession(connector=connector, headers=close) as session:
            for _ in range(2):
                async with session.post(url, data=b"{}") as resp:
                    assert resp.status == 200
            assert stub.calls == ["pinned.test"]  # the second connection used the cache
            connector.clear_dns_cache()
            stub.table["pinned.test"] = ["127.0.0.2"]  # the name "rebinds" to a refused address
            with pytest.raises(aiohttp.ClientConnectorError) as info:
                async with session.post(url, data=b"{}"):
                    pass
    finally:
        await decoy.stop()
    assert stub.calls == ["pinned.test", "pinned.test"]
    assert server.hits == [f"pinned.test:{server.port}"] * 2
    assert decoy.hits == []
    refused = refusal_in(info.value)
    assert refused is not None and refused.address == "127.0.0.2"
