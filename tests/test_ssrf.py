"""The outbound-address policy (payflow.webhooks.ssrf): address classes, the guarded resolver,
and a real aiohttp client against a local server on 127.0.0.1.

Only 127.0.0.1 (and ::1) ever receive traffic; names that must resolve elsewhere use a stub
resolver, never real DNS.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import AsyncIterator, Sequence

import pytest
from aiohttp import web
from structlog.testing import capture_logs
from yarl import URL

from payflow.config import EndpointConfig
from payflow.store.memory import MemoryStore
from payflow.webhooks.endpoints import config_endpoint_id, seed_endpoints
from payflow.webhooks.ssrf import (
    AddressPolicy,
    GuardedResolver,
    SSRFRefused,
    check_destination,
    check_url,
)
from payflow.webhooks.transport import Transport, make_transport
from resolvers import StubResolver

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


@pytest.mark.parametrize(("url", "address", "klass"), [
    ("http://127.0.0.1.:8080/", "127.0.0.1", "loopback"),
    ("http://127.0.0.1../", "127.0.0.1", "loopback"),
    ("https://169.254.169.254./latest/", "169.254.169.254", "cloud metadata"),
    ("http://10.0.0.1.:80/", "10.0.0.1", "private"),
    ("http://0x7f.1./", "127.0.0.1", "loopback"),
    ("http://2130706433./", "127.0.0.1", "loopback"),
])
def test_check_url_reads_a_trailing_dot_as_the_address(url: str, address: str,
                                                       klass: str) -> None:
    with pytest.raises(SSRFRefused, match=klass) as info:
        check_url(url, AddressPolicy([]))
    assert info.value.address == address
    if url.startswith("http://127.0.0.1."):
        assert info.value.reason == ("127.0.0.1 is a loopback address; add it to [webhooks] "
                                     "allow_networks to allow it")
    allowing = AddressPolicy(["127.0.0.0/8", "10.0.0.0/8", "169.254.169.254/32"])
    if "x" in url or "213" in url:  # a legacy numeric form is refused even when allowed
        with pytest.raises(SSRFRefused, match=re.escape("legacy numeric form of 127.0.0.1")):
            check_url(url, allowing)
    else:
        check_url(url, allowing)


class Lookups:
    """A :data:`~payflow.webhooks.ssrf.HostResolver` answering from a table; a name not in
    it does not resolve; "slow.test" never answers."""

    def __init__(self, table: dict[str, Sequence[str]]) -> None:
        self.table = table
        self.calls: list[str] = []

    async def __call__(self, host: str) -> Sequence[str]:
        self.calls.append(host)
        if host == "slow.test":
            await asyncio.sleep(60)
        if host not in self.table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return self.table[host]


LOOKUPS: dict[str, Sequence[str]] = {
    "loop.test": ["127.0.0.1", "::1"], "meta.test": ["169.254.169.254"],
    "mixed.test": ["10.0.0.7", "93.184.216.34"], "public.test": ["93.184.216.34"],
    "mapped.test": ["::ffff:10.0.0.1"], "empty.test": []}


@pytest.mark.parametrize(("url", "klass", "reason"), [
    ("http://127.0.0.1:8080/", "loopback", "127.0.0.1 is a loopback address"),
    ("http://127.0.0.1.:8080/", "loopback", "127.0.0.1 is a loopback address"),
    ("http://[::ffff:127.0.0.1]/", "loopback", "::ffff:127.0.0.1 embeds 127.0.0.1"),
    ("http://169.254.169.254/", "cloud metadata", "169.254.169.254 is a cloud metadata"),
    ("http://10.0.0.1/", "private", "10.0.0.1 is a private address"),
    ("http://loop.test:9/", "loopback", "loop.test resolves to 127.0.0.1, a loopback"),
    ("https://meta.test/", "cloud metadata", "meta.test resolves to 169.254.169.254"),
    ("https://mapped.test/", "private", "mapped.test resolves to ::ffff:10.0.0.1, which embeds"),
])
async def test_check_destination_refuses_what_can_only_reach_refused_addresses(
        url: str, klass: str, reason: str) -> None:
    lookups = Lookups(LOOKUPS)
    with pytest.raises(SSRFRefused, match=klass) as info:
        await check_destination(url, AddressPolicy([]), resolve=lookups)
    assert info.value.reason.startswith(reason), info.value.reason
    assert "[webhooks] allow_networks" in info.value.reason
    host = URL(url).host
    assert lookups.calls == ([host] if host and host.endswith(".test") else [])  # literals: none


async def test_check_destination_lets_through_allowed_and_unresolved_names() -> None:
    lookups = Lookups(LOOKUPS)
    policy = AddressPolicy([])
    # one allowed address is enough (delivery connects only to the allowed ones)
    for url in ("https://mixed.test/", "https://public.test/", "http://8.8.8.8/"):
        await check_destination(url, policy, resolve=lookups)
    allowing = AddressPolicy([*LOCAL, "169.254.169.254/32", "10.0.0.0/8"])
    for url in ("http://127.0.0.1.:8080/", "http://[::ffff:127.0.0.1]/", "http://loop.test/",
                "http://meta.test/", "http://10.0.0.1/", "http://mapped.test/"):
        await check_destination(url, allowing, resolve=lookups)
    # a name that does not resolve (yet), resolves to nothing, or times out: not refused
    with capture_logs() as logs:
        for url in ("https://nxdomain.test/", "https://empty.test/", "https://slow.test/"):
            await check_destination(url, policy, resolve=lookups, lookup_seconds=0.05)
    assert [(e["event"], e["log_level"], e["host"]) for e in logs] == [
        ("webhook.endpoint_unresolved", "info", host)
        for host in ("nxdomain.test", "empty.test", "slow.test")]
    with pytest.raises(SSRFRefused, match="scheme"):  # check_url's refusals come first
        await check_destination("ftp://public.test/", policy, resolve=lookups)


async def test_check_destination_by_default_uses_the_system_resolver() -> None:
    with pytest.raises(SSRFRefused, match=r"localhost resolves to .*a loopback address"):
        await check_destination("http://localhost:9/", AddressPolicy([]))
    await check_destination("http://localhost:9/", AddressPolicy(LOCAL))


async def test_seeding_warns_about_refused_config_endpoints_but_keeps_them() -> None:
    store = MemoryStore()
    configured = [EndpointConfig(url="http://127.0.0.1.:8080/hooks", secret=None),
                  EndpointConfig(url="http://8.8.8.8/hooks", secret=None)]
    with capture_logs() as logs:
        await seed_endpoints(store, configured, AddressPolicy([]))
    assert {ep.url for ep in await store.list_endpoints()} == {c.url for c in configured}
    refused = [e for e in logs if e["event"] == "webhook.endpoint_refused"]
    assert len(refused) == 1 and refused[0]["log_level"] == "warning"
    assert refused[0]["endpoint"] == config_endpoint_id("http://127.0.0.1.:8080/hooks")
    assert "127.0.0.1 is a loopback address" in refused[0]["reason"]
    with capture_logs() as logs:
        await seed_endpoints(MemoryStore(), configured, AddressPolicy(LOCAL))
        await seed_endpoints(MemoryStore(), configured)  # no policy: no check
    assert not [e for e in logs if e["event"] == "webhook.endpoint_refused"]


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
    assert not isinstance(failure.value, SSRFRefused)

    allowing = GuardedResolver(AddressPolicy(["192.168.0.0/16"]), stub)
    assert [r["host"] for r in await allowing.resolve("private.test", 80)] == ["192.168.0.10"]
    await resolver.close()


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


async def post(transport: Transport, url: str) -> int:
    """One POST through ``transport`` (then closed): the answer's status."""
    try:
        return (await transport.post(url, b"", b"{}", cap=100)).status
    finally:
        await transport.close()


