"""The ``Idempotency-Key`` middleware of every ``POST /v1/...`` but those that bind their key in
the store; the rules are :mod:`payflow.idempotency`'s. Here: the header's syntax, the request's
fingerprint, replays byte for byte with ``Idempotent-Replayed: true`` (a kept problem with the
replay's request id), the 400 problems of the header."""

from __future__ import annotations

import re
from typing import Final

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from multidict import CIMultiDict
from redis.asyncio import Redis

from payflow import idempotency as core
from payflow.errors import PayFlowError
from payflow.idempotency import MAX_KEY_LENGTH as MAX_KEY_LENGTH
from payflow.web import paths, problems
from payflow.web.body import read_raw
from payflow.web.keys import API_KEY_NAME

HEADER: Final = "Idempotency-Key"
REPLAYED_HEADER: Final = "Idempotent-Replayed"
BOUND_IN_STORE: Final = frozenset({paths.PAYMENTS})  # they bind the key with what they create
_BARE: Final = re.compile(r"[\x20-\x7e]+")
_SF_STRING: Final = re.compile(r'"((?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\["\\])*)"')  # RFC 8941


class Idempotency:
    """The middleware over ``redis``; ``required``: a POST without a key is 400."""

    def __init__(self, redis: Redis, *, ttl_seconds: float, required: bool,
                 lock_seconds: float = core.LOCK_SECONDS) -> None:
        self.keys = core.IdempotencyKeys(redis, ttl_seconds=ttl_seconds,
                                         lock_seconds=lock_seconds)
        self.required = required

    async def handle(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if (request.method != "POST" or not request.path.startswith("/v1/")
                or request.match_info.http_exception is not None  # no route: 404/405 as is
                or request.path in BOUND_IN_STORE
                or (binding := await self.binding(request)) is None):
            return await handler(request)
        run = await self.keys.begin(*binding)  # IdempotencyUnavailable: 503
        if not isinstance(run, core.Run):
            return _replayed(run)
        try:  # the handler's own Redis errors are its own
            response = await handler(request)
        except (problems.Problem, PayFlowError) as exc:
            problem = exc if isinstance(exc, problems.Problem) else problems.from_error(exc)
            await self.keys.finish(run, None if problem is None else core.ProblemAnswer(
                problem.status, problem.slug, problem.body(""), problem.headers))
            raise
        except BaseException:
            await self.keys.finish(run, None)
            raise
        body = response.body if isinstance(response, web.Response) else response
        await self.keys.finish(run, core.Answer(  # a streamed body (not bytes) is not kept
            response.status, (body or b"") if not response.prepared
            and isinstance(body, bytes | None) else None, response.headers.get("Content-Type"),
            [*response.headers.items()]))
        return response

    async def binding(self, request: web.Request) -> tuple[str, str] | None:
        """The request's key, scoped to its API key, and its fingerprint; None without a key
        (400 when one is required or malformed)."""
        if (key := parse_key(request.headers.getall(HEADER, []))) is None:
            if self.required:
                raise problems.key_required()
            return None
        return (core.scoped_key(request.get(API_KEY_NAME, "anonymous"), key),
                core.fingerprint(request.method, request.raw_path, await read_raw(request)))

    async def close(self) -> None:
        """Cancel the key releases still being tried (at shutdown, once the server stopped)."""
        await self.keys.close()


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
        raise problems.invalid_key("Send a single Idempotency-Key header.")
    raw, key = values[0], ""
    if raw.startswith('"'):
        if (match := _SF_STRING.fullmatch(raw)) is not None:
            key = re.sub(r"\\(.)", r"\1", match.group(1))
    elif _BARE.fullmatch(raw):
        key = raw
    if not 1 <= len(key) <= MAX_KEY_LENGTH:
        raise problems.invalid_key(f"The Idempotency-Key must be 1 to {MAX_KEY_LENGTH} "
                                   "printable ASCII characters, bare or as a quoted string "
                                   '("...").')
    return key


def _replayed(kept: core.Answer | core.ProblemAnswer) -> web.Response:
    if isinstance(kept, core.ProblemAnswer):  # rendered with this request's id
        raise problems.Problem.restore(kept.status, kept.slug, kept.members,
                                       {**kept.headers, REPLAYED_HEADER: "true"})
    headers: CIMultiDict[str] = CIMultiDict(kept.headers)
    if kept.content_type is not None:
        headers["Content-Type"] = kept.content_type
    headers[REPLAYED_HEADER] = "true"
    return web.Response(status=kept.status, body=kept.body, headers=headers)
