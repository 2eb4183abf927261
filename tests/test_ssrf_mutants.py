"""The SSRF guard (payflow.webhooks.ssrf) at its edges: non-global addresses outside the
tables, scoped literals, what a refusal carries, the resolver's own contract (ports, families,
closing), cycles in exception chains. Written against the mutants tests/test_ssrf.py let
through (scripts/mutation ssrf)."""

from __future__ import annotations

import ipaddress
import pickle
import socket
from collections.abc import AsyncIterator, Sequence

import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.test_utils import TestServer

from payflow.webhooks.ssrf import (
    AddressPolicy,
    GuardedResolver,
    SSRFRefused,
    _table,
    check_destination,
    check_url,
)
from payflow.webhooks.transport import make_transport

HINT = "to [webhooks] allow_networks to allow it"


class Recorder(AbstractResolver):
    """Answers every name with ``addresses``; records each call and whether it was closed."""

    def __init__(self, addresses: Sequence[str] = ("93.184.216.34",)) -> None:
        self.addresses = list(addresses)
        self.calls: list[tuple[str, int, socket.AddressFamily]] = []
        self.closed = False

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_UNSPEC) -> list[ResolveResult]:
        self.calls.append((host, port, family))
        return [ResolveResult(hostname=host, host=a, port=port, family=socket.AF_INET, proto=0,
                              flags=socket.AI_NUMERICHOST) for a in self.addresses]

    async def close(self) -> None:
        self.closed = True


def test_table_rows_are_networks_with_their_class_in_order() -> None:
    assert _table(("a", "10.0.0.0/8 ::1/128"), ("b", "1.2.3.4/32")) == (
        (ipaddress.ip_network("10.0.0.0/8"), "a"), (ipaddress.ip_network("::1/128"), "a"),
        (ipaddress.ip_network("1.2.3.4/32"), "b"))


@pytest.mark.parametrize("address", ["2001:2::1", "2001:10::1", "2001:20::1"])
def test_non_global_ipv6_outside_the_table_is_refused_as_reserved(address: str) -> None:
    """Benchmarking (2001:2::/48), ORCHID (2001:10::/28, 2001:20::/28): in no row of the
    table, refused because Python does not call them global."""
    ip = ipaddress.ip_address(address)
    assert not ip.is_global
    assert AddressPolicy([]).refusal(ip) == "reserved"
    assert AddressPolicy([f"{address}/128"]).refusal(ip) is None


@pytest.mark.parametrize(("address", "said"), [
    ("0.0.0.0", "0.0.0.0 is an unspecified address"),
    ("fc00::1", "fc00::1 is an IPv6 unique local address"),
    ("10.0.0.1", "10.0.0.1 is a private address"),
    ("127.0.0.1", "127.0.0.1 is a loopback address"),
])
def test_reasons_use_the_right_article(address: str, said: str) -> None:
    exc = AddressPolicy([]).refuse(address, ipaddress.ip_address(address))
    assert exc is not None and str(exc) == f"{said}; add it {HINT}"


def test_a_scoped_literal_is_judged_and_named_without_its_zone() -> None:
    exc = AddressPolicy([]).refuse("fe80::1%eth0", ipaddress.ip_address("fe80::1%eth0"))
    assert exc is not None
    assert (exc.host, exc.address) == ("fe80::1%eth0", "fe80::1")
    assert str(exc) == f"fe80::1 is a link-local address; add it {HINT}"


def test_only_the_first_percent_sign_starts_the_zone() -> None:
    exc = AddressPolicy([]).refuse("fe80::1%a%b", ipaddress.ip_address("fe80::1"))
    assert exc is not None and str(exc) == f"fe80::1 is a link-local address; add it {HINT}"


def test_a_refusal_survives_pickling() -> None:
    exc = SSRFRefused("h", "10.0.0.1", "h resolves to 10.0.0.1")
    copy = pickle.loads(pickle.dumps(exc))
    assert type(copy) is SSRFRefused
    assert (copy.host, copy.address, copy.reason, str(copy)) == (
        "h", "10.0.0.1", "h resolves to 10.0.0.1", "h resolves to 10.0.0.1")


async def test_the_resolver_passes_port_and_family_on() -> None:
    inner = Recorder()
    resolver = GuardedResolver(AddressPolicy([]), inner)
    await resolver.resolve("a.test")
    await resolver.resolve("b.test", 443, family=socket.AF_INET6)
    assert inner.calls == [("a.test", 0, socket.AF_INET), ("b.test", 443, socket.AF_INET6)]


