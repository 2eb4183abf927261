"""Value rules for :mod:`payflow.config`: how one setting is read and what it allows.

A :class:`Rule` turns a value from TOML or a command-line override (:meth:`Rule.native`) or
from an environment variable (:meth:`Rule.text`, always a string) into the field's Python value,
or raises :class:`Invalid` with the "expected ..., got ..." part of the error message. The
caller adds the ``[section] key`` in front and the ``(from <source>)`` at the end.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Callable, Collection, Mapping
from urllib.parse import urlsplit

from payflow.urls import EXPECTED as ENDPOINT_URL_EXPECTED
from payflow.urls import is_endpoint_url

_MAX_SHOWN = 80
_INT_TEXT = re.compile(r"[+-]?[0-9]+")
_TRUE = frozenset({"true", "1", "yes"})
_FALSE = frozenset({"false", "0", "no"})


class Invalid(Exception):
    """A rejected value. ``detail`` reads "expected ..., got ..."; ``where`` extends the key
    for a part of a value (``[1].url`` of ``endpoints``)."""

    def __init__(self, detail: str, where: str = "") -> None:
        super().__init__(detail)
        self.detail = detail
        self.where = where


def show(value: object) -> str:
    """``value`` for an error message: one line, TOML-ish booleans, long values shortened."""
    if isinstance(value, bool):
        return "true" if value else "false"
    text = repr(value)
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 3] + "..."


def number(value: float) -> str:
    """A range bound for a message: ``30`` rather than ``30.0``, ``0.05`` as is."""
    return str(int(value)) if float(value).is_integer() else repr(value)


def bad(expected: str, got: object, where: str = "") -> Invalid:
    return Invalid(f"expected {expected}, got {show(got)}", where)


class Rule:
    """How one setting is converted and checked; ``expected`` describes what is allowed."""

    expected: str = "a value"

    def native(self, value: object) -> object:
        """Convert a TOML / override value (``str``, ``int``, ``float``, ``bool``, lists...)."""
        raise NotImplementedError

    def text(self, value: str) -> object:
        """Convert an environment variable's string (same as :meth:`native` for strings)."""
        return self.native(value)


class IntRule(Rule):
    def __init__(self, low: int, high: int) -> None:
        self.low, self.high = low, high
        self.expected = f"an integer from {low} to {high}"

    def native(self, value: object) -> object:
        # bool is an int subclass: `batch_size = true` must not read as 1.
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad(self.expected, value)
        if not self.low <= value <= self.high:
            raise bad(self.expected, value)
        return value

    def text(self, value: str) -> object:
        if not _INT_TEXT.fullmatch(value.strip()) or not self.low <= int(value) <= self.high:
            raise bad(self.expected, value)
        return int(value)


class FloatRule(Rule):
    def __init__(self, low: float, high: float) -> None:
        self.low, self.high = low, high
        self.expected = f"a number from {number(low)} to {number(high)}"

    def native(self, value: object) -> object:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise bad(self.expected, value)
        # The comparison is False for NaN, so NaN is rejected here too.
        if not self.low <= value <= self.high:
            raise bad(self.expected, value)
        return float(value)

    def text(self, value: str) -> object:
        try:
            parsed = float(value)
        except ValueError:
            raise bad(self.expected, value) from None
        if not self.low <= parsed <= self.high:
            raise bad(self.expected, value)
        return parsed


class BoolRule(Rule):
    expected = "true or false (environment: true/false, 1/0, yes/no)"

    def native(self, value: object) -> object:
        if not isinstance(value, bool):
            raise bad(self.expected, value)
        return value

    def text(self, value: str) -> object:
        word = value.strip().lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
        raise bad(self.expected, value)


class AutoBoolRule(BoolRule):
    """true, false, or "auto" (``None``: decided at start from other settings)."""

    expected = 'true, false or "auto" (environment: true/false, 1/0, yes/no, auto)'

    def native(self, value: object) -> object:
        if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
            return None
        return super().native(value)

    def text(self, value: str) -> object:
        return None if value.strip().lower() == "auto" else super().text(value)


class StrRule(Rule):
    """A string accepted by ``check``; ``normalize`` (e.g. ``str.lower``) is applied first."""

    def __init__(self, expected: str, check: Callable[[str], bool],
                 normalize: Callable[[str], str] | None = None) -> None:
        self.expected = expected
        self.check = check
        self.normalize = normalize

    def native(self, value: object) -> object:
        if not isinstance(value, str):
            raise bad(self.expected, value)
        normal = self.normalize(value) if self.normalize else value
        if not self.check(normal):
            raise bad(self.expected, value)
        return normal


def choice(options: Collection[str]) -> StrRule:
    """One of ``options``, case-insensitive, stored lower-case."""
    expected = "one of " + ", ".join(repr(option) for option in options)
    return StrRule(expected, lambda value: value in options, str.lower)


