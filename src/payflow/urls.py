"""What a webhook endpoint's URL may be: the one check the API, the configuration file and the
SSRF guard share (where it may lead is the guard's own business: ``webhooks.ssrf``)."""

from __future__ import annotations

from typing import Final
from urllib.parse import urlsplit

SCHEMES: Final = ("http", "https")
MAX_LENGTH: Final = 2048
EXPECTED: Final = ("an http:// or https:// URL with a host (and a port from 1 to 65535, if "
                   f"any), at most {MAX_LENGTH} characters")


def endpoint_url_error(url: str) -> str | None:
    """Why ``url`` cannot be an endpoint's URL (what it should be, :data:`EXPECTED`), or None."""
    if len(url) > MAX_LENGTH:
        return f"longer than {MAX_LENGTH} characters"
    if any(char.isspace() for char in url):
        return "it contains whitespace"
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError when out of range or not a number
    except ValueError as exc:
        return f"not a valid URL: {exc}"
    if parts.scheme.lower() not in SCHEMES:
        return f"the scheme {parts.scheme or '(none)'!r} is not http or https"
    if not parts.hostname:
        return "it has no host"
    if port == 0:
        return "port 0"
    return None


def is_endpoint_url(url: str) -> bool:
    return endpoint_url_error(url) is None
