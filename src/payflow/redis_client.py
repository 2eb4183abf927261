"""Redis clients from a URL: a single server, or the primary that Redis Sentinel names.

``redis://``, ``rediss://`` and ``unix://`` URLs go to :meth:`Redis.from_url`. A
``redis+sentinel://[[user]:password@]host1:port1[,host2:port2,...]/service_name[/db]`` URL
(optional query: ``sentinel_password``) gives a client on redis-py's
:class:`~redis.asyncio.sentinel.SentinelConnectionPool`: every (re)connection asks the sentinels
for the current primary, so after a failover the client reconnects to the promoted replica.
The user and password are those of the Redis servers; ``sentinel_password`` is the sentinels'.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool, SentinelManagedConnection
from redis.backoff import NoBackoff

from payflow.errors import ConfigError

SENTINEL_SCHEME = "redis+sentinel"
SENTINEL_FORMAT = ("redis+sentinel://[[user]:password@]host:port[,host:port...]/service_name[/db]"
                   "[?sentinel_password=...]")
DEFAULT_SENTINEL_PORT = 26379
_QUERY_KEYS = ("sentinel_password",)
_SERVICE = re.compile(r"[^\s/]+")
_HOST = re.compile(r"[A-Za-z0-9._-]+")


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class SentinelURL:
    sentinels: tuple[tuple[str, int], ...]
    service_name: str
    db: int = 0
    username: str | None = None
    password: str | None = dataclasses.field(default=None, repr=False)
    sentinel_password: str | None = dataclasses.field(default=None, repr=False)


def is_sentinel_url(url: str) -> bool:
    return url.partition("://")[0].lower() == SENTINEL_SCHEME


def describe(url: str) -> str:
    """``url`` for a log line or an error message: passwords replaced by ``***``."""
    from payflow._config_parse import mask_url

    return mask_url(url, lone_user_is_secret=True)


def parse_sentinel_url(url: str) -> SentinelURL:
    """The parts of a ``redis+sentinel://`` URL; :class:`ConfigError` (one line) if malformed."""

    def bad(reason: str) -> ConfigError:
        return ConfigError(f"bad Redis Sentinel URL {describe(url)!r}: {reason}; "
                           f"expected {SENTINEL_FORMAT}")

    if not is_sentinel_url(url):
        raise bad("the scheme is not redis+sentinel://")
    if any(char.isspace() for char in url):
        raise bad("it contains whitespace")
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise bad(str(exc)) from None
    if parts.fragment:
        raise bad("a '#' fragment is not allowed")
    userinfo, at, hosts = parts.netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    sentinels = tuple(_sentinel_address(item, bad) for item in hosts.split(","))
    path = parts.path.split("/")[1:]  # "/mymaster/0" -> ["mymaster", "0"]
    if path and path[-1] == "" and len(path) > 1:
        path.pop()  # a trailing slash
    if not path or not _SERVICE.fullmatch(unquote(path[0])):
        raise bad("no service name (the name of the primary in sentinel.conf) after the hosts")
    if len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise bad(f"expected /service_name or /service_name/db, got {parts.path!r}")
    query: dict[str, str] = {}
    try:
        pairs = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError:
        raise bad("cannot parse the query after '?'") from None
    for key, value in pairs:
        if key not in _QUERY_KEYS:
            raise bad(f"unknown query parameter {key!r} (supported: {', '.join(_QUERY_KEYS)})")
        query[key] = value
    return SentinelURL(sentinels=sentinels, service_name=unquote(path[0]),
                       db=int(path[1]) if len(path) == 2 else 0, username=username,
                       password=password, sentinel_password=query.get("sentinel_password"))


