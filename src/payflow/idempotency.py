"""The rules of ``Idempotency-Key`` (draft-ietf-httpapi-idempotency-key-header) over Redis, for
every ``POST /v1/...`` that does not bind its key in the store itself; the HTTP side (the
header, the request's fingerprint, rendering) is :mod:`payflow.web.idempotency`.

A request's key, scoped to its API key (:func:`scoped_key`), is locked while the request runs
(``SET NX PX``, ``lock_seconds`` at most, so that a crashed daemon does not block the key for
ever), then its outcome is kept under ``payflow:idempotency:<api key name>:<sha256(key)>`` for
``ttl_seconds`` (so every daemon sees it) and replayed to a retry with the same key and the same
request fingerprint (:func:`fingerprint`: method, path with query, body). :meth:`begin` answers
:class:`Run` (the request runs; :meth:`finish` afterwards), or the kept :class:`Answer` /
:class:`ProblemAnswer` to replay; or raises :class:`KeyReused` (another request: 422),
:class:`KeyInFlight` (the first still runs: 409) or :class:`IdempotencyUnavailable` (Redis does
not answer: 503, the request must not run unprotected). Kept: answers below 400 and 404/409
(the outcome of an executed request), never a secret shown once. Not kept: other 4xx
(validation, "stores nothing"), 5xx (retryable) and exceptions: the key is released and a
retry runs again.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import secrets
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, Final

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from payflow.errors import KeyInFlight, KeyReused, PayFlowError

log = structlog.get_logger("payflow.idempotency")

KEY_PREFIX: Final = "payflow:idempotency:"
MAX_KEY_LENGTH: Final = 255  # characters of an Idempotency-Key
LOCK_SECONDS: Final = 60.0  # a request's lock on its key, at most (a crashed daemon's expires)
REDIS_ERRORS: Final = (RedisError, OSError, TimeoutError)
REDACTED: Final = "(shown once, in the first answer; rotate the secret for a new one)"
_STORED_ERRORS: Final = frozenset({404, 409})
_NOT_STORED_HEADERS: Final = frozenset({"content-length", "content-type", "transfer-encoding",
                                        "connection", "date", "server", "set-cookie",
                                        "request-id"})
# KEYS[1]: the key; ARGV[1]: our in-flight value; ARGV[2]: the outcome ('' = release), ARGV[3]:
# its TTL in ms. Only while the key is still ours (our lock may have expired and been retaken).
_FINISH: Final = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] == '' then redis.call('DEL', KEYS[1])
else redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) end
return 1
"""


class IdempotencyUnavailable(PayFlowError):
    """Redis does not answer: the request was not run (it must not run unprotected)."""


@dataclass(frozen=True)
class Answer:
    """An answer as it is kept and replayed. ``body`` None: it cannot be kept (streamed)."""

    status: int
    body: bytes | None
    content_type: str | None
    headers: list[tuple[str, str]]


@dataclass(frozen=True)
class ProblemAnswer:
    """A raised problem as it is kept and replayed: ``members``, those of its body, are kept but
    ``type`` and ``request_id`` (a replay has its own)."""

    status: int
    slug: str
    members: dict[str, Any]
    headers: dict[str, str]


@dataclass(frozen=True)
class Run:
    """The key is locked for this request: run it, then :meth:`IdempotencyKeys.finish`."""

    redis_key: str
    lock: str
    fp: str


def scoped_key(api_key_name: str, key: str) -> str:
    """``key`` as it is bound: scoped to the API key that sent it, hashed."""
    return f"{api_key_name}:{_sha256(key.encode())}"


def fingerprint(method: str, target: str, body: bytes) -> str:
    """What makes a retry the same request: its method, path with query (``target``), body."""
    return _sha256(b"%s\n%s\n%s" % (method.encode(), target.encode(), body))