class StrTupleRule(Rule):
    """A list of strings, each accepted by ``check``; from the environment, comma-separated
    with blank entries dropped. ``item`` describes one entry ("an IP network")."""

    def __init__(self, expected: str, item: str, check: Callable[[str], bool]) -> None:
        self.expected = expected
        self.item = item
        self.check = check

    def native(self, value: object) -> object:
        if not isinstance(value, list | tuple):
            raise bad(self.expected, value)
        for index, entry in enumerate(value):
            if not isinstance(entry, str) or not self.check(entry):
                raise bad(self.item, entry, f"[{index}]")
        return tuple(value)

    def text(self, value: str) -> object:
        return self.native([entry.strip() for entry in value.split(",") if entry.strip()])


class FloatTupleRule(Rule):
    """A non-empty list of numbers from ``low`` to ``high``; from the environment,
    comma-separated."""

    def __init__(self, low: float, high: float, *, most: int) -> None:
        self.low, self.high, self.most = low, high, most
        self.expected = (f"a list of 1 to {most} numbers, each from {number(low)} to "
                         f"{number(high)}")

    def native(self, value: object) -> object:
        if not isinstance(value, list | tuple) or not 1 <= len(value) <= self.most:
            raise bad(self.expected, value)
        for index, entry in enumerate(value):
            ok = isinstance(entry, int | float) and not isinstance(entry, bool)
            if not ok or not self.low <= entry <= self.high:
                raise bad(f"a number from {number(self.low)} to {number(self.high)}", entry,
                          f"[{index}]")
        return tuple(float(entry) for entry in value)

    def text(self, value: str) -> object:
        entries: list[object] = []
        for entry in (e.strip() for e in value.split(",") if e.strip()):
            try:
                entries.append(float(entry))
            except ValueError:
                entries.append(entry)
        return self.native(entries)


# --- checks ---------------------------------------------------------------------------------


_DAEMON_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


def is_daemon_id(value: str) -> bool:
    """Empty (generate one) or a short name safe inside Redis key names."""
    return value == "" or bool(_DAEMON_ID.fullmatch(value))


def is_token(value: str) -> bool:
    """Non-empty, without whitespace."""
    return bool(value) and not any(char.isspace() for char in value)


def is_queue_name(value: str) -> bool:
    """Non-empty, no whitespace, no braces (the queue code adds its own ``{name}`` hash tag)."""
    return is_token(value) and "{" not in value and "}" not in value


def is_network(value: str) -> bool:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        return False
    return True


def url_scheme_ok(value: str, schemes: Collection[str], *, need_host: Collection[str] = ()) -> bool:
    """``value`` parses as a URL whose scheme is in ``schemes`` (and, for the schemes in
    ``need_host``, has a host), with a valid port if it names one."""
    if any(char.isspace() for char in value):
        return False
    try:
        parts = urlsplit(value)
        _ = parts.port  # raises ValueError for a bad port
    except ValueError:
        return False
    if parts.scheme.lower() not in schemes:
        return False
    return parts.scheme.lower() not in need_host or bool(parts.hostname)


def is_redis_url(value: str) -> bool:
    """``embedded``, or a redis:// / rediss:// URL with a host, or a unix:// URL with a path, or
    a redis+sentinel:// URL naming sentinel hosts and a service."""
    if value == "embedded":
        return True
    if value.partition("://")[0].lower() == "redis+sentinel":
        from payflow.errors import ConfigError
        from payflow.redis_client import parse_sentinel_url

        try:
            parse_sentinel_url(value)
        except ConfigError:
            return False
        return True
    if not url_scheme_ok(value, ("redis", "rediss", "unix"), need_host=("redis", "rediss")):
        return False
    parts = urlsplit(value)
    return parts.scheme.lower() != "unix" or bool(parts.path)