async def test_the_resolver_refuses_an_answer_that_is_not_an_address() -> None:
    resolver = GuardedResolver(AddressPolicy([]), Recorder(["bogus"]))
    with pytest.raises(SSRFRefused) as info:
        await resolver.resolve("a.test", 80)
    assert (info.value.host, info.value.address) == ("a.test", "bogus")
    assert str(info.value) == "a.test resolves to 'bogus', which is not an IP address"


async def test_the_resolver_says_when_a_lookup_returns_nothing() -> None:
    resolver = GuardedResolver(AddressPolicy([]), Recorder([]))
    with pytest.raises(OSError, match="returned no addresses") as info:
        await resolver.resolve("a.test", 80)
    assert not isinstance(info.value, SSRFRefused)
    assert info.value.errno is None
    assert info.value.strerror == "DNS lookup of a.test returned no addresses"


async def test_the_resolver_closes_only_the_inner_resolver_it_owns() -> None:
    given = Recorder()
    await GuardedResolver(AddressPolicy([]), given).close()
    assert not given.closed  # the caller's: it closes it
    owning = GuardedResolver(AddressPolicy([]))
    await owning.close()  # nothing created yet: nothing to close
    created = Recorder()
    owning._inner = created  # what resolve() creates lazily
    await owning.close()
    assert created.closed


async def test_the_transport_keeps_its_limit() -> None:
    default = make_transport(AddressPolicy([]))
    seven = make_transport(AddressPolicy([]), limit=7)
    try:
        assert (default.limit, seven.limit) == (100, 7)
    finally:
        await default.close()
        await seven.close()


@pytest.fixture
async def local_server() -> AsyncIterator[int]:
    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/", ok)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        assert server.port is not None
        yield server.port
    finally:
        await server.close()


async def test_an_allowed_trailing_dot_literal_connects_without_a_lookup(local_server: int
                                                                       ) -> None:
    inner = Recorder(["127.0.0.1"])
    transport = make_transport(AddressPolicy(["127.0.0.0/8"]), inner_resolver=inner)
    try:
        answer = await transport.post(f"http://127.0.0.1.:{local_server}/", b"", b"", cap=10)
    finally:
        await transport.close()
    assert answer.status == 200
    assert inner.calls == []


@pytest.mark.parametrize(("url", "host", "reason"), [
    ("http://[::1", "", "'http://[::1' is not a valid URL: Invalid IPv6 URL"),
    ("ftp://example.com/", "example.com",
     "'ftp://example.com/' has the scheme 'ftp'; webhook URLs must use http or https"),
    ("example.com/x", "",
     "'example.com/x' has the scheme '(none)'; webhook URLs must use http or https"),
    ("http:///x", "", "'http:///x' has no host"),
    ("http://example.com:0/", "example.com",
     "'http://example.com:0/' is not a webhook URL: port 0"),
    ("http://example.com/a b", "example.com",
     "'http://example.com/a b' is not a webhook URL: it contains whitespace"),
])
def test_check_url_refusals_carry_host_and_reason(url: str, host: str, reason: str) -> None:
    with pytest.raises(SSRFRefused) as info:
        check_url(url, AddressPolicy([]))
    assert (info.value.host, info.value.address, str(info.value)) == (host, None, reason)


def test_an_allowed_legacy_numeric_host_is_refused_with_how_to_write_it() -> None:
    with pytest.raises(SSRFRefused) as info:
        check_url("http://2130706433/", AddressPolicy(["127.0.0.0/8"]))
    assert (info.value.host, info.value.address) == ("2130706433", "127.0.0.1")
    assert str(info.value) == ("2130706433 is a legacy numeric form of 127.0.0.1; "
                               "write 127.0.0.1")


async def test_check_destination_refuses_a_name_resolving_to_no_address() -> None:
    async def resolve(host: str) -> list[str]:
        return ["bogus"]

    with pytest.raises(SSRFRefused) as info:
        await check_destination("https://a.test/", AddressPolicy([]), resolve=resolve)
    assert (info.value.host, info.value.address) == ("a.test", "bogus")
    assert str(info.value) == "a.test resolves to 'bogus', which is not an IP address"

