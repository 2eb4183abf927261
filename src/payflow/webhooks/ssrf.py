"""Outbound-address policy for webhook delivery (SSRF protection).

Receivers never get to make PayFlow talk to private, loopback, link-local, carrier-grade NAT,
multicast, reserved or cloud-metadata addresses, nor to IPv6 unique local ones, unless
``[webhooks] allow_networks`` lists them. IPv6 addresses that embed an IPv4 one (IPv4-mapped,
NAT64 ``64:ff9b::/96``, 6to4, Teredo) are judged by the IPv4 address they embed.

Enforcement lives where connections are made (:mod:`payflow.webhooks.transport`), so it holds
for every delivery:

- :class:`GuardedResolver` resolves a host name itself and hands the transport only the
  addresses it allowed; the transport connects to exactly those (no second lookup, so DNS
  rebinding between the check and the connect is impossible).
- the transport checks IP-literal hosts itself, which need no resolver.
- :func:`check_url` refuses a bad scheme or an IP-literal host up front, without a connection.
- :func:`check_destination` is what endpoint creation asks: :func:`check_url`, then, for a
  name, an asynchronous lookup (short timeout) that refuses a name resolving only to refused
  addresses. A name that does not resolve is let through: its DNS may come later.

An IP literal with a trailing dot (``127.0.0.1.``) is the same address everywhere here (else
it would fail as a name, or as a non-canonical address, and be retried for nothing): it is
judged, and connected to, as ``127.0.0.1``.

A refusal is an :class:`SSRFRefused` (an ``OSError``), raised as it is to the delivery, which
records the reason and does not retry an attempt that can never succeed.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any

import structlog
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver
from yarl import URL

from payflow import urls

log = structlog.get_logger("payflow.webhooks")

IPAddress = IPv4Address | IPv6Address
SCHEMES = frozenset({"http", "https"})
# A host name -> the addresses it resolves to (as text); raises OSError when it does not.
HostResolver = Callable[[str], Awaitable[Sequence[str]]]
RESOLVE_TIMEOUT = 2.0  # seconds a creation-time lookup may take


def _table(*groups: tuple[str, str]) -> tuple[tuple[Any, str], ...]:
    """``(name, "net net ...")`` groups as ``(network, name)`` rows, in order."""
    return tuple((ipaddress.ip_network(net), name) for name, nets in groups
                 for net in nets.split())


# First match wins, so the specific rows (metadata, unspecified) come before the broad ones.
_V4: tuple[tuple[IPv4Network, str], ...] = _table(
    ("unspecified", "0.0.0.0/32"),  # Linux connects 0.0.0.0 to the local host
    # AWS/GCP/Azure/OpenStack, AWS ECS credentials, Alibaba, Oracle, Azure WireServer
    ("cloud metadata", "169.254.169.254/32 169.254.170.2/32 100.100.100.200/32 192.0.0.192/32"
                       " 168.63.129.16/32"),
    ("loopback", "127.0.0.0/8"),
    ("private", "10.0.0.0/8 172.16.0.0/12 192.168.0.0/16"),
    ("link-local", "169.254.0.0/16"),
    ("carrier-grade NAT", "100.64.0.0/10"),
    ("multicast", "224.0.0.0/4"),
    # "this network", IETF protocol assignments, documentation (TEST-NET-1/2/3), benchmarking,
    # the deprecated 6to4 relay anycast, future use (with 255.255.255.255, broadcast)
    ("reserved", "0.0.0.0/8 192.0.0.0/24 192.0.2.0/24 198.51.100.0/24 203.0.113.0/24"
                 " 198.18.0.0/15 192.88.99.0/24 240.0.0.0/4"),
)
# Nothing is embedded in the first three rows; the rest apply once embedded IPv4 is ruled out.
_V6: tuple[tuple[IPv6Network, str], ...] = _table(
    ("unspecified", "::/128"),
    ("loopback", "::1/128"),
    ("cloud metadata", "fd00:ec2::254/128"),  # AWS (IPv6)
    ("link-local", "fe80::/10"),
    ("IPv6 unique local", "fc00::/7"),
    ("multicast", "ff00::/8"),
    ("private", "64:ff9b:1::/48"),  # local-use NAT64 (RFC 8215)
    # deprecated site-local, discard-only, documentation (two), and ::/8: IPv4-compatible,
    # SIIT and other legacy forms
    ("reserved", "fec0::/10 100::/64 2001:db8::/32 3fff::/20 ::/8"),
)
_NAT64 = IPv6Network("64:ff9b::/96")


def _article(name: str) -> str:
    return "an" if name[0] in "aeiouI" else "a"


class SSRFRefused(OSError):
    """A destination the address policy refuses. ``str(exc)`` is :attr:`reason`."""

    def __init__(self, host: str, address: str | None, reason: str) -> None:
        super().__init__()
        self.host = host
        self.address = address
        self.reason = reason

    def __str__(self) -> str:
        return self.reason

    def __reduce__(self) -> tuple[type[SSRFRefused], tuple[str, str | None, str]]:
        return (type(self), (self.host, self.address, self.reason))


class AddressPolicy:
    """Which addresses deliveries may connect to: public ones, and those in ``allow_networks``."""

    def __init__(self, allow_networks: Sequence[str]) -> None:
        nets = [ipaddress.ip_network(net, strict=False) for net in allow_networks]
        self._allow4 = [n for n in nets if isinstance(n, IPv4Network)]
        self._allow6 = [n for n in nets if isinstance(n, IPv6Network)]

    def refusal(self, ip: IPAddress) -> str | None:
        """The refused class ``ip`` belongs to ("loopback", "private", ...), or ``None``."""
        found = self._classify(ip)
        return found[0] if found else None

    def refuse(self, host: str, ip: IPAddress) -> SSRFRefused | None:
        """The exception for connecting to ``ip`` (which ``host`` named), or ``None``."""
        found = self._classify(ip)
        if found is None:
            return None
        name, culprit = found
        ip = _unscoped(ip)
        text = _text(ip)
        what = f"{culprit}, {_article(name)} {name} address"
        literal = parse_ip(bare(host)) == ip
        if culprit != ip:
            what = f"{text} embeds {what}" if literal else f"{text}, which embeds {what}"
        if not literal:
            said = f"{host} resolves to {what}"
        elif culprit == ip:
            said = f"{text} is {_article(name)} {name} address"
        else:
            said = what
        hint = "it" if literal and culprit == ip else str(culprit)
        return SSRFRefused(host, text,
                           f"{said}; add {hint} to [webhooks] allow_networks to allow it")

    def _allowed(self, ip: IPAddress) -> bool:
        if isinstance(ip, IPv4Address):
            return any(ip in net for net in self._allow4)
        return any(ip in net for net in self._allow6)

    def _classify(self, ip: IPAddress) -> tuple[str, IPAddress] | None:
        ip = _unscoped(ip)
        if self._allowed(ip):
            return None
        if isinstance(ip, IPv4Address):
            name = next((name for net, name in _V4 if ip in net), None)
            if name is None and not ip.is_global:
                name = "reserved"
            return (name, ip) if name else None
        for net, name in _V6[:3]:  # unspecified, loopback, metadata: nothing embedded in those
            if ip in net:
                return name, ip
        embedded = _embedded_ipv4(ip)
        if embedded:  # judged by what it embeds; the wrapper ranges themselves are harmless
            return next((found for v4 in embedded if (found := self._classify(v4))), None)
        name = next((name for net, name in _V6 if ip in net), None)
        if name is None and not ip.is_global:
            name = "reserved"
        return (name, ip) if name else None


def _unscoped(ip: IPAddress) -> IPAddress:
    """``ip`` without an IPv6 zone (``fe80::1%eth0``), which would defeat equality checks."""
    return IPv6Address(int(ip)) if isinstance(ip, IPv6Address) and ip.scope_id else ip


def _text(ip: IPAddress) -> str:
    """``ip`` as text, IPv4-mapped ones as ``::ffff:127.0.0.1`` (Python < 3.13 writes hex)."""
    mapped = ip.ipv4_mapped if isinstance(ip, IPv6Address) else None
    return f"::ffff:{mapped}" if mapped is not None else str(ip)


def _embedded_ipv4(ip: IPv6Address) -> list[IPv4Address]:
    if ip.ipv4_mapped is not None:
        return [ip.ipv4_mapped]
    if ip in _NAT64:
        return [IPv4Address(int(ip) & 0xFFFFFFFF)]
    if ip.sixtofour is not None:
        return [ip.sixtofour]
    if ip.teredo is not None:
        return list(ip.teredo)  # (server, client): either must be acceptable
    return []


def parse_ip(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None


def bare(host: str) -> str:
    """``host`` without the trailing dot(s) of a fully qualified form: ``127.0.0.1.`` names
    the address 127.0.0.1."""
    return host.rstrip(".") or host


class GuardedResolver(AbstractResolver):
    """Resolves with ``inner`` (a :class:`~aiohttp.resolver.ThreadedResolver`, i.e. the system's
    getaddrinfo, by default) and returns only the addresses ``policy`` allows; when it allows
    none, raises :class:`SSRFRefused` for the first refused one."""

    def __init__(self, policy: AddressPolicy, inner: AbstractResolver | None = None) -> None:
        self.policy = policy
        self._inner = inner
        self._owns_inner = inner is None

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        if self._inner is None:  # created lazily: ThreadedResolver needs the running loop
            self._inner = ThreadedResolver()
        results = await self._inner.resolve(host, port, family=family)
        kept: list[ResolveResult] = []
        refused: list[SSRFRefused] = []
        for result in results:
            ip = parse_ip(result["host"])
            if ip is None:
                refused.append(SSRFRefused(host, result["host"],
                                           f"{host} resolves to {result['host']!r}, "
                                           "which is not an IP address"))
            elif (exc := self.policy.refuse(host, ip)) is not None:
                refused.append(exc)
            else:
                kept.append(result)
        if not kept:
            if refused:
                raise refused[0]
            raise OSError(None, f"DNS lookup of {host} returned no addresses")
        if refused:
            log.warning("webhook.addresses_refused", host=host,
                        refused=[exc.address for exc in refused],
                        kept=[result["host"] for result in kept])
        return kept

    async def close(self) -> None:
        if self._inner is not None and self._owns_inner:
            await self._inner.close()


def check_url(url: str, policy: AddressPolicy) -> None:
    """Refuse, before any connection, a scheme other than http/https, a URL without a host, one
    the API would not take as an endpoint's (``urls.endpoint_url_error``), a refused IP-literal
    host and legacy numeric IPv4 forms. Names are checked when resolved."""
    try:
        parsed = URL(url)
    except ValueError as err:
        raise SSRFRefused("", None, f"{url!r} is not a valid URL: {err}") from err
    if parsed.scheme not in SCHEMES:
        raise SSRFRefused(parsed.host or "", None,
                          f"{url!r} has the scheme {parsed.scheme or '(none)'!r}; "
                          "webhook URLs must use http or https")
    host = parsed.host
    if not host:
        raise SSRFRefused("", None, f"{url!r} has no host")
    if (error := urls.endpoint_url_error(url)) is not None:  # what the API would refuse too
        raise SSRFRefused(host, None, f"{url!r} is not a webhook URL: {error}")
    ip = parse_ip(bare(host))
    if ip is not None and (exc := policy.refuse(host, ip)) is not None:
        raise exc
    if ip is None and (legacy := _legacy_ipv4(bare(host))) is not None:
        # 2130706433, 0x7f.1, 127.1: getaddrinfo maps these onto an address (newer aiohttp
        # rejects them outright); refuse them here with the reason, never retry them
        raise policy.refuse(host, legacy) or SSRFRefused(
            host, str(legacy), f"{host} is a legacy numeric form of {legacy}; write {legacy}")


def _legacy_ipv4(host: str) -> IPv4Address | None:
    try:
        return IPv4Address(socket.inet_aton(host))
    except (OSError, ValueError):
        return None


async def system_resolve(host: str) -> list[str]:
    """The addresses ``host`` resolves to, by the system's getaddrinfo (in a thread)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


