"""``Idempotency-Key`` (draft-ietf-httpapi-idempotency-key-header) for every ``POST /v1/...``.

Every route that creates or changes something is a POST (payments, cancel, webhook endpoints,
secret rotation, recovery, event retries). ``PATCH`` and ``DELETE`` of webhook endpoints are
left out: they are idempotent by nature (a PATCH sets the given values; a second DELETE is 404).

The first request with a key runs; its outcome is kept in Redis (so every daemon sees it) under
``payflow:idempotency:<api key name>:<sha256(key)>`` for ``ttl_seconds`` and replayed, byte for
byte with ``Idempotent-Replayed: true``, to a retry with the same key and the same request
(method, path with query, body). The same key with a different request is 422; a retry while the
first still runs is 409 with ``Retry-After``. Kept: answers below 400 and 404/409 (the outcome
of an executed request). Not kept: other 4xx (validation, "stores nothing"), 5xx (retryable)
and exceptions; the key is released and a retry runs again. While a request runs its key is
locked for ``lock_seconds`` at most, so a crashed daemon does not block the key for ever. When
Redis does not answer, a request with a key gets 503 and is not run unprotected.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import secrets
from collections.abc import Coroutine
from typing import Any, Final

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from multidict import CIMultiDict
from redis.asyncio import Redis
from redis.exceptions import RedisError

from payflow.errors import PayFlowError
from payflow.web import paths, problems
from payflow.web.body import read_raw
from payflow.web.keys import API_KEY_NAME

log = structlog.get_logger("payflow.web")

HEADER: Final = "Idempotency-Key"
REPLAYED_HEADER: Final = "Idempotent-Replayed"
KEY_PREFIX: Final = "payflow:idempotency:"
MAX_KEY_LENGTH: Final = 255
REDIS_ERRORS: Final = (RedisError, OSError, TimeoutError)
# POST routes that bind their Idempotency-Key in the store themselves (with the resource they
# create, before its job is queued), so that no Redis outage can let a retry create another.
BOUND_IN_STORE: Final = frozenset({paths.PAYMENTS})
REDACTED: Final = "(shown once, in the first answer; rotate the secret for a new one)"
_BARE: Final = re.compile(r"[\x20-\x7e]+")
_SF_STRING: Final = re.compile(r'"((?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\["\\])*)"')  # RFC 8941
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


class Idempotency:
    """The Idempotency-Key store and middleware, over ``redis``."""

    def __init__(self, redis: Redis, *, ttl_seconds: float, required: bool,
                 lock_seconds: float = 60.0) -> None:
        self._redis = redis
        self._ttl_ms = max(1, int(ttl_seconds * 1000))
        self._lock_ms = max(1, int(lock_seconds * 1000))
        self.required = required
        self._finish_script = redis.register_script(_FINISH)
        self._background: set[asyncio.Future[None]] = set()

    async def handle(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if (request.method != "POST" or not request.path.startswith("/v1/")
                or request.match_info.http_exception is not None  # no route: 404/405 as is
                or request.path in BOUND_IN_STORE):  # the route binds its key in the store
            return await handler(request)
        binding = await self.binding(request)
        if binding is None:
            return await handler(request)
        key, fp = binding
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
                raise unavailable() from None
            if acquired:  # the handler's own Redis errors are its own (not caught above)
                return await self._run(request, handler, redis_key, lock, fp)
            if stored is not None:
                return _answer(json.loads(stored), fp)
        raise in_flight()

    async def binding(self, request: web.Request) -> tuple[str, str] | None:
        """The request's idempotency key, scoped to its API key (``<scope>:<sha256>``), and the
        fingerprint of the request (method, path with query, body); None without a key (400
        when one is required or malformed)."""
        key = parse_key(request.headers.getall(HEADER, []))
        if key is None:
            if self.required:
                raise key_required()
            return None
        scope = request.get(API_KEY_NAME, "anonymous")
        fp = _sha256(b"%s\n%s\n%s" % (request.method.encode(), request.raw_path.encode(),
                                       await read_raw(request)))
        return f"{scope}:{_sha256(key.encode())}", fp

    def _later(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _run(self, request: web.Request, handler: Handler, redis_key: str, lock: str,
                   fp: str) -> web.StreamResponse:
        try:
            response = await handler(request)
        except (problems.Problem, PayFlowError) as exc:
            problem = exc if isinstance(exc, problems.Problem) else problems.from_error(exc)
            keep = problem is not None and problem.status in _STORED_ERRORS
            await self._finish(redis_key, lock, _problem_record(fp, problem) if keep and problem
                               else None)
            raise
        except BaseException:
            await self._finish(redis_key, lock, None)
            raise
        await self._finish(redis_key, lock, _response_record(fp, response))
        return response

    async def _finish(self, redis_key: str, lock: str, outcome: dict[str, Any] | None, *,
                      attempts: int = 1) -> None:
        """Store ``outcome`` (None: release the key), trying ``attempts`` times a second apart.
        A failure here must not hide the answer: it is logged, and the lock expires on its
        own."""
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


def middleware(idem: Idempotency) -> Middleware:
    """The aiohttp middleware of ``idem``; list it after the app's problem-rendering one."""

    @web.middleware
    async def idempotency(request: web.Request, handler: Handler) -> web.StreamResponse:
        return await idem.handle(request, handler)

    return idempotency


