"""One delivery attempt of one event to one endpoint: HTTP POST, or the log sink.

Only a 2xx answer is a success; redirects are not followed (a 3xx is a failure). Every attempt
returns an :class:`Attempt` saying what happened, for the log and for the retry decision.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import random
import time

import aiohttp
import structlog

from payflow import __version__
from payflow.config import EndpointConfig
from payflow.models import Event
from payflow.webhooks.signing import signature_header

log = structlog.get_logger("payflow.webhooks")

BODY_CAP = 1024  # bytes of a response body kept for the attempt record


def endpoint_id(endpoint: EndpointConfig) -> str:
    """A configured endpoint's id, stable across restarts and reorderings of the config."""
    return "ep_" + hashlib.sha256(endpoint.url.encode()).hexdigest()[:16]


def subscribed(endpoint: EndpointConfig, event_type: str) -> bool:
    return "*" in endpoint.enabled_events or event_type in endpoint.enabled_events


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Attempt:
    ok: bool
    status: int | None = None  # HTTP status, when there was an answer
    error: str | None = None  # what went wrong, when it did
    latency_ms: float = 0.0
    body: str = ""  # the start of the response body

    @property
    def reason(self) -> str:
        if self.ok:
            return "delivered"
        return self.error or f"HTTP {self.status}"


def encode_event(event: Event) -> bytes:
    return json.dumps(event.to_dict(), separators=(",", ":"), ensure_ascii=False).encode()


class HttpDelivery:
    """POSTs events over a shared aiohttp session (one connection pool for all senders)."""

    def __init__(self, session: aiohttp.ClientSession, *, timeout: float) -> None:
        self.session = session
        self.timeout = aiohttp.ClientTimeout(total=timeout)

    async def deliver(self, endpoint: EndpointConfig, event: Event) -> Attempt:
        body = encode_event(event)
        timestamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": f"PayFlow/{__version__}",
            "webhook-id": event.id,
            "webhook-timestamp": str(timestamp),
        }
        if endpoint.secret:
            headers["webhook-signature"] = signature_header(
                [endpoint.secret], event.id, timestamp, body
            )
        started = time.perf_counter()
        try:
            async with self.session.post(endpoint.url, data=body, headers=headers,
                                         allow_redirects=False, timeout=self.timeout) as resp:
                text = (await resp.content.read(BODY_CAP)).decode("utf-8", "replace")
                latency = (time.perf_counter() - started) * 1000
                ok = 200 <= resp.status < 300
                error = None if ok else f"HTTP {resp.status}"
                return Attempt(ok=ok, status=resp.status, error=error, latency_ms=latency,
                               body=text)
        except TimeoutError:
            error = f"timed out after {self.timeout.total} s"
        except aiohttp.ClientError as exc:
            error = f"{type(exc).__name__}: {exc}"
        except OSError as exc:
            error = f"{type(exc).__name__}: {exc}"
        return Attempt(ok=False, error=error, latency_ms=(time.perf_counter() - started) * 1000)


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
