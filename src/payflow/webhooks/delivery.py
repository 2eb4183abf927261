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
import time
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import aiohttp
import orjson
import structlog

from payflow import __version__
from payflow.models import Event, WebhookEndpoint
from payflow.webhooks.signing import signature_header
from payflow.webhooks.ssrf import AddressPolicy, SSRFRefused, check_url, refusal_in

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
    """POSTs events over a shared aiohttp session (one connection pool for all senders)."""

    def __init__(self, session: aiohttp.ClientSession, *, timeout: float,
                 policy: AddressPolicy) -> None:
        self.session = session
        self.timeout = aiohttp.ClientTimeout(total=timeout)
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
        headers = {
            "Content-Type": "application/json",
            "User-Agent": f"PayFlow/{__version__}",
            "webhook-id": event.id,
            "webhook-timestamp": str(timestamp),
        }
        if secrets := endpoint.active_secrets():
            headers["webhook-signature"] = signature_header(secrets, event.id, timestamp, body)
        if traceparent is not None:
            headers["traceparent"] = traceparent
        started = time.perf_counter()
        try:
            self._check(endpoint.url)
            async with self.session.post(endpoint.url, data=body, headers=headers,
                                         allow_redirects=False, timeout=self.timeout) as resp:
                text = (await resp.content.read(BODY_CAP)).decode("utf-8", "replace")
                ok = 200 <= resp.status < 300
                retry_after = None
                if resp.status in (429, 503):
                    retry_after = parse_retry_after(resp.headers.get("Retry-After"))
                error = None if ok else f"HTTP {resp.status}"
                return Attempt(ok=ok, status=resp.status, error=error, latency_ms=_since(started),
                               body=text, retry_after=retry_after)
        except SSRFRefused as exc:
            return self._refused(exc, started)
        except TimeoutError:
            error = f"timeout: no answer within {self.timeout.total:g} s"
        except (aiohttp.ClientError, OSError) as exc:
            if (refusal := refusal_in(exc)) is not None:
                return self._refused(refusal, started)
            error = f"{_error_class(exc)}: {exc}"
        return Attempt(ok=False, error=error, latency_ms=_since(started))

    @staticmethod
    def _refused(exc: SSRFRefused, started: float) -> Attempt:
        return Attempt(ok=False, error=f"ssrf_refused: {exc}", refused=True,
                       latency_ms=_since(started))


def _since(started: float) -> float:
    return (time.perf_counter() - started) * 1000


def _error_class(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "connection_closed"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return "connection_failed"
    if isinstance(exc, aiohttp.ClientPayloadError | aiohttp.ClientResponseError):
        return "bad_response"
    return type(exc).__name__


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