def parse_key(values: list[str]) -> str | None:
    """The key of the ``Idempotency-Key`` field values (a bare token or an RFC 8941 sf-string),
    None when absent, or a 400 problem."""
    if not values:
        return None
    if len(values) > 1:
        raise invalid_key("Send a single Idempotency-Key header.")
    raw = values[0]
    key = ""
    if raw.startswith('"'):
        if (match := _SF_STRING.fullmatch(raw)) is not None:
            key = re.sub(r"\\(.)", r"\1", match.group(1))
    elif _BARE.fullmatch(raw):
        key = raw
    if not 1 <= len(key) <= MAX_KEY_LENGTH:
        raise invalid_key(f"The Idempotency-Key must be 1 to {MAX_KEY_LENGTH} printable ASCII "
                          'characters, bare or as a quoted string ("...").')
    return key


def _answer(stored: dict[str, Any], fp: str) -> web.Response:
    if stored.get("fp") != fp:
        raise key_reused()
    if stored.get("state") != "done":
        raise in_flight()
    log.info("idempotency.replayed", status=stored.get("status"))
    if (p := stored.get("problem")) is not None:
        extra = {"param": p["param"]} if "param" in p else {}
        raise problems.Problem(p["status"], p["slug"], p["title"], p["detail"], code=p["code"],
                               headers={**p["headers"], REPLAYED_HEADER: "true"}, **extra)
    headers: CIMultiDict[str] = CIMultiDict(stored["headers"])
    if stored["content_type"] is not None:
        headers["Content-Type"] = stored["content_type"]
    headers[REPLAYED_HEADER] = "true"
    return web.Response(status=stored["status"], body=base64.b64decode(stored["body"]),
                        headers=headers)


def _response_record(fp: str, response: web.StreamResponse) -> dict[str, Any] | None:
    if response.status >= 400 and response.status not in _STORED_ERRORS:
        return None
    body = response.body if isinstance(response, web.Response) else response
    if response.prepared or not isinstance(body, bytes | None):  # streamed: a retry runs again
        log.warning("idempotency.not_storable", status=response.status)
        return None
    return {"state": "done", "fp": fp, "status": response.status,
            "body": base64.b64encode(_redacted(body or b"")).decode("ascii"),
            "content_type": response.headers.get("Content-Type"),
            "headers": [[k, v] for k, v in response.headers.items()
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


def _problem_record(fp: str, exc: problems.Problem) -> dict[str, Any]:
    """A raised 404/409 is kept as the problem itself: a replay renders it again, with the
    replay's own request id."""
    problem = exc.body("")
    del problem["request_id"], problem["type"]
    return {"state": "done", "fp": fp, "status": exc.status,
            "problem": {**problem, "slug": exc.slug, "headers": exc.headers}}


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- the problems of this middleware (code = slug with underscores) --------------------------


def _problem(status: int, slug: str, title: str, detail: str, *,
             retry: bool = False) -> problems.Problem:
    return problems.Problem(status, slug, title, detail, code=slug.replace("-", "_"),
                            headers={"Retry-After": "1"} if retry else None)


def key_required() -> problems.Problem:
    return _problem(400, "idempotency-key-required", "Idempotency-Key required",
                    "This request changes state and must carry an Idempotency-Key header.")


def invalid_key(detail: str) -> problems.Problem:
    return _problem(400, "invalid-idempotency-key", "Invalid Idempotency-Key", detail)


def key_reused() -> problems.Problem:
    return problems.key_reused()


def in_flight() -> problems.Problem:
    return problems.key_in_flight()


def unavailable() -> problems.Problem:
    return _problem(503, "idempotency-unavailable", "Idempotency store unavailable",
                    "The Idempotency-Key store does not answer; the request was not processed. "
                    "Retry shortly.", retry=True)