async def test_localhost_is_refused_before_connecting(server: Server) -> None:
    url = f"http://localhost:{server.port}/"
    check_url(url, AddressPolicy([]))  # a name: nothing to say until it is resolved
    with pytest.raises(SSRFRefused) as info:
        await post(make_transport(AddressPolicy([])), url)
    refused = info.value
    assert refused.host == "localhost"
    assert refused.reason.startswith("localhost resolves to ")
    assert "a loopback address" in refused.reason
    assert server.hits == []  # no connection was made
    # getaddrinfo maps the hex form onto 127.0.0.1 (numerically, no DNS): the guard sees that
    with pytest.raises(SSRFRefused) as info:
        await post(make_transport(AddressPolicy([])), f"http://0x7f.0.0.1:{server.port}/")
    assert info.value.address == "127.0.0.1", info.value
    assert server.hits == []


async def test_ip_literal_is_refused_by_check_url_and_transport(server: Server) -> None:
    url = f"http://127.0.0.1:{server.port}/"
    with pytest.raises(SSRFRefused, match=re.escape("127.0.0.1 is a loopback address")):
        check_url(url, AddressPolicy([]))
    # an IP literal needs no resolver: the transport checks it itself
    with pytest.raises(SSRFRefused) as info:
        await post(make_transport(AddressPolicy([])), url)
    assert info.value.address == "127.0.0.1"
    assert server.hits == []