async def check_destination(url: str, policy: AddressPolicy, *,
                            resolve: HostResolver = system_resolve,
                            lookup_seconds: float = RESOLVE_TIMEOUT) -> None:
    """Refuse (:class:`SSRFRefused`) a URL that can only reach refused addresses: what
    :func:`check_url` refuses, and a host name all of whose addresses ``policy`` refuses
    (the first one gives the reason). A name that does not resolve within ``lookup_seconds``,
    or at all, passes: it is logged, and delivery checks it again when it resolves."""
    check_url(url, policy)
    host = URL(url).host or ""
    if parse_ip(bare(host)) is not None:
        return  # an allowed literal
    try:
        async with asyncio.timeout(lookup_seconds):
            found = await resolve(host)
    except (OSError, TimeoutError, UnicodeError) as err:
        log.info("webhook.endpoint_unresolved", host=host,
                 detail=f"{host} does not resolve ({str(err) or 'timed out'}); it is checked "
                        "again at delivery")
        return
    refused: list[SSRFRefused] = []
    for address in found:
        ip = parse_ip(address)
        if ip is None:
            refused.append(SSRFRefused(host, address, f"{host} resolves to {address!r}, "
                                                      "which is not an IP address"))
        elif (exc := policy.refuse(host, ip)) is None:
            return  # one allowed address is enough: delivery connects only to those
        else:
            refused.append(exc)
    if refused:
        raise refused[0]
    log.info("webhook.endpoint_unresolved", host=host,
             detail=f"{host} resolves to no address; it is checked again at delivery")
