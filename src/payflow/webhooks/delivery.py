"""One delivery attempt of one event to one endpoint: HTTP POST, or the log sink.

Only a 2xx answer is a success; redirects are not followed (a 3xx is a failure); ``410 Gone``
means the endpoint is gone; ``429``/``503`` may say when to come back (``Retry-After``). The
SSRF guard refuses private and other internal addresses before any byte is sent. Every attempt
returns an :class:`Attempt` saying what happened.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import re
import time
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Final

import orjson
import structlog

from payflow import __version__
from payflow.models import Event, WebhookEndpoint
from payflow.webhooks.signing import signature_header
from payflow.webhooks.ssrf import AddressPolicy, SSRFRefused, check_url
from payflow.webhooks.transport import Transport, TransportError

log = structlog.get_logger("payflow.webhooks")

BODY_CAP = 1024  # bytes of a response body kept for the attempt record


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Attempt:
    ok: bool
    status: int | None = None  # HTTP status, when there was an answer
    error: str | None = None  # what went wrong: "HTTP 500", "timeout: …", "ssrf_refused: …"
    latency_ms: float = 0.0
    body: str = ""  # the start of the response body
    retry_after: float | None = None  # seconds, from a 429/503 answer's Retry-After
    refused: bool = False  # the SSRF guard refused the address: retrying cannot help

    @property
    def gone(self) -> bool:
        return self.status == 410

    @property
    def reason(self) -> str:
        return "delivered" if self.ok else (self.error or f"HTTP {self.status}")


def encode_event(event: Event) -> bytes:
    """The delivery's body: the event as compact UTF-8 JSON (what is signed is what is sent)."""
    body = event.to_dict()
    try:
        return orjson.dumps(body)
    except TypeError:  # orjson.JSONEncodeError: an integer past 64 bits, say
        return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date); None if absent
    or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    reference = datetime.fromtimestamp(now if now is not None else time.time(), UTC)
    return max(0.0, (when - reference).total_seconds())


class HttpDelivery:
    """POSTs events over one :class:`~payflow.webhooks.transport.Transport` (one pool of
    keep-alive connections for all senders)."""

    def __init__(self, transport: Transport, *, timeout: float, policy: AddressPolicy) -> None:
        self.transport = transport
        self.timeout = timeout
        self.policy = policy
        self._checked: dict[str, SSRFRefused | None] = {}  # url -> check_url's verdict

    def _check(self, url: str) -> None:
        """:func:`check_url`, remembered per URL (the policy is fixed; names are checked when
        they are resolved, at every connection)."""
        if url not in self._checked:
            if len(self._checked) >= 10_000:
                self._checked.clear()
            try:
                check_url(url, self.policy)
                self._checked[url] = None
            except SSRFRefused as exc:
                self._checked[url] = exc
        if (refused := self._checked[url]) is not None:  # a fresh one: no traceback piling up
            raise SSRFRefused(refused.host, refused.address, refused.reason)

    async def deliver(self, endpoint: WebhookEndpoint, event: Event, *,
                      traceparent: str | None = None) -> Attempt:
        """POST ``event`` to ``endpoint``; ``traceparent``: the W3C header naming the attempt's
        span (when tracing is on)."""
        body = encode_event(event)
        timestamp = int(time.time())
        lines = [_FIXED_HEADERS, f"webhook-id: {event.id}\r\nwebhook-timestamp: {timestamp}\r\n"]
        if secrets := endpoint.active_secrets():
            lines.append(f"webhook-signature: "
                         f"{signature_header(secrets, event.id, timestamp, body)}\r\n")
        if traceparent is not None:
            lines.append(f"traceparent: {traceparent}\r\n")
        headers = "".join(lines)
        started = time.perf_counter()
        if not _EVENT_ID.fullmatch(event.id):  # the other values are ours, or checked before
            return Attempt(ok=False, error=f"bad_request: the event id {event.id!r} cannot be "
                                           "sent in a header", latency_ms=_since(started))
        try:
            self._check(endpoint.url)
            async with asyncio.timeout(self.timeout):
                answer = await self.transport.post(endpoint.url, headers.encode("ascii"), body,
                                                   cap=BODY_CAP)
        except SSRFRefused as exc:
            return self._refused(exc, started)
        except TimeoutError:
            error = f"timeout: no answer within {self.timeout:g} s"
        except TransportError as exc:
            error = f"{exc.kind}: {exc}"
        except OSError as exc:  # the name did not resolve
            error = f"connection_failed: {exc.strerror or exc}"
        else:
            status = answer.status
            ok = 200 <= status < 300
            retry_after = None
            if status in (429, 503):
                retry_after = parse_retry_after(answer.retry_after)
            return Attempt(ok=ok, status=status, error=None if ok else f"HTTP {status}",
                           latency_ms=_since(started),
                           body=answer.body.decode("utf-8", "replace"), retry_after=retry_after)
        return Attempt(ok=False, error=error, latency_ms=_since(started))

    @staticmethod
    def _refused(exc: SSRFRefused, started: float) -> Attempt:
        return Attempt(ok=False, error=f"ssrf_refused: {exc}", refused=True,
                       latency_ms=_since(started))

    async def aclose(self) -> None:
        """Close every connection (for ``contextlib.aclosing``)."""
        await self.transport.close()


_FIXED_HEADERS: Final = (f"Content-Type: application/json\r\n"
                         f"User-Agent: PayFlow/{__version__}\r\n")
_EVENT_ID: Final = re.compile(r"[\x21-\x7e]+")  # what a header value can carry as it is


def _since(started: float) -> float:
    return (time.perf_counter() - started) * 1000


class LogSink:
    """The seed's simulated delivery: the event is "delivered" to the log; with a failure rate
    it fails at random, which drives the retry path in demos."""

    def __init__(self, *, failure_rate: float = 0.0, rng: random.Random | None = None) -> None:
        self.failure_rate = failure_rate
        self.rng = rng or random.Random()

    async def deliver(self, event: Event) -> Attempt:
        await asyncio.sleep(0)
        if self.failure_rate and self.rng.random() < self.failure_rate:
            return Attempt(ok=False, error="simulated failure")
        return Attempt(ok=True)