async def test_a_trailing_dot_ip_is_that_address_for_the_transport(server: Server) -> None:
    """``127.0.0.1.`` is refused as 127.0.0.1 (not looked up in DNS, which fails and would
    be retried), and when allowed it connects to 127.0.0.1."""
    url = f"http://127.0.0.1.:{server.port}/"
    with pytest.raises(SSRFRefused) as info:
        await post(make_transport(AddressPolicy([])), url)
    assert info.value.address == "127.0.0.1", info.value
    assert server.hits == []
    assert await post(make_transport(AddressPolicy(LOCAL)), url) == 200
    assert len(server.hits) == 1


async def test_allow_networks_reach_the_server(server: Server) -> None:
    policy = AddressPolicy(LOCAL)
    for host in ("localhost", "127.0.0.1"):
        url = f"http://{host}:{server.port}/"
        check_url(url, policy)
        assert await post(make_transport(policy), url) == 200
    assert len(server.hits) == 2


async def test_connects_only_to_the_checked_address(server: Server) -> None:
    """The transport uses exactly the addresses the guard returned, from one lookup: a decoy
    on the refused 127.0.0.2 (same port) is never tried though the stub lists it first, and a
    second connection is made from the transport's cache of the filtered answer."""
    decoy = Server()
    decoy.port = server.port
    await decoy.start("127.0.0.2")
    stub = StubResolver({"pinned.test": ["127.0.0.2", "127.0.0.1"]})
    transport = make_transport(AddressPolicy(["127.0.0.1/32"]), inner_resolver=stub)
    url = f"http://pinned.test:{server.port}/"
    close = b"Connection: close\r\n"  # each request opens a new connection (no pooled reuse)
    try:
        for _ in range(2):
            assert (await transport.post(url, close, b"{}", cap=10)).status == 200
        assert stub.calls == ["pinned.test"]  # the second connection used the cache
        transport.clear_dns_cache()
        stub.table["pinned.test"] = ["127.0.0.2"]  # the name "rebinds" to a refused address
        with pytest.raises(SSRFRefused) as info:
            await transport.post(url, close, b"{}", cap=10)
    finally:
        await transport.close()
        await decoy.stop()
    assert stub.calls == ["pinned.test", "pinned.test"]
    assert server.hits == [f"pinned.test:{server.port}"] * 2
    assert decoy.hits == []
    assert info.value.address == "127.0.0.2"