def _sentinel_address(item: str, bad: Callable[[str], ConfigError]) -> tuple[str, int]:
    if item.startswith("["):  # [IPv6]:port
        host, bracket, rest = item[1:].partition("]")
        if not bracket or not host or (rest and not rest.startswith(":")):
            raise bad(f"bad sentinel address {item!r}")
        port_text = rest[1:] if rest else ""
    else:
        host, _, port_text = item.partition(":")
        if not _HOST.fullmatch(host):
            raise bad(f"bad sentinel address {item!r}: expected host:port" if item
                      else "an empty sentinel address (no host, or a stray ',')")
    if item.endswith(":"):
        raise bad(f"bad sentinel address {item!r}: empty port")
    if not port_text:
        return host, DEFAULT_SENTINEL_PORT
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise bad(f"bad port in sentinel address {item!r}: expected 1 to 65535")
    return host, int(port_text)


class PrimaryConnection(SentinelManagedConnection):
    """A connection to the primary that asks the sentinels for its address on every reconnect.

    redis-py's own (8.1) reconnects a dropped connection in ``send_packed_command`` through
    ``connect_check_health``, which skips the sentinel lookup that ``connect`` does: a
    single-connection client (a consumer) would then retry the dead primary's address forever
    (redis-py issue #3874). Going through ``connect`` instead looks the primary up again."""

    async def send_packed_command(self, command: bytes | str | Iterable[bytes],
                                  check_health: bool = True) -> None:
        if not self.is_connected:
            await self.connect()  # type: ignore[no-untyped-call]
        await super().send_packed_command(command, check_health)


class SentinelRedis(Redis):
    """A client of the primary a :class:`Sentinel` names. It owns its connection pool and its
    Sentinel (whose connections to the sentinels :meth:`aclose` closes too)."""

    def __init__(self, sentinel: Sentinel, pool: SentinelConnectionPool, *,
                 single_connection: bool) -> None:
        super().__init__(connection_pool=pool, single_connection_client=single_connection)
        self.auto_close_connection_pool = True  # as Redis.from_pool, which master_for uses
        self.sentinel_manager = sentinel

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        try:
            await super().aclose(close_connection_pool)
        finally:
            await self.sentinel_manager.aclose()


def connect(url: str, *, single_connection: bool, socket_timeout: float | None,
            connect_timeout: float, retry: Retry | None = None,
            blocking_pool: int | None = None) -> Redis:
    """A client for ``url`` (see the module docstring). ``single_connection``: the client owns
    one connection (a queue consumer, whose BLMOVE blocks it) rather than a pool. Nothing is
    connected until the first command. ``blocking_pool``: a pool of that many connections where
    a command waits for a free one instead of failing (many concurrent HTTP requests)."""
    node: dict[str, Any] = {"socket_timeout": socket_timeout,
                            "socket_connect_timeout": connect_timeout}
    if retry is not None:
        node["retry"] = retry
    if not is_sentinel_url(url):
        if blocking_pool is not None:  # wait for a free connection rather than fail
            blocking = BlockingConnectionPool.from_url(url, max_connections=blocking_pool,
                                                   timeout=None, **node)
            return Redis(connection_pool=blocking)
        return Redis.from_url(url, single_connection_client=single_connection, **node)
    spec = parse_sentinel_url(url)
    # The sentinels are asked briefly, and a sentinel that does not answer is skipped at once
    # for the next one (redis-py's default would retry it with backoff first).
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        list(spec.sentinels),
        sentinel_kwargs={"socket_timeout": connect_timeout,
                         "socket_connect_timeout": connect_timeout,
                         "password": spec.sentinel_password, "retry": Retry(NoBackoff(), 0)},
        **node)
    # Sentinel.master_for would make the same pool, but its client can only be a pooled one:
    # its keyword arguments go to the pool (and the connections), so it cannot make a client
    # that owns a single connection. The pool's connections look the primary up on connect
    # and drop a connection whose server answers READONLY (a demoted primary).
    pool = SentinelConnectionPool(  # type: ignore[no-untyped-call]
        spec.service_name, sentinel, is_master=True, connection_class=PrimaryConnection,
        db=spec.db, username=spec.username, password=spec.password, **node)
    return SentinelRedis(sentinel, pool, single_connection=single_connection)