def mask_url(url: str, *, lone_user_is_secret: bool = False) -> str:
    """``url`` with the password of its user info and any ``password=`` or
    ``sentinel_password=`` query value replaced by ``***``. With ``lone_user_is_secret`` (Redis,
    whose old URLs were ``redis://pw@host``), user info without a colon is masked too."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "***"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user, colon, _password = userinfo.partition(":")
        if colon:
            userinfo = f"{user}:***"
        elif lone_user_is_secret and userinfo:
            userinfo = "***"
        netloc = f"{userinfo}@{hostport}"
    query = re.sub(r"(?i)((?:^|&)(?:sentinel_)?password=)[^&]*", r"\1***", parts.query)
    if (netloc, query) == (parts.netloc, parts.query):
        return url  # geturl() would turn "memory://" into "memory:"
    return parts._replace(netloc=netloc, query=query).geturl()


# --- webhook endpoints ----------------------------------------------------------------------

ENDPOINT_URL = ENDPOINT_URL_EXPECTED
ENDPOINT_KEYS = ("url", "secret", "enabled_events", "description")
EndpointBuilder = Callable[[str, str | None, tuple[str, ...], str], object]


class EndpointsRule(Rule):
    """``[[webhooks.endpoints]]`` tables (or, from the environment, comma-separated URLs);
    ``build(url, secret, enabled_events, description)`` makes each endpoint object."""

    expected = "a list of [[webhooks.endpoints]] tables"

    def __init__(self, build: EndpointBuilder) -> None:
        self.build = build

    def native(self, value: object) -> object:
        if not isinstance(value, list | tuple):
            raise bad(self.expected, value)
        return tuple(self._one(index, item) for index, item in enumerate(value))

    def text(self, value: str) -> object:
        urls = [url.strip() for url in value.split(",") if url.strip()]
        for index, url in enumerate(urls):
            if not is_endpoint_url(url):
                raise bad(ENDPOINT_URL, url, f"[{index}].url")
        return tuple(self.build(url, None, ("*",), "") for url in urls)

    def _one(self, index: int, item: object) -> object:
        at = f"[{index}]"
        if isinstance(item, str):  # a bare URL, as a command-line override may give
            item = {"url": item}
        elif dataclasses.is_dataclass(item) and not isinstance(item, type):
            item = {key: getattr(item, key) for key in ENDPOINT_KEYS}
        if not isinstance(item, Mapping):
            raise bad("a table with a url", item, at)
        for key in item:
            if key not in ENDPOINT_KEYS:
                raise Invalid(f"unknown key, expected one of {', '.join(ENDPOINT_KEYS)}",
                              f"{at}.{key}")
        if "url" not in item:
            raise Invalid(f"missing, expected {ENDPOINT_URL}", f"{at}.url")
        url = item["url"]
        if not isinstance(url, str) or not is_endpoint_url(url):
            raise bad(ENDPOINT_URL, url, f"{at}.url")
        secret = item.get("secret")
        if secret is not None and (not isinstance(secret, str) or not secret):
            raise bad("a non-empty string (the HMAC signing secret)", secret, f"{at}.secret")
        events = item.get("enabled_events", ("*",))
        if (not isinstance(events, list | tuple) or not events
                or not all(isinstance(event, str) and is_token(event) for event in events)):
            raise bad('a non-empty list of event types, or ["*"] for all', events,
                      f"{at}.enabled_events")
        description = item.get("description", "")
        if not isinstance(description, str):
            raise bad("a string", description, f"{at}.description")
        return self.build(url, secret, tuple(events), description)


_KEY_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
_KEY_SECRET = re.compile(r"[\x21-\x2b\x2d-\x7e]{16,256}")  # printable, no space or comma
API_KEY_SECRET = "16 to 256 printable characters without spaces or commas"


class ApiKeysRule(Rule):
    """``[[api.keys]]`` tables with ``name`` and ``secret`` (or, from the environment,
    ``PAYFLOW_API_KEYS="name:secret,name2:secret2"``); ``build(name, secret)`` makes each."""

    expected = "a list of [[api.keys]] tables with name and secret"

    def __init__(self, build: Callable[[str, str], object]) -> None:
        self.build = build

    def native(self, value: object) -> object:
        if not isinstance(value, list | tuple):
            raise bad(self.expected, value)
        names: set[str] = set()
        keys = []
        for index, item in enumerate(value):
            at = f"[{index}]"
            if dataclasses.is_dataclass(item) and not isinstance(item, type):
                item = dataclasses.asdict(item)
            if not isinstance(item, Mapping):
                raise bad("a table with name and secret", item, at)
            for key in item:
                if key not in ("name", "secret"):
                    raise Invalid("unknown key, expected one of name, secret", f"{at}.{key}")
            name, secret = item.get("name"), item.get("secret")
            if not isinstance(name, str) or not _KEY_NAME.fullmatch(name):
                raise bad("1 to 64 letters, digits, '.', '_' or '-'", name, f"{at}.name")
            if name in names:
                raise bad("a name used by no other key", name, f"{at}.name")
            if not isinstance(secret, str) or not _KEY_SECRET.fullmatch(secret):
                raise Invalid(f"expected {API_KEY_SECRET} (value hidden)", f"{at}.secret")
            names.add(name)
            keys.append(self.build(name, secret))
        return tuple(keys)

    def text(self, value: str) -> object:
        items: list[object] = []
        for index, entry in enumerate(e.strip() for e in value.split(",") if e.strip()):
            name, sep, secret = entry.partition(":")
            if not sep:
                raise Invalid("expected name:secret (value hidden)", f"[{index}]")
            items.append({"name": name, "secret": secret})
        return self.native(items)