class IdempotencyKeys:
    """The Idempotency-Key records in ``redis``."""

    def __init__(self, redis: Redis, *, ttl_seconds: float,
                 lock_seconds: float = LOCK_SECONDS) -> None:
        self._redis = redis
        self._ttl_ms = max(1, int(ttl_seconds * 1000))
        self._lock_ms = max(1, int(lock_seconds * 1000))
        self._finish_script = redis.register_script(_FINISH)
        self._background: set[asyncio.Future[None]] = set()

    async def begin(self, key: str, fp: str) -> Run | Answer | ProblemAnswer:
        """Lock the scoped ``key`` for the request of fingerprint ``fp`` (:class:`Run`), or the
        answer kept for it; :class:`KeyReused`, :class:`KeyInFlight` or
        :class:`IdempotencyUnavailable` otherwise."""
        redis_key = KEY_PREFIX + key
        lock = json.dumps({"state": "in_flight", "fp": fp, "token": secrets.token_hex(16)})
        for _ in range(2):  # the key may expire between SET NX and GET: then try once more
            try:
                acquired = await self._redis.set(redis_key, lock, nx=True, px=self._lock_ms)
                stored = None if acquired else await self._redis.get(redis_key)
            except REDIS_ERRORS as exc:
                log.warning("idempotency.redis_error", error_type=type(exc).__name__,
                            error=str(exc))
                # The SET NX may still happen when a stalled Redis resumes: take that lock
                # back then, so the key is not locked for a request that never ran.
                self._later(self._finish(redis_key, lock, None, attempts=20))
                raise IdempotencyUnavailable("The Idempotency-Key store does not answer.") from None
            if acquired:
                return Run(redis_key, lock, fp)
            if stored is not None:
                return _replay(json.loads(stored), fp)
        raise KeyInFlight()

    async def finish(self, run: Run, outcome: Answer | ProblemAnswer | None) -> None:
        """Keep ``outcome`` for replays when it is the outcome of an executed request; else
        (None, an answer not kept) release the key so that a retry runs again. A failure here
        must not hide the answer: it is logged, and the lock expires on its own."""
        await self._finish(run.redis_key, run.lock, _record(run.fp, outcome))

    async def close(self) -> None:
        """Cancel the releases still being tried in the background (their locks expire)."""
        tasks = list(self._background)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _later(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _finish(self, redis_key: str, lock: str, outcome: dict[str, Any] | None, *,
                      attempts: int = 1) -> None:
        """Store ``outcome`` (None: release the key), trying ``attempts`` times a second
        apart."""
        value = "" if outcome is None else json.dumps(outcome, separators=(",", ":"))
        for attempt in range(attempts):
            try:
                done = await self._finish_script(keys=[redis_key], args=[lock, value,
                                                                         self._ttl_ms])
                if done or attempts == 1:  # several: the SET NX may not have landed yet
                    return
            except REDIS_ERRORS as exc:
                if attempt + 1 == attempts:
                    log.warning("idempotency.finish_failed", error_type=type(exc).__name__,
                                error=str(exc), stored=outcome is not None)
                    return
            await asyncio.sleep(1.0)


def _replay(stored: dict[str, Any], fp: str) -> Answer | ProblemAnswer:
    if stored.get("fp") != fp:
        raise KeyReused()
    if stored.get("state") != "done":
        raise KeyInFlight()
    log.info("idempotency.replayed", status=stored.get("status"))
    if (p := stored.get("problem")) is not None:
        members = {k: v for k, v in p.items() if k not in ("slug", "headers")}
        return ProblemAnswer(p["status"], p["slug"], members, p["headers"])
    return Answer(stored["status"], base64.b64decode(stored["body"]), stored["content_type"],
                  [(k, v) for k, v in stored["headers"]])


def _record(fp: str, outcome: Answer | ProblemAnswer | None) -> dict[str, Any] | None:
    """What Redis keeps of ``outcome``; None: nothing (the key is released)."""
    if outcome is None or (outcome.status >= 400 and outcome.status not in _STORED_ERRORS):
        return None
    if isinstance(outcome, ProblemAnswer):
        return {"state": "done", "fp": fp, "status": outcome.status,
                "problem": {**{k: v for k, v in outcome.members.items()
                               if k not in ("type", "request_id")},
                            "slug": outcome.slug, "headers": outcome.headers}}
    if outcome.body is None:  # streamed: a retry runs again
        log.warning("idempotency.not_storable", status=outcome.status)
        return None
    return {"state": "done", "fp": fp, "status": outcome.status,
            "body": base64.b64encode(_redacted(outcome.body)).decode("ascii"),
            "content_type": outcome.content_type,
            "headers": [[k, v] for k, v in outcome.headers
                        if k.lower() not in _NOT_STORED_HEADERS]}


def _redacted(body: bytes) -> bytes:
    """A stored answer never keeps a secret (shown once: an endpoint's signing secret): a
    replay says where it went instead."""
    if b'"secret"' not in body:
        return body
    try:
        data = json.loads(body)
    except ValueError:
        return body
    if isinstance(data, dict) and isinstance(data.get("secret"), str):
        data["secret"] = REDACTED
        return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()
    return body


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
